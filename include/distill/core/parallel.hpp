// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CPU parallel loops over a `distill::cpu` context.
//!
//!   parallel_for(ctx, n, [&](index_t begin, index_t end) { ... })
//!       splits [0, n) into t = parallel_threads(ctx, n, min_chunk) contiguous chunks (at most
//!       ctx.threads, each of at least `min_chunk` iterations), chunk i = [n i / t, n (i+1) / t),
//!       and runs them on ctx.executor (OpenMP by default, serial without OpenMP). A loop
//!       started inside a chunk, or inside another OpenMP parallel region, runs serially.
//!   parallel_sum(ctx, n, [&](index_t begin, index_t end) -> Acc { ... })
//!       the same, then adds the per-chunk results in chunk order.
//!
//! Chunks depend only on n, ctx.threads and min_chunk, never on the executor or on timing, so
//! for a fixed thread count results are bitwise reproducible on any executor. Per-chunk scratch
//! is indexed by chunk (not by thread): an executor may run two chunks on one thread.

#include <algorithm>
#include <array>

#include "distill/core/config.hpp"
#include "distill/core/context.hpp"

#if DISTILL_HAS_OPENMP
#include <omp.h>
#endif

namespace distill {

namespace parallel_detail {

/// True on a thread while it runs a chunk of a distill loop: loops nested there run serially,
/// so an engine's pool never blocks on work queued behind its own workers.
inline thread_local bool in_chunk = false;

/// chunk(i) for every i in [0, chunks), on the context's executor.
template <class Chunk>
void run_chunks(const cpu& ctx, int chunks, const Chunk& chunk) {
  const auto marked = [&](index_t i) {
    const bool outer = in_chunk;
    in_chunk = true;
    chunk(i);
    in_chunk = outer;
  };
  if (ctx.executor.run != nullptr) {
    ctx.executor.run(ctx.executor.state, chunks, cpu_task(marked));
    return;
  }
#if DISTILL_HAS_OPENMP
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
#endif
  for (int i = 0; i < chunks; ++i) marked(i);
}

}  // namespace parallel_detail

/// Number of chunks (threads) a loop of `n` iterations will use.
inline int parallel_threads(const cpu& ctx, index_t n, index_t min_chunk = 1) noexcept {
  const index_t by_work = std::max<index_t>(1, n / std::max<index_t>(1, min_chunk));
  int t = std::max(1, ctx.threads);
  if (parallel_detail::in_chunk) t = 1;
  if (ctx.executor.run == nullptr) {
#if DISTILL_HAS_OPENMP
    if (omp_in_parallel()) t = 1;
#else
    t = 1;
#endif
  }
  return static_cast<int>(std::min<index_t>(t, by_work));
}

/// Calls body(begin, end) on the contiguous chunks of [0, n).
template <class Body>
void parallel_for(const cpu& ctx, index_t n, Body&& body, index_t min_chunk = 1) {
  if (n <= 0) return;
  const int t = parallel_threads(ctx, n, min_chunk);
  if (t == 1) {
    body(index_t(0), n);
    return;
  }
  parallel_detail::run_chunks(ctx, t, [&](index_t i) {
    const index_t begin = n * i / t, end = n * (i + 1) / t;
    if (begin < end) body(begin, end);
  });
}

/// Deterministic parallel sum: body(begin, end) returns the partial result of its chunk.
template <class Acc, class Body>
Acc parallel_sum(const cpu& ctx, index_t n, Body&& body, index_t min_chunk = 1) {
  if (n <= 0) return Acc(0);
  constexpr int max_chunks = 256;
  const int t = std::min(parallel_threads(ctx, n, min_chunk), max_chunks);
  if (t == 1) return body(index_t(0), n);
  std::array<Acc, max_chunks> partial{};
  parallel_detail::run_chunks(ctx, t, [&](index_t i) {
    const index_t begin = n * i / t, end = n * (i + 1) / t;
    partial[static_cast<std::size_t>(i)] = begin < end ? body(begin, end) : Acc(0);
  });
  Acc total = Acc(0);
  for (int i = 0; i < t; ++i) total += partial[static_cast<std::size_t>(i)];
  return total;
}

}  // namespace distill
