// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references for the detection primitives (boxes, NMS, RoI Align),
// written for clarity, from the formulas (torchvision's semantics), not from the library code.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

namespace distill_ref {

using box = std::array<double, 4>;  // x1, y1, x2, y2

inline double box_area_ref(const box& b) { return std::max(0.0, b[2] - b[0]) * std::max(0.0, b[3] - b[1]); }

inline double iou_ref(const box& a, const box& b) {
  const double left = std::max(a[0], b[0]), right = std::min(a[2], b[2]);
  const double top = std::max(a[1], b[1]), bottom = std::min(a[3], b[3]);
  const double inter = (right > left && bottom > top) ? (right - left) * (bottom - top) : 0.0;
  const double uni = box_area_ref(a) + box_area_ref(b) - inter;
  return uni > 0 ? inter / uni : 0.0;
}

struct coder_ref {
  double wx = 1, wy = 1, ww = 1, wh = 1, clip = std::log(1000.0 / 16);
};

inline box encode_ref(const box& p, const box& g, const coder_ref& c) {
  const double pw = p[2] - p[0], ph = p[3] - p[1], gw = g[2] - g[0], gh = g[3] - g[1];
  const double px = p[0] + pw / 2, py = p[1] + ph / 2, gx = g[0] + gw / 2, gy = g[1] + gh / 2;
  return {c.wx * (gx - px) / pw, c.wy * (gy - py) / ph, c.ww * std::log(gw / pw), c.wh * std::log(gh / ph)};
}

inline box decode_ref(const box& p, const box& d, const coder_ref& c) {
  const double pw = p[2] - p[0], ph = p[3] - p[1];
  const double cx = p[0] + pw / 2 + d[0] / c.wx * pw, cy = p[1] + ph / 2 + d[1] / c.wy * ph;
  const double w = pw * std::exp(std::min(d[2] / c.ww, c.clip)), h = ph * std::exp(std::min(d[3] / c.wh, c.clip));
  return {cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2};
}

/// Greedy NMS, the textbook way: repeatedly take the best remaining box (lowest index on ties)
/// and delete every remaining box of the same class (when labelled) that overlaps it too much.
inline std::vector<std::int64_t> nms_ref(const std::vector<box>& boxes, const std::vector<double>& scores,
                                         const std::vector<std::int64_t>* labels, double iou_threshold, double score_threshold,
                                         std::int64_t max_output) {
  std::vector<std::int64_t> remaining, kept;
  for (std::size_t i = 0; i < boxes.size(); ++i)
    if (scores[i] >= score_threshold) remaining.push_back(static_cast<std::int64_t>(i));
  while (!remaining.empty() && (max_output < 0 || static_cast<std::int64_t>(kept.size()) < max_output)) {
    std::size_t best = 0;
    for (std::size_t r = 1; r < remaining.size(); ++r)
      if (scores[remaining[r]] > scores[remaining[best]]) best = r;
    const std::int64_t i = remaining[best];
    kept.push_back(i);
    std::vector<std::int64_t> next;
    for (std::int64_t j : remaining) {
      if (j == i) continue;
      const bool same_class = labels == nullptr || (*labels)[j] == (*labels)[i];
      if (same_class && iou_ref(boxes[i], boxes[j]) > iou_threshold) continue;
      next.push_back(j);
    }
    remaining = next;
  }
  return kept;
}

// ---- RoI Align (torchvision roi_align semantics) ----------------------------------------------

struct roi_align_ref_options {
  double scale = 1;
  int sampling_ratio = -1;
  bool aligned = false;
};

/// Feature maps as flat [B, C, H, W] vectors.
struct feature_map_ref {
  int B, C, H, W;
  std::vector<double> v;
  double& at(int b, int c, int y, int x) { return v[((static_cast<std::size_t>(b) * C + c) * H + y) * W + x]; }
  double at(int b, int c, int y, int x) const { return v[((static_cast<std::size_t>(b) * C + c) * H + y) * W + x]; }
};

/// The four (row, column, weight) reads of one bilinear sample; empty outside [-1, H] x [-1, W].
struct bilinear_read {
  int y, x;
  double w;
};
inline std::vector<bilinear_read> bilinear_reads_ref(double y, double x, int H, int W) {
  if (y < -1.0 || y > H || x < -1.0 || x > W) return {};
  y = std::max(y, 0.0);
  x = std::max(x, 0.0);
  int y0 = static_cast<int>(std::floor(y)), x0 = static_cast<int>(std::floor(x)), y1, x1;
  if (y0 >= H - 1) y0 = y1 = H - 1, y = y0;
  else y1 = y0 + 1;
  if (x0 >= W - 1) x0 = x1 = W - 1, x = x0;
  else x1 = x0 + 1;
  const double ly = y - y0, lx = x - x0;
  return {{y0, x0, (1 - ly) * (1 - lx)}, {y0, x1, (1 - ly) * lx}, {y1, x0, ly * (1 - lx)}, {y1, x1, ly * lx}};
}

/// Every (batch, row, column, weight) read of output element (k, p, q), weight including 1/count.
struct roi_read {
  int b, y, x;
  double w;
};
inline std::vector<roi_read> roi_reads_ref(const std::array<double, 5>& roi, int p, int q, int ph, int pw, int H, int W,
                                           const roi_align_ref_options& o) {
  const double off = o.aligned ? 0.5 : 0.0;
  const double x1 = roi[1] * o.scale - off, y1 = roi[2] * o.scale - off;
  double w = roi[3] * o.scale - off - x1, h = roi[4] * o.scale - off - y1;
  if (!o.aligned) w = std::max(w, 1.0), h = std::max(h, 1.0);
  const int gh = o.sampling_ratio > 0 ? o.sampling_ratio : static_cast<int>(std::ceil(h / ph));
  const int gw = o.sampling_ratio > 0 ? o.sampling_ratio : static_cast<int>(std::ceil(w / pw));
  const double count = std::max(gh * gw, 1);
  std::vector<roi_read> reads;
  for (int i = 0; i < gh; ++i)
    for (int j = 0; j < gw; ++j) {
      const double Y = y1 + p * (h / ph) + (i + 0.5) * (h / ph) / gh;
      const double X = x1 + q * (w / pw) + (j + 0.5) * (w / pw) / gw;
      for (const bilinear_read& r : bilinear_reads_ref(Y, X, H, W)) reads.push_back({static_cast<int>(roi[0]), r.y, r.x, r.w / count});
    }
  return reads;
}

/// output [K, C, ph, pw] flat.
inline std::vector<double> roi_align_forward_ref(const feature_map_ref& in, const std::vector<std::array<double, 5>>& rois, int ph, int pw,
                                                 const roi_align_ref_options& o) {
  std::vector<double> out(rois.size() * in.C * ph * pw, 0.0);
  for (std::size_t k = 0; k < rois.size(); ++k)
    for (int c = 0; c < in.C; ++c)
      for (int p = 0; p < ph; ++p)
        for (int q = 0; q < pw; ++q) {
          double s = 0;
          for (const roi_read& r : roi_reads_ref(rois[k], p, q, ph, pw, in.H, in.W, o)) s += r.w * in.at(r.b, c, r.y, r.x);
          out[((k * in.C + c) * ph + p) * pw + q] = s;
        }
  return out;
}

/// The adjoint of the forward: every read becomes a weighted add into the gradient.
inline feature_map_ref roi_align_backward_ref(int B, int C, int H, int W, const std::vector<std::array<double, 5>>& rois,
                                              const std::vector<double>& grad_out, int ph, int pw, const roi_align_ref_options& o) {
  feature_map_ref g{B, C, H, W, std::vector<double>(static_cast<std::size_t>(B) * C * H * W, 0.0)};
  for (std::size_t k = 0; k < rois.size(); ++k)
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < ph; ++p)
        for (int q = 0; q < pw; ++q)
          for (const roi_read& r : roi_reads_ref(rois[k], p, q, ph, pw, H, W, o))
            g.at(r.b, c, r.y, r.x) += r.w * grad_out[((k * C + c) * ph + p) * pw + q];
  return g;
}

}  // namespace distill_ref
