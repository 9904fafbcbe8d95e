// SPDX-License-Identifier: MIT
// Training targets of a region proposal network: anchor labelling (Faster R-CNN's IoU rule with
// the best-anchor rule) against the naive reference on random and grid boxes, a hand-worked
// case, bad input; smooth L1 box regression against the double reference and central finite
// differences (every reduction, weights, beta 0 = L1, float and double, accumulate), bad input.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/detection/anchor_labels.hpp"
#include "distill/detection/smooth_l1.hpp"
#include "reference/proposal_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;

namespace {

std::vector<distill_ref::box> to_ref(const std::vector<double>& flat) {
  std::vector<distill_ref::box> out;
  for (std::size_t i = 0; i + 3 < flat.size(); i += 4) out.push_back({flat[i], flat[i + 1], flat[i + 2], flat[i + 3]});
  return out;
}

template <class T>
std::vector<T> random_boxes(distill_test::rng& g, int n, bool integer) {
  std::vector<T> b;
  for (int i = 0; i < n; ++i) {
    double x = g.uniform(0, 80), y = g.uniform(0, 80), w = g.uniform(0, 40), h = g.uniform(0, 40);
    if (i % 9 == 0) w = 0;  // an empty box now and then
    if (integer) x = std::floor(x), y = std::floor(y), w = std::floor(w), h = std::floor(h);
    b.insert(b.end(), {static_cast<T>(x), static_cast<T>(y), static_cast<T>(x + w), static_cast<T>(y + h)});
  }
  return b;
}

template <class T>
void run_anchor_case(distill_test::rng& g, int A, int G, bool integer, const anchor_label_options& opt) {
  const std::vector<T> anchors = random_boxes<T>(g, A, integer);
  std::vector<T> gts = random_boxes<T>(g, G, integer);
  // a few boxes equal to anchors (IoU 1) and near-copies, so all three labels occur
  for (int j = 0; j < G && A > 0; j += 3)
    for (int k = 0; k < 4; ++k) gts[static_cast<std::size_t>(4 * j + k)] = anchors[static_cast<std::size_t>(4 * (j % A) + k)] + (k >= 2 ? T(j % 2) : T(0));
  std::vector<std::int32_t> labels(static_cast<std::size_t>(A), 7);
  std::vector<std::int64_t> matched(static_cast<std::size_t>(A), 7);
  std::vector<T> miou(static_cast<std::size_t>(A), T(7));
  REQUIRE(anchor_labels(cpu{2}, make_view(anchors.data(), A, 4), make_view(gts.data(), G, 4), make_view(labels.data(), A),
                        make_view(matched.data(), A), make_view(miou.data(), A), opt)
              .ok());
  std::vector<double> ad(anchors.begin(), anchors.end()), gd(gts.begin(), gts.end());
  const auto ref = distill_ref::anchor_labels_ref(to_ref(ad), to_ref(gd), opt.positive_iou, opt.negative_iou, opt.best_anchor_positive);
  CHECK(std::vector<int>(labels.begin(), labels.end()) == ref.labels);
  CHECK(matched == ref.matched);
  CHECK_CLOSE("matched_iou", miou, ref.matched_iou, (std::is_same_v<T, float> ? distill_test::tol::f32 : distill_test::tol::f64));
}

}  // namespace

TEST_CASE("anchor labels: hand-worked example", "[detection][anchor_labels]") {
  // Boxes: g0 = [0, 0, 10, 10], g1 = [50, 50, 54, 70] (tall and thin: no anchor reaches 0.7).
  // Anchors: a0 = g0 (IoU 1: positive), a1 = [0, 0, 10, 20] (IoU 0.5 with g0: ignored),
  // a2 = [30, 30, 40, 40] (IoU 0: background), a3 = [50, 50, 60, 70] (IoU 0.4 with g1: ignored,
  // but g1's best anchor: positive), a4 = [0, 0, 20, 20] (IoU 0.25 with g0: background).
  const std::vector<float> anchors = {0, 0, 10, 10, 0, 0, 10, 20, 30, 30, 40, 40, 50, 50, 60, 70, 0, 0, 20, 20};
  const std::vector<float> gts = {0, 0, 10, 10, 50, 50, 54, 70};
  std::vector<std::int32_t> labels(5);
  std::vector<std::int64_t> matched(5);
  std::vector<float> miou(5);
  auto run = [&](const anchor_label_options& o, index_t G) {
    REQUIRE(anchor_labels(cpu{1}, make_view(anchors.data(), 5, 4), make_view(gts.data(), G, 4), make_view(labels.data(), 5),
                          make_view(matched.data(), 5), make_view(miou.data(), 5), o)
                .ok());
  };
  run({}, 2);
  CHECK(labels == std::vector<std::int32_t>{1, -1, 0, 1, 0});
  CHECK(matched == std::vector<std::int64_t>{0, 0, 0, 1, 0});
  CHECK(miou[1] == Approx(0.5));
  CHECK(miou[3] == Approx(0.4));
  anchor_label_options no_best;
  no_best.best_anchor_positive = false;
  run(no_best, 2);
  CHECK(labels == std::vector<std::int32_t>{1, -1, 0, -1, 0});
  // No ground truth: everything is background, matched -1.
  run({}, 0);
  CHECK(labels == std::vector<std::int32_t>{0, 0, 0, 0, 0});
  CHECK(matched == std::vector<std::int64_t>{-1, -1, -1, -1, -1});
  CHECK(miou == std::vector<float>{0, 0, 0, 0, 0});
}

TEST_CASE("anchor labels: against the reference on random boxes", "[detection][anchor_labels]") {
  distill_test::rng g(31);
  for (int trial = 0; trial < 30; ++trial) {
    anchor_label_options o;
    o.positive_iou = g.uniform(0.4, 0.8);
    o.negative_iou = g.uniform(0.0, o.positive_iou);
    o.best_anchor_positive = trial % 4 != 3;
    const int A = static_cast<int>(g.integer(0, 60)), G = static_cast<int>(g.integer(0, 6));
    run_anchor_case<double>(g, A, G, false, o);
    run_anchor_case<float>(g, A, G, true, o);  // integer corners: IoU ties exact in float and double
  }
}

TEST_CASE("anchor labels: bad input", "[detection][anchor_labels]") {
  const std::vector<float> anchors = {0, 0, 10, 10, 5, 5, 15, 15};
  std::vector<float> gts = {0, 0, 10, 10};
  std::vector<std::int32_t> labels(2);
  std::vector<std::int64_t> matched(2);
  std::vector<float> miou(2);
  auto call = [&](const anchor_label_options& o, index_t label_count = 2) {
    return anchor_labels(cpu{1}, make_view(anchors.data(), 2, 4), make_view(gts.data(), 1, 4), make_view(labels.data(), label_count),
                         make_view(matched.data(), 2), make_view(miou.data(), 2), o)
        .code();
  };
  CHECK(call({}) == errc::ok);
  CHECK(call({}, 1) == errc::shape_mismatch);
  anchor_label_options o;
  o.positive_iou = 1.5;
  CHECK(call(o) == errc::invalid_argument);
  o.positive_iou = 0.3, o.negative_iou = 0.5;
  CHECK(call(o) == errc::invalid_argument);
  gts[2] = -1;  // inverted
  CHECK(call({}) == errc::invalid_argument);
  gts[2] = std::numeric_limits<float>::quiet_NaN();
  CHECK(call({}) == errc::non_finite);
}

namespace {

struct l1_case {
  int N, D;
  std::vector<double> pred, target, weights;
};

l1_case random_l1(distill_test::rng& g, int N, int D, bool weighted, double beta) {
  l1_case c{N, D, {}, {}, {}};
  for (int i = 0; i < N * D; ++i) {
    const double t = g.normal(), x = g.coin(0.3) ? t + g.uniform(-beta, beta) * 0.9 : t + g.normal(0, 1);  // both branches of h
    c.pred.push_back(x), c.target.push_back(t);
  }
  if (weighted)
    for (int r = 0; r < N; ++r) c.weights.push_back(g.coin(0.4) ? 0.0 : g.uniform(0.1, 2.0));
  return c;
}

int mode_of(reduction r) { return r == reduction::sum ? 0 : (r == reduction::mean ? 1 : 2); }

template <class T>
void check_l1(const l1_case& c, const smooth_l1_options& o) {
  const std::vector<T> pred(c.pred.begin(), c.pred.end()), target(c.target.begin(), c.target.end()), w(c.weights.begin(), c.weights.end());
  const host_view<const T, 1> wv = w.empty() ? host_view<const T, 1>{} : make_view(w.data(), c.N);
  const auto tol = std::is_same_v<T, float> ? distill_test::tol::f32_sum : distill_test::tol::f64;
  const index_t loss_n = o.reduction == reduction::none ? c.N : 1;
  std::vector<T> loss(static_cast<std::size_t>(loss_n), T(-7)), loss2 = loss;
  std::vector<T> grad(c.pred.size(), T(0.25)), grad2(c.pred.size(), T(-3));
  REQUIRE(smooth_l1_forward_backward(cpu{1}, make_view(pred.data(), c.N, c.D), make_view(target.data(), c.N, c.D), wv, make_view(loss.data(), loss_n),
                                     make_view(grad.data(), c.N, c.D), {}, o)
              .ok());
  REQUIRE(smooth_l1_forward(cpu{1}, make_view(pred.data(), c.N, c.D), make_view(target.data(), c.N, c.D), wv, make_view(loss2.data(), loss_n), {}, o).ok());
  REQUIRE(smooth_l1_backward(cpu{1}, make_view(pred.data(), c.N, c.D), make_view(target.data(), c.N, c.D), wv, make_view(grad2.data(), c.N, c.D), {}, o)
              .ok());
  CHECK(loss == loss2);
  CHECK(grad == grad2);
  // Loss against the reference (row by row for none), gradient against finite differences of
  // the reference (g0 * the reduced loss; none: of g0 * sum of the row losses).
  if (o.reduction == reduction::none) {
    std::vector<double> expected;
    for (int r = 0; r < c.N; ++r) {
      const auto first = c.pred.begin() + r * c.D, tfirst = c.target.begin() + r * c.D;
      const double wr = c.weights.empty() ? 1.0 : c.weights[static_cast<std::size_t>(r)];
      expected.push_back(wr * distill_ref::smooth_l1_ref(std::vector<double>(first, first + c.D), std::vector<double>(tfirst, tfirst + c.D), {}, 1, c.D, o.beta, 0));
    }
    CHECK_CLOSE("row losses", loss, expected, tol);
  } else {
    CHECK_CLOSE_SCALAR("loss", static_cast<double>(loss[0]), distill_ref::smooth_l1_ref(c.pred, c.target, c.weights, c.N, c.D, o.beta, mode_of(o.reduction)), tol);
  }
  const int mode = o.reduction == reduction::none ? 0 : mode_of(o.reduction);
  const auto fd = distill_test::numeric_gradient(
      [&](const std::vector<double>& x) { return o.grad_scale * distill_ref::smooth_l1_ref(x, c.target, c.weights, c.N, c.D, o.beta, mode); }, c.pred, 1e-7);
  CHECK_CLOSE("gradient vs finite differences", grad, fd, (std::is_same_v<T, float> ? distill_test::tol::f32_sum : distill_test::tol::fd));
  // accumulate adds into what is there
  smooth_l1_options acc = o;
  acc.accumulate = true;
  std::vector<T> grad3(c.pred.size(), T(0.5));
  REQUIRE(smooth_l1_backward(cpu{1}, make_view(pred.data(), c.N, c.D), make_view(target.data(), c.N, c.D), wv, make_view(grad3.data(), c.N, c.D), {}, acc)
              .ok());
  std::vector<double> shifted(grad.begin(), grad.end());
  for (auto& v : shifted) v += 0.5;
  CHECK_CLOSE("accumulate", grad3, shifted, distill_test::tol::f32);
}

}  // namespace

TEST_CASE("smooth L1: against the reference and finite differences", "[detection][smooth_l1]") {
  distill_test::rng g(32);
  for (reduction red : {reduction::none, reduction::sum, reduction::mean, reduction::batchmean})
    for (double beta : {1.0 / 9.0, 1.0, 0.0})
      for (bool weighted : {false, true}) {
        CAPTURE(to_string(red), beta, weighted);
        const int N = static_cast<int>(g.integer(1, 12)), D = weighted ? 4 : static_cast<int>(g.integer(1, 6));
        const l1_case c = random_l1(g, N, D, weighted, beta == 0 ? 0.1 : beta);
        smooth_l1_options o;
        o.beta = beta, o.reduction = red, o.grad_scale = 1.7f;
        check_l1<double>(c, o);
        check_l1<float>(c, o);
      }
}

TEST_CASE("smooth L1: properties", "[detection][smooth_l1]") {
  // zero at prediction = target; all weights zero with mean: 0 loss and 0 gradient (no NaN)
  const std::vector<float> p = {1, 2, 3, 4, -1, 0.5f, 0, 2};
  std::vector<float> loss(1, -1), grad(8, -1);
  REQUIRE(smooth_l1_forward_backward(cpu{1}, make_view(p.data(), 2, 4), make_view(p.data(), 2, 4), {}, make_view(loss.data(), 1), make_view(grad.data(), 2, 4), {}).ok());
  CHECK(loss[0] == 0);
  CHECK(grad == std::vector<float>(8, 0.0f));
  const std::vector<float> t = {0, 0, 0, 0, 0, 0, 0, 0}, zero_w = {0, 0};
  smooth_l1_options o;
  o.reduction = reduction::mean;
  REQUIRE(smooth_l1_forward_backward(cpu{1}, make_view(p.data(), 2, 4), make_view(t.data(), 2, 4), make_view(zero_w.data(), 2), make_view(loss.data(), 1),
                                     make_view(grad.data(), 2, 4), {}, o)
              .ok());
  CHECK(loss[0] == 0);
  CHECK(grad == std::vector<float>(8, 0.0f));
  // NaN propagates to the loss when not checked, refused when checked
  std::vector<float> bad = p;
  bad[5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE(smooth_l1_forward(cpu{1}, make_view(bad.data(), 2, 4), make_view(t.data(), 2, 4), {}, make_view(loss.data(), 1), {}).ok());
  CHECK(std::isnan(loss[0]));
  smooth_l1_options checked;
  checked.check_finite = true;
  CHECK(smooth_l1_forward(cpu{1}, make_view(bad.data(), 2, 4), make_view(t.data(), 2, 4), {}, make_view(loss.data(), 1), {}, checked).code() == errc::non_finite);
}

TEST_CASE("smooth L1: bad input", "[detection][smooth_l1]") {
  const std::vector<float> p(8, 1.0f), t(8, 0.0f), w = {1, -1};
  std::vector<float> loss(2), grad(8);
  auto fwd = [&](index_t tn, index_t loss_n, const smooth_l1_options& o, host_view<const float, 1> wv = {}) {
    return smooth_l1_forward(cpu{1}, make_view(p.data(), 2, 4), make_view(t.data(), tn, 4), wv, make_view(loss.data(), loss_n), {}, o).code();
  };
  CHECK(fwd(2, 1, {}) == errc::ok);
  CHECK(fwd(1, 1, {}) == errc::shape_mismatch);
  CHECK(fwd(2, 2, {}) == errc::shape_mismatch);  // a reduced loss has extent 1
  smooth_l1_options none;
  none.reduction = reduction::none;
  CHECK(fwd(2, 2, none) == errc::ok);
  smooth_l1_options neg;
  neg.beta = -1;
  CHECK(fwd(2, 1, neg) == errc::invalid_argument);
  CHECK(fwd(2, 1, {}, make_view(w.data(), 2)) == errc::invalid_argument);
  CHECK(fwd(2, 1, {}, make_view(w.data(), 1)) == errc::shape_mismatch);
  CHECK(smooth_l1_backward(cpu{1}, make_view(p.data(), 2, 4), make_view(t.data(), 2, 4), {}, make_view(grad.data(), 1, 4), {}).code() == errc::shape_mismatch);
}

TEST_CASE("smooth L1 and anchor labels: strided views, outputs written only where they should be", "[detection][smooth_l1][anchor_labels]") {
  distill_test::rng g(33);
  using A1 = std::array<index_t, 1>;
  using A2 = std::array<index_t, 2>;
  const int N = 7, D = 4, ld = 6;  // rows padded to 6
  std::vector<double> pred(static_cast<std::size_t>(N * ld)), target(static_cast<std::size_t>(N * ld)), w(static_cast<std::size_t>(2 * N));
  std::vector<double> pd, td, wd;
  for (int r = 0; r < N; ++r) {
    for (int k = 0; k < D; ++k) {
      pred[static_cast<std::size_t>(r * ld + k)] = g.normal(), target[static_cast<std::size_t>(r * ld + k)] = g.normal();
      pd.push_back(pred[static_cast<std::size_t>(r * ld + k)]), td.push_back(target[static_cast<std::size_t>(r * ld + k)]);
    }
    w[static_cast<std::size_t>(2 * r)] = g.uniform(0, 2), wd.push_back(w[static_cast<std::size_t>(2 * r)]);
  }
  distill_test::guarded<double> grad(static_cast<std::size_t>(N * ld)), loss(1);
  const auto pv = make_strided_view(static_cast<const double*>(pred.data()), A2{N, D}, A2{ld, 1});
  const auto tv = make_strided_view(static_cast<const double*>(target.data()), A2{N, D}, A2{ld, 1});
  const auto wv = make_strided_view(static_cast<const double*>(w.data()), A1{N}, A1{2});
  smooth_l1_options o;
  o.reduction = reduction::sum;
  REQUIRE(smooth_l1_forward_backward(cpu{1}, pv, tv, wv, make_view(loss.data(), 1), make_strided_view(grad.data(), A2{N, D}, A2{ld, 1}), {}, o).ok());
  CHECK(grad.intact());
  CHECK(grad.padding_intact(N, D, ld));
  CHECK(loss.intact());
  CHECK_CLOSE_SCALAR("strided loss", loss.data()[0], distill_ref::smooth_l1_ref(pd, td, wd, N, D, o.beta, 0), distill_test::tol::f64);

  // anchor labels into strided outputs
  const std::vector<double> anchors = random_boxes<double>(g, 9, false), gts = random_boxes<double>(g, 3, false);
  distill_test::guarded<std::int32_t> labels(18);
  distill_test::guarded<std::int64_t> matched(18);
  distill_test::guarded<double> miou(18);
  REQUIRE(anchor_labels(cpu{1}, make_view(anchors.data(), 9, 4), make_view(gts.data(), 3, 4), make_strided_view(labels.data(), A1{9}, A1{2}),
                        make_strided_view(matched.data(), A1{9}, A1{2}), make_strided_view(miou.data(), A1{9}, A1{2}))
              .ok());
  CHECK(labels.intact());
  CHECK(matched.intact());
  CHECK(miou.intact());
  CHECK(labels.padding_intact(9, 1, 2));
  CHECK(matched.padding_intact(9, 1, 2));
  CHECK(miou.padding_intact(9, 1, 2));
  const auto ref = distill_ref::anchor_labels_ref(to_ref(anchors), to_ref(gts), 0.7, 0.3, true);
  for (int a = 0; a < 9; ++a) {
    CHECK(labels.data()[2 * a] == ref.labels[static_cast<std::size_t>(a)]);
    CHECK(matched.data()[2 * a] == ref.matched[static_cast<std::size_t>(a)]);
  }
}
