// SplitMix64 (core/splitmix64.hpp) against the outputs of Vigna's reference splitmix64.c, and
// its counter form against stepping the generator.
#include <catch2/catch.hpp>

#include <cstdint>

#include "distill/core/splitmix64.hpp"

TEST_CASE("splitmix64 reproduces the reference stream", "[core][random]") {
  // First outputs of splitmix64.c (prng.di.unimi.it) from state 0.
  distill::splitmix64 g(0);
  CHECK(g.next() == 0xE220A8397B1DCDAFull);
  CHECK(g.next() == 0x6E789E6AA1B965F4ull);
  CHECK(g.next() == 0x06C45D188009454Full);
  CHECK(distill::splitmix64_hash(0) == 0xE220A8397B1DCDAFull);
  CHECK(distill::splitmix64_at(0, 2) == 0x06C45D188009454Full);
}

TEST_CASE("splitmix64_at(seed, i) is output i of the generator seeded with seed", "[core][random]") {
  for (const std::uint64_t seed : {0ull, 1ull, 0xDEADBEEFull, ~0ull}) {
    distill::splitmix64 g(seed);
    for (std::uint64_t i = 0; i < 100; ++i) REQUIRE(g.next() == distill::splitmix64_at(seed, i));
  }
  distill::splitmix64 h(12345);
  int counts[7] = {};
  for (int i = 0; i < 7000; ++i) {
    const auto v = h.below(7);
    REQUIRE(v < 7);
    ++counts[v];
  }
  for (int c : counts) CHECK(c > 800);  // each of 7 values near 1000 (a stuck or biased draw fails)
}
