// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/optimizer.hpp: multi-tensor updates. Up to 24 parameters per launch travel in
//! one kernel-argument struct (pointers, sizes, per-parameter scalars); grid (chunks, tensors),
//! grid-stride within each tensor. Each element reads w, g and its state once and writes w and
//! the state once, with the same scalar update functions as the CPU path.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_optimizer.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/cuda/nn_parameter.cuh"
#include "distill/nn/optimizer.hpp"

namespace distill::nn {
namespace cuda_detail {

inline constexpr int optimizer_chunks = 64;

template <class T, class S>
struct update_list {
  T* w[max_tensors_per_launch];
  const T* g[max_tensors_per_launch];
  T* s1[max_tensors_per_launch];
  T* s2[max_tensors_per_launch];
  index_t n[max_tensors_per_launch];
  S scalars[max_tensors_per_launch];
  int count;
};

template <class T>
__global__ void nn_sgd_multi_tensor_kernel(update_list<T, sgd_step_scalars> list) {
  using Acc = accum_t<T>;
  const int t = blockIdx.y;
  const index_t n = list.n[t];
  T* w = list.w[t];
  const T* g = list.g[t];
  T* buf = list.s1[t];
  const sgd_step_scalars sc = list.scalars[t];
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    Acc wi = w[i], bi = buf ? Acc(buf[i]) : Acc(0);
    sgd_update<Acc>(wi, Acc(g[i]), buf ? &bi : nullptr, sc);
    w[i] = static_cast<T>(wi);
    if (buf) buf[i] = static_cast<T>(bi);
  }
}

template <class T>
__global__ void nn_adam_multi_tensor_kernel(update_list<T, adam_step_scalars> list) {
  using Acc = accum_t<T>;
  const int t = blockIdx.y;
  const index_t n = list.n[t];
  T* w = list.w[t];
  const T* g = list.g[t];
  T* m = list.s1[t];
  T* v = list.s2[t];
  const adam_step_scalars sc = list.scalars[t];
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    Acc wi = w[i], mi = m[i], vi = v[i];
    adam_update<Acc>(wi, Acc(g[i]), mi, vi, sc);
    w[i] = static_cast<T>(wi), m[i] = static_cast<T>(mi), v[i] = static_cast<T>(vi);
  }
}

template <class T, class S, class Slot, class Kernel>
status launch_updates(const cuda& ctx, const char* fn, std::vector<Slot>& slots, const std::vector<S>& scalars, Kernel kernel) {
  static_assert(sizeof(update_list<T, S>) < 4000, "kernel argument struct must stay under the 4 KB parameter limit");
  update_list<T, S> list{};
  list.count = 0;
  auto flush = [&]() -> status {
    if (list.count == 0) return {};
    kernel<<<dim3(optimizer_chunks, static_cast<unsigned>(list.count)), 256, 0, stream_of(ctx)>>>(list);
    list = {};
    list.count = 0;
    return launch_status(fn, stream_of(ctx));
  };
  for (std::size_t i = 0; i < slots.size(); ++i) {
    auto& s = slots[i];
    if (s.param->size() == 0 || !s.param->trainable) continue;
    const int c = list.count;
    list.w[c] = s.param->value.data();
    list.g[c] = s.param->grad.data();
    list.s1[c] = s.s1.size() ? s.s1.data() : nullptr;
    list.s2[c] = s.s2.size() ? s.s2.data() : nullptr;
    list.n[c] = s.param->size();
    list.scalars[c] = scalars[i];
    if (++list.count == max_tensors_per_launch) DISTILL_TRY(flush());
  }
  return flush();
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status sgd_apply(const cuda& ctx, std::vector<typename nn_detail::optimizer_core<T, cuda_space>::slot>& slots,
                               const std::vector<sgd_step_scalars>& scalars) {
  return cuda_detail::launch_updates<T, sgd_step_scalars>(ctx, "nn::sgd::step", slots, scalars, cuda_detail::nn_sgd_multi_tensor_kernel<T>);
}

template <class T>
[[nodiscard]] status adam_apply(const cuda& ctx, std::vector<typename nn_detail::optimizer_core<T, cuda_space>::slot>& slots,
                                const std::vector<adam_step_scalars>& scalars) {
  return cuda_detail::launch_updates<T, adam_step_scalars>(ctx, "nn::adam::step", slots, scalars,
                                                           cuda_detail::nn_adam_multi_tensor_kernel<T>);
}

}  // namespace distill::nn
