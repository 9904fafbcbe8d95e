// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! What every soft-target loss shares: the options, the optional inputs and outputs, the
//! per-row statistics with their online (streaming) update, the row bookkeeping (labels,
//! weights, reductions, hard-label CE, temperature gradient, diagnostics) and validation.
//! The primitives themselves (`kl_teacher_student.hpp`, `kl_student_teacher.hpp`, `jsd.hpp`,
//! `soft_cross_entropy.hpp`, `dkd.hpp`, `topk_teacher.hpp`) add only their own math.
//!
//! Notation (docs/losses/soft_target.md has the full story). Row r of the student logits z^s
//! and the teacher logits z^t, temperature T:
//!   x = z^t / T,  y = z^s / T,  p = softmax(x) (teacher),  q = softmax(y) (student),
//!   f_r  = the primitive's divergence of row r (KL(p||q), KL(q||p), JSD, ...), unscaled,
//!   c(T) = T^2 when `scale_by_t_squared` (Hinton), else 1,
//!   CE_r = logsumexp(z^s_r) - z^s_{r, label_r}   (hard-label cross-entropy at temperature 1),
//!   l_r  = w_r * (soft_weight * c(T) * f_r + hard_label_weight * CE_r)   (0 for ignored rows),
//!   L    = sum_r l_r / D, with D = 1 (sum), sum_r w_r over non-ignored rows (mean),
//!          the number of rows (batchmean) or the caller's `normalizer`; none: L_r = l_r.
//! Gradient written to `grad_student` (upstream gradient g0 = grad_scale; with reduction none
//! the gradient is that of g0 * sum_r l_r):
//!   dL/dz^s_rk = g0 * w_r / D * (soft_weight * c(T) / T * df_r/dy_rk
//!                                + hard_label_weight * (softmax(z^s_r)_k - [k == label_r]))
//! Temperature gradient (teacher and student both divided by T; the hard term does not depend
//! on T):
//!   dL/dT = g0 / D * sum_r w_r * soft_weight * (c'(T) f_r
//!                      - c(T) / T * sum_k (df_r/dx_rk * x_rk + df_r/dy_rk * y_rk))
//! Diagnostics from the same pass, per row and unweighted: KL(p||q) at T, the teacher entropy
//! H(p) at T, top-1 agreement (1 when the first argmax of teacher and student coincide) and
//! CE_r; 0 for ignored rows.
//!
//! Bad numbers: `-inf` logits are zero probability and are fine anywhere; a row whose teacher
//! (or student) is -inf in *every* class has no distribution: its loss, gradient, temperature
//! contribution and diagnostics are NaN, and the CPU path also returns `errc::non_finite`
//! naming the row (the CUDA path cannot report without a host synchronisation). NaN or +inf
//! anywhere in a row makes that row's results NaN (no status), unless `check_finite` is set: the
//! CPU path then refuses them (errc::non_finite naming the input) before computing.
//!
//! Scalars in memory (`extras.temperature`, `extras.normalizer`) are data, not options: the
//! host may not be able to read them. One rule on both backends: a temperature that is not
//! finite and > 0, or a normaliser that is not finite and >= 0, is an error. The CPU path reads
//! it and returns invalid_argument naming it (nothing is written); the CUDA path cannot report
//! without a host synchronisation, so the kernels turn it into NaN: the loss, every gradient,
//! dL/dT and the diagnostics of the call are NaN, never a plausible wrong number. Labels in
//! device memory follow the same rule (a label outside [0, C) makes its row NaN on CUDA).

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/fast_math.hpp"
#include "distill/core/labels.hpp"
#include "distill/core/math.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/simd.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"

namespace distill {

/// Options every soft-target loss accepts (primitive-specific options derive from it).
struct soft_target_options {
  float temperature = 1.0f;          ///< T > 0, applied to teacher and student logits
  bool scale_by_t_squared = true;    ///< multiply the soft term by T^2 (Hinton et al.); TRL: false
  distill::reduction reduction = distill::reduction::batchmean;
  float soft_weight = 1.0f;          ///< weight of the distillation term (alpha in alpha*KD + (1-alpha)*CE)
  float hard_label_weight = 0.0f;    ///< weight of CE(student at T = 1, label); needs `labels`
  std::int64_t ignore_index = -100;  ///< rows whose label equals this contribute nothing
  float grad_scale = 1.0f;           ///< upstream gradient dTotal/dL (the backward's seed)
  bool accumulate = false;           ///< gradients: add to `grad_student` instead of overwriting
  /// CPU: refuse NaN or +inf logits and non-finite row weights (errc::non_finite naming the
  /// argument) before computing; -inf logits stay allowed. Off: they propagate as the file
  /// comment says. CUDA: not inspected (docs/reliability.md, "NaN and infinity").
  bool check_finite = false;
};

/// Optional inputs and outputs of every soft-target loss, all absent by default. `Acc` is the
/// accumulation type (float, or double for double inputs); every view lives in the memory
/// space of the context (host views for `cpu`, device views for `cuda`), so nothing on the
/// CUDA path ever synchronises with the host.
template <class Acc, class Space>
struct soft_target_extras {
  /// (N) class labels, int32 or int64: the hard-label CE target, DKD's target class, and the
  /// mask: rows with `ignore_index` contribute no loss and get a zero gradient.
  label_view<Space> labels;
  /// (N) per-row weights w_r (default 1). With reduction none they scale each row's output.
  tensor_view<const Acc, 1, Space> row_weights;
  /// (1) divisor D of mean/batchmean (e.g. the global token count across accumulation steps).
  /// Must be finite and >= 0 (see "Scalars in memory" in the file comment).
  tensor_view<const Acc, 1, Space> normalizer;
  /// (1) a learnable temperature; overrides `options.temperature` when present. Must be finite
  /// and > 0 (see "Scalars in memory" in the file comment).
  tensor_view<const Acc, 1, Space> temperature;
  /// (1) out: dL/dT (the reduced loss times grad_scale, differentiated in T).
  tensor_view<Acc, 1, Space> grad_temperature;
  /// (N) out: KL(p||q) at temperature T per row (no T^2, no weights).
  tensor_view<Acc, 1, Space> row_kl;
  /// (N) out: the teacher's entropy H(p) at temperature T per row.
  tensor_view<Acc, 1, Space> row_teacher_entropy;
  /// (N) out: 1 when argmax teacher == argmax student (first index on ties), else 0.
  tensor_view<Acc, 1, Space> row_top1_agreement;
  /// (N) out: the hard-label CE per row (at T = 1, unweighted); needs `labels`.
  tensor_view<Acc, 1, Space> row_hard_loss;
};

template <class Acc = float>
using soft_target_host_extras = soft_target_extras<Acc, host_space>;
template <class Acc = float>
using soft_target_cuda_extras = soft_target_extras<Acc, cuda_space>;

/// The CUDA scratch of every soft-target loss (core/workspace.hpp): the per-row losses and
/// temperature-gradient terms, summed in a fixed order, and the counted mean divisor.
struct soft_target_scratch {
  float* row_loss;
  float* row_dt;
  float* divisor;
  constexpr soft_target_scratch(workspace_carver& w, index_t rows)
      : row_loss(w.take<float>(rows)), row_dt(w.take<float>(rows)), divisor(w.take<float>(1)) {}
};

/// Scratch bytes of every soft-target loss over `rows` rows (the `workspace` argument of each
/// entry point). CPU: none. CUDA: soft_target_scratch; nothing grows with the class count.
constexpr std::size_t soft_target_workspace_size(const cpu&, index_t /*rows*/) noexcept { return 0; }
constexpr std::size_t soft_target_workspace_size(const cuda&, index_t rows) noexcept {
  return workspace_carver::size_of<soft_target_scratch>(rows);
}

namespace soft_target_detail {

// ---------------------------------------------------------------------------------------------
// Math shared by the CPU loops and the CUDA kernels. On the host, the core/fast_math.hpp
// versions, for floats and for SIMD batches (per class, or per row across batch lanes); on the
// device the hardware exp, logf and the accurate log1pf (JSD needs relative accuracy near 0).
// ---------------------------------------------------------------------------------------------
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc st_exp(Acc x) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Acc) == 4) return __expf(x);
  else return ::exp(x);
#else
  return fast_exp(x);
#endif
}
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc st_log(Acc x) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Acc) == 4) return ::logf(x);
  else return ::log(x);
#else
  return fast_log(x);
#endif
}
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc st_log1p(Acc x) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Acc) == 4) return ::log1pf(x);
  else return ::log1p(x);
#else
  return fast_log1p(x);
#endif
}

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc ninf() noexcept {
  return -std::numeric_limits<Acc>::infinity();
}

// Per-lane selects for the per-class math, which the host runs on SIMD batches and the device
// on floats (core/simd.hpp).
using simd::keep_nonzero;
using simd::keep_or_zero;
using simd::select;

/// log(e^a + e^b): -inf when both are -inf; accurate relative to the larger argument.
template <class V>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE V log_add_exp(V a, V b) noexcept {
  const auto a_larger = a > b;
  const V hi = select(a_larger, a, b);
  const V lo = select(a_larger, b, a);
  const V r = hi + st_log1p(st_exp(lo - hi));
  return select(hi == V(ninf<simd::scalar_t<V>>()), hi, r);
}

// ---------------------------------------------------------------------------------------------
// Per-row statistics. Every dense primitive needs some of these sums over the classes of a row,
// each relative to a running maximum so that nothing overflows:
//   teacher (x = z^t/T):  mt = max x,  st = sum e^{x-mt},  a = sum e^{x-mt}(x - y),
//                         tx = sum e^{x-mt}(x - mt)
//   student (y = z^s/T):  ms = max y,  ss = sum e^{y-ms},  b = sum e^{y-ms}(y - x)
//   raw student (z^s, for the hard-label CE when T != 1):  mz = max z^s,  sz = sum e^{z^s-mz}
// plus the first index of each maximum (top-1 diagnostics). `add` is the online update (the
// streaming CUDA kernel; a rescale only happens when the maximum grows), `merge` combines two
// partial states (threads, warps, or a single excluded element back into its row).
// ---------------------------------------------------------------------------------------------
template <class Acc>
struct dense_state {
  Acc mt, st, a, tx;
  Acc ms, ss, b;
  Acc mz, sz;
  std::int32_t it, is;  // first argmax of x and of y (-1: none yet)

  DISTILL_HOST_DEVICE static dense_state empty() noexcept {
    dense_state s;
    s.mt = s.ms = s.mz = ninf<Acc>();
    s.st = s.a = s.tx = s.ss = s.b = s.sz = Acc(0);
    s.it = s.is = -1;
    return s;
  }

  DISTILL_HOST_DEVICE void rescale_teacher(Acc m_new) noexcept {  // m_new > mt
    if (mt != ninf<Acc>()) {
      const Acc r = st_exp(mt - m_new);
      tx = r * (tx + (mt - m_new) * st);  // the (x - mt) factors move with the maximum
      st *= r;
      a *= r;
    }
    mt = m_new;
  }
  DISTILL_HOST_DEVICE void rescale_student(Acc m_new) noexcept {
    if (ms != ninf<Acc>()) {
      const Acc r = st_exp(ms - m_new);
      ss *= r;
      b *= r;
    }
    ms = m_new;
  }
  DISTILL_HOST_DEVICE void rescale_raw(Acc m_new) noexcept {
    if (mz != ninf<Acc>()) sz *= st_exp(mz - m_new);
    mz = m_new;
  }

  /// Online update with element k: x = z^t/T, y = z^s/T, z = z^s (used when `with_z`).
  DISTILL_HOST_DEVICE void add(Acc x, Acc y, Acc z, std::int32_t k, bool with_z) noexcept {
    if (x > mt) {
      rescale_teacher(x);
      it = k;
    }
    if (y > ms) {
      rescale_student(y);
      is = k;
    }
    const Acc et = x == ninf<Acc>() ? Acc(0) : st_exp(x - mt);
    const Acc es = y == ninf<Acc>() ? Acc(0) : st_exp(y - ms);
    st += et;
    ss += es;
    a += keep_or_zero(et != Acc(0), et * (x - y));
    tx += keep_or_zero(et != Acc(0), et * (x - mt));
    b += keep_or_zero(es != Acc(0), es * (y - x));
    if (with_z) {
      if (z > mz) rescale_raw(z);
      sz += z == ninf<Acc>() ? Acc(0) : st_exp(z - mz);
    }
  }

  /// Combine with another partial state (associative; ties of the maxima keep the lower index).
  DISTILL_HOST_DEVICE void merge(const dense_state& o) noexcept {
    if (o.mt > mt || (o.mt == mt && o.it >= 0 && (it < 0 || o.it < it))) it = o.it;
    if (o.ms > ms || (o.ms == ms && o.is >= 0 && (is < 0 || o.is < is))) is = o.is;
    {
      const Acc m = mt > o.mt ? mt : o.mt;
      if (m != ninf<Acc>()) {
        const Acc r1 = mt == ninf<Acc>() ? Acc(0) : st_exp(mt - m);
        const Acc r2 = o.mt == ninf<Acc>() ? Acc(0) : st_exp(o.mt - m);
        const Acc tx1 = mt == ninf<Acc>() ? Acc(0) : r1 * (tx + (mt - m) * st);
        const Acc tx2 = o.mt == ninf<Acc>() ? Acc(0) : r2 * (o.tx + (o.mt - m) * o.st);
        st = r1 * st + r2 * o.st;
        a = r1 * a + r2 * o.a;
        tx = tx1 + tx2;
        mt = m;
      }
    }
    {
      const Acc m = ms > o.ms ? ms : o.ms;
      if (m != ninf<Acc>()) {
        const Acc r1 = ms == ninf<Acc>() ? Acc(0) : st_exp(ms - m);
        const Acc r2 = o.ms == ninf<Acc>() ? Acc(0) : st_exp(o.ms - m);
        ss = r1 * ss + r2 * o.ss;
        b = r1 * b + r2 * o.b;
        ms = m;
      }
    }
    {
      const Acc m = mz > o.mz ? mz : o.mz;
      if (m != ninf<Acc>()) {
        const Acc r1 = mz == ninf<Acc>() ? Acc(0) : st_exp(mz - m);
        const Acc r2 = o.mz == ninf<Acc>() ? Acc(0) : st_exp(o.mz - m);
        sz = r1 * sz + r2 * o.sz;
        mz = m;
      }
    }
  }

  DISTILL_HOST_DEVICE Acc teacher_lse() const noexcept { return mt + st_log(st); }  // -inf if empty
  DISTILL_HOST_DEVICE Acc student_lse() const noexcept { return ms + st_log(ss); }
  DISTILL_HOST_DEVICE Acc raw_student_lse() const noexcept { return mz + st_log(sz); }
};

/// Scaled (x, y) and raw (z) logits of the label column, read before any gradient is written.
template <class Acc>
struct target_values {
  Acc x = Acc(0), y = Acc(0), z = Acc(0);
};

/// Diagnostics of a full row from its statistics: KL(p||q), H(p), top-1 agreement.
template <class Acc>
struct row_diagnostics {
  Acc kl, entropy, top1;
};
template <class Acc>
DISTILL_HOST_DEVICE inline row_diagnostics<Acc> diagnostics_of(const dense_state<Acc>& s) noexcept {
  const Acc log_st = st_log(s.st);
  const Acc lt = s.mt + log_st, ls = s.student_lse();
  row_diagnostics<Acc> d;
  d.kl = s.a / s.st - lt + ls;
  d.entropy = log_st - s.tx / s.st;
  d.top1 = (s.it >= 0 && s.it == s.is) ? Acc(1) : Acc(0);
  return d;
}

/// Per-call scalars derived from the options (host-computed or, with a device temperature,
/// recomputed inside the kernel by `set_temperature`).
template <class Acc>
struct call_scalars {
  Acc temperature, inv_temperature;
  Acc c;        // c(T): T^2 or 1
  Acc dc;       // c'(T): 2T or 0
  bool t_squared;
  DISTILL_HOST_DEVICE void set_temperature(Acc t) noexcept {
    temperature = t;
    inv_temperature = Acc(1) / t;
    c = t_squared ? t * t : Acc(1);
    dc = t_squared ? Acc(2) * t : Acc(0);
  }
};

/// A temperature or normaliser read from memory the host does not inspect (a CUDA device
/// scalar): a value outside its domain (T not finite and > 0; D not finite and >= 0) becomes
/// NaN, so every result of the call is NaN rather than silently wrong. The CPU path refuses such
/// values with invalid_argument before computing anything.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc checked_temperature(Acc t) noexcept {
  return (t > Acc(0) && t <= std::numeric_limits<Acc>::max()) ? t : std::numeric_limits<Acc>::quiet_NaN();
}
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc checked_normalizer(Acc d) noexcept {
  return (d >= Acc(0) && d <= std::numeric_limits<Acc>::max()) ? d : std::numeric_limits<Acc>::quiet_NaN();
}

/// Row bookkeeping: what a row contributes to the loss, the gradient scales and the
/// temperature-gradient term, given the primitive's f_r and the pieces computed in its pass.
template <class Acc>
struct row_coefficients {
  Acc soft;  // multiplies df/dy_k in dL/dz^s_k: g0 * w * soft_weight * c / T / D
  Acc hard;  // multiplies (softmax(z^s)_k - [k == label]): g0 * w * hard_weight / D
};

// ---------------------------------------------------------------------------------------------
// Validation shared by the CPU and CUDA entry points.
// ---------------------------------------------------------------------------------------------

/// [first, last] byte addresses a view can touch (empty view: none).
template <class V>
inline bool byte_range(const V& v, std::uintptr_t& lo, std::uintptr_t& hi) noexcept {
  if (v.empty() || v.size() == 0) return false;
  index_t last = 0;
  for (int d = 0; d < V::rank; ++d) last += (v.extent(d) - 1) * v.stride(d);
  lo = reinterpret_cast<std::uintptr_t>(v.data());
  hi = lo + static_cast<std::uintptr_t>(last + 1) * sizeof(typename V::value_type) - 1;
  return true;
}
template <class A, class B>
inline bool overlaps(const A& a, const B& b) noexcept {
  std::uintptr_t alo, ahi, blo, bhi;
  if (!byte_range(a, alo, ahi) || !byte_range(b, blo, bhi)) return false;
  return alo <= bhi && blo <= ahi;
}
/// The same elements with the same layout: the one aliasing the losses allow (gradient written
/// in place over the student logits).
template <class A, class B>
inline bool same_layout(const A& a, const B& b) noexcept {
  if (static_cast<const void*>(a.data()) != static_cast<const void*>(b.data())) return false;
  if (sizeof(typename A::value_type) != sizeof(typename B::value_type)) return false;
  for (int d = 0; d < A::rank; ++d)
    if (a.extent(d) != b.extent(d) || (a.extent(d) > 1 && a.stride(d) != b.stride(d))) return false;
  return true;
}

template <class V>
inline status check_optional_extent(const char* fn, const char* name, const V& v, index_t n, const char* what) {
  if (v.empty()) return {};
  DISTILL_TRY(check_strides(fn, name, v));
  DISTILL_TRY(check_aligned(fn, name, v));
  return check_extent(fn, name, v, 0, n, what);
}

inline status check_finite_option(const char* fn, const char* name, double v) {
  if (!std::isfinite(v))
    return fail(errc::invalid_argument, fn, std::string("'") + name + "' must be finite, got " + check_detail::num(v));
  return {};
}

/// Everything the dense losses (and, with `teacher_cols_must_match = false`, the top-k loss)
/// check before touching memory. `is_cuda` adds the unit-inner-stride rule. (The workspace is
/// checked by the dispatcher, losses/detail/soft_target_dispatch.hpp.)
template <class VS, class VT, class VL, class VG, class Acc, class Space>
status validate_soft_target(const char* fn, const VS& student, const VT& teacher, bool teacher_cols_must_match,
                            const VL& loss, bool loss_required, const VG& grad, bool grad_required,
                            const soft_target_options& opt, const soft_target_extras<Acc, Space>& ex,
                            bool labels_required, bool is_cuda) {
  DISTILL_TRY(check_present(fn, "student", student));
  DISTILL_TRY(check_present(fn, "teacher", teacher));
  DISTILL_TRY(check_nonempty(fn, "student", student));
  DISTILL_TRY(check_nonempty(fn, "teacher", teacher));
  const index_t n = student.extent(0), c = student.extent(1);
  if (teacher.extent(0) != n)
    return fail(errc::shape_mismatch, fn,
                "'teacher' has " + std::to_string(teacher.extent(0)) + " rows but 'student' has " + std::to_string(n));
  if (teacher_cols_must_match && teacher.extent(1) != c)
    return fail(errc::shape_mismatch, fn,
                "class-count mismatch: 'teacher' has " + std::to_string(teacher.extent(1)) +
                    " classes but 'student' has " + std::to_string(c));
  if (c > index_t(std::numeric_limits<std::int32_t>::max()))
    return fail(errc::shape_mismatch, fn, "'student' has " + std::to_string(c) + " classes; at most 2^31 - 1 are supported");
  DISTILL_TRY(check_strides(fn, "student", student));
  DISTILL_TRY(check_strides(fn, "teacher", teacher));
  DISTILL_TRY(check_aligned(fn, "student", student));
  DISTILL_TRY(check_aligned(fn, "teacher", teacher));
  if (is_cuda) {
    DISTILL_TRY(check_inner_contiguous(fn, "student", student));
    DISTILL_TRY(check_inner_contiguous(fn, "teacher", teacher));
  }

  // options
  if (ex.temperature.empty()) DISTILL_TRY(check_positive(fn, "temperature", opt.temperature));
  DISTILL_TRY(check_finite_option(fn, "soft_weight", opt.soft_weight));
  DISTILL_TRY(check_finite_option(fn, "hard_label_weight", opt.hard_label_weight));
  DISTILL_TRY(check_finite_option(fn, "grad_scale", opt.grad_scale));
  if (opt.reduction != reduction::none && opt.reduction != reduction::sum && opt.reduction != reduction::mean &&
      opt.reduction != reduction::batchmean)
    return fail(errc::invalid_argument, fn, "'reduction' is not a valid reduction");

  // optional inputs
  if (ex.labels.empty() && opt.hard_label_weight != 0.0f)
    return fail(errc::invalid_argument, fn, "'hard_label_weight' is non-zero but no 'labels' were given");
  if (ex.labels.empty() && labels_required)
    return fail(errc::invalid_argument, fn, "'labels' are required (they give each row's target class)");
  if (ex.labels.empty() && !ex.row_hard_loss.empty())
    return fail(errc::invalid_argument, fn, "'row_hard_loss' was requested but no 'labels' were given");
  DISTILL_TRY(check_optional_labels(fn, "labels", ex.labels, n));
  DISTILL_TRY(check_optional_extent(fn, "row_weights", ex.row_weights, n, "one weight per row"));
  DISTILL_TRY(check_optional_extent(fn, "normalizer", ex.normalizer, 1, "a scalar"));
  DISTILL_TRY(check_optional_extent(fn, "temperature", ex.temperature, 1, "a scalar"));
  DISTILL_TRY(check_optional_extent(fn, "grad_temperature", ex.grad_temperature, 1, "a scalar"));
  DISTILL_TRY(check_optional_extent(fn, "row_kl", ex.row_kl, n, "one value per row"));
  DISTILL_TRY(check_optional_extent(fn, "row_teacher_entropy", ex.row_teacher_entropy, n, "one value per row"));
  DISTILL_TRY(check_optional_extent(fn, "row_top1_agreement", ex.row_top1_agreement, n, "one value per row"));
  DISTILL_TRY(check_optional_extent(fn, "row_hard_loss", ex.row_hard_loss, n, "one value per row"));
  if (!ex.normalizer.empty() && opt.reduction != reduction::mean && opt.reduction != reduction::batchmean)
    return fail(errc::invalid_argument, fn,
                std::string("'normalizer' divides mean/batchmean reductions, but the reduction is ") + to_string(opt.reduction));
  if (!ex.grad_temperature.empty() && !grad_required)
    return fail(errc::invalid_argument, fn, "'grad_temperature' is computed by the backward passes, not the forward");

  // outputs
  if (loss_required) DISTILL_TRY(check_present(fn, "loss", loss));
  if (!loss.empty()) {
    DISTILL_TRY(check_strides(fn, "loss", loss));
    DISTILL_TRY(check_aligned(fn, "loss", loss));
    if (opt.reduction == reduction::none)
      DISTILL_TRY(check_extent(fn, "loss", loss, 0, n, "one loss per row with reduction none"));
    else
      DISTILL_TRY(check_extent(fn, "loss", loss, 0, 1, "a scalar with a reducing reduction"));
  }
  if (grad_required) {
    DISTILL_TRY(check_present(fn, "grad_student", grad));
    DISTILL_TRY(check_same_shape(fn, "grad_student", grad, "student", student));
    DISTILL_TRY(check_strides(fn, "grad_student", grad));
    DISTILL_TRY(check_aligned(fn, "grad_student", grad));
    if (is_cuda) DISTILL_TRY(check_inner_contiguous(fn, "grad_student", grad));
    if (overlaps(grad, teacher))
      return fail(errc::invalid_argument, fn, "'grad_student' overlaps 'teacher'");
    const bool in_place = same_layout(grad, student);
    if (!in_place && overlaps(grad, student))
      return fail(errc::invalid_argument, fn,
                  "'grad_student' partially overlaps 'student' (in place is allowed only with the same pointer and strides)");
    if (in_place && opt.accumulate)
      return fail(errc::invalid_argument, fn, "'accumulate' cannot be combined with an in-place gradient over 'student'");
  }
  return {};
}

/// With `check_finite`, the logits (-inf allowed: it masks a class; `teacher_name`: the teacher
/// argument's name) and the row weights must be finite.
template <class VS, class VT, class Acc>
status check_finite_inputs(const char* fn, const VS& student, const VT& teacher, const soft_target_options& opt,
                           const soft_target_extras<Acc, host_space>& ex, const char* teacher_name = "teacher") {
  if (!opt.check_finite) return {};
  DISTILL_TRY(check_finite(fn, "student", student, finite_rule::finite_or_minus_inf));
  DISTILL_TRY(check_finite(fn, teacher_name, teacher, finite_rule::finite_or_minus_inf));
  return check_finite(fn, "row_weights", ex.row_weights);
}

/// CPU-only checks of values that live in host memory: temperature, normalizer and the range of
/// the labels over `classes` (all classes of the loss, also where a caller holds a slice of them).
template <class Acc>
status validate_host_values(const char* fn, index_t classes, const soft_target_options& opt,
                            const soft_target_extras<Acc, host_space>& ex) {
  if (!ex.temperature.empty()) {
    const Acc t = ex.temperature(0);
    if (!(t > Acc(0)) || !std::isfinite(static_cast<double>(t)))
      return fail(errc::invalid_argument, fn,
                  "'temperature' must be finite and > 0, got " + check_detail::num(static_cast<double>(t)));
  }
  if (!ex.normalizer.empty()) {
    const Acc d = ex.normalizer(0);
    if (!(d >= Acc(0)) || !std::isfinite(static_cast<double>(d)))
      return fail(errc::invalid_argument, fn,
                  "'normalizer' must be finite and >= 0, got " + check_detail::num(static_cast<double>(d)));
  }
  if (!ex.labels.empty()) DISTILL_TRY(check_label_range(fn, "labels", ex.labels, classes, opt.ignore_index));
  return {};
}

/// Both of the above for a loss over all of `student`'s classes.
template <class VS, class VT, class Acc>
status validate_host_values(const char* fn, const VS& student, const VT& teacher, const soft_target_options& opt,
                            const soft_target_extras<Acc, host_space>& ex, const char* teacher_name = "teacher") {
  DISTILL_TRY(check_finite_inputs(fn, student, teacher, opt, ex, teacher_name));
  return validate_host_values(fn, student.extent(1), opt, ex);
}

}  // namespace soft_target_detail
}  // namespace distill
