// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The Eigen side of distill::gemm (core/cpu_gemm.hpp): the threaded, blocked float and double
//! products (declared there). Header-only use includes it at the end of cpu_gemm.hpp; with the
//! compiled distill_cpu library (DISTILL_CPU_LIBRARY) only src/cpu_gemm.cpp includes it and
//! instantiates them for float and double, so translation units that call gemm never compile
//! Eigen's GEMM.

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

#include "distill/core/cpu_gemm.hpp"

namespace distill {

namespace gemm_detail {
template <class T>
using matrix_map = Eigen::Map<Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                              Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using const_matrix_map = Eigen::Map<const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                                    Eigen::Unaligned, Eigen::OuterStride<>>;
template <class V>
const_matrix_map<typename V::value_type> cmap(const V& v, index_t r0, index_t rows) {
  return {v.data() + r0 * v.stride(0), rows, v.extent(1), Eigen::OuterStride<>(v.stride(0))};
}

/// Eigen's panel sizes for a row-major C (M, N) += op(A) (M, K) op(B) (K, N): Eigen solves it as
/// the column-major C^T = op(B)^T op(A)^T, so its (k, m, n) blocking is (K, N, M).
struct blocking {
  index_t kc = 0, mc = 0, nc = 0;
  std::size_t elements() const noexcept { return static_cast<std::size_t>(kc * (mc + nc)); }
};
template <class T>
blocking blocking_for(index_t M, index_t N, index_t K) {
  blocking b;
  b.kc = std::max<index_t>(K, 1);
  b.mc = std::max<index_t>(N, 1);
  b.nc = std::max<index_t>(M, 1);
  Eigen::internal::computeProductBlockingSizes<T, T, 1>(b.kc, b.mc, b.nc, index_t(1));
  return b;
}

inline constexpr std::size_t packing_alignment = 64;  // a cache line: Eigen's packets load aligned panels

/// Packing buffers over caller memory (Eigen's blocking object without its allocation).
template <class T>
struct caller_packing : Eigen::internal::level3_blocking<T, T> {
  caller_packing(T* a, T* b, const blocking& bl) noexcept {
    this->m_blockA = a;
    this->m_blockB = b;
    this->m_kc = bl.kc;
    this->m_mc = bl.mc;
    this->m_nc = bl.nc;
  }
};

/// C += alpha op(A) op(B) on one thread, panels packed into `scratch` (`capacity` elements);
/// the depth blocking shrinks when the panels would not fit.
template <class T>
void packed_product(bool ta, bool tb, T alpha, const T* a, index_t lda, const T* b, index_t ldb, T* c, index_t ldc,
                    index_t M, index_t N, index_t K, T* scratch, std::size_t capacity) {
  blocking bl = blocking_for<T>(M, N, K);
  if (bl.elements() > capacity) bl.kc = std::max<index_t>(1, static_cast<index_t>(capacity) / (bl.mc + bl.nc));
  caller_packing<T> pk(scratch, scratch + bl.kc * bl.mc, bl);
  using Eigen::ColMajor;
  using Eigen::RowMajor;
#if EIGEN_VERSION_AT_LEAST(3, 3, 90)
#define DISTILL_GEMM_RUN(LO, RO) \
  Eigen::internal::general_matrix_matrix_product<index_t, T, LO, false, T, RO, false, RowMajor, 1>::run(M, N, K, a, lda, b, ldb, c, 1, ldc, alpha, pk)
#else
#define DISTILL_GEMM_RUN(LO, RO) \
  Eigen::internal::general_matrix_matrix_product<index_t, T, LO, false, T, RO, false, RowMajor>::run(M, N, K, a, lda, b, ldb, c, ldc, alpha, pk)
#endif
  // Row-major storage of X read as X^T is column-major storage of op(X).
  if (!ta && !tb) DISTILL_GEMM_RUN(RowMajor, RowMajor);
  else if (!ta && tb) DISTILL_GEMM_RUN(RowMajor, ColMajor);
  else if (ta && !tb) DISTILL_GEMM_RUN(ColMajor, RowMajor);
  else DISTILL_GEMM_RUN(ColMajor, ColMajor);
#undef DISTILL_GEMM_RUN
}
}  // namespace gemm_detail


namespace gemm_detail {
inline transpose flip(transpose t) noexcept { return t == transpose::no ? transpose::yes : transpose::no; }
/// A column-major matrix as the row-major view of its transpose.
template <class V>
V transposed(const V& v) noexcept {
  return make_strided_view(v.data(), std::array<index_t, 2>{v.extent(1), v.extent(0)},
                           std::array<index_t, 2>{v.stride(1), v.stride(0)});
}
template <class V>
bool column_major(const V& v) noexcept {
  return !v.inner_contiguous() && (v.extent(0) <= 1 || v.stride(0) == 1);
}
}  // namespace gemm_detail


namespace gemm_detail {

template <class T>
std::size_t product_workspace_size(const cpu& ctx, index_t M, index_t N, index_t K) {
  const std::size_t per_thread = blocking_for<T>(M, N, K).elements() * sizeof(T) + packing_alignment;
  const std::size_t rounded = (per_thread + workspace_alignment - 1) / workspace_alignment * workspace_alignment;
  return static_cast<std::size_t>(std::max(1, ctx.threads)) * rounded;
}

template <class T>
status product(const cpu& ctx, transpose ta, transpose tb, T alpha, host_view<const T, 2> a, host_view<const T, 2> b, T beta,
           host_view<T, 2> c, host_view<std::byte, 1> workspace) {
  constexpr const char* fn = "gemm";
  // Column-major operands become row-major views of their transposes; a column-major C is
  // computed as C^T = op(B)^T op(A)^T.
  if (gemm_detail::column_major(a)) return product<T>(ctx, gemm_detail::flip(ta), tb, alpha, gemm_detail::transposed(a), b, beta, c, workspace);
  if (gemm_detail::column_major(b)) return product<T>(ctx, ta, gemm_detail::flip(tb), alpha, a, gemm_detail::transposed(b), beta, c, workspace);
  if (gemm_detail::column_major(c))
    return product<T>(ctx, gemm_detail::flip(tb), gemm_detail::flip(ta), alpha, b, a, beta, gemm_detail::transposed(c), workspace);
  DISTILL_TRY(check_inner_contiguous(fn, "a", a));
  DISTILL_TRY(check_inner_contiguous(fn, "b", b));
  DISTILL_TRY(check_inner_contiguous(fn, "c", c));
  const index_t M = c.extent(0), N = c.extent(1);
  const index_t K = ta == transpose::no ? a.extent(1) : a.extent(0);
  const index_t am = ta == transpose::no ? a.extent(0) : a.extent(1);
  const index_t bk = tb == transpose::no ? b.extent(0) : b.extent(1);
  const index_t bn = tb == transpose::no ? b.extent(1) : b.extent(0);
  if (am != M || bn != N || bk != K)
    return fail(errc::shape_mismatch, fn,
                "op(a) is [" + std::to_string(am) + ", " + std::to_string(K) + "], op(b) is [" + std::to_string(bk) +
                    ", " + std::to_string(bn) + "], c is [" + std::to_string(M) + ", " + std::to_string(N) + "]");
  if (M == 0 || N == 0) return {};

  // Split C into row blocks when C has enough rows, otherwise into column blocks.
  const bool split_rows = M >= N || M >= 64;
  const index_t extent = split_rows ? M : N;
  const index_t min_chunk = M * N * K >= (index_t(1) << 18) ? 16 : extent;  // small products: one thread
  const int blocks = parallel_threads(ctx, extent, min_chunk);

  // Per block: this thread's slice of the workspace, 64-byte aligned.
  std::size_t slice_bytes = 0;
  if (!workspace.empty()) {
    if (workspace.extent(0) > 1 && workspace.stride(0) != 1)
      return fail(errc::unsupported_layout, fn, "'workspace' must be contiguous");
    slice_bytes = static_cast<std::size_t>(workspace.extent(0)) / static_cast<std::size_t>(blocks);
    // the largest block must fit panels of depth >= 8 (the kernel's unroll)
    const index_t bm = split_rows ? (M + blocks - 1) / blocks : M, bn = split_rows ? N : (N + blocks - 1) / blocks;
    const auto bl = gemm_detail::blocking_for<T>(bm, bn, K);
    const std::size_t min_bytes = static_cast<std::size_t>(std::min<index_t>(bl.kc, 8) * (bl.mc + bl.nc)) * sizeof(T) +
                                  gemm_detail::packing_alignment;
    if (slice_bytes < min_bytes)
      return fail(errc::invalid_argument, fn,
                  "'workspace' has " + std::to_string(workspace.extent(0)) + " bytes, too few for the packing panels " +
                      "(gemm_workspace_size)");
  }
  auto block = [&](index_t blk) {
    const index_t begin = extent * blk / blocks, end = extent * (blk + 1) / blocks;
    const index_t m0 = split_rows ? begin : 0, m1 = split_rows ? end : M;
    const index_t n0 = split_rows ? 0 : begin, n1 = split_rows ? N : end;
    T* cb = c.data() + m0 * c.stride(0) + n0;
    if (!workspace.empty()) {
      // Eigen's blocked kernel accumulates: C = beta C first, then C += alpha op(A) op(B).
      for (index_t i = 0; i < m1 - m0; ++i) {
        T* row = cb + i * c.stride(0);
        if (beta == T(0)) std::fill(row, row + (n1 - n0), T(0));
        else if (beta != T(1))
          for (index_t j = 0; j < n1 - n0; ++j) row[j] *= beta;
      }
      if (K == 0) return;
      const auto addr = reinterpret_cast<std::uintptr_t>(workspace.data()) + static_cast<std::uintptr_t>(blk) * slice_bytes;
      const auto aligned = (addr + packing_alignment - 1) / packing_alignment * packing_alignment;
      const std::size_t capacity = (slice_bytes - (aligned - addr)) / sizeof(T);
      const bool at = ta == transpose::yes, bt = tb == transpose::yes;
      const T* ab = a.data() + (at ? m0 : m0 * a.stride(0));
      const T* bb = b.data() + (bt ? n0 * b.stride(0) : n0);
      packed_product<T>(at, bt, alpha, ab, a.stride(0), bb, b.stride(0), cb, c.stride(0), m1 - m0, n1 - n0, K,
                        reinterpret_cast<T*>(aligned), capacity);
      return;
    }
#if DISTILL_HAS_OPENMP
    // Eigen parallelises a product over omp_get_max_threads() threads; limit it to this one
    // thread so the context's thread count is the only source of parallelism.
    const int eigen_threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    matrix_map<T> cm(cb, m1 - m0, n1 - n0, Eigen::OuterStride<>(c.stride(0)));
    auto run = [&](const auto& opa, const auto& opb) {
      if (beta == T(0)) cm.noalias() = alpha * (opa * opb);
      else {
        if (beta != T(1)) cm *= beta;
        cm.noalias() += alpha * (opa * opb);
      }
    };
    // op(A) rows m0..m1, op(B) columns n0..n1.
    if (ta == transpose::no) {
      auto am_ = cmap(a, m0, m1 - m0);
      if (tb == transpose::no) run(am_, cmap(b, 0, K).middleCols(n0, n1 - n0));
      else run(am_, cmap(b, n0, n1 - n0).transpose());
    } else {
      auto am_ = cmap(a, 0, K).middleCols(m0, m1 - m0).transpose();
      if (tb == transpose::no) run(am_, cmap(b, 0, K).middleCols(n0, n1 - n0));
      else run(am_, cmap(b, n0, n1 - n0).transpose());
    }
#if DISTILL_HAS_OPENMP
    omp_set_num_threads(eigen_threads);
#endif
  };
  if (blocks == 1) {
    block(0);
  } else {
    parallel_for(
        ctx, blocks,
        [&](index_t b0, index_t b1) {
          for (index_t blk = b0; blk < b1; ++blk) block(blk);
        },
        1);
  }
  return {};
}


}  // namespace gemm_detail
}  // namespace distill
