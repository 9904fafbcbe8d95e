// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Zero-copy bridges between Eigen and distill views (host memory only).
//!
//!   Eigen::MatrixXf logits(N, C);                   // column-major
//!   auto v  = distill::from_eigen(logits);          // host_view<float, 2>, shape (N, C)
//!   Eigen::Matrix<float, -1, -1, Eigen::RowMajor> r(N, C);
//!   auto vr = distill::from_eigen(r);               // unit inner stride: the fast path
//!   auto m  = distill::to_eigen(vr);                // Eigen::Map over the same memory
//!
//! A view keeps Eigen's layout exactly: a column-major matrix becomes a (rows, cols) view with
//! strides (1, outerStride). Every CPU primitive accepts it (more slowly); the CUDA paths want
//! unit stride along the last axis, which row-major storage gives. Vectors map to rank-1 views.

#include <Eigen/Core>
#include <type_traits>

#include "distill/core/tensor_view.hpp"

namespace distill {

/// Rank-2 view (or rank-1 for vectors with `from_eigen_vector`) over any dense Eigen object with
/// direct access: Matrix, Array, Map, Ref, Block. Const objects give views of const elements.
template <class Derived>
auto from_eigen(Derived&& m) {
  using D = std::remove_cvref_t<Derived>;
  using Scalar = typename D::Scalar;
  using T = std::conditional_t<std::is_const_v<std::remove_reference_t<Derived>> ||
                                   !static_cast<bool>(Eigen::internal::traits<D>::Flags & Eigen::LvalueBit),
                               const Scalar, Scalar>;
  const index_t rows = m.rows(), cols = m.cols();
  const index_t inner = m.innerStride(), outer = m.outerStride();
  const index_t rs = D::IsRowMajor ? outer : inner;  // step between rows
  const index_t cs = D::IsRowMajor ? inner : outer;  // step between columns
  return make_strided_view(const_cast<T*>(m.data()), std::array<index_t, 2>{rows, cols}, std::array<index_t, 2>{rs, cs});
}

/// Rank-1 view over an Eigen vector (row or column) with its inner stride.
template <class Derived>
auto from_eigen_vector(Derived&& v) {
  using D = std::remove_cvref_t<Derived>;
  using Scalar = typename D::Scalar;
  using T = std::conditional_t<std::is_const_v<std::remove_reference_t<Derived>> ||
                                   !static_cast<bool>(Eigen::internal::traits<D>::Flags & Eigen::LvalueBit),
                               const Scalar, Scalar>;
  static_assert(D::IsVectorAtCompileTime, "distill::from_eigen_vector needs an Eigen vector");
  return make_strided_view(const_cast<T*>(v.data()), std::array<index_t, 1>{v.size()},
                           std::array<index_t, 1>{v.innerStride()});
}

/// Eigen::Map over a rank-2 host view (row-major, with the view's strides).
template <class T>
auto to_eigen(const host_view<T, 2>& v) {
  using Scalar = std::remove_const_t<T>;
  using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using MapT = std::conditional_t<std::is_const_v<T>, const Mat, Mat>;
  return Eigen::Map<MapT, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>(
      v.data(), v.extent(0), v.extent(1), Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(v.stride(0), v.stride(1)));
}

/// Eigen::Map over a rank-1 host view, as a column vector.
template <class T>
auto to_eigen(const host_view<T, 1>& v) {
  using Scalar = std::remove_const_t<T>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using MapT = std::conditional_t<std::is_const_v<T>, const Vec, Vec>;
  return Eigen::Map<MapT, Eigen::Unaligned, Eigen::InnerStride<Eigen::Dynamic>>(
      v.data(), v.extent(0), Eigen::InnerStride<Eigen::Dynamic>(v.stride(0)));
}

}  // namespace distill
