// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA runtime glue shared by every kernel header: error -> status conversion, pointer-space
//! checks for views, launch-status helpers. nvcc only.
//!
//!   DISTILL_CUDA_TRY(cudaMemsetAsync(...));            // returns status on failure
//!   DISTILL_TRY(cuda_detail::check_device_view(fn, "student", student));
//!   kernel<<<grid, block, 0, ctx.stream>>>(...);
//!   return cuda_detail::launch_status(fn);             // cudaGetLastError -> status
//!
//! Define DISTILL_DEBUG_SYNC to synchronise the stream after each launch (debugging only; it
//! breaks CUDA-graph capture).

#if !defined(__CUDACC__)
#error "distill/cuda/runtime.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <string>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/labels.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"

namespace distill::cuda_detail {

inline cudaStream_t stream_of(const cuda& ctx) noexcept { return static_cast<cudaStream_t>(ctx.stream); }

inline status to_status(cudaError_t e, const char* fn, const char* what) {
  return status(errc::cuda_error, std::string(fn) + ": " + what + " failed: " + cudaGetErrorName(e) + " (" +
                                      cudaGetErrorString(e) + ")");
}

/// Status of the most recent launch from this thread (no synchronisation unless DISTILL_DEBUG_SYNC).
inline status launch_status(const char* fn, cudaStream_t stream = nullptr) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return to_status(e, fn, "kernel launch");
#if defined(DISTILL_DEBUG_SYNC)
  e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return to_status(e, fn, "kernel execution");
#else
  (void)stream;
#endif
  return {};
}

/// A pointer handed over as device memory must be device or managed memory (host memory,
/// registered or not, is refused: kernels would fault or crawl over PCIe).
inline status check_device_pointer(const char* fn, const char* name, const void* p) {
  if (p == nullptr) return {};
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error state of this query
    return fail(errc::wrong_memory_space, fn,
                std::string("'") + name + "' is not a CUDA device pointer (" + cudaGetErrorName(e) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return fail(errc::wrong_memory_space, fn,
                std::string("'") + name + "' points to host memory but was passed as a cuda_space view");
  return {};
}

/// Device-pointer + alignment check for a cuda_space view (absent views pass).
template <class V>
status check_device_view(const char* fn, const char* name, const V& v) {
  static_assert(std::is_same_v<typename V::memory_space, cuda_space>, "check_device_view needs a cuda_space view");
  if (v.empty()) return {};
  DISTILL_TRY(check_aligned(fn, name, v));
  return check_device_pointer(fn, name, v.data());
}

/// The same for labels (their alignment is checked with their shape, core/labels.hpp).
inline status check_device_view(const char* fn, const char* name, const label_view<cuda_space>& v) {
  return v.empty() ? status{} : check_device_pointer(fn, name, v.data());
}

/// The caller's workspace: at least `need` bytes (check_workspace, naming the sizing function),
/// in device memory. Carve it with a workspace_carver (core/workspace.hpp) afterwards.
inline status check_device_workspace(const char* fn, const cuda_view<std::byte, 1>& workspace, std::size_t need,
                                     const char* sizing_function) {
  DISTILL_TRY(check_workspace(fn, workspace, need, sizing_function));
  return need == 0 ? status{} : check_device_view(fn, "workspace", workspace);
}

/// Host-side: is the view's base pointer aligned to `bytes` and the row stride a multiple of
/// `bytes / sizeof(T)`, so 16-byte vector loads are legal on every row?
template <class V>
bool vector_loadable(const V& v, int bytes) noexcept {
  using T = typename V::value_type;
  const index_t per = bytes / static_cast<int>(sizeof(T));
  if (per <= 1) return true;
  if (reinterpret_cast<std::uintptr_t>(v.data()) % static_cast<std::uintptr_t>(bytes) != 0) return false;
  for (int d = 0; d < V::rank - 1; ++d)
    if (v.extent(d) > 1 && v.stride(d) % per != 0) return false;
  return v.inner_contiguous();
}

/// ceil(a / b) for positive integers.
template <class I>
constexpr I ceil_div(I a, I b) noexcept {
  return (a + b - 1) / b;
}

}  // namespace distill::cuda_detail

#define DISTILL_CUDA_TRY_FN(fn, expr)                                                  \
  do {                                                                                 \
    if (cudaError_t distill_e_ = (expr); distill_e_ != cudaSuccess)                    \
      return ::distill::cuda_detail::to_status(distill_e_, fn, #expr);                 \
  } while (0)

/// Inside a function returning status with a `fn` (const char*) in scope.
#define DISTILL_CUDA_TRY(expr) DISTILL_CUDA_TRY_FN(fn, expr)
