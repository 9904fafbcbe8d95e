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

namespace examples {

/// splitmix64: a tiny, well-mixed 64-bit generator.
class splitmix64 {
 public:
  explicit splitmix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform integer in [0, n), unbiased (rejects the top 2^64 mod n values).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t threshold = (0 - n) % n;
    for (;;) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }

 private:
  std::uint64_t state_;
};

/// One splitmix64 step of x: a 64-bit hash for deriving independent seeds.
inline std::uint64_t mix64(std::uint64_t x) { return splitmix64(x).next(); }

/// A permutation of 0..n-1 that depends only on (seed, epoch): Fisher-Yates driven by splitmix64.
inline std::vector<std::uint32_t> shuffled_order(std::size_t n, std::uint64_t seed, std::uint64_t epoch) {
  std::vector<std::uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  splitmix64 rng(mix64(mix64(seed) ^ (0x5348554646ull /* "SHUFF" */ + epoch)));
  for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

}  // namespace examples
