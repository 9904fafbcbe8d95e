// SPDX-License-Identifier: MIT
// WSDDN two-stream head: hand-worked cases, the library against the naive double reference
// (scores, region scores, gradients, the fused loss, every reduction, scales, strided views,
// float and double), the reference gradient against central finite differences, invariances,
// bitwise determinism across thread counts, accumulate, extreme logits and bad input.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "distill/detection/wsddn.hpp"
#include "reference/wsddn_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using distill_ref::wsddn_ref_case;

namespace {

wsddn_ref_case random_case(distill_test::rng& g, int B, int R, int C, double spread = 2.0) {
  wsddn_ref_case c{B, R, C, {}, {}};
  c.x = g.normals(distill_ref::x_size(c), 0, spread);
  c.y = g.normals(distill_ref::x_size(c), 0, spread);
  // scales representable in float: the options hold floats
  c.class_scale = g.coin() ? 1.0 : static_cast<float>(g.uniform(0.5, 2.5));
  c.region_scale = g.coin() ? 1.0 : static_cast<float>(g.uniform(0.5, 2.5));
  return c;
}

wsddn_options options_of(const wsddn_ref_case& c) {
  wsddn_options o;
  o.class_scale = static_cast<float>(c.class_scale);
  o.region_scale = static_cast<float>(c.region_scale);
  return o;
}

/// Logits copied into buffers with padded rows (row stride C + pad), as views.
template <class T>
struct stream_buffers {
  int B, R, C, ld;
  std::vector<T> x, y;
  stream_buffers(const wsddn_ref_case& c, int pad) : B(c.B), R(c.R), C(c.C), ld(c.C + pad) {
    x.assign(static_cast<std::size_t>(B) * R * ld, T(777));
    y = x;
    for (int b = 0; b < B; ++b)
      for (int r = 0; r < R; ++r)
        for (int k = 0; k < C; ++k) {
          const std::size_t src = (static_cast<std::size_t>(b) * R + r) * C + k, dst = (static_cast<std::size_t>(b) * R + r) * ld + k;
          x[dst] = static_cast<T>(c.x[src]);
          y[dst] = static_cast<T>(c.y[src]);
        }
  }
  wsddn_host_streams<const T> views() const {
    const std::array<index_t, 3> extents{B, R, C}, strides{static_cast<index_t>(R) * ld, ld, 1};
    return {make_strided_view(x.data(), extents, strides), make_strided_view(y.data(), extents, strides)};
  }
};

template <class T>
std::vector<double> as_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

}  // namespace

TEST_CASE("wsddn: hand-worked cases", "[detection][wsddn]") {
  // One proposal: the detection softmax is 1, so s = softmax over classes of x.
  std::vector<double> x = {1.0, 2.0, 3.0}, y = {-5.0, 0.0, 9.0}, s(3), rho(3);
  const wsddn_host_streams<const double> one{make_view(x.data(), 1, 1, 3), make_view(y.data(), 1, 1, 3)};
  REQUIRE(wsddn_forward(cpu{1}, one, make_view(s.data(), 1, 3), make_view(rho.data(), 1, 1, 3), {}).ok());
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  for (int k = 0; k < 3; ++k) {
    CHECK(s[k] == Approx(std::exp(1.0 + k) / z).epsilon(1e-14));
    CHECK(rho[k] == s[k]);
  }
  // Two proposals with equal detection logits: s = the mean of the two classification softmaxes.
  std::vector<double> x2 = {0.0, 0.0, std::log(3.0), 0.0}, y2 = {4.0, -1.0, 4.0, -1.0}, s2(2);
  const wsddn_host_streams<const double> two{make_view(x2.data(), 1, 2, 2), make_view(y2.data(), 1, 2, 2)};
  REQUIRE(wsddn_forward(cpu{1}, two, make_view(s2.data(), 1, 2), host_view<double, 3>{}, {}).ok());
  CHECK(s2[0] == Approx(0.5 * (0.5 + 0.75)).epsilon(1e-14));
  CHECK(s2[1] == Approx(0.5 * (0.5 + 0.25)).epsilon(1e-14));
}

TEMPLATE_TEST_CASE("wsddn: forward and backward against the reference", "[detection][wsddn]", float, double) {
  using T = TestType;
  const auto tolerance = std::is_same_v<T, float> ? distill_test::tolerance{2e-6, 1e-4} : distill_test::tol::f64;
  distill_test::rng g(41);
  const int shapes[][3] = {{1, 1, 1}, {1, 1, 7}, {2, 30, 10}, {3, 5, 1}, {4, 17, 3}, {1, 200, 12}, {5, 9, 20}};
  for (const auto& sh : shapes) {
    const wsddn_ref_case c = random_case(g, sh[0], sh[1], sh[2]);
    INFO("B " << c.B << " R " << c.R << " C " << c.C << " scales " << c.class_scale << " " << c.region_scale);
    const stream_buffers<T> in(c, sh[2] % 3);
    std::vector<double> rho_ref;
    const auto s_ref = distill_ref::wsddn_ref_scores(c, &rho_ref);
    distill_test::guarded<T> s(s_ref.size()), rho(rho_ref.size());
    REQUIRE(wsddn_forward(cpu{2}, in.views(), make_view(s.data(), c.B, c.C), make_view(rho.data(), c.B, c.R, c.C), {}, options_of(c)).ok());
    CHECK_CLOSE("image scores", as_double(s.contents()), s_ref, tolerance);
    CHECK_CLOSE("region scores", as_double(rho.contents()), rho_ref, tolerance);
    CHECK(s.intact());
    CHECK(rho.intact());

    const auto up = g.normals(s_ref.size());
    std::vector<double> dx_ref, dy_ref;
    distill_ref::wsddn_ref_backward(c, up, dx_ref, dy_ref);
    const std::vector<T> up_t(up.begin(), up.end());
    distill_test::guarded<T> dx(dx_ref.size()), dy(dy_ref.size());
    const wsddn_host_streams<T> grads{make_view(dx.data(), c.B, c.R, c.C), make_view(dy.data(), c.B, c.R, c.C)};
    REQUIRE(wsddn_backward(cpu{2}, in.views(), make_view(up_t.data(), c.B, c.C), grads, {}, options_of(c)).ok());
    CHECK_CLOSE("dL/dx", as_double(dx.contents()), dx_ref, tolerance);
    CHECK_CLOSE("dL/dy", as_double(dy.contents()), dy_ref, tolerance);
    CHECK(dx.intact());
    CHECK(dy.intact());
  }
}

TEST_CASE("wsddn: the reference gradient matches finite differences", "[detection][wsddn]") {
  distill_test::rng g(42);
  wsddn_ref_case c = random_case(g, 2, 6, 4);
  c.class_scale = 1.7, c.region_scale = 0.6;
  const auto up = g.normals(static_cast<std::size_t>(c.B) * c.C);
  std::vector<double> dx, dy;
  distill_ref::wsddn_ref_backward(c, up, dx, dy);
  auto objective = [&](bool wrt_x) {
    return [&, wrt_x](const std::vector<double>& v) {
      wsddn_ref_case d = c;
      (wrt_x ? d.x : d.y) = v;
      const auto s = distill_ref::wsddn_ref_scores(d);
      double L = 0;
      for (std::size_t i = 0; i < s.size(); ++i) L += up[i] * s[i];
      return L;
    };
  };
  CHECK_CLOSE("dL/dx vs finite differences", dx, distill_test::numeric_gradient(objective(true), c.x), distill_test::tol::fd);
  CHECK_CLOSE("dL/dy vs finite differences", dy, distill_test::numeric_gradient(objective(false), c.y), distill_test::tol::fd);
}

TEMPLATE_TEST_CASE("wsddn: fused image-level loss against the reference and finite differences", "[detection][wsddn]", float, double) {
  using T = TestType;
  const auto tolerance = std::is_same_v<T, float> ? distill_test::tolerance{5e-6, 2e-4} : distill_test::tolerance{1e-11, 1e-9};
  distill_test::rng g(43);
  for (int red = 0; red < 4; ++red) {
    const wsddn_ref_case c = random_case(g, 3, 11, 5);
    std::vector<std::uint8_t> labels(static_cast<std::size_t>(c.B) * c.C);
    for (auto& l : labels) l = g.coin(0.4) ? 1 : 0;
    const double eps = 0x1p-10, grad_scale = 0.75;  // exact in the float options
    INFO("reduction " << red);
    std::vector<double> g_ref;
    const auto loss_ref = distill_ref::wsddn_ref_loss(c, labels, eps, red, grad_scale, &g_ref);
    std::vector<double> dx_ref, dy_ref;
    distill_ref::wsddn_ref_backward(c, g_ref, dx_ref, dy_ref);
    // the loss's own gradient by finite differences (in double, through the reference)
    if (std::is_same_v<T, double>) {
      auto loss_of = [&](bool wrt_x) {
        return [&, wrt_x](const std::vector<double>& v) {
          wsddn_ref_case d = c;
          (wrt_x ? d.x : d.y) = v;
          const auto l = distill_ref::wsddn_ref_loss(d, labels, eps, red, grad_scale, nullptr);
          double total = 0;
          for (double x : l) total += x;
          return grad_scale * total;
        };
      };
      CHECK_CLOSE("loss dL/dx vs finite differences", dx_ref, distill_test::numeric_gradient(loss_of(true), c.x), distill_test::tol::fd);
      CHECK_CLOSE("loss dL/dy vs finite differences", dy_ref, distill_test::numeric_gradient(loss_of(false), c.y), distill_test::tol::fd);
    }
    const stream_buffers<T> in(c, 1);
    wsddn_options o = options_of(c);
    o.probability_eps = static_cast<float>(eps);
    o.reduction = static_cast<reduction>(red);
    o.grad_scale = static_cast<float>(grad_scale);
    std::vector<accum_t<T>> loss(loss_ref.size());
    std::vector<T> s(static_cast<std::size_t>(c.B) * c.C), dx(dx_ref.size()), dy(dy_ref.size());
    const wsddn_host_streams<T> grads{make_view(dx.data(), c.B, c.R, c.C), make_view(dy.data(), c.B, c.R, c.C)};
    const status st = wsddn_forward_backward(cpu{2}, in.views(), make_view(static_cast<const std::uint8_t*>(labels.data()), c.B, c.C), make_view(s.data(), c.B, c.C),
                                             make_view(loss.data(), static_cast<index_t>(loss.size())), grads, {}, o);
    INFO(st.to_string());
    REQUIRE(st.ok());
    CHECK_CLOSE("loss", as_double(loss), loss_ref, tolerance);
    CHECK_CLOSE("scores", as_double(s), distill_ref::wsddn_ref_scores(c), tolerance);
    CHECK_CLOSE("dL/dx", as_double(dx), dx_ref, tolerance);
    CHECK_CLOSE("dL/dy", as_double(dy), dy_ref, tolerance);
    // accumulate adds the same gradient again
    o.accumulate = true;
    REQUIRE(wsddn_forward_backward(cpu{2}, in.views(), make_view(static_cast<const std::uint8_t*>(labels.data()), c.B, c.C), host_view<T, 2>{},
                                   make_view(loss.data(), static_cast<index_t>(loss.size())), grads, {}, o).ok());
    std::vector<double> twice(dx_ref);
    for (auto& v : twice) v *= 2;
    CHECK_CLOSE("accumulated dL/dx", as_double(dx), twice, tolerance);
  }
}

TEST_CASE("wsddn: invariances, range and determinism", "[detection][wsddn]") {
  distill_test::rng g(44);
  const wsddn_ref_case c = random_case(g, 6, 40, 9, 3.0);
  auto run = [&](const wsddn_ref_case& d, int threads) {
    const stream_buffers<double> in(d, 0);
    std::vector<double> s(static_cast<std::size_t>(d.B) * d.C);
    REQUIRE(wsddn_forward(cpu{threads}, in.views(), make_view(s.data(), d.B, d.C), host_view<double, 3>{}, {}, options_of(d)).ok());
    return s;
  };
  const auto s = run(c, 2);
  for (double v : s) {
    CHECK(v >= 0);
    CHECK(v <= 1);
  }
  // a constant added to a proposal's classification logits, or to a class's detection logits, changes nothing
  wsddn_ref_case shifted = c;
  for (int b = 0; b < c.B; ++b)
    for (int r = 0; r < c.R; ++r)
      for (int k = 0; k < c.C; ++k) {
        const std::size_t i = (static_cast<std::size_t>(b) * c.R + r) * c.C + k;
        shifted.x[i] += 3.0 * r - b;
        shifted.y[i] += -2.0 * k + b;
      }
  const distill_test::tolerance tight{1e-12, 1e-10};
  CHECK_CLOSE("shift-invariant", run(shifted, 2), s, tight);
  // bitwise the same with 1, 2 and 3 threads, gradients included
  CHECK(run(c, 1) == s);
  CHECK(run(c, 3) == s);
  std::vector<std::uint8_t> labels(static_cast<std::size_t>(c.B) * c.C, 0);
  labels[3] = labels[20] = 1;
  auto grads_of = [&](int threads) {
    const stream_buffers<float> in(c, 0);
    std::vector<float> dx(distill_ref::x_size(c)), dy(dx.size());
    float loss = 0;
    REQUIRE(wsddn_forward_backward(cpu{threads}, in.views(), make_view(static_cast<const std::uint8_t*>(labels.data()), c.B, c.C), host_view<float, 2>{},
                                   make_view(&loss, 1), wsddn_host_streams<float>{make_view(dx.data(), c.B, c.R, c.C), make_view(dy.data(), c.B, c.R, c.C)}, {})
                .ok());
    dx.insert(dx.end(), dy.begin(), dy.end());
    dx.push_back(loss);
    return dx;
  };
  CHECK(grads_of(1) == grads_of(2));
  CHECK(grads_of(3) == grads_of(2));
}

TEST_CASE("wsddn: extreme logits stay finite and the loss is bounded", "[detection][wsddn]") {
  // both classes detected in proposal 0, which is certainly class 0: s = (1, 0) up to rounding
  std::vector<float> x = {1e4f, -1e4f, -1e4f, -1e4f}, y = {1e4f, 1e4f, -1e4f, -1e4f}, s(2), dx(4), dy(4);
  const wsddn_host_streams<const float> in{make_view(x.data(), 1, 2, 2), make_view(y.data(), 1, 2, 2)};
  std::vector<std::uint8_t> labels = {0, 1};  // both wrong: the loss is -2 log(eps) at most
  float loss = 0;
  wsddn_options o;
  o.reduction = reduction::sum;
  REQUIRE(wsddn_forward_backward(cpu{1}, in, make_view(static_cast<const std::uint8_t*>(labels.data()), 1, 2), make_view(s.data(), 1, 2), make_view(&loss, 1),
                                 wsddn_host_streams<float>{make_view(dx.data(), 1, 2, 2), make_view(dy.data(), 1, 2, 2)}, {}, o)
              .ok());
  CHECK(s[0] == Approx(1.0f));
  CHECK(s[1] == Approx(0.0f).margin(1e-6));
  CHECK(std::isfinite(loss));
  CHECK(loss == Approx(-2 * std::log(1e-6)).epsilon(1e-3));
  for (float v : dx) CHECK(std::isfinite(v));
  for (float v : dy) CHECK(std::isfinite(v));
}

TEST_CASE("wsddn: bad input is refused", "[detection][wsddn]") {
  std::vector<float> x(2 * 3 * 4, 0.1f), y(x), s(2 * 4), dx(x.size()), dy(x.size()), wrong(2 * 5);
  const wsddn_host_streams<const float> in{make_view(x.data(), 2, 3, 4), make_view(y.data(), 2, 3, 4)};
  const wsddn_host_streams<float> grads{make_view(dx.data(), 2, 3, 4), make_view(dy.data(), 2, 3, 4)};
  std::vector<std::uint8_t> labels(8, 0);
  float loss = 0;
  auto fb = [&](const wsddn_options& o, std::vector<std::uint8_t>& l) {
    return wsddn_forward_backward(cpu{1}, in, make_view(static_cast<const std::uint8_t*>(l.data()), 2, 4), host_view<float, 2>{}, make_view(&loss, 1), grads, {}, o);
  };
  CHECK(fb({}, labels).ok());
  CHECK(wsddn_forward(cpu{1}, in, make_view(wrong.data(), 2, 5), host_view<float, 3>{}, {}).code() == errc::shape_mismatch);
  const wsddn_host_streams<const float> mismatched{make_view(x.data(), 2, 3, 4), make_view(y.data(), 2, 4, 3)};
  CHECK(wsddn_forward(cpu{1}, mismatched, make_view(s.data(), 2, 4), host_view<float, 3>{}, {}).code() == errc::shape_mismatch);
  const wsddn_host_streams<const float> absent{make_view(x.data(), 2, 3, 4), {}};
  CHECK(wsddn_forward(cpu{1}, absent, make_view(s.data(), 2, 4), host_view<float, 3>{}, {}).code() == errc::invalid_argument);
  wsddn_options o;
  o.class_scale = 0;
  CHECK(fb(o, labels).code() == errc::invalid_argument);
  o = {};
  o.region_scale = NAN;
  CHECK(fb(o, labels).code() == errc::invalid_argument);
  o = {};
  o.probability_eps = 0.5f;
  CHECK(fb(o, labels).code() == errc::invalid_argument);
  o = {};
  labels[5] = 2;
  const status bad = fb(o, labels);
  CHECK(bad.code() == errc::invalid_argument);
  CHECK(bad.message().find("wsddn_forward_backward") != std::string::npos);
  labels[5] = 1;
  o.reduction = reduction::none;  // loss needs one entry per image
  CHECK(fb(o, labels).code() == errc::shape_mismatch);
  CHECK(wsddn_backward(cpu{1}, in, host_view<const float, 2>{}, grads, {}).code() == errc::invalid_argument);
}
