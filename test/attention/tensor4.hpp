// SPDX-License-Identifier: MIT
#pragma once
// Rank-4 test tensors with padded strides inside a canary-guarded buffer, for the attention tests.
//   strided4<float> x({B, C, H, W}, {pad0, pad1, pad2}, inner_stride);
//   x.set(values);                 // logical row-major doubles -> storage
//   auto v = x.view();             // host_view<float, 4> with the padded strides
//   x.logical();                   // back to row-major doubles
//   x.outside_intact();            // canary bands and every padding element untouched

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#include "distill/core/dtype.hpp"
#include "distill/core/tensor_view.hpp"
#include "support/compare.hpp"
#include "support/guarded.hpp"

namespace attention_test {

using distill::index_t;

/// Strides for extents `e`: unit-or-`inner` stride along the last axis, `pad[d]` extra elements
/// after each slice of axis d+1 (so pad[2] pads rows, pad[1] planes, pad[0] samples).
inline std::array<index_t, 4> padded_strides(const std::array<index_t, 4>& e, const std::array<index_t, 3>& pad,
                                             index_t inner = 1) {
  std::array<index_t, 4> s{};
  s[3] = inner;
  s[2] = (e[3] - 1) * inner + 1 + pad[2];
  s[1] = e[2] * s[2] + pad[1];
  s[0] = e[1] * s[1] + pad[0];
  return s;
}

template <class T>
class strided4 {
 public:
  strided4(const std::array<index_t, 4>& ext, const std::array<index_t, 3>& pad = {0, 0, 0}, index_t inner = 1)
      : ext_(ext), str_(padded_strides(ext, pad, inner)), mem_(span_of(ext, str_)) {}

  std::size_t size() const { return static_cast<std::size_t>(ext_[0] * ext_[1] * ext_[2] * ext_[3]); }
  const std::array<index_t, 4>& extents() const { return ext_; }
  const std::array<index_t, 4>& strides() const { return str_; }
  T* data() { return mem_.data(); }
  /// Elements from the first to the last element of the tensor (padding included): what a
  /// device copy of the storage needs.
  std::size_t span() const { return mem_.size(); }

  std::size_t offset(index_t i0, index_t i1, index_t i2, index_t i3) const {
    return static_cast<std::size_t>(i0 * str_[0] + i1 * str_[1] + i2 * str_[2] + i3 * str_[3]);
  }
  template <class F>
  void for_each(F&& f) const {
    std::size_t k = 0;
    for (index_t a = 0; a < ext_[0]; ++a)
      for (index_t b = 0; b < ext_[1]; ++b)
        for (index_t c = 0; c < ext_[2]; ++c)
          for (index_t d = 0; d < ext_[3]; ++d) f(k++, offset(a, b, c, d));
  }
  void set(const std::vector<double>& v) {
    for_each([&](std::size_t k, std::size_t off) { mem_.data()[off] = static_cast<T>(static_cast<float>(v[k])); });
    if constexpr (std::is_same_v<T, double>)
      for_each([&](std::size_t k, std::size_t off) { mem_.data()[off] = v[k]; });
  }
  /// The stored values (after rounding to T) as row-major doubles.
  std::vector<double> logical() const {
    std::vector<double> v(size());
    for_each([&](std::size_t k, std::size_t off) { v[k] = static_cast<double>(static_cast<float>(mem_.data()[off])); });
    if constexpr (std::is_same_v<T, double>)
      for_each([&](std::size_t k, std::size_t off) { v[k] = mem_.data()[off]; });
    return v;
  }
  distill::host_view<T, 4> view() { return distill::make_strided_view(mem_.data(), ext_, str_); }
  distill::host_view<const T, 4> cview() { return distill::make_strided_view(static_cast<const T*>(mem_.data()), ext_, str_); }
  /// Canary bands intact and every element that is not part of the tensor untouched.
  bool outside_intact() const {
    if (!mem_.intact()) return false;
    std::vector<char> logical_slot(mem_.size(), 0);
    for_each([&](std::size_t, std::size_t off) { logical_slot[off] = 1; });
    const T canary = distill_test::guarded<T>::canary();
    for (std::size_t i = 0; i < mem_.size(); ++i)
      if (!logical_slot[i] && std::memcmp(mem_.data() + i, &canary, sizeof(T)) != 0) return false;
    return true;
  }

 private:
  static std::size_t span_of(const std::array<index_t, 4>& e, const std::array<index_t, 4>& s) {
    std::size_t last = 0;
    for (int d = 0; d < 4; ++d) last += static_cast<std::size_t>((e[d] - 1) * s[d]);
    return last + 1;
  }
  std::array<index_t, 4> ext_, str_;
  distill_test::guarded<T> mem_;
};

/// Values rounded through T (what a T tensor holding `v` actually stores).
template <class T>
std::vector<double> rounded(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    r[i] = std::is_same_v<T, double> ? v[i] : static_cast<double>(static_cast<float>(static_cast<T>(static_cast<float>(v[i]))));
  return r;
}

/// A tolerance usable inside macro arguments (no braces, no parenthesised aggregate init).
inline distill_test::tolerance tol(double atol, double rtol) { return {atol, rtol}; }

/// Tolerance scaled by the largest magnitude of the expected values (gradients of mean-reduced
/// losses are tiny, so a fixed absolute tolerance would say nothing).
template <class V>
distill_test::tolerance scaled(const V& expected, double rel_to_max, double rtol, double floor = 1e-300) {
  double m = 0;
  for (double x : expected)
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return {std::max(rel_to_max * m, floor), rtol};
}

}  // namespace attention_test
