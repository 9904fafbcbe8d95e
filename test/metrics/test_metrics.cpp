// SPDX-License-Identifier: MIT
// Metrics: hand-worked AP (sklearn's documented example, the three interpolations, ties),
// multi-label mAP, detection AP (VOC greedy matching, duplicates, the no-fallback rule), CorLoc
// and top-k accuracy, each also against the naive references of reference/metrics_ref.hpp on
// random data; bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/metrics/average_precision.hpp"
#include "distill/metrics/detection_metrics.hpp"
#include "distill/metrics/topk_accuracy.hpp"
#include "reference/metrics_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;
using distill_ref::ap_rule;

namespace {

double ap_of(const std::vector<double>& s, const std::vector<std::uint8_t>& y, ap_interpolation i = ap_interpolation::none) {
  double ap = -1;
  average_precision_options o;
  o.interpolation = i;
  REQUIRE(average_precision(cpu{1}, make_view(s.data(), s.size()), make_view(y.data(), y.size()), ap, o).ok());
  return ap;
}

constexpr ap_interpolation interpolations[] = {ap_interpolation::none, ap_interpolation::all_points, ap_interpolation::eleven_point};
constexpr ap_rule rules[] = {ap_rule::none, ap_rule::all_points, ap_rule::eleven_point};

/// Flat views of a detection / ground-truth set.
struct det_set {
  std::vector<double> boxes, scores;
  std::vector<std::int64_t> labels, images;
  std::vector<distill_ref::det_ref> ref;
  void add(distill_ref::box b, double s, long c, long im) {
    boxes.insert(boxes.end(), b.begin(), b.end());
    scores.push_back(s), labels.push_back(c), images.push_back(im);
    ref.push_back({b, s, c, im});
  }
  detection_list<double> view() const {
    const index_t n = static_cast<index_t>(scores.size());
    return {host_view<const double, 2>(boxes.data(), {n, 4}, {4, 1}), host_view<const double, 1>(scores.data(), {n}, {1}),
            host_view<const std::int64_t, 1>(labels.data(), {n}, {1}), host_view<const std::int64_t, 1>(images.data(), {n}, {1})};
  }
};
struct gt_set {
  std::vector<double> boxes;
  std::vector<std::int64_t> labels, images;
  std::vector<distill_ref::gt_ref> ref;
  void add(distill_ref::box b, long c, long im) {
    boxes.insert(boxes.end(), b.begin(), b.end());
    labels.push_back(c), images.push_back(im);
    ref.push_back({b, c, im});
  }
  ground_truth_list<double> view() const {
    const index_t n = static_cast<index_t>(labels.size());
    return {host_view<const double, 2>(boxes.data(), {n, 4}, {4, 1}), host_view<const std::int64_t, 1>(labels.data(), {n}, {1}),
            host_view<const std::int64_t, 1>(images.data(), {n}, {1})};
  }
};

}  // namespace

TEST_CASE("average precision: hand-worked rankings", "[metrics][ap]") {
  // sklearn's documented example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333.
  CHECK_CLOSE_SCALAR("sklearn example", ap_of({0.1, 0.4, 0.35, 0.8}, {0, 0, 1, 1}), 5.0 / 6.0, distill_test::tol::f64);
  // Ranking 0, 1, 1: points (R, P) = (0, 0), (1/2, 1/2), (1, 2/3).
  const std::vector<double> s = {0.9, 0.8, 0.7};
  const std::vector<std::uint8_t> y = {0, 1, 1};
  CHECK_CLOSE_SCALAR("none", ap_of(s, y), 0.5 * 0.5 + 0.5 * 2.0 / 3.0, distill_test::tol::f64);
  CHECK_CLOSE_SCALAR("all points", ap_of(s, y, ap_interpolation::all_points), 2.0 / 3.0, distill_test::tol::f64);
  CHECK_CLOSE_SCALAR("eleven point", ap_of(s, y, ap_interpolation::eleven_point), 2.0 / 3.0, distill_test::tol::f64);
  // Eleven-point with a curve that drops: (R, P) = (1/2, 1), (1/2, 1/2), (1, 1/2): t <= 0.5 -> 1, t > 0.5 -> 1/2.
  CHECK_CLOSE_SCALAR("eleven point, falling", ap_of({4, 3, 2, 1}, {1, 0, 0, 1}, ap_interpolation::eleven_point), (6 * 1.0 + 5 * 0.5) / 11,
                     distill_test::tol::f64);
  // Tied scores enter together: the order of the tied items does not matter.
  CHECK(ap_of({0.5, 0.5, 0.2}, {1, 0, 1}) == ap_of({0.5, 0.5, 0.2}, {0, 1, 1}));
  CHECK_CLOSE_SCALAR("ties", ap_of({0.5, 0.5, 0.2}, {1, 0, 1}), 0.5 * 0.5 + 0.5 * 2.0 / 3.0, distill_test::tol::f64);
  CHECK(ap_of({1, 2, 3}, {1, 1, 1}) == 1.0);
  CHECK(std::isnan(ap_of({1, 2}, {0, 0})));  // no positives: undefined
}

TEST_CASE("multi-label mAP against the naive reference", "[metrics][ap]") {
  distill_test::rng g(71);
  for (int trial = 0; trial < 12; ++trial) {
    const int N = static_cast<int>(g.integer(1, 60)), C = static_cast<int>(g.integer(1, 12));
    std::vector<float> scores;
    std::vector<std::uint8_t> labels;
    for (int i = 0; i < N * C; ++i) {
      labels.push_back(g.coin(0.3) ? 1 : 0);
      scores.push_back(static_cast<float>(trial % 3 == 0 ? std::round(g.uniform(0, 4)) : g.normal() + labels.back()));  // ties every third trial
    }
    const ap_interpolation interp = interpolations[trial % 3];
    std::vector<double> ap(C, -1);
    double mean_ap = -1;
    REQUIRE(multilabel_average_precision(cpu{2}, make_view(scores.data(), N, C), make_view(labels.data(), N, C), make_view(ap.data(), C), mean_ap,
                                         average_precision_options{interp})
                .ok());
    std::vector<double> expected;
    double sum = 0;
    int defined = 0;
    for (int k = 0; k < C; ++k) {
      std::vector<double> s;
      std::vector<int> hit;
      long positives = 0;
      for (int r = 0; r < N; ++r) s.push_back(scores[r * C + k]), hit.push_back(labels[r * C + k]), positives += labels[r * C + k];
      expected.push_back(distill_ref::ap_ref(s, hit, positives, rules[trial % 3]));
      if (!std::isnan(expected.back())) sum += expected.back(), ++defined;
    }
    INFO("trial " << trial);
    CHECK_CLOSE("per class", ap, expected, distill_test::tol::f64);
    if (defined > 0) CHECK_CLOSE_SCALAR("mAP", mean_ap, sum / defined, distill_test::tol::f64);
    else CHECK(std::isnan(mean_ap));
  }
}

TEST_CASE("detection AP: hand-worked VOC matching", "[metrics][detection]") {
  det_set d;
  gt_set gt;
  gt.add({0, 0, 10, 10}, 0, 7);
  gt.add({20, 20, 30, 30}, 0, 7);
  gt.add({0, 0, 10, 10}, 1, 8);      // class 1, another image: never detected
  d.add({0, 0, 10, 9}, 0.9, 0, 7);   // TP (IoU 0.9)
  d.add({0, 0, 9, 10}, 0.8, 0, 7);   // duplicate of the same object: FP
  d.add({20, 21, 30, 30}, 0.7, 0, 7);  // TP
  d.add({50, 50, 60, 60}, 0.6, 0, 7);  // FP
  d.add({20, 20, 30, 30}, 0.95, 0, 8);  // right box, wrong image: FP
  std::vector<double> ap(3, -1);
  double mean_ap = -1;
  REQUIRE(detection_average_precision(cpu{1}, d.view(), gt.view(), make_view(ap.data(), 3), mean_ap).ok());
  // Ranking FP, TP, FP, TP, FP with P = 2: points (0,0) (1/2,1/2) (1/2,1/3) (1,1/2) (1,2/5);
  // all-points envelope 1/2 up to recall 1: AP = 1/2.
  CHECK_CLOSE_SCALAR("class 0", ap[0], 0.5, distill_test::tol::f64);
  CHECK(ap[1] == 0.0);        // ground truth, no detection
  CHECK(std::isnan(ap[2]));   // no ground truth
  CHECK_CLOSE_SCALAR("mAP over classes with ground truth", mean_ap, 0.25, distill_test::tol::f64);

  // VOC's no-fallback rule: the second detection's best box (IoU 0.90) is already matched; it
  // also overlaps the free box by 0.74 >= 0.5 but does not fall back to it: a false positive.
  det_set d2;
  gt_set gt2;
  gt2.add({0, 0, 10, 10}, 0, 0);
  gt2.add({2, 0, 12, 10}, 0, 0);
  d2.add({0, 0, 10, 10}, 0.9, 0, 0);
  d2.add({0.5, 0, 10.5, 10}, 0.8, 0, 0);
  std::vector<double> ap2(1);
  REQUIRE(detection_average_precision(cpu{1}, d2.view(), gt2.view(), make_view(ap2.data(), 1), mean_ap).ok());
  CHECK_CLOSE_SCALAR("no fallback", ap2[0], 0.5, distill_test::tol::f64);  // (1/2, 1), (1/2, 1/2)
}

TEST_CASE("detection AP and CorLoc against the naive references", "[metrics][detection]") {
  distill_test::rng g(72);
  auto jitter = [&](const distill_ref::box& b, double s) {
    distill_ref::box o = b;
    for (double& x : o) x += g.normal(0, s);
    if (o[2] < o[0]) std::swap(o[0], o[2]);
    if (o[3] < o[1]) std::swap(o[1], o[3]);
    return o;
  };
  for (int trial = 0; trial < 20; ++trial) {
    const int C = static_cast<int>(g.integer(1, 5)), images = static_cast<int>(g.integer(1, 6));
    det_set d;
    gt_set gt;
    for (int im = 0; im < images; ++im) {
      const int objects = static_cast<int>(g.integer(0, 5));
      for (int o = 0; o < objects; ++o) {
        const double x = g.uniform(0, 80), y = g.uniform(0, 80), w = g.uniform(5, 30), h = g.uniform(5, 30);
        const long c = g.integer(0, C - 1);
        gt.add({x, y, x + w, y + h}, c, 100 + im);
        const int dets = static_cast<int>(g.integer(0, 3));  // misses, hits, duplicates
        for (int k = 0; k < dets; ++k)
          d.add(jitter({x, y, x + w, y + h}, g.uniform(0.5, 6)), trial % 4 == 0 ? std::round(g.uniform(0, 3)) : g.uniform(), g.coin(0.85) ? c : g.integer(0, C - 1), 100 + im);
      }
      for (int k = 0; k < static_cast<int>(g.integer(0, 3)); ++k) {  // background false positives
        const double x = g.uniform(0, 80), y = g.uniform(0, 80);
        d.add({x, y, x + g.uniform(3, 20), y + g.uniform(3, 20)}, g.uniform(), g.integer(0, C - 1), 100 + im);
      }
    }
    const double thr = trial % 2 == 0 ? 0.5 : 0.3;
    std::vector<double> ap(C), loc(C);
    double mean_ap = 0, mean_loc = 0;
    REQUIRE(detection_average_precision(cpu{1}, d.view(), gt.view(), make_view(ap.data(), C), mean_ap,
                                        detection_ap_options{thr, interpolations[trial % 3]})
                .ok());
    REQUIRE(corloc(cpu{1}, d.view(), gt.view(), make_view(loc.data(), C), mean_loc, corloc_options{thr}).ok());
    std::vector<double> expected_ap, expected_loc;
    for (long c = 0; c < C; ++c) {
      expected_ap.push_back(distill_ref::detection_ap_ref(d.ref, gt.ref, c, thr, rules[trial % 3]));
      expected_loc.push_back(distill_ref::corloc_ref(d.ref, gt.ref, c, thr));
    }
    INFO("trial " << trial << " detections " << d.scores.size() << " ground truth " << gt.labels.size());
    CHECK_CLOSE("AP", ap, expected_ap, distill_test::tol::f64);
    CHECK_CLOSE("CorLoc", loc, expected_loc, distill_test::tol::f64);
    // the same labels stored as int32 (an engine's usual width)
    const std::vector<std::int32_t> d32(d.labels.begin(), d.labels.end()), g32(gt.labels.begin(), gt.labels.end());
    auto dv = d.view();
    auto gv = gt.view();
    dv.labels = make_view(d32.data(), static_cast<index_t>(d32.size()));
    gv.labels = make_view(g32.data(), static_cast<index_t>(g32.size()));
    REQUIRE(detection_average_precision(cpu{1}, dv, gv, make_view(ap.data(), C), mean_ap, detection_ap_options{thr, interpolations[trial % 3]}).ok());
    REQUIRE(corloc(cpu{1}, dv, gv, make_view(loc.data(), C), mean_loc, corloc_options{thr}).ok());
    CHECK_CLOSE("AP, int32 labels", ap, expected_ap, distill_test::tol::f64);
    CHECK_CLOSE("CorLoc, int32 labels", loc, expected_loc, distill_test::tol::f64);
  }
}

TEST_CASE("CorLoc: hand-worked", "[metrics][detection]") {
  det_set d;
  gt_set gt;
  gt.add({0, 0, 10, 10}, 0, 1);   // image 1: class 0 (top box right) and class 1 (top box wrong)
  gt.add({20, 0, 30, 10}, 1, 1);
  gt.add({0, 0, 10, 10}, 0, 2);   // image 2: class 0, no detection of class 0 there
  d.add({0, 0, 10, 10}, 0.9, 0, 1);
  d.add({50, 50, 60, 60}, 0.8, 1, 1);  // top of class 1 in image 1: misses
  d.add({20, 0, 30, 10}, 0.7, 1, 1);   // right, but not the top
  d.add({0, 0, 10, 10}, 0.99, 1, 2);   // class 1 absent from image 2: ignored
  std::vector<double> loc(3);
  double mean_loc = 0;
  REQUIRE(corloc(cpu{1}, d.view(), gt.view(), make_view(loc.data(), 3), mean_loc).ok());
  CHECK(loc[0] == 0.5);
  CHECK(loc[1] == 0.0);
  CHECK(std::isnan(loc[2]));
  CHECK(mean_loc == 0.25);
}

TEST_CASE("top-k accuracy: hand-worked, ties, against the naive reference", "[metrics][topk]") {
  // Row 0: label 2 ranks 0; row 1: label 0 ranks 2; row 2: tie of classes 0 and 1, label 1
  // ranks 1 (the lower index goes first); row 3 ignored.
  const std::vector<double> s = {0.1, 0.2, 0.7, 0.1, 0.5, 0.4, 0.4, 0.4, 0.2, 9, 9, 9};
  const std::vector<std::int32_t> y = {2, 0, 1, -100};
  std::vector<double> acc(3);
  REQUIRE(topk_accuracy(cpu{1}, make_view(s.data(), 4, 3), make_view(y.data(), 4), make_view(acc.data(), 3)).ok());
  CHECK(acc == std::vector<double>{1.0 / 3, 2.0 / 3, 1.0});

  distill_test::rng g(73);
  const int N = 200, C = 10, K = 5;
  std::vector<float> scores;
  std::vector<std::int64_t> labels;
  for (int i = 0; i < N * C; ++i) scores.push_back(static_cast<float>(std::round(g.uniform(0, 6))));  // many ties
  for (int r = 0; r < N; ++r) labels.push_back(g.coin(0.1) ? -1 : g.integer(0, C - 1));
  std::vector<double> got(K);
  REQUIRE(topk_accuracy(cpu{1}, make_view(scores.data(), N, C), make_view(labels.data(), N), make_view(got.data(), K), topk_accuracy_options{-1}).ok());
  std::vector<double> expected(K, 0.0);
  double counted = 0;
  for (int r = 0; r < N; ++r) {
    if (labels[r] < 0) continue;
    ++counted;
    const long rank = distill_ref::rank_ref(std::vector<double>(scores.begin() + r * C, scores.begin() + (r + 1) * C), labels[r]);
    for (int k = 0; k < K; ++k) expected[k] += rank < k + 1;
  }
  for (double& e : expected) e /= counted;
  CHECK_CLOSE("top-k", got, expected, distill_test::tol::f64);
}

TEST_CASE("metrics: bad input is refused with its error code", "[metrics][errors]") {
  const std::vector<double> s = {0.1, std::numeric_limits<double>::quiet_NaN()};
  const std::vector<std::uint8_t> y = {0, 1}, bad_y = {0, 2};
  double out = 0;
  CHECK(average_precision(cpu{1}, make_view(s.data(), 2), make_view(y.data(), 2), out).code() == errc::non_finite);
  CHECK(average_precision(cpu{1}, make_view(s.data(), 1), make_view(bad_y.data(), 2), out).code() == errc::shape_mismatch);
  CHECK(average_precision(cpu{1}, make_view(s.data(), 1), make_view(bad_y.data() + 1, 1), out).code() == errc::invalid_argument);
  std::vector<double> per(2);
  det_set d;
  gt_set gt;
  d.add({0, 0, 1, 1}, 0.5, 2, 0);  // class 2 of 2
  CHECK(detection_average_precision(cpu{1}, d.view(), gt.view(), make_view(per.data(), 2), out).code() == errc::invalid_argument);
  CHECK(detection_average_precision(cpu{1}, d.view(), gt.view(), make_view(per.data(), 2), out, detection_ap_options{1.5}).code() ==
        errc::invalid_argument);
  gt.add({0, 0, -1, 1}, 0, 0);  // inverted
  CHECK(corloc(cpu{1}, det_set{}.view(), gt.view(), make_view(per.data(), 2), out).code() == errc::invalid_argument);
  const std::vector<double> scores = {1, 2, 3};
  const std::vector<std::int64_t> labels = {3};
  std::vector<double> acc(4);
  CHECK(topk_accuracy(cpu{1}, make_view(scores.data(), 1, 3), make_view(labels.data(), 1), make_view(acc.data(), 1)).code() ==
        errc::invalid_argument);  // label 3 of 3 classes
  CHECK(topk_accuracy(cpu{1}, make_view(scores.data(), 1, 3), make_view(labels.data(), 1), make_view(acc.data(), 4)).code() ==
        errc::shape_mismatch);  // k up to 4 of 3 classes
}
