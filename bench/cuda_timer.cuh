// SPDX-License-Identifier: MIT
#pragma once
// CUDA benchmark loop: times `work(stream)` with cudaEvents on a private stream and reports the
// GPU time through state.SetIterationTime (register the benchmark with ->UseManualTime()).
// Without a device the benchmark is skipped with a message, never reported as a time.
//
//   run_cuda(state, [&](cudaStream_t s) { (void)distill::kl_..._forward_backward(distill::cuda{s}, ...); });

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <string>

namespace distill_bench {

inline bool cuda_device_present() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  if (!ok) (void)cudaGetLastError();
  return ok;
}

template <class Work>
void run_cuda(benchmark::State& state, Work&& work, int warmup = 3) {
  if (!cuda_device_present()) {
    state.SkipWithError("no CUDA device");
    for (auto _ : state) {
    }
    return;
  }
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

}  // namespace distill_bench
