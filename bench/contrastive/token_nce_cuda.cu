// SPDX-License-Identifier: MIT
// Token-wise InfoNCE against a queue on the GPU, the same math as the PyTorch peer `token_nce`
// in bench/peers/compare.py: normalise q and k, logits [pos, q queue^T] / tau, CE with
// label 0, mean over tokens, tau = 0.07, gradient to q. FLOPs counted as the peer does
// (3 * 2 * M * K * D). The queue (64 MB at 65536 x 256) is larger than L2, so no rotation is
// needed; the scratch size is reported as `workspace_MB` (no M x K buffer).
#include <benchmark/benchmark.h>

#include <cstddef>
#include <string>

#include "bench_common.hpp"
#include "bench_cuda.cuh"
#include "distill/contrastive/momentum_update.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"

namespace {

using distill::index_t;

template <class T>
void token_nce_fwd_bwd(benchmark::State& state, index_t M, index_t D, index_t K, distill::matmul_precision precision) {
  if (distill_bench::skip_without_device(state)) return;
  distill::token_nce_options opt;  // tau 0.07, mean, stop-gradient teacher
  opt.precision = precision;
  const auto z = distill_bench::device_normals<T>(static_cast<std::size_t>(M * D), 1);
  const auto y = distill_bench::device_normals<T>(static_cast<std::size_t>(M * D), 2);
  distill_test::device_buffer<T> grad(static_cast<std::size_t>(M * D));
  distill_test::device_buffer<float> loss(1);
  distill_test::device_buffer<std::byte> ws(distill::token_nce_queue_workspace_size(distill::cuda{}, M, D, K, opt));
  distill::cuda_sample_queue<T> queue;
  const distill::status made = distill::cuda_sample_queue<T>::create(K, D, false, queue);
  const distill::status filled = made.ok() ? distill::sample_queue_init_random(distill::cuda{}, queue.queue(), 7) : made;
  if (!filled.ok() || cudaDeviceSynchronize() != cudaSuccess) {
    state.SkipWithError(("queue set-up: " + filled.to_string()).c_str());
    return;
  }
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    return distill::token_nce_queue_forward_backward(
        distill::cuda{s}, distill::token_nce_inputs<T, T, distill::cuda_space>{distill::as_const(z.view(M, D)), distill::as_const(y.view(M, D))},
        queue.queue(), distill::token_nce_outputs<T, T, distill::cuda_space>{.loss = loss.view(1), .grad_student = grad.view(M, D)},
        ws.view(ws.size()), opt);
  });
  const double flops = 3.0 * 2.0 * static_cast<double>(M) * static_cast<double>(K) * static_cast<double>(D);
  const auto& c = distill_bench::ceiling();
  const double ceil = precision == distill::matmul_precision::tf32   ? c.gpu_tflops_tf32
                      : precision == distill::matmul_precision::bf16 ? c.gpu_tflops_bf16
                                                                  : c.gpu_tflops_f32;
  distill_bench::set_flops(state, flops, ceil * 1e3);
  state.counters["workspace_MB"] = static_cast<double>(ws.size()) / (1 << 20);
}

void momentum_25m(benchmark::State& state) {
  if (distill_bench::skip_without_device(state)) return;
  const index_t n = 25'000'000;
  distill_test::device_buffer<float> k(static_cast<std::size_t>(n)), q(static_cast<std::size_t>(n));
  k.fill_bytes(0);
  q.fill_bytes(0);
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    return distill::momentum_update(distill::cuda{s}, k.view(n), distill::as_const(q.view(n)), 0.999);
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
