// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/cast.hpp: one grid-stride kernel, each element read once and written once,
//! converted through float (double -> double stays exact).

#if !defined(__CUDACC__)
#error "distill/cuda/nn_cast.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/nn/cast.hpp"

namespace distill::nn {
namespace cuda_detail {

template <class Acc, class TI, class TO>
__global__ void nn_cast_kernel(matrix_arg<const TI> in, matrix_arg<TO> out, index_t rows, index_t cols) {
  const index_t n = rows * cols;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t r = i / cols, c = i - r * cols;
    out(r, c) = store<TO>(load<Acc>(in(r, c)));
  }
}

}  // namespace cuda_detail

template <class TI, class TO>
[[nodiscard]] status cast(const cuda& ctx, cuda_view<TI, 2> in, cuda_view<TO, 2> out) {
  static_assert(is_supported_float_v<TI> && is_supported_float_v<TO> && !std::is_const_v<TO>, "nn::cast: float types only");
  using namespace cuda_detail;
  using T = std::remove_const_t<TI>;
  using Acc = std::conditional_t<std::is_same_v<T, double> && std::is_same_v<TO, double>, double, float>;
  constexpr const char* fn = "nn::cast";
  DISTILL_TRY(check_device_input(fn, "in", in));
  DISTILL_TRY(check_same_shape(fn, "out", out, "in", in));
  DISTILL_TRY(check_device_input(fn, "out", out));
  cuda_view<const T, 2> ic = in;
  const index_t n = in.extent(0) * in.extent(1);
  nn_cast_kernel<Acc, T, TO><<<elementwise_blocks(n), 256, 0, stream_of(ctx)>>>(arg(ic), arg(out), in.extent(0), in.extent(1));
  return launch_status(fn, stream_of(ctx));
}

}  // namespace distill::nn
