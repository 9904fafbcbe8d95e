// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Transformer encoder layer and stack (Vaswani et al. 2017, "Attention Is All You Need"), with
//! the layer norm before each sub-layer by default (pre-LN, Xiong et al. 2020, "On Layer
//! Normalization in the Transformer Architecture") or after the residual add (post-LN, the
//! original and BERT's arrangement). Each layer keeps its attention probabilities and takes
//! extra gradients into them, for attention-map distillation.
//!
//! One layer, tokens x (B, L, D), key_valid (B, L) (nonzero = a real token, may be absent):
//!   Attn(z) = multi_head_attention(z, z, key_valid)         (nn/attention.hpp; P (B, H, L, L) kept)
//!   FFN(z)  = Linear2(drop_h(gelu(Linear1(z))))              Linear1: D -> F, Linear2: F -> D
//!   pre-LN  (norm_first = true, the default):
//!     r1 = x + drop_a(Attn(LN1(x))),          y = r1 + drop_f(FFN(LN2(r1)))
//!   post-LN (norm_first = false):
//!     n1 = LN1(x + drop_a(Attn(x))),          y = LN2(n1 + drop_f(FFN(n1)))
//! Backward (dy given; gP the optional extra gradient into P; every residual passes its
//! gradient through unchanged and adds the sub-layer's):
//!   pre-LN:   dr1 = dy + LN2'(FFN'(drop_f'(dy)))
//!             dx  = dr1 + LN1'(Attn'(drop_a'(dr1); gP))
//!   post-LN:  dr2 = LN2'(dy),  dn1 = dr2 + FFN'(drop_f'(dr2)),  dr1 = LN1'(dn1)
//!             dx  = dr1 + Attn'(drop_a'(dr1); gP)
//! where f' is the vector-Jacobian product of f (the layers' own backward passes), FFN' is
//! Linear1'(gelu'(drop_h'(Linear2'(.)))) and Attn' sums the query and key/value paths (self-attention).
//! Stack: x_0 = x, x_{i+1} = layer_i(x_i), y = LN_f(x_N) with `final_norm`, else x_N.
//! The FFN activation defaults to GELU (BERT's); the original Transformer used ReLU
//! (`ffn_activation = activation::relu`, also PyTorch's default).
//!
//! Which arrangement the papers' models use: the original Transformer and BERT are post-LN, and
//! so are the BERT-based vision-language models DistillVLM (Fang et al. 2021) distils (its
//! teacher follows Oscar, a BERT-base encoder; the paper publishes no code): `norm_first = false`
//! reproduces them, with `final_norm` off (post-LN already ends in LN2). Pre-LN trains without
//! warm-up (Xiong et al.) and is the default here, as for PyTorch's
//! `nn.TransformerEncoderLayer(norm_first=True)`, which a pre-LN layer with dropout 0 (or in
//! evaluation) and activation 'gelu' matches, as a post-LN one matches norm_first=False (same
//! parameters, eps 1e-5, src_key_padding_mask = !key_valid); a pre-LN stack usually wants
//! `final_norm = true`.
//!
//! Dropout (nn/dropout.hpp, seeded, the same masks on both backends) sits where PyTorch puts it:
//! on the attention output (drop_a), on the FFN hidden units (drop_h) and on the FFN output
//! (drop_f), all with probability `dropout`; PyTorch also drops attention probabilities, which
//! the multi_head_attention layer does not: the probabilities returned for distillation are the
//! undropped ones. set_training(false) (or dropout = 0) makes all three the identity.
//!
//! Entry points (the layer classes; every pass is written once over the context, cpu or
//! nn::cuda_blas, on views of the layer's memory space):
//!   transformer_encoder_layer<T, Space> l(name, dim, heads, ffn_dim, opt);
//!     l.forward(ctx, x, key_valid, y)                 x, y (B, L, D) contiguous
//!     l.backward(ctx, x, key_valid, dy, dx, grad_probs)   dx may be absent; grad_probs (B, H, L, L) may be absent
//!     l.attention_probs()                              (B, H, L, L) of the last forward
//!   transformer_encoder<T, Space> e(name, layers, dim, heads, ffn_dim, opt);
//!     e.forward(ctx, x, key_valid, y), e.backward(ctx, x, key_valid, dy, dx, grad_probs)
//!     e.attention_probs(i)                             layer i's probabilities
//!   grad_probs of the stack: an empty span (none) or one view per layer, each possibly absent.
//! Parameters are named as PyTorch's submodules (linear1, linear2, norm1, norm2), the attention's
//! as nn::multi_head_attention's (attn.q_proj, k_proj, v_proj, out_proj; PyTorch packs the first
//! three into self_attn.in_proj_weight), under "<name>.layers.<i>" in a stack:
//! "<name>.layers.0.attn.q_proj.weight", ".linear1.bias", ".norm2.weight", final "<name>.norm.weight".
//! NaN or inf in x or the parameters propagates to the outputs (no check, as in the other layers).
//!
//! Residual adds reuse the element-wise identity activation backward (dx += dy * 1, both
//! backends, nn/activation.hpp) instead of a kernel of their own. Caches (resized per batch,
//! grow-only): LN outputs, residual sums, FFN pre-activation and activation, and gradient
//! scratch: B L (6 D + 3 F) elements per layer (+ 2 B L F with dropout) plus the attention layer's.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "distill/nn/activation.hpp"
#include "distill/nn/attention.hpp"
#include "distill/nn/common.hpp"
#include "distill/nn/dropout.hpp"
#include "distill/nn/layer_norm.hpp"
#include "distill/nn/linear.hpp"

namespace distill::nn {

/// What a transformer encoder layer (and stack) is made of beyond its sizes.
struct transformer_options {
  bool norm_first = true;                  ///< pre-LN (true) or post-LN / BERT (false)
  activation ffn_activation = activation::gelu;
  double dropout = 0.0;                    ///< drop probability of the three dropouts (see the file comment)
  std::uint64_t dropout_seed = 0;          ///< layer i of a stack uses seed + 3 i, + 3 i + 1, + 3 i + 2
  double eps = 1e-5;                       ///< layer-norm epsilon
  bool final_norm = false;                 ///< stack only: a layer norm after the last layer (pre-LN models)
  init_options init = {};
};

namespace nn_detail {
/// dst += src, element-wise (the identity activation's backward with accumulation: both backends).
template <class Ctx, class T, class Space>
status add_into(const Ctx& ctx, tensor_view<const T, 2, Space> src, tensor_view<T, 2, Space> dst) {
  return activation_backward(ctx, activation::identity, src, src, dst, grad_options{true, false});
}
template <class T, class Space>
tensor_view<const T, 2, Space> token_rows(const tensor_view<const T, 3, Space>& x) {
  return reshape<2>(x, {x.extent(0) * x.extent(1), x.extent(2)});
}
template <class T, class Space>
tensor_view<T, 2, Space> token_rows(const tensor_view<T, 3, Space>& x) {
  return reshape<2>(x, {x.extent(0) * x.extent(1), x.extent(2)});
}
}  // namespace nn_detail

/// One encoder layer: attn (multi_head_attention), norm1, norm2 (layer_norm), linear1 (D -> F),
/// linear2 (F -> D) and three dropouts. See the file comment for the math and the names.
template <class T, class Space = host_space>
class transformer_encoder_layer {
 public:
  index_t dim = 0, ffn_dim = 0;
  bool norm_first = true;
  activation ffn_activation = activation::gelu;
  multi_head_attention<T, Space> attn;
  layer_norm<T, Space> norm1, norm2;
  linear<T, Space> linear1, linear2;
  dropout<T, Space> dropout_attn, dropout_hidden, dropout_ffn;
  // Caches of the last forward. pre-LN: n1 = LN1(x), r1 = x + drop_a(Attn(n1)), n2 = LN2(r1);
  // post-LN: r1 = x + drop_a(Attn(x)), n1 = LN1(r1), r2 = n1 + drop_f(FFN(n1)). Both: u = Linear1
  // input's product, g = act(u), gd = drop_h(g) (empty when the dropout is the identity).
  tensor<T, Space> n1, r1, n2, r2, u, g, gd;
  tensor<T, Space> d_res, d_tok, d_tmp, d_hidden, d_hidden2;  // gradient scratch

  transformer_encoder_layer() = default;
  transformer_encoder_layer(const std::string& name, index_t d, index_t heads, index_t ffn, const transformer_options& opt = {})
      : dim(d),
        ffn_dim(ffn),
        norm_first(opt.norm_first),
        ffn_activation(opt.ffn_activation),
        attn(name + ".attn", d, heads, opt.init),
        norm1(name + ".norm1", d, opt.eps),
        norm2(name + ".norm2", d, opt.eps),
        linear1(name + ".linear1", d, ffn, opt.init),
        linear2(name + ".linear2", ffn, d, opt.init),
        dropout_attn(opt.dropout, opt.dropout_seed),
        dropout_hidden(opt.dropout, opt.dropout_seed + 1),
        dropout_ffn(opt.dropout, opt.dropout_seed + 2) {
    if (ffn <= 0) throw error(fail(errc::invalid_argument, "nn::transformer_encoder_layer", "'ffn_dim' must be positive"));
    throw_if_error(nn_detail::check_dropout("nn::transformer_encoder_layer", dropout_params{opt.dropout, 0, 0, true}));
  }

  index_t heads() const noexcept { return attn.params.heads; }
  /// The attention probabilities (B, H, L, L) of the last forward.
  tensor_view<const T, 4, Space> attention_probs() const { return attn.attention_probs(); }
  /// Training (dropout on) or evaluation (dropout the identity).
  void set_training(bool t) { dropout_attn.training = dropout_hidden.training = dropout_ffn.training = t; }

  /// x (B, L, D) -> y (B, L, D); key_valid (B, L) may be absent (every token valid). x and y
  /// contiguous and distinct.
  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 3, Space> x, in_view<std::uint8_t, 2, Space> key_valid,
                               out_view<T, 3, Space> y) {
    constexpr const char* fn = "nn::transformer_encoder_layer::forward";
    DISTILL_TRY(check_tokens(fn, "x", x, key_valid));
    const index_t B = x.extent(0), L = x.extent(1), N = B * L;
    DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
    if (!y.contiguous()) return fail(errc::unsupported_layout, fn, "'y' must be contiguous");
    if (y.data() == x.data()) return fail(errc::invalid_argument, fn, "'y' must not alias 'x'");
    DISTILL_TRY(r1.resize({B, L, dim}));
    DISTILL_TRY(n1.resize({B, L, dim}));
    DISTILL_TRY(u.resize({N, ffn_dim}));
    DISTILL_TRY(g.resize({N, ffn_dim}));
    DISTILL_TRY(gd.resize(hidden_dropped() ? tensor_shape{N, ffn_dim} : tensor_shape{}));
    const auto xr = nn_detail::token_rows(x);
    const auto yr = nn_detail::token_rows(y);
    if (norm_first) {
      DISTILL_TRY(n2.resize({N, dim}));
      DISTILL_TRY(norm1.forward(ctx, xr, n1.rows_view()));
      DISTILL_TRY(attn.forward(ctx, n1.template cview<3>(), n1.template cview<3>(), key_valid, r1.template view<3>()));
      DISTILL_TRY(residual_dropout(ctx, dropout_attn, r1.rows_view()));
      DISTILL_TRY(nn_detail::add_into(ctx, xr, r1.rows_view()));
      DISTILL_TRY(norm2.forward(ctx, as_const(r1.rows_view()), n2.rows_view()));
      DISTILL_TRY(ffn_forward(ctx, as_const(n2.rows_view()), yr));
      return nn_detail::add_into(ctx, as_const(r1.rows_view()), yr);
    }
    DISTILL_TRY(r2.resize({N, dim}));
    DISTILL_TRY(attn.forward(ctx, x, x, key_valid, r1.template view<3>()));
    DISTILL_TRY(residual_dropout(ctx, dropout_attn, r1.rows_view()));
    DISTILL_TRY(nn_detail::add_into(ctx, xr, r1.rows_view()));
    DISTILL_TRY(norm1.forward(ctx, as_const(r1.rows_view()), n1.rows_view()));
    DISTILL_TRY(ffn_forward(ctx, as_const(n1.rows_view()), r2.rows_view()));
    DISTILL_TRY(nn_detail::add_into(ctx, as_const(n1.rows_view()), r2.rows_view()));
    return norm2.forward(ctx, as_const(r2.rows_view()), yr);
  }

  /// Gradients for the last forward (the same x and key_valid). Parameter gradients accumulate
  /// (zero them before the step); dx (B, L, D) is overwritten, may be absent (not computed), and
  /// must not alias x or dy. grad_probs (B, H, L, L): extra gradient into the attention
  /// probabilities (attention-map distillation), may be absent.
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 3, Space> x, in_view<std::uint8_t, 2, Space> key_valid,
                                in_view<T, 3, Space> dy, out_view<T, 3, Space> dx, in_view<T, 4, Space> grad_probs = {}) {
    constexpr const char* fn = "nn::transformer_encoder_layer::backward";
    DISTILL_TRY(check_tokens(fn, "x", x, key_valid));
    const index_t B = x.extent(0), L = x.extent(1), N = B * L;
    DISTILL_TRY(check_present(fn, "dy", dy));
    DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
    if (!dy.contiguous()) return fail(errc::unsupported_layout, fn, "'dy' must be contiguous");
    if (!dx.empty()) {
      DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
      if (!dx.contiguous()) return fail(errc::unsupported_layout, fn, "'dx' must be contiguous");
      if (dx.data() == x.data() || dx.data() == dy.data()) return fail(errc::invalid_argument, fn, "'dx' must not alias 'x' or 'dy'");
    }
    if (!grad_probs.empty()) DISTILL_TRY(check_shape(fn, "grad_probs", grad_probs, {B, heads(), L, L}));
    if (!(r1.shape() == tensor_shape{B, L, dim}) || !(u.shape() == tensor_shape{N, ffn_dim}) ||
        (norm_first ? !(n2.shape() == tensor_shape{N, dim}) : !(r2.shape() == tensor_shape{N, dim})))
      return fail(errc::shape_mismatch, fn, "no forward of this shape to differentiate (call forward first)");
    DISTILL_TRY(d_res.resize({B, L, dim}));
    DISTILL_TRY(d_tok.resize({B, L, dim}));
    DISTILL_TRY(d_tmp.resize({B, L, dim}));
    DISTILL_TRY(d_hidden.resize({N, ffn_dim}));
    DISTILL_TRY(d_hidden2.resize(hidden_dropped() ? tensor_shape{N, ffn_dim} : tensor_shape{}));
    const auto xr = nn_detail::token_rows(x);
    const auto dyr = nn_detail::token_rows(dy);
    const tensor_view<T, 2, Space> dxr = dx.empty() ? tensor_view<T, 2, Space>{} : nn_detail::token_rows(dx);
    auto dres = d_res.rows_view();
    auto dtok = d_tok.rows_view();
    if (norm_first) {
      // dr1 = dy + LN2'(FFN'(drop_f'(dy)))
      DISTILL_TRY(ffn_backward(ctx, as_const(n2.rows_view()), dyr, dtok));
      DISTILL_TRY(layer_norm_input_backward(ctx, norm2, as_const(r1.rows_view()), as_const(dtok), dres));
      DISTILL_TRY(nn_detail::add_into(ctx, dyr, dres));
      // dx = dr1 + LN1'(Attn'(drop_a'(dr1)))
      tensor_view<const T, 2, Space> da;
      DISTILL_TRY(residual_dropout_backward(ctx, dropout_attn, as_const(dres), da));
      DISTILL_TRY(attn.backward(ctx, n1.template cview<3>(), n1.template cview<3>(), key_valid, reshape<3>(da, {B, L, dim}),
                                d_tok.template view<3>(), d_tok.template view<3>(), grad_probs));
      DISTILL_TRY(layer_norm_input_backward(ctx, norm1, xr, as_const(dtok), dxr));
      return dxr.empty() ? status{} : nn_detail::add_into(ctx, as_const(dres), dxr);
    }
    // dr2 = LN2'(dy); dn1 = dr2 + FFN'(drop_f'(dr2)); dr1 = LN1'(dn1)
    DISTILL_TRY(layer_norm_input_backward(ctx, norm2, as_const(r2.rows_view()), dyr, dres));
    DISTILL_TRY(ffn_backward(ctx, as_const(n1.rows_view()), as_const(dres), dtok));
    DISTILL_TRY(nn_detail::add_into(ctx, as_const(dres), dtok));
    DISTILL_TRY(layer_norm_input_backward(ctx, norm1, as_const(r1.rows_view()), as_const(dtok), dres));
    // dx = dr1 + Attn'(drop_a'(dr1))
    tensor_view<const T, 2, Space> da;
    DISTILL_TRY(residual_dropout_backward(ctx, dropout_attn, as_const(dres), da));
    DISTILL_TRY(attn.backward(ctx, x, x, key_valid, reshape<3>(da, {B, L, dim}), dx, dx, grad_probs));
    return dxr.empty() ? status{} : nn_detail::add_into(ctx, as_const(dres), dxr);
  }

  parameter_list<T, Space> parameters() { return collect_parameters(attn, norm1, norm2, linear1, linear2); }

 private:
  bool hidden_dropped() const noexcept { return dropout_hidden.training && dropout_hidden.p > 0; }

  status check_tokens(const char* fn, const char* name, const tensor_view<const T, 3, Space>& x,
                      const tensor_view<const std::uint8_t, 2, Space>& key_valid) const {
    DISTILL_TRY(nn_detail::check_input(fn, name, x));
    DISTILL_TRY(check_extent(fn, name, x, 2, dim, "dim"));
    if (!x.contiguous()) return fail(errc::unsupported_layout, fn, std::string("'") + name + "' must be contiguous");
    if (!key_valid.empty()) DISTILL_TRY(check_shape(fn, "key_valid", key_valid, {x.extent(0), x.extent(1)}));
    return {};
  }

  /// In place (dropout allows y == x); nothing when the dropout is the identity.
  template <class Ctx>
  static status residual_dropout(const Ctx& ctx, dropout<T, Space>& d, tensor_view<T, 2, Space> z) {
    if (!d.training || d.p == 0) return {};
    return d.forward(ctx, as_const(z), z);
  }
  /// out = drop'(dz), written to d_tmp, or dz itself when the dropout is the identity.
  template <class Ctx>
  status residual_dropout_backward(const Ctx& ctx, const dropout<T, Space>& d, tensor_view<const T, 2, Space> dz,
                                   tensor_view<const T, 2, Space>& out) {
    out = dz;
    if (!d.training || d.p == 0) return {};
    DISTILL_TRY(d.backward(ctx, dz, d_tmp.rows_view()));
    out = as_const(d_tmp.rows_view());
    return {};
  }

  /// out (N, D) = Linear2(drop_h(act(Linear1(z)))) followed by drop_f, in place on out.
  template <class Ctx>
  status ffn_forward(const Ctx& ctx, tensor_view<const T, 2, Space> z, tensor_view<T, 2, Space> out) {
    DISTILL_TRY(linear1.forward(ctx, z, u.rows_view()));
    DISTILL_TRY(activation_forward(ctx, ffn_activation, as_const(u.rows_view()), g.rows_view()));
    if (hidden_dropped()) DISTILL_TRY(dropout_hidden.forward(ctx, as_const(g.rows_view()), gd.rows_view()));
    DISTILL_TRY(linear2.forward(ctx, hidden_dropped() ? as_const(gd.rows_view()) : as_const(g.rows_view()), out));
    return residual_dropout(ctx, dropout_ffn, out);
  }
  /// dz (N, D) = FFN'(drop_f'(dout)); parameter gradients accumulate.
  template <class Ctx>
  status ffn_backward(const Ctx& ctx, tensor_view<const T, 2, Space> z, tensor_view<const T, 2, Space> dout,
                      tensor_view<T, 2, Space> dz) {
    tensor_view<const T, 2, Space> df;
    DISTILL_TRY(residual_dropout_backward(ctx, dropout_ffn, dout, df));
    auto dh = d_hidden.rows_view();
    if (hidden_dropped()) {
      DISTILL_TRY(linear2.backward(ctx, as_const(gd.rows_view()), df, d_hidden2.rows_view()));
      DISTILL_TRY(dropout_hidden.backward(ctx, as_const(d_hidden2.rows_view()), dh));
    } else {
      DISTILL_TRY(linear2.backward(ctx, as_const(g.rows_view()), df, dh));
    }
    DISTILL_TRY(activation_backward(ctx, ffn_activation, as_const(u.rows_view()), as_const(dh), dh));  // dx may alias dy
    return linear1.backward(ctx, z, as_const(dh), dz);
  }
  /// dx = LN'(dy) (overwritten; absent: parameter gradients only), parameter gradients accumulate.
  template <class Ctx>
  static status layer_norm_input_backward(const Ctx& ctx, layer_norm<T, Space>& ln, tensor_view<const T, 2, Space> x,
                                          tensor_view<const T, 2, Space> dy, tensor_view<T, 2, Space> dx) {
    return layer_norm_backward(ctx, x, ln.gamma.value.template cview<1>(), ln.mean.template cview<1>(), ln.rstd.template cview<1>(), dy, dx,
                               nn_detail::grad_if_trainable<1>(ln.gamma), nn_detail::grad_if_trainable<1>(ln.beta), layer_grad_options);
  }
};

/// A stack of `layers` encoder layers named "<name>.layers.<i>", and with opt.final_norm a layer
/// norm "<name>.norm" after the last. Caches each layer's output (the next layer's input).
template <class T, class Space = host_space>
class transformer_encoder {
 public:
  std::vector<transformer_encoder_layer<T, Space>> layers;
  bool final_norm = false;
  layer_norm<T, Space> norm;
  std::vector<tensor<T, Space>> outputs;  // cache: outputs[i] = x_{i+1} (B, L, D), the last one before the final norm
  tensor<T, Space> d_a, d_b;              // gradient scratch (B, L, D)

  transformer_encoder() = default;
  transformer_encoder(const std::string& name, index_t num_layers, index_t d, index_t heads, index_t ffn,
                      const transformer_options& opt = {})
      : final_norm(opt.final_norm), norm(opt.final_norm ? layer_norm<T, Space>(name + ".norm", d, opt.eps) : layer_norm<T, Space>{}) {
    if (num_layers <= 0) throw error(fail(errc::invalid_argument, "nn::transformer_encoder", "'num_layers' must be positive"));
    for (index_t i = 0; i < num_layers; ++i) {
      transformer_options o = opt;
      o.dropout_seed = opt.dropout_seed + 3 * static_cast<std::uint64_t>(i);
      layers.emplace_back(name + ".layers." + std::to_string(i), d, heads, ffn, o);
    }
    outputs.resize(static_cast<std::size_t>(num_layers));
  }

  index_t num_layers() const noexcept { return static_cast<index_t>(layers.size()); }
  index_t dim() const noexcept { return layers.empty() ? 0 : layers.front().dim; }
  /// Layer i's attention probabilities (B, H, L, L) of the last forward.
  tensor_view<const T, 4, Space> attention_probs(index_t i) const { return layers[static_cast<std::size_t>(i)].attention_probs(); }
  void set_training(bool t) {
    for (auto& l : layers) l.set_training(t);
  }

  /// x (B, L, D) -> y (B, L, D), key_valid (B, L) or absent; x and y contiguous and distinct.
  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 3, Space> x, in_view<std::uint8_t, 2, Space> key_valid,
                               out_view<T, 3, Space> y) {
    constexpr const char* fn = "nn::transformer_encoder::forward";
    DISTILL_TRY(check_input_tokens(fn, x));
    DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
    if (!y.contiguous()) return fail(errc::unsupported_layout, fn, "'y' must be contiguous");
    if (y.data() == x.data()) return fail(errc::invalid_argument, fn, "'y' must not alias 'x' (the backward reads 'x')");
    const index_t B = x.extent(0), L = x.extent(1), D = dim(), n = num_layers();
    for (index_t i = 0; i < n; ++i) {
      const bool last_to_y = i == n - 1 && !final_norm;
      if (!last_to_y) DISTILL_TRY(outputs[static_cast<std::size_t>(i)].resize({B, L, D}));
      const tensor_view<const T, 3, Space> in = i == 0 ? x : outputs[static_cast<std::size_t>(i - 1)].template cview<3>();
      DISTILL_TRY(layers[static_cast<std::size_t>(i)].forward(ctx, in, key_valid,
                                                                last_to_y ? y : outputs[static_cast<std::size_t>(i)].template view<3>()));
    }
    if (!final_norm) return {};
    return norm.forward(ctx, outputs.back().rows_view(), nn_detail::token_rows(y));
  }

  /// Gradients for the last forward. dx may be absent; `grad_probs`: empty (no extra gradients)
  /// or num_layers() views (B, H_i, L, L), each possibly absent.
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 3, Space> x, in_view<std::uint8_t, 2, Space> key_valid,
                                in_view<T, 3, Space> dy, out_view<T, 3, Space> dx,
                                std::span<const tensor_view<const T, 4, Space>> grad_probs = {}) {
    constexpr const char* fn = "nn::transformer_encoder::backward";
    DISTILL_TRY(check_input_tokens(fn, x));
    DISTILL_TRY(check_present(fn, "dy", dy));
    DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
    if (!dy.contiguous()) return fail(errc::unsupported_layout, fn, "'dy' must be contiguous");
    const index_t n = num_layers();
    if (!grad_probs.empty() && static_cast<index_t>(grad_probs.size()) != n)
      return fail(errc::invalid_argument, fn, "'grad_probs' holds " + std::to_string(grad_probs.size()) + " views for " +
                                                  std::to_string(n) + " layers (give none or one per layer)");
    const index_t B = x.extent(0), L = x.extent(1), D = dim();
    DISTILL_TRY(d_a.resize({B, L, D}));
    DISTILL_TRY(d_b.resize({B, L, D}));
    tensor_view<const T, 3, Space> grad = dy;
    if (final_norm) {
      if (!(outputs.back().shape() == tensor_shape{B, L, D}))
        return fail(errc::shape_mismatch, fn, "no forward of this shape to differentiate (call forward first)");
      DISTILL_TRY(norm.backward(ctx, outputs.back().rows_view(), nn_detail::token_rows(dy), d_a.rows_view()));
      grad = d_a.template cview<3>();
    }
    // Ping-pong between d_a and d_b: layer i reads the gradient of its output, writes that of its input.
    for (index_t i = n - 1; i >= 0; --i) {
      const tensor_view<const T, 3, Space> in = i == 0 ? x : outputs[static_cast<std::size_t>(i - 1)].template cview<3>();
      tensor_view<T, 3, Space> gin = i == 0 ? dx : (grad.data() == d_a.data() ? d_b.template view<3>() : d_a.template view<3>());
      const tensor_view<const T, 4, Space> gp = grad_probs.empty() ? tensor_view<const T, 4, Space>{} : grad_probs[static_cast<std::size_t>(i)];
      DISTILL_TRY(layers[static_cast<std::size_t>(i)].backward(ctx, in, key_valid, grad, gin, gp));
      grad = as_const(gin);
    }
    return {};
  }

  parameter_list<T, Space> parameters() {
    parameter_list<T, Space> out;
    for (auto& l : layers) {
      auto p = l.parameters();
      out.insert(out.end(), p.begin(), p.end());
    }
    if (final_norm) {
      auto p = norm.parameters();
      out.insert(out.end(), p.begin(), p.end());
    }
    return out;
  }

 private:
  status check_input_tokens(const char* fn, const tensor_view<const T, 3, Space>& x) const {
    DISTILL_TRY(nn_detail::check_input(fn, "x", x));
    DISTILL_TRY(check_extent(fn, "x", x, 2, dim(), "dim"));
    if (!x.contiguous()) return fail(errc::unsupported_layout, fn, "'x' must be contiguous");
    return {};
  }
};

}  // namespace distill::nn
