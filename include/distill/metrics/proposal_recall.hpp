// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Proposal recall (host): the share of ground-truth boxes that a class-agnostic proposal
//! method covers, the measure of a region proposal network's quality (Hosang et al., "What
//! makes for effective detection proposals?", 2016; Ren et al. 2015, fig. 4: recall vs IoU at a
//! number of proposals per image). Boxes [x1, y1, x2, y2] as in detection/boxes.hpp.
//!
//!   covered(g) = 1 if some proposal p of g's image among its first K (in the order given: rank
//!                the proposals of an image before calling) has IoU(p, g) >= iou_threshold
//!   recall     = sum_g covered(g) / G            (NaN when G = 0)
//! K = max_per_image (< 0: every proposal). The proposals of one image need not be adjacent in
//! the list; their order among themselves is their rank. `best_iou` (optional, [G]) receives,
//! for each ground-truth box, the largest IoU over the proposals considered (0 when none), from
//! which recall at any threshold and the average recall (AR, the mean over IoU 0.5:0.05:0.95)
//! follow.
//!
//!   proposal_recall(ctx, proposals, ground_truth, recall, best_iou, options)
//! Image ids are any int64 values. CPU only (an evaluation on the host).
//! Bad input: non-finite or inverted boxes, mismatched lengths, iou_threshold outside [0, 1].

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/detection/boxes.hpp"

namespace distill {

/// Boxes of many images: box i belongs to image images(i).
template <class T>
struct image_box_list {
  host_view<const T, 2> boxes;              ///< (N, 4)
  host_view<const std::int64_t, 1> images;  ///< (N) image id
};

struct proposal_recall_options {
  double iou_threshold = 0.5;   ///< covered at IoU >= this
  index_t max_per_image = -1;   ///< K: the first K proposals of each image count (< 0: all)
};

namespace proposal_recall_detail {

template <class T>
status check_list(const char* fn, const char* boxes_name, const char* images_name, const image_box_list<T>& l) {
  const index_t n = l.boxes.extent(0);
  DISTILL_TRY(detection_detail::check_boxes(fn, boxes_name, l.boxes));
  DISTILL_TRY(check_extent(fn, images_name, l.images, 0, n, "one per box"));
  if (n > 0) DISTILL_TRY(check_present(fn, images_name, l.images));
  DISTILL_TRY(check_strides(fn, images_name, l.images));
  return detection_detail::check_box_values(fn, boxes_name, l.boxes);
}

}  // namespace proposal_recall_detail

/// Recall of `ground_truth` by the first K `proposals` of each image; best_iou (optional, [G]).
template <class T>
[[nodiscard]] status proposal_recall(const cpu& /*ctx*/, const image_box_list<T>& proposals, const image_box_list<T>& ground_truth,
                                     double& recall, host_view<double, 1> best_iou = {}, const proposal_recall_options& opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "proposal_recall takes float or double boxes");
  constexpr const char* fn = "proposal_recall";
  recall = std::numeric_limits<double>::quiet_NaN();
  DISTILL_TRY(proposal_recall_detail::check_list(fn, "proposals.boxes", "proposals.images", proposals));
  DISTILL_TRY(proposal_recall_detail::check_list(fn, "ground_truth.boxes", "ground_truth.images", ground_truth));
  const index_t G = ground_truth.boxes.extent(0), P = proposals.boxes.extent(0);
  if (!best_iou.empty()) {
    DISTILL_TRY(check_extent(fn, "best_iou", best_iou, 0, G, "one per ground-truth box"));
    DISTILL_TRY(check_strides(fn, "best_iou", best_iou));
  }
  if (!(opt.iou_threshold >= 0.0 && opt.iou_threshold <= 1.0))
    return fail(errc::invalid_argument, fn, "'iou_threshold' must be in [0, 1], got " + check_detail::num(opt.iou_threshold));
  // The proposals each image keeps: its first K, in list order.
  std::unordered_map<std::int64_t, std::vector<index_t>> kept;
  for (index_t p = 0; p < P; ++p) {
    auto& v = kept[proposals.images(p)];
    if (opt.max_per_image < 0 || static_cast<index_t>(v.size()) < opt.max_per_image) v.push_back(p);
  }
  index_t covered = 0;
  for (index_t g = 0; g < G; ++g) {
    double gt[4], box[4], best = 0;
    bool hit = false;
    for (int k = 0; k < 4; ++k) gt[k] = static_cast<double>(ground_truth.boxes(g, k));
    if (const auto it = kept.find(ground_truth.images(g)); it != kept.end())
      for (const index_t p : it->second) {
        for (int k = 0; k < 4; ++k) box[k] = static_cast<double>(proposals.boxes(p, k));
        const double v = detection_detail::iou(box, gt);
        if (v > best) best = v;
        if (v >= opt.iou_threshold) hit = true;
      }
    if (hit) ++covered;
    if (!best_iou.empty()) best_iou(g) = best;
  }
  if (G > 0) recall = static_cast<double>(covered) / static_cast<double>(G);
  return {};
}

}  // namespace distill
