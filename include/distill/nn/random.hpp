// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Counter-based random numbers shared by the host and the kernels: the value at position
//! `counter` of stream `key` is a pure function of (key, counter), so a CPU loop, a CUDA kernel
//! with any thread layout and a backward pass that regenerates a dropout mask all see the same
//! numbers, without any generator state to carry around.
//!
//!   key      = stream_key(seed, stream)            (stream: e.g. a parameter's index)
//!   bits(i)  = splitmix64 output number i of the sequence seeded with `key`
//!            = mix(key + (i + 1) * gamma)    (core/splitmix64.hpp: splitmix64_at)
//!   uniform24(i) = (bits(i) >> 40) / 2^24          in [0, 1), exactly representable in float
//!   uniform53(i) = (bits(i) >> 11) / 2^53          in [0, 1), for the host-side initialisers
//!
//! Dropout compares the integer (bits >> 40) with round(p * 2^24), so the mask is bitwise the
//! same on every backend. Initialisers draw on the host in double and upload, so CPU and CUDA
//! models built with the same seed start from identical weights.

#include <cstdint>

#include "distill/core/config.hpp"
#include "distill/core/splitmix64.hpp"

namespace distill::nn {

/// Key of stream `stream` under `seed` (different streams are unrelated sequences).
DISTILL_HOST_DEVICE inline std::uint64_t stream_key(std::uint64_t seed, std::uint64_t stream) noexcept {
  return splitmix64_hash(seed) ^ splitmix64_mix(stream * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull);
}

/// 64 random bits at position `counter` of the stream with key `key`.
DISTILL_HOST_DEVICE inline std::uint64_t random_bits(std::uint64_t key, std::uint64_t counter) noexcept {
  return splitmix64_at(key, counter);
}

/// 24 random bits as an integer in [0, 2^24).
DISTILL_HOST_DEVICE inline std::uint32_t random_u24(std::uint64_t key, std::uint64_t counter) noexcept {
  return static_cast<std::uint32_t>(random_bits(key, counter) >> 40);
}

/// Uniform in [0, 1) with 53 random bits (host-side initialisers).
inline double random_uniform53(std::uint64_t key, std::uint64_t counter) noexcept {
  return static_cast<double>(random_bits(key, counter) >> 11) * 0x1.0p-53;
}

}  // namespace distill::nn
