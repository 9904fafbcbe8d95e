// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/embedding.hpp: gather (one thread per output element) and scatter-add with
//! atomicAdd (one thread per dy element). Out-of-range ids give zero rows / are skipped.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_embedding.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/nn/embedding.hpp"

namespace distill::nn {
namespace cuda_detail {

template <class I, class T>
__global__ void nn_embedding_gather_kernel(const I* ids, index_t sid, matrix_arg<const T> table, index_t V, matrix_arg<T> y,
                                           index_t N, index_t D) {
  const index_t total = N * D;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t n = i / D, d = i - n * D;
    const index_t v = static_cast<index_t>(ids[n * sid]);
    y(n, d) = (v >= 0 && v < V) ? table(v, d) : T(0);
  }
}

template <class I, class T>
__global__ void nn_embedding_scatter_add_kernel(const I* ids, index_t sid, matrix_arg<const T> dy, matrix_arg<T> dtable, index_t V,
                                                index_t N, index_t D) {
  const index_t total = N * D;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t n = i / D, d = i - n * D;
    const index_t v = static_cast<index_t>(ids[n * sid]);
    if (v >= 0 && v < V) atomicAdd(&dtable(v, d), dy(n, d));
  }
}

/// The checks both CUDA embedding passes make: the table (`table` or `dtable`) on the device,
/// ids present on the device, and the rows (`y` or `dy`) (N ids, D) on the device.
template <class Table, class Ids, class Rows>
status check_device_embedding(const char* fn, const char* table_name, const Table& table, const Ids& ids, const char* rows_name,
                              const Rows& rows) {
  DISTILL_TRY(check_device_input(fn, table_name, table));
  DISTILL_TRY(nn_detail::check_input(fn, "ids", ids));
  DISTILL_TRY(check_device_view(fn, "ids", ids));
  DISTILL_TRY(check_shape(fn, rows_name, rows, {ids.extent(0), table.extent(1)}));
  return check_device_input(fn, rows_name, rows);
}

}  // namespace cuda_detail

template <class I, class T>
[[nodiscard]] status embedding_forward(const cuda& ctx, in_view<I, 1, cuda_space> ids, in_view<T, 2, cuda_space> table,
                                       cuda_view<T, 2> y) {
  static_assert(std::is_same_v<I, std::int32_t> || std::is_same_v<I, std::int64_t>, "ids are int32 or int64");
  using namespace cuda_detail;
  constexpr const char* fn = "nn::embedding_forward";
  DISTILL_TRY(check_device_embedding(fn, "table", table, ids, "y", y));
  const index_t N = ids.extent(0), D = table.extent(1);
  nn_embedding_gather_kernel<I, T><<<elementwise_blocks(N * D), 256, 0, stream_of(ctx)>>>(ids.data(), ids.stride(0), arg(table),
                                                                                         table.extent(0), arg(y), N, D);
  return launch_status(fn, stream_of(ctx));
}

template <class I, class T>
[[nodiscard]] status embedding_backward(const cuda& ctx, in_view<I, 1, cuda_space> ids, in_view<T, 2, cuda_space> dy,
                                        cuda_view<T, 2> dtable, grad_options opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "CUDA embedding gradients are float or double");
  using namespace cuda_detail;
  constexpr const char* fn = "nn::embedding_backward";
  DISTILL_TRY(check_device_embedding(fn, "dtable", dtable, ids, "dy", dy));
  const index_t N = ids.extent(0), V = dtable.extent(0), D = dtable.extent(1);
  if (!opt.accumulate_params) {
    if (!dtable.contiguous()) return fail(errc::unsupported_layout, fn, "'dtable' must be contiguous unless accumulating");
    DISTILL_CUDA_TRY(cudaMemsetAsync(dtable.data(), 0, static_cast<std::size_t>(V * D) * sizeof(T), stream_of(ctx)));
  }
  nn_embedding_scatter_add_kernel<I, T><<<elementwise_blocks(N * D), 256, 0, stream_of(ctx)>>>(ids.data(), ids.stride(0), arg(dy),
                                                                                               arg(dtable), V, N, D);
  return launch_status(fn, stream_of(ctx));
}

}  // namespace distill::nn
