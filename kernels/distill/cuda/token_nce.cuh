// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the token-wise InfoNCE against a queue (include/distill/contrastive/token_nce.hpp).
//! nvcc only; included by the header above. The grid and workspace plan is in
//! detail/token_nce_plan.cuh, the tile products in detail/tile_gemm.cuh (flash tiles).
//!
//! Launches (all on ctx.stream, no allocation, no host synchronisation, graph-capturable):
//!   1. prepare   warp per token: ||z_i||, ||y_i||, s_i0 = <z,y>/(||z|| ||y|| tau), valid count
//!   2. keys      block = 64 tokens x one key split x (with gradients) one 256-wide column block
//!                of D. It walks its key tiles (64 keys: queue rows in the queue's type, then
//!                in-batch teacher rows in the teacher's type, so strict fp32 keeps fp32 teacher
//!                keys whatever the queue stores) through shared memory, all of D per tile in
//!                256-column chunks (cp.async, double-buffered when it fits), and per tile:
//!                  S = Z K^T                     (FFMA, TF32 mma.sync or BF16 mma.sync)
//!                  online softmax per token      (running max m, sum l, rescale factor alpha)
//!                  acc = alpha acc + P K         (the same key tile: values = keys)
//!                and writes its split's (m, l) and acc [64, 256] to the workspace. No [M, K]
//!                buffer exists. With gradients the ceil(D / 256) column blocks each recompute
//!                the logits for their own columns of P K; without, one block per (tokens,
//!                split) computes them once.
//!   3. finalize  warp per token: merge the splits (+ the positive), loss, lse, pi_0, gradient
//!                to q, B2 backward into grad_student (and the teacher's positive term)
//!   4. (teacher gradient with in-batch negatives) the same flash tiles transposed: rows are 64
//!                teacher keys b, key tiles are student tokens i, S^T = Y Z^T in the same precision
//!                as step 2 (so the weights c_i e^{s_ib - lse_i} match the log-sum-exp they are
//!                normalised by), W = those weights, acc = W Z; split sums in the workspace, then
//!                a warp per token adds them to the positive term and runs the B2 backward
//!   5. reduce    one block sums the weighted per-token losses in a fixed order (deterministic)

#if !defined(__CUDACC__)
#error "distill/cuda/token_nce.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/cuda/detail/device.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/detail/tile_gemm.cuh"
#include "distill/cuda/detail/token_nce_plan.cuh"
#include "distill/cuda/runtime.cuh"

namespace distill {

namespace cuda_detail::nce {

namespace flash = tile::flash;
using tile::imin;

__device__ DISTILL_FORCEINLINE bool token_valid(const std::uint8_t* mask, index_t stride, index_t i) {
  return mask == nullptr || mask[i * stride] != 0;
}
__device__ DISTILL_FORCEINLINE std::int64_t token_id(const std::int64_t* ids, index_t stride, index_t i) {
  return ids == nullptr ? no_sample_id : ids[i * stride];
}

/// What the keys, finalize and in-batch key-gradient passes all read: student tokens Z (M, D),
/// teacher tokens Y, the optional mask and ids, the norms from prepare. Filled once per call;
/// each pass's argument struct extends it.
template <class TS, class TT>
struct token_operands {
  const TS* z;
  index_t ldz;
  const TT* y;
  index_t ldy;
  const std::uint8_t* mask;
  index_t mask_stride;
  const std::int64_t* ids;
  index_t ids_stride;
  const float* norm_q;
  const float* norm_k;
  index_t M, D;
  float eps, inv_tau;
};

// ---------------------------------------------------------------------------------------------
// 1. prepare: one warp per token
// ---------------------------------------------------------------------------------------------
template <class TS, class TT>
__global__ void __launch_bounds__(256) token_nce_prepare_warp_per_token_kernel(const TS* __restrict__ z, index_t ldz, const TT* __restrict__ y,
                                                                               index_t ldy, index_t M, index_t D,
                                                                               const std::uint8_t* __restrict__ mask, index_t mask_stride,
                                                                               float inv_tau, float eps, float* __restrict__ norm_q,
                                                                               float* __restrict__ norm_k, float* __restrict__ s0,
                                                                               int* __restrict__ valid_count) {
  const index_t i = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= M) return;
  float zz = 0, yy = 0, zy = 0;
  for (index_t d = lane; d < D; d += 32) {
    const float a = load<float>(z[i * ldz + d]), b = load<float>(y[i * ldy + d]);
    zz = fmaf(a, a, zz);
    yy = fmaf(b, b, yy);
    zy = fmaf(a, b, zy);
  }
  zz = warp_sum(zz);
  yy = warp_sum(yy);
  zy = warp_sum(zy);
  if (lane == 0) {
    norm_q[i] = sqrtf(zz);
    norm_k[i] = sqrtf(yy);
    s0[i] = zy * contrastive_detail::inverse_norm(zz, eps) * contrastive_detail::inverse_norm(yy, eps) * inv_tau;
    if (token_valid(mask, mask_stride, i)) atomicAdd(valid_count, 1);  // integer: order-independent
  }
}

// ---------------------------------------------------------------------------------------------
// Operands of the flash tiles (tile::flash::flash_tile_loop)
// ---------------------------------------------------------------------------------------------
/// A block's 64 rows of a row-major [rows, D] matrix.
template <class T>
struct row_tile {
  const T* g;
  index_t ld, row0, valid_rows, D;
  bool vec;
  __device__ DISTILL_FORCEINLINE void load(T* dst, index_t col0) const {
    flash::load_tile<tile_rows>(dst, g, ld, row0, valid_rows, col0, D, vec);
  }
};

/// Key tiles 0 .. queue_tiles - 1 from the queue (its type TQ), then the in-batch teacher rows
/// (their own type TT: fp32 teacher keys are never rounded to a 16-bit queue type).
template <class TQ, class TT>
struct queue_then_batch_keys {
  const TQ* queue;
  index_t ldq, queue_rows, queue_tiles;
  const TT* y;
  index_t ldy, M, D;
  bool vec_q, vec_y;
  __device__ DISTILL_FORCEINLINE void issue(index_t tile, index_t col0, unsigned char* buf) const {
    if (tile < queue_tiles) {
      const index_t key0 = tile * tile_keys;
      flash::load_tile<tile_keys>(reinterpret_cast<TQ*>(buf), queue, ldq, key0, imin(tile_keys, queue_rows - key0), col0, D, vec_q);
    } else {
      const index_t key0 = (tile - queue_tiles) * tile_keys;
      flash::load_tile<tile_keys>(reinterpret_cast<TT*>(buf), y, ldy, key0, imin(tile_keys, M - key0), col0, D, vec_y);
    }
  }
  template <class F>
  __device__ DISTILL_FORCEINLINE void visit(index_t tile, unsigned char* buf, F&& f) const {
    if constexpr (std::is_same_v<TQ, TT>) {
      f(reinterpret_cast<const TQ*>(buf));
    } else {
      if (tile < queue_tiles) f(reinterpret_cast<const TQ*>(buf));
      else f(reinterpret_cast<const TT*>(buf));
    }
  }
};

/// Key tiles of one matrix (the student tokens, for the in-batch key gradient).
template <class T>
struct matrix_keys {
  const T* g;
  index_t ld, rows, D;
  bool vec;
  __device__ DISTILL_FORCEINLINE void issue(index_t tile, index_t col0, unsigned char* buf) const {
    const index_t key0 = tile * tile_keys;
    flash::load_tile<tile_keys>(reinterpret_cast<T*>(buf), g, ld, key0, imin(tile_keys, rows - key0), col0, D, vec);
  }
  template <class F>
  __device__ DISTILL_FORCEINLINE void visit(index_t, unsigned char* buf, F&& f) const {
    f(reinterpret_cast<const T*>(buf));
  }
};

template <class V>
std::size_t key_tile_bytes() {
  return flash::operand_bytes<tile_keys, V>();
}

// ---------------------------------------------------------------------------------------------
// 2. keys: logits, online softmax and P K per (64 tokens, key split, column block)
// ---------------------------------------------------------------------------------------------
template <class TS, class TT, class TQ>
struct keys_args : token_operands<TS, TT> {
  const TQ* queue;
  index_t ldq;
  index_t queue_rows;  // valid queue keys n
  const std::int64_t* queue_ids;
  index_t queue_ids_stride;
  float* part_m;
  float* part_l;
  float* part_acc;
  index_t queue_tiles, total_tiles;
  std::size_t key_bytes;  // one key buffer: the larger of the queue's and the teacher's tiles
  int ksplits, nchunks, stages;
  bool vec_z, vec_q, vec_y;
};

/// The online softmax of one key tile over the block's 64 tokens (8 rows per warp, 2 keys per
/// lane; every lane of a warp holds the same row state). Turns the logits in ss into
/// P_ib / ||y_b|| for raw teacher keys (P_ij for the normalised queue) and sets alpha.
template <int SLd, class TS, class TT, class TQ>
struct online_softmax {
  const keys_args<TS, TT, TQ>& a;
  index_t row0;
  float m_r[8], l_r[8], scale_r[8];
  std::int64_t id_r[8];
  bool valid_r[8];

  __device__ online_softmax(const keys_args<TS, TT, TQ>& args, index_t first_row) : a(args), row0(first_row) {
    const int warp = threadIdx.x / 32;
#pragma unroll
    for (int rr = 0; rr < 8; ++rr) {
      const index_t r = row0 + warp * 8 + rr;
      valid_r[rr] = r < a.M && token_valid(a.mask, a.mask_stride, r);
      scale_r[rr] = valid_r[rr] ? a.inv_tau / fmaxf(a.norm_q[r], a.eps) : 0.0f;
      id_r[rr] = r < a.M ? token_id(a.ids, a.ids_stride, r) : no_sample_id;
      m_r[rr] = neg_infinity<float>();
      l_r[rr] = 0.0f;
    }
  }

  __device__ DISTILL_FORCEINLINE void operator()(index_t tile, float* ss, float* alpha) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bool inbatch = tile >= a.queue_tiles;
    const index_t key0 = inbatch ? (tile - a.queue_tiles) * tile_keys : tile * tile_keys;
    const index_t nkeys = imin(tile_keys, (inbatch ? a.M : a.queue_rows) - key0);
    float col_scale[2];
    bool col_ok[2];
    std::int64_t col_id[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = lane + 32 * e;
      const index_t j = key0 + c;
      col_ok[e] = c < nkeys;
      col_scale[e] = 1.0f;
      col_id[e] = no_sample_id;
      if (col_ok[e]) {
        if (inbatch) {
          col_scale[e] = 1.0f / fmaxf(a.norm_k[j], a.eps);
          col_id[e] = token_id(a.ids, a.ids_stride, j);
          if (!token_valid(a.mask, a.mask_stride, j)) col_ok[e] = false;
        } else if (a.queue_ids != nullptr) {
          col_id[e] = a.queue_ids[j * a.queue_ids_stride];
        }
      }
    }
#pragma unroll
    for (int rr = 0; rr < 8; ++rr) {
      const int rl = warp * 8 + rr;
      const index_t r = row0 + rl;
      float x[2];
      bool ok[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const index_t j = key0 + lane + 32 * e;
        ok[e] = valid_r[rr] && col_ok[e] &&
                !(inbatch ? token_nce_detail::inbatch_excluded(r, j, true, id_r[rr], col_id[e])
                          : token_nce_detail::same_sample(id_r[rr], col_id[e]));
        x[e] = ok[e] ? ss[rl * SLd + lane + 32 * e] * scale_r[rr] * col_scale[e] : neg_infinity<float>();
      }
      const float tile_max = warp_max(fmaxf(x[0], x[1]));
      const float m_new = fmaxf(m_r[rr], tile_max);
      const bool none = m_new == neg_infinity<float>();
      const float alpha_r = none ? 1.0f : exp_(m_r[rr] - m_new);
      float p[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) p[e] = ok[e] ? exp_(x[e] - m_new) : 0.0f;  // a NaN logit stays NaN
      l_r[rr] = l_r[rr] * alpha_r + warp_sum(p[0] + p[1]);
      m_r[rr] = m_new;
#pragma unroll
      for (int e = 0; e < 2; ++e) ss[rl * SLd + lane + 32 * e] = p[e] * col_scale[e];  // P_ib / ||y_b|| for raw teacher keys
      if (lane == 0) alpha[rl] = alpha_r;
    }
  }

  /// This split's (m, l) of the block's rows.
  __device__ DISTILL_FORCEINLINE void store(int split) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane != 0) return;
#pragma unroll
    for (int rr = 0; rr < 8; ++rr) {
      const index_t r = row0 + warp * 8 + rr;
      if (r < a.M) {
        a.part_m[static_cast<index_t>(split) * a.M + r] = m_r[rr];
        a.part_l[static_cast<index_t>(split) * a.M + r] = l_r[rr];
      }
    }
  }
};

template <matmul_precision P, bool WithGrad, class TS, class TT, class TQ>
__global__ void __launch_bounds__(flash::threads, 1) token_nce_keys_block_per_row_tile_kernel(const keys_args<TS, TT, TQ> a) {
  using policy = flash::policy_t<P>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const flash::smem_view<policy, TS> sm(smem_raw, a.stages, a.key_bytes);
  const index_t row0 = static_cast<index_t>(blockIdx.x) * tile_rows;
  const int split = blockIdx.y, dz = blockIdx.z;
  const index_t tile_begin = a.total_tiles * split / a.ksplits, tile_end = a.total_tiles * (split + 1) / a.ksplits;
  const int acc_cols = static_cast<int>(imin(chunk_cols, a.D - static_cast<index_t>(dz) * chunk_cols));

  online_softmax<policy::s_ld, TS, TT, TQ> softmax(a, row0);
  policy pol;
  pol.zero_logits();
  if constexpr (WithGrad) pol.zero_acc();
  const row_tile<TS> rows{a.z, a.ldz, row0, imin(tile_rows, a.M - row0), a.D, a.vec_z};
  const queue_then_batch_keys<TQ, TT> keys{a.queue, a.ldq, a.queue_rows, a.queue_tiles, a.y, a.ldy, a.M, a.D, a.vec_q, a.vec_y};
  flash::flash_tile_loop<policy, WithGrad>(pol, sm, rows, keys, softmax, tile_begin, tile_end, a.nchunks, dz, a.stages, a.D,
                                           acc_cols);
  if (dz == 0) softmax.store(split);
  if constexpr (WithGrad)
    pol.store_acc(a.part_acc + static_cast<index_t>(split) * a.M * a.D, a.D, row0, a.M, static_cast<index_t>(dz) * chunk_cols, acc_cols);
}

// ---------------------------------------------------------------------------------------------
// 3. finalize: one warp per token
// ---------------------------------------------------------------------------------------------
template <class TS, class TT, class GS, class GT>
struct finalize_args : token_operands<TS, TT> {
  const float *s0, *part_m, *part_l, *part_acc;
  const int* valid_count;
  float* lse;
  float* tok_loss;
  float* loss_none;  // loss output for reduction::none (or nullptr)
  index_t loss_stride;
  float* per_token;
  index_t per_token_stride;
  GS* grad_student;
  index_t ld_gs;
  GT* grad_teacher;  // nullptr: no teacher gradient here
  index_t ld_gt;
  float* gk;         // teacher in-batch: positive term written here instead (nullptr otherwise)
  float grad_scale;
  distill::reduction reduction;
  int ksplits;
  bool accumulate;
};

template <class TS, class TT, class GS, class GT>
__global__ void __launch_bounds__(256) token_nce_finalize_warp_per_token_kernel(const finalize_args<TS, TT, GS, GT> a) {
  __shared__ float split_weight[8][max_splits];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const index_t i = static_cast<index_t>(blockIdx.x) * 8 + warp;
  if (i >= a.M) return;  // whole warp
  const bool valid = token_valid(a.mask, a.mask_stride, i);
  const index_t D = a.D;
  if (!valid) {
    if (lane == 0) {
      a.tok_loss[i] = 0.0f;
      a.lse[i] = 0.0f;
      if (a.loss_none) a.loss_none[i * a.loss_stride] = 0.0f;
      if (a.per_token) a.per_token[i * a.per_token_stride] = 0.0f;
    }
    for (index_t d = lane; d < D; d += 32) {
      if (a.grad_student && !a.accumulate) a.grad_student[i * a.ld_gs + d] = store<GS>(0.0f);
      if (a.gk) a.gk[i * D + d] = 0.0f;
      else if (a.grad_teacher && !a.accumulate) a.grad_teacher[i * a.ld_gt + d] = store<GT>(0.0f);
    }
    return;
  }
  const auto r = token_nce_detail::merge_row(a.s0[i], a.part_m + i, a.part_l + i, a.ksplits, a.M);
  if (lane == 0) {
    a.tok_loss[i] = r.loss;
    a.lse[i] = r.lse;
    if (a.loss_none) a.loss_none[i * a.loss_stride] = r.loss;
    if (a.per_token) a.per_token[i * a.per_token_stride] = r.loss;
  }
  if (a.grad_student == nullptr && a.grad_teacher == nullptr && a.gk == nullptr) return;
  const float w = token_nce_detail::token_weight(true, a.reduction, static_cast<float>(*a.valid_count), static_cast<float>(a.M));
  const float c = a.grad_scale * w * a.inv_tau;
  const float nq = a.norm_q[i], nk = a.norm_k[i];
  const float invq = 1.0f / fmaxf(nq, a.eps), invk = 1.0f / fmaxf(nk, a.eps);
  const TS* z = a.z + i * a.ldz;
  const TT* y = a.y + i * a.ldy;
  if (a.grad_student) {
    for (int s = lane; s < a.ksplits; s += 32) split_weight[warp][s] = token_nce_detail::part_weight(a.part_m[s * a.M + i], r);
    __syncwarp();
    const auto gq = [&](index_t d) {
      float neg = 0.0f;
      for (int s = 0; s < a.ksplits; ++s) neg = fmaf(split_weight[warp][s], a.part_acc[(static_cast<index_t>(s) * a.M + i) * D + d], neg);
      return c * ((r.pi0 - 1.0f) * load<float>(y[d]) * invk + neg);
    };
    float dot = 0.0f;
    for (index_t d = lane; d < D; d += 32) dot = fmaf(load<float>(z[d]) * invq, gq(d), dot);
    dot = warp_sum(dot);
    const bool unclamped = nq > a.eps;
    for (index_t d = lane; d < D; d += 32) {
      float v = token_nce_detail::normalize_backward(gq(d), load<float>(z[d]) * invq, dot, invq, unclamped);
      GS& out = a.grad_student[i * a.ld_gs + d];
      if (a.accumulate) v += load<float>(out);
      out = store<GS>(v);
    }
  }
  const float cp = c * (r.pi0 - 1.0f);
  if (a.gk) {
    for (index_t d = lane; d < D; d += 32) a.gk[i * D + d] = cp * load<float>(z[d]) * invq;
  } else if (a.grad_teacher) {
    float dot = 0.0f;
    for (index_t d = lane; d < D; d += 32) dot = fmaf(load<float>(y[d]) * invk, cp * load<float>(z[d]) * invq, dot);
    dot = warp_sum(dot);
    const bool unclamped = nk > a.eps;
    for (index_t d = lane; d < D; d += 32) {
      float v = token_nce_detail::normalize_backward(cp * load<float>(z[d]) * invq, load<float>(y[d]) * invk, dot, invk, unclamped);
      GT& out = a.grad_teacher[i * a.ld_gt + d];
      if (a.accumulate) v += load<float>(out);
      out = store<GT>(v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 4. teacher gradient through the in-batch negatives (only with grad_teacher + in-batch):
//    gk[b] += sum_i c_i pi_ib z^_i / ||z_i||, c_i = grad_scale w_i / tau, pi_ib = e^{s_ib - lse_i},
//    on the flash tiles with rows = teacher keys b and key tiles = student tokens i.
// ---------------------------------------------------------------------------------------------
template <class TS, class TT>
struct key_grad_args : token_operands<TS, TT> {
  const float* lse;
  const int* valid_count;
  float* part_acc;  // [ksplits][M][D] split sums
  std::size_t key_bytes;
  float grad_scale;
  reduction red;
  int ksplits, nchunks, stages;
  bool vec_z, vec_y;
};

/// W[b, i] = c_i e^{s_ib - lse_i} / ||z_i|| for the block's 64 teacher keys b (8 per warp) and a
/// tile of 64 tokens i (2 per lane); zero where token i is masked or excludes key b.
template <int SLd, class TS, class TT>
struct inbatch_weights {
  const key_grad_args<TS, TT>& a;
  index_t row0;
  float c_scale;  // grad_scale w / tau of a valid token
  float invk_r[8];
  std::int64_t id_r[8];
  bool valid_r[8];

  __device__ inbatch_weights(const key_grad_args<TS, TT>& args, index_t first_row) : a(args), row0(first_row) {
    const int warp = threadIdx.x / 32;
    c_scale = a.grad_scale *
              token_nce_detail::token_weight(true, a.red, static_cast<float>(*a.valid_count), static_cast<float>(a.M)) * a.inv_tau;
#pragma unroll
    for (int rr = 0; rr < 8; ++rr) {
      const index_t b = row0 + warp * 8 + rr;
      valid_r[rr] = b < a.M && token_valid(a.mask, a.mask_stride, b);
      invk_r[rr] = b < a.M ? 1.0f / fmaxf(a.norm_k[b], a.eps) : 0.0f;
      id_r[rr] = b < a.M ? token_id(a.ids, a.ids_stride, b) : no_sample_id;
    }
  }

  __device__ DISTILL_FORCEINLINE void operator()(index_t tile, float* ss, float* alpha) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float invq[2], lse[2];
    std::int64_t id[2];
    bool ok[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const index_t i = tile * tile_keys + lane + 32 * e;
      ok[e] = i < a.M && token_valid(a.mask, a.mask_stride, i);
      invq[e] = ok[e] ? 1.0f / fmaxf(a.norm_q[i], a.eps) : 0.0f;
      lse[e] = ok[e] ? a.lse[i] : 0.0f;
      id[e] = ok[e] ? token_id(a.ids, a.ids_stride, i) : no_sample_id;
    }
#pragma unroll
    for (int rr = 0; rr < 8; ++rr) {
      const int rl = warp * 8 + rr;
      const index_t b = row0 + rl;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const index_t i = tile * tile_keys + lane + 32 * e;
        float w = 0.0f;
        if (ok[e] && b < a.M && !token_nce_detail::inbatch_excluded(i, b, valid_r[rr], id[e], id_r[rr])) {
          const float s = ss[rl * SLd + lane + 32 * e] * invq[e] * invk_r[rr] * a.inv_tau;
          w = exp_(s - lse[e]) * c_scale * invq[e];
        }
        ss[rl * SLd + lane + 32 * e] = w;
      }
      if (lane == 0) alpha[rl] = 1.0f;
    }
  }
};

template <matmul_precision P, class TS, class TT>
__global__ void __launch_bounds__(flash::threads, 1) token_nce_inbatch_key_grad_block_per_key_tile_kernel(const key_grad_args<TS, TT> a) {
  using policy = flash::policy_t<P>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const flash::smem_view<policy, TT> sm(smem_raw, a.stages, a.key_bytes);
  const index_t row0 = static_cast<index_t>(blockIdx.x) * tile_rows;
  const int split = blockIdx.y, dz = blockIdx.z;
  const index_t tiles = ceil_div<index_t>(a.M, tile_keys);
  const index_t tile_begin = tiles * split / a.ksplits, tile_end = tiles * (split + 1) / a.ksplits;
  const int acc_cols = static_cast<int>(imin(chunk_cols, a.D - static_cast<index_t>(dz) * chunk_cols));

  inbatch_weights<policy::s_ld, TS, TT> weigh(a, row0);
  policy pol;
  pol.zero_logits();
  pol.zero_acc();
  const row_tile<TT> rows{a.y, a.ldy, row0, imin(tile_rows, a.M - row0), a.D, a.vec_y};
  const matrix_keys<TS> keys{a.z, a.ldz, a.M, a.D, a.vec_z};
  flash::flash_tile_loop<policy, true>(pol, sm, rows, keys, weigh, tile_begin, tile_end, a.nchunks, dz, a.stages, a.D, acc_cols);
  pol.store_acc(a.part_acc + static_cast<index_t>(split) * a.M * a.D, a.D, row0, a.M, static_cast<index_t>(dz) * chunk_cols, acc_cols);
}

/// grad_teacher[i] (+)= B2 backward of gk[i] + the key-gradient split sums, one warp per token.
template <class TT, class GT>
__global__ void __launch_bounds__(256) token_nce_teacher_grad_warp_per_token_kernel(const TT* __restrict__ y, index_t ldy,
                                                                                    const float* __restrict__ norm_k,
                                                                                    const float* __restrict__ gk,
                                                                                    const float* __restrict__ part, int splits,
                                                                                    GT* __restrict__ grad, index_t ld_gt, index_t M,
                                                                                    index_t D, float eps, bool accumulate) {
  const index_t i = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= M) return;
  const float nk = norm_k[i], invk = 1.0f / fmaxf(nk, eps);
  const auto g = [&](index_t d) {
    float v = gk[i * D + d];
    for (int s = 0; s < splits; ++s) v += part[(static_cast<index_t>(s) * M + i) * D + d];
    return v;
  };
  float dot = 0.0f;
  for (index_t d = lane; d < D; d += 32) dot = fmaf(load<float>(y[i * ldy + d]) * invk, g(d), dot);
  dot = warp_sum(dot);
  for (index_t d = lane; d < D; d += 32) {
    float v = token_nce_detail::normalize_backward(g(d), load<float>(y[i * ldy + d]) * invk, dot, invk, nk > eps);
    if (accumulate) v += load<float>(grad[i * ld_gt + d]);
    grad[i * ld_gt + d] = store<GT>(v);
  }
}

// ---------------------------------------------------------------------------------------------
// 5. reduced loss: one block, fixed summation order
// ---------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(1024) token_nce_reduce_loss_single_block_kernel(const float* __restrict__ tok_loss,
                                                                                  const std::uint8_t* __restrict__ mask,
                                                                                  index_t mask_stride, const int* __restrict__ valid_count,
                                                                                  index_t M, reduction red, float* __restrict__ loss) {
  __shared__ float smem[32];
  const float w = token_nce_detail::token_weight(true, red, static_cast<float>(*valid_count), static_cast<float>(M));
  float s = 0.0f;
  for (index_t i = threadIdx.x; i < M; i += 1024)
    if (token_valid(mask, mask_stride, i)) s += tok_loss[i];
  s = block_sum<1024>(s, smem);
  if (threadIdx.x == 0) loss[0] = s * w;
}

/// Calls f(std::integral_constant<matmul_precision, P>) for the run-time precision.
template <class F>
status with_precision(matmul_precision p, F&& f) {
  switch (p) {
    case matmul_precision::tf32: return f(std::integral_constant<matmul_precision, matmul_precision::tf32>{});
    case matmul_precision::bf16: return f(std::integral_constant<matmul_precision, matmul_precision::bf16>{});
    default: return f(std::integral_constant<matmul_precision, matmul_precision::fp32>{});
  }
}

/// Double-buffered key tiles when they fit the device's shared memory (and max_stages allows),
/// else one buffer: each step then waits for its own key chunk instead of prefetching the next.
template <class Policy, class TR>
int stages_for(std::size_t key_bytes, int max_stages) {
  const std::size_t optin = static_cast<std::size_t>(current_device_properties().smem_per_block_optin);
  return max_stages >= 2 && flash::smem_bytes<Policy, TR>(2, key_bytes) <= optin ? 2 : 1;
}

template <matmul_precision P, bool WithGrad, class TS, class TT, class TQ>
status launch_keys(const char* fn, cudaStream_t stream, keys_args<TS, TT, TQ> args, const plan& p, int max_stages) {
  using policy = flash::policy_t<P>;
  auto kernel = token_nce_keys_block_per_row_tile_kernel<P, WithGrad, TS, TT, TQ>;
  args.stages = stages_for<policy, TS>(args.key_bytes, max_stages);
  const std::size_t bytes = flash::smem_bytes<policy, TS>(args.stages, args.key_bytes);
  DISTILL_TRY(allow_dynamic_smem(fn, kernel, bytes));
  const dim3 grid(static_cast<unsigned>(p.row_tiles), static_cast<unsigned>(p.ksplits), static_cast<unsigned>(p.dsplits));
  kernel<<<grid, flash::threads, bytes, stream>>>(args);
  return launch_status(fn, stream);
}

template <matmul_precision P, class TS, class TT>
status launch_key_grad(const char* fn, cudaStream_t stream, key_grad_args<TS, TT> args, int max_stages) {
  using policy = flash::policy_t<P>;
  auto kernel = token_nce_inbatch_key_grad_block_per_key_tile_kernel<P, TS, TT>;
  args.stages = stages_for<policy, TT>(args.key_bytes, max_stages);
  const std::size_t bytes = flash::smem_bytes<policy, TT>(args.stages, args.key_bytes);
  DISTILL_TRY(allow_dynamic_smem(fn, kernel, bytes));
  const dim3 grid(static_cast<unsigned>(ceil_div<index_t>(args.M, tile_rows)), static_cast<unsigned>(args.ksplits),
                  static_cast<unsigned>(args.nchunks));
  kernel<<<grid, flash::threads, bytes, stream>>>(args);
  return launch_status(fn, stream);
}

template <class V>
bool rows_16b_aligned(const V& v) {
  using T = typename V::value_type;
  return reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0 && (v.extent(0) <= 1 || (v.stride(0) * static_cast<index_t>(sizeof(T))) % 16 == 0);
}

/// The whole CUDA pass. Views were validated by the caller (shapes and options); the workspace
/// holds token_nce_queue_workspace_size bytes. `max_stages` 1 forces the single-buffered key
/// tiles (what a device with too little shared memory runs; tests use it).
template <class TS, class TT, class TQ>
status run(const char* fn, const cuda& ctx, cuda_view<const TS, 2> Z, cuda_view<const TT, 2> Y, const sample_queue<TQ, cuda_space>& queue,
           cuda_view<const std::uint8_t, 1> mask, cuda_view<const std::int64_t, 1> ids, cuda_view<float, 1> loss,
           cuda_view<float, 1> per_token, cuda_view<TS, 2> grad_student, cuda_view<TT, 2> grad_teacher,
           cuda_view<std::byte, 1> workspace, const token_nce_options& opt, int max_stages = 2) {
  const cudaStream_t stream = stream_of(ctx);
  const index_t M = Z.extent(0), D = Z.extent(1);
  const device_properties dp = current_device_properties();
  if (opt.precision != matmul_precision::fp32 && dp.major < 8)
    return fail(errc::unsupported_dtype, fn, "TF32 and BF16 precision need tensor cores of compute capability 8.0 or newer");
  const bool want_grad = !grad_student.empty() || !grad_teacher.empty();
  const plan p = make_plan(M, D, queue.capacity(), opt.in_batch_negatives, want_grad, dp.sms);
  workspace_carver carver(workspace.data());
  const scratch ws(carver, p);

  const float inv_tau = 1.0f / opt.temperature;
  const float eps = opt.normalize_eps;
  const std::uint8_t* mask_ptr = mask.empty() ? nullptr : mask.data();
  const index_t mask_stride = mask.empty() ? 0 : mask.stride(0);
  const std::int64_t* ids_ptr = ids.empty() ? nullptr : ids.data();
  const index_t ids_stride = ids.empty() ? 0 : ids.stride(0);

  // 1. prepare
  DISTILL_CUDA_TRY(cudaMemsetAsync(ws.count, 0, sizeof(int), stream));
  token_nce_prepare_warp_per_token_kernel<TS, TT><<<static_cast<unsigned>(ceil_div<index_t>(M, 8)), 256, 0, stream>>>(
      Z.data(), Z.stride(0), Y.data(), Y.stride(0), M, D, mask_ptr, mask_stride, inv_tau, eps, ws.norm_q, ws.norm_k, ws.s0, ws.count);
  DISTILL_TRY(launch_status(fn, stream));

  token_operands<TS, TT> tokens{};
  tokens.z = Z.data();
  tokens.ldz = Z.stride(0);
  tokens.y = Y.data();
  tokens.ldy = Y.stride(0);
  tokens.mask = mask_ptr;
  tokens.mask_stride = mask_stride;
  tokens.ids = ids_ptr;
  tokens.ids_stride = ids_stride;
  tokens.norm_q = ws.norm_q;
  tokens.norm_k = ws.norm_k;
  tokens.M = M;
  tokens.D = D;
  tokens.eps = eps;
  tokens.inv_tau = inv_tau;

  // 2. keys
  keys_args<TS, TT, TQ> ka{};
  static_cast<token_operands<TS, TT>&>(ka) = tokens;
  ka.queue = queue.keys().empty() ? nullptr : queue.keys().data();
  ka.ldq = queue.keys().empty() ? 0 : queue.keys().stride(0);
  ka.queue_rows = queue.size();
  ka.queue_ids = queue.has_ids() ? queue.ids().data() : nullptr;
  ka.queue_ids_stride = queue.has_ids() ? queue.ids().stride(0) : 0;
  ka.part_m = ws.part_m;
  ka.part_l = ws.part_l;
  ka.part_acc = ws.acc;
  ka.queue_tiles = ceil_div<index_t>(queue.size(), tile_keys);
  ka.total_tiles = ka.queue_tiles + (opt.in_batch_negatives ? ceil_div<index_t>(M, tile_keys) : 0);
  ka.key_bytes = std::max(key_tile_bytes<TQ>(), opt.in_batch_negatives ? key_tile_bytes<TT>() : std::size_t(0));
  ka.ksplits = p.ksplits;
  ka.nchunks = p.nchunks;
  ka.vec_z = rows_16b_aligned(Z);
  ka.vec_q = queue.keys().empty() || rows_16b_aligned(queue.keys());
  ka.vec_y = rows_16b_aligned(Y);
  DISTILL_TRY(with_precision(opt.precision, [&](auto prec) -> status {
    constexpr matmul_precision P = decltype(prec)::value;
    return want_grad ? launch_keys<P, true>(fn, stream, ka, p, max_stages) : launch_keys<P, false>(fn, stream, ka, p, max_stages);
  }));

  // 3. finalize
  const bool teacher_inbatch = !grad_teacher.empty() && opt.in_batch_negatives;
  finalize_args<TS, TT, TS, TT> fa{};
  static_cast<token_operands<TS, TT>&>(fa) = tokens;
  fa.s0 = ws.s0;
  fa.part_m = ws.part_m;
  fa.part_l = ws.part_l;
  fa.part_acc = ws.acc;
  fa.valid_count = ws.count;
  fa.lse = ws.lse;
  fa.tok_loss = ws.loss;
  fa.loss_none = (!loss.empty() && opt.reduction == reduction::none) ? loss.data() : nullptr;
  fa.loss_stride = loss.empty() ? 0 : loss.stride(0);
  fa.per_token = per_token.empty() ? nullptr : per_token.data();
  fa.per_token_stride = per_token.empty() ? 0 : per_token.stride(0);
  fa.grad_student = grad_student.empty() ? nullptr : grad_student.data();
  fa.ld_gs = grad_student.empty() ? 0 : grad_student.stride(0);
  fa.grad_teacher = (grad_teacher.empty() || teacher_inbatch) ? nullptr : grad_teacher.data();
  fa.ld_gt = grad_teacher.empty() ? 0 : grad_teacher.stride(0);
  fa.gk = teacher_inbatch ? ws.gk : nullptr;
  fa.grad_scale = opt.grad_scale;
  fa.reduction = opt.reduction;
  fa.ksplits = p.ksplits;
  fa.accumulate = opt.accumulate;
  token_nce_finalize_warp_per_token_kernel<TS, TT, TS, TT><<<static_cast<unsigned>(ceil_div<index_t>(M, 8)), 256, 0, stream>>>(fa);
  DISTILL_TRY(launch_status(fn, stream));

  // 4. teacher gradient through in-batch negatives (its split sums reuse the accumulators,
  //    which finalize has consumed)
  if (teacher_inbatch) {
    key_grad_args<TS, TT> kg{};
    static_cast<token_operands<TS, TT>&>(kg) = tokens;
    kg.lse = ws.lse;
    kg.valid_count = ws.count;
    kg.part_acc = ws.acc;
    kg.key_bytes = key_tile_bytes<TS>();
    kg.grad_scale = opt.grad_scale;
    kg.red = opt.reduction;
    kg.ksplits = static_cast<int>(std::min<index_t>(p.ksplits, ceil_div<index_t>(M, tile_keys)));
    kg.nchunks = p.nchunks;
    kg.vec_z = rows_16b_aligned(Z);
    kg.vec_y = rows_16b_aligned(Y);
    DISTILL_TRY(with_precision(opt.precision, [&](auto prec) -> status {
      return launch_key_grad<decltype(prec)::value>(fn, stream, kg, max_stages);
    }));
    token_nce_teacher_grad_warp_per_token_kernel<TT, TT><<<static_cast<unsigned>(ceil_div<index_t>(M, 8)), 256, 0, stream>>>(
        Y.data(), Y.stride(0), ws.norm_k, ws.gk, ws.acc, kg.ksplits, grad_teacher.data(), grad_teacher.stride(0), M, D, eps,
        opt.accumulate);
    DISTILL_TRY(launch_status(fn, stream));
  }

  // 5. reduced loss
  if (!loss.empty() && opt.reduction != reduction::none) {
    token_nce_reduce_loss_single_block_kernel<<<1, 1024, 0, stream>>>(ws.loss, mask_ptr, mask_stride, ws.count, M, opt.reduction,
                                                                      loss.data());
    DISTILL_TRY(launch_status(fn, stream));
  }
  return {};
}

template <class TS, class TT, class TQ>
constexpr void static_check_cuda_types() {
  static_assert(is_supported_float_v<TS> && !std::is_same_v<std::remove_cv_t<TS>, double>,
                "token_nce_queue (CUDA): student tokens must be float, float16 or bfloat16");
  static_assert(is_supported_float_v<TT> && !std::is_same_v<std::remove_cv_t<TT>, double>,
                "token_nce_queue (CUDA): teacher tokens must be float, float16 or bfloat16");
  static_assert(!std::is_same_v<TQ, double>, "token_nce_queue (CUDA): queue keys must be float, float16 or bfloat16");
}

template <class VS, class VT, class TQ, class VM, class VI>
status check_device_inputs(const char* fn, const VS& student, const VT& teacher, const sample_queue<TQ, cuda_space>& queue, const VM& mask,
                           const VI& ids) {
  DISTILL_TRY(check_device_view(fn, "student", student));
  DISTILL_TRY(check_device_view(fn, "teacher", teacher));
  DISTILL_TRY(check_device_view(fn, "token_mask", mask));
  DISTILL_TRY(check_device_view(fn, "token_ids", ids));
  if (!queue.keys().empty()) {
    DISTILL_TRY(check_device_view(fn, "queue keys", queue.keys()));
    DISTILL_TRY(check_device_view(fn, "queue ids", queue.ids()));
  }
  return {};
}

/// The gradient outputs' shapes (as on the CPU), plus the unit inner stride the kernels need.
template <class VGS, class VGT, class VS>
status check_grad_outputs(const char* fn, const VGS& grad_student, const VGT& grad_teacher, const VS& student) {
  DISTILL_TRY(token_nce_detail::check_grad_outputs(fn, grad_student, grad_teacher, student));
  DISTILL_TRY(check_inner_contiguous(fn, "grad_student", grad_student));
  if (!grad_teacher.empty()) DISTILL_TRY(check_inner_contiguous(fn, "grad_teacher", grad_teacher));
  return {};
}

}  // namespace cuda_detail::nce

/// Bytes of device scratch for M tokens of dimension D against a queue of capacity K (the
/// number of key splits depends on the current device's SM count: query on the device you run
/// on). T (the token type) is not used on CUDA; it is there so both overloads are called alike.
template <class T = float>
[[nodiscard]] std::size_t token_nce_queue_workspace_size(const cuda& /*ctx*/, index_t tokens, index_t dim, index_t queue_capacity,
                                                         const token_nce_options& opt = {}) {
  return cuda_detail::nce::workspace_bytes(tokens, dim, queue_capacity, opt.in_batch_negatives,
                                           cuda_detail::current_device_properties().sms);
}

namespace token_nce_detail {

/// The CUDA engine behind the entry points (declared in include/distill/contrastive/token_nce.hpp):
/// device checks, then the launches. Asynchronous on ctx.stream; opt.precision picks FFMA
/// (fp32), TF32 or BF16 tensor cores; accumulation is float.
template <>
struct backend<cuda_space> {
  template <class TS, class TT, class TQ>
  static status run(const char* fn, const cuda& ctx, const token_nce_inputs<TS, TT, cuda_space>& in,
                    const sample_queue<TQ, cuda_space>& queue, const token_nce_outputs<TS, TT, cuda_space>& out,
                    cuda_view<std::byte, 1> workspace, const token_nce_options& opt) {
    cuda_detail::nce::static_check_cuda_types<TS, TT, TQ>();
    if (!out.grad_student.empty() || !out.grad_teacher.empty())
      DISTILL_TRY(cuda_detail::nce::check_grad_outputs(fn, out.grad_student, out.grad_teacher, in.student));
    DISTILL_TRY(cuda_detail::nce::check_device_inputs(fn, in.student, in.teacher, queue, in.token_mask, in.token_ids));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", out.loss));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "per_token_loss", out.per_token_loss));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_student", out.grad_student));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_teacher", out.grad_teacher));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "workspace", workspace));
    return cuda_detail::nce::run<TS, TT, TQ>(fn, ctx, in.student, in.teacher, queue, in.token_mask, in.token_ids, out.loss,
                                             out.per_token_loss, out.grad_student, out.grad_teacher, workspace, opt);
  }
};

}  // namespace token_nce_detail

}  // namespace distill
