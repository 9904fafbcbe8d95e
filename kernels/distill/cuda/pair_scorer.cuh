// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the pair scorer and its supervision loss (math in
//! distill/relational/pair_scorer.hpp). nvcc only.
//!
//! Decomposition: the scorer is O(B N^2 K) next to pairing's O(B N^2 H^2), so every kernel is a
//! plain one-thread-per-output loop or one block per sample:
//!   forward   left/right per object (relational_common.cuh), one thread per pair for the score,
//!             one block per sample for the normalisation (block reductions for softmax_all,
//!             one warp per row for softmax_row);
//!   backward  one block per sample for dL/ds, one thread per (object, k) for the per-object sums
//!             R and S (each a loop over the sample's N partners: no atomics), one thread per
//!             (sample, k) for the mlp's dw2, then relational_common.cuh's reductions;
//!   loss      one block per sample for the sample's loss and units, one block for the reduction
//!             (fixed order), one block per sample for dL/ds.
//! Everything is deterministic (no atomics).

#if !defined(__CUDACC__)
#error "distill/cuda/pair_scorer.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/relational_common.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/relational/pair_scorer.hpp"

namespace distill {
namespace cuda_detail::scorer {

namespace rel = relational;
constexpr int kBlock = 256;

/// Pair validity inside a kernel (object mask + i = j option).
struct pair_valid {
  const std::uint8_t* om = nullptr;
  index_t om_s0 = 0, om_s1 = 0;
  bool self = true;
  __device__ __forceinline__ bool operator()(index_t b, index_t i, index_t j) const {
    const bool pi = om == nullptr || om[b * om_s0 + i * om_s1] != 0;
    const bool pj = om == nullptr || om[b * om_s0 + j * om_s1] != 0;
    return relational_detail::pair_in_set(pi, pj, i, j, self);
  }
};

/// A [B, N, N] float view in device memory (inner stride 1).
struct pairs_ref {
  float* p = nullptr;
  index_t s0 = 0, s1 = 0;
  __device__ __forceinline__ float& operator()(index_t b, index_t i, index_t j) const { return p[b * s0 + i * s1 + j]; }
};
template <class V>
pairs_ref pairs_of(const V& v) {
  if (v.empty()) return {};
  return {const_cast<float*>(v.data()), v.stride(0), v.stride(1)};
}

__global__ void pair_scorer_forward_thread_per_pair_kernel(const float* left, const float* right, pair_valid valid, bool mlp,
                                                           rel::mat_ref w2, rel::vec_ref b2, index_t B, index_t N, index_t K,
                                                           pairs_ref scores) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * N * N) return;
  const index_t b = idx / (N * N), i = (idx / N) % N, j = idx % N;
  if (!valid(b, i, j)) {
    scores(b, i, j) = -INFINITY;
    return;
  }
  const float* a = left + (b * N + i) * K;
  const float* c = right + (b * N + j) * K;
  float s = 0.0f;
  if (mlp) {
    for (index_t k = 0; k < K; ++k) s += fmaxf(a[k] + c[k], 0.0f) * w2(k, 0);
    s += b2(0);
  } else {
    for (index_t k = 0; k < K; ++k) s += a[k] * c[k];
  }
  scores(b, i, j) = s;
}

/// Normalised weights of one sample (one block per sample).
__global__ void __launch_bounds__(kBlock)
    pair_scorer_forward_normalize_block_per_sample_kernel(pairs_ref scores, pair_valid valid, pair_normalization norm, index_t N,
                                                          pairs_ref out) {
  __shared__ float red[kBlock / 32];
  const index_t b = blockIdx.x, NN = N * N;
  if (norm == pair_normalization::sigmoid) {
    for (index_t p = threadIdx.x; p < NN; p += kBlock) {
      const index_t i = p / N, j = p % N;
      out(b, i, j) = valid(b, i, j) ? scorer_detail::sigmoid(scores(b, i, j)) : 0.0f;
    }
    return;
  }
  if (norm == pair_normalization::softmax_all) {
    float mx = -INFINITY;
    for (index_t p = threadIdx.x; p < NN; p += kBlock)
      if (valid(b, p / N, p % N)) mx = fmaxf(mx, scores(b, p / N, p % N));
    mx = block_max<kBlock>(mx, red);
    float z = 0.0f;
    if (mx != -INFINITY)
      for (index_t p = threadIdx.x; p < NN; p += kBlock)
        if (valid(b, p / N, p % N)) z += expf(scores(b, p / N, p % N) - mx);
    z = block_sum<kBlock>(z, red);
    for (index_t p = threadIdx.x; p < NN; p += kBlock) {
      const index_t i = p / N, j = p % N;
      out(b, i, j) = valid(b, i, j) && mx != -INFINITY ? expf(scores(b, i, j) - mx) / z : 0.0f;
    }
    return;
  }
  // softmax_row: one warp per row.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (index_t i = warp; i < N; i += kBlock / 32) {
    float mx = -INFINITY;
    for (index_t j = lane; j < N; j += 32)
      if (valid(b, i, j)) mx = fmaxf(mx, scores(b, i, j));
    mx = warp_max(mx);
    float z = 0.0f;
    if (mx != -INFINITY)
      for (index_t j = lane; j < N; j += 32)
        if (valid(b, i, j)) z += expf(scores(b, i, j) - mx);
    z = warp_sum(z);
    for (index_t j = lane; j < N; j += 32) out(b, i, j) = valid(b, i, j) && mx != -INFINITY ? expf(scores(b, i, j) - mx) / z : 0.0f;
  }
}

/// ds[b, i, j] (dense workspace) = normalisation backward of dm + grad_scores; also written to
/// the optional output `ds_out` (accumulating when asked). 0 outside the valid pairs.
__global__ void __launch_bounds__(kBlock)
    pair_scorer_backward_score_grad_block_per_sample_kernel(pairs_ref m, pairs_ref dm, pairs_ref ds_in, pair_valid valid,
                                                            pair_normalization norm, index_t N, float* ds, pairs_ref ds_out,
                                                            bool accumulate) {
  __shared__ float red[kBlock / 32];
  const index_t b = blockIdx.x, NN = N * N;
  float* dsb = ds + b * NN;
  // Pass 1: normalisation backward into dsb.
  if (dm.p == nullptr || norm == pair_normalization::sigmoid) {
    for (index_t p = threadIdx.x; p < NN; p += kBlock) {
      const index_t i = p / N, j = p % N;
      float g = 0.0f;
      if (valid(b, i, j) && dm.p) {
        const float mm = m(b, i, j);
        g = dm(b, i, j) * mm * (1.0f - mm);
      }
      dsb[p] = g;
    }
  } else if (norm == pair_normalization::softmax_all) {
    float dot = 0.0f;
    for (index_t p = threadIdx.x; p < NN; p += kBlock)
      if (valid(b, p / N, p % N)) dot += m(b, p / N, p % N) * dm(b, p / N, p % N);
    dot = block_sum<kBlock>(dot, red);
    for (index_t p = threadIdx.x; p < NN; p += kBlock) {
      const index_t i = p / N, j = p % N;
      dsb[p] = valid(b, i, j) ? m(b, i, j) * (dm(b, i, j) - dot) : 0.0f;
    }
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (index_t i = warp; i < N; i += kBlock / 32) {
      float dot = 0.0f;
      for (index_t j = lane; j < N; j += 32)
        if (valid(b, i, j)) dot += m(b, i, j) * dm(b, i, j);
      dot = warp_sum(dot);
      for (index_t j = lane; j < N; j += 32) dsb[i * N + j] = valid(b, i, j) ? m(b, i, j) * (dm(b, i, j) - dot) : 0.0f;
    }
  }
  __syncthreads();  // pass 2 reads entries other threads wrote (softmax_row)
  for (index_t p = threadIdx.x; p < NN; p += kBlock) {
    const index_t i = p / N, j = p % N;
    float g = dsb[p];
    if (ds_in.p && valid(b, i, j)) g += ds_in(b, i, j);
    dsb[p] = g;
    if (ds_out.p) ds_out(b, i, j) = accumulate ? ds_out(b, i, j) + g : g;
  }
}

/// R (role i) and S (role j) per object and k: loops over the N partners of the object.
__global__ void pair_scorer_backward_object_sums_thread_per_element_kernel(const float* ds, const float* left, const float* right,
                                                                           bool mlp, rel::mat_ref w2, index_t B, index_t N,
                                                                           index_t K, float* R, float* S) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= 2 * B * N * K) return;
  const bool role_j = idx >= B * N * K;
  const index_t e = role_j ? idx - B * N * K : idx;
  const index_t r = e / K, k = e % K, b = r / N, x = r % N;
  const float* dsb = ds + b * N * N;
  const float mine = (role_j ? right : left)[r * K + k];
  float acc = 0.0f;
  if (mlp) {
    const float w = w2(k, 0);
    for (index_t y = 0; y < N; ++y) {
      const float g = role_j ? dsb[y * N + x] : dsb[x * N + y];  // ds_(x, y) for role i, ds_(y, x) for role j
      const float other = (role_j ? left : right)[(b * N + y) * K + k];
      if (g != 0.0f && mine + other > 0.0f) acc += g * w;
    }
  } else {
    for (index_t y = 0; y < N; ++y) {
      const float g = role_j ? dsb[y * N + x] : dsb[x * N + y];
      if (g != 0.0f) acc += g * (role_j ? left : right)[(b * N + y) * K + k];
    }
  }
  (role_j ? S : R)[e] = acc;
}

/// mlp: per-sample partials of dw2 [B, K] (sum ds relu(z)) and db2 [B] (sum ds).
__global__ void pair_scorer_backward_head_partials_thread_per_element_kernel(const float* ds, const float* left,
                                                                             const float* right, index_t B, index_t N, index_t K,
                                                                             float* pw2, float* pb2) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * (K + 1)) return;
  const index_t b = idx / (K + 1), k = idx % (K + 1);
  const float* dsb = ds + b * N * N;
  float acc = 0.0f;
  for (index_t i = 0; i < N; ++i)
    for (index_t j = 0; j < N; ++j) {
      const float g = dsb[i * N + j];
      if (g == 0.0f) continue;
      if (k == K) acc += g;
      else acc += g * fmaxf(left[(b * N + i) * K + k] + right[(b * N + j) * K + k], 0.0f);
    }
  if (k == K) pb2[b] = acc;
  else pw2[b * K + k] = acc;
}

// ---- loss

struct loss_args {
  pairs_ref s, t;
  pair_valid valid;
  pair_normalization norm = pair_normalization::softmax_all;
  index_t B = 0, N = 0;
};

/// Sample loss and units, or (when grad.p is set) the sample's dL/ds times *scale.
__global__ void __launch_bounds__(kBlock)
    pair_scorer_loss_block_per_sample_kernel(loss_args a, float* per_loss, float* units, const float* scale, pairs_ref grad,
                                             bool accumulate) {
  __shared__ float red[kBlock / 32];
  const index_t b = blockIdx.x, N = a.N, NN = N * N;
  const bool want_grad = grad.p != nullptr;
  const float sc = want_grad ? *scale : 0.0f;
  auto put = [&](index_t i, index_t j, float v) { grad(b, i, j) = accumulate ? grad(b, i, j) + v : v; };
  if (a.norm == pair_normalization::sigmoid) {
    float l = 0.0f, u = 0.0f;
    for (index_t p = threadIdx.x; p < NN; p += kBlock) {
      const index_t i = p / N, j = p % N;
      if (!a.valid(b, i, j)) {
        if (want_grad) put(i, j, 0.0f);
        continue;
      }
      const float s = a.s(b, i, j), t = a.t(b, i, j);
      if (want_grad) put(i, j, sc * (scorer_detail::sigmoid(s) - t));
      else l += scorer_detail::bce_with_logits(s, t), u += 1.0f;
    }
    if (!want_grad) {
      l = block_sum<kBlock>(l, red);
      u = block_sum<kBlock>(u, red);
      if (threadIdx.x == 0) per_loss[b] = l, units[b] = u;
    }
    return;
  }
  if (a.norm == pair_normalization::softmax_all) {
    float z = 0.0f, mx = -INFINITY;
    for (index_t p = threadIdx.x; p < NN; p += kBlock)
      if (a.valid(b, p / N, p % N)) z += a.t(b, p / N, p % N), mx = fmaxf(mx, a.s(b, p / N, p % N));
    z = block_sum<kBlock>(z, red);
    mx = block_max<kBlock>(mx, red);
    float se = 0.0f, ts = 0.0f;
    for (index_t p = threadIdx.x; p < NN; p += kBlock) {
      const index_t i = p / N, j = p % N;
      if (!a.valid(b, i, j)) continue;
      se += expf(a.s(b, i, j) - mx);
      const float t = a.t(b, i, j);
      if (t != 0.0f) ts += t * a.s(b, i, j);
    }
    se = block_sum<kBlock>(se, red);
    ts = block_sum<kBlock>(ts, red);
    const bool skip = !(z > 0.0f);
    const float lse = mx + logf(se);
    if (want_grad) {
      for (index_t p = threadIdx.x; p < NN; p += kBlock) {
        const index_t i = p / N, j = p % N;
        const float g = skip || !a.valid(b, i, j) ? 0.0f : sc * (expf(a.s(b, i, j) - lse) - a.t(b, i, j) / z);
        put(i, j, g);
      }
    } else if (threadIdx.x == 0) {
      per_loss[b] = skip ? 0.0f : lse - ts / z;
      units[b] = skip ? 0.0f : 1.0f;
    }
    return;
  }
  // softmax_row: one warp per row.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float l = 0.0f, u = 0.0f;
  for (index_t i = warp; i < N; i += kBlock / 32) {
    float z = 0.0f, mx = -INFINITY;
    for (index_t j = lane; j < N; j += 32)
      if (a.valid(b, i, j)) z += a.t(b, i, j), mx = fmaxf(mx, a.s(b, i, j));
    z = warp_sum(z);
    mx = warp_max(mx);
    float se = 0.0f, ts = 0.0f;
    for (index_t j = lane; j < N; j += 32) {
      if (!a.valid(b, i, j)) continue;
      se += expf(a.s(b, i, j) - mx);
      const float t = a.t(b, i, j);
      if (t != 0.0f) ts += t * a.s(b, i, j);
    }
    se = warp_sum(se);
    ts = warp_sum(ts);
    const bool skip = !(z > 0.0f);
    const float lse = mx + logf(se);
    if (want_grad) {
      for (index_t j = lane; j < N; j += 32) put(i, j, skip || !a.valid(b, i, j) ? 0.0f : sc * (expf(a.s(b, i, j) - lse) - a.t(b, i, j) / z));
    } else if (!skip) {
      l += lse - ts / z;  // identical in every lane
      u += 1.0f;
    }
  }
  if (!want_grad) {
    // Each warp holds its rows' totals in every lane: keep lane 0's and sum over warps.
    l = block_sum<kBlock>(lane == 0 ? l : 0.0f, red);
    u = block_sum<kBlock>(lane == 0 ? u : 0.0f, red);
    if (threadIdx.x == 0) per_loss[b] = l, units[b] = u;
  }
}

/// Reduced loss (fixed order) and the gradient scale grad_scale / divisor.
__global__ void pair_scorer_loss_reduce_single_warp_kernel(const float* per_loss, const float* units, index_t B, reduction red,
                                                           float grad_scale, float* loss, index_t loss_stride, float* scale) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  float total = 0.0f, total_units = 0.0f;
  for (index_t b = 0; b < B; ++b) total += per_loss[b], total_units += units[b];
  const float inv = safe_inverse(reduction_divisor(red, static_cast<float>(B), total_units));
  if (loss) {
    if (red == reduction::none)
      for (index_t b = 0; b < B; ++b) loss[b * loss_stride] = per_loss[b];
    else
      loss[0] = total * inv;
  }
  *scale = grad_scale * (red == reduction::none ? 1.0f : inv);
}

// ---- host side

/// The workspace regions (core/workspace.hpp): per-object first-layer terms, the score
/// gradient, the per-object sums of the backward, the reduction partials and the loss scalars.
struct scorer_scratch {
  float *left, *right, *ds, *R, *S, *t, *u, *partial, *pw2, *pb2, *per_loss, *units, *scale;
  scorer_scratch(workspace_carver& w, index_t B, index_t N, index_t D, index_t Q, index_t K)
      : left(w.take<float>(B * N * K)),
        right(w.take<float>(B * N * K)),
        ds(w.take<float>(B * N * N)),
        R(w.take<float>(B * N * K)),
        S(w.take<float>(B * N * K)),
        t(w.take<float>(B * K)),
        u(w.take<float>(B * K)),
        partial(w.take<float>(rel::partial_floats(B * N, std::max(std::max(D, Q), index_t(1)), K))),
        pw2(w.take<float>(B * K)),
        pb2(w.take<float>(B)),
        per_loss(w.take<float>(B)),
        units(w.take<float>(B)),
        scale(w.take<float>(1)) {}
};

template <class V>
status check_cuda_view(const char* fn, const char* name, const V& v) {
  if (v.empty()) return {};
  DISTILL_TRY(check_inner_contiguous(fn, name, v));
  return check_device_view(fn, name, v);
}

template <class TW>
status check_weights_device(const char* fn, const pair_scorer_weights<TW, cuda_space>& w) {
  DISTILL_TRY(check_device_view(fn, "weights.w1", w.w1));
  DISTILL_TRY(check_device_view(fn, "weights.b1", w.b1));
  DISTILL_TRY(check_device_view(fn, "weights.w2", w.w2));
  return check_device_view(fn, "weights.b2", w.b2);
}

template <class V>
pair_valid valid_of(const V& om, bool self) {
  pair_valid v;
  if (!om.empty()) v.om = om.data(), v.om_s0 = om.stride(0), v.om_s1 = om.stride(1);
  v.self = self;
  return v;
}

/// left / right per object for either scorer kind.
template <class TO, class TQ, class TW, class OM>
void terms_async(const cuda_view<TO, 3>& o, const cuda_view<TQ, 2>& q, const OM& om, const pair_scorer_weights<TW, cuda_space>& w,
                 const scorer_detail::dims& d, float* left, float* right, cudaStream_t stream) {
  const bool mlp = w.kind == pair_scorer_kind::mlp;
  rel::row_filter ok;
  if (!om.empty()) ok = {om.data(), om.stride(0), om.stride(1), d.N};
  const rel::mat_ref wl = rel::mat_of(w.w1, 0);
  const rel::mat_ref wr = mlp ? rel::mat_of(w.w1, d.D) : rel::mat_of(w.w2, 0);
  const rel::mat_ref wql = rel::mat_of(w.w1, mlp ? 2 * d.D : d.D);
  const rel::mat_ref wqr = mlp ? rel::mat_ref{} : rel::mat_of(w.w2, d.D);
  const rel::vec_ref br = mlp ? rel::vec_ref{} : rel::vec_of(w.b2);
  const unsigned grid = rel::blocks_for(d.B * d.N * d.K);
  rel::relational_object_split_forward_thread_per_element_kernel<<<grid, rel::kThreads1d, 0, stream>>>(
      rel::rows_of3(o), rel::rows_of2(q), ok, wl, wr, wql, wqr, rel::vec_of(w.b1), br, d.B * d.N, d.D, d.Q, d.K, left, right);
}

template <class T>
inline constexpr bool is_float_v = std::is_same_v<std::remove_const_t<T>, float>;

}  // namespace cuda_detail::scorer

/// Bytes of workspace every CUDA scorer entry point needs (forward, backward and the loss).
inline std::size_t pair_scorer_workspace_size(const cuda& /*ctx*/, index_t B, index_t N, index_t D, index_t Q, index_t K) {
  return workspace_carver::size_of<cuda_detail::scorer::scorer_scratch>(std::max<index_t>(B, 1), std::max<index_t>(N, 1),
                                                                        std::max<index_t>(D, 1), std::max<index_t>(Q, 0),
                                                                        std::max<index_t>(K, 1));
}

/// CUDA scorer forward (float). As the CPU overload, plus a workspace.
template <class TO, class TQ, class TW>
[[nodiscard]] status pair_scorer_forward(const cuda& ctx, cuda_view<TO, 3> objects, cuda_view<TQ, 2> question,
                                         cuda_view<const std::uint8_t, 2> object_mask,
                                         const pair_scorer_weights<TW, cuda_space>& weights, cuda_view<float, 3> scores,
                                         cuda_view<float, 3> pair_weights, cuda_view<std::byte, 1> workspace,
                                         const pair_scorer_options& opt = {}) {
  namespace cs = cuda_detail::scorer;
  namespace rel = cuda_detail::relational;
  static_assert(cs::is_float_v<TO> && cs::is_float_v<TQ> && cs::is_float_v<TW>, "the CUDA pair scorer takes float views");
  constexpr const char* fn = "pair_scorer_forward";
  scorer_detail::dims d;
  DISTILL_TRY(scorer_detail::validate_inputs(fn, objects, question, object_mask, weights, d));
  DISTILL_TRY(scorer_detail::validate_pairs_view(fn, "scores", scores, d));
  DISTILL_TRY(check_optional(fn, "pair_weights", pair_weights));
  if (!pair_weights.empty()) DISTILL_TRY(check_shape(fn, "pair_weights", pair_weights, {d.B, d.N, d.N}));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "objects", objects));
  DISTILL_TRY(cs::check_cuda_view(fn, "question", question));
  DISTILL_TRY(cs::check_cuda_view(fn, "object_mask", object_mask));
  DISTILL_TRY(cs::check_cuda_view(fn, "scores", scores));
  DISTILL_TRY(cs::check_cuda_view(fn, "pair_weights", pair_weights));
  DISTILL_TRY(cs::check_weights_device(fn, weights));
  DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, pair_scorer_workspace_size(ctx, d.B, d.N, d.D, d.Q, d.K),
                                                  "pair_scorer_workspace_size"));
  workspace_carver carver(workspace.data());
  const cs::scorer_scratch lay(carver, d.B, d.N, d.D, d.Q, d.K);
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  float* left = lay.left;
  float* right = lay.right;
  cs::terms_async(objects, question, object_mask, weights, d, left, right, stream);
  const auto valid = cs::valid_of(object_mask, opt.include_self_pairs);
  cs::pair_scorer_forward_thread_per_pair_kernel<<<rel::blocks_for(d.B * d.N * d.N), rel::kThreads1d, 0, stream>>>(
      left, right, valid, weights.kind == pair_scorer_kind::mlp, rel::mat_of(weights.w2), rel::vec_of(weights.b2), d.B, d.N, d.K,
      cs::pairs_of(scores));
  if (!pair_weights.empty())
    cs::pair_scorer_forward_normalize_block_per_sample_kernel<<<static_cast<unsigned>(d.B), cs::kBlock, 0, stream>>>(
        cs::pairs_of(scores), valid, opt.normalization, d.N, cs::pairs_of(pair_weights));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA scorer backward (float). As the CPU overload, plus a workspace.
template <class TO, class TQ, class TW, class TM, class TDM, class TDS>
[[nodiscard]] status pair_scorer_backward(const cuda& ctx, cuda_view<TO, 3> objects, cuda_view<TQ, 2> question,
                                          cuda_view<const std::uint8_t, 2> object_mask,
                                          const pair_scorer_weights<TW, cuda_space>& weights, cuda_view<TM, 3> pair_weights,
                                          cuda_view<TDM, 3> grad_pair_weights, cuda_view<TDS, 3> grad_scores,
                                          const pair_scorer_grads<float, cuda_space>& grads, cuda_view<std::byte, 1> workspace,
                                          const pair_scorer_options& opt = {}) {
  namespace cs = cuda_detail::scorer;
  namespace rel = cuda_detail::relational;
  static_assert(cs::is_float_v<TO> && cs::is_float_v<TQ> && cs::is_float_v<TW> && cs::is_float_v<TM> && cs::is_float_v<TDM> &&
                    cs::is_float_v<TDS>,
                "the CUDA pair scorer takes float views");
  constexpr const char* fn = "pair_scorer_backward";
  scorer_detail::dims d;
  DISTILL_TRY(scorer_detail::validate_inputs(fn, objects, question, object_mask, weights, d));
  DISTILL_TRY(scorer_detail::validate_grads(fn, grads, weights, d));
  DISTILL_TRY(check_optional(fn, "grad_pair_weights", grad_pair_weights));
  DISTILL_TRY(check_optional(fn, "grad_scores", grad_scores));
  if (grad_pair_weights.empty() && grad_scores.empty())
    return fail(errc::invalid_argument, fn, "give 'grad_pair_weights', 'grad_scores' or both");
  if (!grad_pair_weights.empty()) {
    DISTILL_TRY(check_shape(fn, "grad_pair_weights", grad_pair_weights, {d.B, d.N, d.N}));
    DISTILL_TRY(scorer_detail::validate_pairs_view(fn, "pair_weights", pair_weights, d));
  }
  if (!grad_scores.empty()) DISTILL_TRY(check_shape(fn, "grad_scores", grad_scores, {d.B, d.N, d.N}));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "objects", objects));
  DISTILL_TRY(cs::check_cuda_view(fn, "question", question));
  DISTILL_TRY(cs::check_cuda_view(fn, "object_mask", object_mask));
  DISTILL_TRY(cs::check_cuda_view(fn, "pair_weights", pair_weights));
  DISTILL_TRY(cs::check_cuda_view(fn, "grad_pair_weights", grad_pair_weights));
  DISTILL_TRY(cs::check_cuda_view(fn, "grad_scores", grad_scores));
  DISTILL_TRY(cs::check_cuda_view(fn, "grads.objects", grads.objects));
  DISTILL_TRY(cs::check_cuda_view(fn, "grads.question", grads.question));
  DISTILL_TRY(cs::check_cuda_view(fn, "grads.scores", grads.scores));
  DISTILL_TRY(cs::check_weights_device(fn, weights));
  DISTILL_TRY(cs::check_weights_device(fn, grads.weights));
  DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, pair_scorer_workspace_size(ctx, d.B, d.N, d.D, d.Q, d.K),
                                                  "pair_scorer_workspace_size"));
  workspace_carver carver(workspace.data());
  const cs::scorer_scratch lay(carver, d.B, d.N, d.D, d.Q, d.K);
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const bool mlp = weights.kind == pair_scorer_kind::mlp;
  float* left = lay.left;
  float* right = lay.right;
  float* ds = lay.ds;
  float* R = lay.R;
  float* S = lay.S;
  cs::terms_async(objects, question, object_mask, weights, d, left, right, stream);
  const auto valid = cs::valid_of(object_mask, opt.include_self_pairs);
  cs::pair_scorer_backward_score_grad_block_per_sample_kernel<<<static_cast<unsigned>(d.B), cs::kBlock, 0, stream>>>(
      cs::pairs_of(pair_weights), cs::pairs_of(grad_pair_weights), cs::pairs_of(grad_scores), valid, opt.normalization, d.N, ds,
      cs::pairs_of(grads.scores), opt.accumulate);
  cs::pair_scorer_backward_object_sums_thread_per_element_kernel<<<rel::blocks_for(2 * d.B * d.N * d.K), rel::kThreads1d, 0,
                                                                   stream>>>(ds, left, right, mlp, rel::mat_of(weights.w2), d.B,
                                                                             d.N, d.K, R, S);
  const auto& gw = grads.weights;
  if (mlp && (!gw.w2.empty() || !gw.b2.empty())) {
    float* pw2 = lay.pw2;
    float* pb2 = lay.pb2;
    cs::pair_scorer_backward_head_partials_thread_per_element_kernel<<<rel::blocks_for(d.B * (d.K + 1)), rel::kThreads1d, 0,
                                                                       stream>>>(ds, left, right, d.B, d.N, d.K, pw2, pb2);
    // Reduce over samples in order: a [B, K] "rows" matrix against ones is the partial-sum kernel's job.
    if (!gw.w2.empty())
      rel::relational_bias_grad_thread_per_element_kernel<<<rel::blocks_for(d.K), rel::kThreads1d, 0, stream>>>(
          pw2, d.B, d.K, rel::out_vec{gw.w2.data(), gw.w2.stride(0)}, opt.accumulate);
    if (!gw.b2.empty())
      rel::relational_bias_grad_thread_per_element_kernel<<<1, rel::kThreads1d, 0, stream>>>(
          pb2, d.B, 1, rel::out_vec{gw.b2.data(), gw.b2.stride(0)}, opt.accumulate);
  }
  rel::object_split_backward_args a;
  a.B = d.B, a.N = d.N, a.D = d.D, a.Q = d.Q, a.K = d.K;
  a.o = rel::rows_of3(objects), a.q = rel::rows_of2(question);
  if (!object_mask.empty()) a.ok = {object_mask.data(), object_mask.stride(0), object_mask.stride(1), d.N};
  a.w_left = rel::mat_of(weights.w1, 0);
  a.w_right = mlp ? rel::mat_of(weights.w1, d.D) : rel::mat_of(weights.w2, 0);
  a.wq_left = rel::mat_of(weights.w1, mlp ? 2 * d.D : d.D);
  if (!mlp) a.wq_right = rel::mat_of(weights.w2, d.D);
  a.R = R, a.S = S, a.t = lay.t, a.u = mlp ? nullptr : lay.u;
  a.partial = lay.partial;
  a.dw_left = rel::out_mat_of(gw.w1, 0);
  a.db_left = rel::out_vec_of(gw.b1);
  if (d.Q > 0) a.dwq_left = rel::out_mat_of(gw.w1, mlp ? 2 * d.D : d.D);
  if (mlp) {
    a.dw_right = rel::out_mat_of(gw.w1, d.D);
  } else {
    a.dw_right = rel::out_mat_of(gw.w2, 0);
    if (d.Q > 0) a.dwq_right = rel::out_mat_of(gw.w2, d.D);
    a.db_right = rel::out_vec_of(gw.b2);
  }
  a.d_objects = rel::out_rows_of3(grads.objects);
  a.d_question = rel::out_mat_of(grads.question);
  a.accumulate = opt.accumulate;
  rel::object_split_backward_async(a, stream);
  return cuda_detail::launch_status(fn, stream);
}

namespace cuda_detail::scorer {
template <class TS, class TT>
status loss_cuda(const char* fn, const cuda& ctx, cuda_view<TS, 3> scores, cuda_view<TT, 3> target,
                 cuda_view<const std::uint8_t, 2> object_mask, cuda_view<float, 1> loss, cuda_view<float, 3> grad_scores,
                 cuda_view<std::byte, 1> workspace, const pair_scorer_options& opt) {
  static_assert(is_float_v<TS> && is_float_v<TT>, "the CUDA pair scorer loss takes float views");
  scorer_detail::dims d;
  DISTILL_TRY(scorer_detail::validate_loss_inputs(fn, scores, object_mask, opt, d));
  DISTILL_TRY(scorer_detail::validate_pairs_view(fn, "target", target, d));
  if (!loss.empty()) {
    DISTILL_TRY(check_strides(fn, "loss", loss));
    DISTILL_TRY(check_shape(fn, "loss", loss, {opt.reduction == reduction::none ? d.B : index_t(1)}));
  }
  if (!grad_scores.empty()) DISTILL_TRY(scorer_detail::validate_pairs_view(fn, "grad_scores", grad_scores, d));
  DISTILL_TRY(check_cuda_view(fn, "scores", scores));
  DISTILL_TRY(check_cuda_view(fn, "target", target));
  DISTILL_TRY(check_cuda_view(fn, "object_mask", object_mask));
  DISTILL_TRY(check_device_view(fn, "loss", loss));
  DISTILL_TRY(check_cuda_view(fn, "grad_scores", grad_scores));
  DISTILL_TRY(check_device_workspace(fn, workspace, workspace_carver::size_of<scorer_scratch>(d.B, d.N, index_t(1), index_t(0), index_t(1)),
                                     "pair_scorer_workspace_size"));
  workspace_carver carver(workspace.data());
  const scorer_scratch lay(carver, d.B, d.N, 1, 0, 1);
  const cudaStream_t stream = stream_of(ctx);
  float* per_loss = lay.per_loss;
  float* units = lay.units;
  float* scale = lay.scale;
  loss_args a;
  a.s = pairs_of(scores), a.t = pairs_of(target), a.valid = valid_of(object_mask, opt.include_self_pairs);
  a.norm = opt.normalization, a.B = d.B, a.N = d.N;
  pair_scorer_loss_block_per_sample_kernel<<<static_cast<unsigned>(d.B), kBlock, 0, stream>>>(a, per_loss, units, scale,
                                                                                              pairs_ref{}, false);
  pair_scorer_loss_reduce_single_warp_kernel<<<1, 32, 0, stream>>>(per_loss, units, d.B, opt.reduction, opt.grad_scale,
                                                                   loss.empty() ? nullptr : loss.data(),
                                                                   loss.empty() ? 0 : loss.stride(0), scale);
  if (!grad_scores.empty())
    pair_scorer_loss_block_per_sample_kernel<<<static_cast<unsigned>(d.B), kBlock, 0, stream>>>(
        a, per_loss, units, scale, pairs_of(grad_scores), opt.accumulate);
  return launch_status(fn, stream);
}
}  // namespace cuda_detail::scorer

/// CUDA supervision loss (float); `workspace` from pair_scorer_workspace_size.
template <class TS, class TT>
[[nodiscard]] status pair_scorer_loss_forward(const cuda& ctx, cuda_view<TS, 3> scores, cuda_view<TT, 3> target,
                                              cuda_view<const std::uint8_t, 2> object_mask, cuda_view<float, 1> loss,
                                              cuda_view<std::byte, 1> workspace, const pair_scorer_options& opt = {}) {
  constexpr const char* fn = "pair_scorer_loss_forward";
  if (loss.empty()) return fail(errc::invalid_argument, fn, "'loss' is required but absent");
  return cuda_detail::scorer::loss_cuda(fn, ctx, scores, target, object_mask, loss, cuda_view<float, 3>{}, workspace, opt);
}

template <class TS, class TT>
[[nodiscard]] status pair_scorer_loss_backward(const cuda& ctx, cuda_view<TS, 3> scores, cuda_view<TT, 3> target,
                                               cuda_view<const std::uint8_t, 2> object_mask, cuda_view<float, 3> grad_scores,
                                               cuda_view<std::byte, 1> workspace, const pair_scorer_options& opt = {}) {
  constexpr const char* fn = "pair_scorer_loss_backward";
  if (grad_scores.empty()) return fail(errc::invalid_argument, fn, "'grad_scores' is required but absent");
  return cuda_detail::scorer::loss_cuda(fn, ctx, scores, target, object_mask, cuda_view<float, 1>{}, grad_scores, workspace, opt);
}

template <class TS, class TT>
[[nodiscard]] status pair_scorer_loss_forward_backward(const cuda& ctx, cuda_view<TS, 3> scores, cuda_view<TT, 3> target,
                                                       cuda_view<const std::uint8_t, 2> object_mask, cuda_view<float, 1> loss,
                                                       cuda_view<float, 3> grad_scores, cuda_view<std::byte, 1> workspace,
                                                       const pair_scorer_options& opt = {}) {
  constexpr const char* fn = "pair_scorer_loss_forward_backward";
  if (loss.empty()) return fail(errc::invalid_argument, fn, "'loss' is required but absent");
  if (grad_scores.empty()) return fail(errc::invalid_argument, fn, "'grad_scores' is required but absent");
  return cuda_detail::scorer::loss_cuda(fn, ctx, scores, target, object_mask, loss, grad_scores, workspace, opt);
}

}  // namespace distill
