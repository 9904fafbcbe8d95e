// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Greedy non-maximum suppression (host), as torchvision.ops.nms / batched_nms:
//!   1. drop boxes whose score is below `score_threshold`;
//!   2. visit the rest by decreasing score (ties: lower index first);
//!   3. keep a box unless a kept box of the same class (any kept box when no labels are given)
//!      overlaps it with IoU(kept, box) > `iou_threshold`;
//!   4. stop after `max_output` kept boxes (the top-k detections per image; < 0: no limit).
//! With labels the suppression is per class (class-aware, torchvision's batched_nms); without,
//! class-agnostic. IoU as in boxes.hpp. `keep` receives the kept indices in the order of step 2,
//! `kept` their count. Cost O(K^2) IoUs for K boxes above the threshold: a detector's
//! post-processing on the host, per image.
//!
//!   non_max_suppression(ctx, boxes [N, 4], scores [N], labels [N] or {}, keep [>= N], kept, options)
//!
//! Bad input: NaN scores (errc::non_finite), non-finite or inverted boxes (as boxes.hpp), a
//! `keep` shorter than the most boxes that can be kept, a non-finite threshold.

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
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/detection/boxes.hpp"

namespace distill {

struct nms_options {
  float iou_threshold = 0.5f;                                         ///< suppress when IoU > this
  float score_threshold = -std::numeric_limits<float>::infinity();  ///< drop boxes scoring below this
  index_t max_output = -1;                                            ///< keep at most this many (< 0: all)
};

/// Greedy NMS of one image's boxes; class-aware when `labels` (int32 or int64) are given.
template <class TB, class TS, class TL = const std::int64_t>
[[nodiscard]] status non_max_suppression(const cpu& /*ctx*/, host_view<TB, 2> boxes, host_view<TS, 1> scores,
                                         host_view<TL, 1> labels, host_view<std::int64_t, 1> keep, index_t& kept,
                                         const nms_options& opt = {}) {
  using T = std::remove_const_t<TB>;
  using L = std::remove_const_t<TL>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "non_max_suppression takes float or double boxes");
  static_assert(std::is_same_v<std::remove_const_t<TS>, T>, "non_max_suppression: boxes and scores differ in type");
  static_assert(std::is_same_v<L, std::int32_t> || std::is_same_v<L, std::int64_t>, "labels are int32 or int64");
  constexpr const char* fn = "non_max_suppression";
  kept = 0;
  const index_t N = boxes.extent(0);
  DISTILL_TRY(detection_detail::check_boxes(fn, "boxes", boxes));
  DISTILL_TRY(check_extent(fn, "scores", scores, 0, N, "one score per box"));
  if (N > 0) DISTILL_TRY(check_present(fn, "scores", scores));
  DISTILL_TRY(check_strides(fn, "scores", scores));
  if (!labels.empty()) {
    DISTILL_TRY(check_extent(fn, "labels", labels, 0, N, "one label per box"));
    DISTILL_TRY(check_strides(fn, "labels", labels));
  }
  const index_t most = opt.max_output >= 0 ? std::min(N, opt.max_output) : N;
  if (keep.extent(0) < most)
    return fail(errc::shape_mismatch, fn,
                "'keep' has room for " + std::to_string(keep.extent(0)) + " indices but up to " + std::to_string(most) +
                    " boxes can be kept");
  if (most > 0) DISTILL_TRY(check_present(fn, "keep", keep));
  DISTILL_TRY(check_strides(fn, "keep", keep));
  if (!std::isfinite(opt.iou_threshold)) return fail(errc::invalid_argument, fn, "'iou_threshold' must be finite");
  if (std::isnan(opt.score_threshold)) return fail(errc::invalid_argument, fn, "'score_threshold' is NaN");
  DISTILL_TRY(detection_detail::check_box_values(fn, "boxes", boxes));
  for (index_t i = 0; i < N; ++i)
    if (std::isnan(static_cast<double>(scores(i))))
      return fail(errc::non_finite, fn, "'scores' " + std::to_string(i) + " is NaN");
  if (most == 0) return {};

  std::vector<index_t> order;
  order.reserve(static_cast<std::size_t>(N));
  for (index_t i = 0; i < N; ++i)
    if (!(scores(i) < static_cast<T>(opt.score_threshold))) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return scores(a) > scores(b); });
  std::vector<char> suppressed(order.size(), 0);
  const T threshold = static_cast<T>(opt.iou_threshold);
  for (std::size_t a = 0; a < order.size() && kept < most; ++a) {
    if (suppressed[a]) continue;
    const index_t i = order[a];
    keep(kept++) = i;
    T bi[4], bj[4];
    detection_detail::load4(boxes, i, bi);
    for (std::size_t b = a + 1; b < order.size(); ++b) {
      const index_t j = order[b];
      if (suppressed[b] || (!labels.empty() && labels(j) != labels(i))) continue;
      detection_detail::load4(boxes, j, bj);
      if (detection_detail::iou(bi, bj) > threshold) suppressed[b] = 1;
    }
  }
  return {};
}

}  // namespace distill
