// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Communicators: the few collectives distill's distributed pieces need, over an engine people
//! already run (MPI on CPUs: mpi_communicator.hpp; NCCL on GPUs: nccl_communicator.hpp), never
//! over sockets of distill's own. A communicator is any type with these members (the
//! `communicator` concept checks them), `Space` being its memory space (host_space for MPI and
//! the single process, cuda_space for NCCL, where every call is asynchronous on its stream):
//!
//!   int rank() const, int size() const            this process's index in [0, P) and P
//!   status all_reduce(tensor_view<T, 1, Space> data, reduce_op op) const
//!       in place: data <- element-wise sum or max over the ranks (T: float, double, int32, int64)
//!   status all_reduce_merge<Merge>(tensor_view<T, 1, Space> data, workspace) const
//!       in place: data[i] <- m(m(data_0[i], data_1[i]), ...) in rank order, for a stateless,
//!       associative `Merge` with `T Merge::operator()(const T& lower, const T& higher)` and any
//!       trivially copyable T (a log-sum-exp state, a struct of row statistics); workspace:
//!       all_reduce_merge_workspace_size(comm, count, sizeof(T)) bytes (0 except on NCCL, which
//!       has no user-defined reductions and all-gathers, then merges in a kernel)
//!   status all_gather(tensor_view<const T, 1, Space> send, tensor_view<T, 1, Space> recv) const
//!       recv [P * n] <- the n elements of every rank's `send`, rank r's at [r n, (r + 1) n)
//!   status broadcast(tensor_view<T, 1, Space> data, int root) const
//!       data <- root's data (any trivially copyable T)
//!   status barrier() const
//!
//! Every collective must be called by every rank of the communicator in the same order with the
//! same counts (MPI's and NCCL's rule); views must be contiguous. Results are the same bits on
//! every rank: sums and maxima are computed by the engine, merges in rank order.
//!
//! This header has the interface, the single-process communicator (every collective is the
//! identity; what a program uses when it runs alone) and counting_communicator, which wraps
//! another and counts collectives and bytes (for tests that a step makes exactly the collectives
//! it documents, and for the communication volume in docs/distributed.md).

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

/// Element-wise reduction of all_reduce.
enum class reduce_op { sum, max };

constexpr const char* to_string(reduce_op op) noexcept { return op == reduce_op::sum ? "sum" : "max"; }

/// Element types all_reduce takes (sum and max are the engine's own).
template <class T>
inline constexpr bool is_reducible_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                       std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t>;

template <class C>
concept communicator = requires(const C& c, tensor_view<float, 1, typename C::memory_space> v,
                                tensor_view<const float, 1, typename C::memory_space> cv) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  { c.all_reduce(v, reduce_op::sum) } -> std::same_as<status>;
  { c.all_gather(cv, v) } -> std::same_as<status>;
  { c.broadcast(v, 0) } -> std::same_as<status>;
  { c.barrier() } -> std::same_as<status>;
};

namespace distributed_detail {

/// Checks shared by every communicator: contiguous views, recv sized P x send, a valid root.
template <class V>
status check_buffer(const char* fn, const char* name, const V& v) {
  if (v.extent(0) == 0) return {};
  DISTILL_TRY(check_present(fn, name, v));
  if (v.stride(0) != 1) return fail(errc::unsupported_layout, fn, std::string("'") + name + "' must be contiguous");
  return {};
}
template <class S, class R>
status check_gather(const char* fn, const S& send, const R& recv, int ranks) {
  DISTILL_TRY(check_buffer(fn, "send", send));
  DISTILL_TRY(check_buffer(fn, "recv", recv));
  if (recv.extent(0) != send.extent(0) * ranks)
    return fail(errc::shape_mismatch, fn,
                "'recv' has " + std::to_string(recv.extent(0)) + " elements, it needs ranks x send = " +
                    std::to_string(ranks) + " x " + std::to_string(send.extent(0)));
  return {};
}
inline status check_root(const char* fn, int root, int ranks) {
  if (root < 0 || root >= ranks)
    return fail(errc::invalid_argument, fn,
                "'root' " + std::to_string(root) + " is not a rank of this communicator of " + std::to_string(ranks));
  return {};
}

}  // namespace distributed_detail

/// Scratch bytes of all_reduce_merge on communicators that need none (MPI, single process).
template <class Comm>
  requires requires(const Comm& c) { c.merge_needs_workspace; }
constexpr std::size_t all_reduce_merge_workspace_size(const Comm& comm, index_t count, std::size_t element_bytes) noexcept {
  if (!comm.merge_needs_workspace || count <= 0) return 0;
  return static_cast<std::size_t>(comm.size()) * static_cast<std::size_t>(count) * element_bytes;
}

/// One process, no engine: reductions, merges and broadcasts leave the data as it is, all_gather
/// copies. What code written over a communicator runs when it runs alone.
class single_process_communicator {
 public:
  using memory_space = host_space;
  static constexpr bool merge_needs_workspace = false;

  int rank() const noexcept { return 0; }
  int size() const noexcept { return 1; }

  template <class T>
  status all_reduce(host_view<T, 1> data, reduce_op /*op*/) const {
    static_assert(is_reducible_v<T>, "all_reduce: float, double, int32 or int64");
    return distributed_detail::check_buffer("single_process_communicator::all_reduce", "data", data);
  }
  template <class Merge, class T>
  status all_reduce_merge(host_view<T, 1> data, host_view<std::byte, 1> /*workspace*/ = {}) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_reduce_merge: trivially copyable elements");
    return distributed_detail::check_buffer("single_process_communicator::all_reduce_merge", "data", data);
  }
  template <class T>
  status all_gather(in_view<T, 1, host_space> send, host_view<T, 1> recv) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather: trivially copyable elements");
    DISTILL_TRY(distributed_detail::check_gather("single_process_communicator::all_gather", send, recv, 1));
    if (send.extent(0) > 0 && send.data() != recv.data())
      std::memmove(recv.data(), send.data(), static_cast<std::size_t>(send.extent(0)) * sizeof(T));
    return {};
  }
  template <class T>
  status broadcast(host_view<T, 1> data, int root) const {
    static_assert(std::is_trivially_copyable_v<T>, "broadcast: trivially copyable elements");
    DISTILL_TRY(distributed_detail::check_root("single_process_communicator::broadcast", root, 1));
    return distributed_detail::check_buffer("single_process_communicator::broadcast", "data", data);
  }
  status barrier() const { return {}; }
};

/// What counting_communicator counted.
struct communication_counts {
  std::int64_t collectives = 0;  ///< calls of any collective (barriers included)
  std::int64_t all_reduces = 0, merges = 0, all_gathers = 0, broadcasts = 0, barriers = 0;
  std::int64_t bytes = 0;        ///< payload bytes this rank contributes (the `data`/`send` sizes)
};

/// Wraps a communicator and counts its collectives and their payload bytes (each rank counts its
/// own). The counts are `mutable` so that the wrapper passes wherever a `const Comm&` goes.
template <class Comm>
class counting_communicator {
 public:
  using memory_space = typename Comm::memory_space;
  static constexpr bool merge_needs_workspace = Comm::merge_needs_workspace;

  explicit counting_communicator(const Comm& inner) noexcept : inner_(inner) {}

  int rank() const { return inner_.rank(); }
  int size() const { return inner_.size(); }
  const communication_counts& counts() const noexcept { return counts_; }
  void reset() noexcept { counts_ = {}; }

  template <class T>
  status all_reduce(tensor_view<T, 1, memory_space> data, reduce_op op) const {
    note(counts_.all_reduces, data.extent(0) * index_t(sizeof(T)));
    return inner_.all_reduce(data, op);
  }
  template <class Merge, class T>
  status all_reduce_merge(tensor_view<T, 1, memory_space> data, tensor_view<std::byte, 1, memory_space> workspace = {}) const {
    note(counts_.merges, data.extent(0) * index_t(sizeof(T)));
    return inner_.template all_reduce_merge<Merge>(data, workspace);
  }
  template <class T>
  status all_gather(in_view<T, 1, memory_space> send, tensor_view<T, 1, memory_space> recv) const {
    note(counts_.all_gathers, send.extent(0) * index_t(sizeof(T)));
    return inner_.all_gather(send, recv);
  }
  template <class T>
  status broadcast(tensor_view<T, 1, memory_space> data, int root) const {
    note(counts_.broadcasts, data.extent(0) * index_t(sizeof(T)));
    return inner_.broadcast(data, root);
  }
  status barrier() const {
    note(counts_.barriers, 0);
    return inner_.barrier();
  }

 private:
  void note(std::int64_t& kind, index_t bytes) const noexcept {
    ++counts_.collectives;
    ++kind;
    counts_.bytes += bytes;
  }
  const Comm& inner_;
  mutable communication_counts counts_;
};

static_assert(communicator<single_process_communicator>);
static_assert(communicator<counting_communicator<single_process_communicator>>);

}  // namespace distill
