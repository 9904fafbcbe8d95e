// SPDX-License-Identifier: MIT
#pragma once
// Relational-pairing cases written once for every backend (support/backend.hpp); the including
// file defines `test_space` first (test_pairing_backends.cpp: host_space; test_relational_cuda.cu:
// cuda_space). The harness and the double reference are the same on both.
#include <catch2/catch.hpp>

#include <string>
#include <type_traits>

#include "relational/pairing_harness.hpp"

namespace rel_cases {

using namespace rel_test;
/// Tolerance of the float path: fp32 accumulation (CUDA: atomics in an unspecified order).
inline constexpr double rel_float = std::is_same_v<test_space, distill::host_space> ? rel_f32 : 1e-4;

inline void check_against_reference(const std::string& what, const lib_result& got, const std::vector<double>& y,
                                    const distill_ref::pairing_grads_d& g) {
  if (!got.y.empty()) CHECK_CLOSE(what + " y", got.y, y, scaled(y, rel_float));
  if (!got.o.empty()) CHECK_CLOSE(what + " d objects", got.o, g.o, scaled(g.o, rel_float));
  if (!got.q.empty()) CHECK_CLOSE(what + " d question", got.q, g.q, scaled(g.q, rel_float));
  if (!got.m.empty()) CHECK_CLOSE(what + " d pair_mask", got.m, g.M, scaled(g.M, rel_float));
  for (std::size_t l = 0; l < got.w.size(); ++l) {
    CHECK_CLOSE(what + " d W" + std::to_string(l), got.w[l], g.W[l], scaled(g.W[l], rel_float));
    CHECK_CLOSE(what + " d b" + std::to_string(l), got.b[l], g.b[l], scaled(g.b[l], rel_float));
  }
}

}  // namespace rel_cases

TEST_CASE("relational pairing on every backend: more tiles than persistent blocks (B N^2 > 33 792)", "[relational][pairing][backend]") {
  // 2 x 132^2 = 34 848 pairs = 273 tiles of 128: more than the 2 blocks per SM of an H100 (264)
  // or an A100 (216), so every block walks the loop over tiles more than once.
  using namespace rel_cases;
  distill_test::rng g(403);
  pairing_case c;
  c.B = 2, c.N = 132, c.D = 4, c.Q = 3, c.H = 32, c.L = 3, c.mask = mask_kind::soft;
  const distill_ref::pairing_problem_d p = make_problem(g, c);
  const std::vector<double> dy = make_dy(g, c);
  const auto y = distill_ref::pairing_forward(p);
  const auto gr = distill_ref::pairing_backward(p, dy);
  for (pass which : {pass::forward, pass::fused}) {
    run_config rc;
    rc.threads = 2;
    rc.which = which;
    const lib_result r = run_lib<float, test_space>(p, dy, rc);
    INFO(describe(c) << " pass " << static_cast<int>(which));
    REQUIRE(r.st.ok());
    CHECK(r.canaries_ok);
    check_against_reference("many tiles", r, y, gr);
  }
}
