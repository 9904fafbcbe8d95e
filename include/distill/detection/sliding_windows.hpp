// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Class-agnostic proposals by sliding windows (host): every window of each size and aspect
//! ratio placed on a regular grid inside the image. The simplest unsupervised proposal method,
//! e.g. for a WSDDN teacher (Bilen & Vedaldi 2016 use Selective Search or EdgeBoxes; a sliding
//! grid stands in where those are unavailable) or the class-agnostic first stage of a ViLD-style
//! detector. Computed once per image size.
//!
//! For size s and aspect ratio a (height / width), the window is w = s / sqrt(a), h = s sqrt(a)
//! (area s^2), placed at x1 = 0, stride, 2 stride, ... while x1 + w <= width (y alike), so every
//! window lies inside the image; a window larger than the image is left out. Order: size, then
//! aspect ratio, then y1, then x1 (row-major over the grid).
//!
//!   sliding_window_count(sizes, aspect_ratios, options) -> how many windows
//!   sliding_window_boxes(ctx, sizes [S], aspect_ratios [A], boxes [count, 4], options)
//! Bad input: non-positive or non-finite sizes, ratios, stride or image size; `boxes` not
//! [count, 4].

#include <cmath>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/detection/boxes.hpp"

namespace distill {

struct sliding_window_options {
  double image_width = 0;   ///< windows lie inside [0, image_width] x [0, image_height]
  double image_height = 0;
  double stride = 8;        ///< grid step of the windows' top-left corners, > 0
};

namespace sliding_window_detail {

/// Positions 0, stride, ... with position + extent <= limit (a relative 1e-9 slack absorbs rounding).
inline index_t positions(double extent, double limit, double stride) noexcept {
  if (extent > limit * (1 + 1e-9)) return 0;
  return static_cast<index_t>(std::floor((limit - extent) / stride + 1e-9)) + 1;
}

template <class VS, class VA>
status check_inputs(const char* fn, const VS& sizes, const VA& ratios, const sliding_window_options& opt) {
  DISTILL_TRY(check_positive(fn, "image_width", opt.image_width));
  DISTILL_TRY(check_positive(fn, "image_height", opt.image_height));
  DISTILL_TRY(check_positive(fn, "stride", opt.stride));
  for (index_t i = 0; i < sizes.extent(0); ++i) DISTILL_TRY(check_positive(fn, "sizes", static_cast<double>(sizes(i))));
  for (index_t i = 0; i < ratios.extent(0); ++i) DISTILL_TRY(check_positive(fn, "aspect_ratios", static_cast<double>(ratios(i))));
  return {};
}

}  // namespace sliding_window_detail

/// Number of windows `sliding_window_boxes` writes (0 when an input is invalid).
template <class TS, class TA>
index_t sliding_window_count(host_view<TS, 1> sizes, host_view<TA, 1> aspect_ratios, const sliding_window_options& opt) {
  if (!sliding_window_detail::check_inputs("sliding_window_count", sizes, aspect_ratios, opt).ok()) return 0;
  index_t n = 0;
  for (index_t i = 0; i < sizes.extent(0); ++i)
    for (index_t j = 0; j < aspect_ratios.extent(0); ++j) {
      const double r = std::sqrt(static_cast<double>(aspect_ratios(j))), s = static_cast<double>(sizes(i));
      n += sliding_window_detail::positions(s / r, opt.image_width, opt.stride) * sliding_window_detail::positions(s * r, opt.image_height, opt.stride);
    }
  return n;
}

/// Writes the windows as [x1, y1, x2, y2] rows; `boxes` must have sliding_window_count(...) rows.
template <class TS, class TA, class T>
[[nodiscard]] status sliding_window_boxes(const cpu& /*ctx*/, host_view<TS, 1> sizes, host_view<TA, 1> aspect_ratios, host_view<T, 2> boxes,
                                          const sliding_window_options& opt) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "sliding_window_boxes writes float or double boxes");
  constexpr const char* fn = "sliding_window_boxes";
  if (sizes.extent(0) > 0) DISTILL_TRY(check_present(fn, "sizes", sizes));
  if (aspect_ratios.extent(0) > 0) DISTILL_TRY(check_present(fn, "aspect_ratios", aspect_ratios));
  DISTILL_TRY(sliding_window_detail::check_inputs(fn, sizes, aspect_ratios, opt));
  const index_t n = sliding_window_count(sizes, aspect_ratios, opt);
  DISTILL_TRY(detection_detail::check_boxes(fn, "boxes", boxes, n));
  index_t row = 0;
  for (index_t i = 0; i < sizes.extent(0); ++i)
    for (index_t j = 0; j < aspect_ratios.extent(0); ++j) {
      const double r = std::sqrt(static_cast<double>(aspect_ratios(j))), s = static_cast<double>(sizes(i));
      const double w = s / r, h = s * r;
      const index_t nx = sliding_window_detail::positions(w, opt.image_width, opt.stride);
      const index_t ny = sliding_window_detail::positions(h, opt.image_height, opt.stride);
      for (index_t y = 0; y < ny; ++y)
        for (index_t x = 0; x < nx; ++x, ++row) {
          const double x1 = static_cast<double>(x) * opt.stride, y1 = static_cast<double>(y) * opt.stride;
          boxes(row, 0) = static_cast<T>(x1), boxes(row, 1) = static_cast<T>(y1);
          boxes(row, 2) = static_cast<T>(std::fmin(x1 + w, opt.image_width)), boxes(row, 3) = static_cast<T>(std::fmin(y1 + h, opt.image_height));
        }
    }
  return {};
}

}  // namespace distill
