// SPDX-License-Identifier: MIT
#pragma once
// Owning device memory for tests and benchmarks (the library itself never allocates).
//   device_buffer<float> d(host_vector);       // upload
//   auto v = d.view(N, C);                     // cuda_view<float, 2>
//   std::vector<float> back = d.download();

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "distill/core/tensor_view.hpp"

namespace distill_test {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n) cuda_check(cudaMalloc(&ptr_, n * sizeof(T)), "cudaMalloc");
  }
  explicit device_buffer(const std::vector<T>& h) : device_buffer(h.size()) { upload(h); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr, o.n_ = 0; }
  device_buffer& operator=(device_buffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~device_buffer() {
    if (ptr_) cudaFree(ptr_);
  }
  T* data() const { return ptr_; }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& h) {
    if (h.size() != n_) throw std::runtime_error("device_buffer::upload: size mismatch");
    if (n_) cuda_check(cudaMemcpy(ptr_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    if (n_) cuda_check(cudaMemcpy(h.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return h;
  }
  void fill_bytes(int byte) {
    if (n_) cuda_check(cudaMemset(ptr_, byte, n_ * sizeof(T)), "cudaMemset");
  }
  /// Contiguous cuda_space view over the buffer.
  template <class... I>
  auto view(I... extents) const {
    return distill::make_view<distill::cuda_space>(ptr_, extents...);
  }

 private:
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
};

/// Synchronise the device and throw on any pending error (tests only).
inline void cuda_sync() { cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace distill_test
