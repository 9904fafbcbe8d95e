// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Warp and block all-reduce over a merge functor: every kernel's sums, maxima, arg-maxima and
//! merges of online states (log-sum-exp, Welford, the soft-target row state) go through the two
//! functions here. nvcc only.
//!
//!   float s = warp_all_reduce(x, sum_op{});                      // every lane gets the total
//!   lse_state<float> l = block_all_reduce(l, merge_op{}, lse_state<float>{}, smem);
//!   float t = block_sum<256>(x, smem);                           // short-hands below
//!
//! The value may be any trivially copyable type (shuffled 32 bits at a time). `merge(a, b)`
//! returns the merged value. A merge whose result is the same bit for bit whichever operand comes
//! first (sum, max, log-sum-exp) says so with `static constexpr bool symmetric = true`; for any
//! other (Welford, the soft-target state) lane 0's result is broadcast, so every lane holds the
//! same bits. The block variants need blockDim.x a multiple of 32 (or the BlockSize given) and
//! `smem` of one value per warp; every warp merges the per-warp values in the same order, so
//! every thread gets the same bits, and they end with __syncthreads (smem may be reused at once).
//! `identity` is the value that merges as nothing (0 for a sum, the empty state).

#if !defined(__CUDACC__)
#error "distill/cuda/detail/reduce.cuh must be compiled by nvcc"
#endif

#include <cstring>
#include <type_traits>

#include "distill/core/math.hpp"

namespace distill::cuda_detail {

constexpr unsigned full_mask = 0xffffffffu;

/// __shfl_xor_sync / __shfl_sync for any trivially copyable value.
template <class T>
__device__ DISTILL_FORCEINLINE T shfl_xor(const T& v, int lane_mask) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffled values must be trivially copyable");
  if constexpr (std::is_arithmetic_v<T>) {
    return __shfl_xor_sync(full_mask, v, lane_mask);
  } else {
    constexpr int words = static_cast<int>((sizeof(T) + 3) / 4);
    unsigned w[words] = {};
    std::memcpy(w, &v, sizeof(T));
#pragma unroll
    for (int i = 0; i < words; ++i) w[i] = __shfl_xor_sync(full_mask, w[i], lane_mask);
    T r;
    std::memcpy(&r, w, sizeof(T));
    return r;
  }
}
template <class T>
__device__ DISTILL_FORCEINLINE T shfl(const T& v, int src_lane) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffled values must be trivially copyable");
  if constexpr (std::is_arithmetic_v<T>) {
    return __shfl_sync(full_mask, v, src_lane);
  } else {
    constexpr int words = static_cast<int>((sizeof(T) + 3) / 4);
    unsigned w[words] = {};
    std::memcpy(w, &v, sizeof(T));
#pragma unroll
    for (int i = 0; i < words; ++i) w[i] = __shfl_sync(full_mask, w[i], src_lane);
    T r;
    std::memcpy(&r, w, sizeof(T));
    return r;
  }
}

template <class Merge, class = void>
struct merge_is_symmetric : std::false_type {};
template <class Merge>
struct merge_is_symmetric<Merge, std::void_t<decltype(Merge::symmetric)>> : std::bool_constant<Merge::symmetric> {};

// ---- merges -----------------------------------------------------------------------------------
struct sum_op {
  static constexpr bool symmetric = true;
  template <class T>
  __device__ DISTILL_FORCEINLINE T operator()(T a, T b) const {
    return a + b;
  }
};
struct max_op {
  static constexpr bool symmetric = true;
  template <class T>
  __device__ DISTILL_FORCEINLINE T operator()(T a, T b) const {
    return fmax(a, b);
  }
};
/// Element-wise sum of K values reduced together (one exchange for all of them).
template <class T, int K>
struct sums {
  T v[K];
};
struct sums_op {
  static constexpr bool symmetric = true;
  template <class T, int K>
  __device__ DISTILL_FORCEINLINE sums<T, K> operator()(sums<T, K> a, const sums<T, K>& b) const {
#pragma unroll
    for (int i = 0; i < K; ++i) a.v[i] += b.v[i];
    return a;
  }
};
/// a.merge(b) of an online state (lse_state, welford_state, the soft-target row state).
struct state_merge_op {
  template <class S>
  __device__ DISTILL_FORCEINLINE S operator()(S a, const S& b) const {
    a.merge(b);
    return a;
  }
};
/// lse_state's merge picks the larger maximum and adds the other side's rescaled sum: the same
/// bits in either order.
struct lse_merge_op : state_merge_op {
  static constexpr bool symmetric = true;
};

// ---- all-reduce -------------------------------------------------------------------------------
template <class T, class Merge>
__device__ DISTILL_FORCEINLINE T warp_all_reduce(T v, Merge merge) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl_xor(v, o));
  if constexpr (!merge_is_symmetric<Merge>::value) v = shfl(v, 0);
  return v;
}

/// BlockSize 0: the block size is blockDim.x (a multiple of 32).
template <int BlockSize = 0, class T, class Merge>
__device__ DISTILL_FORCEINLINE T block_all_reduce(T v, Merge merge, const T& identity, T* smem) {
  static_assert(BlockSize % 32 == 0 && BlockSize <= 1024, "BlockSize must be a multiple of 32, at most 1024");
  const int warps = BlockSize > 0 ? BlockSize / 32 : static_cast<int>(blockDim.x >> 5);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_all_reduce(v, merge);
  if (BlockSize == 32 || warps == 1) return v;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = warp_all_reduce(lane < warps ? smem[lane] : identity, merge);
  __syncthreads();
  return v;
}

/// Shared scratch for values whose type has default member initialisers (which __shared__
/// variables cannot run): raw storage of N values.
template <class T, int N>
struct shared_array {
  alignas(T) unsigned char raw[N * sizeof(T)];
  __device__ DISTILL_FORCEINLINE T* data() { return reinterpret_cast<T*>(raw); }
};

// ---- short-hands ------------------------------------------------------------------------------
template <class T>
__device__ DISTILL_FORCEINLINE T warp_sum(T x) {
  return warp_all_reduce(x, sum_op{});
}
template <class T>
__device__ DISTILL_FORCEINLINE T warp_max(T x) {
  return warp_all_reduce(x, max_op{});
}
template <class Acc>
__device__ DISTILL_FORCEINLINE lse_state<Acc> warp_merge(lse_state<Acc> st) {
  return warp_all_reduce(st, lse_merge_op{});
}
/// Sum over the block; every thread gets the total. `smem`: BlockSize / 32 values.
template <int BlockSize, class T>
__device__ DISTILL_FORCEINLINE T block_sum(T x, T* smem) {
  return block_all_reduce<BlockSize>(x, sum_op{}, T(0), smem);
}
/// Maximum over the block; every thread gets it.
template <int BlockSize, class T>
__device__ DISTILL_FORCEINLINE T block_max(T x, T* smem) {
  return block_all_reduce<BlockSize>(x, max_op{}, neg_infinity<T>(), smem);
}
/// Log-sum-exp state over the block.
template <int BlockSize, class Acc>
__device__ DISTILL_FORCEINLINE lse_state<Acc> block_merge(lse_state<Acc> st, lse_state<Acc>* smem) {
  return block_all_reduce<BlockSize>(st, lse_merge_op{}, lse_state<Acc>{}, smem);
}
/// K sums over a block of any size (blockDim.x), in one exchange; `smem`: 32 * K floats (one
/// scratch array serves calls with different K).
template <int K>
__device__ DISTILL_FORCEINLINE void block_sum_n(float (&v)[K], float* smem) {
  sums<float, K> s;
#pragma unroll
  for (int i = 0; i < K; ++i) s.v[i] = v[i];
  s = block_all_reduce(s, sums_op{}, sums<float, K>{}, reinterpret_cast<sums<float, K>*>(smem));
#pragma unroll
  for (int i = 0; i < K; ++i) v[i] = s.v[i];
}

}  // namespace distill::cuda_detail
