// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The CPU engine of token NCE (contrastive/token_nce.hpp has the math, the API and the
//! validation). One flash-style pass over the keys, in stages:
//!
//!   1. norms        per token: 1/||z||, 1/||y||, the positive logit s_0, the reduction weight
//!   2. key pass     row blocks x key tiles: S = Z K^T (distill::gemm), online log-sum-exp per
//!                   row, and with gradients acc += P K (the attention output whose values are the
//!                   keys); few tokens: threads split the keys and keep partial states
//!   3. tokens       merge the key splits, the loss, the student gradient through the B2
//!                   backward, the teacher's positive term
//!   4. in-batch     dL/dk_b += sum_i c_i pi_ib q_i (teacher gradient through in-batch negatives)
//!   5. losses       per-token and reduced loss, summed in token order (thread-count independent)
//!
//! Scratch: everything lives in the caller's workspace (token_nce_queue_workspace_size): a few
//! per-token vectors, the split accumulators (M x D per key split), one row-block x key-tile
//! buffer per thread and the GEMM packing panels per thread, so nothing is allocated per call.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/core/cpu_gemm.hpp"
#include "distill/core/parallel.hpp"

namespace distill::token_nce_detail {

inline constexpr index_t cpu_row_block = 128;  ///< query rows per GEMM block
inline constexpr index_t cpu_key_tile = 256;   ///< keys per tile (the online-LSE step)

/// Offsets (in accumulator elements) of the workspace regions, and the split of the work.
struct cpu_plan {
  index_t M = 0, D = 0;
  int workers = 1;  ///< threads used
  int splits = 1;   ///< key splits (1: threads split the rows; >1: each thread takes a key range)
  bool in_batch = false;
  std::size_t packing = 0;  ///< packing elements per thread (gemm_workspace_size of the three products)
  std::size_t invq, invk, s0, projq, projk, weight, lse, loss, part_m, part_l, acc, gk, tiles, packs, total;
};

template <class Acc>
cpu_plan make_cpu_plan(int threads, index_t M, index_t D, bool in_batch) {
  cpu_plan p;
  p.M = M;
  p.D = D;
  p.in_batch = in_batch;
  p.workers = std::max(1, threads);
  // Enough row blocks for every thread: split rows (the queue streams once per row block).
  // Otherwise (few tokens) split the keys and merge the partial log-sum-exps at the end.
  p.splits = M >= static_cast<index_t>(p.workers) * cpu_row_block ? 1 : std::min(p.workers, 64);
  const auto m = static_cast<std::size_t>(M), d = static_cast<std::size_t>(D);
  const auto pad = [](std::size_t n) { return (n + 15) & ~std::size_t(15); };  // 64-byte alignment for float
  std::size_t o = 0;
  const auto take = [&](std::size_t n) {
    const std::size_t at = o;
    o += pad(n);
    return at;
  };
  p.invq = take(m);
  p.invk = take(m);
  p.s0 = take(m);
  p.projq = take(m);
  p.projk = take(m);
  p.weight = take(m);
  p.lse = take(m);
  p.loss = take(m);
  p.part_m = take(m * p.splits);
  p.part_l = take(m * p.splits);
  p.acc = take(m * d * p.splits);
  p.gk = take(in_batch ? m * d : 0);
  p.tiles = take(static_cast<std::size_t>(p.workers) * cpu_row_block * cpu_key_tile);
  // the three tile products: S = Z K^T, acc += P K, gk += W^T Z
  const cpu one{1};
  const std::size_t pack_bytes = std::max({gemm_workspace_size<Acc>(one, cpu_row_block, cpu_key_tile, D),
                                           gemm_workspace_size<Acc>(one, cpu_row_block, D, cpu_key_tile),
                                           gemm_workspace_size<Acc>(one, cpu_key_tile, D, cpu_row_block)});
  p.packing = pad((pack_bytes + sizeof(Acc) - 1) / sizeof(Acc));
  p.packs = take(static_cast<std::size_t>(p.workers) * p.packing);
  p.total = o;
  return p;
}

/// Bytes of the CPU workspace (the +64: the engine aligns its base to a cache line).
template <class Acc>
std::size_t cpu_workspace_bytes(int threads, index_t M, index_t D, bool in_batch) {
  return make_cpu_plan<Acc>(threads, M, D, in_batch).total * sizeof(Acc) + 64;
}

/// One call of the CPU engine (Acc = float or double; every view's element type is Acc). Defined
/// in token_nce_cpu_engine.hpp, included at the end of this header, or, with the distill_cpu
/// library (DISTILL_CPU_LIBRARY), compiled there once and only declared here.
template <class Acc>
status run_cpu_engine(const char* fn, const cpu& ctx, host_view<const Acc, 2> Z, host_view<const Acc, 2> Y,
                      const sample_queue<Acc, host_space>& queue, host_view<const std::uint8_t, 1> mask,
                      host_view<const std::int64_t, 1> ids, host_view<Acc, 1> loss, host_view<Acc, 1> per_token,
                      host_view<Acc, 2> grad_student, host_view<Acc, 2> grad_teacher, host_view<std::byte, 1> workspace,
                      const token_nce_options& opt);

/// The CPU engine behind the entry points (declared in contrastive/token_nce.hpp).
template <>
struct backend<host_space> {
  template <class TS, class TT, class TQ>
  static status run(const char* fn, const cpu& ctx, const token_nce_inputs<TS, TT, host_space>& in,
                    const sample_queue<TQ, host_space>& queue, const token_nce_outputs<TS, TT, host_space>& out,
                    host_view<std::byte, 1> workspace, const token_nce_options& opt) {
    static_assert(std::is_same_v<TS, float> || std::is_same_v<TS, double>, "token_nce_queue (CPU): tokens must be float or double");
    static_assert(std::is_same_v<TT, TS>, "token_nce_queue (CPU): teacher tokens must have the student's type");
    static_assert(std::is_same_v<TQ, TS>, "token_nce_queue (CPU): queue keys must have the tokens' type");
    return run_cpu_engine<TS>(fn, ctx, in.student, in.teacher, queue, in.token_mask, in.token_ids, out.loss, out.per_token_loss,
                              out.grad_student, out.grad_teacher, workspace, opt);
  }
};

}  // namespace distill::token_nce_detail

#if !DISTILL_CPU_LIBRARY
#include "distill/contrastive/detail/token_nce_cpu_engine.hpp"
#endif
