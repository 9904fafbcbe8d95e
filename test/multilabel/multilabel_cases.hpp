// SPDX-License-Identifier: MIT
#pragma once
// Multi-label soft-target cases written once for every backend (support/backend.hpp); the
// including file defines `test_space` first (test_multilabel_backends.cpp: host_space;
// test_multilabel_cuda.cu: cuda_space). The harness and the double reference are the same on
// both.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "multilabel/multilabel_harness.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace ml_cases {

using namespace ml_test;

/// One random problem of the given variant (which optional inputs, which options): up to 700
/// rows of up to 100 classes, logits and weights rounded to what the library reads first.
template <class T>
void check_case(distill_test::rng& g, int variant, distill_test::tolerance tolerance) {
  using Acc = distill::accum_t<T>;
  const int N = variant % 5 == 0 ? 1 : static_cast<int>(g.integer(2, 700)), C = static_cast<int>(g.integer(1, 100));
  const bool labels = variant % 2 == 0, mask = variant % 3 == 0, weights = variant % 4 < 2;
  multilabel_ref_inputs in{N, C, {}, {}, {}, {}, {}, {}, {}};
  auto as_t = [](double x) { return static_cast<double>(distill::load<float>(distill::store<T>(static_cast<float>(x)))); };
  auto as_acc = [](double x) { return static_cast<double>(static_cast<Acc>(x)); };
  for (int i = 0; i < N * C; ++i) {
    in.student.push_back(as_t(g.normal(0, 3)));
    in.teacher.push_back(as_t(g.normal(0, 3)));
    if (labels) in.labels.push_back(g.coin(0.3) ? 1 : 0);
    if (mask) in.mask.push_back(g.coin(0.8) ? 1 : 0);
  }
  if (weights) {
    for (int r = 0; r < N; ++r) in.row_weights.push_back(as_acc(g.uniform(0, 2)));
    for (int k = 0; k < C; ++k) in.class_weights.push_back(as_acc(g.uniform(0.1, 2)));
    for (int k = 0; k < C; ++k) in.pos_weights.push_back(as_acc(g.uniform(0.5, 4)));
  }
  // Option values representable in float (the options struct holds floats).
  auto f = [&](double lo, double hi) { return static_cast<double>(static_cast<float>(g.uniform(lo, hi))); };
  const multilabel_ref_options o{f(0.5, 6), variant % 4 < 2, variant % 4, f(0, 2), labels ? f(0, 2) : 0.0, f(0.5, 2), variant % 6 == 1};
  const ml_outputs out = run_library<T, test_space>(in, o);
  INFO(distill_test::backend<test_space>::name << " " << distill::dtype_name<T>() << " variant " << variant << " N " << N << " C "
                                               << C << " reduction " << o.reduction << " " << out.st.to_string());
  REQUIRE(out.st.ok());
  CHECK(out.canaries_ok);
  CHECK(out.passes_agree);
  std::vector<double> expected_grad;
  const auto expected = distill_ref::multilabel_ref(in, o, &expected_grad);
  CHECK_CLOSE("loss", out.loss, expected, tolerance);
  CHECK_CLOSE("grad", out.grad, expected_grad, tolerance);
}

}  // namespace ml_cases

TEST_CASE("multilabel soft target against the reference on every backend", "[multilabel][backend]") {
  distill_test::rng g(61);
  for (int variant = 0; variant < 24; ++variant) ml_cases::check_case<float>(g, variant, distill_test::tol::f32_sum);
  // 16-bit logits are rounded before the reference sees them; the gradient is rounded when stored.
  for (int variant = 0; variant < 8; ++variant) ml_cases::check_case<distill::float16>(g, variant, distill_test::tolerance{1e-3, 5e-3});
  for (int variant = 0; variant < 8; ++variant) ml_cases::check_case<distill::bfloat16>(g, variant, distill_test::tolerance{1e-2, 2e-2});
}
