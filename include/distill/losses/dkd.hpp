// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! DKD, Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022;
//! megvii-research/mdistiller), computed in log space.
//!
//! Per row with target class t (from `labels`), p = softmax(z^t / T), q = softmax(z^s / T):
//!   binary split   b^T = [p_t, 1 - p_t],  b^S = [q_t, 1 - q_t]
//!   non-target     p^_k = p_k / (1 - p_t),  q^_k = q_k / (1 - q_t)   (softmax over k != t)
//!   TCKD = KL(b^T || b^S),  NCKD = KL(p^ || q^)
//!   f    = alpha TCKD + beta NCKD        (and the paper's identity KD = TCKD + (1 - p_t) NCKD)
//! Gradients (per row, before c(T)/T and the row scale):
//!   df/dy_t  = alpha (q_t - p_t)
//!   df/dy_k  = alpha q^_k (p_t - q_t) + beta (q^_k - p^_k)                         k != t
//!   df/dx_t  = alpha l p_t (1 - p_t),  l = log(p_t/q_t) - log((1-p_t)/(1-q_t))    (only for dL/dT)
//!   df/dx_k  = -alpha l p_t (1 - p_t) p^_k + beta p^_k (log p^_k - log q^_k - NCKD)
//! Stability: log(1 - p_t) = LSE_{k != t}(x) - LSE(x), with the non-target log-sum-exp summed
//! over the non-target classes themselves (never 1 - p_t by subtraction, never the -1000 mask of
//! the official code, which breaks in fp16/bf16). The T^2 factor (`scale_by_t_squared`, on by
//! default) matches mdistiller. mdistiller's defaults: alpha 1, beta 8, T 4, CE weight 1, and a
//! warm-up min(epoch / 20, 1) on the DKD term: pass it as `soft_weight`, the CE as
//! `hard_label_weight` (labels are the same).
//! Needs at least 2 classes. A row whose teacher puts no mass outside the target (all non-target
//! teacher logits -inf) has no non-target distribution: NCKD is taken as 0 there (its gradient
//! too). Rows with `ignore_index` contribute nothing. On CUDA, an out-of-range label makes that
//! row NaN (labels in device memory cannot be checked without a host synchronisation).
//!
//! Entry points (the same on the CPU and CUDA backends):
//!   dkd_forward / _backward / _forward_backward, arguments as in kl_teacher_student.hpp, with
//!   `dkd_options` (alpha, beta) and `extras.labels` required.

#include <type_traits>

#include "distill/losses/detail/soft_target_dispatch.hpp"

namespace distill {

struct dkd_options : soft_target_options {
  float alpha = 1.0f;  ///< weight of TCKD
  float beta = 8.0f;   ///< weight of NCKD (mdistiller's CIFAR default)
};

namespace soft_target_detail {

template <class Acc>
struct dkd_policy {
  struct params {
    Acc alpha, beta;
  };
  static params make_params(const dkd_options& o) noexcept { return {static_cast<Acc>(o.alpha), static_cast<Acc>(o.beta)}; }
  static constexpr bool uses_target = true, has_mixture_pass = false;
  static constexpr bool needs_a = true, needs_tx = false, needs_b = false;
  static constexpr bool normalises_full_rows = false;  // p^ and q^ are normalised without the target
  struct row {
    Acc lpn, lqn;   // non-target LSEs (normalising p^ and q^)
    Acc pt, qt;     // target probabilities
    Acc lbin_w;     // l p_t (1 - p_t) (0 where p_t (1 - p_t) = 0)
    Acc nckd;
    Acc beta_eff;   // beta, or 0 when the teacher has no non-target mass
    Acc f;
  };
  static status validate(const char* fn, index_t classes, const params& p) {
    if (classes < 2) return fail(errc::shape_mismatch, fn, "DKD needs at least 2 classes (a target and a non-target)");
    DISTILL_TRY(check_finite_option(fn, "alpha", static_cast<double>(p.alpha)));
    return check_finite_option(fn, "beta", static_cast<double>(p.beta));
  }
  /// `s` holds the non-target statistics, `tv` the target's scaled logits.
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE row finalize(const dense_state<Acc>& s, const params& pr, const target_values<Acc>& tv) noexcept {
    row r;
    const Acc lt1 = s.teacher_lse(), ls1 = s.student_lse();  // LSE over k != t (-inf if empty)
    const Acc lt = log_add_exp(lt1, tv.x), ls = log_add_exp(ls1, tv.y);
    const Acc lpt = tv.x - lt, lqt = tv.y - ls;     // log p_t, log q_t
    const Acc l1mp = lt1 - lt, l1mq = ls1 - ls;     // log(1 - p_t), log(1 - q_t)
    r.pt = st_exp(lpt);
    r.qt = st_exp(lqt);
    const Acc omp = st_exp(l1mp);                   // 1 - p_t, without a subtraction
    const Acc tckd = keep_or_zero(r.pt != Acc(0), r.pt * (lpt - lqt)) + keep_or_zero(omp != Acc(0), omp * (l1mp - l1mq));
    const bool teacher_has_nontarget = s.st != Acc(0);
    r.nckd = teacher_has_nontarget ? s.a / s.st - lt1 + ls1 : Acc(0);
    r.beta_eff = teacher_has_nontarget ? pr.beta : Acc(0);
    const Acc w = r.pt * omp;
    r.lbin_w = keep_or_zero(w != Acc(0), ((lpt - lqt) - (l1mp - l1mq)) * w);
    r.lpn = lt1;
    r.lqn = ls1;
    r.f = pr.alpha * tckd + r.beta_eff * r.nckd;
    return r;
  }
  // p and q below are p^_k and q^_k (normalised over the non-target classes)
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_student(const row& r, const params& pr, Acc, Acc, Acc p, Acc q) noexcept {
    return pr.alpha * q * (r.pt - r.qt) + r.beta_eff * (q - p);
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_teacher(const row& r, const params& pr, Acc x, Acc y, Acc p, Acc) noexcept {
    return -pr.alpha * r.lbin_w * p + r.beta_eff * keep_or_zero(p != Acc(0), p * ((x - r.lpn) - (y - r.lqn) - r.nckd));
  }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_student_target(const row& r, const params& pr) noexcept { return pr.alpha * (r.qt - r.pt); }
  DISTILL_HOST_DEVICE static DISTILL_FORCEINLINE Acc grad_teacher_target(const row& r, const params& pr) noexcept { return pr.alpha * r.lbin_w; }
};

}  // namespace soft_target_detail

DISTILL_DENSE_SOFT_TARGET_ENTRY_POINTS(dkd, dkd_policy, dkd_options)

}  // namespace distill

