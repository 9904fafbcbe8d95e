// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The device plan of token NCE on CUDA (kernels in distill/cuda/token_nce.cuh): the grid of the
//! key pass and the workspace regions, a pure function of the sizes, whether gradients are
//! wanted and the device's SM count, so the sizing function and the call agree. nvcc only.

#if !defined(__CUDACC__)
#error "distill/cuda/detail/token_nce_plan.cuh must be compiled by nvcc"
#endif

#include <algorithm>
#include <cstddef>

#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"
#include "distill/cuda/detail/fragment_layout.cuh"
#include "distill/cuda/runtime.cuh"

namespace distill::cuda_detail::nce {

using fragment::chunk_cols;
using fragment::tile_keys;
using fragment::tile_rows;
inline constexpr int max_splits = 64;  // key splits (also the finalize kernel's per-warp table)

/// Grid of the key pass: row tiles x key splits x column blocks.
struct plan {
  index_t M = 0, D = 0;
  index_t row_tiles = 0;
  int nchunks = 1;  ///< 256-wide column chunks of D every block walks for the logits
  int dsplits = 1;  ///< blocks along D (grid z): nchunks with gradients (each accumulates its own
                    ///< columns of P K), 1 without (nothing to accumulate: no logit GEMM is repeated)
  int ksplits = 1;  ///< key splits (grid y)
  bool with_grad = false, in_batch = false;
};

inline plan make_plan(index_t M, index_t D, index_t capacity, bool in_batch, bool with_grad, int sms) {
  plan p;
  p.M = M;
  p.D = D;
  p.with_grad = with_grad;
  p.in_batch = in_batch;
  p.row_tiles = ceil_div<index_t>(M, tile_rows);
  p.nchunks = static_cast<int>(ceil_div<index_t>(D, chunk_cols));
  p.dsplits = with_grad ? p.nchunks : 1;
  const index_t tiles = ceil_div<index_t>(capacity, tile_keys) + (in_batch ? ceil_div<index_t>(M, tile_keys) : 0);
  // Key splits: minimise (waves of blocks) x (tiles per block) over ks, fewest splits on ties.
  const index_t per_split = p.row_tiles * p.dsplits;
  const index_t sm = std::max(sms, 1);
  index_t best_cost = -1;
  for (index_t ks = 1; ks <= std::min<index_t>(std::max<index_t>(tiles, 1), max_splits); ++ks) {
    const index_t cost = ceil_div<index_t>(per_split * ks, sm) * ceil_div<index_t>(std::max<index_t>(tiles, 1), ks);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      p.ksplits = static_cast<int>(ks);
    }
  }
  return p;
}

/// The workspace regions (core/workspace.hpp): per-token norms, positive logits, log-sum-exps and
/// losses, the valid-token count, each key split's softmax state (m, l) and, with gradients, its
/// accumulator P K [M, D] (reused by the in-batch key gradient for its split sums) and the
/// teacher's positive-term gradient gk [M, D].
struct scratch {
  float *norm_q, *norm_k, *s0, *lse, *loss;
  int* count;
  float *part_m, *part_l, *acc, *gk;
  scratch(workspace_carver& w, const plan& p)
      : norm_q(w.take<float>(p.M)),
        norm_k(w.take<float>(p.M)),
        s0(w.take<float>(p.M)),
        lse(w.take<float>(p.M)),
        loss(w.take<float>(p.M)),
        count(w.take<int>(1)),
        part_m(w.take<float>(p.ksplits * p.M)),
        part_l(w.take<float>(p.ksplits * p.M)),
        acc(w.take<float>(p.with_grad ? p.ksplits * p.M * p.D : 0)),
        gk(w.take<float>(p.with_grad && p.in_batch ? p.M * p.D : 0)) {}
};

/// Bytes for either pass (the forward-only plan has more key splits and no accumulators).
inline std::size_t workspace_bytes(index_t M, index_t D, index_t capacity, bool in_batch, int sms) {
  return std::max(workspace_carver::size_of<scratch>(make_plan(M, D, capacity, in_batch, false, sms)),
                  workspace_carver::size_of<scratch>(make_plan(M, D, capacity, in_batch, true, sms)));
}

}  // namespace distill::cuda_detail::nce
