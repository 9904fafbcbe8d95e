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

/// The workspace size `f(type_tag<T>{})` for the T of `types` that `t` holds; 0 when it holds none
/// (`run` then reports the dtype).
template <class Types, class F>
std::size_t workspace_size_by_type(Types types, const char* fn, const char* name, tensor t, F&& f) {
  std::size_t bytes = 0;
  (void)dispatch(types, fn, name, t, [&]<class T>(type_tag<T> tag) -> distill::status {
    bytes = f(tag);
    return {};
  });
  return bytes;
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

/// The tensors every loss call has (student, teacher, loss, grad_student, workspace) as views of
/// element type T and rank Rank; the loss accumulates in accum_t<T>.
template <class T, int Rank, class Space>
struct loss_views {
  using accum = distill::accum_t<T>;
  distill::tensor_view<const T, Rank, Space> student, teacher;
  distill::tensor_view<T, Rank, Space> grad;
  distill::tensor_view<accum, 1, Space> loss;
  distill::tensor_view<std::byte, 1, Space> ws;
};

/// The accumulation type of a loss_views (`V` may be a reference).
template <class V>
using accum_of = typename std::remove_cvref_t<V>::accum;

/// Dispatches a loss call `c` on its student's element type among `types`, views its common
/// tensors in `ctx`'s memory space (loss_views, errors naming `fn`) and returns `body(views)`
/// (a generic lambda: it is instantiated for each element type).
template <int Rank, class Ctx, class Types, class Call, class Body>
distill::status with_loss_views(const Ctx&, Types types, const char* fn, const Call& c, tensor workspace, Body&& body) {
  return dispatch(types, fn, "student", c.student, [&]<class T>(type_tag<T>) -> distill::status {
    loss_views<T, Rank, typename Ctx::memory_space> v;
    DISTILL_TRY(view(fn, "student", c.student, v.student));
    DISTILL_TRY(view(fn, "teacher", c.teacher, v.teacher));
    DISTILL_TRY(view(fn, "grad_student", c.grad_student, v.grad));
    DISTILL_TRY(view(fn, "loss", c.loss, v.loss));
    DISTILL_TRY(workspace_view(fn, workspace, v.ws));
    return body(v);
  });
}

}  // namespace distill_torch

/// `return`s pass `which` (distill_torch::pass) of the loss primitive distill::name: its _forward
/// writes `views.loss`, its _backward `views.grad`, its _forward_backward both, between the
/// arguments `before` and `after` (parenthesised lists). The only way to name the three entry
/// points once.
#define DISTILL_TORCH_RETURN_PASS(which, name, views, before, after)                                      \
  switch (which) {                                                                                       \
    case ::distill_torch::pass::forward:                                                                 \
      return distill::name##_forward(DISTILL_TORCH_ARGS before, (views).loss, DISTILL_TORCH_ARGS after); \
    case ::distill_torch::pass::backward:                                                                \
      return distill::name##_backward(DISTILL_TORCH_ARGS before, (views).grad, DISTILL_TORCH_ARGS after); \
    default:                                                                                             \
      return distill::name##_forward_backward(DISTILL_TORCH_ARGS before, (views).loss, (views).grad,     \
                                              DISTILL_TORCH_ARGS after);                                 \
  }
#define DISTILL_TORCH_ARGS(...) __VA_ARGS__

/// Explicit instantiations of `workspace_size` and `run` for one call type on one context.
#define DISTILL_TORCH_INSTANTIATE(Ctx, Call)                                                            \
  template std::size_t distill_torch::workspace_size<Ctx>(const Ctx&, const distill_torch::Call&);      \
  template distill::status distill_torch::run<Ctx>(const Ctx&, const distill_torch::Call&, distill_torch::tensor);
