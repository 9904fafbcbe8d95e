// SPDX-License-Identifier: MIT
// CUDA benchmarks of the features family, with the same math as the PyTorch peer in
// ../shared/perf/gpu_peers.py:
//   adain_stats: mse(AdaIN(ft; fs), ft) + mse(mu_s, mu_t) + mse(sqrt(v_s), sqrt(v_t)), biased
//                variance, eps 1e-5, gradient to fs; fp32, 128x256x32x32 (134 MB per tensor, far
//                beyond L2, so no input rotation is needed)
//   embedding_alignment: ViLD's L1 between L2-normalised embeddings, mean over rows
// Bytes: student and teacher read once, gradient written once (the scalar loss is negligible).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "cuda_timer.cuh"
#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"

namespace {

/// Deterministic pseudo-normal values (sum of uniforms), cheap enough for 33M elements.
std::vector<float> noise(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& f : v) {
    float s = 0;
    for (int k = 0; k < 4; ++k) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      s += static_cast<float>(x >> 40) * (1.0f / 16777216.0f);
    }
    f = (s - 2.0f) * 1.7320508f;
  }
  return v;
}

template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  cudaMalloc(&d, h.size() * sizeof(T));
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

void adain_stats_fwd_bwd(benchmark::State& state, int B, int C, int H, int W) {
  const std::size_t n = static_cast<std::size_t>(B) * C * H * W;
  float *s = nullptr, *t = nullptr, *g = nullptr, *loss = nullptr;
  std::byte* ws = nullptr;
  const std::size_t ws_bytes = distill::stats_matching_workspace_size(distill::cuda{}, B, C);
  if (distill_bench::cuda_device_present()) {
    s = upload(noise(n, 1));
    t = upload(noise(n, 2));
    cudaMalloc(&g, n * sizeof(float));
    cudaMalloc(&loss, sizeof(float));
    cudaMalloc(&ws, ws_bytes);
  }
  const distill::adain_stats_loss_options opt;
  std::string err;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    const distill::status st = distill::adain_stats_loss_forward_backward(
        distill::cuda{stream}, distill::make_view<distill::cuda_space>(static_cast<const float*>(s), B, C, H, W),
        distill::make_view<distill::cuda_space>(static_cast<const float*>(t), B, C, H, W),
        distill::make_view<distill::cuda_space>(loss, 1), distill::make_view<distill::cuda_space>(g, B, C, H, W),
        distill::make_view<distill::cuda_space>(ws, static_cast<distill::index_t>(ws_bytes)), opt);
    if (!st.ok() && err.empty()) err = st.to_string();
  });
  if (!err.empty()) state.SkipWithError(err.c_str());
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().gpu_gbps);
  cudaFree(s);
  cudaFree(t);
  cudaFree(g);
  cudaFree(loss);
  cudaFree(ws);
}

void embedding_l1_fwd_bwd(benchmark::State& state, int N, int D) {
  const std::size_t n = static_cast<std::size_t>(N) * D;
  float *s = nullptr, *t = nullptr, *g = nullptr, *loss = nullptr;
  std::byte* ws = nullptr;
  const std::size_t ws_bytes = distill::embedding_alignment_workspace_size(distill::cuda{}, N);
  if (distill_bench::cuda_device_present()) {
    s = upload(noise(n, 3));
    t = upload(noise(n, 4));
    cudaMalloc(&g, n * sizeof(float));
    cudaMalloc(&loss, sizeof(float));
    cudaMalloc(&ws, ws_bytes);
  }
  distill::embedding_alignment_options opt;
  opt.metric = distill::embedding_metric::l1;
  opt.normalize = distill::l2_normalization::zero_below_eps;
  opt.norm_eps = 1e-8;
  std::string err;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    const distill::status st = distill::embedding_alignment_forward_backward(
        distill::cuda{stream}, distill::make_view<distill::cuda_space>(static_cast<const float*>(s), N, D),
        distill::make_view<distill::cuda_space>(static_cast<const float*>(t), N, D), {}, {},
        distill::make_view<distill::cuda_space>(loss, 1), distill::make_view<distill::cuda_space>(g, N, D),
        distill::make_view<distill::cuda_space>(ws, static_cast<distill::index_t>(ws_bytes)), opt);
    if (!st.ok() && err.empty()) err = st.to_string();
  });
  if (!err.empty()) state.SkipWithError(err.c_str());
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().gpu_gbps);
  cudaFree(s);
  cudaFree(t);
  cudaFree(g);
  cudaFree(loss);
  cudaFree(ws);
}

const int registered = [] {
  benchmark::RegisterBenchmark("adain_stats/cuda/fwd_bwd/128x256x32x32", adain_stats_fwd_bwd, 128, 256, 32, 32)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("embedding_alignment/cuda/fwd_bwd/65536x512/l1_normalized", embedding_l1_fwd_bwd, 65536, 512)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace
