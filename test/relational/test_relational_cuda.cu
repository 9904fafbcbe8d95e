// SPDX-License-Identifier: MIT
// Relational family on CUDA: pairing (strict fp32, TF32, bf16) against the double reference and
// against the CPU path on every pass, mask kind, padding, i = j option, layer count, widths that
// are and are not multiples of the tile sizes, several tiles per block, strided and
// column-major layouts, accumulation; CUDA-graph capture; the persistent blocks' multi-tile loop;
// the pair scorer and its losses; box features; bad inputs (wrong memory space, layouts, shapes,
// workspace); canaries around every output. The harness (pairing_harness.hpp) is the CPU tests'
// one, run on cuda_space.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <memory>
#include <numeric>

#include "distill/relational/box_geometry.hpp"
#include "distill/relational/pair_scorer.hpp"
#include "distill/relational/pairing.hpp"
#include "relational/pairing_harness.hpp"
#include "relational/scorer_test_util.hpp"
#include "support/backend_cuda.cuh"

using test_space = distill::cuda_space;

#include "relational/pairing_cases.hpp"

using namespace rel_test;
using distill::index_t;
using distill_ref::pairing_problem_d;
using distill_ref::scorer_problem_d;
using distill_test::device_buffer;

namespace {

double rel_for(distill::matmul_precision m) {
  switch (m) {
    case distill::matmul_precision::fp32: return 1e-4;  // float with atomics in an unspecified order
    case distill::matmul_precision::tf32: return rel_tf32;
    case distill::matmul_precision::bf16: return rel_bf16;
  }
  return 0;
}
const char* name_of(distill::matmul_precision m) {
  return m == distill::matmul_precision::fp32 ? "fp32" : m == distill::matmul_precision::tf32 ? "tf32" : "bf16";
}

void check_all(const std::string& what, const lib_result& got, const std::vector<double>& y, const distill_ref::pairing_grads_d& g,
               double rel, bool accumulate) {
  auto want = [&](const std::vector<double>& v) { return accumulate ? plus_base(v) : v; };
  if (!got.y.empty()) CHECK_CLOSE(what + " y", got.y, y, scaled(y, rel));
  if (!got.o.empty()) CHECK_CLOSE(what + " d objects", got.o, want(g.o), scaled(g.o, rel));
  if (!got.q.empty()) CHECK_CLOSE(what + " d question", got.q, want(g.q), scaled(g.q, rel));
  if (!got.m.empty()) CHECK_CLOSE(what + " d pair_mask", got.m, want(g.M), scaled(g.M, rel));
  for (std::size_t l = 0; l < got.w.size(); ++l) {
    CHECK_CLOSE(what + " d W" + std::to_string(l), got.w[l], want(g.W[l]), scaled(g.W[l], rel));
    CHECK_CLOSE(what + " d b" + std::to_string(l), got.b[l], want(g.b[l]), scaled(g.b[l], rel));
  }
}

}  // namespace

TEST_CASE("relational pairing CUDA: every math mode against the reference", "[relational][pairing][cuda]") {
  distill_test::rng g(401);
  std::vector<pairing_case> cases;
  {
    pairing_case c;  // small, every mask kind
    c.B = 3, c.N = 4, c.D = 3, c.Q = 2, c.H = 16, c.L = 3;
    for (mask_kind mk : {mask_kind::absent, mask_kind::ones, mask_kind::zeros, mask_kind::sparse, mask_kind::soft, mask_kind::tenth}) {
      c.mask = mk;
      cases.push_back(c);
    }
    c.mask = mask_kind::soft, c.padded = true, c.self = false;
    cases.push_back(c);
    c = {};
    c.B = 2, c.N = 3, c.D = 2, c.Q = 0, c.H = 7, c.L = 1, c.last_relu = false, c.biases = false;  // H not a multiple of 4
    cases.push_back(c);
    c = {};
    c.B = 5, c.N = 9, c.D = 5, c.Q = 11, c.H = 200, c.L = 4, c.mask = mask_kind::sparse;  // 2 column blocks, ragged; 405 pairs
    cases.push_back(c);
    c = {};
    c.B = 4, c.N = 25, c.D = 26, c.Q = 11, c.H = 64, c.L = 4, c.mask = mask_kind::absent;  // 2500 pairs: many tiles per block
    cases.push_back(c);
    c.mask = mask_kind::tenth, c.scale = 2.0;
    cases.push_back(c);
  }
  for (const pairing_case& c : cases) {
    const pairing_problem_d p = make_problem(g, c);
    const std::vector<double> dy = make_dy(g, c);
    const auto y = distill_ref::pairing_forward(p);
    const auto gr = distill_ref::pairing_backward(p, dy);
    for (auto math : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
      for (pass which : {pass::forward, pass::backward, pass::fused}) {
        INFO(describe(c) << " math " << name_of(math) << " pass " << static_cast<int>(which));
        run_config rc;
        rc.precision = math, rc.which = which;
        const lib_result r = run_lib<float, distill::cuda_space>(p, dy, rc);
        REQUIRE(r.st.ok());
        CHECK(r.canaries_ok);
        check_all(name_of(math), r, y, gr, rel_for(math), false);
      }
    }
  }
}

TEST_CASE("relational pairing CUDA: layouts, accumulation, graph capture, CPU agreement", "[relational][pairing][cuda]") {
  distill_test::rng g(402);
  pairing_case c;
  c.B = 6, c.N = 7, c.D = 4, c.Q = 3, c.H = 48, c.L = 3, c.mask = mask_kind::soft, c.padded = true;
  const pairing_problem_d p = make_problem(g, c);
  const std::vector<double> dy = make_dy(g, c);
  const auto y = distill_ref::pairing_forward(p);
  const auto gr = distill_ref::pairing_backward(p, dy);
  for (auto math : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    INFO("math " << name_of(math));
    run_config rc;
    rc.precision = math, rc.strided = true, rc.colmajor = true, rc.accumulate = true;
    const lib_result r = run_lib<float, distill::cuda_space>(p, dy, rc);
    REQUIRE(r.st.ok());
    CHECK(r.canaries_ok);
    check_all("strided colmajor accumulate", r, y, gr, rel_for(math), true);
    // Captured in a CUDA graph on the session's non-blocking stream.
    run_config rg_config;
    rg_config.precision = math;
    rg_config.capture = true;
    const lib_result rg = run_lib<float, distill::cuda_space>(p, dy, rg_config);
    REQUIRE(rg.st.ok());
    check_all("graph", rg, y, gr, rel_for(math), false);
  }
  // Strict fp32 against the CPU float path (same float inputs).
  run_config rc;
  rc.threads = 2;
  const lib_result cpu = run_lib<float>(p, dy, rc);
  REQUIRE(cpu.st.ok());
  const lib_result r = run_lib<float, distill::cuda_space>(p, dy, run_config{});
  REQUIRE(r.st.ok());
  CHECK_CLOSE("y vs CPU", r.y, cpu.y, scaled(cpu.y, 1e-4));
  CHECK_CLOSE("d objects vs CPU", r.o, cpu.o, scaled(cpu.o, 1e-4));
  CHECK_CLOSE("d W1 vs CPU", r.w[1], cpu.w[1], scaled(cpu.w[1], 1e-4));
  CHECK_CLOSE("d pair_mask vs CPU", r.m, cpu.m, scaled(cpu.m, 1e-4));
}

TEST_CASE("relational pairing CUDA: bad inputs give clear errors", "[relational][pairing][cuda][errors]") {
  using namespace distill;
  const index_t B = 2, N = 3, D = 2, Q = 2, H = 8;
  const int L = 2;
  device_buffer<float> o(B * N * D), q(B * Q), m(B * N * N), params(relational_mlp_parameter_count(D, Q, H, L)), y(B * H);
  o.fill_bytes(0), q.fill_bytes(0), m.fill_bytes(0), params.fill_bytes(0);
  const cuda ctx{};
  device_buffer<std::byte> ws(relational_pairing_workspace_size(ctx, B, N, D, Q, H, L));
  auto wsv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
  auto g = relational_mlp_view<cuda_space>(static_cast<const float*>(params.data()), D, Q, H, L);
  auto ov = make_view<cuda_space>(static_cast<const float*>(o.data()), B, N, D);
  auto qv = make_view<cuda_space>(static_cast<const float*>(q.data()), B, Q);
  auto mv = make_view<cuda_space>(static_cast<const float*>(m.data()), B, N, N);
  const cuda_view<const std::uint8_t, 2> no_om;
  auto yv = make_view<cuda_space>(y.data(), B, H);
  REQUIRE(relational_pairing_forward(ctx, ov, qv, mv, no_om, g, yv, wsv).ok());
  // Host memory passed as device memory.
  std::vector<float> host(B * N * D);
  auto host_as_device = make_view<cuda_space>(static_cast<const float*>(host.data()), B, N, D);
  CHECK(relational_pairing_forward(ctx, host_as_device, qv, mv, no_om, g, yv, wsv).code() == errc::wrong_memory_space);
  // Non-unit inner stride (the CUDA path wants unit stride along the last axis).
  device_buffer<float> q2(2 * B * Q);
  auto q_strided = make_strided_view<cuda_space>(static_cast<const float*>(q2.data()), std::array<index_t, 2>{B, Q}, std::array<index_t, 2>{2 * Q, 2});
  CHECK(relational_pairing_forward(ctx, ov, q_strided, mv, no_om, g, yv, wsv).code() == errc::unsupported_layout);
  // Shapes, layer count, workspace.
  CHECK(relational_pairing_forward(ctx, ov, qv, make_view<cuda_space>(static_cast<const float*>(m.data()), B, N, N - 1), no_om, g, yv, wsv).code() ==
        errc::shape_mismatch);
  auto g0 = g;
  g0.layers = 0;
  CHECK(relational_pairing_forward(ctx, ov, qv, mv, no_om, g0, yv, wsv).code() == errc::invalid_argument);
  CHECK(relational_pairing_forward(ctx, ov, qv, mv, no_om, g, yv, make_view<cuda_space>(ws.data(), index_t(64))).code() == errc::invalid_argument);
  relational_pairing_options opt;
  opt.precision = static_cast<distill::matmul_precision>(7);
  CHECK(relational_pairing_forward(ctx, ov, qv, mv, no_om, g, yv, wsv, opt).code() == errc::invalid_argument);
  distill_test::cuda_sync();
}

TEST_CASE("pair scorer CUDA: forward, backward and losses against the reference and the CPU path", "[relational][scorer][cuda]") {
  distill_test::rng g(403);
  for (auto kind : {distill_ref::scorer_kind_d::mlp, distill_ref::scorer_kind_d::bilinear}) {
    for (bool padded : {false, true}) {
      scorer_case c;
      c.kind = kind, c.padded = padded, c.self = !padded, c.B = 4, c.N = 6, c.D = 5, c.Q = 3, c.K = 16;
      const scorer_problem_d p = make_scorer_problem(g, c);
      for (distill_ref::norm_d n : {distill_ref::norm_d::sigmoid, distill_ref::norm_d::softmax_all, distill_ref::norm_d::softmax_row}) {
        INFO(describe(c) << " " << rel_test::name_of(n));
        using namespace distill;
        const long B = c.B, N = c.N, D = c.D, Q = c.Q, K = c.K;
        const long in1 = kind == distill_ref::scorer_kind_d::mlp ? 2 * D + Q : D + Q;
        const long w2r = kind == distill_ref::scorer_kind_d::mlp ? K : D + Q, w2c = kind == distill_ref::scorer_kind_d::mlp ? 1 : K;
        auto up = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
        device_buffer<float> o(up(p.o)), q(up(p.q)), w1(up(p.W1)), b1(up(p.b1)), w2(up(p.W2)), b2(up(p.b2));
        device_buffer<std::uint8_t> om(p.om.empty() ? std::vector<std::uint8_t>(1, 1) : p.om);
        pair_scorer_weights<const float, cuda_space> w;
        w.kind = kind == distill_ref::scorer_kind_d::mlp ? pair_scorer_kind::mlp : pair_scorer_kind::bilinear;
        w.w1 = make_view<cuda_space>(static_cast<const float*>(w1.data()), in1, K);
        w.b1 = make_view<cuda_space>(static_cast<const float*>(b1.data()), K);
        w.w2 = make_view<cuda_space>(static_cast<const float*>(w2.data()), w2r, w2c);
        w.b2 = make_view<cuda_space>(static_cast<const float*>(b2.data()), static_cast<long>(p.b2.size()));
        const auto ov = make_view<cuda_space>(static_cast<const float*>(o.data()), B, N, D);
        const auto qv = make_view<cuda_space>(static_cast<const float*>(q.data()), B, Q);
        const auto omv = p.om.empty() ? cuda_view<const std::uint8_t, 2>{} : make_view<cuda_space>(static_cast<const std::uint8_t*>(om.data()), B, N);
        const cuda ctx{};
        device_buffer<std::byte> ws(pair_scorer_workspace_size(ctx, B, N, D, Q, K));
        const auto wsv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
        device_buffer<float> s(B * N * N), m(B * N * N);
        pair_scorer_options opt;
        opt.normalization = to_lib(n), opt.include_self_pairs = c.self;
        REQUIRE(pair_scorer_forward(ctx, ov, qv, omv, w, make_view<cuda_space>(s.data(), B, N, N), make_view<cuda_space>(m.data(), B, N, N), wsv, opt).ok());
        distill_test::cuda_sync();
        const auto rs = distill_ref::scorer_scores(p);
        CHECK_CLOSE("scores", s.download(), rs, scaled(rs, 2e-5));
        const auto rm = distill_ref::normalise(p, n, rs);
        CHECK_CLOSE("weights", m.download(), rm, (distill_test::tolerance{1e-5, 1e-4}));

        // Backward from dL/dm and a direct dL/ds, against the CPU double path.
        const std::size_t np = static_cast<std::size_t>(B * N * N);
        const std::vector<double> dm = g.normals(np), dsx = g.normals(np);
        device_buffer<float> ddm(up(dm)), ddsx(up(dsx)), go(B * N * D), gq(B * Q), gs(B * N * N), gw1(in1 * K), gb1(K), gw2(w2r * w2c), gb2(p.b2.size());
        pair_scorer_grads<float, cuda_space> grads;
        grads.objects = make_view<cuda_space>(go.data(), B, N, D);
        grads.question = make_view<cuda_space>(gq.data(), B, Q);
        grads.scores = make_view<cuda_space>(gs.data(), B, N, N);
        grads.weights.kind = w.kind;
        grads.weights.w1 = make_view<cuda_space>(gw1.data(), in1, K), grads.weights.b1 = make_view<cuda_space>(gb1.data(), K);
        grads.weights.w2 = make_view<cuda_space>(gw2.data(), w2r, w2c), grads.weights.b2 = make_view<cuda_space>(gb2.data(), static_cast<long>(p.b2.size()));
        REQUIRE(pair_scorer_backward(ctx, ov, qv, omv, w, make_view<cuda_space>(static_cast<const float*>(m.data()), B, N, N),
                                     make_view<cuda_space>(static_cast<const float*>(ddm.data()), B, N, N),
                                     make_view<cuda_space>(static_cast<const float*>(ddsx.data()), B, N, N), grads, wsv, opt)
                    .ok());
        distill_test::cuda_sync();
        // CPU reference run in double.
        std::vector<double> mref(np), sref(np), cgo(B * N * D), cgq(B * Q), cgs(np), cgw1(in1 * K), cgb1(K), cgw2(w2r * w2c), cgb2(p.b2.size());
        pair_scorer_weights<const double> wd;
        wd.kind = w.kind;
        wd.w1 = make_view(p.W1.data(), in1, K), wd.b1 = make_view(p.b1.data(), K), wd.w2 = make_view(p.W2.data(), w2r, w2c);
        wd.b2 = make_view(p.b2.data(), static_cast<long>(p.b2.size()));
        const auto omh = p.om.empty() ? host_view<const std::uint8_t, 2>{} : make_view(p.om.data(), B, N);
        REQUIRE(pair_scorer_forward(cpu{1}, make_view(p.o.data(), B, N, D), make_view(p.q.data(), B, Q), omh, wd, make_view(sref.data(), B, N, N),
                                    make_view(mref.data(), B, N, N), {}, opt)
                    .ok());
        pair_scorer_grads<double> cg;
        cg.objects = make_view(cgo.data(), B, N, D), cg.question = make_view(cgq.data(), B, Q), cg.scores = make_view(cgs.data(), B, N, N);
        cg.weights.kind = w.kind;
        cg.weights.w1 = make_view(cgw1.data(), in1, K), cg.weights.b1 = make_view(cgb1.data(), K), cg.weights.w2 = make_view(cgw2.data(), w2r, w2c);
        cg.weights.b2 = make_view(cgb2.data(), static_cast<long>(p.b2.size()));
        REQUIRE(pair_scorer_backward(cpu{1}, make_view(p.o.data(), B, N, D), make_view(p.q.data(), B, Q), omh, wd, make_view(mref.data(), B, N, N),
                                     make_view(dm.data(), B, N, N), make_view(dsx.data(), B, N, N), cg, {}, opt)
                    .ok());
        CHECK_CLOSE("d scores", gs.download(), cgs, scaled(cgs, 1e-4));
        CHECK_CLOSE("d objects", go.download(), cgo, scaled(cgo, 1e-4));
        CHECK_CLOSE("d question", gq.download(), cgq, scaled(cgq, 1e-4));
        CHECK_CLOSE("d w1", gw1.download(), cgw1, scaled(cgw1, 1e-4));
        CHECK_CLOSE("d b1", gb1.download(), cgb1, scaled(cgb1, 1e-4));
        CHECK_CLOSE("d w2", gw2.download(), cgw2, scaled(cgw2, 1e-4));
        CHECK_CLOSE("d b2", gb2.download(), cgb2, scaled(cgb2, 1e-4));

        // Supervision loss, every reduction.
        const auto t = make_target(g, p, true);
        device_buffer<float> dt(up(t)), dsr(up(rs));
        for (reduction red : {reduction::none, reduction::sum, reduction::mean, reduction::batchmean}) {
          INFO("reduction " << to_string(red));
          opt.reduction = red, opt.grad_scale = 0.5f;
          const long nl = red == reduction::none ? B : 1;
          device_buffer<float> loss(nl), grad(np);
          REQUIRE(pair_scorer_loss_forward_backward(ctx, make_view<cuda_space>(static_cast<const float*>(dsr.data()), B, N, N),
                                                    make_view<cuda_space>(static_cast<const float*>(dt.data()), B, N, N), omv,
                                                    make_view<cuda_space>(loss.data(), nl), make_view<cuda_space>(grad.data(), B, N, N), wsv, opt)
                      .ok());
          distill_test::cuda_sync();
          std::vector<double> lref(static_cast<std::size_t>(nl)), gref(np);
          REQUIRE(pair_scorer_loss_forward_backward(cpu{1}, make_view(rs.data(), B, N, N), make_view(t.data(), B, N, N), omh,
                                                    make_view(lref.data(), nl), make_view(gref.data(), B, N, N), {}, opt)
                      .ok());
          CHECK_CLOSE("loss", loss.download(), lref, scaled(lref, 1e-5));
          CHECK_CLOSE("d scores", grad.download(), gref, scaled(gref, 1e-5));
        }
        opt.reduction = reduction::batchmean, opt.grad_scale = 1.0f;
      }
    }
  }
}

TEST_CASE("box features CUDA: against the reference, backward against the CPU path", "[relational][box][cuda]") {
  using namespace distill;
  distill_test::rng g(404);
  const long B = 3, N = 7, P = B * N * N;
  std::vector<float> boxes;
  for (long k = 0; k < B * N; ++k) {
    const double w = g.uniform(0.05, 0.5), h = g.uniform(0.05, 0.5), x = g.uniform(0, 1 - w), y = g.uniform(0, 1 - h);
    for (double v : {x, y, x + w, y + h}) boxes.push_back(static_cast<float>(v));
  }
  std::vector<float> sb, ob;
  std::vector<double> expected;
  for (long b = 0; b < B; ++b)
    for (long i = 0; i < N; ++i)
      for (long j = 0; j < N; ++j) {
        double s[4], o[4];
        for (int k = 0; k < 4; ++k) s[k] = boxes[static_cast<std::size_t>((b * N + i) * 4 + k)], o[k] = boxes[static_cast<std::size_t>((b * N + j) * 4 + k)];
        const auto f = distill_ref::box_features(s, o);
        expected.insert(expected.end(), f.begin(), f.end());
        for (int k = 0; k < 4; ++k) sb.push_back(static_cast<float>(s[k])), ob.push_back(static_cast<float>(o[k]));
      }
  device_buffer<float> d_boxes(boxes), d_s(sb), d_o(ob), d_all(P * box_pair_feature_count), d_f(P * box_pair_feature_count);
  const cuda ctx{};
  REQUIRE(box_pair_features_all_pairs_forward(ctx, make_view<cuda_space>(static_cast<const float*>(d_boxes.data()), B, N, 4),
                                              make_view<cuda_space>(d_all.data(), B, N, N, box_pair_feature_count))
              .ok());
  REQUIRE(box_pair_features_forward(ctx, box_pairs{make_view<cuda_space>(static_cast<const float*>(d_s.data()), P, 4),
                                    make_view<cuda_space>(static_cast<const float*>(d_o.data()), P, 4)},
                                    make_view<cuda_space>(d_f.data(), P, box_pair_feature_count))
              .ok());
  distill_test::cuda_sync();
  CHECK_CLOSE("all pairs", d_all.download(), expected, (distill_test::tolerance{3e-5, 3e-5}));
  CHECK_CLOSE("pair list", d_f.download(), expected, (distill_test::tolerance{3e-5, 3e-5}));
  // Backward against the CPU path (float, same inputs).
  std::vector<float> gf(static_cast<std::size_t>(P * box_pair_feature_count));
  for (auto& x : gf) x = static_cast<float>(g.normal());
  device_buffer<float> d_gf(gf), d_gs(P * 4), d_go(P * 4);
  REQUIRE(box_pair_features_backward(ctx, box_pairs{make_view<cuda_space>(static_cast<const float*>(d_s.data()), P, 4),
                                     make_view<cuda_space>(static_cast<const float*>(d_o.data()), P, 4)},
                                     make_view<cuda_space>(static_cast<const float*>(d_gf.data()), P, box_pair_feature_count), box_pair_grads{make_view<cuda_space>(d_gs.data(), P, 4), make_view<cuda_space>(d_go.data(), P, 4)})
              .ok());
  distill_test::cuda_sync();
  std::vector<float> gs(P * 4), go(P * 4);
  REQUIRE(box_pair_features_backward(cpu{1}, box_pairs{make_view(static_cast<const float*>(sb.data()), P, 4), make_view(static_cast<const float*>(ob.data()), P, 4)},
                                     make_view(static_cast<const float*>(gf.data()), P, box_pair_feature_count), box_pair_grads{make_view(gs.data(), P, 4),
                                     make_view(go.data(), P, 4)})
              .ok());
  CHECK_CLOSE("d subject", d_gs.download(), gs, (distill_test::tolerance{1e-3, 1e-4}));
  CHECK_CLOSE("d object", d_go.download(), go, (distill_test::tolerance{1e-3, 1e-4}));
  // Host memory refused.
  CHECK(box_pair_features_forward(ctx, box_pairs{make_view<cuda_space>(static_cast<const float*>(sb.data()), P, 4),
                                  make_view<cuda_space>(static_cast<const float*>(d_o.data()), P, 4)},
                                  make_view<cuda_space>(d_f.data(), P, box_pair_feature_count))
            .code() == errc::wrong_memory_space);
}
