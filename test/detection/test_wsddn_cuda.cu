// SPDX-License-Identifier: MIT
// WSDDN head on CUDA: scores, region scores, gradients and the fused loss (every reduction,
// scales, accumulate) against the naive double reference, bitwise reproducible run to run,
// a missing workspace and host memory refused.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "distill/detection/wsddn.hpp"
#include "reference/wsddn_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using distill_test::device_buffer;

namespace {

distill_ref::wsddn_ref_case random_case(distill_test::rng& g, int B, int R, int C) {
  distill_ref::wsddn_ref_case c{B, R, C, {}, {}};
  for (std::size_t i = 0; i < distill_ref::x_size(c); ++i) {  // float values: the reference sees what the kernel reads
    c.x.push_back(static_cast<float>(g.normal(0, 2)));
    c.y.push_back(static_cast<float>(g.normal(0, 2)));
  }
  c.class_scale = g.coin() ? 1.0 : static_cast<float>(g.uniform(0.5, 2.5));
  c.region_scale = g.coin() ? 1.0 : static_cast<float>(g.uniform(0.5, 2.5));
  return c;
}

std::vector<float> as_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

}  // namespace

TEST_CASE("wsddn cuda: forward, backward and the fused loss against the reference", "[detection][wsddn][cuda]") {
  const distill_test::tolerance tolerance{2e-6, 2e-4};
  distill_test::rng g(51);
  const int shapes[][3] = {{1, 1, 1}, {2, 37, 10}, {3, 300, 7}, {1, 700, 80}, {5, 65, 33}};
  for (const auto& sh : shapes) {
    const auto c = random_case(g, sh[0], sh[1], sh[2]);
    const int B = c.B, R = c.R, C = c.C;
    INFO("B " << B << " R " << R << " C " << C);
    wsddn_options o;
    o.class_scale = static_cast<float>(c.class_scale), o.region_scale = static_cast<float>(c.region_scale);
    device_buffer<float> x(as_float(c.x)), y(as_float(c.y)), s(static_cast<std::size_t>(B * C)), rho(distill_ref::x_size(c)),
        dx(distill_ref::x_size(c)), dy(distill_ref::x_size(c));
    device_buffer<std::byte> ws(wsddn_workspace_size(cuda{}, B, R, C));
    const wsddn_streams<const float, cuda_space> logits{x.view(B, R, C), y.view(B, R, C)};
    const wsddn_streams<float, cuda_space> grads{dx.view(B, R, C), dy.view(B, R, C)};
    std::vector<double> rho_ref;
    const auto s_ref = distill_ref::wsddn_ref_scores(c, &rho_ref);
    REQUIRE(wsddn_forward(cuda{}, logits, s.view(B, C), rho.view(B, R, C), ws.view(ws.size()), o).ok());
    CHECK_CLOSE("image scores", s.download(), s_ref, tolerance);
    CHECK_CLOSE("region scores", rho.download(), rho_ref, tolerance);

    const auto up = g.normals(static_cast<std::size_t>(B * C));
    std::vector<double> dx_ref, dy_ref;
    distill_ref::wsddn_ref_backward(c, up, dx_ref, dy_ref);
    device_buffer<float> dup(as_float(up));
    REQUIRE(wsddn_backward(cuda{}, logits, dup.view(B, C), grads, ws.view(ws.size()), o).ok());
    CHECK_CLOSE("dL/dx", dx.download(), dx_ref, tolerance);
    CHECK_CLOSE("dL/dy", dy.download(), dy_ref, tolerance);

    std::vector<std::uint8_t> labels(static_cast<std::size_t>(B * C));
    for (auto& l : labels) l = g.coin(0.4) ? 1 : 0;
    device_buffer<std::uint8_t> dl(labels);
    for (int red = 0; red < 4; ++red) {
      INFO("reduction " << red);
      o.reduction = static_cast<reduction>(red), o.probability_eps = 0x1p-10f, o.grad_scale = 0.75f, o.accumulate = false;
      std::vector<double> g_ref;
      const auto loss_ref = distill_ref::wsddn_ref_loss(c, labels, 0x1p-10, red, 0.75, &g_ref);
      distill_ref::wsddn_ref_backward(c, g_ref, dx_ref, dy_ref);
      device_buffer<float> loss(loss_ref.size());
      const auto run = [&] {
        REQUIRE(wsddn_forward_backward(cuda{}, logits, dl.view(B, C), s.view(B, C), loss.view(static_cast<index_t>(loss.size())), grads,
                                       ws.view(ws.size()), o).ok());
      };
      run();
      CHECK_CLOSE("loss", loss.download(), loss_ref, (distill_test::tolerance{1e-5, 1e-4}));
      CHECK_CLOSE("fused dL/dx", dx.download(), dx_ref, tolerance);
      CHECK_CLOSE("fused dL/dy", dy.download(), dy_ref, tolerance);
      const auto first_dx = dx.download(), first_loss = loss.download();
      run();
      CHECK(dx.download() == first_dx);  // bitwise the same run to run
      CHECK(loss.download() == first_loss);
      o.accumulate = true;
      run();
      std::vector<float> twice(first_dx);
      for (auto& v : twice) v *= 2;
      CHECK_CLOSE("accumulated dL/dx", dx.download(), twice, tolerance);
    }
  }
}

TEST_CASE("wsddn cuda: bad input is refused", "[detection][wsddn][cuda]") {
  const int B = 2, R = 3, C = 4;
  device_buffer<float> x(static_cast<std::size_t>(B * R * C)), y(x.size()), s(static_cast<std::size_t>(B * C));
  device_buffer<std::byte> ws(wsddn_workspace_size(cuda{}, B, R, C));
  const wsddn_streams<const float, cuda_space> logits{x.view(B, R, C), y.view(B, R, C)};
  CHECK(wsddn_workspace_size(cuda{}, B, R, C) >= (2 * B * R + B) * sizeof(float));
  CHECK(wsddn_workspace_size(cpu{}, B, R, C) == 0);
  CHECK(wsddn_forward(cuda{}, logits, s.view(B, C), cuda_view<float, 3>{}, cuda_view<std::byte, 1>{}).code() == errc::invalid_argument);
  CHECK(wsddn_forward(cuda{}, logits, s.view(B, C), cuda_view<float, 3>{}, ws.view(ws.size())).ok());
  std::vector<float> host(static_cast<std::size_t>(B * R * C));
  const wsddn_streams<const float, cuda_space> on_host{make_view<cuda_space>(static_cast<const float*>(host.data()), B, R, C), y.view(B, R, C)};
  CHECK(wsddn_forward(cuda{}, on_host, s.view(B, C), cuda_view<float, 3>{}, ws.view(ws.size())).code() == errc::wrong_memory_space);
}
