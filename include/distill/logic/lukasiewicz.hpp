// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Łukasiewicz soft logic: the truth functions of distill's rule language and the hinge-loss
//! energy of a rule (Bach, Broecheler, Huang, Getoor, "Hinge-Loss Markov Random Fields and
//! Probabilistic Soft Logic", JMLR 18, 2017, §2 and §4).
//!
//! Truth values live in [0, 1]. For a, b in [0, 1]:
//!   a & b   = max(0, a + b - 1)          (Łukasiewicz t-norm)
//!   a | b   = min(1, a + b)              (its co-norm)
//!   !a      = 1 - a
//!   a -> b  = min(1, 1 - a + b)
//! n-ary forms: &(a_1..a_n) = max(0, Σ a_i - (n - 1)) (1 for n = 0), |(b_1..b_m) = min(1, Σ b_j)
//! (0 for m = 0).
//!
//! A rule  body_1 & ... & body_n -> head_1 | ... | head_m  is satisfied to the degree
//! (body -> head); its distance to satisfaction is
//!   d = 1 - (body -> head) = max(0, &(body) - |(head))
//!     = max(0, Σ_i body_i - (n - 1) - Σ_j head_j)                      (*)
//! The inner max/min of the t-norm and co-norm can be dropped inside the outer max (PSL's
//! observation): if Σ head ≥ 1 both sides are 0, and if Σ body < n - 1 both sides are 0.
//! (*) is linear in the literals, so with the observed atoms folded into a constant it is a
//! hinge max(0, c + a·x) over the open atoms x; negated literals contribute 1 - x.
//!
//! A weighted rule with weight w and exponent p ∈ {1, 2} adds w · d^p to the energy that MAP
//! inference minimises (inference.hpp). A hard rule demands d = 0.
//!
//! Every function is DISTILL_HOST_DEVICE and works for float and double.

#include "distill/core/config.hpp"

namespace distill {

/// a & b = max(0, a + b - 1).
template <class T>
DISTILL_HOST_DEVICE constexpr T lukasiewicz_and(T a, T b) noexcept {
  const T s = a + b - T(1);
  return s > T(0) ? s : T(0);
}

/// a | b = min(1, a + b).
template <class T>
DISTILL_HOST_DEVICE constexpr T lukasiewicz_or(T a, T b) noexcept {
  const T s = a + b;
  return s < T(1) ? s : T(1);
}

/// !a = 1 - a.
template <class T>
DISTILL_HOST_DEVICE constexpr T lukasiewicz_not(T a) noexcept {
  return T(1) - a;
}

/// a -> b = min(1, 1 - a + b).
template <class T>
DISTILL_HOST_DEVICE constexpr T lukasiewicz_implies(T a, T b) noexcept {
  const T s = T(1) - a + b;
  return s < T(1) ? s : T(1);
}

/// &(v_0..v_{n-1}) = max(0, Σ v - (n - 1)); 1 for n = 0 (the empty conjunction is true).
template <class T>
DISTILL_HOST_DEVICE constexpr T lukasiewicz_and_n(const T* values, int n) noexcept {
  T s = T(1) - T(n);
  for (int i = 0; i < n; ++i) s += values[i];
  return n == 0 ? T(1) : (s > T(0) ? s : T(0));
}

/// |(v_0..v_{n-1}) = min(1, Σ v); 0 for n = 0 (the empty disjunction is false).
template <class T>
DISTILL_HOST_DEVICE constexpr T lukasiewicz_or_n(const T* values, int n) noexcept {
  T s = T(0);
  for (int i = 0; i < n; ++i) s += values[i];
  return s < T(1) ? s : T(1);
}

/// Distance to satisfaction of `body -> head` given the truth of the body (a conjunction) and of
/// the head (a disjunction): max(0, body - head) = 1 - (body -> head).
template <class T>
DISTILL_HOST_DEVICE constexpr T distance_to_satisfaction(T body_truth, T head_truth) noexcept {
  const T d = body_truth - head_truth;
  return d > T(0) ? d : T(0);
}

/// One rule's hinge-loss energy: weight · distance^power, power 1 or 2.
template <class T>
DISTILL_HOST_DEVICE constexpr T hinge_energy(T weight, T distance, int power) noexcept {
  return power == 2 ? weight * distance * distance : weight * distance;
}

}  // namespace distill
