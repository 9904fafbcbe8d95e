// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Branch-free exp / log / log1p for `float`, written once for a scalar and for an xsimd batch
//! (core/simd.hpp), so a vectorised loop and a scalar call give the same bits:
//!
//!   for (; k + simd::width<float> <= n; k += simd::width<float>)
//!     simd::store(e + k, distill::fast_exp(simd::load<float>(x + k) - m));
//!
//! Accuracy over the whole float range, measured against double std::exp / std::log / std::log1p
//! on every 97th float bit pattern (test/losses/test_fast_math.cpp checks the bounds in brackets,
//! for the scalar and the batch forms):
//!   fast_exp    0.92 ulp [1.5]; subnormal results within 1 subnormal ulp; exp(-inf) = 0,
//!               exp(x < -103.98) = 0, exp(x > 88.72) = +inf, exp(NaN) = NaN, exp(subnormal) = 1.
//!   fast_log    1.9 ulp [2.5], subnormal inputs included; log(+-0) = -inf, log(x < 0) = NaN,
//!               log(+inf) = +inf, log(NaN) = NaN.
//!   fast_log1p  1.95 ulp [2.5], accurate for tiny |x| (log1p(x) = x below 2^-24);
//!               log1p(-1) = -inf, log1p(x < -1) = NaN, log1p(+inf) = +inf, log1p(NaN) = NaN.
//! `double` and batches of double use <cmath> and xsimd's own exp/log/log1p (accurate to about
//! 1 ulp; the double paths are the reference-grade ones). Not for -ffast-math builds (NaN tests
//! would fold away).
//!
//! How: exp uses Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 minimax polynomial
//! (relative error 2e-9, a thirtieth of an ulp) and a two-step scale by 2^n so that overflow,
//! underflow and subnormal results come out of ordinary float multiplication (a batch whose
//! results are all normal adds n to the exponent field instead, which is exact). log
//! splits x = 2^e m with m in [sqrt(1/2), sqrt(2)) and uses log m = 2 atanh(f / (2 + f)),
//! f = m - 1, as an odd series to s^9 (truncation error < 3e-9 relative); log1p runs the same
//! series on x itself near 0. Special values are selects computed for every lane.
//! The host path; CUDA code uses the hardware intrinsics instead (see core/math.hpp).

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "distill/core/config.hpp"
#include "distill/core/simd.hpp"

namespace distill {

namespace fast_math_detail {
/// The 32-bit integer type of the same shape as V (float or a batch of float).
template <class V>
struct int_of {
  using type = std::int32_t;
};
template <class A>
struct int_of<xsimd::batch<float, A>> {
  using type = xsimd::batch<std::int32_t, A>;
};
template <class V>
using int_t = typename int_of<V>::type;

/// a * b + c, fused where the target has FMA (as simd::fma is for batches), so a scalar call and a
/// batch lane round the same way; otherwise the plain expression (std::fma would be a slow call).
DISTILL_FORCEINLINE float mul_add(float a, float b, float c) noexcept {
#if defined(__FMA__) || defined(__AVX512F__) || defined(__aarch64__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> mul_add(const xsimd::batch<float, A>& a, const xsimd::batch<float, A>& b,
                                                   const xsimd::batch<float, A>& c) noexcept {
  return simd::fma(a, b, c);
}
/// c - a * b, fused like mul_add.
DISTILL_FORCEINLINE float neg_mul_add(float a, float b, float c) noexcept { return mul_add(-a, b, c); }
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> neg_mul_add(const xsimd::batch<float, A>& a, const xsimd::batch<float, A>& b,
                                                       const xsimd::batch<float, A>& c) noexcept {
  return simd::fnma(a, b, c);
}
DISTILL_FORCEINLINE std::int32_t to_bits(float f) noexcept { return std::bit_cast<std::int32_t>(f); }
DISTILL_FORCEINLINE float from_bits(std::int32_t u) noexcept { return std::bit_cast<float>(u); }
DISTILL_FORCEINLINE float to_float(std::int32_t i) noexcept { return static_cast<float>(i); }
template <class A>
DISTILL_FORCEINLINE xsimd::batch<std::int32_t, A> to_bits(const xsimd::batch<float, A>& f) noexcept {
  return xsimd::bitwise_cast<xsimd::batch<std::int32_t, A>>(f);
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> from_bits(const xsimd::batch<std::int32_t, A>& u) noexcept {
  return xsimd::bitwise_cast<xsimd::batch<float, A>>(u);
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> to_float(const xsimd::batch<std::int32_t, A>& i) noexcept {
  return xsimd::to_float(i);
}

/// `x` where it is NaN, else `v`.
template <class V>
DISTILL_FORCEINLINE V pick_nan(const V& x, const V& v) noexcept {
  return simd::select(simd::is_nan(x), x, v);
}

/// Lane-wise `x` clamped to [lo, hi]. A NaN lane may come out as either bound (the callers
/// restore NaN at the end), which lets batches use the min/max instructions.
DISTILL_FORCEINLINE float clamp(float x, float lo, float hi) noexcept {
  x = simd::select(x < lo, lo, x);
  return simd::select(x > hi, hi, x);
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> clamp(const xsimd::batch<float, A>& x, float lo, float hi) noexcept {
  return xsimd::min(xsimd::max(x, xsimd::batch<float, A>(lo)), xsimd::batch<float, A>(hi));
}

/// e^x for V = float or a batch of float (see the file comment).
template <class V>
DISTILL_FORCEINLINE V exp_impl(const V& x) noexcept {
  using I = int_t<V>;
  const V log2e(1.44269504088896341f);
  const V ln2_hi(0.693145751953125f);        // 16 significant bits: n * ln2_hi is exact
  const V ln2_lo(1.428606765330187045e-6f);  // ln 2 - ln2_hi
  const V round_magic(12582912.0f);          // 1.5 * 2^23: adding it rounds to an integer
  // e^r on |r| <= ln2/2: a degree-6 minimax polynomial (relative error 2e-9) in Horner form.
  auto exp_reduced = [&](const V& xc, V& shifted) DISTILL_INLINE_LAMBDA {
    shifted = mul_add(xc, log2e, round_magic);  // n = round(x / ln 2) in the low mantissa bits
    const V n = shifted - round_magic;
    V r = neg_mul_add(n, ln2_hi, xc);
    r = neg_mul_add(n, ln2_lo, r);
    V p(1.384365372e-3f);
    p = mul_add(p, r, V(8.374155499e-3f));
    p = mul_add(p, r, V(4.166800156e-2f));
    p = mul_add(p, r, V(1.666643173e-1f));
    p = mul_add(p, r, V(4.999999404e-1f));
    p = mul_add(p, r, V(1.0f));
    return mul_add(p, r, V(1.0f));
  };
  V shifted;
  if constexpr (!std::is_same_v<V, float>) {
    // Batches whose results are all normal floats (|x| <= 86.5; the common case, and never a
    // NaN) scale by 2^n through the exponent field: the bits of `shifted` shifted left by 23
    // are n << 23 (the magic constant's shift out). This is exact, so it gives the same bits as
    // the general form below.
    if (xsimd::all(xsimd::abs(x) <= V(86.5f))) {
      const V p = exp_reduced(x, shifted);
      return from_bits(to_bits(p) + (to_bits(shifted) << 23));
    }
  }
  // Clamp so that n stays in [-150, 128]; 2^n as 2^n1 * 2^n2 with both halves in the normal
  // range, so overflow gives +inf and underflow gives correctly rounded subnormals or 0.
  const V p = exp_reduced(clamp(x, -104.0f, 89.0f), shifted);
  const I ni = to_bits(shifted) - I(to_bits(12582912.0f));
  const I n1 = ni >> 1;
  const I n2 = ni - n1;
  const V s1 = from_bits((n1 + I(127)) << 23);
  const V s2 = from_bits((n2 + I(127)) << 23);
  return pick_nan(x, (p * s1) * s2);
}

/// log(m) - (m - 1) for m in [sqrt(1/2), sqrt(2)), given f = m - 1, as 2 atanh(s) - f (shared
/// by log and log1p): log(1 + f) = 2 s (1 + s^2/3 + s^4/5 + s^6/7 + s^8/9 + ...), s = f/(2 + f).
template <class V>
DISTILL_FORCEINLINE V log1p_series(const V& f) noexcept {
  const V s = simd::div(f, V(2.0f) + f);
  const V s2 = s * s;
  V poly(1.0f / 9.0f);
  poly = mul_add(poly, s2, V(1.0f / 7.0f));
  poly = mul_add(poly, s2, V(1.0f / 5.0f));
  poly = mul_add(poly, s2, V(1.0f / 3.0f));
  const V two_s = s + s;
  return mul_add(two_s * s2, poly, two_s);
}

/// Natural logarithm for V = float or a batch of float.
template <class V>
DISTILL_FORCEINLINE V log_impl(const V& x) noexcept {
  using simd::select;
  using I = int_t<V>;
  constexpr float inf = std::numeric_limits<float>::infinity();
  const V ln2_hi(0.693145751953125f);
  const V ln2_lo(1.428606765330187045e-6f);
  // Every step is computed for every lane; the special values are selected at the end.
  const auto subnormal = x < V(std::numeric_limits<float>::min());
  const V xs = x * select(subnormal, V(8388608.0f), V(1.0f));  // subnormals * 2^23
  const I u = to_bits(xs);
  V e = to_float((u >> 23) & I(0xff)) - select(subnormal, V(127.0f + 23.0f), V(127.0f));
  V m = from_bits((u & I(0x007fffff)) | I(0x3f800000));  // mantissa in [1, 2)
  const auto upper = m > V(1.41421354f);                  // m > sqrt(2): halve it
  m = select(upper, m * V(0.5f), m);                        // now in [sqrt(1/2), sqrt(2))
  e = e + select(upper, V(1.0f), V(0.0f));
  const V log_m = log1p_series(m - V(1.0f));  // m - 1 is exact (Sterbenz)
  const V result = mul_add(e, ln2_hi, mul_add(e, ln2_lo, log_m));
  // +0/-0 -> -inf, negative -> NaN, +inf -> +inf, NaN -> NaN.
  V out = select(x <= V(std::numeric_limits<float>::max()), result, x + x);  // +inf, NaN
  out = select(x < V(0.0f), V(std::numeric_limits<float>::quiet_NaN()), out);
  return select(x == V(0.0f), V(-inf), out);
}

/// log(1 + x) for V = float or a batch of float, accurate for tiny |x|.
template <class V>
DISTILL_FORCEINLINE V log1p_impl(const V& x) noexcept {
  using simd::select;
  constexpr float inf = std::numeric_limits<float>::infinity();
  // Near 0 (1 + x in [sqrt(1/2), sqrt(2))) the series runs on x itself, which is exact, so
  // there is no rounding of 1 + x to lose; elsewhere log(1 + x) = log(w) + (x - (w - 1)) / w
  // with w = fl(1 + x), the first-order correction for the rounding of w.
  const V near_zero = log1p_series(x);
  const V w = V(1.0f) + x;
  const V far = log_impl(w) + simd::div(x - (w - V(1.0f)), w);  // w == 0: fixed below
  V out = select((x > V(-0.29289321f)) && (x < V(0.41421356f)), near_zero, far);
  out = select(x == V(-1.0f), V(-inf), out);
  out = select(x == V(inf), V(inf), out);
  return pick_nan(x, out);  // far already gives NaN below -1
}
}  // namespace fast_math_detail

/// e^x for float, branch-free (see the file comment for accuracy and special values).
DISTILL_FORCEINLINE float fast_exp(float x) noexcept { return fast_math_detail::exp_impl(x); }
/// Natural logarithm for float.
DISTILL_FORCEINLINE float fast_log(float x) noexcept { return fast_math_detail::log_impl(x); }
/// log(1 + x) for float, accurate for tiny |x|.
DISTILL_FORCEINLINE float fast_log1p(float x) noexcept { return fast_math_detail::log1p_impl(x); }

/// The same for a batch of float: lane for lane the bits of the scalar call.
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> fast_exp(const xsimd::batch<float, A>& x) noexcept {
  return fast_math_detail::exp_impl(x);
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> fast_log(const xsimd::batch<float, A>& x) noexcept {
  return fast_math_detail::log_impl(x);
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<float, A> fast_log1p(const xsimd::batch<float, A>& x) noexcept {
  return fast_math_detail::log1p_impl(x);
}

// double: <cmath> for scalars, xsimd's functions for batches (both accurate to about 1 ulp).
inline double fast_exp(double x) noexcept { return std::exp(x); }
inline double fast_log(double x) noexcept { return std::log(x); }
inline double fast_log1p(double x) noexcept { return std::log1p(x); }
// xsimd's double exp converts round(x log2(e)) to int64 with a scalar cast where the ISA has no
// vector one (SSE2, AVX2, AVX-512 without DQ): for inf, NaN or |x| > 2^63 ln 2 that cast is
// undefined behaviour (UBSan reports it on the -inf that pads a partial batch). The argument is
// clamped to [-746, 710], where e^x already is 0 and inf, and a NaN goes around the call: same
// results.
template <class A>
DISTILL_FORCEINLINE xsimd::batch<double, A> fast_exp(const xsimd::batch<double, A>& x) noexcept {
  using V = xsimd::batch<double, A>;
  const auto is_num = x == x;
  const V in_range = xsimd::select(is_num, xsimd::min(xsimd::max(x, V(-746.0)), V(710.0)), V(0.0));
  return xsimd::select(is_num, xsimd::exp(in_range), x);
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<double, A> fast_log(const xsimd::batch<double, A>& x) noexcept {
  return xsimd::log(x);
}
template <class A>
DISTILL_FORCEINLINE xsimd::batch<double, A> fast_log1p(const xsimd::batch<double, A>& x) noexcept {
  return xsimd::log1p(x);
}

}  // namespace distill
