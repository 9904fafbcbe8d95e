// SPDX-License-Identifier: MIT
#pragma once
// Naive references for the metrics, written from the definitions with full rescans (quadratic,
// no incremental bookkeeping): precision and recall recomputed at every distinct threshold,
// every ground-truth box scanned for every detection, ranks by sorting (score, index) pairs.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "reference/detection_ref.hpp"

namespace distill_ref {

enum class ap_rule { none, all_points, eleven_point };

/// AP of items with `scores` where `hit[i]` says item i is a true positive; `positives` = P.
inline double ap_ref(const std::vector<double>& scores, const std::vector<int>& hit, long positives, ap_rule rule) {
  if (positives == 0) return std::numeric_limits<double>::quiet_NaN();
  std::set<double, std::greater<>> thresholds(scores.begin(), scores.end());
  std::vector<double> R, P;
  for (double t : thresholds) {
    long tp = 0, n = 0;
    for (std::size_t i = 0; i < scores.size(); ++i)
      if (scores[i] >= t) ++n, tp += hit[i];
    R.push_back(double(tp) / double(positives));
    P.push_back(double(tp) / double(n));
  }
  if (rule == ap_rule::eleven_point) {
    double s = 0;
    for (int k = 0; k <= 10; ++k) {
      double best = 0;
      for (std::size_t j = 0; j < R.size(); ++j)
        if (R[j] * 10 >= k - 1e-9) best = std::max(best, P[j]);
      s += best / 11;
    }
    return s;
  }
  double ap = 0;
  for (std::size_t j = 0; j < R.size(); ++j) {
    double p = P[j];
    if (rule == ap_rule::all_points)
      for (std::size_t i = 0; i < R.size(); ++i)
        if (R[i] >= R[j]) p = std::max(p, P[i]);
    ap += (R[j] - (j == 0 ? 0.0 : R[j - 1])) * p;
  }
  return ap;
}

struct det_ref {
  box b;
  double score;
  long label, image;
};
struct gt_ref {
  box b;
  long label, image;
};

/// VOC greedy matching: per class, detections by decreasing score (index order on ties).
inline double detection_ap_ref(const std::vector<det_ref>& dets, const std::vector<gt_ref>& gts, long c, double thr, ap_rule rule) {
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < dets.size(); ++i)
    if (dets[i].label == c) mine.push_back(i);
  std::stable_sort(mine.begin(), mine.end(), [&](std::size_t a, std::size_t b) { return dets[a].score > dets[b].score; });
  std::vector<int> used(gts.size(), 0);
  std::vector<double> scores;
  std::vector<int> hit;
  for (std::size_t d : mine) {
    double best = -1;
    long best_g = -1;
    for (std::size_t g = 0; g < gts.size(); ++g) {
      if (gts[g].label != c || gts[g].image != dets[d].image) continue;
      const double iou = iou_ref(dets[d].b, gts[g].b);
      if (iou > best) best = iou, best_g = static_cast<long>(g);
    }
    int h = 0;
    if (best_g >= 0 && best >= thr && !used[best_g]) h = used[best_g] = 1;
    scores.push_back(dets[d].score);
    hit.push_back(h);
  }
  long positives = 0;
  for (const gt_ref& g : gts) positives += g.label == c;
  return ap_ref(scores, hit, positives, rule);
}

inline double corloc_ref(const std::vector<det_ref>& dets, const std::vector<gt_ref>& gts, long c, double thr) {
  std::set<long> images;
  for (const gt_ref& g : gts)
    if (g.label == c) images.insert(g.image);
  if (images.empty()) return std::numeric_limits<double>::quiet_NaN();
  long hits = 0;
  for (long im : images) {
    long top = -1;
    for (std::size_t d = 0; d < dets.size(); ++d)
      if (dets[d].label == c && dets[d].image == im && (top < 0 || dets[d].score > dets[top].score)) top = static_cast<long>(d);
    if (top < 0) continue;
    for (const gt_ref& g : gts)
      if (g.label == c && g.image == im && iou_ref(dets[top].b, g.b) >= thr) {
        ++hits;
        break;
      }
  }
  return double(hits) / double(images.size());
}

/// Position of `label` when the classes are sorted by (score descending, index ascending).
inline long rank_ref(const std::vector<double>& row, long label) {
  std::vector<std::pair<double, long>> order;
  for (std::size_t k = 0; k < row.size(); ++k) order.push_back({-row[k], static_cast<long>(k)});
  std::sort(order.begin(), order.end());
  for (std::size_t i = 0; i < order.size(); ++i)
    if (order[i].second == label) return static_cast<long>(i);
  return -1;
}

}  // namespace distill_ref
