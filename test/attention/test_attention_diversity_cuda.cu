// SPDX-License-Identifier: MIT
// FFSD's attention diversity on CUDA (float): loss, gradient, target and shifted features against
// the double reference (reference/attention_diversity_ref.hpp) and central finite differences of
// it, every reduction, forward / backward alone against the fused pass, accumulation, strided
// and in-place views, ties at the threshold, a sample whose map norm is below eps, maps larger
// than a block, run-to-run determinism, bad inputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "distill/attention/attention_diversity.hpp"
#include "reference/attention_diversity_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using namespace distill;
using distill_test::device_buffer;
namespace ref = distill_ref::attention;
using vec = std::vector<double>;

namespace {
struct shape_case {
  long B, Cs, Cp, H, W;
};
// the CPU test's shapes, and maps larger than a block (N = 480, 1024)
const shape_case cases[] = {{3, 4, 6, 7, 7}, {1, 2, 2, 3, 1}, {4, 5, 3, 4, 6}, {2, 8, 8, 14, 14}, {5, 1, 2, 2, 3}, {2, 3, 2, 24, 20}, {2, 2, 3, 32, 32}};

const distill_test::tolerance loss_tol{1e-5, 1e-4}, grad_tol{2e-5, 2e-4}, map_tol{1e-5, 1e-4};

vec widen(const std::vector<float>& v) { return vec(v.begin(), v.end()); }

cuda_view<const float, 4> cview(const device_buffer<float>& d, long a, long b, long c, long e) {
  return make_view<cuda_space>(static_cast<const float*>(d.data()), a, b, c, e);
}

/// A device workspace of attention_diversity_workspace_size bytes.
struct device_workspace {
  device_buffer<std::byte> buf;
  device_workspace(long B, long H, long W) : buf(attention_diversity_workspace_size(distill::cuda{}, B, H, W)) {}
  cuda_view<std::byte, 1> view() const { return make_view<cuda_space>(buf.data(), static_cast<index_t>(buf.size())); }
};

/// w r sum_b l_b, or w l_b per sample with reduction none.
vec expected_loss(const vec& per, const attention_diversity_options& o) {
  vec out;
  if (o.reduction == reduction::none) {
    for (double v : per) out.push_back(o.weight * v);
    return out;
  }
  double sum = 0;
  for (double v : per) sum += v;
  out.push_back(o.weight * (o.reduction == reduction::mean ? 1.0 / static_cast<double>(per.size()) : 1.0) * sum);
  return out;
}

/// d(grad_scale w r sum_b l_b)/dstudent by central finite differences of the reference.
vec numeric_grad(const vec& s, const vec& p, const shape_case& c, const attention_diversity_options& o) {
  const double r = o.reduction == reduction::mean ? 1.0 / static_cast<double>(c.B) : 1.0;
  return distill_test::numeric_gradient(
      [&](const vec& x) {
        double sum = 0;
        for (double v : ref::diversity_loss(x, p, c.B, c.Cs, c.Cp, c.H * c.W, o.eps)) sum += v;
        return o.grad_scale * o.weight * r * sum;
      },
      s);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
}  // namespace

TEST_CASE("CUDA attention diversity: loss and gradient match the reference in every reduction", "[attention][diversity][cuda]") {
  distill_test::rng g(702);
  for (const auto& c : cases)
    for (auto red : {reduction::mean, reduction::sum, reduction::none}) {
      const long N = c.H * c.W;
      CAPTURE(c.B, c.Cs, c.Cp, c.H, c.W, static_cast<int>(red));
      const auto sf = g.normals<float>(static_cast<std::size_t>(c.B * c.Cs * N)), pf = g.normals<float>(static_cast<std::size_t>(c.B * c.Cp * N));
      attention_diversity_options o;
      o.weight = 0.7, o.grad_scale = 1.3, o.reduction = red;
      const std::size_t nl = red == reduction::none ? static_cast<std::size_t>(c.B) : 1;
      device_buffer<float> ds(sf), dp(pf), dl(nl), dg(sf.size()), dl2(nl), dg2(sf.size());
      device_workspace ws(c.B, c.H, c.W);
      const auto sv = cview(ds, c.B, c.Cs, c.H, c.W), pv = cview(dp, c.B, c.Cp, c.H, c.W);
      REQUIRE(attention_diversity_forward_backward(distill::cuda{}, sv, pv, dl.view(static_cast<index_t>(nl)), dg.view(c.B, c.Cs, c.H, c.W),
                                                   ws.view(), o)
                  .ok());
      distill_test::cuda_sync();
      const auto loss = dl.download(), grad = dg.download();
      CHECK_CLOSE("loss", widen(loss), expected_loss(ref::diversity_loss(widen(sf), widen(pf), c.B, c.Cs, c.Cp, N), o), loss_tol);
      if (c.B * c.Cs * N <= 4000)  // finite differences of the reference: one pass per element
        CHECK_CLOSE("grad_student", widen(grad), numeric_grad(widen(sf), widen(pf), c, o), grad_tol);
      // forward alone and backward alone give the fused pass's bits; a second fused run too
      REQUIRE(attention_diversity_forward(distill::cuda{}, sv, pv, dl2.view(static_cast<index_t>(nl)), ws.view(), o).ok());
      REQUIRE(attention_diversity_backward(distill::cuda{}, sv, pv, dg2.view(c.B, c.Cs, c.H, c.W), ws.view(), o).ok());
      distill_test::cuda_sync();
      CHECK(same_bits(dl2.download(), loss));
      CHECK(same_bits(dg2.download(), grad));
      REQUIRE(attention_diversity_forward_backward(distill::cuda{}, sv, pv, dl2.view(static_cast<index_t>(nl)), dg2.view(c.B, c.Cs, c.H, c.W),
                                                   ws.view(), o)
                  .ok());
      distill_test::cuda_sync();
      CHECK(same_bits(dl2.download(), loss));
      CHECK(same_bits(dg2.download(), grad));
      // accumulate adds the same gradient again
      o.accumulate = true;
      REQUIRE(attention_diversity_backward(distill::cuda{}, sv, pv, dg2.view(c.B, c.Cs, c.H, c.W), ws.view(), o).ok());
      distill_test::cuda_sync();
      vec twice = widen(grad);
      for (double& v : twice) v *= 2;
      CHECK_CLOSE("accumulated", widen(dg2.download()), twice, distill_test::tol::f32);
    }
}

TEST_CASE("CUDA attention diversity: ties at the threshold and a sample below eps", "[attention][diversity][cuda]") {
  distill_test::rng g(703);
  const shape_case c{3, 3, 2, 6, 9};
  const long N = c.H * c.W;
  // peer features in {0, 1, 2}: maps (a^2 + b^2) / 2 take a few exact values, so many positions tie,
  // at the threshold too, in float as in double
  std::vector<float> pf(static_cast<std::size_t>(c.B * c.Cp * N));
  for (auto& v : pf) v = static_cast<float>(g.integer(0, 2));
  auto sf = g.normals<float>(static_cast<std::size_t>(c.B * c.Cs * N));
  for (long i = c.Cs * N; i < 2 * c.Cs * N; ++i) sf[static_cast<std::size_t>(i)] *= 1e-2f;  // sample 1: ||Q|| about 1e-3 < eps
  attention_diversity_options o;
  o.eps = 1e-2, o.weight = 2, o.reduction = reduction::none;
  vec y, nu;
  const vec t = ref::diversity_target(widen(pf), c.B, c.Cp, N, &y, &nu, o.eps);
  long at_theta = 0;
  for (long b = 0; b < c.B; ++b)
    for (long n = 0; n < N; ++n) at_theta += t[static_cast<std::size_t>(b * N + n)] == nu[static_cast<std::size_t>(b)] / 2;
  REQUIRE(at_theta > c.B);  // ties at the threshold in every sample (more than one position each on average)
  device_buffer<float> ds(sf), dp(pf), dl(static_cast<std::size_t>(c.B)), dg(sf.size()), dt(static_cast<std::size_t>(c.B * N));
  device_workspace ws(c.B, c.H, c.W);
  const auto sv = cview(ds, c.B, c.Cs, c.H, c.W), pv = cview(dp, c.B, c.Cp, c.H, c.W);
  REQUIRE(attention_diversity_forward_backward(distill::cuda{}, sv, pv, dl.view(c.B), dg.view(c.B, c.Cs, c.H, c.W), ws.view(), o).ok());
  REQUIRE(attention_diversity_target(distill::cuda{}, pv, dt.view(c.B, c.H, c.W), ws.view(), o.eps).ok());
  distill_test::cuda_sync();
  CHECK_CLOSE("target", widen(dt.download()), t, map_tol);
  CHECK_CLOSE("loss", widen(dl.download()), expected_loss(ref::diversity_loss(widen(sf), widen(pf), c.B, c.Cs, c.Cp, N, o.eps), o), loss_tol);
  CHECK_CLOSE("grad_student", widen(dg.download()), numeric_grad(widen(sf), widen(pf), c, o), grad_tol);
}

TEST_CASE("CUDA attention diversity: target and shifted features, strided and in place", "[attention][diversity][cuda]") {
  distill_test::rng g(704);
  for (const auto& c : cases) {
    const long N = c.H * c.W;
    CAPTURE(c.B, c.Cp, c.H, c.W);
    const auto pf = g.normals<float>(static_cast<std::size_t>(c.B * c.Cp * N));
    vec y, nu;
    const vec t = ref::diversity_target(widen(pf), c.B, c.Cp, N, &y, &nu);
    vec expect(pf.size());
    for (long b = 0; b < c.B; ++b)
      for (long ch = 0; ch < c.Cp; ++ch)
        for (long n = 0; n < N; ++n) {
          const std::size_t i = static_cast<std::size_t>(b * N + n), e = static_cast<std::size_t>((b * c.Cp + ch) * N + n);
          expect[e] = pf[e] + (t[i] - y[i]) * nu[static_cast<std::size_t>(b)] / static_cast<double>(c.Cp);
        }
    device_buffer<float> dp(pf), dt(static_cast<std::size_t>(c.B * N)), dsh(pf.size()), dinplace(pf);
    device_workspace ws(c.B, c.H, c.W);
    const auto pv = cview(dp, c.B, c.Cp, c.H, c.W);
    REQUIRE(attention_diversity_target(distill::cuda{}, pv, dt.view(c.B, c.H, c.W), ws.view()).ok());
    REQUIRE(attention_diversity_shift(distill::cuda{}, pv, dsh.view(c.B, c.Cp, c.H, c.W), ws.view()).ok());
    REQUIRE(attention_diversity_shift(distill::cuda{}, cview(dinplace, c.B, c.Cp, c.H, c.W), dinplace.view(c.B, c.Cp, c.H, c.W), ws.view()).ok());
    distill_test::cuda_sync();
    CHECK_CLOSE("target", widen(dt.download()), t, map_tol);
    CHECK_CLOSE("shifted", widen(dsh.download()), expect, map_tol);
    CHECK(same_bits(dinplace.download(), dsh.download()));
  }
  // a student inside a padded buffer (row stride W + 2): the numbers of the dense student, the padding untouched
  const long B = 3, Cs = 4, Cp = 4, H = 5, W = 5, N = H * W;
  const auto sf = g.normals<float>(static_cast<std::size_t>(B * Cs * N)), pf = g.normals<float>(static_cast<std::size_t>(B * Cp * N));
  std::vector<float> padded(static_cast<std::size_t>(B * Cs * H * (W + 2)), 99.0f);
  for (long i = 0; i < B * Cs * H; ++i)
    for (long w = 0; w < W; ++w) padded[static_cast<std::size_t>(i * (W + 2) + w)] = sf[static_cast<std::size_t>(i * W + w)];
  device_buffer<float> ds(sf), dpad(padded), dp(pf), dl(1), dl2(1), dg(sf.size()), dgpad(std::vector<float>(padded.size(), -5.0f));
  device_workspace ws(B, H, W);
  const std::array<index_t, 4> ext{B, Cs, H, W}, str{Cs * H * (W + 2), H * (W + 2), W + 2, 1};
  REQUIRE(attention_diversity_forward_backward(distill::cuda{}, cview(ds, B, Cs, H, W), cview(dp, B, Cp, H, W), dl.view(1), dg.view(B, Cs, H, W),
                                               ws.view())
              .ok());
  REQUIRE(attention_diversity_forward_backward(distill::cuda{}, make_strided_view<cuda_space>(static_cast<const float*>(dpad.data()), ext, str),
                                               cview(dp, B, Cp, H, W), dl2.view(1), make_strided_view<cuda_space>(dgpad.data(), ext, str), ws.view())
              .ok());
  distill_test::cuda_sync();
  CHECK(same_bits(dl2.download(), dl.download()));
  const auto grad = dg.download(), gpad = dgpad.download();
  for (long i = 0; i < B * Cs * H; ++i) {
    for (long w = 0; w < W; ++w) CHECK(gpad[static_cast<std::size_t>(i * (W + 2) + w)] == grad[static_cast<std::size_t>(i * W + w)]);
    CHECK(gpad[static_cast<std::size_t>(i * (W + 2) + W)] == -5.0f);
  }
}

TEST_CASE("CUDA attention diversity: bad inputs are refused with the argument named", "[attention][diversity][cuda][errors]") {
  auto has = [](const status& st, errc code, const char* text) {
    INFO(st.to_string());
    return st.code() == code && st.message().find(text) != std::string::npos;
  };
  const long B = 2, C = 3, H = 4, W = 4;
  device_buffer<float> ds(static_cast<std::size_t>(B * C * H * W)), dp(ds.size()), dl(1);
  ds.fill_bytes(0), dp.fill_bytes(0);
  device_workspace ws(B, H, W);
  const auto sv = cview(ds, B, C, H, W), pv = cview(dp, B, C, H, W);
  // host memory passed as device memory
  std::vector<float> host(ds.size());
  CHECK(has(attention_diversity_forward(distill::cuda{}, make_view<cuda_space>(static_cast<const float*>(host.data()), B, C, H, W), pv, dl.view(1),
                                        ws.view()),
            errc::wrong_memory_space, "'student'"));
  // a workspace one byte short
  const auto short_ws = make_view<cuda_space>(ws.buf.data(), static_cast<index_t>(ws.buf.size()) - 1);
  CHECK(has(attention_diversity_forward(distill::cuda{}, sv, pv, dl.view(1), short_ws), errc::invalid_argument, "attention_diversity_workspace_size"));
  device_buffer<float> dt(static_cast<std::size_t>(B * H * W));
  CHECK(has(attention_diversity_target(distill::cuda{}, pv, dt.view(B, H, W), short_ws), errc::invalid_argument, "attention_diversity_workspace_size"));
  // the CPU's shape and option checks
  attention_diversity_options o;
  o.reduction = reduction::none;
  CHECK(has(attention_diversity_forward(distill::cuda{}, sv, pv, dl.view(1), ws.view(), o), errc::shape_mismatch, "'loss'"));
  o = {};
  o.eps = 0;
  CHECK(has(attention_diversity_forward(distill::cuda{}, sv, pv, dl.view(1), ws.view(), o), errc::invalid_argument, "'eps'"));
  CHECK(has(attention_diversity_forward(distill::cuda{}, sv, cview(dp, B, C, H, 2), dl.view(1), ws.view()), errc::shape_mismatch, "'peer'"));
  CHECK(cudaGetLastError() == cudaSuccess);
}
