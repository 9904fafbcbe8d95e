// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Attention-distribution losses between a student's and a teacher's attention maps (DistillVLM,
//! Fang et al. ICCV 2021: MSE on the attention distributions; TinyBERT / MiniLM: per-head
//! attention transfer with KL; head mappings when the head counts differ).
//!
//! Inputs: student S [B, H_s, L_q, L_k] and teacher T [B, H_t, L_q, L_k], each given either as
//! logits (pre-softmax scores; the softmax over the valid keys is fused into the loss pass and
//! never stored) or as probabilities (post-softmax, used as given). Optional masks: key_mask
//! [B, L_k] and query_mask [B, L_q] (uint8, nonzero = valid). For the row r = (b, h, i) of a
//! valid query, with K_b the valid keys of sample b:
//!
//!   p_s[j]  = softmax_{K_b}(S_{b,h,i,:})[j]  or  S_{b,h,i,j}               (j in K_b; 0 elsewhere)
//!   p_t[j]  = mean_{g in T(h)} softmax_{K_b}(T_{b,g,i,:})[j]  (or the probabilities themselves)
//!             T(h) = {h} (one_to_one), {m(h)} (index: teacher_heads[h]),
//!                    {hG, ..., hG+G-1} with G = H_t / H_s (group_mean: a 12-head teacher
//!                    teaches a 4-head student through the mean of each group of 3 heads)
//!   mse:                 l_r = sum_{j in K_b} (p_s[j] - p_t[j])^2
//!   kl_teacher_student:  l_r = sum_{j in K_b} p_t[j] (log p_t[j] - log p_s[j])   (0 log 0 = 0)
//!
//! Reductions (over rows): none writes l_r per row (B*H_s*L_q, row-major, 0 for masked rows);
//! sum = sum_r l_r; batchmean = sum / B; mean = sum / |V| where |V| is, for mse, the number of
//! valid elements H_s * sum_b nq_b * nk_b (this is F.mse_loss's mean when nothing is masked) and,
//! for kl, the number of valid rows H_s * sum_b nq_b * [nk_b > 0].
//!
//! Gradient (to the student only), c = grad_scale / divisor:
//!   mse,  probabilities:  dL/dS_j = 2c (p_s[j] - p_t[j])
//!   mse,  logits:         g_j = 2c (p_s[j] - p_t[j]);  dL/dS_j = p_s[j] (g_j - sum_k p_s[k] g_k)   (B1)
//!   kl,   probabilities:  dL/dS_j = -c p_t[j] / p_s[j]      (0 where p_t[j] = 0)
//!   kl,   logits:         dL/dS_j = c (p_s[j] sum_k p_t[k] - p_t[j])
//! and 0 at masked keys and masked query rows.
//!
//! Numbers: -inf logits are zero probability. A row with no valid key (key mask all zero) or a
//! masked query row contributes 0 loss and 0 gradient and is left out of `mean`'s divisor (both
//! backends; the CUDA path cannot report it without synchronising, so neither does the CPU one).
//! A row whose valid logits are all -inf is the zero vector (not a distribution): with kl and a
//! teacher that has mass there, the loss is +inf. Probabilities are not renormalised after
//! masking. NaN in a row gives NaN in that row's loss and gradient (and in the reduced loss).
//!
//! In place: grad_student may be the very view of the student (same pointer and strides); the
//! gradient then overwrites the logits or probabilities and no extra buffer is needed.
//!
//! Entry points, the same for a distill::cpu and a distill::cuda context (CUDA engine in
//! kernels/distill/cuda/attention_map.cuh):
//!   attention_map_mse_forward(ctx, student, teacher, masks, loss, workspace, opt)
//!   attention_map_mse_backward(ctx, student, teacher, masks, grad_student, workspace, opt)
//!   attention_map_mse_forward_backward(ctx, student, teacher, masks, loss, grad_student, workspace, opt)
//!   attention_map_kl_teacher_student_{forward, backward, forward_backward}(same arguments)
//! `masks` is attention_masks<Space>{key_mask, query_mask}; pass {} for none. `workspace` holds
//! attention_map_workspace_size(ctx) bytes (0 on the CPU: pass {}).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/fast_math.hpp"
#include "distill/core/math.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/simd.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"

namespace distill {

/// What an attention tensor holds.
enum class attention_input {
  logits,         ///< pre-softmax scores (softmax over the valid keys is taken inside the loss)
  probabilities,  ///< post-softmax rows, used as given
};

/// Which teacher head(s) teach student head h.
enum class attention_head_map {
  one_to_one,  ///< teacher head h (H_t == H_s)
  index,       ///< teacher head teacher_heads[h]
  group_mean,  ///< mean of the teacher distributions of heads h*G .. h*G+G-1, G = H_t / H_s
};

struct attention_map_options {
  attention_input student_input = attention_input::logits;
  attention_input teacher_input = attention_input::logits;
  attention_head_map head_map = attention_head_map::one_to_one;
  std::span<const int> teacher_heads = {};  ///< head_map index: H_s entries in [0, H_t), host memory
  distill::reduction reduction = distill::reduction::mean;          ///< see the file comment for each divisor
  double grad_scale = 1.0;                  ///< upstream gradient of the loss
  bool accumulate = false;                  ///< add into grad_student instead of overwriting it
  /// CPU: refuse NaN/inf inputs (-inf logits stay allowed: masked keys) with errc::non_finite
  /// naming the input, before computing; off, they propagate to the affected rows. CUDA: not
  /// inspected (docs/reliability.md).
  bool check_finite = false;
};

/// Optional masks; an absent view means "all valid". Nonzero bytes are valid (a torch bool
/// tensor's storage works as is).
template <class Space = host_space>
struct attention_masks {
  tensor_view<const std::uint8_t, 2, Space> key;    ///< [B, L_k] key padding mask
  tensor_view<const std::uint8_t, 2, Space> query;  ///< [B, L_q] valid query rows
};

namespace attention_map_detail {

/// Which loss an entry point computes (each has its own public name).
enum class divergence { mse, kl_teacher_student };

// ---- per-key math shared by the CPU batches and the CUDA kernels (V: a float, a double or a
// SIMD batch of core/simd.hpp) ----

/// Loss term of one key: (p_s - p_t)^2, or p_t (log p_t - log p_s) with 0 log 0 = 0.
template <class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V mse_term(V ps, V pt) noexcept {
  const V d = ps - pt;
  return d * d;
}
template <class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V kl_term(V pt, V log_pt, V log_ps) noexcept {
  return simd::select(pt == V(0), V(0), pt * (log_pt - log_ps));
}

/// Gradient of one key. `dot` is sum_k p_s[k] g_k (mse, logits) and `teacher_mass` sum_k p_t[k]
/// (kl, logits); `c` = grad_scale / divisor.
template <class V, class S>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V mse_upstream(V ps, V pt, S c) noexcept {
  return S(2) * c * (ps - pt);
}
template <class V, class S>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V softmax_backward(V ps, V g, S dot) noexcept {
  return ps * (g - dot);
}
template <class V, class S>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V kl_grad_logits(V ps, V pt, S teacher_mass, S c) noexcept {
  return c * (ps * teacher_mass - pt);
}
template <class V, class S>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V kl_grad_probabilities(V ps, V pt, S c) noexcept {
  return simd::select(pt == V(0), V(0), simd::div(-c * pt, ps));
}

/// Divisor of the reduction from the valid-key count nk_b and valid-query count nq_b summed the
/// way the file comment says (`valid` = H_s * sum_b nq_b * nk_b for mse, H_s * sum_b nq_b * [nk_b > 0]
/// for kl).
inline double divisor(reduction red, double valid, index_t batch) noexcept {
  switch (red) {
    case reduction::mean: return valid;
    case reduction::batchmean: return static_cast<double>(batch);
    default: return 1.0;
  }
}

// ---- validation, shared by both backends ----

template <class VS, class VT, class Space>
status check_inputs(const char* fn, const VS& student, const VT& teacher, const attention_masks<Space>& masks,
                    const attention_map_options& opt, index_t max_index_heads) {
  DISTILL_TRY(check_present(fn, "student", student));
  DISTILL_TRY(check_present(fn, "teacher", teacher));
  DISTILL_TRY(check_nonempty(fn, "student", student));
  DISTILL_TRY(check_nonempty(fn, "teacher", teacher));
  DISTILL_TRY(check_strides(fn, "student", student));
  DISTILL_TRY(check_strides(fn, "teacher", teacher));
  DISTILL_TRY(check_aligned(fn, "student", student));
  DISTILL_TRY(check_aligned(fn, "teacher", teacher));
  const index_t B = student.extent(0), Hs = student.extent(1), Lq = student.extent(2), Lk = student.extent(3);
  const index_t Ht = teacher.extent(1);
  if (teacher.extent(0) != B || teacher.extent(2) != Lq || teacher.extent(3) != Lk)
    return fail(errc::shape_mismatch, fn,
                "'teacher' has shape " + check_detail::shape_of(teacher) + " but 'student' has shape " +
                    check_detail::shape_of(student) + " (batch, query and key lengths must agree; heads may differ)");
  switch (opt.head_map) {
    case attention_head_map::one_to_one:
      if (Ht != Hs)
        return fail(errc::shape_mismatch, fn,
                    "'teacher' has " + std::to_string(Ht) + " heads but 'student' has " + std::to_string(Hs) +
                        " (head_map one_to_one needs equal counts; use group_mean or index)");
      if (!opt.teacher_heads.empty())
        return fail(errc::invalid_argument, fn, "'teacher_heads' is given but head_map is one_to_one (use index)");
      break;
    case attention_head_map::group_mean:
      if (Ht % Hs != 0)
        return fail(errc::shape_mismatch, fn,
                    "'teacher' has " + std::to_string(Ht) + " heads, not a multiple of the student's " +
                        std::to_string(Hs) + " (head_map group_mean averages groups of H_t / H_s teacher heads)");
      if (!opt.teacher_heads.empty())
        return fail(errc::invalid_argument, fn, "'teacher_heads' is given but head_map is group_mean (use index)");
      break;
    case attention_head_map::index:
      if (static_cast<index_t>(opt.teacher_heads.size()) != Hs)
        return fail(errc::invalid_argument, fn,
                    "'teacher_heads' has " + std::to_string(opt.teacher_heads.size()) + " entries, expected one per student head (" +
                        std::to_string(Hs) + ")");
      if (Hs > max_index_heads)
        return fail(errc::invalid_argument, fn,
                    "head_map index supports at most " + std::to_string(max_index_heads) + " student heads here, got " +
                        std::to_string(Hs));
      for (std::size_t h = 0; h < opt.teacher_heads.size(); ++h)
        if (opt.teacher_heads[h] < 0 || opt.teacher_heads[h] >= Ht)
          return fail(errc::invalid_argument, fn,
                      "'teacher_heads[" + std::to_string(h) + "]' is " + std::to_string(opt.teacher_heads[h]) +
                          ", outside the teacher's heads [0, " + std::to_string(Ht) + ")");
      break;
    default: return fail(errc::invalid_argument, fn, "'head_map' is not a valid attention_head_map");
  }
  if (opt.student_input != attention_input::logits && opt.student_input != attention_input::probabilities)
    return fail(errc::invalid_argument, fn, "'student_input' is not a valid attention_input");
  if (opt.teacher_input != attention_input::logits && opt.teacher_input != attention_input::probabilities)
    return fail(errc::invalid_argument, fn, "'teacher_input' is not a valid attention_input");
  if (opt.reduction != reduction::none && opt.reduction != reduction::sum && opt.reduction != reduction::mean &&
      opt.reduction != reduction::batchmean)
    return fail(errc::invalid_argument, fn, "'reduction' is not a valid reduction");
  if (!std::isfinite(opt.grad_scale))
    return fail(errc::invalid_argument, fn, "'grad_scale' must be finite, got " + check_detail::num(opt.grad_scale));
  if (!masks.key.empty()) {
    DISTILL_TRY(check_shape(fn, "key_mask", masks.key, {B, Lk}));
    DISTILL_TRY(check_strides(fn, "key_mask", masks.key));
  }
  if (!masks.query.empty()) {
    DISTILL_TRY(check_shape(fn, "query_mask", masks.query, {B, Lq}));
    DISTILL_TRY(check_strides(fn, "query_mask", masks.query));
  }
  return {};
}

template <class VL>
status check_loss(const char* fn, const VL& loss, index_t rows, reduction red) {
  DISTILL_TRY(check_present(fn, "loss", loss));
  DISTILL_TRY(check_strides(fn, "loss", loss));
  DISTILL_TRY(check_aligned(fn, "loss", loss));
  const index_t want = red == reduction::none ? rows : 1;
  if (loss.extent(0) != want)
    return fail(errc::shape_mismatch, fn,
                "'loss' has extent " + std::to_string(loss.extent(0)) + ", expected " + std::to_string(want) +
                    (red == reduction::none ? " (one loss per row B*H_s*L_q with reduction none)" : " (a reduced loss)"));
  return {};
}

template <class VG, class VS>
status check_grad(const char* fn, const VG& grad, const VS& student) {
  DISTILL_TRY(check_present(fn, "grad_student", grad));
  DISTILL_TRY(check_same_shape(fn, "grad_student", grad, "student", student));
  DISTILL_TRY(check_strides(fn, "grad_student", grad));
  DISTILL_TRY(check_aligned(fn, "grad_student", grad));
  return {};
}

// ---- CPU path ----
// Each pass over a row's keys runs on SIMD batches (core/simd.hpp); the ragged end is a partial
// batch padded with zero probability.

/// Which keys of [j, j + n) are valid under a key-mask row (n <= the batch width).
template <class Acc>
DISTILL_FORCEINLINE simd::batch_mask<Acc> valid_keys(const std::uint8_t* km, index_t skm, index_t j, int n) noexcept {
  alignas(64) Acc v[simd::width<Acc>];
  for (int l = 0; l < simd::width<Acc>; ++l) v[l] = l < n && km[(j + l) * skm] ? Acc(1) : Acc(0);
  return simd::batch<Acc>::load_aligned(v) > simd::batch<Acc>(Acc(0));
}

/// Reads row `src` (key stride `sk`) into `x`, masked keys replaced by `masked_value`, and
/// returns the maximum of what it stored (NaN skipped).
template <class Acc, class T>
Acc load_row(const T* src, index_t sk, index_t n, const std::uint8_t* km, index_t skm, Acc masked_value, Acc* x) {
  using V = simd::batch<Acc>;
  V m(neg_infinity<Acc>());
  simd::for_each_batch<Acc>(n, [&](index_t j, int cnt) DISTILL_INLINE_LAMBDA {
    V v;
    if (sk == 1) {
      v = simd::load_partial<Acc>(src + j, cnt, masked_value);
    } else {
      alignas(64) Acc buf[simd::width<Acc>];
      for (int l = 0; l < simd::width<Acc>; ++l) buf[l] = l < cnt ? load<Acc>(src[(j + l) * sk]) : masked_value;
      v = V::load_aligned(buf);
    }
    if (km) v = simd::select(valid_keys<Acc>(km, skm, j, cnt), v, V(masked_value));
    simd::store_partial(x + j, cnt, v);
    m = simd::max_skip_nan(m, v);
  });
  return simd::reduce_max(m);
}

/// Softmax statistics of a row x (logits, -inf at masked keys) with maximum m: p = exp(x - m)
/// (unnormalised, one exp per key), scale = 1 / sum p, lse = log-sum-exp. A row with no finite
/// mass has p = 0, scale = 0, lse = -inf, unless it holds NaN, which then spreads.
template <class Acc>
struct softmax_stats {
  Acc scale;
  Acc lse;
};
template <class Acc>
softmax_stats<Acc> softmax_row(const Acc* x, Acc m, Acc* p, index_t n, bool want_lse = true) {
  if (m == neg_infinity<Acc>()) {  // no mass, unless the maximum skipped NaNs
    bool nan = false;
    for (index_t j = 0; j < n; ++j) nan |= x[j] != x[j];
    const Acc fill = nan ? std::numeric_limits<Acc>::quiet_NaN() : Acc(0);
    for (index_t j = 0; j < n; ++j) p[j] = fill;
    return {fill, nan ? fill : neg_infinity<Acc>()};
  }
  using V = simd::batch<Acc>;
  V sum(Acc(0));
  simd::for_each_batch<Acc>(n, [&](index_t j, int cnt) DISTILL_INLINE_LAMBDA {
    const V e = fast_exp(simd::load_partial<Acc>(x + j, cnt, neg_infinity<Acc>()) - m);
    simd::store_partial(p + j, cnt, e);
    sum += e;
  });
  const Acc total = simd::reduce_sum(sum);
  return {Acc(1) / total, want_lse ? m + std::log(total) : Acc(0)};
}

/// Everything a row needs, resolved once per call.
template <class TS, class TT, class TG>
struct cpu_problem {
  host_view<TS, 4> s;
  host_view<TT, 4> t;
  host_view<TG, 4> g;  // absent: no gradient
  attention_masks<host_space> masks;
  divergence div;
  bool s_logits, t_logits;
  attention_head_map head_map;
  std::span<const int> heads;
  index_t group;  // teacher heads per student head
};

/// Writes (or, with `accumulate`, adds) the first `cnt` lanes of gradient batch `gv` at keys
/// [j, j + cnt) of a gradient row with key stride `sgk`.
template <class Acc, class TG>
DISTILL_FORCEINLINE void store_grad(TG* grow, index_t sgk, index_t j, int cnt, simd::batch<Acc> gv, bool accumulate) {
  if (sgk == 1) {
    if (accumulate) gv += simd::load_partial<Acc>(grow + j, cnt, Acc(0));
    simd::store_partial(grow + j, cnt, gv);
  } else {
    alignas(64) Acc buf[simd::width<Acc>];
    gv.store_aligned(buf);
    for (int l = 0; l < cnt; ++l) {
      TG& out = grow[(j + l) * sgk];
      out = store<TG>(accumulate ? load<Acc>(out) + buf[l] : buf[l]);
    }
  }
}

/// v[0] op v[1] op ... op v[N-1] as a pairwise tree: log2 N dependent steps instead of N.
template <int N, class V, class Op>
DISTILL_FORCEINLINE V tree_reduce(const V* v, Op op) {
  if constexpr (N == 1) return v[0];
  else return op(tree_reduce<N / 2>(v, op), tree_reduce<N - N / 2>(v + N / 2, op));
}

/// R rows of at most NB batches each (64 keys: 8 AVX2 or 4 AVX-512 batches), held in registers
/// and computed side by side: the same math as row_cpu below, without scratch round trips, and
/// the R chains of reductions (max, exp sum, loss sum) overlap in the core instead of leaving it
/// idle. Needs one teacher head and contiguous keys (the caller checks); returns false, having
/// written nothing, when a row is a masked query or a side has no finite logit (row_cpu
/// handles those). `row[q]` = {b, h, i}.
template <int NB, int R, class Acc, class TS, class TT, class TG>
DISTILL_FORCEINLINE bool rows_in_registers(const cpu_problem<TS, TT, TG>& P, const index_t (&row)[R][3], Acc c,
                                           bool accumulate, Acc (&loss_out)[R]) {
  using V = simd::batch<Acc>;
  constexpr int W = simd::width<Acc>;
  const index_t Lk = P.s.extent(3);
  const bool kl = P.div == divergence::kl_teacher_student;
  const index_t skm = P.masks.key.empty() ? 0 : P.masks.key.stride(1);
  const std::uint8_t* km[R];
  for (int q = 0; q < R; ++q) {
    if (!P.masks.query.empty() && P.masks.query(row[q][0], row[q][2]) == 0) return false;
    km[q] = P.masks.key.empty() ? nullptr : P.masks.key.data() + row[q][0] * P.masks.key.stride(0);
  }
  const int full = static_cast<int>(Lk / W);  // batches with keys; the others are padding
  auto max_op = [](V a, V b) DISTILL_INLINE_LAMBDA { return simd::max_skip_nan(a, b); };
  // Loads the rows (masked keys and padding lanes = `fill`) and, for logits, takes their
  // softmax: x keeps the logits, p the probabilities, lse the log-sum-exp (kl only).
  auto side = [&](auto view, index_t head_of_row[R], bool logits, V (&x)[R][NB], V (&p)[R][NB],
                  Acc (&lse)[R]) DISTILL_INLINE_LAMBDA -> bool {
    const Acc fill = logits ? neg_infinity<Acc>() : Acc(0);
    V m[R][NB];  // NaN skipped
    for (int q = 0; q < R; ++q) {
      const auto* src = view.data() + row[q][0] * view.stride(0) + head_of_row[q] * view.stride(1) + row[q][2] * view.stride(2);
      for (int k = 0; k < NB; ++k) {
        x[q][k] = k < full ? simd::load<Acc>(src + k * W) : V(fill);
        if (km[q] && k < full) x[q][k] = simd::select(valid_keys<Acc>(km[q], skm, index_t{k} * W, W), x[q][k], V(fill));
        m[q][k] = simd::max_skip_nan(V(neg_infinity<Acc>()), x[q][k]);
      }
    }
    if (!logits) {
      for (int q = 0; q < R; ++q)
        for (int k = 0; k < NB; ++k) p[q][k] = x[q][k];
      return true;
    }
    Acc mx[R];
    for (int q = 0; q < R; ++q) {
      mx[q] = simd::reduce_max(tree_reduce<NB>(m[q], max_op));
      if (mx[q] == neg_infinity<Acc>()) return false;
    }
    for (int q = 0; q < R; ++q)
      for (int k = 0; k < NB; ++k) p[q][k] = fast_exp(x[q][k] - mx[q]);
    Acc total[R];
    for (int q = 0; q < R; ++q) total[q] = simd::reduce_sum(tree_reduce<NB>(p[q], std::plus<>{}));
    for (int q = 0; q < R; ++q) {
      const Acc scale = Acc(1) / total[q];
      for (int k = 0; k < NB; ++k) p[q][k] *= scale;
      if (kl) lse[q] = mx[q] + std::log(total[q]);
    }
    return true;
  };
  index_t s_head[R], t_head[R];
  for (int q = 0; q < R; ++q) {
    s_head[q] = row[q][1];
    t_head[q] = P.head_map == attention_head_map::index ? static_cast<index_t>(P.heads[static_cast<std::size_t>(row[q][1])])
                                                        : row[q][1];
  }
  V xs[R][NB], ps[R][NB], xt[R][NB], pt[R][NB];
  Acc s_lse[R] = {}, t_lse[R] = {};
  if (!side(P.s, s_head, P.s_logits, xs, ps, s_lse) || !side(P.t, t_head, P.t_logits, xt, pt, t_lse)) return false;

  V terms[R][NB], aux_terms[R][NB];
  for (int q = 0; q < R; ++q)
    for (int k = 0; k < NB; ++k) {
      if (!kl) {
        xt[q][k] = mse_upstream(ps[q][k], pt[q][k], c);  // g_j
        terms[q][k] = mse_term(ps[q][k], pt[q][k]);
        aux_terms[q][k] = ps[q][k] * xt[q][k];
      } else {
        const V log_ps = P.s_logits ? xs[q][k] - s_lse[q] : fast_log(ps[q][k]);
        const V log_pt = P.t_logits ? xt[q][k] - t_lse[q] : fast_log(pt[q][k]);
        terms[q][k] = kl_term(pt[q][k], log_pt, log_ps);
        aux_terms[q][k] = pt[q][k];
      }
    }
  for (int q = 0; q < R; ++q) loss_out[q] = simd::reduce_sum(tree_reduce<NB>(terms[q], std::plus<>{}));
  if (P.g.empty()) return true;
  const index_t sgk = P.g.stride(3);
  for (int q = 0; q < R; ++q) {
    const Acc aux = simd::reduce_sum(tree_reduce<NB>(aux_terms[q], std::plus<>{}));
    TG* grow = P.g.data() + row[q][0] * P.g.stride(0) + row[q][1] * P.g.stride(1) + row[q][2] * P.g.stride(2);
    for (int k = 0; k < full; ++k) {
      V gv;
      if (!kl) gv = P.s_logits ? softmax_backward(ps[q][k], xt[q][k], aux) : xt[q][k];
      else gv = P.s_logits ? kl_grad_logits(ps[q][k], pt[q][k], aux, c) : kl_grad_probabilities(ps[q][k], pt[q][k], c);
      if (km[q]) gv = simd::select(valid_keys<Acc>(km[q], skm, index_t{k} * W, W), gv, V(Acc(0)));
      store_grad<Acc>(grow, sgk, index_t{k} * W, W, gv, accumulate);
    }
  }
  return true;
}

/// One row (b, h, i): returns l_r and writes the gradient row (scaled by c) when requested.
/// Six passes over the keys in the common case: load + max and exp + sum for each side, one
/// pass for the loss and the row sum, one that writes the gradient. Scratch: 5 rows of Lk.
template <class Acc, class TS, class TT, class TG>
Acc row_cpu(const cpu_problem<TS, TT, TG>& P, index_t b, index_t h, index_t i, Acc c, bool accumulate, Acc* xs, Acc* ps,
            Acc* xt, Acc* pt, Acc* e) {
  using V = simd::batch<Acc>;
  const index_t Lk = P.s.extent(3);
  const bool qvalid = P.masks.query.empty() || P.masks.query(b, i) != 0;
  TG* grow = P.g.empty() ? nullptr : P.g.data() + b * P.g.stride(0) + h * P.g.stride(1) + i * P.g.stride(2);
  const index_t sgk = P.g.empty() ? 0 : P.g.stride(3);
  if (!qvalid) {
    if (grow && !accumulate)
      for (index_t j = 0; j < Lk; ++j) grow[j * sgk] = store<TG>(Acc(0));
    return Acc(0);
  }
  const std::uint8_t* km = P.masks.key.empty() ? nullptr : P.masks.key.data() + b * P.masks.key.stride(0);
  const index_t skm = P.masks.key.empty() ? 0 : P.masks.key.stride(1);
  const bool kl = P.div == divergence::kl_teacher_student;

  // Student: p_s[j] = ps[j] * s_scale; log p_s[j] = xs[j] - s_lse (logits).
  const TS* srow = P.s.data() + b * P.s.stride(0) + h * P.s.stride(1) + i * P.s.stride(2);
  Acc s_scale = 1, s_lse = 0;
  if (P.s_logits) {
    const Acc m = load_row(srow, P.s.stride(3), Lk, km, skm, neg_infinity<Acc>(), xs);
    const auto st = softmax_row(xs, m, ps, Lk, kl);
    s_scale = st.scale, s_lse = st.lse;
  } else {
    load_row(srow, P.s.stride(3), Lk, km, skm, Acc(0), ps);
  }

  // Teacher: p_t[j] = pt[j] * t_scale; log p_t[j] = xt[j] - t_lse when one logit head gives it
  // exactly (kl), otherwise log(p_t).
  const index_t nheads = P.head_map == attention_head_map::group_mean ? P.group : 1;
  const bool exact_log_t = P.t_logits && nheads == 1 && kl;
  Acc t_scale = 1, t_lse = 0;
  auto teacher_row = [&](index_t k) {
    const index_t th = P.head_map == attention_head_map::group_mean ? h * P.group + k
                       : P.head_map == attention_head_map::index ? static_cast<index_t>(P.heads[static_cast<std::size_t>(h)])
                                                                 : h;
    return P.t.data() + b * P.t.stride(0) + th * P.t.stride(1) + i * P.t.stride(2);
  };
  if (nheads == 1) {
    if (P.t_logits) {
      const Acc m = load_row(teacher_row(0), P.t.stride(3), Lk, km, skm, neg_infinity<Acc>(), xt);
      const auto st = softmax_row(xt, m, pt, Lk, exact_log_t);
      t_scale = st.scale, t_lse = st.lse;
    } else {
      load_row(teacher_row(0), P.t.stride(3), Lk, km, skm, Acc(0), pt);
    }
  } else {
    // Mean of the group's distributions (e: one more scratch row).
    for (index_t j = 0; j < Lk; ++j) pt[j] = Acc(0);
    for (index_t k = 0; k < nheads; ++k) {
      Acc sc = Acc(1);
      if (P.t_logits) {
        const Acc m = load_row(teacher_row(k), P.t.stride(3), Lk, km, skm, neg_infinity<Acc>(), xt);
        sc = softmax_row(xt, m, e, Lk, false).scale;
      } else {
        load_row(teacher_row(k), P.t.stride(3), Lk, km, skm, Acc(0), e);
      }
      simd::for_each_batch<Acc>(Lk, [&](index_t j, int cnt) DISTILL_INLINE_LAMBDA {
        const V v = simd::load_partial<Acc>(pt + j, cnt, Acc(0)) + simd::load_partial<Acc>(e + j, cnt, Acc(0)) * sc;
        simd::store_partial(pt + j, cnt, v);
      });
    }
    const Acc g = static_cast<Acc>(nheads);
    for (index_t j = 0; j < Lk; ++j) pt[j] /= g;  // division: G copies of one distribution stay exact
  }

  // Loss pass: normalise p_s and p_t in place, add up the loss and the row sum (mse: sum p_s g;
  // kl: teacher mass); mse keeps g_j in xt. Padding lanes hold zero probability: no terms.
  V vloss(Acc(0)), vaux(Acc(0));
  if (!kl) {
    simd::for_each_batch<Acc>(Lk, [&](index_t j, int cnt) DISTILL_INLINE_LAMBDA {
      const V a = simd::load_partial<Acc>(ps + j, cnt, Acc(0)) * s_scale;
      const V t = simd::load_partial<Acc>(pt + j, cnt, Acc(0)) * t_scale;
      const V gj = mse_upstream(a, t, c);
      simd::store_partial(ps + j, cnt, a);
      simd::store_partial(xt + j, cnt, gj);
      vloss += mse_term(a, t);
      vaux += a * gj;
    });
  } else {
    const bool s_empty = s_lse == neg_infinity<Acc>(), t_empty = t_lse == neg_infinity<Acc>();
    const V ninf(neg_infinity<Acc>());
    simd::for_each_batch<Acc>(Lk, [&](index_t j, int cnt) DISTILL_INLINE_LAMBDA {
      const V a = simd::load_partial<Acc>(ps + j, cnt, Acc(0)) * s_scale;
      const V t = simd::load_partial<Acc>(pt + j, cnt, Acc(0)) * t_scale;
      const V log_ps = P.s_logits ? (s_empty ? ninf : simd::load_partial<Acc>(xs + j, cnt, Acc(0)) - s_lse) : fast_log(a);
      const V log_pt = exact_log_t ? (t_empty ? ninf : simd::load_partial<Acc>(xt + j, cnt, Acc(0)) - t_lse) : fast_log(t);
      simd::store_partial(ps + j, cnt, a);
      simd::store_partial(pt + j, cnt, t);
      vloss += kl_term(t, log_pt, log_ps);
      vaux += t;
    });
  }
  const Acc loss = simd::reduce_sum(vloss), aux = simd::reduce_sum(vaux);
  if (!grow) return loss;

  // Gradient pass, masked keys zeroed (p_s = p_t = 0 there, so every formula already gives 0;
  // zeroing keeps a NaN stored in a masked slot from leaking), then the store.
  simd::for_each_batch<Acc>(Lk, [&](index_t j, int cnt) DISTILL_INLINE_LAMBDA {
    const V a = simd::load_partial<Acc>(ps + j, cnt, Acc(0));
    V gv;
    if (!kl) {
      gv = simd::load_partial<Acc>(xt + j, cnt, Acc(0));
      if (P.s_logits) gv = softmax_backward(a, gv, aux);
    } else {
      const V t = simd::load_partial<Acc>(pt + j, cnt, Acc(0));
      gv = P.s_logits ? kl_grad_logits(a, t, aux, c) : kl_grad_probabilities(a, t, c);
    }
    if (km) gv = simd::select(valid_keys<Acc>(km, skm, j, cnt), gv, V(Acc(0)));
    store_grad<Acc>(grow, sgk, j, cnt, gv, accumulate);
  });
  return loss;
}

/// |V| of the file comment from host masks.
inline double valid_count_cpu(const attention_masks<host_space>& masks, divergence div, index_t B, index_t Hs,
                              index_t Lq, index_t Lk) {
  double total = 0;
  for (index_t b = 0; b < B; ++b) {
    index_t nk = Lk, nq = Lq;
    if (!masks.key.empty()) {
      nk = 0;
      for (index_t j = 0; j < Lk; ++j) nk += masks.key(b, j) != 0;
    }
    if (!masks.query.empty()) {
      nq = 0;
      for (index_t i = 0; i < Lq; ++i) nq += masks.query(b, i) != 0;
    }
    total += div == divergence::mse ? static_cast<double>(nq) * static_cast<double>(nk)
                                              : (nk > 0 ? static_cast<double>(nq) : 0.0);
  }
  return total * static_cast<double>(Hs);
}

template <class TS, class TT>
status run_cpu(const char* fn, divergence div, const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
               const attention_masks<host_space>& masks, host_view<accum_t<TS>, 1> loss,
               host_view<std::remove_const_t<TS>, 4> grad, bool need_loss, bool need_grad, const attention_map_options& opt) {
  using Acc = accum_t<TS>;
  using TG = std::remove_const_t<TS>;
  static_assert(is_supported_float_v<TS> && is_supported_float_v<TT>, "attention_map: unsupported element type");
  DISTILL_TRY(check_inputs(fn, student, teacher, masks, opt, std::numeric_limits<index_t>::max()));
  const index_t B = student.extent(0), Hs = student.extent(1), Lq = student.extent(2), Lk = student.extent(3);
  const index_t rows = B * Hs * Lq;
  if (need_loss) DISTILL_TRY(check_loss(fn, loss, rows, opt.reduction));
  if (need_grad) DISTILL_TRY(check_grad(fn, grad, student));
  if (opt.check_finite) {
    auto rule = [](attention_input in) { return in == attention_input::logits ? finite_rule::finite_or_minus_inf : finite_rule::finite; };
    DISTILL_TRY(check_finite(fn, "student", student, rule(opt.student_input)));
    DISTILL_TRY(check_finite(fn, "teacher", teacher, rule(opt.teacher_input)));
  }

#if defined(__CUDA_ARCH__)
  return {};  // nvcc's device pass parses host code without compiling it: no SIMD batches there
#else
  const double valid = valid_count_cpu(masks, div, B, Hs, Lq, Lk);
  const double inv_div = safe_inverse(divisor(opt.reduction, valid, B));
  const Acc c = static_cast<Acc>(opt.grad_scale * inv_div);
  cpu_problem<TS, TT, TG> P{student, teacher, need_grad ? grad : host_view<TG, 4>{}, masks, div,
                            opt.student_input == attention_input::logits, opt.teacher_input == attention_input::logits,
                            opt.head_map, opt.teacher_heads, teacher.extent(1) / Hs};
  const bool per_row = need_loss && opt.reduction == reduction::none;
  auto chunk = [&](index_t r0, index_t r1) -> Acc {
    std::vector<Acc> scratch(static_cast<std::size_t>(5 * Lk));
    Acc* xs = scratch.data();
    Acc *ps = xs + Lk, *xt = ps + Lk, *pt = xt + Lk, *e = pt + Lk;
    Acc total = 0;
    index_t b = r0 / (Hs * Lq), h = (r0 / Lq) % Hs, i = r0 % Lq;  // then counted, not divided
    auto next_row = [&] {
      if (++i == Lq) {
        i = 0;
        if (++h == Hs) h = 0, ++b;
      }
    };
    index_t r = r0;
    // Short rows R at a time in registers (NB batches, rounded up to a power of two).
    auto in_registers = [&]<int NB>(std::integral_constant<int, NB>) {
      constexpr int R = 4;
      for (; r + R <= r1; r += R) {
        index_t row[R][3];
        for (int q = 0; q < R; ++q) row[q][0] = b, row[q][1] = h, row[q][2] = i, next_row();
        Acc l[R];
        if (!rows_in_registers<NB>(P, row, c, opt.accumulate, l))
          for (int q = 0; q < R; ++q) l[q] = row_cpu<Acc>(P, row[q][0], row[q][1], row[q][2], c, opt.accumulate, xs, ps, xt, pt, e);
        for (int q = 0; q < R; ++q) {
          if (per_row) loss(r + q) = l[q];
          total += l[q];
        }
      }
    };
    const index_t batches = (Lk + simd::width<Acc> - 1) / simd::width<Acc>;
    if (P.group == 1 || opt.head_map != attention_head_map::group_mean) {
      if (student.stride(3) == 1 && teacher.stride(3) == 1 && Lk % simd::width<Acc> == 0) {
        if (batches <= 1) in_registers(std::integral_constant<int, 1>{});
        else if (batches <= 2) in_registers(std::integral_constant<int, 2>{});
        else if (batches <= 4) in_registers(std::integral_constant<int, 4>{});
        else if (batches <= 8) in_registers(std::integral_constant<int, 8>{});
      }
    }
    for (; r < r1; ++r) {
      const Acc l = row_cpu<Acc>(P, b, h, i, c, opt.accumulate, xs, ps, xt, pt, e);
      if (per_row) loss(r) = l;
      total += l;
      next_row();
    }
    return total;
  };
  const index_t min_chunk = std::max<index_t>(1, 4096 / std::max<index_t>(1, Lk));
  const Acc total = parallel_sum<Acc>(ctx, rows, chunk, min_chunk);
  if (need_loss && !per_row) loss(0) = static_cast<Acc>(static_cast<double>(total) * inv_div);
  return {};
#endif
}

/// The engine on memory `Space`: the CPU one here, the CUDA one (`backend<cuda_space>`) in
/// kernels/distill/cuda/attention_map.cuh.
template <class Space>
struct backend;

template <>
struct backend<host_space> {
  template <class TS, class TT>
  static status run(const char* fn, divergence div, const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
                    const attention_masks<host_space>& masks, host_view<accum_t<TS>, 1> loss,
                    host_view<std::remove_const_t<TS>, 4> grad, host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/,
                    bool need_loss, bool need_grad, const attention_map_options& opt) {
    return run_cpu(fn, div, ctx, student, teacher, masks, loss, grad, need_loss, need_grad, opt);
  }
};

/// Scratch of the CUDA path (core/workspace.hpp): the valid-count slot, the completion counter
/// and one partial sum per block (at most cuda_max_blocks).
inline constexpr int cuda_max_blocks = 2048;
struct cuda_scratch {
  float* divisor;
  unsigned* counter;
  float* partials;
  constexpr explicit cuda_scratch(workspace_carver& w)
      : divisor(w.take<float>(1)), counter(w.take<unsigned>(1)), partials(w.take<float>(cuda_max_blocks)) {}
};

}  // namespace attention_map_detail

/// Bytes of scratch the entry points need: none on the CPU; on CUDA a constant (16-byte
/// aligned, no initialisation needed).
constexpr std::size_t attention_map_workspace_size(const cpu&) noexcept { return 0; }
constexpr std::size_t attention_map_workspace_size(const cuda&) noexcept {
  return workspace_carver::size_of<attention_map_detail::cuda_scratch>();
}

// ---------------------------------------------------------------------------------------------
// Entry points, the same for every context (see the file comment)
// ---------------------------------------------------------------------------------------------

#define DISTILL_ATTENTION_MAP_ENTRY_POINTS(name, kind)                                                                \
  /** Loss only: `loss` is (1), or (B*H_s*L_q) with reduction none. */                                                \
  template <class Ctx, class TS, class TT, class Space>                                                               \
    requires can_access_v<Ctx, Space>                                                                                 \
  [[nodiscard]] status name##_forward(const Ctx& ctx, tensor_view<TS, 4, Space> student, tensor_view<TT, 4, Space> teacher, \
                                      const attention_masks<Space>& masks, tensor_view<accum_t<TS>, 1, Space> loss,   \
                                      tensor_view<std::byte, 1, Space> workspace, const attention_map_options& opt = {}) { \
    static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");           \
    return attention_map_detail::backend<Space>::run(#name "_forward", kind, ctx, student, teacher, masks, loss, {},   \
                                                     workspace, true, false, opt);                                    \
  }                                                                                                                   \
  /** Gradient with respect to the student logits or probabilities. */                                                \
  template <class Ctx, class TS, class TT, class Space>                                                               \
    requires can_access_v<Ctx, Space>                                                                                 \
  [[nodiscard]] status name##_backward(const Ctx& ctx, tensor_view<TS, 4, Space> student, tensor_view<TT, 4, Space> teacher, \
                                       const attention_masks<Space>& masks,                                           \
                                       tensor_view<std::remove_const_t<TS>, 4, Space> grad_student,                   \
                                       tensor_view<std::byte, 1, Space> workspace, const attention_map_options& opt = {}) { \
    static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");           \
    return attention_map_detail::backend<Space>::run(#name "_backward", kind, ctx, student, teacher, masks, {},        \
                                                     grad_student, workspace, false, true, opt);                      \
  }                                                                                                                   \
  /** Loss and gradient in one pass over the inputs. */                                                               \
  template <class Ctx, class TS, class TT, class Space>                                                               \
    requires can_access_v<Ctx, Space>                                                                                 \
  [[nodiscard]] status name##_forward_backward(                                                                       \
      const Ctx& ctx, tensor_view<TS, 4, Space> student, tensor_view<TT, 4, Space> teacher,                           \
      const attention_masks<Space>& masks, tensor_view<accum_t<TS>, 1, Space> loss,                                   \
      tensor_view<std::remove_const_t<TS>, 4, Space> grad_student, tensor_view<std::byte, 1, Space> workspace,        \
      const attention_map_options& opt = {}) {                                                                        \
    static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");           \
    return attention_map_detail::backend<Space>::run(#name "_forward_backward", kind, ctx, student, teacher, masks,   \
                                                     loss, grad_student, workspace, true, true, opt);                 \
  }

DISTILL_ATTENTION_MAP_ENTRY_POINTS(attention_map_mse, attention_map_detail::divergence::mse)
DISTILL_ATTENTION_MAP_ENTRY_POINTS(attention_map_kl_teacher_student, attention_map_detail::divergence::kl_teacher_student)
#undef DISTILL_ATTENTION_MAP_ENTRY_POINTS

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/attention_map.cuh"
#endif
