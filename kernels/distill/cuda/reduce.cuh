// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Warp- and block-level reductions used by the kernels: sums, maxima and the online
//! log-sum-exp state of core/math.hpp. nvcc only.
//!
//!   float s = warp_sum(x);                         // every lane gets the warp total
//!   float t = block_sum<256>(x, smem);             // every thread gets the block total
//!   lse_state<float> l = block_merge<256>(l, smem);
//! `smem` is a __shared__ array of at least BlockSize / 32 elements of the reduced type; the
//! block variants end with a __syncthreads, so smem may be reused right after.

#if !defined(__CUDACC__)
#error "distill/cuda/reduce.cuh must be compiled by nvcc"
#endif

#include "distill/core/math.hpp"

namespace distill::cuda_detail {

constexpr unsigned full_mask = 0xffffffffu;

template <class T>
__device__ DISTILL_FORCEINLINE T warp_sum(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(full_mask, x, o);
  return x;
}

template <class T>
__device__ DISTILL_FORCEINLINE T warp_max(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(full_mask, x, o));
  return x;
}

template <class Acc>
__device__ DISTILL_FORCEINLINE lse_state<Acc> warp_merge(lse_state<Acc> st) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    lse_state<Acc> other;
    other.m = __shfl_xor_sync(full_mask, st.m, o);
    other.s = __shfl_xor_sync(full_mask, st.s, o);
    st.merge(other);
  }
  return st;
}

/// Sum over the block; every thread gets the total.
template <int BlockSize, class T>
__device__ DISTILL_FORCEINLINE T block_sum(T x, T* smem) {
  static_assert(BlockSize % 32 == 0 && BlockSize <= 1024, "BlockSize must be a multiple of 32, at most 1024");
  constexpr int warps = BlockSize / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  x = warp_sum(x);
  if constexpr (warps == 1) {
    return x;
  } else {
    if (lane == 0) smem[warp] = x;
    __syncthreads();
    T y = lane < warps ? smem[lane] : T(0);
    y = warp_sum(y);
    __syncthreads();
    return y;
  }
}

/// Maximum over the block; every thread gets it.
template <int BlockSize, class T>
__device__ DISTILL_FORCEINLINE T block_max(T x, T* smem) {
  constexpr int warps = BlockSize / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  x = warp_max(x);
  if constexpr (warps == 1) {
    return x;
  } else {
    if (lane == 0) smem[warp] = x;
    __syncthreads();
    T y = smem[lane < warps ? lane : 0];
    y = warp_max(y);
    __syncthreads();
    return y;
  }
}

template <int BlockSize, class Acc>
__device__ DISTILL_FORCEINLINE lse_state<Acc> block_merge(lse_state<Acc> st, lse_state<Acc>* smem) {
  constexpr int warps = BlockSize / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  st = warp_merge(st);
  if constexpr (warps == 1) {
    return st;
  } else {
    if (lane == 0) smem[warp] = st;
    __syncthreads();
    lse_state<Acc> y = lane < warps ? smem[lane] : lse_state<Acc>{};
    y = warp_merge(y);
    __syncthreads();
    return y;
  }
}

}  // namespace distill::cuda_detail
