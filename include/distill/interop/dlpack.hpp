// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Zero-copy bridges between DLPack (https://dmlc.github.io/dlpack/) and distill views, so any
//! engine that exports DLPack (PyTorch, JAX, CuPy, TVM, MXNet, NumPy >= 1.22) can hand its
//! tensors to a primitive, and a view can be handed back.
//!
//!   DLManagedTensor* m = ...;                                // e.g. from torch.utils.dlpack.to_dlpack
//!   distill::host_view<const float, 2> s;
//!   DISTILL_TRY(distill::from_dlpack(&m->dl_tensor, s, "student"));   // checks, no copy
//!   ... call a primitive with s ...
//!   m->deleter(m);                                           // the producer's memory: release it when done
//!
//!   DLManagedTensor* out = distill::to_dlpack(grad_view);    // back: a consumer calls out->deleter(out)
//!
//! from_dlpack checks what a view cannot express and says which argument is wrong:
//!   rank        ndim == Rank                                           (shape_mismatch)
//!   dtype       code/bits/lanes of T: float32/64, float16, bfloat16, int32/64, uint8 (unsupported_dtype)
//!   memory      host_space: kDLCPU, kDLCUDAHost (pinned);  cuda_space: kDLCUDA, kDLCUDAManaged
//!                                                                      (wrong_memory_space)
//!   strides     NULL means compact row-major (DLPack's rule); negative strides and negative
//!               extents are refused (unsupported_layout / shape_mismatch)
//!   alignment   data + byte_offset aligned to the element type          (misaligned)
//! A null DLTensor pointer gives an absent view (`empty()`), the "not given" of every optional
//! argument. A tensor with no elements may have a null data pointer (DLPack allows it).
//! DLPack strides count elements, like distill's, so they are copied as they are.
//!
//! Not checked (a view does not carry it): the device *index* of CUDA memory. Run the primitive
//! on that device (cudaSetDevice / the engine's device guard) and on a stream that is ordered
//! after the producer's work. DLPack >= 1.0's versioned struct (`DLManagedTensorVersioned`) has
//! the same `dl_tensor` member: pass `&v->dl_tensor` (read-only flag and version are the
//! caller's to check).

#include <dlpack/dlpack.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "distill/core/checks.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

/// The DLPack data type of element type T (const ignored): float32/64, float16, bfloat16,
/// int32/64, uint8 and std::byte (as uint8).
template <class T>
constexpr DLDataType dlpack_dtype() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return {kDLFloat, 32, 1};
  else if constexpr (std::is_same_v<U, double>) return {kDLFloat, 64, 1};
  else if constexpr (std::is_same_v<U, float16>) return {kDLFloat, 16, 1};
  else if constexpr (std::is_same_v<U, bfloat16>) return {kDLBfloat, 16, 1};
  else if constexpr (std::is_same_v<U, std::int32_t>) return {kDLInt, 32, 1};
  else if constexpr (std::is_same_v<U, std::int64_t>) return {kDLInt, 64, 1};
  else if constexpr (std::is_same_v<U, std::uint8_t> || std::is_same_v<U, std::byte>) return {kDLUInt, 8, 1};
  else static_assert(sizeof(U) == 0, "dlpack_dtype: no DLPack type for this element type");
}

/// True when `t` holds elements of type T (so `from_dlpack` into a view of T accepts its dtype).
template <class T>
constexpr bool dlpack_holds(DLDataType t) noexcept {
  const DLDataType e = dlpack_dtype<T>();
  return t.code == e.code && t.bits == e.bits && t.lanes == e.lanes;
}

/// "float32", "bfloat16", "int64", ... or "code 7, 24 bits, 2 lanes" for anything else.
inline std::string dlpack_dtype_name(DLDataType t) {
  const char* base = t.code == kDLFloat ? "float" : t.code == kDLBfloat ? "bfloat" : t.code == kDLInt ? "int"
                     : t.code == kDLUInt ? "uint" : nullptr;
  if (base && t.lanes == 1) return base + std::to_string(t.bits);
  return "code " + std::to_string(t.code) + ", " + std::to_string(t.bits) + " bits, " + std::to_string(t.lanes) + " lanes";
}

namespace dlpack_detail {
template <class Space>
constexpr bool device_matches(DLDeviceType d) noexcept {
  if constexpr (std::is_same_v<Space, host_space>) return d == kDLCPU || d == kDLCUDAHost;
  else return d == kDLCUDA || d == kDLCUDAManaged;
}
inline const char* device_name(DLDeviceType d) noexcept {
  switch (d) {
    case kDLCPU: return "CPU";
    case kDLCUDA: return "CUDA";
    case kDLCUDAHost: return "CUDA pinned host";
    case kDLCUDAManaged: return "CUDA managed";
    case kDLROCM: return "ROCm";
    case kDLMetal: return "Metal";
    case kDLVulkan: return "Vulkan";
    case kDLOpenCL: return "OpenCL";
    default: return "another device";
  }
}
}  // namespace dlpack_detail

/// View `tensor` as `view` (element type T, rank Rank, memory Space), without a copy. A null
/// `tensor` gives an absent view. Errors name `fn` and `name` (the argument).
template <class T, int Rank, class Space>
[[nodiscard]] status from_dlpack(const DLTensor* tensor, tensor_view<T, Rank, Space>& view, const char* name,
                                 const char* fn = "from_dlpack") {
  using U = std::remove_const_t<T>;
  view = {};
  if (tensor == nullptr) return {};
  const DLTensor& t = *tensor;
  const std::string arg = std::string("'") + name + "' ";
  if (!dlpack_holds<U>(t.dtype))
    return fail(errc::unsupported_dtype, fn,
                arg + "holds " + dlpack_dtype_name(t.dtype) + " but " + dlpack_dtype_name(dlpack_dtype<U>()) + " is needed here");
  if (t.ndim != Rank)
    return fail(errc::shape_mismatch, fn, arg + "has " + std::to_string(t.ndim) + " dimensions, expected " + std::to_string(Rank));
  if (!dlpack_detail::device_matches<Space>(t.device.device_type))
    return fail(errc::wrong_memory_space, fn,
                arg + "lives in " + dlpack_detail::device_name(t.device.device_type) + " memory but this call needs " +
                    Space::name + " memory");
  index_t extents[Rank], strides[Rank];
  index_t compact = 1;
  for (int d = Rank - 1; d >= 0; --d) {
    extents[d] = t.shape[d];
    if (extents[d] < 0) return fail(errc::shape_mismatch, fn, arg + "has a negative extent in dimension " + std::to_string(d));
    strides[d] = t.strides ? t.strides[d] : compact;
    if (strides[d] < 0)
      return fail(errc::unsupported_layout, fn, arg + "has a negative stride in dimension " + std::to_string(d) +
                                                    " (distill reads memory forwards: make it contiguous first)");
    compact *= extents[d];
  }
  auto* base = static_cast<unsigned char*>(t.data) + t.byte_offset;
  if (t.data != nullptr && reinterpret_cast<std::uintptr_t>(base) % alignof(U) != 0)
    return fail(errc::misaligned, fn, arg + "is not aligned to its " + std::to_string(sizeof(U)) + "-byte elements");
  if (t.data == nullptr && compact != 0)
    return fail(errc::invalid_argument, fn, arg + "has elements but a null data pointer");
  view = tensor_view<T, Rank, Space>(reinterpret_cast<T*>(base), extents, strides);
  return {};
}

namespace dlpack_detail {
/// What a DLManagedTensor made by to_dlpack owns: its shape and strides, and the caller's
/// release callback (which keeps the memory alive until the consumer is done).
template <int Rank, class Release>
struct holder {
  DLManagedTensor managed;
  std::int64_t shape[Rank];
  std::int64_t strides[Rank];
  Release release;
};
}  // namespace dlpack_detail

/// A DLManagedTensor over the memory of `view` (no copy), for an engine that takes DLPack
/// (torch.utils.dlpack.from_dlpack, jax.dlpack.from_dlpack, cupy.from_dlpack). The view's
/// memory must stay valid until the consumer calls `deleter`, which frees the small struct
/// this allocates and then calls `release()` (e.g. a lambda that owns the buffer; the default
/// does nothing). `device_id`: the CUDA device of cuda_space memory (0 on the host). Views of
/// const T are exported too; DLPack has no read-only flag before 1.0, so the consumer must not
/// write them.
template <class T, int Rank, class Space, class Release = void (*)()>
[[nodiscard]] DLManagedTensor* to_dlpack(const tensor_view<T, Rank, Space>& view, int device_id = 0,
                                         Release release = [] {}) {
  using H = dlpack_detail::holder<Rank, Release>;
  auto* h = new H{{}, {}, {}, std::move(release)};
  for (int d = 0; d < Rank; ++d) {
    h->shape[d] = view.extent(d);
    h->strides[d] = view.stride(d);
  }
  DLTensor& t = h->managed.dl_tensor;
  t.data = const_cast<std::remove_const_t<T>*>(view.data());
  t.device = {std::is_same_v<Space, host_space> ? kDLCPU : kDLCUDA, std::is_same_v<Space, host_space> ? 0 : device_id};
  t.ndim = Rank;
  t.dtype = dlpack_dtype<T>();
  t.shape = h->shape;
  t.strides = h->strides;
  t.byte_offset = 0;
  h->managed.manager_ctx = h;
  h->managed.deleter = [](DLManagedTensor* self) {
    H* owner = static_cast<H*>(self->manager_ctx);
    Release r = std::move(owner->release);
    delete owner;
    r();
  };
  return &h->managed;
}

}  // namespace distill
