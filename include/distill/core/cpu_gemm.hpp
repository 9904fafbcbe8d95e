// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Dense matrix products on the CPU, through Eigen, split across the threads of a `cpu`
//! context. Every GEMM-shaped CPU path (contrastive queue, relational pairing, nn layers) calls
//! this one function so threading, layout handling and Eigen's internals live in one place.
//!
//!   C = alpha * op(A) * op(B) + beta * C        op(X) = X or X^T
//!
//! Matrices are `host_view<T, 2>`, row-major (unit stride along columns, any row stride: slices
//! and padded rows work) or column-major (unit stride along rows: a PyTorch nn.Linear weight
//! [out, in] read as [in, out]). Shapes: op(A) is (M, K), op(B) is (K, N), C is (M, N).
//! The product is split into row blocks of C, one per thread, each computed by Eigen on one
//! thread; the result does not depend on the thread count beyond floating-point summation
//! order inside Eigen's kernels (which is fixed per block shape). Eigen never spawns threads of
//! its own here.
//!
//! Packing scratch: Eigen packs panels of A and B before its register kernel. Without a
//! workspace each product allocates and frees them; a primitive that runs hundreds of small
//! products per call (token NCE's key tiles) passes `gemm_workspace_size<T>(ctx, M, N, K)`
//! bytes instead, so nothing is allocated (glibc otherwise trims and re-grows the heap between
//! products: 30-40 % slower, measured on 512 x 256 x 8192 tiles). Same results either way.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

enum class transpose { no, yes };

namespace gemm_detail {
// The products every gemm call lands in, T = float or double: defined in
// core/detail/cpu_gemm_eigen.hpp, included at the end of this header, or, with the distill_cpu
// library (DISTILL_CPU_LIBRARY), compiled there once and only declared here.
template <class T>
std::size_t product_workspace_size(const cpu& ctx, index_t M, index_t N, index_t K);
template <class T>
status product(const cpu& ctx, transpose ta, transpose tb, T alpha, host_view<const T, 2> a, host_view<const T, 2> b, T beta,
               host_view<T, 2> c, host_view<std::byte, 1> workspace);
}  // namespace gemm_detail

/// Bytes of packing scratch for products with op(A) up to (M, K) and op(B) up to (K, N) on the
/// context's threads (a smaller product fits too). Element type T = float or double.
template <class T>
std::size_t gemm_workspace_size(const cpu& ctx, index_t M, index_t N, index_t K) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "distill::gemm supports float and double");
  return gemm_detail::product_workspace_size<T>(ctx, M, N, K);
}

/// C = alpha * op(A) op(B) + beta * C. Returns shape_mismatch / unsupported_layout on bad views.
/// When beta == 0, C is overwritten (its old contents, even NaN, are ignored). `workspace`
/// (optional, see gemm_workspace_size) holds Eigen's packing panels; absent, Eigen allocates them.
template <class TA, class TB, class T>
[[nodiscard]] status gemm(const cpu& ctx, transpose ta, transpose tb, std::type_identity_t<T> alpha, host_view<TA, 2> a,
                          host_view<TB, 2> b, std::type_identity_t<T> beta, host_view<T, 2> c,
                          host_view<std::byte, 1> workspace = {}) {
  static_assert(std::is_same_v<std::remove_const_t<TA>, T> && std::is_same_v<std::remove_const_t<TB>, T>,
                "distill::gemm: A, B and C must have the same element type");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "distill::gemm supports float and double");
  return gemm_detail::product<T>(ctx, ta, tb, alpha, host_view<const T, 2>(a), host_view<const T, 2>(b), beta, c, workspace);
}

}  // namespace distill

#if !DISTILL_CPU_LIBRARY
#include "distill/core/detail/cpu_gemm_eigen.hpp"
#endif
