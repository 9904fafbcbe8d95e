// SPDX-License-Identifier: MIT
// Main of every CUDA test binary. Without a usable CUDA device it prints why and exits with 77,
// which CTest reports as *skipped* (SKIP_RETURN_CODE), never as passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime_api.h>

#include <cstdio>

#include "random.hpp"

int main(int argc, char** argv) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 77;
  }
  cudaDeviceProp prop{};
  (void)cudaGetDeviceProperties(&prop, 0);
  std::printf("distill CUDA tests on %s (sm_%d%d): DISTILL_TEST_SEED=%llu\n", prop.name, prop.major, prop.minor,
              static_cast<unsigned long long>(distill_test::test_seed()));
  return Catch::Session().run(argc, argv);
}
