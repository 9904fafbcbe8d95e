// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Top-k accuracy (host) for k = 1..K in one pass: the fraction of rows whose label is among
//! the k highest scores.
//!
//!   rank_r = #{j : s_rj > s_r,y} + #{j < y : s_rj = s_r,y}     (ties: lower class index first,
//!                                                               as a stable sort would order them)
//!   accuracy[k - 1] = #{r counted : rank_r < k} / #{r counted}
//! Rows whose label equals `ignore_index` are not counted; with no counted row every accuracy is
//! NaN.
//!
//!   topk_accuracy(ctx, scores [N, C], labels [N] (int32 or int64), accuracy [K], options)
//! Bad input: NaN scores (errc::non_finite), labels outside [0, C) that are not ignore_index,
//! K > C or K = 0.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

struct topk_accuracy_options {
  std::int64_t ignore_index = -100;  ///< rows with this label are not counted
};

/// accuracy[k - 1] = top-k accuracy for k = 1..accuracy.extent(0).
template <class TS, class TL>
[[nodiscard]] status topk_accuracy(const cpu& /*ctx*/, host_view<TS, 2> scores, host_view<TL, 1> labels, host_view<double, 1> accuracy,
                                   const topk_accuracy_options& opt = {}) {
  static_assert(std::is_floating_point_v<std::remove_const_t<TS>>, "topk_accuracy: scores are float or double");
  using L = std::remove_const_t<TL>;
  static_assert(std::is_same_v<L, std::int32_t> || std::is_same_v<L, std::int64_t>, "topk_accuracy: labels are int32 or int64");
  constexpr const char* fn = "topk_accuracy";
  DISTILL_TRY(check_present(fn, "scores", scores));
  DISTILL_TRY(check_nonempty(fn, "scores", scores));
  DISTILL_TRY(check_strides(fn, "scores", scores));
  const index_t N = scores.extent(0), C = scores.extent(1), K = accuracy.extent(0);
  DISTILL_TRY(check_present(fn, "labels", labels));
  DISTILL_TRY(check_extent(fn, "labels", labels, 0, N, "one label per row"));
  DISTILL_TRY(check_strides(fn, "labels", labels));
  DISTILL_TRY(check_present(fn, "accuracy", accuracy));
  DISTILL_TRY(check_strides(fn, "accuracy", accuracy));
  if (K < 1 || K > C)
    return fail(errc::shape_mismatch, fn, "'accuracy' has " + std::to_string(K) + " entries; k runs from 1 to at most the " +
                                              std::to_string(C) + " classes");
  for (index_t r = 0; r < N; ++r) {
    const std::int64_t y = labels(r);
    if (y != opt.ignore_index && (y < 0 || y >= C))
      return fail(errc::invalid_argument, fn, "label " + std::to_string(y) + " of row " + std::to_string(r) + " is outside [0, " +
                                                  std::to_string(C) + ") and is not ignore_index");
    for (index_t k = 0; k < C; ++k)
      if (std::isnan(static_cast<double>(scores(r, k))))
        return fail(errc::non_finite, fn, "'scores' (" + std::to_string(r) + ", " + std::to_string(k) + ") is NaN");
  }
  // hits[k] = counted rows whose label has rank k (k < K); hits[K] = counted rows. Serial: an
  // evaluation pass of N C comparisons.
  std::vector<index_t> hits(static_cast<std::size_t>(K) + 1, 0);
  for (index_t r = 0; r < N; ++r) {
    const std::int64_t y = labels(r);
    if (y == opt.ignore_index) continue;
    const auto sy = scores(r, y);
    index_t rank = 0;
    for (index_t k = 0; k < C; ++k) rank += scores(r, k) > sy || (k < y && scores(r, k) == sy);
    if (rank < K) ++hits[static_cast<std::size_t>(rank)];
    ++hits[static_cast<std::size_t>(K)];
  }
  const index_t counted = hits[static_cast<std::size_t>(K)];
  index_t cumulative = 0;
  for (index_t k = 0; k < K; ++k) {
    cumulative += hits[static_cast<std::size_t>(k)];
    accuracy(k) = counted > 0 ? static_cast<double>(cumulative) / static_cast<double>(counted) : std::numeric_limits<double>::quiet_NaN();
  }
  return {};
}

}  // namespace distill
