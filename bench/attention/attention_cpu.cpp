// SPDX-License-Identifier: MIT
// CPU benchmarks of the attention family, with the same math as the PyTorch peer in
// bench/peers/compare.py:
//   attention_transfer: q = F.normalize(f.pow(2).mean(1).flatten(1)), (q_s - q_t).pow(2).mean(),
//                       gradient to the student features (p = 2, squared_mean, beta = 1, mean)
//   attention_map_mse:  F.mse_loss(softmax(s), softmax(t)), gradient to the student logits
// Bytes: student and teacher read once, gradient written once.
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.hpp"
#include "distill/attention/attention_map.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "support/random.hpp"

namespace {

std::vector<float> normals(std::size_t n, unsigned seed) { return distill_test::rng(seed).normals<float>(n); }

void attention_transfer_fwd_bwd(benchmark::State& state, int B, int C, int H, int W) {
  const std::size_t n = static_cast<std::size_t>(B) * C * H * W;
  const auto s = normals(n, 1), t = normals(n, 2);
  std::vector<float> grad(n);
  float loss = 0;
  const distill::cpu ctx{distill_bench::cpu_threads()};
  const distill::attention_transfer_options opt;  // p = 2, squared_mean, beta = 1, mean
  auto sv = distill::make_view(s.data(), B, C, H, W), tv = distill::make_view(t.data(), B, C, H, W);
  auto gv = distill::make_view(grad.data(), B, C, H, W);
  distill_bench::run_cpu(state, [&] { return distill::attention_transfer_forward_backward(ctx, sv, tv, distill::make_view(&loss, 1), gv, {}, opt); });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().cpu_gbps);
}

void attention_map_fwd_bwd(benchmark::State& state, bool kl, int B, int H, int Lq, int Lk,
                           distill::attention_input teacher_input) {
  const std::size_t n = static_cast<std::size_t>(B) * H * Lq * Lk;
  const auto s = normals(n, 3);
  auto t = normals(n, 4);
  if (teacher_input == distill::attention_input::probabilities) {  // rows of a normalised 0/1 mask
    for (std::size_t r = 0; r < n / Lk; ++r) {
      float on = 0;
      for (int j = 0; j < Lk; ++j) on += t[r * Lk + j] = t[r * Lk + j] > 1.0f || j == 0 ? 1.0f : 0.0f;
      for (int j = 0; j < Lk; ++j) t[r * Lk + j] /= on;
    }
  }
  std::vector<float> grad(n);
  float loss = 0;
  const distill::cpu ctx{distill_bench::cpu_threads()};
  distill::attention_map_options opt;  // logits, one_to_one, mean
  opt.teacher_input = teacher_input;
  auto sv = distill::make_view(s.data(), B, H, Lq, Lk), tv = distill::make_view(static_cast<const float*>(t.data()), B, H, Lq, Lk);
  auto gv = distill::make_view(grad.data(), B, H, Lq, Lk);
  distill_bench::run_cpu(state, [&] {
    return kl ? distill::attention_map_kl_teacher_student_forward_backward(ctx, sv, tv, {}, distill::make_view(&loss, 1), gv, {}, opt)
              : distill::attention_map_mse_forward_backward(ctx, sv, tv, {}, distill::make_view(&loss, 1), gv, {}, opt);
  });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(float), distill_bench::ceiling().cpu_gbps);
}

const int registered = [] {
  using distill::attention_input;
  benchmark::RegisterBenchmark("attention_transfer/cpu/fwd_bwd/32x64x32x32", attention_transfer_fwd_bwd, 32, 64, 32, 32)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("attention_map_mse/cpu/fwd_bwd/8x12x64x64", attention_map_fwd_bwd, false, 8, 12, 64, 64,
                               attention_input::logits)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("attention_map_kl_teacher_student/cpu/fwd_bwd/8x12x64x64", attention_map_fwd_bwd, true, 8,
                               12, 64, 64, attention_input::logits)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  // The flagship's pair attention: student logits over N^2 = 625 pairs vs a normalised logic mask.
  benchmark::RegisterBenchmark("attention_map_mse/cpu/fwd_bwd/64x1x1x625", attention_map_fwd_bwd, false, 64, 1, 1, 625,
                               attention_input::probabilities)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  return 0;
}();

}  // namespace
