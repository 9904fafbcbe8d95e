// SPDX-License-Identifier: MIT
// Box geometry features: hand-computed values for two pairs, the library against the reference
// formulas on random boxes (pair list and all-pairs forms), the backward against finite
// differences (overlapping and disjoint boxes, away from edge ties), bad boxes, canaries.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "distill/relational/box_geometry.hpp"
#include "reference/relational_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
constexpr int F = box_pair_feature_count;

namespace {

std::vector<double> features_of(const std::vector<double>& s, const std::vector<double>& o) {
  std::vector<double> f(F);
  REQUIRE(box_pair_features_forward(cpu{1}, box_pairs{make_view(s.data(), 1, 4), make_view(o.data(), 1, 4)}, make_view(f.data(), 1, F)).ok());
  return f;
}

/// A random box inside the unit square with sides in [0.05, 0.5].
std::vector<double> random_box(distill_test::rng& g) {
  const double w = g.uniform(0.05, 0.5), h = g.uniform(0.05, 0.5);
  const double x = g.uniform(0.0, 1.0 - w), y = g.uniform(0.0, 1.0 - h);
  return {x, y, x + w, y + h};
}

}  // namespace

TEST_CASE("box features: hand-computed values", "[relational][box]") {
  SECTION("overlapping boxes") {
    // s: w 0.4, h 0.4; o: w 0.6, h 0.4; union [0.1, 0.9] x [0.1, 0.6]; intersection 0.2 x 0.3.
    const std::vector<double> s = {0.1, 0.2, 0.5, 0.6}, o = {0.3, 0.1, 0.9, 0.5};
    const std::vector<double> expected = {0.1, 0.2, 0.5, 0.6, 0.16,
                                          -1.0 / 3.0, 0.25, std::log(2.0 / 3.0), 0.0,
                                          0.5, -0.25, std::log(1.5), 0.0,
                                          0.4,
                                          0.3, 0.1, 0.9, 0.5, 0.24,
                                          3.0 / 17.0};
    CHECK_CLOSE("features", features_of(s, o), expected, (distill_test::tolerance{1e-14, 1e-13}));
  }
  SECTION("disjoint boxes: IoU 0, union box spans both") {
    const std::vector<double> s = {0.0, 0.0, 0.2, 0.1}, o = {0.5, 0.5, 0.6, 0.9};
    const std::vector<double> expected = {0.0, 0.0, 0.2, 0.1, 0.02,
                                          -5.0, -1.25, std::log(2.0), std::log(0.25),
                                          2.5, 5.0, std::log(0.5), std::log(4.0),
                                          0.54,
                                          0.5, 0.5, 0.6, 0.9, 0.04,
                                          0.0};
    CHECK_CLOSE("features", features_of(s, o), expected, (distill_test::tolerance{1e-14, 1e-13}));
  }
  SECTION("a box with itself") {
    const std::vector<double> s = {0.2, 0.3, 0.4, 0.7};
    const auto f = features_of(s, s);
    for (int k : {5, 6, 7, 8, 9, 10, 11, 12}) CHECK(f[static_cast<std::size_t>(k)] == 0.0);
    CHECK(f[19] == Approx(1.0));
    CHECK(f[13] == Approx(f[4]));
  }
}

TEST_CASE("box features: library against the reference formulas, both forms", "[relational][box]") {
  distill_test::rng g(301);
  const long B = 3, N = 5;
  std::vector<double> boxes;
  for (long k = 0; k < B * N; ++k) {
    const auto b = random_box(g);
    boxes.insert(boxes.end(), b.begin(), b.end());
  }
  distill_test::guarded<double> all(static_cast<std::size_t>(B * N * N * F));
  REQUIRE(box_pair_features_all_pairs_forward(cpu{2}, make_view(static_cast<const double*>(boxes.data()), B, N, 4),
                                              make_view(all.data(), B, N, N, F))
              .ok());
  CHECK(all.intact());
  // Pair list form on the same pairs, float.
  std::vector<float> sf, of;
  std::vector<double> expected;
  for (long b = 0; b < B; ++b)
    for (long i = 0; i < N; ++i)
      for (long j = 0; j < N; ++j) {
        const double* s = &boxes[static_cast<std::size_t>((b * N + i) * 4)];
        const double* o = &boxes[static_cast<std::size_t>((b * N + j) * 4)];
        const auto f = distill_ref::box_features(s, o);
        expected.insert(expected.end(), f.begin(), f.end());
        for (int k = 0; k < 4; ++k) sf.push_back(static_cast<float>(s[k])), of.push_back(static_cast<float>(o[k]));
      }
  CHECK_CLOSE("all pairs (double)", all.contents(), expected, (distill_test::tolerance{1e-13, 1e-12}));
  const long P = B * N * N;
  // Strided float views: boxes with a row stride of 6, features with 23.
  std::vector<float> sp(static_cast<std::size_t>(P * 6), 9.f), op(static_cast<std::size_t>(P * 6), 9.f);
  for (long p = 0; p < P; ++p)
    for (int k = 0; k < 4; ++k) sp[static_cast<std::size_t>(p * 6 + k)] = sf[static_cast<std::size_t>(p * 4 + k)], op[static_cast<std::size_t>(p * 6 + k)] = of[static_cast<std::size_t>(p * 4 + k)];
  distill_test::guarded<float> feat(static_cast<std::size_t>(P * 23));
  REQUIRE(box_pair_features_forward(cpu{2}, box_pairs{make_strided_view(static_cast<const float*>(sp.data()), std::array<index_t, 2>{P, 4}, std::array<index_t, 2>{6, 1}),
                                    make_strided_view(static_cast<const float*>(op.data()), std::array<index_t, 2>{P, 4}, std::array<index_t, 2>{6, 1})},
                                    make_strided_view(feat.data(), std::array<index_t, 2>{P, F}, std::array<index_t, 2>{23, 1}))
              .ok());
  CHECK(feat.intact());
  CHECK(feat.padding_intact(static_cast<std::size_t>(P), F, 23));
  std::vector<float> got;
  for (long p = 0; p < P; ++p)
    for (int k = 0; k < F; ++k) got.push_back(feat.data()[p * 23 + k]);
  // Offsets divide by widths down to 0.05 and logs of ratios: float relative error ~1e-6.
  CHECK_CLOSE("pair list (float)", got, expected, (distill_test::tolerance{2e-5, 2e-5}));
}

TEST_CASE("box features: backward against finite differences", "[relational][box]") {
  distill_test::rng g(302);
  int overlapping = 0, disjoint = 0;
  for (int trial = 0; trial < 60; ++trial) {
    auto s = random_box(g), o = random_box(g);
    // Keep every edge pair at least 1e-3 apart so no max/min ties within the step.
    bool tie = false;
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
        if ((a % 2) == (b % 2) && std::fabs(s[static_cast<std::size_t>(a)] - o[static_cast<std::size_t>(b)]) < 1e-3) tie = true;
    if (tie) continue;
    const std::vector<double> gf = g.normals(F);
    std::vector<double> gs(4, 0.5), go(4, 0.5);  // accumulate into 0.5
    box_features_options opt;
    opt.accumulate = true;
    REQUIRE(box_pair_features_backward(cpu{1}, box_pairs{make_view(static_cast<const double*>(s.data()), 1, 4), make_view(static_cast<const double*>(o.data()), 1, 4)},
                                       make_view(static_cast<const double*>(gf.data()), 1, F), box_pair_grads{make_view(gs.data(), 1, 4), make_view(go.data(), 1, 4)}, opt)
                .ok());
    auto objective = [&](const std::vector<double>& ss, const std::vector<double>& oo) {
      const auto f = distill_ref::box_features(ss.data(), oo.data());
      double L = 0;
      for (int k = 0; k < F; ++k) L += gf[static_cast<std::size_t>(k)] * f[static_cast<std::size_t>(k)];
      return L;
    };
    auto fd_s = distill_test::numeric_gradient([&](const std::vector<double>& x) { return objective(x, o); }, s);
    auto fd_o = distill_test::numeric_gradient([&](const std::vector<double>& x) { return objective(s, x); }, o);
    for (auto* v : {&fd_s, &fd_o})
      for (double& x : *v) x += 0.5;
    const double iou = distill_ref::box_features(s.data(), o.data())[19];
    (iou > 0 ? overlapping : disjoint) += 1;
    INFO("trial " << trial << " IoU " << iou);
    CHECK_CLOSE("d subject", gs, fd_s, (distill_test::tolerance{1e-5, 1e-5}));
    CHECK_CLOSE("d object", go, fd_o, (distill_test::tolerance{1e-5, 1e-5}));
  }
  CHECK(overlapping >= 3);
  CHECK(disjoint >= 3);
}

TEST_CASE("box features: bad boxes give clear errors", "[relational][box][errors]") {
  std::vector<float> s = {0.1f, 0.1f, 0.3f, 0.3f}, o = {0.2f, 0.2f, 0.4f, 0.5f}, f(F), gs(4), gf(F, 1.0f);
  const cpu ctx{1};
  auto run = [&] {
    return box_pair_features_forward(ctx, box_pairs{make_view(static_cast<const float*>(s.data()), 1, 4),
                                     make_view(static_cast<const float*>(o.data()), 1, 4)}, make_view(f.data(), 1, F));
  };
  REQUIRE(run().ok());
  s[2] = 0.1f;  // zero width
  CHECK(run().code() == errc::invalid_argument);
  s[2] = 0.05f;  // inverted
  CHECK(run().code() == errc::invalid_argument);
  s[2] = std::numeric_limits<float>::quiet_NaN();
  CHECK(run().code() == errc::non_finite);
  s[2] = 0.3f;
  o[1] = std::numeric_limits<float>::infinity();
  CHECK(run().code() == errc::non_finite);
  o[1] = 0.2f;
  CHECK(box_pair_features_forward(ctx, box_pairs{make_view(static_cast<const float*>(s.data()), 1, 4), make_view(static_cast<const float*>(o.data()), 1, 4)},
                                  make_view(f.data(), 1, F - 1))
            .code() == errc::shape_mismatch);
  CHECK(box_pair_features_forward(ctx, box_pairs{make_view(static_cast<const float*>(s.data()), 1, 4), make_view(static_cast<const float*>(o.data()), 2, 2)},
                                  make_view(f.data(), 1, F))
            .code() == errc::shape_mismatch);
  CHECK(box_pair_features_backward(ctx, box_pairs{make_view(static_cast<const float*>(s.data()), 1, 4), make_view(static_cast<const float*>(o.data()), 1, 4)},
                                   make_view(static_cast<const float*>(gf.data()), 1, F), box_pair_grads{make_view(gs.data(), 1, 3), host_view<float, 2>{}})
            .code() == errc::shape_mismatch);
  std::vector<float> bad = {0.5f, 0.5f, 0.4f, 0.6f};
  std::vector<float> all(1 * 1 * 1 * F);
  CHECK(box_pair_features_all_pairs_forward(ctx, make_view(static_cast<const float*>(bad.data()), 1, 1, 4), make_view(all.data(), 1, 1, 1, F)).code() ==
        errc::invalid_argument);
}
