// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The tile-GEMM layer every hand-written matrix product of distill is built from. nvcc only.
//!
//! 1. Arithmetic: the precision of a product (`matmul_precision`: FFMA in fp32, TF32 or BF16
//!    tensor cores, fp32 accumulation), conversions, mma.sync m16n8k8 (tf32) / m16n8k16 (bf16),
//!    cp.async.
//! 2. Block-staged GEMM, C = A B with operands read through functors a(m, k), b(k, n), so a
//!    caller fuses transposes, scalings and gathers into the loads: K is staged BK deep into
//!    shared memory (A^T k-major, B n-major), each warp owns a WM x WN piece of the BM x BN
//!    output tile (SIMT FMA on a lane grid, or WMMA fragments), the epilogue gets every output
//!    element. `block_gemm` loops one block over all output tiles (relational pairing's
//!    per-tile MLP); `tile_gemm_block_per_tile_kernel` gives each block one tile (the
//!    text-embedding classifier).
//! 3. Flash-style tiles (token NCE): a 64-row operand tile and 64-key tiles staged in 256-column
//!    chunks (cp.async, double-buffered when it fits), per key tile S = R K^T on FFMA or mma.sync
//!    fragments, a caller's weighting of S in place, then acc = alpha acc + W K with the same
//!    key tile as the values (`flash_tile_loop`). The shared-memory index math lives in
//!    detail/fragment_layout.cuh, which a CPU test checks for bank conflicts.

#if !defined(__CUDACC__)
#error "distill/cuda/detail/tile_gemm.cuh must be compiled by nvcc"
#endif

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/core/precision.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/cuda/detail/fragment_layout.cuh"

namespace distill::cuda_detail::tile {

// =============================================================================================
// 1. Arithmetic
// =============================================================================================

/// Element type of staged operands: bf16 for BF16 products, float otherwise (TF32 rounds when a
/// fragment is loaded).
template <matmul_precision P>
using compute_t = std::conditional_t<P == matmul_precision::bf16, __nv_bfloat16, float>;

__device__ DISTILL_FORCEINLINE float to_float(float x) { return x; }
__device__ DISTILL_FORCEINLINE double to_float(double x) { return x; }
__device__ DISTILL_FORCEINLINE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ DISTILL_FORCEINLINE T from_float(float x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return x;
}
/// A value as it is staged for a product of precision P (TF32 rounded here for WMMA).
template <matmul_precision P, class Acc>
__device__ DISTILL_FORCEINLINE auto to_compute(Acc v) {
  if constexpr (P == matmul_precision::tf32) return nvcuda::wmma::__float_to_tf32(v);
  else if constexpr (P == matmul_precision::bf16) return __float2bfloat16_rn(v);
  else return v;
}

template <class T>
inline constexpr bool is_bf16_v = std::is_same_v<std::remove_cv_t<T>, bfloat16> || std::is_same_v<std::remove_cv_t<T>, __nv_bfloat16>;

__device__ DISTILL_FORCEINLINE std::uint32_t to_tf32(float x) {
  std::uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ DISTILL_FORCEINLINE std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const std::uint32_t*>(&v);
}
/// Two consecutive elements p[0], p[1] as a packed bf16 pair (one 32-bit load when already bf16).
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

/// 16-byte global -> shared copy (sm_80+); src_bytes 0 zero-fills the destination.
__device__ DISTILL_FORCEINLINE void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#else
  (void)smem, (void)gmem, (void)src_bytes;
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

/// min for device code (std::min is not __device__ without --expt-relaxed-constexpr).
__host__ __device__ DISTILL_FORCEINLINE index_t imin(index_t a, index_t b) { return a < b ? a : b; }

// =============================================================================================
// 2. Block-staged GEMM
// =============================================================================================

/// BM x BN output tiles, K staged BK deep, WarpsM x WarpsN warps of WM x WN outputs each. Staged
/// rows are padded by Pad elements (keeps WMMA pointers 32-byte aligned, spreads banks); the
/// fp32 output tile of the smem epilogue has rows of BN + 4.
template <int BM_, int BN_, int BK_, int WarpsM, int WarpsN, int Pad>
struct block_shape {
  static constexpr int BM = BM_, BN = BN_, BK = BK_;
  static constexpr int warps_n = WarpsN;
  static constexpr int threads = 32 * WarpsM * WarpsN;
  static constexpr int WM = BM / WarpsM, WN = BN / WarpsN;
  static constexpr int ld_a = BM + Pad, ld_b = BN + Pad, ld_c = BN + 4;
  template <class C>
  static constexpr std::size_t staging_bytes = static_cast<std::size_t>(BK) * (ld_a + ld_b) * sizeof(C);
  static constexpr std::size_t c_bytes = static_cast<std::size_t>(BM) * ld_c * sizeof(float);
  /// Shared memory of block_gemm (staging, aliased by the output tile).
  template <class C>
  static constexpr std::size_t smem_bytes = staging_bytes<C> > c_bytes ? staging_bytes<C> : c_bytes;
};

/// N consecutive values of T from 16-byte aligned shared memory (vector loads where they fit).
template <int N, class T>
__device__ DISTILL_FORCEINLINE void load_run(const T* p, T (&out)[N]) {
  if constexpr (std::is_same_v<T, float> && N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + i);
      out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
    }
  } else if constexpr (std::is_same_v<T, double> && N % 2 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const double2 v = *reinterpret_cast<const double2*>(p + i);
      out[i] = v.x, out[i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = p[i];
  }
}

/// SIMT warp tile: the warp's WM x WN outputs on a (32 / LN) x LN lane grid, each lane a
/// contiguous TM x TN block, FMA in Acc (float or double).
template <class Acc, int WM, int WN, int LN, int Unroll>
struct simt_warp_tile {
  static constexpr int LM = 32 / LN, TM = WM / LM, TN = WN / LN;
  static_assert(LM * LN == 32 && TM * LM == WM && TN * LN == WN, "the lane grid must tile the warp's outputs");
  using value_type = Acc;
  Acc acc[TM][TN];

  __device__ DISTILL_FORCEINLINE void zero() {
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) acc[r][c] = Acc(0);
  }
  /// acc += As[0:BK][wrow + ...]^T Bs[0:BK][wcol + ...] (As k-major with row stride LDA).
  template <int BK, int LDA, int LDB>
  __device__ DISTILL_FORCEINLINE void mma(const Acc* As, const Acc* Bs, int wrow, int wcol) {
    const int lane = threadIdx.x & 31, ly = lane / LN, lx = lane % LN;
    const Acc* a = As + wrow + ly * TM;
    const Acc* b = Bs + wcol + lx * TN;
#pragma unroll(Unroll)
    for (int k = 0; k < BK; ++k) {
      Acc av[TM], bv[TN];
      load_run<TM>(a + k * LDA, av);
      load_run<TN>(b + k * LDB, bv);
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[r][c] = fma(av[r], bv[c], acc[r][c]);
    }
  }
  /// f(row, col, value) for each of the lane's outputs, in warp-tile coordinates + (wrow, wcol).
  template <class F>
  __device__ DISTILL_FORCEINLINE void for_each(int wrow, int wcol, F&& f) const {
    const int lane = threadIdx.x & 31, ly = lane / LN, lx = lane % LN;
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) f(wrow + ly * TM + r, wcol + lx * TN + c, acc[r][c]);
  }
  template <int LDC>
  __device__ DISTILL_FORCEINLINE void store(float* Cs, int wrow, int wcol) const {
    for_each(wrow, wcol, [&](int r, int c, Acc v) { Cs[r * LDC + c] = static_cast<float>(v); });
  }
};

/// Tensor-core warp tile through WMMA: FM x FN fragments of 16 x 16 (m16n16k8 tf32, m16n16k16 bf16).
template <matmul_precision P, int FM, int FN>
struct wmma_warp_tile {
  static_assert(P != matmul_precision::fp32, "wmma_warp_tile is for TF32 and BF16");
  static constexpr bool bf16 = P == matmul_precision::bf16;
  static constexpr int KS = bf16 ? 16 : 8;
  using elem = std::conditional_t<bf16, __nv_bfloat16, nvcuda::wmma::precision::tf32>;
  using a_frag = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, KS, elem, nvcuda::wmma::col_major>;
  using b_frag = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, KS, elem, nvcuda::wmma::row_major>;
  using c_frag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, KS, float>;
  using value_type = float;
  c_frag acc[FM][FN];

  __device__ DISTILL_FORCEINLINE void zero() {
#pragma unroll
    for (int mi = 0; mi < FM; ++mi)
#pragma unroll
      for (int ni = 0; ni < FN; ++ni) nvcuda::wmma::fill_fragment(acc[mi][ni], 0.0f);
  }
  template <int BK, int LDA, int LDB>
  __device__ DISTILL_FORCEINLINE void mma(const compute_t<P>* As, const compute_t<P>* Bs, int wrow, int wcol) {
    // One A fragment live at a time (plus the FN B fragments) keeps the register count low
    // enough for two blocks per SM in relational pairing.
#pragma unroll 1
    for (int kk = 0; kk < BK; kk += KS) {
      b_frag b[FN];
#pragma unroll
      for (int ni = 0; ni < FN; ++ni) nvcuda::wmma::load_matrix_sync(b[ni], Bs + kk * LDB + wcol + ni * 16, LDB);
#pragma unroll
      for (int mi = 0; mi < FM; ++mi) {
        a_frag a;
        nvcuda::wmma::load_matrix_sync(a, As + kk * LDA + wrow + mi * 16, LDA);
#pragma unroll
        for (int ni = 0; ni < FN; ++ni) nvcuda::wmma::mma_sync(acc[mi][ni], a, b[ni], acc[mi][ni]);
      }
    }
  }
  template <int LDC>
  __device__ DISTILL_FORCEINLINE void store(float* Cs, int wrow, int wcol) const {
#pragma unroll
    for (int mi = 0; mi < FM; ++mi)
#pragma unroll
      for (int ni = 0; ni < FN; ++ni)
        nvcuda::wmma::store_matrix_sync(Cs + (wrow + mi * 16) * LDC + wcol + ni * 16, acc[mi][ni], LDC, nvcuda::wmma::mem_row_major);
  }
};

/// acc = A[m0:, :] B[:, n0:] for one BM x BN output tile of the block: K in BK-deep slices
/// staged into As (A^T, k-major) and Bs; AMFast / BNFast say which index of a(m, k) / b(k, n)
/// is contiguous in memory, so consecutive threads load consecutive addresses. Elements past
/// M, N or K are staged as zeros. Begins each slice with __syncthreads (the previous reads of
/// the staging area are done) and leaves the last slice's staging in place.
template <class Shape, matmul_precision P, bool AMFast, bool BNFast, class Tile, class I, class AF, class BF, class C>
__device__ DISTILL_FORCEINLINE void block_tile_accumulate(Tile& acc, I m0, I n0, I M, I N, I K, const AF& a, const BF& b, C* As, C* Bs) {
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int wrow = (warp / Shape::warps_n) * Shape::WM, wcol = (warp % Shape::warps_n) * Shape::WN;
  acc.zero();
  for (I k0 = 0; k0 < K; k0 += Shape::BK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < Shape::BK * Shape::BM; idx += Shape::threads) {
      const int m = AMFast ? idx % Shape::BM : idx / Shape::BK;
      const int k = AMFast ? idx / Shape::BM : idx % Shape::BK;
      const I gm = m0 + m, gk = k0 + k;
      As[k * Shape::ld_a + m] = to_compute<P>(gm < M && gk < K ? a(gm, gk) : decltype(a(gm, gk))(0));
    }
    for (int idx = threadIdx.x; idx < Shape::BK * Shape::BN; idx += Shape::threads) {
      const int n = BNFast ? idx % Shape::BN : idx / Shape::BK;
      const int k = BNFast ? idx / Shape::BN : idx % Shape::BK;
      const I gn = n0 + n, gk = k0 + k;
      Bs[k * Shape::ld_b + n] = to_compute<P>(gn < N && gk < K ? b(gk, gn) : decltype(b(gk, gn))(0));
    }
    __syncthreads();
    acc.template mma<Shape::BK, Shape::ld_a, Shape::ld_b>(As, Bs, wrow, wcol);
  }
}

/// C [M, N] = A [M, K] B [K, N] for the whole block, in BM x BN output tiles; every output goes
/// to `ep(m, n, value)`, or 4 at a time to `ep4(m, n, float4)` when Vec4. The output tile passes
/// through shared memory (aliasing the staging), so the epilogue's accesses are coalesced
/// whatever the warp tile's layout. Begins and ends with __syncthreads: callers may write the
/// operands right before and read results right after. Not inlined (its register budget stays
/// its own); the functors capture by value so what they read stays in registers.
template <class Shape, matmul_precision P, class Tile, bool AMFast, bool BNFast, bool Vec4, class AF, class BF, class EP, class EP4>
__device__ __noinline__ void block_gemm(int M, int N, int K, AF a, BF b, EP ep, EP4 ep4, unsigned char* smem) {
  using C = compute_t<P>;
  C* As = reinterpret_cast<C*>(smem);
  C* Bs = As + Shape::BK * Shape::ld_a;
  float* Cs = reinterpret_cast<float*>(smem);
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int wrow = (warp / Shape::warps_n) * Shape::WM, wcol = (warp % Shape::warps_n) * Shape::WN;
  for (int m0 = 0; m0 < M; m0 += Shape::BM)
    for (int n0 = 0; n0 < N; n0 += Shape::BN) {
      Tile acc;
      block_tile_accumulate<Shape, P, AMFast, BNFast>(acc, m0, n0, M, N, K, a, b, As, Bs);
      __syncthreads();  // every warp is done with As / Bs before Cs (aliased) is written
      acc.template store<Shape::ld_c>(Cs, wrow, wcol);
      __syncthreads();
      if constexpr (Vec4) {
        for (int idx = threadIdx.x; idx < Shape::BM * (Shape::BN / 4); idx += Shape::threads) {
          const int m = idx / (Shape::BN / 4), n = (idx % (Shape::BN / 4)) * 4;
          const int gm = m0 + m, gn = n0 + n;
          if (gm >= M) continue;
          const float* c = Cs + m * Shape::ld_c + n;
          if (gn + 3 < N) {
            ep4(gm, gn, make_float4(c[0], c[1], c[2], c[3]));
          } else {
            for (int t = 0; t < 4; ++t)
              if (gn + t < N) ep(gm, gn + t, c[t]);
          }
        }
      } else {
        for (int idx = threadIdx.x; idx < Shape::BM * Shape::BN; idx += Shape::threads) {
          const int m = idx / Shape::BN, n = idx % Shape::BN;
          if (m0 + m < M && n0 + n < N) ep(m0 + m, n0 + n, Cs[m * Shape::ld_c + n]);
        }
      }
    }
  __syncthreads();  // epilogue writes are visible to the whole block; smem is free again
}

/// An epilogue that takes no float4 (block_gemm without Vec4).
struct no_vec4_epilogue {
  __device__ void operator()(int, int, float4) const {}
};

/// One BM x BN output tile per block (grid x over N, y over M), SIMT FMA in the tile's value
/// type (float or double), the epilogue `epi(m, n, value)` straight from registers.
template <class Shape, class Tile, bool AMFast, bool BNFast, class AF, class BF, class Epi>
__global__ void __launch_bounds__(Shape::threads)
    tile_gemm_block_per_tile_kernel(index_t M, index_t N, index_t K, AF a, BF b, Epi epi) {
  using Acc = typename Tile::value_type;
  __shared__ __align__(16) Acc As[Shape::BK * Shape::ld_a];
  __shared__ __align__(16) Acc Bs[Shape::BK * Shape::ld_b];
  const index_t m0 = static_cast<index_t>(blockIdx.y) * Shape::BM, n0 = static_cast<index_t>(blockIdx.x) * Shape::BN;
  Tile acc;
  block_tile_accumulate<Shape, matmul_precision::fp32, AMFast, BNFast>(acc, m0, n0, M, N, K, a, b, As, Bs);
  const int warp = static_cast<int>(threadIdx.x >> 5);
  acc.for_each((warp / Shape::warps_n) * Shape::WM, (warp % Shape::warps_n) * Shape::WN, [&](int r, int c, Acc v) {
    const index_t m = m0 + r, n = n0 + c;
    if (m < M && n < N) epi(m, n, v);
  });
}

// =============================================================================================
// 3. Flash-style tiles
// =============================================================================================
namespace flash {

using fragment::chunk_cols;
using fragment::tile_keys;
using fragment::tile_rows;
inline constexpr int threads = 256;  // 8 warps; each owns 8 rows of the softmax / weighting step

template <class T>
constexpr int ld() {
  return fragment::operand_ld(static_cast<int>(sizeof(T)));
}
/// Bytes of a staged operand tile of `Rows` rows of T.
template <int Rows, class T>
constexpr std::size_t operand_bytes() {
  return static_cast<std::size_t>(Rows) * ld<T>() * sizeof(T);
}

/// Rows [row0, row0 + valid_rows) x columns [col0, col0 + chunk_cols) of a row-major global
/// matrix (row stride ldg, D columns) into smem [Rows][ld<Dst>()]; rows >= valid_rows and
/// columns >= D become zero. `vec` (same type, 16-byte aligned rows) uses cp.async 16-byte
/// copies (zero-filled by the hardware past the end; the chunk straddling D is copied element
/// by element); otherwise element by element with conversion. Every thread of the block calls
/// it; the caller commits, waits and synchronises before reading.
template <int Rows, class Dst, class Src>
__device__ DISTILL_FORCEINLINE void load_tile(Dst* __restrict__ smem, const Src* __restrict__ g, index_t ldg, index_t row0,
                                              index_t valid_rows, index_t col0, index_t D, bool vec) {
  constexpr int ldsm = ld<Dst>();
  constexpr int per_chunk = static_cast<int>(16 / sizeof(Dst));  // elements per 16-byte chunk
  constexpr int chunks_per_row = chunk_cols / per_chunk;
  constexpr int total = Rows * chunks_per_row;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<std::remove_cv_t<Dst>, std::remove_cv_t<Src>>) {
    if (vec) {
      for (int c = threadIdx.x; c < total; c += threads) {
        const int r = c / chunks_per_row, cc = c % chunks_per_row;
        const index_t col = col0 + static_cast<index_t>(cc) * per_chunk;
        const bool in = r < valid_rows && col < D;
        Dst* dst = smem + r * ldsm + cc * per_chunk;
        if (in && D - col < per_chunk) {  // the chunk straddling D: element by element
#pragma unroll
          for (int e = 0; e < per_chunk; ++e) dst[e] = col + e < D ? g[(row0 + r) * ldg + col + e] : store<Dst>(0.0f);
        } else {
          cp_async16(dst, in ? g + (row0 + r) * ldg + col : g, in ? 16 : 0);  // 0 bytes: zero fill
        }
      }
      return;
    }
  }
#endif
  (void)vec;
  for (int c = threadIdx.x; c < total; c += threads) {
    const int r = c / chunks_per_row, cc = c % chunks_per_row;
    const index_t col = col0 + static_cast<index_t>(cc) * per_chunk;
    Dst* dst = smem + r * ldsm + cc * per_chunk;
#pragma unroll
    for (int e = 0; e < per_chunk; ++e) {
      const bool in = r < valid_rows && col + e < D;
      dst[e] = store<Dst>(in ? load<float>(g[(row0 + r) * ldg + col + e]) : 0.0f);
    }
  }
}

/// Zeroes a policy's register tile (fully unrolled, so it stays in registers).
template <int R, int C>
__device__ DISTILL_FORCEINLINE void zero_registers(float (&tile)[R][C]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < C; ++j) tile[i][j] = 0.0f;
}

/// Tensor-core policy (TF32 or BF16 mma.sync). Warp w owns rows 16 (w / 2) .. +15; logits
/// columns 32 (w % 2) .. +31 (4 n-tiles of 8); accumulator columns 128 (w % 2) .. +127 (16
/// n-tiles of 8).
template <matmul_precision P>
struct mma_policy {
  static_assert(P != matmul_precision::fp32, "mma_policy is for TF32 and BF16");
  static constexpr bool tf32 = P == matmul_precision::tf32;
  static constexpr int kstep = tf32 ? 8 : 16;
  static constexpr int s_ld = fragment::logits_ld_mma;
  float s[4][4];     // logits: 4 n-tiles of the warp's 16 x 32
  float acc[16][4];  // accumulator: 16 n-tiles of the warp's 16 x 128

  __device__ DISTILL_FORCEINLINE void zero_logits() { zero_registers(s); }
  __device__ DISTILL_FORCEINLINE void zero_acc() { zero_registers(acc); }

  /// s += Rs[64, 0:kw] Ks[64, 0:kw]^T (kw a multiple of kstep; columns past D are zero in smem).
  template <class TR, class TK>
  __device__ DISTILL_FORCEINLINE void logits(const TR* __restrict__ rs, const TK* __restrict__ ks, int kw) {
    using fragment::bf16_k;
    using fragment::tf32_logits_k;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = fragment::group_of(lane), t = fragment::thread_of(lane);
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 32;
    constexpr int rld = ld<TR>(), kld = ld<TK>();
    const TR* ra = rs + (r0 + g) * rld;
    const TR* rb = rs + (r0 + g + 8) * rld;
    for (int k0 = 0; k0 < kw; k0 += kstep) {
      std::uint32_t a[4];
      if constexpr (tf32) {
        a[0] = to_tf32(load<float>(ra[k0 + tf32_logits_k(t, 0)]));
        a[1] = to_tf32(load<float>(rb[k0 + tf32_logits_k(t, 0)]));
        a[2] = to_tf32(load<float>(ra[k0 + tf32_logits_k(t, 1)]));
        a[3] = to_tf32(load<float>(rb[k0 + tf32_logits_k(t, 1)]));
      } else {
        a[0] = bf16_pair(ra + k0 + bf16_k(t, 0, 0));
        a[1] = bf16_pair(rb + k0 + bf16_k(t, 0, 0));
        a[2] = bf16_pair(ra + k0 + bf16_k(t, 1, 0));
        a[3] = bf16_pair(rb + k0 + bf16_k(t, 1, 0));
      }
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const TK* kr = ks + (c0 + n * 8 + g) * kld + k0;  // B[k][col] = K[col][k]
        if constexpr (tf32) mma_tf32(s[n], a, to_tf32(load<float>(kr[tf32_logits_k(t, 0)])), to_tf32(load<float>(kr[tf32_logits_k(t, 1)])));
        else mma_bf16(s[n], a, bf16_pair(kr + bf16_k(t, 0, 0)), bf16_pair(kr + bf16_k(t, 1, 0)));
      }
    }
  }

  /// The logits into ss [64][s_ld] (8-byte stores: columns 2t, 2t + 1).
  __device__ DISTILL_FORCEINLINE void store_logits(float* __restrict__ ss) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = fragment::group_of(lane), t = fragment::thread_of(lane);
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 32;
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const int c = c0 + n * 8 + 2 * t;
      *reinterpret_cast<float2*>(ss + (r0 + g) * s_ld + c) = make_float2(s[n][0], s[n][1]);
      *reinterpret_cast<float2*>(ss + (r0 + g + 8) * s_ld + c) = make_float2(s[n][2], s[n][3]);
    }
  }

  /// acc = alpha acc + W[64, 64] Ks[64, 0:cw] (columns >= cw skipped: they are past D).
  template <class TK>
  __device__ DISTILL_FORCEINLINE void values(const float* __restrict__ ws, const TK* __restrict__ ks, const float* __restrict__ alpha,
                                             int cw) {
    using fragment::bf16_k;
    using fragment::tf32_values_k;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = fragment::group_of(lane), t = fragment::thread_of(lane);
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 128;
    constexpr int kld = ld<TK>();
    const float a_lo = alpha[r0 + g], a_hi = alpha[r0 + g + 8];
#pragma unroll
    for (int n = 0; n < 16; ++n) {
      acc[n][0] *= a_lo;
      acc[n][1] *= a_lo;
      acc[n][2] *= a_hi;
      acc[n][3] *= a_hi;
    }
    const float* wa = ws + (r0 + g) * s_ld;
    const float* wb = ws + (r0 + g + 8) * s_ld;
#pragma unroll 2
    for (int k0 = 0; k0 < tile_keys; k0 += kstep) {
      std::uint32_t a[4];
      int kr[2];  // the key rows of B's two registers
      if constexpr (tf32) {
        // registers 0 and 1 of thread t hold keys 2t and 2t + 1: one 8-byte load per row
        const float2 lo = *reinterpret_cast<const float2*>(wa + k0 + tf32_values_k(t, 0));
        const float2 hi = *reinterpret_cast<const float2*>(wb + k0 + tf32_values_k(t, 0));
        a[0] = to_tf32(lo.x), a[2] = to_tf32(lo.y), a[1] = to_tf32(hi.x), a[3] = to_tf32(hi.y);
        kr[0] = k0 + tf32_values_k(t, 0), kr[1] = k0 + tf32_values_k(t, 1);
      } else {
        const float2 a0 = *reinterpret_cast<const float2*>(wa + k0 + bf16_k(t, 0, 0));
        const float2 a1 = *reinterpret_cast<const float2*>(wb + k0 + bf16_k(t, 0, 0));
        const float2 a2 = *reinterpret_cast<const float2*>(wa + k0 + bf16_k(t, 1, 0));
        const float2 a3 = *reinterpret_cast<const float2*>(wb + k0 + bf16_k(t, 1, 0));
        a[0] = pack_bf16(a0.x, a0.y), a[1] = pack_bf16(a1.x, a1.y), a[2] = pack_bf16(a2.x, a2.y), a[3] = pack_bf16(a3.x, a3.y);
        kr[0] = k0 + bf16_k(t, 0, 0), kr[1] = k0 + bf16_k(t, 1, 0);
      }
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        if (c0 + n * 8 >= cw) break;  // warp-uniform
        const int col = c0 + n * 8 + g;  // B[k][col] = K[k][col]
        if constexpr (tf32) {
          mma_tf32(acc[n], a, to_tf32(load<float>(ks[kr[0] * kld + col])), to_tf32(load<float>(ks[kr[1] * kld + col])));
        } else {
          const std::uint32_t b0 = pack_bf16(load<float>(ks[kr[0] * kld + col]), load<float>(ks[(kr[0] + 1) * kld + col]));
          const std::uint32_t b1 = pack_bf16(load<float>(ks[kr[1] * kld + col]), load<float>(ks[(kr[1] + 1) * kld + col]));
          mma_bf16(acc[n], a, b0, b1);
        }
      }
    }
  }

  /// acc rows -> out[(row0 + r) * ldo + col0 + c] for rows < M and columns < cw.
  __device__ DISTILL_FORCEINLINE void store_acc(float* __restrict__ out, index_t ldo, index_t row0, index_t M, index_t col0,
                                                int cw) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = fragment::group_of(lane), t = fragment::thread_of(lane);
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 128;
#pragma unroll
    for (int n = 0; n < 16; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const index_t r = row0 + r0 + g + (e >= 2 ? 8 : 0);
        const int c = c0 + n * 8 + 2 * t + (e & 1);
        if (r < M && c < cw) out[r * ldo + col0 + c] = acc[n][e];
      }
  }
};

/// Strict fp32 policy (FFMA). Thread layout: tr = tid / 16 owns rows 4 tr .. 4 tr + 3; for the
/// logits tc = tid % 16 owns columns tc + 16 j; for the accumulator columns 4 tc + 64 j .. + 3.
struct ffma_policy {
  static constexpr int kstep = 4;
  static constexpr int s_ld = fragment::logits_ld_ffma;
  float s[4][4];
  float acc[4][16];

  __device__ DISTILL_FORCEINLINE void zero_logits() { zero_registers(s); }
  __device__ DISTILL_FORCEINLINE void zero_acc() { zero_registers(acc); }

  template <class TR, class TK>
  __device__ DISTILL_FORCEINLINE void logits(const TR* __restrict__ rs, const TK* __restrict__ ks, int kw) {
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    constexpr int rld = ld<TR>(), kld = ld<TK>();
    if constexpr (std::is_same_v<TR, float> && std::is_same_v<TK, float>) {
      for (int k = 0; k < kw; k += 4) {
        float4 zv[4], kv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) zv[i] = *reinterpret_cast<const float4*>(rs + (4 * tr + i) * rld + k);
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
        for (int i = 0; i < 4; ++i) zv[i] = load<float>(rs[(4 * tr + i) * rld + k]);
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
  __device__ DISTILL_FORCEINLINE void values(const float* __restrict__ ws, const TK* __restrict__ ks, const float* __restrict__ alpha,
                                             int cw) {
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    constexpr int kld = ld<TK>();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float a = alpha[4 * tr + i];
#pragma unroll
      for (int j = 0; j < 16; ++j) acc[i][j] *= a;
    }
    for (int k = 0; k < tile_keys; ++k) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = ws[(4 * tr + i) * s_ld + k];
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

  __device__ DISTILL_FORCEINLINE void store_acc(float* __restrict__ out, index_t ldo, index_t row0, index_t M, index_t col0,
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
          if (r < M && c < cw) out[r * ldo + col0 + c] = acc[i][4 * jj + e];
        }
  }
};

template <matmul_precision P>
using policy_t = std::conditional_t<P == matmul_precision::fp32, ffma_policy, mma_policy<P>>;

/// Shared memory of a flash block: the row tile (TR), `stages` key buffers of `key_bytes` each
/// (the largest key tile the block stages), the logits / weights tile and the per-row factors.
template <class Policy, class TR>
constexpr std::size_t smem_bytes(int stages, std::size_t key_bytes) {
  return operand_bytes<tile_rows, TR>() + static_cast<std::size_t>(stages) * key_bytes +
         static_cast<std::size_t>(tile_rows) * Policy::s_ld * sizeof(float) + tile_rows * sizeof(float);
}

template <class Policy, class TR>
struct smem_view {
  TR* rows;
  unsigned char* keys[2];
  float* ss;
  float* alpha;
  __device__ smem_view(unsigned char* raw, int stages, std::size_t key_bytes) {
    rows = reinterpret_cast<TR*>(raw);
    keys[0] = raw + operand_bytes<tile_rows, TR>();
    keys[1] = keys[0] + key_bytes;
    ss = reinterpret_cast<float*>(keys[0] + static_cast<std::size_t>(stages) * key_bytes);
    alpha = ss + tile_rows * Policy::s_ld;
  }
};

/// One block's walk: key tiles [tile_begin, tile_end), and per tile every column chunk of D (the
/// logits need all of D), the block's own chunk `own_chunk` last (it is the one whose values the
/// block accumulates, so its key chunk is still in shared memory). One step = one (tile, chunk);
/// the next step's key chunk is prefetched into the other buffer when `stages` is 2.
///   rows.load(TR* dst, col0)             stages the row tile's chunk at col0 (async)
///   keys.issue(tile, col0, buffer)       stages a key chunk (async)
///   keys.visit(tile, buffer, f)          f(buffer as that tile's key type)
///   weigh(tile, ss, alpha)               the tile's logits in ss -> weights in place, alpha per row
/// With WithValues, pol.acc = alpha pol.acc + W K over the own chunk's `acc_cols` columns.
template <class Policy, bool WithValues, class TR, class Rows, class Keys, class Weigh>
__device__ DISTILL_FORCEINLINE void flash_tile_loop(Policy& pol, const smem_view<Policy, TR>& sm, const Rows& rows, const Keys& keys,
                                                    Weigh& weigh, index_t tile_begin, index_t tile_end, int nchunks, int own_chunk,
                                                    int stages, index_t D, int acc_cols) {
  const index_t nsteps = (tile_end - tile_begin) * nchunks;
  const auto chunk_of = [&](index_t step) { return static_cast<int>((own_chunk + 1 + step % nchunks) % nchunks); };
  const auto issue = [&](index_t step, unsigned char* buf) {
    keys.issue(tile_begin + step / nchunks, static_cast<index_t>(chunk_of(step)) * chunk_cols, buf);
  };
  if (nsteps > 0) {
    if (nchunks == 1) rows.load(sm.rows, 0);
    if (stages == 2) issue(0, sm.keys[0]);
    cp_async_commit();
  }
  for (index_t step = 0; step < nsteps; ++step) {
    const int ci = static_cast<int>(step % nchunks);
    const int chunk = chunk_of(step);
    const index_t tile = tile_begin + step / nchunks;
    unsigned char* kbuf = (stages == 2 && (step & 1)) ? sm.keys[1] : sm.keys[0];
    if (nchunks > 1) {
      // its own commit group, older than the key prefetch below, so wait<1> covers it
      rows.load(sm.rows, static_cast<index_t>(chunk) * chunk_cols);
      cp_async_commit();
    }
    if (stages == 1) {
      issue(step, sm.keys[0]);
      cp_async_commit();
      cp_async_wait<0>();
    } else if (step + 1 < nsteps) {
      issue(step + 1, (step & 1) ? sm.keys[0] : sm.keys[1]);
      cp_async_commit();
      cp_async_wait<1>();  // everything but the prefetch just issued has landed
    } else {
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();

    if (ci == 0) pol.zero_logits();
    const int kw_raw = static_cast<int>(imin(chunk_cols, D - static_cast<index_t>(chunk) * chunk_cols));
    const int kw = (kw_raw + Policy::kstep - 1) / Policy::kstep * Policy::kstep;  // zero-padded in smem
    keys.visit(tile, kbuf, [&](const auto* kb) { pol.logits(sm.rows, kb, kw); });

    if (ci == nchunks - 1) {
      pol.store_logits(sm.ss);
      __syncthreads();
      weigh(tile, sm.ss, sm.alpha);
      __syncthreads();
      if constexpr (WithValues) keys.visit(tile, kbuf, [&](const auto* kb) { pol.values(sm.ss, kb, sm.alpha, acc_cols); });
    }
    __syncthreads();  // the row tile, the key buffer and ss are rewritten next step
  }
}

}  // namespace flash

}  // namespace distill::cuda_detail::tile
