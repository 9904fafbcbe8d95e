// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Element types. float and double everywhere; `distill::float16` (IEEE binary16) and
//! `distill::bfloat16` as 16-bit *storage* types whose arithmetic always happens in float.
//!
//! Both 16-bit types are plain 2-byte structs, layout-compatible with CUDA's `__half` and
//! `__nv_bfloat16`; kernels also accept views of those CUDA types directly. Conversions round to
//! nearest even and keep NaN/inf. (The name `half` is avoided: cuda_fp16.h defines a global
//! `half`, which would be ambiguous under `using namespace distill`.)
//!
//!   load<float>(x)       x of any supported type -> accumulator type
//!   store<T>(float v)    float -> storage type T
//!   accum_t<T>           float for float/float16/bfloat16, double for double

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "distill/core/config.hpp"

#if DISTILL_CUDA_COMPILER
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace distill {

namespace dtype_detail {
DISTILL_HOST_DEVICE inline std::uint32_t float_bits(float f) noexcept {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
DISTILL_HOST_DEVICE inline float bits_float(std::uint32_t u) noexcept {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
}  // namespace dtype_detail

/// bfloat16 storage: the top 16 bits of a float.
struct bfloat16 {
  std::uint16_t bits;

  bfloat16() = default;
  DISTILL_HOST_DEVICE explicit bfloat16(float f) noexcept : bits(from_float_bits(f)) {}
  DISTILL_HOST_DEVICE operator float() const noexcept {
    return dtype_detail::bits_float(static_cast<std::uint32_t>(bits) << 16);
  }
  DISTILL_HOST_DEVICE static bfloat16 from_bits(std::uint16_t b) noexcept {
    bfloat16 h;
    h.bits = b;
    return h;
  }

 private:
  DISTILL_HOST_DEVICE static std::uint16_t from_float_bits(float f) noexcept {
    std::uint32_t u = dtype_detail::float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<std::uint16_t>(u >> 16);
  }
};

/// IEEE 754 binary16 storage.
struct float16 {
  std::uint16_t bits;

  float16() = default;
  DISTILL_HOST_DEVICE explicit float16(float f) noexcept : bits(from_float_bits(f)) {}
  DISTILL_HOST_DEVICE operator float() const noexcept {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(bits));
#else
    return to_float_bits(bits);
#endif
  }
  DISTILL_HOST_DEVICE static float16 from_bits(std::uint16_t b) noexcept {
    float16 h;
    h.bits = b;
    return h;
  }

 private:
  DISTILL_HOST_DEVICE static float to_float_bits(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t man = h & 0x3ffu;
    std::uint32_t u;
    if (exp == 0x1f) {
      u = sign | 0x7f800000u | (man << 13);  // inf / NaN
    } else if (exp != 0) {
      u = sign | ((exp + 112u) << 23) | (man << 13);  // normal: rebias 15 -> 127
    } else if (man == 0) {
      u = sign;  // +-0
    } else {      // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    return dtype_detail::bits_float(u);
  }
  DISTILL_HOST_DEVICE static std::uint16_t from_float_bits(float f) noexcept {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(f));
#else
    const std::uint32_t u = dtype_detail::float_bits(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // NaN
    if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow -> inf
    if (a < 0x38800000u) {  // subnormal or zero in float16
      if (a < 0x33000000u) return static_cast<std::uint16_t>(sign);  // rounds to 0
      const std::uint32_t e = a >> 23;
      const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
      const std::uint32_t shift = 126u - e;  // 14..24
      std::uint32_t r = m >> shift;
      const std::uint32_t rem = m & ((1u << shift) - 1u);
      const std::uint32_t halfway = 1u << (shift - 1u);
      if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
      return static_cast<std::uint16_t>(sign | r);
    }
    std::uint32_t r = a - 0x38000000u;  // rebias 127 -> 15 (exponent field shifts by 112)
    r += 0xfffu + ((r >> 13) & 1u);      // round to nearest even on the 13 dropped bits
    return static_cast<std::uint16_t>(sign | (r >> 13));
#endif
  }
};

static_assert(sizeof(float16) == 2 && sizeof(bfloat16) == 2, "16-bit storage types must be 2 bytes");

template <class T>
inline constexpr bool is_16bit_float_v = std::is_same_v<std::remove_cv_t<T>, float16> ||
                                         std::is_same_v<std::remove_cv_t<T>, bfloat16>
#if DISTILL_CUDA_COMPILER
                                         || std::is_same_v<std::remove_cv_t<T>, __half> ||
                                         std::is_same_v<std::remove_cv_t<T>, __nv_bfloat16>
#endif
    ;

/// Element types the primitives accept as storage.
template <class T>
inline constexpr bool is_supported_float_v = std::is_same_v<std::remove_cv_t<T>, float> ||
                                             std::is_same_v<std::remove_cv_t<T>, double> ||
                                             is_16bit_float_v<T>;

/// Accumulation type: double for double, float for everything narrower.
template <class T>
using accum_t = std::conditional_t<std::is_same_v<std::remove_cv_t<T>, double>, double, float>;

/// Read any supported element as the accumulator type `Acc` (float or double).
template <class Acc, class T>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc load(const T& x) noexcept {
#if DISTILL_CUDA_COMPILER
  if constexpr (std::is_same_v<std::remove_cv_t<T>, __half>) {
    return static_cast<Acc>(__half2float(x));
  } else if constexpr (std::is_same_v<std::remove_cv_t<T>, __nv_bfloat16>) {
    return static_cast<Acc>(__bfloat162float(x));
  } else
#endif
  {
    return static_cast<Acc>(x);
  }
}

/// Write a float/double value into storage type T (round to nearest even for 16-bit types).
template <class T, class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE T store(Acc v) noexcept {
#if DISTILL_CUDA_COMPILER
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else
#endif
      if constexpr (is_16bit_float_v<T>) {
    return T(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

/// Human-readable dtype name, for messages and benchmark labels.
template <class T>
constexpr const char* dtype_name() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return "f32";
  else if constexpr (std::is_same_v<U, double>) return "f64";
  else if constexpr (std::is_same_v<U, float16>) return "f16";
  else if constexpr (std::is_same_v<U, bfloat16>) return "bf16";
#if DISTILL_CUDA_COMPILER
  else if constexpr (std::is_same_v<U, __half>) return "f16";
  else if constexpr (std::is_same_v<U, __nv_bfloat16>) return "bf16";
#endif
  else return "unknown";
}

}  // namespace distill
