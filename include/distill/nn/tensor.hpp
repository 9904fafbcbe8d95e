// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `nn::tensor<T, Space>`: an *owning*, contiguous, row-major buffer with a runtime shape (rank 1
//! to 6), in host memory (std::vector) or CUDA device memory (cudaMalloc). The nn/ building blocks
//! own their parameters, gradients, optimiser state and caches in these; every computation still
//! runs on the non-owning `tensor_view`s the tensor hands out, so the view-level functions
//! (`nn::linear_forward(ctx, x, w, b, y)`, ...) work just as well on memory an engine owns.
//!
//!   nn::tensor<float, host_space> x({64, 3, 75, 75});
//!   auto v4 = x.view<4>();        // (64, 3, 75, 75)
//!   auto v2 = x.view<2>();        // (64, 16875): trailing axes merged (flatten)
//!   auto v5 = x.view<5>();        // (64, 3, 75, 75, 1): trailing 1s appended
//!   auto rows = x.rows_view();    // (64 * 3 * 75, 75): leading axes merged (token matrices:
//!                                 //  a (B, L, D) tensor as (B * L, D))
//!
//! `resize(shape)` keeps the allocation when it is large enough (grow-only), so caches sized by
//! the batch allocate once. The device specialisation (kernels/distill/cuda/nn_tensor.cuh) is
//! visible only when nvcc compiles the translation unit; its constructors and `resize` allocate
//! with cudaMalloc, and `copy_from_host` / `to_host` copy synchronously (set-up and checkpoints,
//! never inside a training step).
//!
//! Owning types hold the nn/ state (some CPU paths, e.g. conv2d and the attention backward, also
//! take per-call scratch vectors): their constructors throw `distill::error` (or std::bad_alloc)
//! when memory runs out; every other call returns a `status`.

#include <array>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill::nn {

/// Extents of a row-major tensor, rank 0 (empty) to 6.
struct tensor_shape {
  static constexpr int max_rank = 6;
  int rank = 0;
  std::array<index_t, max_rank> dims{};

  tensor_shape() = default;
  tensor_shape(std::initializer_list<index_t> d) {
    for (index_t x : d)
      if (rank < max_rank) dims[static_cast<std::size_t>(rank++)] = x;
  }
  index_t operator[](int d) const noexcept { return dims[static_cast<std::size_t>(d)]; }
  index_t& operator[](int d) noexcept { return dims[static_cast<std::size_t>(d)]; }
  /// Number of elements (0 for rank 0).
  index_t size() const noexcept {
    if (rank == 0) return 0;
    index_t n = 1;
    for (int d = 0; d < rank; ++d) n *= dims[static_cast<std::size_t>(d)];
    return n;
  }
  friend bool operator==(const tensor_shape& a, const tensor_shape& b) noexcept {
    if (a.rank != b.rank) return false;
    for (int d = 0; d < a.rank; ++d)
      if (a[d] != b[d]) return false;
    return true;
  }
  /// "[64, 3, 75, 75]".
  std::string to_string() const {
    std::string s = "[";
    for (int d = 0; d < rank; ++d) s += (d ? ", " : "") + std::to_string(dims[static_cast<std::size_t>(d)]);
    return s + "]";
  }
  /// The shape of a view.
  template <class V>
    requires is_tensor_view_v<V>
  static tensor_shape of(const V& v) {
    tensor_shape s;
    s.rank = V::rank;
    for (int d = 0; d < V::rank; ++d) s[d] = v.extent(d);
    return s;
  }
};

namespace tensor_detail {
/// Contiguous rank-R view of `n`-element storage with shape `s`: exact when R == rank, trailing
/// axes merged when R < rank, trailing 1s appended when R > rank. Absent for an empty shape.
template <int R, class Space, class T>
tensor_view<T, R, Space> make_view(T* data, const tensor_shape& s) noexcept {
  if (s.rank == 0) return {};
  index_t ext[R], str[R];
  for (int d = 0; d < R; ++d) ext[d] = 1;
  for (int d = 0; d < s.rank; ++d) {
    if (d < R) ext[d] = s[d];
    else ext[R - 1] *= s[d];
  }
  index_t stride = 1;
  for (int d = R - 1; d >= 0; --d) {
    str[d] = stride;
    stride *= ext[d];
  }
  return tensor_view<T, R, Space>(data, ext, str);
}
/// (size / last extent, last extent) view; absent for an empty shape.
template <class Space, class T>
tensor_view<T, 2, Space> make_rows_view(T* data, const tensor_shape& s) noexcept {
  if (s.rank == 0 || s.size() == 0) return {};
  const index_t last = s[s.rank - 1];
  const index_t ext[2] = {s.size() / last, last}, str[2] = {last, 1};
  return tensor_view<T, 2, Space>(data, ext, str);
}

/// What both tensor specialisations share: the shape, its queries and checks, the views and
/// the vector upload. `Derived` provides data() and copy_from_host(const T*, index_t).
template <class Derived, class T, class Space>
class tensor_base {
 public:
  const tensor_shape& shape() const noexcept { return shape_; }
  int rank() const noexcept { return shape_.rank; }
  index_t extent(int d) const noexcept { return shape_[d]; }
  index_t size() const noexcept { return shape_.size(); }
  bool empty() const noexcept { return size() == 0; }

  /// Contiguous view of the current shape with R axes (see the file comment).
  template <int R>
  tensor_view<T, R, Space> view() noexcept {
    return make_view<R, Space>(self().data(), shape_);
  }
  template <int R>
  tensor_view<const T, R, Space> view() const noexcept {
    return make_view<R, Space>(self().data(), shape_);
  }
  template <int R>
  tensor_view<const T, R, Space> cview() const noexcept {
    return view<R>();
  }
  /// Leading axes merged: (size / last, last).
  tensor_view<T, 2, Space> rows_view() noexcept { return make_rows_view<Space>(self().data(), shape_); }
  tensor_view<const T, 2, Space> rows_view() const noexcept { return make_rows_view<Space>(self().data(), shape_); }

  [[nodiscard]] status copy_from_host(const std::vector<T>& host) {
    return self().copy_from_host(host.data(), static_cast<index_t>(host.size()));
  }

 protected:
  tensor_shape shape_;

  static status check_resize(const tensor_shape& s) {
    if (s.rank < 0 || s.rank > tensor_shape::max_rank)
      return fail(errc::invalid_argument, "nn::tensor::resize", "rank must be in [0, 6]");
    for (int d = 0; d < s.rank; ++d)
      if (s[d] < 0) return fail(errc::invalid_argument, "nn::tensor::resize", "negative extent in " + s.to_string());
    return {};
  }
  status check_upload(index_t n) const {
    if (n != size())
      return fail(errc::shape_mismatch, "nn::tensor::copy_from_host",
                  std::to_string(n) + " elements given for a tensor of shape " + shape_.to_string());
    return {};
  }

 private:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }
  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
};
}  // namespace tensor_detail

/// Owning tensor; specialised for host_space here and for cuda_space in nn_tensor.cuh.
template <class T, class Space>
class tensor;

/// Host tensor backed by std::vector<T>. Elements are value-initialised (zero) when allocated.
template <class T>
class tensor<T, host_space> : public tensor_detail::tensor_base<tensor<T, host_space>, T, host_space> {
  using base = tensor_detail::tensor_base<tensor<T, host_space>, T, host_space>;
  using base::shape_;

 public:
  using value_type = T;
  using memory_space = host_space;

  tensor() = default;
  explicit tensor(const tensor_shape& s) { throw_if_error(resize(s)); }
  tensor(tensor&&) noexcept = default;
  tensor& operator=(tensor&&) noexcept = default;
  tensor(const tensor&) = delete;  // copies are explicit: copy_from / to_host
  tensor& operator=(const tensor&) = delete;

  /// Set the shape; reallocates (zero-filled) only when the capacity is too small. Contents are
  /// kept up to the old size, so a same-size resize is free.
  [[nodiscard]] status resize(const tensor_shape& s) {
    DISTILL_TRY(base::check_resize(s));
    const auto n = static_cast<std::size_t>(s.size());
    if (n > storage_.size()) storage_.resize(n);
    shape_ = s;
    return {};
  }

  T* data() noexcept { return storage_.data(); }
  const T* data() const noexcept { return storage_.data(); }

  /// Copy `host` (exactly size() elements) into the tensor.
  using base::copy_from_host;
  [[nodiscard]] status copy_from_host(const T* host, index_t n) {
    DISTILL_TRY(base::check_upload(n));
    for (index_t i = 0; i < n; ++i) storage_[static_cast<std::size_t>(i)] = host[i];
    return {};
  }
  /// The contents as a host vector (size() elements).
  std::vector<T> to_host() const { return std::vector<T>(storage_.begin(), storage_.begin() + this->size()); }

 private:
  std::vector<T> storage_;
};

template <class T>
using host_tensor = tensor<T, host_space>;

/// Set every element of a contiguous view to zero (CPU; the CUDA overload is in nn_tensor.cuh).
template <class T, int R>
[[nodiscard]] status fill_zero(const cpu& ctx, host_view<T, R> v) {
  if (v.empty()) return {};
  if (!v.contiguous()) return fail(errc::unsupported_layout, "nn::fill_zero", "'v' must be contiguous");
  T* p = v.data();
  parallel_for(
      ctx, v.size(),
      [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) p[i] = T(0);
      },
      index_t(1) << 16);
  return {};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_tensor.cuh"
#endif
