// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/dropout.hpp: one grid-stride element-wise kernel that regenerates the mask
//! from (key, logical index) with the shared counter-based generator. Reads x once, writes y once.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_dropout.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/nn/dropout.hpp"

namespace distill::nn {
namespace cuda_detail {

// mode 0: identity, 1: masked. Works for forward (x -> y) and backward (dy -> dx).
template <class T>
__global__ void nn_dropout_kernel(matrix_arg<const T> x, matrix_arg<T> y, index_t rows, index_t cols, dropout_mask m,
                                  std::uint64_t offset, float scale, bool masked, bool accumulate) {
  const index_t n = rows * cols;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / cols, c = i - r * cols;
    float v = load<float>(x(r, c));
    if (masked) v = m.keep(offset + static_cast<std::uint64_t>(i)) ? v * scale : 0.f;
    y(r, c) = store<T>(accumulate ? load<float>(y(r, c)) + v : v);
  }
}

template <class T>
status dropout_launch(const cuda& ctx, const char* fn, cuda_view<const T, 2> x, cuda_view<T, 2> y, const dropout_params& d,
                      bool accumulate) {
  DISTILL_TRY(check_device_input(fn, "input", x));
  DISTILL_TRY(check_same_shape(fn, "output", y, "input", x));
  DISTILL_TRY(check_device_input(fn, "output", y));
  DISTILL_TRY(nn_detail::check_dropout(fn, d));
  const bool masked = d.training && d.p > 0;
  const index_t n = x.extent(0) * x.extent(1);
  nn_dropout_kernel<T><<<elementwise_blocks(n), 256, 0, stream_of(ctx)>>>(
      arg(x), arg(y), x.extent(0), x.extent(1), dropout_mask::of(d), d.offset, nn_detail::dropout_scale<float>(d.p), masked,
      accumulate);
  return launch_status(fn, stream_of(ctx));
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status dropout_forward(const cuda& ctx, in_view<T, 2, cuda_space> x, cuda_view<T, 2> y, const dropout_params& d) {
  return cuda_detail::dropout_launch<T>(ctx, "nn::dropout_forward", x, y, d, false);
}

template <class T>
[[nodiscard]] status dropout_backward(const cuda& ctx, in_view<T, 2, cuda_space> dy, cuda_view<T, 2> dx, const dropout_params& d,
                                      grad_options opt = {}) {
  return cuda_detail::dropout_launch<T>(ctx, "nn::dropout_backward", dy, dx, d, opt.accumulate_input);
}

}  // namespace distill::nn
