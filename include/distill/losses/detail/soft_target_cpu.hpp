// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CPU path shared by the dense soft-target losses (forward KL, reverse KL, JSD, soft CE, DKD).
//! A primitive contributes a *policy* (its row finalisation and its per-class gradients, all
//! DISTILL_HOST_DEVICE so the CUDA kernels use the very same formulas); this file runs it.
//!
//! Per row, over data that stays in L2 after the first touch (a 32000-class float row of
//! student + teacher is 256 KiB; the per-thread scratch another 256 KiB):
//!   pass 1  max of the raw teacher and student logits       (reads the inputs from memory)
//!   pass 2  e^{x - max x}, e^{y - max y} into scratch + the row sums the policy needs
//!   [pass 2b, JSD only: the mixture sums, which need both log-sum-exps]
//!   pass 3  gradient from the stored exponentials           (writes the gradient once)
//! Each pass is a loop over blocks of W = 64 / sizeof(Acc) lanes with lane-wise accumulators,
//! which GCC/Clang vectorise (a float sum reduction would not be, without -ffast-math); the
//! last partial block is padded with -inf (zero probability), so short rows vectorise too.
//! Sums are therefore formed in a fixed order per row: results are bitwise reproducible and do
//! not depend on the thread count (rows are independent; the batch sum runs in row order).
//!
//! Rows of at most 16 classes take `dense_small_rows_cpu` instead ("rows in lanes"); long rows
//! prefetch the next row during pass 2 and write float gradients with streaming stores.
//!
//! In place: pass 3 reads the student logit of class k before it writes the gradient of class
//! k and nothing after pass 3 reads the student, so `grad_student` may be `student` itself.
//! Rows whose views are not unit-stride along the classes are first copied into contiguous
//! scratch (and the gradient scattered back), so any layout works, more slowly.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "distill/core/parallel.hpp"
#include "distill/losses/soft_target_common.hpp"

// Lambdas in the lane loops must inline for the loops to vectorise.
#if defined(__GNUC__)
#define DISTILL_ST_LAMBDA_INLINE __attribute__((always_inline))
#else
#define DISTILL_ST_LAMBDA_INLINE
#endif

namespace distill::soft_target_detail {

template <class Acc>
inline constexpr int lanes_v = 64 / static_cast<int>(sizeof(Acc));

/// Which row sums pass 2 accumulates (the rest stay 0).
struct stats_fields {
  bool a, tx, b, z;
};

template <class Acc>
struct range_sums {
  Acc st = 0, ss = 0, a = 0, tx = 0, b = 0, sz = 0;
};

/// Copy `n` < W elements of `src` (converted to Acc) into a W-lane block, the rest `fill`.
/// The float AVX-512 case uses one masked load and one full-width store: building the block
/// from scalar stores would stall the following vector load (store-to-load forwarding fails),
/// which dominates short rows.
#if defined(__AVX512F__)
inline constexpr bool has_avx512 = true;
#else
inline constexpr bool has_avx512 = false;
#endif
template <class Acc, int W, class S>
DISTILL_FORCEINLINE void load_partial(const S* src, int n, Acc (&dst)[W], Acc fill) noexcept {
  if constexpr (has_avx512 && std::is_same_v<S, float> && std::is_same_v<Acc, float> && W == 16) {
#if defined(__AVX512F__)
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    _mm512_storeu_ps(dst, _mm512_mask_loadu_ps(_mm512_set1_ps(fill), m, src));
#endif
  } else {
    for (int j = 0; j < W; ++j) dst[j] = j < n ? load<Acc>(src[j]) : fill;
  }
}
/// Store the first `n` < W lanes of a block.
template <class G, class Acc, int W>
DISTILL_FORCEINLINE void store_partial(G* dst, int n, const Acc (&src)[W]) noexcept {
  if constexpr (has_avx512 && std::is_same_v<G, float> && std::is_same_v<Acc, float> && W == 16) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(dst, static_cast<__mmask16>((1u << n) - 1u), _mm512_loadu_ps(src));
#endif
  } else {
    for (int j = 0; j < n; ++j) dst[j] = store<G>(src[j]);
  }
}

/// Pairwise (tree) sum of the lanes: a fixed order, and log2(W) dependent steps instead of W.
/// Written as a compile-time recursion so every step is straight-line code (a loop here is
/// compiled into stack round trips that stall store-to-load forwarding).
template <class Acc, int W>
DISTILL_FORCEINLINE Acc lane_sum(const Acc (&v)[W]) noexcept {
  if constexpr (W == 1) {
    return v[0];
  } else {
    Acc h[W / 2];
    for (int j = 0; j < W / 2; ++j) h[j] = v[j] + v[j + W / 2];
    return lane_sum(h);
  }
}
/// Pairwise maximum of the lanes (NaN lanes are skipped, as in the loops).
template <class Acc, int W>
DISTILL_FORCEINLINE Acc lane_max(const Acc (&v)[W]) noexcept {
  if constexpr (W == 1) {
    return v[0];
  } else {
    Acc h[W / 2];
    for (int j = 0; j < W / 2; ++j) h[j] = v[j + W / 2] > v[j] ? v[j + W / 2] : v[j];
    return lane_max(h);
  }
}

/// Pass 1: maxima of the raw logits over [b, e). NaN is skipped here and surfaces in pass 2.
template <class Acc, class S, class T>
void max_range(const S* s, const T* t, index_t b, index_t e, Acc& max_s, Acc& max_t) noexcept {
  constexpr int W = lanes_v<Acc>;
  Acc ms[W], mt[W];
  for (int j = 0; j < W; ++j) ms[j] = mt[j] = ninf<Acc>();
  index_t k = b;
  for (; k + W <= e; k += W) {
    for (int j = 0; j < W; ++j) {
      const Acc vs = load<Acc>(s[k + j]), vt = load<Acc>(t[k + j]);
      ms[j] = vs > ms[j] ? vs : ms[j];
      mt[j] = vt > mt[j] ? vt : mt[j];
    }
  }
  if (k < e) {
    Acc ps[W], pt[W];
    load_partial(s + k, static_cast<int>(e - k), ps, ninf<Acc>());
    load_partial(t + k, static_cast<int>(e - k), pt, ninf<Acc>());
    for (int j = 0; j < W; ++j) {
      ms[j] = ps[j] > ms[j] ? ps[j] : ms[j];
      mt[j] = pt[j] > mt[j] ? pt[j] : mt[j];
    }
  }
  const Acc a = lane_max(ms), c = lane_max(mt);
  max_s = a > max_s ? a : max_s;
  max_t = c > max_t ? c : max_t;
}

/// Pass 2 over [b, e): stores e^{x - mx} and e^{y - my} and accumulates the requested sums.
/// mx, my, mz must be finite or -inf-free here (the caller substitutes 0 for an all -inf max).
/// `next_s`, `next_t`: the next row's logits, prefetched into L2 one cache line per block while
/// this compute-bound pass runs, so that the next row's pass 1 reads L2 instead of memory (pass
/// the current row to prefetch nothing new).
template <class Acc, bool A, bool TX, bool B, bool Z, class S, class T>
range_sums<Acc> stats_range(const S* s, const T* t, index_t b, index_t e, Acc inv_t, Acc mx, Acc my, Acc mz,
                            Acc* et_buf, Acc* es_buf, const S* next_s, const T* next_t) noexcept {
  constexpr int W = lanes_v<Acc>;
  Acc st[W] = {}, ss[W] = {}, sa[W] = {}, stx[W] = {}, sb[W] = {}, sz[W] = {};
  auto lane = [&](int j, Acc zs, Acc zt, Acc& et_out, Acc& es_out) DISTILL_ST_LAMBDA_INLINE {
    const Acc x = zt * inv_t, y = zs * inv_t;
    const Acc et = fast_exp(x - mx), es = fast_exp(y - my);
    et_out = et;
    es_out = es;
    st[j] += et;
    ss[j] += es;
    if constexpr (A) sa[j] += keep_or_zero(et != Acc(0), et * (x - y));
    if constexpr (TX) stx[j] += keep_or_zero(et != Acc(0), et * (x - mx));
    if constexpr (B) sb[j] += keep_or_zero(es != Acc(0), es * (y - x));
    if constexpr (Z) sz[j] += fast_exp(zs - mz);
  };
  index_t k = b;
  for (; k + W <= e; k += W) {
#if defined(__GNUC__)
    __builtin_prefetch(next_s + k, 0, 2);
    __builtin_prefetch(next_t + k, 0, 2);
#endif
    for (int j = 0; j < W; ++j) lane(j, load<Acc>(s[k + j]), load<Acc>(t[k + j]), et_buf[k + j], es_buf[k + j]);
  }
  if (k < e) {  // padded last block: -inf lanes carry zero probability
    Acc ps[W], pt[W], pe[W], pq[W];
    const int n = static_cast<int>(e - k);
    load_partial(s + k, n, ps, ninf<Acc>());
    load_partial(t + k, n, pt, ninf<Acc>());
    for (int j = 0; j < W; ++j) lane(j, ps[j], pt[j], pe[j], pq[j]);
    store_partial(et_buf + k, n, pe);
    store_partial(es_buf + k, n, pq);
  }
  range_sums<Acc> r;
  r.st = lane_sum(st);
  r.ss = lane_sum(ss);
  if constexpr (A) r.a = lane_sum(sa);
  if constexpr (TX) r.tx = lane_sum(stx);
  if constexpr (B) r.b = lane_sum(sb);
  if constexpr (Z) r.sz = lane_sum(sz);
  return r;
}

/// Pass 2b (JSD): sums of the policy's mixture terms over [b, e).
template <class Policy, class Acc, class S, class T>
void mixture_range(const typename Policy::row& row, const typename Policy::params& prm, const S* s, const T* t,
                   index_t b, index_t e, Acc inv_t, const Acc* et_buf, const Acc* es_buf, Acc pf, Acc qf, Acc& pa_out,
                   Acc& qb_out) noexcept {
  constexpr int W = lanes_v<Acc>;
  Acc pa[W] = {}, qb[W] = {};
  index_t k = b;
  for (; k + W <= e; k += W) {
    for (int j = 0; j < W; ++j) {
      Acc u, v;
      Policy::mixture_terms(row, prm, load<Acc>(t[k + j]) * inv_t, load<Acc>(s[k + j]) * inv_t, et_buf[k + j] * pf,
                            es_buf[k + j] * qf, u, v);
      pa[j] += u;
      qb[j] += v;
    }
  }
  for (; k < e; ++k) {
    Acc u, v;
    Policy::mixture_terms(row, prm, load<Acc>(t[k]) * inv_t, load<Acc>(s[k]) * inv_t, et_buf[k] * pf, es_buf[k] * qf, u, v);
    pa[0] += u;
    qb[0] += v;
  }
  pa_out += lane_sum(pa);
  qb_out += lane_sum(qb);
}

/// How pass 3 forms softmax(z^s) for the hard-label term.
enum class hard_mode { none, from_q, from_exp };

/// Everything pass 3 needs besides the data pointers.
template <class Acc>
struct grad_scalars {
  Acc inv_t, pf, qf;         // p = e^{x - mx} * pf, q = e^{y - my} * qf
  Acc coef_soft, coef_hard;  // row coefficients (see soft_target_common.hpp)
  Acc lz;                    // log-sum-exp of the raw student row (hard term, from_exp)
  index_t label;             // hard-label class (-1: none)
};

/// Pass 3 over [b, e): writes the gradient; returns sum_k (df/dx_k x_k + df/dy_k y_k) when DT.
template <class Policy, class Acc, hard_mode Hard, bool DT, bool Accum, class S, class T, class G>
Acc grad_range(const typename Policy::row& row, const typename Policy::params& prm, const S* s, const T* t, G* g,
               index_t b, index_t e, const Acc* et_buf, const Acc* es_buf, const grad_scalars<Acc>& k_) noexcept {
  constexpr int W = lanes_v<Acc>;
  Acc dt[W] = {};
  auto lane = [&](int j, index_t k, Acc zs, Acc zt, Acc et, Acc es, Acc old) DISTILL_ST_LAMBDA_INLINE -> Acc {
    const Acc x = zt * k_.inv_t, y = zs * k_.inv_t;
    const Acc p = et * k_.pf, q = es * k_.qf;
    const Acc gs = Policy::grad_student(row, prm, x, y, p, q);
    Acc v = k_.coef_soft * gs;
    if constexpr (Hard != hard_mode::none) {
      const Acc sm = Hard == hard_mode::from_q ? q : fast_exp(zs - k_.lz);
      v += k_.coef_hard * (sm - (k == k_.label ? Acc(1) : Acc(0)));
    }
    if constexpr (Accum) v += old;
    if constexpr (DT) {
      const Acc gt = Policy::grad_teacher(row, prm, x, y, p, q);
      dt[j] += keep_or_zero(gs != Acc(0), gs * y) + keep_or_zero(gt != Acc(0), gt * x);
    }
    return v;
  };
  auto partial_block = [&](index_t k, int n) DISTILL_ST_LAMBDA_INLINE {
    Acc ps[W], pt[W], pe[W], pq[W], po[W], out[W];
    load_partial(s + k, n, ps, Acc(0));
    load_partial(t + k, n, pt, Acc(0));
    load_partial(et_buf + k, n, pe, Acc(0));
    load_partial(es_buf + k, n, pq, Acc(0));
    if constexpr (Accum) load_partial(g + k, n, po, Acc(0));
    else for (int j = 0; j < W; ++j) po[j] = Acc(0);
    for (int j = 0; j < W; ++j) out[j] = lane(j, k + j, ps[j], pt[j], pe[j], pq[j], po[j]);
    store_partial(g + k, n, out);
  };
  index_t k = b;
  // Float gradients of long rows go to memory with non-temporal (streaming) stores: a normal
  // store first reads the destination line (read-for-ownership), a third more memory traffic
  // for a pass that is bound by memory bandwidth. The stores need 64-byte alignment, so the
  // first few classes are peeled off; an sfence orders them before the call returns.
  constexpr bool streaming = has_avx512 && std::is_same_v<G, float> && std::is_same_v<Acc, float> && !Accum;
  [[maybe_unused]] bool streamed = false;
  if constexpr (streaming) {
#if defined(__AVX512F__)
    const auto addr = reinterpret_cast<std::uintptr_t>(g + k);
    if (e - k >= 1024 && addr % 4 == 0) {
      const int peel = static_cast<int>(((64 - addr % 64) % 64) / 4);
      if (peel > 0) partial_block(k, peel), k += peel;
      for (; k + W <= e; k += W) {
        alignas(64) Acc out[W];
        for (int j = 0; j < W; ++j)
          out[j] = lane(j, k + j, load<Acc>(s[k + j]), load<Acc>(t[k + j]), et_buf[k + j], es_buf[k + j], Acc(0));
        _mm512_stream_ps(reinterpret_cast<float*>(g + k), _mm512_load_ps(out));
      }
      streamed = true;
    }
#endif
  }
  for (; k + W <= e; k += W) {
    for (int j = 0; j < W; ++j) {
      const Acc old = Accum ? load<Acc>(g[k + j]) : Acc(0);
      // read the student logit before the (possibly aliasing) gradient store of the same class
      const Acc v = lane(j, k + j, load<Acc>(s[k + j]), load<Acc>(t[k + j]), et_buf[k + j], es_buf[k + j], old);
      g[k + j] = store<G>(v);
    }
  }
  if (k < e) partial_block(k, static_cast<int>(e - k));
#if defined(__AVX512F__)
  if (streamed) _mm_sfence();
#endif
  if constexpr (DT) return lane_sum(dt);
  else return Acc(0);
}

/// Dispatch a runtime bool to a compile-time one.
template <class F>
DISTILL_FORCEINLINE decltype(auto) with_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

/// Per-call settings of the CPU driver.
template <class Acc>
struct dense_call {
  call_scalars<Acc> sc;
  Acc soft_weight, hard_weight, grad_scale, inv_divisor;
  std::int64_t ignore_index;
  bool want_loss, want_grad, want_dt, want_diag, want_hard_row, accumulate;
  bool hard;  // the hard-label term (or its diagnostic) needs the raw student log-sum-exp
};

/// Per-row results gathered by the driver.
template <class Acc>
struct dense_row_out {
  Acc loss = 0, dt = 0;
  row_diagnostics<Acc> diag{0, 0, 0};
  Acc hard_ce = 0;
  bool masked = false;
};

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
  index_t rb[2], re[2];       // class ranges of the vector loops (DKD: around the target)
  int nr;
  index_t tgt;                // DKD's target class, else -1
  target_values<Acc> tv;
  Acc raw_ms, raw_mt, mx_e, my_e, mz_e;
  bool need_z;
  typename Policy::row row;
  Acc pf, qf, lz;
  dense_row_out<Acc> out;
};

/// Stage 1: label column and pass 1 (maxima).
template <class Policy, class Acc, class S, class T, class G>
DISTILL_FORCEINLINE void row_stage_max(row_work<Policy, Acc, S, T, G>& w, const dense_call<Acc>& call, index_t cols) {
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
DISTILL_FORCEINLINE void row_stage_stats(row_work<Policy, Acc, S, T, G>& w, const dense_call<Acc>& call,
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
  if (call.want_diag) {  // first index of each maximum, over the whole row
    Acc bt = ninf<Acc>(), bs = ninf<Acc>();
    std::int32_t it = -1, is = -1;
    for (index_t k = 0; k < cols; ++k) {
      const Acc vt = load<Acc>(w.t[k]), vs = load<Acc>(w.s[k]);
      if (vt > bt) bt = vt, it = static_cast<std::int32_t>(k);
      if (vs > bs) bs = vs, is = static_cast<std::int32_t>(k);
    }
    full.it = it, full.is = is;
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

/// Stage 3: pass 3 (gradient) and the temperature-gradient term.
template <class Policy, class Acc, class S, class T, class G>
DISTILL_FORCEINLINE void row_stage_grad(row_work<Policy, Acc, S, T, G>& w, const dense_call<Acc>& call,
                                        const typename Policy::params& prm) {
  const Acc inv_t = call.sc.inv_temperature;
  grad_scalars<Acc> gk;
  gk.inv_t = inv_t, gk.pf = w.pf, gk.qf = w.qf;
  gk.coef_soft = call.grad_scale * w.weight * call.soft_weight * call.sc.c * inv_t * call.inv_divisor;
  gk.coef_hard = call.grad_scale * w.weight * call.hard_weight * call.inv_divisor;
  gk.lz = w.lz;
  gk.label = w.label >= 0 ? static_cast<index_t>(w.label) : index_t(-1);
  const bool use_hard = call.hard_weight != Acc(0);
  // softmax(z^s) is q itself when T == 1 and q is the full-row softmax
  const bool hard_from_q = call.sc.temperature == Acc(1) && !Policy::uses_target;
  Acc dt_sum = Acc(0);
  auto run_grad = [&](auto hard_c, auto dt_c, auto acc_c) {
    constexpr hard_mode H = decltype(hard_c)::value;
    for (int i = 0; i < w.nr; ++i)
      dt_sum += grad_range<Policy, Acc, H, decltype(dt_c)::value, decltype(acc_c)::value>(
          w.row, prm, w.s, w.t, w.g, w.rb[i], w.re[i], w.et_buf, w.es_buf, gk);
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

/// Rows of at most `small_row_classes` classes: `lanes_v<Acc>` rows at a time, one row per
/// vector lane ("rows in lanes"). Each class becomes one vector operation across the rows, so the
/// per-row dependency chain (max -> sums -> logs -> gradient) is paid once per group of rows
/// instead of once per row. The per-lane mathematics is the same policy code as the row path.
inline constexpr index_t small_row_classes = 16;

template <class Policy, class Acc, class S, class T, class G>
void dense_small_rows_cpu(const dense_call<Acc>& call, const typename Policy::params& prm, const S* const* srow,
                          const T* const* trow, G* const* grow, index_t cols, const std::int64_t* labels,
                          const Acc* weights, int m, dense_row_out<Acc>* out) {
  constexpr int L = lanes_v<Acc>;
  constexpr int K = static_cast<int>(small_row_classes);
  const int nc = static_cast<int>(cols);
  const Acc inv_t = call.sc.inv_temperature;
  Acc zs[K][L], zt[K][L], et[K][L], es[K][L];
  std::int64_t label[L];
  Acc weight[L];
  index_t tgt[L];
  target_values<Acc> tv[L];
  // transpose the rows in (unused lanes: -inf rows, never stored)
  for (int j = 0; j < L; ++j) {
    label[j] = j < m ? labels[j] : -1;
    weight[j] = j < m ? weights[j] : Acc(0);
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
    for (int j = 0; j < m; ++j) {
      Acc bt = ninf<Acc>(), bs = ninf<Acc>();
      for (int k = 0; k < nc; ++k) {
        if (zt[k][j] > bt) bt = zt[k][j], it[j] = k;
        if (zs[k][j] > bs) bs = zs[k][j], is[j] = k;
      }
    }
  for (int j = 0; j < m; ++j)
    if (label[j] >= 0) {  // the label column, kept apart (DKD removes its target from the sums)
      tv[j].z = zs[label[j]][j];
      tv[j].y = tv[j].z * inv_t;
      tv[j].x = zt[label[j]][j] * inv_t;
      if (Policy::uses_target) zs[label[j]][j] = zt[label[j]][j] = ninf<Acc>();
    }

  // maxima (DKD: over the non-target classes)
  Acc rmt[L], rms[L];
  for (int j = 0; j < L; ++j) rmt[j] = rms[j] = ninf<Acc>();
  for (int k = 0; k < nc; ++k)
    for (int j = 0; j < L; ++j) {
      rmt[j] = zt[k][j] > rmt[j] ? zt[k][j] : rmt[j];
      rms[j] = zs[k][j] > rms[j] ? zs[k][j] : rms[j];
    }
  Acc mx[L], my[L], mz[L];
  for (int j = 0; j < L; ++j) {
    mx[j] = rmt[j] == ninf<Acc>() ? Acc(0) : rmt[j] * inv_t;
    my[j] = rms[j] == ninf<Acc>() ? Acc(0) : rms[j] * inv_t;
    mz[j] = rms[j] == ninf<Acc>() ? Acc(0) : rms[j];
  }
  // sums
  const bool need_z = call.hard && call.sc.temperature != Acc(1);
  Acc st[L] = {}, ss[L] = {}, sa[L] = {}, stx[L] = {}, sb[L] = {}, sz[L] = {};
  for (int k = 0; k < nc; ++k)
    for (int j = 0; j < L; ++j) {
      const Acc x = zt[k][j] * inv_t, y = zs[k][j] * inv_t;
      const Acc e1 = fast_exp(x - mx[j]), e2 = fast_exp(y - my[j]);
      et[k][j] = e1;
      es[k][j] = e2;
      st[j] += e1;
      ss[j] += e2;
      sa[j] += keep_or_zero(e1 != Acc(0), e1 * (x - y));
      stx[j] += keep_or_zero(e1 != Acc(0), e1 * (x - mx[j]));
      sb[j] += keep_or_zero(e2 != Acc(0), e2 * (y - x));
      if (need_z) sz[j] += fast_exp(zs[k][j] - mz[j]);
    }
  typename Policy::row row[L] = {};
  Acc pf[L] = {}, qf[L] = {}, lz[L] = {};
  for (int j = 0; j < m; ++j) {
    dense_state<Acc> s = dense_state<Acc>::empty();
    s.mt = rmt[j] * inv_t, s.st = st[j], s.a = sa[j], s.tx = stx[j];
    s.ms = rms[j] * inv_t, s.ss = ss[j], s.b = sb[j];
    s.mz = rms[j], s.sz = sz[j];
    dense_state<Acc> full = s;
    if (Policy::uses_target && tgt[j] >= 0) {
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
      pf[j] = row[j].lpn == ninf<Acc>() ? Acc(0) : st_exp(mx[j] - row[j].lpn);
      qf[j] = row[j].lqn == ninf<Acc>() ? Acc(0) : st_exp(my[j] - row[j].lqn);
    }
    lz[j] = Acc(0);
    out[j].hard_ce = Acc(0);
    if (call.hard && label[j] >= 0) {
      lz[j] = need_z ? full.raw_student_lse() : full.student_lse();
      out[j].hard_ce = lz[j] - tv[j].z;
    }
    if (call.want_diag) out[j].diag = diagnostics_of(full);
  }
  if constexpr (Policy::has_mixture_pass) {
    Acc pa[L] = {}, qb[L] = {};
    for (int k = 0; k < nc; ++k)
      for (int j = 0; j < m; ++j) {
        Acc u, v;
        Policy::mixture_terms(row[j], prm, zt[k][j] * inv_t, zs[k][j] * inv_t, et[k][j] * pf[j], es[k][j] * qf[j], u, v);
        pa[j] += u;
        qb[j] += v;
      }
    for (int j = 0; j < m; ++j) Policy::finish_mixture(row[j], prm, pa[j], qb[j]);
  }
  for (int j = 0; j < m; ++j) {
    const Acc hard = call.hard_weight != Acc(0) ? call.hard_weight * out[j].hard_ce : Acc(0);
    out[j].loss = weight[j] * (call.soft_weight * call.sc.c * row[j].f + hard);
  }
  if (!call.want_grad) return;

  // gradient, class by class across the rows, then transposed back
  const bool use_hard = call.hard_weight != Acc(0);
  Acc cs[L], ch[L], dt[L] = {};
  for (int j = 0; j < L; ++j) {
    cs[j] = call.grad_scale * weight[j] * call.soft_weight * call.sc.c * inv_t * call.inv_divisor;
    ch[j] = call.grad_scale * weight[j] * call.hard_weight * call.inv_divisor;
  }
  Acc gv[K][L];
  // compile-time flags keep the class loop branch-free, so it vectorises across the lanes
  auto grad_classes = [&](auto hard_c, auto dt_c) {
    constexpr bool H = decltype(hard_c)::value, D = decltype(dt_c)::value;
    for (int k = 0; k < nc; ++k)
      for (int j = 0; j < L; ++j) {
        const Acc x = zt[k][j] * inv_t, y = zs[k][j] * inv_t;
        const Acc p = et[k][j] * pf[j], q = es[k][j] * qf[j];
        const Acc gs = Policy::grad_student(row[j], prm, x, y, p, q);
        Acc v = cs[j] * gs;
        if constexpr (H) v += ch[j] * (fast_exp(zs[k][j] - lz[j]) - (k == label[j] ? Acc(1) : Acc(0)));
        gv[k][j] = v;
        if constexpr (D) {
          const Acc gt = Policy::grad_teacher(row[j], prm, x, y, p, q);
          dt[j] += keep_or_zero(gs != Acc(0), gs * y) + keep_or_zero(gt != Acc(0), gt * x);
        }
      }
  };
  with_bool(use_hard, [&](auto h) { with_bool(call.want_dt, [&](auto d) { grad_classes(h, d); }); });
  if constexpr (Policy::uses_target) {  // DKD's target classes (their lanes above held -inf logits)
    for (int j = 0; j < m; ++j) {
      if (tgt[j] < 0) continue;
      const Acc gs = Policy::grad_student_target(row[j], prm);
      Acc v = cs[j] * gs;
      if (use_hard) v += ch[j] * (st_exp(tv[j].z - lz[j]) - Acc(1));
      gv[tgt[j]][j] = v;
      if (call.want_dt) {
        const Acc gt = Policy::grad_teacher_target(row[j], prm);
        dt[j] += keep_or_zero(gs != Acc(0), gs * tv[j].y) + keep_or_zero(gt != Acc(0), gt * tv[j].x);
      }
    }
  }
  for (int j = 0; j < m; ++j) {
    for (int k = 0; k < nc; ++k) {
      const Acc old = call.accumulate ? load<Acc>(grow[j][k]) : Acc(0);
      grow[j][k] = store<G>(gv[k][j] + old);
    }
    if (call.want_dt) out[j].dt = weight[j] * call.soft_weight * (call.sc.dc * row[j].f - call.sc.c * inv_t * dt[j]);
  }
}

/// The whole batch: validation is done by the caller; this computes and writes every output.
template <class Policy, class TS, class TT, class G, class Acc>
status dense_cpu(const char* fn, const cpu& ctx, const host_view<TS, 2>& student, const host_view<TT, 2>& teacher,
                 const host_view<Acc, 1>& loss, const host_view<G, 2>& grad, const soft_target_options& opt,
                 const typename Policy::params& prm, const soft_target_extras<Acc, host_space>& ex, bool want_grad) {
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  const index_t n = student.extent(0), cols = student.extent(1);

  dense_call<Acc> call;
  call.sc.t_squared = opt.scale_by_t_squared;
  call.sc.set_temperature(ex.temperature.empty() ? static_cast<Acc>(opt.temperature) : ex.temperature(0));
  call.soft_weight = opt.soft_weight;
  call.hard_weight = opt.hard_label_weight;
  call.grad_scale = opt.grad_scale;
  call.ignore_index = opt.ignore_index;
  call.want_loss = !loss.empty();
  call.want_grad = want_grad;
  call.want_dt = want_grad && !ex.grad_temperature.empty();
  call.want_diag = !ex.row_kl.empty() || !ex.row_teacher_entropy.empty() || !ex.row_top1_agreement.empty();
  call.want_hard_row = !ex.row_hard_loss.empty();
  call.accumulate = opt.accumulate;
  call.hard = !ex.labels.empty() && (opt.hard_label_weight != 0.0f || call.want_hard_row);

  auto weight_of = [&](index_t r) -> Acc { return ex.row_weights.empty() ? Acc(1) : ex.row_weights(r); };
  auto ignored = [&](index_t r) { return !ex.labels.empty() && ex.labels(r) == opt.ignore_index; };

  // divisor D of the reduction, known before any gradient is written
  Acc divisor = Acc(1);
  if (!ex.normalizer.empty()) {
    divisor = ex.normalizer(0);
  } else if (opt.reduction == reduction::batchmean) {
    divisor = static_cast<Acc>(n);
  } else if (opt.reduction == reduction::mean) {
    divisor = Acc(0);
    for (index_t r = 0; r < n; ++r)
      if (!ignored(r)) divisor += weight_of(r);
  }
  call.inv_divisor = safe_inverse(divisor);

  std::vector<Acc> row_loss(static_cast<std::size_t>(n)), row_dt(call.want_dt ? static_cast<std::size_t>(n) : 0);
  std::vector<unsigned char> masked(static_cast<std::size_t>(n), 0);
  const Acc nan = std::numeric_limits<Acc>::quiet_NaN();

  auto write_row = [&](index_t r, dense_row_out<Acc> o) {
    if (o.masked) {
      masked[static_cast<std::size_t>(r)] = 1;
      o.loss = o.dt = o.hard_ce = nan;
      o.diag = {nan, nan, nan};
      if (want_grad)
        for (index_t k = 0; k < cols; ++k) grad(r, k) = store<G>(nan);
    }
    row_loss[static_cast<std::size_t>(r)] = o.loss;
    if (call.want_dt) row_dt[static_cast<std::size_t>(r)] = o.dt;
    if (!ex.row_kl.empty()) ex.row_kl(r) = o.diag.kl;
    if (!ex.row_teacher_entropy.empty()) ex.row_teacher_entropy(r) = o.diag.entropy;
    if (!ex.row_top1_agreement.empty()) ex.row_top1_agreement(r) = o.diag.top1;
    if (!ex.row_hard_loss.empty()) ex.row_hard_loss(r) = o.hard_ce;
  };
  auto write_ignored = [&](index_t r) {
    dense_row_out<Acc> o;
    if (want_grad && !opt.accumulate)
      for (index_t k = 0; k < cols; ++k) grad(r, k) = store<G>(Acc(0));
    write_row(r, o);
  };
  auto label_of = [&](index_t r) -> std::int64_t { return ex.labels.empty() ? std::int64_t(-1) : ex.labels(r); };

  const bool contiguous = student.inner_contiguous() && teacher.inner_contiguous() && (!want_grad || grad.inner_contiguous());
  // Short rows are latency-bound (max -> sums -> logs -> gradient is a dependency chain), so
  // they run stage by stage over a few rows at a time and the core overlaps the rows' chains.
  // Long rows go one at a time so that each stays in L2 between its passes.
  constexpr index_t max_batch = 8;
  const index_t batch = (contiguous && cols <= 64) ? max_batch : 1;

  parallel_for(ctx, n, [&](index_t r0, index_t r1) {
    std::vector<Acc> scratch(static_cast<std::size_t>(cols) * (contiguous ? 2 * batch : 5));
    if (contiguous && cols <= small_row_classes) {  // rows in lanes
      constexpr int L = lanes_v<Acc>;
      const S* sp[L];
      const T* tp[L];
      G* gp[L];
      std::int64_t lab[L];
      Acc wts[L];
      index_t rid[L];
      dense_row_out<Acc> outs[L];
      index_t r = r0;
      while (r < r1) {
        int m = 0;
        for (; r < r1 && m < L; ++r) {
          if (ignored(r)) {
            write_ignored(r);
            continue;
          }
          sp[m] = student.row(r), tp[m] = teacher.row(r), gp[m] = want_grad ? grad.row(r) : nullptr;
          lab[m] = label_of(r), wts[m] = weight_of(r), rid[m] = r;
          outs[m] = {};
          ++m;
        }
        if (m == 0) continue;
        dense_small_rows_cpu<Policy, Acc>(call, prm, sp, tp, gp, cols, lab, wts, m, outs);
        for (int j = 0; j < m; ++j) write_row(rid[j], outs[j]);
      }
    } else if (contiguous) {
      using work = row_work<Policy, Acc, S, T, G>;
      work w[max_batch];
      for (index_t rb = r0; rb < r1; rb += batch) {
        int m = 0;
        for (index_t r = rb; r < std::min(r1, rb + batch); ++r) {
          if (ignored(r)) {
            write_ignored(r);
            continue;
          }
          work& x = w[m];
          x.s = student.row(r);
          x.t = teacher.row(r);
          x.g = want_grad ? grad.row(r) : nullptr;  // forward only: stage 3 does not run
          const bool prefetch = batch == 1 && r + 1 < r1;  // long rows: fetch the next one meanwhile
          x.next_s = prefetch ? student.row(r + 1) : x.s;
          x.next_t = prefetch ? teacher.row(r + 1) : x.t;
          x.et_buf = scratch.data() + 2 * m * cols;
          x.es_buf = x.et_buf + cols;
          x.label = label_of(r);
          x.weight = weight_of(r);
          x.out = {};
          x.tv = {};
          ++m;
        }
        for (int i = 0; i < m; ++i) row_stage_max(w[i], call, cols);
        for (int i = 0; i < m; ++i) row_stage_stats(w[i], call, prm, cols);
        if (want_grad)
          for (int i = 0; i < m; ++i) row_stage_grad(w[i], call, prm);
        for (index_t r = rb, i = 0; r < std::min(r1, rb + batch); ++r)
          if (!ignored(r)) write_row(r, w[i++].out);
      }
    } else {  // any layout: copy the row into contiguous scratch, scatter the gradient back
      row_work<Policy, Acc, Acc, Acc, Acc> x;
      x.et_buf = scratch.data();
      x.es_buf = x.et_buf + cols;
      Acc* ss = x.es_buf + cols;
      Acc* ts = ss + cols;
      Acc* gs = ts + cols;
      for (index_t r = r0; r < r1; ++r) {
        if (ignored(r)) {
          write_ignored(r);
          continue;
        }
        for (index_t k = 0; k < cols; ++k) ss[k] = load<Acc>(student(r, k)), ts[k] = load<Acc>(teacher(r, k));
        if (want_grad && opt.accumulate)
          for (index_t k = 0; k < cols; ++k) gs[k] = load<Acc>(grad(r, k));
        x.s = ss, x.t = ts, x.g = gs;
        x.next_s = ss, x.next_t = ts;
        x.label = label_of(r);
        x.weight = weight_of(r);
        x.out = {};
        x.tv = {};
        row_stage_max(x, call, cols);
        row_stage_stats(x, call, prm, cols);
        if (want_grad) {
          row_stage_grad(x, call, prm);
          for (index_t k = 0; k < cols; ++k) grad(r, k) = store<G>(gs[k]);
        }
        write_row(r, x.out);
      }
    }
  });

  if (!loss.empty()) {
    if (opt.reduction == reduction::none) {
      for (index_t r = 0; r < n; ++r) loss(r) = row_loss[static_cast<std::size_t>(r)];
    } else {
      Acc total = Acc(0);
      for (index_t r = 0; r < n; ++r) total += row_loss[static_cast<std::size_t>(r)];
      loss(0) = total * call.inv_divisor;
    }
  }
  if (call.want_dt) {
    Acc total = Acc(0);
    for (index_t r = 0; r < n; ++r) total += row_dt[static_cast<std::size_t>(r)];
    ex.grad_temperature(0) = call.grad_scale * total * call.inv_divisor;
  }
  for (index_t r = 0; r < n; ++r) {
    if (masked[static_cast<std::size_t>(r)]) {
      bool teacher_masked = true;
      for (index_t k = 0; k < cols && teacher_masked; ++k) teacher_masked = load<Acc>(teacher(r, k)) == ninf<Acc>();
      return fail(errc::non_finite, fn,
                  std::string("row ") + std::to_string(r) + " of '" + (teacher_masked ? "teacher" : "student") +
                      "' is -inf in every class (no distribution); its loss and gradient are NaN");
    }
  }
  return {};
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
  DISTILL_TRY(validate_host_values(fn, student.extent(1), opt, ex));
  DISTILL_TRY(Policy::validate(fn, student.extent(1), prm));
  return dense_cpu<Policy>(fn, ctx, student, teacher, loss, grad, opt, prm, ex, want_grad);
}

}  // namespace distill::soft_target_detail

#undef DISTILL_ST_LAMBDA_INLINE
