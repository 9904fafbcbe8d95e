// SPDX-License-Identifier: MIT
// Token-wise InfoNCE against a queue on the CPU, the same math as the PyTorch peer `token_nce`
// in bench/peers/compare.py: normalise q and k, logits [pos, q queue^T] / tau, CE with
// label 0, mean over tokens, tau = 0.07, gradient to q. FLOPs counted as the peer does
// (3 * 2 * M * K * D). Also: the two GEMMs alone on a materialised [M, K] matrix (the floor of
// this algorithm on this machine), and the momentum update of a 25M-parameter encoder.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "distill/contrastive/momentum_update.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/core/cpu_gemm.hpp"
#include "support/random.hpp"

namespace {

using distill::index_t;

void token_nce_fwd_bwd(benchmark::State& state, index_t M, index_t D, index_t K) {
  distill_test::rng g(1);
  const auto z = g.normals<float>(static_cast<std::size_t>(M * D));
  const auto y = g.normals<float>(static_cast<std::size_t>(M * D));
  std::vector<float> grad(static_cast<std::size_t>(M * D));
  float loss = 0;
  distill::host_sample_queue<float> q(K, D);
  const distill::cpu ctx{distill_bench::cpu_threads()};
  (void)distill::sample_queue_init_random(ctx, q.queue(), 7);
  distill::token_nce_options opt;  // tau 0.07, mean, stop-gradient teacher
  std::vector<std::byte> ws(static_cast<std::size_t>(distill::token_nce_queue_workspace_size(ctx, M, D, K, opt)));
  distill_bench::run_cpu(state, [&] {
    return distill::token_nce_queue_forward_backward(
        ctx, distill::token_nce_inputs<float>{distill::make_view(z.data(), M, D), distill::make_view(y.data(), M, D)}, q.queue(),
        distill::token_nce_outputs<float>{.loss = distill::make_view(&loss, 1), .grad_student = distill::make_view(grad.data(), M, D)},
        distill::make_view(ws.data(), static_cast<index_t>(ws.size())), opt);
  });
  distill_bench::set_flops(state, 3.0 * 2.0 * static_cast<double>(M) * static_cast<double>(K) * static_cast<double>(D),
                           distill_bench::ceiling().cpu_gflops);
}

// The algorithm's floor: S = Q K^T and G = S K on a materialised [M, K] matrix, nothing else.
void two_gemms_floor(benchmark::State& state, index_t M, index_t D, index_t K) {
  distill_test::rng g(2);
  const auto z = g.normals<float>(static_cast<std::size_t>(M * D));
  const auto keys = g.normals<float>(static_cast<std::size_t>(K * D));
  std::vector<float> s(static_cast<std::size_t>(M * K)), out(static_cast<std::size_t>(M * D));
  const distill::cpu ctx{distill_bench::cpu_threads()};
  for (auto _ : state) {
    auto a = distill::gemm(ctx, distill::transpose::no, distill::transpose::yes, 1.0f, distill::make_view(z.data(), M, D),
                           distill::make_view(keys.data(), K, D), 0.0f, distill::make_view(s.data(), M, K));
    auto b = distill::gemm(ctx, distill::transpose::no, distill::transpose::no, 1.0f,
                           distill::make_view(static_cast<const float*>(s.data()), M, K), distill::make_view(keys.data(), K, D), 0.0f,
                           distill::make_view(out.data(), M, D));
    benchmark::DoNotOptimize(a);
    benchmark::DoNotOptimize(b);
    benchmark::DoNotOptimize(out.data());
  }
  distill_bench::set_flops(state, 2.0 * 2.0 * static_cast<double>(M) * static_cast<double>(K) * static_cast<double>(D),
                           distill_bench::ceiling().cpu_gflops);
}

void momentum_25m(benchmark::State& state) {
  const index_t n = 25'000'000;
  std::vector<float> k(static_cast<std::size_t>(n), 1.0f), q(static_cast<std::size_t>(n), 2.0f);
  const distill::cpu ctx{distill_bench::cpu_threads()};
  distill_bench::run_cpu(state, [&] {
    return distill::momentum_update(ctx, distill::make_view(k.data(), n), distill::make_view(static_cast<const float*>(q.data()), n), 0.999);
  });
  distill_bench::set_bytes(state, 3.0 * static_cast<double>(n) * 4.0, distill_bench::ceiling().cpu_gbps);
}

const int registered = [] {
  benchmark::RegisterBenchmark("token_nce_queue/cpu/fwd_bwd/512x256x8192", token_nce_fwd_bwd, 512, 256, 8192)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("token_nce_queue/cpu/two_gemms_floor/512x256x8192", two_gemms_floor, 512, 256, 8192)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("momentum_update/cpu/ema/25M/f32", momentum_25m)->Unit(benchmark::kMillisecond)->UseRealTime();
  return 0;
}();

}  // namespace
