// SPDX-License-Identifier: MIT
#pragma once
// Shapes and inputs shared by the RoI Align benchmarks and their PyTorch peer
// (bench/peers/roi_align_peer.py builds the same rois with the same formula):
//   scene:  B 8, C 64, 24 x 24 map (stride 4 on the scene world's 96 x 96 canvases),
//           64 rois per image, 7 x 7 output, sampling 2, scale 1/4, aligned
//   rcnn:   B 2, C 256, 50 x 50 map (stride 16 on 800 x 800 images), 512 rois per image,
//           7 x 7 output, sampling 2, scale 1/16, aligned (Mask R-CNN's box head)
// Roi k of image b: a box of side 8..(0.6 * image side) placed by a fixed low-discrepancy
// sequence, so both sides see the same boxes without sharing a file.

#include <cmath>
#include <string>
#include <vector>

namespace distill_bench {

struct roi_align_shape {
  const char* name;
  int B, C, H, W, rois_per_image, out;
  float scale;
};

inline constexpr roi_align_shape roi_align_shapes[] = {{"scene", 8, 64, 24, 24, 64, 7, 0.25f},
                                                       {"rcnn", 2, 256, 50, 50, 512, 7, 1.0f / 16}};

inline std::string roi_align_shape_name(const roi_align_shape& s) {
  return std::string(s.name) + "_" + std::to_string(s.B) + "x" + std::to_string(s.C) + "x" + std::to_string(s.H) + "x" +
         std::to_string(s.W) + "_k" + std::to_string(s.B * s.rois_per_image);
}

/// Rows (b, x1, y1, x2, y2) in image coordinates.
inline std::vector<float> roi_align_rois(const roi_align_shape& s) {
  std::vector<float> r;
  const double image_w = s.W / s.scale, image_h = s.H / s.scale;
  for (int b = 0; b < s.B; ++b)
    for (int k = 0; k < s.rois_per_image; ++k) {
      const double u = std::fmod(0.618033988749895 * (k + 1), 1.0), v = std::fmod(0.754877666246693 * (k + 1), 1.0);
      const double w = 8 + (0.6 * image_w - 8) * std::fmod(0.569840290998053 * (k + 1), 1.0);
      const double h = 8 + (0.6 * image_h - 8) * std::fmod(0.41421356237 * (k + 1), 1.0);
      const double x1 = u * (image_w - w), y1 = v * (image_h - h);
      for (double c : {double(b), x1, y1, x1 + w, y1 + h}) r.push_back(static_cast<float>(c));
    }
  return r;
}

/// Bytes a pass must move at least: the output (or its gradient) once, the feature-map cells
/// under the rois read (or written) once; reported against the bandwidth ceiling for scale.
inline double roi_align_bytes(const roi_align_shape& s) {
  return 4.0 * (double(s.B) * s.rois_per_image * s.C * s.out * s.out + double(s.B) * s.C * s.H * s.W);
}

}  // namespace distill_bench
