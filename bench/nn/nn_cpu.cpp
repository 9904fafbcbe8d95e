// SPDX-License-Identifier: MIT
// nn building blocks on the CPU: linear, conv2d and attention forward + backward, each beside the
// plain distill::gemm calls of the same shapes (gemm_reference), so the fraction of the Eigen
// GEMM rate a layer reaches is measured in the same run.
//
// FLOP counts (what the GFLOPs counters use; element-wise work is not counted):
//   linear  N x I -> O:           3 GEMMs of 2 N I O      (y = x W^T, dx = dy W, dW = dy^T x)
//   conv2d  B x Ci x H x W, Co, k: 3 GEMMs of 2 B Co (Ci k k) (Ho Wo)   (forward, dW, dcol)
//   attention B x L x D, H heads: 4 projections x 3 GEMMs of 2 (B L) D D, plus 6 GEMMs of
//                                2 B L L D in the core (S, O forward; dP, dV, dQ, dK backward)
// The conv2d benchmark uses Co = 24 (the Relation-Network CNN) and padding 1: 75x75 -> 38x38.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "bench_common.hpp"
#include "distill/core/cpu_gemm.hpp"
#include "distill/nn/attention.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/linear.hpp"

namespace {

using namespace distill;

std::vector<float> random_floats(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// ---- linear ----

void linear_fwd_bwd(benchmark::State& state, long N, long I, long O) {
  const cpu ctx{distill_bench::cpu_threads()};
  nn::linear<float> layer("fc", I, O, {.seed = 1});
  nn::host_tensor<float> x({N, I}), y({N, O}), dy({N, O}), dx({N, I});
  (void)x.copy_from_host(random_floats(static_cast<std::size_t>(N * I), 1));
  (void)dy.copy_from_host(random_floats(static_cast<std::size_t>(N * O), 2));
  for (auto _ : state) {
    auto s1 = layer.forward(ctx, x.view<2>(), y.view<2>());
    auto s2 = layer.backward(ctx, x.view<2>(), dy.view<2>(), dx.view<2>());
    benchmark::DoNotOptimize(s1);
    benchmark::DoNotOptimize(s2);
    benchmark::DoNotOptimize(dx.data());
  }
  distill_bench::set_flops(state, 3.0 * 2.0 * N * I * O, distill_bench::ceiling().cpu_gflops);
}

void linear_gemm_reference(benchmark::State& state, long N, long I, long O) {
  const cpu ctx{distill_bench::cpu_threads()};
  const auto x = random_floats(static_cast<std::size_t>(N * I), 1), w = random_floats(static_cast<std::size_t>(O * I), 3),
             dy = random_floats(static_cast<std::size_t>(N * O), 2);
  std::vector<float> y(static_cast<std::size_t>(N * O)), dx(static_cast<std::size_t>(N * I)), dw(static_cast<std::size_t>(O * I));
  const auto xv = make_view(x.data(), N, I), wv = make_view(w.data(), O, I), dyv = make_view(dy.data(), N, O);
  for (auto _ : state) {
    auto s1 = gemm(ctx, transpose::no, transpose::yes, 1.0f, xv, wv, 0.0f, make_view(y.data(), N, O));
    auto s2 = gemm(ctx, transpose::no, transpose::no, 1.0f, dyv, wv, 0.0f, make_view(dx.data(), N, I));
    auto s3 = gemm(ctx, transpose::yes, transpose::no, 1.0f, dyv, xv, 1.0f, make_view(dw.data(), O, I));
    benchmark::DoNotOptimize(s1);
    benchmark::DoNotOptimize(s2);
    benchmark::DoNotOptimize(s3);
    benchmark::DoNotOptimize(dw.data());
  }
  distill_bench::set_flops(state, 3.0 * 2.0 * N * I * O, distill_bench::ceiling().cpu_gflops);
}

// ---- conv2d ----

struct conv_shape {
  long B, Ci, H, W, Co, k, s, p;
  long Ho() const { return (H + 2 * p - k) / s + 1; }
  long Wo() const { return (W + 2 * p - k) / s + 1; }
  double flops() const { return 3.0 * 2.0 * B * Co * (Ci * k * k) * (Ho() * Wo()); }
};

void conv2d_fwd_bwd(benchmark::State& state, conv_shape c) {
  const cpu ctx{distill_bench::cpu_threads()};
  nn::conv2d<float> layer("conv", c.Ci, c.Co, c.k, {c.s, c.s, c.p, c.p}, {.seed = 1});
  nn::host_tensor<float> x({c.B, c.Ci, c.H, c.W}), y({c.B, c.Co, c.Ho(), c.Wo()}), dy({c.B, c.Co, c.Ho(), c.Wo()}), dx({c.B, c.Ci, c.H, c.W});
  (void)x.copy_from_host(random_floats(static_cast<std::size_t>(x.size()), 1));
  (void)dy.copy_from_host(random_floats(static_cast<std::size_t>(dy.size()), 2));
  for (auto _ : state) {
    auto s1 = layer.forward(ctx, x.view<4>(), y.view<4>());
    auto s2 = layer.backward(ctx, x.view<4>(), dy.view<4>(), dx.view<4>());
    benchmark::DoNotOptimize(s1);
    benchmark::DoNotOptimize(s2);
    benchmark::DoNotOptimize(dx.data());
  }
  distill_bench::set_flops(state, c.flops(), distill_bench::ceiling().cpu_gflops);
}

// The same three products as one whole-batch GEMM each, on an im2col matrix materialised
// outside the timed loop: col (K, B P), W (Co, K), dY (Co, B P).
void conv2d_gemm_reference(benchmark::State& state, conv_shape c) {
  const cpu ctx{distill_bench::cpu_threads()};
  const long K = c.Ci * c.k * c.k, BP = c.B * c.Ho() * c.Wo();
  const auto col = random_floats(static_cast<std::size_t>(K * BP), 1), w = random_floats(static_cast<std::size_t>(c.Co * K), 2),
             dy = random_floats(static_cast<std::size_t>(c.Co * BP), 3);
  std::vector<float> y(static_cast<std::size_t>(c.Co * BP)), dw(static_cast<std::size_t>(c.Co * K)), dcol(static_cast<std::size_t>(K * BP));
  const auto colv = make_view(col.data(), K, BP), wv = make_view(w.data(), c.Co, K), dyv = make_view(dy.data(), c.Co, BP);
  for (auto _ : state) {
    auto s1 = gemm(ctx, transpose::no, transpose::no, 1.0f, wv, colv, 0.0f, make_view(y.data(), c.Co, BP));
    auto s2 = gemm(ctx, transpose::no, transpose::yes, 1.0f, dyv, colv, 1.0f, make_view(dw.data(), c.Co, K));
    auto s3 = gemm(ctx, transpose::yes, transpose::no, 1.0f, wv, dyv, 0.0f, make_view(dcol.data(), K, BP));
    benchmark::DoNotOptimize(s1);
    benchmark::DoNotOptimize(s2);
    benchmark::DoNotOptimize(s3);
    benchmark::DoNotOptimize(dcol.data());
  }
  distill_bench::set_flops(state, c.flops(), distill_bench::ceiling().cpu_gflops);
}

// ---- attention ----

double attention_flops(long B, long L, long D) {
  const double N = static_cast<double>(B) * L;
  return 4 * 3 * 2.0 * N * D * D + 6 * 2.0 * B * static_cast<double>(L) * L * D;
}

void attention_fwd_bwd(benchmark::State& state, long B, long L, long D, long H) {
  const cpu ctx{distill_bench::cpu_threads()};
  nn::multi_head_attention<float> mha("attn", D, H, {.seed = 1});
  nn::host_tensor<float> x({B, L, D}), y({B, L, D}), dy({B, L, D}), dx({B, L, D});
  (void)x.copy_from_host(random_floats(static_cast<std::size_t>(x.size()), 1));
  (void)dy.copy_from_host(random_floats(static_cast<std::size_t>(dy.size()), 2));
  const host_view<const std::uint8_t, 2> no_mask{};
  for (auto _ : state) {
    auto s1 = mha.forward(ctx, x.view<3>(), x.view<3>(), no_mask, y.view<3>());
    auto s2 = mha.backward(ctx, x.view<3>(), x.view<3>(), no_mask, dy.view<3>(), dx.view<3>(), dx.view<3>());
    benchmark::DoNotOptimize(s1);
    benchmark::DoNotOptimize(s2);
    benchmark::DoNotOptimize(dx.data());
  }
  distill_bench::set_flops(state, attention_flops(B, L, D), distill_bench::ceiling().cpu_gflops);
}

const int registered = [] {
  auto reg = [](const char* name, auto fn, auto... args) {
    benchmark::RegisterBenchmark(name, fn, args...)->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  reg("nn_linear/cpu/fwd_bwd/4096x256x256", linear_fwd_bwd, 4096L, 256L, 256L);
  reg("nn_linear/cpu/gemm_reference/4096x256x256", linear_gemm_reference, 4096L, 256L, 256L);
  reg("nn_linear/cpu/fwd_bwd/64x256x256", linear_fwd_bwd, 64L, 256L, 256L);
  reg("nn_linear/cpu/gemm_reference/64x256x256", linear_gemm_reference, 64L, 256L, 256L);
  const conv_shape rn1{64, 3, 75, 75, 24, 3, 2, 1};
  reg("nn_conv2d/cpu/fwd_bwd/64x3x75x75_k3s2", conv2d_fwd_bwd, rn1);
  reg("nn_conv2d/cpu/gemm_reference/64x3x75x75_k3s2", conv2d_gemm_reference, rn1);
  const conv_shape rn2{64, 24, 38, 38, 24, 3, 2, 1};
  reg("nn_conv2d/cpu/fwd_bwd/64x24x38x38_k3s2", conv2d_fwd_bwd, rn2);
  reg("nn_conv2d/cpu/gemm_reference/64x24x38x38_k3s2", conv2d_gemm_reference, rn2);
  reg("nn_attention/cpu/fwd_bwd/32x64x128h4", attention_fwd_bwd, 32L, 64L, 128L, 4L);
  return 0;
}();

}  // namespace
