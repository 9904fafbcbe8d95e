// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The entry points of the dense soft-target losses, written once for both backends. A
//! primitive header (kl_teacher_student.hpp, ...) defines its policy and then
//!
//!   DISTILL_DENSE_SOFT_TARGET_ENTRY_POINTS(kl_teacher_student, kl_teacher_student_policy, soft_target_options)
//!
//! which defines, for any context `ctx` whose memory space matches the views' (`cpu` with host
//! views, `cuda` or `nn::cuda_blas` with device views):
//!
//!   name_forward         (ctx, student, teacher, loss,               extras, workspace, options = {})
//!   name_backward        (ctx, student, teacher, grad_student,       extras, workspace, options = {})
//!   name_forward_backward(ctx, student, teacher, loss, grad_student, extras, workspace, options = {})
//!
//! `extras` is a soft_target_extras<accum_t<TS>, Space> (pass {} for none); `workspace` holds
//! soft_target_workspace_size(ctx, N) bytes (0 on the CPU, so {} there). The CPU engine is
//! losses/detail/soft_target_cpu.hpp, the CUDA one kernels/distill/cuda/soft_target_dense.cuh
//! (`dense_backend<cuda_space>`, compiled only by nvcc; a host-only translation unit that calls
//! with CUDA views fails with a static_assert naming the reason).

#include <cstddef>
#include <type_traits>

#include "distill/core/context.hpp"
#include "distill/losses/detail/soft_target_cpu.hpp"
#include "distill/losses/soft_target_common.hpp"

namespace distill::soft_target_detail {

/// The engine of the dense losses on memory `Space`: the CPU one here, the CUDA one
/// (`dense_backend<cuda_space>`) in kernels/distill/cuda/soft_target_dense.cuh.
template <class Space>
struct dense_backend;

template <>
struct dense_backend<host_space> {
  template <class Policy, class TS, class TT, class Acc, class G>
  static status run(const char* fn, const cpu& ctx, const host_view<TS, 2>& student, const host_view<TT, 2>& teacher,
                    const host_view<Acc, 1>& loss, bool loss_required, const host_view<G, 2>& grad, bool want_grad,
                    const soft_target_options& opt, const typename Policy::params& prm,
                    const soft_target_extras<Acc, host_space>& extras, const host_view<std::byte, 1>& /*workspace*/) {
    // soft_target_workspace_size(cpu, N) == 0: the workspace is not used
    return dense_cpu_entry<Policy>(fn, ctx, student, teacher, loss, loss_required, grad, want_grad, opt, prm, extras);
  }
};

}  // namespace distill::soft_target_detail

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/soft_target_dense.cuh"
#endif

// The three passes of one dense primitive (see the file comment). `Options` derives from
// soft_target_options; `Policy<Acc>::make_params(options)` gives the primitive's parameters.
#define DISTILL_DENSE_SOFT_TARGET_ENTRY_POINTS(name, Policy, Options)                                                    \
  /** Loss only: `loss` is (1), or (N) with reduction none. */                                                          \
  template <class Ctx, class TS, class TT, class Space>                                                                 \
    requires can_access_v<Ctx, Space>                                                                                   \
  [[nodiscard]] status name##_forward(const Ctx& ctx, tensor_view<TS, 2, Space> student, tensor_view<TT, 2, Space> teacher, \
                                      tensor_view<accum_t<TS>, 1, Space> loss,                                          \
                                      const soft_target_extras<accum_t<TS>, Space>& extras,                             \
                                      tensor_view<std::byte, 1, Space> workspace, const Options& opt = {}) {             \
    static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");             \
    using P = soft_target_detail::Policy<accum_t<TS>>;                                                                  \
    return soft_target_detail::dense_backend<Space>::template run<P>(#name "_forward", ctx, student, teacher, loss, true, \
                                              tensor_view<std::remove_const_t<TS>, 2, Space>{}, false, opt,             \
                                              P::make_params(opt), extras, workspace);                                 \
  }                                                                                                                     \
  /** Gradient with respect to the student logits (and dL/dT when extras.grad_temperature is given). */                 \
  template <class Ctx, class TS, class TT, class Space>                                                                 \
    requires can_access_v<Ctx, Space>                                                                                   \
  [[nodiscard]] status name##_backward(const Ctx& ctx, tensor_view<TS, 2, Space> student,                               \
                                       tensor_view<TT, 2, Space> teacher,                                               \
                                       tensor_view<std::remove_const_t<TS>, 2, Space> grad_student,                     \
                                       const soft_target_extras<accum_t<TS>, Space>& extras,                            \
                                       tensor_view<std::byte, 1, Space> workspace, const Options& opt = {}) {            \
    static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");             \
    using P = soft_target_detail::Policy<accum_t<TS>>;                                                                  \
    return soft_target_detail::dense_backend<Space>::template run<P>(#name "_backward", ctx, student, teacher,          \
                                              tensor_view<accum_t<TS>, 1, Space>{}, false, grad_student, true, opt,     \
                                              P::make_params(opt), extras, workspace);                                 \
  }                                                                                                                     \
  /** Loss and gradient in one pass over the inputs (`loss` may be absent). */                                          \
  template <class Ctx, class TS, class TT, class Space>                                                                 \
    requires can_access_v<Ctx, Space>                                                                                   \
  [[nodiscard]] status name##_forward_backward(                                                                         \
      const Ctx& ctx, tensor_view<TS, 2, Space> student, tensor_view<TT, 2, Space> teacher,                             \
      tensor_view<accum_t<TS>, 1, Space> loss, tensor_view<std::remove_const_t<TS>, 2, Space> grad_student,             \
      const soft_target_extras<accum_t<TS>, Space>& extras, tensor_view<std::byte, 1, Space> workspace,                 \
      const Options& opt = {}) {                                                                                        \
    static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");             \
    using P = soft_target_detail::Policy<accum_t<TS>>;                                                                  \
    return soft_target_detail::dense_backend<Space>::template run<P>(#name "_forward_backward", ctx, student, teacher,  \
                                              loss, false,                                                              \
                                              grad_student, true, opt, P::make_params(opt), extras, workspace);         \
  }
