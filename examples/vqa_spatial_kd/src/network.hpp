// SPDX-License-Identifier: MIT
#pragma once
// The Relation Network of the example, written once for both memory spaces: rn_network<host_space>
// runs on distill::cpu, rn_network<cuda_space> on an nn::cuda_blas (the .cu translation unit
// instantiates it). Every computation is a distill call on views; the network knows nothing
// of the losses it is trained with (objective.hpp), and it is a teacher (signals.hpp).
//
//   objects o [B, N, D]:  state descriptions (N = 6, D = 10), or the 25 cells of a 4-layer CNN
//                         (conv 3x3 stride 2 -> ReLU -> batch norm, 75 -> 38 -> 19 -> 10 -> 5)
//                         with their 2 coordinates appended (D = C + 2), as in Relation Networks
//   pair weights M:       none (all ones), the logic mask, or predicted by the pair scorer
//                         (softmax over the N^2 pairs, scaled by N as in the prototype)
//   r = sum_ij M_ij g(o_i, o_j, q)      relational_pairing (g: L layers, ReLU)
//   logits = f(r)                       nn::linear + ReLU (+ dropout before the last layer)

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "distill/core/context.hpp"
#include "distill/nn/activation.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/blas.hpp"
#include "distill/nn/cast.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/dropout.hpp"
#include "distill/nn/init.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/reshape.hpp"
#include "distill/nn/tensor.hpp"
#include "distill/relational/pair_scorer.hpp"
#include "distill/relational/pairing.hpp"
#include "runner.hpp"
#include "signals.hpp"

namespace vqa {

template <class Space>
class rn_network final : public teacher_signals<Space> {
 public:
  using T = float;
  using ctx_t = distill::nn::exec_t<Space>;
  using tensor = distill::nn::tensor<T, Space>;
  using param = distill::nn::parameter<T, Space>;
  template <int R>
  using view = distill::tensor_view<T, R, Space>;
  template <int R>
  using cview = distill::tensor_view<const T, R, Space>;
  using byte_view = distill::tensor_view<std::byte, 1, Space>;
  static constexpr int question_dim = 11, answers = 10, state_dim = 10, cells = 25;

  rn_network(const model_spec& spec, const train_config& cfg, const ctx_t& ctx)
      : spec_(spec), cfg_(cfg), ctx_(ctx), N_(cfg.pixels ? cells : 6), D_(cfg.pixels ? cfg.cnn_channels + 2 : state_dim) {
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

    auto append = [&](const auto& from) { params_.insert(params_.end(), from.begin(), from.end()); };
    for (auto& c : conv_) append(c.parameters());
    for (auto& b : bn_) append(b.parameters());
    for (auto& p : g_w_) params_.push_back(&p);
    for (auto& p : g_b_) params_.push_back(&p);
    for (auto& p : scorer_) params_.push_back(&p);
    for (auto& l : f_) append(l.parameters());

    f_z_.resize(f_.size());
    f_a_.resize(f_.size());
    if (cfg.pixels) {
      cnn_z_.resize(4), cnn_r_.resize(4), cnn_a_.resize(4);
      cnn_dz_.resize(4), cnn_dr_.resize(4), cnn_da_.resize(4);
    }
  }

  /// Every trainable parameter and buffer (values and gradients).
  distill::nn::parameter_list<T, Space>& parameters() { return params_; }
  const distill::nn::parameter_list<T, Space>& parameters() const { return params_; }
  distill::nn::dropout<T, Space>& dropout() { return dropout_; }

  // ---- teacher_signals
  distill::status observe(const host_batch& b) override { return forward(b, false); }
  cview<2> logits() const override { return logits_.template cview<2>(); }
  cview<4> pair_distribution() const override {
    if (spec_.mask == mask_source::logic) return target_.template cview<4>();
    return {};
  }
  cview<4> feature_map(int block) const override {
    if (!cfg_.pixels || block < 0 || block >= static_cast<int>(cnn_a_.size())) return {};
    return cnn_a_[static_cast<std::size_t>(block)].template cview<4>();
  }
  cview<2> tokens() const override {
    if (!cfg_.pixels) return {};
    return tokens_.rows_view();
  }

  /// The logits of the last forward, copied to the host.
  std::vector<float> logits_to_host() const { return logits_.to_host(); }
  /// Objects per scene (the pair masks of predict are [B, N, N]).
  distill::index_t objects_per_scene() const { return N_; }
  /// The pair weights the forward used, [B, N, N] (predicted masks only).
  const tensor& predicted_pair_weights() const { return weights_; }

  /// Copies the batch in (host -> Space) and runs the network; `training` switches batch norm and dropout.
  distill::status forward(const host_batch& b, bool training) {
    using namespace distill;
    DISTILL_TRY(upload_batch(b));
    set_training(training);
    const index_t B = b.size;
    if (cfg_.pixels) DISTILL_TRY(cnn_forward(B));
    if (spec_.mask == mask_source::predicted) {
      DISTILL_TRY(scores_.resize({B, N_, N_}));
      DISTILL_TRY(weights_.resize({B, N_, N_}));
      DISTILL_TRY(pair_scorer_forward(ctx_, objects(), questions_.template cview<2>(), no_object_mask(), scorer_weights(),
                                      scores_.template view<3>(), weights_.template view<3>(), scorer_workspace(B), scorer_options()));
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

  /// Back from dL/dlogits through f, the pairing, the scorer and the CNN into the parameters'
  /// gradients (accumulated: zero them first); `hooks` add the objective's terms to the
  /// gradients of the pair scores, the tokens and the feature maps on the way.
  distill::status backward(cview<2> d_logits, gradient_hooks<Space>& hooks) {
    using namespace distill;
    const index_t B = d_logits.extent(0);
    DISTILL_TRY(f_backward(d_logits));
    // pairing backward -> g gradients, d_objects (pixels), d_pair_weights (predicted)
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
    if (spec_.mask == mask_source::predicted) DISTILL_TRY(scorer_backward(B, hooks));
    if (cfg_.pixels) DISTILL_TRY(cnn_backward(B, hooks));
    return {};
  }

 private:
  void set_training(bool on) {
    for (auto& b : bn_) b.set_training(on);
    dropout_.training = on;
  }

  // ---- host -> Space copies (synchronous on CUDA: the host batch is reused right after)
  template <class U>
  static distill::status upload(distill::nn::tensor<U, Space>& dst, const U* src, const distill::nn::tensor_shape& shape) {
    DISTILL_TRY(dst.resize(shape));
    return dst.copy_from_host(src, shape.size());
  }

  distill::status upload_batch(const host_batch& b) {
    using distill::index_t;
    const index_t B = b.size;
    if (b.objects != N_)
      return distill::fail(distill::errc::shape_mismatch, "rn_network", "the batch has " + std::to_string(b.objects) +
                                                                            " objects per scene, the model " + std::to_string(N_));
    DISTILL_TRY(upload(questions_, b.questions, {B, question_dim}));
    if (cfg_.pixels) DISTILL_TRY(upload(images_, b.images, {B, 3, 75, 75}));
    else DISTILL_TRY(upload(objects_, b.state, {B, N_, D_}));
    if (spec_.mask == mask_source::logic && b.logic_mask) {
      DISTILL_TRY(upload(logic_, b.logic_mask, {B, N_, N_}));
      // The pair distribution the model attends to: the mask normalised over the pairs.
      target_host_.assign(b.logic_mask, b.logic_mask + B * N_ * N_);
      for (index_t i = 0; i < B; ++i) {
        float* m = target_host_.data() + i * N_ * N_;
        double s = 0;
        for (index_t k = 0; k < N_ * N_; ++k) s += m[k];
        for (index_t k = 0; k < N_ * N_; ++k) m[k] = s > 0 ? static_cast<float>(m[k] / s) : 0.0f;
      }
      DISTILL_TRY(upload(target_, target_host_.data(), {B, 1, 1, N_ * N_}));
    }
    return {};
  }

  // ---- views of the current batch
  cview<3> objects() const { return objects_.template cview<3>(); }
  cview<3> pair_mask() const {
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
    o.precision = distill::matmul_precision::tf32;  // the CUDA tile kernel's products (the CPU computes in float)
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
  /// The workspace view of `bytes` bytes (absent if it cannot be allocated: the primitive then
  /// reports a missing workspace).
  static byte_view sized(distill::nn::tensor<std::byte, Space>& ws, std::size_t bytes) {
    if (!ws.resize({static_cast<distill::index_t>(bytes)}).ok()) return {};
    return ws.template view<1>();
  }
  byte_view pairing_workspace(distill::index_t B) {
    return sized(ws_pairing_, distill::relational_pairing_workspace_size<T>(ctx_, B, N_, D_, question_dim, spec_.g_hidden,
                                                                            spec_.g_layers, pairing_options()));
  }
  byte_view scorer_workspace(distill::index_t B) {
    return sized(ws_scorer_, distill::pair_scorer_workspace_size(ctx_, B, N_, D_, question_dim, spec_.scorer_hidden));
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
  distill::pair_scorer_options scorer_options() const {
    distill::pair_scorer_options o;
    o.normalization = distill::pair_normalization::softmax_all;
    o.include_self_pairs = true;
    o.accumulate = true;
    o.reduction = distill::reduction::batchmean;
    return o;
  }

  /// d_logits -> d_pooled through f (hidden layers: linear -> ReLU; dropout before the last).
  distill::status f_backward(cview<2> d_logits) {
    using namespace distill;
    const std::size_t n = f_.size();
    const bool drop = cfg_.f_dropout > 0;
    auto other = [&](const tensor* t) -> tensor& { return t == &d_f_[0] ? d_f_[1] : d_f_[0]; };
    auto input_of = [&](std::size_t i) -> const tensor& { return i == 0 ? pooled_ : f_a_[i - 1]; };
    // last layer: d(its input) = d_logits W, then back through the dropout
    tensor& d_in = (n == 1 && !drop) ? d_pooled_ : d_f_[0];
    const tensor& in_last = drop ? f_drop_ : input_of(n - 1);
    DISTILL_TRY(d_in.resize(in_last.shape()));
    DISTILL_TRY(f_.back().backward(ctx_, in_last.template cview<2>(), d_logits, d_in.template view<2>()));
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

  /// Predicted pair weights: the objective's terms on the scores, then the scorer backward.
  distill::status scorer_backward(distill::index_t B, gradient_hooks<Space>& hooks) {
    using namespace distill;
    DISTILL_TRY(d_scores_.resize({B, N_, N_}));
    DISTILL_TRY(nn::fill_zero(ctx_, d_scores_.template view<1>()));
    DISTILL_TRY(hooks.pair_scores(scores_.template cview<3>(), d_scores_.template view<3>()));
    pair_scorer_grads<T, Space> sg;
    sg.weights.kind = distill::pair_scorer_kind::mlp;
    sg.weights.w1 = scorer_[0].grad.template view<2>();
    sg.weights.b1 = scorer_[1].grad.template view<1>();
    sg.weights.w2 = scorer_[2].grad.template view<2>();
    sg.weights.b2 = scorer_[3].grad.template view<1>();
    if (cfg_.pixels) sg.objects = d_objects_.template view<3>();
    return pair_scorer_backward(ctx_, objects(), questions_.template cview<2>(), no_object_mask(), scorer_weights(),
                                weights_.template cview<3>(), d_weights_.template cview<3>(), d_scores_.template cview<3>(), sg,
                                scorer_workspace(B), scorer_options());
  }

  /// Columns [col, col + width) of a row-major [rows, ld] matrix, as a [rows, width] view.
  template <class U>
  static distill::tensor_view<U, 2, Space> columns(U* data, distill::index_t rows, distill::index_t ld, distill::index_t col,
                                                   distill::index_t width) {
    return distill::make_strided_view<Space>(data + col, std::array<distill::index_t, 2>{rows, width},
                                             std::array<distill::index_t, 2>{ld, 1});
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
    const index_t C = cfg_.cnn_channels, R = B * cells;
    DISTILL_TRY(tokens_.resize({B, cells, C}));
    DISTILL_TRY(nn::nchw_to_tokens(ctx_, cnn_a_[3].template cview<3>(), tokens_.template view<3>()));
    DISTILL_TRY(objects_.resize({B, cells, C + 2}));
    DISTILL_TRY(nn::cast(ctx_, columns<const T>(tokens_.data(), R, C, 0, C), columns<T>(objects_.data(), R, C + 2, 0, C)));
    if (coords_.size() != R * 2) {  // ((k / 5) - 2) / 2 and ((k % 5) - 2) / 2, as in Relation Networks
      std::vector<float> c(static_cast<std::size_t>(R * 2));
      for (index_t i = 0; i < R; ++i) {
        const index_t k = i % cells;
        c[static_cast<std::size_t>(2 * i)] = (static_cast<float>(k / 5) - 2.0f) / 2.0f;
        c[static_cast<std::size_t>(2 * i + 1)] = (static_cast<float>(k % 5) - 2.0f) / 2.0f;
      }
      DISTILL_TRY(upload(coords_, c.data(), {R, 2}));
    }
    return nn::cast(ctx_, columns<const T>(coords_.data(), R, 2, 0, 2), columns<T>(objects_.data(), R, C + 2, C, 2));
  }

  distill::status cnn_backward(distill::index_t B, gradient_hooks<Space>& hooks) {
    using namespace distill;
    const index_t C = cfg_.cnn_channels, R = B * cells;
    DISTILL_TRY(d_tokens_.resize({B, cells, C}));
    DISTILL_TRY(nn::cast(ctx_, columns<const T>(d_objects_.data(), R, C + 2, 0, C), columns<T>(d_tokens_.data(), R, C, 0, C)));
    DISTILL_TRY(hooks.tokens(tokens_.rows_view(), d_tokens_.rows_view()));
    DISTILL_TRY(cnn_da_[3].resize(cnn_a_[3].shape()));
    DISTILL_TRY(nn::tokens_to_nchw(ctx_, d_tokens_.template cview<3>(), cnn_da_[3].template view<3>()));
    for (int k = 3; k >= 0; --k) {
      DISTILL_TRY(hooks.feature_map(k, cnn_a_[k].template cview<4>(), cnn_da_[k].template view<4>()));
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

  model_spec spec_;
  train_config cfg_;
  const ctx_t& ctx_;
  distill::index_t N_, D_;
  std::vector<distill::nn::conv2d<T, Space>> conv_;
  std::vector<distill::nn::batch_norm<T, Space>> bn_;
  std::vector<param> g_w_, g_b_, scorer_;
  std::vector<distill::nn::linear<T, Space>> f_;
  distill::nn::dropout<T, Space> dropout_;
  distill::nn::parameter_list<T, Space> params_;

  // batch inputs and activations (all in Space, grow-only)
  tensor questions_, objects_, images_, logic_, target_, coords_;
  std::vector<float> target_host_;
  tensor scores_, weights_, pooled_, f_drop_, logits_, tokens_;
  std::vector<tensor> f_z_, f_a_, cnn_z_, cnn_r_, cnn_a_;
  // gradients
  tensor d_pooled_, d_objects_, d_weights_, d_scores_, d_tokens_;
  tensor d_f_[2];
  std::vector<tensor> cnn_dz_, cnn_dr_, cnn_da_;
  distill::nn::tensor<std::byte, Space> ws_pairing_, ws_scorer_;
};

}  // namespace vqa
