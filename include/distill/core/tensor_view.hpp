// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `tensor_view<T, Rank, Space>`: a non-owning pointer + extents + strides over memory the
//! caller owns. The memory space is part of the type, so a host view cannot reach a CUDA
//! kernel (compile error) and a device view cannot reach a CPU loop.
//!
//!   float* logits = engine_buffer();                      // (N, C), rows padded to ld
//!   auto s = distill::make_strided_view(logits, {N, C}, {ld, 1});
//!   auto d = distill::make_view<distill::cuda_space>(d_ptr, N, C);   // contiguous, on device
//!
//! Strides count elements (not bytes) and are 64-bit. Inputs are passed as views of `T` or
//! `const T` (entry points accept both); outputs must be views of non-const `T`.
//! A default-constructed view is *absent*: `empty()` is true and optional inputs take it to
//! mean "not given".

#include <array>
#include <cstddef>
#include <type_traits>

#include "distill/core/config.hpp"

namespace distill {

/// Ordinary host memory (anything a CPU thread can dereference).
struct host_space {
  static constexpr const char* name = "host";
};
/// CUDA device memory (cudaMalloc, cudaMallocAsync, managed memory, an engine's allocator).
struct cuda_space {
  static constexpr const char* name = "cuda";
};

template <class T, int Rank, class Space = host_space>
class tensor_view {
  static_assert(Rank >= 1 && Rank <= 6, "distill::tensor_view supports ranks 1 to 6");
  static_assert(std::is_same_v<Space, host_space> || std::is_same_v<Space, cuda_space>,
                "distill::tensor_view: Space must be distill::host_space or distill::cuda_space");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using memory_space = Space;
  static constexpr int rank = Rank;

  /// An absent view: no data, all extents zero.
  DISTILL_HOST_DEVICE constexpr tensor_view() noexcept : data_(nullptr), extents_{}, strides_{} {}

  DISTILL_HOST_DEVICE tensor_view(T* data, const index_t (&extents)[Rank],
                                  const index_t (&strides)[Rank]) noexcept
      : data_(data) {
    for (int d = 0; d < Rank; ++d) {
      extents_[d] = extents[d];
      strides_[d] = strides[d];
    }
  }

  /// A view of T converts implicitly to a view of const T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_const_v<U>)
  DISTILL_HOST_DEVICE tensor_view(const tensor_view<U, Rank, Space>& other) noexcept
      : data_(other.data()) {
    for (int d = 0; d < Rank; ++d) {
      extents_[d] = other.extent(d);
      strides_[d] = other.stride(d);
    }
  }

  DISTILL_HOST_DEVICE T* data() const noexcept { return data_; }
  DISTILL_HOST_DEVICE index_t extent(int d) const noexcept { return extents_[d]; }
  DISTILL_HOST_DEVICE index_t stride(int d) const noexcept { return strides_[d]; }
  /// Number of elements (product of extents).
  DISTILL_HOST_DEVICE index_t size() const noexcept {
    index_t n = 1;
    for (int d = 0; d < Rank; ++d) n *= extents_[d];
    return n;
  }
  /// True for an absent view (no data pointer).
  DISTILL_HOST_DEVICE bool empty() const noexcept { return data_ == nullptr; }
  /// Unit stride along the last (fastest) axis: the fast path of every primitive.
  DISTILL_HOST_DEVICE bool inner_contiguous() const noexcept {
    return extents_[Rank - 1] <= 1 || strides_[Rank - 1] == 1;
  }
  /// Dense row-major layout with no padding.
  DISTILL_HOST_DEVICE bool contiguous() const noexcept {
    index_t expect = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (extents_[d] > 1 && strides_[d] != expect) return false;
      expect *= extents_[d];
    }
    return true;
  }

  template <class... I>
    requires(sizeof...(I) == Rank)
  DISTILL_HOST_DEVICE T& operator()(I... idx) const noexcept {
    const index_t i[Rank] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (int d = 0; d < Rank; ++d) off += i[d] * strides_[d];
    return data_[off];
  }

  /// Pointer to the first element of slice `r` along axis 0 (a row of a matrix).
  DISTILL_HOST_DEVICE T* row(index_t r) const noexcept { return data_ + r * strides_[0]; }

 private:
  T* data_;
  index_t extents_[Rank];  // plain arrays: std::array's accessors are not __device__ without
  index_t strides_[Rank];  // --expt-relaxed-constexpr
};

template <class T, int Rank>
using host_view = tensor_view<T, Rank, host_space>;
template <class T, int Rank>
using cuda_view = tensor_view<T, Rank, cuda_space>;

/// An input parameter of element type `const T` that takes no part in template deduction: the
/// caller may pass a view of T or of const T (the memory space is deduced from other views).
template <class T, int Rank, class Space = host_space>
using in_view = std::type_identity_t<tensor_view<const T, Rank, Space>>;

/// Contiguous row-major view: make_view(p, N, C), make_view<cuda_space>(d_p, B, C, H, W).
template <class Space = host_space, class T, class... I>
  requires(sizeof...(I) >= 1 && (std::is_integral_v<I> && ...))
tensor_view<T, static_cast<int>(sizeof...(I)), Space> make_view(T* data, I... extents) noexcept {
  constexpr int R = static_cast<int>(sizeof...(I));
  const index_t ext[R] = {static_cast<index_t>(extents)...};
  index_t str[R];
  index_t s = 1;
  for (int d = R - 1; d >= 0; --d) {
    str[d] = s;
    s *= ext[d];
  }
  return tensor_view<T, R, Space>(data, ext, str);
}

/// View with explicit element strides: make_strided_view(p, {N, C}, {ld, 1}).
template <class Space = host_space, class T, std::size_t R>
tensor_view<T, static_cast<int>(R), Space> make_strided_view(
    T* data, const std::array<index_t, R>& extents, const std::array<index_t, R>& strides) noexcept {
  index_t ext[R], str[R];
  for (std::size_t d = 0; d < R; ++d) {
    ext[d] = extents[d];
    str[d] = strides[d];
  }
  return tensor_view<T, static_cast<int>(R), Space>(data, ext, str);
}

/// Rank-R view over the same memory with a different shape; `v` must be contiguous.
template <int R, class T, int Rank, class Space>
tensor_view<T, R, Space> reshape(const tensor_view<T, Rank, Space>& v,
                                 const std::array<index_t, R>& extents) noexcept {
  index_t ext[R], str[R];
  index_t s = 1;
  for (int d = R - 1; d >= 0; --d) {
    ext[d] = extents[static_cast<std::size_t>(d)];
    str[d] = s;
    s *= ext[d];
  }
  return tensor_view<T, R, Space>(v.data(), ext, str);
}

/// Rows [r0, r0 + n) of a rank-2 view (same strides).
template <class T, class Space>
tensor_view<T, 2, Space> row_slice(const tensor_view<T, 2, Space>& v, index_t r0, index_t n) noexcept {
  const index_t ext[2] = {n, v.extent(1)}, str[2] = {v.stride(0), v.stride(1)};
  return tensor_view<T, 2, Space>(v.data() + r0 * v.stride(0), ext, str);
}

/// Convert to a view of const elements (useful where deduction needs an exact type).
template <class T, int Rank, class Space>
tensor_view<const T, Rank, Space> as_const(const tensor_view<T, Rank, Space>& v) noexcept {
  return v;
}

/// Two element types that agree up to const (an input view of `const T` and an output of `T`).
template <class A, class B>
inline constexpr bool same_value_v = std::is_same_v<std::remove_const_t<A>, std::remove_const_t<B>>;

template <class V>
inline constexpr bool is_tensor_view_v = false;
template <class T, int R, class S>
inline constexpr bool is_tensor_view_v<tensor_view<T, R, S>> = true;

}  // namespace distill
