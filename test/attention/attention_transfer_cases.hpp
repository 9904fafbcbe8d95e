// SPDX-License-Identifier: MIT
#pragma once
// Attention-transfer cases written once for every backend (support/backend.hpp); the including
// file defines `test_space` first (test_attention_backends.cpp: host_space;
// test_attention_transfer_cuda.cu: cuda_space). The harness and the double reference are the
// same on both.
#include <catch2/catch.hpp>

#include <string>
#include <type_traits>

#include "attention/attention_transfer_harness.hpp"
#include "attention/attention_test_util.hpp"
#include "support/compare.hpp"

namespace at_cases {

using namespace at_test;

/// Gradient tolerance (relative) of a storage type: inputs are rounded to it before the
/// reference sees them, so only float accumulation and the rounding of the gradient remain.
template <class T>
double grad_rtol() {
  return std::is_same_v<T, float> ? 1e-3 : std::is_same_v<T, distill::float16> ? 4e-3 : 2e-2;
}

/// Runs one configuration on test_space and checks loss, gradient and canaries against the
/// double reference.
template <class T>
void check_case(const shape& sh, const attention_transfer_options& opt, int pass, distill_test::rng& g) {
  const std::size_t ns = static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W;
  const auto s = attention_test::rounded<T>(features(g, ns));
  const auto t = attention_test::rounded<T>(features(g, static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W));
  const auto init = attention_test::rounded<T>(g.normals(ns));
  const at_outputs out = run_library<T, T, test_space>(sh, s, t, opt, pass, g, 2, opt.accumulate ? &init : nullptr);
  CAPTURE(distill_test::backend<test_space>::name, distill::dtype_name<T>(), pass, sh.B, sh.Cs, sh.Ct, sh.H, sh.W, opt.p,
          static_cast<int>(opt.form), static_cast<int>(opt.reduction), opt.accumulate, static_cast<int>(opt.cuda_algorithm));
  CAPTURE(out.st.to_string());
  REQUIRE(out.st.ok());
  CHECK(out.canaries_ok);
  const auto ref = attention_ref::attention_transfer(s, sh.B, sh.Cs, t, sh.Ct, sh.H, sh.W, ref_config(opt));
  if (pass != 2) {
    const auto expect = reduced_loss(ref, opt.reduction);
    CHECK_CLOSE("loss", out.loss, expect, attention_test::scaled(expect, 1e-5, 5e-4, 1e-7 * opt.beta));
  }
  if (pass != 1) {
    auto expect = ref.grad;
    if (opt.accumulate)
      for (std::size_t i = 0; i < ns; ++i) expect[i] += init[i];
    CHECK_CLOSE("grad_student", out.grad, expect, attention_test::scaled(expect, 1e-4, grad_rtol<T>(), 1e-7 * opt.beta));
  }
}

/// `trials` random shapes (up to 40 channels, 20 x 20 maps) and options with the given CUDA
/// algorithm (the CPU ignores it), every pass.
template <class T>
void random_trials(attention_transfer_cuda_algorithm a, int trials, std::uint64_t salt) {
  distill_test::rng g(salt);
  for (int trial = 0; trial < trials; ++trial) {
    const shape sh = random_shape(g, true);
    attention_transfer_options opt = random_options(g);
    opt.accumulate = g.coin(0.2);
    opt.cuda_algorithm = a;
    const int pass = static_cast<int>(g.integer(0, 2));
    CAPTURE(trial);
    check_case<T>(sh, opt, pass, g);
  }
}

}  // namespace at_cases

TEMPLATE_TEST_CASE("attention transfer matches the double reference on every backend (CUDA: two_pass)", "[attention][at][backend]",
                   float, distill::float16, distill::bfloat16) {
  at_cases::random_trials<TestType>(distill::attention_transfer_cuda_algorithm::two_pass, 40, 501);
}
