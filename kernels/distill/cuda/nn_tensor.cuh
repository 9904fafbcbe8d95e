// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Device half of nn/tensor.hpp: `nn::tensor<T, cuda_space>` (cudaMalloc-backed, grow-only) and
//! the CUDA `fill_zero`. Included at the end of distill/nn/tensor.hpp when nvcc compiles.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_tensor.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <utility>
#include <vector>

#include "distill/cuda/runtime.cuh"
#include "distill/nn/tensor.hpp"

namespace distill::nn {

/// Device tensor backed by cudaMalloc. New storage is zeroed (cudaMemset, synchronous on the
/// legacy stream) so a freshly allocated gradient or optimiser state reads as zero.
template <class T>
class tensor<T, cuda_space> : public tensor_detail::tensor_base<tensor<T, cuda_space>, T, cuda_space> {
  using base = tensor_detail::tensor_base<tensor<T, cuda_space>, T, cuda_space>;
  using base::shape_;

 public:
  using value_type = T;
  using memory_space = cuda_space;

  tensor() = default;
  explicit tensor(const tensor_shape& s) { throw_if_error(resize(s)); }
  tensor(tensor&& o) noexcept : base(o), ptr_(std::exchange(o.ptr_, nullptr)), capacity_(std::exchange(o.capacity_, 0)) {}
  tensor& operator=(tensor&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(capacity_, o.capacity_);
    std::swap(shape_, o.shape_);
    return *this;
  }
  tensor(const tensor&) = delete;
  tensor& operator=(const tensor&) = delete;
  ~tensor() {
    if (ptr_) (void)cudaFree(ptr_);
  }

  /// Set the shape; reallocates only when the capacity is too small (contents are then lost and
  /// the new storage is zero). Allocation synchronises the device: size caches before a step
  /// that is captured in a CUDA graph.
  [[nodiscard]] status resize(const tensor_shape& s) {
    constexpr const char* fn = "nn::tensor::resize";
    DISTILL_TRY(base::check_resize(s));
    const index_t n = s.size();
    if (n > capacity_) {
      // cudaFree waits for the device, so kernels still reading the old storage finish first.
      shape_ = {};
      if (ptr_) {
        const cudaError_t e = cudaFree(ptr_);
        ptr_ = nullptr;
        capacity_ = 0;
        if (e != cudaSuccess) return cuda_detail::to_status(e, fn, "cudaFree");
      }
      void* p = nullptr;
      DISTILL_CUDA_TRY(cudaMalloc(&p, static_cast<std::size_t>(n) * sizeof(T)));
      ptr_ = static_cast<T*>(p);
      capacity_ = n;
      DISTILL_CUDA_TRY(cudaMemset(ptr_, 0, static_cast<std::size_t>(n) * sizeof(T)));
      DISTILL_CUDA_TRY(cudaDeviceSynchronize());  // the zeros land before any stream uses the memory
    }
    shape_ = s;
    return {};
  }

  T* data() noexcept { return ptr_; }
  const T* data() const noexcept { return ptr_; }

  /// Upload of exactly size() elements; synchronises the whole device before and after (set-up
  /// and checkpoints only), so it is safe whatever streams the tensor is used on.
  using base::copy_from_host;
  [[nodiscard]] status copy_from_host(const T* host, index_t n) {
    constexpr const char* fn = "nn::tensor::copy_from_host";
    DISTILL_TRY(base::check_upload(n));
    if (n) {
      DISTILL_CUDA_TRY(cudaDeviceSynchronize());
      DISTILL_CUDA_TRY(cudaMemcpy(ptr_, host, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice));
      DISTILL_CUDA_TRY(cudaDeviceSynchronize());
    }
    return {};
  }
  /// Download after synchronising the whole device (work on any stream is finished first);
  /// throws distill::error when the copy fails. Set-up, checkpoints and tests only.
  std::vector<T> to_host() const {
    std::vector<T> h(static_cast<std::size_t>(this->size()));
    if (!h.empty()) {
      cudaError_t e = cudaDeviceSynchronize();
      if (e == cudaSuccess) e = cudaMemcpy(h.data(), ptr_, h.size() * sizeof(T), cudaMemcpyDeviceToHost);
      if (e != cudaSuccess) throw error(cuda_detail::to_status(e, "nn::tensor::to_host", "cudaMemcpy"));
    }
    return h;
  }

 private:
  T* ptr_ = nullptr;
  index_t capacity_ = 0;
};

template <class T>
using device_tensor = tensor<T, cuda_space>;

/// Zero a contiguous device view on the context's stream.
template <class T, int R>
[[nodiscard]] status fill_zero(const cuda& ctx, cuda_view<T, R> v) {
  constexpr const char* fn = "nn::fill_zero";
  if (v.empty()) return {};
  if (!v.contiguous()) return fail(errc::unsupported_layout, fn, "'v' must be contiguous");
  DISTILL_TRY(cuda_detail::check_device_view(fn, "v", v));
  DISTILL_CUDA_TRY(cudaMemsetAsync(v.data(), 0, static_cast<std::size_t>(v.size()) * sizeof(T), cuda_detail::stream_of(ctx)));
  return {};
}

}  // namespace distill::nn
