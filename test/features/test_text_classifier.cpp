// SPDX-License-Identifier: MIT
// Text-embedding classifier (CPU): logits against the double reference (background column,
// masked classes exactly 0, temperature, every normalisation), the backward to regions,
// background and classes against central finite differences, the fused cross-entropy against
// the reference CE and finite differences, strided views with canaries, bad inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/features/text_embedding_classifier.hpp"
#include "features_test_util.hpp"
#include "reference/features_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using namespace distill;
using features_test::padded;

namespace {

struct problem {
  long N, C, D;
  bool bg;
  std::vector<double> e, t, w;
  std::vector<std::uint8_t> mask;
  text_classifier_options opt;
  long K() const { return C + (bg ? 1 : 0); }
  features_ref::classifier_opts ref() const {
    features_ref::classifier_opts r;
    r.temperature = opt.temperature;
    r.n = opt.normalize == l2_normalization::none    ? features_ref::norm::none
          : opt.normalize == l2_normalization::clamp ? features_ref::norm::clamp
                                                     : features_ref::norm::zero_below_eps;
    r.eps = opt.norm_eps;
    return r;
  }
};

problem random_problem(distill_test::rng& g, int trial) {
  problem p;
  p.N = g.integer(1, 70);  // > 64: two row blocks
  p.C = g.integer(1, 9);
  p.D = g.integer(1, 12);
  p.bg = trial % 3 != 0;
  p.e = g.normals(p.N * p.D);
  p.t = g.normals(p.C * p.D);
  if (p.bg) p.w = g.normals(p.D, 0, 0.5);
  if (trial % 2) {
    p.mask.assign(p.C, 1);
    for (auto& m : p.mask) m = g.coin(0.7);
  }
  p.opt.temperature = trial % 4 == 0 ? 0.01 : g.uniform(0.2, 2.0);
  p.opt.normalize = trial % 5 == 1 ? l2_normalization::clamp : trial % 5 == 2 ? l2_normalization::none : l2_normalization::zero_below_eps;
  p.opt.norm_eps = p.opt.normalize == l2_normalization::clamp ? 1e-12 : 1e-8;
  return p;
}

template <class T>
struct bound {
  padded<T, 2> e, t;
  padded<T, 1> w;
  bound(const problem& p, distill_test::rng& g)
      : e({p.N, p.D}, {features_test::random_pad(g), features_test::random_pad(g)}, g.coin(0.3) ? 2 : 1),
        t({p.C, p.D}, {features_test::random_pad(g), features_test::random_pad(g)}),
        w({p.bg ? p.D : 1}, {0}, g.coin(0.3) ? 3 : 1) {
    e.set(features_test::rounded<T>(p.e));
    t.set(features_test::rounded<T>(p.t));
    if (p.bg) w.set(features_test::rounded<T>(p.w));
  }
  host_view<const T, 1> bg(const problem& p) const { return p.bg ? w.cview() : host_view<const T, 1>{}; }
};

host_view<const std::uint8_t, 1> mask_view(const problem& p) {
  return p.mask.empty() ? host_view<const std::uint8_t, 1>{} : make_view(p.mask.data(), p.C);
}

}  // namespace

TEST_CASE("features: text classifier logits", "[features][classifier]") {
  distill_test::rng g(401);
  for (int trial = 0; trial < 30; ++trial) {
    const problem p = random_problem(g, trial);
    const auto ref = features_ref::classifier_logits(p.e, p.N, p.D, p.t, p.C, p.w, p.mask, p.ref());
    CAPTURE(trial, p.N, p.C, p.D, p.bg, p.mask.empty(), p.opt.temperature, int(p.opt.normalize));
    bound<double> b(p, g);
    padded<double, 2> z({p.N, p.K()}, {0, features_test::random_pad(g)});
    REQUIRE(text_classifier_forward(cpu{2}, b.e.cview(), b.t.cview(), b.bg(p), mask_view(p), z.view(), {}, p.opt).ok());
    CHECK_CLOSE("logits f64", z.get(), ref, (distill_test::tolerance{1e-12, 1e-11}));
    CHECK(z.untouched_outside_view());
    const auto zz = z.get();
    for (long c = 0; c < p.C && !p.mask.empty(); ++c)
      if (!p.mask[c])
        for (long r = 0; r < p.N; ++r) CHECK(zz[r * p.K() + (p.bg ? 1 : 0) + c] == 0.0);  // exactly 0, not -inf

    problem pf = p;
    pf.e = features_test::rounded<float>(p.e);
    pf.t = features_test::rounded<float>(p.t);
    pf.w = features_test::rounded<float>(p.w);
    bound<float> bf(pf, g);
    padded<float, 2> zf({p.N, p.K()});
    REQUIRE(text_classifier_forward(cpu{1}, bf.e.cview(), bf.t.cview(), bf.bg(pf), mask_view(pf), zf.view(), {}, pf.opt).ok());
    const double scale = 1.0 / p.opt.temperature;
    CHECK_CLOSE("logits f32", zf.get(), features_ref::classifier_logits(pf.e, p.N, p.D, pf.t, p.C, pf.w, p.mask, pf.ref()),
                (distill_test::tolerance{2e-6 * scale, 1e-5}));
  }
}

TEST_CASE("features: text classifier backward against finite differences", "[features][classifier][grad]") {
  distill_test::rng g(402);
  for (int trial = 0; trial < 18; ++trial) {
    problem p = random_problem(g, trial);
    p.N = std::min<long>(p.N, trial == 5 ? 70 : 12);
    p.e.resize(p.N * p.D);
    const auto G = g.normals(p.N * p.K());
    const auto ro = p.ref();
    auto dot_logits = [&](const std::vector<double>& e, const std::vector<double>& t, const std::vector<double>& w) {
      const auto z = features_ref::classifier_logits(e, p.N, p.D, t, p.C, w, p.mask, ro);
      double s = 0;
      for (std::size_t i = 0; i < z.size(); ++i) s += G[i] * z[i];
      return s;
    };
    const auto fd_e = distill_test::numeric_gradient([&](const std::vector<double>& v) { return dot_logits(v, p.t, p.w); }, p.e);
    const auto fd_t = distill_test::numeric_gradient([&](const std::vector<double>& v) { return dot_logits(p.e, v, p.w); }, p.t);
    std::vector<double> fd_w;
    if (p.bg) fd_w = distill_test::numeric_gradient([&](const std::vector<double>& v) { return dot_logits(p.e, p.t, v); }, p.w);
    CAPTURE(trial, p.N, p.C, p.D, p.bg, p.mask.empty(), int(p.opt.normalize));

    bound<double> b(p, g);
    padded<double, 2> gl({p.N, p.K()}, {0, 1}), ge({p.N, p.D}, {1, 2}, g.coin(0.3) ? 2 : 1), gt({p.C, p.D}, {0, 1});
    padded<double, 1> gw({p.bg ? p.D : 1}, {0}, 2);
    gl.set(G);
    const bool want_classes = trial % 2 == 0;
    REQUIRE(text_classifier_backward(cpu{2}, b.e.cview(), b.t.cview(), b.bg(p), mask_view(p), gl.cview(), ge.view(),
                                     p.bg ? gw.view() : host_view<double, 1>{}, want_classes ? gt.view() : host_view<double, 2>{}, {}, p.opt)
                .ok());
    const double tol_scale = 1.0 / p.opt.temperature;
    const distill_test::tolerance tol{1e-6 * tol_scale, 1e-5};
    CHECK_CLOSE("grad regions", ge.get(), fd_e, tol);
    CHECK(ge.untouched_outside_view());
    if (p.bg) {
      CHECK_CLOSE("grad background", gw.get(), fd_w, tol);
      CHECK(gw.untouched_outside_view());
    }
    if (want_classes) {
      CHECK_CLOSE("grad classes", gt.get(), fd_t, tol);
      CHECK(gt.untouched_outside_view());
    }
    // accumulate adds
    text_classifier_options acc = p.opt;
    acc.accumulate = true;
    const auto before = ge.get();
    const auto before_t = gt.get();
    REQUIRE(text_classifier_backward(cpu{1}, b.e.cview(), b.t.cview(), b.bg(p), mask_view(p), gl.cview(), ge.view(),
                                     host_view<double, 1>{}, want_classes ? gt.view() : host_view<double, 2>{}, {}, acc)
                .ok());
    std::vector<double> twice(before);
    for (double& v : twice) v *= 2;
    CHECK_CLOSE("accumulate regions", ge.get(), twice, distill_test::tol::f64);
    if (want_classes) {
      std::vector<double> twice_t(before_t);
      for (double& v : twice_t) v *= 2;
      CHECK_CLOSE("accumulate classes", gt.get(), twice_t, distill_test::tol::f64);
    }
  }
}

/// The cross-entropy options with the classifier options of the problem.
static text_classifier_cross_entropy_options with_classifier(text_classifier_cross_entropy_options ce, const text_classifier_options& o) {
  static_cast<text_classifier_options&>(ce) = o;
  return ce;
}

TEST_CASE("features: text classifier cross-entropy", "[features][classifier][ce]") {
  distill_test::rng g(403);
  for (int trial = 0; trial < 16; ++trial) {
    problem p = random_problem(g, trial);
    p.N = std::min<long>(p.N, 10);
    p.e.resize(p.N * p.D);
    text_classifier_cross_entropy_options ce;
    ce.reduction = trial % 3 == 0 ? reduction::sum : trial % 3 == 1 ? reduction::mean : reduction::batchmean;
    ce.grad_scale = trial % 2 ? 1.0 : 0.3;
    std::vector<std::int64_t> y(p.N);
    for (auto& v : y) v = g.coin(0.15) ? ce.ignore_index : g.integer(0, p.K() - 1);
    std::vector<double> w;
    if (trial % 4 == 3) w = g.uniforms(p.N, 0.2, 2);
    const auto ro = p.ref();
    const features_ref::red rr = ce.reduction == reduction::sum ? features_ref::red::sum
                                 : ce.reduction == reduction::mean ? features_ref::red::mean
                                                             : features_ref::red::batchmean;
    auto loss_of = [&](const std::vector<double>& e, const std::vector<double>& t, const std::vector<double>& bw) {
      return features_ref::cross_entropy(features_ref::classifier_logits(e, p.N, p.D, t, p.C, bw, p.mask, ro), p.N, p.K(), y, w,
                                         ce.ignore_index, rr);
    };
    const double ref = loss_of(p.e, p.t, p.w);
    auto fd_e = distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(v, p.t, p.w); }, p.e);
    auto fd_t = distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(p.e, v, p.w); }, p.t);
    std::vector<double> fd_w;
    if (p.bg) fd_w = distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(p.e, p.t, v); }, p.w);
    for (auto* v : {&fd_e, &fd_t, &fd_w})
      for (double& x : *v) x *= ce.grad_scale;
    CAPTURE(trial, p.N, p.C, p.D, p.bg, to_string(ce.reduction));

    bound<double> b(p, g);
    padded<double, 2> z({p.N, p.K()}, {0, 1}), ge({p.N, p.D}, {0, 1}), gt({p.C, p.D});
    padded<double, 1> gw({p.bg ? p.D : 1});
    const host_view<const double, 1> wv = w.empty() ? host_view<const double, 1>{} : make_view(w.data(), p.N);
    double loss[1] = {-1};
    REQUIRE(text_classifier_cross_entropy_forward_backward(cpu{2}, b.e.cview(), b.t.cview(), b.bg(p), mask_view(p),
                                                           make_view(static_cast<const std::int64_t*>(y.data()), p.N), wv,
                                                           make_view(loss, 1), ge.view(), p.bg ? gw.view() : host_view<double, 1>{},
                                                           gt.view(), z.view(), {}, with_classifier(ce, p.opt))
                .ok());
    const distill_test::tolerance tol{1e-6 / p.opt.temperature, 1e-5};
    CHECK_CLOSE_SCALAR("CE loss", loss[0], ref, (distill_test::tolerance{1e-12, 1e-11}));
    CHECK_CLOSE("CE grad regions", ge.get(), fd_e, tol);
    CHECK_CLOSE("CE grad classes", gt.get(), fd_t, tol);
    if (p.bg) CHECK_CLOSE("CE grad background", gw.get(), fd_w, tol);
    CHECK(z.untouched_outside_view());

    double lf[1] = {-1};
    REQUIRE(text_classifier_cross_entropy_forward(cpu{1}, b.e.cview(), b.t.cview(), b.bg(p), mask_view(p),
                                                  make_view(static_cast<const std::int64_t*>(y.data()), p.N), wv, make_view(lf, 1),
                                                  z.view(), {}, with_classifier(ce, p.opt))
                .ok());
    CHECK(lf[0] == Approx(loss[0]).epsilon(1e-14));
  }
}

TEST_CASE("features: text classifier bad inputs", "[features][classifier][errors]") {
  std::vector<float> e(4 * 3, 0.5f), t(5 * 3, 0.25f), t2(5 * 4, 0.25f), w(3, 1.0f), z(4 * 6), ge(12), gw(3);
  for (std::size_t i = 0; i < e.size(); ++i) e[i] = float(i % 4) - 1.5f;
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = float(i % 3) + 0.5f;
  const auto ev = make_view(static_cast<const float*>(e.data()), 4, 3);
  const auto tv = make_view(static_cast<const float*>(t.data()), 5, 3);
  const auto wv = make_view(static_cast<const float*>(w.data()), 3);
  status st = text_classifier_forward(cpu{1}, ev, make_view(static_cast<const float*>(t2.data()), 5, 4), wv, {}, make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'classes'") != std::string::npos);
  st = text_classifier_forward(cpu{1}, ev, tv, wv, {}, make_view(z.data(), 4, 5), {});  // K = 6 with a background
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'logits'") != std::string::npos);
  text_classifier_options bad;
  bad.temperature = 0;
  st = text_classifier_forward(cpu{1}, ev, tv, wv, {}, make_view(z.data(), 4, 6), {}, bad);
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'temperature'") != std::string::npos);
  st = text_classifier_backward(cpu{1}, ev, tv, {}, {}, make_view(static_cast<const float*>(z.data()), 4, 5), make_view(ge.data(), 4, 3),
                                make_view(gw.data(), 3), {}, {});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'grad_background'") != std::string::npos);
  std::vector<std::uint8_t> m(4, 1);
  st = text_classifier_forward(cpu{1}, ev, tv, wv, make_view(static_cast<const std::uint8_t*>(m.data()), 4), make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'class_mask'") != std::string::npos);
  std::vector<std::int64_t> y = {0, 6, 1, -100};  // 6 is out of range for K = 6
  float loss[1];
  st = text_classifier_cross_entropy_forward_backward(cpu{1}, ev, tv, wv, {}, make_view(static_cast<const std::int64_t*>(y.data()), 4), {},
                                                      make_view(loss, 1), make_view(ge.data(), 4, 3), {}, {}, make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'labels'") != std::string::npos);
  y[1] = 2;
  text_classifier_cross_entropy_options ce;
  ce.reduction = reduction::none;
  CHECK(text_classifier_cross_entropy_forward(cpu{1}, ev, tv, wv, {}, make_view(static_cast<const std::int64_t*>(y.data()), 4), {},
                                              make_view(loss, 1), make_view(z.data(), 4, 6), {}, ce)
            .code() == errc::invalid_argument);
  e[4] = std::numeric_limits<float>::quiet_NaN();
  st = text_classifier_forward(cpu{1}, ev, tv, wv, {}, make_view(z.data(), 4, 6), {});
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("'regions'") != std::string::npos);
  CHECK(std::isnan(z[1 * 6 + 2]));
  CHECK(std::isfinite(z[0]));
}
