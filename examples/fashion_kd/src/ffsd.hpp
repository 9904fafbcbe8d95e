// SPDX-License-Identifier: MIT
#pragma once
// FFSD: online knowledge distillation with feature fusion and self-distillation (Li et al.,
// arXiv 2103.14473; code SJLeo/FFSD `CIFARTrainer.py`, `models/fusion_module.py`,
// `models/self_distillation.py`), without a pre-trained teacher. A cohort of M common students
// and a leader, all of the student architecture, learn together on every batch:
//
//   students i = 0..M-1   CE + T^2/(M-1) sum_{j != i} KL(q_j || q_i)                (peers detached)
//                         i > 0: + l_div [ div(F_i, F_{i-1})                          diversity term
//                                         + sum_l AT(F_i^l, D_i(shift(F_{i-1}))_l) ]  self-distillation
//   fusion module         input: the students' last maps concatenated (detached), [B, M C, 7, 7]
//                         depthwise 3x3 -> BN -> ReLU -> 1x1 to C -> BN -> ReLU (= its map) -> the
//                         students' head (FFSD: avg-pool -> FC, which is its ResNets' head)
//                         CE + T^2 KL(mean_i q_i || q_fusion)
//   leader                CE + T^2 KL(q_fusion || q_leader)
//                         + l_fus [ AT(F_L, map_fusion) + AT(TF(F_L), concat F_i)
//                                  + sum_l AT(F_L^l, D_L(map_fusion)_l) ]
//                         TF, the trans-fusion module: depthwise 3x3 -> BN -> ReLU -> 1x1 to M C -> BN -> ReLU
//   decoders D_i, D_L     per student i > 0 and for the leader: (transposed conv 3x3 stride 2 ->
//                         BN -> ReLU) per earlier stage, halving the channels, from the last map up
//                         to the resolution of each earlier stage; trained after every step on
//                         l_sd sum_l [ nmse(D(F^last)_l, F^l) + AT(D(F^last)_l, F^l) ] (Adam), and
//                         run in evaluation mode inside the students' and the leader's losses.
// F^l: stage l's output, F (no index) the last stage's; div, shift: attention_diversity.hpp;
// nmse: the mse of the per-sample L2-normalised maps. l_x(e) = l_x exp(-5 (1 - e / w)^2) for
// epoch e <= w (warm-up), then l_x. The leader is what FFSD deploys; the table reports it and the
// mean of the common students.

#include <memory>
#include <string>
#include <vector>

#include "distill/nn/conv_transpose2d.hpp"
#include "distill/nn/depthwise_conv2d.hpp"
#include "learner.hpp"

namespace fkd {

/// depthwise 3x3 (no bias) -> BN -> ReLU -> 1x1 conv (no bias) -> BN -> ReLU.
class fusion_block {
 public:
  fusion_block(const std::string& name, int in, int out, std::uint64_t seed)
      : dw_(name + ".dw", in, 3, {1, 1, 1, 1}, conv_init(seed), false) {
    rest_.add(nn::batch_norm<float>(name + ".bn1", in));
    rest_.add(nn::activation::relu);
    add_conv_bn_relu(rest_, name + ".pw", in, out, seed, 1);
  }
  [[nodiscard]] distill::status forward(const distill::cpu& ctx, cview<4> x) {
    DISTILL_TRY(dw_out_.resize(dw_.output_shape(x.extent(0), x.extent(2), x.extent(3))));
    DISTILL_TRY(dw_.forward(ctx, x, dw_out_.view<4>()));
    return rest_.forward(ctx, dw_out_.cview<4>());
  }
  const tensor& output() const { return rest_.output(); }
  /// `dx` may be absent (a detached input).
  [[nodiscard]] distill::status backward(const distill::cpu& ctx, cview<4> x, cview<4> dy, view<4> dx) {
    DISTILL_TRY(d_dw_out_.resize(dw_out_.shape()));
    DISTILL_TRY(rest_.backward(ctx, dw_out_.cview<4>(), dy, d_dw_out_.view<1>()));
    return dw_.backward(ctx, x, d_dw_out_.cview<4>(), dx);
  }
  param_list parameters() {
    auto p = dw_.parameters();
    const auto r = rest_.parameters();
    p.insert(p.end(), r.begin(), r.end());
    return p;
  }
  void set_training(bool t) { rest_.set_training(t); }

 private:
  nn::depthwise_conv2d<float> dw_;
  nn::sequential<float> rest_;
  tensor dw_out_, d_dw_out_;
};

/// The fusion module: a fusion block (M C -> C channels) whose map is kept, then the students' own
/// head on it (in FFSD's ResNets both are average pooling + a linear layer; here the students end
/// in flatten + linear layers, and a weaker fusion classifier would be a weak teacher for the leader).
class fusion_module {
 public:
  fusion_module(const std::string& name, int students, const net_spec& student, std::uint64_t seed)
      : block_(name, students * student.channels.back(), student.channels.back(), seed) {
    const int side = stage_side(student, student.channels.size() - 1);
    classifier_ = make_head(name, static_cast<index_t>(student.channels.back()) * side * side, student.head, student.dropout, seed);
  }
  [[nodiscard]] distill::status forward(const distill::cpu& ctx, cview<4> x) {
    DISTILL_TRY(block_.forward(ctx, x));
    return classifier_.forward(ctx, block_.output().cview<4>());
  }
  const tensor& map() const { return block_.output(); }
  const tensor& logits() const { return classifier_.output(); }
  [[nodiscard]] distill::status backward(const distill::cpu& ctx, cview<4> x, cview<2> dlogits) {
    DISTILL_TRY(d_map_.resize(block_.output().shape()));
    DISTILL_TRY(classifier_.backward(ctx, block_.output().cview<4>(), dlogits, d_map_.view<1>()));
    return block_.backward(ctx, x, d_map_.cview<4>(), {});
  }
  param_list parameters() {
    auto p = block_.parameters();
    const auto c = classifier_.parameters();
    p.insert(p.end(), c.begin(), c.end());
    return p;
  }
  void set_training(bool t) {
    block_.set_training(t);
    classifier_.set_training(t);
  }

 private:
  fusion_block block_;
  nn::sequential<float> classifier_;
  tensor d_map_;
};

/// The self-distillation decoder: from a last-stage map (C channels), `layers` times transposed
/// conv 3x3 stride 2 (padding 1, output padding 1, no bias) -> BN -> ReLU, halving the channels
/// and doubling the resolution. Output l (0-based) is compared with the student's stage
/// `layers - 1 - l`.
class decoder {
 public:
  decoder(const std::string& name, int channels, int layers, std::uint64_t seed) {
    for (int l = 0; l < layers; ++l) {
      up_.emplace_back(name + ".up" + std::to_string(l), channels, channels / 2, 3, nn::conv_transpose2d_params{2, 2, 1, 1, 1, 1},
                       conv_init(seed), false);
      nn::sequential<float> s;
      s.add(nn::batch_norm<float>(name + ".bn" + std::to_string(l), channels / 2));
      s.add(nn::activation::relu);
      bn_relu_.push_back(std::move(s));
      channels /= 2;
    }
    up_out_.resize(up_.size()), d_up_out_.resize(up_.size()), d_in_.resize(up_.size());
  }
  std::size_t layers() const { return up_.size(); }
  /// The decoded map compared with stage `stage` (0 = the shallowest).
  const tensor& output_for_stage(std::size_t stage) const { return bn_relu_[layers() - 1 - stage].output(); }

  [[nodiscard]] distill::status forward(const distill::cpu& ctx, cview<4> x) {
    x_ = x;
    cview<4> in = x;
    for (std::size_t l = 0; l < up_.size(); ++l) {
      DISTILL_TRY(up_out_[l].resize(up_[l].output_shape(in.extent(0), in.extent(2), in.extent(3))));
      DISTILL_TRY(up_[l].forward(ctx, in, up_out_[l].view<4>()));
      DISTILL_TRY(bn_relu_[l].forward(ctx, up_out_[l].cview<4>()));
      in = bn_relu_[l].output().cview<4>();
    }
    return {};
  }
  /// Backward of the last forward; grads_for_stage[s] = dL/d(output_for_stage(s)).
  [[nodiscard]] distill::status backward(const distill::cpu& ctx, std::vector<tensor>& grads_for_stage) {
    for (std::size_t l = up_.size(); l-- > 0;) {
      tensor& g = grads_for_stage[layers() - 1 - l];
      if (l + 1 < up_.size()) add_into(g, d_in_[l + 1]);
      DISTILL_TRY(d_up_out_[l].resize(up_out_[l].shape()));
      DISTILL_TRY(bn_relu_[l].backward(ctx, up_out_[l].cview<4>(), g.cview<4>(), d_up_out_[l].view<1>()));
      const cview<4> in = l == 0 ? x_ : bn_relu_[l - 1].output().cview<4>();
      if (l == 0) {
        DISTILL_TRY(up_[l].backward(ctx, in, d_up_out_[l].cview<4>(), {}));
      } else {
        DISTILL_TRY(d_in_[l].resize(bn_relu_[l - 1].output().shape()));
        DISTILL_TRY(up_[l].backward(ctx, in, d_up_out_[l].cview<4>(), d_in_[l].view<4>()));
      }
    }
    return {};
  }
  param_list parameters() {
    param_list p;
    for (std::size_t l = 0; l < up_.size(); ++l) {
      const auto a = up_[l].parameters(), b = bn_relu_[l].parameters();
      p.insert(p.end(), a.begin(), a.end());
      p.insert(p.end(), b.begin(), b.end());
    }
    return p;
  }
  void set_training(bool t) {
    for (auto& s : bn_relu_) s.set_training(t);
  }

 private:
  static void add_into(tensor& dst, const tensor& src) {
    for (index_t i = 0; i < dst.size(); ++i) dst.data()[i] += src.data()[i];
  }
  std::vector<nn::conv_transpose2d<float>> up_;
  std::vector<nn::sequential<float>> bn_relu_;
  std::vector<tensor> up_out_, d_up_out_, d_in_;
  cview<4> x_;
};

/// Adam whose learning rate follows a cosine over the run (the decoders').
struct scheduled_adam {
  nn::adam<float> opt;
  nn::lr_schedule schedule;
  scheduled_adam(const param_list& params, double lr, double weight_decay, index_t total_steps)
      : opt(params, nn::adam_options{lr, 0.9, 0.999, 1e-8, weight_decay, false, 0.0}), schedule(nn::lr_schedule::cosine(lr, total_steps)) {}
  void step(const distill::cpu& ctx) {
    opt.options.lr = schedule(opt.steps());
    distill::throw_if_error(opt.step(ctx));
  }
};

class ffsd_learner final : public learner {
 public:
  ffsd_learner(const run_config& cfg, std::uint64_t seed, index_t total_steps)
      : loss_(cfg.loss),
        M_(cfg.loss.ffsd_students),
        C_(cfg.student.channels.back()),
        leader_("ffsd.leader", cfg.student, seed),
        trans_fusion_("ffsd.trans_fusion", C_, M_ * C_, seed),
        fusion_("ffsd.fusion", M_, cfg.student, seed),
        leader_decoder_("ffsd.leader_decoder", C_, static_cast<int>(cfg.student.channels.size()) - 1, seed) {
    if (M_ < 2) throw std::invalid_argument("ffsd needs at least 2 common students");
    if (cfg.student.channels.size() < 2) throw std::invalid_argument("ffsd needs a student with at least 2 stages");
    for (int i = 0; i < M_; ++i) {
      students_.push_back(std::make_unique<staged_net>("ffsd.s" + std::to_string(i), cfg.student, seed));
      student_opt_.push_back(std::make_unique<scheduled_sgd>(students_.back()->parameters(), cfg.student_opt, total_steps, cfg.student_opt.weight_decay));
      if (i > 0) decoders_.push_back(std::make_unique<decoder>("ffsd.decoder" + std::to_string(i), C_, static_cast<int>(cfg.student.channels.size()) - 1, seed));
    }
    auto lp = leader_.parameters();
    const auto tf = trans_fusion_.parameters();
    lp.insert(lp.end(), tf.begin(), tf.end());
    leader_opt_ = std::make_unique<scheduled_sgd>(lp, cfg.student_opt, total_steps, cfg.student_opt.weight_decay);
    fusion_opt_ = std::make_unique<scheduled_sgd>(fusion_.parameters(), cfg.student_opt, total_steps, cfg.loss.ffsd_fusion_weight_decay);
    for (auto& d : decoders_) decoder_opt_.push_back(std::make_unique<scheduled_adam>(d->parameters(), cfg.loss.ffsd_decoder_lr, cfg.student_opt.weight_decay, total_steps));
    decoder_opt_.push_back(std::make_unique<scheduled_adam>(leader_decoder_.parameters(), cfg.loss.ffsd_decoder_lr, cfg.student_opt.weight_decay, total_steps));
  }

  /// Every loss reads the forward values of the start of the step (peers, fusion and decoder
  /// outputs are constants in it, as in the reference code), so computing all gradients first
  /// and then stepping every optimiser equals the reference's network-by-network updates.
  double compute_gradients(const distill::cpu& ctx, const batch& b, staged_net*, const step_info& at) override {
    if (data_parallel_) throw std::runtime_error("ffsd does not train data-parallel yet (run it in one process)");
    const auto y = loss::labels_of(b.labels);
    const double T = loss_.ffsd_temperature;
    const double l_div = warm(loss_.ffsd_lambda_diversity, at.epoch), l_fus = warm(loss_.ffsd_lambda_fusion, at.epoch),
                 l_sd = warm(loss_.ffsd_lambda_self_distillation, at.epoch);
    // forward every network (students see the same batch)
    for (auto* n : all_nets()) n->set_training(true), distill::throw_if_error(n->forward(ctx, b.images));
    const std::size_t last = leader_.stage_count() - 1;
    concat_last_maps();
    distill::throw_if_error(fusion_.forward(ctx, concat_.cview<4>()));
    ensemble_mean();
    double total = 0;

    // the common students, one after another (each with its own optimiser)
    for (int i = 0; i < M_; ++i) {
      staged_net& s = *students_[static_cast<std::size_t>(i)];
      distill::throw_if_error(nn::zero_grad(ctx, student_opt_[static_cast<std::size_t>(i)]->opt.params()));
      distill::throw_if_error(dlogits_.resize(s.logits().shape()));
      double l = loss::cross_entropy(ctx, s.logits().cview<2>(), y, dlogits_.view<2>());
      for (int j = 0; j < M_; ++j)
        if (j != i)
          l += loss::soft_kl(ctx, s.logits().cview<2>(), students_[static_cast<std::size_t>(j)]->logits().cview<2>(), T, 1.0 / (M_ - 1),
                             dlogits_.view<2>(), true);
      reset_feature_grads(s);
      if (i > 0) {
        const staged_net& peer = *students_[static_cast<std::size_t>(i - 1)];
        l += loss::diversity(ctx, s.stage_output(last).cview<4>(), peer.stage_output(last).cview<4>(), l_div, feature_grad(last).view<4>(), true);
        distill::throw_if_error(shifted_.resize(peer.stage_output(last).shape()));
        loss::diversity_shift(ctx, peer.stage_output(last).cview<4>(), shifted_.view<4>());
        l += self_distillation_term(ctx, s, *decoders_[static_cast<std::size_t>(i - 1)], shifted_.cview<4>(), l_div);
      }
      distill::throw_if_error(s.backward(ctx, dlogits_.cview<2>(), feature_grad_ptrs_));
      total += l;
    }

    // the fusion module
    distill::throw_if_error(nn::zero_grad(ctx, fusion_opt_->opt.params()));
    distill::throw_if_error(dlogits_.resize(fusion_.logits().shape()));
    total += loss::cross_entropy(ctx, fusion_.logits().cview<2>(), y, dlogits_.view<2>());
    total += loss::soft_kl(ctx, fusion_.logits().cview<2>(), ensemble_.cview<2>(), T, 1.0, dlogits_.view<2>(), true);
    distill::throw_if_error(fusion_.backward(ctx, concat_.cview<4>(), dlogits_.cview<2>()));

    // the leader (and its trans-fusion module)
    distill::throw_if_error(nn::zero_grad(ctx, leader_opt_->opt.params()));
    distill::throw_if_error(dlogits_.resize(leader_.logits().shape()));
    double l = loss::cross_entropy(ctx, leader_.logits().cview<2>(), y, dlogits_.view<2>());
    l += loss::soft_kl(ctx, leader_.logits().cview<2>(), fusion_.logits().cview<2>(), T, 1.0, dlogits_.view<2>(), true);
    reset_feature_grads(leader_);
    const tensor& fl = leader_.stage_output(last);
    l += loss::attention_transfer(ctx, fl.cview<4>(), fusion_.map().cview<4>(), l_fus, feature_grad(last).view<4>(), true);
    distill::throw_if_error(trans_fusion_.forward(ctx, fl.cview<4>()));
    distill::throw_if_error(d_trans_.resize(trans_fusion_.output().shape()));
    l += loss::attention_transfer(ctx, trans_fusion_.output().cview<4>(), concat_.cview<4>(), l_fus, d_trans_.view<4>(), false);
    distill::throw_if_error(d_leader_last_.resize(fl.shape()));
    distill::throw_if_error(trans_fusion_.backward(ctx, fl.cview<4>(), d_trans_.cview<4>(), d_leader_last_.view<4>()));
    add_into(feature_grad(last), d_leader_last_);
    l += self_distillation_term(ctx, leader_, leader_decoder_, fusion_.map().cview<4>(), l_fus);
    distill::throw_if_error(leader_.backward(ctx, dlogits_.cview<2>(), feature_grad_ptrs_));
    total += l;

    // the decoders learn to reconstruct the earlier stages from the last one
    for (int i = 1; i < M_; ++i)
      total += decoder_gradients(ctx, *decoders_[static_cast<std::size_t>(i - 1)], *students_[static_cast<std::size_t>(i)],
                             *decoder_opt_[static_cast<std::size_t>(i - 1)], l_sd);
    total += decoder_gradients(ctx, leader_decoder_, leader_, *decoder_opt_.back(), l_sd);
    return total;
  }

  void step(const distill::cpu& ctx) override {
    for (auto& o : student_opt_) o->step(ctx);
    fusion_opt_->step(ctx);
    leader_opt_->step(ctx);
    for (auto& o : decoder_opt_) o->step(ctx);
  }
  /// Not data-parallel yet: its fusion and decoder modules were not checked against one process.
  void set_replica(const nn::replica& r) override { data_parallel_ = r.data_parallel(); }
  param_list parameters() override { return all_parameters(); }

  std::vector<evaluated_net> evaluated() override {
    std::vector<evaluated_net> v{{"ffsd_leader", &leader_}};
    for (int i = 0; i < M_; ++i) v.push_back({"ffsd_student" + std::to_string(i), students_[static_cast<std::size_t>(i)].get()});
    return v;
  }

  void save(nn::checkpoint& ck) override {
    distill::throw_if_error(ck.add_parameters(all_parameters()));
    for (std::size_t i = 0; i < student_opt_.size(); ++i) save_optimizer(ck, "s" + std::to_string(i) + "/", student_opt_[i]->opt);
    save_optimizer(ck, "leader/", leader_opt_->opt);
    save_optimizer(ck, "fusion/", fusion_opt_->opt);
    for (std::size_t i = 0; i < decoder_opt_.size(); ++i) save_optimizer(ck, "decoder" + std::to_string(i) + "/", decoder_opt_[i]->opt);
  }
  void load(const nn::checkpoint& ck) override {
    distill::throw_if_error(ck.restore_parameters(all_parameters()));
    for (std::size_t i = 0; i < student_opt_.size(); ++i) load_optimizer(ck, "s" + std::to_string(i) + "/", student_opt_[i]->opt);
    load_optimizer(ck, "leader/", leader_opt_->opt);
    load_optimizer(ck, "fusion/", fusion_opt_->opt);
    for (std::size_t i = 0; i < decoder_opt_.size(); ++i) load_optimizer(ck, "decoder" + std::to_string(i) + "/", decoder_opt_[i]->opt);
  }

 private:
  double warm(double lambda, int epoch) const {
    const double w = loss_.ffsd_warmup_epochs;
    if (w <= 0 || epoch > w) return lambda;
    return lambda * std::exp(-5.0 * (1.0 - epoch / w) * (1.0 - epoch / w));
  }

  std::vector<staged_net*> all_nets() {
    std::vector<staged_net*> v{&leader_};
    for (auto& s : students_) v.push_back(s.get());
    return v;
  }
  param_list all_parameters() {
    param_list p;
    auto add = [&](const param_list& q) { p.insert(p.end(), q.begin(), q.end()); };
    add(leader_.parameters()), add(trans_fusion_.parameters()), add(fusion_.parameters()), add(leader_decoder_.parameters());
    for (auto& s : students_) add(s->parameters());
    for (auto& d : decoders_) add(d->parameters());
    return p;
  }

  /// concat_ [B, M C, H, W] = the students' last maps, channel blocks in student order.
  void concat_last_maps() {
    const std::size_t last = leader_.stage_count() - 1;
    const auto& f0 = students_[0]->stage_output(last);
    const index_t B = f0.extent(0), per = f0.size() / B;
    distill::throw_if_error(concat_.resize({B, static_cast<index_t>(M_) * f0.extent(1), f0.extent(2), f0.extent(3)}));
    for (index_t bb = 0; bb < B; ++bb)
      for (int i = 0; i < M_; ++i)
        std::copy_n(students_[static_cast<std::size_t>(i)]->stage_output(last).data() + bb * per, per, concat_.data() + (bb * M_ + i) * per);
  }
  /// ensemble_ = the mean of the students' logits.
  void ensemble_mean() {
    distill::throw_if_error(ensemble_.resize(students_[0]->logits().shape()));
    for (index_t k = 0; k < ensemble_.size(); ++k) {
      float s = 0;
      for (auto& st : students_) s += st->logits().data()[k];
      ensemble_.data()[k] = s / static_cast<float>(M_);
    }
  }

  void reset_feature_grads(const staged_net& n) {
    feature_grad_store_.resize(n.stage_count());
    feature_grad_ptrs_.assign(n.stage_count(), nullptr);
    for (std::size_t k = 0; k < n.stage_count(); ++k) {
      distill::throw_if_error(feature_grad_store_[k].resize(n.stage_output(k).shape()));
      distill::throw_if_error(nn::fill_zero(distill::cpu{1}, feature_grad_store_[k].view<1>()));
      feature_grad_ptrs_[k] = &feature_grad_store_[k];
    }
  }
  tensor& feature_grad(std::size_t k) { return feature_grad_store_[k]; }
  static void add_into(tensor& dst, const tensor& src) {
    for (index_t i = 0; i < dst.size(); ++i) dst.data()[i] += src.data()[i];
  }

  /// weight * sum over the earlier stages l of AT(F^l, D(input)_l), with D in evaluation mode and
  /// its outputs constant; the gradients are added to the feature gradients of `net`.
  double self_distillation_term(const distill::cpu& ctx, staged_net& net, decoder& d, cview<4> input, double weight) {
    d.set_training(false);
    distill::throw_if_error(d.forward(ctx, input));
    double l = 0;
    for (std::size_t s = 0; s < d.layers(); ++s)
      l += loss::attention_transfer(ctx, net.stage_output(s).cview<4>(), d.output_for_stage(s).cview<4>(), weight, feature_grad(s).view<4>(), true);
    return l;
  }

  /// The gradients of a decoder's loss weight * sum_l [nmse + AT](D(F^last)_l, F^l) of `net`'s last forward.
  double decoder_gradients(const distill::cpu& ctx, decoder& d, staged_net& net, scheduled_adam& opt, double weight) {
    distill::throw_if_error(nn::zero_grad(ctx, opt.opt.params()));
    d.set_training(true);
    const std::size_t last = net.stage_count() - 1;
    distill::throw_if_error(d.forward(ctx, net.stage_output(last).cview<4>()));
    decoder_grads_.resize(d.layers());
    double l = 0;
    for (std::size_t s = 0; s < d.layers(); ++s) {
      const tensor& out = d.output_for_stage(s);
      distill::throw_if_error(decoder_grads_[s].resize(out.shape()));
      l += loss::normalized_mse(ctx, out.cview<4>(), net.stage_output(s).cview<4>(), weight, decoder_grads_[s].view<4>(), false);
      l += loss::attention_transfer(ctx, out.cview<4>(), net.stage_output(s).cview<4>(), weight, decoder_grads_[s].view<4>(), true);
    }
    distill::throw_if_error(d.backward(ctx, decoder_grads_));
    return l;
  }

  loss_config loss_;
  int M_, C_;
  staged_net leader_;
  fusion_block trans_fusion_;
  fusion_module fusion_;
  decoder leader_decoder_;
  bool data_parallel_ = false;
  std::vector<std::unique_ptr<staged_net>> students_;
  std::vector<std::unique_ptr<decoder>> decoders_;
  std::vector<std::unique_ptr<scheduled_sgd>> student_opt_;
  std::unique_ptr<scheduled_sgd> leader_opt_, fusion_opt_;
  std::vector<std::unique_ptr<scheduled_adam>> decoder_opt_;
  tensor concat_, ensemble_, dlogits_, shifted_, d_trans_, d_leader_last_;
  std::vector<tensor> feature_grad_store_, decoder_grads_;
  std::vector<const tensor*> feature_grad_ptrs_;
};

}  // namespace fkd
