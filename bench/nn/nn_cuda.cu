// SPDX-License-Identifier: MIT
// nn building blocks on CUDA: linear, conv2d and attention forward + backward, beside the plain
// cuBLAS GEMMs of the same shapes (gemm_reference) in the same compute mode, so the fraction of
// the cuBLAS rate each layer reaches is measured in the same run. FLOP counts as in nn_cpu.cpp.
// Default mode: strict fp32 (CUBLAS_COMPUTE_32F); the /tf32 twins use TF32 tensor cores.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "bench_cuda.cuh"
#include "distill/nn/attention.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/linear.hpp"

namespace {

using namespace distill;

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

template <class T>
nn::device_tensor<T> filled(const nn::tensor_shape& s, unsigned seed) {
  nn::device_tensor<T> t(s);
  (void)t.copy_from_host(random_floats(static_cast<std::size_t>(s.size()), seed));
  return t;
}

double ceiling_gflops(distill::matmul_precision m) {
  return (m == distill::matmul_precision::fp32 ? distill_bench::ceiling().gpu_tflops_f32 : distill_bench::ceiling().gpu_tflops_tf32) * 1e3;
}

void linear_fwd_bwd(benchmark::State& state, long N, long I, long O, distill::matmul_precision math) {
  if (!distill_bench::cuda_device_present()) return distill_bench::run_cuda(state, [](cudaStream_t) {});
  nn::cuda_blas blas(nullptr, math);
  nn::linear<float, cuda_space> layer("fc", I, O, {.seed = 1});
  auto x = filled<float>({N, I}, 1), dy = filled<float>({N, O}, 2);
  nn::device_tensor<float> y({N, O}), dx({N, I});
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    (void)blas.set_stream(s);
    (void)layer.forward(blas, x.view<2>(), y.view<2>());
    (void)layer.backward(blas, x.view<2>(), dy.view<2>(), dx.view<2>());
  });
  distill_bench::set_flops(state, 3.0 * 2.0 * N * I * O, ceiling_gflops(math));
}

void linear_gemm_reference(benchmark::State& state, long N, long I, long O, distill::matmul_precision math) {
  if (!distill_bench::cuda_device_present()) return distill_bench::run_cuda(state, [](cudaStream_t) {});
  nn::cuda_blas blas(nullptr, math);
  auto x = filled<float>({N, I}, 1), w = filled<float>({O, I}, 3), dy = filled<float>({N, O}, 2);
  nn::device_tensor<float> y({N, O}), dx({N, I}), dw({O, I});
  using namespace nn::cuda_detail;
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    (void)blas.set_stream(s);
    (void)gemm(blas, "ref", no_trans, trans, 1.0f, x.cview<2>(), w.cview<2>(), 0.0f, y.view<2>());
    (void)gemm(blas, "ref", no_trans, no_trans, 1.0f, dy.cview<2>(), w.cview<2>(), 0.0f, dx.view<2>());
    (void)gemm(blas, "ref", trans, no_trans, 1.0f, dy.cview<2>(), x.cview<2>(), 1.0f, dw.view<2>());
  });
  distill_bench::set_flops(state, 3.0 * 2.0 * N * I * O, ceiling_gflops(math));
}

struct conv_shape {
  long B, Ci, H, W, Co, k, s, p;
  long Ho() const { return (H + 2 * p - k) / s + 1; }
  long Wo() const { return (W + 2 * p - k) / s + 1; }
  double flops() const { return 3.0 * 2.0 * B * Co * (Ci * k * k) * (Ho() * Wo()); }
};

void conv2d_fwd_bwd(benchmark::State& state, conv_shape c, distill::matmul_precision math) {
  if (!distill_bench::cuda_device_present()) return distill_bench::run_cuda(state, [](cudaStream_t) {});
  nn::cuda_blas blas(nullptr, math);
  nn::conv2d<float, cuda_space> layer("conv", c.Ci, c.Co, c.k, {c.s, c.s, c.p, c.p}, {.seed = 1});
  auto x = filled<float>({c.B, c.Ci, c.H, c.W}, 1), dy = filled<float>({c.B, c.Co, c.Ho(), c.Wo()}, 2);
  nn::device_tensor<float> y({c.B, c.Co, c.Ho(), c.Wo()}), dx({c.B, c.Ci, c.H, c.W});
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    (void)blas.set_stream(s);
    (void)layer.forward(blas, x.view<4>(), y.view<4>());
    (void)layer.backward(blas, x.view<4>(), dy.view<4>(), dx.view<4>());
  });
  distill_bench::set_flops(state, c.flops(), ceiling_gflops(math));
}

void conv2d_gemm_reference(benchmark::State& state, conv_shape c, distill::matmul_precision math) {
  if (!distill_bench::cuda_device_present()) return distill_bench::run_cuda(state, [](cudaStream_t) {});
  nn::cuda_blas blas(nullptr, math);
  const long K = c.Ci * c.k * c.k, BP = c.B * c.Ho() * c.Wo();
  auto col = filled<float>({K, BP}, 1), w = filled<float>({c.Co, K}, 2), dy = filled<float>({c.Co, BP}, 3);
  nn::device_tensor<float> y({c.Co, BP}), dw({c.Co, K}), dcol({K, BP});
  using namespace nn::cuda_detail;
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    (void)blas.set_stream(s);
    (void)gemm(blas, "ref", no_trans, no_trans, 1.0f, w.cview<2>(), col.cview<2>(), 0.0f, y.view<2>());
    (void)gemm(blas, "ref", no_trans, trans, 1.0f, dy.cview<2>(), col.cview<2>(), 1.0f, dw.view<2>());
    (void)gemm(blas, "ref", trans, no_trans, 1.0f, w.cview<2>(), dy.cview<2>(), 0.0f, dcol.view<2>());
  });
  distill_bench::set_flops(state, c.flops(), ceiling_gflops(math));
}

void attention_fwd_bwd(benchmark::State& state, long B, long L, long D, long H, distill::matmul_precision math) {
  if (!distill_bench::cuda_device_present()) return distill_bench::run_cuda(state, [](cudaStream_t) {});
  nn::cuda_blas blas(nullptr, math);
  nn::multi_head_attention<float, cuda_space> mha("attn", D, H, {.seed = 1});
  auto x = filled<float>({B, L, D}, 1), dy = filled<float>({B, L, D}, 2);
  nn::device_tensor<float> y({B, L, D}), dx({B, L, D});
  const cuda_view<const std::uint8_t, 2> no_mask{};
  distill_bench::run_cuda(state, [&](cudaStream_t s) {
    (void)blas.set_stream(s);
    (void)mha.forward(blas, x.view<3>(), x.view<3>(), no_mask, y.view<3>());
    (void)mha.backward(blas, x.view<3>(), x.view<3>(), no_mask, dy.view<3>(), dx.view<3>(), dx.view<3>());
  });
  const double N = static_cast<double>(B) * L;
  distill_bench::set_flops(state, 4 * 3 * 2.0 * N * D * D + 6 * 2.0 * B * static_cast<double>(L) * L * D, ceiling_gflops(math));
}

const int registered = [] {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    benchmark::RegisterBenchmark(name.c_str(), fn, args...)->UseManualTime()->Unit(benchmark::kMicrosecond);
  };
  const conv_shape rn1{64, 3, 75, 75, 24, 3, 2, 1};
  for (auto m : {distill::matmul_precision::fp32, distill::matmul_precision::tf32}) {
    const std::string sfx = m == distill::matmul_precision::fp32 ? "" : "/tf32";
    reg("nn_linear/cuda/fwd_bwd/4096x256x256" + sfx, linear_fwd_bwd, 4096L, 256L, 256L, m);
    reg("nn_linear/cuda/gemm_reference/4096x256x256" + sfx, linear_gemm_reference, 4096L, 256L, 256L, m);
    reg("nn_conv2d/cuda/fwd_bwd/64x3x75x75_k3s2" + sfx, conv2d_fwd_bwd, rn1, m);
    reg("nn_conv2d/cuda/gemm_reference/64x3x75x75_k3s2" + sfx, conv2d_gemm_reference, rn1, m);
    reg("nn_attention/cuda/fwd_bwd/32x64x128h4" + sfx, attention_fwd_bwd, 32L, 64L, 128L, 4L, m);
  }
  reg("nn_linear/cuda/fwd_bwd/64x256x256", linear_fwd_bwd, 64L, 256L, 256L, distill::matmul_precision::fp32);
  reg("nn_linear/cuda/gemm_reference/64x256x256", linear_gemm_reference, 64L, 256L, 256L, distill::matmul_precision::fp32);
  return 0;
}();

}  // namespace
