// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! KL from a sparse top-k teacher to the student's full softmax: the teacher is stored offline as
//! the indices and log-probabilities of its k most likely classes per row (vLLM/SGLang logprobs,
//! TRL #3055, Liger #441), so it never sits in training memory. Spec: shared/spec/math.md §2.4,
//! variants A and C.
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
#include "distill/losses/detail/soft_target_dispatch.hpp"

namespace distill {

/// Which sparse-teacher objective (shared/spec/math.md §2.4).
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

template <class Acc>
struct topk_row_out {
  Acc loss = 0, dt = 0, kl = 0, entropy = 0, top1 = 0, hard_ce = 0;
  bool masked = false;
};

/// One contiguous row. `stamp` marks the classes of I with `row_id` (no clearing between rows).
template <class Acc, class S, class T, class G>
topk_row_out<Acc> topk_row_cpu(const dense_call<Acc>& call, topk_variant variant, const S* s, const std::int64_t* idx,
                               index_t idx_stride, const T* vals, index_t val_stride, index_t k, G* g, index_t cols,
                               std::int64_t label, Acc weight, Acc* es_buf, std::int64_t* stamp, std::int64_t row_id,
                               Acc* slot_scratch, std::int64_t* cls) {
  topk_row_out<Acc> out;
  constexpr int W = lanes_v<Acc>;
  const Acc inv_t = call.sc.inv_temperature;
  // gather what pass 3 may overwrite (in place) before anything is written
  Acc* sv = slot_scratch;  // raw student logits at the valid slots
  Acc* tv = sv + k;        // teacher values
  Acc* old = tv + k;       // old gradient (accumulate); cls holds the classes of the valid slots
  index_t m = 0;
  for (index_t j = 0; j < k; ++j) {
    const std::int64_t c = idx[j * idx_stride];
    if (c < 0) continue;
    cls[m] = c;
    sv[m] = load<Acc>(s[c]);
    tv[m] = load<Acc>(vals[j * val_stride]);
    old[m] = (call.accumulate && g != nullptr) ? load<Acc>(g[c]) : Acc(0);
    stamp[c] = row_id;
    ++m;
  }
  const Acc z_label = label >= 0 ? load<Acc>(s[label]) : Acc(0);

  // pass 1: raw student maximum
  Acc mxs[W];
  for (int j = 0; j < W; ++j) mxs[j] = ninf<Acc>();
  index_t c0 = 0;
  for (; c0 + W <= cols; c0 += W)
    for (int j = 0; j < W; ++j) {
      const Acc v = load<Acc>(s[c0 + j]);
      mxs[j] = v > mxs[j] ? v : mxs[j];
    }
  for (; c0 < cols; ++c0) {
    const Acc v = load<Acc>(s[c0]);
    mxs[0] = v > mxs[0] ? v : mxs[0];
  }
  const Acc raw_max = lane_max(mxs);
  const Acc my = raw_max * inv_t;
  const Acc my_e = my == ninf<Acc>() ? Acc(0) : my, mz_e = raw_max == ninf<Acc>() ? Acc(0) : raw_max;
  const bool need_z = call.hard && call.sc.temperature != Acc(1);

  // pass 2: e^{y - max y} into scratch, its sum (and the raw sum for the hard term)
  Acc ss[W] = {}, sz[W] = {};
  c0 = 0;
  for (; c0 + W <= cols; c0 += W)
    for (int j = 0; j < W; ++j) {
      const Acc zs = load<Acc>(s[c0 + j]);
      const Acc e = fast_exp(zs * inv_t - my_e);
      es_buf[c0 + j] = e;
      ss[j] += e;
      if (need_z) sz[j] += fast_exp(zs - mz_e);
    }
  for (; c0 < cols; ++c0) {
    const Acc zs = load<Acc>(s[c0]);
    const Acc e = fast_exp(zs * inv_t - my_e);
    es_buf[c0] = e;
    ss[0] += e;
    if (need_z) sz[0] += fast_exp(zs - mz_e);
  }
  const Acc sum_all = lane_sum(ss);
  const Acc ls = my + st_log(sum_all);
  // the student mass outside I, summed over those classes themselves
  Acc sum_rest = Acc(0);
  if (variant == topk_variant::rest_bucket) {
    Acc rs[W] = {};
    c0 = 0;
    for (; c0 + W <= cols; c0 += W)
      for (int j = 0; j < W; ++j) rs[j] += stamp[c0 + j] == row_id ? Acc(0) : es_buf[c0 + j];
    for (; c0 < cols; ++c0) rs[0] += stamp[c0] == row_id ? Acc(0) : es_buf[c0];
    sum_rest = lane_sum(rs);
  }

  // teacher side
  Acc lv = ninf<Acc>();
  {
    lse_state<Acc> l;
    for (index_t j = 0; j < m; ++j) l.add(tv[j]);
    lv = l.value();
  }
  Acc r, log_r, log_s, rest_coef;
  topk_rest(variant, lv, sum_all, sum_rest, r, log_r, log_s, rest_coef);
  Acc f = Acc(0), ent = Acc(0);
  index_t best = -1;
  for (index_t j = 0; j < m; ++j) {
    const Acc lp = topk_teacher_logprob(variant, tv[j], lv), p = st_exp(lp);
    f += keep_or_zero(p != Acc(0), p * (lp - (sv[j] * inv_t - ls)));
    ent -= keep_or_zero(p != Acc(0), p * lp);
    if (best < 0 || tv[j] > tv[best] || (tv[j] == tv[best] && cls[j] < cls[best])) best = j;  // ties: lowest class
  }
  f += keep_or_zero(r != Acc(0), r * (log_r - log_s));
  ent -= keep_or_zero(r != Acc(0), r * log_r);
  out.masked = raw_max == ninf<Acc>() || (variant == topk_variant::renormalized && lv == ninf<Acc>());

  Acc lz = Acc(0), hard_ce = Acc(0);
  if (call.hard && label >= 0) {
    const Acc sum_z = need_z ? lane_sum(sz) : sum_all;
    lz = need_z ? raw_max + st_log(sum_z) : ls;
    hard_ce = lz - z_label;
  }
  out.loss = weight * (call.soft_weight * call.sc.c * f + (call.hard_weight != Acc(0) ? call.hard_weight * hard_ce : Acc(0)));
  out.hard_ce = hard_ce;
  out.kl = f;
  out.entropy = ent;
  if (best >= 0) {  // first argmax of the student
    Acc bs = ninf<Acc>();
    index_t is = -1;
    for (index_t c = 0; c < cols; ++c) {
      const Acc v = load<Acc>(s[c]);
      if (v > bs) bs = v, is = c;
    }
    out.top1 = is == cls[best] ? Acc(1) : Acc(0);
  }

  if (g != nullptr) {  // pass 3: the rest formula everywhere, then the classes of I
    const Acc inv_ss = Acc(1) / sum_all;
    const Acc coef_soft = call.grad_scale * weight * call.soft_weight * call.sc.c * inv_t * call.inv_divisor;
    const Acc coef_hard = call.grad_scale * weight * call.hard_weight * call.inv_divisor;
    const bool use_hard = call.hard_weight != Acc(0);
    const Acc sm_scale = call.sc.temperature == Acc(1) ? inv_ss : Acc(0);  // softmax(z) = q when T == 1
    Acc dt[W] = {};
    auto value = [&](index_t c, Acc zs, Acc e, Acc old_g, Acc& gs) {
      gs = e * (inv_ss - rest_coef);
      Acc v = coef_soft * gs;
      if (use_hard) {
        const Acc sm = need_z ? fast_exp(zs - lz) : e * sm_scale;
        v += coef_hard * (sm - (c == label ? Acc(1) : Acc(0)));
      }
      return v + old_g;
    };
    c0 = 0;
    for (; c0 + W <= cols; c0 += W)
      for (int j = 0; j < W; ++j) {
        const index_t c = c0 + j;
        const Acc zs = load<Acc>(s[c]);
        const Acc o = call.accumulate ? load<Acc>(g[c]) : Acc(0);
        Acc gs;
        const Acc v = value(c, zs, es_buf[c], o, gs);
        dt[j] += keep_or_zero(gs != Acc(0), gs * zs * inv_t);
        g[c] = store<G>(v);
      }
    for (; c0 < cols; ++c0) {
      const Acc zs = load<Acc>(s[c0]);
      const Acc o = call.accumulate ? load<Acc>(g[c0]) : Acc(0);
      Acc gs;
      const Acc v = value(c0, zs, es_buf[c0], o, gs);
      dt[0] += keep_or_zero(gs != Acc(0), gs * zs * inv_t);
      g[c0] = store<G>(v);
    }
    Acc dt_sum = lane_sum(dt);
    for (index_t j = 0; j < m; ++j) {  // classes of I: q_k - p_k
      const index_t c = cls[j];
      const Acc e = es_buf[c];
      const Acc p = topk_teacher_prob(variant, tv[j], lv);
      Acc gs_rest;
      (void)value(c, sv[j], e, old[j], gs_rest);
      const Acc gs = e * inv_ss - p;
      Acc v = coef_soft * gs + old[j];
      if (use_hard) {
        const Acc sm = need_z ? st_exp(sv[j] - lz) : e * sm_scale;
        v += coef_hard * (sm - (c == label ? Acc(1) : Acc(0)));
      }
      g[c] = store<G>(v);
      const Acc y = sv[j] * inv_t;
      dt_sum += keep_or_zero(gs != Acc(0), gs * y) - keep_or_zero(gs_rest != Acc(0), gs_rest * y);
    }
    out.dt = weight * call.soft_weight * (call.sc.dc * f - call.sc.c * inv_t * dt_sum);
  }
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
  DISTILL_TRY(validate_host_values(fn, student.extent(1), opt, ex));
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

  dense_call<Acc> call;
  call.sc.t_squared = opt.scale_by_t_squared;
  call.sc.set_temperature(ex.temperature.empty() ? static_cast<Acc>(opt.temperature) : ex.temperature(0));
  call.soft_weight = opt.soft_weight;
  call.hard_weight = opt.hard_label_weight;
  call.grad_scale = opt.grad_scale;
  call.accumulate = opt.accumulate;
  call.hard = !ex.labels.empty() && (opt.hard_label_weight != 0.0f || !ex.row_hard_loss.empty());
  auto weight_of = [&](index_t r) -> Acc { return ex.row_weights.empty() ? Acc(1) : ex.row_weights(r); };
  auto ignored = [&](index_t r) { return !ex.labels.empty() && ex.labels(r) == opt.ignore_index; };
  Acc divisor = Acc(1);
  if (!ex.normalizer.empty()) divisor = ex.normalizer(0);
  else if (opt.reduction == reduction::batchmean) divisor = static_cast<Acc>(n);
  else if (opt.reduction == reduction::mean) {
    divisor = Acc(0);
    for (index_t r = 0; r < n; ++r)
      if (!ignored(r)) divisor += weight_of(r);
  }
  call.inv_divisor = safe_inverse(divisor);
  const bool want_dt = want_grad && !ex.grad_temperature.empty();

  std::vector<Acc> row_loss(static_cast<std::size_t>(n)), row_dt(static_cast<std::size_t>(n));
  std::vector<unsigned char> masked(static_cast<std::size_t>(n), 0);
  const bool contiguous = student.inner_contiguous() && (!want_grad || grad.inner_contiguous());
  const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
  parallel_for(ctx, n, [&](index_t r0, index_t r1) {
    std::vector<Acc> es(static_cast<std::size_t>(cols) * (contiguous ? 1 : 3));
    std::vector<std::int64_t> stamp(static_cast<std::size_t>(cols), -1);
    std::vector<Acc> slots(static_cast<std::size_t>(k) * 3);
    std::vector<std::int64_t> cls(static_cast<std::size_t>(k));
    for (index_t r = r0; r < r1; ++r) {
      topk_row_out<Acc> o;
      if (ignored(r)) {
        if (want_grad && !opt.accumulate)
          for (index_t c = 0; c < cols; ++c) grad(r, c) = store<G>(Acc(0));
      } else {
        const std::int64_t label = ex.labels.empty() ? -1 : ex.labels(r);
        if (contiguous) {
          o = topk_row_cpu<Acc>(call, opt.variant, student.row(r), idx.row(r), idx.stride(1), values.row(r),
                                values.stride(1), k, want_grad ? grad.row(r) : static_cast<G*>(nullptr), cols, label,
                                weight_of(r), es.data(), stamp.data(), r, slots.data(), cls.data());
        } else {
          Acc* ss = es.data() + cols;
          Acc* gs = ss + cols;
          for (index_t c = 0; c < cols; ++c) ss[c] = load<Acc>(student(r, c));
          if (want_grad && opt.accumulate)
            for (index_t c = 0; c < cols; ++c) gs[c] = load<Acc>(grad(r, c));
          o = topk_row_cpu<Acc>(call, opt.variant, static_cast<const Acc*>(ss), idx.row(r), idx.stride(1), values.row(r),
                                values.stride(1), k, want_grad ? gs : static_cast<Acc*>(nullptr), cols, label,
                                weight_of(r), es.data(), stamp.data(), r, slots.data(), cls.data());
          if (want_grad)
            for (index_t c = 0; c < cols; ++c) grad(r, c) = store<G>(gs[c]);
        }
        if (o.masked) {
          masked[static_cast<std::size_t>(r)] = 1;
          o.loss = o.dt = o.kl = o.entropy = o.top1 = o.hard_ce = nan;
          if (want_grad)
            for (index_t c = 0; c < cols; ++c) grad(r, c) = store<G>(nan);
        }
      }
      row_loss[static_cast<std::size_t>(r)] = o.loss;
      row_dt[static_cast<std::size_t>(r)] = o.dt;
      if (!ex.row_kl.empty()) ex.row_kl(r) = o.kl;
      if (!ex.row_teacher_entropy.empty()) ex.row_teacher_entropy(r) = o.entropy;
      if (!ex.row_top1_agreement.empty()) ex.row_top1_agreement(r) = o.top1;
      if (!ex.row_hard_loss.empty()) ex.row_hard_loss(r) = o.hard_ce;
    }
  });

  if (!loss.empty()) {
    if (opt.reduction == reduction::none) {
      for (index_t r = 0; r < n; ++r) loss(r) = row_loss[static_cast<std::size_t>(r)];
    } else {
      Acc total = Acc(0);
      for (index_t r = 0; r < n; ++r) total += row_loss[static_cast<std::size_t>(r)];
      loss(0) = total * call.inv_divisor;
    }
  }
  if (want_dt) {
    Acc total = Acc(0);
    for (index_t r = 0; r < n; ++r) total += row_dt[static_cast<std::size_t>(r)];
    ex.grad_temperature(0) = call.grad_scale * total * call.inv_divisor;
  }
  for (index_t r = 0; r < n; ++r)
    if (masked[static_cast<std::size_t>(r)])
      return fail(errc::non_finite, fn,
                  "row " + std::to_string(r) +
                      " has no distribution (student -inf in every class, or no finite teacher value); its loss and gradient are NaN");
  return {};
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
