// SPDX-License-Identifier: MIT
#pragma once
// WSDDN cases written once for every backend (support/backend.hpp); the including file defines
// `test_space` first (test_detection_backends.cpp: host_space; test_wsddn_cuda.cu: cuda_space).
// Scores, region scores, gradients and the fused loss (every reduction, scales, accumulate)
// against the naive double reference (test/reference/wsddn_ref.hpp, itself checked against
// finite differences in test_wsddn.cpp), on shapes from one proposal to 700 proposals of 80
// classes; float on every backend, double where the backend has it (the CPU).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "detection/wsddn_harness.hpp"
#include "support/compare.hpp"

namespace wsddn_cases {

using namespace wsddn_test;

template <class T, class Space>
void check_shapes(distill_test::rng& g, distill_test::tolerance tolerance, distill_test::tolerance loss_tolerance) {
  const int shapes[][3] = {{1, 1, 1}, {1, 1, 7},  {3, 5, 1},  {4, 17, 3},  {2, 30, 10}, {2, 37, 10},
                           {5, 9, 20}, {5, 65, 33}, {1, 200, 12}, {3, 300, 7}, {1, 700, 80}};
  int pad = 0;
  for (const auto& sh : shapes) {
    const wsddn_ref_case c = random_case<T>(g, sh[0], sh[1], sh[2]);
    std::vector<double> upstream;
    for (double v : g.normals(static_cast<std::size_t>(c.B) * c.C)) upstream.push_back(static_cast<double>(static_cast<T>(v)));
    std::vector<std::uint8_t> labels(static_cast<std::size_t>(c.B) * c.C);
    for (auto& l : labels) l = g.coin(0.4) ? 1 : 0;
    std::vector<double> rho_ref, dx_ref, dy_ref;
    const auto s_ref = distill_ref::wsddn_ref_scores(c, &rho_ref);
    distill_ref::wsddn_ref_backward(c, upstream, dx_ref, dy_ref);
    for (int red = 0; red < 4; ++red) {
      const double eps = 0x1p-10, grad_scale = 0.75;  // exact in the float options
      wsddn_options o = options_of(c);
      o.reduction = static_cast<reduction>(red), o.probability_eps = static_cast<float>(eps), o.grad_scale = static_cast<float>(grad_scale);
      pad = (pad + 1) % 3;
      const wsddn_outputs out = run_library<T, Space>(c, upstream, labels, o, pad);
      INFO(distill_test::backend<Space>::name << " " << distill::dtype_name<T>() << " B " << c.B << " R " << c.R << " C " << c.C
                                              << " scales " << c.class_scale << " " << c.region_scale << " reduction " << red << " pad "
                                              << pad << " " << out.st.to_string());
      REQUIRE(out.st.ok());
      CHECK(out.canaries_ok);
      CHECK(out.repeatable);
      CHECK_CLOSE("image scores", out.scores, s_ref, tolerance);
      CHECK_CLOSE("region scores", out.region_scores, rho_ref, tolerance);
      CHECK_CLOSE("dL/dx", out.dx, dx_ref, tolerance);
      CHECK_CLOSE("dL/dy", out.dy, dy_ref, tolerance);
      std::vector<double> g_ref, fused_dx_ref, fused_dy_ref;
      const auto loss_ref = distill_ref::wsddn_ref_loss(c, labels, eps, red, grad_scale, &g_ref);
      distill_ref::wsddn_ref_backward(c, g_ref, fused_dx_ref, fused_dy_ref);
      CHECK_CLOSE("loss", out.loss, loss_ref, loss_tolerance);
      CHECK_CLOSE("fused scores", out.fused_scores, s_ref, tolerance);
      // dL/ds reaches 1/eps where a score rounds to 0 or 1 (one class: s = 1 exactly in double),
      // and it multiplies the rounding of the softmaxes: the absolute tolerance scales with it.
      double g_max = 1;
      for (double v : g_ref) g_max = std::max(g_max, std::abs(v));
      const distill_test::tolerance fused_tolerance{tolerance.atol * g_max, tolerance.rtol};
      CHECK_CLOSE("fused dL/dx", out.fused_dx, fused_dx_ref, fused_tolerance);
      CHECK_CLOSE("fused dL/dy", out.fused_dy, fused_dy_ref, fused_tolerance);
      for (auto& v : fused_dx_ref) v *= 2;  // accumulate adds the same gradient again
      CHECK_CLOSE("accumulated dL/dx", out.accumulated_dx, fused_dx_ref, fused_tolerance);
    }
  }
}

template <class Space>
void check_every_type() {
  distill_test::rng g(41);
  check_shapes<float, Space>(g, {2e-6, 2e-4}, {1e-5, 2e-4});
  if constexpr (std::is_same_v<Space, distill::host_space>) check_shapes<double, Space>(g, {1e-11, 1e-9}, {1e-11, 1e-9});
}

}  // namespace wsddn_cases

TEST_CASE("wsddn against the reference on every backend", "[detection][wsddn][backend]") { wsddn_cases::check_every_type<test_space>(); }
