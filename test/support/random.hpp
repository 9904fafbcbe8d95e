// SPDX-License-Identifier: MIT
#pragma once
// Seeded randomness for tests. The seed comes from DISTILL_TEST_SEED (default 20261126) and is
// printed by the test main, so any failure reproduces with the same seed.

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

namespace distill_test {

inline std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    const char* s = std::getenv("DISTILL_TEST_SEED");
    return s ? std::strtoull(s, nullptr, 10) : 20261126ull;
  }();
  return seed;
}

/// A generator seeded from the test seed and a per-test salt (so tests are independent).
class rng {
 public:
  explicit rng(std::uint64_t salt = 0) : gen_(test_seed() * 0x9E3779B97F4A7C15ull + salt) {}
  double normal(double mean = 0, double sd = 1) { return std::normal_distribution<double>(mean, sd)(gen_); }
  double uniform(double lo = 0, double hi = 1) { return std::uniform_real_distribution<double>(lo, hi)(gen_); }
  /// Integer in [lo, hi].
  std::int64_t integer(std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(gen_);
  }
  bool coin(double p = 0.5) { return uniform() < p; }
  template <class T = double>
  std::vector<T> normals(std::size_t n, double mean = 0, double sd = 1) {
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(normal(mean, sd));
    return v;
  }
  template <class T = double>
  std::vector<T> uniforms(std::size_t n, double lo = 0, double hi = 1) {
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(uniform(lo, hi));
    return v;
  }
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

}  // namespace distill_test
