// distill::float16 / bfloat16 (core/dtype.hpp) against Eigen::half / Eigen::bfloat16 as an
// independent reference: every 16-bit pattern widens to the same float, and rounding floats
// (a sweep across every binade, halfway cases, subnormals, overflow) gives the same bits.
// docs/design.md ("dtypes") says why distill keeps its own types.
#include <catch2/catch.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distill/core/dtype.hpp"

namespace {

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Floats that exercise rounding: for many 16-bit patterns, the pattern itself, the halfway
/// points to its neighbour and one ulp of float either side of them.
std::vector<float> probe_floats() {
  std::vector<float> v;
  for (std::uint32_t hi = 0; hi < 0x10000; hi += 7) {
    const std::uint32_t u = hi << 16;
    for (const std::uint32_t low : {0u, 0x1000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) v.push_back(from_bits(u | low));
  }
  for (int e = -30; e <= 20; ++e)
    for (const float m : {1.0f, 1.00048828125f, 1.000488281f, 1.5f, 1.999f}) {
      v.push_back(std::ldexp(m, e));
      v.push_back(-std::ldexp(m, e));
    }
  v.push_back(65504.0f);
  v.push_back(65520.0f);  // rounds to inf in binary16
  v.push_back(1e30f);
  v.push_back(INFINITY);
  return v;
}

}  // namespace

TEST_CASE("float16 and bfloat16 widen every bit pattern as Eigen does", "[core][dtype]") {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float ours_h = static_cast<float>(distill::float16::from_bits(bits));
    const float eigen_h = static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
    const float ours_b = static_cast<float>(distill::bfloat16::from_bits(bits));
    const float eigen_b = static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(bits));
    INFO("bits " << b);
    if (std::isnan(eigen_h)) REQUIRE(std::isnan(ours_h));
    else REQUIRE(std::memcmp(&ours_h, &eigen_h, 4) == 0);
    if (std::isnan(eigen_b)) REQUIRE(std::isnan(ours_b));
    else REQUIRE(std::memcmp(&ours_b, &eigen_b, 4) == 0);
  }
}

TEST_CASE("float16 and bfloat16 round floats to the bits Eigen gives (nearest even)", "[core][dtype]") {
  for (const float f : probe_floats()) {
    INFO("float " << f);
    if (std::isnan(f)) {  // NaN stays NaN (payloads may differ: both are quiet NaNs)
      REQUIRE(std::isnan(static_cast<float>(distill::float16(f))));
      REQUIRE(std::isnan(static_cast<float>(distill::bfloat16(f))));
      continue;
    }
    REQUIRE(distill::float16(f).bits == Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(f)));
    REQUIRE(distill::bfloat16(f).bits == Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(f)));
  }
}
