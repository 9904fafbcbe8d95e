// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Average precision (host): of one binary ranking, and per class with the mean (mAP) for
//! multi-label classification. Evaluation code, run on the host after the forward passes.
//!
//! Rank the items by decreasing score. At every distinct score s (tied items enter together, so
//! the result does not depend on their order) take recall R = TP(s)/P and precision
//! Pr = TP(s)/(TP(s) + FP(s)), giving points (R_1, Pr_1), ..., (R_m, Pr_m) with R_0 = 0. Then
//!   none          AP = sum_j (R_j - R_{j-1}) Pr_j       the step-wise area under the PR curve,
//!                                                      no interpolation: sklearn's
//!                                                      average_precision_score
//!   all_points    AP = sum_j (R_j - R_{j-1}) max_{i >= j} Pr_i   (Pascal VOC 2010 and later:
//!                                                      precision made monotone first)
//!   eleven_point  AP = 1/11 sum_{t = 0, 0.1, ..., 1} max_{j: R_j >= t} Pr_j   (VOC 2007; 0 when
//!                                                      no point reaches t; t exact tenths)
//! A class with no positive item has no AP: NaN, left out of the mean (sklearn would return 0
//! with a warning). mean_ap = mean over the classes that have positives (NaN when none has).
//!
//!   average_precision(ctx, scores [N], labels [N], ap, options)
//!   multilabel_average_precision(ctx, scores [N, C], labels [N, C], ap_per_class [C], mean_ap, options)
//! scores: float or double; labels: 0/1 as uint8. Bad input: NaN scores (errc::non_finite),
//! labels other than 0/1, shape mismatches.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

enum class ap_interpolation { none, all_points, eleven_point };

constexpr const char* to_string(ap_interpolation i) noexcept {
  switch (i) {
    case ap_interpolation::none: return "none";
    case ap_interpolation::all_points: return "all_points";
    case ap_interpolation::eleven_point: return "eleven_point";
  }
  return "unknown";
}

struct average_precision_options {
  ap_interpolation interpolation = ap_interpolation::none;  ///< none = sklearn's average_precision_score
};

namespace metrics_detail {

/// AP of items already ranked by decreasing score: score(i) and whether item i is a true
/// positive, i = 0..n-1; `positives` = P (may exceed the true positives among the items: a
/// detector's missed objects). NaN when P = 0.
template <class Score, class IsTp>
double ap_from_ranking(index_t n, Score score, IsTp is_tp, index_t positives, ap_interpolation interp) {
  if (positives <= 0) return std::numeric_limits<double>::quiet_NaN();
  std::vector<double> recall, precision;
  index_t tp = 0;
  for (index_t i = 0; i < n; ++i) {
    tp += is_tp(i) ? 1 : 0;
    if (i + 1 < n && score(i + 1) == score(i)) continue;  // ties enter together
    recall.push_back(static_cast<double>(tp) / static_cast<double>(positives));
    precision.push_back(static_cast<double>(tp) / static_cast<double>(i + 1));
  }
  const std::size_t m = recall.size();
  if (interp == ap_interpolation::eleven_point) {
    double sum = 0;
    for (int t = 0; t <= 10; ++t) {
      double best = 0;
      for (std::size_t j = 0; j < m; ++j)
        if (recall[j] >= t / 10.0 - 1e-12) best = std::max(best, precision[j]);
      sum += best;
    }
    return sum / 11.0;
  }
  if (interp == ap_interpolation::all_points)
    for (std::size_t j = m; j-- > 1;) precision[j - 1] = std::max(precision[j - 1], precision[j]);
  double ap = 0, previous = 0;
  for (std::size_t j = 0; j < m; ++j) {
    ap += (recall[j] - previous) * precision[j];
    previous = recall[j];
  }
  return ap;
}

/// Indices 0..n-1 ordered by decreasing score, ties in index order.
template <class Score>
std::vector<index_t> rank_by_score(index_t n, Score score) {
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t(0));
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return score(a) > score(b); });
  return order;
}

inline status check_interpolation(const char* fn, ap_interpolation i) {
  if (i != ap_interpolation::none && i != ap_interpolation::all_points && i != ap_interpolation::eleven_point)
    return fail(errc::invalid_argument, fn, "'interpolation' is not a valid ap_interpolation");
  return {};
}

/// Mean of the non-NaN entries (NaN when there are none).
template <class V>
double mean_defined(const V& values) {
  double sum = 0;
  index_t count = 0;
  for (index_t i = 0; i < values.extent(0); ++i)
    if (!std::isnan(values(i))) sum += values(i), ++count;
  return count > 0 ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace metrics_detail

/// AP of one ranking: scores [N] (float or double), labels [N] 0/1.
template <class TS, class TL>
[[nodiscard]] status average_precision(const cpu& /*ctx*/, host_view<TS, 1> scores, host_view<TL, 1> labels, double& ap,
                                       const average_precision_options& opt = {}) {
  static_assert(std::is_floating_point_v<std::remove_const_t<TS>>, "average_precision: scores are float or double");
  static_assert(std::is_same_v<std::remove_const_t<TL>, std::uint8_t>, "average_precision: labels are uint8 0/1");
  constexpr const char* fn = "average_precision";
  ap = std::numeric_limits<double>::quiet_NaN();
  const index_t N = scores.extent(0);
  DISTILL_TRY(check_extent(fn, "labels", labels, 0, N, "one label per score"));
  if (N > 0) {
    DISTILL_TRY(check_present(fn, "scores", scores));
    DISTILL_TRY(check_present(fn, "labels", labels));
  }
  DISTILL_TRY(check_strides(fn, "scores", scores));
  DISTILL_TRY(check_strides(fn, "labels", labels));
  DISTILL_TRY(metrics_detail::check_interpolation(fn, opt.interpolation));
  index_t positives = 0;
  for (index_t i = 0; i < N; ++i) {
    if (std::isnan(static_cast<double>(scores(i)))) return fail(errc::non_finite, fn, "'scores' " + std::to_string(i) + " is NaN");
    if (labels(i) > 1) return fail(errc::invalid_argument, fn, "'labels' " + std::to_string(i) + " is not 0 or 1");
    positives += labels(i);
  }
  const auto order = metrics_detail::rank_by_score(N, [&](index_t i) { return scores(i); });
  ap = metrics_detail::ap_from_ranking(
      N, [&](index_t i) { return scores(order[static_cast<std::size_t>(i)]); },
      [&](index_t i) { return labels(order[static_cast<std::size_t>(i)]) != 0; }, positives, opt.interpolation);
  return {};
}

/// Per-class AP of multi-label scores [N, C] against labels [N, C] (0/1), and their mean over
/// the classes that have positives.
template <class TS, class TL>
[[nodiscard]] status multilabel_average_precision(const cpu& ctx, host_view<TS, 2> scores, host_view<TL, 2> labels,
                                                  host_view<double, 1> ap_per_class, double& mean_ap,
                                                  const average_precision_options& opt = {}) {
  static_assert(std::is_floating_point_v<std::remove_const_t<TS>>, "multilabel_average_precision: scores are float or double");
  static_assert(std::is_same_v<std::remove_const_t<TL>, std::uint8_t>, "multilabel_average_precision: labels are uint8 0/1");
  constexpr const char* fn = "multilabel_average_precision";
  mean_ap = std::numeric_limits<double>::quiet_NaN();
  const index_t N = scores.extent(0), C = scores.extent(1);
  DISTILL_TRY(check_present(fn, "scores", scores));
  DISTILL_TRY(check_nonempty(fn, "scores", scores));
  DISTILL_TRY(check_same_shape(fn, "labels", labels, "scores", scores));
  DISTILL_TRY(check_present(fn, "labels", labels));
  DISTILL_TRY(check_present(fn, "ap_per_class", ap_per_class));
  DISTILL_TRY(check_extent(fn, "ap_per_class", ap_per_class, 0, C, "one AP per class"));
  DISTILL_TRY(check_strides(fn, "scores", scores));
  DISTILL_TRY(check_strides(fn, "labels", labels));
  DISTILL_TRY(check_strides(fn, "ap_per_class", ap_per_class));
  DISTILL_TRY(metrics_detail::check_interpolation(fn, opt.interpolation));
  for (index_t r = 0; r < N; ++r)
    for (index_t k = 0; k < C; ++k) {
      if (std::isnan(static_cast<double>(scores(r, k))))
        return fail(errc::non_finite, fn, "'scores' (" + std::to_string(r) + ", " + std::to_string(k) + ") is NaN");
      if (labels(r, k) > 1)
        return fail(errc::invalid_argument, fn, "'labels' (" + std::to_string(r) + ", " + std::to_string(k) + ") is not 0 or 1");
    }
  parallel_for(ctx, C, [&](index_t k0, index_t k1) {
    for (index_t k = k0; k < k1; ++k) {
      index_t positives = 0;
      for (index_t r = 0; r < N; ++r) positives += labels(r, k);
      const auto order = metrics_detail::rank_by_score(N, [&](index_t r) { return scores(r, k); });
      ap_per_class(k) = metrics_detail::ap_from_ranking(
          N, [&](index_t i) { return scores(order[static_cast<std::size_t>(i)], k); },
          [&](index_t i) { return labels(order[static_cast<std::size_t>(i)], k) != 0; }, positives, opt.interpolation);
    }
  });
  mean_ap = metrics_detail::mean_defined(ap_per_class);
  return {};
}

}  // namespace distill
