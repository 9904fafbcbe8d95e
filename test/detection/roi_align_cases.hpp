// SPDX-License-Identifier: MIT
#pragma once
// Random RoI Align problems shared by the CPU and CUDA tests: every option (scale, adaptive or
// fixed sampling, aligned), and rois inside the map, straddling or leaving it, and tiny ones.

#include <array>
#include <vector>

#include "distill/detection/roi_align.hpp"
#include "reference/detection_ref.hpp"
#include "support/random.hpp"

namespace roi_test {

using roi = std::array<double, 5>;

struct roi_case {
  int B, C, H, W, ph, pw;
  std::vector<roi> rois;
  distill_ref::roi_align_ref_options ref;
  distill::roi_align_options opt() const {
    distill::roi_align_options o;
    o.spatial_scale = static_cast<float>(ref.scale);
    o.sampling_ratio = ref.sampling_ratio;
    o.aligned = ref.aligned;
    return o;
  }
};

/// Rois in image coordinates (image = map / scale), each coordinate representable in float so a
/// float path and the double reference see the same boxes.
inline std::vector<roi> random_rois(distill_test::rng& g, int K, int B, int H, int W, double scale) {
  std::vector<roi> out;
  const double ih = H / scale, iw = W / scale;
  auto f = [](double v) { return static_cast<double>(static_cast<float>(v)); };
  for (int k = 0; k < K; ++k) {
    const double kind = g.uniform();
    double x1, y1, w, h;
    if (kind < 0.15) {  // tiny
      x1 = g.uniform(0, iw), y1 = g.uniform(0, ih), w = g.uniform(0, 0.8 / scale), h = g.uniform(0, 0.8 / scale);
    } else if (kind < 0.3) {  // straddles or leaves the map
      x1 = g.uniform(-0.5 * iw, 1.2 * iw), y1 = g.uniform(-0.5 * ih, 1.2 * ih), w = g.uniform(0.1, iw), h = g.uniform(0.1, ih);
    } else {
      x1 = g.uniform(0, 0.8 * iw), y1 = g.uniform(0, 0.8 * ih), w = g.uniform(1, iw - x1), h = g.uniform(1, ih - y1);
    }
    out.push_back({static_cast<double>(g.integer(0, B - 1)), f(x1), f(y1), f(x1 + w), f(y1 + h)});
  }
  return out;
}

/// Option set `variant` (scale 1, 1/2, 1/4; adaptive or fixed sampling; aligned or not) on a
/// random shape of at most the given sizes and roi count.
inline roi_case random_case(distill_test::rng& g, int variant, int max_hw = 10, int max_channels = 4, int max_pooled = 4, int max_rois = 7) {
  roi_case c;
  c.B = static_cast<int>(g.integer(1, 3)), c.C = static_cast<int>(g.integer(1, max_channels));
  c.H = static_cast<int>(g.integer(1, max_hw)), c.W = static_cast<int>(g.integer(1, max_hw + 2));
  c.ph = static_cast<int>(g.integer(1, max_pooled)), c.pw = static_cast<int>(g.integer(1, max_pooled));
  c.ref.scale = variant % 3 == 0 ? 1.0 : (variant % 3 == 1 ? 0.5 : 0.25);
  c.ref.sampling_ratio = variant % 2 == 0 ? -1 : static_cast<int>(g.integer(1, 3));
  c.ref.aligned = (variant / 2) % 2 == 1;
  c.rois = random_rois(g, static_cast<int>(g.integer(1, max_rois)), c.B, c.H, c.W, c.ref.scale);
  return c;
}

/// Rows of `rois` flattened to T.
template <class T>
std::vector<T> flat_rois(const std::vector<roi>& rois) {
  std::vector<T> v;
  for (const roi& r : rois)
    for (double x : r) v.push_back(static_cast<T>(x));
  return v;
}

}  // namespace roi_test
