// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Soft-target cross-entropy: CE(p, q) = -sum_k p_k log q_k with p = softmax(z^t / T) and
//! q = softmax(z^s / T). It equals KL(p || q) + H(p): the same gradient as forward KL, and a
//! loss that does not go to 0 when the student matches the teacher (it goes to H(p)). This is
//! what `torch.nn.functional.cross_entropy(zs / T, softmax(zt / T))` (probability targets)
//! computes, and what several KD codebases call "the KD loss".
//!
//! Per row, x = z^t / T, y = z^s / T:
//!   f        = LSE(y) - E_p[y]
//!   df/dy_k  = q_k - p_k                       so dL/dz^s_k = c(T)/T (q_k - p_k) * (row scale)
//!   df/dx_k  = -p_k (log q_k - E_p[log q])     (only for dL/dT)
//! -inf teacher logits are zero probability; a -inf student logit where the teacher has mass
//! makes f = +inf. Everything else (rows, labels, weights, reductions, hard-label term, dL/dT,
//! diagnostics): soft_target_common.hpp.
//!
//! Entry points (the same on the CPU and CUDA backends):
//!   soft_cross_entropy_forward / _backward / _forward_backward, arguments as in
//!   kl_teacher_student.hpp.

#include <type_traits>

#include "distill/losses/detail/soft_target_dispatch.hpp"

namespace distill {
namespace soft_target_detail {

template <class Acc>
struct soft_cross_entropy_policy {
  struct params {};
  static params make_params(const soft_target_options&) noexcept { return {}; }
  static constexpr bool uses_target = false, has_mixture_pass = false;
  static constexpr bool needs_a = true, needs_tx = true, needs_b = false;
  static constexpr bool normalises_full_rows = true;
  struct row {
    Acc lpn, lqn;  // LSE(x), LSE(y)
    Acc f;         // CE(p, q)
  };
  static status validate(const char*, index_t, const params&) { return {}; }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE row finalize(const dense_state<Acc>& s, const params&, const target_values<Acc>&) noexcept {
    const Acc lt = s.teacher_lse(), ls = s.student_lse();
    // E_p[y] = E_p[x] - E_p[x - y], with E_p[x] = max x + tx / st
    const Acc ep_y = s.mt + s.tx / s.st - s.a / s.st;
    return {lt, ls, ls - ep_y};
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_student(const row&, const params&, Acc, Acc, Acc p, Acc q) noexcept { return q - p; }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_teacher(const row& r, const params&, Acc, Acc y, Acc p, Acc) noexcept {
    // E_p[log q] = -f
    return keep_or_zero(p != Acc(0), -p * ((y - r.lqn) + r.f));
  }
};

}  // namespace soft_target_detail

DISTILL_DENSE_SOFT_TARGET_ENTRY_POINTS(soft_cross_entropy, soft_cross_entropy_policy, soft_target_options)

}  // namespace distill

