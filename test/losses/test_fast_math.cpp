// SPDX-License-Identifier: MIT
// core/fast_math.hpp against double-precision std::exp / std::log / std::log1p over the whole
// float range (every 251st bit pattern, both signs), the special values, subnormals, and the
// agreement of the vectorised loop with the scalar calls.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "distill/core/fast_math.hpp"

namespace {

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Error of `got` in units in the last place of the correctly rounded float result `exact`.
double ulp_error(float got, double exact) {
  const float rounded = static_cast<float>(exact);
  if (std::isnan(exact)) return std::isnan(got) ? 0.0 : 1e30;
  if (std::isinf(rounded)) return got == rounded ? 0.0 : 1e30;
  double ulp;
  if (std::fabs(rounded) < std::numeric_limits<float>::min()) {
    ulp = std::ldexp(1.0, -149);  // subnormal spacing
  } else {
    int e;
    std::frexp(static_cast<double>(rounded), &e);
    ulp = std::ldexp(1.0, e - 24);
  }
  if (std::isinf(got) || std::isnan(got)) return 1e30;
  return std::fabs(static_cast<double>(got) - exact) / ulp;
}

template <class F, class R>
double max_ulp_error(F&& f, R&& ref, float& worst_at) {
  double worst = 0;
  for (std::uint64_t b = 0; b < (std::uint64_t(1) << 32); b += 251) {
    const float x = from_bits(static_cast<std::uint32_t>(b));
    const double e = ulp_error(f(x), ref(static_cast<double>(x)));
    if (e > worst) worst = e, worst_at = x;
  }
  return worst;
}

}  // namespace

TEST_CASE("fast_exp is within 1.5 ulp over the float range", "[fast_math]") {
  float at = 0;
  const double e = max_ulp_error([](float x) { return distill::fast_exp(x); }, [](double x) { return std::exp(x); }, at);
  INFO("worst at " << at);
  CHECK(e <= 1.5);
}

TEST_CASE("fast_log is within 2.5 ulp over the float range, subnormals included", "[fast_math]") {
  float at = 0;
  const double e = max_ulp_error([](float x) { return distill::fast_log(x); }, [](double x) { return std::log(x); }, at);
  INFO("worst at " << at);
  CHECK(e <= 2.5);
}

TEST_CASE("fast_log1p is within 2.5 ulp and exact for tiny arguments", "[fast_math]") {
  float at = 0;
  const double e = max_ulp_error([](float x) { return distill::fast_log1p(x); }, [](double x) { return std::log1p(x); }, at);
  INFO("worst at " << at);
  CHECK(e <= 2.5);
  for (float x : {1e-30f, -1e-30f, 1e-10f, 3e-8f, -3e-8f}) CHECK(distill::fast_log1p(x) == x);
}

TEST_CASE("fast math special values", "[fast_math]") {
  using distill::fast_exp;
  using distill::fast_log;
  using distill::fast_log1p;
  constexpr float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(fast_exp(-inf) == 0.0f);
  CHECK(fast_exp(inf) == inf);
  CHECK(std::isnan(fast_exp(nan)));
  CHECK(fast_exp(-104.0f) == 0.0f);
  CHECK(fast_exp(89.0f) == inf);
  CHECK(fast_exp(0.0f) == 1.0f);
  CHECK(fast_exp(1e-40f) == 1.0f);  // subnormal argument
  CHECK(fast_exp(-100.0f) > 0.0f);  // a subnormal result, not flushed
  CHECK(fast_exp(-100.0f) < std::numeric_limits<float>::min());
  CHECK(fast_log(0.0f) == -inf);
  CHECK(fast_log(-0.0f) == -inf);
  CHECK(std::isnan(fast_log(-1.0f)));
  CHECK(std::isnan(fast_log(-inf)));
  CHECK(fast_log(inf) == inf);
  CHECK(std::isnan(fast_log(nan)));
  CHECK(fast_log(1.0f) == 0.0f);
  CHECK(fast_log(std::numeric_limits<float>::denorm_min()) ==
        Approx(std::log(static_cast<double>(std::numeric_limits<float>::denorm_min()))).epsilon(1e-6));
  CHECK(fast_log1p(-1.0f) == -inf);
  CHECK(std::isnan(fast_log1p(-2.0f)));
  CHECK(fast_log1p(inf) == inf);
  CHECK(std::isnan(fast_log1p(nan)));
  CHECK(fast_log1p(0.0f) == 0.0f);
  // double overloads forward to <cmath>
  CHECK(distill::fast_exp(1.0) == std::exp(1.0));
  CHECK(distill::fast_log(3.0) == std::log(3.0));
}

TEST_CASE("fast math gives the same bits in a vectorised loop as in scalar calls", "[fast_math]") {
  std::vector<float> x(4099);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = -100.0f + 0.0537f * static_cast<float>(i);
  std::vector<float> e(x.size()), l(x.size()), l1(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) e[i] = distill::fast_exp(x[i]);
  for (std::size_t i = 0; i < x.size(); ++i) l[i] = distill::fast_log(std::fabs(x[i]));
  for (std::size_t i = 0; i < x.size(); ++i) l1[i] = distill::fast_log1p(x[i] * 0.01f);
  for (std::size_t i = 0; i < x.size(); i += 97) {
    volatile float xi = x[i];  // defeats constant folding: a genuinely scalar call
    CHECK(e[i] == distill::fast_exp(static_cast<float>(xi)));
    CHECK(l[i] == distill::fast_log(std::fabs(static_cast<float>(xi))));
    CHECK(l1[i] == distill::fast_log1p(static_cast<float>(xi) * 0.01f));
  }
}
