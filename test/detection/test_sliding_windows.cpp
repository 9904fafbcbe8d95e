// SPDX-License-Identifier: MIT
// Sliding-window proposals: a hand-counted grid, every window inside the image with the asked
// size and aspect ratio, the order, bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "distill/detection/sliding_windows.hpp"
#include "support/compare.hpp"

using namespace distill;

TEST_CASE("sliding windows: hand-counted grid and geometry", "[detection][proposals]") {
  // 96 x 64 image, stride 16. Size 32 square: x1 in {0, 16, ..., 64} (5), y1 in {0, 16, 32} (3);
  // size 32, ratio 4 (h/w): w = 16, h = 64: x1 in 0..80 (6), y1 = 0 (1); size 48 square:
  // x1 in {0, 16, 32, 48}, y1 in {0, 16} (8); size 48 ratio 4: h = 96 > 64, none.
  const std::vector<double> sizes = {32, 48}, ratios = {1, 4};
  const sliding_window_options opt{96, 64, 16};
  const auto sv = make_view(sizes.data(), 2), rv = make_view(ratios.data(), 2);
  const index_t n = sliding_window_count(sv, rv, opt);
  CHECK(n == 15 + 6 + 8);
  std::vector<float> boxes(4 * n, -1);
  REQUIRE(sliding_window_boxes(cpu{1}, sv, rv, make_view(boxes.data(), n, 4), opt).ok());
  CHECK(std::vector<float>(boxes.begin(), boxes.begin() + 8) == std::vector<float>{0, 0, 32, 32, 16, 0, 48, 32});  // row-major grid
  CHECK(std::vector<float>(boxes.begin() + 4 * 15, boxes.begin() + 4 * 16) == std::vector<float>{0, 0, 16, 64});  // first of ratio 4
  CHECK(std::vector<float>(boxes.end() - 4, boxes.end()) == std::vector<float>{48, 16, 96, 64});
  for (index_t i = 0; i < n; ++i) {
    const float* b = &boxes[4 * i];
    CHECK(b[0] >= 0);
    CHECK(b[1] >= 0);
    CHECK(b[2] <= 96);
    CHECK(b[3] <= 64);
    const double w = b[2] - b[0], h = b[3] - b[1];
    CHECK_CLOSE_SCALAR("area is size^2", w * h, i < 21 ? 32.0 * 32 : 48.0 * 48, (distill_test::tolerance{1e-3, 1e-6}));
  }
}

TEST_CASE("sliding windows: bad input", "[detection][proposals][errors]") {
  const std::vector<double> sizes = {32}, bad = {-1}, ratios = {1};
  std::vector<float> boxes(4 * 100);
  const sliding_window_options opt{64, 64, 8};
  CHECK(sliding_window_boxes(cpu{1}, make_view(bad.data(), 1), make_view(ratios.data(), 1), make_view(boxes.data(), 1, 4), opt).code() ==
        errc::invalid_argument);
  CHECK(sliding_window_boxes(cpu{1}, make_view(sizes.data(), 1), make_view(ratios.data(), 1), make_view(boxes.data(), 3, 4), opt).code() ==
        errc::shape_mismatch);  // 25 windows
  CHECK(sliding_window_boxes(cpu{1}, make_view(sizes.data(), 1), make_view(ratios.data(), 1), make_view(boxes.data(), 25, 4),
                             sliding_window_options{64, 64, 0})
            .code() == errc::invalid_argument);
  CHECK(sliding_window_count(make_view(bad.data(), 1), make_view(ratios.data(), 1), opt) == 0);
}
