// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Execution contexts. Every entry point takes one as its first argument; the overload it picks
//! decides the backend, and the views' memory space must match it.
//!
//!   distill::cpu{.threads = 2}          CPU path, up to 2 OpenMP threads (1 without OpenMP)
//!   distill::cuda{.stream = my_stream}  CUDA path (only visible in nvcc-compiled translation
//!                                       units), asynchronous on `stream`
//!
//! Contexts are plain values: no allocation, no global state. CUDA entry points never
//! synchronise the host and never allocate, so a whole step can be captured in a CUDA graph.

#include "distill/core/tensor_view.hpp"

// cudaStream_t is `struct CUstream_st*`; naming the struct keeps this header free of CUDA
// includes while staying type-compatible with the runtime's handle.
struct CUstream_st;

namespace distill {

/// CPU execution: the CPU path runs on at most `threads` threads (OpenMP when the translation
/// unit is compiled with it, one thread otherwise).
struct cpu {
  int threads = 1;
  using memory_space = host_space;
};

/// CUDA execution on `stream` (nullptr = the legacy default stream).
struct cuda {
  CUstream_st* stream = nullptr;
  using memory_space = cuda_space;
};

template <class Context, class Space>
inline constexpr bool can_access_v = std::is_same_v<typename Context::memory_space, Space>;

/// True when this translation unit can run a primitive on memory `Space`: always on the host,
/// on CUDA only when nvcc compiles it (the CUDA engines live in kernels/distill/cuda/*.cuh).
/// Entry points written once for both contexts dispatch to `<family>_detail::backend<Space>`,
/// whose cuda_space specialisation the .cuh defines, and state this with a static_assert.
template <class Space>
inline constexpr bool backend_available_v = std::is_same_v<Space, host_space> || DISTILL_CUDA_COMPILER;

}  // namespace distill
