// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Execution contexts. Every entry point takes one as its first argument; the overload it picks
//! decides the backend, and the views' memory space must match it.
//!
//!   distill::cpu{}                      CPU path on all of the machine's threads (OpenMP)
//!   distill::cpu{.threads = 2}          CPU path, up to 2 OpenMP threads (1 without OpenMP)
//!   distill::cpu{.threads = n, .executor = e}   the loops run on an engine's own pool (below)
//!   distill::cuda{.stream = my_stream}  CUDA path (only visible in nvcc-compiled translation
//!                                       units), asynchronous on `stream`
//!
//! Contexts are plain values: no allocation, no global state (a CPU loop only marks its own
//! thread while it runs a chunk, core/parallel.hpp). CUDA entry points never
//! synchronise the host and never allocate, so a whole step can be captured in a CUDA graph.

#include <algorithm>
#include <thread>

#include "distill/core/tensor_view.hpp"

// cudaStream_t is `struct CUstream_st*`; naming the struct keeps this header free of CUDA
// includes while staying type-compatible with the runtime's handle.
struct CUstream_st;

namespace distill {

/// One parallel loop as a non-owning callable: task(chunk) runs the loop's chunk `chunk`. It is
/// two pointers, valid only during the executor call it is passed to.
class cpu_task {
 public:
  template <class F>
  explicit cpu_task(const F& f) noexcept
      : body_(&f), call_([](const void* body, index_t chunk) { (*static_cast<const F*>(body))(chunk); }) {}
  void operator()(index_t chunk) const { call_(body_, chunk); }

 private:
  const void* body_;
  void (*call_)(const void*, index_t);
};

/// An engine's parallel-for. `run(state, chunks, task)` must call `task(i)` exactly once for
/// every i in [0, chunks), on any threads in any order, and return after the last call has
/// returned. distill decides the chunks (core/parallel.hpp), so results never depend on how the
/// executor schedules them. A chunk may call back into distill: loops nested in a chunk run
/// serially on the calling thread, so a pool never waits on itself. Default (run == nullptr):
/// OpenMP, or serial in a translation unit compiled without it.
struct cpu_executor {
  void (*run)(void* state, index_t chunks, cpu_task task) = nullptr;
  void* state = nullptr;  ///< the engine's pool, passed back to `run`
};

/// The machine's hardware threads (at least 1), asked once per process.
inline int hardware_threads() noexcept {
  static const int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return n;
}

/// CPU execution: the CPU path splits its loops into at most `threads` chunks and runs them on
/// `executor` (OpenMP by default; one thread without OpenMP and without an executor).
/// The default is every hardware thread. Results are bitwise reproducible for a fixed `threads`
/// (on any executor), but the deterministic sums are split by it: pin `threads` where results
/// must match bit for bit across machines, and see docs/performance.md for OMP_WAIT_POLICY on
/// machines whose cores are shared.
struct cpu {
  int threads = hardware_threads();
  cpu_executor executor = {};
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
