// SPDX-License-Identifier: MIT
// Main of every CPU test binary: prints the seed so a failure can be reproduced with
// DISTILL_TEST_SEED=<seed>.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "random.hpp"

int main(int argc, char** argv) {
  std::printf("distill tests: DISTILL_TEST_SEED=%llu\n", static_cast<unsigned long long>(distill_test::test_seed()));
  return Catch::Session().run(argc, argv);
}
