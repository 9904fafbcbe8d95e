// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Forward KL(teacher || student) with temperature: Hinton, Vinyals & Dean, "Distilling the
//! Knowledge in a Neural Network" (2015). The classic knowledge-distillation loss; mean-covering
//! (the student is pushed to put mass wherever the teacher has any).
//!
//! Per row, x = z^t / T, y = z^s / T, p = softmax(x), q = softmax(y):
//!   f        = KL(p || q) = sum_k p_k (log p_k - log q_k)
//!            = E_p[x - y] - LSE(x) + LSE(y)
//!   df/dy_k  = q_k - p_k                      so  dL/dz^s_k = c(T)/T * (q_k - p_k) * (row scale)
//!   df/dx_k  = p_k (log p_k - log q_k - f)    (used only for dL/dT; the teacher gets no gradient)
//! With `scale_by_t_squared` (default) the soft term is T^2 f, so its gradient T (q - p) keeps
//! the magnitude of the hard-label term as T changes (Hinton §2). torch equivalent:
//!   F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), reduction="batchmean",
//!            log_target=True) * T * T
//! Labels, weights, reductions, the hard-label CE term, dL/dT and diagnostics: see
//! soft_target_common.hpp. -inf teacher logits are zero probability (no contribution); a -inf
//! student logit where the teacher has mass makes f = +inf.
//!
//! Entry points (CPU here; CUDA overloads with `distill::cuda` and cuda views in
//! kernels/distill/cuda/kl_teacher_student.cuh):
//!   kl_teacher_student_forward          (ctx, student, teacher, loss, options, extras)
//!   kl_teacher_student_backward         (ctx, student, teacher, grad_student, options, extras)
//!   kl_teacher_student_forward_backward (ctx, student, teacher, loss, grad_student, options, extras)
//! student, teacher: (N, C) logits of float, double, float16 or bfloat16 (may differ);
//! loss: (1), or (N) with reduction none (optional in forward_backward); grad_student: (N, C)
//! of the student's element type, may be the student's own memory (in place).

#include <type_traits>

#include "distill/losses/detail/soft_target_cpu.hpp"
#include "distill/losses/soft_target_common.hpp"

namespace distill {
namespace soft_target_detail {

template <class Acc>
struct kl_teacher_student_policy {
  struct params {};
  static constexpr bool uses_target = false, has_mixture_pass = false;
  static constexpr bool needs_a = true, needs_tx = false, needs_b = false;
  static constexpr bool normalises_full_rows = true;  // p and q are the full-row softmaxes
  /// Row scalars (fields of one type: the CPU path gathers a batch of rows into row_t<batch>).
  template <class T>
  struct row_t {
    T lpn, lqn;  // log-sum-exps normalising p and q
    T f;         // KL(p || q)
  };
  using row = row_t<Acc>;
  static status validate(const char*, index_t, const params&) { return {}; }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE row finalize(const dense_state<Acc>& s, const params&, const target_values<Acc>&) noexcept {
    const Acc lt = s.teacher_lse(), ls = s.student_lse();
    return {lt, ls, s.a / s.st - lt + ls};
  }
  template <class R, class V>
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE V grad_student(const R&, const params&, V, V, V p, V q) noexcept { return q - p; }
  template <class R, class V>
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE V grad_teacher(const R& r, const params&, V x, V y, V p, V) noexcept {
    return keep_nonzero(p, p * ((x - r.lpn) - (y - r.lqn) - r.f));
  }
};

}  // namespace soft_target_detail

/// Loss only. `loss` is (1), or (N) with reduction none.
template <class TS, class TT>
[[nodiscard]] status kl_teacher_student_forward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                host_view<accum_t<TS>, 1> loss, const soft_target_options& opt = {},
                                                const soft_target_host_extras<accum_t<TS>>& extra = {}) {
  using P = soft_target_detail::kl_teacher_student_policy<accum_t<TS>>;
  return soft_target_detail::dense_cpu_entry<P>("kl_teacher_student_forward", ctx, student, teacher, loss, true,
                                                host_view<std::remove_const_t<TS>, 2>{}, false, opt, {}, extra);
}

/// Gradient with respect to the student logits only (and dL/dT when requested).
template <class TS, class TT>
[[nodiscard]] status kl_teacher_student_backward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                 host_view<std::remove_const_t<TS>, 2> grad_student,
                                                 const soft_target_options& opt = {},
                                                 const soft_target_host_extras<accum_t<TS>>& extra = {}) {
  using P = soft_target_detail::kl_teacher_student_policy<accum_t<TS>>;
  return soft_target_detail::dense_cpu_entry<P>("kl_teacher_student_backward", ctx, student, teacher,
                                                host_view<accum_t<TS>, 1>{}, false, grad_student, true, opt, {}, extra);
}

/// Loss and gradient in one pass over the inputs (`loss` may be absent).
template <class TS, class TT>
[[nodiscard]] status kl_teacher_student_forward_backward(const cpu& ctx, host_view<TS, 2> student,
                                                         host_view<TT, 2> teacher, host_view<accum_t<TS>, 1> loss,
                                                         host_view<std::remove_const_t<TS>, 2> grad_student,
                                                         const soft_target_options& opt = {},
                                                         const soft_target_host_extras<accum_t<TS>>& extra = {}) {
  using P = soft_target_detail::kl_teacher_student_policy<accum_t<TS>>;
  return soft_target_detail::dense_cpu_entry<P>("kl_teacher_student_forward_backward", ctx, student, teacher, loss,
                                                false, grad_student, true, opt, {}, extra);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/kl_teacher_student.cuh"
#endif
