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
#include <string>
#include <type_traits>

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

}  // namespace distill
