// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Pair scorer: predicted pair weights for the attention variant of Spatial Knowledge
//! Distillation (Aditya et al., WACV 2019; math spec §10), where the teacher predicts the pair
//! mask M_ij = norm(s_ij) and a logic mask supervises it during training only.
//!
//! Scores, for the valid pairs (i, j) of a sample (both objects present, i != j unless
//! `include_self_pairs`); every other pair gets s = -inf and weight 0:
//!   mlp:      s_ij = w2 . relu(a_i + c_j) + b2,   a_i = o_i Wa + q Wq + b1,  c_j = o_j Wb
//!             (W1 = [Wa; Wb; Wq] is [2D + Q, K] split by rows; w2 is [K, 1], b2 is [1])
//!   bilinear: s_ij = l_i . r_j,   l_i = [o_i; q] W1 + b1,  r_j = [o_j; q] W2 + b2   (W1, W2 [D + Q, K])
//! Normalisation m = norm(s):
//!   sigmoid      m_ij = sigma(s_ij), each pair on its own
//!   softmax_all  m_ij = exp(s_ij) / sum over the valid pairs of the sample   (0 if it has none)
//!   softmax_row  m_ij = exp(s_ij) / sum over the valid j of row i            (0 if the row has none)
//! The softmax forms let pairs compete ("closest to c" compares pairs with each other, which
//! independent sigmoids cannot express).
//!
//! Backward, from dL/dm (and/or a direct dL/ds, e.g. from the supervision loss below):
//!   sigmoid: ds = dm m (1 - m);   softmax over a group G: ds_p = m_p (dm_p - sum_{p' in G} m_p' dm_p')
//!   mlp:      u = relu(a_i + c_j);  dw2 = sum ds u,  db2 = sum ds,  dz = ds w2 (.) [a_i + c_j > 0]
//!             R_i = sum_j dz_ij (left),  S_j = sum_i dz_ij (right)
//!   bilinear: R_i = sum_j ds_ij r_j (= dl_i),  S_j = sum_i ds_ij l_i (= dr_j)
//!   then, with the left rows (Wa or W1's object rows), right rows (Wb or W2's object rows) and
//!   question rows: dW_left = sum o_i^T R_i, dW_right = sum o_j^T S_j, dWq_left = sum_b q^T sum_i R_i,
//!   (bilinear) dWq_right = sum_b q^T sum_j S_j, db1 = sum R, (bilinear) db2 = sum S,
//!   do_i = R_i W_left^T + S_i W_right^T,  dq = (sum_i R_i) Wq_left^T (+ (sum_j S_j) Wq_right^T).
//!
//! Supervision loss against a logic mask target t [B, N, N] with values in [0, 1]:
//!   sigmoid:  binary cross-entropy with logits over the valid pairs,
//!             l = softplus(s) - t s,  dl/ds = sigma(s) - t;  one unit per valid pair
//!   softmax:  cross-entropy against the normalised mask t^ = t / sum_G t over each group G
//!             (the sample, or each row): l_G = LSE_G(s) - sum_G t^ s,  dl/ds = m - t^;
//!             one unit per group. A group whose target is all zero (no relevant pair) is
//!             skipped: it adds no loss, no gradient and no unit.
//!   reduction (core/reduction.hpp): none -> per-sample loss [B]; sum; mean = sum / units (0 if
//!   no unit); batchmean = sum / B. `grad_scale` multiplies the gradient.
//!
//! Bad numbers: on the CPU the target must be finite and in [0, 1] at valid pairs. NaN in the
//! objects, question or weights propagates to the scores of the sample that uses them.
//!
//! Entry points, the same on the CPU and CUDA (kernels/distill/cuda/pair_scorer.cuh) backends:
//!   pair_scorer_forward     (ctx, objects, question, object_mask, weights, scores, pair_weights, workspace, opt)
//!   pair_scorer_backward    (ctx, objects, question, object_mask, weights, pair_weights, grad_pair_weights,
//!                            grad_scores, grads, workspace, opt)
//!   pair_scorer_loss_forward / _backward / _forward_backward (ctx, scores, target, object_mask, [loss],
//!                            [grad_scores], workspace, opt)
//! `workspace` holds pair_scorer_workspace_size(ctx, B, N, D, Q, K) bytes (0 on the CPU: {}).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/math.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/simd.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/relational/detail/scene_checks.hpp"

namespace distill {

enum class pair_scorer_kind { mlp, bilinear };
enum class pair_normalization { sigmoid, softmax_all, softmax_row };

/// Scorer parameters (or their gradients), owned by the caller; weights are [in, out].
///   mlp:      w1 [2D + Q, K], b1 [K], w2 [K, 1], b2 [1]
///   bilinear: w1 [D + Q, K],  b1 [K], w2 [D + Q, K], b2 [K]
/// Absent biases are zero. As a gradient, absent members are not computed.
template <class T, class Space = host_space>
struct pair_scorer_weights {
  pair_scorer_kind kind = pair_scorer_kind::mlp;
  tensor_view<T, 2, Space> w1;
  tensor_view<T, 1, Space> b1;
  tensor_view<T, 2, Space> w2;
  tensor_view<T, 1, Space> b2;
};

/// Gradients of the scorer; every member may be absent.
template <class T, class Space = host_space>
struct pair_scorer_grads {
  tensor_view<T, 3, Space> objects;   ///< [B, N, D]
  tensor_view<T, 2, Space> question;  ///< [B, Q]
  tensor_view<T, 3, Space> scores;    ///< [B, N, N]: dL/ds (0 outside the valid pairs)
  pair_scorer_weights<T, Space> weights;
};

struct pair_scorer_options {
  pair_normalization normalization = pair_normalization::softmax_all;
  bool include_self_pairs = true;
  bool accumulate = false;               ///< gradients add into their outputs
  distill::reduction reduction = distill::reduction::batchmean;  ///< the supervision loss only
  float grad_scale = 1.0f;               ///< the supervision loss only: upstream gradient / loss weight
  /// CPU: refuse NaN/inf objects, question or scores (-inf scores stay allowed: pairs outside
  /// the valid set) with errc::non_finite naming the input, before computing; off, they
  /// propagate. CUDA: not inspected (docs/reliability.md).
  bool check_finite = false;
};

/// Bytes of scratch of every pair-scorer entry point (forward, backward and the supervision
/// loss) for B scenes of N objects of dimension D, a question of Q and a hidden width K: none on
/// the CPU (the CUDA overload, whose size depends on the device, is in
/// kernels/distill/cuda/pair_scorer.cuh).
constexpr std::size_t pair_scorer_workspace_size(const cpu&, index_t /*B*/, index_t /*N*/, index_t /*D*/, index_t /*Q*/,
                                                 index_t /*K*/) noexcept {
  return 0;
}

// ---------------------------------------------------------------- scalar math (CPU and CUDA)

namespace scorer_detail {

/// sigma(x) without overflow.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc sigmoid(Acc x) noexcept {
  if (x >= Acc(0)) return Acc(1) / (Acc(1) + exp_(-x));
  const Acc e = exp_(x);
  return e / (Acc(1) + e);
}

/// Binary cross-entropy with logits: softplus(s) - t s = max(s, 0) - t s + log(1 + exp(-|s|)).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc bce_with_logits(Acc s, Acc t) noexcept {
  using std::log1p;
  const Acc a = s < Acc(0) ? -s : s;
  return (s > Acc(0) ? s : Acc(0)) - t * s + log1p(exp_(-a));
}

using relational_detail::pair_in_set;

struct dims : relational_detail::scene_dims {
  index_t K = 0;
};

/// Shapes of o, q, object mask and the scorer weights; fills `d`.
template <class Space, class TO, class TQ, class TW>
status validate_inputs(const char* fn, const tensor_view<TO, 3, Space>& o, const tensor_view<TQ, 2, Space>& q,
                       const tensor_view<const std::uint8_t, 2, Space>& om, const pair_scorer_weights<TW, Space>& w,
                       dims& d) {
  DISTILL_TRY(relational_detail::check_scene(fn, o, q, om, d));
  if (w.w1.empty()) return fail(errc::invalid_argument, fn, "'weights.w1' is required but absent");
  if (w.w2.empty()) return fail(errc::invalid_argument, fn, "'weights.w2' is required but absent");
  DISTILL_TRY(check_strides(fn, "weights.w1", w.w1));
  DISTILL_TRY(check_strides(fn, "weights.w2", w.w2));
  DISTILL_TRY(check_optional(fn, "weights.b1", w.b1));
  DISTILL_TRY(check_optional(fn, "weights.b2", w.b2));
  d.K = w.w1.extent(1);
  if (d.K < 1) return fail(errc::shape_mismatch, fn, "'weights.w1' has no columns (K must be >= 1)");
  if (w.kind == pair_scorer_kind::mlp) {
    DISTILL_TRY(check_shape(fn, "weights.w1", w.w1, {2 * d.D + d.Q, d.K}));
    DISTILL_TRY(check_shape(fn, "weights.w2", w.w2, {d.K, 1}));
    if (!w.b2.empty()) DISTILL_TRY(check_shape(fn, "weights.b2", w.b2, {1}));
  } else if (w.kind == pair_scorer_kind::bilinear) {
    DISTILL_TRY(check_shape(fn, "weights.w1", w.w1, {d.D + d.Q, d.K}));
    DISTILL_TRY(check_shape(fn, "weights.w2", w.w2, {d.D + d.Q, d.K}));
    if (!w.b2.empty()) DISTILL_TRY(check_shape(fn, "weights.b2", w.b2, {d.K}));
  } else {
    return fail(errc::invalid_argument, fn, "'weights.kind' is not a pair_scorer_kind");
  }
  if (!w.b1.empty()) DISTILL_TRY(check_shape(fn, "weights.b1", w.b1, {d.K}));
  return {};
}

template <class Space, class TG, class TW>
status validate_grads(const char* fn, const pair_scorer_grads<TG, Space>& g, const pair_scorer_weights<TW, Space>& w,
                      const dims& d) {
  DISTILL_TRY(relational_detail::check_scene_grads(fn, g.objects, g.question, d));
  DISTILL_TRY(check_optional(fn, "grads.scores", g.scores, {d.B, d.N, d.N}));
  const auto& gw = g.weights;
  if (gw.kind != w.kind && (!gw.w1.empty() || !gw.w2.empty() || !gw.b1.empty() || !gw.b2.empty()))
    return fail(errc::invalid_argument, fn, "'grads.weights.kind' differs from 'weights.kind'");
  DISTILL_TRY(check_optional(fn, "grads.weights.w1", gw.w1));
  DISTILL_TRY(check_optional(fn, "grads.weights.b1", gw.b1));
  DISTILL_TRY(check_optional(fn, "grads.weights.w2", gw.w2));
  DISTILL_TRY(check_optional(fn, "grads.weights.b2", gw.b2));
  if (!gw.w1.empty()) DISTILL_TRY(check_same_shape(fn, "grads.weights.w1", gw.w1, "weights.w1", w.w1));
  if (!gw.w2.empty()) DISTILL_TRY(check_same_shape(fn, "grads.weights.w2", gw.w2, "weights.w2", w.w2));
  if (!gw.b1.empty()) DISTILL_TRY(check_shape(fn, "grads.weights.b1", gw.b1, {d.K}));
  if (!gw.b2.empty()) DISTILL_TRY(check_shape(fn, "grads.weights.b2", gw.b2, {w.kind == pair_scorer_kind::mlp ? index_t(1) : d.K}));
  return {};
}

template <class Space, class TS>
status validate_pairs_view(const char* fn, const char* name, const tensor_view<TS, 3, Space>& v, const dims& d) {
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_strides(fn, name, v));
  return check_shape(fn, name, v, {d.B, d.N, d.N});
}

/// Validity of every pair as a [B, N, N] shape check plus a per-pair predicate.
template <class Space, class TS>
status validate_loss_inputs(const char* fn, const tensor_view<TS, 3, Space>& scores,
                            const tensor_view<const std::uint8_t, 2, Space>& om, const pair_scorer_options& opt, dims& d) {
  DISTILL_TRY(check_present(fn, "scores", scores));
  DISTILL_TRY(check_nonempty(fn, "scores", scores));
  DISTILL_TRY(check_strides(fn, "scores", scores));
  d.B = scores.extent(0), d.N = scores.extent(1);
  if (scores.extent(2) != d.N)
    return fail(errc::shape_mismatch, fn, "'scores' must be [B, N, N], got " + check_detail::shape_of(scores));
  DISTILL_TRY(check_optional(fn, "object_mask", om));
  if (!om.empty()) DISTILL_TRY(check_shape(fn, "object_mask", om, {d.B, d.N}));
  if (!std::isfinite(opt.grad_scale)) return fail(errc::invalid_argument, fn, "'grad_scale' must be finite");
  if (opt.normalization != pair_normalization::sigmoid && opt.normalization != pair_normalization::softmax_all &&
      opt.normalization != pair_normalization::softmax_row)
    return fail(errc::invalid_argument, fn, "'normalization' is not a pair_normalization");
  return {};
}

// ---------------------------------------------------------------- CPU implementation

/// Strided access to rows [r0, r0 + n) of a weight as a dense double/float matrix.
template <class T>
struct weight_rows {
  const T* p = nullptr;
  index_t s0 = 0, s1 = 0;
  DISTILL_HOST_DEVICE T operator()(index_t r, index_t c) const noexcept { return p[r * s0 + c * s1]; }
};
template <class V>
weight_rows<typename V::value_type> rows_of(const V& w, index_t r0) noexcept {
  return {w.data() + r0 * w.stride(0), w.stride(0), w.stride(1)};
}

/// The split of a scorer into left (object i), right (object j) and question rows.
template <class T>
struct split_weights {
  weight_rows<T> left, right, q_left, q_right;
  bool has_q_right = false;
  const T* b_left = nullptr;   // [K] with stride
  const T* b_right = nullptr;
  index_t b_left_stride = 0, b_right_stride = 0;
};

template <class TW>
split_weights<std::remove_const_t<TW>> split(const pair_scorer_weights<TW, host_space>& w, const dims& d) {
  split_weights<std::remove_const_t<TW>> s;
  if (w.kind == pair_scorer_kind::mlp) {
    s.left = rows_of(w.w1, 0), s.right = rows_of(w.w1, d.D), s.q_left = rows_of(w.w1, 2 * d.D);
  } else {
    s.left = rows_of(w.w1, 0), s.q_left = rows_of(w.w1, d.D), s.right = rows_of(w.w2, 0), s.q_right = rows_of(w.w2, d.D);
    s.has_q_right = true;
    if (!w.b2.empty()) s.b_right = w.b2.data(), s.b_right_stride = w.b2.stride(0);
  }
  if (!w.b1.empty()) s.b_left = w.b1.data(), s.b_left_stride = w.b1.stride(0);
  return s;
}

/// Per-sample scratch of the CPU path: left and right object terms [N, K], valid flags.
template <class T>
struct sample_terms {
  std::vector<T> left, right;  // [N * K]
  std::vector<std::uint8_t> present;
};

/// y[0, K) += x * w(r, 0..K): row r of a weight (SIMD batches when the row is contiguous).
template <class T>
void add_scaled_row(T* y, T x, const weight_rows<T>& w, index_t r, index_t K) noexcept {
  if (w.s1 == 1) return simd::axpy(y, x, w.p + r * w.s0, K);
  for (index_t k = 0; k < K; ++k) y[k] += x * w(r, k);
}
/// sum_k v[k] w(r, k).
template <class T>
T dot_row(const T* v, const weight_rows<T>& w, index_t r, index_t K) noexcept {
  if (w.s1 == 1) return simd::dot(v, w.p + r * w.s0, K);
  T s = T(0);
  for (index_t k = 0; k < K; ++k) s += v[k] * w(r, k);
  return s;
}

template <class T, class TO, class TQ>
void compute_terms(const host_view<TO, 3>& o, const host_view<TQ, 2>& q, const host_view<const std::uint8_t, 2>& om,
                   const split_weights<T>& sw, const dims& d, index_t b, sample_terms<T>& st) {
  const index_t N = d.N, K = d.K;
  st.left.assign(static_cast<std::size_t>(N * K), T(0));
  st.right.assign(static_cast<std::size_t>(N * K), T(0));
  st.present.assign(static_cast<std::size_t>(N), 1);
  std::vector<T> ql(static_cast<std::size_t>(K), T(0)), qr(static_cast<std::size_t>(K), T(0));
  for (index_t k = 0; k < K; ++k) {
    ql[static_cast<std::size_t>(k)] = sw.b_left ? sw.b_left[k * sw.b_left_stride] : T(0);
    qr[static_cast<std::size_t>(k)] = sw.b_right ? sw.b_right[k * sw.b_right_stride] : T(0);
  }
  for (index_t e = 0; e < d.Q; ++e) {
    const T x = static_cast<T>(q(b, e));
    add_scaled_row(ql.data(), x, sw.q_left, e, K);
    if (sw.has_q_right) add_scaled_row(qr.data(), x, sw.q_right, e, K);
  }
  for (index_t i = 0; i < N; ++i) {
    const bool here = om.empty() || om(b, i) != 0;
    st.present[static_cast<std::size_t>(i)] = here ? 1 : 0;
    if (!here) continue;
    T* a = st.left.data() + i * K;
    T* c = st.right.data() + i * K;
    std::copy(ql.begin(), ql.end(), a);
    std::copy(qr.begin(), qr.end(), c);
    for (index_t e = 0; e < d.D; ++e) {
      const T x = static_cast<T>(o(b, i, e));
      add_scaled_row(a, x, sw.left, e, K);
      add_scaled_row(c, x, sw.right, e, K);
    }
  }
}

/// The second layer of the MLP scorer as a contiguous [K] vector.
template <class T, class TW>
std::vector<T> second_layer(const pair_scorer_weights<TW, host_space>& w, index_t K) {
  std::vector<T> v;
  if (w.kind == pair_scorer_kind::mlp)
    for (index_t k = 0; k < K; ++k) v.push_back(static_cast<T>(w.w2(k, 0)));
  return v;
}

/// Score of pair (i, j); `w2` from second_layer().
template <class T, class TW>
T score_of(const pair_scorer_weights<TW, host_space>& w, const std::vector<T>& w2, const sample_terms<T>& st, index_t i,
           index_t j, index_t K) {
  const T* a = st.left.data() + i * K;
  const T* c = st.right.data() + j * K;
  if (w.kind != pair_scorer_kind::mlp) return simd::dot(a, c, K);
  using V = simd::batch<T>;
  V acc(T(0));
  simd::for_each_batch<T>(K, [&](index_t k, int m) DISTILL_INLINE_LAMBDA {
    const V z = simd::load_partial<T>(a + k, m, T(0)) + simd::load_partial<T>(c + k, m, T(0));
    acc = simd::fma(xsimd::max(z, V(T(0))), simd::load_partial<T>(w2.data() + k, m, T(0)), acc);
  });
  return simd::reduce_sum(acc) + (w.b2.empty() ? T(0) : static_cast<T>(w.b2(0)));
}

/// Normalise one sample's scores (valid pairs only) into weights m.
template <class T, class S, class M>
void normalise_sample(pair_normalization norm, const std::vector<std::uint8_t>& valid, index_t N, S score, M write) {
  if (norm == pair_normalization::sigmoid) {
    for (index_t p = 0; p < N * N; ++p) write(p, valid[static_cast<std::size_t>(p)] ? sigmoid<T>(score(p)) : T(0));
    return;
  }
  const index_t groups = norm == pair_normalization::softmax_all ? 1 : N;
  const index_t span = norm == pair_normalization::softmax_all ? N * N : N;
  for (index_t gidx = 0; gidx < groups; ++gidx) {
    const index_t p0 = gidx * span;
    lse_state<T> l;
    for (index_t p = p0; p < p0 + span; ++p)
      if (valid[static_cast<std::size_t>(p)]) l.add(score(p));
    const T lse = l.value();
    for (index_t p = p0; p < p0 + span; ++p)
      write(p, valid[static_cast<std::size_t>(p)] && lse != neg_infinity<T>() ? std::exp(score(p) - lse) : T(0));
  }
}

template <class T>
std::vector<std::uint8_t> valid_pairs(const std::vector<std::uint8_t>& present, index_t N, bool self) {
  std::vector<std::uint8_t> v(static_cast<std::size_t>(N * N), 0);
  for (index_t i = 0; i < N; ++i)
    for (index_t j = 0; j < N; ++j)
      v[static_cast<std::size_t>(i * N + j)] =
          pair_in_set(present[static_cast<std::size_t>(i)] != 0, present[static_cast<std::size_t>(j)] != 0, i, j, self) ? 1 : 0;
  return v;
}

template <class V>
std::vector<std::uint8_t> present_of(const V& om, index_t b, index_t N) {
  std::vector<std::uint8_t> p(static_cast<std::size_t>(N), 1);
  if (!om.empty())
    for (index_t i = 0; i < N; ++i) p[static_cast<std::size_t>(i)] = om(b, i) != 0 ? 1 : 0;
  return p;
}

/// Values in [0, 1] and finite at the valid pairs (CPU only).
template <class TT>
status check_unit_interval(const char* fn, const char* name, const host_view<TT, 3>& t,
                           const host_view<const std::uint8_t, 2>& om, bool self) {
  for (index_t b = 0; b < t.extent(0); ++b) {
    const auto present = present_of(om, b, t.extent(1));
    for (index_t i = 0; i < t.extent(1); ++i)
      for (index_t j = 0; j < t.extent(2); ++j) {
        if (!pair_in_set(present[static_cast<std::size_t>(i)] != 0, present[static_cast<std::size_t>(j)] != 0, i, j, self)) continue;
        const double v = static_cast<double>(t(b, i, j));
        const std::string at = " at [" + std::to_string(b) + ", " + std::to_string(i) + ", " + std::to_string(j) + "]";
        if (std::isnan(v)) return fail(errc::non_finite, fn, std::string("'") + name + "' is NaN" + at);
        if (!(v >= 0.0 && v <= 1.0))
          return fail(errc::invalid_argument, fn, std::string("'") + name + "' must be in [0, 1], got " + check_detail::num(v) + at);
      }
  }
  return {};
}


/// Writes `v` into out(b, i, j) or adds it.
template <class V, class T>
void put(const V& out, index_t b, index_t i, index_t j, T v, bool accumulate) {
  out(b, i, j) = accumulate ? out(b, i, j) + v : v;
}

}  // namespace scorer_detail

/// Scores [B, N, N] (-inf at pairs outside the valid set) and, when `pair_weights` is given,
/// the normalised weights [B, N, N] (0 outside the valid set).
template <class TO, class TQ, class TW, class TS, class TM>
[[nodiscard]] status pair_scorer_forward(const cpu& ctx, host_view<TO, 3> objects, host_view<TQ, 2> question,
                                         host_view<const std::uint8_t, 2> object_mask,
                                         const pair_scorer_weights<TW, host_space>& weights, host_view<TS, 3> scores,
                                         host_view<TM, 3> pair_weights,
                                         host_view<std::byte, 1> /*workspace*/, const pair_scorer_options& opt = {}) {
  using T = std::remove_const_t<TO>;
  using namespace scorer_detail;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "pair scorer on the CPU takes float or double");
  static_assert(same_value_v<TQ, T> && same_value_v<TW, T> && std::is_same_v<TS, T> && std::is_same_v<TM, T>,
                "pair_scorer_forward: every view must have the same element type (outputs non-const)");
  constexpr const char* fn = "pair_scorer_forward";
  dims d;
  DISTILL_TRY(validate_inputs(fn, objects, question, object_mask, weights, d));
  DISTILL_TRY(validate_pairs_view(fn, "scores", scores, d));
  DISTILL_TRY(check_optional(fn, "pair_weights", pair_weights));
  if (!pair_weights.empty()) DISTILL_TRY(check_shape(fn, "pair_weights", pair_weights, {d.B, d.N, d.N}));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "objects", objects, "question", question));
  const auto sw = split(weights, d);
  const std::vector<T> w2 = second_layer<T>(weights, d.K);
  parallel_for(ctx, d.B, [&](index_t b0, index_t b1) {
    sample_terms<T> st;
    for (index_t b = b0; b < b1; ++b) {
      compute_terms(objects, question, object_mask, sw, d, b, st);
      const auto valid = valid_pairs<T>(st.present, d.N, opt.include_self_pairs);
      for (index_t i = 0; i < d.N; ++i)
        for (index_t j = 0; j < d.N; ++j)
          scores(b, i, j) = valid[static_cast<std::size_t>(i * d.N + j)] ? score_of(weights, w2, st, i, j, d.K) : neg_infinity<T>();
      if (!pair_weights.empty())
        normalise_sample<T>(
            opt.normalization, valid, d.N, [&](index_t p) { return scores(b, p / d.N, p % d.N); },
            [&](index_t p, T v) { pair_weights(b, p / d.N, p % d.N) = v; });
    }
  });
  return {};
}

/// Backward of the scorer. dL/ds = normalisation backward of `grad_pair_weights` (needs the
/// forward's `pair_weights`) plus `grad_scores` (e.g. from pair_scorer_loss_backward); either
/// may be absent, not both. Writes the members of `grads` that are present.
template <class TO, class TQ, class TW, class TM, class TDM, class TDS, class TG>
[[nodiscard]] status pair_scorer_backward(const cpu& ctx, host_view<TO, 3> objects, host_view<TQ, 2> question,
                                          host_view<const std::uint8_t, 2> object_mask,
                                          const pair_scorer_weights<TW, host_space>& weights,
                                          host_view<TM, 3> pair_weights, host_view<TDM, 3> grad_pair_weights,
                                          host_view<TDS, 3> grad_scores, const pair_scorer_grads<TG, host_space>& grads,
                                          host_view<std::byte, 1> /*workspace*/, const pair_scorer_options& opt = {}) {
  using T = std::remove_const_t<TO>;
  using namespace scorer_detail;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "pair scorer on the CPU takes float or double");
  static_assert(same_value_v<TQ, T> && same_value_v<TW, T> && same_value_v<TM, T> && same_value_v<TDM, T> &&
                    same_value_v<TDS, T> && std::is_same_v<TG, T>,
                "pair_scorer_backward: every view must have the same element type (gradients non-const)");
  constexpr const char* fn = "pair_scorer_backward";
  dims d;
  DISTILL_TRY(validate_inputs(fn, objects, question, object_mask, weights, d));
  DISTILL_TRY(validate_grads(fn, grads, weights, d));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "objects", objects, "question", question));
  DISTILL_TRY(check_optional(fn, "grad_pair_weights", grad_pair_weights));
  DISTILL_TRY(check_optional(fn, "grad_scores", grad_scores));
  if (grad_pair_weights.empty() && grad_scores.empty())
    return fail(errc::invalid_argument, fn, "give 'grad_pair_weights', 'grad_scores' or both");
  if (!grad_pair_weights.empty()) {
    DISTILL_TRY(check_shape(fn, "grad_pair_weights", grad_pair_weights, {d.B, d.N, d.N}));
    DISTILL_TRY(validate_pairs_view(fn, "pair_weights", pair_weights, d));
  }
  if (!grad_scores.empty()) DISTILL_TRY(check_shape(fn, "grad_scores", grad_scores, {d.B, d.N, d.N}));

  const index_t N = d.N, K = d.K, D = d.D, Q = d.Q;
  const bool mlp = weights.kind == pair_scorer_kind::mlp;
  const auto sw = split(weights, d);
  const std::vector<T> w2 = second_layer<T>(weights, K);
  const auto& gw = grads.weights;
  const bool acc = opt.accumulate;
  // Per-range partial parameter gradients (small), reduced in range order afterwards.
  const index_t nw1 = weights.w1.extent(0) * K, nw2 = weights.w2.extent(0) * weights.w2.extent(1);
  const index_t nb2 = mlp ? 1 : K;
  const index_t per_range = nw1 + K + nw2 + nb2;
  const int ranges = static_cast<int>(std::max<index_t>(1, std::min<index_t>(std::max(1, ctx.threads), d.B)));
  std::vector<T> partial(static_cast<std::size_t>(per_range * ranges), T(0));
  parallel_for(
      ctx, ranges,
      [&](index_t r0, index_t r1) {
        sample_terms<T> st;
        std::vector<T> ds(static_cast<std::size_t>(N * N)), R(static_cast<std::size_t>(N * K)), S(static_cast<std::size_t>(N * K));
        for (index_t r = r0; r < r1; ++r) {
          T* pw1 = partial.data() + r * per_range;
          T* pb1 = pw1 + nw1;
          T* pw2 = pb1 + K;
          T* pb2 = pw2 + nw2;
          const index_t b_begin = d.B * r / ranges, b_end = d.B * (r + 1) / ranges;
          for (index_t b = b_begin; b < b_end; ++b) {
            compute_terms(objects, question, object_mask, sw, d, b, st);
            const auto valid = valid_pairs<T>(st.present, N, opt.include_self_pairs);
            // dL/ds of the sample.
            std::fill(ds.begin(), ds.end(), T(0));
            if (!grad_pair_weights.empty()) {
              auto m = [&](index_t p) { return static_cast<T>(pair_weights(b, p / N, p % N)); };
              auto dm = [&](index_t p) { return static_cast<T>(grad_pair_weights(b, p / N, p % N)); };
              if (opt.normalization == pair_normalization::sigmoid) {
                for (index_t p = 0; p < N * N; ++p)
                  if (valid[static_cast<std::size_t>(p)]) ds[static_cast<std::size_t>(p)] = dm(p) * m(p) * (T(1) - m(p));
              } else {
                const index_t groups = opt.normalization == pair_normalization::softmax_all ? 1 : N;
                const index_t span = opt.normalization == pair_normalization::softmax_all ? N * N : N;
                for (index_t gidx = 0; gidx < groups; ++gidx) {
                  T dot = T(0);
                  for (index_t p = gidx * span; p < (gidx + 1) * span; ++p)
                    if (valid[static_cast<std::size_t>(p)]) dot += m(p) * dm(p);
                  for (index_t p = gidx * span; p < (gidx + 1) * span; ++p)
                    if (valid[static_cast<std::size_t>(p)]) ds[static_cast<std::size_t>(p)] = m(p) * (dm(p) - dot);
                }
              }
            }
            if (!grad_scores.empty())
              for (index_t p = 0; p < N * N; ++p)
                if (valid[static_cast<std::size_t>(p)]) ds[static_cast<std::size_t>(p)] += static_cast<T>(grad_scores(b, p / N, p % N));
            if (!grads.scores.empty())
              for (index_t p = 0; p < N * N; ++p) put(grads.scores, b, p / N, p % N, ds[static_cast<std::size_t>(p)], acc);
            // Left / right per-object gradients R, S.
            std::fill(R.begin(), R.end(), T(0));
            std::fill(S.begin(), S.end(), T(0));
            for (index_t i = 0; i < N; ++i)
              for (index_t j = 0; j < N; ++j) {
                const T g = ds[static_cast<std::size_t>(i * N + j)];
                if (!valid[static_cast<std::size_t>(i * N + j)] || g == T(0)) continue;
                const T* a = st.left.data() + i * K;
                const T* c = st.right.data() + j * K;
                T* Ri = R.data() + i * K;
                T* Sj = S.data() + j * K;
                if (mlp) {  // through the ReLU: only where z = a + c > 0
                  using V = simd::batch<T>;
                  const V vg(g), zero(T(0));
                  simd::for_each_batch<T>(K, [&](index_t k, int m) DISTILL_INLINE_LAMBDA {
                    const V z = simd::load_partial<T>(a + k, m, T(0)) + simd::load_partial<T>(c + k, m, T(0));
                    const auto on = z > zero;
                    const V gw2 = xsimd::select(on, vg * simd::load_partial<T>(w2.data() + k, m, T(0)), zero);
                    simd::store_partial(pw2 + k, m, simd::load_partial<T>(pw2 + k, m, T(0)) + xsimd::select(on, vg * z, zero));
                    simd::store_partial(Ri + k, m, simd::load_partial<T>(Ri + k, m, T(0)) + gw2);
                    simd::store_partial(Sj + k, m, simd::load_partial<T>(Sj + k, m, T(0)) + gw2);
                  });
                  pb2[0] += g;
                } else {
                  simd::axpy(Ri, g, c, K);
                  simd::axpy(Sj, g, a, K);
                }
              }
            // Parameters: rows of the left, right and question parts.
            std::vector<T> sumR(static_cast<std::size_t>(K), T(0)), sumS(static_cast<std::size_t>(K), T(0));
            for (index_t i = 0; i < N; ++i) {
              if (!st.present[static_cast<std::size_t>(i)]) continue;
              for (index_t k = 0; k < K; ++k) {
                sumR[static_cast<std::size_t>(k)] += R[static_cast<std::size_t>(i * K + k)];
                sumS[static_cast<std::size_t>(k)] += S[static_cast<std::size_t>(i * K + k)];
              }
              for (index_t e = 0; e < D; ++e) {
                const T x = static_cast<T>(objects(b, i, e));
                // left rows of w1 start at 0; right rows are w1 rows D.. (mlp) or w2 rows 0.. (bilinear)
                simd::axpy(pw1 + e * K, x, R.data() + i * K, K);
                simd::axpy(mlp ? pw1 + (D + e) * K : pw2 + e * K, x, S.data() + i * K, K);
              }
            }
            for (index_t k = 0; k < K; ++k) {
              pb1[k] += sumR[static_cast<std::size_t>(k)];
              if (!mlp) pb2[k] += sumS[static_cast<std::size_t>(k)];
            }
            const index_t q_row = mlp ? 2 * D : D;
            for (index_t e = 0; e < Q; ++e) {
              const T x = static_cast<T>(question(b, e));
              simd::axpy(pw1 + (q_row + e) * K, x, sumR.data(), K);
              if (!mlp) simd::axpy(pw2 + (D + e) * K, x, sumS.data(), K);
            }
            // Inputs.
            if (!grads.objects.empty())
              for (index_t i = 0; i < N; ++i)
                for (index_t e = 0; e < D; ++e) {
                  T v = T(0);
                  if (st.present[static_cast<std::size_t>(i)])
                    v = dot_row(R.data() + i * K, sw.left, e, K) + dot_row(S.data() + i * K, sw.right, e, K);
                  grads.objects(b, i, e) = acc ? grads.objects(b, i, e) + v : v;
                }
            if (!grads.question.empty())
              for (index_t e = 0; e < Q; ++e) {
                T v = dot_row(sumR.data(), sw.q_left, e, K);
                if (sw.has_q_right) v += dot_row(sumS.data(), sw.q_right, e, K);
                grads.question(b, e) = acc ? grads.question(b, e) + v : v;
              }
          }
        }
      },
      1);
  auto reduce_into = [&](auto out, index_t offset, index_t rows, index_t cols) {
    if (out.empty()) return;
    for (index_t a = 0; a < rows; ++a)
      for (index_t c = 0; c < cols; ++c) {
        T s = T(0);
        for (int r = 0; r < ranges; ++r) s += partial[static_cast<std::size_t>(r * per_range + offset + a * cols + c)];
        if constexpr (decltype(out)::rank == 2) out(a, c) = acc ? out(a, c) + s : s;
        else out(a * cols + c) = acc ? out(a * cols + c) + s : s;
      }
  };
  reduce_into(gw.w1, 0, weights.w1.extent(0), K);
  reduce_into(gw.b1, nw1, 1, K);
  reduce_into(gw.w2, nw1 + K, weights.w2.extent(0), weights.w2.extent(1));
  reduce_into(gw.b2, nw1 + K + nw2, 1, nb2);
  return {};
}

namespace scorer_detail {

/// Loss of one sample and its gradient (when `grad` is given: grad(p, value)).
template <class T, class S, class Tg, class G>
T sample_loss(pair_normalization norm, const std::vector<std::uint8_t>& valid, index_t N, S score, Tg target, G* grad,
              T scale, T& units) {
  T loss = T(0);
  if (norm == pair_normalization::sigmoid) {
    for (index_t p = 0; p < N * N; ++p) {
      if (!valid[static_cast<std::size_t>(p)]) continue;
      const T s = score(p), t = target(p);
      loss += bce_with_logits<T>(s, t);
      units += T(1);
      if (grad) (*grad)(p, scale * (sigmoid<T>(s) - t));
    }
    return loss;
  }
  const index_t groups = norm == pair_normalization::softmax_all ? 1 : N;
  const index_t span = norm == pair_normalization::softmax_all ? N * N : N;
  for (index_t gidx = 0; gidx < groups; ++gidx) {
    const index_t p0 = gidx * span;
    T z = T(0);
    lse_state<T> l;
    for (index_t p = p0; p < p0 + span; ++p)
      if (valid[static_cast<std::size_t>(p)]) z += target(p), l.add(score(p));
    if (!(z > T(0))) continue;  // no relevant pair in this group: skipped
    const T lse = l.value();
    units += T(1);
    T dot = T(0);
    for (index_t p = p0; p < p0 + span; ++p)
      if (valid[static_cast<std::size_t>(p)] && target(p) != T(0)) dot += target(p) / z * score(p);
    loss += lse - dot;
    if (grad)
      for (index_t p = p0; p < p0 + span; ++p)
        if (valid[static_cast<std::size_t>(p)]) (*grad)(p, scale * (std::exp(score(p) - lse) - target(p) / z));
  }
  return loss;
}

template <class T, class TS, class TT, class TL, class TD>
status loss_cpu(const char* fn, const cpu& ctx, host_view<TS, 3> scores, host_view<TT, 3> target,
                host_view<const std::uint8_t, 2> object_mask, host_view<TL, 1> loss, host_view<TD, 3> grad_scores,
                const pair_scorer_options& opt) {
  dims d;
  DISTILL_TRY(validate_loss_inputs(fn, scores, object_mask, opt, d));
  DISTILL_TRY(validate_pairs_view(fn, "target", target, d));
  if (!loss.empty() || loss.size() != 0) {
    DISTILL_TRY(check_strides(fn, "loss", loss));
    DISTILL_TRY(check_shape(fn, "loss", loss, {opt.reduction == reduction::none ? d.B : index_t(1)}));
  }
  if (!grad_scores.empty() || grad_scores.size() != 0) DISTILL_TRY(validate_pairs_view(fn, "grad_scores", grad_scores, d));
  DISTILL_TRY(check_unit_interval(fn, "target", target, object_mask, opt.include_self_pairs));
  if (opt.check_finite) DISTILL_TRY(check_finite(fn, "scores", scores, finite_rule::finite_or_minus_inf));
  const index_t N = d.N;
  // First pass: per-sample losses and units (the divisor of `mean` needs every sample's units).
  std::vector<T> per(static_cast<std::size_t>(d.B), T(0)), units(static_cast<std::size_t>(d.B), T(0));
  parallel_for(ctx, d.B, [&](index_t b0, index_t b1) {
    for (index_t b = b0; b < b1; ++b) {
      const auto valid = valid_pairs<T>(present_of(object_mask, b, N), N, opt.include_self_pairs);
      auto s = [&](index_t p) { return static_cast<T>(scores(b, p / N, p % N)); };
      auto t = [&](index_t p) { return static_cast<T>(target(b, p / N, p % N)); };
      using none_t = void (*)(index_t, T);
      per[static_cast<std::size_t>(b)] =
          sample_loss<T>(opt.normalization, valid, N, s, t, static_cast<none_t*>(nullptr), T(1), units[static_cast<std::size_t>(b)]);
    }
  });
  T total = T(0), total_units = T(0);
  for (index_t b = 0; b < d.B; ++b) total += per[static_cast<std::size_t>(b)], total_units += units[static_cast<std::size_t>(b)];
  const T divisor = reduction_divisor<T>(opt.reduction, static_cast<T>(d.B), total_units);
  const T inv = safe_inverse<T>(divisor);
  if (!loss.empty()) {
    if (opt.reduction == reduction::none)
      for (index_t b = 0; b < d.B; ++b) loss(b) = per[static_cast<std::size_t>(b)];
    else
      loss(0) = total * inv;
  }
  if (!grad_scores.empty()) {
    const T scale = static_cast<T>(opt.grad_scale) * (opt.reduction == reduction::none ? T(1) : inv);
    parallel_for(ctx, d.B, [&](index_t b0, index_t b1) {
      for (index_t b = b0; b < b1; ++b) {
        const auto valid = valid_pairs<T>(present_of(object_mask, b, N), N, opt.include_self_pairs);
        auto s = [&](index_t p) { return static_cast<T>(scores(b, p / N, p % N)); };
        auto t = [&](index_t p) { return static_cast<T>(target(b, p / N, p % N)); };
        std::vector<T> g(static_cast<std::size_t>(N * N), T(0));
        auto write = [&](index_t p, T v) { g[static_cast<std::size_t>(p)] = v; };
        T u = T(0);
        (void)sample_loss<T>(opt.normalization, valid, N, s, t, &write, scale, u);
        for (index_t p = 0; p < N * N; ++p) put(grad_scores, b, p / N, p % N, g[static_cast<std::size_t>(p)], opt.accumulate);
      }
    });
  }
  return {};
}

}  // namespace scorer_detail

/// Supervision loss of scores against a logic mask target (see the top of this file).
/// `loss` is [1], or [B] with reduction::none.
template <class TS, class TT, class TL>
[[nodiscard]] status pair_scorer_loss_forward(const cpu& ctx, host_view<TS, 3> scores, host_view<TT, 3> target,
                                              host_view<const std::uint8_t, 2> object_mask, host_view<TL, 1> loss,
                                              host_view<std::byte, 1> /*workspace*/, const pair_scorer_options& opt = {}) {
  using T = std::remove_const_t<TS>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "pair scorer loss on the CPU takes float or double");
  static_assert(same_value_v<TT, T> && std::is_same_v<TL, T>, "pair_scorer_loss_forward: element types differ");
  constexpr const char* fn = "pair_scorer_loss_forward";
  if (loss.empty()) return fail(errc::invalid_argument, fn, "'loss' is required but absent");
  return scorer_detail::loss_cpu<T>(fn, ctx, scores, target, object_mask, loss, host_view<T, 3>{}, opt);
}

/// dL/ds of the supervision loss, times `grad_scale` (0 outside the valid pairs and in skipped groups).
template <class TS, class TT, class TD>
[[nodiscard]] status pair_scorer_loss_backward(const cpu& ctx, host_view<TS, 3> scores, host_view<TT, 3> target,
                                               host_view<const std::uint8_t, 2> object_mask, host_view<TD, 3> grad_scores,
                                               host_view<std::byte, 1> /*workspace*/, const pair_scorer_options& opt = {}) {
  using T = std::remove_const_t<TS>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "pair scorer loss on the CPU takes float or double");
  static_assert(same_value_v<TT, T> && std::is_same_v<TD, T>, "pair_scorer_loss_backward: element types differ");
  constexpr const char* fn = "pair_scorer_loss_backward";
  if (grad_scores.empty()) return fail(errc::invalid_argument, fn, "'grad_scores' is required but absent");
  return scorer_detail::loss_cpu<T>(fn, ctx, scores, target, object_mask, host_view<T, 1>{}, grad_scores, opt);
}

/// Loss and dL/ds in one call.
template <class TS, class TT, class TL, class TD>
[[nodiscard]] status pair_scorer_loss_forward_backward(const cpu& ctx, host_view<TS, 3> scores, host_view<TT, 3> target,
                                                       host_view<const std::uint8_t, 2> object_mask, host_view<TL, 1> loss,
                                                       host_view<TD, 3> grad_scores,
                                                       host_view<std::byte, 1> /*workspace*/, const pair_scorer_options& opt = {}) {
  using T = std::remove_const_t<TS>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "pair scorer loss on the CPU takes float or double");
  static_assert(same_value_v<TT, T> && std::is_same_v<TL, T> && std::is_same_v<TD, T>,
                "pair_scorer_loss_forward_backward: element types differ");
  constexpr const char* fn = "pair_scorer_loss_forward_backward";
  if (loss.empty()) return fail(errc::invalid_argument, fn, "'loss' is required but absent");
  if (grad_scores.empty()) return fail(errc::invalid_argument, fn, "'grad_scores' is required but absent");
  return scorer_detail::loss_cpu<T>(fn, ctx, scores, target, object_mask, loss, grad_scores, opt);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/pair_scorer.cuh"
#endif
