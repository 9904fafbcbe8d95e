// SPDX-License-Identifier: MIT
#pragma once
// Shared pieces of the CUDA benchmarks:
//   if (distill_bench::skip_without_device(state)) return;      // before allocating anything
//   const auto x = distill_bench::device_normals<float>(n, 1);    // filled on the device
//   distill_test::device_buffer<float> grad(n);                  // owning device memory
//   distill_bench::run_cuda(state, [&](cudaStream_t s) { return distill::foo(distill::cuda{s}, ...); });
// run_cuda times work(stream) with cudaEvents on a private stream and reports the GPU time
// through state.SetIterationTime (register the benchmark with ->UseManualTime()); when work
// returns a distill::status, the first failure skips the benchmark with its message. Without a
// device the benchmark is skipped with a message, never reported as a time.

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/core/status.hpp"
#include "support/device_buffer.cuh"

namespace distill_bench {

inline bool cuda_device_present() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  if (!ok) (void)cudaGetLastError();
  return ok;
}

/// True, with the benchmark marked skipped, where this machine has no CUDA device.
inline bool skip_without_device(benchmark::State& state) {
  if (cuda_device_present()) return false;
  state.SkipWithError("no CUDA device");
  for (auto _ : state) {
  }
  return true;
}

/// Deterministic, roughly standard normal values: a centred, scaled sum of four hashed uniforms.
template <class T>
__global__ void fill_normals_kernel(T* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    float s = 0.0f;
    for (int k = 0; k < 4; ++k) {
      h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
      s += static_cast<float>(h & 0xffffff) * (1.0f / 16777216.0f);
    }
    p[i] = distill::store<T>((s - 2.0f) * 1.7320508f);
  }
}

/// n values of T on the device, filled there by fill_normals_kernel (large inputs cost no host
/// time or transfer).
template <class T>
distill_test::device_buffer<T> device_normals(std::size_t n, std::uint32_t seed) {
  distill_test::device_buffer<T> b(n);
  if (n) fill_normals_kernel<T><<<1024, 256>>>(b.data(), n, seed);
  distill_test::cuda_check(cudaDeviceSynchronize(), "fill_normals_kernel");
  return b;
}

template <class Work>
void run_cuda(benchmark::State& state, Work&& work, int warmup = 3) {
  if constexpr (std::is_same_v<std::invoke_result_t<Work&, cudaStream_t>, distill::status>) {
    std::string first_error;  // reported after the timing loop
    run_cuda(
        state,
        [&](cudaStream_t s) {
          const distill::status st = work(s);
          if (!st.ok() && first_error.empty()) first_error = st.to_string();
        },
        warmup);
    if (!first_error.empty()) state.SkipWithError(first_error.c_str());
  } else {
    if (skip_without_device(state)) return;
    cudaStream_t stream;
    cudaEvent_t start, stop;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int i = 0; i < warmup; ++i) work(stream);
    cudaError_t e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) state.SkipWithError((std::string("CUDA error in warm-up: ") + cudaGetErrorString(e)).c_str());
    for (auto _ : state) {
      if (e != cudaSuccess) break;
      cudaEventRecord(start, stream);
      work(stream);
      cudaEventRecord(stop, stream);
      e = cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      state.SetIterationTime(ms * 1e-3);
    }
    if (e != cudaSuccess) state.SkipWithError((std::string("CUDA error: ") + cudaGetErrorString(e)).c_str());
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
  }
}

}  // namespace distill_bench
