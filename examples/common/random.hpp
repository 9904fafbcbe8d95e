// SPDX-License-Identifier: MIT
#pragma once
// Portable seeded randomness for the examples: splitmix64 (Steele, Lea, Flood 2014) and a
// reproducible shuffle. No std:: distributions are used (their results differ between standard
// libraries), so a seed gives the same data, order and augmentation on every platform, and the
// PyTorch peers (bench/peers/) can reproduce them exactly.

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "distill/core/splitmix64.hpp"

namespace examples {

/// splitmix64: a tiny, well-mixed 64-bit generator (the library's, core/splitmix64.hpp).
using distill::splitmix64;

/// One splitmix64 step of x: a 64-bit hash for deriving independent seeds.
inline std::uint64_t mix64(std::uint64_t x) { return distill::splitmix64_hash(x); }

/// A permutation of 0..n-1 that depends only on (seed, epoch): Fisher-Yates driven by splitmix64.
inline std::vector<std::uint32_t> shuffled_order(std::size_t n, std::uint64_t seed, std::uint64_t epoch) {
  std::vector<std::uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  splitmix64 rng(mix64(mix64(seed) ^ (0x5348554646ull /* "SHUFF" */ + epoch)));
  for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

}  // namespace examples
