// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/layer_norm.hpp. Forward and input gradient: one warp per row (8 rows per
//! 256-thread block), two passes over the row for the statistics (the second from L1/L2) and one
//! to write; reads x once from DRAM, writes y once. Parameter gradients: the deterministic
//! two-stage column sums of nn_blas.cuh.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_layer_norm.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/nn/layer_norm.hpp"

namespace distill::nn {
namespace cuda_detail {

inline constexpr int ln_rows_per_block = 8;

template <class T>
__global__ void nn_layer_norm_forward_warp_per_row_kernel(matrix_arg<const T> x, const T* gamma, const T* beta,
                                                          matrix_arg<T> y, T* mean, T* rstd, index_t rows, index_t D,
                                                          float eps) {
  const int lane = threadIdx.x % 32;
  const index_t r = static_cast<index_t>(blockIdx.x) * ln_rows_per_block + threadIdx.x / 32;
  if (r >= rows) return;  // whole warp leaves together; no block-level barrier below
  float s = 0.f;
  for (index_t d = lane; d < D; d += 32) s += load<float>(x(r, d));
  const float mu = warp_sum(s) / static_cast<float>(D);
  float v = 0.f;
  for (index_t d = lane; d < D; d += 32) {
    const float c = load<float>(x(r, d)) - mu;
    v += c * c;
  }
  const float rs = rsqrtf(warp_sum(v) / static_cast<float>(D) + eps);
  if (lane == 0) {
    mean[r] = store<T>(mu);
    rstd[r] = store<T>(rs);
  }
  for (index_t d = lane; d < D; d += 32) {
    float o = (load<float>(x(r, d)) - mu) * rs;
    if (gamma) o *= load<float>(gamma[d]);
    if (beta) o += load<float>(beta[d]);
    y(r, d) = store<T>(o);
  }
}

template <class T>
__global__ void nn_layer_norm_backward_warp_per_row_kernel(matrix_arg<const T> x, const T* gamma, const T* mean, const T* rstd,
                                                           matrix_arg<const T> dy, matrix_arg<T> dx, index_t rows, index_t D,
                                                           bool accumulate) {
  const int lane = threadIdx.x % 32;
  const index_t r = static_cast<index_t>(blockIdx.x) * ln_rows_per_block + threadIdx.x / 32;
  if (r >= rows) return;
  const float mu = load<float>(mean[r]), rs = load<float>(rstd[r]);
  float sg = 0.f, sgx = 0.f;
  for (index_t d = lane; d < D; d += 32) {
    const float g = load<float>(dy(r, d)) * (gamma ? load<float>(gamma[d]) : 1.f);
    sg += g;
    sgx += g * (load<float>(x(r, d)) - mu) * rs;
  }
  sg = warp_sum(sg) / static_cast<float>(D);
  sgx = warp_sum(sgx) / static_cast<float>(D);
  for (index_t d = lane; d < D; d += 32) {
    const float g = load<float>(dy(r, d)) * (gamma ? load<float>(gamma[d]) : 1.f);
    const float xh = (load<float>(x(r, d)) - mu) * rs;
    const float v = rs * (g - sg - xh * sgx);
    dx(r, d) = store<T>(accumulate ? load<float>(dx(r, d)) + v : v);
  }
}

/// f(r, c) = dy[r, c] * (x[r, c] - mean[r]) * rstd[r]
template <class T>
struct dy_times_xhat_rows {
  matrix_arg<const T> x, dy;
  const T* mean;
  const T* rstd;
  __device__ float operator()(index_t r, index_t c) const {
    return load<float>(dy(r, c)) * (load<float>(x(r, c)) - load<float>(mean[r])) * load<float>(rstd[r]);
  }
};

template <class V>
status check_contiguous_device_vector(const char* fn, const char* name, const V& v) {
  if (v.empty()) return {};
  if (!v.contiguous()) return fail(errc::unsupported_layout, fn, std::string("'") + name + "' must be contiguous on CUDA");
  return check_device_view(fn, name, v);
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status layer_norm_forward(const cuda& ctx, in_view<T, 2, cuda_space> x, in_view<T, 1, cuda_space> gamma,
                                        in_view<T, 1, cuda_space> beta, cuda_view<T, 2> y, out_view<T, 1, cuda_space> mean,
                                        out_view<T, 1, cuda_space> rstd, double eps = 1e-5) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::layer_norm_forward";
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
  DISTILL_TRY(check_device_input(fn, "y", y));
  DISTILL_TRY(check_positive(fn, "eps", eps));
  const index_t N = x.extent(0), D = x.extent(1);
  if (!gamma.empty()) DISTILL_TRY(check_shape(fn, "gamma", gamma, {D}));
  if (!beta.empty()) DISTILL_TRY(check_shape(fn, "beta", beta, {D}));
  DISTILL_TRY(nn_detail::check_layer_norm_stats(fn, mean, rstd, N));
  for (auto [name, v] : {std::pair{"gamma", gamma}, std::pair{"beta", beta}}) DISTILL_TRY(check_contiguous_device_vector(fn, name, v));
  DISTILL_TRY(check_contiguous_device_vector(fn, "mean", mean));
  DISTILL_TRY(check_contiguous_device_vector(fn, "rstd", rstd));
  const unsigned blocks = static_cast<unsigned>(ceil_div<index_t>(N, ln_rows_per_block));
  nn_layer_norm_forward_warp_per_row_kernel<T><<<blocks, 32 * ln_rows_per_block, 0, stream_of(ctx)>>>(
      arg(x), gamma.data(), beta.data(), arg(y), mean.data(), rstd.data(), N, D, static_cast<float>(eps));
  return launch_status(fn, stream_of(ctx));
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status layer_norm_backward(const cuda_blas& blas, in_view<T, 2, cuda_space> x, in_view<T, 1, cuda_space> gamma,
                                         in_view<T, 1, cuda_space> mean, in_view<T, 1, cuda_space> rstd, cuda_view<TD, 2> dy,
                                         out_view<T, 2, cuda_space> dx, out_view<T, 1, cuda_space> dgamma,
                                         out_view<T, 1, cuda_space> dbeta, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::layer_norm_backward";
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
  DISTILL_TRY(check_device_input(fn, "dy", dy));
  const index_t N = x.extent(0), D = x.extent(1);
  if (!gamma.empty()) DISTILL_TRY(check_shape(fn, "gamma", gamma, {D}));
  DISTILL_TRY(nn_detail::check_layer_norm_stats(fn, mean, rstd, N));
  if (!dx.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
    DISTILL_TRY(check_device_input(fn, "dx", dx));
  }
  if (!dgamma.empty()) DISTILL_TRY(check_shape(fn, "dgamma", dgamma, {D}));
  if (!dbeta.empty()) DISTILL_TRY(check_shape(fn, "dbeta", dbeta, {D}));
  DISTILL_TRY(check_contiguous_device_vector(fn, "gamma", gamma));
  DISTILL_TRY(check_contiguous_device_vector(fn, "mean", mean));
  DISTILL_TRY(check_contiguous_device_vector(fn, "rstd", rstd));
  DISTILL_TRY(check_contiguous_device_vector(fn, "dgamma", dgamma));
  DISTILL_TRY(check_contiguous_device_vector(fn, "dbeta", dbeta));
  cuda_view<const T, 2> dyc = dy;
  if (!dx.empty()) {
    const unsigned blocks = static_cast<unsigned>(ceil_div<index_t>(N, ln_rows_per_block));
    nn_layer_norm_backward_warp_per_row_kernel<T><<<blocks, 32 * ln_rows_per_block, 0, stream_of(blas)>>>(
        arg(x), gamma.data(), mean.data(), rstd.data(), arg(dyc), arg(dx), N, D, opt.accumulate_input);
    DISTILL_TRY(launch_status(fn, stream_of(blas)));
  }
  if (!dgamma.empty())
    DISTILL_TRY(column_sum(blas, fn, dy_times_xhat_rows<T>{arg(x), arg(dyc), mean.data(), rstd.data()}, N, D, dgamma.data(),
                           opt.accumulate_params));
  if (!dbeta.empty())
    DISTILL_TRY(column_sum(blas, fn, read_matrix<T>{dyc.data(), arg(dyc).ld}, N, D, dbeta.data(), opt.accumulate_params));
  return {};
}

}  // namespace distill::nn
