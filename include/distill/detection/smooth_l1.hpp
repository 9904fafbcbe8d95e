// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Smooth L1 (Huber) loss of box regression, as torch.nn.functional.smooth_l1_loss and the box
//! terms of Fast/Faster R-CNN (Girshick 2015, eq. 3; Ren et al. 2015): the regression deltas
//! `prediction` (N, D) (D = 4 for boxes) against `target` (N, D), one optional weight per row
//! (e.g. 1 for a positive anchor, 0 for a negative one, whose deltas carry no target).
//!
//!   x = prediction - target,   h(x) = 0.5 x^2 / beta   if |x| < beta
//!                                     |x| - 0.5 beta   otherwise          (beta = 0: |x|, plain L1)
//!   l_r = sum_k h(x_rk)                                  (row loss)
//!   L   = sum_r w_r l_r / divisor,  divisor = 1 (sum), R (batchmean: Faster R-CNN's RPN divides by
//!         the sampled anchors), D sum_r w_r (mean: torch's mean over the weighted elements; 0
//!         loss and gradient when every weight is 0); none: loss[r] = w_r l_r.
//!   dL/dprediction_rk = g0 w_r / divisor * h'(x_rk),   h'(x) = x / beta if |x| < beta, else sign(x)
//!                       (sign(0) = 0; g0 = grad_scale). The target gets no gradient.
//! Faster R-CNN's RPN uses beta = 1/9 (Detectron) and torchvision's RPN beta = 1/9 as well;
//! the default here is beta = 1/9.
//!
//! Entry points (CUDA overloads with the same arguments in kernels/distill/cuda/smooth_l1.cuh):
//!   smooth_l1_forward(ctx, prediction, target, weights, loss, workspace, options)
//!   smooth_l1_backward(ctx, prediction, target, weights, grad_prediction, workspace, options)
//!   smooth_l1_forward_backward(ctx, prediction, target, weights, loss, grad_prediction, workspace, options)
//!   smooth_l1_workspace_size(ctx, rows, columns)   0 on the CPU (pass {}); on CUDA one float per
//!                                                   row and the divisor
//! prediction, target: (N, D) float or double on the CPU, float on CUDA (the same type); weights:
//! (N) of that type or absent (every w_r = 1); loss: (1), or (N) with reduction none;
//! grad_prediction: (N, D).
//!
//! Bad input: shape mismatches, negative strides, beta < 0 or not finite, non-finite
//! grad_scale (errc::invalid_argument); on the CPU also negative or non-finite weights (the CUDA
//! path cannot read device values without a synchronisation: there they are used as given).
//! With `check_finite`, the CPU refuses NaN/inf in prediction or target (errc::non_finite); off
//! (and always on CUDA), it propagates to its row's loss and gradient.

#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"

namespace distill {

struct smooth_l1_options {
  double beta = 1.0 / 9.0;  ///< quadratic below |x| < beta, linear above; 0: L1
  distill::reduction reduction = distill::reduction::batchmean;
  float grad_scale = 1.0f;  ///< upstream gradient dTotal/dL
  bool accumulate = false;  ///< add into grad_prediction instead of overwriting
  bool check_finite = false;
};

namespace smooth_l1_detail {
/// The CUDA scratch (core/workspace.hpp): 1 / divisor and the row losses, summed in a fixed order.
struct cuda_scratch {
  float* inv_divisor;
  float* row_loss;
  constexpr cuda_scratch(workspace_carver& w, index_t rows) : inv_divisor(w.take<float>(1)), row_loss(w.take<float>(rows)) {}
};
}  // namespace smooth_l1_detail

/// Bytes of scratch the entry points need: none on the CPU; on CUDA one float per row and one.
constexpr std::size_t smooth_l1_workspace_size(const cpu&, index_t /*rows*/, index_t /*columns*/) noexcept { return 0; }
constexpr std::size_t smooth_l1_workspace_size(const cuda&, index_t rows, index_t /*columns*/) noexcept {
  return workspace_carver::size_of<smooth_l1_detail::cuda_scratch>(rows);
}

namespace smooth_l1_detail {

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc huber(Acc x, Acc beta) noexcept {
  const Acc a = x < Acc(0) ? -x : x;
  return a < beta ? Acc(0.5) * x * x / beta : a - Acc(0.5) * beta;
}
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc huber_derivative(Acc x, Acc beta) noexcept {
  const Acc a = x < Acc(0) ? -x : x;
  if (a < beta) return x / beta;
  if (x != x) return x;  // NaN propagates
  return x > Acc(0) ? Acc(1) : (x < Acc(0) ? Acc(-1) : Acc(0));
}

/// Shapes, strides and options, shared by both backends.
template <class VP, class VT, class VW, class VL, class VG>
status check_args(const char* fn, const VP& pred, const VT& target, const VW& weights, const VL& loss, bool want_loss, const VG& grad, bool want_grad,
                  const smooth_l1_options& opt) {
  const index_t N = pred.extent(0);
  DISTILL_TRY(check_same_shape(fn, "prediction", pred, "target", target));
  if (pred.size() > 0) {
    DISTILL_TRY(check_present(fn, "prediction", pred));
    DISTILL_TRY(check_present(fn, "target", target));
  }
  DISTILL_TRY(check_strides(fn, "prediction", pred));
  DISTILL_TRY(check_strides(fn, "target", target));
  if (!weights.empty()) {
    DISTILL_TRY(check_extent(fn, "weights", weights, 0, N, "one weight per row"));
    DISTILL_TRY(check_strides(fn, "weights", weights));
  }
  if (want_loss) {
    const index_t n = opt.reduction == reduction::none ? N : 1;
    DISTILL_TRY(check_extent(fn, "loss", loss, 0, n, opt.reduction == reduction::none ? "one loss per row (reduction none)" : "1 (a reduced loss)"));
    if (n > 0) DISTILL_TRY(check_present(fn, "loss", loss));
    DISTILL_TRY(check_strides(fn, "loss", loss));
  }
  if (want_grad) {
    DISTILL_TRY(check_same_shape(fn, "grad_prediction", grad, "prediction", pred));
    if (grad.size() > 0) DISTILL_TRY(check_present(fn, "grad_prediction", grad));
    DISTILL_TRY(check_strides(fn, "grad_prediction", grad));
  }
  if (!(opt.beta >= 0) || !std::isfinite(opt.beta))
    return fail(errc::invalid_argument, fn, "'beta' must be finite and >= 0, got " + check_detail::num(opt.beta));
  if (!std::isfinite(opt.grad_scale)) return fail(errc::invalid_argument, fn, "'grad_scale' must be finite");
  if (opt.reduction != reduction::none && opt.reduction != reduction::sum && opt.reduction != reduction::mean &&
      opt.reduction != reduction::batchmean)
    return fail(errc::invalid_argument, fn, "unknown 'reduction'");
  return {};
}

template <class TP, class TT, class TW, class TL, class TG>
status run(const char* fn, host_view<TP, 2> pred, host_view<TT, 2> target, host_view<TW, 1> weights, host_view<TL, 1> loss,
           host_view<TG, 2> grad, host_view<std::byte, 1> workspace, const smooth_l1_options& opt, bool want_loss, bool want_grad) {
  using T = std::remove_const_t<TP>;
  const index_t N = pred.extent(0), D = pred.extent(1);
  DISTILL_TRY(check_args(fn, pred, target, weights, loss, want_loss, grad, want_grad, opt));
  DISTILL_TRY(check_workspace(fn, workspace, 0, "smooth_l1_workspace_size"));
  for (index_t r = 0; r < weights.extent(0); ++r) {
    const double w = static_cast<double>(weights(r));
    if (!(w >= 0) || !std::isfinite(w)) return fail(errc::invalid_argument, fn, "'weights' " + std::to_string(r) + " must be finite and >= 0");
  }
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "prediction", pred, "target", target));

  const T beta = static_cast<T>(opt.beta);
  auto w_of = [&](index_t r) { return weights.empty() ? T(1) : static_cast<T>(weights(r)); };
  T weight_sum = 0;
  for (index_t r = 0; r < N; ++r) weight_sum += w_of(r);
  const T divisor = opt.reduction == reduction::mean ? weight_sum * static_cast<T>(D) : reduction_divisor(opt.reduction, static_cast<T>(N), weight_sum);
  const T inv = divisor != T(0) ? T(1) / divisor : T(0);
  T total = 0;
  for (index_t r = 0; r < N; ++r) {
    const T w = w_of(r);
    T row = 0;
    for (index_t k = 0; k < D; ++k) {
      const T x = static_cast<T>(pred(r, k)) - static_cast<T>(target(r, k));
      if (want_loss && w != T(0)) row += huber(x, beta);
      if (want_grad) {
        const T g = w != T(0) ? static_cast<T>(opt.grad_scale) * w * inv * huber_derivative(x, beta) : T(0);
        grad(r, k) = opt.accumulate ? static_cast<T>(grad(r, k) + g) : g;
      }
    }
    if (want_loss) {
      if (opt.reduction == reduction::none) loss(r) = w * row;
      else total += w * row;
    }
  }
  if (want_loss && opt.reduction != reduction::none) loss(0) = total * inv;
  return {};
}

}  // namespace smooth_l1_detail

/// Loss only.
template <class TP, class TT, class TL>
[[nodiscard]] status smooth_l1_forward(const cpu& /*ctx*/, host_view<TP, 2> prediction, host_view<TT, 2> target,
                                       host_view<const std::remove_const_t<TP>, 1> weights, host_view<TL, 1> loss,
                                       host_view<std::byte, 1> workspace, const smooth_l1_options& opt = {}) {
  using T = std::remove_const_t<TP>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "smooth_l1 takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TT>, T> && std::is_same_v<TL, T>, "smooth_l1: element types differ (loss non-const)");
  return smooth_l1_detail::run("smooth_l1_forward", prediction, target, weights, loss, host_view<T, 2>{}, workspace, opt, true, false);
}

/// Gradient only.
template <class TP, class TT, class TG>
[[nodiscard]] status smooth_l1_backward(const cpu& /*ctx*/, host_view<TP, 2> prediction, host_view<TT, 2> target,
                                        host_view<const std::remove_const_t<TP>, 1> weights, host_view<TG, 2> grad_prediction,
                                        host_view<std::byte, 1> workspace, const smooth_l1_options& opt = {}) {
  using T = std::remove_const_t<TP>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "smooth_l1 takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TT>, T> && std::is_same_v<TG, T>, "smooth_l1: element types differ (gradient non-const)");
  return smooth_l1_detail::run("smooth_l1_backward", prediction, target, weights, host_view<T, 1>{}, grad_prediction, workspace, opt, false, true);
}

/// Loss and gradient in one pass.
template <class TP, class TT, class TL, class TG>
[[nodiscard]] status smooth_l1_forward_backward(const cpu& /*ctx*/, host_view<TP, 2> prediction, host_view<TT, 2> target,
                                                host_view<const std::remove_const_t<TP>, 1> weights, host_view<TL, 1> loss,
                                                host_view<TG, 2> grad_prediction, host_view<std::byte, 1> workspace,
                                                const smooth_l1_options& opt = {}) {
  using T = std::remove_const_t<TP>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "smooth_l1 takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TT>, T> && std::is_same_v<TL, T> && std::is_same_v<TG, T>,
                "smooth_l1: element types differ (outputs non-const)");
  return smooth_l1_detail::run("smooth_l1_forward_backward", prediction, target, weights, loss, grad_prediction, workspace, opt, true, true);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/smooth_l1.cuh"
#endif
