// SPDX-License-Identifier: MIT
// core/fast_math.hpp against double-precision std::exp / std::log / std::log1p over the whole
// float range (every 251st bit pattern, both signs), the special values, subnormals, and the
// agreement of the batch (SIMD) forms with the scalar calls, bit for bit.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "distill/core/fast_math.hpp"
#include "distill/core/simd.hpp"

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

TEST_CASE("simd::fma rounds once where the CPU has FMA", "[fast_math]") {
  // (1/3) * 3 - 1 is 2^-25 before rounding of the product and 0 after it; xsimd 8.1 computed the
  // unfused form for AVX-512, which only GCC at -O2 and above fused again (clang's sanitizer
  // build found it through the test below).
  using distill::simd::batch;
  volatile float third = 1.0f / 3.0f;  // not folded at compile time
  const float fused = distill::simd::fma(batch<float>(third), batch<float>(3.0f), batch<float>(-1.0f)).get(0);
  const float fnma = distill::simd::fnma(batch<float>(third), batch<float>(3.0f), batch<float>(1.0f)).get(0);
  volatile double third_d = 1.0 / 3.0;
  const double fused_d = distill::simd::fma(batch<double>(third_d), batch<double>(3.0), batch<double>(-1.0)).get(0);
#if defined(__FMA__) || defined(__AVX512F__) || defined(__aarch64__)
  CHECK(fused == std::ldexp(1.0f, -25));
  CHECK(fnma == -std::ldexp(1.0f, -25));
  CHECK(fused_d == std::fma(1.0 / 3.0, 3.0, -1.0));
  CHECK(fused_d != 0.0);
#else
  CHECK(fused == 0.0f);  // no FMA: the product rounds first
  CHECK(fnma == 0.0f);
  CHECK(fused_d == 0.0);
#endif
}

TEST_CASE("fast math gives the same bits for a batch as for scalar calls", "[fast_math]") {
  // every 61st bit pattern of the float range, both signs, a batch at a time
  using batch = distill::simd::batch<float>;
  constexpr int w = distill::simd::width<float>;
  INFO("instruction set: " << distill::simd::instruction_set() << ", " << w << " lanes");
  std::uint64_t mismatches = 0;
  float first_bad = 0;
  alignas(64) float x[w], e[w], l[w], l1[w];
  for (std::uint64_t b = 0; b < (std::uint64_t(1) << 32); b += std::uint64_t(61) * w) {
    for (int j = 0; j < w; ++j) x[j] = from_bits(static_cast<std::uint32_t>(b + std::uint64_t(61) * j));
    const batch v = batch::load_aligned(x);
    distill::fast_exp(v).store_aligned(e);
    distill::fast_log(v).store_aligned(l);
    distill::fast_log1p(v).store_aligned(l1);
    for (int j = 0; j < w; ++j) {
      const auto same = [](float a, float c) { return std::memcmp(&a, &c, 4) == 0 || (std::isnan(a) && std::isnan(c)); };
      if (!same(e[j], distill::fast_exp(x[j])) || !same(l[j], distill::fast_log(x[j])) || !same(l1[j], distill::fast_log1p(x[j]))) {
        if (mismatches++ == 0) first_bad = x[j];
      }
    }
  }
  INFO("first mismatch at x = " << first_bad);
  CHECK(mismatches == 0);
}

TEST_CASE("fast math on batches of double agrees with <cmath>", "[fast_math]") {
  using batch = distill::simd::batch<double>;
  constexpr int w = distill::simd::width<double>;
  alignas(64) double x[w], e[w], l[w], l1[w];
  for (double start : {-700.0, -20.5, -1e-9, 0.0, 3.25, 650.0}) {
    for (int j = 0; j < w; ++j) x[j] = start + 0.37 * j;
    const batch v = batch::load_aligned(x);
    distill::fast_exp(v).store_aligned(e);
    distill::fast_log(xsimd::abs(v)).store_aligned(l);
    distill::fast_log1p(v * 1e-3).store_aligned(l1);
    for (int j = 0; j < w; ++j) {
      CHECK(e[j] == Approx(std::exp(x[j])).epsilon(1e-15));
      if (x[j] != 0) CHECK(l[j] == Approx(std::log(std::fabs(x[j]))).epsilon(1e-15));
      CHECK(l1[j] == Approx(std::log1p(x[j] * 1e-3)).epsilon(1e-15));
    }
  }
}
