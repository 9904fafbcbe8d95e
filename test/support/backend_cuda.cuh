// SPDX-License-Identifier: MIT
#pragma once
// The CUDA backend of support/backend.hpp: device memory for mirrored buffers, and a session
// whose context runs on its own non-blocking stream (which does not wait for the legacy default
// stream, so a primitive that relies on default-stream ordering fails its test).
#include <cuda_runtime.h>

#include "support/backend.hpp"
#include "support/device_buffer.cuh"

namespace distill_test {

template <>
struct space_memory<distill::cuda_space> {
  static constexpr bool separate = true;
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    cuda_check(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cudaMalloc");
    return p;
  }
  static void release(void* p) { (void)cudaFree(p); }
  // Copies are synchronous w.r.t. the whole device (cudaMemcpy from pageable memory may return
  // before its DMA lands, and the session's stream does not wait for the default stream).
  static void to_device(void* dst, const void* src, std::size_t bytes) {
    cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  static void to_host(void* dst, const void* src, std::size_t bytes) {
    cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
};

template <>
struct backend<distill::cuda_space> {
  using space = distill::cuda_space;
  using context = distill::cuda;
  static constexpr const char* name = "cuda";
  struct session {
    cudaStream_t stream = nullptr;
    context ctx;
    explicit session(int /*threads*/ = 2) {
      cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
      ctx = context{stream};
    }
    session(const session&) = delete;
    session& operator=(const session&) = delete;
    ~session() { (void)cudaStreamDestroy(stream); }
    void sync() const { cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); }
    /// f() captured into a CUDA graph on the session's stream, then the graph launched once: a
    /// primitive that allocates or synchronises inside fails the capture.
    template <class F>
    auto captured(F&& f) const {
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
      auto result = f();
      cuda_check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
      if (result.ok()) {
        cuda_check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
        cuda_check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
        sync();
        (void)cudaGraphExecDestroy(exec);
      }
      (void)cudaGraphDestroy(graph);
      return result;
    }
  };
};

}  // namespace distill_test
