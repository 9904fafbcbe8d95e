// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Anchor labelling of a region proposal network (host): Faster R-CNN's training targets
//! (Ren et al. 2015, sec. 3.1.2; torchvision's `Matcher` with allow_low_quality_matches). A
//! class-agnostic first stage learns "object here or not" on every anchor (a reference box:
//! sliding windows, detection/sliding_windows.hpp) from the image's ground-truth boxes.
//!
//! With IoU as in boxes.hpp and G ground-truth boxes g_j:
//!   best(a)   = max_j IoU(a, g_j),  matched(a) = argmax_j (first on ties; -1 when G = 0)
//!   label(a)  = 1 (object)     if best(a) >= positive_iou
//!               0 (background) if best(a) <  negative_iou
//!              -1 (ignored: neither, no loss)   otherwise
//!   best-anchor rule (`best_anchor_positive`): for each g_j with top_j = max_a IoU(a, g_j) > 0,
//!   every anchor with IoU(a, g_j) = top_j is positive too (a box no anchor reaches positive_iou
//!   still gets one; ties all count, as torchvision). Its `matched` stays its own best box.
//!   Difference from torchvision: a box that no anchor overlaps at all (top_j = 0) makes no
//!   anchor positive (torchvision would mark every anchor with IoU 0 to it as positive).
//! With G = 0 every anchor is background (label 0, matched -1, IoU 0). The regression target
//! of a positive anchor is box_encode(anchor, g_matched(a)) (boxes.hpp).
//!
//!   anchor_labels(ctx, anchors [A, 4], ground_truth [G, 4], labels [A] (int32),
//!                 matched [A] (int64), matched_iou [A], options)
//! CPU only: anchor labelling is host-side preparation of a training batch (per image, A x G
//! IoUs); there is no CUDA path.
//!
//! Bad input: non-finite or inverted boxes (as boxes.hpp), shapes, thresholds outside [0, 1] or
//! negative_iou > positive_iou (errc::invalid_argument).

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/detection/boxes.hpp"

namespace distill {

struct anchor_label_options {
  double positive_iou = 0.7;        ///< label 1 at IoU >= this (Faster R-CNN 0.7)
  double negative_iou = 0.3;        ///< label 0 below this (Faster R-CNN 0.3)
  bool best_anchor_positive = true; ///< each box's best anchors are positive whatever their IoU (> 0)
};

inline constexpr std::int32_t anchor_positive = 1, anchor_negative = 0, anchor_ignored = -1;

/// Labels (1 object, 0 background, -1 ignored), matched box and its IoU of every anchor.
template <class TA, class TG, class TI>
[[nodiscard]] status anchor_labels(const cpu& ctx, host_view<TA, 2> anchors, host_view<TG, 2> ground_truth, host_view<std::int32_t, 1> labels,
                                   host_view<std::int64_t, 1> matched, host_view<TI, 1> matched_iou, const anchor_label_options& opt = {}) {
  using T = std::remove_const_t<TA>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "anchor_labels takes float or double boxes");
  static_assert(std::is_same_v<std::remove_const_t<TG>, T> && std::is_same_v<TI, T>, "anchor_labels: element types differ (matched_iou non-const)");
  constexpr const char* fn = "anchor_labels";
  const index_t A = anchors.extent(0), G = ground_truth.extent(0);
  DISTILL_TRY(detection_detail::check_boxes(fn, "anchors", anchors));
  DISTILL_TRY(detection_detail::check_boxes(fn, "ground_truth", ground_truth));
  DISTILL_TRY(check_extent(fn, "labels", labels, 0, A, "one per anchor"));
  DISTILL_TRY(check_extent(fn, "matched", matched, 0, A, "one per anchor"));
  DISTILL_TRY(check_extent(fn, "matched_iou", matched_iou, 0, A, "one per anchor"));
  if (A > 0) {
    DISTILL_TRY(check_present(fn, "labels", labels));
    DISTILL_TRY(check_present(fn, "matched", matched));
    DISTILL_TRY(check_present(fn, "matched_iou", matched_iou));
  }
  DISTILL_TRY(check_strides(fn, "labels", labels));
  DISTILL_TRY(check_strides(fn, "matched", matched));
  DISTILL_TRY(check_strides(fn, "matched_iou", matched_iou));
  if (!(opt.positive_iou >= 0 && opt.positive_iou <= 1))
    return fail(errc::invalid_argument, fn, "'positive_iou' must be in [0, 1], got " + check_detail::num(opt.positive_iou));
  if (!(opt.negative_iou >= 0 && opt.negative_iou <= opt.positive_iou))
    return fail(errc::invalid_argument, fn, "'negative_iou' must be in [0, positive_iou], got " + check_detail::num(opt.negative_iou));
  DISTILL_TRY(detection_detail::check_box_values(fn, "anchors", anchors));
  DISTILL_TRY(detection_detail::check_box_values(fn, "ground_truth", ground_truth));

  DISTILL_TRY(box_match(ctx, anchors, ground_truth, matched, matched_iou));
  for (index_t a = 0; a < A; ++a) {
    const double v = static_cast<double>(matched_iou(a));
    labels(a) = G > 0 && v >= opt.positive_iou ? anchor_positive : (G == 0 || v < opt.negative_iou ? anchor_negative : anchor_ignored);
  }
  if (!opt.best_anchor_positive || G == 0 || A == 0) return {};
  // The best anchors of each box: its largest IoU over the anchors, then every anchor reaching it.
  std::vector<T> top(static_cast<std::size_t>(G), T(0));
  T a4[4], g4[4];
  for (index_t a = 0; a < A; ++a) {
    detection_detail::load4(anchors, a, a4);
    for (index_t j = 0; j < G; ++j) {
      detection_detail::load4(ground_truth, j, g4);
      const T v = detection_detail::iou(a4, g4);
      if (v > top[static_cast<std::size_t>(j)]) top[static_cast<std::size_t>(j)] = v;
    }
  }
  for (index_t a = 0; a < A; ++a) {
    detection_detail::load4(anchors, a, a4);
    for (index_t j = 0; j < G; ++j) {
      detection_detail::load4(ground_truth, j, g4);
      if (top[static_cast<std::size_t>(j)] > T(0) && detection_detail::iou(a4, g4) == top[static_cast<std::size_t>(j)]) {
        labels(a) = anchor_positive;
        break;
      }
    }
  }
  return {};
}

}  // namespace distill
