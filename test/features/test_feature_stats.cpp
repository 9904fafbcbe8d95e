// SPDX-License-Identifier: MIT
// Feature statistics and the statistics-matching loss, CPU-only checks: Welford/Chan statistics in
// double and float against the two-pass reference (large offsets, strided views with canaries),
// constant channels, single tokens, bad inputs, NaN/inf reporting, masks that leave no token.
// Against the double reference on every backend: features_cases.hpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/features/feature_stats.hpp"
#include "features_test_util.hpp"
#include "reference/features_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;
using features_ref::shape4;
using features_test::padded;

namespace {

features_ref::shape4 random_shape(distill_test::rng& g) {
  const long pick = g.integer(0, 5);
  features_ref::shape4 s{g.integer(1, 3), g.integer(1, 4), g.integer(1, 9), g.integer(1, 9)};
  if (pick == 0) s.H = s.W = 1;                                   // 1x1 spatial map
  if (pick == 1) s.H = g.integer(9, 14), s.W = g.integer(9, 14);  // several lane steps + tail
  return s;
}

}  // namespace

TEST_CASE("features: Welford/Chan statistics match the two-pass reference", "[features][stats]") {
  distill_test::rng g(101);
  for (int trial = 0; trial < 40; ++trial) {
    const shape4 s = random_shape(g);
    const bool unbiased = s.plane() > 1 && g.coin();
    const double eps = g.coin() ? 1e-5 : g.uniform(1e-3, 1.0);
    auto x = features_test::features(g, s, 0.4);
    if (trial % 5 == 0)  // a large offset: catastrophic cancellation for a naive sum of squares
      for (double& v : x) v = 1e4 + 1e-2 * v;
    std::vector<double> rm, rs;
    features_ref::channel_stats(x, s, unbiased, eps, rm, rs);
    feature_stats_options o;
    o.eps = eps;
    o.unbiased = unbiased;
    CAPTURE(trial, s.B, s.C, s.H, s.W, unbiased, eps);
    {
      padded<double, 4> px(features_test::ext(s), features_test::random_pads(g), g.coin(0.3) ? 2 : 1);
      px.set(x);
      std::vector<double> m(s.B * s.C), sd(s.B * s.C);
      REQUIRE(channel_stats_forward(cpu{2}, px.cview(), make_view(m.data(), s.B, s.C), make_view(sd.data(), s.B, s.C), o).ok());
      CHECK_CLOSE("mean f64", m, rm, distill_test::tol::f64);
      CHECK_CLOSE("std f64", sd, rs, (distill_test::tolerance{1e-11, 1e-9}));
    }
    {
      const auto xf = features_test::rounded<float>(x);
      features_ref::channel_stats(xf, s, unbiased, eps, rm, rs);
      padded<float, 4> px(features_test::ext(s), features_test::random_pads(g));
      px.set(xf);
      std::vector<float> m(s.B * s.C), sd(s.B * s.C);
      REQUIRE(channel_stats_forward(cpu{1}, px.cview(), make_view(m.data(), s.B, s.C), make_view(sd.data(), s.B, s.C), o).ok());
      // The offset case has mean 1e4 and std 1e-2: float resolves std to ~1e-3 relative of 1e4 ulp.
      CHECK_CLOSE("mean f32", m, rm, (distill_test::tolerance{1e-6, 2e-6}));
      CHECK_CLOSE("std f32", sd, rs, (distill_test::tolerance{2e-5, 2e-3}));
    }
  }
}

TEST_CASE("features: constant channels have zero variance and sigma = sqrt(eps)", "[features][stats]") {
  for (long n : {1L, 7L, 33L, 100L, 1000L}) {
    std::vector<float> x(static_cast<std::size_t>(n), 0.1f);
    float m = 0, sd = 0;
    REQUIRE(channel_stats_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 1, 1, 1, n), make_view(&m, 1, 1),
                                  make_view(&sd, 1, 1))
                .ok());
    CHECK(m == 0.1f);
    CHECK(sd == std::sqrt(1e-5f));
  }
}

TEST_CASE("features: a single token per sample", "[features][stats][tokens]") {
  const std::vector<float> x = {1.5f, -2.0f, 3.0f, 0.25f};  // [B=2, L=1, D=2]
  std::vector<float> m(4), sd(4);
  REQUIRE(token_stats_forward(cpu{1}, make_view(x.data(), 2, 1, 2), {}, make_view(m.data(), 2, 2), make_view(sd.data(), 2, 2)).ok());
  for (int i = 0; i < 4; ++i) {
    CHECK(m[i] == x[i]);
    CHECK(sd[i] == std::sqrt(1e-5f));
  }
  feature_stats_options ub;
  ub.unbiased = true;
  const status st = token_stats_forward(cpu{1}, make_view(x.data(), 2, 1, 2), {}, make_view(m.data(), 2, 2), {}, ub);
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("single valid token") != std::string::npos);
}

TEST_CASE("features: stats matching bad inputs", "[features][stats_matching][errors]") {
  std::vector<float> a(2 * 3 * 4 * 4, 1.0f), b(2 * 4 * 4 * 4, 1.0f), g(a.size());
  float loss[1];
  const auto s = make_view(static_cast<const float*>(a.data()), 2, 3, 4, 4);
  const auto gs = make_view(g.data(), 2, 3, 4, 4);
  // channel mismatch
  status st = stats_matching_forward_backward(cpu{1}, s, make_view(static_cast<const float*>(b.data()), 2, 4, 4, 4),
                                              make_view(loss, 1), gs, {});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'teacher'") != std::string::npos);
  // batch mismatch
  st = stats_matching_forward(cpu{1}, s, make_view(static_cast<const float*>(b.data()), 1, 3, 4, 4), make_view(loss, 1), {});
  CHECK(st.code() == errc::shape_mismatch);
  // gradient of the wrong shape
  st = stats_matching_backward(cpu{1}, s, s, make_view(g.data(), 2, 3, 4, 3), {});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'grad_student'") != std::string::npos);
  // eps <= 0
  stats_matching_options o;
  o.eps = 0;
  st = stats_matching_forward(cpu{1}, s, s, make_view(loss, 1), {}, o);
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'eps'") != std::string::npos);
  o.eps = -1;
  CHECK(stats_matching_forward(cpu{1}, s, s, make_view(loss, 1), {}, o).code() == errc::invalid_argument);
  // reduction none refused
  o = {};
  o.reduction = reduction::none;
  CHECK(stats_matching_forward(cpu{1}, s, s, make_view(loss, 1), {}, o).code() == errc::invalid_argument);
  // unbiased variance of a 1x1 map
  o = {};
  o.unbiased = true;
  st = stats_matching_forward(cpu{1}, make_view(static_cast<const float*>(a.data()), 2, 3, 1, 1),
                              make_view(static_cast<const float*>(a.data()), 2, 3, 1, 1), make_view(loss, 1), {}, o);
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("single spatial position") != std::string::npos);
  // absent loss in forward, absent gradient in backward
  CHECK(stats_matching_forward(cpu{1}, s, s, host_view<float, 1>{}, {}).code() == errc::invalid_argument);
  CHECK(stats_matching_backward(cpu{1}, s, s, host_view<float, 4>{}, {}).code() == errc::invalid_argument);
  // negative stride
  const auto neg = make_strided_view(static_cast<const float*>(a.data()) + a.size() - 1, std::array<index_t, 4>{2, 3, 4, 4},
                                     std::array<index_t, 4>{48, 16, 4, -1});
  CHECK(stats_matching_forward(cpu{1}, neg, s, make_view(loss, 1), {}).code() == errc::unsupported_layout);
  // empty extent
  CHECK(stats_matching_forward(cpu{1}, make_view(static_cast<const float*>(a.data()), 2, 0, 4, 4),
                               make_view(static_cast<const float*>(a.data()), 2, 0, 4, 4), make_view(loss, 1), {})
            .code() == errc::shape_mismatch);
}

TEST_CASE("features: NaN and inf inputs are reported and propagate", "[features][stats_matching][errors]") {
  std::vector<double> s(1 * 2 * 3 * 3, 0.5), t(s.size(), 0.25), g(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) s[i] += 0.1 * double(i), t[i] -= 0.05 * double(i);
  s[2] = std::numeric_limits<double>::quiet_NaN();  // channel 0 of the student
  double loss[1];
  status st = stats_matching_forward_backward(cpu{1}, make_view(static_cast<const double*>(s.data()), 1, 2, 3, 3),
                                              make_view(static_cast<const double*>(t.data()), 1, 2, 3, 3), make_view(loss, 1),
                                              make_view(g.data(), 1, 2, 3, 3), {});
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("'student'") != std::string::npos);
  CHECK(std::isnan(loss[0]));
  CHECK(std::isnan(g[0]));
  CHECK(std::isfinite(g[9]));  // channel 1 is unaffected
  s[2] = 0.5;
  t[12] = std::numeric_limits<double>::infinity();  // channel 1 of the teacher
  st = stats_matching_forward(cpu{1}, make_view(static_cast<const double*>(s.data()), 1, 2, 3, 3),
                              make_view(static_cast<const double*>(t.data()), 1, 2, 3, 3), make_view(loss, 1), {});
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("'teacher'") != std::string::npos);
}

TEST_CASE("features: masks that leave no token are refused", "[features][stats_matching][tokens][errors]") {
  std::vector<float> x(2 * 3 * 4, 1.0f), g(x.size());
  std::vector<std::uint8_t> m = {1, 1, 0, 0, 0, 0};  // sample 1 fully masked
  float loss[1];
  const auto xv = make_view(static_cast<const float*>(x.data()), 2, 3, 4);
  status st = stats_matching_forward_backward(cpu{1}, xv, make_view(static_cast<const std::uint8_t*>(m.data()), 2, 3), xv,
                                              host_view<const std::uint8_t, 2>{}, make_view(loss, 1), make_view(g.data(), 2, 3, 4), {});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'student_mask'") != std::string::npos);
  CHECK(st.message().find("sample 1") != std::string::npos);
  st = stats_matching_forward(cpu{1}, xv, host_view<const std::uint8_t, 2>{}, xv,
                              make_view(static_cast<const std::uint8_t*>(m.data()), 2, 3), make_view(loss, 1), {});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'teacher_mask'") != std::string::npos);
  // mask of the wrong shape
  st = stats_matching_forward(cpu{1}, xv, make_view(static_cast<const std::uint8_t*>(m.data()), 3, 2), xv,
                              host_view<const std::uint8_t, 2>{}, make_view(loss, 1), {});
  CHECK(st.code() == errc::shape_mismatch);
  // feature mismatch
  std::vector<float> y(2 * 3 * 5, 1.0f);
  st = stats_matching_forward(cpu{1}, xv, host_view<const std::uint8_t, 2>{}, make_view(static_cast<const float*>(y.data()), 2, 3, 5),
                              host_view<const std::uint8_t, 2>{}, make_view(loss, 1), {});
  CHECK(st.code() == errc::shape_mismatch);
}
