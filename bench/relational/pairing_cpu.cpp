// SPDX-License-Identifier: MIT
// Relational pairing on the CPU, side by side with the PyTorch peer of
// bench/peers/compare.py (`RN`): g = 4 layers x 256 with ReLU after each, the sum over all
// N^2 ordered pairs weighted by a mask, forward + backward to the objects and every parameter.
//
//   relational_pairing/cpu/fwd_bwd/<B>x<N>x<D>x<H>          dense all-ones mask (headline)
//   relational_pairing/cpu/fwd_bwd/<B>x<N>x<D>x<H>/mask10   a random mask keeping 10 % of the pairs
//   relational_pairing/cpu/fwd/...                          forward only
//   relational_pairing/cpu/fwd_then_bwd/...                 forward, then backward with recomputation
//                                                           (a training step whose dy depends on y)
//   relational_pairing/cpu/fwd_then_bwd/64x6x10x128/L3      the flagship's state-description RN (g = 3 x 128)
//   relational_pairing/cpu/fwd_then_bwd/64x25x26x256        the flagship's pixel RN step (B = 64)
// The peer multiplies by a random 50 % mask but computes every pair anyway; the headline uses an
// all-ones mask so both sides do the same work. FLOPs are counted as the peer counts them,
// 3 * 2 * P * ((2D + Q) H + (L - 1) H^2) (L = 4 as the peer), with P = the pairs actually computed
// (B N^2 when dense).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench_common.hpp"
#include "distill/relational/pairing.hpp"
#include "relational/pairing_problem.hpp"

namespace {

struct shape {
  long B, N, D, Q, H;
  int L = 4;
};

enum class mode { fwd_bwd, fwd, fwd_then_bwd };

void run(benchmark::State& state, shape s, mode md, double keep) {
  using namespace distill;
  const int L = s.L;
  const distill_bench::pairing_problem in(s.B, s.N, s.D, s.Q, s.H, L, keep, 7);
  const long computed = in.computed;
  // Sized with resize/assign: a one-line declaration of several vectors trips GCC 12's
  // -Wfree-nonheap-object false positive at -O3.
  std::vector<float> y, dy, go, gparams;
  y.resize(static_cast<std::size_t>(s.B * s.H));
  dy.assign(y.size(), 1.0f);
  go.resize(in.objects.size());
  gparams.resize(in.params.size());
  const auto g = relational_mlp_view(in.params.data(), s.D, s.Q, s.H, L);
  relational_pairing_grads<float> grads;
  grads.objects = make_view(go.data(), s.B, s.N, s.D);
  grads.g = relational_mlp_view(gparams.data(), s.D, s.Q, s.H, L);
  const cpu ctx{distill_bench::cpu_threads()};
  std::vector<std::byte> ws(relational_pairing_workspace_size(ctx, s.B, s.N, s.D, s.Q, s.H, L));
  const auto wsv = make_view(ws.data(), static_cast<index_t>(ws.size()));
  const auto ov = make_view(in.objects.data(), s.B, s.N, s.D);
  const auto qv = make_view(in.questions.data(), s.B, s.Q);
  const auto mv = make_view(in.mask.data(), s.B, s.N, s.N);
  const auto yv = make_view(y.data(), s.B, s.H);
  const auto dyv = make_view(static_cast<const float*>(dy.data()), s.B, s.H);
  const host_view<const std::uint8_t, 2> no_object_mask;
  distill_bench::run_cpu(state, [&] {
    if (md == mode::fwd_bwd) return relational_pairing_forward_backward(ctx, ov, qv, mv, no_object_mask, g, dyv, yv, grads, wsv);
    const status forward = relational_pairing_forward(ctx, ov, qv, mv, no_object_mask, g, yv, wsv);
    if (!forward.ok() || md == mode::fwd) return forward;
    return relational_pairing_backward(ctx, ov, qv, mv, no_object_mask, g, dyv, grads, wsv);
  });
  const double per_pass = 2.0 * static_cast<double>(computed) * static_cast<double>((2 * s.D + s.Q) * s.H + (L - 1) * s.H * s.H);
  distill_bench::set_flops(state, (md == mode::fwd ? 1.0 : 3.0) * per_pass, distill_bench::ceiling().cpu_gflops);
  state.counters["pairs"] = static_cast<double>(computed);
}

const int registered = [] {
  const shape shapes[] = {{64, 6, 8, 11, 256, 4}, {16, 25, 26, 11, 256, 4}};
  for (const shape& s : shapes) {
    const std::string tag = std::to_string(s.B) + "x" + std::to_string(s.N) + "x" + std::to_string(s.D) + "x" + std::to_string(s.H);
    auto reg = [&](const std::string& name, mode md, double keep) {
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { run(st, s, md, keep); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    };
    reg("relational_pairing/cpu/fwd_bwd/" + tag, mode::fwd_bwd, 1.0);
    reg("relational_pairing/cpu/fwd_bwd/" + tag + "/mask10", mode::fwd_bwd, 0.1);
    reg("relational_pairing/cpu/fwd/" + tag, mode::fwd, 1.0);
    reg("relational_pairing/cpu/fwd_then_bwd/" + tag, mode::fwd_then_bwd, 1.0);
  }
  auto flagship = [](const std::string& name, shape s) {
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { run(st, s, mode::fwd_then_bwd, 1.0); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  };
  flagship("relational_pairing/cpu/fwd_then_bwd/64x6x10x128/L3", {64, 6, 10, 11, 128, 3});
  flagship("relational_pairing/cpu/fwd_then_bwd/64x25x26x256", {64, 25, 26, 11, 256, 4});
  return 0;
}();

}  // namespace
