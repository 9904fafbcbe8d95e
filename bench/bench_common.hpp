// SPDX-License-Identifier: MIT
#pragma once
// Shared pieces of distill_bench.
//
// Names: <primitive>/<backend>/<pass>/<shape>[/<dtype>], e.g. soft_target_kl/cpu/fwd_bwd/1024x32000,
// registered with benchmark::RegisterBenchmark so the headline names are exact strings.
//
// Counters: every benchmark reports what it moves or computes, and the fraction of the
// roofline of this machine:
//   bytes_per_second (GB/s) and roofline = achieved / ceiling bandwidth   (bandwidth-bound)
//   flops (FLOP/s) and roofline = achieved / ceiling GEMM rate            (compute-bound)
// The default ceilings are the founding team's performance anchors (a 2-core AVX-512 Xeon:
// streaming 18.2 GB/s, Eigen GEMM 98.5 GFLOP/s; H100: 3001 GB/s, 51.6 TFLOP/s fp32,
// 365 TFLOP/s TF32, 687 TFLOP/s bf16); compare.py re-measures them with the ceiling/...
// benchmarks of this binary in the same run; override with DISTILL_BENCH_CPU_GBPS, DISTILL_BENCH_CPU_GFLOPS,
// DISTILL_BENCH_GPU_GBPS, DISTILL_BENCH_GPU_TFLOPS_F32/_TF32/_BF16.
//
// CUDA timing: cudaEvent pairs around the work on one stream, state.SetIterationTime and
// ->UseManualTime(); inputs larger than L2 are rotated by the benchmark itself where it matters.

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "distill/core/simd.hpp"
#include "distill/core/status.hpp"

namespace distill_bench {

inline double env_or(const char* name, double fallback) {
  const char* s = std::getenv(name);
  return s ? std::atof(s) : fallback;
}

struct ceilings {
  double cpu_gbps = env_or("DISTILL_BENCH_CPU_GBPS", 18.2);
  double cpu_gflops = env_or("DISTILL_BENCH_CPU_GFLOPS", 98.5);
  double gpu_gbps = env_or("DISTILL_BENCH_GPU_GBPS", 3001.0);
  double gpu_tflops_f32 = env_or("DISTILL_BENCH_GPU_TFLOPS_F32", 51.6);
  double gpu_tflops_tf32 = env_or("DISTILL_BENCH_GPU_TFLOPS_TF32", 365.0);
  double gpu_tflops_bf16 = env_or("DISTILL_BENCH_GPU_TFLOPS_BF16", 687.0);
};
inline const ceilings& ceiling() {
  static const ceilings c;
  return c;
}

/// Threads the CPU benchmarks use: DISTILL_BENCH_THREADS, default = hardware threads (2 here).
inline int cpu_threads() {
  static const int t = static_cast<int>(env_or("DISTILL_BENCH_THREADS", std::max(1u, std::thread::hardware_concurrency())));
  return t;
}

/// The timed loop of a CPU benchmark: `step()` makes the calls of one iteration and returns the
/// distill::status of the last; the first failure skips the benchmark with its message.
///   run_cpu(state, [&] { return distill::kl_teacher_student_forward_backward(ctx, s, t, loss, g, {}, {}, o); });
template <class Step>
void run_cpu(benchmark::State& state, Step&& step) {
  for (auto _ : state) {
    const distill::status st = step();
    if (!st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::ClobberMemory();  // the outputs are written before the clock stops
  }
}

/// Bandwidth counters: `bytes` moved per iteration against a ceiling in GB/s.
inline void set_bytes(benchmark::State& state, double bytes, double ceiling_gbps) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes * static_cast<double>(state.iterations())));
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["roofline"] = benchmark::Counter(bytes * 1e-9 / ceiling_gbps, benchmark::Counter::kIsIterationInvariantRate);
}

/// Compute counters: `flops` per iteration against a ceiling in GFLOP/s.
inline void set_flops(benchmark::State& state, double flops, double ceiling_gflops) {
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["roofline"] = benchmark::Counter(flops * 1e-9 / ceiling_gflops, benchmark::Counter::kIsIterationInvariantRate);
}

/// Which instruction set the CPU paths of this binary were built for (-march and the SIMD
/// batches it gives, core/simd.hpp): CPU figures are only comparable within one level.
inline void add_context_impl() {
  benchmark::AddCustomContext("distill_cpu_threads", std::to_string(cpu_threads()));
#if defined(DISTILL_BENCH_MARCH)
  benchmark::AddCustomContext("distill_march", DISTILL_BENCH_MARCH);
#endif
  benchmark::AddCustomContext("distill_simd", std::string(distill::simd::instruction_set()) + ", " +
                                                  std::to_string(distill::simd::width<float>) + " floats a batch");
}

}  // namespace distill_bench

#if defined(DISTILL_BENCH_HAS_CUDA)
#include <cuda_runtime_api.h>
namespace distill_bench {
inline void add_context() {
  add_context_impl();
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) {
    cudaDeviceProp p{};
    (void)cudaGetDeviceProperties(&p, 0);
    benchmark::AddCustomContext("cuda_device", p.name);
  } else {
    (void)cudaGetLastError();
    benchmark::AddCustomContext("cuda_device", "none (CUDA benchmarks report an error and are skipped)");
  }
}
}  // namespace distill_bench
#else
namespace distill_bench {
inline void add_context() { add_context_impl(); }
}  // namespace distill_bench
#endif
