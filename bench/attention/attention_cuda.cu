// SPDX-License-Identifier: MIT
// CUDA benchmarks of the attention family, with the same math as the PyTorch peer in
// ../shared/perf/gpu_peers.py:
//   attention_transfer: q = F.normalize(f.pow(2).mean(1).flatten(1)), (q_s - q_t).pow(2).mean(),
//                       gradient to the student features (p = 2, squared_mean, beta = 1, mean)
//   attention_map_mse:  F.mse_loss(softmax(s), softmax(t)), gradient to the student logits
// Bytes: student and teacher read once, gradient written once. No input rotation: every
// iteration moves more than a 50 MB L2 holds (student + teacher + gradient: 384 / 192 MiB for fp32 /
// bf16 attention transfer, 144 / 72 MiB for the fp32 / bf16 64x12x128x128 maps), except the
// 64x1x1x625 pair-attention case (about 0.5 MB in all), which stays L2-resident between
// iterations, so its GB/s is not a DRAM figure. Inputs are filled on the device with hashed
// normals-ish values.
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "bench_common.hpp"
#include "cuda_timer.cuh"
#include "distill/attention/attention_map.hpp"
#include "distill/attention/attention_transfer.hpp"

namespace {

/// Deterministic values in about [-2, 2] (sum of two hashed uniforms, so not flat).
template <class T>
__global__ void fill_kernel(T* x, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    const float u = static_cast<float>(h & 0xffff) / 65536.0f + static_cast<float>(h >> 16) / 65536.0f;
    x[i] = distill::store<T>(2.0f * (u - 1.0f));
  }
}

template <class T>
struct device_array {
  T* ptr = nullptr;
  explicit device_array(std::size_t n, std::uint32_t seed = 0) {
    if (!distill_bench::cuda_device_present()) return;
    cudaMalloc(&ptr, n * sizeof(T));
    if constexpr (!std::is_same_v<T, std::byte>)
      if (seed) fill_kernel<<<1024, 256>>>(ptr, n, seed);
  }
  ~device_array() { cudaFree(ptr); }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
};

template <class T>
void attention_transfer_fwd_bwd(benchmark::State& state, int B, int C, int H, int W,
                                distill::attention_transfer_cuda_algorithm algo) {
  const std::size_t n = static_cast<std::size_t>(B) * C * H * W;
  device_array<T> s(n, 11), t(n, 12), g(n);
  device_array<float> loss(1);
  const std::size_t ws_bytes = distill::attention_transfer_workspace_size(distill::cuda{}, B, H, W);
  device_array<std::byte> ws(ws_bytes);
  distill::attention_transfer_options opt;  // p = 2, squared_mean, beta = 1, mean
  opt.cuda_algorithm = algo;
  std::string error;  // first failure, reported after the timing loop
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    const distill::status st = distill::attention_transfer_forward_backward(
        distill::cuda{stream}, distill::make_view<distill::cuda_space>(static_cast<const T*>(s.ptr), B, C, H, W),
        distill::make_view<distill::cuda_space>(static_cast<const T*>(t.ptr), B, C, H, W),
        distill::make_view<distill::cuda_space>(loss.ptr, 1), distill::make_view<distill::cuda_space>(g.ptr, B, C, H, W),
        distill::make_view<distill::cuda_space>(ws.ptr, static_cast<distill::index_t>(ws_bytes)), opt);
    if (!st.ok() && error.empty()) error = st.to_string();
  });
  if (!error.empty()) state.SkipWithError(error.c_str());
  distill_bench::set_bytes(state, 3.0 * n * sizeof(T), distill_bench::ceiling().gpu_gbps);
}

template <class T>
void attention_map_fwd_bwd(benchmark::State& state, bool kl, int B, int H, int Lq, int Lk, distill::attention_input teacher) {
  const std::size_t n = static_cast<std::size_t>(B) * H * Lq * Lk;
  device_array<T> s(n, 21), t(n, 22), g(n);
  device_array<float> loss(1);
  device_array<std::byte> ws(distill::attention_map_workspace_size(distill::cuda{}));
  distill::attention_map_options opt;  // logits, one_to_one, mean
  opt.teacher_input = teacher;         // probabilities here are not normalised: the timing is the same
  std::string error;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    const distill::cuda ctx{stream};
    auto sv = distill::make_view<distill::cuda_space>(static_cast<const T*>(s.ptr), B, H, Lq, Lk);
    auto tv = distill::make_view<distill::cuda_space>(static_cast<const T*>(t.ptr), B, H, Lq, Lk);
    auto gv = distill::make_view<distill::cuda_space>(g.ptr, B, H, Lq, Lk);
    auto lv = distill::make_view<distill::cuda_space>(loss.ptr, 1);
    auto wv = distill::make_view<distill::cuda_space>(ws.ptr, static_cast<distill::index_t>(distill::attention_map_workspace_size(distill::cuda{})));
    const distill::status st = kl ? distill::attention_map_kl_teacher_student_forward_backward(ctx, sv, tv, {}, lv, gv, wv, opt)
                                  : distill::attention_map_mse_forward_backward(ctx, sv, tv, {}, lv, gv, wv, opt);
    if (!st.ok() && error.empty()) error = st.to_string();
  });
  if (!error.empty()) state.SkipWithError(error.c_str());
  distill_bench::set_bytes(state, 3.0 * n * sizeof(T), distill_bench::ceiling().gpu_gbps);
}

const int registered = [] {
  using algo = distill::attention_transfer_cuda_algorithm;
  using distill::attention_input;
  benchmark::RegisterBenchmark("attention_transfer/cuda/fwd_bwd/128x256x32x32", attention_transfer_fwd_bwd<float>, 128, 256,
                               32, 32, algo::automatic)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_transfer/cuda/fwd_bwd/128x256x32x32/bf16", attention_transfer_fwd_bwd<__nv_bfloat16>,
                               128, 256, 32, 32, algo::automatic)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  // The two decompositions side by side (automatic picks fused_cluster on sm_90).
  benchmark::RegisterBenchmark("attention_transfer_two_pass/cuda/fwd_bwd/128x256x32x32", attention_transfer_fwd_bwd<float>, 128,
                               256, 32, 32, algo::two_pass)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_transfer_fused_cluster/cuda/fwd_bwd/128x256x32x32", attention_transfer_fwd_bwd<float>,
                               128, 256, 32, 32, algo::fused_cluster)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_map_mse/cuda/fwd_bwd/64x12x128x128", attention_map_fwd_bwd<float>, false, 64, 12, 128,
                               128, attention_input::logits)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_map_mse/cuda/fwd_bwd/64x12x128x128/bf16", attention_map_fwd_bwd<__nv_bfloat16>, false,
                               64, 12, 128, 128, attention_input::logits)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_map_kl_teacher_student/cuda/fwd_bwd/64x12x128x128", attention_map_fwd_bwd<float>, true,
                               64, 12, 128, 128, attention_input::logits)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  // The flagship's pair attention: [B, 1, 1, N^2] student logits vs a teacher distribution.
  benchmark::RegisterBenchmark("attention_map_mse/cuda/fwd_bwd/64x1x1x625", attention_map_fwd_bwd<float>, false, 64, 1, 1, 625,
                               attention_input::probabilities)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace
