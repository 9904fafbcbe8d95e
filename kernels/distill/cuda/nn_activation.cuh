// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/activation.hpp: one grid-stride element-wise kernel per pass, calling the
//! shared activation_value / activation_derivative. Reads x (and dy) once, writes y (dx) once.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_activation.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/nn/activation.hpp"

namespace distill::nn {
namespace cuda_detail {

template <class T>
__global__ void nn_activation_forward_kernel(activation a, matrix_arg<const T> x, matrix_arg<T> y, index_t rows, index_t cols) {
  const index_t n = rows * cols;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / cols, c = i - r * cols;
    y(r, c) = store<T>(activation_value<float>(a, load<float>(x(r, c))));
  }
}

template <class T>
__global__ void nn_activation_backward_kernel(activation a, matrix_arg<const T> x, matrix_arg<const T> dy, matrix_arg<T> dx,
                                              index_t rows, index_t cols, bool accumulate) {
  const index_t n = rows * cols;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / cols, c = i - r * cols;
    const float g = load<float>(dy(r, c)) * activation_derivative<float>(a, load<float>(x(r, c)));
    dx(r, c) = store<T>(accumulate ? load<float>(dx(r, c)) + g : g);
  }
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status activation_forward(const cuda& ctx, activation a, in_view<T, 2, cuda_space> x, cuda_view<T, 2> y) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::activation_forward";
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
  DISTILL_TRY(check_device_input(fn, "y", y));
  const index_t n = x.extent(0) * x.extent(1);
  nn_activation_forward_kernel<T><<<elementwise_blocks(n), 256, 0, stream_of(ctx)>>>(a, arg(x), arg(y), x.extent(0), x.extent(1));
  return launch_status(fn, stream_of(ctx));
}

template <class T>
[[nodiscard]] status activation_backward(const cuda& ctx, activation a, in_view<T, 2, cuda_space> x, in_view<T, 2, cuda_space> dy,
                                         cuda_view<T, 2> dx, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::activation_backward";
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
  DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
  DISTILL_TRY(check_device_input(fn, "dy", dy));
  DISTILL_TRY(check_device_input(fn, "dx", dx));
  const index_t n = x.extent(0) * x.extent(1);
  nn_activation_backward_kernel<T><<<elementwise_blocks(n), 256, 0, stream_of(ctx)>>>(a, arg(x), arg(dy), arg(dx), x.extent(0),
                                                                                      x.extent(1), opt.accumulate_input);
  return launch_status(fn, stream_of(ctx));
}

}  // namespace distill::nn
