// SPDX-License-Identifier: MIT
#pragma once
// Helpers of the call layer (calls_*.hpp): element-type dispatch on a DLPack dtype, views with
// the calling primitive's name in their errors, labels of either width.

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "calls.hpp"
#include "distill/core/checks.hpp"
#include "distill/core/labels.hpp"
#include "distill/interop/dlpack.hpp"

namespace distill_torch {

template <class... Ts>
struct type_list {};
template <class T>
struct type_tag {
  using type = T;
};

template <class Ctx>
inline constexpr bool is_cuda_v = std::is_same_v<Ctx, distill::cuda>;

/// Element types of the primitives with float, double and 16-bit inputs on the CPU and float and
/// 16-bit inputs on CUDA (soft targets, attention, multi-label, token NCE on CUDA).
template <class Ctx>
using wide_types = std::conditional_t<is_cuda_v<Ctx>, type_list<float, distill::float16, distill::bfloat16>,
                                      type_list<float, double, distill::float16, distill::bfloat16>>;
/// float and double on the CPU, float and 16-bit on CUDA (token NCE and its queue, RoI Align).
template <class Ctx>
using narrow_types = std::conditional_t<is_cuda_v<Ctx>, type_list<float, distill::float16, distill::bfloat16>,
                                        type_list<float, double>>;
/// float and double on the CPU, also 16-bit on CUDA (feature statistics, AdaIN, embeddings).
template <class Ctx>
using feature_types = std::conditional_t<is_cuda_v<Ctx>, type_list<float, double, distill::float16, distill::bfloat16>,
                                         type_list<float, double>>;
/// float and double on the CPU, float on CUDA (relational pairing).
template <class Ctx>
using pairing_types = std::conditional_t<is_cuda_v<Ctx>, type_list<float>, type_list<float, double>>;

/// Calls `f(type_tag<T>{})` for the T of `types` that `t` holds; otherwise unsupported_dtype
/// naming `fn`, the argument and the types this call takes.
template <class... Ts, class F>
distill::status dispatch(type_list<Ts...>, const char* fn, const char* name, tensor t, F&& f) {
  if (t == nullptr) return distill::fail(distill::errc::invalid_argument, fn, std::string("'") + name + "' is required");
  distill::status st;
  const bool found = ((distill::dlpack_holds<Ts>(t->dtype) ? ((void)(st = f(type_tag<Ts>{})), true) : false) || ...);
  if (found) return st;
  std::string accepted;
  ((accepted += (accepted.empty() ? "" : ", ") + distill::dlpack_dtype_name(distill::dlpack_dtype<Ts>())), ...);
  return distill::fail(distill::errc::unsupported_dtype, fn,
                       std::string("'") + name + "' holds " + distill::dlpack_dtype_name(t->dtype) +
                           "; this call takes " + accepted);
}

/// A view of `t` (absent for nullptr) whose errors name `fn`.
template <class T, int Rank, class Space>
distill::status view(const char* fn, const char* name, tensor t, distill::tensor_view<T, Rank, Space>& v) {
  return distill::from_dlpack(t, v, name, fn);
}

/// Labels of int32 or int64 (absent for nullptr).
template <class Space>
distill::status labels_view(const char* fn, const char* name, tensor t, distill::label_view<Space>& out) {
  out = {};
  if (t == nullptr) return {};
  if (distill::dlpack_holds<std::int32_t>(t->dtype)) {
    distill::tensor_view<const std::int32_t, 1, Space> v;
    DISTILL_TRY(view(fn, name, t, v));
    out = v;
    return {};
  }
  distill::tensor_view<const std::int64_t, 1, Space> v;
  DISTILL_TRY(view(fn, name, t, v));
  out = v;
  return {};
}

/// The workspace tensor as a byte view (absent for nullptr).
template <class Space>
distill::status workspace_view(const char* fn, tensor t, distill::tensor_view<std::byte, 1, Space>& v) {
  return view(fn, "workspace", t, v);
}

/// Extent `d` of `t`, 0 when absent or of lower rank (sizing runs before validation).
inline distill::index_t extent(tensor t, int d) noexcept { return t && t->ndim > d ? t->shape[d] : 0; }

}  // namespace distill_torch

/// Explicit instantiations of `workspace_size` and `run` for one call type on one context.
#define DISTILL_TORCH_INSTANTIATE(Ctx, Call)                                                            \
  template std::size_t distill_torch::workspace_size<Ctx>(const Ctx&, const distill_torch::Call&);      \
  template distill::status distill_torch::run<Ctx>(const Ctx&, const distill_torch::Call&, distill_torch::tensor);
