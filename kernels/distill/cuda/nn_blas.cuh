// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `nn::cuda_blas` (a cuBLAS handle bound to a stream, owned by the caller) and the row-major
//! GEMM wrappers every nn/ CUDA path uses.
//!
//! Row-major to column-major: a row-major (r, c) matrix with row stride ld is, to cuBLAS, the
//! column-major (c, r) matrix with leading dimension ld, i.e. its transpose. So
//!   C = op(A) op(B)   (row-major)   <=>   C^T = op(B)^T op(A)^T   (column-major)
//! and we call cublasGemmEx(opB, opA, N, M, K, B, ldb, A, lda, C, ldc) with the operand order
//! swapped and each op kept as given (op(X)^T of the column-major view of X is op(X)'s flag).

#if !defined(__CUDACC__)
#error "distill/cuda/nn_blas.cuh must be compiled by nvcc"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/cuda/detail/device.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/nn/blas.hpp"
#include "distill/nn/tensor.hpp"

namespace distill::nn {

/// A cuBLAS handle bound to `stream`, plus the GEMM compute mode. Owned by the model (or the
/// program); not copyable. Construction calls cublasCreate and allocates the handle's workspace
/// (both allocate), and throws distill::error when either fails, releasing what it had made.
///
/// The workspace (4 MiB, 32 MiB on sm_90 and newer, cuBLAS's recommended sizes) is given to
/// cuBLAS with cublasSetWorkspace, after every cublasSetStream (which resets it): without it
/// cuBLAS takes its own, and a GEMM captured into a CUDA graph makes it allocate one per graph.
///
/// It also owns a grow-only float scratch buffer that nn/ CUDA paths use *within one call* for
/// deterministic two-stage reductions (bias and normalisation-parameter gradients). It grows
/// on the first call that needs more (cudaMalloc, which synchronises): run one step before
/// capturing a CUDA graph. One cuda_blas per stream; calls on it must not overlap.
struct cuda_blas : cuda {
  cublasHandle_t handle = nullptr;
  matmul_precision precision = matmul_precision::fp32;

  /// Device scratch of at least n floats, valid until the next call that asks for scratch.
  [[nodiscard]] status reserve_scratch(index_t n) const {
    if (n > scratch_.size()) return scratch_.resize({n});
    return {};
  }
  float* scratch() const noexcept { return scratch_.data(); }
  /// Bytes of the workspace cuBLAS runs in (owned by this object).
  std::size_t blas_workspace_bytes() const noexcept { return workspace_bytes_; }

  explicit cuda_blas(cudaStream_t s = nullptr, matmul_precision p = matmul_precision::fp32) : cuda{s}, precision(p) {
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
      handle = nullptr;
      throw error(status(errc::cuda_error, "nn::cuda_blas: cublasCreate failed"));
    }
    const status st = [&]() -> status {
      DISTILL_TRY(allocate_workspace());
      return set_stream(s);
    }();
    if (!st.ok()) {
      release();  // the destructor does not run when the constructor throws
      throw error(st);
    }
  }
  cuda_blas(const cuda_blas&) = delete;
  cuda_blas& operator=(const cuda_blas&) = delete;
  ~cuda_blas() { release(); }
  /// Re-bind the handle (and the context) to another stream; the workspace stays ours.
  [[nodiscard]] status set_stream(cudaStream_t s) {
    stream = s;
    if (cublasSetStream(handle, s) != CUBLAS_STATUS_SUCCESS)
      return status(errc::cuda_error, "nn::cuda_blas: cublasSetStream failed");
    if (cublasSetWorkspace(handle, workspace_, workspace_bytes_) != CUBLAS_STATUS_SUCCESS)
      return status(errc::cuda_error, "nn::cuda_blas: cublasSetWorkspace failed");
    return {};
  }

 private:
  status allocate_workspace() {
    const std::size_t mib = std::size_t(1) << 20;
    workspace_bytes_ = (::distill::cuda_detail::current_device_properties().major >= 9 ? 32 : 4) * mib;
    if (cudaMalloc(&workspace_, workspace_bytes_) != cudaSuccess) {
      (void)cudaGetLastError();
      workspace_ = nullptr;
      return status(errc::cuda_error, "nn::cuda_blas: cudaMalloc of the cuBLAS workspace failed");
    }
    return {};
  }
  void release() noexcept {
    if (handle) (void)cublasDestroy(handle);  // before the workspace it may still reference
    if (workspace_) (void)cudaFree(workspace_);
    handle = nullptr;
    workspace_ = nullptr;
  }
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  mutable tensor<float, cuda_space> scratch_;
};

/// The CUDA context of a model (declared in include/distill/nn/blas.hpp).
template <>
inline cuda_blas make_exec<cuda_space>(const exec_options& o) {
  return cuda_blas(static_cast<cudaStream_t>(o.stream), o.precision);
}

namespace cuda_detail {
using namespace ::distill::cuda_detail;

inline status blas_status(cublasStatus_t s, const char* fn, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return {};
  return status(errc::cuda_error, std::string(fn) + ": " + what + " failed: " + cublasGetStatusName(s) + " (" +
                                      cublasGetStatusString(s) + ")");
}

/// Transpose flags of the row-major GEMM wrappers (bools keep Eigen's distill::transpose out of kernel headers).
inline constexpr bool no_trans = false;
inline constexpr bool trans = true;
inline cublasOperation_t op_of(bool t) noexcept { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

template <class T>
constexpr cudaDataType_t cuda_type() noexcept {
  if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else return CUDA_R_32F;
}

template <class T>
cublasComputeType_t compute_of(const cuda_blas& blas) noexcept {
  if constexpr (std::is_same_v<T, double>) {
    return CUBLAS_COMPUTE_64F;
  } else {
    switch (blas.precision) {
      case distill::matmul_precision::tf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
      case distill::matmul_precision::bf16: return CUBLAS_COMPUTE_32F_FAST_16BF;
      default: return CUBLAS_COMPUTE_32F;
    }
  }
}

/// Strided-batched row-major GEMM on raw pointers: for b in [0, batch):
///   C_b (M, N) = alpha op(A_b) op(B_b) + beta C_b,   X_b = X + b * stride_x (elements).
/// lda/ldb/ldc are row strides of the row-major operands as stored.
template <class T>
status gemm_strided_batched(const cuda_blas& blas, const char* fn, bool ta, bool tb, index_t M, index_t N,
                            index_t K, T alpha, const T* a, index_t lda, index_t stride_a, const T* b, index_t ldb,
                            index_t stride_b, T beta, T* c, index_t ldc, index_t stride_c, index_t batch) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "cuBLAS GEMMs take float or double");
  if (M == 0 || N == 0 || batch == 0) return {};
  // cuBLAS takes int dimensions and long long strides.
  constexpr index_t int_max = 2147483647;
  if (M > int_max || N > int_max || K > int_max || lda > int_max || ldb > int_max || ldc > int_max || batch > int_max)
    return fail(errc::invalid_argument, fn, "a GEMM extent exceeds cuBLAS's 32-bit limit");
  const cudaDataType_t dt = cuda_type<T>();
  cublasStatus_t s;
  if (batch == 1) {
    s = cublasGemmEx(blas.handle, op_of(tb), op_of(ta), static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                     &alpha, b, dt, static_cast<int>(ldb), a, dt, static_cast<int>(lda), &beta, c, dt,
                     static_cast<int>(ldc), compute_of<T>(blas), CUBLAS_GEMM_DEFAULT);
  } else {
    s = cublasGemmStridedBatchedEx(blas.handle, op_of(tb), op_of(ta), static_cast<int>(N), static_cast<int>(M),
                                   static_cast<int>(K), &alpha, b, dt, static_cast<int>(ldb), stride_b, a, dt,
                                   static_cast<int>(lda), stride_a, &beta, c, dt, static_cast<int>(ldc), stride_c,
                                   static_cast<int>(batch), compute_of<T>(blas), CUBLAS_GEMM_DEFAULT);
  }
  return blas_status(s, fn, "cuBLAS GEMM");
}

/// Row-major C = alpha op(A) op(B) + beta C on views (unit inner stride required), the CUDA twin
/// of distill::gemm.
template <class TA, class TB, class T>
status gemm(const cuda_blas& blas, const char* fn, bool ta, bool tb, T alpha, cuda_view<TA, 2> a,
            cuda_view<TB, 2> b, T beta, cuda_view<T, 2> c) {
  DISTILL_TRY(check_inner_contiguous(fn, "a", a));
  DISTILL_TRY(check_inner_contiguous(fn, "b", b));
  DISTILL_TRY(check_inner_contiguous(fn, "c", c));
  const index_t M = c.extent(0), N = c.extent(1);
  const index_t K = !ta ? a.extent(1) : a.extent(0);
  const index_t am = !ta ? a.extent(0) : a.extent(1);
  const index_t bk = !tb ? b.extent(0) : b.extent(1);
  const index_t bn = !tb ? b.extent(1) : b.extent(0);
  if (am != M || bn != N || bk != K)
    return fail(errc::shape_mismatch, fn, "GEMM operands disagree: op(a) is [" + std::to_string(am) + ", " +
                                              std::to_string(K) + "], op(b) is [" + std::to_string(bk) + ", " +
                                              std::to_string(bn) + "], c is [" + std::to_string(M) + ", " +
                                              std::to_string(N) + "]");
  // A row stride must be at least the row length for cuBLAS (ld >= rows of the column-major view).
  const index_t lda = a.extent(0) > 1 ? a.stride(0) : a.extent(1);
  const index_t ldb = b.extent(0) > 1 ? b.stride(0) : b.extent(1);
  const index_t ldc = c.extent(0) > 1 ? c.stride(0) : c.extent(1);
  return gemm_strided_batched<T>(blas, fn, ta, tb, M, N, K, alpha, a.data(), lda > 0 ? lda : 1, 0, b.data(),
                                 ldb > 0 ? ldb : 1, 0, beta, c.data(), ldc > 0 ? ldc : 1, 0, 1);
}

/// A present, non-empty device view with non-negative strides and unit inner stride.
template <class V>
status check_device_input(const char* fn, const char* name, const V& v) {
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_nonempty(fn, name, v));
  DISTILL_TRY(check_strides(fn, name, v));
  DISTILL_TRY(check_inner_contiguous(fn, name, v));
  return check_device_view(fn, name, v);
}

/// Row-major (rows, cols) matrix with row stride ld and unit inner stride, as a kernel argument.
template <class T>
struct matrix_arg {
  T* p;
  index_t ld;
  __device__ T& operator()(index_t r, index_t c) const { return p[r * ld + c]; }
};
template <class V>
matrix_arg<typename V::element_type> arg(const V& v) {
  return {v.data(), v.extent(0) > 1 ? v.stride(0) : v.extent(1)};
}

/// (N, C, S) tensor with unit stride along S, as a kernel argument.
template <class T>
struct nchw_arg {
  T* p;
  index_t sn, sc;
  __device__ T& operator()(index_t n, index_t c, index_t s) const { return p[n * sn + c * sc + s]; }
};
template <class V>
nchw_arg<typename V::element_type> arg3(const V& v) {
  return {v.data(), v.stride(0), v.stride(1)};
}

/// (N, C, H, W) with unit stride along W, as a kernel argument.
template <class T>
struct image_arg {
  T* p;
  index_t sn, sc, sh;
  __device__ T& operator()(index_t n, index_t c, index_t y, index_t x) const { return p[n * sn + c * sc + y * sh + x]; }
};
template <class V>
image_arg<typename V::element_type> arg4(const V& v) {
  return {v.data(), v.stride(0), v.stride(1), v.stride(2)};
}

/// Grid-stride launch configuration for `n` independent elements.
inline unsigned elementwise_blocks(index_t n, int block = 256) {
  const index_t want = ceil_div<index_t>(n, block);
  const index_t cap = static_cast<index_t>(current_device_properties().sms) * 8;
  return static_cast<unsigned>(want < 1 ? 1 : (want < cap ? want : cap));
}

// ---- deterministic column sums: out[c] (+)= sum_r f(r, c) ----
// Stage 1, grid (ceil(cols / 32), chunks), block (32, 8): block (x, k) sums rows of chunk k for
// 32 columns (coalesced along the row), reduces its 8 row lanes in shared memory and writes one
// partial per column. Stage 2 adds the `chunks` partials of each column in order. Reads the
// input once; scratch = chunks * cols floats (in cuda_blas).
inline constexpr int colsum_tile = 32;
inline constexpr int colsum_lanes = 8;

template <class F>
__global__ void nn_colsum_partial_kernel(F f, index_t rows, index_t cols, index_t rows_per_chunk, float* partial) {
  __shared__ float smem[colsum_lanes][colsum_tile + 1];
  const index_t c = static_cast<index_t>(blockIdx.x) * colsum_tile + threadIdx.x;
  const index_t r0 = static_cast<index_t>(blockIdx.y) * rows_per_chunk;
  const index_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float s = 0.f;
  if (c < cols)
    for (index_t r = r0 + threadIdx.y; r < r1; r += colsum_lanes) s += f(r, c);
  smem[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < colsum_lanes; ++k) t += smem[k][threadIdx.x];
    partial[static_cast<index_t>(blockIdx.y) * cols + c] = t;
  }
}

template <class T>
__global__ void nn_colsum_finalize_kernel(const float* partial, index_t chunks, index_t cols, T* out, bool accumulate) {
  const index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.f;
  for (index_t k = 0; k < chunks; ++k) s += partial[k * cols + c];
  out[c] = store<T>(accumulate ? load<float>(out[c]) + s : s);
}

/// out[c] = (accumulate ? out[c] : 0) + sum_{r < rows} f(r, c), deterministic.
template <class F, class T>
status column_sum(const cuda_blas& blas, const char* fn, F f, index_t rows, index_t cols, T* out, bool accumulate) {
  if (cols == 0) return {};
  const index_t rows_per_chunk = 128;
  index_t chunks = ceil_div<index_t>(rows > 0 ? rows : 1, rows_per_chunk);
  if (chunks > 65535) chunks = 65535;
  const index_t per = ceil_div<index_t>(rows > 0 ? rows : 1, chunks);
  DISTILL_TRY(blas.reserve_scratch(chunks * cols));
  const cudaStream_t s = stream_of(blas);
  nn_colsum_partial_kernel<F><<<dim3(static_cast<unsigned>(ceil_div<index_t>(cols, colsum_tile)), static_cast<unsigned>(chunks)),
                                dim3(colsum_tile, colsum_lanes), 0, s>>>(f, rows, cols, per, blas.scratch());
  nn_colsum_finalize_kernel<T><<<static_cast<unsigned>(ceil_div<index_t>(cols, 256)), 256, 0, s>>>(blas.scratch(), chunks, cols,
                                                                                                   out, accumulate);
  return launch_status(fn, s);
}

/// f(r, c) = x[r * ld + c] (a plain column sum of a row-major matrix).
template <class T>
struct read_matrix {
  const T* x;
  index_t ld;
  __device__ float operator()(index_t r, index_t c) const { return load<float>(x[r * ld + c]); }
};

}  // namespace cuda_detail
}  // namespace distill::nn
