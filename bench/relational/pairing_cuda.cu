// SPDX-License-Identifier: MIT
// Relational pairing on CUDA, side by side with the PyTorch peer of ../shared/perf/gpu_peers.py
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

#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "cuda_timer.cuh"
#include "distill/relational/pairing.hpp"

namespace {

struct shape {
  long B, N, D, Q, H;
};
enum class mode { fwd_bwd, fwd_then_bwd };

template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  if (cudaMalloc(&d, h.size() * sizeof(T)) != cudaSuccess) return nullptr;
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

void run(benchmark::State& state, shape s, mode md, double keep, distill::matmul_precision math) {
  using namespace distill;
  const int L = 4;
  if (!distill_bench::cuda_device_present()) {
    state.SkipWithError("no CUDA device");
    for (auto _ : state) {
    }
    return;
  }
  std::mt19937 gen(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::vector<float> o(static_cast<std::size_t>(s.B * s.N * s.D)), q(static_cast<std::size_t>(s.B * s.Q));
  for (auto& x : o) x = nd(gen);
  for (auto& x : q) x = nd(gen);
  std::vector<float> params(static_cast<std::size_t>(relational_mlp_parameter_count(s.D, s.Q, s.H, L)));
  for (auto& x : params) x = nd(gen) * 0.06f;
  std::vector<float> mask(static_cast<std::size_t>(s.B * s.N * s.N));
  long computed = 0;
  for (auto& m : mask) {
    m = keep >= 1.0 ? 1.0f : (ud(gen) < keep ? 1.0f : 0.0f);
    computed += m != 0.0f;
  }
  std::vector<float> dy_h;
  dy_h.assign(static_cast<std::size_t>(s.B * s.H), 1.0f);
  float* d_o = upload(o);
  float* d_q = upload(q);
  float* d_m = upload(mask);
  float* d_p = upload(params);
  float* d_dy = upload(dy_h);
  float *d_y = nullptr, *d_go = nullptr, *d_gp = nullptr;
  std::byte* d_ws = nullptr;
  cudaMalloc(&d_y, static_cast<std::size_t>(s.B * s.H) * sizeof(float));
  cudaMalloc(&d_go, o.size() * sizeof(float));
  cudaMalloc(&d_gp, params.size() * sizeof(float));
  relational_pairing_options opt;
  opt.precision = math;
  const std::size_t ws_bytes = relational_pairing_workspace_size(cuda{}, s.B, s.N, s.D, s.Q, s.H, L, opt);
  cudaMalloc(&d_ws, ws_bytes);
  const auto g = relational_mlp_view<cuda_space>(static_cast<const float*>(d_p), s.D, s.Q, s.H, L);
  relational_pairing_grads<float, cuda_space> grads;
  grads.objects = make_view<cuda_space>(d_go, s.B, s.N, s.D);
  grads.g = relational_mlp_view<cuda_space>(d_gp, s.D, s.Q, s.H, L);
  const auto ov = make_view<cuda_space>(static_cast<const float*>(d_o), s.B, s.N, s.D);
  const auto qv = make_view<cuda_space>(static_cast<const float*>(d_q), s.B, s.Q);
  const auto mv = make_view<cuda_space>(static_cast<const float*>(d_m), s.B, s.N, s.N);
  const auto yv = make_view<cuda_space>(d_y, s.B, s.H);
  const auto dyv = make_view<cuda_space>(static_cast<const float*>(d_dy), s.B, s.H);
  const auto wsv = make_view<cuda_space>(d_ws, static_cast<index_t>(ws_bytes));
  const cuda_view<const std::uint8_t, 2> no_object_mask;
  auto step = [&](const cuda& ctx) -> status {
    if (md == mode::fwd_bwd) return relational_pairing_forward_backward(ctx, ov, qv, mv, no_object_mask, g, dyv, yv, grads, wsv, opt);
    DISTILL_TRY(relational_pairing_forward(ctx, ov, qv, mv, no_object_mask, g, yv, wsv, opt));
    return relational_pairing_backward(ctx, ov, qv, mv, no_object_mask, g, dyv, grads, wsv, opt);
  };
  std::string first_error;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    const status st = step(cuda{stream});
    if (!st.ok() && first_error.empty()) first_error = st.to_string();
  });
  if (!first_error.empty()) state.SkipWithError(first_error.c_str());
  const double per_pass = 2.0 * static_cast<double>(computed) * static_cast<double>((2 * s.D + s.Q) * s.H + 3 * s.H * s.H);
  const auto& c = distill_bench::ceiling();
  const double ceil_tflops = math == distill::matmul_precision::fp32 ? c.gpu_tflops_f32 : math == distill::matmul_precision::tf32 ? c.gpu_tflops_tf32 : c.gpu_tflops_bf16;
  distill_bench::set_flops(state, 3.0 * per_pass, ceil_tflops * 1e3);
  state.counters["pairs"] = static_cast<double>(computed);
  state.counters["workspace_MB"] = static_cast<double>(ws_bytes) / 1e6;
  for (void* p : {static_cast<void*>(d_o), static_cast<void*>(d_q), static_cast<void*>(d_m), static_cast<void*>(d_p),
                  static_cast<void*>(d_dy), static_cast<void*>(d_y), static_cast<void*>(d_go), static_cast<void*>(d_gp),
                  static_cast<void*>(d_ws)})
    cudaFree(p);
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
