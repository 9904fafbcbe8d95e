// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of momentum_update (include/distill/contrastive/momentum_update.hpp): a
//! multi-tensor apply. One launch updates up to `max_tensors` buffers; block b finds its buffer
//! by a linear scan of the per-buffer block offsets (at most 64 entries, in the kernel
//! parameters) and updates `elems_per_block` consecutive elements of it. Bytes moved: read key
//! and query, write key, once each. nvcc only.

#if !defined(__CUDACC__)
#error "distill/cuda/momentum_update.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include "distill/contrastive/momentum_update.hpp"
#include "distill/cuda/runtime.cuh"

namespace distill {

namespace cuda_detail {

inline constexpr int momentum_max_tensors = 64;
inline constexpr int momentum_block = 256;
inline constexpr int momentum_elems_per_thread = 4;
inline constexpr index_t momentum_elems_per_block = momentum_block * momentum_elems_per_thread;

template <class T>
struct momentum_batch {
  T* key[momentum_max_tensors];
  const T* query[momentum_max_tensors];
  index_t size[momentum_max_tensors];
  index_t key_stride[momentum_max_tensors];
  index_t query_stride[momentum_max_tensors];
  index_t block_begin[momentum_max_tensors + 1];  // block_begin[t] = first block of tensor t
  int count;
};

template <class T>
__global__ void __launch_bounds__(momentum_block) momentum_update_multi_tensor_kernel(const momentum_batch<T> batch, float m) {
  const index_t b = blockIdx.x;
  int t = 0;
  while (t + 1 < batch.count && batch.block_begin[t + 1] <= b) ++t;
  const index_t base = (b - batch.block_begin[t]) * momentum_elems_per_block;
  const index_t n = batch.size[t];
  T* k = batch.key[t];
  const T* q = batch.query[t];
  const index_t ks = batch.key_stride[t], qs = batch.query_stride[t];
#pragma unroll
  for (int e = 0; e < momentum_elems_per_thread; ++e) {
    const index_t i = base + static_cast<index_t>(e) * momentum_block + threadIdx.x;  // coalesced per e
    if (i < n) k[i * ks] = store<T>(contrastive_detail::momentum_blend(load<float>(k[i * ks]), load<float>(q[i * qs]), m));
  }
}

}  // namespace cuda_detail

/// theta_k <- m theta_k + (1 - m) theta_q on the device (float, float16 or bfloat16 buffers;
/// arithmetic in float). Asynchronous on ctx.stream; ceil(#buffers / 64) launches.
template <class Range>
  requires contrastive_detail::is_momentum_param_v<contrastive_detail::momentum_range_value_t<Range>, cuda_space>
[[nodiscard]] status momentum_update(const cuda& ctx, const Range& param_range, double momentum) {
  using P = contrastive_detail::momentum_range_value_t<Range>;
  using T = std::remove_const_t<typename decltype(P::key)::element_type>;
  const std::span<const P> params(std::data(param_range), std::size(param_range));
  static_assert(!std::is_same_v<T, double>, "momentum_update (CUDA): double parameters are not supported on the device");
  static_assert(is_supported_float_v<T>, "momentum_update (CUDA): parameters must be float, float16 or bfloat16");
  constexpr const char* fn = "momentum_update";
  DISTILL_TRY(contrastive_detail::check_momentum_params(fn, params, momentum));
  for (std::size_t i = 0; i < params.size(); ++i) {
    DISTILL_TRY(cuda_detail::check_device_view(fn, "params[].key", params[i].key));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "params[].query", params[i].query));
  }
  using namespace cuda_detail;
  std::size_t next = 0;
  while (next < params.size()) {
    momentum_batch<T> batch{};
    batch.count = 0;
    index_t blocks = 0;
    for (; next < params.size() && batch.count < momentum_max_tensors; ++next) {
      const auto& p = params[next];
      const index_t n = p.key.extent(0);
      if (n == 0) continue;
      const int t = batch.count++;
      batch.key[t] = p.key.data();
      batch.query[t] = p.query.data();
      batch.size[t] = n;
      batch.key_stride[t] = p.key.stride(0);
      batch.query_stride[t] = p.query.stride(0);
      batch.block_begin[t] = blocks;
      blocks += ceil_div(n, momentum_elems_per_block);
    }
    if (batch.count == 0) break;
    batch.block_begin[batch.count] = blocks;
    if (blocks > 0x7fffffff) return fail(errc::invalid_argument, fn, "a launch would need more than 2^31 blocks");
    momentum_update_multi_tensor_kernel<T>
        <<<static_cast<unsigned>(blocks), momentum_block, 0, stream_of(ctx)>>>(batch, static_cast<float>(momentum));
    DISTILL_TRY(launch_status(fn, stream_of(ctx)));
  }
  return {};
}

/// Single-buffer convenience overload (CUDA).
template <class T, class TQ>
[[nodiscard]] status momentum_update(const cuda& ctx, cuda_view<T, 1> key, cuda_view<TQ, 1> query, double momentum) {
  static_assert(std::is_same_v<std::remove_const_t<TQ>, T>, "momentum_update: key and query must have the same element type");
  const momentum_param<T, cuda_space> p{key, query};
  return momentum_update(ctx, std::span<const momentum_param<T, cuda_space>>(&p, 1), momentum);
}

}  // namespace distill
