// SPDX-License-Identifier: MIT
// Pair scorer on the CPU: scores and every normalisation against the reference; the backward
// (through the normalisation and directly from dL/ds) against finite differences of the
// reference; the supervision losses (BCE, softmax cross-entropy over all pairs and per row)
// and their gradients against the reference and finite differences; skipped all-zero targets;
// padded objects and the i = j option; bad inputs; canaries.
#include <catch2/catch.hpp>

#include <limits>
#include <numeric>

#include "relational/pairing_harness.hpp"
#include "relational/scorer_test_util.hpp"
#include "support/finite_diff.hpp"

using namespace rel_test;
using distill_ref::norm_d;
using distill_ref::scorer_problem_d;

namespace {

constexpr norm_d all_norms[] = {norm_d::sigmoid, norm_d::softmax_all, norm_d::softmax_row};

/// Library buffers for a scorer problem (weights padded/strided or column-major on request).
template <class T>
struct scorer_lib {
  long B, N, D, Q, K;
  distill::pair_scorer_kind kind;
  matrix_buf<T, distill::host_space> o, q, w1, w2;
  distill_test::guarded_tensor<T, 1, distill::host_space> b1, b2;
  std::vector<std::uint8_t> om;
  scorer_lib(const scorer_problem_d& p, bool strided, bool colmajor)
      : B(p.B), N(p.N), D(p.D), Q(p.Q), K(p.K),
        kind(p.kind == distill_ref::scorer_kind_d::mlp ? distill::pair_scorer_kind::mlp : distill::pair_scorer_kind::bilinear),
        o(make_matrix<T, distill::host_space>(p.B * p.N, p.D, strided ? 2 : 0, false)),
        q(make_matrix<T, distill::host_space>(p.B, std::max(p.Q, 1L), strided ? 2 : 0, false)),
        w1(make_matrix<T, distill::host_space>(static_cast<long>(p.W1.size()) / p.K, p.K, strided ? 1 : 0, colmajor)),
        w2(make_matrix<T, distill::host_space>(p.kind == distill_ref::scorer_kind_d::mlp ? p.K : static_cast<long>(p.W2.size()) / p.K,
                                               p.kind == distill_ref::scorer_kind_d::mlp ? 1 : p.K, strided ? 1 : 0, colmajor)),
        b1(make_vector<T, distill::host_space>(p.K, strided)),
        b2(make_vector<T, distill::host_space>(static_cast<long>(p.b2.size()), strided)),
        om(p.om) {
    o.set(p.o);
    if (Q > 0) q.set(p.q);
    w1.set(p.W1);
    w2.set(p.W2);
    b1.set(p.b1);
    b2.set(p.b2);
  }
  distill::host_view<const T, 3> ov() { return as_rank3<const T>(o, B, N); }
  distill::host_view<const T, 2> qv() {
    return Q > 0 ? distill::make_strided_view(static_cast<const T*>(q.data()), std::array<distill::index_t, 2>{B, Q}, q.strides())
                 : distill::host_view<const T, 2>{};
  }
  distill::host_view<const std::uint8_t, 2> omv() {
    return om.empty() ? distill::host_view<const std::uint8_t, 2>{} : distill::make_view(static_cast<const std::uint8_t*>(om.data()), B, N);
  }
  distill::pair_scorer_weights<const T> weights() {
    distill::pair_scorer_weights<const T> w;
    w.kind = kind;
    w.w1 = w1.template view<const T>(), w.b1 = b1.template view<const T>(), w.w2 = w2.template view<const T>(),
    w.b2 = b2.template view<const T>();
    return w;
  }
};

/// L = sum(dm * m(s)) + sum(dsx * s) over the valid pairs, from the reference.
double ref_objective(const scorer_problem_d& p, norm_d n, const std::vector<double>& dm, const std::vector<double>& dsx) {
  const auto s = distill_ref::scorer_scores(p);
  const auto m = distill_ref::normalise(p, n, s);
  double L = 0;
  for (std::size_t k = 0; k < s.size(); ++k)
    if (std::isfinite(s[k])) L += dm[k] * m[k] + dsx[k] * s[k];
  return L;
}

template <class F>
std::vector<double> fd_member(scorer_problem_d p, std::vector<double> scorer_problem_d::*member, F&& f) {
  const std::vector<double> x0 = p.*member;
  return distill_test::numeric_gradient(
      [&](const std::vector<double>& x) {
        p.*member = x;
        return f(p);
      },
      x0);
}

std::vector<scorer_case> cases() {
  std::vector<scorer_case> cs;
  for (auto kind : {distill_ref::scorer_kind_d::mlp, distill_ref::scorer_kind_d::bilinear}) {
    scorer_case c;
    c.kind = kind;
    cs.push_back(c);
    c.padded = true, c.self = false, c.N = 5;
    cs.push_back(c);
    c = {};
    c.kind = kind, c.Q = 0, c.B = 3;
    cs.push_back(c);
  }
  return cs;
}

}  // namespace

TEST_CASE("pair scorer CPU: scores and normalisations against the reference", "[relational][scorer]") {
  distill_test::rng g(201);
  for (const scorer_case& c : cases()) {
    for (norm_d n : all_norms) {
      for (bool strided : {false, true}) {
        INFO(describe(c) << " " << name_of(n) << " strided " << strided);
        const scorer_problem_d p = make_scorer_problem(g, c);
        scorer_lib<double> lib(p, strided, strided);
        distill_test::guarded<double> sbuf(static_cast<std::size_t>(c.B * c.N * c.N)), mbuf(static_cast<std::size_t>(c.B * c.N * c.N));
        distill::pair_scorer_options opt;
        opt.normalization = to_lib(n);
        opt.include_self_pairs = c.self;
        const auto st = distill::pair_scorer_forward(distill::cpu{2}, lib.ov(), lib.qv(), lib.omv(), lib.weights(),
                                                     distill::make_view(sbuf.data(), c.B, c.N, c.N),
                                                     distill::make_view(mbuf.data(), c.B, c.N, c.N), {}, opt);
        REQUIRE(st.ok());
        CHECK(sbuf.intact());
        CHECK(mbuf.intact());
        const auto s = distill_ref::scorer_scores(p);
        const auto m = distill_ref::normalise(p, n, s);
        CHECK_CLOSE("scores", sbuf.contents(), s, (distill_test::tolerance{1e-12, 1e-11}));
        CHECK_CLOSE("weights", mbuf.contents(), m, (distill_test::tolerance{1e-13, 1e-11}));
        // Softmax weights of a non-empty group sum to 1.
        if (n == norm_d::softmax_all)
          for (long b = 0; b < c.B; ++b) {
            double sum = 0;
            for (long k = 0; k < c.N * c.N; ++k) sum += mbuf.data()[b * c.N * c.N + k];
            CHECK(sum == Approx(1.0).epsilon(1e-12));
          }
      }
    }
  }
}

TEST_CASE("pair scorer CPU (float): forward against the reference", "[relational][scorer]") {
  distill_test::rng g(202);
  for (const scorer_case& c0 : cases()) {
    scorer_case c = c0;
    c.N = 6, c.D = 10, c.Q = c0.Q ? 11 : 0, c.K = 32;
    for (norm_d n : all_norms) {
      INFO(describe(c) << " " << name_of(n));
      const scorer_problem_d p = make_scorer_problem(g, c);
      scorer_lib<float> lib(p, false, false);
      std::vector<float> s(static_cast<std::size_t>(c.B * c.N * c.N)), m(s.size());
      distill::pair_scorer_options opt;
      opt.normalization = to_lib(n);
      opt.include_self_pairs = c.self;
      REQUIRE(distill::pair_scorer_forward(distill::cpu{1}, lib.ov(), lib.qv(), lib.omv(), lib.weights(),
                                           distill::make_view(s.data(), c.B, c.N, c.N), distill::make_view(m.data(), c.B, c.N, c.N), {}, opt)
                  .ok());
      const auto rs = distill_ref::scorer_scores(p);
      CHECK_CLOSE("scores", s, rs, (distill_test::tolerance{1e-5, 1e-5}));
      CHECK_CLOSE("weights", m, distill_ref::normalise(p, n, rs), (distill_test::tolerance{1e-6, 1e-5}));
    }
  }
}

TEST_CASE("pair scorer reference and CPU backward against finite differences", "[relational][scorer]") {
  distill_test::rng g(203);
  for (const scorer_case& c : cases()) {
    for (norm_d n : all_norms) {
      for (bool accumulate : {false, true}) {
        INFO(describe(c) << " " << name_of(n) << " accumulate " << accumulate);
        const scorer_problem_d p = make_scorer_problem(g, c);
        const std::size_t np = static_cast<std::size_t>(c.B * c.N * c.N);
        const std::vector<double> dm = g.normals(np), dsx = g.normals(np);
        auto f = [&](const scorer_problem_d& pp) { return ref_objective(pp, n, dm, dsx); };
        scorer_lib<double> lib(p, accumulate, accumulate);
        // Forward for the pair weights the backward needs.
        std::vector<double> s(np), m(np);
        distill::pair_scorer_options opt;
        opt.normalization = to_lib(n);
        opt.include_self_pairs = c.self;
        opt.accumulate = accumulate;
        REQUIRE(distill::pair_scorer_forward(distill::cpu{1}, lib.ov(), lib.qv(), lib.omv(), lib.weights(),
                                             distill::make_view(s.data(), c.B, c.N, c.N), distill::make_view(m.data(), c.B, c.N, c.N), {}, opt)
                    .ok());
        using distill::host_space;
        auto go = make_matrix<double, host_space>(c.B * c.N, c.D, 1, false), gq = make_matrix<double, host_space>(c.B, std::max(c.Q, 1L), 1, false);
        auto gw1 = make_matrix<double, host_space>(lib.w1.extents()[0], c.K, 1, accumulate);
        auto gw2 = make_matrix<double, host_space>(lib.w2.extents()[0], lib.w2.extents()[1], 1, accumulate);
        auto gs = make_matrix<double, host_space>(c.B * c.N, c.N, 1, false);
        auto gb1 = make_vector<double, host_space>(c.K, accumulate), gb2 = make_vector<double, host_space>(lib.b2.extents()[0], accumulate);
        if (accumulate) {
          go.fill(accumulate_base), gq.fill(accumulate_base), gw1.fill(accumulate_base);
          gw2.fill(accumulate_base), gs.fill(accumulate_base), gb1.fill(accumulate_base), gb2.fill(accumulate_base);
        }
        distill::pair_scorer_grads<double> grads;
        grads.objects = as_rank3<double>(go, c.B, c.N);
        if (c.Q > 0) grads.question = distill::make_strided_view(gq.data(), std::array<distill::index_t, 2>{c.B, c.Q}, gq.strides());
        grads.scores = as_rank3<double>(gs, c.B, c.N);
        grads.weights.kind = lib.kind;
        grads.weights.w1 = gw1.view(), grads.weights.b1 = gb1.view(), grads.weights.w2 = gw2.view(), grads.weights.b2 = gb2.view();
        const auto st = distill::pair_scorer_backward(
            distill::cpu{2}, lib.ov(), lib.qv(), lib.omv(), lib.weights(), distill::make_view(static_cast<const double*>(m.data()), c.B, c.N, c.N),
            distill::make_view(static_cast<const double*>(dm.data()), c.B, c.N, c.N),
            distill::make_view(static_cast<const double*>(dsx.data()), c.B, c.N, c.N), grads, {}, opt);
        REQUIRE(st.ok());
        CHECK(go.intact());
        CHECK(gq.intact());
        CHECK(gw1.intact());
        CHECK(gw2.intact());
        CHECK(gs.intact());
        CHECK(gb1.intact());
        CHECK(gb2.intact());
        auto want = [&](std::vector<double> v) { return accumulate ? plus_base(v) : v; };
        CHECK_CLOSE("d objects", go.get(), want(fd_member(p, &scorer_problem_d::o, f)), distill_test::tol::fd);
        if (c.Q > 0) {
          std::vector<double> got = gq.get();
          CHECK_CLOSE("d question", got, want(fd_member(p, &scorer_problem_d::q, f)), distill_test::tol::fd);
        }
        CHECK_CLOSE("d w1", gw1.get(), want(fd_member(p, &scorer_problem_d::W1, f)), distill_test::tol::fd);
        CHECK_CLOSE("d b1", gb1.get(), want(fd_member(p, &scorer_problem_d::b1, f)), distill_test::tol::fd);
        CHECK_CLOSE("d w2", gw2.get(), want(fd_member(p, &scorer_problem_d::W2, f)), distill_test::tol::fd);
        CHECK_CLOSE("d b2", gb2.get(), want(fd_member(p, &scorer_problem_d::b2, f)), distill_test::tol::fd);
        // dL/ds: finite differences over the scores themselves (valid pairs only).
        {
          const auto s0 = distill_ref::scorer_scores(p);
          std::vector<double> fd(np, 0.0);
          for (std::size_t k = 0; k < np; ++k) {
            if (!std::isfinite(s0[k])) continue;
            auto at = [&](double h) {
              std::vector<double> ss = s0;
              ss[k] += h;
              const auto mm = distill_ref::normalise(p, n, ss);
              double L = 0;
              for (std::size_t t = 0; t < np; ++t)
                if (std::isfinite(ss[t])) L += dm[t] * mm[t] + dsx[t] * ss[t];
              return L;
            };
            fd[k] = (at(1e-6) - at(-1e-6)) / 2e-6;
          }
          CHECK_CLOSE("d scores", gs.get(), want(fd), distill_test::tol::fd);
        }
      }
    }
  }
}

TEST_CASE("pair scorer CPU: supervision losses against the reference and finite differences", "[relational][scorer][loss]") {
  distill_test::rng g(204);
  for (const scorer_case& c0 : cases()) {
    scorer_case c = c0;
    c.B = 4;
    for (norm_d n : all_norms) {
      for (distill::reduction red : {distill::reduction::none, distill::reduction::sum, distill::reduction::mean, distill::reduction::batchmean}) {
        for (bool soft : {false, true}) {
          INFO(describe(c) << " " << name_of(n) << " reduction " << distill::to_string(red) << " soft " << soft);
          const scorer_problem_d p = make_scorer_problem(g, c);
          const auto s = distill_ref::scorer_scores(p);
          const auto t = make_target(g, p, soft);
          const auto ref = distill_ref::scorer_loss(p, n, s, t);
          const double total = std::accumulate(ref.per_sample.begin(), ref.per_sample.end(), 0.0);
          const double divisor = red == distill::reduction::mean ? ref.units : red == distill::reduction::batchmean ? static_cast<double>(c.B) : 1.0;
          const double scale = 0.7;
          distill::pair_scorer_options opt;
          opt.normalization = to_lib(n);
          opt.include_self_pairs = c.self;
          opt.reduction = red;
          opt.grad_scale = static_cast<float>(scale);
          const long nl = red == distill::reduction::none ? c.B : 1;
          distill_test::guarded<double> loss(static_cast<std::size_t>(nl)), grad(static_cast<std::size_t>(c.B * c.N * c.N));
          const std::vector<std::uint8_t> om = p.om;
          const auto omv = om.empty() ? distill::host_view<const std::uint8_t, 2>{} : distill::make_view(om.data(), c.B, c.N);
          const auto sv = distill::make_view(s.data(), c.B, c.N, c.N);
          const auto tv = distill::make_view(t.data(), c.B, c.N, c.N);
          REQUIRE(distill::pair_scorer_loss_forward_backward(distill::cpu{2}, sv, tv, omv, distill::make_view(loss.data(), nl),
                                                             distill::make_view(grad.data(), c.B, c.N, c.N), {}, opt)
                      .ok());
          CHECK(loss.intact());
          CHECK(grad.intact());
          if (red == distill::reduction::none) CHECK_CLOSE("per-sample loss", loss.contents(), ref.per_sample, distill_test::tol::f64);
          else CHECK_CLOSE_SCALAR("loss", loss.data()[0], divisor > 0 ? total / divisor : 0.0, distill_test::tol::f64);
          // Gradient: finite differences of the reduced reference loss over the valid scores.
          std::vector<double> fd(s.size(), 0.0);
          for (std::size_t k = 0; k < s.size(); ++k) {
            if (!std::isfinite(s[k])) continue;
            auto at = [&](double h) {
              std::vector<double> ss = s;
              ss[k] += h;
              const auto r = distill_ref::scorer_loss(p, n, ss, t);
              const double tot = std::accumulate(r.per_sample.begin(), r.per_sample.end(), 0.0);
              return tot / (red == distill::reduction::mean ? (r.units > 0 ? r.units : 1.0) : divisor);
            };
            fd[k] = scale * (at(1e-6) - at(-1e-6)) / 2e-6;
          }
          CHECK_CLOSE("d scores", grad.contents(), fd, distill_test::tol::fd);
          // Separate passes agree with the fused one.
          std::vector<double> loss2(static_cast<std::size_t>(nl)), grad2(s.size());
          REQUIRE(distill::pair_scorer_loss_forward(distill::cpu{1}, sv, tv, omv, distill::make_view(loss2.data(), nl), {}, opt).ok());
          REQUIRE(distill::pair_scorer_loss_backward(distill::cpu{1}, sv, tv, omv, distill::make_view(grad2.data(), c.B, c.N, c.N), {}, opt).ok());
          CHECK(loss2 == loss.contents());
          CHECK_CLOSE("d scores (separate)", grad2, grad.contents(), distill_test::tol::f64);
        }
      }
    }
  }
}

TEST_CASE("pair scorer CPU: all-zero targets are skipped; float loss", "[relational][scorer][loss]") {
  distill_test::rng g(205);
  scorer_case c;
  c.B = 3, c.N = 4;
  const scorer_problem_d p = make_scorer_problem(g, c);
  const auto s = distill_ref::scorer_scores(p);
  std::vector<double> t(s.size(), 0.0);
  for (norm_d n : {norm_d::softmax_all, norm_d::softmax_row}) {
    distill::pair_scorer_options opt;
    opt.normalization = to_lib(n);
    opt.reduction = distill::reduction::mean;
    double loss = -1;
    std::vector<double> grad(s.size(), 7.0);
    REQUIRE(distill::pair_scorer_loss_forward_backward(distill::cpu{1}, distill::make_view(s.data(), c.B, c.N, c.N),
                                                       distill::make_view(t.data(), c.B, c.N, c.N), distill::host_view<const std::uint8_t, 2>{},
                                                       distill::make_view(&loss, 1), distill::make_view(grad.data(), c.B, c.N, c.N), {}, opt)
                .ok());
    CHECK(loss == 0.0);
    CHECK(max_abs(grad) == 0.0);
  }
  // float against the double reference
  const auto t2 = make_target(g, p, true);
  for (norm_d n : all_norms) {
    std::vector<float> sf(s.begin(), s.end()), tf(t2.begin(), t2.end()), gf(s.size());
    float loss = 0;
    distill::pair_scorer_options opt;
    opt.normalization = to_lib(n);
    opt.reduction = distill::reduction::sum;
    REQUIRE(distill::pair_scorer_loss_forward_backward(distill::cpu{1}, distill::make_view(sf.data(), c.B, c.N, c.N),
                                                       distill::make_view(tf.data(), c.B, c.N, c.N), distill::host_view<const std::uint8_t, 2>{},
                                                       distill::make_view(&loss, 1), distill::make_view(gf.data(), c.B, c.N, c.N), {}, opt)
                .ok());
    const auto ref = distill_ref::scorer_loss(p, n, s, t2);
    CHECK_CLOSE_SCALAR("float loss", loss, std::accumulate(ref.per_sample.begin(), ref.per_sample.end(), 0.0), distill_test::tol::f32_sum);
  }
}

TEST_CASE("pair scorer CPU: bad inputs give clear errors", "[relational][scorer][errors]") {
  using namespace distill;
  const index_t B = 2, N = 3, D = 2, Q = 2, K = 4;
  std::vector<float> o(B * N * D, 0.5f), q(B * Q, 0.5f), w1((2 * D + Q) * K, 0.1f), b1(K, 0.f), w2(K, 0.2f), b2(1, 0.f);
  std::vector<float> s(B * N * N), m(B * N * N), t(B * N * N, 0.0f), gs(B * N * N);
  pair_scorer_weights<const float> w;
  w.w1 = make_view(static_cast<const float*>(w1.data()), 2 * D + Q, K);
  w.b1 = make_view(static_cast<const float*>(b1.data()), K);
  w.w2 = make_view(static_cast<const float*>(w2.data()), K, 1);
  w.b2 = make_view(static_cast<const float*>(b2.data()), 1);
  const auto ov = make_view(static_cast<const float*>(o.data()), B, N, D);
  const auto qv = make_view(static_cast<const float*>(q.data()), B, Q);
  const host_view<const std::uint8_t, 2> no_om;
  const cpu ctx{1};
  REQUIRE(pair_scorer_forward(ctx, ov, qv, no_om, w, make_view(s.data(), B, N, N), make_view(m.data(), B, N, N), {}).ok());
  auto bad_w = w;
  bad_w.w1 = make_view(static_cast<const float*>(w1.data()), 2 * D + Q - 1, K);
  CHECK(pair_scorer_forward(ctx, ov, qv, no_om, bad_w, make_view(s.data(), B, N, N), make_view(m.data(), B, N, N), {}).code() == errc::shape_mismatch);
  bad_w = w;
  bad_w.kind = pair_scorer_kind::bilinear;  // mlp-shaped weights
  CHECK(pair_scorer_forward(ctx, ov, qv, no_om, bad_w, make_view(s.data(), B, N, N), make_view(m.data(), B, N, N), {}).code() == errc::shape_mismatch);
  bad_w = w;
  bad_w.w2 = {};
  CHECK(pair_scorer_forward(ctx, ov, qv, no_om, bad_w, make_view(s.data(), B, N, N), make_view(m.data(), B, N, N), {}).code() == errc::invalid_argument);
  CHECK(pair_scorer_forward(ctx, ov, qv, no_om, w, make_view(s.data(), B, N, N - 1), make_view(m.data(), B, N, N), {}).code() == errc::shape_mismatch);
  CHECK(pair_scorer_forward(ctx, ov, make_view(static_cast<const float*>(q.data()), B - 1, Q), no_om, w, make_view(s.data(), B, N, N), make_view(m.data(), B, N, N), {}).code() == errc::shape_mismatch);
  // Backward needs some upstream gradient, and the forward weights for dL/dm.
  pair_scorer_grads<float> grads;
  grads.scores = make_view(gs.data(), B, N, N);
  const host_view<const float, 3> none;
  CHECK(pair_scorer_backward(ctx, ov, qv, no_om, w, none, none, none, grads, {}).code() == errc::invalid_argument);
  CHECK(pair_scorer_backward(ctx, ov, qv, no_om, w, none, make_view(static_cast<const float*>(m.data()), B, N, N), none, grads, {}).code() == errc::invalid_argument);
  pair_scorer_grads<float> bad_g = grads;
  bad_g.weights.kind = pair_scorer_kind::bilinear;
  bad_g.weights.b1 = make_view(b1.data(), K);
  CHECK(pair_scorer_backward(ctx, ov, qv, no_om, w, make_view(static_cast<const float*>(m.data()), B, N, N), make_view(static_cast<const float*>(m.data()), B, N, N), none, bad_g, {}).code() == errc::invalid_argument);
  // Loss: target outside [0, 1], NaN, loss shape for the reduction.
  float loss = 0;
  t[4] = 1.5f;
  pair_scorer_options opt;
  const auto sv = make_view(static_cast<const float*>(s.data()), B, N, N);
  const auto tv = make_view(static_cast<const float*>(t.data()), B, N, N);
  CHECK(pair_scorer_loss_forward(ctx, sv, tv, no_om, make_view(&loss, 1), {}, opt).code() == errc::invalid_argument);
  t[4] = std::numeric_limits<float>::quiet_NaN();
  CHECK(pair_scorer_loss_forward(ctx, sv, tv, no_om, make_view(&loss, 1), {}, opt).code() == errc::non_finite);
  t[4] = 1.0f;
  opt.reduction = reduction::none;
  CHECK(pair_scorer_loss_forward(ctx, sv, tv, no_om, make_view(&loss, 1), {}, opt).code() == errc::shape_mismatch);
  opt = {};
  opt.grad_scale = std::numeric_limits<float>::infinity();
  CHECK(pair_scorer_loss_backward(ctx, sv, tv, no_om, make_view(gs.data(), B, N, N), {}, opt).code() == errc::invalid_argument);
  CHECK(pair_scorer_loss_forward(ctx, make_view(static_cast<const float*>(s.data()), B, N, N - 1), tv, no_om, make_view(&loss, 1), {}).code() == errc::shape_mismatch);
  CHECK(pair_scorer_loss_forward(ctx, sv, tv, no_om, host_view<float, 1>{}, {}).code() == errc::invalid_argument);
}
