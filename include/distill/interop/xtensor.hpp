// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Zero-copy bridges between xtensor and distill views (host memory only).
//!
//!   xt::xtensor<float, 4> feats({B, C, H, W});
//!   auto v = distill::from_xtensor(feats);            // host_view<float, 4>
//!   xt::xarray<float> a = ...;                         // dynamic rank: say the rank
//!   auto w = distill::from_xtensor<2>(a);              // host_view<float, 2>
//!   auto x = distill::to_xtensor(v);                   // xt::adapt over the same memory
//!
//! Works for xt::xtensor, xt::xarray, xt::adapt results and strided views with a data pointer.
//! xtensor reports a stride of 0 for axes of extent 1; distill accepts any stride there.

#include <array>
#include <cstddef>
#include <type_traits>
#include <xtensor/xadapt.hpp>
#include <xtensor/xtensor.hpp>

#include "distill/core/tensor_view.hpp"

namespace distill {

namespace xtensor_detail {
template <class E>
constexpr int static_rank() {
  using D = std::remove_cvref_t<E>;
  if constexpr (requires { std::tuple_size<typename D::shape_type>::value; })
    return static_cast<int>(std::tuple_size<typename D::shape_type>::value);
  else
    return -1;
}
}  // namespace xtensor_detail

/// View of an xtensor expression with contiguous-or-strided storage. `Rank` is deduced for
/// fixed-rank containers and must be given for xt::xarray. Returns an absent view if the
/// runtime rank of `e` differs from `Rank`.
template <int Rank = -1, class E>
auto from_xtensor(E&& e) {
  constexpr int R = Rank > 0 ? Rank : xtensor_detail::static_rank<E>();
  static_assert(R > 0, "distill::from_xtensor: give the rank for dynamic-rank containers, e.g. from_xtensor<2>(a)");
  using D = std::remove_cvref_t<E>;
  using V = typename D::value_type;
  using T = std::conditional_t<std::is_const_v<std::remove_reference_t<E>>, const V, V>;
  if (e.dimension() != static_cast<std::size_t>(R)) return tensor_view<T, R, host_space>();
  std::array<index_t, R> ext{}, str{};
  for (int d = 0; d < R; ++d) {
    ext[d] = static_cast<index_t>(e.shape()[d]);
    str[d] = static_cast<index_t>(e.strides()[d]);
  }
  return make_strided_view(const_cast<T*>(e.data() + e.data_offset()), ext, str);
}

/// xt::adapt over a host view's memory (no copy, no ownership).
template <class T, int Rank>
auto to_xtensor(const host_view<T, Rank>& v) {
  std::array<std::size_t, Rank> shape{};
  std::array<std::ptrdiff_t, Rank> strides{};
  for (int d = 0; d < Rank; ++d) {
    shape[d] = static_cast<std::size_t>(v.extent(d));
    strides[d] = static_cast<std::ptrdiff_t>(v.stride(d));
  }
  // xtensor sizes the (non-owned) storage by the element count; access goes through the strides.
  return xt::adapt(v.data(), static_cast<std::size_t>(v.size()), xt::no_ownership(), shape, strides);
}

}  // namespace distill
