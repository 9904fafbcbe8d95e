// SPDX-License-Identifier: MIT
#pragma once
// Helpers shared by the nn tests: conversions between double reference vectors and the
// library's element types, scalar losses L = <r, y> for gradient checks, and a finite-difference
// comparison of an analytic gradient against a reference forward.

#include <catch2/catch.hpp>

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

}  // namespace nn_test
