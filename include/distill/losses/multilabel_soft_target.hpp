// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Multi-label soft targets for sigmoid outputs: Liu, Sheng, Shao, Yan, Xu, Wang, "Multi-Label
//! Image Classification via Knowledge Distillation from Weakly-Supervised Detection" (ACM MM
//! 2018), stage 2. Each of the C classes is its own binary problem; the student learns the
//! teacher's per-class probabilities at a temperature, plus binary cross-entropy with the labels.
//!
//! Element (r, k) of the student logits z^s and teacher logits z^t (N, C), temperature T:
//!   x = z^t / T,  y = z^s / T,  p = sigmoid(x),  q = sigmoid(y),  sp(v) = log(1 + e^v)
//!   soft_rk = BCE(p, q) = -p log q - (1-p) log(1-q) = p sp(-y) + (1-p) sp(y)
//!           (with `subtract_teacher_entropy`: minus the same at y = x, the binary KL(p || q);
//!            same gradient, 0 when the student matches the teacher)
//!   hard_rk = BCE with 0/1 label l and positive weight a_k (torch's BCEWithLogits pos_weight),
//!             at temperature 1:  a_k l sp(-z^s) + (1-l) sp(z^s)
//!   e_rk    = w_r * cw_k * m_rk       (row weight, class weight, mask; each 1 when absent)
//!   l_rk    = e_rk * (soft_weight * c(T) * soft_rk + hard_label_weight * hard_rk),  c(T) = T^2
//!             when `scale_by_t_squared`, else 1
//!   L       = sum_rk l_rk / D,  D = 1 (sum), N (batchmean: Caffe's normaliser, Liu et al.),
//!             sum_rk w_r m_rk (mean: the elements counted, each with its row weight; N C when
//!             nothing is masked or weighted, as torch's "mean"); none: loss[r] = sum_k l_rk.
//! Gradient (g0 = grad_scale; with reduction none, that of g0 * sum_r loss[r]):
//!   dL/dz^s_rk = g0 e_rk / D * (soft_weight c(T) / T (q - p)
//!                               + hard_label_weight (sigmoid(z^s)(1 - l + a_k l) - a_k l))
//! The teacher gets no gradient. Liu et al.'s stage 2 is T = 5, scale_by_t_squared = false,
//! soft_weight = 1, hard_label_weight = 1, reduction batchmean: the gradient per class is
//! ((sigmoid(z^s/5) - p) / 5 + (sigmoid(z^s) - l)) / N.
//!
//! Numerics: sp(v) = max(v, 0) + log1p(e^-|v|) and sigmoid(v) from e^-|v|, so logits of +-1e4
//! give exact 0/1 probabilities and finite losses; +-inf logits are certainties (a term with
//! probability weight 0 contributes 0, never 0 * inf). Masked elements (e_rk = 0) are not
//! evaluated: their loss is 0 and their gradient 0 whatever their logits hold. NaN in an
//! evaluated element gives NaN in its row.
//!
//! Entry points (CUDA overloads with the same arguments in kernels/distill/cuda/multilabel_soft_target.cuh):
//!   multilabel_soft_target_forward(ctx, student, teacher, inputs, loss, workspace, options)
//!   multilabel_soft_target_backward(ctx, student, teacher, inputs, grad_student, workspace, options)
//!   multilabel_soft_target_forward_backward(ctx, student, teacher, inputs, loss, grad_student, workspace, options)
//!   multilabel_soft_target_workspace_size(ctx, rows, classes)   bytes of `workspace` (0 on the CPU)
//! student, teacher: (N, C) logits, float or double on the CPU (float16/bfloat16 too), float,
//! float16 or bfloat16 on CUDA (accumulated in float); loss (1), or (N) with reduction none;
//! grad_student (N, C) of the student's type, may be the student's own memory (in place).
//!
//! Bad input: shapes, strides, temperature <= 0, non-finite weights in the options, labels
//! required by hard_label_weight != 0 but absent -> status; on the CPU also labels other than
//! 0/1 and negative or non-finite row/class/positive weights (the CUDA path cannot inspect
//! device values without a synchronisation: a nonzero label counts as 1 there).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"

namespace distill {

struct multilabel_soft_target_options {
  float temperature = 1.0f;        ///< T > 0, applied to teacher and student logits of the soft term
  bool scale_by_t_squared = true;  ///< multiply the soft term by T^2 (Hinton); Liu et al.: false
  distill::reduction reduction = distill::reduction::batchmean;
  float soft_weight = 1.0f;        ///< weight of the soft (teacher) term
  float hard_label_weight = 0.0f;  ///< weight of the BCE with the 0/1 labels; needs `labels`
  bool subtract_teacher_entropy = false;  ///< report the binary KL(p || q) instead of BCE(p, q)
  float grad_scale = 1.0f;         ///< upstream gradient dTotal/dL
  bool accumulate = false;         ///< gradients: add to `grad_student` instead of overwriting
  /// CPU: refuse NaN/inf logits (errc::non_finite naming the input) before computing; off, they
  /// propagate to their elements' loss and gradient. CUDA: not inspected (docs/reliability.md).
  bool check_finite = false;
};

/// Optional inputs, all absent by default, in the context's memory space. `Acc` is float (or
/// double for double logits on the CPU).
template <class Acc, class Space>
struct multilabel_soft_target_inputs {
  tensor_view<const std::uint8_t, 2, Space> labels;  ///< (N, C) 0/1 targets of the hard term
  tensor_view<const std::uint8_t, 2, Space> mask;    ///< (N, C) 0 = element ignored (no loss, zero gradient)
  tensor_view<const Acc, 1, Space> row_weights;      ///< (N) w_r >= 0
  tensor_view<const Acc, 1, Space> class_weights;    ///< (C) cw_k >= 0, both terms
  tensor_view<const Acc, 1, Space> pos_weights;      ///< (C) a_k >= 0, positives of the hard term
};
template <class Acc = float>
using multilabel_soft_target_host_inputs = multilabel_soft_target_inputs<Acc, host_space>;
template <class Acc = float>
using multilabel_soft_target_cuda_inputs = multilabel_soft_target_inputs<Acc, cuda_space>;

namespace multilabel_detail {
/// The CUDA scratch (core/workspace.hpp): the mean divisor and the row losses, summed in a
/// fixed order.
struct cuda_scratch {
  float* divisor;
  float* row_loss;
  constexpr cuda_scratch(workspace_carver& w, index_t rows) : divisor(w.take<float>(1)), row_loss(w.take<float>(rows)) {}
};
}  // namespace multilabel_detail

/// Bytes of `workspace` the entry points need on `ctx`: 0 on the CPU; on CUDA one float per row
/// (row losses, summed in a fixed order) plus the divisor.
constexpr std::size_t multilabel_soft_target_workspace_size(const cpu&, index_t /*rows*/, index_t /*classes*/) noexcept { return 0; }
constexpr std::size_t multilabel_soft_target_workspace_size(const cuda&, index_t rows, index_t /*classes*/) noexcept {
  return workspace_carver::size_of<multilabel_detail::cuda_scratch>(rows);
}

namespace multilabel_detail {

/// log(1 + e^v), stable for any v (+inf -> +inf, -inf -> 0).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc softplus(Acc v) noexcept {
  using std::exp;
  using std::log1p;
  const Acc a = v < Acc(0) ? -v : v;
  return (v > Acc(0) ? v : Acc(0)) + log1p(exp(-a));
}

/// sigmoid(v) without overflow.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc sigmoid(Acc v) noexcept {
  using std::exp;
  const Acc e = exp(v < Acc(0) ? v : -v);  // e^-|v| in (0, 1]
  return v >= Acc(0) ? Acc(1) / (Acc(1) + e) : e / (Acc(1) + e);
}

/// w * v, or 0 when the weight w is 0 (0 * inf would be NaN).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc weighted(Acc w, Acc v) noexcept {
  return w == Acc(0) ? Acc(0) : w * v;
}

/// Per-call scalars derived from the options.
template <class Acc>
struct scalars {
  Acc inv_t;       // 1 / T
  Acc soft;        // soft_weight c(T)
  Acc soft_grad;   // soft_weight c(T) / T
  Acc hard;        // hard_label_weight
  bool kl;         // subtract_teacher_entropy
};
template <class Acc>
scalars<Acc> scalars_of(const multilabel_soft_target_options& o) noexcept {
  const Acc t = static_cast<Acc>(o.temperature);
  const Acc c = o.scale_by_t_squared ? t * t : Acc(1);
  return {Acc(1) / t, static_cast<Acc>(o.soft_weight) * c, static_cast<Acc>(o.soft_weight) * c / t,
          static_cast<Acc>(o.hard_label_weight), o.subtract_teacher_entropy};
}

/// Loss and d/dz^s of one element, before the element weight e_rk and the divisor.
template <class Acc>
struct element_value {
  Acc loss, grad;
};
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE element_value<Acc> element(Acc zs, Acc zt, Acc label, Acc pos_weight,
                                                                   const scalars<Acc>& s) noexcept {
  const Acc x = zt * s.inv_t, y = zs * s.inv_t;
  const Acc p = sigmoid(x), p_not = sigmoid(-x), q = sigmoid(y);
  Acc soft = weighted(p, softplus(-y)) + weighted(p_not, softplus(y));
  if (s.kl) soft -= weighted(p, softplus(-x)) + weighted(p_not, softplus(x));
  element_value<Acc> v{s.soft * soft, s.soft_grad * (q - p)};
  if (s.hard != Acc(0)) {
    const Acc ap = pos_weight * label;  // a_k l
    v.loss += s.hard * (weighted(ap, softplus(-zs)) + weighted(Acc(1) - label, softplus(zs)));
    v.grad += s.hard * (sigmoid(zs) * (Acc(1) - label + ap) - ap);
  }
  return v;
}

/// Shapes, strides and options, shared by both backends.
template <class VS, class VT, class In, class VL, class VG>
status check_args(const char* fn, const VS& student, const VT& teacher, const In& in, const VL& loss, bool loss_required,
                  const VG& grad, bool grad_required, const multilabel_soft_target_options& opt) {
  DISTILL_TRY(check_present(fn, "student", student));
  DISTILL_TRY(check_present(fn, "teacher", teacher));
  DISTILL_TRY(check_nonempty(fn, "student", student));
  DISTILL_TRY(check_same_shape(fn, "teacher", teacher, "student", student));
  DISTILL_TRY(check_strides(fn, "student", student));
  DISTILL_TRY(check_strides(fn, "teacher", teacher));
  DISTILL_TRY(check_aligned(fn, "student", student));
  DISTILL_TRY(check_aligned(fn, "teacher", teacher));
  const index_t N = student.extent(0), C = student.extent(1);
  auto optional_matrix = [&](const char* name, const auto& v) -> status {
    if (v.empty()) return {};
    DISTILL_TRY(check_shape(fn, name, v, {N, C}));
    return check_strides(fn, name, v);
  };
  auto optional_vector = [&](const char* name, const auto& v, index_t n, const char* what) -> status {
    if (v.empty()) return {};
    DISTILL_TRY(check_extent(fn, name, v, 0, n, what));
    DISTILL_TRY(check_strides(fn, name, v));
    return check_aligned(fn, name, v);
  };
  DISTILL_TRY(optional_matrix("labels", in.labels));
  DISTILL_TRY(optional_matrix("mask", in.mask));
  DISTILL_TRY(optional_vector("row_weights", in.row_weights, N, "one weight per row"));
  DISTILL_TRY(optional_vector("class_weights", in.class_weights, C, "one weight per class"));
  DISTILL_TRY(optional_vector("pos_weights", in.pos_weights, C, "one weight per class"));
  DISTILL_TRY(check_positive(fn, "temperature", opt.temperature));
  auto finite = [&](const char* name, float v) -> status {
    if (!std::isfinite(v)) return fail(errc::invalid_argument, fn, std::string("'") + name + "' must be finite");
    return {};
  };
  DISTILL_TRY(finite("soft_weight", opt.soft_weight));
  DISTILL_TRY(finite("hard_label_weight", opt.hard_label_weight));
  DISTILL_TRY(finite("grad_scale", opt.grad_scale));
  if (opt.reduction != reduction::none && opt.reduction != reduction::sum && opt.reduction != reduction::mean &&
      opt.reduction != reduction::batchmean)
    return fail(errc::invalid_argument, fn, "'reduction' is not a valid reduction");
  if (opt.hard_label_weight != 0.0f && in.labels.empty())
    return fail(errc::invalid_argument, fn, "'hard_label_weight' is non-zero but no 'labels' were given");
  if (loss_required) DISTILL_TRY(check_present(fn, "loss", loss));
  if (!loss.empty()) {
    DISTILL_TRY(check_strides(fn, "loss", loss));
    DISTILL_TRY(check_aligned(fn, "loss", loss));
    if (opt.reduction == reduction::none) DISTILL_TRY(check_extent(fn, "loss", loss, 0, N, "one loss per row with reduction none"));
    else DISTILL_TRY(check_extent(fn, "loss", loss, 0, 1, "a scalar with a reducing reduction"));
  }
  if (grad_required) {
    DISTILL_TRY(check_present(fn, "grad_student", grad));
    DISTILL_TRY(check_same_shape(fn, "grad_student", grad, "student", student));
    DISTILL_TRY(check_strides(fn, "grad_student", grad));
    DISTILL_TRY(check_aligned(fn, "grad_student", grad));
  }
  return {};
}

/// CPU: labels 0/1, weights finite and >= 0.
template <class Acc>
status check_host_values(const char* fn, const multilabel_soft_target_inputs<Acc, host_space>& in, index_t N, index_t C) {
  if (!in.labels.empty())
    for (index_t r = 0; r < N; ++r)
      for (index_t k = 0; k < C; ++k)
        if (in.labels(r, k) > 1)
          return fail(errc::invalid_argument, fn,
                      "'labels' (" + std::to_string(r) + ", " + std::to_string(k) + ") is " + std::to_string(int(in.labels(r, k))) +
                          "; labels are 0 or 1");
  auto weights = [&](const char* name, const host_view<const Acc, 1>& v) -> status {
    for (index_t i = 0; i < v.extent(0) && !v.empty(); ++i) {
      const double w = static_cast<double>(v(i));
      if (!std::isfinite(w)) return fail(errc::non_finite, fn, std::string("'") + name + "' " + std::to_string(i) + " is not finite");
      if (w < 0) return fail(errc::invalid_argument, fn, std::string("'") + name + "' " + std::to_string(i) + " is negative");
    }
    return {};
  };
  DISTILL_TRY(weights("row_weights", in.row_weights));
  DISTILL_TRY(weights("class_weights", in.class_weights));
  DISTILL_TRY(weights("pos_weights", in.pos_weights));
  return {};
}

/// Element weight e_rk (0 for a masked element).
template <class Acc, class Space>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc element_weight(const multilabel_soft_target_inputs<Acc, Space>& in, Acc row_weight,
                                                           index_t r, index_t k) noexcept {
  if (!in.mask.empty() && in.mask(r, k) == 0) return Acc(0);
  return in.class_weights.empty() ? row_weight : row_weight * in.class_weights(k);
}

template <class Acc, class Space>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc row_weight(const multilabel_soft_target_inputs<Acc, Space>& in, index_t r) noexcept {
  return in.row_weights.empty() ? Acc(1) : in.row_weights(r);
}

/// The divisor D when it does not need the (device) mask or row weights; -1 when it does.
inline double host_divisor(reduction red, index_t N, index_t C, bool mask_or_row_weights) noexcept {
  switch (red) {
    case reduction::batchmean: return static_cast<double>(N);
    case reduction::mean: return mask_or_row_weights ? -1.0 : static_cast<double>(N) * static_cast<double>(C);
    default: return 1.0;
  }
}

template <class TS, class TT, class Acc>
status cpu_entry(const char* fn, const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                 const multilabel_soft_target_inputs<Acc, host_space>& in, host_view<Acc, 1> loss, bool loss_required,
                 host_view<std::remove_const_t<TS>, 2> grad, bool grad_required, const multilabel_soft_target_options& opt) {
  using GS = std::remove_const_t<TS>;
  static_assert(is_supported_float_v<TS> && is_supported_float_v<TT>, "multilabel_soft_target: unsupported logit type");
  DISTILL_TRY(check_args(fn, student, teacher, in, loss, loss_required, grad, grad_required, opt));
  const index_t N = student.extent(0), C = student.extent(1);
  DISTILL_TRY(check_host_values(fn, in, N, C));
  if (opt.check_finite) {
    DISTILL_TRY(check_finite(fn, "student", student));
    DISTILL_TRY(check_finite(fn, "teacher", teacher));
  }
  double d = host_divisor(opt.reduction, N, C, !in.mask.empty() || !in.row_weights.empty());
  if (d < 0)
    d = parallel_sum<double>(ctx, N, [&](index_t r0, index_t r1) {
      double s = 0;
      for (index_t r = r0; r < r1; ++r) {
        index_t counted = C;
        if (!in.mask.empty())
          for (index_t k = 0; k < C; ++k) counted -= in.mask(r, k) == 0;
        s += static_cast<double>(row_weight(in, r)) * static_cast<double>(counted);
      }
      return s;
    }, 64);
  const Acc inv_div = safe_inverse(static_cast<Acc>(d));
  const Acc grad_coef = static_cast<Acc>(opt.grad_scale) * inv_div;
  const scalars<Acc> s = scalars_of<Acc>(opt);
  const bool per_row = !loss.empty() && opt.reduction == reduction::none;
  const Acc total = parallel_sum<Acc>(ctx, N, [&](index_t r0, index_t r1) {
    Acc part = Acc(0);
    for (index_t r = r0; r < r1; ++r) {
      const Acc w = row_weight(in, r);
      Acc row = Acc(0);
      for (index_t k = 0; k < C; ++k) {
        const Acc e = element_weight(in, w, r, k);
        Acc g = Acc(0);
        if (e != Acc(0)) {
          const Acc label = in.labels.empty() ? Acc(0) : static_cast<Acc>(in.labels(r, k));
          const Acc pw = in.pos_weights.empty() ? Acc(1) : in.pos_weights(k);
          const element_value<Acc> v = element(load<Acc>(student(r, k)), load<Acc>(teacher(r, k)), label, pw, s);
          row += e * v.loss;
          g = grad_coef * e * v.grad;
        }
        if (grad_required) grad(r, k) = store<GS>(opt.accumulate ? load<Acc>(grad(r, k)) + g : g);
      }
      if (per_row) loss(r) = row;
      part += row;
    }
    return part;
  }, 16);
  if (!loss.empty() && !per_row) loss(0) = total * inv_div;
  return {};
}

}  // namespace multilabel_detail

/// Loss only: `loss` is (1), or (N) with reduction none. `workspace` is unused on the CPU.
template <class TS, class TT>
[[nodiscard]] status multilabel_soft_target_forward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                    const multilabel_soft_target_host_inputs<accum_t<TS>>& inputs,
                                                    host_view<accum_t<TS>, 1> loss, host_view<std::byte, 1> /*workspace*/,
                                                    const multilabel_soft_target_options& opt = {}) {
  return multilabel_detail::cpu_entry("multilabel_soft_target_forward", ctx, student, teacher, inputs, loss, true,
                                      host_view<std::remove_const_t<TS>, 2>{}, false, opt);
}

/// Gradient with respect to the student logits only.
template <class TS, class TT>
[[nodiscard]] status multilabel_soft_target_backward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                     const multilabel_soft_target_host_inputs<accum_t<TS>>& inputs,
                                                     host_view<std::remove_const_t<TS>, 2> grad_student,
                                                     host_view<std::byte, 1> /*workspace*/, const multilabel_soft_target_options& opt = {}) {
  return multilabel_detail::cpu_entry("multilabel_soft_target_backward", ctx, student, teacher, inputs, host_view<accum_t<TS>, 1>{},
                                      false, grad_student, true, opt);
}

/// Loss and gradient in one pass over the inputs (`loss` may be absent).
template <class TS, class TT>
[[nodiscard]] status multilabel_soft_target_forward_backward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                             const multilabel_soft_target_host_inputs<accum_t<TS>>& inputs,
                                                             host_view<accum_t<TS>, 1> loss,
                                                             host_view<std::remove_const_t<TS>, 2> grad_student,
                                                             host_view<std::byte, 1> /*workspace*/,
                                                             const multilabel_soft_target_options& opt = {}) {
  return multilabel_detail::cpu_entry("multilabel_soft_target_forward_backward", ctx, student, teacher, inputs, loss, false,
                                      grad_student, true, opt);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/multilabel_soft_target.cuh"
#endif
