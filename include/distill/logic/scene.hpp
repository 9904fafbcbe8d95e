// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Scenes and the built-in observed predicates of distill's logic language.
//!
//! A scene is a row of `scene_object`s: a position (x, y) and categorical attributes (colour,
//! shape, size, material ids; Sort-of-CLEVR uses colour and shape, CLEVR all four). Positions are
//! in any unit; `spatial_predicate_options::scale` says what length counts as 1 (the image width
//! for pixel coordinates). y grows downwards, as in image rows, so "above" means a smaller y.
//!
//! Built-in predicates, with u = x / scale, v = y / scale, d_ij = |p_i - p_j| / scale,
//! σ(t) = 1 / (1 + e^-t), κ = sigmoid_sharpness, λ = softmax_sharpness, r = near_radius:
//!
//!   object(I)            1 for every object
//!   same_object(I, J)    [i = j]
//!   left_of(I, J)        σ(κ (u_j - u_i))          i is left of j
//!   right_of(I, J)       σ(κ (u_i - u_j))
//!   above(I, J)          σ(κ (v_j - v_i))          i is above j (smaller y)
//!   below(I, J)          σ(κ (v_i - v_j))
//!   near(I, J)           σ(κ (r - d_ij))
//!   far(I, J)            σ(κ (d_ij - r))           = 1 - near(I, J) off the diagonal
//!   closest_to(I, J)     exp(-λ d_ij) / Σ_{k≠i} exp(-λ d_ik)     j is i's nearest neighbour
//!   furthest_from(I, J)  exp(+λ d_ij) / Σ_{k≠i} exp(+λ d_ik)     j is i's furthest object
//!   same_shape(I, J)     [shape_i = shape_j]       (likewise same_colour, same_size,
//!                                                   same_material; reflexive)
//!
//! The spatial relations (left_of .. furthest_from) hold between distinct objects only: they
//! are 0 when i = j, and closest_to / furthest_from are softmaxes over the other objects (a row
//! sums to 1; all 0 in a one-object scene). As κ, λ → ∞ they become the crisp relations:
//! σ(κ t) → [t > 0] (½ at t = 0) and the softmax → the indicator of the arg-min (arg-max),
//! shared equally between exact ties. κ = λ = +infinity selects those limits exactly.
//!
//! Bad input: a scene without objects is `invalid_argument`, a NaN or infinite coordinate is
//! `non_finite` (the message names the object).

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

/// One object of a scene: position and categorical attribute ids.
struct scene_object {
  float x = 0.0f;
  float y = 0.0f;
  std::int32_t colour = 0;
  std::int32_t shape = 0;
  std::int32_t size = 0;      ///< CLEVR's size (free for other uses)
  std::int32_t material = 0;  ///< CLEVR's material (free for other uses)
};

/// Parameters of the soft spatial predicates (see the file comment).
struct spatial_predicate_options {
  double scale = 1.0;               ///< length that counts as 1 (e.g. 75 for 75×75-pixel scenes)
  double sigmoid_sharpness = 20.0;  ///< κ of left_of, right_of, above, below, near, far; +inf = crisp
  double softmax_sharpness = 20.0;  ///< λ of closest_to, furthest_from; +inf = crisp
  double near_radius = 0.25;        ///< r of near/far, in units of `scale`
};

/// The built-in predicates, in the order of their ids in every rule set.
enum class builtin_predicate : std::uint8_t {
  object,
  same_object,
  left_of,
  right_of,
  above,
  below,
  near,
  far,
  closest_to,
  furthest_from,
  same_shape,
  same_colour,
  same_size,
  same_material,
};
inline constexpr int builtin_predicate_count = 14;

struct builtin_predicate_info {
  std::string_view name;
  int arity;
  std::string_view definition;  ///< one line, for error messages and docs
};

inline constexpr std::array<builtin_predicate_info, builtin_predicate_count> builtin_predicates{{
    {"object", 1, "1 for every object of the scene"},
    {"same_object", 2, "[I = J]"},
    {"left_of", 2, "sigmoid(k (x_J - x_I) / scale), 0 if I = J"},
    {"right_of", 2, "sigmoid(k (x_I - x_J) / scale), 0 if I = J"},
    {"above", 2, "sigmoid(k (y_J - y_I) / scale), y grows downwards, 0 if I = J"},
    {"below", 2, "sigmoid(k (y_I - y_J) / scale), 0 if I = J"},
    {"near", 2, "sigmoid(k (near_radius - d_IJ / scale)), 0 if I = J"},
    {"far", 2, "sigmoid(k (d_IJ / scale - near_radius)), 0 if I = J"},
    {"closest_to", 2, "softmax over J != I of -l d_IJ / scale: J is I's nearest neighbour"},
    {"furthest_from", 2, "softmax over J != I of +l d_IJ / scale: J is I's furthest object"},
    {"same_shape", 2, "[shape_I = shape_J]"},
    {"same_colour", 2, "[colour_I = colour_J]"},
    {"same_size", 2, "[size_I = size_J]"},
    {"same_material", 2, "[material_I = material_J]"},
}};

/// Logistic function, stable for large |t| (σ(±inf) = 1 or 0).
inline double logistic(double t) noexcept {
  if (t >= 0) return 1.0 / (1.0 + std::exp(-t));
  const double e = std::exp(t);
  return e / (1.0 + e);
}

/// σ(sharpness · t); for sharpness = +inf the crisp limit [t > 0] with ½ at t = 0.
inline double soft_step(double t, double sharpness) noexcept {
  if (sharpness == std::numeric_limits<double>::infinity()) return t > 0 ? 1.0 : (t < 0 ? 0.0 : 0.5);
  return logistic(sharpness * t);
}

/// Validates a scene: at least one object, finite coordinates, non-negative stride.
inline status check_scene(const char* fn, const char* name, host_view<const scene_object, 1> scene) {
  if (scene.extent(0) <= 0)
    return fail(errc::invalid_argument, fn, std::string("'") + name + "' is an empty scene: a scene needs at least one object");
  if (scene.empty()) return fail(errc::invalid_argument, fn, std::string("'") + name + "' is a null pointer");
  DISTILL_TRY(check_strides(fn, name, scene));
  for (index_t i = 0; i < scene.extent(0); ++i) {
    const scene_object& o = scene(i);
    if (!std::isfinite(o.x) || !std::isfinite(o.y)) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "object %lld of '%s' has a non-finite coordinate (x = %g, y = %g)",
                    static_cast<long long>(i), name, static_cast<double>(o.x), static_cast<double>(o.y));
      return fail(errc::non_finite, fn, buf);
    }
  }
  return {};
}

/// Validates the spatial options: scale finite > 0, sharpnesses > 0 (finite or +inf),
/// near_radius finite >= 0.
inline status check_spatial_options(const char* fn, const spatial_predicate_options& opt) {
  DISTILL_TRY(check_positive(fn, "spatial.scale", opt.scale));
  const auto sharp = [&](const char* name, double v) -> status {
    if (!(v > 0.0) || std::isnan(v))
      return fail(errc::invalid_argument, fn,
                  std::string("'") + name + "' must be > 0 (or +infinity for the crisp relation), got " + check_detail::num(v));
    return {};
  };
  DISTILL_TRY(sharp("spatial.sigmoid_sharpness", opt.sigmoid_sharpness));
  DISTILL_TRY(sharp("spatial.softmax_sharpness", opt.softmax_sharpness));
  if (!(opt.near_radius >= 0.0) || !std::isfinite(opt.near_radius))
    return fail(errc::invalid_argument, fn, "'spatial.near_radius' must be finite and >= 0, got " + check_detail::num(opt.near_radius));
  return {};
}

namespace logic_detail {

inline double distance(const scene_object& a, const scene_object& b) noexcept {
  const double dx = static_cast<double>(a.x) - static_cast<double>(b.x);
  const double dy = static_cast<double>(a.y) - static_cast<double>(b.y);
  return std::sqrt(dx * dx + dy * dy);
}

// Row i of closest_to (sign = -1) or furthest_from (sign = +1): softmax over j != i of
// sign · λ · d_ij / scale, computed as exp(-λ |d_ij - d_best| / scale) so nothing overflows and
// an infinite λ never meets a zero difference.
inline void soft_extreme_row(host_view<const scene_object, 1> scene, index_t i, double sign, double sharpness, double scale,
                             double* row) noexcept {
  const index_t n = scene.extent(0);
  double best = sign < 0 ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  for (index_t j = 0; j < n; ++j) {
    if (j == i) continue;
    const double d = distance(scene(i), scene(j));
    row[j] = d;
    best = sign < 0 ? (d < best ? d : best) : (d > best ? d : best);
  }
  const bool crisp = sharpness == std::numeric_limits<double>::infinity();
  double total = 0.0;
  for (index_t j = 0; j < n; ++j) {
    if (j == i) {
      row[j] = 0.0;
      continue;
    }
    const double gap = std::fabs(row[j] - best) / scale;  // >= 0, 0 for the best object(s)
    row[j] = crisp ? (gap == 0.0 ? 1.0 : 0.0) : std::exp(-sharpness * gap);
    total += row[j];
  }
  if (total > 0.0)
    for (index_t j = 0; j < n; ++j) row[j] /= total;
}

}  // namespace logic_detail

/// Truth values of a built-in predicate for every grounding: N values (arity 1) or N·N values
/// (arity 2, row-major: out[i·N + j] is p(i, j)). The scene and options must be valid.
inline void builtin_truth_values(builtin_predicate p, host_view<const scene_object, 1> scene,
                                 const spatial_predicate_options& opt, double* out) noexcept {
  const index_t n = scene.extent(0);
  const double inv_scale = 1.0 / opt.scale;
  const double k = opt.sigmoid_sharpness;
  if (p == builtin_predicate::object) {
    for (index_t i = 0; i < n; ++i) out[i] = 1.0;
    return;
  }
  if (p == builtin_predicate::closest_to || p == builtin_predicate::furthest_from) {
    const double sign = p == builtin_predicate::closest_to ? -1.0 : 1.0;
    for (index_t i = 0; i < n; ++i)
      logic_detail::soft_extreme_row(scene, i, sign, opt.softmax_sharpness, opt.scale, out + i * n);
    return;
  }
  for (index_t i = 0; i < n; ++i) {
    const scene_object& a = scene(i);
    for (index_t j = 0; j < n; ++j) {
      const scene_object& b = scene(j);
      const bool same = i == j;
      double v = 0.0;
      switch (p) {
        case builtin_predicate::same_object: v = same ? 1.0 : 0.0; break;
        case builtin_predicate::left_of:
          v = same ? 0.0 : soft_step((static_cast<double>(b.x) - static_cast<double>(a.x)) * inv_scale, k);
          break;
        case builtin_predicate::right_of:
          v = same ? 0.0 : soft_step((static_cast<double>(a.x) - static_cast<double>(b.x)) * inv_scale, k);
          break;
        case builtin_predicate::above:
          v = same ? 0.0 : soft_step((static_cast<double>(b.y) - static_cast<double>(a.y)) * inv_scale, k);
          break;
        case builtin_predicate::below:
          v = same ? 0.0 : soft_step((static_cast<double>(a.y) - static_cast<double>(b.y)) * inv_scale, k);
          break;
        case builtin_predicate::near:
          v = same ? 0.0 : soft_step(opt.near_radius - logic_detail::distance(a, b) * inv_scale, k);
          break;
        case builtin_predicate::far:
          v = same ? 0.0 : soft_step(logic_detail::distance(a, b) * inv_scale - opt.near_radius, k);
          break;
        case builtin_predicate::same_shape: v = a.shape == b.shape ? 1.0 : 0.0; break;
        case builtin_predicate::same_colour: v = a.colour == b.colour ? 1.0 : 0.0; break;
        case builtin_predicate::same_size: v = a.size == b.size ? 1.0 : 0.0; break;
        case builtin_predicate::same_material: v = a.material == b.material ? 1.0 : 0.0; break;
        default: break;  // object, closest_to, furthest_from handled above
      }
      out[i * n + j] = v;
    }
  }
}

}  // namespace distill
