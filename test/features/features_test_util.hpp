// SPDX-License-Identifier: MIT
#pragma once
// Test helpers of the features family: padded/strided host buffers whose padding and surrounding
// bands hold canaries, filled from and read back to dense double vectors (the CPU-only tests);
// rounding to a storage type; random padding, feature maps and shapes.
//   padded<float, 4> x({B, C, H, W}, {0, 1, 2, 3});   // pad each axis by that many elements
//   x.set(dense);  auto v = x.view();  ...;  CHECK(x.untouched_outside_view());

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distill/core/dtype.hpp"
#include "distill/core/tensor_view.hpp"
#include "reference/features_ref.hpp"
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

/// Random padding for an axis: 0 half of the time, else 1..3.
inline index_t random_pad(distill_test::rng& g) { return g.coin(0.5) ? 0 : g.integer(1, 3); }
inline std::array<index_t, 4> random_pads(distill_test::rng& g) { return {random_pad(g), random_pad(g), random_pad(g), random_pad(g)}; }

inline std::array<index_t, 4> ext(const features_ref::shape4& s) { return {s.B, s.C, s.H, s.W}; }

/// Feature maps whose channels have their own mean and spread; a channel is constant (zero
/// variance) with probability `constant_p`.
inline std::vector<double> features(distill_test::rng& g, const features_ref::shape4& s, double constant_p) {
  std::vector<double> x(static_cast<std::size_t>(s.size()));
  for (long b = 0; b < s.B; ++b)
    for (long c = 0; c < s.C; ++c) {
      const double mu = g.normal(0, 1.5), sd = g.uniform(0.4, 2.0), k = g.normal();
      const bool constant = g.coin(constant_p);
      for (long h = 0; h < s.H; ++h)
        for (long w = 0; w < s.W; ++w) x[s.at(b, c, h, w)] = constant ? k : g.normal(mu, sd);
    }
  return x;
}

/// A token mask [B, L]: absent (empty) with probability `p_absent`, else each token valid with
/// probability `p_valid` and the first token of every sample valid.
inline std::vector<std::uint8_t> token_mask(distill_test::rng& g, long B, long L, double p_absent, double p_valid) {
  std::vector<std::uint8_t> m;
  if (g.coin(p_absent)) return m;
  m.resize(static_cast<std::size_t>(B * L));
  for (auto& v : m) v = g.coin(p_valid);
  for (long b = 0; b < B; ++b) m[b * L] = 1;
  return m;
}

/// The batch and channels of `s` with another spatial size (1x1, up to 8x8, or the same).
inline features_ref::shape4 spatial_like(distill_test::rng& g, const features_ref::shape4& s) {
  features_ref::shape4 r = s;
  const long pick = g.integer(0, 4);
  if (pick == 0) r.H = r.W = 1;
  else if (pick <= 2) r.H = g.integer(1, 8), r.W = g.integer(1, 8);
  return r;
}

}  // namespace features_test
