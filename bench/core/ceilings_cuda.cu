// SPDX-License-Identifier: MIT
// GPU ceilings measured in the same run: device-to-device copy bandwidth and cuBLAS GEMM rates
// (fp32, TF32, bf16), the roofline of every CUDA benchmark.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include "bench_common.hpp"
#include "bench_cuda.cuh"

namespace {

void copy_1gib(benchmark::State& state) {
  if (distill_bench::skip_without_device(state)) return;
  const std::size_t bytes = std::size_t(1) << 30;
  distill_test::device_buffer<std::byte> x(bytes), y(bytes);
  x.fill_bytes(1);
  distill_bench::run_cuda(state, [&](cudaStream_t s) { cudaMemcpyAsync(y.data(), x.data(), bytes, cudaMemcpyDeviceToDevice, s); });
  distill_bench::set_bytes(state, 2.0 * bytes, distill_bench::ceiling().gpu_gbps);
}

// mode 0: fp32, 1: TF32 tensor cores, 2: bf16 inputs with fp32 accumulation
void gemm_8192(benchmark::State& state, int mode) {
  if (distill_bench::skip_without_device(state)) return;
  const int n = 8192;
  const std::size_t in_bytes = std::size_t(n) * n * (mode == 2 ? 2 : 4);
  distill_test::device_buffer<std::byte> a(in_bytes), b(in_bytes), c(std::size_t(n) * n * 4);
  a.fill_bytes(0);
  b.fill_bytes(0);
  cublasHandle_t h = nullptr;
  cublasCreate(&h);
  const float one = 1.0f, zero = 0.0f;
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    cublasSetStream(h, s);
    const cudaDataType in = mode == 2 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = mode == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a.data(), in, n, b.data(), in, n, &zero, c.data(), CUDA_R_32F, n, ct,
                 CUBLAS_GEMM_DEFAULT);
  });
  const double ceil = mode == 0 ? distill_bench::ceiling().gpu_tflops_f32
                    : mode == 1 ? distill_bench::ceiling().gpu_tflops_tf32
                                : distill_bench::ceiling().gpu_tflops_bf16;
  distill_bench::set_flops(state, 2.0 * n * n * n, ceil * 1e3);
  cublasDestroy(h);
}

const int registered = [] {
  benchmark::RegisterBenchmark("ceiling/cuda/copy/1GiB", copy_1gib)->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/cuda/gemm/8192/f32", gemm_8192, 0)->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/cuda/gemm/8192/tf32", gemm_8192, 1)->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/cuda/gemm/8192/bf16", gemm_8192, 2)->UseManualTime()->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace
