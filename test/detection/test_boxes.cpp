// SPDX-License-Identifier: MIT
// Box operations: hand-computed IoUs, the IoU matrix / clip / coder against the double
// reference on random boxes (float and double, strided views), encode-decode round trip, the
// decode backward against finite differences (with the clamp active and not), bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/detection/boxes.hpp"
#include "reference/detection_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using distill_ref::box;

namespace {

std::vector<box> random_boxes(distill_test::rng& g, int n, double size = 20) {
  std::vector<box> out;
  for (int i = 0; i < n; ++i) {
    const double x = g.uniform(-5, 40), y = g.uniform(-5, 40), w = g.uniform(0.5, size), h = g.uniform(0.5, size);
    out.push_back({x, y, x + w, y + h});
  }
  return out;
}

template <class T>
std::vector<T> flat(const std::vector<box>& b) {
  std::vector<T> v;
  for (const box& x : b)
    for (double c : x) v.push_back(static_cast<T>(c));
  return v;
}

}  // namespace

TEST_CASE("box_iou: hand-computed values", "[detection][boxes]") {
  // [0,0,2,2] vs [1,1,3,3]: I = 1, U = 7; identical boxes 1; disjoint 0; touching edges 0;
  // a box inside another: area ratio; two empty boxes: 0 (not NaN).
  const std::vector<double> a = {0, 0, 2, 2, 0, 0, 2, 2, 0, 0, 1, 1, 0, 0, 4, 4, 3, 3, 3, 3};
  const std::vector<double> b = {1, 1, 3, 3, 0, 0, 2, 2, 1, 0, 2, 1, 1, 1, 2, 3, 3, 3, 3, 3};
  for (int i = 0; i < 5; ++i) {
    double iou = -1;
    REQUIRE(box_iou(cpu{1}, make_view(a.data() + 4 * i, 1, 4), make_view(b.data() + 4 * i, 1, 4), make_view(&iou, 1, 1)).ok());
    const double expected[5] = {1.0 / 7.0, 1.0, 0.0, 2.0 / 16.0, 0.0};
    CHECK_CLOSE_SCALAR("iou case " << i, iou, expected[i], distill_test::tol::f64);
  }
}

TEMPLATE_TEST_CASE("box_iou: matrix against the reference, strided output", "[detection][boxes]", float, double) {
  using T = TestType;
  distill_test::rng g(11);
  const int N = 37, M = 53, ld = M + 3;
  const auto A = random_boxes(g, N), B = random_boxes(g, M);
  const auto a = flat<T>(A), b = flat<T>(B);
  distill_test::guarded<T> out(static_cast<std::size_t>(N) * ld);
  REQUIRE(box_iou(cpu{2}, make_view(a.data(), N, 4), make_view(b.data(), M, 4),
                  make_strided_view(out.data(), std::array<index_t, 2>{N, M}, std::array<index_t, 2>{ld, 1}))
              .ok());
  std::vector<double> expected, actual;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < M; ++j) expected.push_back(distill_ref::iou_ref(A[i], B[j])), actual.push_back(out.data()[i * ld + j]);
  CHECK_CLOSE("iou", actual, expected, (std::is_same_v<T, float> ? distill_test::tol::f32 : distill_test::tol::f64));
  CHECK(out.intact());
  CHECK(out.padding_intact(N, M, ld));
}

TEMPLATE_TEST_CASE("box coder: encode, decode and clip against the reference", "[detection][boxes]", float, double) {
  using T = TestType;
  // float: coordinates up to ~60 are differences of centre and half size (cancellation), so an
  // absolute error of a few ulps of 60.
  const auto tolerance = std::is_same_v<T, float> ? distill_test::tolerance{1e-4, 1e-5} : distill_test::tol::f64;
  distill_test::rng g(12);
  const int N = 41;
  const auto P = random_boxes(g, N), G = random_boxes(g, N);
  const auto p = flat<T>(P), t = flat<T>(G);
  box_coder_options opt;
  opt.weight_x = 10, opt.weight_y = 10, opt.weight_w = 5, opt.weight_h = 5;
  distill_ref::coder_ref ref{10, 10, 5, 5, std::log(1000.0 / 16)};
  std::vector<T> deltas(4 * N), decoded(4 * N), clipped(4 * N);
  REQUIRE(box_encode(cpu{2}, make_view(p.data(), N, 4), make_view(t.data(), N, 4), make_view(deltas.data(), N, 4), opt).ok());
  REQUIRE(box_decode_forward(cpu{2}, make_view(p.data(), N, 4), make_view(deltas.data(), N, 4), make_view(decoded.data(), N, 4), opt).ok());
  std::vector<double> enc, dec;
  for (int i = 0; i < N; ++i) {
    const box e = distill_ref::encode_ref(P[i], G[i], ref);
    const box d = distill_ref::decode_ref(P[i], {double(deltas[4 * i]), double(deltas[4 * i + 1]), double(deltas[4 * i + 2]), double(deltas[4 * i + 3])}, ref);
    enc.insert(enc.end(), e.begin(), e.end());
    dec.insert(dec.end(), d.begin(), d.end());
  }
  CHECK_CLOSE("encode", deltas, enc, tolerance);
  CHECK_CLOSE("decode", decoded, dec, tolerance);
  CHECK_CLOSE("decode(encode(g)) = g", decoded, flat<double>(G), (distill_test::tolerance{1e-3, 1e-5}));

  // Clip in place against min/max by hand.
  clipped = decoded;
  REQUIRE(box_clip(cpu{1}, make_view(clipped.data(), N, 4), make_view(clipped.data(), N, 4), box_clip_options{30, 25}).ok());
  std::vector<double> expected_clip;
  for (int i = 0; i < 4 * N; ++i) expected_clip.push_back(std::min(std::max(double(decoded[i]), 0.0), i % 2 == 0 ? 30.0 : 25.0));
  CHECK_CLOSE("clip", clipped, expected_clip, distill_test::tol::f64);
}

TEST_CASE("box_decode_backward: finite differences, clamp inactive and active", "[detection][boxes]") {
  distill_test::rng g(13);
  const int N = 9;
  const auto P = random_boxes(g, N);
  const auto p = flat<double>(P);
  box_coder_options opt;
  opt.weight_x = 2, opt.weight_y = 3, opt.weight_w = 0.5, opt.weight_h = 1.5;
  opt.max_log_scale = 1.0f;
  std::vector<double> d = g.normals(4 * N, 0.0, 0.3);
  d[2] = 4.0;  // dw / ww = 8 > 1: clamped, zero gradient
  d[7] = 3.0;  // dh / wh = 2 > 1
  const std::vector<double> upstream = g.normals(4 * N);
  auto loss = [&](const std::vector<double>& deltas) {
    std::vector<double> out(4 * N);
    REQUIRE(box_decode_forward(cpu{1}, make_view(p.data(), N, 4), make_view(deltas.data(), N, 4), make_view(out.data(), N, 4), opt).ok());
    double s = 0;
    for (int i = 0; i < 4 * N; ++i) s += upstream[i] * out[i];
    return s;
  };
  std::vector<double> grad(4 * N, 5.0);
  REQUIRE(box_decode_backward(cpu{1}, make_view(p.data(), N, 4), make_view(d.data(), N, 4), make_view(upstream.data(), N, 4),
                              make_view(grad.data(), N, 4), opt)
              .ok());
  CHECK_CLOSE("grad deltas", grad, distill_test::numeric_gradient(loss, d), distill_test::tol::fd);
  CHECK(grad[2] == 0.0);
  CHECK(grad[7] == 0.0);
  // accumulate adds.
  std::vector<double> acc(4 * N, 1.0);
  opt.accumulate = true;
  REQUIRE(box_decode_backward(cpu{1}, make_view(p.data(), N, 4), make_view(d.data(), N, 4), make_view(upstream.data(), N, 4),
                              make_view(acc.data(), N, 4), opt)
              .ok());
  for (auto& x : acc) x -= 1.0;
  CHECK_CLOSE("accumulate", acc, grad, distill_test::tol::f64);
}

TEST_CASE("boxes: bad input is refused with its error code", "[detection][boxes][errors]") {
  const std::vector<double> good = {0, 0, 2, 2, 1, 1, 3, 3};
  std::vector<double> iou(4), out(8);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto iou_of = [&](const std::vector<double>& a) {
    return box_iou(cpu{1}, make_view(a.data(), 2, 4), make_view(good.data(), 2, 4), make_view(iou.data(), 2, 2)).code();
  };
  CHECK(iou_of({0, 0, 2, 2, 1, nan, 3, 3}) == errc::non_finite);
  CHECK(iou_of({0, 0, 2, 2, 3, 1, 1, 3}) == errc::invalid_argument);  // inverted
  CHECK(box_iou(cpu{1}, make_view(good.data(), 2, 4), make_view(good.data(), 2, 4), make_view(iou.data(), 1, 4)).code() ==
        errc::shape_mismatch);
  CHECK(box_iou(cpu{1}, make_view(good.data(), 4, 2), make_view(good.data(), 2, 4), make_view(iou.data(), 4, 2)).code() ==
        errc::shape_mismatch);
  // Zero boxes are fine, even without memory.
  CHECK(box_iou(cpu{1}, host_view<const double, 2>(nullptr, {0, 4}, {4, 1}), make_view(good.data(), 2, 4),
                host_view<double, 2>(nullptr, {0, 2}, {2, 1}))
            .ok());
  // Coder: zero-width proposal, bad weights.
  const std::vector<double> flat_box = {0, 0, 0, 2, 1, 1, 3, 3};
  CHECK(box_encode(cpu{1}, make_view(flat_box.data(), 2, 4), make_view(good.data(), 2, 4), make_view(out.data(), 2, 4)).code() ==
        errc::invalid_argument);
  box_coder_options bad;
  bad.weight_w = 0;
  CHECK(box_decode_forward(cpu{1}, make_view(good.data(), 2, 4), make_view(good.data(), 2, 4), make_view(out.data(), 2, 4), bad).code() ==
        errc::invalid_argument);
  CHECK(box_clip(cpu{1}, make_view(good.data(), 2, 4), make_view(out.data(), 2, 4), box_clip_options{-1, 3}).code() ==
        errc::invalid_argument);
}

TEST_CASE("box_match: best target per box against a scan of the reference IoU", "[detection][boxes]") {
  distill_test::rng g(14);
  const int N = 60, M = 7;
  auto B = random_boxes(g, N), G = random_boxes(g, M);
  B[3] = G[2];  // an exact match
  B[4] = {100, 100, 101, 101};  // overlaps nothing: the first target, IoU 0
  const auto b = flat<double>(B), t = flat<double>(G);
  std::vector<std::int64_t> matched(N, -9);
  std::vector<double> best(N, -1);
  REQUIRE(box_match(cpu{2}, make_view(b.data(), N, 4), make_view(t.data(), M, 4), make_view(matched.data(), N), make_view(best.data(), N)).ok());
  for (int i = 0; i < N; ++i) {
    std::int64_t arg = 0;
    for (int j = 1; j < M; ++j)
      if (distill_ref::iou_ref(B[i], G[j]) > distill_ref::iou_ref(B[i], G[arg])) arg = j;
    CHECK(matched[i] == arg);
    CHECK_CLOSE_SCALAR("best iou", best[i], distill_ref::iou_ref(B[i], G[arg]), distill_test::tol::f64);
  }
  CHECK(matched[3] == 2);
  CHECK(best[3] == 1.0);
  CHECK(matched[4] == 0);
  CHECK(best[4] == 0.0);
  // No targets: -1 and 0.
  REQUIRE(box_match(cpu{1}, make_view(b.data(), N, 4), host_view<const double, 2>(nullptr, {0, 4}, {4, 1}), make_view(matched.data(), N),
                    make_view(best.data(), N))
              .ok());
  CHECK(matched == std::vector<std::int64_t>(N, -1));
  CHECK(best == std::vector<double>(N, 0.0));
}
