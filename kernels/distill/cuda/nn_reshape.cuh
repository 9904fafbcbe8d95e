// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/reshape.hpp: batched transpose through a 32x33 shared-memory tile (reads and
//! writes coalesced, no bank conflicts), grid (S tiles, R tiles, B) with R tiles and B strided
//! when they pass the grid's 65535 limit.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_reshape.cuh must be compiled by nvcc"
#endif

#include <algorithm>

#include "distill/cuda/nn_blas.cuh"
#include "distill/nn/reshape.hpp"

namespace distill::nn {
namespace cuda_detail {

// y[b, s, r] (+)= x[b, r, s]; block (32, 8), tile 32 x 32. The grid covers the S tiles in x;
// y and z stride over the R tiles and the batch, so any R and B launch (gridDim.y and gridDim.z
// are limited to 65535).
template <class T>
__global__ void nn_batched_transpose_tile_kernel(nchw_arg<const T> x, nchw_arg<T> y, index_t B, index_t R, index_t S, bool accumulate) {
  __shared__ T tile[32][33];
  const index_t s0 = static_cast<index_t>(blockIdx.x) * 32;
  for (index_t b = blockIdx.z; b < B; b += gridDim.z)
    for (index_t r0 = static_cast<index_t>(blockIdx.y) * 32; r0 < R; r0 += static_cast<index_t>(gridDim.y) * 32) {
      for (int j = threadIdx.y; j < 32; j += 8) {
        const index_t r = r0 + j, s = s0 + threadIdx.x;
        if (r < R && s < S) tile[j][threadIdx.x] = x(b, r, s);
      }
      __syncthreads();
      for (int j = threadIdx.y; j < 32; j += 8) {
        const index_t s = s0 + j, r = r0 + threadIdx.x;
        if (r < R && s < S) {
          const T v = tile[threadIdx.x][j];
          y(b, s, r) = accumulate ? y(b, s, r) + v : v;
        }
      }
      __syncthreads();  // the tile is refilled next
    }
}

template <class T>
status batched_transpose(const cuda& ctx, const char* fn, cuda_view<const T, 3> x, cuda_view<T, 3> y, bool accumulate) {
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_shape(fn, "y", y, {x.extent(0), x.extent(2), x.extent(1)}));
  DISTILL_TRY(check_device_input(fn, "y", y));
  const index_t B = x.extent(0), R = x.extent(1), S = x.extent(2);
  constexpr index_t max_yz = 65535;
  const index_t s_tiles = ceil_div<index_t>(S, 32);
  if (s_tiles > 2147483647) return fail(errc::invalid_argument, fn, "more than 2^36 columns");
  const dim3 grid(static_cast<unsigned>(s_tiles), static_cast<unsigned>(std::min(ceil_div<index_t>(R, 32), max_yz)),
                  static_cast<unsigned>(std::min(B, max_yz)));
  nn_batched_transpose_tile_kernel<T><<<grid, dim3(32, 8), 0, stream_of(ctx)>>>(arg3(x), arg3(y), B, R, S, accumulate);
  return launch_status(fn, stream_of(ctx));
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status nchw_to_tokens(const cuda& ctx, in_view<T, 3, cuda_space> x, cuda_view<T, 3> y, bool accumulate = false) {
  return cuda_detail::batched_transpose<T>(ctx, "nn::nchw_to_tokens", x, y, accumulate);
}

template <class T>
[[nodiscard]] status tokens_to_nchw(const cuda& ctx, in_view<T, 3, cuda_space> y, cuda_view<T, 3> x, bool accumulate = false) {
  return cuda_detail::batched_transpose<T>(ctx, "nn::tokens_to_nchw", y, x, accumulate);
}

}  // namespace distill::nn
