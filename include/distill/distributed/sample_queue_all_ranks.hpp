// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The sample queue (contrastive/sample_queue.hpp) shared by every rank, as MoCo does it (He et
//! al. 2020, `concat_all_gather` before `_dequeue_and_enqueue`): each rank all-gathers the new
//! keys of every rank and enqueues all of them in rank order, so every rank holds the same queue
//! at every step, and the loss of every rank sees every rank's keys as negatives.
//!
//!   sample_queue_enqueue_all_ranks(ctx, comm, queue, keys, ids, workspace, opt)
//!       keys [B, D] (the same B on every rank), optional ids [B]; one all_gather of the keys
//!       (P B D elements) and, with ids, one of the ids (P B int64); then the P B rows are
//!       enqueued, rank 0's first. workspace: sample_queue_all_ranks_workspace_size(ctx, comm, B,
//!       D, with_ids) bytes for the gathered rows.
//!   sample_queue_save_rank0(ctx, comm, queue, path)
//!       rank 0 writes the file (sample_queue_save: atomic, checksummed); one broadcast of its
//!       status, so every rank returns the same status.
//!   sample_queue_load_all_ranks(ctx, comm, queue, path)
//!       rank 0 reads and checks the file, broadcasts its size then its bytes (a shared file
//!       system is not needed), every rank restores the same queue. The file is the one-process
//!       file format, so a queue saved by P ranks reloads on any number of ranks, one included.
//! Host memory, host communicators (MPI, single process).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/core/workspace.hpp"
#include "distill/distributed/communicator.hpp"

namespace distill {

namespace distributed_detail {

template <class T>
struct gathered_keys {
  T* keys;
  std::int64_t* ids;
  gathered_keys(workspace_carver& w, index_t rows, index_t dim, bool with_ids)
      : keys(w.take<T>(rows * dim)), ids(w.take<std::int64_t>(with_ids ? rows : 0)) {}
};

}  // namespace distributed_detail

/// Bytes of the gathered keys (and ids) of sample_queue_enqueue_all_ranks: P x B rows.
template <class T, class Comm>
std::size_t sample_queue_all_ranks_workspace_size(const cpu&, const Comm& comm, index_t rows, index_t dim, bool with_ids) noexcept {
  return workspace_carver::size_of<distributed_detail::gathered_keys<T>>(index_t(comm.size()) * rows, dim, with_ids);
}

/// Every rank's keys [B, D] (and ids [B]) into every rank's queue, in rank order.
template <class Comm, class T>
[[nodiscard]] status sample_queue_enqueue_all_ranks(const cpu& ctx, const Comm& comm, sample_queue<T, host_space>& queue,
                                                    host_view<const T, 2> keys, host_view<const std::int64_t, 1> ids,
                                                    host_view<std::byte, 1> workspace, const enqueue_options& opt = {}) {
  static_assert(communicator<Comm> && std::is_same_v<typename Comm::memory_space, host_space>, "a host communicator");
  constexpr const char* fn = "sample_queue_enqueue_all_ranks";
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, false));
  const index_t B = keys.extent(0), D = queue.dim(), P = comm.size();
  if (B > 0) {
    DISTILL_TRY(check_present(fn, "keys", keys));
    DISTILL_TRY(check_extent(fn, "keys", keys, 1, D, "queue dimension D"));
  }
  if (!keys.empty() && (keys.stride(1) != 1 || keys.stride(0) != D))
    return fail(errc::unsupported_layout, fn, "'keys' must be contiguous rows (they are gathered as one block)");
  if (!ids.empty()) {
    if (!queue.has_ids()) return fail(errc::invalid_argument, fn, "'ids' given but the queue has no id storage");
    DISTILL_TRY(check_extent(fn, "ids", ids, 0, B, "rows of 'keys'"));
  }
  const bool with_ids = !ids.empty();
  DISTILL_TRY(check_workspace(fn, workspace, sample_queue_all_ranks_workspace_size<T>(ctx, comm, B, D, with_ids),
                              "sample_queue_all_ranks_workspace_size"));
  if (B == 0) return {};
  workspace_carver w(workspace.data());
  const distributed_detail::gathered_keys<T> g(w, P * B, D, with_ids);
  DISTILL_TRY(comm.all_gather(make_view(keys.data(), B * D), make_view(g.keys, P * B * D)));
  if (with_ids) DISTILL_TRY(comm.all_gather(make_view(ids.data(), B), make_view(g.ids, P * B)));
  return sample_queue_enqueue(ctx, queue, make_view(static_cast<const T*>(g.keys), P * B, D),
                              with_ids ? make_view(static_cast<const std::int64_t*>(g.ids), P * B)
                                       : host_view<const std::int64_t, 1>{},
                              opt);
}

/// Rank 0 saves the queue (every rank holds the same one); every rank returns rank 0's status.
template <class Comm, class T>
[[nodiscard]] status sample_queue_save_rank0(const cpu& ctx, const Comm& comm, const sample_queue<T, host_space>& queue,
                                             const std::string& path, const queue_save_options& opt = {}) {
  static_assert(communicator<Comm> && std::is_same_v<typename Comm::memory_space, host_space>, "a host communicator");
  const status st = comm.rank() == 0 ? sample_queue_save(ctx, queue, path, opt) : status{};
  std::int32_t code = static_cast<std::int32_t>(st.code());
  DISTILL_TRY(comm.broadcast(make_view(&code, 1), 0));
  if (comm.rank() == 0 || code == 0) return st;
  return fail(static_cast<errc>(code), "sample_queue_save_rank0", "rank 0 could not save '" + path + "' (its status says why)");
}

/// Rank 0 reads `path`, every rank restores the same queue from its bytes.
template <class Comm, class T>
[[nodiscard]] status sample_queue_load_all_ranks(const cpu& ctx, const Comm& comm, sample_queue<T, host_space>& queue,
                                                 const std::string& path) {
  static_assert(communicator<Comm> && std::is_same_v<typename Comm::memory_space, host_space>, "a host communicator");
  constexpr const char* fn = "sample_queue_load_all_ranks";
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, false));
  std::vector<unsigned char> image;
  contrastive_detail::queue_file_meta got;
  const status st = comm.rank() == 0
                        ? contrastive_detail::read_queue_file(fn, path, contrastive_detail::meta_of(queue), image, got)
                        : status{};
  // the size, or minus the error code when rank 0 could not read the file
  std::int64_t size = st.ok() ? static_cast<std::int64_t>(image.size()) : -static_cast<std::int64_t>(st.code());
  DISTILL_TRY(comm.broadcast(make_view(&size, 1), 0));
  if (size < 0) {
    if (comm.rank() == 0) return st;
    return fail(static_cast<errc>(-size), fn, "rank 0 could not read '" + path + "' (its status says why)");
  }
  image.resize(static_cast<std::size_t>(size));
  DISTILL_TRY(comm.broadcast(make_view(image.data(), static_cast<index_t>(size)), 0));
  return sample_queue_deserialize(ctx, queue, std::span<const unsigned char>(image.data(), image.size()));
}

}  // namespace distill
