// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The communicator (distributed/communicator.hpp) over MPI, for processes on CPUs: host memory,
//! blocking collectives. Needs <mpi.h> (Open MPI or MPICH; CMake: find_package(MPI) and link
//! MPI::MPI_CXX). The program initialises MPI itself (MPI_Init ... MPI_Finalize) and launches
//! with `mpirun -np P program` (docs/distributed.md).
//!
//!   mpi_communicator comm;
//!   DISTILL_TRY(mpi_communicator::create(MPI_COMM_WORLD, comm));   // duplicates the MPI_Comm
//!
//! The communicator works on its own duplicate of the given MPI_Comm (so distill's messages never
//! match the program's) with MPI_ERRORS_RETURN set on it: an MPI failure comes back as
//! errc::communication_error with MPI's message instead of aborting the job. The duplicate is
//! freed by the destructor (unless MPI is already finalised).
//!
//!   all_reduce        MPI_Allreduce(MPI_IN_PLACE, MPI_SUM / MPI_MAX)
//!   all_reduce_merge  MPI_Allreduce with a user operation declared non-commutative, so MPI
//!                     applies it in rank order and every rank gets the same bits
//!   all_gather        MPI_Allgather of bytes;  broadcast: MPI_Bcast of bytes;  barrier: MPI_Barrier
//! Counts above MPI's int range are refused (invalid_argument).

// the C API only: the C++ bindings are deprecated (MPI 2.2) and their headers warn
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <climits>
#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>

#include "distill/distributed/communicator.hpp"

namespace distill {

namespace distributed_detail {

inline status mpi_status(const char* fn, int code) {
  if (code == MPI_SUCCESS) return {};
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, text, &len);
  return fail(errc::communication_error, fn, std::string("MPI error: ") + std::string(text, static_cast<std::size_t>(len)));
}

inline status mpi_count(const char* fn, index_t count, int& out) {
  if (count > index_t(INT_MAX))
    return fail(errc::invalid_argument, fn, std::to_string(count) + " elements exceed MPI's int count range");
  out = static_cast<int>(count);
  return {};
}

template <class T>
MPI_Datatype mpi_type() noexcept {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
  else return MPI_INT64_T;
}

/// MPI's user function for Merge: inout[i] <- Merge(in[i], inout[i]), `in` holding the lower
/// ranks (MPI's order for non-commutative operations). Elements are copied out because MPI's
/// buffers carry no alignment promise for T.
template <class T, class Merge>
void mpi_merge(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const unsigned char*>(in);
  auto* b = static_cast<unsigned char*>(inout);
  for (int i = 0; i < *len; ++i) {
    T lower, higher;
    std::memcpy(&lower, a + std::size_t(i) * sizeof(T), sizeof(T));
    std::memcpy(&higher, b + std::size_t(i) * sizeof(T), sizeof(T));
    const T merged = Merge{}(lower, higher);
    std::memcpy(b + std::size_t(i) * sizeof(T), &merged, sizeof(T));
  }
}

}  // namespace distributed_detail

class mpi_communicator {
 public:
  using memory_space = host_space;
  static constexpr bool merge_needs_workspace = false;

  mpi_communicator() noexcept = default;
  mpi_communicator(const mpi_communicator&) = delete;
  mpi_communicator& operator=(const mpi_communicator&) = delete;
  mpi_communicator(mpi_communicator&& o) noexcept { *this = static_cast<mpi_communicator&&>(o); }
  mpi_communicator& operator=(mpi_communicator&& o) noexcept {
    if (this != &o) {
      release();
      comm_ = o.comm_, rank_ = o.rank_, size_ = o.size_;
      o.comm_ = MPI_COMM_NULL;
    }
    return *this;
  }
  ~mpi_communicator() { release(); }

  /// A communicator over a duplicate of `comm` (MPI must be initialised).
  [[nodiscard]] static status create(MPI_Comm comm, mpi_communicator& out) {
    constexpr const char* fn = "mpi_communicator::create";
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) return fail(errc::invalid_argument, fn, "MPI is not initialised (call MPI_Init first)");
    if (comm == MPI_COMM_NULL) return fail(errc::invalid_argument, fn, "'comm' is MPI_COMM_NULL");
    mpi_communicator c;
    DISTILL_TRY(distributed_detail::mpi_status(fn, MPI_Comm_dup(comm, &c.comm_)));
    DISTILL_TRY(distributed_detail::mpi_status(fn, MPI_Comm_set_errhandler(c.comm_, MPI_ERRORS_RETURN)));
    DISTILL_TRY(distributed_detail::mpi_status(fn, MPI_Comm_rank(c.comm_, &c.rank_)));
    DISTILL_TRY(distributed_detail::mpi_status(fn, MPI_Comm_size(c.comm_, &c.size_)));
    out = static_cast<mpi_communicator&&>(c);
    return {};
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  /// The duplicate MPI_Comm this communicator works on.
  MPI_Comm native() const noexcept { return comm_; }

  template <class T>
  status all_reduce(host_view<T, 1> data, reduce_op op) const {
    static_assert(is_reducible_v<T>, "all_reduce: float, double, int32 or int64");
    constexpr const char* fn = "mpi_communicator::all_reduce";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_buffer(fn, "data", data));
    int n = 0;
    DISTILL_TRY(distributed_detail::mpi_count(fn, data.extent(0), n));
    if (n == 0) return {};
    return distributed_detail::mpi_status(fn, MPI_Allreduce(MPI_IN_PLACE, data.data(), n, distributed_detail::mpi_type<T>(),
                                                            op == reduce_op::sum ? MPI_SUM : MPI_MAX, comm_));
  }

  template <class Merge, class T>
  status all_reduce_merge(host_view<T, 1> data, host_view<std::byte, 1> /*workspace*/ = {}) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_reduce_merge: trivially copyable elements");
    static_assert(std::is_empty_v<Merge> && std::is_default_constructible_v<Merge>,
                  "all_reduce_merge: Merge must be stateless (MPI's user operations carry no state)");
    constexpr const char* fn = "mpi_communicator::all_reduce_merge";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_buffer(fn, "data", data));
    int n = 0;
    DISTILL_TRY(distributed_detail::mpi_count(fn, data.extent(0), n));
    if (n == 0) return {};
    MPI_Datatype type;
    DISTILL_TRY(distributed_detail::mpi_status(fn, MPI_Type_contiguous(int(sizeof(T)), MPI_BYTE, &type)));
    auto reduce = [&]() -> status {
      DISTILL_TRY(distributed_detail::mpi_status(fn, MPI_Type_commit(&type)));
      MPI_Op op;
      DISTILL_TRY(distributed_detail::mpi_status(fn, MPI_Op_create(&distributed_detail::mpi_merge<T, Merge>, 0, &op)));
      const status st = distributed_detail::mpi_status(fn, MPI_Allreduce(MPI_IN_PLACE, data.data(), n, type, op, comm_));
      MPI_Op_free(&op);
      return st;
    };
    const status st = reduce();
    MPI_Type_free(&type);
    return st;
  }

  template <class T>
  status all_gather(in_view<T, 1, host_space> send, host_view<T, 1> recv) const {
    static_assert(std::is_trivially_copyable_v<T>, "all_gather: trivially copyable elements");
    constexpr const char* fn = "mpi_communicator::all_gather";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_gather(fn, send, recv, size_));
    int bytes = 0;
    DISTILL_TRY(distributed_detail::mpi_count(fn, send.extent(0) * index_t(sizeof(T)), bytes));
    if (bytes == 0) return {};
    return distributed_detail::mpi_status(
        fn, MPI_Allgather(send.data(), bytes, MPI_BYTE, recv.data(), bytes, MPI_BYTE, comm_));
  }

  template <class T>
  status broadcast(host_view<T, 1> data, int root) const {
    static_assert(std::is_trivially_copyable_v<T>, "broadcast: trivially copyable elements");
    constexpr const char* fn = "mpi_communicator::broadcast";
    DISTILL_TRY(check_usable(fn));
    DISTILL_TRY(distributed_detail::check_root(fn, root, size_));
    DISTILL_TRY(distributed_detail::check_buffer(fn, "data", data));
    int bytes = 0;
    DISTILL_TRY(distributed_detail::mpi_count(fn, data.extent(0) * index_t(sizeof(T)), bytes));
    if (bytes == 0) return {};
    return distributed_detail::mpi_status(fn, MPI_Bcast(data.data(), bytes, MPI_BYTE, root, comm_));
  }

  status barrier() const {
    DISTILL_TRY(check_usable("mpi_communicator::barrier"));
    return distributed_detail::mpi_status("mpi_communicator::barrier", MPI_Barrier(comm_));
  }

 private:
  status check_usable(const char* fn) const {
    if (comm_ == MPI_COMM_NULL)
      return fail(errc::invalid_argument, fn, "the communicator was not created (mpi_communicator::create)");
    return {};
  }
  void release() noexcept {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (comm_ != MPI_COMM_NULL && !finalised) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
  }
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

static_assert(communicator<mpi_communicator>);

}  // namespace distill
