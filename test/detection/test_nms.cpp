// SPDX-License-Identifier: MIT
// Greedy NMS: a hand-worked example, then the library against the textbook reference on random
// clustered boxes (class-agnostic and class-aware, int32 and int64 labels, score threshold,
// top-k, tied scores), and bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/detection/nms.hpp"
#include "reference/detection_ref.hpp"
#include "support/random.hpp"

using namespace distill;

TEST_CASE("nms: hand-worked example", "[detection][nms]") {
  // Box 0 (0.9) and box 1 (0.8) overlap with IoU 81/119 = 0.68; box 2 (0.7) is apart; box 3
  // (0.95) overlaps box 2 with IoU 100/200 = 0.5 exactly (not > 0.5: kept).
  const std::vector<float> boxes = {0, 0, 10, 10, 1, 1, 11, 11, 20, 20, 30, 30, 20, 20, 30, 40};
  const std::vector<float> scores = {0.9f, 0.8f, 0.7f, 0.95f};
  std::vector<std::int64_t> keep(4, -1);
  index_t kept = -1;
  REQUIRE(non_max_suppression(cpu{1}, make_view(boxes.data(), 4, 4), make_view(scores.data(), 4), {}, make_view(keep.data(), 4), kept).ok());
  CHECK(kept == 3);
  CHECK(std::vector<std::int64_t>(keep.begin(), keep.begin() + kept) == std::vector<std::int64_t>{3, 0, 2});
  // Lower threshold: box 3 suppresses box 2. Class-aware with box 1 in another class: both kept.
  nms_options opt;
  opt.iou_threshold = 0.4f;
  const std::vector<std::int32_t> labels = {0, 1, 0, 0};
  REQUIRE(non_max_suppression(cpu{1}, make_view(boxes.data(), 4, 4), make_view(scores.data(), 4), make_view(labels.data(), 4),
                              make_view(keep.data(), 4), kept, opt)
              .ok());
  CHECK(std::vector<std::int64_t>(keep.begin(), keep.begin() + kept) == std::vector<std::int64_t>{3, 0, 1});
  // Top-1 and a score threshold above everything.
  opt.max_output = 1;
  REQUIRE(non_max_suppression(cpu{1}, make_view(boxes.data(), 4, 4), make_view(scores.data(), 4), {}, make_view(keep.data(), 1), kept, opt).ok());
  CHECK(kept == 1);
  CHECK(keep[0] == 3);
  opt.max_output = -1;
  opt.score_threshold = 0.99f;
  REQUIRE(non_max_suppression(cpu{1}, make_view(boxes.data(), 4, 4), make_view(scores.data(), 4), {}, make_view(keep.data(), 4), kept, opt).ok());
  CHECK(kept == 0);
}

TEST_CASE("nms: against the reference on random clustered boxes", "[detection][nms]") {
  distill_test::rng g(21);
  for (int trial = 0; trial < 40; ++trial) {
    const int N = static_cast<int>(g.integer(0, 120));
    std::vector<distill_ref::box> boxes;
    std::vector<double> flat, scores;
    std::vector<std::int64_t> labels;
    for (int i = 0; i < N; ++i) {
      const double cx = 10.0 * static_cast<double>(g.integer(0, 4)) + g.normal(0, 2), cy = g.normal(10, 2);
      const double w = g.uniform(3, 8), h = g.uniform(3, 8);
      boxes.push_back({cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2});
      for (double c : boxes.back()) flat.push_back(c);
      scores.push_back(trial % 4 == 0 ? std::round(g.uniform(0, 5)) : g.uniform());  // many ties every 4th trial
      labels.push_back(g.integer(0, 2));
    }
    const bool aware = trial % 2 == 1;
    nms_options opt;
    opt.iou_threshold = static_cast<float>(g.uniform(0.2, 0.7));
    opt.score_threshold = trial % 3 == 0 ? 0.3f : -std::numeric_limits<float>::infinity();
    opt.max_output = trial % 5 == 0 ? g.integer(0, 6) : -1;
    const auto expected = distill_ref::nms_ref(boxes, scores, aware ? &labels : nullptr, static_cast<double>(opt.iou_threshold),
                                               static_cast<double>(opt.score_threshold), opt.max_output);
    std::vector<std::int64_t> keep(static_cast<std::size_t>(N) + 1, -7);
    index_t kept = -1;
    const auto bv = host_view<const double, 2>(flat.data(), {N, 4}, {4, 1});
    const auto sv = host_view<const double, 1>(scores.data(), {N}, {1});
    const auto lv = aware ? host_view<const std::int64_t, 1>(labels.data(), {N}, {1}) : host_view<const std::int64_t, 1>{};
    REQUIRE(non_max_suppression(cpu{1}, bv, sv, lv, make_view(keep.data(), N + 1), kept, opt).ok());
    INFO("trial " << trial << " N " << N << " aware " << aware);
    CHECK(std::vector<std::int64_t>(keep.begin(), keep.begin() + kept) == expected);
    CHECK(keep[static_cast<std::size_t>(kept)] == -7);  // nothing written past the kept count
  }
}

TEST_CASE("nms: bad input is refused with its error code", "[detection][nms][errors]") {
  const std::vector<double> boxes = {0, 0, 1, 1, 0, 0, 2, 2};
  std::vector<double> scores = {0.5, std::numeric_limits<double>::quiet_NaN()};
  std::vector<std::int64_t> keep(2);
  index_t kept = 0;
  CHECK(non_max_suppression(cpu{1}, make_view(boxes.data(), 2, 4), make_view(scores.data(), 2), {}, make_view(keep.data(), 2), kept).code() ==
        errc::non_finite);
  scores[1] = 0.2;
  CHECK(non_max_suppression(cpu{1}, make_view(boxes.data(), 2, 4), make_view(scores.data(), 1), {}, make_view(keep.data(), 2), kept).code() ==
        errc::shape_mismatch);
  CHECK(non_max_suppression(cpu{1}, make_view(boxes.data(), 2, 4), make_view(scores.data(), 2), {}, make_view(keep.data(), 1), kept).code() ==
        errc::shape_mismatch);
  nms_options opt;
  opt.iou_threshold = std::numeric_limits<float>::infinity();
  CHECK(non_max_suppression(cpu{1}, make_view(boxes.data(), 2, 4), make_view(scores.data(), 2), {}, make_view(keep.data(), 2), kept, opt)
            .code() == errc::invalid_argument);
  const std::vector<std::int64_t> labels = {0};
  CHECK(non_max_suppression(cpu{1}, make_view(boxes.data(), 2, 4), make_view(scores.data(), 2), make_view(labels.data(), 1),
                            make_view(keep.data(), 2), kept)
            .code() == errc::shape_mismatch);
}
