// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Branch-free exp / log / log1p for `float` that GCC and Clang vectorise inside ordinary loops
//! (`-O2 -march=native` or `-O3`): no table lookups, no calls, no data-dependent branches; the
//! special cases are selects. `double` overloads forward to <cmath>, so code templated on the
//! accumulator type can call `fast_exp(x)` for both.
//!
//!   for (index_t k = 0; k < n; ++k) e[k] = distill::fast_exp(x[k] - m);   // one AVX-512 loop
//!
//! Accuracy over the whole float range, measured against double std::exp / std::log / std::log1p
//! on every 97th float bit pattern (test/losses/test_fast_math.cpp checks the bounds in brackets):
//!   fast_exp    0.92 ulp [1.5]; subnormal results within 1 subnormal ulp; exp(-inf) = 0,
//!               exp(x < -103.98) = 0, exp(x > 88.72) = +inf, exp(NaN) = NaN, exp(subnormal) = 1.
//!   fast_log    1.9 ulp [2.5], subnormal inputs included; log(+-0) = -inf, log(x < 0) = NaN,
//!               log(+inf) = +inf, log(NaN) = NaN.
//!   fast_log1p  1.95 ulp [2.5], accurate for tiny |x| (log1p(x) = x below 2^-24);
//!               log1p(-1) = -inf, log1p(x < -1) = NaN, log1p(+inf) = +inf, log1p(NaN) = NaN.
//! The vector and scalar code paths perform the same operations, so results do not depend on
//! where a loop's remainder falls. Not for -ffast-math builds (NaN tests would fold away).
//!
//! How: exp uses Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial
//! (truncation error < 6e-9 relative, below half an ulp) and a two-step scale by 2^n so that
//! overflow, underflow and subnormal results come out of ordinary float multiplication. log
//! splits x = 2^e m with m in [sqrt(1/2), sqrt(2)) and uses log m = 2 atanh(f / (2 + f)),
//! f = m - 1, as an odd series to s^9 (truncation error < 3e-9 relative); log1p runs the same
//! series on x itself near 0. Special values are blended with integer masks, not float selects:
//! GCC turns float select chains back into branches and then refuses to vectorise them.
//! The host path; CUDA code uses the hardware intrinsics instead (see core/math.hpp).

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "distill/core/config.hpp"

namespace distill {

namespace fast_math_detail {
/// a * b + c, fused where the target has FMA (it is then a single instruction that vectorises);
/// otherwise the plain expression (std::fma would be a slow library call).
DISTILL_FORCEINLINE float mul_add(float a, float b, float c) noexcept {
#if defined(__FMA__) || defined(__AVX512F__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
DISTILL_FORCEINLINE float from_bits(std::uint32_t u) noexcept { return std::bit_cast<float>(u); }
DISTILL_FORCEINLINE std::uint32_t to_bits(float f) noexcept { return std::bit_cast<std::uint32_t>(f); }
/// All ones when `c`, else zero.
DISTILL_FORCEINLINE std::uint32_t mask_if(bool c) noexcept { return 0u - static_cast<std::uint32_t>(c); }
}  // namespace fast_math_detail

/// e^x for float, branch-free (see the file comment for accuracy and special values).
DISTILL_FORCEINLINE float fast_exp(float x) noexcept {
  using namespace fast_math_detail;
  constexpr float log2e = 1.44269504088896341f;
  constexpr float ln2_hi = 0.693145751953125f;        // 16 significant bits: n * ln2_hi is exact
  constexpr float ln2_lo = 1.428606765330187045e-6f;  // ln 2 - ln2_hi
  constexpr float round_magic = 12582912.0f;          // 1.5 * 2^23: adding it rounds to an integer
  // Clamp so that n stays in [-150, 128]; NaN passes through both comparisons unchanged.
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  const float shifted = mul_add(xc, log2e, round_magic);
  const float n = shifted - round_magic;
  // The integer n sits in the low mantissa bits of `shifted` (two's complement via unsigned math).
  const std::int32_t ni = static_cast<std::int32_t>(to_bits(shifted) - to_bits(round_magic));
  float r = mul_add(-n, ln2_hi, xc);
  r = mul_add(-n, ln2_lo, r);
  // e^r, degree-7 Taylor polynomial in Horner form.
  float p = 1.0f / 5040.0f;
  p = mul_add(p, r, 1.0f / 720.0f);
  p = mul_add(p, r, 1.0f / 120.0f);
  p = mul_add(p, r, 1.0f / 24.0f);
  p = mul_add(p, r, 1.0f / 6.0f);
  p = mul_add(p, r, 0.5f);
  p = mul_add(p, r, 1.0f);
  p = mul_add(p, r, 1.0f);
  // 2^n as 2^n1 * 2^n2 with both halves in the normal range, so overflow gives +inf and
  // underflow gives correctly rounded subnormals or 0.
  const std::int32_t n1 = ni >> 1;
  const std::int32_t n2 = ni - n1;
  const float s1 = from_bits(static_cast<std::uint32_t>(n1 + 127) << 23);
  const float s2 = from_bits(static_cast<std::uint32_t>(n2 + 127) << 23);
  const float result = (p * s1) * s2;
  const std::uint32_t is_nan = mask_if(x != x);
  return from_bits((to_bits(result) & ~is_nan) | (to_bits(x) & is_nan));
}

/// Natural logarithm for float, branch-free (see the file comment).
DISTILL_FORCEINLINE float fast_log(float x) noexcept {
  using namespace fast_math_detail;
  constexpr float ln2_hi = 0.693145751953125f;
  constexpr float ln2_lo = 1.428606765330187045e-6f;
  // Every step is computed for every lane and combined with integer selects: GCC does not
  // if-convert (vectorise) a trapping floating-point operation such as a division once it has
  // been sunk into one arm of a float select.
  const std::uint32_t ux = to_bits(x);
  const std::uint32_t subnormal = static_cast<std::uint32_t>(-static_cast<std::int32_t>(ux < 0x00800000u));
  const float xs = x * from_bits((0x4b000000u & subnormal) | (0x3f800000u & ~subnormal));  // * 2^23 or * 1
  const std::uint32_t u = to_bits(xs);
  std::int32_t e = static_cast<std::int32_t>((u >> 23) & 0xffu) - 127 - static_cast<std::int32_t>(subnormal & 23u);
  std::uint32_t mbits = (u & 0x007fffffu) | 0x3f800000u;  // mantissa in [1, 2)
  const std::uint32_t upper = mbits > 0x3fb504f3u ? 1u : 0u;  // m > sqrt(2): halve it
  mbits -= upper << 23;                                        // now in [sqrt(1/2), sqrt(2))
  e += static_cast<std::int32_t>(upper);
  const float f = from_bits(mbits) - 1.0f;  // exact (Sterbenz)
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  // log(1 + f) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + s^6/7 + s^8/9 + ...), |s| <= 0.1716
  float poly = 1.0f / 9.0f;
  poly = mul_add(poly, s2, 1.0f / 7.0f);
  poly = mul_add(poly, s2, 1.0f / 5.0f);
  poly = mul_add(poly, s2, 1.0f / 3.0f);
  const float two_s = s + s;
  const float log_m = mul_add(two_s * s2, poly, two_s);
  const float ef = static_cast<float>(e);
  const float result = mul_add(ef, ln2_hi, mul_add(ef, ln2_lo, log_m));
  // Special values: +0/-0 -> -inf, negative -> NaN, +inf -> +inf, NaN -> NaN (quieted).
  // Blended with bit masks rather than selects, which GCC's jump threading would turn back
  // into branches around the (then unvectorisable) division above.
  const std::uint32_t is_zero = mask_if((ux & 0x7fffffffu) == 0u);
  const std::uint32_t is_negative = mask_if(ux > 0x80000000u);                 // incl. -inf, -NaN
  const std::uint32_t is_inf_or_nan = mask_if((ux & 0x7f800000u) == 0x7f800000u) & ~is_negative;
  const std::uint32_t special = (0xff800000u & is_zero) | (0x7fc00000u & is_negative) |
                                ((ux | (0x00400000u & mask_if(ux != 0x7f800000u))) & is_inf_or_nan);
  const std::uint32_t keep = ~(is_zero | is_negative | is_inf_or_nan);
  return from_bits((to_bits(result) & keep) | special);
}

/// log(1 + x) for float, accurate for tiny |x|, branch-free.
DISTILL_FORCEINLINE float fast_log1p(float x) noexcept {
  using namespace fast_math_detail;
  // Near 0 (1 + x in [sqrt(1/2), sqrt(2))) the series runs on x itself, which is exact, so
  // there is no rounding of 1 + x to lose; elsewhere log(1 + x) = log(w) + (x - (w - 1)) / w
  // with w = fl(1 + x), the first-order correction for the rounding of w.
  const float s = x / (2.0f + x);
  const float s2 = s * s;
  float poly = 1.0f / 9.0f;
  poly = mul_add(poly, s2, 1.0f / 7.0f);
  poly = mul_add(poly, s2, 1.0f / 5.0f);
  poly = mul_add(poly, s2, 1.0f / 3.0f);
  const float two_s = s + s;
  const float near_zero = mul_add(two_s * s2, poly, two_s);
  const float w = 1.0f + x;
  const float far = fast_log(w) + (x - (w - 1.0f)) / w;  // w == 0: -inf + NaN is fixed below
  // Blend with bit masks (see fast_log): near zero, else far; -1 -> -inf; +inf -> +inf (far is
  // inf + NaN there); NaN stays NaN; far already gives NaN below -1.
  const std::uint32_t small = mask_if(x > -0.29289321f) & mask_if(x < 0.41421356f);
  const std::uint32_t minus_one = mask_if(x == -1.0f);
  const std::uint32_t plus_inf = mask_if(x == std::numeric_limits<float>::infinity());
  const std::uint32_t is_nan = mask_if(x != x);
  std::uint32_t out = (to_bits(near_zero) & small) | (to_bits(far) & ~small);
  out = (out & ~(minus_one | plus_inf | is_nan)) | (0xff800000u & minus_one) | (0x7f800000u & plus_inf) |
        (to_bits(x) & is_nan);
  return from_bits(out);
}

// double: the <cmath> functions (already accurate; the double paths are the slow reference-grade ones).
inline double fast_exp(double x) noexcept { return std::exp(x); }
inline double fast_log(double x) noexcept { return std::log(x); }
inline double fast_log1p(double x) noexcept { return std::log1p(x); }

}  // namespace distill
