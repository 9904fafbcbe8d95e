// SPDX-License-Identifier: MIT
// Machine ceilings measured in the same run as the primitives: streaming bandwidth and the
// Eigen GEMM rate through distill::gemm (the CPU roofline of every other benchmark).
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "bench_common.hpp"
#include "distill/core/cpu_gemm.hpp"
#include "distill/core/parallel.hpp"

namespace {

void copy_128mib(benchmark::State& state) {
  const std::size_t n = std::size_t(1) << 25;  // 32 Mi floats = 128 MiB
  std::vector<float> x(n, 1.0f), y(n);
  const distill::cpu ctx{distill_bench::cpu_threads()};
  for (auto _ : state) {
    distill::parallel_for(ctx, static_cast<distill::index_t>(n), [&](distill::index_t b, distill::index_t e) {
      std::memcpy(y.data() + b, x.data() + b, static_cast<std::size_t>(e - b) * sizeof(float));
    });
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  distill_bench::set_bytes(state, 2.0 * n * sizeof(float), distill_bench::ceiling().cpu_gbps);
}

void gemm_1024(benchmark::State& state) {
  const distill::index_t n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  const distill::cpu ctx{distill_bench::cpu_threads()};
  for (auto _ : state) {
    auto st = distill::gemm(ctx, distill::transpose::no, distill::transpose::no, 1.0f,
                            distill::make_view(static_cast<const float*>(a.data()), n, n),
                            distill::make_view(static_cast<const float*>(b.data()), n, n), 0.0f,
                            distill::make_view(c.data(), n, n));
    benchmark::DoNotOptimize(st);
    benchmark::DoNotOptimize(c.data());
  }
  distill_bench::set_flops(state, 2.0 * n * n * n, distill_bench::ceiling().cpu_gflops);
}

const int registered = [] {
  benchmark::RegisterBenchmark("ceiling/cpu/copy/128MiB", copy_128mib)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("ceiling/cpu/gemm/1024x1024x1024/f32", gemm_1024)->Unit(benchmark::kMillisecond)->UseRealTime();
  return 0;
}();

}  // namespace
