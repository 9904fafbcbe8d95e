// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the token-wise InfoNCE against a queue (include/distill/contrastive/token_nce.hpp).
//! nvcc only; included by the header above.
//!
//! Launches (all on ctx.stream, no allocation, no host synchronisation, graph-capturable):
//!   1. prepare   warp per token: ||z_i||, ||y_i||, s_i0 = <z,y>/(||z|| ||y|| tau), valid count
//!   2. tiles     block = 64 tokens x one key split x one 256-wide column chunk of D. It walks
//!                its key tiles (64 keys, queue rows then in-batch teacher rows) through shared
//!                memory (cp.async, double-buffered when it fits) and per tile:
//!                  S = Z K^T                     (FFMA, TF32 mma.sync or BF16 mma.sync)
//!                  online softmax per token      (running max m, sum l, rescale factor alpha)
//!                  acc = alpha acc + P K         (the same key tile: values = keys)
//!                and writes its split's (m, l) and acc [64, 256] to the workspace. No [M, K]
//!                buffer exists; bytes read per block: its 64 tokens once (or once per tile when
//!                D > 256) plus every key of its split once per D-chunk of the grid.
//!   3. finalize  warp per token: merge the splits (+ the positive), loss, lse, pi_0, gradient
//!                to q, B2 backward into grad_student (and the teacher's positive term)
//!   4. (teacher gradient with in-batch negatives) key-gradient blocks: sum_i c_i pi_ib q_i
//!                recomputed tile by tile in FFMA, then a warp-per-token B2 backward
//!   5. reduce    one block sums the weighted per-token losses in a fixed order (deterministic)
//! D > 256 is split over gridDim.z: each z-block recomputes the logits over all of D (streaming
//! 256-wide chunks of tokens and keys through shared memory) and accumulates its own columns,
//! so the logit GEMM is repeated ceil(D / 256) times; D <= 256 has no repetition.

#if !defined(__CUDACC__)
#error "distill/cuda/token_nce.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/cuda/reduce.cuh"
#include "distill/cuda/runtime.cuh"

namespace distill {

namespace cuda_detail::nce {

inline constexpr int tile_rows = 64;      // tokens per block (BM)
inline constexpr int tile_keys = 64;      // keys per tile (BN)
inline constexpr int chunk_cols = 256;    // columns of D per chunk / per z-block (DCH)
inline constexpr int block_threads = 256; // 8 warps
inline constexpr int max_splits = 64;

enum mode : int { mode_ffma = 0, mode_tf32 = 1, mode_bf16 = 2 };

/// min for device code (std::min is not __device__ without --expt-relaxed-constexpr).
__host__ __device__ DISTILL_FORCEINLINE index_t imin(index_t a, index_t b) { return a < b ? a : b; }

template <class T>
inline constexpr bool is_bf16_v = std::is_same_v<std::remove_cv_t<T>, bfloat16> || std::is_same_v<std::remove_cv_t<T>, __nv_bfloat16>;

/// Shared-memory row stride in elements: 16 bytes of padding, so a row starts 4 banks after the
/// previous one and the mma fragment loads (8 rows x 4 consecutive words) are conflict-free.
template <class T>
constexpr int smem_ld() {
  return chunk_cols + static_cast<int>(16 / sizeof(T));
}
inline constexpr int s_ld = tile_keys + 4;

template <class TS, class TK>
constexpr std::size_t smem_bytes(int stages) {
  return static_cast<std::size_t>(tile_rows) * smem_ld<TS>() * sizeof(TS) +
         static_cast<std::size_t>(stages) * tile_keys * smem_ld<TK>() * sizeof(TK) +
         static_cast<std::size_t>(tile_rows) * s_ld * sizeof(float) + tile_rows * sizeof(float);
}

// ---------------------------------------------------------------------------------------------
// Device properties (cached per device and thread; cheap attribute queries, no synchronisation).
// ---------------------------------------------------------------------------------------------
struct device_props {
  int sms = 1, smem_optin = 48 * 1024, major = 0;
};
inline device_props props() {
  thread_local int cached_dev = -1;
  thread_local device_props p;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return p;
  }
  if (dev != cached_dev) {
    device_props q;
    if (cudaDeviceGetAttribute(&q.sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&q.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&q.major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return p;
    }
    p = q;
    cached_dev = dev;
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Plan: grid shape and workspace layout (a pure function of the sizes and the device's SM count,
// so the size query and the call agree).
// ---------------------------------------------------------------------------------------------
struct plan {
  index_t M = 0, D = 0;
  index_t row_tiles = 0;
  int dsplits = 1, ksplits = 1;
  // byte offsets into the (256-byte aligned) workspace
  std::size_t norm_q, norm_k, s0, lse, loss, count, part_m, part_l, acc, gk, total;
};

inline plan make_plan(index_t M, index_t D, index_t capacity, bool in_batch, int sms) {
  plan p;
  p.M = M;
  p.D = D;
  p.row_tiles = ceil_div<index_t>(M, tile_rows);
  p.dsplits = static_cast<int>(ceil_div<index_t>(D, chunk_cols));
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
  const auto m = static_cast<std::size_t>(M), d = static_cast<std::size_t>(D), ks = static_cast<std::size_t>(p.ksplits);
  std::size_t o = 0;
  const auto take = [&](std::size_t bytes) {
    const std::size_t at = o;
    o += (bytes + 255) & ~std::size_t(255);
    return at;
  };
  p.norm_q = take(m * 4);
  p.norm_k = take(m * 4);
  p.s0 = take(m * 4);
  p.lse = take(m * 4);
  p.loss = take(m * 4);
  p.count = take(4);
  p.part_m = take(ks * m * 4);
  p.part_l = take(ks * m * 4);
  p.acc = take(ks * m * d * 4);
  p.gk = take(in_batch ? m * d * 4 : 0);
  p.total = o + 256;  // room to align the caller's pointer
  return p;
}

// ---------------------------------------------------------------------------------------------
// cp.async (sm_80+) and the tile loader
// ---------------------------------------------------------------------------------------------
__device__ DISTILL_FORCEINLINE void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#else
  (void)smem;
  (void)gmem;
  (void)src_bytes;
  __trap();
#endif
}
__device__ DISTILL_FORCEINLINE void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ DISTILL_FORCEINLINE void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/// Rows [row0, row0 + valid_rows) x columns [col0, col0 + chunk_cols) of a row-major global
/// matrix (row stride ld, D columns) into smem [Rows][smem_ld<Dst>()]; rows >= valid_rows and
/// columns >= D become zero. `vec` (same type, 16-byte aligned rows) uses cp.async 16-byte
/// copies (zero-filled by the hardware for rows past the end; the chunk straddling D is copied
/// element by element); otherwise element by element with conversion. Every thread of the
/// block calls it; the caller commits, waits and synchronises before reading.
template <int Rows, class Dst, class Src>
__device__ DISTILL_FORCEINLINE void load_tile(Dst* __restrict__ smem, const Src* __restrict__ g, index_t ld, index_t row0, index_t valid_rows,
                                              index_t col0, index_t D, bool vec) {
  constexpr int ldsm = smem_ld<Dst>();
  constexpr int per_chunk = static_cast<int>(16 / sizeof(Dst));  // elements per 16-byte chunk
  constexpr int chunks_per_row = chunk_cols / per_chunk;
  constexpr int total = Rows * chunks_per_row;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<std::remove_cv_t<Dst>, std::remove_cv_t<Src>>) {
    if (vec) {
      for (int c = threadIdx.x; c < total; c += block_threads) {
        const int r = c / chunks_per_row, cc = c % chunks_per_row;
        const index_t col = col0 + static_cast<index_t>(cc) * per_chunk;
        const bool in = r < valid_rows && col < D;
        Dst* dst = smem + r * ldsm + cc * per_chunk;
        if (in && D - col < per_chunk) {  // the chunk straddling D: element by element
#pragma unroll
          for (int e = 0; e < per_chunk; ++e) dst[e] = col + e < D ? g[(row0 + r) * ld + col + e] : store<Dst>(0.0f);
        } else {
          cp_async16(dst, in ? g + (row0 + r) * ld + col : g, in ? 16 : 0);  // 0 bytes: zero fill
        }
      }
      return;
    }
  }
#endif
  (void)vec;
  for (int c = threadIdx.x; c < total; c += block_threads) {
    const int r = c / chunks_per_row, cc = c % chunks_per_row;
    const index_t col = col0 + static_cast<index_t>(cc) * per_chunk;
    Dst* dst = smem + r * ldsm + cc * per_chunk;
#pragma unroll
    for (int e = 0; e < per_chunk; ++e) {
      const bool in = r < valid_rows && col + e < D;
      dst[e] = store<Dst>(in ? load<float>(g[(row0 + r) * ld + col + e]) : 0.0f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Matrix-multiply policies. Warp layout of the mma policies: warp w -> rows 16 (w / 2) .. +15;
// logits columns 32 (w % 2) .. +31 (4 n-tiles of 8); accumulator columns 128 (w % 2) .. +127
// (16 n-tiles of 8). Fragment layouts of mma.sync m16n8k8 (tf32) / m16n8k16 (bf16), g = lane/4,
// t = lane%4: A rows g, g+8; B column g; C (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
// ---------------------------------------------------------------------------------------------
__device__ DISTILL_FORCEINLINE std::uint32_t to_tf32(float x) {
  std::uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ DISTILL_FORCEINLINE std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const std::uint32_t*>(&v);
}
/// Two consecutive elements p[0], p[1] as a packed bf16 pair (direct 32-bit load when already bf16).
template <class T>
__device__ DISTILL_FORCEINLINE std::uint32_t bf16_pair(const T* p) {
  if constexpr (is_bf16_v<T>) return *reinterpret_cast<const std::uint32_t*>(p);
  else return pack_bf16(load<float>(p[0]), load<float>(p[1]));
}

__device__ DISTILL_FORCEINLINE void mma_tf32(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)d, (void)a, (void)b0, (void)b1;
  __trap();
#endif
}
__device__ DISTILL_FORCEINLINE void mma_bf16(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)d, (void)a, (void)b0, (void)b1;
  __trap();
#endif
}

/// Tensor-core policy (Mode = mode_tf32 or mode_bf16).
template <int Mode>
struct mma_policy {
  static constexpr int kstep = Mode == mode_bf16 ? 16 : 8;
  float s[4][4];    // logits: 4 n-tiles of the warp's 16 x 32
  float acc[16][4]; // accumulator: 16 n-tiles of the warp's 16 x 128

  __device__ DISTILL_FORCEINLINE void zero_logits() {
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
  }
  __device__ DISTILL_FORCEINLINE void zero_acc() {
#pragma unroll
    for (int n = 0; n < 16; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
  }

  /// s += Zs[64, 0:kw] Ks[64, 0:kw]^T (kw a multiple of kstep; zero-padded columns beyond D).
  template <class TS, class TK>
  __device__ DISTILL_FORCEINLINE void logits(const TS* __restrict__ zs, const TK* __restrict__ ks, int kw) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 32;
    constexpr int zld = smem_ld<TS>(), kld = smem_ld<TK>();
    const TS* za = zs + (r0 + g) * zld;
    const TS* zb = zs + (r0 + g + 8) * zld;
    for (int k0 = 0; k0 < kw; k0 += kstep) {
      std::uint32_t a[4];
      if constexpr (Mode == mode_tf32) {
        a[0] = to_tf32(load<float>(za[k0 + t]));
        a[1] = to_tf32(load<float>(zb[k0 + t]));
        a[2] = to_tf32(load<float>(za[k0 + t + 4]));
        a[3] = to_tf32(load<float>(zb[k0 + t + 4]));
      } else {
        a[0] = bf16_pair(za + k0 + 2 * t);
        a[1] = bf16_pair(zb + k0 + 2 * t);
        a[2] = bf16_pair(za + k0 + 2 * t + 8);
        a[3] = bf16_pair(zb + k0 + 2 * t + 8);
      }
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const TK* kr = ks + (c0 + n * 8 + g) * kld + k0;  // B[k][col] = K[col][k]
        if constexpr (Mode == mode_tf32) mma_tf32(s[n], a, to_tf32(load<float>(kr[t])), to_tf32(load<float>(kr[t + 4])));
        else mma_bf16(s[n], a, bf16_pair(kr + 2 * t), bf16_pair(kr + 2 * t + 8));
      }
    }
  }

  __device__ DISTILL_FORCEINLINE void store_logits(float* __restrict__ ss) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 32;
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const int c = c0 + n * 8 + 2 * t;
      ss[(r0 + g) * s_ld + c] = s[n][0];
      ss[(r0 + g) * s_ld + c + 1] = s[n][1];
      ss[(r0 + g + 8) * s_ld + c] = s[n][2];
      ss[(r0 + g + 8) * s_ld + c + 1] = s[n][3];
    }
  }

  /// acc = alpha acc + P[64, 64] Ks[64, 0:cw] (columns >= cw skipped: they are past D).
  template <class TK>
  __device__ DISTILL_FORCEINLINE void values(const float* __restrict__ ps, const TK* __restrict__ ks, const float* __restrict__ alpha,
                                             int cw) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 128;
    constexpr int kld = smem_ld<TK>();
    const float a_lo = alpha[r0 + g], a_hi = alpha[r0 + g + 8];
#pragma unroll
    for (int n = 0; n < 16; ++n) {
      acc[n][0] *= a_lo;
      acc[n][1] *= a_lo;
      acc[n][2] *= a_hi;
      acc[n][3] *= a_hi;
    }
    const float* pa = ps + (r0 + g) * s_ld;
    const float* pb = ps + (r0 + g + 8) * s_ld;
#pragma unroll 2
    for (int k0 = 0; k0 < tile_keys; k0 += kstep) {
      std::uint32_t a[4];
      if constexpr (Mode == mode_tf32) {
        a[0] = to_tf32(pa[k0 + t]);
        a[1] = to_tf32(pb[k0 + t]);
        a[2] = to_tf32(pa[k0 + t + 4]);
        a[3] = to_tf32(pb[k0 + t + 4]);
      } else {
        a[0] = pack_bf16(pa[k0 + 2 * t], pa[k0 + 2 * t + 1]);
        a[1] = pack_bf16(pb[k0 + 2 * t], pb[k0 + 2 * t + 1]);
        a[2] = pack_bf16(pa[k0 + 2 * t + 8], pa[k0 + 2 * t + 9]);
        a[3] = pack_bf16(pb[k0 + 2 * t + 8], pb[k0 + 2 * t + 9]);
      }
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        if (c0 + n * 8 >= cw) break;  // warp-uniform
        const int col = c0 + n * 8 + g;  // B[k][col] = K[k][col]
        if constexpr (Mode == mode_tf32) {
          mma_tf32(acc[n], a, to_tf32(load<float>(ks[(k0 + t) * kld + col])), to_tf32(load<float>(ks[(k0 + t + 4) * kld + col])));
        } else {
          const std::uint32_t b0 = pack_bf16(load<float>(ks[(k0 + 2 * t) * kld + col]), load<float>(ks[(k0 + 2 * t + 1) * kld + col]));
          const std::uint32_t b1 =
              pack_bf16(load<float>(ks[(k0 + 2 * t + 8) * kld + col]), load<float>(ks[(k0 + 2 * t + 9) * kld + col]));
          mma_bf16(acc[n], a, b0, b1);
        }
      }
    }
  }

  /// acc rows -> out[(row0 + r) * ld + col0 + c] for rows < M and columns < cw.
  __device__ DISTILL_FORCEINLINE void store_acc(float* __restrict__ out, index_t ld, index_t row0, index_t M, index_t col0,
                                                int cw) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 128;
#pragma unroll
    for (int n = 0; n < 16; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const index_t r = row0 + r0 + g + (e >= 2 ? 8 : 0);
        const int c = c0 + n * 8 + 2 * t + (e & 1);
        if (r < M && c < cw) out[r * ld + col0 + c] = acc[n][e];
      }
  }
};

/// Strict fp32 policy (FFMA). Thread layout: tr = tid / 16 owns rows 4 tr .. 4 tr + 3; for the
/// logits tc = tid % 16 owns columns tc + 16 j; for the accumulator columns 4 tc + 64 j .. + 3.
struct ffma_policy {
  static constexpr int kstep = 4;
  float s[4][4];
  float acc[4][16];

  __device__ DISTILL_FORCEINLINE void zero_logits() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
  }
  __device__ DISTILL_FORCEINLINE void zero_acc() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 16; ++j) acc[i][j] = 0.0f;
  }

  template <class TS, class TK>
  __device__ DISTILL_FORCEINLINE void logits(const TS* __restrict__ zs, const TK* __restrict__ ks, int kw) {
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    constexpr int zld = smem_ld<TS>(), kld = smem_ld<TK>();
    if constexpr (std::is_same_v<TS, float> && std::is_same_v<TK, float>) {
      for (int k = 0; k < kw; k += 4) {
        float4 zv[4], kv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) zv[i] = *reinterpret_cast<const float4*>(zs + (4 * tr + i) * zld + k);
#pragma unroll
        for (int j = 0; j < 4; ++j) kv[j] = *reinterpret_cast<const float4*>(ks + (tc + 16 * j) * kld + k);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            s[i][j] = fmaf(zv[i].x, kv[j].x, s[i][j]);
            s[i][j] = fmaf(zv[i].y, kv[j].y, s[i][j]);
            s[i][j] = fmaf(zv[i].z, kv[j].z, s[i][j]);
            s[i][j] = fmaf(zv[i].w, kv[j].w, s[i][j]);
          }
      }
    } else {
      for (int k = 0; k < kw; ++k) {
        float zv[4], kv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) zv[i] = load<float>(zs[(4 * tr + i) * zld + k]);
#pragma unroll
        for (int j = 0; j < 4; ++j) kv[j] = load<float>(ks[(tc + 16 * j) * kld + k]);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) s[i][j] = fmaf(zv[i], kv[j], s[i][j]);
      }
    }
  }

  __device__ DISTILL_FORCEINLINE void store_logits(float* __restrict__ ss) const {
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) ss[(4 * tr + i) * s_ld + tc + 16 * j] = s[i][j];
  }

  template <class TK>
  __device__ DISTILL_FORCEINLINE void values(const float* __restrict__ ps, const TK* __restrict__ ks, const float* __restrict__ alpha,
                                             int cw) {
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    constexpr int kld = smem_ld<TK>();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float a = alpha[4 * tr + i];
#pragma unroll
      for (int j = 0; j < 16; ++j) acc[i][j] *= a;
    }
    for (int k = 0; k < tile_keys; ++k) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = ps[(4 * tr + i) * s_ld + k];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int c = 4 * tc + 64 * jj;
        if (c >= cw) continue;
        float kv[4];
        if constexpr (std::is_same_v<TK, float>) {
          const float4 v = *reinterpret_cast<const float4*>(ks + k * kld + c);
          kv[0] = v.x, kv[1] = v.y, kv[2] = v.z, kv[3] = v.w;
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) kv[e] = load<float>(ks[k * kld + c + e]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][4 * jj + e] = fmaf(p[i], kv[e], acc[i][4 * jj + e]);
      }
    }
  }

  __device__ DISTILL_FORCEINLINE void store_acc(float* __restrict__ out, index_t ld, index_t row0, index_t M, index_t col0,
                                                int cw) const {
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const index_t r = row0 + 4 * tr + i;
          const int c = 4 * tc + 64 * jj + e;
          if (r < M && c < cw) out[r * ld + col0 + c] = acc[i][4 * jj + e];
        }
  }
};

template <int Mode>
using policy_t = std::conditional_t<Mode == mode_ffma, ffma_policy, mma_policy<Mode>>;

// ---------------------------------------------------------------------------------------------
// Kernel arguments
// ---------------------------------------------------------------------------------------------
template <class TS, class TT, class TQ>
struct tile_args {
  const TS* z;
  index_t ldz;
  const TT* y;
  index_t ldy;
  const TQ* queue;
  index_t ldq;
  index_t queue_rows;  // valid queue keys n
  const std::int64_t* queue_ids;
  index_t queue_ids_stride;
  const std::uint8_t* mask;
  index_t mask_stride;
  const std::int64_t* ids;
  index_t ids_stride;
  const float* norm_q;
  const float* norm_k;
  float* part_m;
  float* part_l;
  float* part_acc;
  index_t M, D;
  index_t queue_tiles, total_tiles;
  float eps, inv_tau;
  int ksplits, nchunks, stages;
  bool in_batch, vec_z, vec_q, vec_y;
};

__device__ DISTILL_FORCEINLINE bool token_valid(const std::uint8_t* mask, index_t stride, index_t i) {
  return mask == nullptr || mask[i * stride] != 0;
}
__device__ DISTILL_FORCEINLINE std::int64_t token_id(const std::int64_t* ids, index_t stride, index_t i) {
  return ids == nullptr ? no_sample_id : ids[i * stride];
}

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
// 2. tiles: logits, online softmax and P K per (64 tokens, key split, D chunk)
// ---------------------------------------------------------------------------------------------
template <int Mode, bool WithGrad, class TS, class TT, class TQ>
__global__ void __launch_bounds__(block_threads, 1) token_nce_tiles_kernel(const tile_args<TS, TT, TQ> a) {
  using policy = policy_t<Mode>;
  using TK = TQ;  // shared-memory key type (in-batch teacher rows are converted to it)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  TS* zs = reinterpret_cast<TS*>(smem_raw);
  TK* ks0 = reinterpret_cast<TK*>(smem_raw + static_cast<std::size_t>(tile_rows) * smem_ld<TS>() * sizeof(TS));
  TK* ks1 = ks0 + static_cast<std::size_t>(tile_keys) * smem_ld<TK>();
  float* ss = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(ks0) +
                                       static_cast<std::size_t>(a.stages) * tile_keys * smem_ld<TK>() * sizeof(TK));
  float* alpha_s = ss + tile_rows * s_ld;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const index_t row0 = static_cast<index_t>(blockIdx.x) * tile_rows;
  const int split = blockIdx.y, dz = blockIdx.z;
  const index_t tile_begin = a.total_tiles * split / a.ksplits, tile_end = a.total_tiles * (split + 1) / a.ksplits;
  const int nchunks = a.nchunks;
  const index_t nsteps = (tile_end - tile_begin) * nchunks;
  const index_t z_rows = imin(tile_rows, a.M - row0);
  const int acc_cols = static_cast<int>(imin(chunk_cols, a.D - static_cast<index_t>(dz) * chunk_cols));

  // Softmax state of the 8 rows this warp owns (every lane holds the same values).
  float m_r[8], l_r[8], scale_r[8];
  std::int64_t id_r[8];
  bool valid_r[8];
#pragma unroll
  for (int rr = 0; rr < 8; ++rr) {
    const index_t r = row0 + warp * 8 + rr;
    valid_r[rr] = r < a.M && token_valid(a.mask, a.mask_stride, r);
    scale_r[rr] = valid_r[rr] ? a.inv_tau / fmaxf(a.norm_q[r], a.eps) : 0.0f;
    id_r[rr] = r < a.M ? token_id(a.ids, a.ids_stride, r) : no_sample_id;
    m_r[rr] = neg_infinity<float>();
    l_r[rr] = 0.0f;
  }
  policy pol;
  pol.zero_logits();
  if constexpr (WithGrad) pol.zero_acc();

  const auto chunk_of = [&](index_t step) { return static_cast<int>((dz + 1 + step % nchunks) % nchunks); };
  const auto issue_keys = [&](index_t step, TK* buf) {
    const index_t tile = tile_begin + step / nchunks;
    const index_t col0 = static_cast<index_t>(chunk_of(step)) * chunk_cols;
    if (tile < a.queue_tiles) {
      const index_t key0 = tile * tile_keys;
      load_tile<tile_keys>(buf, a.queue, a.ldq, key0, imin(tile_keys, a.queue_rows - key0), col0, a.D, a.vec_q);
    } else {
      const index_t key0 = (tile - a.queue_tiles) * tile_keys;
      load_tile<tile_keys>(buf, a.y, a.ldy, key0, imin(tile_keys, a.M - key0), col0, a.D, a.vec_y);
    }
  };

  if (nsteps > 0) {
    if (nchunks == 1) load_tile<tile_rows>(zs, a.z, a.ldz, row0, z_rows, 0, a.D, a.vec_z);
    if (a.stages == 2) issue_keys(0, ks0);
    cp_async_commit();
  }
  for (index_t step = 0; step < nsteps; ++step) {
    const int ci = static_cast<int>(step % nchunks);
    const int chunk = chunk_of(step);
    TK* kbuf = (a.stages == 2 && (step & 1)) ? ks1 : ks0;
    if (nchunks > 1) {
      // Its own commit group, older than the key prefetch below, so wait<1> covers it.
      load_tile<tile_rows>(zs, a.z, a.ldz, row0, z_rows, static_cast<index_t>(chunk) * chunk_cols, a.D, a.vec_z);
      cp_async_commit();
    }
    if (a.stages == 1) {
      issue_keys(step, ks0);
      cp_async_commit();
      cp_async_wait<0>();
    } else if (step + 1 < nsteps) {
      issue_keys(step + 1, (step & 1) ? ks0 : ks1);
      cp_async_commit();
      cp_async_wait<1>();  // everything but the prefetch just issued has landed
    } else {
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();

    if (ci == 0) pol.zero_logits();
    const int kw_raw = static_cast<int>(imin(chunk_cols, a.D - static_cast<index_t>(chunk) * chunk_cols));
    const int kw = (kw_raw + policy::kstep - 1) / policy::kstep * policy::kstep;  // zero-padded in smem
    pol.logits(zs, kbuf, kw);

    if (ci == nchunks - 1) {
      pol.store_logits(ss);
      __syncthreads();
      // Online softmax over this tile, 8 rows per warp, 2 keys per lane.
      const index_t tile = tile_begin + step / nchunks;
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
          const int c = lane + 32 * e;
          const index_t j = key0 + c;
          ok[e] = valid_r[rr] && col_ok[e] &&
                  !(inbatch ? token_nce_detail::inbatch_excluded(r, j, true, id_r[rr], col_id[e])
                            : token_nce_detail::same_sample(id_r[rr], col_id[e]));
          x[e] = ok[e] ? ss[rl * s_ld + c] * scale_r[rr] * col_scale[e] : neg_infinity<float>();
        }
        const float tile_max = warp_max(fmaxf(x[0], x[1]));
        const float m_new = fmaxf(m_r[rr], tile_max);
        const bool none = m_new == neg_infinity<float>();
        const float alpha = none ? 1.0f : exp_(m_r[rr] - m_new);
        float p[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) p[e] = ok[e] ? exp_(x[e] - m_new) : 0.0f;  // a NaN logit stays NaN
        l_r[rr] = l_r[rr] * alpha + warp_sum(p[0] + p[1]);
        m_r[rr] = m_new;
#pragma unroll
        for (int e = 0; e < 2; ++e) ss[rl * s_ld + lane + 32 * e] = p[e] * col_scale[e];  // P_ib / ||y_b|| for raw teacher keys
        if (lane == 0) alpha_s[rl] = alpha;
      }
      __syncthreads();
      if constexpr (WithGrad) pol.values(ss, kbuf, alpha_s, acc_cols);
    }
    __syncthreads();  // zs, the key buffer and ss are rewritten next step
  }

  if (dz == 0 && lane == 0) {
#pragma unroll
    for (int rr = 0; rr < 8; ++rr) {
      const index_t r = row0 + warp * 8 + rr;
      if (r < a.M) {
        a.part_m[static_cast<index_t>(split) * a.M + r] = m_r[rr];
        a.part_l[static_cast<index_t>(split) * a.M + r] = l_r[rr];
      }
    }
  }
  if constexpr (WithGrad)
    pol.store_acc(a.part_acc + static_cast<index_t>(split) * a.M * a.D, a.D, row0, a.M, static_cast<index_t>(dz) * chunk_cols, acc_cols);
}

// ---------------------------------------------------------------------------------------------
// 3. finalize: one warp per token
// ---------------------------------------------------------------------------------------------
template <class TS, class TT, class GS, class GT>
struct finalize_args {
  const TS* z;
  index_t ldz;
  const TT* y;
  index_t ldy;
  const std::uint8_t* mask;
  index_t mask_stride;
  const float *norm_q, *norm_k, *s0, *part_m, *part_l, *part_acc;
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
  index_t M, D;
  float eps, inv_tau, grad_scale;
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
// 4. teacher gradient through the in-batch negatives (FFMA; only with grad_teacher + in-batch)
//    block: 32 teacher keys b x 128 columns; loops over tokens i in tiles of 32:
//      S[i, b] over all of D (32-wide chunks through smem), W = c_i pi_ib / ||z_i||,
//      gk[b, cols] += sum_i W[i, b] z[i, cols]
// ---------------------------------------------------------------------------------------------
template <class TS, class TT>
__global__ void __launch_bounds__(256) token_nce_inbatch_key_grad_kernel(const TS* __restrict__ z, index_t ldz, const TT* __restrict__ y,
                                                                         index_t ldy, const std::uint8_t* __restrict__ mask,
                                                                         index_t mask_stride, const std::int64_t* __restrict__ ids,
                                                                         index_t ids_stride, const float* __restrict__ norm_q,
                                                                         const float* __restrict__ norm_k, const float* __restrict__ lse,
                                                                         const int* __restrict__ valid_count, float* __restrict__ gk,
                                                                         index_t M, index_t D, float eps, float inv_tau, float grad_scale,
                                                                         reduction red) {
  constexpr int T = 32, C = 128;
  __shared__ float zc[T][T + 1], yc[T][T + 1], wsm[T][T + 1];
  __shared__ float zv[T][C + 4];
  const int tid = threadIdx.x;
  const index_t b0 = static_cast<index_t>(blockIdx.x) * T;
  const index_t c0 = static_cast<index_t>(blockIdx.y) * C;
  const int sr = tid / 8, sb = (tid % 8) * 4;  // logits: row sr, keys sb .. sb + 3
  const int ab = tid / 8, ac = (tid % 8) * 4;  // accumulator: key ab, columns ac + 32 jj + e
  const float count = static_cast<float>(*valid_count);
  float acc[16];
#pragma unroll
  for (int x = 0; x < 16; ++x) acc[x] = 0.0f;
  for (index_t r0 = 0; r0 < M; r0 += T) {
    float s[4] = {0, 0, 0, 0};
    for (index_t k0 = 0; k0 < D; k0 += T) {
      for (int x = tid; x < T * T; x += 256) {
        const int rr = x / T, kk = x % T;
        const index_t r = r0 + rr, b = b0 + rr, k = k0 + kk;
        zc[rr][kk] = (r < M && k < D) ? load<float>(z[r * ldz + k]) : 0.0f;
        yc[rr][kk] = (b < M && k < D) ? load<float>(y[b * ldy + k]) : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < T; ++kk) {
        const float zr = zc[sr][kk];
#pragma unroll
        for (int e = 0; e < 4; ++e) s[e] = fmaf(zr, yc[sb + e][kk], s[e]);
      }
      __syncthreads();
    }
    const index_t r = r0 + sr;
    const bool rvalid = r < M && token_valid(mask, mask_stride, r);
    const std::int64_t rid = r < M ? token_id(ids, ids_stride, r) : no_sample_id;
    const float invq = r < M ? 1.0f / fmaxf(norm_q[r], eps) : 0.0f;
    const float ci = rvalid ? grad_scale * token_nce_detail::token_weight(true, red, count, static_cast<float>(M)) * inv_tau : 0.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const index_t b = b0 + sb + e;
      float wv = 0.0f;
      if (rvalid && b < M &&
          !token_nce_detail::inbatch_excluded(r, b, token_valid(mask, mask_stride, b), rid, token_id(ids, ids_stride, b))) {
        const float sib = s[e] * invq * (1.0f / fmaxf(norm_k[b], eps)) * inv_tau;
        wv = exp_(sib - lse[r]) * ci * invq;
      }
      wsm[sr][sb + e] = wv;
    }
    for (int x = tid; x < T * C; x += 256) {
      const int rr = x / C, cc = x % C;
      const index_t rx = r0 + rr, cx = c0 + cc;
      zv[rr][cc] = (rx < M && cx < D) ? load<float>(z[rx * ldz + cx]) : 0.0f;
    }
    __syncthreads();
    for (int rr = 0; rr < T; ++rr) {
      const float wv = wsm[rr][ab];
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[4 * jj + e] = fmaf(wv, zv[rr][ac + 32 * jj + e], acc[4 * jj + e]);
    }
    __syncthreads();
  }
  const index_t b = b0 + ab;
  if (b < M)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const index_t col = c0 + ac + 32 * jj + e;
        if (col < D) gk[b * D + col] += acc[4 * jj + e];  // this block alone owns (b, col)
      }
}

template <class TT, class GT>
__global__ void __launch_bounds__(256) token_nce_teacher_grad_warp_per_token_kernel(const TT* __restrict__ y, index_t ldy,
                                                                                    const float* __restrict__ norm_k,
                                                                                    const float* __restrict__ gk, GT* __restrict__ grad,
                                                                                    index_t ld_gt, index_t M, index_t D, float eps,
                                                                                    bool accumulate) {
  const index_t i = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= M) return;
  const float nk = norm_k[i], invk = 1.0f / fmaxf(nk, eps);
  float dot = 0.0f;
  for (index_t d = lane; d < D; d += 32) dot = fmaf(load<float>(y[i * ldy + d]) * invk, gk[i * D + d], dot);
  dot = warp_sum(dot);
  for (index_t d = lane; d < D; d += 32) {
    float v = token_nce_detail::normalize_backward(gk[i * D + d], load<float>(y[i * ldy + d]) * invk, dot, invk, nk > eps);
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

template <int Mode, bool WithGrad, class TS, class TT, class TQ>
status launch_tiles(const char* fn, cudaStream_t stream, const tile_args<TS, TT, TQ>& args, const plan& p, int stages) {
  auto kernel = token_nce_tiles_kernel<Mode, WithGrad, TS, TT, TQ>;
  const std::size_t bytes = smem_bytes<TS, TQ>(stages);
  DISTILL_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  const dim3 grid(static_cast<unsigned>(p.row_tiles), static_cast<unsigned>(p.ksplits), static_cast<unsigned>(p.dsplits));
  kernel<<<grid, block_threads, bytes, stream>>>(args);
  return launch_status(fn, stream);
}

template <class V>
bool rows_16b_aligned(const V& v) {
  using T = typename V::value_type;
  return reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0 && (v.extent(0) <= 1 || (v.stride(0) * static_cast<index_t>(sizeof(T))) % 16 == 0);
}

/// The whole CUDA pass. Views were validated by the caller (shapes and options).
template <class TS, class TT, class TQ>
status run(const char* fn, const cuda& ctx, cuda_view<const TS, 2> Z, cuda_view<const TT, 2> Y, const sample_queue<TQ, cuda_space>& queue,
           cuda_view<const std::uint8_t, 1> mask, cuda_view<const std::int64_t, 1> ids, cuda_view<float, 1> loss,
           cuda_view<float, 1> per_token, cuda_view<TS, 2> grad_student, cuda_view<TT, 2> grad_teacher,
           cuda_view<std::byte, 1> workspace, const token_nce_options& opt) {
  const cudaStream_t stream = stream_of(ctx);
  const index_t M = Z.extent(0), D = Z.extent(1);
  const device_props dp = props();
  const plan p = make_plan(M, D, queue.capacity(), opt.in_batch_negatives, dp.sms);
  // the workspace size was checked by the entry point (token_nce_queue_workspace_size)
  if (opt.precision != matmul_precision::fp32 && dp.major < 8)
    return fail(errc::unsupported_dtype, fn, "TF32 and BF16 precision need tensor cores of compute capability 8.0 or newer");
  int stages = 2;
  if (smem_bytes<TS, TQ>(2) > static_cast<std::size_t>(dp.smem_optin)) stages = 1;
  if (smem_bytes<TS, TQ>(1) > static_cast<std::size_t>(dp.smem_optin))
    return fail(errc::unsupported_layout, fn,
                "the device offers " + std::to_string(dp.smem_optin) + " bytes of shared memory per block, the kernel needs " +
                    std::to_string(smem_bytes<TS, TQ>(1)));
  auto base = reinterpret_cast<std::uintptr_t>(workspace.data());
  base = (base + 255) & ~std::uintptr_t(255);
  const auto at = [&](std::size_t off) { return reinterpret_cast<unsigned char*>(base + off); };
  float* norm_q = reinterpret_cast<float*>(at(p.norm_q));
  float* norm_k = reinterpret_cast<float*>(at(p.norm_k));
  float* s0 = reinterpret_cast<float*>(at(p.s0));
  float* lse = reinterpret_cast<float*>(at(p.lse));
  float* tok_loss = reinterpret_cast<float*>(at(p.loss));
  int* count = reinterpret_cast<int*>(at(p.count));
  float* part_m = reinterpret_cast<float*>(at(p.part_m));
  float* part_l = reinterpret_cast<float*>(at(p.part_l));
  float* part_acc = reinterpret_cast<float*>(at(p.acc));
  float* gk = reinterpret_cast<float*>(at(p.gk));

  const bool want_grad = !grad_student.empty() || !grad_teacher.empty();
  const float inv_tau = 1.0f / opt.temperature;
  const float eps = opt.normalize_eps;
  const index_t mask_stride = mask.empty() ? 0 : mask.stride(0);
  const index_t ids_stride = ids.empty() ? 0 : ids.stride(0);

  // 1. prepare
  DISTILL_CUDA_TRY(cudaMemsetAsync(count, 0, sizeof(int), stream));
  token_nce_prepare_warp_per_token_kernel<TS, TT><<<static_cast<unsigned>(ceil_div<index_t>(M, 8)), 256, 0, stream>>>(
      Z.data(), Z.stride(0), Y.data(), Y.stride(0), M, D, mask.empty() ? nullptr : mask.data(), mask_stride, inv_tau, eps, norm_q,
      norm_k, s0, count);
  DISTILL_TRY(launch_status(fn, stream));

  // 2. tiles
  tile_args<TS, TT, TQ> ta{};
  ta.z = Z.data();
  ta.ldz = Z.stride(0);
  ta.y = Y.data();
  ta.ldy = Y.stride(0);
  ta.queue = queue.keys().empty() ? nullptr : queue.keys().data();
  ta.ldq = queue.keys().empty() ? 0 : queue.keys().stride(0);
  ta.queue_rows = queue.size();
  ta.queue_ids = queue.has_ids() ? queue.ids().data() : nullptr;
  ta.queue_ids_stride = queue.has_ids() ? queue.ids().stride(0) : 0;
  ta.mask = mask.empty() ? nullptr : mask.data();
  ta.mask_stride = mask_stride;
  ta.ids = ids.empty() ? nullptr : ids.data();
  ta.ids_stride = ids_stride;
  ta.norm_q = norm_q;
  ta.norm_k = norm_k;
  ta.part_m = part_m;
  ta.part_l = part_l;
  ta.part_acc = part_acc;
  ta.M = M;
  ta.D = D;
  ta.queue_tiles = ceil_div<index_t>(queue.size(), tile_keys);
  ta.total_tiles = ta.queue_tiles + (opt.in_batch_negatives ? ceil_div<index_t>(M, tile_keys) : 0);
  ta.eps = eps;
  ta.inv_tau = inv_tau;
  ta.ksplits = p.ksplits;
  ta.nchunks = p.dsplits;
  ta.stages = stages;
  ta.in_batch = opt.in_batch_negatives;
  ta.vec_z = rows_16b_aligned(Z);
  ta.vec_q = queue.keys().empty() || rows_16b_aligned(queue.keys());
  ta.vec_y = rows_16b_aligned(Y);
  const status st = [&]() -> status {
    switch (opt.precision) {
      case matmul_precision::tf32:
        if (want_grad) return launch_tiles<mode_tf32, true>(fn, stream, ta, p, stages);
        return launch_tiles<mode_tf32, false>(fn, stream, ta, p, stages);
      case matmul_precision::bf16:
        if (want_grad) return launch_tiles<mode_bf16, true>(fn, stream, ta, p, stages);
        return launch_tiles<mode_bf16, false>(fn, stream, ta, p, stages);
      default:
        if (want_grad) return launch_tiles<mode_ffma, true>(fn, stream, ta, p, stages);
        return launch_tiles<mode_ffma, false>(fn, stream, ta, p, stages);
    }
  }();
  DISTILL_TRY(st);

  // 3. finalize
  const bool teacher_inbatch = !grad_teacher.empty() && opt.in_batch_negatives;
  finalize_args<TS, TT, TS, TT> fa{};
  fa.z = Z.data();
  fa.ldz = Z.stride(0);
  fa.y = Y.data();
  fa.ldy = Y.stride(0);
  fa.mask = mask.empty() ? nullptr : mask.data();
  fa.mask_stride = mask_stride;
  fa.norm_q = norm_q;
  fa.norm_k = norm_k;
  fa.s0 = s0;
  fa.part_m = part_m;
  fa.part_l = part_l;
  fa.part_acc = part_acc;
  fa.valid_count = count;
  fa.lse = lse;
  fa.tok_loss = tok_loss;
  fa.loss_none = (!loss.empty() && opt.reduction == reduction::none) ? loss.data() : nullptr;
  fa.loss_stride = loss.empty() ? 0 : loss.stride(0);
  fa.per_token = per_token.empty() ? nullptr : per_token.data();
  fa.per_token_stride = per_token.empty() ? 0 : per_token.stride(0);
  fa.grad_student = grad_student.empty() ? nullptr : grad_student.data();
  fa.ld_gs = grad_student.empty() ? 0 : grad_student.stride(0);
  fa.grad_teacher = (grad_teacher.empty() || teacher_inbatch) ? nullptr : grad_teacher.data();
  fa.ld_gt = grad_teacher.empty() ? 0 : grad_teacher.stride(0);
  fa.gk = teacher_inbatch ? gk : nullptr;
  fa.M = M;
  fa.D = D;
  fa.eps = eps;
  fa.inv_tau = inv_tau;
  fa.grad_scale = opt.grad_scale;
  fa.reduction = opt.reduction;
  fa.ksplits = p.ksplits;
  fa.accumulate = opt.accumulate;
  token_nce_finalize_warp_per_token_kernel<TS, TT, TS, TT><<<static_cast<unsigned>(ceil_div<index_t>(M, 8)), 256, 0, stream>>>(fa);
  DISTILL_TRY(launch_status(fn, stream));

  // 4. teacher gradient through in-batch negatives
  if (teacher_inbatch) {
    const dim3 grid(static_cast<unsigned>(ceil_div<index_t>(M, 32)), static_cast<unsigned>(ceil_div<index_t>(D, 128)));
    token_nce_inbatch_key_grad_kernel<TS, TT><<<grid, 256, 0, stream>>>(Z.data(), Z.stride(0), Y.data(), Y.stride(0), fa.mask, mask_stride,
                                                                        ids.empty() ? nullptr : ids.data(), ids_stride, norm_q, norm_k, lse,
                                                                        count, gk, M, D, eps, inv_tau, opt.grad_scale, opt.reduction);
    DISTILL_TRY(launch_status(fn, stream));
    token_nce_teacher_grad_warp_per_token_kernel<TT, TT><<<static_cast<unsigned>(ceil_div<index_t>(M, 8)), 256, 0, stream>>>(
        Y.data(), Y.stride(0), norm_k, gk, grad_teacher.data(), grad_teacher.stride(0), M, D, eps, opt.accumulate);
    DISTILL_TRY(launch_status(fn, stream));
  }

  // 5. reduced loss
  if (!loss.empty() && opt.reduction != reduction::none) {
    token_nce_reduce_loss_single_block_kernel<<<1, 1024, 0, stream>>>(tok_loss, fa.mask, mask_stride, count, M, opt.reduction, loss.data());
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
  return cuda_detail::nce::make_plan(tokens, dim, queue_capacity, opt.in_batch_negatives, cuda_detail::nce::props().sms).total;
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
