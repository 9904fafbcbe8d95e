// SPDX-License-Identifier: MIT
#pragma once
// Attention-map cases written once for every backend (support/backend.hpp); the including file
// defines `test_space` first (test_attention_backends.cpp: host_space;
// test_attention_map_cuda.cu: cuda_space). The harness and the double reference are the same on
// both.
#include <catch2/catch.hpp>

#include <string>
#include <type_traits>

#include "attention/attention_map_harness.hpp"
#include "attention/attention_test_util.hpp"
#include "support/compare.hpp"

namespace am_cases {

/// Gradient tolerance relative to its largest value: 16-bit outputs round to 8 or 11 bits.
template <class T>
double grad_tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : std::is_same_v<T, distill::float16> ? 4e-3 : 2e-2;
}

}  // namespace am_cases

TEMPLATE_TEST_CASE("attention map losses match the double reference for every row length, on every backend",
                   "[attention][map][backend]", float, distill::float16, distill::bfloat16) {
  using namespace am_test;
  using T = TestType;
  const std::string backend = distill_test::backend<test_space>::name;
  distill_test::rng g(601);
  // Row lengths on both sides of every kernel's limits: a warp's registers, whole SIMD batches,
  // one block per row.
  for (int Lk : {1, 7, 32, 33, 64, 100, 128, 129, 256, 300, 512, 700, 1024, 1025, 3000}) {
    for (int trial = 0; trial < 6; ++trial) {
      am_case c = random_case(g, false, Lk);
      c.opt.accumulate = g.coin(0.2);
      const int pass = static_cast<int>(g.integer(0, 2));
      const auto s = attention_test::rounded<T>(student_values(g, c));
      const auto t = attention_test::rounded<T>(teacher_values(g, c));
      const auto init = attention_test::rounded<T>(g.normals(s.size()));
      const auto ref = reference(c, s, t);
      const am_outputs out = run_library<T, T, test_space>(c, s, t, pass, g, 2, c.opt.accumulate ? &init : nullptr);
      CAPTURE(backend, distill::dtype_name<T>(), Lk, trial, pass, c.sh.B, c.sh.Hs, c.sh.Ht, c.sh.Lq, c.kl,
              static_cast<int>(c.opt.student_input), static_cast<int>(c.opt.teacher_input), static_cast<int>(c.opt.head_map),
              static_cast<int>(c.opt.reduction), c.key_mask.size(), c.query_mask.size(), c.opt.accumulate);
      CAPTURE(out.st.to_string());
      REQUIRE(out.st.ok());
      CHECK(out.canaries_ok);
      if (pass != 2) {
        const auto expect = expected_loss(ref, c.opt.reduction);
        CHECK_CLOSE("loss", out.loss, expect, attention_test::scaled(expect, 1e-5, 1e-3, 1e-6));
      }
      if (pass != 1) {
        auto expect = ref.grad;
        if (c.opt.accumulate)
          for (std::size_t i = 0; i < expect.size(); ++i) expect[i] += init[i];
        const double tol = am_cases::grad_tolerance<T>();
        CHECK_CLOSE("grad_student", out.grad, expect, attention_test::scaled(expect, tol, tol, 1e-6));
      }
    }
  }
}
