// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Softmax cross-entropy with integer labels, the plain classification loss (the distillation
//! losses are separate primitives in losses/), and a row argmax for accuracies.
//!
//!   z (N, C) logits, y_n labels, eps = label_smoothing, lse_n = log sum_c exp z[n, c]
//!   l_n = lse_n - (1 - eps) z[n, y_n] - (eps / C) sum_c z[n, c]          (eps = 0: -log softmax(z)[y_n])
//!   L   = sum_n w_n l_n / divisor,   w_n = 0 for y_n == ignore_index else 1,
//!         divisor = sum_n w_n (mean), 1 (sum), N (batchmean); reduction none writes l_n
//!   dL/dz[n, c] = grad_scale * w_n / divisor * (softmax(z)[n, c] - (1 - eps) [c == y_n] - eps / C)
//! An all-ignored batch gives L = 0 and a zero gradient (safe_inverse of core/reduction.hpp).
//! -inf logits are fine (zero probability); a row whose label logit is -inf has l_n = +inf.
//! CPU: labels outside [0, C) other than ignore_index are refused (invalid_argument). CUDA: the
//! labels are not inspected by the host; such a row gets l_n = NaN (so L is NaN) and a zero
//! gradient row.
//!
//!   argmax_rows: idx[n] = argmax_c z[n, c] (first maximum), int32, for accuracies.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "distill/core/labels.hpp"
#include "distill/core/math.hpp"
#include "distill/core/reduction.hpp"
#include "distill/nn/common.hpp"

namespace distill::nn {

struct cross_entropy_options {
  distill::reduction reduction = distill::reduction::mean;
  std::int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double grad_scale = 1.0;  ///< upstream gradient / loss weight
  /// CPU: refuse NaN or +inf logits (errc::non_finite) before computing; -inf (a class of
  /// probability 0) stays allowed. CUDA: not inspected (docs/reliability.md).
  bool check_finite = false;
};

namespace nn_detail {
template <class Z, class Space>
status check_cross_entropy(const char* fn, const Z& logits, const label_view<Space>& labels, const cross_entropy_options& o) {
  DISTILL_TRY(check_input(fn, "logits", logits));
  if (labels.empty()) return fail(errc::invalid_argument, fn, "'labels' is required but absent");
  DISTILL_TRY(check_optional_labels(fn, "labels", labels, logits.extent(0)));
  DISTILL_TRY(check_in_range(fn, "label_smoothing", o.label_smoothing, 0.0, 1.0));
  if (!std::isfinite(o.grad_scale)) return fail(errc::invalid_argument, fn, "'grad_scale' must be finite");
  if (o.check_finite) DISTILL_TRY(check_finite(fn, "logits", logits, finite_rule::finite_or_minus_inf));
  return {};
}
}  // namespace nn_detail

/// Loss (and, when `grad` is present, its gradient) in one pass over the logits. `labels` are
/// int32 or int64 (label_view); `loss` is (1), or (N) with reduction::none.
template <class TL, class T = std::remove_const_t<TL>>
[[nodiscard]] status softmax_cross_entropy_forward_backward(const cpu& ctx, host_view<TL, 2> logits, label_view<host_space> labels,
                                                            out_view<accum_t<T>, 1> loss, out_view<T, 2> grad,
                                                            const cross_entropy_options& o = {}) {
  constexpr const char* fn = "nn::softmax_cross_entropy";
  using Acc = accum_t<T>;
  DISTILL_TRY(nn_detail::check_cross_entropy(fn, logits, labels, o));
  const index_t N = logits.extent(0), C = logits.extent(1);
  DISTILL_TRY(check_present(fn, "loss", loss));
  DISTILL_TRY(check_shape(fn, "loss", loss, {o.reduction == reduction::none ? N : index_t(1)}));
  if (!grad.empty()) DISTILL_TRY(check_same_shape(fn, "grad", grad, "logits", logits));
  index_t valid = 0;
  for (index_t n = 0; n < N; ++n) {
    const std::int64_t y = labels(n);
    if (y == o.ignore_index) continue;
    if (y < 0 || y >= C)
      return fail(errc::invalid_argument, fn, "label " + std::to_string(y) + " at row " + std::to_string(n) + " is outside [0, " +
                                                  std::to_string(C) + ") and is not ignore_index");
    ++valid;
  }
  const Acc divisor = reduction_divisor<Acc>(o.reduction, static_cast<Acc>(N), static_cast<Acc>(valid));
  const Acc inv = safe_inverse(divisor);
  const Acc eps = static_cast<Acc>(o.label_smoothing);
  const Acc scale = static_cast<Acc>(o.grad_scale) * inv;
  auto row_loss = [&](index_t n) -> Acc {
    const std::int64_t y = labels(n);
    const bool ignored = y == o.ignore_index;
    lse_state<Acc> st;
    Acc zsum = 0;
    for (index_t c = 0; c < C; ++c) {
      const Acc z = static_cast<Acc>(logits(n, c));
      st.add(z);
      zsum += z;
    }
    const Acc lse = st.value();
    if (!grad.empty())
      for (index_t c = 0; c < C; ++c) {
        if (ignored) {
          grad(n, c) = T(0);
          continue;
        }
        const Acc p = exp_(static_cast<Acc>(logits(n, c)) - lse);
        const Acc target = (c == y ? Acc(1) - eps : Acc(0)) + eps / static_cast<Acc>(C);
        grad(n, c) = static_cast<T>(scale * (p - target));
      }
    if (ignored) return Acc(0);
    Acc l = lse - (Acc(1) - eps) * static_cast<Acc>(logits(n, static_cast<index_t>(y)));
    if (eps > Acc(0)) l -= eps / static_cast<Acc>(C) * zsum;
    return l;
  };
  if (o.reduction == reduction::none) {  // divisor 1: the gradient is that of grad_scale * sum_n l_n
    parallel_for(
        ctx, N,
        [&](index_t n0, index_t n1) {
          for (index_t n = n0; n < n1; ++n) loss(n) = row_loss(n);
        },
        std::max<index_t>(1, 4096 / C));
    return {};
  }
  const Acc total = parallel_sum<Acc>(
      ctx, N,
      [&](index_t n0, index_t n1) {
        Acc s = 0;
        for (index_t n = n0; n < n1; ++n) s += row_loss(n);
        return s;
      },
      std::max<index_t>(1, 4096 / C));
  loss(0) = total * inv;
  return {};
}

/// Loss only.
template <class TL, class T = std::remove_const_t<TL>>
[[nodiscard]] status softmax_cross_entropy_forward(const cpu& ctx, host_view<TL, 2> logits, label_view<host_space> labels,
                                                   out_view<accum_t<T>, 1> loss, const cross_entropy_options& o = {}) {
  return softmax_cross_entropy_forward_backward(ctx, logits, labels, loss, out_view<T, 2>{}, o);
}

/// idx[n] = argmax_c logits[n, c] (first maximum; NaN rows give the first NaN).
template <class TL>
[[nodiscard]] status argmax_rows(const cpu& ctx, host_view<TL, 2> logits, host_view<std::int32_t, 1> idx) {
  using T = std::remove_const_t<TL>;
  constexpr const char* fn = "nn::argmax_rows";
  DISTILL_TRY(nn_detail::check_input(fn, "logits", logits));
  DISTILL_TRY(check_shape(fn, "idx", idx, {logits.extent(0)}));
  const index_t C = logits.extent(1);
  parallel_for(
      ctx, logits.extent(0),
      [&](index_t n0, index_t n1) {
        for (index_t n = n0; n < n1; ++n) {
          index_t best = 0;
          for (index_t c = 1; c < C; ++c) {
            const T v = logits(n, c), b = logits(n, best);
            if (v > b || (v != v && b == b)) best = c;
          }
          idx(n) = static_cast<std::int32_t>(best);
        }
      },
      std::max<index_t>(1, 4096 / C));
  return {};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_cross_entropy.cuh"
#endif
