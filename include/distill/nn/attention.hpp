// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Multi-head attention (Vaswani et al. 2017), self- and cross-attention, with key-padding masks,
//! returning the attention probabilities (and optionally the pre-softmax scores) so that the
//! attention-map distillation losses can use them, and taking their gradients back.
//!
//! Core (view level, `attention_core_forward/backward`): q (B, Lq, D), k, v (B, Lk, D), H heads
//! of width dh = D / H (head h = columns [h dh, (h + 1) dh)), scale = 1 / sqrt(dh):
//!   S[b, h] = scale Q_bh K_bh^T           (Lq, Lk), S[b, h, i, j] = -inf where key_valid[b, j] = 0
//!   P[b, h] = softmax_rows(S[b, h])        (a row with no valid key is all zero)
//!   O_bh    = P[b, h] V_bh                 (Lq, dh), written to o[b, :, h dh : (h + 1) dh]
//! backward, with optional extra gradients gP (into the returned P) and gS (into the scores):
//!   dP   = dO_bh V_bh^T + gP
//!   dV_bh = P^T dO_bh
//!   dS   = P * (dP - rowsum(dP * P)) + gS           (0 at masked keys)
//!   dQ_bh = scale dS K_bh,   dK_bh = scale dS^T Q_bh
//!
//! Layer (`multi_head_attention`): projections Q = xq Wq^T + bq, K = xkv Wk^T + bk,
//! V = xkv Wv^T + bv (Wk, Wv are (D, kv_dim) so keys may come from another modality), the core,
//! and y = O Wo^T + bo. Self-attention passes the same tensor as xq and xkv (and, in the
//! backward, the same view as dxq and dxkv: the two contributions are summed).
//!
//! CPU: (b, h) pairs in parallel, each with one-thread distill::gemm calls on strided head
//! slices (no copies). CUDA: per head, strided-batched cuBLAS GEMMs over the batch, and a
//! warp-per-row masked softmax / softmax-backward kernel. P (B, H, Lq, Lk) is materialised
//! (the caller wants it); the backward takes a workspace (attention_core_workspace_size: a B H Lq Lk map on CUDA, none on the CPU).

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "distill/core/cpu_gemm.hpp"
#include "distill/core/math.hpp"
#include "distill/nn/common.hpp"
#include "distill/nn/linear.hpp"

namespace distill::nn {

struct attention_params {
  index_t heads = 1;
  double scale = 0;  ///< 0 = 1 / sqrt(D / heads)
};

namespace nn_detail {
template <class Q, class K, class V, class M>
status check_attention(const char* fn, const Q& q, const K& k, const V& v, const M& key_valid, const attention_params& p) {
  DISTILL_TRY(check_input(fn, "q", q));
  DISTILL_TRY(check_input(fn, "k", k));
  DISTILL_TRY(check_input(fn, "v", v));
  DISTILL_TRY(check_inner_contiguous(fn, "q", q));
  DISTILL_TRY(check_inner_contiguous(fn, "k", k));
  DISTILL_TRY(check_inner_contiguous(fn, "v", v));
  DISTILL_TRY(check_same_shape(fn, "v", v, "k", k));
  DISTILL_TRY(check_extent(fn, "k", k, 0, q.extent(0), "batch of 'q'"));
  DISTILL_TRY(check_extent(fn, "k", k, 2, q.extent(2), "features of 'q'"));
  if (p.heads <= 0 || q.extent(2) % p.heads != 0)
    return fail(errc::invalid_argument, fn, "'heads' (" + std::to_string(p.heads) + ") must divide the feature size " +
                                                std::to_string(q.extent(2)));
  if (!(p.scale >= 0) || !std::isfinite(p.scale)) return fail(errc::invalid_argument, fn, "'scale' must be finite and >= 0");
  if (!key_valid.empty()) DISTILL_TRY(check_shape(fn, "key_valid", key_valid, {q.extent(0), k.extent(1)}));
  return {};
}
inline double attention_scale(const attention_params& p, index_t D) {
  return p.scale > 0 ? p.scale : 1.0 / std::sqrt(static_cast<double>(D / p.heads));
}
/// Head h of batch b of a (B, L, D) view as an (L, dh) matrix view.
template <class V>
auto head_slice(const V& x, index_t b, index_t h, index_t dh) {
  return make_strided_view(x.data() + b * x.stride(0) + h * dh, std::array<index_t, 2>{x.extent(1), dh},
                           std::array<index_t, 2>{x.stride(1), 1});
}
template <class V>
auto map_slice(const V& p, index_t b, index_t h) {
  return make_strided_view(&p(b, h, 0, 0), std::array<index_t, 2>{p.extent(2), p.extent(3)}, std::array<index_t, 2>{p.stride(2), 1});
}
}  // namespace nn_detail

/// Core forward: writes probs (B, H, Lq, Lk) and o (B, Lq, D); `scores` (same shape as probs)
/// and `key_valid` (B, Lk; nonzero = attend) may be absent.
template <class T>
[[nodiscard]] status attention_core_forward(const cpu& ctx, in_view<T, 3> q, in_view<T, 3> k, in_view<T, 3> v,
                                            in_view<std::uint8_t, 2> key_valid, out_view<T, 4> probs, out_view<T, 4> scores,
                                            host_view<T, 3> o, const attention_params& p) {
  constexpr const char* fn = "nn::attention_core_forward";
  DISTILL_TRY(nn_detail::check_attention(fn, q, k, v, key_valid, p));
  const index_t B = q.extent(0), Lq = q.extent(1), Lk = k.extent(1), D = q.extent(2), H = p.heads, dh = D / H;
  DISTILL_TRY(check_present(fn, "probs", probs));
  DISTILL_TRY(check_shape(fn, "probs", probs, {B, H, Lq, Lk}));
  DISTILL_TRY(check_inner_contiguous(fn, "probs", probs));
  if (!scores.empty()) DISTILL_TRY(check_shape(fn, "scores", scores, {B, H, Lq, Lk}));
  DISTILL_TRY(check_same_shape(fn, "o", o, "q", q));
  DISTILL_TRY(check_inner_contiguous(fn, "o", o));
  using Acc = accum_t<T>;
  const T scale = static_cast<T>(nn_detail::attention_scale(p, D));
  status st;
  parallel_for(ctx, B * H, [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      const index_t b = i / H, h = i % H;
      auto P = nn_detail::map_slice(probs, b, h);
      auto s1 = gemm(cpu{1}, transpose::no, transpose::yes, scale, nn_detail::head_slice(q, b, h, dh),
                     nn_detail::head_slice(k, b, h, dh), T(0), P);
      for (index_t r = 0; r < Lq; ++r) {  // masked softmax: max pass, one exp per element, scale pass
        T* row = P.row(r);
        Acc mx = neg_infinity<Acc>();
        for (index_t j = 0; j < Lk; ++j) {
          if (!key_valid.empty() && key_valid(b, j) == 0) row[j] = -std::numeric_limits<T>::infinity();
          if (!scores.empty()) scores(b, h, r, j) = row[j];
          mx = std::max(mx, static_cast<Acc>(row[j]));
        }
        if (mx == neg_infinity<Acc>()) {  // no valid key: the row stays zero
          for (index_t j = 0; j < Lk; ++j) row[j] = T(0);
          continue;
        }
        Acc sum = 0;
        for (index_t j = 0; j < Lk; ++j) {
          const Acc e = std::exp(static_cast<Acc>(row[j]) - mx);
          row[j] = static_cast<T>(e);
          sum += e;
        }
        const Acc inv = Acc(1) / sum;
        for (index_t j = 0; j < Lk; ++j) row[j] = static_cast<T>(static_cast<Acc>(row[j]) * inv);
      }
      auto s2 = gemm(cpu{1}, transpose::no, transpose::no, T(1), as_const(P), nn_detail::head_slice(v, b, h, dh), T(0),
                     nn_detail::head_slice(o, b, h, dh));
      if (!s1.ok()) st = s1;
      if (!s2.ok()) st = s2;
    }
  });
  return st;
}

/// Bytes of scratch of attention_core_backward (B samples, `heads` heads, Lq x Lk maps, T the
/// element type): none on the CPU; on CUDA one B H Lq Lk map (dP, then dS in place).
template <class T = float>
constexpr std::size_t attention_core_workspace_size(const cpu&, index_t /*B*/, index_t /*heads*/, index_t /*Lq*/,
                                                    index_t /*Lk*/) noexcept {
  return 0;
}
template <class T = float>
constexpr std::size_t attention_core_workspace_size(const cuda&, index_t B, index_t heads, index_t Lq, index_t Lk) noexcept {
  return static_cast<std::size_t>(B * heads * Lq * Lk) * sizeof(T);
}

/// Core backward. grad_probs / grad_scores (extra gradients into the returned maps) may be
/// absent; dq, dk, dv may be absent (not computed) and are overwritten unless
/// opt.accumulate_input. `workspace`: attention_core_workspace_size<T>(ctx, ...) bytes.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status attention_core_backward(const cpu& ctx, in_view<T, 3> q, in_view<T, 3> k, in_view<T, 3> v,
                                             in_view<std::uint8_t, 2> key_valid, in_view<T, 4> probs, host_view<TD, 3> d_o,
                                             in_view<T, 4> grad_probs, in_view<T, 4> grad_scores, out_view<T, 3> dq,
                                             out_view<T, 3> dk, out_view<T, 3> dv, host_view<std::byte, 1> /*workspace*/,
                                             const attention_params& p, grad_options opt = {}) {
  constexpr const char* fn = "nn::attention_core_backward";
  DISTILL_TRY(nn_detail::check_attention(fn, q, k, v, key_valid, p));
  const index_t B = q.extent(0), Lq = q.extent(1), Lk = k.extent(1), D = q.extent(2), H = p.heads, dh = D / H;
  DISTILL_TRY(check_present(fn, "probs", probs));
  DISTILL_TRY(check_shape(fn, "probs", probs, {B, H, Lq, Lk}));
  DISTILL_TRY(check_inner_contiguous(fn, "probs", probs));
  DISTILL_TRY(check_same_shape(fn, "d_o", d_o, "q", q));
  DISTILL_TRY(check_inner_contiguous(fn, "d_o", d_o));
  if (!grad_probs.empty()) DISTILL_TRY(check_shape(fn, "grad_probs", grad_probs, {B, H, Lq, Lk}));
  if (!grad_scores.empty()) DISTILL_TRY(check_shape(fn, "grad_scores", grad_scores, {B, H, Lq, Lk}));
  if (!dq.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dq", dq, "q", q));
    DISTILL_TRY(check_inner_contiguous(fn, "dq", dq));
  }
  if (!dk.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dk", dk, "k", k));
    DISTILL_TRY(check_inner_contiguous(fn, "dk", dk));
  }
  if (!dv.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dv", dv, "v", v));
    DISTILL_TRY(check_inner_contiguous(fn, "dv", dv));
  }
  using Acc = accum_t<T>;
  const T scale = static_cast<T>(nn_detail::attention_scale(p, D));
  const T beta = opt.accumulate_input ? T(1) : T(0);
  host_view<const T, 3> dO = d_o;
  const int threads = std::max(1, parallel_threads(ctx, B * H));
  std::vector<T> dp_all(static_cast<std::size_t>(threads * Lq * Lk));
  status st;
  auto keep = [&](const status& s) {
    if (!s.ok()) st = s;
  };
  // Each thread owns a contiguous range of (b, h) pairs, hence its dP buffer (index from the range start).
  parallel_for(ctx, threads, [&](index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; ++t) {
      auto dP = make_view(dp_all.data() + t * Lq * Lk, Lq, Lk);
      for (index_t i = B * H * t / threads; i < B * H * (t + 1) / threads; ++i) {
        const index_t b = i / H, h = i % H;
        const auto P = as_const(nn_detail::map_slice(probs, b, h));
        const auto dO_bh = nn_detail::head_slice(dO, b, h, dh);
        if (!dv.empty()) keep(gemm(cpu{1}, transpose::yes, transpose::no, T(1), P, dO_bh, beta, nn_detail::head_slice(dv, b, h, dh)));
        if (dq.empty() && dk.empty()) continue;
        keep(gemm(cpu{1}, transpose::no, transpose::yes, T(1), dO_bh, nn_detail::head_slice(v, b, h, dh), T(0), dP));
        for (index_t r = 0; r < Lq; ++r) {
          T* g = dP.row(r);
          const T* pr = P.row(r);
          Acc dot = 0;
          for (index_t j = 0; j < Lk; ++j) {
            if (!grad_probs.empty()) g[j] += grad_probs(b, h, r, j);
            dot += static_cast<Acc>(g[j]) * static_cast<Acc>(pr[j]);
          }
          for (index_t j = 0; j < Lk; ++j) {
            const bool masked = !key_valid.empty() && key_valid(b, j) == 0;
            Acc s = static_cast<Acc>(pr[j]) * (static_cast<Acc>(g[j]) - dot);
            if (!grad_scores.empty()) s += static_cast<Acc>(grad_scores(b, h, r, j));
            g[j] = masked ? T(0) : static_cast<T>(s);
          }
        }
        const auto dS = as_const(dP);
        if (!dq.empty()) keep(gemm(cpu{1}, transpose::no, transpose::no, scale, dS, nn_detail::head_slice(k, b, h, dh), beta,
                                   nn_detail::head_slice(dq, b, h, dh)));
        if (!dk.empty()) keep(gemm(cpu{1}, transpose::yes, transpose::no, scale, dS, nn_detail::head_slice(q, b, h, dh), beta,
                                   nn_detail::head_slice(dk, b, h, dh)));
      }
    }
  });
  return st;
}

/// Multi-head attention layer: q_proj (D <- D), k_proj and v_proj (D <- kv_dim), out_proj (D <- D),
/// named "<name>.q_proj" etc. Caches (resized per batch): the projections Q, K, V, the
/// probabilities P (B, H, Lq, Lk), the head outputs O, and gradient scratch.
template <class T, class Space = host_space>
class multi_head_attention {
 public:
  index_t dim = 0, kv_dim = 0;
  attention_params params;
  linear<T, Space> q_proj, k_proj, v_proj, out_proj;
  tensor<T, Space> q, k, v, probs, o;  // caches of the last forward
  tensor<T, Space> dq, dk, dv, d_o;
  tensor<std::byte, Space> workspace;  // attention_core_workspace_size bytes (none on the CPU)

  multi_head_attention() = default;
  multi_head_attention(const std::string& name, index_t d, index_t heads, const init_options& init = {}, index_t kv_features = 0)
      : dim(d),
        kv_dim(kv_features > 0 ? kv_features : d),
        params{heads, 0},
        q_proj(name + ".q_proj", d, d, with_xavier(init)),
        k_proj(name + ".k_proj", kv_dim, d, with_xavier(init)),
        v_proj(name + ".v_proj", kv_dim, d, with_xavier(init)),
        out_proj(name + ".out_proj", d, d, init) {
    if (heads <= 0 || d % heads != 0) throw error(fail(errc::invalid_argument, "nn::multi_head_attention", "heads must divide dim"));
  }

  /// The probabilities (B, H, Lq, Lk) of the last forward.
  tensor_view<const T, 4, Space> attention_probs() const { return probs.template view<4>(); }

  /// xq (B, Lq, D), xkv (B, Lk, kv_dim), key_valid (B, Lk) or absent, y (B, Lq, D);
  /// `scores` (B, H, Lq, Lk) optional output of the pre-softmax scores. Inputs contiguous.
  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 3, Space> xq, in_view<T, 3, Space> xkv,
                               in_view<std::uint8_t, 2, Space> key_valid, out_view<T, 3, Space> y,
                               out_view<T, 4, Space> scores = {}) {
    constexpr const char* fn = "nn::multi_head_attention::forward";
    DISTILL_TRY(check_inputs(fn, xq, xkv));
    const index_t B = xq.extent(0), Lq = xq.extent(1), Lk = xkv.extent(1);
    DISTILL_TRY(check_shape(fn, "y", y, {B, Lq, dim}));
    if (!y.contiguous()) return fail(errc::unsupported_layout, fn, "'y' must be contiguous");
    DISTILL_TRY(q.resize({B, Lq, dim}));
    DISTILL_TRY(k.resize({B, Lk, dim}));
    DISTILL_TRY(v.resize({B, Lk, dim}));
    DISTILL_TRY(o.resize({B, Lq, dim}));
    DISTILL_TRY(probs.resize({B, params.heads, Lq, Lk}));
    DISTILL_TRY(q_proj.forward(ctx, flat(xq), q.rows_view()));
    DISTILL_TRY(k_proj.forward(ctx, flat(xkv), k.rows_view()));
    DISTILL_TRY(v_proj.forward(ctx, flat(xkv), v.rows_view()));
    DISTILL_TRY(attention_core_forward(ctx, q.template cview<3>(), k.template cview<3>(), v.template cview<3>(), key_valid,
                                       probs.template view<4>(), scores, o.template view<3>(), params));
    return out_proj.forward(ctx, as_const(o.rows_view()), reshape<2>(y, {B * Lq, dim}));
  }

  /// Gradients for the last forward. dxq / dxkv may be absent; when they are the same view
  /// (self-attention), both contributions are summed into it. grad_probs / grad_scores: extra
  /// gradients into the returned maps (attention-map distillation), may be absent.
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 3, Space> xq, in_view<T, 3, Space> xkv,
                                in_view<std::uint8_t, 2, Space> key_valid, in_view<T, 3, Space> dy, out_view<T, 3, Space> dxq,
                                out_view<T, 3, Space> dxkv, in_view<T, 4, Space> grad_probs = {},
                                in_view<T, 4, Space> grad_scores = {}) {
    constexpr const char* fn = "nn::multi_head_attention::backward";
    DISTILL_TRY(check_inputs(fn, xq, xkv));
    const index_t B = xq.extent(0), Lq = xq.extent(1), Lk = xkv.extent(1);
    DISTILL_TRY(check_shape(fn, "dy", dy, {B, Lq, dim}));
    if (!dy.contiguous()) return fail(errc::unsupported_layout, fn, "'dy' must be contiguous");
    if (!(probs.shape() == tensor_shape{B, params.heads, Lq, Lk}))
      return fail(errc::shape_mismatch, fn, "no forward of this shape to differentiate (call forward first)");
    for (auto [name, d] : {std::pair{"dxq", dxq}, std::pair{"dxkv", dxkv}})
      if (!d.empty() && !d.contiguous()) return fail(errc::unsupported_layout, fn, std::string("'") + name + "' must be contiguous");
    const bool same = !dxq.empty() && dxq.data() == dxkv.data();
    if (same && !(tensor_shape::of(dxq) == tensor_shape::of(dxkv)))
      return fail(errc::shape_mismatch, fn, "'dxq' and 'dxkv' share memory but differ in shape");
    DISTILL_TRY(dq.resize({B, Lq, dim}));
    DISTILL_TRY(dk.resize({B, Lk, dim}));
    DISTILL_TRY(dv.resize({B, Lk, dim}));
    DISTILL_TRY(d_o.resize({B, Lq, dim}));
    DISTILL_TRY(out_proj.backward(ctx, as_const(o.rows_view()), reshape<2>(dy, {B * Lq, dim}), d_o.rows_view()));
    DISTILL_TRY(workspace.resize({static_cast<index_t>(attention_core_workspace_size<T>(ctx, B, params.heads, Lq, Lk))}));
    DISTILL_TRY(attention_core_backward(ctx, q.template cview<3>(), k.template cview<3>(), v.template cview<3>(), key_valid,
                                        probs.template cview<4>(), d_o.template cview<3>(), grad_probs, grad_scores,
                                        dq.template view<3>(), dk.template view<3>(), dv.template view<3>(), workspace.template view<1>(),
                                        params));
    // Projections: weight gradients always (when trainable); input gradients where asked.
    out_view<T, 2, Space> gq = dxq.empty() ? out_view<T, 2, Space>{} : reshape<2>(dxq, {B * Lq, dim});
    out_view<T, 2, Space> gkv = dxkv.empty() ? out_view<T, 2, Space>{} : reshape<2>(dxkv, {B * Lk, kv_dim});
    DISTILL_TRY(linear_backward(ctx, flat(xq), q_proj.weight.value.template cview<2>(), as_const(dq.rows_view()), gq,
                                nn_detail::grad_if_trainable<2>(q_proj.weight), nn_detail::grad_if_trainable<1>(q_proj.bias),
                                layer_grad_options));
    DISTILL_TRY(linear_backward(ctx, flat(xkv), k_proj.weight.value.template cview<2>(), as_const(dk.rows_view()), gkv,
                                nn_detail::grad_if_trainable<2>(k_proj.weight), nn_detail::grad_if_trainable<1>(k_proj.bias),
                                grad_options{same, true}));
    return linear_backward(ctx, flat(xkv), v_proj.weight.value.template cview<2>(), as_const(dv.rows_view()), gkv,
                           nn_detail::grad_if_trainable<2>(v_proj.weight), nn_detail::grad_if_trainable<1>(v_proj.bias),
                           grad_options{true, true});
  }

  parameter_list<T, Space> parameters() { return collect_parameters(q_proj, k_proj, v_proj, out_proj); }

 private:
  static init_options with_xavier(init_options o) {
    o.scheme = o.scheme == init_scheme::torch_default ? init_scheme::xavier_uniform : o.scheme;  // torch's in_proj init
    return o;
  }
  static tensor_view<const T, 2, Space> flat(const tensor_view<const T, 3, Space>& x) {
    return reshape<2>(x, {x.extent(0) * x.extent(1), x.extent(2)});
  }
  status check_inputs(const char* fn, const tensor_view<const T, 3, Space>& xq, const tensor_view<const T, 3, Space>& xkv) const {
    DISTILL_TRY(nn_detail::check_input(fn, "xq", xq));
    DISTILL_TRY(nn_detail::check_input(fn, "xkv", xkv));
    DISTILL_TRY(check_extent(fn, "xq", xq, 2, dim, "dim"));
    DISTILL_TRY(check_extent(fn, "xkv", xkv, 2, kv_dim, "kv_dim"));
    DISTILL_TRY(check_extent(fn, "xkv", xkv, 0, xq.extent(0), "batch of 'xq'"));
    if (!xq.contiguous() || !xkv.contiguous()) return fail(errc::unsupported_layout, fn, "'xq' and 'xkv' must be contiguous");
    return {};
  }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_attention.cuh"
#endif
