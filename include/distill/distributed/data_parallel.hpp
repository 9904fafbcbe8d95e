// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Data-parallel training on a host communicator (MPI, or the single process): P replicas hold
//! the same model, each takes B / P consecutive rows of every global batch of B, and the step
//! equals one process's step on the whole batch, up to the order of float additions:
//!
//!   loss      L = (1/B) sum_rows l = (1/P) sum_r L_r,  L_r the mean over replica r's B / P rows
//!   gradient  dL/dw = (1/P) sum_r dL_r/dw: all_reduce_gradients sums the replicas' gradients
//!             of every trainable parameter, each scaled by its share of the rows (1/P, or
//!             n_r / B for unequal shares), in buckets (one all-reduce per bucket of
//!             `bucket_bytes`, as PyTorch DDP's 25 MB buckets; 4 MB by default)
//!   batch norm statistics over the global batch (nn::batch_norm with the replica's sum: two
//!             all-reduces of C + 1 and C doubles per layer forward, one of 2 C + 1 backward)
//!   dropout   replica r draws the masks of global rows [r B/P, (r + 1) B/P) (nn::dropout)
//!
//!   nn::replica rep;
//!   DISTILL_TRY(distill::data_parallel_replica(world, global_batch, rep));   // rows of this rank
//!   net.set_replica(rep);                                                    // nn::sequential
//!   DISTILL_TRY(distill::broadcast_parameters(world, net.parameters()));     // same start
//!   // per step: forward/backward on the local rows, then
//!   DISTILL_TRY(distill::all_reduce_gradients(world, net.parameters(), buckets));
//!   DISTILL_TRY(optimizer.step(ctx));                                        // same on every rank
//!
//! What differs from one process: the order of the additions (per-replica partial sums, then the
//! engine's sum), so results agree with one process to float rounding, not bit for bit. The
//! replicas stay identical as long as the engine hands every rank the same sums: always for
//! P = 2 (a + b = b + a); for P > 2 the MPI standard advises but does not require it (not checked
//! bit for bit here; the tests compare every rank with one process to 1e-5).
//! Batch norm needs equal shares (B a multiple of P): its gradient uses global means of dy, whose
//! per-rank scale must be the same.

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "distill/distributed/communicator.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/replica.hpp"

namespace distill {

/// This rank's share of a global batch of `global_batch` rows: rows [rank B/P, (rank + 1) B/P),
/// and the sum over ranks that synchronised batch norm uses. `comm` must outlive `out`.
template <communicator Comm>
  requires std::is_same_v<typename Comm::memory_space, host_space>
[[nodiscard]] status data_parallel_replica(const Comm& comm, index_t global_batch, nn::replica& out) {
  constexpr const char* fn = "data_parallel_replica";
  const index_t P = comm.size();
  if (global_batch <= 0 || global_batch % P != 0)
    return fail(errc::invalid_argument, fn,
                "'global_batch' " + std::to_string(global_batch) + " must be a positive multiple of the " + std::to_string(P) + " ranks");
  out.global_rows = global_batch;
  out.first_row = comm.rank() * (global_batch / P);
  out.sum = nullptr;  // one process: local statistics are global
  if (P > 1)
    out.sum = [&comm](std::span<double> v) -> status {
      return comm.all_reduce(make_view(v.data(), static_cast<index_t>(v.size())), reduce_op::sum);
    };
  return {};
}

/// Rows of a global batch each rank holds.
template <communicator Comm>
index_t local_batch(const Comm& comm, index_t global_batch) noexcept {
  return global_batch / comm.size();
}

/// Scratch of all_reduce_gradients, kept between steps.
template <class T>
struct gradient_buckets {
  std::size_t bucket_bytes = std::size_t(4) << 20;
  std::vector<T> buffer;
};

/// grad <- sum over the ranks of weight_r grad_r, for every trainable parameter (buffers and
/// frozen parameters are skipped): `weight` is this rank's share of the global batch's rows
/// (n_r / B, so unequal shares, e.g. a short last batch, still give the global mean), packed
/// into buckets of at most `buckets.bucket_bytes`: one all-reduce per bucket (a parameter larger
/// than a bucket is reduced in place on its own). Every rank must pass the same parameter list.
template <communicator Comm, class T>
  requires std::is_same_v<typename Comm::memory_space, host_space>
[[nodiscard]] status all_reduce_gradients(const Comm& comm, const nn::parameter_list<T, host_space>& params, gradient_buckets<T>& buckets,
                                          double weight) {
  constexpr const char* fn = "all_reduce_gradients";
  if (!(weight >= 0.0 && weight <= 1.0)) return fail(errc::invalid_argument, fn, "'weight' " + std::to_string(weight) + " is not in [0, 1]");
  const std::size_t capacity = std::max<std::size_t>(1, buckets.bucket_bytes / sizeof(T));
  const T w = static_cast<T>(weight);
  std::vector<nn::parameter<T, host_space>*> pending;
  std::size_t filled = 0;
  const auto flush = [&]() -> status {
    if (filled == 0) return {};
    DISTILL_TRY(comm.all_reduce(make_view(buckets.buffer.data(), static_cast<index_t>(filled)), reduce_op::sum));
    std::size_t at = 0;
    for (auto* p : pending) {
      std::copy_n(buckets.buffer.data() + at, p->grad.size(), p->grad.data());
      at += static_cast<std::size_t>(p->grad.size());
    }
    pending.clear(), filled = 0;
    return {};
  };
  for (auto* p : params) {
    if (p == nullptr) return fail(errc::invalid_argument, fn, "'params' holds a null parameter");
    if (p->buffer || !p->trainable) continue;
    const auto n = static_cast<std::size_t>(p->grad.size());
    if (n != static_cast<std::size_t>(p->value.size()))
      return fail(errc::shape_mismatch, fn, "parameter '" + p->name + "' has no gradient of its value's size");
    T* g = p->grad.data();
    if (n > capacity) {  // on its own, in place
      for (std::size_t i = 0; i < n; ++i) g[i] *= w;
      DISTILL_TRY(comm.all_reduce(make_view(g, static_cast<index_t>(n)), reduce_op::sum));
      continue;
    }
    if (filled + n > capacity) DISTILL_TRY(flush());
    if (buckets.buffer.size() < capacity) buckets.buffer.resize(capacity);
    for (std::size_t i = 0; i < n; ++i) buckets.buffer[filled + i] = g[i] * w;
    filled += n;
    pending.push_back(p);
  }
  return flush();
}

/// The same with equal shares: grad <- mean over the ranks of grad.
template <communicator Comm, class T>
  requires std::is_same_v<typename Comm::memory_space, host_space>
[[nodiscard]] status all_reduce_gradients(const Comm& comm, const nn::parameter_list<T, host_space>& params, gradient_buckets<T>& buckets) {
  if (comm.size() == 1) return {};
  return all_reduce_gradients(comm, params, buckets, 1.0 / comm.size());
}

/// Every parameter's value (buffers included) <- root's, so replicas start identical however
/// each initialised its model.
template <communicator Comm, class T>
  requires std::is_same_v<typename Comm::memory_space, host_space>
[[nodiscard]] status broadcast_parameters(const Comm& comm, const nn::parameter_list<T, host_space>& params, int root = 0) {
  for (auto* p : params) {
    if (p == nullptr) return fail(errc::invalid_argument, "broadcast_parameters", "'params' holds a null parameter");
    if (p->value.size() > 0) DISTILL_TRY(comm.broadcast(make_view(p->value.data(), p->value.size()), root));
  }
  return {};
}

}  // namespace distill
