// SPDX-License-Identifier: MIT
// CUDA benchmarks of the features family, with the same math as the PyTorch peer in
// bench/peers/compare.py:
//   adain_stats: mse(AdaIN(ft; fs), ft) + mse(mu_s, mu_t) + mse(sqrt(v_s), sqrt(v_t)), biased
//                variance, eps 1e-5, gradient to fs; fp32, 128x256x32x32 (134 MB per tensor, far
//                beyond L2, so no input rotation is needed)
//   embedding_alignment: ViLD's L1 between L2-normalised embeddings, mean over rows
// Bytes: student and teacher read once, gradient written once (the scalar loss is negligible).
#include <benchmark/benchmark.h>

#include <cstddef>

#include "bench_common.hpp"
#include "bench_cuda.cuh"
#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"

namespace {

using distill_test::device_buffer;

void adain_stats_fwd_bwd(benchmark::State& state, int B, int C, int H, int W) {
  if (distill_bench::skip_without_device(state)) return;
  const std::size_t n = static_cast<std::size_t>(B) * C * H * W;
  const auto s = distill_bench::device_normals<float>(n, 1), t = distill_bench::device_normals<float>(n, 2);
  device_buffer<float> g(n), loss(1);
  device_buffer<std::byte> ws(distill::stats_matching_workspace_size(distill::cuda{}, B, C));
  const distill::adain_stats_loss_options opt;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    return distill::adain_stats_loss_forward_backward(distill::cuda{stream}, distill::as_const(s.view(B, C, H, W)),
                                                      distill::as_const(t.view(B, C, H, W)), loss.view(1), g.view(B, C, H, W),
                                                      ws.view(ws.size()), opt);
  });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().gpu_gbps);
}

void embedding_l1_fwd_bwd(benchmark::State& state, int N, int D) {
  if (distill_bench::skip_without_device(state)) return;
  const std::size_t n = static_cast<std::size_t>(N) * D;
  const auto s = distill_bench::device_normals<float>(n, 3), t = distill_bench::device_normals<float>(n, 4);
  device_buffer<float> g(n), loss(1);
  device_buffer<std::byte> ws(distill::embedding_alignment_workspace_size(distill::cuda{}, N));
  distill::embedding_alignment_options opt;
  opt.metric = distill::embedding_metric::l1;
  opt.normalize = distill::l2_normalization::zero_below_eps;
  opt.norm_eps = 1e-8;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    return distill::embedding_alignment_forward_backward(distill::cuda{stream}, distill::as_const(s.view(N, D)), distill::as_const(t.view(N, D)),
                                                         {}, {}, loss.view(1), g.view(N, D), ws.view(ws.size()), opt);
  });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().gpu_gbps);
}

const int registered = [] {
  benchmark::RegisterBenchmark("adain_stats/cuda/fwd_bwd/128x256x32x32", adain_stats_fwd_bwd, 128, 256, 32, 32)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("embedding_alignment/cuda/fwd_bwd/65536x512/l1_normalized", embedding_l1_fwd_bwd, 65536, 512)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace
