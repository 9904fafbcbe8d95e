// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! One way to lay out typed regions in a caller's workspace, so that a primitive's sizing
//! function and its entry point run the same code and cannot disagree:
//!
//!   struct foo_scratch {                                  // the regions, in order
//!     float* row_loss; int* count;
//!     foo_scratch(workspace_carver& w, index_t rows) : row_loss(w.take<float>(rows)), count(w.take<int>(1)) {}
//!   };
//!   std::size_t foo_workspace_size(const cuda&, index_t rows) { return workspace_carver::size_of<foo_scratch>(rows); }
//!   ...
//!   workspace_carver w(workspace.data());                 // in the entry point, after check_workspace
//!   const foo_scratch s(w, rows);
//!
//! A carver without a base only measures (`take` returns null pointers). Every region starts on
//! a `region_alignment` boundary (any vector type, whole cache lines per region); the size
//! includes the slack needed to align a base that is only `workspace_alignment` (16) aligned,
//! which is what check_workspace guarantees. Empty regions take no space.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "distill/core/checks.hpp"

namespace distill {

class workspace_carver {
 public:
  static constexpr std::size_t region_alignment = 256;

  /// Measuring carver: sizes only.
  constexpr workspace_carver() noexcept = default;
  /// Carving carver over a workspace of at least the measured size (aligned to 16 bytes).
  explicit workspace_carver(std::byte* base) noexcept
      : base_(base == nullptr ? 0 : round_up(reinterpret_cast<std::uintptr_t>(base))) {}

  /// A region of `count` elements of T (nullptr when measuring or when count <= 0).
  template <class T, class I>
  constexpr T* take(I count) noexcept {
    static_assert(std::is_integral_v<I>, "workspace_carver::take: the count is an integer");
    static_assert(alignof(T) <= region_alignment, "workspace_carver: over-aligned type");
    if (!(count > I(0))) return nullptr;
    const std::size_t at = offset_;
    offset_ = round_up(offset_ + static_cast<std::size_t>(count) * sizeof(T));
    if (base_ == 0) return nullptr;
    return reinterpret_cast<T*>(base_ + at);
  }

  /// Bytes a workspace needs for everything taken so far (0 when nothing was).
  constexpr std::size_t bytes() const noexcept {
    return offset_ == 0 ? 0 : offset_ + region_alignment - workspace_alignment;
  }

  /// The size of a layout type `L` constructed as L(carver, args...).
  template <class L, class... A>
  static constexpr std::size_t size_of(const A&... args) noexcept {
    workspace_carver w;
    const L layout(w, args...);
    (void)layout;
    return w.bytes();
  }

 private:
  static constexpr std::uintptr_t round_up(std::uintptr_t x) noexcept {
    return (x + region_alignment - 1) / region_alignment * region_alignment;
  }
  std::uintptr_t base_ = 0;
  std::size_t offset_ = 0;
};

}  // namespace distill
