// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Parameter initialisation, seeded and reproducible across CPU and CUDA: values are drawn on
//! the host in double from the counter-based stream (nn/random.hpp) keyed by (seed, hash of the
//! parameter's name), rounded to T and uploaded. The same seed and names give bitwise the same
//! initial model on every backend and thread count.
//!
//! Schemes (fan_in / fan_out of a weight: in_features / out_features for linear,
//! in_channels * kh * kw / out_channels * kh * kw for conv2d):
//!   torch_default    W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))    (torch.nn.Linear / Conv2d)
//!   kaiming_uniform  W ~ U(-g sqrt(3 / fan_in), g sqrt(3 / fan_in)), b = 0      (He et al. 2015)
//!   kaiming_normal   W ~ N(0, g^2 / fan_in), b = 0
//!   xavier_uniform   W ~ U(-g sqrt(6 / (fan_in + fan_out)), +...), b = 0     (Glorot & Bengio 2010)
//!   xavier_normal    W ~ N(0, g^2 * 2 / (fan_in + fan_out)), b = 0
//! g = `gain` (default sqrt(2), the ReLU gain, for Kaiming; 1 for Xavier). Normals use the
//! Box-Muller transform on pairs of uniforms (53-bit).

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/status.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/random.hpp"

namespace distill::nn {

enum class init_scheme { torch_default, kaiming_uniform, kaiming_normal, xavier_uniform, xavier_normal };

struct init_options {
  std::uint64_t seed = 0;
  init_scheme scheme = init_scheme::torch_default;
  double gain = 0;  ///< 0 = the scheme's default (sqrt(2) for Kaiming, 1 for Xavier)
};

/// n values ~ U(lo, hi) from stream `key`.
inline std::vector<double> draw_uniform(index_t n, double lo, double hi, std::uint64_t key) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = lo + (hi - lo) * random_uniform53(key, static_cast<std::uint64_t>(i));
  return v;
}

/// n values ~ N(mean, sd^2) from stream `key` (Box-Muller on uniforms 2i, 2i+1).
inline std::vector<double> draw_normal(index_t n, double mean, double sd, std::uint64_t key) {
  std::vector<double> v(static_cast<std::size_t>(n));
  constexpr double two_pi = 6.283185307179586476925286766559;
  for (index_t i = 0; i < n; i += 2) {
    const double u1 = 1.0 - random_uniform53(key, static_cast<std::uint64_t>(i));  // (0, 1]
    const double u2 = random_uniform53(key, static_cast<std::uint64_t>(i) + 1);
    const double r = std::sqrt(-2.0 * std::log(u1));
    v[static_cast<std::size_t>(i)] = mean + sd * r * std::cos(two_pi * u2);
    if (i + 1 < n) v[static_cast<std::size_t>(i) + 1] = mean + sd * r * std::sin(two_pi * u2);
  }
  return v;
}

/// Write host values (double) into a tensor of any space, rounding to T.
template <class T, class Space>
[[nodiscard]] status assign(tensor<T, Space>& t, const std::vector<double>& values) {
  std::vector<T> cast(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) cast[i] = static_cast<T>(values[i]);
  return t.copy_from_host(cast);
}

/// Fill a tensor with a constant (host-side, then upload).
template <class T, class Space>
[[nodiscard]] status fill_constant(tensor<T, Space>& t, double value) {
  return assign(t, std::vector<double>(static_cast<std::size_t>(t.size()), value));
}

/// Initialise a weight (and its bias, which may be null) with `opt.scheme`; the random stream of
/// each is keyed by (opt.seed, name hash).
template <class T, class Space>
[[nodiscard]] status init_weight_and_bias(parameter<T, Space>& weight, std::type_identity_t<parameter<T, Space>>* bias, index_t fan_in,
                                          index_t fan_out, const init_options& opt) {
  constexpr const char* fn = "nn::init_weight_and_bias";
  if (fan_in <= 0 || fan_out <= 0) return fail(errc::invalid_argument, fn, "fan_in and fan_out must be > 0");
  const std::uint64_t wkey = stream_key(opt.seed, name_hash(weight.name));
  const index_t n = weight.size();
  std::vector<double> w;
  const double kaiming_gain = opt.gain > 0 ? opt.gain : std::sqrt(2.0);
  const double xavier_gain = opt.gain > 0 ? opt.gain : 1.0;
  switch (opt.scheme) {
    case init_scheme::torch_default: {
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      w = draw_uniform(n, -bound, bound, wkey);
      break;
    }
    case init_scheme::kaiming_uniform: {
      const double bound = kaiming_gain * std::sqrt(3.0 / static_cast<double>(fan_in));
      w = draw_uniform(n, -bound, bound, wkey);
      break;
    }
    case init_scheme::kaiming_normal:
      w = draw_normal(n, 0.0, kaiming_gain / std::sqrt(static_cast<double>(fan_in)), wkey);
      break;
    case init_scheme::xavier_uniform: {
      const double bound = xavier_gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
      w = draw_uniform(n, -bound, bound, wkey);
      break;
    }
    case init_scheme::xavier_normal:
      w = draw_normal(n, 0.0, xavier_gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)), wkey);
      break;
  }
  DISTILL_TRY(assign(weight.value, w));
  if (bias) {
    if (opt.scheme == init_scheme::torch_default) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
      DISTILL_TRY(assign(bias->value, draw_uniform(bias->size(), -bound, bound, stream_key(opt.seed, name_hash(bias->name)))));
    } else {
      DISTILL_TRY(fill_constant(bias->value, 0.0));
    }
  }
  return {};
}

}  // namespace distill::nn
