// SPDX-License-Identifier: MIT
#pragma once
// Element-wise comparison against a reference: |actual - expected| <= atol + rtol * |expected|.
// On failure the message names the quantity, the number of mismatches, the worst index and its
// values, and the normalised mean squared error of the whole tensor.
//
// Tolerances live in `tol` below; a family adds its own entries next to these with a comment
// saying why they differ from the defaults.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

namespace distill_test {

struct tolerance {
  double atol;
  double rtol;
};

namespace tol {
inline constexpr tolerance f64{1e-12, 1e-10};     // double CPU path vs double reference
inline constexpr tolerance f32{1e-6, 2e-5};       // float CPU/CUDA path vs double reference, O(1) values
inline constexpr tolerance f32_sum{1e-5, 1e-4};   // float losses reduced over many elements
inline constexpr tolerance bf16_in{2e-3, 2e-2};   // bfloat16 inputs (8-bit mantissa), float accumulation
inline constexpr tolerance f16_in{5e-4, 5e-3};    // half inputs (11-bit mantissa), float accumulation
inline constexpr tolerance fd{1e-6, 1e-5};        // analytic vs central finite differences, in double
}  // namespace tol

struct compare_result {
  bool ok = true;
  std::string message;
};

template <class A, class E>
compare_result compare(const A* actual, const E* expected, std::size_t n, tolerance t) {
  std::size_t bad = 0, worst = 0;
  double worst_excess = -1, num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double a = static_cast<double>(actual[i]), e = static_cast<double>(expected[i]);
    const bool both_nan = std::isnan(a) && std::isnan(e);
    const bool same_inf = std::isinf(a) && std::isinf(e) && ((a > 0) == (e > 0));
    if (both_nan || same_inf) continue;
    const double diff = std::fabs(a - e);
    const double lim = t.atol + t.rtol * std::fabs(e);
    num += (a - e) * (a - e);
    den += e * e;
    if (!(diff <= lim)) {
      ++bad;
      const double excess = std::isnan(diff) ? 1e300 : diff - lim;
      if (excess > worst_excess) worst_excess = excess, worst = i;
    }
  }
  compare_result r;
  if (bad == 0) return r;
  std::ostringstream os;
  os.precision(10);
  os << bad << " of " << n << " elements differ (atol " << t.atol << ", rtol " << t.rtol << "); worst at index " << worst
     << ": actual " << static_cast<double>(actual[worst]) << " vs expected " << static_cast<double>(expected[worst])
     << "; nmse " << (den > 0 ? num / den : num);
  r.ok = false;
  r.message = os.str();
  return r;
}

template <class A, class E>
compare_result compare(const std::vector<A>& actual, const std::vector<E>& expected, tolerance t) {
  if (actual.size() != expected.size())
    return {false, "size " + std::to_string(actual.size()) + " vs expected " + std::to_string(expected.size())};
  return compare(actual.data(), expected.data(), actual.size(), t);
}

}  // namespace distill_test

/// CHECK that two containers (or a pointer range) agree within a tolerance, with a useful message.
#define CHECK_CLOSE(what, actual, expected, tolerance_)                                      \
  do {                                                                                       \
    const auto distill_cmp_ = ::distill_test::compare(actual, expected, tolerance_);         \
    INFO(what << ": " << distill_cmp_.message);                                              \
    CHECK(distill_cmp_.ok);                                                                  \
  } while (0)

/// CHECK that two scalars agree within a tolerance.
#define CHECK_CLOSE_SCALAR(what, actual, expected, tolerance_)                               \
  do {                                                                                       \
    const double distill_a_ = static_cast<double>(actual);                                   \
    const double distill_e_ = static_cast<double>(expected);                                 \
    const auto distill_cmp_ = ::distill_test::compare(&distill_a_, &distill_e_, 1, tolerance_); \
    INFO(what << ": " << distill_cmp_.message);                                              \
    CHECK(distill_cmp_.ok);                                                                  \
  } while (0)
