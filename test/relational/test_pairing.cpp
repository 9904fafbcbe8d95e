// SPDX-License-Identifier: MIT
// Relational pairing on the CPU: the reference's gradients against finite differences, the
// library (double and float, every pass) against the reference across masks, padding, i = j
// options, layer counts, tilings, thread counts, layouts and accumulation; the library's own
// backward against finite differences of its forward; properties; bad inputs; canaries.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <numeric>

#include "relational/pairing_harness.hpp"
#include "support/finite_diff.hpp"

using namespace rel_test;
using distill_ref::pairing_problem_d;

namespace {

/// sum(dy * y) of the reference, for finite differences.
double ref_objective(const pairing_problem_d& p, const std::vector<double>& dy) {
  const std::vector<double> y = distill_ref::pairing_forward(p);
  return std::inner_product(y.begin(), y.end(), dy.begin(), 0.0);
}

/// Finite-difference gradient of `objective(p)` with respect to one parameter vector of p.
template <class Objective>
std::vector<double> fd_of(pairing_problem_d p, std::vector<double> pairing_problem_d::*member, Objective&& objective) {
  const std::vector<double> x0 = p.*member;
  return distill_test::numeric_gradient(
      [&](const std::vector<double>& x) {
        p.*member = x;
        return objective(p);
      },
      x0);
}
template <class Objective>
std::vector<double> fd_of_weight(pairing_problem_d p, int layer, bool bias, Objective&& objective) {
  std::vector<double>& target = bias ? p.g.b[static_cast<std::size_t>(layer)] : p.g.W[static_cast<std::size_t>(layer)];
  const std::vector<double> x0 = target;
  return distill_test::numeric_gradient(
      [&](const std::vector<double>& x) {
        (bias ? p.g.b[static_cast<std::size_t>(layer)] : p.g.W[static_cast<std::size_t>(layer)]) = x;
        return objective(p);
      },
      x0);
}

/// Every gradient of `got` against `expected` (missing members skipped).
void check_grads(const std::string& what, const lib_result& got, const distill_ref::pairing_grads_d& expected, double rel,
                 bool accumulate = false) {
  auto want = [&](const std::vector<double>& v) { return accumulate ? plus_base(v) : v; };
  if (!got.o.empty()) CHECK_CLOSE(what + " d objects", got.o, want(expected.o), scaled(expected.o, rel));
  if (!got.q.empty()) CHECK_CLOSE(what + " d question", got.q, want(expected.q), scaled(expected.q, rel));
  if (!got.m.empty()) CHECK_CLOSE(what + " d pair_mask", got.m, want(expected.M), scaled(expected.M, rel));
  for (std::size_t l = 0; l < got.w.size(); ++l) {
    CHECK_CLOSE(what + " d W" + std::to_string(l), got.w[l], want(expected.W[l]), scaled(expected.W[l], rel));
    CHECK_CLOSE(what + " d b" + std::to_string(l), got.b[l], want(expected.b[l]), scaled(expected.b[l], rel));
  }
}

std::vector<pairing_case> small_cases() {
  std::vector<pairing_case> cs;
  for (mask_kind mk : {mask_kind::absent, mask_kind::ones, mask_kind::zeros, mask_kind::sparse, mask_kind::soft}) {
    pairing_case c;
    c.mask = mk;
    cs.push_back(c);
  }
  pairing_case c;
  c.padded = true, c.N = 4;
  cs.push_back(c);
  c = {};
  c.self = false;
  cs.push_back(c);
  c = {};
  c.last_relu = false, c.scale = 2.5;
  cs.push_back(c);
  c = {};
  c.L = 1;
  cs.push_back(c);
  c = {};
  c.L = 1, c.last_relu = false;
  cs.push_back(c);
  c = {};
  c.Q = 0, c.L = 2, c.biases = false;
  cs.push_back(c);
  c = {};
  c.B = 1, c.N = 1, c.D = 1, c.Q = 1, c.H = 1, c.L = 2;
  cs.push_back(c);
  return cs;
}

}  // namespace

TEST_CASE("relational pairing reference: gradients match finite differences", "[relational][pairing][reference]") {
  distill_test::rng g(101);
  for (const pairing_case& c : small_cases()) {
    INFO(describe(c));
    const pairing_problem_d p = make_problem(g, c);
    const std::vector<double> dy = make_dy(g, c);
    const auto gr = distill_ref::pairing_backward(p, dy);
    auto objective = [&](const pairing_problem_d& pp) { return ref_objective(pp, dy); };
    CHECK_CLOSE("d objects", gr.o, fd_of(p, &pairing_problem_d::o, objective), distill_test::tol::fd);
    CHECK_CLOSE("d question", gr.q, fd_of(p, &pairing_problem_d::q, objective), distill_test::tol::fd);
    if (!p.M.empty()) {
      // The reference skips M = 0 pairs in the forward; differentiate the mask where it is soft,
      // and compare dM against <dy, g> computed independently for the zero entries.
      pairing_problem_d ps = p;
      for (auto& m : ps.M) m = m == 0.0 ? 0.5 : m;
      const auto grs = distill_ref::pairing_backward(ps, dy);
      auto obj_s = [&](const pairing_problem_d& pp) { return ref_objective(pp, dy); };
      CHECK_CLOSE("d pair_mask", grs.M, fd_of(ps, &pairing_problem_d::M, obj_s), distill_test::tol::fd);
      CHECK_CLOSE("d pair_mask does not depend on M", gr.M, grs.M, distill_test::tol::f64);
    }
    for (int l = 0; l < c.L; ++l) {
      INFO("layer " << l);
      CHECK_CLOSE("d W", gr.W[static_cast<std::size_t>(l)], fd_of_weight(p, l, false, objective), distill_test::tol::fd);
      if (c.biases) CHECK_CLOSE("d b", gr.b[static_cast<std::size_t>(l)], fd_of_weight(p, l, true, objective), distill_test::tol::fd);
    }
  }
}

TEST_CASE("relational pairing CPU (double): every pass against the reference", "[relational][pairing]") {
  distill_test::rng g(102);
  for (const pairing_case& c : small_cases()) {
    for (pass which : {pass::forward, pass::backward, pass::fused}) {
      INFO(describe(c) << " pass " << static_cast<int>(which));
      const pairing_problem_d p = make_problem(g, c);
      const std::vector<double> dy = make_dy(g, c);
      run_config rc;
      rc.which = which;
      const lib_result r = run_lib<double>(p, dy, rc);
      REQUIRE(r.st.ok());
      CHECK(r.canaries_ok);
      if (which != pass::backward) {
        const auto y = distill_ref::pairing_forward(p);
        CHECK_CLOSE("y", r.y, y, scaled(y, rel_test::rel_f64));
      }
      if (which != pass::forward) check_grads("double", r, distill_ref::pairing_backward(p, dy), rel_test::rel_f64);
    }
  }
}

TEST_CASE("relational pairing CPU: tiles, threads, layouts, accumulation", "[relational][pairing]") {
  distill_test::rng g(103);
  struct variant {
    int threads, tile;
    bool strided, colmajor, accumulate;
  };
  const variant variants[] = {{1, 5, false, false, false}, {2, 7, true, false, false}, {3, 16, false, true, false},
                              {2, 0, true, true, true},    {4, 1, false, false, true},  {2, 3, true, true, false}};
  for (mask_kind mk : {mask_kind::absent, mask_kind::sparse, mask_kind::soft, mask_kind::tenth}) {
    for (const variant& v : variants) {
      pairing_case c;
      c.B = 5, c.N = 5, c.D = 3, c.Q = 2, c.H = 6, c.L = 3, c.mask = mk, c.padded = mk == mask_kind::soft;
      c.self = mk != mask_kind::tenth;
      INFO(describe(c) << " threads " << v.threads << " tile " << v.tile << " strided " << v.strided << " colmajor "
                       << v.colmajor << " accumulate " << v.accumulate);
      const pairing_problem_d p = make_problem(g, c);
      const std::vector<double> dy = make_dy(g, c);
      run_config rc;
      rc.threads = v.threads, rc.tile = v.tile, rc.strided = v.strided, rc.colmajor = v.colmajor, rc.accumulate = v.accumulate;
      const lib_result r = run_lib<double>(p, dy, rc);
      REQUIRE(r.st.ok());
      CHECK(r.canaries_ok);
      const auto y = distill_ref::pairing_forward(p);
      CHECK_CLOSE("y", r.y, y, scaled(y, rel_test::rel_f64));
      check_grads("variant", r, distill_ref::pairing_backward(p, dy), rel_test::rel_f64, v.accumulate);
    }
  }
}

TEST_CASE("relational pairing CPU (float): against the reference, headline-like widths", "[relational][pairing]") {
  distill_test::rng g(104);
  pairing_case shapes[3];
  shapes[0].B = 4, shapes[0].N = 6, shapes[0].D = 8, shapes[0].Q = 11, shapes[0].H = 32, shapes[0].L = 4;
  shapes[1].B = 2, shapes[1].N = 9, shapes[1].D = 5, shapes[1].Q = 3, shapes[1].H = 17, shapes[1].L = 3, shapes[1].padded = true;
  shapes[2].B = 3, shapes[2].N = 7, shapes[2].D = 4, shapes[2].Q = 0, shapes[2].H = 64, shapes[2].L = 2, shapes[2].self = false;
  for (pairing_case c : shapes) {
    for (mask_kind mk : {mask_kind::absent, mask_kind::soft, mask_kind::tenth}) {
      c.mask = mk;
      INFO(describe(c));
      const pairing_problem_d p = make_problem(g, c);
      const std::vector<double> dy = make_dy(g, c);
      run_config rc;
      rc.threads = 2, rc.strided = true;
      const lib_result r = run_lib<float>(p, dy, rc);
      REQUIRE(r.st.ok());
      CHECK(r.canaries_ok);
      const auto y = distill_ref::pairing_forward(p);
      CHECK_CLOSE("y", r.y, y, scaled(y, rel_test::rel_f32));
      check_grads("float", r, distill_ref::pairing_backward(p, dy), rel_test::rel_f32);
    }
  }
}

TEST_CASE("relational pairing CPU: backward matches finite differences of the library forward", "[relational][pairing]") {
  distill_test::rng g(105);
  pairing_case c;
  c.B = 2, c.N = 4, c.D = 2, c.Q = 2, c.H = 5, c.L = 3, c.padded = true, c.mask = mask_kind::soft;
  const pairing_problem_d p = make_problem(g, c);
  const std::vector<double> dy = make_dy(g, c);
  run_config fwd;
  fwd.which = pass::forward, fwd.tile = 3, fwd.threads = 2;
  auto objective = [&](const pairing_problem_d& pp) {
    const lib_result r = run_lib<double>(pp, dy, fwd);
    REQUIRE(r.st.ok());
    return std::inner_product(r.y.begin(), r.y.end(), dy.begin(), 0.0);
  };
  run_config bwd;
  bwd.which = pass::backward, bwd.tile = 3, bwd.threads = 2;
  const lib_result r = run_lib<double>(p, dy, bwd);
  REQUIRE(r.st.ok());
  CHECK_CLOSE("d objects", r.o, fd_of(p, &pairing_problem_d::o, objective), distill_test::tol::fd);
  CHECK_CLOSE("d question", r.q, fd_of(p, &pairing_problem_d::q, objective), distill_test::tol::fd);
  // The mask is soft in (0.1, 0.9) or exactly 0; finite differences stay inside [0, 1] only at
  // the soft entries, so compare there and check the zero entries against the reference.
  {
    pairing_problem_d pm = p;
    std::vector<double> fd = fd_of(pm, &pairing_problem_d::M, [&](const pairing_problem_d& pp) {
      pairing_problem_d q = pp;
      for (auto& m : q.M) m = std::clamp(m, 0.0, 1.0);
      return objective(q);
    });
    const auto ref = distill_ref::pairing_backward(p, dy);
    for (std::size_t k = 0; k < fd.size(); ++k)
      if (p.M[k] == 0.0) fd[k] = ref.M[k];
    CHECK_CLOSE("d pair_mask", r.m, fd, distill_test::tol::fd);
  }
  for (int l = 0; l < c.L; ++l) {
    INFO("layer " << l);
    CHECK_CLOSE("d W", r.w[static_cast<std::size_t>(l)], fd_of_weight(p, l, false, objective), distill_test::tol::fd);
    CHECK_CLOSE("d b", r.b[static_cast<std::size_t>(l)], fd_of_weight(p, l, true, objective), distill_test::tol::fd);
  }
}

TEST_CASE("relational pairing CPU: properties", "[relational][pairing]") {
  distill_test::rng g(106);
  pairing_case c;
  c.B = 3, c.N = 5, c.D = 3, c.Q = 2, c.H = 8, c.L = 3, c.mask = mask_kind::soft;
  const pairing_problem_d p = make_problem(g, c);
  const std::vector<double> dy = make_dy(g, c);
  run_config rc;
  rc.threads = 2, rc.tile = 4;
  const lib_result base = run_lib<double>(p, dy, rc);
  REQUIRE(base.st.ok());

  SECTION("permuting the objects (and the mask) leaves y unchanged and permutes d objects") {
    std::vector<long> perm = {3, 0, 4, 1, 2};
    pairing_problem_d pp = p;
    for (long b = 0; b < c.B; ++b)
      for (long i = 0; i < c.N; ++i) {
        for (long k = 0; k < c.D; ++k)
          pp.o[static_cast<std::size_t>((b * c.N + i) * c.D + k)] = p.o[static_cast<std::size_t>((b * c.N + perm[static_cast<std::size_t>(i)]) * c.D + k)];
        for (long j = 0; j < c.N; ++j)
          pp.M[static_cast<std::size_t>((b * c.N + i) * c.N + j)] =
              p.M[static_cast<std::size_t>((b * c.N + perm[static_cast<std::size_t>(i)]) * c.N + perm[static_cast<std::size_t>(j)])];
      }
    const lib_result r = run_lib<double>(pp, dy, rc);
    REQUIRE(r.st.ok());
    CHECK_CLOSE("y", r.y, base.y, scaled(base.y, 1e-12));
    std::vector<double> expect_o(r.o.size());
    for (long b = 0; b < c.B; ++b)
      for (long i = 0; i < c.N; ++i)
        for (long k = 0; k < c.D; ++k)
          expect_o[static_cast<std::size_t>((b * c.N + i) * c.D + k)] = base.o[static_cast<std::size_t>((b * c.N + perm[static_cast<std::size_t>(i)]) * c.D + k)];
    CHECK_CLOSE("d objects", r.o, expect_o, scaled(expect_o, 1e-12));
    CHECK_CLOSE("d W1", r.w[1], base.w[1], scaled(base.w[1], 1e-11));
  }
  SECTION("y and the parameter gradients are linear in mask_scale; dM is too") {
    pairing_problem_d p2 = p;
    p2.scale = 3.0;
    const lib_result r = run_lib<double>(p2, dy, rc);
    REQUIRE(r.st.ok());
    std::vector<double> y3 = base.y, m3 = base.m, w3 = base.w[2];
    for (auto* v : {&y3, &m3, &w3})
      for (double& x : *v) x *= 3.0;
    CHECK_CLOSE("y", r.y, y3, scaled(y3, 1e-12));
    CHECK_CLOSE("dM", r.m, m3, scaled(m3, 1e-12));
    CHECK_CLOSE("dW3", r.w[2], w3, scaled(w3, 1e-12));
  }
  SECTION("thread count and tile size change nothing beyond rounding") {
    for (int threads : {1, 3}) {
      for (int tile : {1, 64}) {
        run_config r2 = rc;
        r2.threads = threads, r2.tile = tile;
        const lib_result r = run_lib<double>(p, dy, r2);
        REQUIRE(r.st.ok());
        CHECK_CLOSE("y", r.y, base.y, scaled(base.y, 1e-12));
        CHECK_CLOSE("dW0", r.w[0], base.w[0], scaled(base.w[0], 1e-12));
        CHECK_CLOSE("d objects", r.o, base.o, scaled(base.o, 1e-12));
      }
    }
  }
  SECTION("the same call twice gives bitwise the same result") {
    const lib_result r = run_lib<double>(p, dy, rc);
    REQUIRE(r.st.ok());
    CHECK(r.y == base.y);
    CHECK(r.w[1] == base.w[1]);
    CHECK(r.o == base.o);
  }
  SECTION("an all-zero mask gives y = 0 and zero parameter gradients, but dM = <dy, g>") {
    pairing_problem_d pz = p;
    for (auto& m : pz.M) m = 0.0;
    const lib_result r = run_lib<double>(pz, dy, rc);
    REQUIRE(r.st.ok());
    CHECK(*std::max_element(r.y.begin(), r.y.end()) == 0.0);
    CHECK(*std::min_element(r.y.begin(), r.y.end()) == 0.0);
    CHECK(max_abs(r.w[1]) == 0.0);
    CHECK(max_abs(r.o) == 0.0);
    CHECK(max_abs(r.m) > 0.0);
  }
}

TEST_CASE("relational pairing CPU: gated and padded pairs are never read", "[relational][pairing]") {
  distill_test::rng g(107);
  pairing_case c;
  c.B = 2, c.N = 5, c.D = 3, c.Q = 2, c.H = 6, c.L = 3, c.mask = mask_kind::sparse, c.padded = true;
  pairing_problem_d p = make_problem(g, c);
  const std::vector<double> dy = make_dy(g, c);
  // Object 1 of sample 0: every pair that touches it gets mask 0; object N-1 is padded.
  for (long j = 0; j < c.N; ++j) {
    p.M[static_cast<std::size_t>((0 * c.N + 1) * c.N + j)] = 0.0;
    p.M[static_cast<std::size_t>((0 * c.N + j) * c.N + 1)] = 0.0;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  pairing_problem_d pn = p;
  for (long k = 0; k < c.D; ++k) {
    pn.o[static_cast<std::size_t>((0 * c.N + 1) * c.D + k)] = nan;
    pn.o[static_cast<std::size_t>((1 * c.N + c.N - 1) * c.D + k)] = nan;
  }
  run_config rc;
  rc.want_m = false;  // the mask gradient at zero entries would need g there
  const lib_result r = run_lib<double>(pn, dy, rc);
  REQUIRE(r.st.ok());
  const auto y = distill_ref::pairing_forward(p);
  CHECK_CLOSE("y", r.y, y, scaled(y, rel_test::rel_f64));
  auto ref = distill_ref::pairing_backward(p, dy);
  CHECK_CLOSE("d W2", r.w[2], ref.W[2], scaled(ref.W[2], rel_test::rel_f64));
  CHECK_CLOSE("d W0", r.w[0], ref.W[0], scaled(ref.W[0], rel_test::rel_f64));
  CHECK_CLOSE("d objects", r.o, ref.o, scaled(ref.o, rel_test::rel_f64));
}

TEST_CASE("relational pairing CPU: NaN in a used object propagates to its sample only", "[relational][pairing]") {
  distill_test::rng g(108);
  pairing_case c;
  c.B = 2, c.N = 3, c.D = 2, c.Q = 1, c.H = 4, c.L = 2, c.mask = mask_kind::absent;
  pairing_problem_d p = make_problem(g, c);
  p.o[0] = std::numeric_limits<double>::quiet_NaN();
  run_config rc;
  rc.which = pass::forward;
  const lib_result r = run_lib<double>(p, make_dy(g, c), rc);
  REQUIRE(r.st.ok());
  for (long h = 0; h < c.H; ++h) {
    CHECK(std::isnan(r.y[static_cast<std::size_t>(h)]));
    CHECK(std::isfinite(r.y[static_cast<std::size_t>(c.H + h)]));
  }
}

TEST_CASE("relational pairing CPU: bad inputs give clear errors", "[relational][pairing][errors]") {
  using namespace distill;
  const index_t B = 2, N = 3, D = 2, Q = 2, H = 4;
  const int L = 2;
  std::vector<float> o(B * N * D, 0.5f), q(B * Q, 0.5f), m(B * N * N, 1.0f), params(relational_mlp_parameter_count(D, Q, H, L), 0.1f);
  std::vector<float> y(B * H), dy(B * H, 1.0f), go(B * N * D);
  std::vector<std::uint8_t> om(B * N, 1);
  const cpu ctx{1};
  std::vector<std::byte> ws(relational_pairing_workspace_size(ctx, B, N, D, Q, H, L));
  auto wsv = make_view(ws.data(), static_cast<index_t>(ws.size()));
  auto g = relational_mlp_view(static_cast<const float*>(params.data()), D, Q, H, L);
  auto ov = make_view(static_cast<const float*>(o.data()), B, N, D);
  auto qv = make_view(static_cast<const float*>(q.data()), B, Q);
  auto mv = make_view(static_cast<const float*>(m.data()), B, N, N);
  auto omv = make_view(static_cast<const std::uint8_t*>(om.data()), B, N);
  auto yv = make_view(y.data(), B, H);
  auto dyv = make_view(static_cast<const float*>(dy.data()), B, H);
  relational_pairing_grads<float> grads;
  grads.objects = make_view(go.data(), B, N, D);

  REQUIRE(relational_pairing_forward(ctx, ov, qv, mv, omv, g, yv, wsv).ok());
  REQUIRE(relational_pairing_backward(ctx, ov, qv, mv, omv, g, dyv, grads, wsv).ok());

  auto code = [](const status& s) { return s.code(); };
  SECTION("shape mismatches") {
    CHECK(code(relational_pairing_forward(ctx, ov, make_view(static_cast<const float*>(q.data()), B - 1, Q), mv, omv, g, yv, wsv)) == errc::shape_mismatch);
    CHECK(code(relational_pairing_forward(ctx, ov, qv, make_view(static_cast<const float*>(m.data()), B, N, N - 1), omv, g, yv, wsv)) == errc::shape_mismatch);
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, make_view(static_cast<const std::uint8_t*>(om.data()), B, N - 1), g, yv, wsv)) == errc::shape_mismatch);
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g, make_view(y.data(), B, H - 1), wsv)) == errc::shape_mismatch);
    auto g_bad = g;
    g_bad.weight[0] = make_view(static_cast<const float*>(params.data()), 2 * D + Q - 1, H);
    const status st = relational_pairing_forward(ctx, ov, qv, mv, omv, g_bad, yv, wsv);
    CHECK(st.code() == errc::shape_mismatch);
    CHECK(st.message().find("2D + Q") != std::string::npos);
    g_bad = g;
    g_bad.weight[1] = make_view(static_cast<const float*>(params.data()), H, H + 1);
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g_bad, yv, wsv)) == errc::shape_mismatch);
    g_bad = g;
    g_bad.bias[1] = make_view(static_cast<const float*>(params.data()), H - 1);
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g_bad, yv, wsv)) == errc::shape_mismatch);
    // Without a question the first layer has 2D rows.
    CHECK(code(relational_pairing_forward(ctx, ov, host_view<const float, 2>{}, mv, omv, g, yv, wsv)) == errc::shape_mismatch);
    relational_pairing_grads<float> bad = grads;
    bad.objects = make_view(go.data(), B, N, D - 1);
    CHECK(code(relational_pairing_backward(ctx, ov, qv, mv, omv, g, dyv, bad, wsv)) == errc::shape_mismatch);
    bad = grads;
    bad.g.layers = 3;
    CHECK(code(relational_pairing_backward(ctx, ov, qv, mv, omv, g, dyv, bad, wsv)) == errc::shape_mismatch);
    CHECK(code(relational_pairing_backward(ctx, ov, qv, mv, omv, g, make_view(static_cast<const float*>(dy.data()), B, H + 1), grads, wsv)) == errc::shape_mismatch);
    CHECK(code(relational_pairing_forward(ctx, make_view(static_cast<const float*>(o.data()), B, index_t(0), D), qv, host_view<const float, 3>{}, host_view<const std::uint8_t, 2>{}, g, yv, wsv)) == errc::shape_mismatch);
  }
  SECTION("layer count") {
    auto g0 = g;
    g0.layers = 0;
    const status st = relational_pairing_forward(ctx, ov, qv, mv, omv, g0, yv, wsv);
    CHECK(st.code() == errc::invalid_argument);
    CHECK(st.message().find("g.layers") != std::string::npos);
    g0.layers = relational_max_layers + 1;
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g0, yv, wsv)) == errc::invalid_argument);
    g0 = g;
    g0.weight[1] = {};
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g0, yv, wsv)) == errc::invalid_argument);
  }
  SECTION("mask values outside [0, 1] and NaN") {
    std::vector<float> mb = m;
    mb[5] = 1.5f;
    auto mbv = make_view(static_cast<const float*>(mb.data()), B, N, N);
    const status st = relational_pairing_forward(ctx, ov, qv, mbv, omv, g, yv, wsv);
    CHECK(st.code() == errc::invalid_argument);
    CHECK(st.message().find("[0, 1]") != std::string::npos);
    mb[5] = -0.01f;
    CHECK(code(relational_pairing_backward(ctx, ov, qv, mbv, omv, g, dyv, grads, wsv)) == errc::invalid_argument);
    mb[5] = std::numeric_limits<float>::quiet_NaN();
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mbv, omv, g, yv, wsv)) == errc::non_finite);
  }
  SECTION("options, workspace, layouts, null pointers") {
    relational_pairing_options opt;
    opt.mask_scale = -1.0f;
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g, yv, wsv, opt)) == errc::invalid_argument);
    opt.mask_scale = std::numeric_limits<float>::infinity();
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g, yv, wsv, opt)) == errc::invalid_argument);
    opt = {};
    opt.tile_pairs = -2;
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g, yv, wsv, opt)) == errc::invalid_argument);
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g, yv, make_view(ws.data(), index_t(ws.size() / 2)))) == errc::invalid_argument);
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g, yv, host_view<std::byte, 1>{})) == errc::invalid_argument);
    // More threads than the workspace was sized for.
    CHECK(code(relational_pairing_forward(cpu{2}, ov, qv, mv, omv, g, yv, wsv)) == errc::invalid_argument);
    auto g_bad = g;  // a weight with unit stride along neither axis
    g_bad.weight[1] = make_strided_view(static_cast<const float*>(params.data()), std::array<index_t, 2>{H, H}, std::array<index_t, 2>{2 * H, 2});
    CHECK(code(relational_pairing_forward(ctx, ov, qv, mv, omv, g_bad, yv, wsv)) == errc::unsupported_layout);
    const host_view<const float, 2> null_q(nullptr, {B, Q}, {Q, 1});
    CHECK(code(relational_pairing_forward(ctx, ov, null_q, mv, omv, g, yv, wsv)) == errc::invalid_argument);
    CHECK(code(relational_pairing_forward(ctx, host_view<const float, 3>{}, qv, mv, omv, g, yv, wsv)) == errc::invalid_argument);
    const host_view<const float, 3> neg(o.data() + B * N * D - 1, {B, N, D}, {-N * D, -D, -1});
    CHECK(code(relational_pairing_forward(ctx, neg, qv, mv, omv, g, yv, wsv)) == errc::unsupported_layout);
    relational_pairing_grads<float> bad = grads;
    bad.question = make_view(go.data(), B, Q);
    CHECK(code(relational_pairing_backward(ctx, ov, host_view<const float, 2>{}, mv, omv, relational_mlp_view(static_cast<const float*>(params.data()), D, 0, H, L), dyv, bad, wsv)) == errc::invalid_argument);
    CHECK(code(relational_pairing_forward_backward(ctx, ov, qv, mv, omv, g, dyv, host_view<float, 2>{}, grads, wsv)) == errc::invalid_argument);
  }
}
