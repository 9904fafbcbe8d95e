// SPDX-License-Identifier: MIT
// Relational pairing on CUDA, side by side with the PyTorch peer of bench/peers/compare.py
// (`RN`: g = 4 layers x 256 with ReLU after each, every ordered pair, forward + backward to the
// objects and every parameter).
//
//   relational_pairing/cuda/fwd_bwd/<B>x<N>x<D>x<H>            TF32 tensor cores, dense mask (headline)
//   relational_pairing/cuda/fwd_bwd/<B>x<N>x<D>x<H>/mask10     TF32, a random mask keeping 10 % of the pairs
//   relational_pairing/cuda/fwd_bwd/<B>x<N>x<D>x<H>/fp32|bf16  strict fp32 / bf16 tensor cores, dense
//   relational_pairing/cuda/fwd_then_bwd/<B>x<N>x<D>x<H>       TF32, forward then backward (recomputation)
// Q = 11 for 64x25x26x256 and Q = 32 for 32x64x64x256, as the peer. The peer multiplies by a
// random 50 % mask but computes every pair; the headline uses an all-ones mask (same work).
// FLOPs as the peer counts them: 3 * 2 * P * ((2D + Q) H + 3 H^2), P = the pairs computed.
// The headline's target (anchors.md: <= 0.6 / <= 1.0 ms on an H100) is below the strict-fp32
// floor, so it is measured with TF32; the fp32 variant is the like-for-like precision.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bench_cuda.cuh"
#include "distill/relational/pairing.hpp"
#include "relational/pairing_problem.hpp"

namespace {

struct shape {
  long B, N, D, Q, H;
};
enum class mode { fwd_bwd, fwd_then_bwd };

void run(benchmark::State& state, shape s, mode md, double keep, distill::matmul_precision math) {
  using namespace distill;
  using distill_test::device_buffer;
  const int L = 4;
  if (distill_bench::skip_without_device(state)) return;
  const distill_bench::pairing_problem in(s.B, s.N, s.D, s.Q, s.H, L, keep, 11);
  const long computed = in.computed;
  const device_buffer<float> d_o(in.objects), d_q(in.questions), d_m(in.mask), d_p(in.params);
  const device_buffer<float> d_dy(std::vector<float>(static_cast<std::size_t>(s.B * s.H), 1.0f));
  const device_buffer<float> d_y(static_cast<std::size_t>(s.B * s.H)), d_go(in.objects.size()), d_gp(in.params.size());
  relational_pairing_options opt;
  opt.precision = math;
  const device_buffer<std::byte> ws(relational_pairing_workspace_size(cuda{}, s.B, s.N, s.D, s.Q, s.H, L, opt));
  const auto g = relational_mlp_view<cuda_space>(static_cast<const float*>(d_p.data()), s.D, s.Q, s.H, L);
  relational_pairing_grads<float, cuda_space> grads;
  grads.objects = d_go.view(s.B, s.N, s.D);
  grads.g = relational_mlp_view<cuda_space>(d_gp.data(), s.D, s.Q, s.H, L);
  const auto ov = as_const(d_o.view(s.B, s.N, s.D)), mv = as_const(d_m.view(s.B, s.N, s.N));
  const auto qv = as_const(d_q.view(s.B, s.Q)), dyv = as_const(d_dy.view(s.B, s.H));
  const auto yv = d_y.view(s.B, s.H);
  const auto wsv = ws.view(ws.size());
  const cuda_view<const std::uint8_t, 2> no_object_mask;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) -> status {
    const cuda ctx{stream};
    if (md == mode::fwd_bwd) return relational_pairing_forward_backward(ctx, ov, qv, mv, no_object_mask, g, dyv, yv, grads, wsv, opt);
    DISTILL_TRY(relational_pairing_forward(ctx, ov, qv, mv, no_object_mask, g, yv, wsv, opt));
    return relational_pairing_backward(ctx, ov, qv, mv, no_object_mask, g, dyv, grads, wsv, opt);
  });
  const double per_pass = 2.0 * static_cast<double>(computed) * static_cast<double>((2 * s.D + s.Q) * s.H + 3 * s.H * s.H);
  const auto& c = distill_bench::ceiling();
  const double ceil_tflops = math == distill::matmul_precision::fp32 ? c.gpu_tflops_f32 : math == distill::matmul_precision::tf32 ? c.gpu_tflops_tf32 : c.gpu_tflops_bf16;
  distill_bench::set_flops(state, 3.0 * per_pass, ceil_tflops * 1e3);
  state.counters["pairs"] = static_cast<double>(computed);
  state.counters["workspace_MB"] = static_cast<double>(ws.size()) / 1e6;
}

const int registered = [] {
  using distill::matmul_precision;
  const shape shapes[] = {{64, 25, 26, 11, 256}, {32, 64, 64, 32, 256}};
  for (const shape& s : shapes) {
    const std::string tag = std::to_string(s.B) + "x" + std::to_string(s.N) + "x" + std::to_string(s.D) + "x" + std::to_string(s.H);
    auto reg = [&](const std::string& name, mode md, double keep, distill::matmul_precision math) {
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { run(st, s, md, keep, math); })
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    };
    reg("relational_pairing/cuda/fwd_bwd/" + tag, mode::fwd_bwd, 1.0, distill::matmul_precision::tf32);
    reg("relational_pairing/cuda/fwd_bwd/" + tag + "/mask10", mode::fwd_bwd, 0.1, distill::matmul_precision::tf32);
    reg("relational_pairing/cuda/fwd_bwd/" + tag + "/fp32", mode::fwd_bwd, 1.0, distill::matmul_precision::fp32);
    reg("relational_pairing/cuda/fwd_bwd/" + tag + "/bf16", mode::fwd_bwd, 1.0, distill::matmul_precision::bf16);
    reg("relational_pairing/cuda/fwd_then_bwd/" + tag, mode::fwd_then_bwd, 1.0, distill::matmul_precision::tf32);
  }
  return 0;
}();

}  // namespace
