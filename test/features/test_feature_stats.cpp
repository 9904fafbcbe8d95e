// SPDX-License-Identifier: MIT
// Feature statistics and the statistics-matching loss (CPU): against the double reference, the
// reference's analytic gradient and the library's backward against central finite differences,
// strided views with canaries, constant channels, masked tokens, every option, bad inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/features/feature_stats.hpp"
#include "features_test_util.hpp"
#include "reference/features_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using namespace distill;
using features_ref::shape4;
using features_test::padded;

namespace {

features_ref::red to_ref(reduction r) {
  return r == reduction::sum ? features_ref::red::sum : r == reduction::batchmean ? features_ref::red::batchmean
                                                                                   : features_ref::red::mean;
}
features_ref::stats_matching_opts to_ref(const stats_matching_options& o) {
  return {o.eps, o.unbiased, o.mean_weight, o.std_weight, to_ref(o.reduction)};
}

shape4 random_shape(distill_test::rng& g, bool allow_single = true) {
  const long pick = g.integer(0, 5);
  shape4 s{g.integer(1, 3), g.integer(1, 4), g.integer(1, 9), g.integer(1, 9)};
  if (pick == 0 && allow_single) s.H = s.W = 1;          // 1x1 spatial map
  if (pick == 1) s.H = g.integer(9, 14), s.W = g.integer(9, 14);  // several lane steps + tail
  if (!allow_single && s.H * s.W < 2) s.W = 2;
  return s;
}

std::vector<double> random_features(distill_test::rng& g, const shape4& s, bool constant_channels) {
  std::vector<double> x(static_cast<std::size_t>(s.size()));
  for (long b = 0; b < s.B; ++b)
    for (long c = 0; c < s.C; ++c) {
      const double mu = g.normal(0, 2), sd = g.uniform(0.3, 2.0);
      const bool constant = constant_channels && g.coin(0.4);
      const double k = g.normal(0, 1);
      for (long h = 0; h < s.H; ++h)
        for (long w = 0; w < s.W; ++w) x[s.at(b, c, h, w)] = constant ? k : g.normal(mu, sd);
    }
  return x;
}

std::array<index_t, 4> pads(distill_test::rng& g) {
  return {features_test::random_pad(g), features_test::random_pad(g), features_test::random_pad(g),
          features_test::random_pad(g)};
}
std::array<index_t, 4> ext(const shape4& s) { return {s.B, s.C, s.H, s.W}; }

/// Runs stats_matching_forward_backward on padded buffers of type T; returns the loss.
template <class T>
double run_stats_matching(const std::vector<double>& s, const shape4& ss, const std::vector<double>& t, const shape4& ts,
                          const stats_matching_options& o, std::vector<double>& grad, distill_test::rng& g, int threads,
                          const std::vector<double>& grad_init = {}) {
  padded<T, 4> ps(ext(ss), pads(g), g.coin(0.25) ? 2 : 1), pt(ext(ts), pads(g)), pg(ext(ss), pads(g), g.coin(0.25) ? 3 : 1);
  ps.set(s);
  pt.set(t);
  if (!grad_init.empty()) pg.set(grad_init);
  accum_t<T> loss[1] = {-1};
  const status st = stats_matching_forward_backward(cpu{threads}, ps.cview(), pt.cview(), make_view(loss, 1), pg.view(), {}, o);
  REQUIRE(st.ok());
  CHECK(pg.untouched_outside_view());
  grad = pg.get();
  return loss[0];
}

}  // namespace

TEST_CASE("features: Welford/Chan statistics match the two-pass reference", "[features][stats]") {
  distill_test::rng g(101);
  for (int trial = 0; trial < 40; ++trial) {
    const shape4 s = random_shape(g, true);
    const bool unbiased = s.plane() > 1 && g.coin();
    const double eps = g.coin() ? 1e-5 : g.uniform(1e-3, 1.0);
    auto x = random_features(g, s, true);
    if (trial % 5 == 0)  // a large offset: catastrophic cancellation for a naive sum of squares
      for (double& v : x) v = 1e4 + 1e-2 * v;
    std::vector<double> rm, rs;
    features_ref::channel_stats(x, s, unbiased, eps, rm, rs);
    feature_stats_options o;
    o.eps = eps;
    o.unbiased = unbiased;
    CAPTURE(trial, s.B, s.C, s.H, s.W, unbiased, eps);
    {
      padded<double, 4> px(ext(s), pads(g), g.coin(0.3) ? 2 : 1);
      px.set(x);
      std::vector<double> m(s.B * s.C), sd(s.B * s.C);
      REQUIRE(channel_stats_forward(cpu{2}, px.cview(), make_view(m.data(), s.B, s.C), make_view(sd.data(), s.B, s.C), o).ok());
      CHECK_CLOSE("mean f64", m, rm, distill_test::tol::f64);
      CHECK_CLOSE("std f64", sd, rs, (distill_test::tolerance{1e-11, 1e-9}));
    }
    {
      const auto xf = features_test::rounded<float>(x);
      features_ref::channel_stats(xf, s, unbiased, eps, rm, rs);
      padded<float, 4> px(ext(s), pads(g));
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

TEST_CASE("features: channel_stats_backward against finite differences", "[features][stats][grad]") {
  distill_test::rng g(102);
  for (int trial = 0; trial < 12; ++trial) {
    const shape4 s = random_shape(g, true);
    const bool unbiased = s.plane() > 1 && g.coin();
    const auto x = random_features(g, s, true);
    const auto a = g.normals(s.B * s.C), b = g.normals(s.B * s.C);
    feature_stats_options o;
    o.unbiased = unbiased;
    o.eps = 1e-3;
    const bool use_mean = trial % 3 != 1, use_std = trial % 3 != 2;
    auto f = [&](const std::vector<double>& v) {
      std::vector<double> m, sd;
      features_ref::channel_stats(v, s, unbiased, o.eps, m, sd);
      double l = 0;
      for (std::size_t i = 0; i < m.size(); ++i) l += (use_mean ? a[i] * m[i] : 0) + (use_std ? b[i] * sd[i] : 0);
      return l;
    };
    const auto fd = distill_test::numeric_gradient(f, x);
    padded<double, 4> px(ext(s), pads(g)), pgx(ext(s), pads(g));
    px.set(x);
    const host_view<const double, 2> gm = use_mean ? make_view(a.data(), s.B, s.C) : host_view<const double, 2>{};
    const host_view<const double, 2> gs = use_std ? make_view(b.data(), s.B, s.C) : host_view<const double, 2>{};
    REQUIRE(channel_stats_backward(cpu{2}, px.cview(), gm, gs, pgx.view(), o).ok());
    CAPTURE(trial, s.B, s.C, s.H, s.W, unbiased, use_mean, use_std);
    CHECK_CLOSE("grad_x", pgx.get(), fd, distill_test::tol::fd);
    CHECK(pgx.untouched_outside_view());
  }
}

TEST_CASE("features: token statistics with a mask", "[features][stats][tokens]") {
  distill_test::rng g(103);
  for (int trial = 0; trial < 16; ++trial) {
    const long B = g.integer(1, 3), L = g.integer(1, 9), D = trial == 3 ? 300 : g.integer(1, 40);  // 300: two feature blocks
    const bool unbiased = L > 2 && g.coin();
    std::vector<std::uint8_t> mask;
    if (trial % 3 != 0) {
      mask.assign(B * L, 1);
      for (long b = 0; b < B; ++b)
        for (long l = 0; l < L; ++l) mask[b * L + l] = g.coin(0.7);
      for (long b = 0; b < B; ++b) mask[b * L] = 1, mask[b * L + L - 1] = 1;  // at least one (two) valid
    }
    const bool two_valid = [&] {
      for (long b = 0; b < B; ++b) {
        long v = 0;
        for (long l = 0; l < L; ++l) v += mask.empty() || mask[b * L + l];
        if (v < 2) return false;
      }
      return true;
    }();
    const bool ub = unbiased && two_valid;
    auto x = g.normals(B * L * D, 0.5, 1.5);
    feature_stats_options o;
    o.unbiased = ub;
    o.eps = 1e-4;
    std::vector<double> rm, rs;
    features_ref::token_stats(x, B, L, D, mask, ub, o.eps, rm, rs);
    padded<double, 3> px({B, L, D}, {1, g.integer(0, 2), g.integer(0, 3)}, g.coin(0.3) ? 2 : 1);
    px.set(x);
    const host_view<const std::uint8_t, 2> mv = mask.empty() ? host_view<const std::uint8_t, 2>{} : make_view(mask.data(), B, L);
    std::vector<double> m(B * D), sd(B * D);
    REQUIRE(token_stats_forward(cpu{2}, px.cview(), mv, make_view(m.data(), B, D), make_view(sd.data(), B, D), o).ok());
    CAPTURE(trial, B, L, D, ub, mask.empty());
    CHECK_CLOSE("token mean", m, rm, distill_test::tol::f64);
    CHECK_CLOSE("token std", sd, rs, (distill_test::tolerance{1e-11, 1e-9}));

    // backward against finite differences; masked tokens get exactly zero
    const auto a = g.normals(B * D), b = g.normals(B * D);
    auto f = [&](const std::vector<double>& v) {
      std::vector<double> mm, ss;
      features_ref::token_stats(v, B, L, D, mask, ub, o.eps, mm, ss);
      double l = 0;
      for (std::size_t i = 0; i < mm.size(); ++i) l += a[i] * mm[i] + b[i] * ss[i];
      return l;
    };
    if (B * L * D <= 400) {
      const auto fd = distill_test::numeric_gradient(f, x);
      padded<double, 3> pg({B, L, D}, {0, 1, 1});
      pg.set(std::vector<double>(B * L * D, 7.0));  // overwritten, masked tokens included
      REQUIRE(token_stats_backward(cpu{2}, px.cview(), mv, make_view(a.data(), B, D), make_view(b.data(), B, D), pg.view(), o).ok());
      CHECK_CLOSE("token grad", pg.get(), fd, distill_test::tol::fd);
      CHECK(pg.untouched_outside_view());
    }
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

TEST_CASE("features: stats matching loss and gradient, every option", "[features][stats_matching]") {
  distill_test::rng g(104);
  for (int trial = 0; trial < 48; ++trial) {
    shape4 ss = random_shape(g, true);
    shape4 ts = ss;
    if (g.coin(0.4)) ts.H = g.integer(1, 8), ts.W = g.integer(1, 8);  // teacher spatial size may differ
    stats_matching_options o;
    o.unbiased = ss.plane() > 1 && ts.plane() > 1 && g.coin();
    o.eps = g.coin() ? 1e-5 : 1e-2;
    const int wpick = trial % 4;
    o.mean_weight = wpick == 3 ? 0.0 : g.uniform(0.2, 2);
    o.std_weight = wpick == 2 ? 0.0 : g.uniform(0.2, 2);  // 0: the mean-only statm_loss
    o.reduction = trial % 3 == 0 ? reduction::mean : trial % 3 == 1 ? reduction::batchmean : reduction::sum;
    o.grad_scale = g.coin() ? 1.0 : g.uniform(0.1, 3);
    const auto s = random_features(g, ss, true), t = random_features(g, ts, true);
    const auto ro = to_ref(o);
    CAPTURE(trial, ss.B, ss.C, ss.H, ss.W, ts.H, ts.W, o.unbiased, o.eps, o.mean_weight, o.std_weight, to_string(o.reduction));

    const double ref = features_ref::stats_matching(s, ss, t, ts, ro);
    auto f = [&](const std::vector<double>& v) { return features_ref::stats_matching(v, ss, t, ts, ro); };
    const auto fd = distill_test::numeric_gradient(f, s);
    auto analytic = features_ref::stats_matching_grad(s, ss, t, ts, ro);
    CHECK_CLOSE("reference analytic gradient vs FD", analytic, fd, distill_test::tol::fd);
    for (double& v : analytic) v *= o.grad_scale;

    std::vector<double> grad;
    const double loss = run_stats_matching<double>(s, ss, t, ts, o, grad, g, 2);
    CHECK_CLOSE_SCALAR("loss f64", loss, ref, distill_test::tol::f64);
    CHECK_CLOSE("grad f64", grad, analytic, (distill_test::tolerance{1e-11, 1e-8}));

    // separate forward and backward agree with the fused pass
    padded<double, 4> ps(ext(ss)), pt(ext(ts)), pg(ext(ss));
    ps.set(s);
    pt.set(t);
    double l2[1];
    REQUIRE(stats_matching_forward(cpu{1}, ps.cview(), pt.cview(), make_view(l2, 1), {}, o).ok());
    REQUIRE(stats_matching_backward(cpu{1}, ps.cview(), pt.cview(), pg.view(), {}, o).ok());
    CHECK_CLOSE_SCALAR("forward", l2[0], ref, distill_test::tol::f64);
    CHECK_CLOSE("backward", pg.get(), analytic, (distill_test::tolerance{1e-11, 1e-8}));

    // float path against the reference on float-rounded inputs
    const auto sf = features_test::rounded<float>(s), tf = features_test::rounded<float>(t);
    auto ga = features_ref::stats_matching_grad(sf, ss, tf, ts, ro);
    for (double& v : ga) v *= o.grad_scale;
    std::vector<double> gf;
    const double lf = run_stats_matching<float>(sf, ss, tf, ts, o, gf, g, 1);
    CHECK_CLOSE_SCALAR("loss f32", lf, features_ref::stats_matching(sf, ss, tf, ts, ro), distill_test::tol::f32_sum);
    CHECK_CLOSE("grad f32", gf, ga, (distill_test::tolerance{1e-5, 1e-3}));

    // accumulate adds to what is there
    o.accumulate = true;
    const auto init = g.normals(ss.size());
    std::vector<double> gacc;
    run_stats_matching<double>(s, ss, t, ts, o, gacc, g, 2, init);
    std::vector<double> expect(init);
    for (std::size_t i = 0; i < expect.size(); ++i) expect[i] += analytic[i];
    CHECK_CLOSE("accumulate", gacc, expect, (distill_test::tolerance{1e-11, 1e-8}));
  }
}

TEST_CASE("features: stats matching on tokens with masks and different token counts", "[features][stats_matching][tokens]") {
  distill_test::rng g(105);
  for (int trial = 0; trial < 16; ++trial) {
    const long B = g.integer(1, 3), Ls = g.integer(1, 7), Lt = g.integer(1, 7), D = g.integer(1, 6);
    auto make_mask = [&](long L) {
      std::vector<std::uint8_t> m;
      if (g.coin(0.3)) return m;
      m.assign(B * L, 0);
      for (auto& v : m) v = g.coin(0.6);
      for (long b = 0; b < B; ++b) m[b * L] = 1;
      return m;
    };
    const auto sm = make_mask(Ls), tm = make_mask(Lt);
    const auto s = g.normals(B * Ls * D), t = g.normals(B * Lt * D, 1.0, 2.0);
    stats_matching_options o;
    o.eps = 1e-3;
    o.reduction = trial % 2 ? reduction::sum : reduction::mean;
    o.std_weight = trial % 4 == 3 ? 0.0 : 0.7;
    const auto ro = to_ref(o);
    const double ref = features_ref::token_stats_matching(s, B, Ls, D, sm, t, Lt, tm, ro);
    auto f = [&](const std::vector<double>& v) { return features_ref::token_stats_matching(v, B, Ls, D, sm, t, Lt, tm, ro); };
    const auto fd = distill_test::numeric_gradient(f, s);
    const host_view<const std::uint8_t, 2> smv = sm.empty() ? host_view<const std::uint8_t, 2>{} : make_view(sm.data(), B, Ls);
    const host_view<const std::uint8_t, 2> tmv = tm.empty() ? host_view<const std::uint8_t, 2>{} : make_view(tm.data(), B, Lt);
    padded<double, 3> ps({B, Ls, D}, {0, 1, 2}), pt({B, Lt, D}), pg({B, Ls, D}, {1, 0, 1});
    ps.set(s);
    pt.set(t);
    double loss[1];
    REQUIRE(stats_matching_forward_backward(cpu{2}, ps.cview(), smv, pt.cview(), tmv, make_view(loss, 1), pg.view(), {}, o).ok());
    CAPTURE(trial, B, Ls, Lt, D);
    CHECK_CLOSE_SCALAR("token loss", loss[0], ref, distill_test::tol::f64);
    CHECK_CLOSE("token grad", pg.get(), fd, distill_test::tol::fd);
    CHECK(pg.untouched_outside_view());
    const auto grad = pg.get();
    for (long b = 0; b < B && !sm.empty(); ++b)
      for (long l = 0; l < Ls; ++l)
        if (!sm[b * Ls + l])
          for (long d = 0; d < D; ++d) CHECK(grad[(b * Ls + l) * D + d] == 0.0);
  }
}

TEST_CASE("features: stats matching is zero with zero gradient when student = teacher", "[features][stats_matching][property]") {
  distill_test::rng g(106);
  for (int trial = 0; trial < 6; ++trial) {
    const shape4 s = random_shape(g, true);
    const auto x = random_features(g, s, true);
    std::vector<double> grad;
    const double l = run_stats_matching<double>(x, s, x, s, {}, grad, g, 2);
    CHECK(l == 0.0);
    for (double v : grad) CHECK(std::fabs(v) < 1e-14);
  }
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
