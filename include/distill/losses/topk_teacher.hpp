// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! KL from a sparse top-k teacher to the student's full softmax: the teacher is stored offline as
//! the indices and log-probabilities of its k most likely classes per row (vLLM/SGLang logprobs,
//! TRL #3055, Liger #441), so it never sits in training memory. Two variants: A (renormalised) and
//! C (rest bucket), below.
//!
//! Per row: student y = z^s / T, q = softmax(y) over all C classes (its full log-sum-exp);
//! teacher: indices I (k slots; a negative index marks an unused slot) and values v_j, taken
//! as they are (no temperature is applied to them).
//!   A, topk_variant::renormalized: p~_j = softmax_j(v) over I (any per-row offset of v cancels,
//!      so temperature-scaled logits work as well as log-probabilities)
//!        f       = sum_{j in I} p~_j (log p~_j - log q_j)
//!        df/dy_k = q_k - p~_k                                (p~ zero outside I)
//!   C, topk_variant::rest_bucket: v_j = log p_j are the teacher's *full-vocabulary*
//!      log-probabilities at temperature T; the residual mass r = 1 - sum_I p_j forms a "rest"
//!      bucket matched against the student's mass outside I, s = 1 - sum_I q_j:
//!        f       = sum_{j in I} p_j (log p_j - log q_j) + r (log r - log s)
//!        df/dy_k = q_k - p_k (k in I),   q_k - r q_k / s (k not in I)
//!      log r = log1mexp(LSE_I v) (r = 0 when the values sum to >= 1, e.g. after bf16 rounding);
//!      s is summed over the classes outside I themselves, never 1 - sum by subtraction.
//! dL/dz^s = c(T)/T * df/dy (row scale as in soft_target_common.hpp). The teacher values are
//! constants: dL/dT differentiates the student side (and c(T)) only. Diagnostics: row_kl = f,
//! row_teacher_entropy = the entropy of the sparse teacher (A: of p~; C: of (p, r)), top-1
//! agreement = the student's first argmax equals the class of the largest teacher value (ties:
//! the lowest class).
//!
//! Bad input: indices >= C (a negative index is an unused slot, not an error), repeated indices
//! within a row, and k > C are refused on the CPU (errc::invalid_argument); the
//! CUDA path cannot inspect device indices without a synchronisation and makes such a row NaN
//! instead. A row whose student is -inf everywhere, or (variant A) whose valid teacher values
//! are all -inf or absent, is NaN and, on the CPU, reported as errc::non_finite.
//!
//! Entry points, the same on the CPU and CUDA backends (CUDA engine: kernels/distill/cuda/topk_teacher.cuh):
//!   kl_topk_teacher_student_forward (ctx, student, teacher_indices, teacher_logprobs, loss, extras, workspace, options)
//!   kl_topk_teacher_student_backward (ctx, student, teacher_indices, teacher_logprobs, grad_student, extras, workspace, options)
//!   kl_topk_teacher_student_forward_backward (ctx, student, teacher_indices, teacher_logprobs, loss, grad_student, extras,
//!                                             workspace, options)
//! student (N, C); teacher_indices (N, k) int64; teacher_logprobs (N, k) float/double/16-bit;
//! workspace: soft_target_workspace_size(ctx, N) bytes.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "distill/core/parallel.hpp"
#include "distill/core/simd.hpp"
#include "distill/losses/detail/soft_target_dispatch.hpp"
#include "distill/losses/detail/soft_target_rows.hpp"

namespace distill {

/// Which sparse-teacher objective.
enum class topk_variant {
  renormalized,  ///< A: teacher renormalised over its top-k, full student softmax
  rest_bucket,   ///< C: top-k plus a "rest" bucket holding the teacher's residual mass
};

struct topk_teacher_options : soft_target_options {
  topk_variant variant = topk_variant::renormalized;
};

namespace soft_target_detail {

/// Row scalars of the top-k objective, shared by the CPU path and the CUDA kernel.
template <class Acc>
struct topk_row {
  Acc ls;         // LSE(y) over all classes
  Acc lv;         // LSE of the valid teacher values
  Acc r;          // residual teacher mass (C), 0 for A
  Acc rest_coef;  // r / s_rest in units of e^{y - max y}: the rest gradient is q_k - rest_coef * e^{y_k - max y}
  Acc f;
  Acc entropy;
};

/// Teacher probability of slot j: p~_j (A) or p_j (C).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc topk_teacher_prob(topk_variant v, Acc value, Acc lv) noexcept {
  return v == topk_variant::renormalized ? st_exp(value - lv) : st_exp(value);
}
/// log of that probability.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc topk_teacher_logprob(topk_variant v, Acc value, Acc lv) noexcept {
  return v == topk_variant::renormalized ? value - lv : value;
}

/// The rest-bucket terms from the teacher's LSE over I and the student sums (relative to my).
/// sum_all = sum_k e^{y_k - my}, sum_rest = the same over k not in I.
template <class Acc>
DISTILL_HOST_DEVICE inline void topk_rest(topk_variant v, Acc lv, Acc sum_all, Acc sum_rest, Acc& r, Acc& log_r,
                                          Acc& log_s, Acc& rest_coef) noexcept {
  if (v == topk_variant::renormalized) {
    r = Acc(0), log_r = ninf<Acc>(), log_s = Acc(0), rest_coef = Acc(0);
    return;
  }
  // r = 1 - sum_I p_j = -expm1(lv); values summing to >= 1 leave no residual mass
  log_r = lv < Acc(0) ? log1mexp(lv) : ninf<Acc>();
  r = st_exp(log_r);
  log_s = st_log(sum_rest) - st_log(sum_all);
  rest_coef = sum_rest > Acc(0) ? r / sum_rest : Acc(0);
}

/// The checks of the CPU and CUDA entry points (`is_cuda` adds the layout and workspace rules).
template <class VS, class VI, class VV, class VL, class VG, class Acc, class Space>
status topk_validate(const char* fn, const VS& student, const VI& idx, const VV& values, const VL& loss,
                     bool loss_required, const VG& grad, bool want_grad, const topk_teacher_options& opt,
                     const soft_target_extras<Acc, Space>& ex, bool is_cuda) {
  DISTILL_TRY(validate_soft_target(fn, student, values, false, loss, loss_required, grad, want_grad, opt, ex, false, is_cuda));
  DISTILL_TRY(check_present(fn, "teacher_indices", idx));
  DISTILL_TRY(check_same_shape(fn, "teacher_indices", idx, "teacher_logprobs", values));
  DISTILL_TRY(check_strides(fn, "teacher_indices", idx));
  DISTILL_TRY(check_aligned(fn, "teacher_indices", idx));
  if (is_cuda) DISTILL_TRY(check_inner_contiguous(fn, "teacher_indices", idx));
  if (values.extent(1) > student.extent(1))
    return fail(errc::shape_mismatch, fn,
                "'teacher_logprobs' has " + std::to_string(values.extent(1)) + " entries per row but 'student' only " +
                    std::to_string(student.extent(1)) + " classes");
  if (opt.variant != topk_variant::renormalized && opt.variant != topk_variant::rest_bucket)
    return fail(errc::invalid_argument, fn, "'variant' is not a valid topk_variant");
  if (grad.data() != nullptr && overlaps(grad, idx)) return fail(errc::invalid_argument, fn, "'grad_student' overlaps 'teacher_indices'");
  return {};
}

/// The valid slots of one row (unused slots dropped), gathered before anything is written: the
/// gradient may be written in place over the student.
template <class Acc>
struct topk_slots {
  std::vector<std::int64_t> cls;  // classes of I
  std::vector<Acc> z, v, e, old;  // raw student logit, teacher value, e^{y - max y}, old gradient
  index_t m = 0;
  explicit topk_slots(index_t k)
      : cls(static_cast<std::size_t>(k)), z(cls.size()), v(cls.size()), e(cls.size()), old(cls.size()) {}
};

/// dL/dz^s over a batch of classes outside I (or any class, before I is written over it):
/// the soft term q_k - rest_coef e_k, the hard term without its one-hot label, and `old`.
template <bool NeedZ, bool DT, class U, class Acc>
DISTILL_FORCEINLINE U topk_rest_grad(const U& zs, const U& e, const U& old, Acc inv_ss, Acc rest_coef, Acc coef_soft,
                                     Acc coef_hard, Acc sm_scale, Acc lz, Acc inv_t, U& dt) noexcept {
  const U gs = e * (inv_ss - rest_coef);
  U v = coef_soft * gs + old;
  if (coef_hard != Acc(0)) {
    if constexpr (NeedZ) v += coef_hard * fast_exp(zs - lz);
    else v += coef_hard * (e * sm_scale);
  }
  if constexpr (DT) dt += keep_nonzero(gs, gs * (zs * inv_t));
  return v;
}

/// One contiguous row.
template <class Acc, class S, class T, class G>
row_result<Acc> topk_row_cpu(const cpu_call<Acc>& call, topk_variant variant, const S* s, const std::int64_t* idx,
                             index_t idx_stride, const T* vals, index_t val_stride, index_t k, G* g, index_t cols,
                             std::int64_t label, Acc weight, Acc* es_buf, topk_slots<Acc>& sl) {
  using V = simd::batch<Acc>;
  constexpr int W = simd::width<Acc>;
  row_result<Acc> out;
  const Acc inv_t = call.sc.inv_temperature;
  // gather what pass 3 may overwrite (in place) before anything is written
  sl.m = 0;
  for (index_t j = 0; j < k; ++j) {
    const std::int64_t c = idx[j * idx_stride];
    if (c < 0) continue;
    const auto i = static_cast<std::size_t>(sl.m++);
    sl.cls[i] = c;
    sl.z[i] = load<Acc>(s[c]);
    sl.v[i] = load<Acc>(vals[j * val_stride]);
    sl.old[i] = (call.accumulate && g != nullptr) ? load<Acc>(g[c]) : Acc(0);
  }
  const auto m = static_cast<std::size_t>(sl.m);
  const Acc z_label = label >= 0 ? load<Acc>(s[label]) : Acc(0);
  const Acc old_label = label >= 0 && call.accumulate && g != nullptr ? load<Acc>(g[label]) : Acc(0);

  // pass 1: raw student maximum
  const Acc raw_max = row_max<Acc>(s, cols);
  const Acc my = raw_max * inv_t;
  const Acc my_e = my == ninf<Acc>() ? Acc(0) : my, mz_e = raw_max == ninf<Acc>() ? Acc(0) : raw_max;
  const bool need_z = call.hard && call.sc.temperature != Acc(1);

  // pass 2: e^{y - max y} into scratch, its sum (and the raw sum for the hard term)
  V ss(Acc(0)), sz(Acc(0));
  auto stats = [&](const V& zs) DISTILL_INLINE_LAMBDA {
    const V e = fast_exp(zs * inv_t - my_e);
    ss += e;
    if (need_z) sz += fast_exp(zs - mz_e);
    return e;
  };
  index_t c0 = 0;
  for (; c0 + W <= cols; c0 += W) stats(simd::load<Acc>(s + c0)).store_unaligned(es_buf + c0);
  if (c0 < cols) {
    const int n = static_cast<int>(cols - c0);
    simd::store_partial(es_buf + c0, n, stats(simd::load_partial<Acc>(s + c0, n, ninf<Acc>())));
  }
  const Acc sum_all = simd::reduce_sum(ss);
  const Acc ls = my + st_log(sum_all);
  // I's exponentials move to the slots and leave zeros behind, so the sum of the scratch is
  // the student mass outside I (summed over those classes themselves, never 1 - sum_I), and
  // pass 3's rest formula gives I's classes nothing to undo
  for (std::size_t i = 0; i < m; ++i) {
    sl.e[i] = es_buf[sl.cls[i]];
    es_buf[sl.cls[i]] = Acc(0);
  }
  Acc sum_rest = Acc(0);
  if (variant == topk_variant::rest_bucket) {
    V rs(Acc(0));
    c0 = 0;
    for (; c0 + W <= cols; c0 += W) rs += V::load_unaligned(es_buf + c0);
    if (c0 < cols) rs += simd::load_partial<Acc>(es_buf + c0, static_cast<int>(cols - c0), Acc(0));
    sum_rest = simd::reduce_sum(rs);
  }

  // teacher side
  Acc lv = ninf<Acc>();
  {
    lse_state<Acc> l;
    for (std::size_t j = 0; j < m; ++j) l.add(sl.v[j]);
    lv = l.value();
  }
  Acc r, log_r, log_s, rest_coef;
  topk_rest(variant, lv, sum_all, sum_rest, r, log_r, log_s, rest_coef);
  Acc f = Acc(0), ent = Acc(0);
  std::size_t best = m;
  for (std::size_t j = 0; j < m; ++j) {
    const Acc lp = topk_teacher_logprob(variant, sl.v[j], lv), p = st_exp(lp);
    f += keep_or_zero(p != Acc(0), p * (lp - (sl.z[j] * inv_t - ls)));
    ent -= keep_or_zero(p != Acc(0), p * lp);
    if (best == m || sl.v[j] > sl.v[best] || (sl.v[j] == sl.v[best] && sl.cls[j] < sl.cls[best])) best = j;  // ties: lowest class
  }
  f += keep_or_zero(r != Acc(0), r * (log_r - log_s));
  ent -= keep_or_zero(r != Acc(0), r * log_r);
  out.masked = raw_max == ninf<Acc>() || (variant == topk_variant::renormalized && lv == ninf<Acc>());

  Acc lz = Acc(0), hard_ce = Acc(0);
  if (call.hard && label >= 0) {
    lz = need_z ? raw_max + st_log(simd::reduce_sum(sz)) : ls;
    hard_ce = lz - z_label;
  }
  out.loss = weight * (call.soft_weight * call.sc.c * f + (call.hard_weight != Acc(0) ? call.hard_weight * hard_ce : Acc(0)));
  out.hard_ce = hard_ce;
  out.diag.kl = f;
  out.diag.entropy = ent;
  if (best < m && call.want_diag) {  // first argmax of the student
    out.diag.top1 = first_argmax<Acc>(s, cols) == sl.cls[best] ? Acc(1) : Acc(0);
  }
  if (g == nullptr) return out;

  // pass 3: the rest formula everywhere, then the label's class and the classes of I
  const Acc inv_ss = Acc(1) / sum_all;
  const Acc coef_soft = call.grad_scale * weight * call.soft_weight * call.sc.c * inv_t * call.inv_divisor;
  const Acc coef_hard = call.hard_weight != Acc(0) ? call.grad_scale * weight * call.hard_weight * call.inv_divisor : Acc(0);
  const Acc sm_scale = call.sc.temperature == Acc(1) ? inv_ss : Acc(0);  // softmax(z) = q when T == 1
  Acc dt_sum = Acc(0);
  auto run = [&](auto need_z_c, auto dt_c, auto acc_c) {
    constexpr bool NZ = decltype(need_z_c)::value, DT = decltype(dt_c)::value, Accum = decltype(acc_c)::value;
    V dt(Acc(0));
    auto at = [&](const V& zs, const V& e, const V& old) DISTILL_INLINE_LAMBDA {
      return topk_rest_grad<NZ, DT>(zs, e, old, inv_ss, rest_coef, coef_soft, coef_hard, sm_scale, lz, inv_t, dt);
    };
    index_t c = 0;
    for (; c + W <= cols; c += W)
      simd::store(g + c, at(simd::load<Acc>(s + c), V::load_unaligned(es_buf + c), Accum ? simd::load<Acc>(g + c) : V(Acc(0))));
    if (c < cols) {
      const int n = static_cast<int>(cols - c);
      simd::store_partial(g + c, n,
                          at(simd::load_partial<Acc>(s + c, n, Acc(0)), simd::load_partial<Acc>(es_buf + c, n, Acc(0)),
                             Accum ? simd::load_partial<Acc>(g + c, n, Acc(0)) : V(Acc(0))));
    }
    dt_sum = simd::reduce_sum(dt);
    const bool label_in_i = std::find(sl.cls.begin(), sl.cls.begin() + sl.m, label) != sl.cls.begin() + sl.m;
    if (coef_hard != Acc(0) && label >= 0 && !label_in_i) {  // the label's one-hot term
      Acc no_dt = Acc(0);
      const Acc old = Accum ? old_label : Acc(0);
      g[label] = store<G>(topk_rest_grad<NZ, false>(z_label, es_buf[label], old, inv_ss, rest_coef, coef_soft, coef_hard,
                                                    sm_scale, lz, inv_t, no_dt) - coef_hard);
    }
  };
  with_bool(need_z, [&](auto nz) { with_bool(call.want_dt, [&](auto d) { with_bool(call.accumulate, [&](auto a) { run(nz, d, a); }); }); });
  for (std::size_t j = 0; j < m; ++j) {  // classes of I: q_k - p_k
    const std::int64_t c = sl.cls[j];
    const Acc p = topk_teacher_prob(variant, sl.v[j], lv);
    const Acc gs = sl.e[j] * inv_ss - p;
    Acc v = coef_soft * gs + sl.old[j];
    if (coef_hard != Acc(0)) {
      const Acc sm = need_z ? st_exp(sl.z[j] - lz) : sl.e[j] * sm_scale;
      v += coef_hard * (sm - (c == label ? Acc(1) : Acc(0)));
    }
    g[c] = store<G>(v);
    dt_sum += keep_or_zero(gs != Acc(0), gs * (sl.z[j] * inv_t));
  }
  out.dt = weight * call.soft_weight * (call.sc.dc * f - call.sc.c * inv_t * dt_sum);
  return out;
}

template <class TS, class TT, class Acc, class G>
status topk_cpu(const char* fn, const cpu& ctx, const host_view<TS, 2>& student,
                const host_view<const std::int64_t, 2>& idx, const host_view<TT, 2>& values,
                const host_view<Acc, 1>& loss, bool loss_required, const host_view<G, 2>& grad, bool want_grad,
                const topk_teacher_options& opt, const soft_target_extras<Acc, host_space>& ex) {
  static_assert(is_supported_float_v<TS> && is_supported_float_v<TT>, "top-k KL takes float, double, float16 or bfloat16");
  static_assert(std::is_same_v<Acc, accum_t<TS>>, "the loss and extras use the student's accumulation type");
  DISTILL_TRY(topk_validate(fn, student, idx, values, loss, loss_required, grad, want_grad, opt, ex, false));
  DISTILL_TRY(validate_host_values(fn, student, values, opt, ex, "teacher_logprobs"));
  const index_t n = student.extent(0), cols = student.extent(1), k = idx.extent(1);

  // indices: in range (or negative = unused) and unique within each row
  {
    std::vector<std::int64_t> stamp(static_cast<std::size_t>(cols), -1);
    for (index_t r = 0; r < n; ++r)
      for (index_t j = 0; j < k; ++j) {
        const std::int64_t c = idx(r, j);
        if (c < 0) continue;
        if (c >= cols)
          return fail(errc::invalid_argument, fn,
                      "teacher index " + std::to_string(c) + " (row " + std::to_string(r) + ", slot " + std::to_string(j) +
                          ") is outside [0, " + std::to_string(cols) + ")");
        if (stamp[static_cast<std::size_t>(c)] == r)
          return fail(errc::invalid_argument, fn,
                      "teacher index " + std::to_string(c) + " appears twice in row " + std::to_string(r));
        stamp[static_cast<std::size_t>(c)] = r;
      }
  }

#if defined(__CUDA_ARCH__)
  return {};  // nvcc's device pass: see dense_cpu
#else
  const cpu_call<Acc> call = make_cpu_call(opt, ex, n, want_grad);
  row_sink<Acc, G> sink(call, ex, grad, n, cols);
  const bool contiguous = student.inner_contiguous() && (!want_grad || grad.inner_contiguous());
  parallel_for(ctx, n, [&](index_t r0, index_t r1) {
    std::vector<Acc> scratch(static_cast<std::size_t>(cols) * (contiguous ? 1 : 3));
    topk_slots<Acc> slots(k);
    for (index_t r = r0; r < r1; ++r) {
      if (call.ignored(r)) {
        sink.put_ignored(r);
        continue;
      }
      if (contiguous) {
        sink.put(r, topk_row_cpu<Acc>(call, opt.variant, student.row(r), idx.row(r), idx.stride(1), values.row(r),
                                      values.stride(1), k, want_grad ? grad.row(r) : static_cast<G*>(nullptr), cols,
                                      call.label(r), call.weight(r), scratch.data(), slots));
      } else {  // any layout: through contiguous copies of the row
        Acc* ss = scratch.data() + cols;
        Acc* gs = ss + cols;
        gather_row(student, r, ss);
        if (want_grad && opt.accumulate) gather_row(grad, r, gs);
        const row_result<Acc> o =
            topk_row_cpu<Acc>(call, opt.variant, static_cast<const Acc*>(ss), idx.row(r), idx.stride(1), values.row(r),
                              values.stride(1), k, want_grad ? gs : static_cast<Acc*>(nullptr), cols, call.label(r),
                              call.weight(r), scratch.data(), slots);
        if (want_grad) scatter_row(grad, r, gs);
        sink.put(r, o);
      }
    }
  }, min_rows_per_thread(cols));
  const index_t bad = sink.finish(loss, opt.reduction);
  if (bad >= 0)
    return fail(errc::non_finite, fn,
                "row " + std::to_string(bad) +
                    " has no distribution (student -inf in every class, or no finite teacher value); its loss and gradient are NaN");
  return {};
#endif
}

/// The engine of the top-k loss on memory `Space`: the CPU one here, the CUDA one
/// (`topk_backend<cuda_space>`) in kernels/distill/cuda/topk_teacher.cuh.
template <class Space>
struct topk_backend;

template <>
struct topk_backend<host_space> {
  template <class TS, class TT, class Acc, class G>
  static status run(const char* fn, const cpu& ctx, const host_view<TS, 2>& student,
                    const host_view<const std::int64_t, 2>& idx, const host_view<TT, 2>& values,
                    const host_view<Acc, 1>& loss, bool loss_required, const host_view<G, 2>& grad, bool want_grad,
                    const topk_teacher_options& opt, const soft_target_extras<Acc, host_space>& ex,
                    const host_view<std::byte, 1>& /*workspace*/) {
    // soft_target_workspace_size(cpu, N) == 0: the workspace is not used
    return topk_cpu(fn, ctx, student, idx, values, loss, loss_required, grad, want_grad, opt, ex);
  }
};

}  // namespace soft_target_detail

/// Loss only. `loss` is (1), or (N) with reduction none.
template <class Ctx, class TS, class TT, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status kl_topk_teacher_student_forward(const Ctx& ctx, tensor_view<TS, 2, Space> student,
                                                     in_view<std::int64_t, 2, Space> teacher_indices,
                                                     tensor_view<TT, 2, Space> teacher_logprobs,
                                                     tensor_view<accum_t<TS>, 1, Space> loss,
                                                     const soft_target_extras<accum_t<TS>, Space>& extras,
                                                     tensor_view<std::byte, 1, Space> workspace,
                                                     const topk_teacher_options& opt = {}) {
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  return soft_target_detail::topk_backend<Space>::run("kl_topk_teacher_student_forward", ctx, student, teacher_indices, teacher_logprobs,
                                        loss, true, tensor_view<std::remove_const_t<TS>, 2, Space>{}, false, opt, extras,
                                        workspace);
}

/// Gradient with respect to the student logits (and dL/dT when requested).
template <class Ctx, class TS, class TT, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status kl_topk_teacher_student_backward(const Ctx& ctx, tensor_view<TS, 2, Space> student,
                                                      in_view<std::int64_t, 2, Space> teacher_indices,
                                                      tensor_view<TT, 2, Space> teacher_logprobs,
                                                      tensor_view<std::remove_const_t<TS>, 2, Space> grad_student,
                                                      const soft_target_extras<accum_t<TS>, Space>& extras,
                                                      tensor_view<std::byte, 1, Space> workspace,
                                                      const topk_teacher_options& opt = {}) {
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  return soft_target_detail::topk_backend<Space>::run("kl_topk_teacher_student_backward", ctx, student, teacher_indices,
                                        teacher_logprobs, tensor_view<accum_t<TS>, 1, Space>{}, false, grad_student, true,
                                        opt, extras, workspace);
}

/// Loss and gradient in one pass (`loss` may be absent).
template <class Ctx, class TS, class TT, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status kl_topk_teacher_student_forward_backward(const Ctx& ctx, tensor_view<TS, 2, Space> student,
                                                              in_view<std::int64_t, 2, Space> teacher_indices,
                                                              tensor_view<TT, 2, Space> teacher_logprobs,
                                                              tensor_view<accum_t<TS>, 1, Space> loss,
                                                              tensor_view<std::remove_const_t<TS>, 2, Space> grad_student,
                                                              const soft_target_extras<accum_t<TS>, Space>& extras,
                                                              tensor_view<std::byte, 1, Space> workspace,
                                                              const topk_teacher_options& opt = {}) {
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  return soft_target_detail::topk_backend<Space>::run("kl_topk_teacher_student_forward_backward", ctx, student, teacher_indices,
                                        teacher_logprobs, loss, false, grad_student, true, opt, extras, workspace);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/topk_teacher.cuh"
#endif
