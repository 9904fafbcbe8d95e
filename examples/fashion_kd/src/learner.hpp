// SPDX-License-Identifier: MIT
#pragma once
// A learner is one method's trainable state for one seed: its network(s), optimiser(s) and the
// buffers of its loss. The trainer hands every learner of a seed the same batches (so the
// methods are compared on identical data orders) and the teacher's outputs on them (computed
// once per batch, in evaluation mode).
//
// student_learner holds every single-student method:
//   ce       CE(z_s, y)
//   kd       (1 - a) CE + a T^2 KL(p_t || q_s)                                   Hinton et al. 2015
//   dkd      CE + min(step / warm-up, 1) DKD(alpha, beta, T)                      Zhao et al. 2022
//   at       CE + beta/2 sum_k AT(F_s^k, F_t^k)  over stages of equal resolution  Zagoruyko & Komodakis 2017
//   at_kd    Hinton KD + the AT term
//   stats    CE + w L_stat(r(F_s^last), F_t^last)                                 AdaIN-KD's baseline (spec 4.1)
//   adain    CE + w mse(O(AdaIN(F_t^last; r(F_s^last))), O(F_t^last))             AdaIN-KD (spec 4.3, reconstructed)
//   mlp_ce, mlp_kd   the MLP student with CE / Hinton KD
// r is a trainable 1x1 conv -> BN -> ReLU connector (used in training only; not counted in the
// deployed student's parameters), O the frozen rest of the teacher after the compared stage.
// The FFSD cohort (ffsd.hpp) is a learner too.

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "config.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/schedule.hpp"
#include "losses.hpp"
#include "models.hpp"

namespace fkd {

/// A mini-batch in host memory: images (B, 1, 28, 28), normalised, and labels (B).
struct batch {
  cview<4> images;
  std::span<const std::int64_t> labels;
  index_t size() const { return images.extent(0); }
};

/// Where the run is: for schedules and warm-ups.
struct step_info {
  int epoch = 0;                ///< 0-based
  index_t step_in_epoch = 0;    ///< 0-based
  index_t steps_per_epoch = 1;
  /// Epochs done when this step ends (0.01, 0.02, ..., 1, 1.01, ...).
  double epochs_done() const { return epoch + static_cast<double>(step_in_epoch + 1) / static_cast<double>(steps_per_epoch); }
};

/// One network a learner can be evaluated on (a row of the results table, or part of one).
struct evaluated_net {
  std::string name;  ///< "ce", "ffsd_leader", "ffsd_student0", ...
  staged_net* net;
};

class learner {
 public:
  virtual ~learner() = default;
  /// The training loss on the batch, and its gradients in every trainable parameter (zeroed
  /// first); `teacher` holds its outputs on this batch (null for methods without a teacher).
  virtual double compute_gradients(const distill::cpu& ctx, const batch& b, staged_net* teacher, const step_info& at) = 0;
  /// One step of every optimiser from the gradients.
  virtual void step(const distill::cpu& ctx) = 0;
  /// One process: the gradients, then the step (the trainer combines ranks' gradients between them).
  double train_step(const distill::cpu& ctx, const batch& b, staged_net* teacher, const step_info& at) {
    const double l = compute_gradients(ctx, b, teacher, at);
    step(ctx);
    return l;
  }
  /// Data-parallel training: this process's share of every batch (trainer.hpp).
  virtual void set_replica(const nn::replica& r) = 0;
  /// Every trainable parameter and buffer (for checks and checkpoints).
  virtual param_list parameters() = 0;
  /// The networks to evaluate (the deployed ones).
  virtual std::vector<evaluated_net> evaluated() = 0;
  virtual void save(nn::checkpoint& ck) = 0;
  virtual void load(const nn::checkpoint& ck) = 0;
};

// ---- checkpoint helpers: several optimisers in one file, each under its own prefix --------------

template <class Optimizer>
void save_optimizer(nn::checkpoint& ck, const std::string& prefix, Optimizer& opt) {
  nn::checkpoint one;
  distill::throw_if_error(one.add_optimizer(opt));
  for (const auto& [name, e] : one.entries()) {
    distill::throw_if_error(e.dtype == nn::checkpoint_dtype::f32
                                ? ck.put(prefix + name, reinterpret_cast<const float*>(e.bytes.data()), e.shape)
                                : ck.put(prefix + name, reinterpret_cast<const std::int64_t*>(e.bytes.data()), e.shape));
  }
}
template <class Optimizer>
void load_optimizer(const nn::checkpoint& ck, const std::string& prefix, Optimizer& opt) {
  nn::checkpoint one;
  for (const auto& [name, e] : ck.entries()) {
    if (name.rfind(prefix + "optim/", 0) != 0) continue;
    const std::string own = name.substr(prefix.size());
    distill::throw_if_error(e.dtype == nn::checkpoint_dtype::f32
                                ? one.put(own, reinterpret_cast<const float*>(e.bytes.data()), e.shape)
                                : one.put(own, reinterpret_cast<const std::int64_t*>(e.bytes.data()), e.shape));
  }
  distill::throw_if_error(one.restore_optimizer(opt));
}

/// Copies every parameter and buffer value of `from` into `to` (same architecture).
inline void copy_parameters(staged_net& from, staged_net& to) {
  const auto a = from.parameters(), b = to.parameters();
  if (a.size() != b.size()) throw std::runtime_error("copy_parameters: different architectures");
  for (std::size_t i = 0; i < a.size(); ++i) distill::throw_if_error(b[i]->value.copy_from_host(a[i]->value.to_host()));
}

/// SGD with Nesterov momentum whose learning rate follows a cosine over the whole run (per step).
struct scheduled_sgd {
  nn::sgd<float> opt;
  nn::lr_schedule schedule;
  scheduled_sgd(const param_list& params, const optimiser_config& c, index_t total_steps, double weight_decay)
      : opt(params, nn::sgd_options{c.lr, c.momentum, 0.0, weight_decay, true, 0.0}), schedule(nn::lr_schedule::cosine(c.lr, total_steps)) {}
  void step(const distill::cpu& ctx) {
    opt.options.lr = schedule(opt.steps());
    distill::throw_if_error(opt.step(ctx));
  }
};

// ---- the single-student methods --------------------------------------------------------------------

class student_learner final : public learner {
 public:
  /// `net_name` names the network's parameters (and keys their random initialisation): by
  /// default "student" or "mlp", so every method of a seed starts from the same weights.
  student_learner(const std::string& method, const run_config& cfg, std::uint64_t seed, index_t total_steps, staged_net* teacher,
                  const std::string& net_name = "")
      : threads_(cfg.threads),
        method_(method),
        row_(net_name.empty() ? method : net_name),
        loss_(cfg.loss),
        net_(!net_name.empty() ? net_name : is_mlp(method) ? "mlp" : "student", is_mlp(method) ? cfg.mlp : cfg.student, seed),
        sgd_(all_parameters(cfg, seed, teacher), cfg.student_opt, total_steps, cfg.student_opt.weight_decay) {}

  double compute_gradients(const distill::cpu& ctx, const batch& b, staged_net* teacher, const step_info& at) override {
    const auto y = loss::labels_of(b.labels);
    distill::throw_if_error(nn::zero_grad(ctx, sgd_.opt.params()));
    net_.set_training(true);
    distill::throw_if_error(net_.forward(ctx, b.images));
    distill::throw_if_error(dlogits_.resize(net_.logits().shape()));
    const auto z = net_.logits().cview<2>();
    const auto dz = dlogits_.view<2>();
    feature_grads_.assign(net_.stage_count(), nullptr);
    double l = 0;
    if (method_ == "ce" || method_ == "mlp_ce" || method_ == "stats" || method_ == "adain" || method_ == "at") {
      l = loss::cross_entropy(ctx, z, y, dz);
    } else if (method_ == "kd" || method_ == "mlp_kd" || method_ == "at_kd") {
      l = loss::hinton_kd(ctx, z, teacher->logits().cview<2>(), y, loss_.kd_temperature, loss_.kd_alpha, dz);
    } else if (method_ == "dkd") {
      const double warm = loss_.dkd_warmup_epochs > 0 ? std::min(1.0, at.epochs_done() / loss_.dkd_warmup_epochs) : 1.0;
      l = loss::dkd(ctx, z, teacher->logits().cview<2>(), y, loss_.dkd_alpha, loss_.dkd_beta, loss_.dkd_temperature, warm, dz);
    }
    if (method_ == "at" || method_ == "at_kd") l += attention_terms(ctx, *teacher);
    if (method_ == "stats" || method_ == "adain") l += statistics_term(ctx, *teacher);
    distill::throw_if_error(net_.backward(ctx, dlogits_.cview<2>(), feature_grads_));
    return l;
  }
  void step(const distill::cpu& ctx) override { sgd_.step(ctx); }
  void set_replica(const nn::replica& r) override {
    net_.set_replica(r);
    if (connector_) connector_->set_replica(r);
  }
  param_list parameters() override {
    auto p = net_.parameters();
    if (connector_) {
      const auto c = connector_->parameters();
      p.insert(p.end(), c.begin(), c.end());
    }
    return p;
  }

  std::vector<evaluated_net> evaluated() override { return {{row_, &net_}}; }
  staged_net& net() { return net_; }

  void save(nn::checkpoint& ck) override {
    distill::throw_if_error(ck.add_parameters(parameters()));
    save_optimizer(ck, "", sgd_.opt);
    net_.save_state(ck, "");
  }
  void load(const nn::checkpoint& ck) override {
    distill::throw_if_error(ck.restore_parameters(parameters()));
    load_optimizer(ck, "", sgd_.opt);
    net_.load_state(ck, "");
  }

 private:
  static bool is_mlp(const std::string& method) { return method.rfind("mlp", 0) == 0; }

  /// The student's parameters, and the connector's for the statistics methods (built here so the
  /// optimiser sees them).
  param_list all_parameters(const run_config& cfg, std::uint64_t seed, staged_net* teacher) {
    auto p = net_.parameters();
    if (method_ == "stats" || method_ == "adain") {
      if (!teacher) throw std::runtime_error(method_ + " needs the teacher");
      const int cs = cfg.student.channels.back(), ct = cfg.teacher.channels.back();
      connector_.emplace(make_connector(method_ + ".connector", cs, ct, seed));
      const auto c = connector_->parameters();
      p.insert(p.end(), c.begin(), c.end());
      if (method_ == "adain") {  // a private copy of the teacher, so its head's caches are ours
        teacher_copy_ = std::make_unique<staged_net>("teacher", cfg.teacher, 0);
        copy_parameters(*teacher, *teacher_copy_);
        nn::set_trainable(teacher_copy_->parameters(), false);
        teacher_copy_->set_training(false);
      }
    }
    return p;
  }

  tensor& feature_grad(std::size_t k) {
    if (stage_grad_store_.size() < net_.stage_count()) stage_grad_store_.resize(net_.stage_count());
    tensor& g = stage_grad_store_[k];
    distill::throw_if_error(g.resize(net_.stage_output(k).shape()));
    feature_grads_[k] = &g;
    return g;
  }

  /// beta/2 sum over student stages of AT against the teacher stage of the same resolution.
  double attention_terms(const distill::cpu& ctx, staged_net& teacher) {
    double l = 0;
    for (std::size_t k = 0; k < net_.stage_count(); ++k) {
      const auto& fs = net_.stage_output(k);
      const auto& ft = teacher.stage_output(matching_teacher_stage(teacher, fs.extent(2)));
      l += loss::attention_transfer(ctx, fs.cview<4>(), ft.cview<4>(), loss_.at_beta / 2, feature_grad(k).view<4>(), false);
    }
    return l;
  }

  /// The statistics term (stats or adain) through the connector, on the last stage.
  double statistics_term(const distill::cpu& ctx, staged_net& teacher) {
    const std::size_t last = net_.stage_count() - 1;
    const auto& fs = net_.stage_output(last);
    const std::size_t kt = matching_teacher_stage(teacher, fs.extent(2));
    const auto& ft = teacher.stage_output(kt);
    distill::throw_if_error(connector_->forward(ctx, fs.cview<4>()));
    const tensor& r = connector_->output();
    distill::throw_if_error(connector_grad_.resize(r.shape()));
    double l = 0;
    if (method_ == "stats") {
      l = loss::stats_l2(ctx, r.cview<4>(), ft.cview<4>(), loss_.stats_weight, connector_grad_.view<4>());
    } else {
      if (kt + 1 != teacher.stage_count()) throw std::runtime_error("adain: the compared teacher stage must be its last (O = the teacher's head)");
      l = loss::adain_kd(ctx, r.cview<4>(), ft.cview<4>(), head_of(*teacher_copy_), loss_.adain_weight, connector_grad_.view<4>(), adain_buf_);
    }
    distill::throw_if_error(connector_->backward(ctx, fs.cview<4>(), connector_grad_.cview<4>(), feature_grad(last).view<1>()));
    return l;
  }

  /// O = the frozen teacher head: forward, and the vector-Jacobian product (re-running the
  /// forward at its input, since the head keeps the caches of its last forward only).
  loss::teacher_head head_of(staged_net& t) {
    nn::sequential<float>* head = &t.head();
    const distill::cpu ctx{threads_};
    loss::teacher_head h;
    h.forward = [head, ctx](cview<4> in, view<2> out) -> distill::status {
      DISTILL_TRY(head->forward(ctx, in));
      std::copy_n(head->output().data(), out.size(), out.data());
      return {};
    };
    h.vjp = [head, ctx](cview<4> in, cview<2> grad_out, view<4> grad_in) -> distill::status {
      DISTILL_TRY(head->forward(ctx, in));
      return head->backward(ctx, in, grad_out, grad_in);
    };
    return h;
  }

  int threads_;
  std::string method_, row_;
  loss_config loss_;
  staged_net net_;
  std::optional<nn::sequential<float>> connector_;
  std::unique_ptr<staged_net> teacher_copy_;
  scheduled_sgd sgd_;
  tensor dlogits_, connector_grad_;
  std::vector<tensor> stage_grad_store_;
  std::vector<const tensor*> feature_grads_;
  loss::adain_kd_buffers adain_buf_;
};

}  // namespace fkd
