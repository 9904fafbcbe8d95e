// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Scalar math shared by the CPU loops and the CUDA kernels.
//!
//! `lse_state` is the online log-sum-exp accumulator (running max m and sum s = sum exp(x - m)):
//!   add(x):      m' = max(m, x);  s' = s * exp(m - m') + exp(x - m')
//!   merge(o):    the same for two partial states (associative, so it reduces across lanes,
//!                threads, blocks and queue tiles)
//!   value():     m + log(s)       (-inf when every input was -inf)
//! Inputs equal to -inf contribute zero mass and never create NaN.

#include <cmath>
#include <limits>

#include "distill/core/config.hpp"

namespace distill {

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc neg_infinity() noexcept {
  return -std::numeric_limits<Acc>::infinity();
}

/// exp/log that pick the fast CUDA intrinsics for float on the device.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc exp_(Acc x) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Acc) == 4) return __expf(x);
  else return ::exp(x);
#else
  return std::exp(x);
#endif
}
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc log_(Acc x) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Acc) == 4) return __logf(x);
  else return ::log(x);
#else
  return std::log(x);
#endif
}

/// Online log-sum-exp accumulator.
template <class Acc>
struct lse_state {
  Acc m = neg_infinity<Acc>();  ///< running maximum
  Acc s = Acc(0);               ///< sum of exp(x - m)

  DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void add(Acc x) noexcept {
    if (x > m) {
      s = s * exp_(m - x) + Acc(1);  // exp(-inf) = 0 covers the empty state
      m = x;
    } else if (x != neg_infinity<Acc>()) {
      s += exp_(x - m);
    }
  }
  DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void merge(const lse_state& o) noexcept {
    if (o.m == neg_infinity<Acc>()) return;
    if (m == neg_infinity<Acc>()) {
      *this = o;
      return;
    }
    if (o.m > m) {
      s = s * exp_(m - o.m) + o.s;
      m = o.m;
    } else {
      s += o.s * exp_(o.m - m);
    }
  }
  /// log(sum exp(x)); -inf for an empty or all -inf input.
  DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc value() const noexcept {
    return m == neg_infinity<Acc>() ? m : m + log_(s);
  }
};

/// x * log(y) with the convention 0 * log(0) = 0 (torch.xlogy).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc xlogy(Acc x, Acc y) noexcept {
  return x == Acc(0) ? Acc(0) : x * log_(y);
}

/// log(1 - exp(x)) for x <= 0, accurate near 0 and near -inf (Maechler 2012).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc log1mexp(Acc x) noexcept {
  using std::exp;
  using std::expm1;
  using std::log;
  using std::log1p;
  constexpr Acc ln_half = Acc(-0.693147180559945309417232121458);
  return x > ln_half ? log(-expm1(x)) : log1p(-exp(x));
}

/// log(exp(a) + exp(b)), exact for -inf arguments.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc log_add_exp(Acc a, Acc b) noexcept {
  using std::exp;
  using std::log1p;
  const Acc hi = a > b ? a : b;
  const Acc lo = a > b ? b : a;
  if (lo == neg_infinity<Acc>()) return hi;
  return hi + log1p(exp(lo - hi));
}

/// Non-finite test that survives -ffast-math style flags better than std::isfinite.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE bool is_finite(Acc x) noexcept {
  return x - x == x - x;  // NaN for inf and NaN inputs
}

}  // namespace distill
