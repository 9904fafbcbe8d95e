// SPDX-License-Identifier: MIT
// GPU ceilings measured in the same run: device-to-device copy bandwidth and cuBLAS GEMM rates
// (fp32, TF32, bf16), the roofline of every CUDA benchmark.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include "bench_common.hpp"
#include "cuda_timer.cuh"

namespace {

void copy_1gib(benchmark::State& state) {
  const std::size_t bytes = std::size_t(1) << 30;
  void *x = nullptr, *y = nullptr;
  if (distill_bench::cuda_device_present()) {
    cudaMalloc(&x, bytes);
    cudaMalloc(&y, bytes);
    cudaMemset(x, 1, bytes);
  }
  distill_bench::run_cuda(state, [&](cudaStream_t s) { cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s); });
  distill_bench::set_bytes(state, 2.0 * bytes, distill_bench::ceiling().gpu_gbps);
  cudaFree(x);
  cudaFree(y);
}

// mode 0: fp32, 1: TF32 tensor cores, 2: bf16 inputs with fp32 accumulation
void gemm_8192(benchmark::State& state, int mode) {
  const int n = 8192;
  void *a = nullptr, *b = nullptr, *c = nullptr;
  cublasHandle_t h = nullptr;
  const std::size_t in_bytes = std::size_t(n) * n * (mode == 2 ? 2 : 4);
  if (distill_bench::cuda_device_present()) {
    cudaMalloc(&a, in_bytes);
    cudaMalloc(&b, in_bytes);
    cudaMalloc(&c, std::size_t(n) * n * 4);
    cudaMemset(a, 0, in_bytes);
    cudaMemset(b, 0, in_bytes);
    cublasCreate(&h);
  }
  const float one = 1.0f, zero = 0.0f;
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    cublasSetStream(h, s);
    const cudaDataType in = mode == 2 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = mode == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, in, n, b, in, n, &zero, c, CUDA_R_32F, n, ct,
                 CUBLAS_GEMM_DEFAULT);
  });
  const double ceil = mode == 0 ? distill_bench::ceiling().gpu_tflops_f32
                    : mode == 1 ? distill_bench::ceiling().gpu_tflops_tf32
                                : distill_bench::ceiling().gpu_tflops_bf16;
  distill_bench::set_flops(state, 2.0 * n * n * n, ceil * 1e3);
  if (h) cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
}

const int registered = [] {
  benchmark::RegisterBenchmark("ceiling/cuda/copy/1GiB", copy_1gib)->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/cuda/gemm/8192/f32", gemm_8192, 0)->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/cuda/gemm/8192/tf32", gemm_8192, 1)->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/cuda/gemm/8192/bf16", gemm_8192, 2)->UseManualTime()->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace
