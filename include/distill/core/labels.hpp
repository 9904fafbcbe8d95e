// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `label_view<Space>`: a rank-1 view of class labels stored as int32 or int64, so an engine's
//! labels are used as they are (PyTorch keeps int64, many engines int32). Every entry point
//! that takes labels takes a `label_view`; a `tensor_view` of `int32_t` or `int64_t` (const or
//! not) converts to it implicitly:
//!
//!   std::vector<std::int32_t> y(N);
//!   extras.labels = distill::make_view(y.data(), N);        // int32 labels, no copy
//!
//! Reading element i gives an int64 either way; the width is a run-time flag, so kernels and
//! loops are not instantiated twice.

#include <cstdint>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

template <class L>
inline constexpr bool is_label_type_v =
    std::is_same_v<std::remove_const_t<L>, std::int32_t> || std::is_same_v<std::remove_const_t<L>, std::int64_t>;

template <class Space = host_space>
class label_view {
 public:
  static constexpr int rank = 1;
  using memory_space = Space;

  /// Absent: no labels.
  DISTILL_HOST_DEVICE constexpr label_view() noexcept {}

  template <class L>
    requires is_label_type_v<L>
  DISTILL_HOST_DEVICE label_view(const tensor_view<L, 1, Space>& v) noexcept  // NOLINT: implicit on purpose
      : data_(v.data()), extent_(v.extent(0)), stride_(v.stride(0)), wide_(sizeof(L) == 8) {}

  /// Label i as int64 (whatever the storage width).
  DISTILL_HOST_DEVICE std::int64_t operator()(index_t i) const noexcept {
    return wide_ ? static_cast<const std::int64_t*>(data_)[i * stride_]
                 : static_cast<std::int64_t>(static_cast<const std::int32_t*>(data_)[i * stride_]);
  }
  DISTILL_HOST_DEVICE const void* data() const noexcept { return data_; }
  DISTILL_HOST_DEVICE bool empty() const noexcept { return data_ == nullptr; }
  DISTILL_HOST_DEVICE index_t extent(int) const noexcept { return extent_; }
  DISTILL_HOST_DEVICE index_t stride(int) const noexcept { return stride_; }
  DISTILL_HOST_DEVICE index_t size() const noexcept { return extent_; }
  /// True for int64 storage, false for int32.
  DISTILL_HOST_DEVICE bool wide() const noexcept { return wide_; }
  /// Bytes per label (4 or 8): also the alignment the data pointer needs.
  DISTILL_HOST_DEVICE int element_size() const noexcept { return wide_ ? 8 : 4; }

 private:
  const void* data_ = nullptr;
  index_t extent_ = 0;
  index_t stride_ = 0;
  bool wide_ = true;
};

/// Labels that may be absent: when present, `rows` of them, non-negative stride, aligned to
/// their width.
template <class Space>
status check_optional_labels(const char* fn, const char* name, const label_view<Space>& y, index_t rows) {
  if (y.empty()) return {};
  if (y.stride(0) < 0)
    return fail(errc::unsupported_layout, fn, std::string("'") + name + "' has a negative stride");
  if (reinterpret_cast<std::uintptr_t>(y.data()) % static_cast<std::uintptr_t>(y.element_size()) != 0)
    return fail(errc::misaligned, fn, std::string("'") + name + "' is not aligned to its " +
                                          std::to_string(y.element_size()) + "-byte labels");
  if (y.extent(0) != rows)
    return fail(errc::shape_mismatch, fn, std::string("'") + name + "' has " + std::to_string(y.extent(0)) +
                                              " labels, expected " + std::to_string(rows) + " (one per row)");
  return {};
}

/// Host labels must lie in [0, classes) unless they equal `ignore_index`.
inline status check_label_range(const char* fn, const char* name, const label_view<host_space>& y, index_t classes,
                                std::int64_t ignore_index) {
  for (index_t r = 0; r < y.extent(0); ++r) {
    const std::int64_t v = y(r);
    if (v == ignore_index) continue;
    if (v < 0 || v >= classes)
      return fail(errc::invalid_argument, fn,
                  std::string("'") + name + "': label " + std::to_string(v) + " of row " + std::to_string(r) +
                      " is outside [0, " + std::to_string(classes) + ") and is not ignore_index (" +
                      std::to_string(ignore_index) + ")");
  }
  return {};
}

}  // namespace distill
