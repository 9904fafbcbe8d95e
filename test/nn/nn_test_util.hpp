// SPDX-License-Identifier: MIT
#pragma once
// Helpers shared by the nn tests: conversions between double reference vectors and the
// library's element types, scalar losses L = <r, y> for gradient checks, and a finite-difference
// comparison of an analytic gradient against a reference forward.

#include <catch2/catch.hpp>

#include <array>
#include <functional>
#include <string>
#include <vector>

#include "distill/nn/tensor.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

namespace nn_test {

using vec = std::vector<double>;

template <class T>
std::vector<T> cast(const vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
vec widen(const std::vector<T>& v) {
  return vec(v.begin(), v.end());
}
inline double dot(const vec& a, const vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// A host tensor of `shape` filled from doubles.
template <class T>
distill::nn::host_tensor<T> make_tensor(const distill::nn::tensor_shape& shape, const vec& values) {
  distill::nn::host_tensor<T> t(shape);
  REQUIRE(t.copy_from_host(cast<T>(values)).ok());
  return t;
}

/// Compare `analytic` with central finite differences of f at x (in double).
inline void check_gradient(const char* what, const std::function<double(const vec&)>& f, const vec& x, const vec& analytic,
                           distill_test::tolerance t = {1e-6, 1e-5}) {
  const vec numeric = distill_test::numeric_gradient(f, x);
  CHECK_CLOSE(what, analytic, numeric, t);
}

/// A batch of B images (C, H, W) inside a larger buffer: each image is followed by `gap`
/// sentinel elements, so the view has a batch stride with padding that a layer must not touch.
template <class T>
struct gapped_images {
  static constexpr T sentinel = T(-7);
  long B, image, gap;
  std::vector<T> buffer;
  gapped_images(long B_, long C, long H, long W, long gap_)
      : B(B_), image(C * H * W), gap(gap_), buffer(static_cast<std::size_t>(B_ * (C * H * W + gap_)), sentinel), shape{B_, C, H, W} {}
  distill::host_view<T, 4> view() {
    return distill::make_strided_view(buffer.data(), shape, std::array<distill::index_t, 4>{image + gap, shape[2] * shape[3], shape[3], 1});
  }
  /// The B images, gaps left out, in double.
  vec images() const {
    vec out;
    for (long n = 0; n < B; ++n)
      for (long i = 0; i < image; ++i) out.push_back(static_cast<double>(at(n, i)));
    return out;
  }
  bool gaps_intact() const {
    bool intact = true;
    for (long n = 0; n < B; ++n)
      for (long i = image; i < image + gap; ++i) intact &= at(n, i) == sentinel;
    return intact;
  }

 private:
  std::array<distill::index_t, 4> shape;
  T at(long n, long i) const { return buffer[static_cast<std::size_t>(n * (image + gap) + i)]; }
};

/// Each of `twice` is 2x the matching `once` (a gradient accumulated onto itself).
inline void require_doubled(const vec& twice, const vec& once) {
  REQUIRE(twice.size() == once.size());
  for (std::size_t i = 0; i < once.size(); ++i) REQUIRE(twice[i] == Approx(2 * once[i]).margin(1e-12));
}

}  // namespace nn_test
