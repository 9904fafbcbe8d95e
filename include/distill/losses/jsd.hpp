// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Generalised Jensen-Shannon divergence JSD(beta) in TRL's convention (GKD: Agarwal et al.,
//! "On-Policy Distillation of Language Models", ICLR 2024; huggingface/trl
//! `generalized_jsd_loss`), with endpoints that are *continuous* in beta.
//!
//! Per row, p = softmax(z^t / T) (teacher), q = softmax(z^s / T) (student), beta in [0, 1]:
//!   M      = beta p + (1 - beta) q
//!   JSD_b  = beta KL(p || M) + (1 - beta) KL(q || M)
//! JSD_b goes to 0 at *both* ends (M becomes q, resp. p), while TRL defines beta = 0 as forward
//! KL(p || q) and beta = 1 as reverse KL(q || p) by special-casing them: a jump (trl#6780,
//! ms-swift#10078). Near beta = 0, JSD_b = beta KL(p||q) + O(beta^2); near 1,
//! JSD_b = (1 - beta) KL(q||p) + O((1-beta)^2). So this library's default,
//!   jsd_scaling::continuous:  f = JSD_b / (beta (1 - beta)),   f(0) = KL(p||q), f(1) = KL(q||p)
//! is continuous on [0, 1] together with its gradient, and equals 4 JSD at beta = 1/2 (the
//! symmetric Jensen-Shannon divergence, times 4).
//!   jsd_scaling::trl:         f = JSD_b in (0, 1), KL(p||q) at 0, KL(q||p) at 1 (TRL's values,
//!                             jump included); use it to match TRL numbers.
//! With a_k = (log p_k - log M_k) / (1 - beta) and b_k = (log q_k - log M_k) / beta (continuous
//! limits: a_k = log p_k - log q_k at beta = 0, b_k = 1 - p_k/q_k at beta = 0, and symmetrically
//! at beta = 1), and s = beta (1 - beta) for trl in the interior, else 1:
//!   f        = s (<p, a> + <q, b>)
//!   df/dy_k  = s q_k (b_k - <q, b>)            (TRL: d/dq_k JSD = (1-beta) log(q_k/M_k))
//!   df/dx_k  = s p_k (a_k - <p, a>)            (only for dL/dT)
//! a and b are formed per class as -log(beta + (1-beta) q/p) / (1 - beta) and
//! -log(beta p/q + 1 - beta) / beta through a log-add-exp, so the division by a small beta does
//! not amplify rounding: the absolute error stays O(eps) for every beta, and beta = 1e-6 agrees
//! with beta = 0 to O(1e-6) (tested). TRL applies no T^2; set `scale_by_t_squared = false` to
//! match it. -inf logits on either side are zero probability (classes where both are -inf
//! contribute nothing; at beta = 0 a teacher class the student gives no mass makes f = +inf,
//! and symmetrically at beta = 1).
//!
//! Entry points (the same on the CPU and CUDA backends):
//!   jsd_forward / _backward / _forward_backward, arguments as in kl_teacher_student.hpp, with
//!   `jsd_options` (beta, scaling) instead of `soft_target_options`.

#include <cmath>
#include <type_traits>

#include "distill/losses/detail/soft_target_dispatch.hpp"

namespace distill {

/// How JSD(beta) is scaled (see the file comment).
enum class jsd_scaling {
  continuous,  ///< JSD / (beta (1 - beta)): continuous in beta, KL(p||q) at 0, KL(q||p) at 1
  trl,         ///< TRL's values: raw JSD inside (0, 1), the two KLs at the ends (a jump)
};

struct jsd_options : soft_target_options {
  float beta = 0.5f;  ///< mixture weight of the teacher, in [0, 1]
  jsd_scaling scaling = jsd_scaling::continuous;
};

namespace soft_target_detail {

template <class Acc>
struct jsd_policy {
  struct params {
    Acc beta, log_beta, log1m_beta, inv_beta, inv_1m_beta;
    Acc scale;  // beta (1 - beta) for trl scaling inside (0, 1), else 1
  };
  static params make_params(const jsd_options& o) noexcept {
    const double b = o.beta;
    params p;
    p.beta = static_cast<Acc>(b);
    p.log_beta = static_cast<Acc>(std::log(b));
    p.log1m_beta = static_cast<Acc>(std::log1p(-b));
    p.inv_beta = b > 0 ? static_cast<Acc>(1 / b) : Acc(0);
    p.inv_1m_beta = b < 1 ? static_cast<Acc>(1 / (1 - b)) : Acc(0);
    p.scale = (o.scaling == jsd_scaling::trl && b > 0 && b < 1) ? static_cast<Acc>(b * (1 - b)) : Acc(1);
    return p;
  }
  static constexpr bool uses_target = false, has_mixture_pass = true;
  static constexpr bool needs_a = false, needs_tx = false, needs_b = false;
  static constexpr bool normalises_full_rows = true;
  struct row {
    Acc lpn, lqn;  // LSE(x), LSE(y)
    Acc pa, qb;    // <p, a>, <q, b>
    Acc f;
  };
  static status validate(const char* fn, index_t, const params& p) {
    return check_in_range(fn, "beta", static_cast<double>(p.beta), 0.0, 1.0);
  }
  /// a_k and b_k from d = log p_k - log q_k (continuous at beta = 0 and 1).
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE void log_ratios(const params& pr, Acc d, Acc& a, Acc& b) noexcept {
    // both candidates are computed and blended (branch-free, so the host loops vectorise)
    b = select(pr.beta == Acc(0), Acc(1) - st_exp(d), -log_add_exp(pr.log_beta + d, pr.log1m_beta) * pr.inv_beta);
    a = select(pr.beta == Acc(1), Acc(1) - st_exp(-d), -log_add_exp(pr.log1m_beta - d, pr.log_beta) * pr.inv_1m_beta);
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE row finalize(const dense_state<Acc>& s, const params&, const target_values<Acc>&) noexcept {
    return {s.teacher_lse(), s.student_lse(), Acc(0), Acc(0), Acc(0)};
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE void mixture_terms(const row& r, const params& pr, Acc x, Acc y, Acc p, Acc q, Acc& pa,
                                                Acc& qb) noexcept {
    Acc a, b;
    log_ratios(pr, (x - r.lpn) - (y - r.lqn), a, b);
    pa = keep_or_zero(p != Acc(0), p * a);
    qb = keep_or_zero(q != Acc(0), q * b);
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE void finish_mixture(row& r, const params& pr, Acc pa, Acc qb) noexcept {
    r.pa = pa;
    r.qb = qb;
    r.f = pr.scale * (pa + qb);
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_student(const row& r, const params& pr, Acc x, Acc y, Acc, Acc q) noexcept {
    Acc a, b;
    log_ratios(pr, (x - r.lpn) - (y - r.lqn), a, b);
    return keep_or_zero(q != Acc(0), pr.scale * q * (b - r.qb));
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_teacher(const row& r, const params& pr, Acc x, Acc y, Acc p, Acc) noexcept {
    Acc a, b;
    log_ratios(pr, (x - r.lpn) - (y - r.lqn), a, b);
    return keep_or_zero(p != Acc(0), pr.scale * p * (a - r.pa));
  }
};

}  // namespace soft_target_detail

DISTILL_DENSE_SOFT_TARGET_ENTRY_POINTS(jsd, jsd_policy, jsd_options)

}  // namespace distill

