// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA
//! 2014; the constants of Vigna's splitmix64.c), the one copy in distill: nn/random.hpp's
//! counter-based streams, the sample queue's random init and the examples' data generators all
//! build on it, so each is reproducible bit for bit on the host and in CUDA kernels.
//!
//!   state_{i+1} = state_i + gamma                      gamma = 0x9E3779B97F4A7C15 (2^64 / phi)
//!   output_i    = mix(state_{i+1})                     mix   = the finaliser below (bijective)
//!   output i of the generator seeded with s = mix(s + (i + 1) gamma)     (splitmix64_at)
//!
//!   distill::splitmix64 g(seed);  g.next(); g.below(10);   // stateful form (host)

#include <cstdint>

#include "distill/core/config.hpp"

namespace distill {

inline constexpr std::uint64_t splitmix64_gamma = 0x9E3779B97F4A7C15ull;

/// The SplitMix64 finaliser: a bijective, well-mixed 64-bit hash step.
DISTILL_HOST_DEVICE constexpr std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// Output number `i` (from 0) of the generator seeded with `seed`, without stepping through the
/// ones before it.
DISTILL_HOST_DEVICE constexpr std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t i) noexcept {
  return splitmix64_mix(seed + (i + 1) * splitmix64_gamma);
}

/// The first output of the generator seeded with x: a 64-bit hash for deriving seeds.
DISTILL_HOST_DEVICE constexpr std::uint64_t splitmix64_hash(std::uint64_t x) noexcept { return splitmix64_at(x, 0); }

/// The stateful generator (host code: data generators, shuffles).
class splitmix64 {
 public:
  constexpr explicit splitmix64(std::uint64_t seed) noexcept : state_(seed) {}
  constexpr std::uint64_t next() noexcept { return splitmix64_mix(state_ += splitmix64_gamma); }
  /// Uniform integer in [0, n), n > 0, unbiased (rejects the lowest 2^64 mod n values).
  constexpr std::uint64_t below(std::uint64_t n) noexcept {
    const std::uint64_t threshold = (0 - n) % n;
    for (;;) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }

 private:
  std::uint64_t state_;
};

}  // namespace distill
