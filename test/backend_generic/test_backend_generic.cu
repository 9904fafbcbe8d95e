// SPDX-License-Identifier: MIT
// The backend-generic program (generic_program.hpp) under nvcc, instantiated for both contexts:
// the CUDA run must succeed and agree with the CPU run of the same program on the same data.
// Without a GPU the binary reports skipped (exit 77, support/cuda_main.cpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "generic_program.hpp"
#include "support/compare.hpp"

TEST_CASE("one program, written for any context, gives the same results on CUDA and the CPU", "[backend_generic][cuda]") {
  const generic_test::results host = generic_test::run_program(distill::cpu{2});
  const generic_test::results device = generic_test::run_program(distill::cuda{});
  for (const auto& f : host.failures) FAIL_CHECK("cpu: " << f);
  for (const auto& f : device.failures) FAIL_CHECK("cuda: " << f);
  REQUIRE(host.values.size() == device.values.size());
  for (const auto& [name, want] : host.values) {
    INFO(name);
    const auto it = device.values.find(name);
    REQUIRE(it != device.values.end());
    // float arithmetic in another order (and float atomics in the relational weight gradients):
    // relative 2e-3 of the largest magnitude of the output
    double scale = 1e-6;
    for (double x : want) scale = std::max(scale, std::fabs(x));
    CHECK_CLOSE(name.c_str(), it->second, want, (distill_test::tolerance{2e-3 * scale, 2e-3}));
  }
}
