// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of relational pairing (math in distill/relational/pairing.hpp). nvcc only.
//!
//! Pipeline of one call (all asynchronous on ctx.stream, no host synchronisation, scratch in the
//! caller's workspace):
//!   1. pair list: per sample, count the computed pairs (both objects present, i = j option,
//!      mask != 0 unless dM is wanted), scan the counts, write the pair codes (b N + i) N + j in
//!      (b, i, j) order: gating happens here, zero-mask pairs never reach a tile;
//!   2. first layer split per object: left = o Wa + q Wc + b1, right = o Wb   [B N, H] each;
//!   3. weights of layers 2..L copied to a row-major [H, H] canonical form (bf16 in bf16 mode);
//!   4. the tile kernel: persistent blocks of 256 threads walk tiles of 128 pairs. Per tile:
//!      h1 = relu(left_i + right_j), then layer after layer a block GEMM [128 x H] x [H x H]
//!      (detail/tile_gemm.cuh block_gemm: K chunks of 32, 128 x 128 output blocks, 8 warps of
//!      64 x 32; strict-fp32 FMAs, TF32 WMMA m16n16k8 or bf16 WMMA m16n16k16, fp32
//!      accumulation) with bias and ReLU fused in the epilogue; y gets the mask-weighted column
//!      sums (segmented by sample, one atomic per sample and column). The backward keeps the
//!      tile's L activations and two gradient buffers (the block's stash in the workspace,
//!      (L + 2) x 128 x H), and per layer: db (column sums), dW += h^T dz (block GEMM, atomics
//!      into an fp32 accumulator, float4 atomics on sm_90), dz_prev = (dz W^T) (.) [h > 0].
//!      dz1 goes into the per-object sums r (segmented by (b, i)) and s (atomics);
//!   5. first-layer gradients, do and dq from r and s (relational_common.cuh), and the weight
//!      accumulators copied into the caller's gradient views.
//! Bytes: the pair work reads each weight matrix from L2 once per tile and 128 x 128 output
//! block; pair activations live only in the block's stash (L2-resident for the tile's lifetime).
//! Results are not bitwise reproducible run to run (float atomics in y, dW, db, r, s).

#if !defined(__CUDACC__)
#error "distill/cuda/pairing.cuh must be compiled by nvcc"
#endif

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/detail/tile_gemm.cuh"
#include "distill/cuda/relational_common.cuh"
#include "distill/cuda/detail/device.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/relational/detail/scene_checks.hpp"
#include "distill/relational/pairing.hpp"

namespace distill {
namespace cuda_detail::pairing {

using relational::mat_ref;
using relational::out_mat;
using relational::out_vec;
using relational::vec_ref;

constexpr int kThreads = 256;     // 8 warps
constexpr int kTile = 128;        // pairs per tile
constexpr int kBM = 128;          // block GEMM output rows
constexpr int kBN = 128;          // block GEMM output columns
constexpr int kBK = 32;           // K chunk staged in shared memory
constexpr int kBlocksPerSM = 2;   // persistent grid = 2 x SMs (capped by the tile count)
constexpr int kMaxLayers = relational_max_layers;
constexpr index_t kMaxHidden = 32768;  // H^2 and kTile H stay below 2^31 (32-bit tile indices)

/// The block GEMM of the tile kernel (detail/tile_gemm.cuh): 128 x 128 output blocks, K chunks
/// of 32, 8 warps of 64 x 32 (2 x 4); strict fp32 on an 8 x 4 lane grid of 8 x 8 outputs, TF32 /
/// BF16 through 4 x 2 WMMA fragments. Staged rows padded by 4 floats / 8 bf16 (WMMA pointers stay
/// 32-byte aligned).
template <matmul_precision P>
using gemm_shape = tile::block_shape<kBM, kBN, kBK, 2, 4, P == matmul_precision::bf16 ? 8 : 4>;
template <matmul_precision P>
using warp_tile = std::conditional_t<P == matmul_precision::fp32, tile::simt_warp_tile<float, 64, 32, 4, 2>, tile::wmma_warp_tile<P, 4, 2>>;
/// Pair activations and gradients are stored in the compute type (bf16 in bf16 mode).
template <matmul_precision P>
using stash_t = tile::compute_t<P>;
template <matmul_precision P>
constexpr std::size_t smem_bytes = gemm_shape<P>::template smem_bytes<tile::compute_t<P>>;
static_assert(kBK * gemm_shape<matmul_precision::fp32>::ld_a * sizeof(float) % 32 == 0, "B staging must stay 32-byte aligned");
static_assert(kBK * gemm_shape<matmul_precision::bf16>::ld_a * sizeof(__nv_bfloat16) % 32 == 0, "B staging must stay 32-byte aligned");

using tile::from_float;
using tile::to_float;

__device__ __forceinline__ void atomic_add4(float* p, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(p), v);  // one vector reduction (sm_90)
#else
  atomicAdd(p, v.x);
  atomicAdd(p + 1, v.y);
  atomicAdd(p + 2, v.z);
  atomicAdd(p + 3, v.w);
#endif
}

/// C [M, N] = A B over the whole block (tile::block_gemm with this kernel's shape and tiles).
template <matmul_precision P, bool AMFast, bool BNFast, bool Vec4, class AF, class BF, class EP, class EP4>
__device__ DISTILL_FORCEINLINE void block_gemm(int M, int N, int K, AF a, BF b, EP ep, EP4 ep4, unsigned char* smem) {
  tile::block_gemm<gemm_shape<P>, P, warp_tile<P>, AMFast, BNFast, Vec4>(M, N, K, a, b, ep, ep4, smem);
}

// ---------------------------------------------------------------- pair list

/// Which pairs a call computes (the same rule as the CPU path).
struct pair_select {
  index_t N = 0;
  bool self = true, want_dm = false;
  const float* mask = nullptr;
  index_t m_s0 = 0, m_s1 = 0;
  const std::uint8_t* om = nullptr;
  index_t om_s0 = 0, om_s1 = 0;
  __device__ __forceinline__ bool computed(index_t b, index_t i, index_t j) const {
    const bool present_i = !om || om[b * om_s0 + i * om_s1] != 0, present_j = !om || om[b * om_s0 + j * om_s1] != 0;
    if (!relational_detail::pair_in_set(present_i, present_j, i, j, self)) return false;
    return want_dm || mask == nullptr || mask[b * m_s0 + i * m_s1 + j] != 0.0f;
  }
};

/// counts[b] = computed pairs of sample b; used[b N + i] = 1 for every object such a pair uses.
__global__ void __launch_bounds__(kThreads)
    relational_pairing_count_block_per_sample_kernel(pair_select sel, int* counts, std::uint8_t* used) {
  const index_t b = blockIdx.x, N = sel.N, NN = N * N;
  int total = 0;
  for (index_t base = 0; base < NN; base += kThreads) {
    const index_t p = base + threadIdx.x;
    bool c = false;
    if (p < NN) {
      const index_t i = p / N, j = p % N;
      c = sel.computed(b, i, j);
      if (c) used[b * N + i] = 1, used[b * N + j] = 1;  // same value from every writer
    }
    total += __syncthreads_count(c);
  }
  if (threadIdx.x == 0) counts[b] = total;
}

/// Exclusive scan of counts (one block of 1024 threads, chunk by chunk); total at *total.
__global__ void __launch_bounds__(1024)
    relational_pairing_scan_single_block_kernel(const int* counts, index_t B, int* offsets, int* total) {
  __shared__ int s[1024];
  int carry = 0;
  for (index_t base = 0; base < B; base += 1024) {
    const index_t b = base + threadIdx.x;
    const int v = b < B ? counts[b] : 0;
    s[threadIdx.x] = v;
    __syncthreads();
    for (int off = 1; off < 1024; off <<= 1) {  // Hillis-Steele inclusive scan
      const int t = threadIdx.x >= static_cast<unsigned>(off) ? s[threadIdx.x - off] : 0;
      __syncthreads();
      s[threadIdx.x] += t;
      __syncthreads();
    }
    if (b < B) offsets[b] = carry + s[threadIdx.x] - v;
    const int chunk_total = s[1023];
    __syncthreads();  // every thread read s[1023] before the next chunk overwrites s
    carry += chunk_total;
  }
  if (threadIdx.x == 0) *total = carry;
}

/// pairs[offsets[b] + k] = code of the k-th computed pair of sample b, in (i, j) order.
__global__ void __launch_bounds__(kThreads)
    relational_pairing_list_block_per_sample_kernel(pair_select sel, const int* offsets, int* pairs) {
  __shared__ int warp_counts[kThreads / 32];
  const index_t b = blockIdx.x, N = sel.N, NN = N * N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int out0 = offsets[b];
  int running = 0;  // identical in every thread
  for (index_t base = 0; base < NN; base += kThreads) {
    const index_t p = base + threadIdx.x;
    const bool c = p < NN && sel.computed(b, p / N, p % N);
    const unsigned ballot = __ballot_sync(0xffffffffu, c);
    const int lane_prefix = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int warp_prefix = 0, chunk_total = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      if (w < warp) warp_prefix += warp_counts[w];
      chunk_total += warp_counts[w];
    }
    if (c) pairs[out0 + running + warp_prefix + lane_prefix] = static_cast<int>(b * NN + p);
    running += chunk_total;
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
}

/// dst[k H + n] = w(k, n): a row-major copy of a layer's weights in the compute type.
template <class C>
__global__ void relational_pairing_weight_copy_thread_per_element_kernel(mat_ref w, index_t H, C* dst) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= H * H) return;
  dst[idx] = from_float<C>(w(idx / H, idx % H));
}

/// dst(r, c) (+)= src[r cols + c].
__global__ void relational_pairing_grad_copy_thread_per_element_kernel(const float* src, index_t rows, index_t cols, out_mat dst,
                                                                       bool accumulate) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  float* d = dst.p + (idx / cols) * dst.s0 + (idx % cols) * dst.s1;
  *d = accumulate ? *d + src[idx] : src[idx];
}

// ---------------------------------------------------------------- tile kernel

struct tile_params {
  index_t N = 0, H = 0;
  int L = 0;
  bool last_relu = true, want_y = false, want_dm = false, want_rs = false, vec4 = false, accumulate = false;
  unsigned dw_mask = 0, db_mask = 0;  // bit l: gradient of layer l (l >= 1) wanted
  float scale = 1.0f;
  const float* mask = nullptr;
  index_t m_s0 = 0, m_s1 = 0;
  const float* dy = nullptr;
  index_t dy_s0 = 0;
  const float* left = nullptr;
  const float* right = nullptr;
  const void* w = nullptr;  // (L - 1) canonical [H, H] weights, compute type
  vec_ref bias[kMaxLayers];
  const int* pairs = nullptr;
  const int* total = nullptr;
  void* stash = nullptr;  // gridDim.x x nbuf x [kTile, H], stash type
  int nbuf = 0;
  float* R = nullptr;
  float* S = nullptr;
  float* y = nullptr;
  index_t y_s0 = 0;
  float* dm = nullptr;
  index_t dm_s0 = 0, dm_s1 = 0;
  float* dw_acc = nullptr;  // (L - 1) x [H, H]
  float* db_acc = nullptr;  // L x [H]
};

using no_vec4 = tile::no_vec4_epilogue;

template <matmul_precision Mode, bool Backward>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM) relational_pairing_tile_kernel(const tile_params P) {
  using compute_t = tile::compute_t<Mode>;
  using st_t = stash_t<Mode>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int s_b[kTile], s_i[kTile], s_j[kTile];
  __shared__ float s_m[kTile];

  // Tile-local indices are 32-bit (count <= 128 pairs, H <= kMaxHidden, H^2 < 2^31: checked by
  // the host); 64-bit divisions and address arithmetic in the element loops cost registers the
  // 128-register budget (two blocks per SM) does not have. Offsets into [B N, H] stay 64-bit.
  const int H = static_cast<int>(P.H), N = static_cast<int>(P.N);
  const int L = P.L;
  const index_t buf = static_cast<index_t>(kTile) * H;
  st_t* const stash = static_cast<st_t*>(P.stash) + static_cast<index_t>(blockIdx.x) * P.nbuf * buf;
  // Activation of layer l (0-based): its own buffer in the backward, ping-pong in the forward.
  auto hbuf = [&](int l) -> st_t* { return stash + static_cast<index_t>(Backward ? l : (l & 1)) * buf; };
  const compute_t* wc = static_cast<const compute_t*>(P.w);
  const int total = *P.total;
  const auto object_row = [&](int b, int i) { return static_cast<index_t>(b * N + i) * H; };  // row of [B N, H]

  for (index_t tile = blockIdx.x; tile * kTile < total; tile += gridDim.x) {
    const int base = static_cast<int>(tile * kTile);
    const int count = min(kTile, total - base);
    __syncthreads();  // the previous tile is done with the metadata and the stash
    for (int p = threadIdx.x; p < count; p += kThreads) {
      const int code = P.pairs[base + p];
      const int b = code / (N * N), rem = code - b * (N * N);
      const int i = rem / N, j = rem - i * N;
      s_b[p] = b, s_i[p] = i, s_j[p] = j;
      s_m[p] = P.scale * (P.mask ? P.mask[b * P.m_s0 + i * P.m_s1 + j] : 1.0f);
    }
    __syncthreads();

    // Layer 1: h1 = act(left_i + right_j).
    {
      st_t* out = hbuf(0);
      const bool relu = L > 1 || P.last_relu;
      for (int idx = threadIdx.x; idx < count * H; idx += kThreads) {
        const int p = idx / H, n = idx - p * H;
        float v = P.left[object_row(s_b[p], s_i[p]) + n] + P.right[object_row(s_b[p], s_j[p]) + n];
        if (relu) v = fmaxf(v, 0.0f);
        out[idx] = from_float<st_t>(v);
      }
      __syncthreads();
    }
    // Layers 2..L: h_l = act(h_{l-1} W_l + b_l).
    for (int l = 1; l < L; ++l) {
      const st_t* in = hbuf(l - 1);
      st_t* out = hbuf(l);
      const compute_t* w = wc + static_cast<index_t>(l - 1) * H * H;
      const vec_ref bias = P.bias[l];
      const bool relu = l < L - 1 || P.last_relu;
      block_gemm<Mode, false, true, false>(
          count, H, H, [=](int m, int k) { return to_float(in[m * H + k]); }, [=](int k, int n) { return to_float(w[k * H + n]); },
          [=](int m, int n, float c) {
            float v = c + bias(n);
            if (relu) v = fmaxf(v, 0.0f);
            out[m * H + n] = from_float<st_t>(v);
          },
          no_vec4{}, smem);
    }
    const st_t* hl = hbuf(L - 1);

    // y_b += s M g, one atomic per (sample run, column).
    if (P.want_y)
      for (int n = threadIdx.x; n < H; n += kThreads) {
        int cur = s_b[0];
        float acc = 0.0f;
        for (int p = 0; p < count; ++p) {
          if (s_b[p] != cur) {
            atomicAdd(P.y + cur * P.y_s0 + n, acc);
            acc = 0.0f, cur = s_b[p];
          }
          acc += s_m[p] * to_float(hl[p * H + n]);
        }
        atomicAdd(P.y + cur * P.y_s0 + n, acc);
      }

    if constexpr (Backward) {
      const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
      // dM = s <dy_b, g>, one warp per pair, one writer per pair.
      if (P.want_dm)
        for (int p = warp; p < count; p += kThreads / 32) {
          const float* dyb = P.dy + s_b[p] * P.dy_s0;
          float dot = 0.0f;
          for (int n = lane; n < H; n += 32) dot += dyb[n] * to_float(hl[p * H + n]);
          dot = warp_sum(dot);
          if (lane == 0) P.dm[s_b[p] * P.dm_s0 + s_i[p] * P.dm_s1 + s_j[p]] += P.scale * dot;  // zeroed unless accumulating
        }
      // dz_L = s M dy (.) [h_L > 0].
      st_t* cur = stash + static_cast<index_t>(L) * buf;
      st_t* oth = cur + buf;
      for (int idx = threadIdx.x; idx < count * H; idx += kThreads) {
        const int p = idx / H, n = idx - p * H;
        float v = s_m[p] * P.dy[s_b[p] * P.dy_s0 + n];
        if (P.last_relu && !(to_float(hl[idx]) > 0.0f)) v = 0.0f;
        cur[idx] = from_float<st_t>(v);
      }
      __syncthreads();
      for (int l = L - 1; l >= 1; --l) {
        const st_t* hin = hbuf(l - 1);
        if ((P.db_mask >> l) & 1u)
          for (int n = threadIdx.x; n < H; n += kThreads) {
            float s = 0.0f;
            for (int p = 0; p < count; ++p) s += to_float(cur[p * H + n]);
            atomicAdd(P.db_acc + l * H + n, s);
          }
        if ((P.dw_mask >> l) & 1u) {
          float* dw = P.dw_acc + static_cast<index_t>(l - 1) * H * H;
          auto a_op = [=](int m, int k) { return to_float(hin[k * H + m]); };  // h^T
          auto b_op = [=](int k, int n) { return to_float(cur[k * H + n]); };
          auto ep = [=](int m, int n, float c) { atomicAdd(dw + m * H + n, c); };
          auto ep4 = [=](int m, int n, float4 c) { atomic_add4(dw + m * H + n, c); };
          if (P.vec4) block_gemm<Mode, true, true, true>(H, H, count, a_op, b_op, ep, ep4, smem);
          else block_gemm<Mode, true, true, false>(H, H, count, a_op, b_op, ep, ep4, smem);
        }
        const compute_t* w = wc + static_cast<index_t>(l - 1) * H * H;
        block_gemm<Mode, false, false, false>(
            count, H, H, [=](int m, int k) { return to_float(cur[m * H + k]); },
            [=](int k, int n) { return to_float(w[n * H + k]); },  // W^T
            [=](int m, int n, float c) { oth[m * H + n] = from_float<st_t>(to_float(hin[m * H + n]) > 0.0f ? c : 0.0f); }, no_vec4{},
            smem);
        st_t* t = cur;
        cur = oth, oth = t;
      }
      // dz1 into r (segmented by (b, i): pairs are in (b, i, j) order) and s.
      if (P.want_rs) {
        for (int n = threadIdx.x; n < H; n += kThreads) {
          int cb = s_b[0], ci = s_i[0];
          float acc = 0.0f;
          for (int p = 0; p < count; ++p) {
            if (s_b[p] != cb || s_i[p] != ci) {
              atomicAdd(P.R + object_row(cb, ci) + n, acc);
              acc = 0.0f, cb = s_b[p], ci = s_i[p];
            }
            acc += to_float(cur[p * H + n]);
          }
          atomicAdd(P.R + object_row(cb, ci) + n, acc);
        }
        for (int idx = threadIdx.x; idx < count * H; idx += kThreads) {
          const int p = idx / H, n = idx - p * H;
          atomicAdd(P.S + object_row(s_b[p], s_j[p]) + n, to_float(cur[idx]));
        }
      }
    }
  }
}

// ---------------------------------------------------------------- host side

inline int grid_for(const distill::pairing_detail::dims& d) {
  const index_t tiles = (d.B * d.N * d.N + kTile - 1) / kTile;
  return static_cast<int>(std::max<index_t>(1, std::min<index_t>(tiles, static_cast<index_t>(kBlocksPerSM) * current_device_properties().sms)));
}

/// The workspace regions (core/workspace.hpp); `grid` persistent blocks each own a stash of
/// L + 2 tiles of activations and gradients. The weights and the stash are in the compute type
/// (`C`, bf16 in bf16 mode).
template <class C>
struct cuda_scratch {
  C* wcanon;
  float *left, *right, *R, *S, *t;
  std::uint8_t* used;
  int *counts, *offsets, *total, *pairs;
  float *partial, *dw_acc, *db_acc;
  C* stash;
  cuda_scratch(workspace_carver& w, const distill::pairing_detail::dims& d, int grid)
      : wcanon(w.take<C>((d.L - 1) * d.H * d.H)),
        left(w.take<float>(d.B * d.N * d.H)),
        right(w.take<float>(d.B * d.N * d.H)),
        R(w.take<float>(d.B * d.N * d.H)),
        S(w.take<float>(d.B * d.N * d.H)),
        t(w.take<float>(d.B * d.H)),
        used(w.take<std::uint8_t>(d.B * d.N)),
        counts(w.take<int>(d.B)),
        offsets(w.take<int>(d.B)),
        total(w.take<int>(1)),
        pairs(w.take<int>(d.B * d.N * d.N)),
        partial(w.take<float>(relational::partial_floats(d.B * d.N, std::max(d.D, d.Q), d.H))),
        dw_acc(w.take<float>((d.L - 1) * d.H * d.H)),
        db_acc(w.take<float>(d.L * d.H)),
        stash(w.take<C>(static_cast<index_t>(grid) * (d.L + 2) * kTile * d.H)) {}
};

/// Bytes of the workspace for the compute type of `math`.
inline std::size_t cuda_workspace_bytes(const distill::pairing_detail::dims& d, matmul_precision math, int grid) {
  return math == matmul_precision::bf16 ? workspace_carver::size_of<cuda_scratch<__nv_bfloat16>>(d, grid)
                                        : workspace_carver::size_of<cuda_scratch<float>>(d, grid);
}

template <class V>
status check_cuda_view(const char* fn, const char* name, const V& v) {
  if (v.empty()) return {};
  DISTILL_TRY(check_inner_contiguous(fn, name, v));
  return check_device_view(fn, name, v);
}

struct cuda_problem {
  distill::pairing_detail::dims d;
  relational_pairing_options opt;
  cuda_view<const float, 3> o;
  cuda_view<const float, 2> q;
  cuda_view<const float, 3> mask;
  cuda_view<const std::uint8_t, 2> om;
  relational_mlp<const float, cuda_space> g;
  cuda_view<float, 2> y;
  cuda_view<const float, 2> dy;
  relational_pairing_grads<float, cuda_space> gr;
};

template <matmul_precision Mode, bool Backward>
status launch_tiles(const char* fn, const tile_params& tp, int grid, cudaStream_t stream) {
  auto kernel = relational_pairing_tile_kernel<Mode, Backward>;
  DISTILL_TRY(allow_dynamic_smem(fn, kernel, smem_bytes<Mode>));
  kernel<<<grid, kThreads, smem_bytes<Mode>, stream>>>(tp);
  return launch_status(fn, stream);
}

template <matmul_precision Mode>
status run(const char* fn, const cuda& ctx, const cuda_problem& pb, const cuda_view<std::byte, 1>& workspace) {
  using C = tile::compute_t<Mode>;
  const auto& d = pb.d;
  const cudaStream_t stream = stream_of(ctx);
  const int grid = grid_for(d);
  DISTILL_TRY(check_device_workspace(fn, workspace, cuda_workspace_bytes(d, pb.opt.precision, grid),
                                     "relational_pairing_workspace_size"));
  workspace_carver carver(workspace.data());
  const cuda_scratch<C> ws(carver, d, grid);
  float* left = ws.left;
  float* right = ws.right;
  float* R = ws.R;
  float* S = ws.S;
  std::uint8_t* used = ws.used;
  int* counts = ws.counts;
  int* offsets = ws.offsets;
  int* total = ws.total;
  int* pairs = ws.pairs;
  float* dw_acc = ws.dw_acc;
  float* db_acc = ws.db_acc;
  C* wcanon = ws.wcanon;
  const index_t B = d.B, N = d.N, D = d.D, H = d.H;
  const int L = d.L;
  const bool backward = !pb.dy.empty();
  const bool want_y = !pb.y.empty();
  const bool want_dm = backward && !pb.gr.pair_mask.empty();
  const auto& gw = pb.gr.g;
  const bool want_w = backward && gw.layers != 0;
  const bool want_first = want_w && (!gw.weight[0].empty() || !gw.bias[0].empty());
  const bool want_rs = backward && (want_first || !pb.gr.objects.empty() || !pb.gr.question.empty());

  // 1. Pair list.
  DISTILL_CUDA_TRY(cudaMemsetAsync(used, 0, static_cast<std::size_t>(B * N), stream));
  pair_select sel;
  sel.N = N, sel.self = pb.opt.include_self_pairs, sel.want_dm = want_dm;
  if (!pb.mask.empty()) sel.mask = pb.mask.data(), sel.m_s0 = pb.mask.stride(0), sel.m_s1 = pb.mask.stride(1);
  if (!pb.om.empty()) sel.om = pb.om.data(), sel.om_s0 = pb.om.stride(0), sel.om_s1 = pb.om.stride(1);
  relational_pairing_count_block_per_sample_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(sel, counts, used);
  relational_pairing_scan_single_block_kernel<<<1, 1024, 0, stream>>>(counts, B, offsets, total);
  relational_pairing_list_block_per_sample_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(sel, offsets, pairs);
  DISTILL_TRY(launch_status(fn, stream));

  // 2. First layer per object (objects no computed pair uses get zero rows).
  const auto& w0 = pb.g.weight[0];
  const relational::row_filter used_rows{used, N, 1, N};
  relational::relational_object_split_forward_thread_per_element_kernel<<<relational::blocks_for(B * N * H),
                                                                          relational::kThreads1d, 0, stream>>>(
      relational::rows_of3(pb.o), relational::rows_of2(pb.q), used_rows, relational::mat_of(w0, 0), relational::mat_of(w0, D),
      relational::mat_of(w0, 2 * D), mat_ref{}, relational::vec_of(pb.g.bias[0]), vec_ref{}, B * N, D, d.Q, H, left, right);
  // 3. Canonical weights.
  for (int l = 1; l < L; ++l)
    relational_pairing_weight_copy_thread_per_element_kernel<C>
        <<<relational::blocks_for(H * H), relational::kThreads1d, 0, stream>>>(relational::mat_of(pb.g.weight[l]), H,
                                                                               wcanon + static_cast<index_t>(l - 1) * H * H);
  DISTILL_TRY(launch_status(fn, stream));

  // 4. Outputs and accumulators, then the tiles.
  if (want_y) relational::fill_async(pb.y, 0.0f, stream);
  if (want_dm && !pb.opt.accumulate) relational::fill_async(pb.gr.pair_mask, 0.0f, stream);
  if (backward) {
    DISTILL_CUDA_TRY(cudaMemsetAsync(R, 0, static_cast<std::size_t>(B * N * H) * 4, stream));
    DISTILL_CUDA_TRY(cudaMemsetAsync(S, 0, static_cast<std::size_t>(B * N * H) * 4, stream));
    DISTILL_CUDA_TRY(cudaMemsetAsync(dw_acc, 0, static_cast<std::size_t>(L - 1) * H * H * 4, stream));
    DISTILL_CUDA_TRY(cudaMemsetAsync(db_acc, 0, static_cast<std::size_t>(L) * H * 4, stream));
  }
  tile_params tp;
  tp.N = N, tp.H = H, tp.L = L, tp.last_relu = pb.opt.last_relu, tp.want_y = want_y, tp.want_dm = want_dm;
  tp.want_rs = want_rs, tp.vec4 = H % 4 == 0, tp.accumulate = pb.opt.accumulate, tp.scale = pb.opt.mask_scale;
  for (int l = 1; l < L && want_w; ++l) {
    if (!gw.weight[l].empty()) tp.dw_mask |= 1u << l;
    if (!gw.bias[l].empty()) tp.db_mask |= 1u << l;
  }
  if (!pb.mask.empty()) tp.mask = pb.mask.data(), tp.m_s0 = pb.mask.stride(0), tp.m_s1 = pb.mask.stride(1);
  if (backward) tp.dy = pb.dy.data(), tp.dy_s0 = pb.dy.stride(0);
  tp.left = left, tp.right = right, tp.w = wcanon;
  for (int l = 0; l < L; ++l) tp.bias[l] = relational::vec_of(pb.g.bias[l]);
  tp.pairs = pairs, tp.total = total, tp.stash = ws.stash, tp.nbuf = L + 2, tp.R = R, tp.S = S;
  if (want_y) tp.y = pb.y.data(), tp.y_s0 = pb.y.stride(0);
  if (want_dm) tp.dm = pb.gr.pair_mask.data(), tp.dm_s0 = pb.gr.pair_mask.stride(0), tp.dm_s1 = pb.gr.pair_mask.stride(1);
  tp.dw_acc = dw_acc, tp.db_acc = db_acc;
  if (backward) DISTILL_TRY((launch_tiles<Mode, true>(fn, tp, grid, stream)));
  else DISTILL_TRY((launch_tiles<Mode, false>(fn, tp, grid, stream)));
  if (!backward) return {};

  // 5. Layers 2..L: accumulators into the caller's views; layer 1, do and dq from r and s.
  for (int l = 1; l < L && want_w; ++l) {
    if (!gw.weight[l].empty())
      relational_pairing_grad_copy_thread_per_element_kernel<<<relational::blocks_for(H * H), relational::kThreads1d, 0,
                                                               stream>>>(dw_acc + static_cast<index_t>(l - 1) * H * H, H, H,
                                                                         relational::out_mat_of(gw.weight[l]), pb.opt.accumulate);
    if (!gw.bias[l].empty())
      relational_pairing_grad_copy_thread_per_element_kernel<<<relational::blocks_for(H), relational::kThreads1d, 0, stream>>>(
          db_acc + static_cast<index_t>(l) * H, 1, H, out_mat{gw.bias[l].data(), 0, gw.bias[l].stride(0)}, pb.opt.accumulate);
  }
  if (want_rs) {
    relational::object_split_backward_args a;
    a.B = B, a.N = N, a.D = D, a.Q = d.Q, a.K = H;
    a.o = relational::rows_of3(pb.o), a.q = relational::rows_of2(pb.q), a.ok = used_rows;
    a.w_left = relational::mat_of(w0, 0), a.w_right = relational::mat_of(w0, D), a.wq_left = relational::mat_of(w0, 2 * D);
    a.R = R, a.S = S, a.t = ws.t, a.u = nullptr, a.partial = ws.partial;
    if (want_w) {
      a.dw_left = relational::out_mat_of(gw.weight[0], 0);
      a.dw_right = relational::out_mat_of(gw.weight[0], D);
      if (d.Q > 0) a.dwq_left = relational::out_mat_of(gw.weight[0], 2 * D);
      a.db_left = relational::out_vec_of(gw.bias[0]);
    }
    a.d_objects = relational::out_rows_of3(pb.gr.objects);
    a.d_question = relational::out_mat_of(pb.gr.question);
    a.accumulate = pb.opt.accumulate;
    relational::object_split_backward_async(a, stream);
  }
  return launch_status(fn, stream);
}

template <class T>
inline constexpr bool is_float_v = std::is_same_v<std::remove_const_t<T>, float>;

template <class TO, class TQ, class TM, class TW>
status validate_cuda_inputs(const char* fn, const cuda_view<TO, 3>& o, const cuda_view<TQ, 2>& q, const cuda_view<TM, 3>& m,
                            const cuda_view<const std::uint8_t, 2>& om, const relational_mlp<TW, cuda_space>& g,
                            const relational_pairing_options& opt, distill::pairing_detail::dims& d) {
  DISTILL_TRY(distill::pairing_detail::validate_inputs(fn, o, q, m, om, g, opt, d));
  if (opt.precision != matmul_precision::fp32 && opt.precision != matmul_precision::tf32 && opt.precision != matmul_precision::bf16)
    return fail(errc::invalid_argument, fn, "'precision' is not a matmul_precision");
  if (d.B * d.N * d.N > index_t(2147483647))
    return fail(errc::shape_mismatch, fn, "B N^2 must be below 2^31 on the CUDA path (pair codes are 32-bit)");
  if (d.H > kMaxHidden)
    return fail(errc::shape_mismatch, fn, "the hidden width H must be at most " + std::to_string(kMaxHidden) + " on the CUDA path");
  DISTILL_TRY(check_device_view(fn, "objects", o));
  DISTILL_TRY(check_cuda_view(fn, "question", q));
  DISTILL_TRY(check_cuda_view(fn, "pair_mask", m));
  DISTILL_TRY(check_cuda_view(fn, "object_mask", om));
  for (int l = 0; l < g.layers; ++l) {
    DISTILL_TRY(check_device_view(fn, "g.weight", g.weight[l]));
    DISTILL_TRY(check_device_view(fn, "g.bias", g.bias[l]));
  }
  return {};
}

template <class TG>
status validate_cuda_grads(const char* fn, const relational_pairing_grads<TG, cuda_space>& gr) {
  DISTILL_TRY(check_cuda_view(fn, "grads.objects", gr.objects));
  DISTILL_TRY(check_cuda_view(fn, "grads.question", gr.question));
  DISTILL_TRY(check_cuda_view(fn, "grads.pair_mask", gr.pair_mask));
  for (int l = 0; l < gr.g.layers; ++l) {
    DISTILL_TRY(check_device_view(fn, "grads.g.weight", gr.g.weight[l]));
    DISTILL_TRY(check_device_view(fn, "grads.g.bias", gr.g.bias[l]));
  }
  return {};
}

inline status dispatch(const char* fn, const cuda& ctx, const cuda_problem& pb, const cuda_view<std::byte, 1>& workspace) {
  DISTILL_TRY(check_device_view(fn, "workspace", workspace));
  switch (pb.opt.precision) {
    case matmul_precision::fp32: return run<matmul_precision::fp32>(fn, ctx, pb, workspace);
    case matmul_precision::tf32: return run<matmul_precision::tf32>(fn, ctx, pb, workspace);
    case matmul_precision::bf16: return run<matmul_precision::bf16>(fn, ctx, pb, workspace);
  }
  return fail(errc::invalid_argument, fn, "'precision' is not a matmul_precision");
}

template <class TW>
relational_mlp<const float, cuda_space> as_const_mlp(const relational_mlp<TW, cuda_space>& g) {
  relational_mlp<const float, cuda_space> c;
  c.layers = g.layers;
  for (int l = 0; l < g.layers && l < kMaxLayers; ++l) c.weight[l] = g.weight[l], c.bias[l] = g.bias[l];
  return c;
}

}  // namespace cuda_detail::pairing

/// Bytes of workspace the CUDA path needs (depends on the device's SM count and opt.precision);
/// T is not used on CUDA (float only), it is there so both overloads are called alike.
template <class T = float>
std::size_t relational_pairing_workspace_size(const cuda& /*ctx*/, index_t B, index_t N, index_t D, index_t Q, index_t H, int L,
                                              const relational_pairing_options& opt = {}) {
  pairing_detail::dims d;
  d.B = std::max<index_t>(B, 1), d.N = std::max<index_t>(N, 1), d.D = std::max<index_t>(D, 0), d.Q = std::max<index_t>(Q, 0);
  d.H = std::max<index_t>(H, 1), d.L = std::clamp(L, 1, relational_max_layers);
  namespace cp = cuda_detail::pairing;
  return cp::cuda_workspace_bytes(d, opt.precision, cp::grid_for(d));
}

/// CUDA forward (float; see the CPU overload for the arguments).
template <class TO, class TQ, class TM, class TW>
[[nodiscard]] status relational_pairing_forward(const cuda& ctx, cuda_view<TO, 3> objects, cuda_view<TQ, 2> question,
                                                cuda_view<TM, 3> pair_mask, cuda_view<const std::uint8_t, 2> object_mask,
                                                const relational_mlp<TW, cuda_space>& g, cuda_view<float, 2> out,
                                                cuda_view<std::byte, 1> workspace, const relational_pairing_options& opt = {}) {
  namespace cp = cuda_detail::pairing;
  static_assert(cp::is_float_v<TO> && cp::is_float_v<TQ> && cp::is_float_v<TM> && cp::is_float_v<TW>,
                "relational pairing on CUDA takes float views (opt.precision picks fp32, TF32 or bf16 arithmetic)");
  constexpr const char* fn = "relational_pairing_forward";
  cp::cuda_problem pb;
  DISTILL_TRY(cp::validate_cuda_inputs(fn, objects, question, pair_mask, object_mask, g, opt, pb.d));
  DISTILL_TRY(pairing_detail::validate_matrix_bh(fn, "out", out, pb.d));
  DISTILL_TRY(cp::check_cuda_view(fn, "out", out));
  pb.opt = opt, pb.o = objects, pb.q = question, pb.mask = pair_mask, pb.om = object_mask, pb.g = cp::as_const_mlp(g), pb.y = out;
  return cp::dispatch(fn, ctx, pb, workspace);
}

namespace cuda_detail::pairing {
template <class TO, class TQ, class TM, class TW, class TD>
status backward_common(const char* fn, const cuda& ctx, cuda_view<TO, 3> objects, cuda_view<TQ, 2> question,
                       cuda_view<TM, 3> pair_mask, cuda_view<const std::uint8_t, 2> object_mask,
                       const relational_mlp<TW, cuda_space>& g, cuda_view<TD, 2> grad_out, cuda_view<float, 2> out,
                       const relational_pairing_grads<float, cuda_space>& grads, cuda_view<std::byte, 1> workspace,
                       const relational_pairing_options& opt) {
  static_assert(is_float_v<TO> && is_float_v<TQ> && is_float_v<TM> && is_float_v<TW> && is_float_v<TD>,
                "relational pairing on CUDA takes float views (opt.precision picks fp32, TF32 or bf16 arithmetic)");
  cuda_problem pb;
  DISTILL_TRY(validate_cuda_inputs(fn, objects, question, pair_mask, object_mask, g, opt, pb.d));
  DISTILL_TRY(distill::pairing_detail::validate_matrix_bh(fn, "grad_out", grad_out, pb.d));
  DISTILL_TRY(check_cuda_view(fn, "grad_out", grad_out));
  if (!out.empty() || out.size() != 0) {
    DISTILL_TRY(distill::pairing_detail::validate_matrix_bh(fn, "out", out, pb.d));
    DISTILL_TRY(check_cuda_view(fn, "out", out));
  }
  DISTILL_TRY(distill::pairing_detail::validate_grads(fn, grads, pb.d));
  DISTILL_TRY(validate_cuda_grads(fn, grads));
  pb.opt = opt, pb.o = objects, pb.q = question, pb.mask = pair_mask, pb.om = object_mask, pb.g = as_const_mlp(g);
  pb.y = out, pb.dy = grad_out, pb.gr = grads;
  return dispatch(fn, ctx, pb, workspace);
}
}  // namespace cuda_detail::pairing

/// CUDA backward (float): recomputes the pair activations tile by tile.
template <class TO, class TQ, class TM, class TW, class TD>
[[nodiscard]] status relational_pairing_backward(const cuda& ctx, cuda_view<TO, 3> objects, cuda_view<TQ, 2> question,
                                                 cuda_view<TM, 3> pair_mask, cuda_view<const std::uint8_t, 2> object_mask,
                                                 const relational_mlp<TW, cuda_space>& g, cuda_view<TD, 2> grad_out,
                                                 const relational_pairing_grads<float, cuda_space>& grads,
                                                 cuda_view<std::byte, 1> workspace, const relational_pairing_options& opt = {}) {
  return cuda_detail::pairing::backward_common("relational_pairing_backward", ctx, objects, question, pair_mask, object_mask, g,
                                               grad_out, cuda_view<float, 2>{}, grads, workspace, opt);
}

/// CUDA forward and backward in one pass over the pairs (upstream gradient known in advance).
template <class TO, class TQ, class TM, class TW, class TD>
[[nodiscard]] status relational_pairing_forward_backward(const cuda& ctx, cuda_view<TO, 3> objects, cuda_view<TQ, 2> question,
                                                         cuda_view<TM, 3> pair_mask, cuda_view<const std::uint8_t, 2> object_mask,
                                                         const relational_mlp<TW, cuda_space>& g, cuda_view<TD, 2> grad_out,
                                                         cuda_view<float, 2> out, const relational_pairing_grads<float, cuda_space>& grads,
                                                         cuda_view<std::byte, 1> workspace, const relational_pairing_options& opt = {}) {
  constexpr const char* fn = "relational_pairing_forward_backward";
  if (out.empty()) return fail(errc::invalid_argument, fn, "'out' is required but absent");
  return cuda_detail::pairing::backward_common(fn, ctx, objects, question, pair_mask, object_mask, g, grad_out, out, grads,
                                               workspace, opt);
}

}  // namespace distill
