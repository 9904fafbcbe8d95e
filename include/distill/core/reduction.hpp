// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Reductions of per-row (per-token, per-sample) losses to one scalar, shared by every loss.
//!
//!   none       the loss output holds the per-row losses and the caller reduces them
//!   sum        L = sum_r w_r * l_r
//!   mean       L = sum_r w_r * l_r / sum_r w_r     (w_r = 1 for every valid row by default;
//!                                                    rows with ignore_index have w_r = 0)
//!   batchmean  L = sum_r w_r * l_r / R              (R = all rows, valid or not: torch's
//!                                                    kl_div(reduction="batchmean"))
//!
//! A `normalizer` overrides the divisor of mean/batchmean (e.g. the global token count across
//! gradient-accumulation steps or ranks). It may live in device memory so nothing synchronises.
//! The backward of every reduction scales each row's gradient by upstream * w_r / divisor.

#include "distill/core/config.hpp"

namespace distill {

enum class reduction { none, sum, mean, batchmean };

constexpr const char* to_string(reduction r) noexcept {
  switch (r) {
    case reduction::none: return "none";
    case reduction::sum: return "sum";
    case reduction::mean: return "mean";
    case reduction::batchmean: return "batchmean";
  }
  return "unknown";
}

/// Divisor of a reduction: `count_rows` rows in the batch, `weight_sum` the summed row weights.
/// Returns 1 for none/sum. A zero divisor (every row ignored) yields 0 loss and 0 gradient
/// rather than NaN: callers multiply by `safe_inverse(divisor)`.
template <class Acc>
DISTILL_HOST_DEVICE constexpr Acc reduction_divisor(reduction r, Acc count_rows, Acc weight_sum) noexcept {
  switch (r) {
    case reduction::mean: return weight_sum;
    case reduction::batchmean: return count_rows;
    default: return Acc(1);
  }
}

/// 1/x, or 0 when x == 0 (an all-ignored batch contributes nothing).
template <class Acc>
DISTILL_HOST_DEVICE constexpr Acc safe_inverse(Acc x) noexcept {
  return x == Acc(0) ? Acc(0) : Acc(1) / x;
}

}  // namespace distill
