// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The communicator (distributed/communicator.hpp) over NCCL, for one process per GPU: device
//! memory, every collective enqueued on the communicator's CUDA stream and returning at once (no
//! host synchronisation, no allocation: capturable in a CUDA graph). Needs <nccl.h> and the CUDA
//! runtime (CMake: the NCCL library of the CUDA toolkit, see docs/distributed.md).
//!
//!   nccl_communicator comm;
//!   DISTILL_TRY(nccl_communicator::create(mpi, device, stream, comm));
//!
//! `create` takes any host communicator (an mpi_communicator) to broadcast NCCL's unique id from
//! rank 0, selects `device` and joins the NCCL clique with the host communicator's rank and size;
//! the destructor destroys the NCCL communicator.
//!
//!   all_reduce        ncclAllReduce in place (ncclSum / ncclMax)
//!   all_reduce_merge  NCCL has no user-defined reductions: ncclAllGather of the P contributions
//!                     into the workspace (P x count x sizeof(T) bytes), then one kernel merges
//!                     them in rank order (so every rank gets the same bits). The kernel is
//!                     compiled only by nvcc: call it from a .cu translation unit.
//!   all_gather        ncclAllGather of bytes;  broadcast: ncclBroadcast of bytes
//!   barrier           a one-element all-reduce followed by cudaStreamSynchronize: the only call
//!                     that waits on the host (it is not on any hot path)

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "distill/core/config.hpp"
#include "distill/distributed/communicator.hpp"

namespace distill {

namespace distributed_detail {

inline status nccl_status(const char* fn, ncclResult_t r) {
  if (r == ncclSuccess) return {};
  return fail(errc::communication_error, fn, std::string("NCCL error: ") + ncclGetErrorString(r));
}
inline status cuda_status(const char* fn, cudaError_t e) {
  if (e == cudaSuccess) return {};
  return fail(errc::cuda_error, fn, std::string("CUDA error: ") + cudaGetErrorString(e));
}
template <class T>
ncclDataType_t nccl_type() noexcept {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return ncclInt32;
  else return ncclInt64;
}

#if DISTILL_CUDA_COMPILER
/// data[i] <- Merge over r of gathered[r * n + i], in rank order; one thread per element.
template <class T, class Merge>
__global__ void all_reduce_merge_rank_order_kernel(const T* gathered, T* data, index_t n, int ranks) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  T acc = gathered[i];
  for (int r = 1; r < ranks; ++r) acc = Merge{}(acc, gathered[index_t(r) * n + i]);
  data[i] = acc;
}
#endif

}  // namespace distributed_detail

class nccl_communicator {
 public:
  using memory_space = cuda_space;
  static constexpr bool merge_needs_workspace = true;

  nccl_communicator() noexcept = default;
  nccl_communicator(const nccl_communicator&) = delete;
  nccl_communicator& operator=(const nccl_communicator&) = delete;
  nccl_communicator(nccl_communicator&& o) noexcept { *this = static_cast<nccl_communicator&&>(o); }
  nccl_communicator& operator=(nccl_communicator&& o) noexcept {
    if (this != &o) {
      release();
      comm_ = o.comm_, stream_ = o.stream_, rank_ = o.rank_, size_ = o.size_;
      o.comm_ = nullptr;
    }
    return *this;
  }
  ~nccl_communicator() { release(); }

  /// Joins the NCCL clique of `bootstrap`'s ranks on `device`, working on `stream`.
  template <class HostComm>
  [[nodiscard]] static status create(const HostComm& bootstrap, int device, cudaStream_t stream, nccl_communicator& out) {
    static_assert(std::is_same_v<typename HostComm::memory_space, host_space>, "bootstrap over a host communicator");
    constexpr const char* fn = "nccl_communicator::create";
    int devices = 0;
    DISTILL_TRY(distributed_detail::cuda_status(fn, cudaGetDeviceCount(&devices)));
    if (device < 0 || device >= devices)
      return fail(errc::invalid_argument, fn,
                  "'device' " + std::to_string(device) + " is not one of the " + std::to_string(devices) + " GPUs");
    ncclUniqueId id{};
    if (bootstrap.rank() == 0) DISTILL_TRY(distributed_detail::nccl_status(fn, ncclGetUniqueId(&id)));
    DISTILL_TRY(bootstrap.broadcast(make_view(reinterpret_cast<unsigned char*>(&id), index_t(sizeof(id))), 0));
    DISTILL_TRY(distributed_detail::cuda_status(fn, cudaSetDevice(device)));
    nccl_communicator c;
    DISTILL_TRY(distributed_detail::nccl_status(fn, ncclCommInitRank(&c.comm_, bootstrap.size(), id, bootstrap.rank())));
    c.stream_ = stream;
    c.rank_ = bootstrap.rank();
    c.size_ = bootstrap.size();
    out = static_cast<nccl_communicator&&>(c);
    return {};
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  cudaStream_t stream() const noexcept { return stream_; }
  ncclComm_t native() const noexcept { return comm_; }

  template <class T>
  status all_reduce(cuda_view<T, 1> data, reduce_op op) const {
    static_assert(is_reducible_v<T>, "all_reduce: float, double, int32 or int64");
    constexpr const char* fn = "nccl_communicator::all_reduce";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_buffer(fn, "data", data));
    if (data.extent(0) == 0) return {};
    return distributed_detail::nccl_status(
        fn, ncclAllReduce(data.data(), data.data(), static_cast<std::size_t>(data.extent(0)),
                          distributed_detail::nccl_type<T>(), op == reduce_op::sum ? ncclSum : ncclMax, comm_, stream_));
  }

  template <class Merge, class T>
  status all_reduce_merge(cuda_view<T, 1> data, cuda_view<std::byte, 1> workspace) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_reduce_merge: trivially copyable elements");
    static_assert(DISTILL_CUDA_COMPILER || sizeof(T) == 0, "nccl_communicator::all_reduce_merge needs a translation unit compiled by nvcc");
    constexpr const char* fn = "nccl_communicator::all_reduce_merge";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_buffer(fn, "data", data));
    const index_t n = data.extent(0);
    if (n == 0) return {};
    DISTILL_TRY(check_workspace(fn, workspace, all_reduce_merge_workspace_size(*this, n, sizeof(T)),
                                "all_reduce_merge_workspace_size"));
#if DISTILL_CUDA_COMPILER
    T* gathered = reinterpret_cast<T*>(workspace.data());
    DISTILL_TRY(distributed_detail::nccl_status(
        fn, ncclAllGather(data.data(), gathered, static_cast<std::size_t>(n) * sizeof(T), ncclUint8, comm_, stream_)));
    constexpr int threads = 256;
    distributed_detail::all_reduce_merge_rank_order_kernel<T, Merge>
        <<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream_>>>(gathered, data.data(), n, size_);
    return distributed_detail::cuda_status(fn, cudaGetLastError());
#else
    return {};
#endif
  }

  template <class T>
  status all_gather(in_view<T, 1, cuda_space> send, cuda_view<T, 1> recv) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather: trivially copyable elements");
    constexpr const char* fn = "nccl_communicator::all_gather";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_gather(fn, send, recv, size_));
    if (send.extent(0) == 0) return {};
    return distributed_detail::nccl_status(
        fn, ncclAllGather(send.data(), recv.data(), static_cast<std::size_t>(send.extent(0)) * sizeof(T), ncclUint8, comm_, stream_));
  }

  template <class T>
  status broadcast(cuda_view<T, 1> data, int root) const {
    static_assert(std::is_trivially_copyable_v<T>, "broadcast: trivially copyable elements");
    constexpr const char* fn = "nccl_communicator::broadcast";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_root(fn, root, size_));
    DISTILL_TRY(distributed_detail::check_buffer(fn, "data", data));
    if (data.extent(0) == 0) return {};
    return distributed_detail::nccl_status(
        fn, ncclBroadcast(data.data(), data.data(), static_cast<std::size_t>(data.extent(0)) * sizeof(T), ncclUint8, root,
                          comm_, stream_));
  }

  /// Every rank's stream has reached this point (a tiny all-reduce, then a host wait).
  status barrier() const {
    constexpr const char* fn = "nccl_communicator::barrier";
    DISTILL_TRY(check_usable(fn));
    // NCCL reduces in place from and into device memory; a zero-byte stand-in would be skipped,
    // so one int in memory the stream can use (allocated once per call: barriers are rare).
    int* flag = nullptr;
    DISTILL_TRY(distributed_detail::cuda_status(fn, cudaMallocAsync(reinterpret_cast<void**>(&flag), sizeof(int), stream_)));
    auto reduce = [&]() -> status {
      DISTILL_TRY(distributed_detail::cuda_status(fn, cudaMemsetAsync(flag, 0, sizeof(int), stream_)));
      return distributed_detail::nccl_status(fn, ncclAllReduce(flag, flag, 1, ncclInt32, ncclSum, comm_, stream_));
    };
    const status reduced = reduce();
    const status freed = distributed_detail::cuda_status(fn, cudaFreeAsync(flag, stream_));
    DISTILL_TRY(reduced);
    DISTILL_TRY(freed);
    return distributed_detail::cuda_status(fn, cudaStreamSynchronize(stream_));
  }

 private:
  status check_usable(const char* fn) const {
    if (comm_ == nullptr)
      return fail(errc::invalid_argument, fn, "the communicator was not created (nccl_communicator::create)");
    return {};
  }
  void release() noexcept {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    comm_ = nullptr;
  }
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int rank_ = 0, size_ = 1;
};

static_assert(communicator<nccl_communicator>);

}  // namespace distill
