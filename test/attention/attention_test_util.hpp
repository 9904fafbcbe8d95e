// SPDX-License-Identifier: MIT
#pragma once
// Helpers of the attention tests: values rounded through a storage type, and tolerances scaled
// by the expected values. (Padded tensors with canaries: support/backend.hpp's guarded_tensor.)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "support/compare.hpp"

namespace attention_test {

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
