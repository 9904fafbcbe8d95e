// SPDX-License-Identifier: MIT
// AdaIN transform, AdaIN statistics loss and the AdaIN-KD helper, CPU-only checks: properties,
// constant channels, the AdaIN-KD loss through a small callable layer against the reference and
// central finite differences, bad inputs. Against the double reference on every backend:
// features_cases.hpp.
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
using features_test::ext;
using features_test::features;
using features_test::padded;
using features_test::random_pads;
using features_test::spatial_like;

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
    auto dense = [&](host_view<const double, 4> in) {  // the head's input, row-major
      std::vector<double> x(static_cast<std::size_t>(in.size()));
      for (long b = 0; b < ts.B; ++b)
        for (long c = 0; c < ts.C; ++c)
          for (long h = 0; h < ts.H; ++h)
            for (long w = 0; w < ts.W; ++w) x[ts.at(b, c, h, w)] = in(b, c, h, w);
      return x;
    };
    auto head_forward = [&](host_view<const double, 4> in, host_view<double, 2> out) -> status {
      ++forward_calls;
      const auto o2 = head.apply(dense(in), ts.B);
      for (long b = 0; b < ts.B; ++b)
        for (long k = 0; k < K; ++k) out(b, k) = o2[b * K + k];
      return {};
    };
    auto head_vjp = [&](host_view<const double, 4> in, host_view<const double, 2> gout, host_view<double, 4> gin) -> status {
      ++vjp_calls;
      const auto o2 = head.apply(dense(in), ts.B);
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
    padded<double, 4> ps(ext(ss), random_pads(g)), pt(ext(ts), random_pads(g)), pg(ext(ss), random_pads(g));
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
