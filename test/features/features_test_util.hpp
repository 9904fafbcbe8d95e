// SPDX-License-Identifier: MIT
#pragma once
// Test helpers of the features family: padded/strided host buffers whose padding and surrounding
// bands hold canaries, filled from and read back to dense double vectors.
//   padded<float, 4> x({B, C, H, W}, {0, 1, 2, 3});   // pad each axis by that many elements
//   x.set(dense);  auto v = x.view();  ...;  CHECK(x.untouched_outside_view());

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distill/core/dtype.hpp"
#include "distill/core/tensor_view.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

namespace features_test {

using distill::index_t;

template <class T, int R>
class padded {
 public:
  /// `pad[d]` extra elements along axis d (the last axis pad makes rows longer than W);
  /// `inner_stride` > 1 spreads the last axis (a non-unit inner stride).
  padded(const std::array<index_t, R>& ext, const std::array<index_t, R>& pad = {}, index_t inner_stride = 1)
      : ext_(ext), mem_(alloc_size(ext, pad, inner_stride)) {
    index_t s = inner_stride;
    for (int d = R - 1; d >= 0; --d) {
      str_[d] = s;
      s *= ext[d] + pad[d];
    }
    in_view_.assign(mem_.size(), false);
    for_each([&](index_t off, index_t) { in_view_[static_cast<std::size_t>(off)] = true; });
  }
  distill::tensor_view<T, R> view() {
    index_t e[R], s[R];
    for (int d = 0; d < R; ++d) e[d] = ext_[d], s[d] = str_[d];
    return distill::tensor_view<T, R>(mem_.data(), e, s);
  }
  distill::tensor_view<const T, R> cview() const {
    index_t e[R], s[R];
    for (int d = 0; d < R; ++d) e[d] = ext_[d], s[d] = str_[d];
    return distill::tensor_view<const T, R>(mem_.data(), e, s);
  }
  index_t size() const {
    index_t n = 1;
    for (int d = 0; d < R; ++d) n *= ext_[d];
    return n;
  }
  void set(const std::vector<double>& dense) {
    for_each([&](index_t off, index_t i) { mem_.data()[off] = distill::store<T>(dense[static_cast<std::size_t>(i)]); });
  }
  std::vector<double> get() const {
    std::vector<double> out(static_cast<std::size_t>(size()));
    for_each([&](index_t off, index_t i) { out[static_cast<std::size_t>(i)] = distill::load<double>(mem_.data()[off]); });
    return out;
  }
  /// Every element outside the view (padding, bands) still holds the canary.
  bool untouched_outside_view() const {
    if (!mem_.intact()) return false;
    const T c = distill_test::guarded<T>::canary();
    for (std::size_t i = 0; i < in_view_.size(); ++i)
      if (!in_view_[i] && std::memcmp(&mem_.data()[i], &c, sizeof(T)) != 0) return false;
    return true;
  }
  const std::array<index_t, R>& strides() const { return str_; }

  // The whole allocation, canary bands included, so it can be mirrored in device memory:
  //   device_buffer<T> d(x.full_size()); d.upload(x.full()); auto v = x.view_at<cuda_space>(d.data());
  //   ...; x.set_full(d.download()); CHECK(x.untouched_outside_view());
  std::size_t full_size() const { return mem_.size() + 2 * distill_test::guarded<T>::band; }
  std::vector<T> full() const {
    const T* p = mem_.data() - distill_test::guarded<T>::band;
    return std::vector<T>(p, p + full_size());
  }
  void set_full(const std::vector<T>& v) {
    T* p = mem_.data() - distill_test::guarded<T>::band;
    for (std::size_t i = 0; i < full_size(); ++i) p[i] = v[i];
  }
  /// The same layout over another allocation of full_size() elements (e.g. device memory).
  template <class Space, class U = T>
  distill::tensor_view<U, R, Space> view_at(U* full_base) const {
    index_t e[R], s[R];
    for (int d = 0; d < R; ++d) e[d] = ext_[d], s[d] = str_[d];
    return distill::tensor_view<U, R, Space>(full_base + distill_test::guarded<T>::band, e, s);
  }

 private:
  static std::size_t alloc_size(const std::array<index_t, R>& ext, const std::array<index_t, R>& pad, index_t inner) {
    index_t s = inner;
    for (int d = R - 1; d >= 0; --d) s *= ext[d] + pad[d];
    return static_cast<std::size_t>(s);
  }
  template <class F>
  void for_each(F&& f) const {
    std::array<index_t, R> idx{};
    const index_t n = size();
    for (index_t i = 0; i < n; ++i) {
      index_t rem = i, off = 0;
      for (int d = R - 1; d >= 0; --d) {
        idx[d] = rem % ext_[d];
        rem /= ext_[d];
        off += idx[d] * str_[d];
      }
      f(off, i);
    }
  }
  std::array<index_t, R> ext_;
  std::array<index_t, R> str_{};
  distill_test::guarded<T> mem_;
  std::vector<bool> in_view_;
};

/// Round a double vector through storage type T (so references see what the kernel sees).
template <class T>
std::vector<double> rounded(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = distill::load<double>(distill::store<T>(v[i]));
  return r;
}

/// Random padding for an axis: 0 most of the time, sometimes 1..3.
inline index_t random_pad(distill_test::rng& g) { return g.coin(0.5) ? 0 : g.integer(1, 3); }

}  // namespace features_test
