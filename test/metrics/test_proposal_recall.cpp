// SPDX-License-Identifier: MIT
// Proposal recall: a hand-worked example, then the library against the naive reference on
// random images (interleaved proposal lists, K limits, thresholds, best IoUs), and bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/metrics/proposal_recall.hpp"
#include "reference/proposal_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;

TEST_CASE("proposal recall: hand-worked example", "[metrics][proposal_recall]") {
  // Image 5: g0 = [0, 0, 10, 10], g1 = [20, 20, 30, 30]; image 9: g2 = [0, 0, 4, 4].
  // Proposals in rank order: image 5 [0, 0, 10, 20] (IoU 0.5 with g0), image 9 [0, 0, 4, 4]
  // (IoU 1 with g2), image 5 [20, 20, 30, 30] (IoU 1 with g1, but second in image 5).
  const std::vector<float> props = {0, 0, 10, 20, 0, 0, 4, 4, 20, 20, 30, 30};
  const std::vector<std::int64_t> prop_images = {5, 9, 5};
  const std::vector<float> gts = {0, 0, 10, 10, 20, 20, 30, 30, 0, 0, 4, 4};
  const std::vector<std::int64_t> gt_images = {5, 5, 9};
  const image_box_list<float> p{make_view(props.data(), 3, 4), make_view(prop_images.data(), 3)};
  const image_box_list<float> g{make_view(gts.data(), 3, 4), make_view(gt_images.data(), 3)};
  double recall = -1;
  std::vector<double> best(3, -1);
  REQUIRE(proposal_recall(cpu{1}, p, g, recall, make_view(best.data(), 3)).ok());
  CHECK(recall == Approx(1.0));
  CHECK(best == std::vector<double>{0.5, 1.0, 1.0});
  proposal_recall_options o;
  o.max_per_image = 1;  // image 5 keeps only its first proposal: g1 missed
  REQUIRE(proposal_recall(cpu{1}, p, g, recall, make_view(best.data(), 3), o).ok());
  CHECK(recall == Approx(2.0 / 3.0));
  CHECK(best == std::vector<double>{0.5, 0.0, 1.0});
  o.iou_threshold = 0.7;  // and g0 is covered only at 0.5
  REQUIRE(proposal_recall(cpu{1}, p, g, recall, {}, o).ok());
  CHECK(recall == Approx(1.0 / 3.0));
  o.max_per_image = 0;
  o.iou_threshold = 0.0;  // no proposal at all covers nothing, even at threshold 0
  REQUIRE(proposal_recall(cpu{1}, p, g, recall, {}, o).ok());
  CHECK(recall == 0.0);
  // no ground truth: NaN
  REQUIRE(proposal_recall(cpu{1}, p, image_box_list<float>{make_view(gts.data(), 0, 4), make_view(gt_images.data(), 0)}, recall).ok());
  CHECK(std::isnan(recall));
}

TEST_CASE("proposal recall: against the reference on random images", "[metrics][proposal_recall]") {
  distill_test::rng g(41);
  for (int trial = 0; trial < 40; ++trial) {
    const int images = static_cast<int>(g.integer(1, 4));
    const int P = static_cast<int>(g.integer(0, 50)), G = static_cast<int>(g.integer(0, 12));
    auto boxes = [&](int n, std::vector<double>& flat, std::vector<distill_ref::box>& ref, std::vector<std::int64_t>& ids) {
      for (int i = 0; i < n; ++i) {
        const double x = g.uniform(0, 40), y = g.uniform(0, 40), w = g.uniform(1, 30), h = g.uniform(1, 30);
        flat.insert(flat.end(), {x, y, x + w, y + h});
        ref.push_back({x, y, x + w, y + h});
        ids.push_back(100 + g.integer(0, images - 1));
      }
    };
    std::vector<double> pf, gf;
    std::vector<distill_ref::box> pr, gr;
    std::vector<std::int64_t> pi, gi;
    boxes(P, pf, pr, pi);
    boxes(G, gf, gr, gi);
    proposal_recall_options o;
    o.max_per_image = g.integer(-1, 12);
    o.iou_threshold = g.uniform(0.2, 0.8);
    const image_box_list<double> p{make_view(pf.data(), P, 4), make_view(pi.data(), P)};
    const image_box_list<double> t{make_view(gf.data(), G, 4), make_view(gi.data(), G)};
    double recall = -1;
    std::vector<double> best(static_cast<std::size_t>(G), -1), best_ref;
    REQUIRE(proposal_recall(cpu{1}, p, t, recall, make_view(best.data(), G), o).ok());
    const double expected = distill_ref::proposal_recall_ref(pr, pi, gr, gi, static_cast<int>(o.max_per_image), o.iou_threshold, &best_ref);
    if (G == 0) {
      CHECK(std::isnan(recall));
    } else {
      CHECK(recall == expected);
    }
    CHECK_CLOSE("best_iou", best, best_ref, distill_test::tol::f64);
  }
}

TEST_CASE("proposal recall: bad input", "[metrics][proposal_recall]") {
  std::vector<float> props = {0, 0, 10, 10};
  const std::vector<std::int64_t> ids = {0, 0};
  const std::vector<float> gts = {0, 0, 10, 10};
  double recall = 0;
  std::vector<double> best(2);
  auto call = [&](index_t prop_ids, const proposal_recall_options& o, index_t best_n = 1) {
    return proposal_recall(cpu{1}, image_box_list<float>{make_view(props.data(), 1, 4), make_view(ids.data(), prop_ids)},
                           image_box_list<float>{make_view(gts.data(), 1, 4), make_view(ids.data(), 1)}, recall, make_view(best.data(), best_n), o)
        .code();
  };
  CHECK(call(1, {}) == errc::ok);
  CHECK(call(2, {}) == errc::shape_mismatch);
  CHECK(call(1, {}, 2) == errc::shape_mismatch);
  proposal_recall_options o;
  o.iou_threshold = 1.5;
  CHECK(call(1, o) == errc::invalid_argument);
  props[2] = -5;
  CHECK(call(1, {}) == errc::invalid_argument);
  props[2] = std::numeric_limits<float>::infinity();
  CHECK(call(1, {}) == errc::non_finite);
}
