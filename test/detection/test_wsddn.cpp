// SPDX-License-Identifier: MIT
// WSDDN two-stream head on the CPU: hand-worked cases, the reference's gradients (of the scores
// and of the loss) against central finite differences, invariances, bitwise determinism across
// thread counts, extreme logits and bad input. The library against the reference on every
// backend: wsddn_cases.hpp.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "distill/detection/wsddn.hpp"
#include "reference/wsddn_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "detection/wsddn_harness.hpp"

using namespace distill;
using distill_ref::wsddn_ref_case;
using wsddn_test::options_of;
using wsddn_test::random_case;

namespace {

/// Contiguous logits of a case as T, and views of them.
template <class T>
struct stream_buffers {
  std::vector<T> x, y;
  int B, R, C;
  explicit stream_buffers(const wsddn_ref_case& c) : x(c.x.begin(), c.x.end()), y(c.y.begin(), c.y.end()), B(c.B), R(c.R), C(c.C) {}
  wsddn_host_streams<const T> views() const { return {make_view(x.data(), B, R, C), make_view(y.data(), B, R, C)}; }
};

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

TEST_CASE("wsddn: the reference gradient matches finite differences", "[detection][wsddn]") {
  distill_test::rng g(42);
  wsddn_ref_case c = random_case<double>(g, 2, 6, 4);
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

TEST_CASE("wsddn: the reference loss gradient matches finite differences", "[detection][wsddn]") {
  distill_test::rng g(43);
  for (int red = 0; red < 4; ++red) {
    const wsddn_ref_case c = random_case<double>(g, 3, 11, 5);
    std::vector<std::uint8_t> labels(static_cast<std::size_t>(c.B) * c.C);
    for (auto& l : labels) l = g.coin(0.4) ? 1 : 0;
    const double eps = 0x1p-10, grad_scale = 0.75;
    INFO("reduction " << red);
    std::vector<double> g_ref, dx_ref, dy_ref;
    distill_ref::wsddn_ref_loss(c, labels, eps, red, grad_scale, &g_ref);
    distill_ref::wsddn_ref_backward(c, g_ref, dx_ref, dy_ref);
    auto loss_of = [&](bool wrt_x) {
      return [&, wrt_x](const std::vector<double>& v) {
        wsddn_ref_case d = c;
        (wrt_x ? d.x : d.y) = v;
        double total = 0;
        for (double x : distill_ref::wsddn_ref_loss(d, labels, eps, red, grad_scale, nullptr)) total += x;
        return grad_scale * total;
      };
    };
    CHECK_CLOSE("loss dL/dx vs finite differences", dx_ref, distill_test::numeric_gradient(loss_of(true), c.x), distill_test::tol::fd);
    CHECK_CLOSE("loss dL/dy vs finite differences", dy_ref, distill_test::numeric_gradient(loss_of(false), c.y), distill_test::tol::fd);
  }
}

TEST_CASE("wsddn: invariances, range and determinism", "[detection][wsddn]") {
  distill_test::rng g(44);
  const wsddn_ref_case c = random_case<double>(g, 6, 40, 9, 3.0);
  auto run = [&](const wsddn_ref_case& d, int threads) {
    const stream_buffers<double> in(d);
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
    const stream_buffers<float> in(c);
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
