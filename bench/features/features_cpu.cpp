// SPDX-License-Identifier: MIT
// CPU benchmarks of the features family, with the same math as the PyTorch peer in
// bench/peers/compare.py:
//   adain_stats: mse(AdaIN(ft; fs), ft) + mse(mu_s, mu_t) + mse(sqrt(v_s), sqrt(v_t)), biased
//                variance, eps 1e-5, gradient to fs (distill::adain_stats_loss_forward_backward)
//   embedding_alignment: ViLD's L1 between L2-normalised region and CLIP embeddings, mean over
//                rows, gradient to the regions (no peer in anchors.md; a small extra)
// Bytes: student and teacher read once, gradient written once.
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.hpp"
#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "support/random.hpp"

namespace {

std::vector<float> normals(std::size_t n, unsigned seed) { return distill_test::rng(seed).normals<float>(n); }

void adain_stats_fwd_bwd(benchmark::State& state, int B, int C, int H, int W) {
  const std::size_t n = static_cast<std::size_t>(B) * C * H * W;
  const auto s = normals(n, 1), t = normals(n, 2);
  std::vector<float> grad(n);
  float loss = 0;
  const distill::cpu ctx{distill_bench::cpu_threads()};
  const distill::adain_stats_loss_options opt;  // the peer's composite: weights 1, biased, eps 1e-5, mean
  const auto sv = distill::make_view(s.data(), B, C, H, W), tv = distill::make_view(t.data(), B, C, H, W);
  const auto gv = distill::make_view(grad.data(), B, C, H, W);
  distill_bench::run_cpu(state, [&] { return distill::adain_stats_loss_forward_backward(ctx, sv, tv, distill::make_view(&loss, 1), gv, {}, opt); });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().cpu_gbps);
}

void embedding_l1_fwd_bwd(benchmark::State& state, int N, int D) {
  const std::size_t n = static_cast<std::size_t>(N) * D;
  const auto s = normals(n, 3), t = normals(n, 4);
  std::vector<float> grad(n);
  float loss = 0;
  const distill::cpu ctx{distill_bench::cpu_threads()};
  distill::embedding_alignment_options opt;  // ViLD L_img
  opt.metric = distill::embedding_metric::l1;
  opt.normalize = distill::l2_normalization::zero_below_eps;
  opt.norm_eps = 1e-8;
  const auto sv = distill::make_view(s.data(), N, D), tv = distill::make_view(t.data(), N, D);
  distill_bench::run_cpu(state, [&] {
    return distill::embedding_alignment_forward_backward(ctx, sv, tv, {}, {}, distill::make_view(&loss, 1), distill::make_view(grad.data(), N, D), {}, opt);
  });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().cpu_gbps);
}

const int registered = [] {
  benchmark::RegisterBenchmark("adain_stats/cpu/fwd_bwd/32x64x32x32", adain_stats_fwd_bwd, 32, 64, 32, 32)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("embedding_alignment/cpu/fwd_bwd/4096x512/l1_normalized", embedding_l1_fwd_bwd, 4096, 512)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  return 0;
}();

}  // namespace
