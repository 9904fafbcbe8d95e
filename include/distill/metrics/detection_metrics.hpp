// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Detection metrics (host): average precision at an IoU threshold (Pascal VOC style) and
//! CorLoc (correct localisation, Deselaers et al. 2012; the weakly-supervised detection metric
//! of WSDDN and Liu et al.). Boxes [x1, y1, x2, y2] as in detection/boxes.hpp; IoU from there.
//!
//! Detection AP of class c. Visit the detections of class c (over all images) by decreasing
//! score (ties in index order). A detection in image i matches the ground-truth box of class c
//! in image i with the largest IoU (the first on ties); it is a true positive when that IoU >=
//! iou_threshold and the box is not yet matched (the box is then matched), else a false
//! positive (VOC's greedy rule: a detection never falls back to its second-best box). With
//! P = the number of ground-truth boxes of class c, AP follows from the ranking as in
//! average_precision.hpp (interpolation all_points by default, the VOC 2010+ rule; no
//! "difficult" flags). A class without ground truth has NaN AP and is left out of the mean.
//!
//! CorLoc of class c = (images containing c whose top-scoring detection of class c overlaps a
//! ground-truth box of class c with IoU >= iou_threshold) / (images containing c). An image
//! containing c without any detection of c counts as a miss; detections of c in images without
//! c are ignored. NaN for a class present in no image; mean_corloc = the mean over the others.
//!
//!   detection_average_precision(ctx, detections, ground_truth, ap_per_class [C], mean_ap, options)
//!   corloc(ctx, detections, ground_truth, corloc_per_class [C], mean_corloc, options)
//! Class labels are int32 or int64 in [0, C) (C = the extent of the per-class output); image ids
//! are any int64 values. Bad input: non-finite or inverted boxes, NaN scores, labels outside [0, C),
//! mismatched lengths.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/labels.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/detection/boxes.hpp"
#include "distill/metrics/average_precision.hpp"

namespace distill {

/// D scored detections, possibly of many images.
template <class T>
struct detection_list {
  host_view<const T, 2> boxes;              ///< (D, 4)
  host_view<const T, 1> scores;             ///< (D)
  label_view<host_space> labels;           ///< (D) class in [0, C), int32 or int64
  host_view<const std::int64_t, 1> images;  ///< (D) image id
};

/// G ground-truth boxes, possibly of many images.
template <class T>
struct ground_truth_list {
  host_view<const T, 2> boxes;              ///< (G, 4)
  label_view<host_space> labels;           ///< (G) class in [0, C), int32 or int64
  host_view<const std::int64_t, 1> images;  ///< (G) image id
};

struct detection_ap_options {
  double iou_threshold = 0.5;                                      ///< a match needs IoU >= this
  ap_interpolation interpolation = ap_interpolation::all_points;  ///< VOC 2010+ by default
};

struct corloc_options {
  double iou_threshold = 0.5;  ///< a correct localisation needs IoU >= this
};

namespace metrics_detail {

template <class T>
status check_detections(const char* fn, const detection_list<T>& d, index_t classes) {
  const index_t D = d.boxes.extent(0);
  DISTILL_TRY(detection_detail::check_boxes(fn, "detections.boxes", d.boxes));
  auto ids = [&](const char* name, const host_view<const std::int64_t, 1>& v) -> status {
    DISTILL_TRY(check_extent(fn, name, v, 0, D, "one per detection"));
    if (D > 0) DISTILL_TRY(check_present(fn, name, v));
    return check_strides(fn, name, v);
  };
  DISTILL_TRY(check_extent(fn, "detections.labels", d.labels, 0, D, "one per detection"));
  DISTILL_TRY(check_optional_labels(fn, "detections.labels", d.labels, D));
  DISTILL_TRY(ids("detections.images", d.images));
  DISTILL_TRY(check_extent(fn, "detections.scores", d.scores, 0, D, "one per detection"));
  if (D > 0) DISTILL_TRY(check_present(fn, "detections.scores", d.scores));
  DISTILL_TRY(check_strides(fn, "detections.scores", d.scores));
  DISTILL_TRY(detection_detail::check_box_values(fn, "detections.boxes", d.boxes));
  for (index_t i = 0; i < D; ++i) {
    if (std::isnan(static_cast<double>(d.scores(i)))) return fail(errc::non_finite, fn, "'detections.scores' " + std::to_string(i) + " is NaN");
    if (d.labels(i) < 0 || d.labels(i) >= classes)
      return fail(errc::invalid_argument, fn,
                  "'detections.labels' " + std::to_string(i) + " is " + std::to_string(d.labels(i)) + ", outside [0, " + std::to_string(classes) + ")");
  }
  return {};
}

template <class T>
status check_ground_truth(const char* fn, const ground_truth_list<T>& g, index_t classes) {
  const index_t G = g.boxes.extent(0);
  DISTILL_TRY(detection_detail::check_boxes(fn, "ground_truth.boxes", g.boxes));
  auto ids = [&](const char* name, const host_view<const std::int64_t, 1>& v) -> status {
    DISTILL_TRY(check_extent(fn, name, v, 0, G, "one per ground-truth box"));
    if (G > 0) DISTILL_TRY(check_present(fn, name, v));
    return check_strides(fn, name, v);
  };
  DISTILL_TRY(check_extent(fn, "ground_truth.labels", g.labels, 0, G, "one per ground-truth box"));
  DISTILL_TRY(check_optional_labels(fn, "ground_truth.labels", g.labels, G));
  DISTILL_TRY(ids("ground_truth.images", g.images));
  DISTILL_TRY(detection_detail::check_box_values(fn, "ground_truth.boxes", g.boxes));
  for (index_t i = 0; i < G; ++i)
    if (g.labels(i) < 0 || g.labels(i) >= classes)
      return fail(errc::invalid_argument, fn,
                  "'ground_truth.labels' " + std::to_string(i) + " is " + std::to_string(g.labels(i)) + ", outside [0, " + std::to_string(classes) + ")");
  return {};
}

inline status check_per_class_output(const char* fn, const char* name, const host_view<double, 1>& out, double iou_threshold) {
  DISTILL_TRY(check_present(fn, name, out));
  DISTILL_TRY(check_strides(fn, name, out));
  if (!(iou_threshold >= 0.0 && iou_threshold <= 1.0))
    return fail(errc::invalid_argument, fn, "'iou_threshold' must be in [0, 1], got " + check_detail::num(iou_threshold));
  return {};
}

/// Box r of a [N, 4] view in double (IoUs are compared with the threshold in double).
template <class V>
void load_box(const V& v, index_t r, double out[4]) {
  for (int k = 0; k < 4; ++k) out[k] = static_cast<double>(v(r, k));
}

/// Ground-truth boxes grouped by (class, image): the indices of those of one (class, image).
template <class T>
class ground_truth_index {
 public:
  explicit ground_truth_index(const ground_truth_list<T>& g) : g_(g), order_(static_cast<std::size_t>(g.boxes.extent(0))) {
    std::iota(order_.begin(), order_.end(), index_t(0));
    std::sort(order_.begin(), order_.end(), [&](index_t a, index_t b) { return key(a) < key(b); });
  }
  /// [first, last) positions in `order()` of the boxes of class c in image i.
  std::pair<std::size_t, std::size_t> range(std::int64_t c, std::int64_t image) const {
    const auto k = std::make_tuple(c, image, index_t(0));
    auto lo = std::lower_bound(order_.begin(), order_.end(), k, [&](index_t a, const auto& v) { return key(a) < v; });
    auto hi = lo;
    while (hi != order_.end() && g_.labels(*hi) == c && g_.images(*hi) == image) ++hi;
    return {static_cast<std::size_t>(lo - order_.begin()), static_cast<std::size_t>(hi - order_.begin())};
  }
  index_t at(std::size_t pos) const { return order_[pos]; }
  std::size_t size() const { return order_.size(); }

 private:
  std::tuple<std::int64_t, std::int64_t, index_t> key(index_t i) const { return {g_.labels(i), g_.images(i), i}; }
  const ground_truth_list<T>& g_;
  std::vector<index_t> order_;  // by (class, image, index)
};

}  // namespace metrics_detail

/// Per-class detection AP at `iou_threshold` and its mean over the classes with ground truth.
template <class T>
[[nodiscard]] status detection_average_precision(const cpu& /*ctx*/, const detection_list<T>& detections,
                                                 const ground_truth_list<T>& ground_truth, host_view<double, 1> ap_per_class,
                                                 double& mean_ap, const detection_ap_options& opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "detection_average_precision takes float or double boxes");
  namespace md = metrics_detail;
  constexpr const char* fn = "detection_average_precision";
  mean_ap = std::numeric_limits<double>::quiet_NaN();
  DISTILL_TRY(md::check_per_class_output(fn, "ap_per_class", ap_per_class, opt.iou_threshold));
  DISTILL_TRY(md::check_interpolation(fn, opt.interpolation));
  const index_t C = ap_per_class.extent(0);
  DISTILL_TRY(md::check_detections(fn, detections, C));
  DISTILL_TRY(md::check_ground_truth(fn, ground_truth, C));
  const md::ground_truth_index<T> index(ground_truth);
  std::vector<index_t> positives(static_cast<std::size_t>(C), 0);
  for (index_t i = 0; i < ground_truth.boxes.extent(0); ++i) ++positives[static_cast<std::size_t>(ground_truth.labels(i))];
  const std::vector<index_t> ranked = md::rank_by_score(detections.boxes.extent(0), [&](index_t i) { return detections.scores(i); });
  std::vector<char> matched(index.size(), 0);  // by position in the index
  for (index_t c = 0; c < C; ++c) {
    std::vector<index_t> mine;  // detections of class c by decreasing score
    for (index_t i : ranked)
      if (detections.labels(i) == c) mine.push_back(i);
    std::vector<char> tp(mine.size(), 0);
    for (std::size_t n = 0; n < mine.size(); ++n) {
      const index_t d = mine[n];
      double box[4], gt[4];
      md::load_box(detections.boxes, d, box);
      const auto [first, last] = index.range(c, detections.images(d));
      double best = -1;
      std::size_t best_pos = 0;
      for (std::size_t p = first; p < last; ++p) {
        md::load_box(ground_truth.boxes, index.at(p), gt);
        const double iou = detection_detail::iou(box, gt);
        if (iou > best) best = iou, best_pos = p;
      }
      if (best >= opt.iou_threshold && !matched[best_pos]) tp[n] = matched[best_pos] = 1;
    }
    ap_per_class(c) = md::ap_from_ranking(
        static_cast<index_t>(mine.size()), [&](index_t n) { return detections.scores(mine[static_cast<std::size_t>(n)]); },
        [&](index_t n) { return tp[static_cast<std::size_t>(n)] != 0; }, positives[static_cast<std::size_t>(c)], opt.interpolation);
  }
  mean_ap = md::mean_defined(ap_per_class);
  return {};
}

/// Per-class CorLoc and its mean over the classes present in some image.
template <class T>
[[nodiscard]] status corloc(const cpu& /*ctx*/, const detection_list<T>& detections, const ground_truth_list<T>& ground_truth,
                            host_view<double, 1> corloc_per_class, double& mean_corloc, const corloc_options& opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "corloc takes float or double boxes");
  namespace md = metrics_detail;
  constexpr const char* fn = "corloc";
  mean_corloc = std::numeric_limits<double>::quiet_NaN();
  DISTILL_TRY(md::check_per_class_output(fn, "corloc_per_class", corloc_per_class, opt.iou_threshold));
  const index_t C = corloc_per_class.extent(0);
  DISTILL_TRY(md::check_detections(fn, detections, C));
  DISTILL_TRY(md::check_ground_truth(fn, ground_truth, C));
  const md::ground_truth_index<T> index(ground_truth);
  // Top detection of each (class, image), first index on ties.
  std::vector<std::tuple<std::int64_t, std::int64_t, index_t>> top;  // (class, image, detection)
  {
    std::vector<index_t> order = md::rank_by_score(detections.boxes.extent(0), [&](index_t i) { return detections.scores(i); });
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      return std::pair{detections.labels(a), detections.images(a)} < std::pair{detections.labels(b), detections.images(b)};
    });
    for (std::size_t n = 0; n < order.size(); ++n) {
      const index_t i = order[n];
      if (n == 0 || detections.labels(order[n - 1]) != detections.labels(i) || detections.images(order[n - 1]) != detections.images(i))
        top.emplace_back(detections.labels(i), detections.images(i), i);
    }
  }
  std::vector<index_t> present(static_cast<std::size_t>(C), 0), hits(static_cast<std::size_t>(C), 0);
  for (std::size_t p = 0; p < index.size();) {  // one (class, image) group of ground truth at a time
    const index_t g0 = index.at(p);
    const std::int64_t c = ground_truth.labels(g0), image = ground_truth.images(g0);
    const auto [first, last] = index.range(c, image);
    ++present[static_cast<std::size_t>(c)];
    const auto it = std::lower_bound(top.begin(), top.end(), std::make_tuple(c, image, index_t(0)));
    if (it != top.end() && std::get<0>(*it) == c && std::get<1>(*it) == image) {
      double box[4], gt[4];
      md::load_box(detections.boxes, std::get<2>(*it), box);
      for (std::size_t q = first; q < last; ++q) {
        md::load_box(ground_truth.boxes, index.at(q), gt);
        if (detection_detail::iou(box, gt) >= opt.iou_threshold) {
          ++hits[static_cast<std::size_t>(c)];
          break;
        }
      }
    }
    p = last;
  }
  for (index_t c = 0; c < C; ++c)
    corloc_per_class(c) = present[static_cast<std::size_t>(c)] > 0
                              ? static_cast<double>(hits[static_cast<std::size_t>(c)]) / static_cast<double>(present[static_cast<std::size_t>(c)])
                              : std::numeric_limits<double>::quiet_NaN();
  mean_corloc = md::mean_defined(corloc_per_class);
  return {};
}

}  // namespace distill
