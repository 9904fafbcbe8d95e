// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Dense matrix products on the CPU, through Eigen, split across the threads of a `cpu`
//! context. Every GEMM-shaped CPU path (contrastive queue, relational pairing, nn layers) calls
//! this one function so threading and layout handling live in one place.
//!
//!   C = alpha * op(A) * op(B) + beta * C        op(X) = X or X^T
//!
//! All matrices are row-major `host_view<T, 2>` with unit inner stride and any row stride
//! (so slices and padded rows work). Shapes: op(A) is (M, K), op(B) is (K, N), C is (M, N).
//! The product is split into row blocks of C, one per thread, each computed by Eigen on one
//! thread; the result does not depend on the thread count beyond floating-point summation
//! order inside Eigen's kernels (which is fixed per block shape). Eigen never spawns threads of
//! its own here.

#include <Eigen/Core>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

enum class transpose { no, yes };

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
}  // namespace gemm_detail

/// C = alpha * op(A) op(B) + beta * C. Returns shape_mismatch / unsupported_layout on bad views.
/// When beta == 0, C is overwritten (its old contents, even NaN, are ignored).
template <class TA, class TB, class T>
[[nodiscard]] status gemm(const cpu& ctx, transpose ta, transpose tb, std::type_identity_t<T> alpha, host_view<TA, 2> a,
                          host_view<TB, 2> b, std::type_identity_t<T> beta, host_view<T, 2> c) {
  static_assert(std::is_same_v<std::remove_const_t<TA>, T> && std::is_same_v<std::remove_const_t<TB>, T>,
                "distill::gemm: A, B and C must have the same element type");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "distill::gemm supports float and double");
  constexpr const char* fn = "gemm";
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
  using namespace gemm_detail;
  auto block = [&](index_t begin, index_t end) {
#if DISTILL_HAS_OPENMP
    // Eigen parallelises a product over omp_get_max_threads() threads; limit it to this one
    // thread so the context's thread count is the only source of parallelism.
    const int eigen_threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    const index_t m0 = split_rows ? begin : 0, m1 = split_rows ? end : M;
    const index_t n0 = split_rows ? 0 : begin, n1 = split_rows ? N : end;
    matrix_map<T> cm(c.data() + m0 * c.stride(0) + n0, m1 - m0, n1 - n0, Eigen::OuterStride<>(c.stride(0)));
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
  parallel_for(ctx, extent, block, min_chunk);
  return {};
}

}  // namespace distill
