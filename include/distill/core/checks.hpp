// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Argument validation shared by every entry point. Each helper returns `status` (ok or an
//! error whose message starts with the entry point and names the argument), so validation code
//! reads as a list:
//!
//!   DISTILL_TRY(check_rank2(fn, "student", student));
//!   DISTILL_TRY(check_same_shape(fn, "teacher", teacher, "student", student));
//!   DISTILL_TRY(check_positive(fn, "temperature", opt.temperature));

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

namespace check_detail {
inline std::string num(index_t v) { return std::to_string(v); }
inline std::string num(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}
template <class V>
std::string shape_of(const V& v) {
  std::string s = "[";
  for (int d = 0; d < V::rank; ++d) s += (d ? ", " : "") + std::to_string(v.extent(d));
  return s + "]";
}
}  // namespace check_detail

/// Build an error "<fn>: <what>".
inline status fail(errc code, const char* fn, const std::string& what) {
  return status(code, std::string(fn) + ": " + what);
}

/// `v` must be present (non-null data) unless it has zero elements.
template <class V>
status check_present(const char* fn, const char* name, const V& v) {
  if (v.empty() && v.size() != 0)
    return fail(errc::invalid_argument, fn, std::string("'") + name + "' is a null pointer");
  if (v.empty()) return fail(errc::invalid_argument, fn, std::string("'") + name + "' is required but absent");
  return {};
}

/// `v` must have exactly the given extents, e.g. check_shape(fn, "grad", g, {N, C}).
template <class V>
status check_shape(const char* fn, const char* name, const V& v, const index_t (&extents)[V::rank]) {
  for (int d = 0; d < V::rank; ++d) {
    if (v.extent(d) != extents[d]) {
      std::string want = "[";
      for (int k = 0; k < V::rank; ++k) want += (k ? ", " : "") + std::to_string(extents[k]);
      want += "]";
      return fail(errc::shape_mismatch, fn,
                  std::string("'") + name + "' has shape " + check_detail::shape_of(v) + ", expected " + want);
    }
  }
  return {};
}

/// Two views must agree on every extent.
template <class A, class B>
status check_same_shape(const char* fn, const char* name_a, const A& a, const char* name_b, const B& b) {
  static_assert(A::rank == B::rank, "check_same_shape: ranks differ");
  for (int d = 0; d < A::rank; ++d)
    if (a.extent(d) != b.extent(d))
      return fail(errc::shape_mismatch, fn,
                  std::string("'") + name_a + "' has shape " + check_detail::shape_of(a) + " but '" + name_b +
                      "' has shape " + check_detail::shape_of(b));
  return {};
}

/// Extent `dim` of `v` must equal `expected` (described as `what`, e.g. "rows of 'student'").
template <class V>
status check_extent(const char* fn, const char* name, const V& v, int dim, index_t expected, const char* what) {
  if (v.extent(dim) != expected)
    return fail(errc::shape_mismatch, fn,
                std::string("'") + name + "' has extent " + std::to_string(v.extent(dim)) + " along axis " +
                    std::to_string(dim) + ", expected " + std::to_string(expected) + " (" + what + ")");
  return {};
}

/// Every extent must be > 0 (no empty batches, no zero-width rows).
template <class V>
status check_nonempty(const char* fn, const char* name, const V& v) {
  for (int d = 0; d < V::rank; ++d)
    if (v.extent(d) <= 0)
      return fail(errc::shape_mismatch, fn,
                  std::string("'") + name + "' has shape " + check_detail::shape_of(v) + ": every extent must be > 0");
  return {};
}

/// Unit stride along the last axis (required by the CUDA fast paths).
template <class V>
status check_inner_contiguous(const char* fn, const char* name, const V& v) {
  if (!v.inner_contiguous())
    return fail(errc::unsupported_layout, fn,
                std::string("'") + name + "' must have unit stride along its last axis (stride is " +
                    std::to_string(v.stride(V::rank - 1)) + ")");
  return {};
}

/// Strides must be non-negative (negative strides are not supported anywhere).
template <class V>
status check_strides(const char* fn, const char* name, const V& v) {
  for (int d = 0; d < V::rank; ++d)
    if (v.stride(d) < 0)
      return fail(errc::unsupported_layout, fn,
                  std::string("'") + name + "' has a negative stride along axis " + std::to_string(d));
  return {};
}

/// Pointer aligned to its element type.
template <class V>
status check_aligned(const char* fn, const char* name, const V& v) {
  using T = typename V::value_type;
  if (reinterpret_cast<std::uintptr_t>(v.data()) % alignof(T) != 0)
    return fail(errc::misaligned, fn, std::string("'") + name + "' is not aligned to " + std::to_string(alignof(T)) + " bytes");
  return {};
}

/// A scalar must be finite and > 0.
template <class S>
status check_positive(const char* fn, const char* name, S value) {
  if (!(value > S(0)) || !std::isfinite(static_cast<double>(value)))
    return fail(errc::invalid_argument, fn,
                std::string("'") + name + "' must be finite and > 0, got " + check_detail::num(static_cast<double>(value)));
  return {};
}

/// An optional view: absent (default-constructed) is fine; a null pointer with elements is not;
/// a present view must have non-negative strides.
template <class V>
status check_optional(const char* fn, const char* name, const V& v) {
  if (v.empty()) {
    if (v.size() != 0)
      return fail(errc::invalid_argument, fn, std::string("'") + name + "' has a null pointer but nonzero extents");
    return {};
  }
  return check_strides(fn, name, v);
}

/// An optional view that, when present, must have exactly `extents`.
template <class V>
status check_optional(const char* fn, const char* name, const V& v, const index_t (&extents)[V::rank]) {
  DISTILL_TRY(check_optional(fn, name, v));
  if (v.empty()) return {};
  return check_shape(fn, name, v, extents);
}

/// Alignment every workspace must have, on both backends (cudaMalloc and operator new give it).
inline constexpr std::size_t workspace_alignment = 16;

/// The caller's scratch: at least `need` bytes (the primitive's `_workspace_size`), contiguous,
/// `workspace_alignment`-aligned. Anything, absent included, is fine when `need` is 0.
template <class V>
status check_workspace(const char* fn, const V& workspace, std::size_t need, const char* sizing_function) {
  static_assert(std::is_same_v<typename V::value_type, std::byte> && V::rank == 1, "a workspace is a rank-1 view of std::byte");
  if (need == 0) return {};
  const std::size_t have = workspace.empty() ? 0 : static_cast<std::size_t>(workspace.extent(0));
  if (have < need)
    return fail(errc::invalid_argument, fn,
                "'workspace' has " + std::to_string(have) + " bytes, needs " + std::to_string(need) + " (" +
                    sizing_function + ")");
  if (workspace.extent(0) > 1 && workspace.stride(0) != 1)
    return fail(errc::unsupported_layout, fn, "'workspace' must be contiguous");
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % workspace_alignment != 0)
    return fail(errc::misaligned, fn, "'workspace' must be " + std::to_string(workspace_alignment) + "-byte aligned");
  return {};
}

/// lo <= value <= hi.
template <class S>
status check_in_range(const char* fn, const char* name, S value, S lo, S hi) {
  if (!(value >= lo && value <= hi))
    return fail(errc::invalid_argument, fn,
                std::string("'") + name + "' must be in [" + check_detail::num(static_cast<double>(lo)) + ", " +
                    check_detail::num(static_cast<double>(hi)) + "], got " + check_detail::num(static_cast<double>(value)));
  return {};
}

namespace check_detail {
/// Exponent bits of a floating storage type, as an unsigned integer of its width (an element is
/// NaN or +-inf exactly when all of them are set), and the bits of -inf.
template <class T>
struct exponent_bits;
template <>
struct exponent_bits<float> { using bits = std::uint32_t; static constexpr bits mask = 0x7f800000u, minus_inf = 0xff800000u; };
template <>
struct exponent_bits<double> {
  using bits = std::uint64_t;
  static constexpr bits mask = 0x7ff0000000000000ull, minus_inf = 0xfff0000000000000ull;
};
template <>
struct exponent_bits<float16> { using bits = std::uint16_t; static constexpr bits mask = 0x7c00u, minus_inf = 0xfc00u; };
template <>
struct exponent_bits<bfloat16> { using bits = std::uint16_t; static constexpr bits mask = 0x7f80u, minus_inf = 0xff80u; };
}  // namespace check_detail

/// What `check_finite` lets through besides finite numbers: nothing, or also -inf (logits, where
/// -inf is a class of probability zero, a legitimate mask).
enum class finite_rule { finite, finite_or_minus_inf };

/// The library's opt-in finiteness check (the `check_finite` field of every family's options;
/// docs/reliability.md, "NaN and infinity"): the first NaN or infinite element of `v` (-inf
/// allowed by `finite_or_minus_inf`) is errc::non_finite naming the argument and the element's
/// index. One branch-free pass of integer compares on the exponent bits (no floating-point
/// exception is raised; the index is looked for only after a row fails). Absent views pass. Host memory only: a device view passes unchecked, because reading it would need a host
/// synchronisation no primitive makes; on CUDA non-finite values propagate as with the check off.
template <class V>
status check_finite(const char* fn, const char* name, const V& v, finite_rule rule = finite_rule::finite) {
  if constexpr (!std::is_same_v<typename V::memory_space, host_space>) {
    return {};
  } else {
    using T = typename V::value_type;
    using E = check_detail::exponent_bits<T>;
    using bits = typename E::bits;
    constexpr int R = V::rank;
    if (v.empty() || v.size() == 0) return {};
    // 0 has no exponent bits set, so it never matches: with finite_rule::finite nothing is let through
    const bits let_through = rule == finite_rule::finite_or_minus_inf ? E::minus_inf : bits(0);
    auto is_bad = [&](const T* x) {
      bits b;
      std::memcpy(&b, x, sizeof b);
      return ((b & E::mask) == E::mask) & (b != let_through);
    };
    const index_t cols = v.extent(R - 1), col_stride = v.stride(R - 1), rows = v.size() / cols;
    for (index_t r = 0; r < rows; ++r) {
      index_t offset = 0, rest = r;  // row r's offset: r in mixed radix over the outer extents
      for (int d = R - 2; d >= 0; --d) {
        offset += (rest % v.extent(d)) * v.stride(d);
        rest /= v.extent(d);
      }
      const T* row = v.data() + offset;
      bool bad = false;
      for (index_t k = 0; k < cols; ++k) bad |= is_bad(row + k * col_stride);
      if (!bad) continue;
      index_t k = 0;
      while (!is_bad(row + k * col_stride)) ++k;
      std::string at;  // the element's index, outer axes first
      index_t outer = r;
      for (int d = R - 2; d >= 0; --d) {
        at = std::to_string(outer % v.extent(d)) + ", " + at;
        outer /= v.extent(d);
      }
      return fail(errc::non_finite, fn,
                  std::string("'") + name + "' has a " + (rule == finite_rule::finite ? "NaN or infinite" : "NaN or +inf") +
                      " value at (" + at + std::to_string(k) + ")");
    }
    return {};
  }
}

/// The usual call of an entry point: with `enabled` (its options' `check_finite`), check_finite
/// of each (name, view) pair in turn, e.g.
///   DISTILL_TRY(check_finite_if(opt.check_finite, fn, "student", student, "teacher", teacher));
inline status check_finite_if(bool, const char*) { return {}; }
template <class V, class... Rest>
status check_finite_if(bool enabled, const char* fn, const char* name, const V& v, const Rest&... rest) {
  if (!enabled) return {};
  DISTILL_TRY(check_finite(fn, name, v));
  return check_finite_if(enabled, fn, rest...);
}

}  // namespace distill
