// SPDX-License-Identifier: MIT
// Token-wise InfoNCE against a queue on the GPU, the same math as the PyTorch peer `token_nce`
// in ../shared/perf/gpu_peers.py: normalise q and k, logits [pos, q queue^T] / tau, CE with
// label 0, mean over tokens, tau = 0.07, gradient to q. FLOPs counted as the peer does
// (3 * 2 * M * K * D). The queue (64 MB at 65536 x 256) is larger than L2, so no rotation is
// needed; the scratch size is reported as `workspace_MB` (no M x K buffer).
#include <benchmark/benchmark.h>

#include <cstddef>
#include <vector>

#include "bench_common.hpp"
#include "cuda_timer.cuh"
#include "distill/contrastive/momentum_update.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "support/random.hpp"

namespace {

using distill::index_t;

template <class T>
struct device_array {
  T* p = nullptr;
  explicit device_array(std::size_t n) {
    if (n && cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  ~device_array() {
    if (p) cudaFree(p);
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;
};

template <class T>
void upload_normals(T* dst, std::size_t n, std::uint64_t salt) {
  distill_test::rng g(salt);
  std::vector<T> h(n);
  for (auto& v : h) v = distill::store<T>(g.normal());
  cudaMemcpy(dst, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
}

template <class T>
void token_nce_fwd_bwd(benchmark::State& state, index_t M, index_t D, index_t K, distill::matmul_precision precision) {
  distill::token_nce_options opt;  // tau 0.07, mean, stop-gradient teacher
  opt.precision = precision;
  const bool have = distill_bench::cuda_device_present();
  device_array<T> z(have ? static_cast<std::size_t>(M * D) : 0), y(have ? static_cast<std::size_t>(M * D) : 0),
      grad(have ? static_cast<std::size_t>(M * D) : 0);
  device_array<float> loss(have ? 1 : 0);
  distill::cuda_sample_queue<T> queue;
  const std::size_t ws_bytes =
      have ? distill::token_nce_queue_workspace_size(distill::cuda{}, M, D, K, opt) : 0;
  device_array<std::byte> ws(ws_bytes);
  if (have) {
    upload_normals(z.p, static_cast<std::size_t>(M * D), 1);
    upload_normals(y.p, static_cast<std::size_t>(M * D), 2);
    (void)distill::cuda_sample_queue<T>::create(K, D, false, queue);
    (void)distill::sample_queue_init_random(distill::cuda{}, queue.queue(), 7);
    cudaDeviceSynchronize();
  }
  distill::status last;
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    const distill::status st = distill::token_nce_queue_forward_backward(
        distill::cuda{s},
        distill::token_nce_inputs<T, T, distill::cuda_space>{distill::make_view<distill::cuda_space>(static_cast<const T*>(z.p), M, D),
                                                             distill::make_view<distill::cuda_space>(static_cast<const T*>(y.p), M, D)},
        queue.queue(),
        distill::token_nce_outputs<T, T, distill::cuda_space>{.loss = distill::make_view<distill::cuda_space>(loss.p, 1),
                                                              .grad_student = distill::make_view<distill::cuda_space>(grad.p, M, D)},
        distill::make_view<distill::cuda_space>(ws.p, static_cast<index_t>(ws_bytes)), opt);
    last = st;
  });
  if (have && !last.ok()) state.SkipWithError(last.to_string().c_str());
  const double flops = 3.0 * 2.0 * static_cast<double>(M) * static_cast<double>(K) * static_cast<double>(D);
  const auto& c = distill_bench::ceiling();
  const double ceil = precision == distill::matmul_precision::tf32   ? c.gpu_tflops_tf32
                      : precision == distill::matmul_precision::bf16 ? c.gpu_tflops_bf16
                                                                  : c.gpu_tflops_f32;
  distill_bench::set_flops(state, flops, ceil * 1e3);
  state.counters["workspace_MB"] = static_cast<double>(ws_bytes) / (1 << 20);
}

void momentum_25m(benchmark::State& state) {
  const index_t n = 25'000'000;
  const bool have = distill_bench::cuda_device_present();
  device_array<float> k(have ? static_cast<std::size_t>(n) : 0), q(have ? static_cast<std::size_t>(n) : 0);
  if (have) {
    cudaMemset(k.p, 0, n * 4);
    cudaMemset(q.p, 0, n * 4);
  }
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    (void)distill::momentum_update(distill::cuda{s}, distill::make_view<distill::cuda_space>(k.p, n),
                                   distill::make_view<distill::cuda_space>(static_cast<const float*>(q.p), n), 0.999);
  });
  distill_bench::set_bytes(state, 3.0 * static_cast<double>(n) * 4.0, distill_bench::ceiling().gpu_gbps);
}

const int registered = [] {
  using P = distill::matmul_precision;
  benchmark::RegisterBenchmark("token_nce_queue/cuda/fwd_bwd/4096x256x65536/tf32", token_nce_fwd_bwd<float>, 4096, 256, 65536, P::tf32)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("token_nce_queue/cuda/fwd_bwd/4096x256x65536/f32", token_nce_fwd_bwd<float>, 4096, 256, 65536,
                               P::fp32)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("token_nce_queue/cuda/fwd_bwd/2048x768x4096/tf32", token_nce_fwd_bwd<float>, 2048, 768, 4096, P::tf32)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("token_nce_queue/cuda/fwd_bwd/4096x256x65536/bf16", token_nce_fwd_bwd<distill::bfloat16>, 4096, 256, 65536,
                               P::bf16)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("momentum_update/cuda/ema/25M/f32", momentum_25m)->UseManualTime()->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace
