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
//! Entry points, the same on every backend (`ctx` is a distill::cpu with host views, or a
//! distill::cuda with device views in a translation unit compiled by nvcc):
//!   kl_teacher_student_forward          (ctx, student, teacher, loss, extras, workspace, options)
//!   kl_teacher_student_backward         (ctx, student, teacher, grad_student, extras, workspace, options)
//!   kl_teacher_student_forward_backward (ctx, student, teacher, loss, grad_student, extras, workspace, options)
//! student, teacher: (N, C) logits of float, double, float16 or bfloat16 (may differ; CUDA: no
//! double); loss: (1), or (N) with reduction none (optional in forward_backward);
//! grad_student: (N, C) of the student's element type, may be the student's own memory (in
//! place); extras: soft_target_extras (labels, weights, diagnostics, ...; {} for none);
//! workspace: soft_target_workspace_size(ctx, N) bytes ({} on the CPU, where it is 0).

#include <type_traits>

#include "distill/losses/detail/soft_target_dispatch.hpp"

namespace distill {
namespace soft_target_detail {

template <class Acc>
struct kl_teacher_student_policy {
  struct params {};
  static params make_params(const soft_target_options&) noexcept { return {}; }
  static constexpr bool uses_target = false, has_mixture_pass = false;
  static constexpr bool needs_a = true, needs_tx = false, needs_b = false;
  static constexpr bool normalises_full_rows = true;  // p and q are the full-row softmaxes
  struct row {
    Acc lpn, lqn;  // log-sum-exps normalising p and q
    Acc f;         // KL(p || q)
  };
  static status validate(const char*, index_t, const params&) { return {}; }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE row finalize(const dense_state<Acc>& s, const params&, const target_values<Acc>&) noexcept {
    const Acc lt = s.teacher_lse(), ls = s.student_lse();
    return {lt, ls, s.a / s.st - lt + ls};
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_student(const row&, const params&, Acc, Acc, Acc p, Acc q) noexcept { return q - p; }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_teacher(const row& r, const params&, Acc x, Acc y, Acc p, Acc) noexcept {
    return keep_or_zero(p != Acc(0), p * ((x - r.lpn) - (y - r.lqn) - r.f));
  }
};

}  // namespace soft_target_detail

DISTILL_DENSE_SOFT_TARGET_ENTRY_POINTS(kl_teacher_student, kl_teacher_student_policy, soft_target_options)

}  // namespace distill

