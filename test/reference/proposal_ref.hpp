// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references for the region-proposal pieces (smooth L1 box regression,
// anchor labelling, proposal recall), written from the formulas in the headers' comments.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "reference/detection_ref.hpp"

namespace distill_ref {

inline double huber_ref(double x, double beta) {
  if (std::abs(x) < beta) return 0.5 * x * x / beta;
  return std::abs(x) - 0.5 * beta;
}

/// Reduced smooth L1 of (N, D) row-major prediction/target with row weights (empty: 1).
/// mode: 0 sum, 1 mean (over D * sum w), 2 batchmean (over N).
inline double smooth_l1_ref(const std::vector<double>& pred, const std::vector<double>& target, const std::vector<double>& w, int N, int D,
                            double beta, int mode) {
  double total = 0, wsum = 0;
  for (int r = 0; r < N; ++r) {
    const double wr = w.empty() ? 1.0 : w[static_cast<std::size_t>(r)];
    wsum += wr;
    double row = 0;
    for (int k = 0; k < D; ++k) row += huber_ref(pred[static_cast<std::size_t>(r * D + k)] - target[static_cast<std::size_t>(r * D + k)], beta);
    total += wr * row;
  }
  const double divisor = mode == 0 ? 1.0 : (mode == 1 ? D * wsum : static_cast<double>(N));
  return divisor == 0 ? 0.0 : total / divisor;
}

struct anchor_label_ref_result {
  std::vector<int> labels;
  std::vector<std::int64_t> matched;
  std::vector<double> matched_iou;
};

/// Faster R-CNN anchor labels: the full IoU matrix, per-anchor best, thresholds, then each
/// box's best anchors (ties included, only when that best IoU is > 0) become positive.
inline anchor_label_ref_result anchor_labels_ref(const std::vector<box>& anchors, const std::vector<box>& gts, double pos, double neg,
                                                 bool best_anchor_positive) {
  const std::size_t A = anchors.size(), G = gts.size();
  std::vector<std::vector<double>> iou(A, std::vector<double>(G));
  for (std::size_t a = 0; a < A; ++a)
    for (std::size_t g = 0; g < G; ++g) iou[a][g] = iou_ref(anchors[a], gts[g]);
  anchor_label_ref_result r;
  for (std::size_t a = 0; a < A; ++a) {
    std::int64_t m = -1;
    double best = 0;
    for (std::size_t g = 0; g < G; ++g)
      if (m < 0 || iou[a][g] > best) m = static_cast<std::int64_t>(g), best = iou[a][g];
    r.matched.push_back(m);
    r.matched_iou.push_back(best);
    int label = -1;
    if (G == 0 || best < neg) label = 0;
    if (G > 0 && best >= pos) label = 1;
    r.labels.push_back(label);
  }
  if (best_anchor_positive)
    for (std::size_t g = 0; g < G; ++g) {
      double top = 0;
      for (std::size_t a = 0; a < A; ++a) top = std::max(top, iou[a][g]);
      if (top <= 0) continue;
      for (std::size_t a = 0; a < A; ++a)
        if (iou[a][g] == top) r.labels[a] = 1;
    }
  return r;
}

/// Recall of gts (with their images) by the first K proposals of each image (K < 0: all).
inline double proposal_recall_ref(const std::vector<box>& props, const std::vector<std::int64_t>& prop_images, const std::vector<box>& gts,
                                  const std::vector<std::int64_t>& gt_images, int K, double threshold, std::vector<double>* best_iou = nullptr) {
  if (best_iou) best_iou->assign(gts.size(), 0.0);
  if (gts.empty()) return std::numeric_limits<double>::quiet_NaN();
  int covered = 0;
  for (std::size_t g = 0; g < gts.size(); ++g) {
    int rank = 0;
    bool hit = false;
    double best = 0;
    for (std::size_t p = 0; p < props.size(); ++p) {
      if (prop_images[p] != gt_images[g]) continue;
      if (K >= 0 && rank >= K) break;
      ++rank;
      const double v = iou_ref(props[p], gts[g]);
      best = std::max(best, v);
      if (v >= threshold) hit = true;
    }
    if (hit) ++covered;
    if (best_iou) (*best_iou)[g] = best;
  }
  return static_cast<double>(covered) / static_cast<double>(gts.size());
}

}  // namespace distill_ref
