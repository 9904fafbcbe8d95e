// SPDX-License-Identifier: MIT
// distill_bench main: Google Benchmark plus the machine context (CPU threads, CUDA device).
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  distill_bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
