// SPDX-License-Identifier: MIT
// CUDA paths of the features family against the CPU double path (itself checked against the
// double reference and finite differences in the CPU tests) on inputs rounded to the storage
// type, for float, float16 and bfloat16: every kernel variant (plane sizes <= 64, <= 256,
// <= 1024, <= 4096, streaming), strided views mirrored with their canaries, every option, bad
// inputs (wrong memory space, layout, workspace), determinism.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/features/feature_stats.hpp"
#include "distill/features/text_embedding_classifier.hpp"
#include "features_test_util.hpp"
#include "reference/features_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using distill_test::cuda_sync;
using distill_test::device_buffer;
using features_ref::shape4;
using features_test::padded;

namespace {

/// A padded host buffer mirrored in device memory (canary bands and padding included).
template <class T, int R>
struct mirrored {
  padded<T, R>& host;
  device_buffer<T> dev;
  explicit mirrored(padded<T, R>& h) : host(h), dev(h.full_size()) { dev.upload(h.full()); }
  cuda_view<T, R> view() { return host.template view_at<cuda_space>(dev.data()); }
  cuda_view<const T, R> cview() { return host.template view_at<cuda_space, const T>(dev.data()); }
  std::vector<double> fetch() {
    host.set_full(dev.download());
    return host.get();
  }
};

template <class T>
double rel_tol() {
  if constexpr (std::is_same_v<T, float>) return 3e-5;
  else if constexpr (std::is_same_v<T, float16>) return 3e-3;
  else return 2e-2;
}

/// |a - e| <= rel * max|e| + rel * |e|: gradients are small numbers whose scale varies per case.
void check_scaled(const char* what, const std::vector<double>& a, const std::vector<double>& e, double rel) {
  double mx = 0;
  for (double v : e) mx = std::max(mx, std::fabs(v));
  CHECK_CLOSE(what, a, e, (distill_test::tolerance{rel * mx + 1e-30, rel}));
}

std::array<index_t, 4> ext(const shape4& s) { return {s.B, s.C, s.H, s.W}; }
std::array<index_t, 4> pads(distill_test::rng& g) {
  return {features_test::random_pad(g), features_test::random_pad(g), features_test::random_pad(g),
          features_test::random_pad(g)};
}
std::vector<double> features(distill_test::rng& g, const shape4& s, double constant_p) {
  std::vector<double> x(static_cast<std::size_t>(s.size()));
  for (long b = 0; b < s.B; ++b)
    for (long c = 0; c < s.C; ++c) {
      const double mu = g.normal(0, 1.5), sd = g.uniform(0.4, 2.0), k = g.normal();
      const bool constant = g.coin(constant_p);
      for (long h = 0; h < s.H; ++h)
        for (long w = 0; w < s.W; ++w) x[s.at(b, c, h, w)] = constant ? k : g.normal(mu, sd);
    }
  return x;
}
/// Spatial sizes that select every kernel variant: <= 64, <= 256, <= 1024, <= 4096, streaming.
shape4 variant_shape(distill_test::rng& g, int i) {
  static const long hw[][2] = {{1, 1}, {5, 7}, {8, 8}, {13, 17}, {16, 16}, {20, 30}, {32, 32}, {50, 60}, {64, 64}, {70, 71}};
  const auto& p = hw[i % 10];
  return {g.integer(1, 3), g.integer(1, 4), p[0], p[1]};
}
cuda_view<std::byte, 1> ws_view(device_buffer<std::byte>& b) {
  return make_view<cuda_space>(b.data(), static_cast<index_t>(b.size()));
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA channel statistics and their backward", "[features][cuda][stats]", float, float16, bfloat16) {
  using T = TestType;
  distill_test::rng g(1101);
  for (int trial = 0; trial < 20; ++trial) {
    const shape4 s = variant_shape(g, trial);
    feature_stats_options o;
    o.unbiased = s.plane() > 1 && trial % 3 == 1;
    o.eps = trial % 2 ? 1e-5 : 1e-2;
    const auto x = features_test::rounded<T>(features(g, s, 0.2));
    CAPTURE(trial, s.B, s.C, s.H, s.W, o.unbiased);
    padded<T, 4> px(ext(s), pads(g));
    px.set(x);
    mirrored<T, 4> dx(px);
    device_buffer<float> dm(s.B * s.C), ds(s.B * s.C);
    REQUIRE(channel_stats_forward(cuda{}, dx.cview(), dm.view(s.B, s.C), ds.view(s.B, s.C), o).ok());
    cuda_sync();
    std::vector<double> rm(s.B * s.C), rs(s.B * s.C);
    REQUIRE(channel_stats_forward(cpu{1}, make_view(x.data(), s.B, s.C, s.H, s.W), make_view(rm.data(), s.B, s.C),
                                  make_view(rs.data(), s.B, s.C), o)
                .ok());
    const auto m = dm.download(), sd = ds.download();
    check_scaled("mean", std::vector<double>(m.begin(), m.end()), rm, 3e-6);
    check_scaled("std", std::vector<double>(sd.begin(), sd.end()), rs, 3e-5);

    const auto gm = g.normals<float>(s.B * s.C), gs = g.normals<float>(s.B * s.C);
    device_buffer<float> dgm(gm), dgs(gs);
    padded<T, 4> pgx(ext(s), pads(g));
    mirrored<T, 4> dgx(pgx);
    REQUIRE(channel_stats_backward(cuda{}, dx.cview(), as_const(dgm.view(s.B, s.C)), as_const(dgs.view(s.B, s.C)), dgx.view(), o).ok());
    cuda_sync();
    std::vector<double> gmd(gm.begin(), gm.end()), gsd(gs.begin(), gs.end()), rg(x.size());
    REQUIRE(channel_stats_backward(cpu{1}, make_view(x.data(), s.B, s.C, s.H, s.W), make_view(gmd.data(), s.B, s.C),
                                   make_view(gsd.data(), s.B, s.C), make_view(rg.data(), s.B, s.C, s.H, s.W), o)
                .ok());
    check_scaled("grad_x", dgx.fetch(), rg, rel_tol<T>());
    CHECK(pgx.untouched_outside_view());
  }
}

TEMPLATE_TEST_CASE("CUDA token statistics with a mask", "[features][cuda][stats][tokens]", float, float16, bfloat16) {
  using T = TestType;
  distill_test::rng g(1102);
  for (int trial = 0; trial < 12; ++trial) {
    const long B = g.integer(1, 3), L = trial == 0 ? 1 : g.integer(1, 40), D = trial % 4 == 1 ? 70 : g.integer(1, 33);
    std::vector<std::uint8_t> mask;
    if (trial % 3) {
      mask.assign(B * L, 1);
      for (auto& v : mask) v = g.coin(0.7);
      for (long b = 0; b < B; ++b) mask[b * L] = 1;
    }
    feature_stats_options o;
    o.eps = 1e-4;
    const auto x = features_test::rounded<T>(g.normals(B * L * D, 0.5, 2));
    CAPTURE(trial, B, L, D, mask.empty());
    padded<T, 3> px({B, L, D}, {0, 1, g.integer(0, 3)});
    px.set(x);
    mirrored<T, 3> dx(px);
    device_buffer<std::uint8_t> dmask(mask);
    const cuda_view<const std::uint8_t, 2> mv = mask.empty() ? cuda_view<const std::uint8_t, 2>{} : dmask.view(B, L);
    const host_view<const std::uint8_t, 2> hmv = mask.empty() ? host_view<const std::uint8_t, 2>{} : make_view(mask.data(), B, L);
    device_buffer<float> dm(B * D), ds(B * D);
    REQUIRE(token_stats_forward(cuda{}, dx.cview(), mv, dm.view(B, D), ds.view(B, D), o).ok());
    cuda_sync();
    std::vector<double> rm(B * D), rs(B * D);
    REQUIRE(token_stats_forward(cpu{1}, make_view(x.data(), B, L, D), hmv, make_view(rm.data(), B, D), make_view(rs.data(), B, D), o).ok());
    const auto m = dm.download(), sd = ds.download();
    check_scaled("token mean", std::vector<double>(m.begin(), m.end()), rm, 3e-6);
    check_scaled("token std", std::vector<double>(sd.begin(), sd.end()), rs, 3e-5);

    const auto gm = g.normals<float>(B * D), gs = g.normals<float>(B * D);
    device_buffer<float> dgm(gm), dgs(gs);
    padded<T, 3> pgx({B, L, D}, {1, 0, 1});
    pgx.set(std::vector<double>(B * L * D, 3.0));  // masked tokens must be overwritten with 0
    mirrored<T, 3> dgx(pgx);
    REQUIRE(token_stats_backward(cuda{}, dx.cview(), mv, as_const(dgm.view(B, D)), as_const(dgs.view(B, D)), dgx.view(), o).ok());
    cuda_sync();
    std::vector<double> gmd(gm.begin(), gm.end()), gsd(gs.begin(), gs.end()), rg(x.size());
    REQUIRE(token_stats_backward(cpu{1}, make_view(x.data(), B, L, D), hmv, make_view(gmd.data(), B, D), make_view(gsd.data(), B, D),
                                 make_view(rg.data(), B, L, D), o)
                .ok());
    check_scaled("token grad", dgx.fetch(), rg, rel_tol<T>());
    CHECK(pgx.untouched_outside_view());
  }
}

TEMPLATE_TEST_CASE("CUDA statistics matching, channels and tokens", "[features][cuda][stats_matching]", float, float16, bfloat16) {
  using T = TestType;
  distill_test::rng g(1103);
  for (int trial = 0; trial < 20; ++trial) {
    const shape4 ss = variant_shape(g, trial);
    shape4 ts = ss;
    if (trial % 3 == 2) ts = variant_shape(g, trial + 3), ts.B = ss.B, ts.C = ss.C;
    stats_matching_options o;
    o.unbiased = ss.plane() > 1 && ts.plane() > 1 && trial % 4 == 1;
    o.mean_weight = trial % 5 == 4 ? 0.0 : 0.8;
    o.std_weight = trial % 5 == 3 ? 0.0 : 1.3;
    o.reduction = trial % 3 == 0 ? reduction::mean : trial % 3 == 1 ? reduction::batchmean : reduction::sum;
    o.grad_scale = trial % 2 ? 1.0 : 0.5;
    const auto s = features_test::rounded<T>(features(g, ss, 0.2)), t = features_test::rounded<T>(features(g, ts, 0.2));
    CAPTURE(trial, ss.B, ss.C, ss.H, ss.W, ts.H, ts.W, o.unbiased, to_string(o.reduction));
    padded<T, 4> ps(ext(ss), pads(g)), pt(ext(ts), pads(g)), pg(ext(ss), pads(g));
    ps.set(s);
    pt.set(t);
    mirrored<T, 4> ds(ps), dt(pt), dg(pg);
    device_buffer<float> dloss(1);
    device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, ss.B, ss.C));
    REQUIRE(stats_matching_forward_backward(cuda{}, ds.cview(), dt.cview(), dloss.view(1), dg.view(), ws_view(ws), o).ok());
    cuda_sync();
    double rl[1];
    std::vector<double> rg(s.size());
    REQUIRE(stats_matching_forward_backward(cpu{1}, make_view(s.data(), ss.B, ss.C, ss.H, ss.W), make_view(t.data(), ts.B, ts.C, ts.H, ts.W),
                                            make_view(rl, 1), make_view(rg.data(), ss.B, ss.C, ss.H, ss.W), {}, o)
                .ok());
    CHECK_CLOSE_SCALAR("loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-6, 1e-4}));
    check_scaled("grad", dg.fetch(), rg, rel_tol<T>());
    CHECK(pg.untouched_outside_view());
    // forward alone, backward alone with accumulate
    device_buffer<float> dl2(1);
    REQUIRE(stats_matching_forward(cuda{}, ds.cview(), dt.cview(), dl2.view(1), ws_view(ws), o).ok());
    o.accumulate = true;
    REQUIRE(stats_matching_backward(cuda{}, ds.cview(), dt.cview(), dg.view(), {}, o).ok());
    cuda_sync();
    CHECK(dl2.download()[0] == dloss.download()[0]);  // same kernels, same order: bitwise
    std::vector<double> twice(rg);
    for (double& v : twice) v *= 2;
    check_scaled("accumulated grad", dg.fetch(), twice, 2 * rel_tol<T>());
  }
  for (int trial = 0; trial < 8; ++trial) {
    const long B = g.integer(1, 3), Ls = g.integer(1, 30), Lt = g.integer(1, 30), D = g.integer(1, 70);
    std::vector<std::uint8_t> sm(B * Ls), tm(B * Lt);
    for (auto& v : sm) v = g.coin(0.8);
    for (auto& v : tm) v = g.coin(0.8);
    for (long b = 0; b < B; ++b) sm[b * Ls] = 1, tm[b * Lt] = 1;
    const auto s = features_test::rounded<T>(g.normals(B * Ls * D)), t = features_test::rounded<T>(g.normals(B * Lt * D, 1, 2));
    stats_matching_options o;
    o.eps = 1e-3;
    CAPTURE(trial, B, Ls, Lt, D);
    device_buffer<T> dsv(std::vector<T>(s.size())), dtv(std::vector<T>(t.size())), dgv(s.size());
    std::vector<T> sh(s.size()), th(t.size());
    for (std::size_t i = 0; i < s.size(); ++i) sh[i] = store<T>(s[i]);
    for (std::size_t i = 0; i < t.size(); ++i) th[i] = store<T>(t[i]);
    dsv.upload(sh);
    dtv.upload(th);
    device_buffer<std::uint8_t> dsm(sm), dtm(tm);
    device_buffer<float> dloss(1);
    device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, B, D));
    REQUIRE(stats_matching_forward_backward(cuda{}, as_const(dsv.view(B, Ls, D)), as_const(dsm.view(B, Ls)), as_const(dtv.view(B, Lt, D)),
                                            as_const(dtm.view(B, Lt)), dloss.view(1), dgv.view(B, Ls, D), ws_view(ws), o)
                .ok());
    cuda_sync();
    double rl[1];
    std::vector<double> rg(s.size());
    REQUIRE(stats_matching_forward_backward(cpu{1}, make_view(s.data(), B, Ls, D), make_view(sm.data(), B, Ls), make_view(t.data(), B, Lt, D),
                                            make_view(tm.data(), B, Lt), make_view(rl, 1), make_view(rg.data(), B, Ls, D), {}, o)
                .ok());
    CHECK_CLOSE_SCALAR("token loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-6, 1e-4}));
    const auto gd = dgv.download();
    std::vector<double> gdd(gd.size());
    for (std::size_t i = 0; i < gd.size(); ++i) gdd[i] = load<double>(gd[i]);
    check_scaled("token grad", gdd, rg, rel_tol<T>());
  }
}

TEMPLATE_TEST_CASE("CUDA AdaIN forward and backward", "[features][cuda][adain]", float, float16, bfloat16) {
  using T = TestType;
  distill_test::rng g(1104);
  for (int trial = 0; trial < 14; ++trial) {
    const shape4 xs = variant_shape(g, trial);
    shape4 ys = trial % 2 ? variant_shape(g, trial + 5) : xs;
    ys.B = xs.B, ys.C = xs.C;
    adain_options o;
    o.unbiased = xs.plane() > 1 && ys.plane() > 1 && trial % 4 == 3;
    o.eps = 1e-3;
    const auto x = features_test::rounded<T>(features(g, xs, 0.2)), y = features_test::rounded<T>(features(g, ys, 0.2));
    const auto up = features_test::rounded<T>(g.normals(xs.size()));
    CAPTURE(trial, xs.B, xs.C, xs.H, xs.W, ys.H, ys.W, o.unbiased);
    padded<T, 4> px(ext(xs), pads(g)), py(ext(ys), pads(g)), po(ext(xs), pads(g)), pu(ext(xs)), pgy(ext(ys), pads(g)), pgx(ext(xs), pads(g));
    px.set(x);
    py.set(y);
    pu.set(up);
    mirrored<T, 4> dx(px), dy(py), dout(po), du(pu), dgy(pgy), dgx(pgx);
    REQUIRE(adain_forward(cuda{}, dx.cview(), dy.cview(), dout.view(), o).ok());
    REQUIRE(adain_backward(cuda{}, dx.cview(), dy.cview(), du.cview(), dgy.view(), dgx.view(), o).ok());
    cuda_sync();
    std::vector<double> ro(x.size()), rgy(y.size()), rgx(x.size());
    const auto hx = make_view(x.data(), xs.B, xs.C, xs.H, xs.W), hy = make_view(y.data(), ys.B, ys.C, ys.H, ys.W);
    REQUIRE(adain_forward(cpu{1}, hx, hy, make_view(ro.data(), xs.B, xs.C, xs.H, xs.W), o).ok());
    REQUIRE(adain_backward(cpu{1}, hx, hy, make_view(up.data(), xs.B, xs.C, xs.H, xs.W), make_view(rgy.data(), ys.B, ys.C, ys.H, ys.W),
                           make_view(rgx.data(), xs.B, xs.C, xs.H, xs.W), o)
                .ok());
    check_scaled("adain out", dout.fetch(), ro, rel_tol<T>());
    check_scaled("adain grad style", dgy.fetch(), rgy, 4 * rel_tol<T>());
    check_scaled("adain grad content", dgx.fetch(), rgx, 4 * rel_tol<T>());
    CHECK(po.untouched_outside_view());
    CHECK(pgy.untouched_outside_view());
    CHECK(pgx.untouched_outside_view());
  }
}

TEMPLATE_TEST_CASE("CUDA AdaIN statistics loss", "[features][cuda][adain_stats]", float, float16, bfloat16) {
  using T = TestType;
  distill_test::rng g(1105);
  for (int trial = 0; trial < 24; ++trial) {
    const shape4 ss = variant_shape(g, trial);
    shape4 ts = trial % 4 == 3 ? variant_shape(g, trial + 2) : ss;
    ts.B = ss.B, ts.C = ss.C;
    adain_stats_loss_options o;
    o.unbiased = ss.plane() > 1 && ts.plane() > 1 && trial % 5 == 2;
    if (trial % 6 == 5) o.adain_weight = 0.5, o.mean_weight = 2, o.std_weight = 0.25;
    o.reduction = trial % 3 == 1 ? reduction::sum : reduction::mean;
    const auto s = features_test::rounded<T>(features(g, ss, 0.25)), t = features_test::rounded<T>(features(g, ts, 0.25));
    CAPTURE(trial, ss.B, ss.C, ss.H, ss.W, ts.H, ts.W, o.unbiased);
    padded<T, 4> ps(ext(ss), pads(g)), pt(ext(ts), pads(g)), pg(ext(ss), pads(g));
    ps.set(s);
    pt.set(t);
    mirrored<T, 4> ds(ps), dt(pt), dg(pg);
    device_buffer<float> dloss(1);
    device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, ss.B, ss.C));
    REQUIRE(adain_stats_loss_forward_backward(cuda{}, ds.cview(), dt.cview(), dloss.view(1), dg.view(), ws_view(ws), o).ok());
    cuda_sync();
    double rl[1];
    std::vector<double> rg(s.size());
    REQUIRE(adain_stats_loss_forward_backward(cpu{1}, make_view(s.data(), ss.B, ss.C, ss.H, ss.W), make_view(t.data(), ts.B, ts.C, ts.H, ts.W),
                                              make_view(rl, 1), make_view(rg.data(), ss.B, ss.C, ss.H, ss.W), {}, o)
                .ok());
    CHECK_CLOSE_SCALAR("loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-6, 1e-4}));
    check_scaled("grad", dg.fetch(), rg, rel_tol<T>());
    CHECK(pg.untouched_outside_view());
    device_buffer<float> dl2(1);
    REQUIRE(adain_stats_loss_forward(cuda{}, ds.cview(), dt.cview(), dl2.view(1), ws_view(ws), o).ok());
    cuda_sync();
    CHECK(dl2.download()[0] == dloss.download()[0]);
  }
  // student = teacher: zero loss, zero gradient
  const shape4 s{4, 8, 32, 32};
  const auto x = features_test::rounded<T>(features(g, s, 0.2));
  padded<T, 4> px(ext(s)), pg(ext(s));
  px.set(x);
  mirrored<T, 4> dx(px), dg(pg);
  device_buffer<float> dloss(1);
  device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, s.B, s.C));
  REQUIRE(adain_stats_loss_forward_backward(cuda{}, dx.cview(), dx.cview(), dloss.view(1), dg.view(), ws_view(ws)).ok());
  cuda_sync();
  CHECK(std::fabs(dloss.download()[0]) < 1e-10);
  for (double v : dg.fetch()) CHECK(std::fabs(v) < 1e-9);
}

TEST_CASE("CUDA AdaIN statistics loss takes __half and __nv_bfloat16 views", "[features][cuda][adain_stats]") {
  distill_test::rng g(1106);
  const shape4 s{2, 3, 8, 8};
  const auto x = features_test::rounded<float16>(features(g, s, 0.0)), y = features_test::rounded<float16>(features(g, s, 0.0));
  std::vector<float16> xh(x.size()), yh(y.size());
  for (std::size_t i = 0; i < x.size(); ++i) xh[i] = float16(float(x[i])), yh[i] = float16(float(y[i]));
  device_buffer<float16> dx(xh), dy(yh), dg(x.size());
  device_buffer<float> dloss(1);
  device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, s.B, s.C));
  const auto hv = [&](device_buffer<float16>& b) { return make_view<cuda_space>(reinterpret_cast<const __half*>(b.data()), s.B, s.C, s.H, s.W); };
  REQUIRE(adain_stats_loss_forward_backward(cuda{}, hv(dx), hv(dy), dloss.view(1),
                                            make_view<cuda_space>(reinterpret_cast<__half*>(dg.data()), s.B, s.C, s.H, s.W), ws_view(ws))
              .ok());
  cuda_sync();
  double rl[1];
  std::vector<double> rg(x.size());
  REQUIRE(adain_stats_loss_forward_backward(cpu{1}, make_view(x.data(), s.B, s.C, s.H, s.W), make_view(y.data(), s.B, s.C, s.H, s.W),
                                            make_view(rl, 1), make_view(rg.data(), s.B, s.C, s.H, s.W), {})
              .ok());
  CHECK_CLOSE_SCALAR("__half loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-6, 1e-4}));
  const auto gh = dg.download();
  std::vector<double> gd(gh.size());
  for (std::size_t i = 0; i < gh.size(); ++i) gd[i] = float(gh[i]);
  check_scaled("__half grad", gd, rg, 3e-3);
  // the same memory as __nv_bfloat16 storage (different numbers, still finite and deterministic)
  device_buffer<float> dl2(1), dl3(1);
  const auto bv = make_view<cuda_space>(reinterpret_cast<const __nv_bfloat16*>(dx.data()), s.B, s.C, s.H, s.W);
  REQUIRE(adain_stats_loss_forward(cuda{}, bv, bv, dl2.view(1), ws_view(ws)).ok());
  REQUIRE(adain_stats_loss_forward(cuda{}, bv, bv, dl3.view(1), ws_view(ws)).ok());
  cuda_sync();
  CHECK(dl2.download()[0] == dl3.download()[0]);
}

TEST_CASE("CUDA AdaIN-KD loss through a callable head", "[features][cuda][adain_kd]") {
  distill_test::rng g(1107);
  const shape4 ts{2, 3, 4, 5}, ss{2, 3, 3, 3};
  const long K = 4, J = ts.C * ts.plane();
  const auto W = g.normals(K * J, 0, 0.3);
  const auto fs = features_test::rounded<float>(features(g, ss, 0.1)), ft = features_test::rounded<float>(features(g, ts, 0.1));
  // The head runs on the host (the helper only needs callables that honour the views).
  auto apply = [&](const std::vector<double>& x, std::vector<double>& o) {
    o.assign(ts.B * K, 0);
    for (long b = 0; b < ts.B; ++b)
      for (long k = 0; k < K; ++k) {
        double z = 0;
        for (long j = 0; j < J; ++j) z += W[k * J + j] * x[b * J + j];
        o[b * K + k] = std::tanh(z);
      }
  };
  auto head_forward = [&](cuda_view<const float, 4> in, cuda_view<float, 2> out) -> status {
    std::vector<float> h(static_cast<std::size_t>(in.size()));
    cudaMemcpy(h.data(), in.data(), h.size() * sizeof(float), cudaMemcpyDeviceToHost);  // workspace views are contiguous
    std::vector<double> x(h.begin(), h.end()), o;
    apply(x, o);
    std::vector<float> of(o.begin(), o.end());
    cudaMemcpy(out.data(), of.data(), of.size() * sizeof(float), cudaMemcpyHostToDevice);
    return {};
  };
  auto head_vjp = [&](cuda_view<const float, 4> in, cuda_view<const float, 2> gout, cuda_view<float, 4> gin) -> status {
    std::vector<float> h(static_cast<std::size_t>(in.size())), gh(static_cast<std::size_t>(gout.size()));
    cudaMemcpy(h.data(), in.data(), h.size() * sizeof(float), cudaMemcpyDeviceToHost);
    cudaMemcpy(gh.data(), gout.data(), gh.size() * sizeof(float), cudaMemcpyDeviceToHost);
    std::vector<double> x(h.begin(), h.end()), o;
    apply(x, o);
    std::vector<float> r(h.size());
    for (long b = 0; b < ts.B; ++b)
      for (long j = 0; j < J; ++j) {
        double s = 0;
        for (long k = 0; k < K; ++k) s += W[k * J + j] * gh[b * K + k] * (1 - o[b * K + k] * o[b * K + k]);
        r[b * J + j] = float(s);
      }
    cudaMemcpy(gin.data(), r.data(), r.size() * sizeof(float), cudaMemcpyHostToDevice);
    return {};
  };
  std::vector<float> fsh(fs.begin(), fs.end()), fth(ft.begin(), ft.end());
  device_buffer<float> dfs(fsh), dft(fth), dgs(fs.size()), mixed(ft.size()), gmixed(ft.size()), om(ts.B * K), ot(ts.B * K), go(ts.B * K), dloss(1);
  device_buffer<std::byte> scratch(adain_kd_loss_workspace_size(cuda{}, ts.B));
  adain_kd_buffers<float, cuda_space> bufs{mixed.view(ts.B, ts.C, ts.H, ts.W), gmixed.view(ts.B, ts.C, ts.H, ts.W), om.view(ts.B, K),
                                           ot.view(ts.B, K), go.view(ts.B, K)};
  adain_kd_options o;
  o.eps = 1e-3;
  REQUIRE(adain_kd_loss_forward_backward(cuda{}, as_const(dfs.view(ss.B, ss.C, ss.H, ss.W)), as_const(dft.view(ts.B, ts.C, ts.H, ts.W)),
                                         head_forward, head_vjp, dloss.view(1), dgs.view(ss.B, ss.C, ss.H, ss.W), bufs, ws_view(scratch), o)
              .ok());
  cuda_sync();
  // the same on the CPU in double
  std::vector<double> hm(ft.size()), hgm(ft.size()), hom(ts.B * K), hot(ts.B * K), hgo(ts.B * K), rg(fs.size());
  adain_kd_buffers<double, host_space> hbufs{make_view(hm.data(), ts.B, ts.C, ts.H, ts.W), make_view(hgm.data(), ts.B, ts.C, ts.H, ts.W),
                                             make_view(hom.data(), ts.B, K), make_view(hot.data(), ts.B, K), make_view(hgo.data(), ts.B, K)};
  auto hf = [&](host_view<const double, 4> in, host_view<double, 2> out) -> status {
    std::vector<double> x(in.data(), in.data() + in.size()), oo;
    apply(x, oo);
    for (long i = 0; i < ts.B * K; ++i) out.data()[i] = oo[i];
    return {};
  };
  auto hv = [&](host_view<const double, 4> in, host_view<const double, 2> gout, host_view<double, 4> gin) -> status {
    std::vector<double> x(in.data(), in.data() + in.size()), oo;
    apply(x, oo);
    for (long b = 0; b < ts.B; ++b)
      for (long j = 0; j < J; ++j) {
        double s = 0;
        for (long k = 0; k < K; ++k) s += W[k * J + j] * gout.data()[b * K + k] * (1 - oo[b * K + k] * oo[b * K + k]);
        gin.data()[b * J + j] = s;
      }
    return {};
  };
  double rl[1];
  REQUIRE(adain_kd_loss_forward_backward(cpu{1}, make_view(fs.data(), ss.B, ss.C, ss.H, ss.W), make_view(ft.data(), ts.B, ts.C, ts.H, ts.W),
                                         hf, hv, make_view(rl, 1), make_view(rg.data(), ss.B, ss.C, ss.H, ss.W), hbufs, {}, o)
              .ok());
  CHECK_CLOSE_SCALAR("AdaIN-KD loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-6, 1e-4}));
  const auto gd = dgs.download();
  check_scaled("AdaIN-KD grad", std::vector<double>(gd.begin(), gd.end()), rg, 1e-4);
}

TEMPLATE_TEST_CASE("CUDA embedding alignment", "[features][cuda][embedding]", float, float16, bfloat16) {
  using T = TestType;
  distill_test::rng g(1108);
  const embedding_metric metrics[] = {embedding_metric::mse, embedding_metric::squared_l2, embedding_metric::l1, embedding_metric::cosine};
  const l2_normalization norms[] = {l2_normalization::none, l2_normalization::clamp, l2_normalization::zero_below_eps};
  const reduction reds[] = {reduction::mean, reduction::batchmean, reduction::sum, reduction::none};
  int trial = 0;
  for (auto m : metrics)
    for (auto n : norms)
      for (auto r : reds) {
        ++trial;
        const long N = g.integer(1, 40), D = trial % 5 == 0 ? 700 : g.integer(1, 100);
        embedding_alignment_options o;
        o.metric = m;
        o.normalize = n;
        o.reduction = r;
        o.norm_eps = n == l2_normalization::zero_below_eps ? 1e-8 : 1e-12;
        o.scale = trial % 2 ? 1.0 : 0.5;
        o.grad_scale = trial % 3 ? 1.0 : 2.0;
        const auto s = features_test::rounded<T>(g.normals(N * D)), t = features_test::rounded<T>(g.normals(N * D, 0.2, 1.1));
        std::vector<float> w;
        std::vector<std::uint8_t> mk;
        if (trial % 2) w = g.uniforms<float>(N, 0.1, 2.0);
        if (trial % 3 == 1) {
          mk.assign(N, 1);
          for (auto& v : mk) v = g.coin(0.7);
        }
        CAPTURE(trial, to_string(m), int(n), to_string(r), N, D, w.empty(), mk.empty());
        padded<T, 2> ps({N, D}, {0, features_test::random_pad(g)}), pt({N, D}), pg({N, D}, {0, features_test::random_pad(g)});
        ps.set(s);
        pt.set(t);
        mirrored<T, 2> dsv(ps), dtv(pt), dgv(pg);
        device_buffer<float> dw(w);
        device_buffer<std::uint8_t> dm(mk);
        const long nl = r == reduction::none ? N : 1;
        device_buffer<float> dloss(nl);
        device_buffer<std::byte> ws(embedding_alignment_workspace_size(cuda{}, N));
        const cuda_view<const float, 1> wv = w.empty() ? cuda_view<const float, 1>{} : as_const(dw.view(N));
        const cuda_view<const std::uint8_t, 1> mv = mk.empty() ? cuda_view<const std::uint8_t, 1>{} : as_const(dm.view(N));
        REQUIRE(embedding_alignment_forward_backward(cuda{}, dsv.cview(), dtv.cview(), wv, mv, dloss.view(nl), dgv.view(), ws_view(ws), o).ok());
        cuda_sync();
        std::vector<double> wd(w.begin(), w.end()), rl(nl), rg(s.size());
        const host_view<const double, 1> hwv = w.empty() ? host_view<const double, 1>{} : make_view(wd.data(), N);
        const host_view<const std::uint8_t, 1> hmv = mk.empty() ? host_view<const std::uint8_t, 1>{} : make_view(mk.data(), N);
        REQUIRE(embedding_alignment_forward_backward(cpu{1}, make_view(s.data(), N, D), make_view(t.data(), N, D), hwv, hmv,
                                                     make_view(rl.data(), nl), make_view(rg.data(), N, D), {}, o)
                    .ok());
        const auto dl = dloss.download();
        check_scaled("loss", std::vector<double>(dl.begin(), dl.end()), rl, 1e-5);
        check_scaled("grad", dgv.fetch(), rg, rel_tol<T>());
        CHECK(pg.untouched_outside_view());
      }
}

TEMPLATE_TEST_CASE("CUDA text classifier and its cross-entropy", "[features][cuda][classifier]", float, float16, bfloat16) {
  using T = TestType;
  distill_test::rng g(1109);
  for (int trial = 0; trial < 12; ++trial) {
    const long N = trial == 0 ? 1 : g.integer(1, 150), C = trial == 1 ? 1 : g.integer(1, 90), D = g.integer(1, 70);
    const bool bg = trial % 3 != 0;
    text_classifier_options o;
    o.temperature = trial % 2 ? 0.01 : 0.7;
    o.normalize = trial % 4 == 1 ? l2_normalization::clamp : l2_normalization::zero_below_eps;
    o.norm_eps = o.normalize == l2_normalization::clamp ? 1e-12 : 1e-8;
    const long K = C + (bg ? 1 : 0);
    const auto e = features_test::rounded<T>(g.normals(N * D)), t = features_test::rounded<T>(g.normals(C * D));
    const auto w = bg ? features_test::rounded<T>(g.normals(D, 0, 0.5)) : std::vector<double>{};
    std::vector<std::uint8_t> mk;
    if (trial % 2) {
      mk.assign(C, 1);
      for (auto& v : mk) v = g.coin(0.75);
    }
    CAPTURE(trial, N, C, D, bg, mk.empty(), o.temperature);
    padded<T, 2> pe({N, D}, {0, 1}), pt({C, D}), pge({N, D}, {0, 2});
    padded<T, 1> pw({bg ? D : 1}), pgw({bg ? D : 1});
    padded<T, 2> pgt({C, D}, {0, 1});
    pe.set(e);
    pt.set(t);
    if (bg) pw.set(w);
    mirrored<T, 2> de(pe), dt(pt), dge(pge), dgt(pgt);
    mirrored<T, 1> dw(pw), dgw(pgw);
    device_buffer<std::uint8_t> dm(mk);
    const cuda_view<const std::uint8_t, 1> mv = mk.empty() ? cuda_view<const std::uint8_t, 1>{} : as_const(dm.view(C));
    const host_view<const std::uint8_t, 1> hmv = mk.empty() ? host_view<const std::uint8_t, 1>{} : make_view(mk.data(), C);
    const cuda_view<const T, 1> bgv = bg ? dw.cview() : cuda_view<const T, 1>{};
    device_buffer<std::byte> ws(text_classifier_workspace_size(cuda{}, N, C, D));
    device_buffer<float> dz(N * K);
    REQUIRE(text_classifier_forward(cuda{}, de.cview(), dt.cview(), bgv, mv, dz.view(N, K), ws_view(ws), o).ok());
    cuda_sync();
    std::vector<double> rz(N * K);
    const auto he = make_view(e.data(), N, D), ht = make_view(t.data(), C, D);
    const host_view<const double, 1> hw = bg ? make_view(w.data(), D) : host_view<const double, 1>{};
    REQUIRE(text_classifier_forward(cpu{1}, he, ht, hw, hmv, make_view(rz.data(), N, K), {}, o).ok());
    const auto z = dz.download();
    check_scaled("logits", std::vector<double>(z.begin(), z.end()), rz, 1e-5);

    // backward from a random dL/dz
    const auto G = g.normals<float>(N * K);
    device_buffer<float> dG(G);
    REQUIRE(text_classifier_backward(cuda{}, de.cview(), dt.cview(), bgv, mv, as_const(dG.view(N, K)), dge.view(),
                                     bg ? dgw.view() : cuda_view<T, 1>{}, dgt.view(), ws_view(ws), o)
                .ok());
    cuda_sync();
    std::vector<double> Gd(G.begin(), G.end()), rge(N * D), rgw(D), rgt(C * D);
    REQUIRE(text_classifier_backward(cpu{1}, he, ht, hw, hmv, make_view(Gd.data(), N, K), make_view(rge.data(), N, D),
                                     bg ? make_view(rgw.data(), D) : host_view<double, 1>{}, make_view(rgt.data(), C, D), {}, o)
                .ok());
    check_scaled("grad regions", dge.fetch(), rge, rel_tol<T>());
    check_scaled("grad classes", dgt.fetch(), rgt, rel_tol<T>());
    if (bg) check_scaled("grad background", dgw.fetch(), rgw, rel_tol<T>());
    CHECK(pge.untouched_outside_view());
    CHECK(pgt.untouched_outside_view());

    // fused cross-entropy
    text_classifier_cross_entropy_options ce;
    static_cast<text_classifier_options&>(ce) = o;
    ce.reduction = trial % 3 == 0 ? reduction::sum : reduction::mean;
    std::vector<std::int64_t> y(N);
    for (auto& v : y) v = g.coin(0.1) ? ce.ignore_index : g.integer(0, K - 1);
    device_buffer<std::int64_t> dy(y);
    device_buffer<float> dloss(1);
    REQUIRE(text_classifier_cross_entropy_forward_backward(cuda{}, de.cview(), dt.cview(), bgv, mv, as_const(dy.view(N)), {}, dloss.view(1),
                                                           dge.view(), bg ? dgw.view() : cuda_view<T, 1>{}, dgt.view(), dz.view(N, K),
                                                           ws_view(ws), ce)
                .ok());
    cuda_sync();
    double rl[1];
    REQUIRE(text_classifier_cross_entropy_forward_backward(cpu{1}, he, ht, hw, hmv, make_view(static_cast<const std::int64_t*>(y.data()), N), {},
                                                           make_view(rl, 1), make_view(rge.data(), N, D),
                                                           bg ? make_view(rgw.data(), D) : host_view<double, 1>{}, make_view(rgt.data(), C, D),
                                                           make_view(rz.data(), N, K), {}, ce)
                .ok());
    CHECK_CLOSE_SCALAR("CE loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-5, 1e-4}));
    check_scaled("CE grad regions", dge.fetch(), rge, rel_tol<T>());
    check_scaled("CE grad classes", dgt.fetch(), rgt, rel_tol<T>());
    if (bg) check_scaled("CE grad background", dgw.fetch(), rgw, rel_tol<T>());
    const auto dlz = dz.download();
    check_scaled("dL/dz", std::vector<double>(dlz.begin(), dlz.end()), rz, 1e-5);
  }
}

TEST_CASE("CUDA features: bad inputs", "[features][cuda][errors]") {
  std::vector<float> host(2 * 3 * 4 * 4, 1.0f);
  device_buffer<float> a(host), b(host), gr(host.size()), loss(1);
  device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, 1, 6));
  const auto av = as_const(a.view(2, 3, 4, 4));
  // host memory passed as a device view
  const auto hv = make_view<cuda_space>(static_cast<const float*>(host.data()), 2, 3, 4, 4);
  const status st = adain_stats_loss_forward_backward(cuda{}, hv, av, loss.view(1), gr.view(2, 3, 4, 4), ws_view(ws));
  CHECK(st.code() == errc::wrong_memory_space);
  CHECK(st.message().find("'student'") != std::string::npos);
  // workspace too small / absent when a loss is wanted
  device_buffer<std::byte> small(8);
  const status st_ws = adain_stats_loss_forward_backward(cuda{}, av, av, loss.view(1), gr.view(2, 3, 4, 4), ws_view(small));
  CHECK(st_ws.code() == errc::invalid_argument);
  CHECK(st_ws.message().find("'workspace'") != std::string::npos);
  CHECK(stats_matching_forward(cuda{}, av, av, loss.view(1), cuda_view<std::byte, 1>{}).code() == errc::invalid_argument);
  // ... but not needed for the gradient alone
  CHECK(adain_stats_loss_backward(cuda{}, av, av, gr.view(2, 3, 4, 4), {}).ok());
  // non-unit inner stride
  const auto strided = make_strided_view<cuda_space>(static_cast<const float*>(a.data()), std::array<index_t, 4>{2, 3, 4, 2},
                                                     std::array<index_t, 4>{48, 16, 4, 2});
  const status st_layout = channel_stats_forward(cuda{}, strided, cuda_view<float, 2>{}, cuda_view<float, 2>{});
  CHECK(st_layout.code() == errc::unsupported_layout);
  // shape mismatch and eps
  CHECK(adain_forward(cuda{}, av, as_const(b.view(2, 2, 4, 6)), gr.view(2, 3, 4, 4)).code() == errc::shape_mismatch);
  adain_options bad;
  bad.eps = 0;
  CHECK(adain_forward(cuda{}, av, av, gr.view(2, 3, 4, 4), bad).code() == errc::invalid_argument);
  // classifier workspace
  device_buffer<std::byte> cws(16);
  device_buffer<float> z(6 * 3);
  const auto ev = as_const(a.view(6, 16));
  const auto tv = as_const(b.view(3, 16));
  CHECK(text_classifier_forward(cuda{}, ev, tv, cuda_view<const float, 1>{}, {}, z.view(6, 3), ws_view(cws)).code() == errc::invalid_argument);
  // embedding: host weights
  std::vector<float> hw(6, 1.0f);
  device_buffer<std::byte> ews(embedding_alignment_workspace_size(cuda{}, 6));
  const status st_w =
      embedding_alignment_forward(cuda{}, ev, ev, make_view<cuda_space>(static_cast<const float*>(hw.data()), 6), {}, loss.view(1), ws_view(ews));
  CHECK(st_w.code() == errc::wrong_memory_space);
  CHECK(st_w.message().find("'row_weights'") != std::string::npos);
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("CUDA features: results are deterministic", "[features][cuda]") {
  distill_test::rng g(1110);
  const shape4 s{8, 16, 32, 32};
  const auto x = features(g, s, 0.1), y = features(g, s, 0.1);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
  device_buffer<float> dx(xf), dy(yf), g1(xf.size()), g2(xf.size()), l1(1), l2(1);
  device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, s.B, s.C));
  for (auto* out : {&l1, &l2}) {
    auto& gg = out == &l1 ? g1 : g2;
    REQUIRE(adain_stats_loss_forward_backward(cuda{}, as_const(dx.view(s.B, s.C, s.H, s.W)), as_const(dy.view(s.B, s.C, s.H, s.W)),
                                              out->view(1), gg.view(s.B, s.C, s.H, s.W), ws_view(ws))
                .ok());
  }
  cuda_sync();
  CHECK(l1.download()[0] == l2.download()[0]);
  CHECK(g1.download() == g2.download());
}
