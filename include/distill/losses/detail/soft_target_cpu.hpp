// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CPU path shared by the dense soft-target losses (forward KL, reverse KL, JSD, soft CE, DKD).
//! A primitive contributes a *policy*: its row finalisation, and its per-class gradients written
//! once for a float and for a SIMD batch (DISTILL_HOST_DEVICE, so the CUDA kernels use the very
//! same formulas). This file runs it, on the frame of soft_target_rows.hpp.
//!
//! Per row, over data that stays in L2 after the first touch (a 32000-class float row of
//! student + teacher is 256 KiB; the per-thread scratch another 256 KiB):
//!   pass 1  max of the raw teacher and student logits       (reads the inputs from memory)
//!   pass 2  e^{x - max x}, e^{y - max y} into scratch + the row sums the policy needs
//!   [pass 2b, JSD only: the mixture sums, which need both log-sum-exps]
//!   pass 3  gradient from the stored exponentials           (writes the gradient once)
//! Each pass runs over batches of core/simd.hpp (16 floats with AVX-512, 8 with AVX2, 4 with SSE
//! or NEON) into batch accumulators; the ragged end of a row is one partial batch padded with
//! -inf (zero probability). Sums are formed in a fixed order per row, so results are bitwise
//! reproducible for a given instruction set and do not depend on the thread count (rows are
//! independent; the batch sum runs in row order).
//!
//! Three row layouts, three drivers:
//!   rows_in_lanes     rows of at most 16 contiguous classes, one row per SIMD lane: such rows
//!                     are latency-bound (max -> sums -> logs -> gradient is a dependency chain),
//!                     and a class becomes one batch operation across the rows
//!   contiguous_rows   unit-stride rows: short ones a few at a time stage by stage, long ones one
//!                     at a time (each stays in L2 between its passes) with the next row
//!                     prefetched during pass 2 and float gradients streamed to memory
//!   strided_rows      any other layout, through contiguous copies of the row
//!
//! In place: pass 3 reads the student logits of a batch before it writes their gradient, and
//! nothing after pass 3 reads the student (the label column is read in pass 1), so
//! `grad_student` may be `student` itself.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/parallel.hpp"
#include "distill/core/simd.hpp"
#include "distill/losses/detail/soft_target_rows.hpp"
#include "distill/losses/soft_target_common.hpp"

namespace distill::soft_target_detail {

/// Dispatch a runtime bool to a compile-time one.
template <class F>
DISTILL_FORCEINLINE decltype(auto) with_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

/// Pass 1: maxima of the raw logits over [b, e), folded into max_s and max_t. NaN is skipped
/// here and surfaces in pass 2.
template <class Acc, class S, class T>
void max_range(const S* s, const T* t, index_t b, index_t e, Acc& max_s, Acc& max_t) noexcept {
  using V = simd::batch<Acc>;
  constexpr int W = simd::width<Acc>;
  V ms(ninf<Acc>()), mt(ninf<Acc>());
  index_t k = b;
  for (; k + W <= e; k += W) {
    ms = simd::max_skip_nan(ms, simd::load<Acc>(s + k));
    mt = simd::max_skip_nan(mt, simd::load<Acc>(t + k));
  }
  if (k < e) {
    const int n = static_cast<int>(e - k);
    ms = simd::max_skip_nan(ms, simd::load_partial<Acc>(s + k, n, ninf<Acc>()));
    mt = simd::max_skip_nan(mt, simd::load_partial<Acc>(t + k, n, ninf<Acc>()));
  }
  const Acc a = simd::reduce_max(ms), c = simd::reduce_max(mt);
  max_s = a > max_s ? a : max_s;
  max_t = c > max_t ? c : max_t;
}

/// Maximum of one row of n logits (NaN skipped; -inf for an empty or all -inf row).
template <class Acc, class S>
Acc row_max(const S* x, index_t n) noexcept {
  using V = simd::batch<Acc>;
  constexpr int W = simd::width<Acc>;
  V m(ninf<Acc>());
  index_t k = 0;
  for (; k + W <= n; k += W) m = simd::max_skip_nan(m, simd::load<Acc>(x + k));
  if (k < n) m = simd::max_skip_nan(m, simd::load_partial<Acc>(x + k, static_cast<int>(n - k), ninf<Acc>()));
  return simd::reduce_max(m);
}

/// First index of the maximum of a row of n logits (top-1 diagnostics), -1 when none.
template <class Acc, class S>
std::int32_t first_argmax(const S* x, index_t n) noexcept {
  Acc best = ninf<Acc>();
  std::int32_t at = -1;
  for (index_t k = 0; k < n; ++k) {
    const Acc v = load<Acc>(x[k]);
    if (v > best) best = v, at = static_cast<std::int32_t>(k);
  }
  return at;
}

/// Which row sums pass 2 accumulates (the rest stay 0); see dense_state for their meaning.
template <class Acc>
struct range_sums {
  Acc st = 0, ss = 0, a = 0, tx = 0, b = 0, sz = 0;
};

/// Pass 2 over [b, e): stores e^{x - mx} and e^{y - my} and accumulates the requested sums.
/// mx, my, mz must be finite here (the caller substitutes 0 for an all -inf row).
/// `next_s`, `next_t`: the next row's logits, prefetched into L2 during this compute-bound pass
/// so that the next row's pass 1 reads L2 instead of memory (pass the current row to prefetch
/// nothing new).
template <class Acc, bool A, bool TX, bool B, bool Z, class S, class T>
range_sums<Acc> stats_range(const S* s, const T* t, index_t b, index_t e, Acc inv_t, Acc mx, Acc my, Acc mz,
                            Acc* et_buf, Acc* es_buf, const S* next_s, const T* next_t) noexcept {
  using V = simd::batch<Acc>;
  constexpr int W = simd::width<Acc>;
  V st(Acc(0)), ss(Acc(0)), sa(Acc(0)), stx(Acc(0)), sb(Acc(0)), sz(Acc(0));
  const V vinv_t(inv_t), neg_mx(-mx), neg_my(-my), mx_my(mx - my);
  // The exponentials bound this pass on AVX2: the shifted arguments are one fused multiply-add
  // each, and x - y is formed from them on the adder ports.
  auto block = [&](const V& zs, const V& zt, V& et, V& es) DISTILL_INLINE_LAMBDA {
    const V dx = simd::fma(zt, vinv_t, neg_mx), dy = simd::fma(zs, vinv_t, neg_my);  // x - max x, y - max y
    et = fast_exp(dx);
    es = fast_exp(dy);
    st += et;
    ss += es;
    if constexpr (A || B) {
      const V x_y = (dx - dy) + mx_my;
      if constexpr (A) sa += keep_nonzero(et, et * x_y);
      if constexpr (B) sb += keep_nonzero(es, es * -x_y);
    }
    if constexpr (TX) stx += keep_nonzero(et, et * dx);
    if constexpr (Z) sz += fast_exp(zs - mz);
  };
  index_t k = b;
  for (; k + W <= e; k += W) {
#if defined(__GNUC__)
    __builtin_prefetch(next_s + k, 0, 2);
    __builtin_prefetch(next_t + k, 0, 2);
#endif
    V et, es;
    block(simd::load<Acc>(s + k), simd::load<Acc>(t + k), et, es);
    et.store_unaligned(et_buf + k);
    es.store_unaligned(es_buf + k);
  }
  if (k < e) {  // padded last batch: -inf lanes carry zero probability
    const int n = static_cast<int>(e - k);
    V et, es;
    block(simd::load_partial<Acc>(s + k, n, ninf<Acc>()), simd::load_partial<Acc>(t + k, n, ninf<Acc>()), et, es);
    simd::store_partial(et_buf + k, n, et);
    simd::store_partial(es_buf + k, n, es);
  }
  range_sums<Acc> r;
  r.st = simd::reduce_sum(st);
  r.ss = simd::reduce_sum(ss);
  if constexpr (A) r.a = simd::reduce_sum(sa);
  if constexpr (TX) r.tx = simd::reduce_sum(stx);
  if constexpr (B) r.b = simd::reduce_sum(sb);
  if constexpr (Z) r.sz = simd::reduce_sum(sz);
  return r;
}

/// Pass 2b (JSD): sums of the policy's mixture terms over [b, e), added to pa_out and qb_out.
template <class Policy, class Acc, class S, class T>
void mixture_range(const typename Policy::row& row, const typename Policy::params& prm, const S* s, const T* t,
                   index_t b, index_t e, Acc inv_t, const Acc* et_buf, const Acc* es_buf, Acc pf, Acc qf, Acc& pa_out,
                   Acc& qb_out) noexcept {
  using V = simd::batch<Acc>;
  constexpr int W = simd::width<Acc>;
  V pa(Acc(0)), qb(Acc(0));
  auto block = [&](const V& zs, const V& zt, const V& et, const V& es) DISTILL_INLINE_LAMBDA {
    V u, v;
    Policy::mixture_terms(row, prm, zt * inv_t, zs * inv_t, et * pf, es * qf, u, v);
    pa += u;
    qb += v;
  };
  index_t k = b;
  for (; k + W <= e; k += W)
    block(simd::load<Acc>(s + k), simd::load<Acc>(t + k), V::load_unaligned(et_buf + k), V::load_unaligned(es_buf + k));
  if (k < e) {  // zero probabilities contribute nothing
    const int n = static_cast<int>(e - k);
    block(simd::load_partial<Acc>(s + k, n, Acc(0)), simd::load_partial<Acc>(t + k, n, Acc(0)),
          simd::load_partial<Acc>(et_buf + k, n, Acc(0)), simd::load_partial<Acc>(es_buf + k, n, Acc(0)));
  }
  pa_out += simd::reduce_sum(pa);
  qb_out += simd::reduce_sum(qb);
}

/// How pass 3 forms softmax(z^s) for the hard-label term.
enum class hard_mode { none, from_q, from_exp };

/// Everything pass 3 needs besides the data pointers: of one row (T = Acc), or of a batch of
/// rows one per lane (T = a batch, rows_in_lanes).
template <class T>
struct grad_scalars {
  T inv_t, pf, qf;         // p = e^{x - mx} * pf, q = e^{y - my} * qf
  T coef_soft, coef_hard;  // row coefficients (see soft_target_common.hpp)
  T lz;                    // log-sum-exp of the raw student row (hard term, from_exp)
};

/// dL/dz^s of one class or of a batch of classes (U = Acc or a batch; `row` and `k_` of one row,
/// or batches of rows), without the hard label's -1 (the caller adds it: batches do not compare
/// class indices). With DT, adds the classes' terms of sum_k (df/dx_k x_k + df/dy_k y_k) to `dt`.
template <class Policy, hard_mode Hard, bool DT, bool Accum, class Row, class K, class U, class D>
DISTILL_FORCEINLINE U class_grad(const Row& row, const typename Policy::params& prm, const grad_scalars<K>& k_,
                                 const U& zs, const U& zt, const U& et, const U& es, const U& old, D& dt) noexcept {
  const U x = zt * k_.inv_t, y = zs * k_.inv_t;
  const U p = et * k_.pf, q = es * k_.qf;
  const U gs = Policy::grad_student(row, prm, x, y, p, q);
  U v = k_.coef_soft * gs;
  if constexpr (Hard == hard_mode::from_q) v += k_.coef_hard * q;
  if constexpr (Hard == hard_mode::from_exp) v += k_.coef_hard * fast_exp(zs - k_.lz);
  if constexpr (Accum) v += old;
  if constexpr (DT) {
    const U gt = Policy::grad_teacher(row, prm, x, y, p, q);
    dt += keep_nonzero(gs, gs * y) + keep_nonzero(gt, gt * x);
  }
  return v;
}

/// Rows at least this long stream float gradients to memory.
inline constexpr index_t streaming_min_classes = 1024;

/// Pass 3 over [b, e): writes the gradient; returns sum_k (df/dx_k x_k + df/dy_k y_k) when DT.
template <class Policy, class Acc, hard_mode Hard, bool DT, bool Accum, class S, class T, class G>
Acc grad_range(const typename Policy::row& row, const typename Policy::params& prm, const S* s, const T* t, G* g,
               index_t b, index_t e, const Acc* et_buf, const Acc* es_buf, const grad_scalars<Acc>& k_) noexcept {
  using V = simd::batch<Acc>;
  constexpr int W = simd::width<Acc>;
  V dt(Acc(0));
  // read the student logits before the (possibly aliasing) gradient store of the same classes
  auto full = [&](index_t k) DISTILL_INLINE_LAMBDA {
    return class_grad<Policy, Hard, DT, Accum>(row, prm, k_, simd::load<Acc>(s + k), simd::load<Acc>(t + k),
                                               V::load_unaligned(et_buf + k), V::load_unaligned(es_buf + k),
                                               Accum ? simd::load<Acc>(g + k) : V(Acc(0)), dt);
  };
  auto partial = [&](index_t k, int n) DISTILL_INLINE_LAMBDA {  // zero probabilities: zero terms
    const V v = class_grad<Policy, Hard, DT, Accum>(
        row, prm, k_, simd::load_partial<Acc>(s + k, n, Acc(0)), simd::load_partial<Acc>(t + k, n, Acc(0)),
        simd::load_partial<Acc>(et_buf + k, n, Acc(0)), simd::load_partial<Acc>(es_buf + k, n, Acc(0)),
        Accum ? simd::load_partial<Acc>(g + k, n, Acc(0)) : V(Acc(0)), dt);
    simd::store_partial(g + k, n, v);
  };
  index_t k = b;
  // Float gradients of long rows go to memory with non-temporal (streaming) stores where the
  // instruction set has them: a normal store first reads the destination line
  // (read-for-ownership), a third more memory traffic for a pass bound by memory bandwidth.
  // The stores need batch alignment, so the first few classes are peeled off.
  [[maybe_unused]] bool streamed = false;
  if constexpr (simd::has_streaming_store<Acc> && std::is_same_v<G, Acc> && !Accum) {
    const auto addr = reinterpret_cast<std::uintptr_t>(g + k);
    if (e - k >= streaming_min_classes && addr % sizeof(Acc) == 0) {
      const int peel = static_cast<int>(((sizeof(V) - addr % sizeof(V)) % sizeof(V)) / sizeof(Acc));
      if (peel > 0) partial(k, peel), k += peel;
      for (; k + W <= e; k += W) simd::stream(g + k, full(k));
      streamed = true;
    }
  }
  for (; k + W <= e; k += W) simd::store(g + k, full(k));
  if (k < e) partial(k, static_cast<int>(e - k));
  if constexpr (simd::has_streaming_store<Acc>)
    if (streamed) simd::stream_fence();
  if constexpr (DT) return simd::reduce_sum(dt);
  else return Acc(0);
}

/// Everything one row carries from one stage to the next.
template <class Policy, class Acc, class S, class T, class G>
struct row_work {
  const S* s;
  const T* t;
  G* g;                       // gradient row (may equal s); unused without a backward
  const S* next_s;            // the next row to prefetch (or s itself)
  const T* next_t;
  Acc* et_buf;                // e^{x - max x} per class
  Acc* es_buf;                // e^{y - max y} per class
  std::int64_t label;         // -1: none
  Acc weight;
  index_t rb[2], re[2];       // class ranges of the batch loops (DKD: around the target)
  int nr;
  index_t tgt;                // DKD's target class, else -1
  target_values<Acc> tv;
  Acc raw_ms, raw_mt, mx_e, my_e, mz_e;
  bool need_z;
  typename Policy::row row;
  Acc pf, qf, lz;
  row_result<Acc> out;
};

/// Stage 1: label column and pass 1 (maxima).
template <class Policy, class Acc, class S, class T, class G>
DISTILL_FORCEINLINE void row_stage_max(row_work<Policy, Acc, S, T, G>& w, const cpu_call<Acc>& call, index_t cols) {
  const Acc inv_t = call.sc.inv_temperature;
  w.tgt = Policy::uses_target ? static_cast<index_t>(w.label) : index_t(-1);
  w.rb[0] = 0, w.re[0] = cols, w.nr = 1;
  if (w.tgt >= 0) w.re[0] = w.tgt, w.rb[1] = w.tgt + 1, w.re[1] = cols, w.nr = 2;
  if (w.label >= 0) {  // read before any gradient store: the gradient may alias the student
    w.tv.z = load<Acc>(w.s[w.label]);
    w.tv.y = w.tv.z * inv_t;
    w.tv.x = load<Acc>(w.t[w.label]) * inv_t;
  }
  w.raw_ms = w.raw_mt = ninf<Acc>();
  for (int i = 0; i < w.nr; ++i) max_range<Acc>(w.s, w.t, w.rb[i], w.re[i], w.raw_ms, w.raw_mt);
}

/// Stage 2: pass 2 (statistics), the row's loss and diagnostics, and JSD's mixture pass.
template <class Policy, class Acc, class S, class T, class G>
DISTILL_FORCEINLINE void row_stage_stats(row_work<Policy, Acc, S, T, G>& w, const cpu_call<Acc>& call,
                                         const typename Policy::params& prm, index_t cols) {
  const Acc inv_t = call.sc.inv_temperature;
  const Acc mx = w.raw_mt * inv_t, my = w.raw_ms * inv_t;
  // an all -inf range has no maximum; 0 keeps e^{-inf - 0} = 0 instead of NaN
  w.mx_e = mx == ninf<Acc>() ? Acc(0) : mx;
  w.my_e = my == ninf<Acc>() ? Acc(0) : my;
  w.mz_e = w.raw_ms == ninf<Acc>() ? Acc(0) : w.raw_ms;
  w.need_z = call.hard && call.sc.temperature != Acc(1);

  range_sums<Acc> sums;
  auto run_stats = [&](auto a_, auto tx_, auto z_) {
    for (int i = 0; i < w.nr; ++i) {
      const range_sums<Acc> r =
          stats_range<Acc, decltype(a_)::value, decltype(tx_)::value, Policy::needs_b, decltype(z_)::value>(
              w.s, w.t, w.rb[i], w.re[i], inv_t, w.mx_e, w.my_e, w.mz_e, w.et_buf, w.es_buf, w.next_s, w.next_t);
      sums.st += r.st, sums.ss += r.ss, sums.a += r.a, sums.tx += r.tx, sums.b += r.b, sums.sz += r.sz;
    }
  };
  with_bool(Policy::needs_a || call.want_diag, [&](auto a_) {
    with_bool(Policy::needs_tx || call.want_diag,
              [&](auto tx_) { with_bool(w.need_z, [&](auto z_) { run_stats(a_, tx_, z_); }); });
  });

  dense_state<Acc> st = dense_state<Acc>::empty();
  st.mt = mx, st.st = sums.st, st.a = sums.a, st.tx = sums.tx;
  st.ms = my, st.ss = sums.ss, st.b = sums.b;
  st.mz = w.raw_ms, st.sz = sums.sz;
  // the full row (DKD: the target class merged back) for diagnostics and the hard term
  dense_state<Acc> full = st;
  if (w.tgt >= 0) {
    dense_state<Acc> one = dense_state<Acc>::empty();
    one.add(w.tv.x, w.tv.y, w.tv.z, static_cast<std::int32_t>(w.tgt), w.need_z);
    full.merge(one);
  }
  if (call.want_diag) {
    full.it = first_argmax<Acc>(w.t, cols);
    full.is = first_argmax<Acc>(w.s, cols);
  }
  w.out.masked = full.mt == ninf<Acc>() || full.ms == ninf<Acc>();

  w.row = Policy::finalize(st, prm, w.tv);
  // p_k = e^{x_k - max x} * pf; when the policy normalises by the full row, pf = 1 / st
  // (a division has a far shorter latency than an exponential, which matters on short rows)
  if constexpr (Policy::normalises_full_rows) {
    w.pf = Acc(1) / sums.st;
    w.qf = Acc(1) / sums.ss;
  } else {
    w.pf = w.row.lpn == ninf<Acc>() ? Acc(0) : st_exp(w.mx_e - w.row.lpn);
    w.qf = w.row.lqn == ninf<Acc>() ? Acc(0) : st_exp(w.my_e - w.row.lqn);
  }
  if constexpr (Policy::has_mixture_pass) {
    Acc pa = 0, qb = 0;
    for (int i = 0; i < w.nr; ++i)
      mixture_range<Policy, Acc>(w.row, prm, w.s, w.t, w.rb[i], w.re[i], inv_t, w.et_buf, w.es_buf, w.pf, w.qf, pa, qb);
    Policy::finish_mixture(w.row, prm, pa, qb);
  }

  w.lz = Acc(0);
  Acc hard_ce = Acc(0);
  if (call.hard && w.label >= 0) {
    w.lz = w.need_z ? full.raw_student_lse() : full.student_lse();
    hard_ce = w.lz - w.tv.z;
  }
  const Acc soft_loss = call.soft_weight * call.sc.c * w.row.f;
  const Acc hard_loss = call.hard_weight != Acc(0) ? call.hard_weight * hard_ce : Acc(0);
  w.out.loss = w.weight * (soft_loss + hard_loss);
  w.out.hard_ce = hard_ce;
  if (call.want_diag) w.out.diag = diagnostics_of(full);
}

/// Stage 3: pass 3 (gradient), the label's class, and the temperature-gradient term.
template <class Policy, class Acc, class S, class T, class G>
DISTILL_FORCEINLINE void row_stage_grad(row_work<Policy, Acc, S, T, G>& w, const cpu_call<Acc>& call,
                                        const typename Policy::params& prm) {
  const Acc inv_t = call.sc.inv_temperature;
  grad_scalars<Acc> gk;
  gk.inv_t = inv_t, gk.pf = w.pf, gk.qf = w.qf;
  gk.coef_soft = call.grad_scale * w.weight * call.soft_weight * call.sc.c * inv_t * call.inv_divisor;
  gk.coef_hard = call.grad_scale * w.weight * call.hard_weight * call.inv_divisor;
  gk.lz = w.lz;
  const bool use_hard = call.hard_weight != Acc(0);
  // softmax(z^s) is q itself when T == 1 and q is the full-row softmax
  const bool hard_from_q = call.sc.temperature == Acc(1) && !Policy::uses_target;
  // the label's class is computed again below, with its -1; keep its old gradient for that
  const bool label_in_rows = use_hard && w.label >= 0 && !Policy::uses_target;
  const Acc old_label = label_in_rows && call.accumulate ? load<Acc>(w.g[w.label]) : Acc(0);
  Acc dt_sum = Acc(0);
  auto run_grad = [&](auto hard_c, auto dt_c, auto acc_c) {
    constexpr hard_mode H = decltype(hard_c)::value;
    constexpr bool DT = decltype(dt_c)::value, Accum = decltype(acc_c)::value;
    for (int i = 0; i < w.nr; ++i)
      dt_sum += grad_range<Policy, Acc, H, DT, Accum>(w.row, prm, w.s, w.t, w.g, w.rb[i], w.re[i], w.et_buf, w.es_buf, gk);
    if (label_in_rows) {  // the same class again, scalar, minus the one-hot label
      const index_t c = static_cast<index_t>(w.label);
      Acc no_dt = Acc(0);
      const Acc v = class_grad<Policy, H, false, Accum>(w.row, prm, gk, w.tv.z, load<Acc>(w.t[c]), w.et_buf[c],
                                                        w.es_buf[c], old_label, no_dt);
      w.g[c] = store<G>(v - gk.coef_hard);
    }
  };
  auto with_hard = [&](auto&& f) {
    if (!use_hard) return f(std::integral_constant<hard_mode, hard_mode::none>{});
    if (hard_from_q) return f(std::integral_constant<hard_mode, hard_mode::from_q>{});
    return f(std::integral_constant<hard_mode, hard_mode::from_exp>{});
  };
  with_hard([&](auto hard_c) {
    with_bool(call.want_dt, [&](auto dt_c) { with_bool(call.accumulate, [&](auto acc_c) { run_grad(hard_c, dt_c, acc_c); }); });
  });
  if constexpr (Policy::uses_target) {  // DKD's target class
    const Acc gs = Policy::grad_student_target(w.row, prm);
    Acc v = gk.coef_soft * gs;
    if (use_hard) v += gk.coef_hard * (st_exp(w.tv.z - w.lz) - Acc(1));
    if (call.accumulate) v += load<Acc>(w.g[w.tgt]);
    w.g[w.tgt] = store<G>(v);
    if (call.want_dt) {
      const Acc gt = Policy::grad_teacher_target(w.row, prm);
      dt_sum += keep_or_zero(gs != Acc(0), gs * w.tv.y) + keep_or_zero(gt != Acc(0), gt * w.tv.x);
    }
  }
  if (call.want_dt) w.out.dt = w.weight * call.soft_weight * (call.sc.dc * w.row.f - call.sc.c * inv_t * dt_sum);
}

/// Rows of at most `small_row_classes` classes go through `rows_in_lanes`.
inline constexpr index_t small_row_classes = 16;

/// The policy rows of the lanes as one row of batches (a policy row is a struct of Acc fields
/// only, `row_t<Acc>`; lanes past m hold zeros).
template <class Policy, class Acc>
auto rows_to_lanes(const typename Policy::row* rows, int m) noexcept {
  using V = simd::batch<Acc>;
  using row_v = typename Policy::template row_t<V>;
  using row_s = typename Policy::row;
  constexpr int L = simd::width<Acc>;
  constexpr int F = static_cast<int>(sizeof(row_s) / sizeof(Acc));
  static_assert(sizeof(row_s) == F * sizeof(Acc) && sizeof(row_v) == F * sizeof(V), "a policy row holds Acc fields only");
  static_assert(std::is_trivially_copyable_v<row_s> && std::is_trivially_copyable_v<row_v>);
  alignas(64) Acc field[F][L] = {};
  for (int j = 0; j < m; ++j) {
    Acc f[F];
    std::memcpy(f, &rows[j], sizeof(row_s));
    for (int i = 0; i < F; ++i) field[i][j] = f[i];
  }
  V lanes[F];
  for (int i = 0; i < F; ++i) lanes[i] = V::load_aligned(field[i]);
  row_v out;
  std::memcpy(static_cast<void*>(&out), lanes, sizeof(row_v));
  return out;
}

/// Up to simd::width<Acc> short contiguous rows, one row per lane ("rows in lanes"): each class
/// is one batch operation across the rows, so the per-row dependency chain (max -> sums -> logs
/// -> gradient) is paid once per group of rows instead of once per row. The per-row
/// finalisation runs lane by lane; everything per class is the same policy code as the long
/// rows, on batches of rows.
template <class Policy, class Acc, class S, class T, class G>
void small_rows_in_lanes(const cpu_call<Acc>& call, const typename Policy::params& prm, const S* const* srow,
                         const T* const* trow, G* const* grow, index_t cols, const std::int64_t* labels,
                         const Acc* weights, int m, row_result<Acc>* out) {
  using V = simd::batch<Acc>;
  constexpr int L = simd::width<Acc>;
  constexpr int K = static_cast<int>(small_row_classes);
  const int nc = static_cast<int>(cols);
  const Acc inv_t = call.sc.inv_temperature;
  // [class][lane]: the rows transposed in (unused lanes: -inf rows, never stored)
  alignas(64) Acc zs[K][L], zt[K][L], et[K][L], es[K][L];
  std::int64_t label[L];
  index_t tgt[L];
  target_values<Acc> tv[L];
  for (int j = 0; j < L; ++j) {
    label[j] = j < m ? labels[j] : -1;
    tgt[j] = (Policy::uses_target && j < m) ? static_cast<index_t>(label[j]) : index_t(-1);
    tv[j] = {};
  }
  for (int k = 0; k < nc; ++k)
    for (int j = 0; j < L; ++j) {
      zs[k][j] = j < m ? load<Acc>(srow[j][k]) : ninf<Acc>();
      zt[k][j] = j < m ? load<Acc>(trow[j][k]) : ninf<Acc>();
    }
  // first argmax of the raw logits over the whole row (diagnostics), before DKD masks its target
  std::int32_t it[L], is[L];
  for (int j = 0; j < L; ++j) it[j] = is[j] = -1;
  if (call.want_diag)
    for (int j = 0; j < m; ++j) it[j] = first_argmax<Acc>(trow[j], cols), is[j] = first_argmax<Acc>(srow[j], cols);
  for (int j = 0; j < m; ++j)
    if (label[j] >= 0) {  // the label column, kept apart (DKD removes its target from the sums)
      tv[j].z = zs[label[j]][j];
      tv[j].y = tv[j].z * inv_t;
      tv[j].x = zt[label[j]][j] * inv_t;
      if (Policy::uses_target) zs[label[j]][j] = zt[label[j]][j] = ninf<Acc>();
    }

  // maxima (DKD: over the non-target classes)
  V vmt(ninf<Acc>()), vms(ninf<Acc>());
  for (int k = 0; k < nc; ++k) {
    vmt = simd::max_skip_nan(vmt, V::load_aligned(zt[k]));
    vms = simd::max_skip_nan(vms, V::load_aligned(zs[k]));
  }
  const V vinf(ninf<Acc>()), vzero(Acc(0));
  const V mx = select(vmt == vinf, vzero, vmt * inv_t), my = select(vms == vinf, vzero, vms * inv_t);
  const V mz = select(vms == vinf, vzero, vms);
  // sums
  const bool need_z = call.hard && call.sc.temperature != Acc(1);
  V vst(Acc(0)), vss(Acc(0)), vsa(Acc(0)), vstx(Acc(0)), vsb(Acc(0)), vsz(Acc(0));
  for (int k = 0; k < nc; ++k) {
    const V x = V::load_aligned(zt[k]) * inv_t, y = V::load_aligned(zs[k]) * inv_t;
    const V e1 = fast_exp(x - mx), e2 = fast_exp(y - my);
    e1.store_aligned(et[k]);
    e2.store_aligned(es[k]);
    vst += e1;
    vss += e2;
    vsa += keep_nonzero(e1, e1 * (x - y));
    vstx += keep_nonzero(e1, e1 * (x - mx));
    vsb += keep_nonzero(e2, e2 * (y - x));
    if (need_z) vsz += fast_exp(V::load_aligned(zs[k]) - mz);
  }
  alignas(64) Acc rmt[L], rms[L], mxs[L], mys[L], st[L], ss[L], sa[L], stx[L], sb[L], sz[L];
  vmt.store_aligned(rmt), vms.store_aligned(rms), mx.store_aligned(mxs), my.store_aligned(mys);
  vst.store_aligned(st), vss.store_aligned(ss), vsa.store_aligned(sa);
  vstx.store_aligned(stx), vsb.store_aligned(sb), vsz.store_aligned(sz);

  // per row: finalisation and the row's scalars
  typename Policy::row row[L] = {};
  alignas(64) Acc pf[L] = {}, qf[L] = {}, lz[L] = {}, coef_soft[L] = {}, coef_hard[L] = {};
  for (int j = 0; j < m; ++j) {
    dense_state<Acc> s = dense_state<Acc>::empty();
    s.mt = rmt[j] * inv_t, s.st = st[j], s.a = sa[j], s.tx = stx[j];
    s.ms = rms[j] * inv_t, s.ss = ss[j], s.b = sb[j];
    s.mz = rms[j], s.sz = sz[j];
    dense_state<Acc> full = s;
    if (tgt[j] >= 0) {
      dense_state<Acc> one = dense_state<Acc>::empty();
      one.add(tv[j].x, tv[j].y, tv[j].z, static_cast<std::int32_t>(tgt[j]), need_z);
      full.merge(one);
    }
    full.it = it[j], full.is = is[j];
    out[j].masked = full.mt == ninf<Acc>() || full.ms == ninf<Acc>();
    row[j] = Policy::finalize(s, prm, tv[j]);
    if constexpr (Policy::normalises_full_rows) {
      pf[j] = Acc(1) / st[j];
      qf[j] = Acc(1) / ss[j];
    } else {
      pf[j] = row[j].lpn == ninf<Acc>() ? Acc(0) : st_exp(mxs[j] - row[j].lpn);
      qf[j] = row[j].lqn == ninf<Acc>() ? Acc(0) : st_exp(mys[j] - row[j].lqn);
    }
    out[j].hard_ce = Acc(0);
    if (call.hard && label[j] >= 0) {
      lz[j] = need_z ? full.raw_student_lse() : full.student_lse();
      out[j].hard_ce = lz[j] - tv[j].z;
    }
    if (call.want_diag) out[j].diag = diagnostics_of(full);
    coef_soft[j] = call.grad_scale * weights[j] * call.soft_weight * call.sc.c * inv_t * call.inv_divisor;
    coef_hard[j] = call.grad_scale * weights[j] * call.hard_weight * call.inv_divisor;
  }
  grad_scalars<V> gk;
  gk.inv_t = V(inv_t), gk.pf = V::load_aligned(pf), gk.qf = V::load_aligned(qf), gk.lz = V::load_aligned(lz);
  gk.coef_soft = V::load_aligned(coef_soft), gk.coef_hard = V::load_aligned(coef_hard);
  if constexpr (Policy::has_mixture_pass) {
    const auto lanes = rows_to_lanes<Policy, Acc>(row, m);
    V pa(Acc(0)), qb(Acc(0));
    for (int k = 0; k < nc; ++k) {
      V u, v;
      Policy::mixture_terms(lanes, prm, V::load_aligned(zt[k]) * inv_t, V::load_aligned(zs[k]) * inv_t,
                            V::load_aligned(et[k]) * gk.pf, V::load_aligned(es[k]) * gk.qf, u, v);
      pa += u;
      qb += v;
    }
    alignas(64) Acc pas[L], qbs[L];
    pa.store_aligned(pas), qb.store_aligned(qbs);
    for (int j = 0; j < m; ++j) Policy::finish_mixture(row[j], prm, pas[j], qbs[j]);
  }
  for (int j = 0; j < m; ++j) {
    const Acc hard = call.hard_weight != Acc(0) ? call.hard_weight * out[j].hard_ce : Acc(0);
    out[j].loss = weights[j] * (call.soft_weight * call.sc.c * row[j].f + hard);
  }
  if (!call.want_grad) return;

  // gradient, class by class across the rows, then transposed back
  const bool use_hard = call.hard_weight != Acc(0);
  const auto lanes = rows_to_lanes<Policy, Acc>(row, m);
  alignas(64) Acc label_f[L], gv[K][L], dts[L];
  for (int j = 0; j < L; ++j) label_f[j] = static_cast<Acc>(label[j]);  // small class indices: exact
  const V labels_v = V::load_aligned(label_f);
  V dt(Acc(0));
  auto grad_classes = [&](auto hard_c, auto dt_c) {
    constexpr hard_mode H = decltype(hard_c)::value ? hard_mode::from_exp : hard_mode::none;
    constexpr bool D = decltype(dt_c)::value;
    for (int k = 0; k < nc; ++k) {
      V old(Acc(0));
      if (call.accumulate) {
        alignas(64) Acc o[L] = {};
        for (int j = 0; j < m; ++j) o[j] = load<Acc>(grow[j][k]);
        old = V::load_aligned(o);
      }
      V v = class_grad<Policy, H, D, true>(lanes, prm, gk, V::load_aligned(zs[k]), V::load_aligned(zt[k]),
                                           V::load_aligned(et[k]), V::load_aligned(es[k]), old, dt);
      if constexpr (H != hard_mode::none) v -= select(labels_v == V(static_cast<Acc>(k)), gk.coef_hard, vzero);
      v.store_aligned(gv[k]);
    }
  };
  with_bool(use_hard, [&](auto h) { with_bool(call.want_dt, [&](auto d) { grad_classes(h, d); }); });
  dt.store_aligned(dts);
  if constexpr (Policy::uses_target) {  // DKD's target classes (their lanes above held -inf logits)
    for (int j = 0; j < m; ++j) {
      if (tgt[j] < 0) continue;
      const Acc gs = Policy::grad_student_target(row[j], prm);
      Acc v = coef_soft[j] * gs;
      if (use_hard) v += coef_hard[j] * (st_exp(tv[j].z - lz[j]) - Acc(1));
      if (call.accumulate) v += load<Acc>(grow[j][tgt[j]]);
      gv[tgt[j]][j] = v;
      if (call.want_dt) {
        const Acc gt = Policy::grad_teacher_target(row[j], prm);
        dts[j] += keep_or_zero(gs != Acc(0), gs * tv[j].y) + keep_or_zero(gt != Acc(0), gt * tv[j].x);
      }
    }
  }
  for (int j = 0; j < m; ++j) {
    for (int k = 0; k < nc; ++k) grow[j][k] = store<G>(gv[k][j]);
    if (call.want_dt) out[j].dt = weights[j] * call.soft_weight * (call.sc.dc * row[j].f - call.sc.c * inv_t * dts[j]);
  }
}

/// Driver for rows [r0, r1) of `small_row_classes` or fewer contiguous classes.
template <class Policy, class Acc, class S, class T, class G>
void rows_in_lanes(const cpu_call<Acc>& call, const typename Policy::params& prm, const host_view<const S, 2>& student,
                   const host_view<const T, 2>& teacher, const host_view<G, 2>& grad, row_sink<Acc, G>& sink,
                   index_t r0, index_t r1) {
  constexpr int L = simd::width<Acc>;
  const S* sp[L];
  const T* tp[L];
  G* gp[L];
  std::int64_t lab[L];
  Acc wts[L];
  index_t rid[L];
  row_result<Acc> outs[L];
  index_t r = r0;
  while (r < r1) {
    int m = 0;
    for (; r < r1 && m < L; ++r) {
      if (call.ignored(r)) {
        sink.put_ignored(r);
        continue;
      }
      sp[m] = student.row(r), tp[m] = teacher.row(r), gp[m] = call.want_grad ? grad.row(r) : nullptr;
      lab[m] = call.label(r), wts[m] = call.weight(r), rid[m] = r;
      outs[m] = {};
      ++m;
    }
    if (m == 0) continue;
    small_rows_in_lanes<Policy, Acc>(call, prm, sp, tp, gp, student.extent(1), lab, wts, m, outs);
    for (int j = 0; j < m; ++j) sink.put(rid[j], outs[j]);
  }
}

/// Driver for contiguous rows [r0, r1): short rows (up to 64 classes) stage by stage a few at
/// a time, so the core overlaps their dependency chains; long rows one at a time, so each
/// stays in L2 between its passes, with the next one prefetched.
template <class Policy, class Acc, class S, class T, class G>
void contiguous_rows(const cpu_call<Acc>& call, const typename Policy::params& prm,
                     const host_view<const S, 2>& student, const host_view<const T, 2>& teacher,
                     const host_view<G, 2>& grad, row_sink<Acc, G>& sink, index_t r0, index_t r1) {
  constexpr index_t max_batch = 8;
  const index_t cols = student.extent(1);
  const index_t batch = cols <= 64 ? max_batch : 1;
  std::vector<Acc> scratch(static_cast<std::size_t>(cols) * 2 * batch);
  using work = row_work<Policy, Acc, S, T, G>;
  work w[max_batch];
  for (index_t rb = r0; rb < r1; rb += batch) {
    const index_t re = std::min(r1, rb + batch);
    int m = 0;
    for (index_t r = rb; r < re; ++r) {
      if (call.ignored(r)) {
        sink.put_ignored(r);
        continue;
      }
      work& x = w[m];
      x.s = student.row(r);
      x.t = teacher.row(r);
      x.g = call.want_grad ? grad.row(r) : nullptr;  // forward only: stage 3 does not run
      const bool prefetch = batch == 1 && r + 1 < r1;
      x.next_s = prefetch ? student.row(r + 1) : x.s;
      x.next_t = prefetch ? teacher.row(r + 1) : x.t;
      x.et_buf = scratch.data() + 2 * m * cols;
      x.es_buf = x.et_buf + cols;
      x.label = call.label(r);
      x.weight = call.weight(r);
      x.out = {};
      x.tv = {};
      ++m;
    }
    for (int i = 0; i < m; ++i) row_stage_max(w[i], call, cols);
    for (int i = 0; i < m; ++i) row_stage_stats(w[i], call, prm, cols);
    if (call.want_grad)
      for (int i = 0; i < m; ++i) row_stage_grad(w[i], call, prm);
    for (index_t r = rb, i = 0; r < re; ++r)
      if (!call.ignored(r)) sink.put(r, w[i++].out);
  }
}

/// Driver for rows [r0, r1) of any layout: each row is copied into contiguous scratch and its
/// gradient scattered back.
template <class Policy, class Acc, class S, class T, class G>
void strided_rows(const cpu_call<Acc>& call, const typename Policy::params& prm, const host_view<const S, 2>& student,
                  const host_view<const T, 2>& teacher, const host_view<G, 2>& grad, row_sink<Acc, G>& sink,
                  index_t r0, index_t r1) {
  const index_t cols = student.extent(1);
  std::vector<Acc> scratch(static_cast<std::size_t>(cols) * 5);
  row_work<Policy, Acc, Acc, Acc, Acc> x;
  x.et_buf = scratch.data();
  x.es_buf = x.et_buf + cols;
  Acc* ss = x.es_buf + cols;
  Acc* ts = ss + cols;
  Acc* gs = ts + cols;
  for (index_t r = r0; r < r1; ++r) {
    if (call.ignored(r)) {
      sink.put_ignored(r);
      continue;
    }
    gather_row(student, r, ss);
    gather_row(teacher, r, ts);
    if (call.want_grad && call.accumulate) gather_row(grad, r, gs);
    x.s = ss, x.t = ts, x.g = gs;
    x.next_s = ss, x.next_t = ts;
    x.label = call.label(r);
    x.weight = call.weight(r);
    x.out = {};
    x.tv = {};
    row_stage_max(x, call, cols);
    row_stage_stats(x, call, prm, cols);
    if (call.want_grad) {
      row_stage_grad(x, call, prm);
      scatter_row(grad, r, gs);
    }
    sink.put(r, x.out);
  }
}

/// The whole batch: validation is done by the caller; this computes and writes every output.
template <class Policy, class TS, class TT, class G, class Acc>
status dense_cpu(const char* fn, const cpu& ctx, const host_view<TS, 2>& student, const host_view<TT, 2>& teacher,
                 const host_view<Acc, 1>& loss, const host_view<G, 2>& grad, const soft_target_options& opt,
                 const typename Policy::params& prm, const soft_target_extras<Acc, host_space>& ex, bool want_grad) {
#if defined(__CUDA_ARCH__)
  // nvcc's device pass parses host code without compiling it; the SIMD batches below must not be
  // instantiated there under device rules (DISTILL_HOST_DEVICE per-class math on batches).
  return {};
#else
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  const host_view<const S, 2> s = student;
  const host_view<const T, 2> t = teacher;
  const index_t n = student.extent(0), cols = student.extent(1);
  const cpu_call<Acc> call = make_cpu_call(opt, ex, n, want_grad);
  row_sink<Acc, G> sink(call, ex, grad, n, cols);
  const bool contiguous = student.inner_contiguous() && teacher.inner_contiguous() && (!want_grad || grad.inner_contiguous());
  parallel_for(ctx, n, [&](index_t r0, index_t r1) {
    if (contiguous && cols <= small_row_classes) rows_in_lanes<Policy>(call, prm, s, t, grad, sink, r0, r1);
    else if (contiguous) contiguous_rows<Policy>(call, prm, s, t, grad, sink, r0, r1);
    else strided_rows<Policy>(call, prm, s, t, grad, sink, r0, r1);
  }, min_rows_per_thread(cols));
  const index_t bad = sink.finish(loss, opt.reduction);
  if (bad >= 0) {
    bool teacher_masked = true;
    for (index_t k = 0; k < cols && teacher_masked; ++k) teacher_masked = load<Acc>(teacher(bad, k)) == ninf<Acc>();
    return fail(errc::non_finite, fn,
                std::string("row ") + std::to_string(bad) + " of '" + (teacher_masked ? "teacher" : "student") +
                    "' is -inf in every class (no distribution); its loss and gradient are NaN");
  }
  return {};
#endif
}

/// Validation + dispatch used by every dense primitive's CPU entry points.
template <class Policy, class TS, class TT, class G, class Acc>
status dense_cpu_entry(const char* fn, const cpu& ctx, const host_view<TS, 2>& student, const host_view<TT, 2>& teacher,
                       const host_view<Acc, 1>& loss, bool loss_required, const host_view<G, 2>& grad, bool want_grad,
                       const soft_target_options& opt, const typename Policy::params& prm,
                       const soft_target_extras<Acc, host_space>& ex) {
  static_assert(is_supported_float_v<TS> && is_supported_float_v<TT>, "soft-target losses take float, double, float16 or bfloat16 logits");
  static_assert(std::is_same_v<Acc, accum_t<TS>>, "the loss and extras use the student's accumulation type");
  DISTILL_TRY(validate_soft_target(fn, student, teacher, true, loss, loss_required, grad, want_grad, opt, ex,
                                   Policy::uses_target, false));
  DISTILL_TRY(validate_host_values(fn, student, teacher, opt, ex));
  DISTILL_TRY(Policy::validate(fn, student.extent(1), prm));
  return dense_cpu<Policy>(fn, ctx, student, teacher, loss, grad, opt, prm, ex, want_grad);
}

}  // namespace distill::soft_target_detail
