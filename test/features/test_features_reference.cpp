// SPDX-License-Identifier: MIT
// The analytic gradients of the features references (reference/features_ref.hpp), against which
// the cases of every backend (features_cases.hpp) check the library, against central finite
// differences of the reference losses, on small problems: channel and token statistics,
// statistics matching, AdaIN, the AdaIN statistics loss, the text classifier and its
// cross-entropy.
#include <catch2/catch.hpp>

#include <vector>

#include "features_test_util.hpp"
#include "reference/features_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using features_ref::shape4;
using features_test::features;

namespace {

shape4 small_shape(distill_test::rng& g) {
  const long B = g.integer(1, 2), C = g.integer(1, 3);
  return features_test::spatial_like(g, {B, C, g.integer(1, 6), g.integer(1, 6)});
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

features_ref::red reduction_of(int trial) {
  return trial % 3 == 0 ? features_ref::red::mean : trial % 3 == 1 ? features_ref::red::batchmean : features_ref::red::sum;
}

}  // namespace

TEST_CASE("features reference: statistics gradients against finite differences", "[features][reference][grad]") {
  distill_test::rng g(111);
  for (int trial = 0; trial < 12; ++trial) {
    const shape4 s = small_shape(g);
    const bool unbiased = trial % 2 && s.plane() > 1;
    const auto x = features(g, s, 0.3);
    const auto a = trial % 3 == 1 ? std::vector<double>{} : g.normals(s.B * s.C);
    const auto b = trial % 3 == 2 ? std::vector<double>{} : g.normals(s.B * s.C);
    auto f = [&](const std::vector<double>& v) {
      std::vector<double> m, sd;
      features_ref::channel_stats(v, s, unbiased, 1e-3, m, sd);
      return (a.empty() ? 0 : dot(a, m)) + (b.empty() ? 0 : dot(b, sd));
    };
    CAPTURE(trial, s.B, s.C, s.H, s.W, unbiased);
    CHECK_CLOSE("channel statistics", features_ref::channel_stats_grad(x, s, unbiased, 1e-3, a, b), distill_test::numeric_gradient(f, x),
                distill_test::tol::fd);

    const long B = g.integer(1, 3), L = g.integer(1, 9), D = g.integer(1, 8);
    std::vector<std::uint8_t> mask;
    if (trial % 3) {
      mask.assign(B * L, 1);
      for (auto& v : mask) v = g.coin(0.7);
      for (long i = 0; i < B; ++i) mask[i * L] = 1, mask[i * L + L - 1] = 1;  // at least one (two) valid
    }
    const bool ub = L > 2 && trial % 2;  // two valid tokens per sample
    const auto t = g.normals(B * L * D, 0.5, 1.5), tm = g.normals(B * D), ts = g.normals(B * D);
    auto ft = [&](const std::vector<double>& v) {
      std::vector<double> m, sd;
      features_ref::token_stats(v, B, L, D, mask, ub, 1e-4, m, sd);
      return dot(tm, m) + dot(ts, sd);
    };
    CAPTURE(B, L, D, ub, mask.empty());
    CHECK_CLOSE("token statistics", features_ref::token_stats_grad(t, B, L, D, mask, ub, 1e-4, tm, ts), distill_test::numeric_gradient(ft, t),
                distill_test::tol::fd);
  }
}

TEST_CASE("features reference: statistics matching gradients against finite differences", "[features][reference][grad]") {
  distill_test::rng g(104);
  for (int trial = 0; trial < 16; ++trial) {
    const shape4 ss = small_shape(g);
    shape4 ts = ss;
    if (g.coin(0.4)) ts.H = g.integer(1, 6), ts.W = g.integer(1, 6);
    features_ref::stats_matching_opts o{g.coin() ? 1e-5 : 1e-2, ss.plane() > 1 && ts.plane() > 1 && g.coin(), g.uniform(0.2, 2),
                                        trial % 4 == 2 ? 0.0 : g.uniform(0.2, 2), reduction_of(trial)};
    const auto s = features(g, ss, 0.3), t = features(g, ts, 0.3);
    auto f = [&](const std::vector<double>& v) { return features_ref::stats_matching(v, ss, t, ts, o); };
    CAPTURE(trial, ss.B, ss.C, ss.H, ss.W, ts.H, ts.W, o.unbiased, o.eps);
    CHECK_CLOSE("channels", features_ref::stats_matching_grad(s, ss, t, ts, o), distill_test::numeric_gradient(f, s), distill_test::tol::fd);

    const long B = g.integer(1, 3), Ls = g.integer(1, 7), Lt = g.integer(1, 7), D = g.integer(1, 6);
    const auto sm = features_test::token_mask(g, B, Ls, 0.3, 0.6), tm = features_test::token_mask(g, B, Lt, 0.3, 0.6);
    const auto a = g.normals(B * Ls * D), b = g.normals(B * Lt * D, 1.0, 2.0);
    o.unbiased = false;
    auto ft = [&](const std::vector<double>& v) { return features_ref::token_stats_matching(v, B, Ls, D, sm, b, Lt, tm, o); };
    CAPTURE(B, Ls, Lt, D);
    CHECK_CLOSE("tokens", features_ref::token_stats_matching_grad(a, B, Ls, D, sm, b, Lt, tm, o), distill_test::numeric_gradient(ft, a),
                distill_test::tol::fd);
  }
}

TEST_CASE("features reference: AdaIN and AdaIN statistics loss gradients against finite differences", "[features][reference][grad]") {
  distill_test::rng g(203);
  for (int trial = 0; trial < 14; ++trial) {
    const shape4 xs = small_shape(g);
    const shape4 ys = features_test::spatial_like(g, xs);
    const bool unbiased = xs.plane() > 1 && ys.plane() > 1 && g.coin(0.4);
    const double eps = 1e-3;
    const auto x = features(g, xs, 0.2), y = features(g, ys, 0.2), up = g.normals(xs.size());
    auto loss_of = [&](const std::vector<double>& xx, const std::vector<double>& yy) { return dot(up, features_ref::adain(xx, xs, yy, ys, eps, unbiased)); };
    std::vector<double> gy, gx;
    features_ref::adain_grads(x, xs, y, ys, up, eps, unbiased, gy, gx);
    CAPTURE(trial, xs.B, xs.C, xs.H, xs.W, ys.H, ys.W, unbiased);
    CHECK_CLOSE("AdaIN style", gy, distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(x, v); }, y),
                distill_test::tol::fd);
    CHECK_CLOSE("AdaIN content", gx, distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(v, y); }, x),
                distill_test::tol::fd);

    // The statistics loss: the student is the style; constant student channels included.
    features_ref::adain_stats_opts o{trial % 4 == 1 ? 1e-2 : 1e-5, unbiased, 1, 1, 1, reduction_of(trial)};
    if (trial % 6 == 5) o.adain_weight = g.uniform(0, 2), o.mean_weight = g.uniform(0, 2), o.std_weight = g.uniform(0, 2);
    if (trial % 7 == 6) o.std_weight = 0;
    const auto fs = features(g, ys, 0.25);
    auto f = [&](const std::vector<double>& v) { return features_ref::adain_stats_loss(v, ys, x, xs, o); };
    CHECK_CLOSE("AdaIN statistics loss", features_ref::adain_stats_loss_grad(fs, ys, x, xs, o), distill_test::numeric_gradient(f, fs),
                distill_test::tol::fd);
  }
}

TEST_CASE("features reference: classifier and cross-entropy gradients against finite differences", "[features][reference][grad]") {
  distill_test::rng g(402);
  for (int trial = 0; trial < 18; ++trial) {
    const long N = g.integer(1, 8), C = g.integer(1, 6), D = g.integer(1, 9);
    const auto e = g.normals(N * D), t = g.normals(C * D);
    const auto bg = trial % 3 ? g.normals(D, 0, 0.5) : std::vector<double>{};
    std::vector<std::uint8_t> mask;
    if (trial % 2) {
      mask.assign(C, 1);
      for (auto& m : mask) m = g.coin(0.7);
    }
    features_ref::classifier_opts o;
    o.temperature = trial % 4 == 0 ? 0.01 : g.uniform(0.2, 2.0);
    o.n = trial % 5 == 1 ? features_ref::norm::clamp : trial % 5 == 2 ? features_ref::norm::none : features_ref::norm::zero_below_eps;
    o.eps = o.n == features_ref::norm::clamp ? (trial % 10 == 1 ? 2.0 : 1e-12) : 1e-8;  // eps 2: rows below it (x / eps)
    const long K = C + (bg.empty() ? 0 : 1);
    const auto G = g.normals(N * K);
    std::vector<std::int64_t> y(N);
    for (auto& v : y) v = g.coin(0.15) ? -100 : g.integer(0, K - 1);
    const auto w = trial % 4 == 3 ? g.uniforms(N, 0.2, 2) : std::vector<double>{};
    const auto red = reduction_of(trial);
    CAPTURE(trial, N, C, D, bg.empty(), mask.empty(), int(o.n), o.temperature);
    // Central differences of G . z and of the cross-entropy, to regions, classes and background.
    for (bool ce : {false, true}) {
      auto loss_of = [&](const std::vector<double>& ee, const std::vector<double>& tt, const std::vector<double>& bb) {
        const auto z = features_ref::classifier_logits(ee, N, D, tt, C, bb, mask, o);
        return ce ? features_ref::cross_entropy(z, N, K, y, w, -100, red) : dot(G, z);
      };
      const auto z = features_ref::classifier_logits(e, N, D, t, C, bg, mask, o);
      const auto upstream = ce ? features_ref::cross_entropy_grad(z, N, K, y, w, -100, red) : G;
      std::vector<double> ge, gbg, gt;
      features_ref::classifier_grads(e, N, D, t, C, bg, mask, o, upstream, ge, gbg, gt);
      const distill_test::tolerance tol{1e-6 / o.temperature, 1e-5};
      CAPTURE(ce);
      CHECK_CLOSE("regions", ge, distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(v, t, bg); }, e), tol);
      CHECK_CLOSE("classes", gt, distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(e, v, bg); }, t), tol);
      if (!bg.empty())
        CHECK_CLOSE("background", gbg, distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(e, t, v); }, bg), tol);
    }
  }
}
