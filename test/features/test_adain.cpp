// SPDX-License-Identifier: MIT
// AdaIN transform, AdaIN statistics loss and the AdaIN-KD helper (CPU): against the double
// reference (the peer's composite evaluated element by element), central finite differences for
// every gradient (style, content, statistics loss, AdaIN-KD through a small callable layer),
// properties, strided views with canaries, bad inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/features/adain.hpp"
#include "features_test_util.hpp"
#include "reference/features_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using namespace distill;
using features_ref::shape4;
using features_test::padded;

namespace {

std::array<index_t, 4> ext(const shape4& s) { return {s.B, s.C, s.H, s.W}; }
std::array<index_t, 4> pads(distill_test::rng& g) {
  return {features_test::random_pad(g), features_test::random_pad(g), features_test::random_pad(g),
          features_test::random_pad(g)};
}
shape4 spatial_like(distill_test::rng& g, const shape4& s) {
  shape4 r = s;
  const long pick = g.integer(0, 4);
  if (pick == 0) r.H = r.W = 1;
  else if (pick <= 2) r.H = g.integer(1, 8), r.W = g.integer(1, 8);
  return r;
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
features_ref::red to_ref(reduction r) {
  return r == reduction::sum ? features_ref::red::sum : r == reduction::batchmean ? features_ref::red::batchmean
                                                                                   : features_ref::red::mean;
}

}  // namespace

TEST_CASE("features: AdaIN forward against the reference", "[features][adain]") {
  distill_test::rng g(201);
  for (int trial = 0; trial < 30; ++trial) {
    const shape4 xs{g.integer(1, 3), g.integer(1, 4), g.integer(1, 9), g.integer(1, 9)};
    shape4 ys = spatial_like(g, xs);
    const bool unbiased = xs.plane() > 1 && ys.plane() > 1 && g.coin(0.3);
    adain_options o;
    o.unbiased = unbiased;
    o.eps = g.coin() ? 1e-5 : 1e-2;
    const auto x = features(g, xs, 0.2), y = features(g, ys, 0.2);
    const auto ref = features_ref::adain(x, xs, y, ys, o.eps, unbiased);
    CAPTURE(trial, xs.B, xs.C, xs.H, xs.W, ys.H, ys.W, unbiased);
    padded<double, 4> px(ext(xs), pads(g), g.coin(0.3) ? 2 : 1), py(ext(ys), pads(g)), po(ext(xs), pads(g));
    px.set(x);
    py.set(y);
    REQUIRE(adain_forward(cpu{2}, px.cview(), py.cview(), po.view(), o).ok());
    CHECK_CLOSE("adain f64", po.get(), ref, (distill_test::tolerance{1e-11, 1e-10}));
    CHECK(po.untouched_outside_view());

    const auto xf = features_test::rounded<float>(x), yf = features_test::rounded<float>(y);
    padded<float, 4> fx(ext(xs)), fy(ext(ys), pads(g)), fo(ext(xs), pads(g));
    fx.set(xf);
    fy.set(yf);
    REQUIRE(adain_forward(cpu{1}, fx.cview(), fy.cview(), fo.view(), o).ok());
    CHECK_CLOSE("adain f32", fo.get(), features_ref::adain(xf, xs, yf, ys, o.eps, unbiased), (distill_test::tolerance{2e-5, 1e-4}));
  }
}

TEST_CASE("features: AdaIN(x; x) = x and constant content gives the style mean", "[features][adain][property]") {
  distill_test::rng g(202);
  const shape4 s{2, 3, 5, 7};
  const auto x = features(g, s, 0.3);
  padded<double, 4> px(ext(s)), po(ext(s));
  px.set(x);
  REQUIRE(adain_forward(cpu{1}, px.cview(), px.cview(), po.view()).ok());
  CHECK_CLOSE("AdaIN(x; x)", po.get(), x, (distill_test::tolerance{1e-13, 1e-12}));

  std::vector<double> content(s.size(), 3.25);  // every content channel constant
  const auto style = features(g, s, 0.0);
  std::vector<double> my, sy;
  features_ref::channel_stats(style, s, false, 1e-5, my, sy);
  px.set(content);
  padded<double, 4> py(ext(s));
  py.set(style);
  REQUIRE(adain_forward(cpu{1}, px.cview(), py.cview(), po.view()).ok());
  const auto out = po.get();
  for (long b = 0; b < s.B; ++b)
    for (long c = 0; c < s.C; ++c)
      for (long i = 0; i < s.plane(); ++i) CHECK(out[(b * s.C + c) * s.plane() + i] == Approx(my[b * s.C + c]).epsilon(1e-12).margin(1e-14));
}

TEST_CASE("features: AdaIN backward to style and content against finite differences", "[features][adain][grad]") {
  distill_test::rng g(203);
  for (int trial = 0; trial < 14; ++trial) {
    const shape4 xs{g.integer(1, 2), g.integer(1, 3), g.integer(1, 6), g.integer(1, 6)};
    const shape4 ys = spatial_like(g, xs);
    adain_options o;
    o.unbiased = xs.plane() > 1 && ys.plane() > 1 && g.coin(0.4);
    o.eps = 1e-3;
    const auto x = features(g, xs, 0.2), y = features(g, ys, 0.2), up = g.normals(xs.size());
    auto loss_of = [&](const std::vector<double>& xx, const std::vector<double>& yy) {
      const auto out = features_ref::adain(xx, xs, yy, ys, o.eps, o.unbiased);
      double l = 0;
      for (std::size_t i = 0; i < out.size(); ++i) l += up[i] * out[i];
      return l;
    };
    const auto fd_y = distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(x, v); }, y);
    const auto fd_x = distill_test::numeric_gradient([&](const std::vector<double>& v) { return loss_of(v, y); }, x);
    std::vector<double> ref_gy, ref_gx;
    features_ref::adain_grads(x, xs, y, ys, up, o.eps, o.unbiased, ref_gy, ref_gx);
    CAPTURE(trial, xs.B, xs.C, xs.H, xs.W, ys.H, ys.W, o.unbiased);
    CHECK_CLOSE("reference grad style vs FD", ref_gy, fd_y, distill_test::tol::fd);
    CHECK_CLOSE("reference grad content vs FD", ref_gx, fd_x, distill_test::tol::fd);

    padded<double, 4> px(ext(xs), pads(g)), py(ext(ys), pads(g)), pu(ext(xs), pads(g)), pgy(ext(ys), pads(g)), pgx(ext(xs), pads(g));
    px.set(x);
    py.set(y);
    pu.set(up);
    const bool with_content = trial % 3 != 0;
    REQUIRE(adain_backward(cpu{2}, px.cview(), py.cview(), pu.cview(), pgy.view(),
                           with_content ? pgx.view() : host_view<double, 4>{}, o)
                .ok());
    CHECK_CLOSE("grad style", pgy.get(), fd_y, distill_test::tol::fd);
    CHECK(pgy.untouched_outside_view());
    if (with_content) {
      CHECK_CLOSE("grad content", pgx.get(), fd_x, distill_test::tol::fd);
      CHECK(pgx.untouched_outside_view());
    }
    // accumulate
    o.accumulate = true;
    const auto init = g.normals(ys.size());
    pgy.set(init);
    REQUIRE(adain_backward(cpu{1}, px.cview(), py.cview(), pu.cview(), pgy.view(), host_view<double, 4>{}, o).ok());
    std::vector<double> expect(init);
    for (std::size_t i = 0; i < expect.size(); ++i) expect[i] += ref_gy[i];
    CHECK_CLOSE("accumulate style", pgy.get(), expect, (distill_test::tolerance{1e-10, 1e-9}));
  }
}

TEST_CASE("features: AdaIN statistics loss equals the peer's composite", "[features][adain_stats]") {
  distill_test::rng g(204);
  for (int trial = 0; trial < 36; ++trial) {
    const shape4 ss{g.integer(1, 3), g.integer(1, 4), g.integer(1, 9), g.integer(1, 9)};
    const shape4 ts = trial % 3 == 0 ? spatial_like(g, ss) : ss;
    adain_stats_loss_options o;
    o.unbiased = ss.plane() > 1 && ts.plane() > 1 && trial % 5 == 4;
    o.eps = trial % 4 == 1 ? 1e-2 : 1e-5;
    if (trial % 6 == 5) o.adain_weight = g.uniform(0, 2), o.mean_weight = g.uniform(0, 2), o.std_weight = g.uniform(0, 2);
    if (trial % 7 == 6) o.std_weight = 0;
    o.reduction = trial % 4 == 2 ? reduction::sum : trial % 4 == 3 ? reduction::batchmean : reduction::mean;
    o.grad_scale = trial % 2 ? 1.0 : 0.75;
    const auto fs = features(g, ss, 0.25), ft = features(g, ts, 0.25);
    const features_ref::adain_stats_opts ro{o.eps, o.unbiased, o.adain_weight, o.mean_weight, o.std_weight, to_ref(o.reduction)};
    const double ref = features_ref::adain_stats_loss(fs, ss, ft, ts, ro);
    auto fd = distill_test::numeric_gradient([&](const std::vector<double>& v) { return features_ref::adain_stats_loss(v, ss, ft, ts, ro); }, fs);
    for (double& v : fd) v *= o.grad_scale;
    CAPTURE(trial, ss.B, ss.C, ss.H, ss.W, ts.H, ts.W, o.unbiased, o.eps, to_string(o.reduction));

    padded<double, 4> ps(ext(ss), pads(g), g.coin(0.3) ? 2 : 1), pt(ext(ts), pads(g)), pg(ext(ss), pads(g));
    ps.set(fs);
    pt.set(ft);
    double loss[1] = {-1};
    REQUIRE(adain_stats_loss_forward_backward(cpu{2}, ps.cview(), pt.cview(), make_view(loss, 1), pg.view(), {}, o).ok());
    CHECK_CLOSE_SCALAR("loss", loss[0], ref, (distill_test::tolerance{1e-12, 1e-9}));
    CHECK_CLOSE("grad vs FD", pg.get(), fd, distill_test::tol::fd);
    CHECK(pg.untouched_outside_view());
    const auto fused_grad = pg.get();

    double l2[1];
    REQUIRE(adain_stats_loss_forward(cpu{1}, ps.cview(), pt.cview(), make_view(l2, 1), {}, o).ok());
    CHECK(l2[0] == Approx(loss[0]).epsilon(1e-14));
    REQUIRE(adain_stats_loss_backward(cpu{1}, ps.cview(), pt.cview(), pg.view(), {}, o).ok());
    CHECK_CLOSE("backward = fused", pg.get(), fused_grad, distill_test::tol::f64);

    const auto sf = features_test::rounded<float>(fs), tf = features_test::rounded<float>(ft);
    padded<float, 4> fsv(ext(ss), pads(g)), ftv(ext(ts)), fgv(ext(ss), pads(g));
    fsv.set(sf);
    ftv.set(tf);
    float lf[1];
    REQUIRE(adain_stats_loss_forward_backward(cpu{1}, fsv.cview(), ftv.cview(), make_view(lf, 1), fgv.view(), {}, o).ok());
    CHECK_CLOSE_SCALAR("loss f32", lf[0], features_ref::adain_stats_loss(sf, ss, tf, ts, ro), distill_test::tol::f32_sum);
    padded<double, 4> ps2(ext(ss)), pt2(ext(ts)), pg2(ext(ss));
    ps2.set(sf);
    pt2.set(tf);
    double l64[1];
    REQUIRE(adain_stats_loss_forward_backward(cpu{1}, ps2.cview(), pt2.cview(), make_view(l64, 1), pg2.view(), {}, o).ok());
    CHECK_CLOSE("grad f32 vs f64 on the same inputs", fgv.get(), pg2.get(), (distill_test::tolerance{2e-5, 1e-3}));
  }
}

TEST_CASE("features: AdaIN statistics loss is zero when student = teacher", "[features][adain_stats][property]") {
  distill_test::rng g(205);
  const shape4 s{3, 4, 6, 5};
  const auto x = features(g, s, 0.3);
  padded<double, 4> px(ext(s)), pg(ext(s));
  px.set(x);
  double loss[1];
  REQUIRE(adain_stats_loss_forward_backward(cpu{2}, px.cview(), px.cview(), make_view(loss, 1), pg.view(), {}).ok());
  CHECK(std::fabs(loss[0]) < 1e-28);
  for (double v : pg.get()) CHECK(std::fabs(v) < 1e-14);
}

TEST_CASE("features: AdaIN statistics loss on constant student channels stays finite", "[features][adain_stats]") {
  const shape4 s{1, 2, 4, 4};
  std::vector<float> fs(s.size(), 0.7f), ft(s.size()), gs(s.size());
  for (std::size_t i = 0; i < ft.size(); ++i) ft[i] = 0.1f * float(i % 7) - 0.2f;
  float loss[1];
  REQUIRE(adain_stats_loss_forward_backward(cpu{1}, make_view(static_cast<const float*>(fs.data()), 1, 2, 4, 4),
                                            make_view(static_cast<const float*>(ft.data()), 1, 2, 4, 4), make_view(loss, 1),
                                            make_view(gs.data(), 1, 2, 4, 4), {})
              .ok());
  CHECK(std::isfinite(loss[0]));
  // x - mu = 0 in a constant channel: only the mean terms move it, uniformly
  for (int c = 0; c < 2; ++c)
    for (int i = 1; i < 16; ++i) CHECK(gs[c * 16 + i] == gs[c * 16]);
}

namespace {
/// A small frozen "teacher head": O(x)[b, k] = tanh(sum_j W[k, j] x[b, j] + bias[k]) over the
/// flattened C*H*W features of sample b; its VJP is grad_x[b, j] = sum_k W[k, j] g[b, k] (1 - O^2).
struct tanh_head {
  long K, J;
  std::vector<double> W, bias;
  std::vector<double> apply(const std::vector<double>& x, long B) const {
    std::vector<double> o(B * K);
    for (long b = 0; b < B; ++b)
      for (long k = 0; k < K; ++k) {
        double z = bias[k];
        for (long j = 0; j < J; ++j) z += W[k * J + j] * x[b * J + j];
        o[b * K + k] = std::tanh(z);
      }
    return o;
  }
};
}  // namespace

TEST_CASE("features: AdaIN-KD loss through a callable teacher head", "[features][adain_kd][grad]") {
  distill_test::rng g(206);
  for (int trial = 0; trial < 8; ++trial) {
    const shape4 ts{g.integer(1, 3), g.integer(1, 3), g.integer(1, 4), g.integer(2, 4)};
    const shape4 ss = trial % 2 ? spatial_like(g, ts) : ts;
    const long K = g.integer(1, 5), J = ts.C * ts.plane();
    tanh_head head{K, J, g.normals(K * J, 0, 0.3), g.normals(K, 0, 0.2)};
    adain_kd_options o;
    o.eps = 1e-3;
    o.reduction = trial % 3 == 2 ? reduction::sum : reduction::mean;
    o.grad_scale = trial % 2 ? 1.0 : 2.5;
    const auto fs = features(g, ss, 0.1), ft = features(g, ts, 0.1);
    auto ref_loss = [&](const std::vector<double>& s) {
      const auto mixed = features_ref::adain(ft, ts, s, ss, o.eps, o.unbiased);
      const auto a = head.apply(mixed, ts.B), b = head.apply(ft, ts.B);
      double l = 0;
      for (std::size_t i = 0; i < a.size(); ++i) l += (a[i] - b[i]) * (a[i] - b[i]);
      return o.reduction == reduction::sum ? l : l / double(a.size());
    };
    auto fd = distill_test::numeric_gradient(ref_loss, fs);
    for (double& v : fd) v *= o.grad_scale;

    int forward_calls = 0, vjp_calls = 0;
    auto head_forward = [&](host_view<const double, 4> in, host_view<double, 2> out) -> status {
      ++forward_calls;
      std::vector<double> x(static_cast<std::size_t>(in.size()));
      for (long b = 0; b < ts.B; ++b)
        for (long c = 0; c < ts.C; ++c)
          for (long h = 0; h < ts.H; ++h)
            for (long w = 0; w < ts.W; ++w) x[ts.at(b, c, h, w)] = in(b, c, h, w);
      const auto o2 = head.apply(x, ts.B);
      for (long b = 0; b < ts.B; ++b)
        for (long k = 0; k < K; ++k) out(b, k) = o2[b * K + k];
      return {};
    };
    auto head_vjp = [&](host_view<const double, 4> in, host_view<const double, 2> gout, host_view<double, 4> gin) -> status {
      ++vjp_calls;
      std::vector<double> x(static_cast<std::size_t>(in.size()));
      for (long b = 0; b < ts.B; ++b)
        for (long c = 0; c < ts.C; ++c)
          for (long h = 0; h < ts.H; ++h)
            for (long w = 0; w < ts.W; ++w) x[ts.at(b, c, h, w)] = in(b, c, h, w);
      const auto o2 = head.apply(x, ts.B);
      for (long b = 0; b < ts.B; ++b)
        for (long j = 0; j < J; ++j) {
          double s = 0;
          for (long k = 0; k < K; ++k) s += head.W[k * J + j] * gout(b, k) * (1 - o2[b * K + k] * o2[b * K + k]);
          const long c = j / ts.plane(), h = (j % ts.plane()) / ts.W, w = j % ts.W;
          gin(b, c, h, w) = s;
        }
      return {};
    };
    std::vector<double> mixed(ts.size()), gmixed(ts.size()), om(ts.B * K), ot(ts.B * K), go(ts.B * K);
    adain_kd_buffers<double, host_space> bufs{make_view(mixed.data(), ts.B, ts.C, ts.H, ts.W),
                                              make_view(gmixed.data(), ts.B, ts.C, ts.H, ts.W),
                                              make_view(om.data(), ts.B, K),
                                              make_view(ot.data(), ts.B, K),
                                              make_view(go.data(), ts.B, K)};
    padded<double, 4> ps(ext(ss), pads(g)), pt(ext(ts), pads(g)), pg(ext(ss), pads(g));
    ps.set(fs);
    pt.set(ft);
    double loss[1] = {-1};
    const status st = adain_kd_loss_forward_backward(cpu{2}, ps.cview(), pt.cview(), head_forward, head_vjp, make_view(loss, 1),
                                                     pg.view(), bufs, {}, o);
    REQUIRE(st.ok());
    CAPTURE(trial, ts.B, ts.C, ts.H, ts.W, ss.H, ss.W, K, to_string(o.reduction));
    CHECK(forward_calls == 2);
    CHECK(vjp_calls == 1);
    CHECK_CLOSE_SCALAR("AdaIN-KD loss", loss[0], ref_loss(fs), (distill_test::tolerance{1e-13, 1e-10}));
    CHECK_CLOSE("AdaIN-KD grad vs FD", pg.get(), fd, distill_test::tol::fd);
    CHECK(pg.untouched_outside_view());

    double lf[1] = {-1};
    REQUIRE(adain_kd_loss_forward(cpu{1}, ps.cview(), pt.cview(), head_forward, make_view(lf, 1), bufs, {}, o).ok());
    CHECK(lf[0] == Approx(loss[0]).epsilon(1e-13));

    // student = teacher: AdaIN(F_t; F_t) = F_t, so the loss vanishes
    if (ss.H == ts.H && ss.W == ts.W) {
      REQUIRE(adain_kd_loss_forward(cpu{1}, pt.cview(), pt.cview(), head_forward, make_view(lf, 1), bufs, {}, o).ok());
      CHECK(std::fabs(lf[0]) < 1e-26);
    }
    // a buffer of the wrong shape is refused, naming it
    adain_kd_buffers<double, host_space> bad = bufs;
    bad.grad_out = make_view(go.data(), ts.B, K > 1 ? K - 1 : 2);
    const status sb = adain_kd_loss_forward_backward(cpu{1}, ps.cview(), pt.cview(), head_forward, head_vjp, make_view(loss, 1),
                                                     pg.view(), bad, {}, o);
    CHECK(sb.code() == errc::shape_mismatch);
    CHECK(sb.message().find("buffers.grad_out") != std::string::npos);
  }
}

TEST_CASE("features: AdaIN bad inputs", "[features][adain][errors]") {
  std::vector<float> a(2 * 3 * 4 * 4, 1.0f), b(2 * 4 * 4 * 4, 1.0f), o(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = float(i % 5);
  const auto x = make_view(static_cast<const float*>(a.data()), 2, 3, 4, 4);
  status st = adain_forward(cpu{1}, x, make_view(static_cast<const float*>(b.data()), 2, 4, 4, 4), make_view(o.data(), 2, 3, 4, 4));
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'style'") != std::string::npos);
  st = adain_forward(cpu{1}, x, x, make_view(o.data(), 2, 3, 4, 2));
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'out'") != std::string::npos);
  adain_options bad;
  bad.eps = 0;
  CHECK(adain_forward(cpu{1}, x, x, make_view(o.data(), 2, 3, 4, 4), bad).code() == errc::invalid_argument);
  st = adain_backward(cpu{1}, x, x, make_view(static_cast<const float*>(o.data()), 2, 3, 2, 8), make_view(o.data(), 2, 3, 4, 4),
                      host_view<float, 4>{});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'grad_out'") != std::string::npos);
  a[5] = std::numeric_limits<float>::infinity();
  st = adain_forward(cpu{1}, x, x, make_view(o.data(), 2, 3, 4, 4));
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("'content'") != std::string::npos);

  adain_stats_loss_options so;
  so.eps = -1;
  float loss[1];
  std::vector<float> gsv(a.size());
  a[5] = 0;
  CHECK(adain_stats_loss_forward(cpu{1}, x, x, make_view(loss, 1), {}, so).code() == errc::invalid_argument);
  so = {};
  so.unbiased = true;
  CHECK(adain_stats_loss_forward(cpu{1}, make_view(static_cast<const float*>(a.data()), 2, 3, 1, 1), x, make_view(loss, 1), {}, so).code() ==
        errc::invalid_argument);
  st = adain_stats_loss_forward_backward(cpu{1}, x, make_view(static_cast<const float*>(b.data()), 2, 4, 4, 4), make_view(loss, 1),
                                         make_view(gsv.data(), 2, 3, 4, 4), {});
  CHECK(st.code() == errc::shape_mismatch);
  a[17] = std::numeric_limits<float>::quiet_NaN();
  st = adain_stats_loss_forward_backward(cpu{1}, make_view(static_cast<const float*>(b.data()), 2, 3, 4, 4), x, make_view(loss, 1),
                                         make_view(gsv.data(), 2, 3, 4, 4), {});
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("'teacher'") != std::string::npos);
}
