// SPDX-License-Identifier: MIT
#pragma once
// The Relation Networks of the example, written once for both memory spaces:
// rn_model<host_space> runs on distill::cpu, rn_model<cuda_space> on an nn::cuda_blas (the
// .cu translation unit instantiates it). Every computation is a distill call on views.
//
//   objects o [B, N, D]:  state descriptions (N = 6, D = 10), or the 25 cells of a 4-layer CNN
//                         (conv 3x3 stride 2 -> ReLU -> batch norm, 75 -> 38 -> 19 -> 10 -> 5)
//                         with their 2 coordinates appended (D = C + 2), as in Relation Networks
//   pair weights M:       none (all ones), the logic mask, or predicted by the pair scorer
//                         (softmax over the N^2 pairs, scaled by N as in the prototype)
//   r = sum_ij M_ij g(o_i, o_j, q)      relational_pairing (g: L layers, ReLU)
//   logits = f(r)                       nn::linear + ReLU (+ dropout before the last layer)
//
// Losses (model_spec says which apply):
//   CE(logits, answer)                                           every model (students: weight 1 - alpha)
//   alpha T^2 KL(softmax(teacher/T) || softmax(student/T))        students (kl_teacher_student)
//   pair_weight * CE(softmax(scores), M_logic / sum M_logic)      teacher_predicted (pair_scorer_loss)
//   attention_weight * KL(M_teacher / sum || softmax(scores))     student (b) (attention_map_kl_teacher_student)
//   pixels, students: at_weight * AT(a_k^s, a_k^t) for conv blocks k = 1..3,
//                     adain_weight * AdaIN-statistics(a_3^s, a_3^t),
//                     nce_weight * token InfoNCE(student cells, teacher cells, queue of teacher cells)

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/attention/attention_map.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/features/adain.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/nn/activation.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/dropout.hpp"
#include "distill/nn/init.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/reshape.hpp"
#include "distill/nn/tensor.hpp"
#include "distill/relational/pair_scorer.hpp"
#include "distill/relational/pairing.hpp"
#include "runner.hpp"

#if DISTILL_CUDA_COMPILER
#include <cuda_runtime.h>
#endif

namespace vqa {

template <class Space>
class rn_model final : public model_runner {
  using T = float;
  using ctx_t = distill::nn::exec_t<Space>;
  using tensor = distill::nn::tensor<T, Space>;
  using param = distill::nn::parameter<T, Space>;
  template <int R>
  using view = distill::tensor_view<T, R, Space>;
  template <int R>
  using cview = distill::tensor_view<const T, R, Space>;
  using byte_view = distill::tensor_view<std::byte, 1, Space>;
  static constexpr bool on_cuda = std::is_same_v<Space, distill::cuda_space>;
  static constexpr int question_dim = 11, answers = 10, state_dim = 10, cells = 25;

 public:
  rn_model(const model_spec& spec, const train_config& cfg)
      : spec_(spec), cfg_(cfg), ctx_(make_context(cfg)), N_(cfg.pixels ? cells : 6), D_(cfg.pixels ? cfg.cnn_channels + 2 : state_dim) {
    using namespace distill;
    const std::uint64_t seed = cfg.seed * 1000003ull + std::hash<std::string>{}(spec.name) % 1000003ull;
    const nn::init_options init{seed, nn::init_scheme::torch_default, 0};
    if (cfg.pixels) {
      for (int k = 0; k < 4; ++k) {
        const std::string n = "cnn." + std::to_string(k);
        conv_.emplace_back(n + ".conv", k ? cfg.cnn_channels : 3, cfg.cnn_channels, 3, nn::conv2d_params{2, 2, 1, 1}, init);
        bn_.emplace_back(n + ".bn", cfg.cnn_channels);
      }
    }
    const index_t H = spec.g_hidden, L = spec.g_layers;
    g_w_.reserve(static_cast<std::size_t>(L));
    g_b_.reserve(static_cast<std::size_t>(L));
    for (index_t l = 0; l < L; ++l) {
      const index_t in = l ? H : 2 * D_ + question_dim;
      g_w_.emplace_back("g." + std::to_string(l) + ".weight", nn::tensor_shape{in, H});
      g_b_.emplace_back("g." + std::to_string(l) + ".bias", nn::tensor_shape{H});
      throw_if_error(nn::init_weight_and_bias(g_w_.back(), &g_b_.back(), in, H, init));
    }
    if (spec.mask == mask_source::predicted) {
      const index_t K = spec.scorer_hidden;
      scorer_.emplace_back("scorer.w1", nn::tensor_shape{2 * D_ + question_dim, K});
      scorer_.emplace_back("scorer.b1", nn::tensor_shape{K});
      scorer_.emplace_back("scorer.w2", nn::tensor_shape{K, 1});
      scorer_.emplace_back("scorer.b2", nn::tensor_shape{1});
      throw_if_error(nn::init_weight_and_bias(scorer_[0], &scorer_[1], 2 * D_ + question_dim, K, init));
      throw_if_error(nn::init_weight_and_bias(scorer_[2], &scorer_[3], K, 1, init));
    }
    index_t in = H;
    for (std::size_t i = 0; i < spec.f_hidden.size(); ++i) {
      f_.emplace_back("f." + std::to_string(i), in, spec.f_hidden[i], init);
      in = spec.f_hidden[i];
    }
    f_.emplace_back("f." + std::to_string(spec.f_hidden.size()), in, answers, init);
    dropout_ = nn::dropout<T, Space>(cfg.f_dropout, seed ^ 0xD209);

    for (auto& c : conv_) append(params_, c.parameters());
    for (auto& b : bn_) append(params_, b.parameters());
    for (auto& p : g_w_) params_.push_back(&p);
    for (auto& p : g_b_) params_.push_back(&p);
    for (auto& p : scorer_) params_.push_back(&p);
    for (auto& l : f_) append(params_, l.parameters());
    opt_ = std::make_unique<nn::adam<T, Space>>(params_, nn::adam_options{cfg.lr});

    f_z_.resize(f_.size());
    f_a_.resize(f_.size());
    if (cfg.pixels) {
      cnn_z_.resize(4), cnn_r_.resize(4), cnn_a_.resize(4);
      cnn_dz_.resize(4), cnn_dr_.resize(4), cnn_da_.resize(4);
    }
  }

  const model_spec& spec() const override { return spec_; }

  std::int64_t parameter_count() const override {
    std::int64_t n = 0;
    for (const auto* p : params_)
      if (!p->buffer) n += p->value.size();
    return n;
  }

  distill::status train_step(const host_batch& b, model_runner* teacher_base, double lr, double& loss_out) override {
    rn_model* teacher = nullptr;
    DISTILL_TRY(compute_gradients(b, teacher_base, loss_out, &teacher));
    opt_->options.lr = lr;
    DISTILL_TRY(opt_->step(ctx_));
    if (teacher && cfg_.pixels && spec_.distill_features) DISTILL_TRY(enqueue_teacher_tokens(*teacher));
    return {};
  }

  /// The training loss of the batch (every term times its weight: the objective the gradients
  /// belong to) and the gradients of all parameters, without an optimiser step.
  distill::status compute_gradients(const host_batch& b, model_runner* teacher_base, double& loss_out,
                                    rn_model** teacher_out = nullptr) {
    using namespace distill;
    rn_model* teacher = nullptr;
    if (spec_.distill_logits || spec_.distill_pairs || (spec_.distill_features && cfg_.pixels)) {
      teacher = dynamic_cast<rn_model*>(teacher_base);
      if (!teacher) return fail(errc::invalid_argument, "rn_model::train_step", "'" + spec_.name + "' needs a teacher on the same device");
      DISTILL_TRY(teacher->forward(b, false));
    }
    DISTILL_TRY(upload_batch(b, true));
    set_training(true);
    DISTILL_TRY(nn::zero_grad(ctx_, params_));
    DISTILL_TRY(forward(b, true, /*uploaded=*/true));
    const index_t B = b.size;
    losses_.clear(), loss_weights_.clear();

    // ---- loss on the logits -> d_logits
    DISTILL_TRY(d_logits_.resize({B, answers}));
    if (spec_.distill_logits) {
      soft_target_options kd;
      kd.temperature = static_cast<float>(cfg_.temperature);
      kd.soft_weight = static_cast<float>(cfg_.alpha);
      kd.hard_label_weight = static_cast<float>(1.0 - cfg_.alpha);
      soft_target_extras<float, Space> extras;
      extras.labels = answers_.template cview<1>();
      if constexpr (on_cuda) {
        DISTILL_TRY(ws_soft_.resize({static_cast<index_t>(soft_target_workspace_bytes(B))}));
        extras.workspace = ws_soft_.template view<1>();
      }
      DISTILL_TRY(kl_teacher_student_forward_backward(ctx_, logits_.template cview<2>(), teacher->logits_.template cview<2>(),
                                                      next_loss(), d_logits_.template view<2>(), kd, extras));
    } else {
      DISTILL_TRY((nn::softmax_cross_entropy_forward_backward<std::int64_t, T>(ctx_, logits_.template cview<2>(),
                                                                               answers_.template cview<1>(), next_loss(),
                                                                               d_logits_.template view<2>())));
    }

    // ---- f backward -> d_pooled
    DISTILL_TRY(f_backward());

    // ---- pairing backward -> g gradients, d_objects (pixels), d_pair_weights (predicted)
    const bool need_objects_grad = cfg_.pixels;
    if (need_objects_grad) {
      DISTILL_TRY(d_objects_.resize({B, N_, D_}));
      DISTILL_TRY(nn::fill_zero(ctx_, d_objects_.template view<1>()));
    }
    relational_pairing_grads<T, Space> pg;
    if (need_objects_grad) pg.objects = d_objects_.template view<3>();
    if (spec_.mask == mask_source::predicted) {
      DISTILL_TRY(d_weights_.resize({B, N_, N_}));
      DISTILL_TRY(nn::fill_zero(ctx_, d_weights_.template view<1>()));  // the pairing accumulates into it
      pg.pair_mask = d_weights_.template view<3>();
    }
    pg.g = mlp_grads();
    DISTILL_TRY(relational_pairing_backward(ctx_, objects(), questions_.template cview<2>(), pair_mask(), no_object_mask(), mlp(),
                                            d_pooled_.template cview<2>(), pg, pairing_workspace(B), pairing_options()));

    // ---- predicted pair weights: supervision / attention distillation, then the scorer backward
    if (spec_.mask == mask_source::predicted) DISTILL_TRY(scorer_backward(B, teacher));

    // ---- pixels: back through the CNN (+ feature distillation from the teacher's CNN)
    if (cfg_.pixels) DISTILL_TRY(cnn_backward(b, teacher));
    if (teacher_out) *teacher_out = teacher;
    return sum_losses(loss_out);
  }

  /// Every trainable parameter and buffer (values and gradients), e.g. for gradient checks.
  const distill::nn::parameter_list<T, Space>& parameters() const { return params_; }

  distill::status predict(const host_batch& b, std::int32_t* out, float* pair_weights) override {
    using namespace distill;
    DISTILL_TRY(forward(b, false));
    const index_t B = b.size;
    std::vector<float> logits(static_cast<std::size_t>(B * answers));
    DISTILL_TRY(download(logits_, logits.data()));
    for (index_t i = 0; i < B; ++i) {
      const float* row = logits.data() + i * answers;
      out[i] = static_cast<std::int32_t>(std::max_element(row, row + answers) - row);
    }
    if (pair_weights) {
      const std::size_t n = static_cast<std::size_t>(B * N_ * N_);
      if (spec_.mask == mask_source::none) std::fill(pair_weights, pair_weights + n, 1.0f);
      else if (spec_.mask == mask_source::logic) std::copy(b.logic_mask, b.logic_mask + n, pair_weights);
      else DISTILL_TRY(download(weights_, pair_weights));
    }
    return {};
  }

  distill::status save(const std::string& path, int epoch, const std::string& meta) override {
    using namespace distill;
    nn::checkpoint ck;
    DISTILL_TRY(ck.add_parameters(params_));
    DISTILL_TRY(ck.add_optimizer(*opt_));
    ck.put_int("epoch", epoch);
    ck.put_int("dropout_offset", static_cast<std::int64_t>(dropout_.offset));
    ck.put_string("meta", meta);
    ck.put_string("model", spec_.name);
    DISTILL_TRY(save_queue_state(ck));
    return ck.save(path);
  }

  distill::status load(const std::string& path, int& epoch, std::string& meta) override {
    using namespace distill;
    nn::checkpoint ck;
    DISTILL_TRY(nn::checkpoint::load(path, ck));
    std::string name;
    DISTILL_TRY(ck.get_string("model", name));
    if (name != spec_.name)
      return fail(errc::corrupt_data, "rn_model::load", "'" + path + "' holds model '" + name + "', not '" + spec_.name + "'");
    DISTILL_TRY(ck.restore_parameters(params_));
    DISTILL_TRY(ck.restore_optimizer(*opt_));
    std::int64_t e = 0, offset = 0;
    DISTILL_TRY(ck.get_int("epoch", e));
    DISTILL_TRY(ck.get_int("dropout_offset", offset));
    DISTILL_TRY(ck.get_string("meta", meta));
    DISTILL_TRY(load_queue_state(ck, path));
    epoch = static_cast<int>(e);
    dropout_.offset = static_cast<std::uint64_t>(offset);
    return {};
  }

 private:
  static ctx_t make_context(const train_config& cfg) {
    if constexpr (on_cuda) return ctx_t(nullptr, distill::nn::gemm_math::tf32);
    else return ctx_t{cfg.threads};
  }
  template <class A, class B>
  static void append(A& to, const B& from) {
    to.insert(to.end(), from.begin(), from.end());
  }

  void set_training(bool on) {
    for (auto& b : bn_) b.set_training(on);
    dropout_.training = on;
  }

  // ---- host <-> Space copies (synchronous on CUDA: the host batch is reused right after)
  template <class U>
  distill::status upload(distill::nn::tensor<U, Space>& dst, const U* src, const distill::nn::tensor_shape& shape) {
    DISTILL_TRY(dst.resize(shape));
    if constexpr (on_cuda) return dst.copy_from_host(src, shape.size());
    else {
      std::memcpy(dst.data(), src, static_cast<std::size_t>(shape.size()) * sizeof(U));
      return {};
    }
  }
  distill::status download(const tensor& src, float* dst) {
    if constexpr (on_cuda) {
      const auto h = src.to_host();
      std::copy(h.begin(), h.end(), dst);
    } else {
      std::memcpy(dst, src.data(), static_cast<std::size_t>(src.size()) * sizeof(float));
    }
    return {};
  }
  /// dst[:, dst_col : dst_col + width] = src[:, src_col : src_col + width] for row-major matrices.
  distill::status copy_columns(const T* src, distill::index_t src_ld, distill::index_t src_col, T* dst, distill::index_t dst_ld,
                               distill::index_t dst_col, distill::index_t rows, distill::index_t width) {
    if constexpr (on_cuda) {
#if DISTILL_CUDA_COMPILER
      const cudaError_t e = cudaMemcpy2DAsync(dst + dst_col, static_cast<std::size_t>(dst_ld) * sizeof(T), src + src_col,
                                              static_cast<std::size_t>(src_ld) * sizeof(T), static_cast<std::size_t>(width) * sizeof(T),
                                              static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(ctx_.stream));
      if (e != cudaSuccess) return distill::status(distill::errc::cuda_error, std::string("copy_columns: ") + cudaGetErrorString(e));
#endif
    } else {
      for (distill::index_t r = 0; r < rows; ++r)
        std::memcpy(dst + r * dst_ld + dst_col, src + r * src_ld + src_col, static_cast<std::size_t>(width) * sizeof(T));
    }
    return {};
  }

  distill::status upload_batch(const host_batch& b, bool with_answers) {
    using distill::index_t;
    const index_t B = b.size;
    if (b.objects != N_)
      return distill::fail(distill::errc::shape_mismatch, "rn_model", "the batch has " + std::to_string(b.objects) +
                                                                          " objects per scene, the model " + std::to_string(N_));
    DISTILL_TRY(upload(questions_, b.questions, {B, question_dim}));
    if (cfg_.pixels) DISTILL_TRY(upload(images_, b.images, {B, 3, 75, 75}));
    else DISTILL_TRY(upload(objects_, b.state, {B, N_, D_}));
    if (with_answers && b.answers) DISTILL_TRY(upload(answers_, b.answers, {B}));
    if (b.logic_mask) {
      DISTILL_TRY(upload(logic_, b.logic_mask, {B, N_, N_}));
      // The teacher's pair distribution for student (b): the mask normalised over the pairs.
      target_host_.assign(b.logic_mask, b.logic_mask + B * N_ * N_);
      for (index_t i = 0; i < B; ++i) {
        float* m = target_host_.data() + i * N_ * N_;
        double s = 0;
        for (index_t k = 0; k < N_ * N_; ++k) s += m[k];
        for (index_t k = 0; k < N_ * N_; ++k) m[k] = s > 0 ? static_cast<float>(m[k] / s) : 0.0f;
      }
      DISTILL_TRY(upload(target_, target_host_.data(), {B, 1, 1, N_ * N_}));
    }
    uploaded_ = B;
    return {};
  }

  // ---- views of the current batch
  distill::tensor_view<const T, 3, Space> objects() const { return objects_.template cview<3>(); }
  distill::tensor_view<const T, 3, Space> pair_mask() const {
    if (spec_.mask == mask_source::logic) return logic_.template cview<3>();
    if (spec_.mask == mask_source::predicted) return weights_.template cview<3>();
    return {};
  }
  static distill::tensor_view<const std::uint8_t, 2, Space> no_object_mask() { return {}; }
  distill::relational_pairing_options pairing_options() const {
    distill::relational_pairing_options o;
    o.include_self_pairs = true;  // the non-relational mask is the pair (c, c)
    o.mask_scale = spec_.mask == mask_source::predicted ? static_cast<float>(N_) : 1.0f;
    o.accumulate = true;          // into zeroed parameter gradients and d_objects
    if constexpr (on_cuda) o.math = distill::pairing_math::tf32;
    return o;
  }
  distill::relational_mlp<const T, Space> mlp() const {
    distill::relational_mlp<const T, Space> g;
    g.layers = static_cast<int>(g_w_.size());
    for (std::size_t l = 0; l < g_w_.size(); ++l) {
      g.weight[l] = g_w_[l].value.template cview<2>();
      g.bias[l] = g_b_[l].value.template cview<1>();
    }
    return g;
  }
  distill::relational_mlp<T, Space> mlp_grads() {
    distill::relational_mlp<T, Space> g;
    g.layers = static_cast<int>(g_w_.size());
    for (std::size_t l = 0; l < g_w_.size(); ++l) {
      g.weight[l] = g_w_[l].grad.template view<2>();
      g.bias[l] = g_b_[l].grad.template view<1>();
    }
    return g;
  }
  byte_view pairing_workspace(distill::index_t B) {
    const std::size_t n = distill::relational_pairing_workspace_size(ctx_, B, N_, D_, question_dim, spec_.g_hidden, spec_.g_layers,
                                                                      pairing_options());
    return sized(ws_pairing_, n);
  }
  /// The workspace view of `bytes` bytes (absent if it cannot be allocated: the primitive then
  /// reports a missing workspace).
  byte_view sized(distill::nn::tensor<std::byte, Space>& ws, std::size_t bytes) {
    if (!ws.resize({static_cast<distill::index_t>(bytes)}).ok()) return {};
    return ws.template view<1>();
  }
  distill::pair_scorer_weights<const T, Space> scorer_weights() const {
    distill::pair_scorer_weights<const T, Space> w;
    w.kind = distill::pair_scorer_kind::mlp;
    w.w1 = scorer_[0].value.template cview<2>();
    w.b1 = scorer_[1].value.template cview<1>();
    w.w2 = scorer_[2].value.template cview<2>();
    w.b2 = scorer_[3].value.template cview<1>();
    return w;
  }
  distill::pair_scorer_options scorer_options(double grad_scale = 1.0) const {
    distill::pair_scorer_options o;
    o.normalization = distill::pair_normalization::softmax_all;
    o.include_self_pairs = true;
    o.accumulate = true;
    o.red = distill::reduction::batchmean;
    o.grad_scale = static_cast<float>(grad_scale);
    return o;
  }
  byte_view scorer_workspace(distill::index_t B) {
#if DISTILL_CUDA_COMPILER
    if constexpr (on_cuda) return sized(ws_scorer_, distill::pair_scorer_workspace_size(ctx_, B, N_, D_, question_dim, spec_.scorer_hidden));
#endif
    (void)B;
    return {};
  }

  /// Next loss scalar: each loss term writes its own; `weight` is what its gradient was scaled
  /// by (grad_scale), so that the weighted sum on the host is the objective being minimised.
  distill::tensor_view<float, 1, Space> next_loss(double weight = 1.0) {
    losses_.emplace_back();
    loss_weights_.push_back(weight);
    throw_if_error(losses_.back().resize({1}));
    return losses_.back().template view<1>();
  }
  distill::status sum_losses(double& total) {
    total = 0;
    for (std::size_t i = 0; i < losses_.size(); ++i) {
      float v = 0;
      DISTILL_TRY(download(losses_[i], &v));
      total += loss_weights_[i] * v;
    }
    return {};
  }

  // ---- forward: objects (-> CNN), pair weights, pairing, f
  distill::status forward(const host_batch& b, bool training, bool uploaded = false) {
    using namespace distill;
    if (!uploaded) {
      DISTILL_TRY(upload_batch(b, false));
      set_training(training);
    }
    const index_t B = b.size;
    if (cfg_.pixels) DISTILL_TRY(cnn_forward(B));
    if (spec_.mask == mask_source::predicted) {
      DISTILL_TRY(scores_.resize({B, N_, N_}));
      DISTILL_TRY(weights_.resize({B, N_, N_}));
      if constexpr (on_cuda)
        DISTILL_TRY(pair_scorer_forward(ctx_, objects(), questions_.template cview<2>(), no_object_mask(), scorer_weights(),
                                        scores_.template view<3>(), weights_.template view<3>(), scorer_workspace(B), scorer_options()));
      else
        DISTILL_TRY(pair_scorer_forward(ctx_, objects(), questions_.template cview<2>(), no_object_mask(), scorer_weights(),
                                        scores_.template view<3>(), weights_.template view<3>(), scorer_options()));
    }
    DISTILL_TRY(pooled_.resize({B, spec_.g_hidden}));
    DISTILL_TRY(relational_pairing_forward(ctx_, objects(), questions_.template cview<2>(), pair_mask(), no_object_mask(), mlp(),
                                           pooled_.template view<2>(), pairing_workspace(B), pairing_options()));
    // f: linear -> ReLU for the hidden layers, dropout before the last linear layer
    const tensor* x = &pooled_;
    for (std::size_t i = 0; i < f_.size(); ++i) {
      const bool last = i + 1 == f_.size();
      if (last && cfg_.f_dropout > 0) {
        DISTILL_TRY(f_drop_.resize(x->shape()));
        DISTILL_TRY(dropout_.forward(ctx_, x->template cview<2>(), f_drop_.template view<2>()));
        x = &f_drop_;
      }
      tensor& z = last ? logits_ : f_z_[i];
      DISTILL_TRY(z.resize({B, f_[i].out_features}));
      DISTILL_TRY(f_[i].forward(ctx_, x->template cview<2>(), z.template view<2>()));
      if (!last) {
        DISTILL_TRY(f_a_[i].resize(z.shape()));
        DISTILL_TRY(nn::activation_forward(ctx_, nn::activation::relu, z.template cview<2>(), f_a_[i].template view<2>()));
        x = &f_a_[i];
      }
    }
    return {};
  }

  /// d_logits -> d_pooled through f (hidden layers: linear -> ReLU; dropout before the last).
  distill::status f_backward() {
    using namespace distill;
    const std::size_t n = f_.size();
    const bool drop = cfg_.f_dropout > 0;
    auto other = [&](const tensor* t) -> tensor& { return t == &d_f_[0] ? d_f_[1] : d_f_[0]; };
    auto input_of = [&](std::size_t i) -> const tensor& { return i == 0 ? pooled_ : f_a_[i - 1]; };
    // last layer: d(its input) = d_logits W, then back through the dropout
    tensor& d_in = (n == 1 && !drop) ? d_pooled_ : d_f_[0];
    const tensor& in_last = drop ? f_drop_ : input_of(n - 1);
    DISTILL_TRY(d_in.resize(in_last.shape()));
    DISTILL_TRY(f_.back().backward(ctx_, in_last.template cview<2>(), d_logits_.template cview<2>(), d_in.template view<2>()));
    tensor* dx = &d_in;  // gradient of the last layer's (pre-dropout) input
    if (drop) {
      tensor& t = n == 1 ? d_pooled_ : d_f_[1];
      DISTILL_TRY(t.resize(d_in.shape()));
      DISTILL_TRY(dropout_.backward(ctx_, d_in.template cview<2>(), t.template view<2>()));
      dx = &t;
    }
    for (std::size_t i = n - 1; i-- > 0;) {  // dx = d a_i: through ReLU, then linear i
      tensor& dz = other(dx);
      DISTILL_TRY(dz.resize(f_z_[i].shape()));
      DISTILL_TRY(nn::activation_backward(ctx_, nn::activation::relu, f_z_[i].template cview<2>(), dx->template cview<2>(),
                                          dz.template view<2>()));
      tensor& dxi = i == 0 ? d_pooled_ : other(&dz);
      DISTILL_TRY(dxi.resize(input_of(i).shape()));
      DISTILL_TRY(f_[i].backward(ctx_, input_of(i).template cview<2>(), dz.template cview<2>(), dxi.template view<2>()));
      dx = &dxi;
    }
    return {};
  }

  distill::status scorer_backward(distill::index_t B, rn_model* teacher) {
    using namespace distill;
    DISTILL_TRY(d_scores_.resize({B, N_, N_}));
    DISTILL_TRY(nn::fill_zero(ctx_, d_scores_.template view<1>()));
    if (spec_.supervise_pairs) {  // CE(softmax(scores), logic mask / sum)
      auto o = scorer_options(cfg_.pair_weight);
      if constexpr (on_cuda)
        DISTILL_TRY(pair_scorer_loss_forward_backward(ctx_, scores_.template cview<3>(), logic_.template cview<3>(), no_object_mask(),
                                                      next_loss(cfg_.pair_weight), d_scores_.template view<3>(), scorer_workspace(B), o));
      else
        DISTILL_TRY(pair_scorer_loss_forward_backward(ctx_, scores_.template cview<3>(), logic_.template cview<3>(), no_object_mask(),
                                                      next_loss(cfg_.pair_weight), d_scores_.template view<3>(), o));
    }
    if (spec_.distill_pairs) {  // KL(teacher pair distribution || softmax(scores)) over the N^2 pairs
      (void)teacher;            // teacher_logic's pair mask is the logic mask of the batch
      attention_map_options o;
      o.student_input = attention_input::logits;
      o.teacher_input = attention_input::probabilities;
      o.red = reduction::batchmean;
      o.grad_scale = cfg_.attention_weight;
      o.accumulate = true;
      const auto s4 = reshape<4>(scores_.template cview<3>(), {B, 1, 1, N_ * N_});
      const auto d4 = reshape<4>(d_scores_.template view<3>(), {B, 1, 1, N_ * N_});
      if constexpr (on_cuda) {
#if DISTILL_CUDA_COMPILER
        DISTILL_TRY(attention_map_kl_teacher_student_forward_backward(ctx_, s4, target_.template cview<4>(), attention_masks<Space>{},
                                                                      next_loss(cfg_.attention_weight), d4, sized(ws_att_, attention_map_workspace_size()), o));
#endif
      } else {
        DISTILL_TRY(attention_map_kl_teacher_student_forward_backward(ctx_, s4, target_.template cview<4>(), attention_masks<Space>{},
                                                                      next_loss(cfg_.attention_weight), d4, o));
      }
    }
    pair_scorer_grads<T, Space> sg;
    sg.weights.kind = distill::pair_scorer_kind::mlp;
    sg.weights.w1 = scorer_[0].grad.template view<2>();
    sg.weights.b1 = scorer_[1].grad.template view<1>();
    sg.weights.w2 = scorer_[2].grad.template view<2>();
    sg.weights.b2 = scorer_[3].grad.template view<1>();
    if (cfg_.pixels) sg.objects = d_objects_.template view<3>();
    if constexpr (on_cuda)
      return pair_scorer_backward(ctx_, objects(), questions_.template cview<2>(), no_object_mask(), scorer_weights(),
                                  weights_.template cview<3>(), d_weights_.template cview<3>(), d_scores_.template cview<3>(), sg,
                                  scorer_workspace(B), scorer_options());
    else
      return pair_scorer_backward(ctx_, objects(), questions_.template cview<2>(), no_object_mask(), scorer_weights(),
                                  weights_.template cview<3>(), d_weights_.template cview<3>(), d_scores_.template cview<3>(), sg,
                                  scorer_options());
  }

  // ---- pixels: the CNN. Block k: z = conv(x), r = ReLU(z), a = batch_norm(r)  (kimhc6028's order)
  distill::status cnn_forward(distill::index_t B) {
    using namespace distill;
    const tensor* x = &images_;
    for (int k = 0; k < 4; ++k) {
      const auto& xs = x->shape();
      DISTILL_TRY(cnn_z_[k].resize(conv_[k].output_shape(B, xs[2], xs[3])));
      DISTILL_TRY(conv_[k].forward(ctx_, x->template cview<4>(), cnn_z_[k].template view<4>()));
      DISTILL_TRY(cnn_r_[k].resize(cnn_z_[k].shape()));
      DISTILL_TRY(nn::activation_forward(ctx_, nn::activation::relu, cnn_z_[k].template cview<2>(), cnn_r_[k].template view<2>()));
      DISTILL_TRY(cnn_a_[k].resize(cnn_z_[k].shape()));
      DISTILL_TRY(bn_[k].forward(ctx_, cnn_r_[k].template cview<3>(), cnn_a_[k].template view<3>()));
      x = &cnn_a_[k];
    }
    // the 25 cells as objects: features (C) then the cell's coordinates (2)
    const index_t C = cfg_.cnn_channels;
    DISTILL_TRY(tokens_.resize({B, cells, C}));
    DISTILL_TRY(nn::nchw_to_tokens(ctx_, cnn_a_[3].template cview<3>(), tokens_.template view<3>()));
    DISTILL_TRY(objects_.resize({B, cells, C + 2}));
    DISTILL_TRY(copy_columns(tokens_.data(), C, 0, objects_.data(), C + 2, 0, B * cells, C));
    if (coords_.size() != B * cells * 2) {  // ((k / 5) - 2) / 2 and ((k % 5) - 2) / 2, as in Relation Networks
      std::vector<float> c(static_cast<std::size_t>(B * cells * 2));
      for (index_t i = 0; i < B * cells; ++i) {
        const index_t k = i % cells;
        c[static_cast<std::size_t>(2 * i)] = (static_cast<float>(k / 5) - 2.0f) / 2.0f;
        c[static_cast<std::size_t>(2 * i + 1)] = (static_cast<float>(k % 5) - 2.0f) / 2.0f;
      }
      DISTILL_TRY(upload(coords_, c.data(), {B * cells, 2}));
    }
    return copy_columns(coords_.data(), 2, 0, objects_.data(), C + 2, C, B * cells, 2);
  }

  distill::status cnn_backward(const host_batch& b, rn_model* teacher) {
    using namespace distill;
    const index_t B = b.size, C = cfg_.cnn_channels;
    DISTILL_TRY(d_tokens_.resize({B, cells, C}));
    DISTILL_TRY(copy_columns(d_objects_.data(), C + 2, 0, d_tokens_.data(), C, 0, B * cells, C));
    const bool distil = teacher && spec_.distill_features;
    if (distil) {  // token-wise InfoNCE: student cell vs the teacher's cell at the same place, queue negatives
      if (!queue_) DISTILL_TRY(make_queue(C));
      token_nce_options o;
      o.temperature = static_cast<float>(cfg_.nce_temperature);
      o.in_batch_negatives = true;
      o.grad_scale = static_cast<float>(cfg_.nce_weight);
      o.accumulate = true;
      const index_t M = B * cells;
      const auto ws_bytes = token_nce_queue_workspace_size(ctx_, M, C, cfg_.queue_size, o);
      DISTILL_TRY(ws_nce_.resize({static_cast<index_t>(ws_bytes)}));
      DISTILL_TRY(token_nce_queue_forward_backward(ctx_, tokens_.rows_view(), teacher->tokens_.rows_view(), queue_view(),
                                                   tensor_view<const std::uint8_t, 1, Space>{}, tensor_view<const std::int64_t, 1, Space>{},
                                                   next_loss(cfg_.nce_weight), tensor_view<float, 1, Space>{}, d_tokens_.rows_view(),
                                                   tensor_view<float, 2, Space>{}, ws_nce_.template view<1>(), o));
    }
    DISTILL_TRY(cnn_da_[3].resize(cnn_a_[3].shape()));
    DISTILL_TRY(nn::tokens_to_nchw(ctx_, d_tokens_.template cview<3>(), cnn_da_[3].template view<3>()));
    for (int k = 3; k >= 0; --k) {
      if (distil && k >= 1) {  // attention transfer on blocks 1..3, AdaIN statistics on the last block
        attention_transfer_options at;
        at.beta = cfg_.at_weight;
        at.accumulate = true;
        const auto& s = cnn_a_[k].shape();
        if constexpr (on_cuda) {
          DISTILL_TRY(ws_at_.resize({static_cast<index_t>(attention_transfer_workspace_size(B, s[2], s[3]))}));
          DISTILL_TRY(attention_transfer_forward_backward(ctx_, cnn_a_[k].template cview<4>(), teacher->cnn_a_[k].template cview<4>(),
                                                          next_loss(), cnn_da_[k].template view<4>(), ws_at_.template view<1>(), at));
        } else {
          DISTILL_TRY(attention_transfer_forward_backward(ctx_, cnn_a_[k].template cview<4>(), teacher->cnn_a_[k].template cview<4>(),
                                                          next_loss(), cnn_da_[k].template view<4>(), at));
        }
        if (k == 3) {
          adain_stats_loss_options ad;
          ad.grad_scale = cfg_.adain_weight;
          ad.accumulate = true;
          if constexpr (on_cuda) {
            DISTILL_TRY(ws_adain_.resize({static_cast<index_t>(stats_loss_workspace_size<T>(B * C))}));
            DISTILL_TRY(adain_stats_loss_forward_backward(ctx_, cnn_a_[k].template cview<4>(), teacher->cnn_a_[k].template cview<4>(),
                                                          next_loss(cfg_.adain_weight), cnn_da_[k].template view<4>(), ws_adain_.template view<1>(), ad));
          } else {
            DISTILL_TRY(adain_stats_loss_forward_backward(ctx_, cnn_a_[k].template cview<4>(), teacher->cnn_a_[k].template cview<4>(),
                                                          next_loss(cfg_.adain_weight), cnn_da_[k].template view<4>(), ad));
          }
        }
      }
      DISTILL_TRY(cnn_dr_[k].resize(cnn_r_[k].shape()));
      DISTILL_TRY(bn_[k].backward(ctx_, cnn_r_[k].template cview<3>(), cnn_da_[k].template cview<3>(), cnn_dr_[k].template view<3>()));
      DISTILL_TRY(cnn_dz_[k].resize(cnn_z_[k].shape()));
      DISTILL_TRY(nn::activation_backward(ctx_, nn::activation::relu, cnn_z_[k].template cview<2>(), cnn_dr_[k].template cview<2>(),
                                          cnn_dz_[k].template view<2>()));
      const tensor& x = k ? cnn_a_[k - 1] : images_;
      view<4> dx;
      if (k) {
        DISTILL_TRY(cnn_da_[k - 1].resize(cnn_a_[k - 1].shape()));
        dx = cnn_da_[k - 1].template view<4>();
      }
      DISTILL_TRY(conv_[k].backward(ctx_, x.template cview<4>(), cnn_dz_[k].template cview<4>(), dx));
    }
    return {};
  }

  // ---- the contrastive queue of teacher cells (pixels students)
  distill::status make_queue(distill::index_t dim) {
    using namespace distill;
    if constexpr (on_cuda) {
#if DISTILL_CUDA_COMPILER
      queue_ = std::make_unique<queue_owner>();
      return queue_owner::create(cfg_.queue_size, dim, false, *queue_);
#endif
    } else {
      queue_ = std::make_unique<host_sample_queue<T>>(cfg_.queue_size, dim, false);
      return {};
    }
  }
  const distill::sample_queue<T, Space>& queue_view() const { return queue_->queue(); }
  /// The queue is training state like the weights: checkpoints hold its image (keys, write
  /// position, fill), so a resumed student sees the same negatives as an uninterrupted one.
  distill::status save_queue_state(distill::nn::checkpoint& ck) const {
    if (!queue_) return {};
    std::vector<unsigned char> image;
    DISTILL_TRY(distill::sample_queue_serialize(ctx_, queue_->queue(), image));
    return ck.put("state/contrastive_queue", image.data(), {static_cast<distill::index_t>(image.size())});
  }
  distill::status load_queue_state(const distill::nn::checkpoint& ck, const std::string& path) {
    const auto* e = ck.find("state/contrastive_queue");
    if (!e) {
      if (cfg_.pixels && spec_.distill_features)  // a student past its first epoch always has one
        return distill::fail(distill::errc::corrupt_data, "rn_model::load", "'" + path + "' holds no contrastive queue");
      return {};
    }
    if (!queue_) DISTILL_TRY(make_queue(cfg_.cnn_channels));
    return distill::sample_queue_deserialize(ctx_, queue_->queue(), e->bytes);
  }
  distill::status enqueue_teacher_tokens(rn_model& teacher) {
    return distill::sample_queue_enqueue(ctx_, queue_->queue(), teacher.tokens_.rows_view());
  }

  model_spec spec_;
  train_config cfg_;
  ctx_t ctx_;
  distill::index_t N_, D_;
  std::vector<distill::nn::conv2d<T, Space>> conv_;
  std::vector<distill::nn::batch_norm<T, Space>> bn_;
  std::vector<param> g_w_, g_b_, scorer_;
  std::vector<distill::nn::linear<T, Space>> f_;
  distill::nn::dropout<T, Space> dropout_;
  distill::nn::parameter_list<T, Space> params_;
  std::unique_ptr<distill::nn::adam<T, Space>> opt_;
#if DISTILL_CUDA_COMPILER
  using queue_owner = std::conditional_t<on_cuda, distill::cuda_sample_queue<T>, distill::host_sample_queue<T>>;
#else
  using queue_owner = distill::host_sample_queue<T>;
#endif
  std::unique_ptr<queue_owner> queue_;

  // batch inputs and activations (all in Space, grow-only)
  distill::index_t uploaded_ = 0;
  tensor questions_, objects_, images_, logic_, target_, coords_;
  distill::nn::tensor<std::int64_t, Space> answers_;
  std::vector<float> target_host_;
  tensor scores_, weights_, pooled_, f_drop_, logits_, tokens_;
  std::vector<tensor> f_z_, f_a_, cnn_z_, cnn_r_, cnn_a_;
  // gradients
  tensor d_logits_, d_pooled_, d_objects_, d_weights_, d_scores_, d_tokens_;
  tensor d_f_[2];
  std::vector<tensor> cnn_dz_, cnn_dr_, cnn_da_;
  std::vector<tensor> losses_;
  std::vector<double> loss_weights_;
  distill::nn::tensor<std::byte, Space> ws_pairing_, ws_scorer_, ws_soft_, ws_att_, ws_at_, ws_adain_, ws_nce_;
};

}  // namespace vqa
