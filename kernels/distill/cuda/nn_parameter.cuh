// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/parameter.hpp: zero_grad and clip_grad_norm over many parameters.
//!
//! Multi-tensor launches: up to `max_tensors_per_launch` parameters travel in one kernel
//! argument struct (pointers + sizes, ~400 bytes), grid.y = tensor, grid.x = chunk. The norm is
//! two-level and deterministic: each (tensor, chunk) block writes one float partial of the sum of
//! squares to `scratch`; one block then adds the partials in index order in double, writes the
//! norm and the clip factor to device memory, and a last launch scales the gradients by that
//! factor. Nothing is copied to the host.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_parameter.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include "distill/core/dtype.hpp"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/nn/parameter.hpp"

namespace distill::nn {
namespace cuda_detail {
using namespace ::distill::cuda_detail;

inline constexpr int max_tensors_per_launch = 24;
inline constexpr int grad_norm_chunks = 32;  // blocks per tensor in the partial-sum pass
inline constexpr int grad_norm_block = 256;

template <class T>
struct grad_list {
  T* grad[max_tensors_per_launch];
  index_t n[max_tensors_per_launch];
  int count;
};

// grid (chunks, tensors): block (chunk, t) sums the squares of a grid-strided slice of tensor t.
template <int Block, class T>
__global__ void nn_grad_sumsq_partial_block_kernel(grad_list<T> list, float* partial) {
  __shared__ float smem[Block / 32];
  const int t = blockIdx.y;
  const T* g = list.grad[t];
  const index_t n = list.n[t];
  float s = 0.f;
  for (index_t i = static_cast<index_t>(blockIdx.x) * Block + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * Block) {
    const float v = load<float>(g[i]);
    s += v * v;
  }
  s = block_sum<Block>(s, smem);
  if (threadIdx.x == 0) partial[static_cast<index_t>(t) * gridDim.x + blockIdx.x] = s;
}

// One block: total = sum of `count` partials (fixed order), norm and clip factor.
template <int Block>
__global__ void nn_grad_norm_finalize_kernel(const float* partial, index_t count, double max_norm, float* norm_out,
                                             float* factor_out) {
  __shared__ double smem[Block / 32];
  double s = 0;
  for (index_t i = threadIdx.x; i < count; i += Block) s += static_cast<double>(partial[i]);
  s = block_sum<Block>(s, smem);
  if (threadIdx.x == 0) {
    const double norm = sqrt(s);
    if (norm_out) *norm_out = static_cast<float>(norm);
    const bool clip = max_norm > 0 && isfinite(norm) && norm > max_norm;
    *factor_out = clip ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
  }
}

template <class T>
__global__ void nn_grad_scale_kernel(grad_list<T> list, const float* factor) {
  const float f = *factor;
  if (f == 1.0f) return;
  const int t = blockIdx.y;
  T* g = list.grad[t];
  const index_t n = list.n[t];
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    g[i] = store<T>(load<float>(g[i]) * f);
}

/// Split the trainable parameters' gradients into launch-sized lists.
template <class T>
std::vector<grad_list<T>> make_grad_lists(const parameter_list<T, cuda_space>& params) {
  std::vector<grad_list<T>> lists;
  grad_list<T> cur{};
  cur.count = 0;
  for (auto* p : params) {
    if (!p->trainable || p->grad.size() == 0) continue;
    cur.grad[cur.count] = p->grad.data();
    cur.n[cur.count] = p->grad.size();
    if (++cur.count == max_tensors_per_launch) {
      lists.push_back(cur);
      cur = {};
      cur.count = 0;
    }
  }
  if (cur.count) lists.push_back(cur);
  return lists;
}

}  // namespace cuda_detail

/// Zero the gradient of every trainable parameter (cudaMemsetAsync on the context's stream).
template <class T>
[[nodiscard]] status zero_grad(const cuda& ctx, const parameter_list<T, cuda_space>& params) {
  for (auto* p : params)
    if (p->trainable) DISTILL_TRY(fill_zero(ctx, p->grad.template view<1>()));
  return {};
}

/// CUDA gradient-norm clipping (file comment of nn/parameter.hpp). `scratch` is resized to
/// 32 * (trainable tensors) + 1 floats on first use (allocation: call once before graph capture).
/// `total_norm`, when present, is a one-element device view.
template <class T>
[[nodiscard]] status clip_grad_norm(const cuda& ctx, const parameter_list<T, cuda_space>& params, double max_norm,
                                    device_tensor<float>& scratch, cuda_view<float, 1> total_norm) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::clip_grad_norm";
  if (!(max_norm >= 0) || !std::isfinite(max_norm))
    return fail(errc::invalid_argument, fn, "'max_norm' must be finite and >= 0 (0 = only measure)");
  if (!total_norm.empty()) {
    DISTILL_TRY(check_shape(fn, "total_norm", total_norm, {1}));
    DISTILL_TRY(check_device_view(fn, "total_norm", total_norm));
  }
  const auto lists = make_grad_lists(params);
  index_t tensors = 0;
  for (const auto& l : lists) tensors += l.count;
  DISTILL_TRY(scratch.resize({tensors * grad_norm_chunks + 1}));
  float* partial = scratch.data();
  float* factor = scratch.data() + tensors * grad_norm_chunks;
  const cudaStream_t s = stream_of(ctx);
  index_t offset = 0;
  for (const auto& l : lists) {
    nn_grad_sumsq_partial_block_kernel<grad_norm_block, T>
        <<<dim3(grad_norm_chunks, static_cast<unsigned>(l.count)), grad_norm_block, 0, s>>>(l, partial + offset);
    offset += static_cast<index_t>(l.count) * grad_norm_chunks;
  }
  nn_grad_norm_finalize_kernel<256><<<1, 256, 0, s>>>(partial, offset, max_norm, total_norm.data(), factor);
  if (max_norm > 0)
    for (const auto& l : lists)
      nn_grad_scale_kernel<T><<<dim3(grad_norm_chunks, static_cast<unsigned>(l.count)), 256, 0, s>>>(l, factor);
  return launch_status(fn, s);
}

}  // namespace distill::nn
