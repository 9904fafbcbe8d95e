// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CPU parallel loops over a `distill::cpu` context.
//!
//!   parallel_for(ctx, n, [&](index_t begin, index_t end) { ... })
//!       splits [0, n) into at most ctx.threads contiguous chunks of at least `min_chunk`
//!       iterations each, one per thread (OpenMP when the TU is compiled with it, serial
//!       otherwise; a call from inside another parallel region runs serially).
//!   parallel_sum(ctx, n, [&](index_t begin, index_t end) -> Acc { ... })
//!       the same, then adds the per-chunk results in chunk order.
//!
//! Chunks depend only on n, ctx.threads and min_chunk, so for a fixed thread count results are
//! bitwise reproducible from run to run.

#include <algorithm>
#include <array>

#include "distill/core/config.hpp"
#include "distill/core/context.hpp"

#if DISTILL_HAS_OPENMP
#include <omp.h>
#endif

namespace distill {

/// Number of threads a loop of `n` iterations will use.
inline int parallel_threads(const cpu& ctx, index_t n, index_t min_chunk = 1) noexcept {
  const index_t by_work = std::max<index_t>(1, n / std::max<index_t>(1, min_chunk));
  int t = std::max(1, ctx.threads);
#if DISTILL_HAS_OPENMP
  if (omp_in_parallel()) t = 1;
#else
  t = 1;
#endif
  return static_cast<int>(std::min<index_t>(t, by_work));
}

/// Calls body(begin, end) on contiguous chunks of [0, n), chunk `i` on thread `i`.
template <class Body>
void parallel_for(const cpu& ctx, index_t n, Body&& body, index_t min_chunk = 1) {
  if (n <= 0) return;
  const int t = parallel_threads(ctx, n, min_chunk);
  if (t == 1) {
    body(index_t(0), n);
    return;
  }
#if DISTILL_HAS_OPENMP
#pragma omp parallel num_threads(t)
  {
    const index_t i = omp_get_thread_num();
    const index_t nt = omp_get_num_threads();
    const index_t begin = n * i / nt;
    const index_t end = n * (i + 1) / nt;
    if (begin < end) body(begin, end);
  }
#endif
}

/// Deterministic parallel sum: body(begin, end) returns the partial result of its chunk.
template <class Acc, class Body>
Acc parallel_sum(const cpu& ctx, index_t n, Body&& body, index_t min_chunk = 1) {
  if (n <= 0) return Acc(0);
  constexpr int max_chunks = 256;
  const int t = std::min(parallel_threads(ctx, n, min_chunk), max_chunks);
  if (t == 1) return body(index_t(0), n);
  std::array<Acc, max_chunks> partial{};
#if DISTILL_HAS_OPENMP
#pragma omp parallel num_threads(t)
  {
    const index_t i = omp_get_thread_num();
    const index_t nt = omp_get_num_threads();
    const index_t begin = n * i / nt;
    const index_t end = n * (i + 1) / nt;
    partial[static_cast<std::size_t>(i)] = begin < end ? body(begin, end) : Acc(0);
  }
#endif
  Acc total = Acc(0);
  for (int i = 0; i < t; ++i) total += partial[static_cast<std::size_t>(i)];
  return total;
}

}  // namespace distill
