// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/linear.hpp: three cuBLAS GEMMs, a bias-add kernel (one thread per output
//! element, grid-stride; reads and writes y once) and the deterministic two-stage column sum of
//! nn_blas.cuh for db (reads dy once).

#if !defined(__CUDACC__)
#error "distill/cuda/nn_linear.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/nn/linear.hpp"

namespace distill::nn {
namespace cuda_detail {

template <class T>
__global__ void nn_bias_add_rows_kernel(T* y, index_t rows, index_t cols, index_t ldy, const T* b, index_t sb) {
  const index_t n = rows * cols;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / cols, c = i - r * cols;
    y[r * ldy + c] = store<T>(load<float>(y[r * ldy + c]) + load<float>(b[c * sb]));
  }
}

template <class T>
status bias_add_rows(const cuda& ctx, const char* fn, cuda_view<T, 2> y, cuda_view<const T, 1> b) {
  const index_t n = y.extent(0) * y.extent(1);
  if (n == 0) return {};
  nn_bias_add_rows_kernel<T><<<elementwise_blocks(n), 256, 0, stream_of(ctx)>>>(y.data(), y.extent(0), y.extent(1),
                                                                                 y.stride(0), b.data(), b.stride(0));
  return launch_status(fn, stream_of(ctx));
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status linear_forward(const cuda_blas& blas, in_view<T, 2, cuda_space> x, in_view<T, 2, cuda_space> w,
                                    in_view<T, 1, cuda_space> b, cuda_view<T, 2> y) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::linear_forward";
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_device_input(fn, "w", w));
  DISTILL_TRY(check_device_input(fn, "y", y));
  DISTILL_TRY(check_extent(fn, "w", w, 1, x.extent(1), "in_features = columns of 'x'"));
  DISTILL_TRY(check_shape(fn, "y", y, {x.extent(0), w.extent(0)}));
  if (!b.empty()) {
    DISTILL_TRY(check_shape(fn, "b", b, {w.extent(0)}));
    DISTILL_TRY(check_device_view(fn, "b", b));
  }
  DISTILL_TRY(gemm(blas, fn, no_trans, trans, T(1), x, w, T(0), y));
  if (!b.empty()) DISTILL_TRY(bias_add_rows<T>(blas, fn, y, b));
  return {};
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status linear_backward(const cuda_blas& blas, in_view<T, 2, cuda_space> x, in_view<T, 2, cuda_space> w,
                                     cuda_view<TD, 2> dy, out_view<T, 2, cuda_space> dx, out_view<T, 2, cuda_space> dw,
                                     out_view<T, 1, cuda_space> db, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::linear_backward";
  DISTILL_TRY(check_device_input(fn, "dy", dy));
  DISTILL_TRY(check_device_input(fn, "w", w));
  const index_t N = dy.extent(0), out = dy.extent(1), in = w.extent(1);
  DISTILL_TRY(check_shape(fn, "w", w, {out, in}));
  if (!dx.empty()) {
    DISTILL_TRY(check_shape(fn, "dx", dx, {N, in}));
    DISTILL_TRY(check_device_input(fn, "dx", dx));
  }
  if (!dw.empty()) {
    DISTILL_TRY(check_device_input(fn, "x", x));
    DISTILL_TRY(check_shape(fn, "x", x, {N, in}));
    DISTILL_TRY(check_shape(fn, "dw", dw, {out, in}));
    DISTILL_TRY(check_device_input(fn, "dw", dw));
  }
  if (!db.empty()) {
    DISTILL_TRY(check_shape(fn, "db", db, {out}));
    DISTILL_TRY(check_device_view(fn, "db", db));
    if (!db.contiguous()) return fail(errc::unsupported_layout, fn, "'db' must be contiguous on CUDA");
  }
  cuda_view<const T, 2> dyc = dy;
  if (!dx.empty()) DISTILL_TRY(gemm(blas, fn, no_trans, no_trans, T(1), dyc, w, opt.accumulate_input ? T(1) : T(0), dx));
  if (!dw.empty()) DISTILL_TRY(gemm(blas, fn, trans, no_trans, T(1), dyc, x, opt.accumulate_params ? T(1) : T(0), dw));
  if (!db.empty())
    DISTILL_TRY(column_sum(blas, fn, read_matrix<T>{dyc.data(), dyc.stride(0)}, N, out, db.data(), opt.accumulate_params));
  return {};
}

}  // namespace distill::nn
