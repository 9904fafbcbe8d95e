// SPDX-License-Identifier: MIT
// Main of every CPU test binary: prints the seed so a failure can be reproduced with
// DISTILL_TEST_SEED=<seed>, and the instruction set the binary's CPU paths were built for.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "distill/core/simd.hpp"

#include "random.hpp"

int main(int argc, char** argv) {
#if defined(DISTILL_TEST_ISA_LEVEL) && defined(__GNUC__) && !defined(__clang__)
  // a binary built for another -march level (test/CMakeLists.txt) on a CPU that lacks it
  if (!__builtin_cpu_supports(DISTILL_TEST_ISA_LEVEL)) {
    std::printf("distill tests: skipped, this CPU cannot run %s code\n", DISTILL_TEST_ISA_LEVEL);
    return 77;
  }
#endif
  std::printf("distill tests: DISTILL_TEST_SEED=%llu, CPU paths built for %s (%d floats a SIMD batch)\n",
              static_cast<unsigned long long>(distill_test::test_seed()), distill::simd::instruction_set(),
              distill::simd::width<float>);
  return Catch::Session().run(argc, argv);
}
