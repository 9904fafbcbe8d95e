// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Reverse KL(student || teacher) with temperature: the mode-seeking divergence used by on-policy
//! distillation (GKD, Agarwal et al. 2024, with beta = 1; MiniLLM, Gu et al. 2024). The student
//! is pushed to put its mass where the teacher is confident and is not penalised for ignoring
//! teacher modes; its gradient vanishes where the student has no mass.
//!
//! Per row, x = z^t / T, y = z^s / T, p = softmax(x) (teacher), q = softmax(y) (student):
//!   f        = KL(q || p) = sum_k q_k (log q_k - log p_k) = E_q[y - x] - LSE(y) + LSE(x)
//!   df/dy_k  = q_k (l_k - f),  l_k = log q_k - log p_k      so dL/dz^s_k = c(T)/T * df/dy_k * (row scale)
//!   df/dx_k  = p_k - q_k                                     (only for dL/dT)
//! `scale_by_t_squared` defaults to true as for every soft-target loss; TRL's reverse KL (its
//! generalised JSD with beta = 1) has no T^2: set it to false to match. torch equivalent:
//!   F.kl_div(F.log_softmax(zt / T, -1), F.log_softmax(zs / T, -1), reduction="batchmean",
//!            log_target=True) * T * T           (note the swapped arguments)
//! -inf teacher logits are zero teacher probability: where the student still has mass the
//! divergence is +inf (and the gradient NaN), which is the mathematics of KL(q||p); classes
//! that are -inf for both contribute nothing. Rows, labels, weights, reductions, the hard-label
//! term, dL/dT and diagnostics: soft_target_common.hpp.
//!
//! Entry points (the same on the CPU and CUDA backends):
//!   kl_student_teacher_forward / _backward / _forward_backward, arguments as in
//!   kl_teacher_student.hpp.

#include <type_traits>

#include "distill/losses/detail/soft_target_dispatch.hpp"

namespace distill {
namespace soft_target_detail {

template <class Acc>
struct kl_student_teacher_policy {
  struct params {};
  static params make_params(const soft_target_options&) noexcept { return {}; }
  static constexpr bool uses_target = false, has_mixture_pass = false;
  static constexpr bool needs_a = false, needs_tx = false, needs_b = true;
  static constexpr bool normalises_full_rows = true;
  struct row {
    Acc lpn, lqn;  // LSE(x), LSE(y)
    Acc f;         // KL(q || p)
  };
  static status validate(const char*, index_t, const params&) { return {}; }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE row finalize(const dense_state<Acc>& s, const params&, const target_values<Acc>&) noexcept {
    const Acc lt = s.teacher_lse(), ls = s.student_lse();
    return {lt, ls, s.b / s.ss - ls + lt};
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_student(const row& r, const params&, Acc x, Acc y, Acc, Acc q) noexcept {
    return keep_or_zero(q != Acc(0), q * ((y - r.lqn) - (x - r.lpn) - r.f));
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_teacher(const row&, const params&, Acc, Acc, Acc p, Acc q) noexcept { return p - q; }
};

}  // namespace soft_target_detail

DISTILL_DENSE_SOFT_TARGET_ENTRY_POINTS(kl_student_teacher, kl_student_teacher_policy, soft_target_options)

}  // namespace distill

