// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Vocabulary-parallel soft-target losses: forward KL(teacher || student), reverse
//! KL(student || teacher) and JSD(beta), with the hard-label CE mix and ignore_index, when each
//! of P ranks holds only its slice of the classes, N x C_r columns [offset_r, offset_r + C_r) of
//! the student and teacher logits (C = sum_r C_r; slices need not be equal).
//!
//! The math is the single-process losses' (kl_teacher_student.hpp, kl_student_teacher.hpp,
//! jsd.hpp, soft_target_common.hpp): every quantity they need of a row is a few sums over its
//! classes, each relative to a running maximum (soft_target_detail::dense_state: max x, sum
//! e^{x - max}, sum e^{x - max}(x - y), the same for y, the raw student's log-sum-exp, the first
//! argmax). Two partial states merge exactly like two halves of one row,
//!   m = max(m1, m2),  S = e^{m1 - m} S1 + e^{m2 - m} S2   (and so on for each sum),
//! so the forward pass is
//!   1. each rank: the state of its slice of every row (one read of its logits)
//!   2. ONE all_reduce_merge of the N row states (plus the student's logit at the label, summed:
//!      only the rank owning the label column contributes), in rank order: every rank then holds
//!      the statistics of the full rows, bit-identical on every rank
//!   3. each rank: the loss of every row from the merged state (all ranks compute the same loss)
//! JSD needs a second, plain sum all-reduce of two numbers per row: its mixture sums
//! <p, a> and <q, b> involve log(beta p_k + (1 - beta) q_k) with p and q normalised by the
//! *global* log-sum-exps, which no fixed set of per-slice sums can give before those are known.
//!
//! The forward pass writes the merged states into `saved` (N elements of vocab_parallel_row,
//! caller-owned); the backward pass reads them and its own slice and needs no communication at
//! all: it takes no communicator. Its gradient of a class is the single-process formula
//! (q_k - p_k for forward KL, ...) with p and q normalised by the saved global statistics.
//!
//! Entry points (CPU: host views and any host communicator of distributed/communicator.hpp;
//! CUDA, from a translation unit compiled by nvcc: a `cuda` context, device views, float
//! accumulation and a communicator on cuda_space (nccl_communicator) working on the context's
//! stream; kernels/distill/cuda/vocab_parallel_soft_target.cuh; `name` is vocab_parallel_kl_teacher_student,
//! vocab_parallel_kl_student_teacher or vocab_parallel_jsd, options soft_target_options or
//! jsd_options):
//!   name_forward         (ctx, comm, shard, student, teacher, loss, saved, extras, workspace, options)
//!   name_backward        (ctx, shard, student, teacher, saved, grad_student, extras, workspace, options)
//!   name_forward_backward(ctx, comm, shard, student, teacher, loss, saved, grad_student, extras, workspace, options)
//! shard: this rank's {offset, classes = C}; student, teacher: (N, C_r), C_r >= 1; loss: (1), or
//! (N) with reduction none, the same on every rank; saved: (N) vocab_parallel_row, contiguous;
//! grad_student: (N, C_r), may be the student itself; extras: labels (global class indices),
//! row weights, normalizer, temperature and the per-row diagnostics as in the single-process
//! losses (not grad_temperature: dL/dT sums over all classes, which would need a collective in
//! the backward); workspace: vocab_parallel_workspace_size(ctx, comm, N) bytes (0 over MPI; on
//! CUDA the backward needs soft_target_workspace_size(ctx, N)). The CUDA path writes NaN for a
//! row without a distribution or with a label outside [0, C) (the CPU path reports it: that needs
//! the values on the host) and never waits on the host.
//! Every rank must make the same calls with the same N, options and extras (the collective rule);
//! an argument error found on one rank only returns there before the collective, so check
//! shapes the same way on every rank.

#include <cstddef>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/workspace.hpp"
#include "distill/distributed/communicator.hpp"
#include "distill/losses/detail/soft_target_cpu.hpp"
#include "distill/losses/jsd.hpp"
#include "distill/losses/kl_student_teacher.hpp"
#include "distill/losses/kl_teacher_student.hpp"

namespace distill {

/// This rank's columns of the vocabulary: global classes [offset, offset + C_r) of `classes` = C.
struct vocab_shard {
  index_t offset = 0;
  index_t classes = 0;
};

/// What the vocab-parallel forward pass saves of row r for the backward pass: the statistics of
/// the full row, merged across ranks (the payload of the one collective).
template <class Acc>
struct vocab_parallel_row {
  soft_target_detail::dense_state<Acc> stats;
  Acc label_logit;     ///< z^s at the row's label (0 without labels)
  Acc mix_pa, mix_qb;  ///< JSD's <p, a> and <q, b> (0 for the other losses)
};

/// The CUDA path's scratch: the soft-target losses' per-row losses and divisor first (all the
/// backward needs), JSD's mixture sums, the communicator's merge scratch.
struct vocab_parallel_cuda_scratch {
  soft_target_scratch rows;
  float* mix;  // 2 per row
  std::byte* merge;
  constexpr vocab_parallel_cuda_scratch(workspace_carver& w, index_t n, std::size_t merge_bytes)
      : rows(w, n), mix(w.take<float>(2 * n)), merge(w.take<std::byte>(merge_bytes)) {}
};

/// Scratch bytes of the vocab-parallel losses over `rows` rows. CPU: the communicator's merge
/// scratch. CUDA: vocab_parallel_cuda_scratch; its backward needs only soft_target_workspace_size
/// bytes (the forward's workspace serves).
template <class Acc = float, class Comm>
std::size_t vocab_parallel_workspace_size(const cpu&, const Comm& comm, index_t rows) noexcept {
  return all_reduce_merge_workspace_size(comm, rows, sizeof(vocab_parallel_row<Acc>));
}
template <class Acc = float, class Comm>
std::size_t vocab_parallel_workspace_size(const cuda&, const Comm& comm, index_t rows) noexcept {
  static_assert(std::is_same_v<Acc, float>, "the CUDA path accumulates in float");
  const std::size_t merge = all_reduce_merge_workspace_size(comm, rows, sizeof(vocab_parallel_row<float>));
  return workspace_carver::size_of<vocab_parallel_cuda_scratch>(rows, merge);
}

namespace vocab_parallel_detail {

using namespace soft_target_detail;

/// The merge of the one collective: two slices of the same rows.
template <class Acc>
struct merge_rows {
  DISTILL_HOST_DEVICE vocab_parallel_row<Acc> operator()(const vocab_parallel_row<Acc>& lower,
                                                         const vocab_parallel_row<Acc>& higher) const noexcept {
    vocab_parallel_row<Acc> r = lower;
    r.stats.merge(higher.stats);
    r.label_logit += higher.label_logit;  // one rank holds the label column, the others add 0
    return r;
  }
};

template <class Policy, class Acc>
struct row_scalars {
  typename Policy::row row;
  Acc lz;  // log-sum-exp of the raw student row (hard-label term)
  row_result<Acc> out;
};

/// Row r's loss, diagnostics and scalars from its saved (merged) state.
template <class Policy, class Acc>
row_scalars<Policy, Acc> finish_row(const cpu_call<Acc>& call, const typename Policy::params& prm,
                                    const vocab_parallel_row<Acc>& saved, index_t r) {
  const dense_state<Acc>& s = saved.stats;
  row_scalars<Policy, Acc> o;
  o.row = Policy::finalize(s, prm, target_values<Acc>{});
  if constexpr (Policy::has_mixture_pass) Policy::finish_mixture(o.row, prm, saved.mix_pa, saved.mix_qb);
  o.lz = Acc(0);
  o.out.masked = s.mt == ninf<Acc>() || s.ms == ninf<Acc>();
  if (call.hard && call.label(r) >= 0) {
    o.lz = call.sc.temperature != Acc(1) ? s.raw_student_lse() : s.student_lse();
    o.out.hard_ce = o.lz - saved.label_logit;
  }
  const Acc hard = call.hard_weight != Acc(0) ? call.hard_weight * o.out.hard_ce : Acc(0);
  o.out.loss = call.weight(r) * (call.soft_weight * call.sc.c * o.row.f + hard);
  if (call.want_diag) o.out.diag = diagnostics_of(s);
  return o;
}

/// Runs body(r, s, t, g) over rows [r0, r1) with contiguous row pointers: the rows themselves
/// when unit-stride, otherwise copies in `scratch` (the gradient scattered back after body).
template <class Acc, class S, class T, class G, class Body>
void for_rows(const host_view<const S, 2>& student, const host_view<const T, 2>& teacher, const host_view<G, 2>& grad,
              bool want_grad, bool accumulate, index_t r0, index_t r1, std::vector<Acc>& scratch, Body&& body) {
  const index_t cols = student.extent(1);
  const bool contiguous = student.inner_contiguous() && teacher.inner_contiguous() && (!want_grad || grad.inner_contiguous());
  if (contiguous) {
    for (index_t r = r0; r < r1; ++r) body(r, student.row(r), teacher.row(r), want_grad ? grad.row(r) : static_cast<G*>(nullptr));
    return;
  }
  scratch.resize(static_cast<std::size_t>(cols) * 5);
  Acc* ss = scratch.data() + 2 * cols;
  Acc* ts = ss + cols;
  Acc* gs = ts + cols;
  for (index_t r = r0; r < r1; ++r) {
    gather_row(student, r, ss);
    gather_row(teacher, r, ts);
    if (want_grad && accumulate) gather_row(grad, r, gs);
    body(r, static_cast<const Acc*>(ss), static_cast<const Acc*>(ts), gs);
    if (want_grad) scatter_row(grad, r, gs);
  }
}

template <class Acc>
status check_shard(const char* fn, const vocab_shard& shard, index_t local_cols) {
  if (shard.classes <= 0 || shard.offset < 0 || shard.offset + local_cols > shard.classes)
    return fail(errc::invalid_argument, fn,
                "'shard' {offset " + std::to_string(shard.offset) + ", classes " + std::to_string(shard.classes) +
                    "} cannot hold this rank's " + std::to_string(local_cols) + " columns");
  return {};
}

template <class Policy, class Acc, class TS, class TT, class SV, class G>
status validate(const char* fn, const vocab_shard& shard, const host_view<TS, 2>& student, const host_view<TT, 2>& teacher,
                const host_view<Acc, 1>& loss, bool loss_required, const SV& saved, const host_view<G, 2>& grad, bool want_grad,
                const soft_target_options& opt, const typename Policy::params& prm,
                const soft_target_extras<Acc, host_space>& ex) {
  static_assert(is_supported_float_v<TS> && is_supported_float_v<TT>, "soft-target losses take float, double, float16 or bfloat16 logits");
  static_assert(std::is_same_v<Acc, accum_t<TS>>, "the loss, saved rows and extras use the student's accumulation type");
  if (!ex.grad_temperature.empty())
    return fail(errc::invalid_argument, fn,
                "'grad_temperature' is not available vocab-parallel (dL/dT sums over every class: a collective in the backward)");
  DISTILL_TRY(validate_soft_target(fn, student, teacher, true, loss, loss_required, grad, want_grad, opt, ex, false, false));
  DISTILL_TRY(check_shard<Acc>(fn, shard, student.extent(1)));
  DISTILL_TRY(check_finite_inputs(fn, student, teacher, opt, ex));
  DISTILL_TRY(validate_host_values(fn, shard.classes, opt, ex));
  DISTILL_TRY(Policy::validate(fn, shard.classes, prm));
  DISTILL_TRY(check_present(fn, "saved", saved));
  DISTILL_TRY(check_extent(fn, "saved", saved, 0, student.extent(0), "one saved row per row"));
  if (saved.stride(0) != 1) return fail(errc::unsupported_layout, fn, "'saved' must be contiguous");
  return {};
}

/// non_finite naming row `bad` (a row without a distribution: its results are NaN), or ok.
template <class SV>
status no_distribution(const char* fn, const SV& saved, index_t bad) {
  if (bad < 0) return {};
  const bool teacher = saved(bad).stats.mt == ninf<typename std::remove_cvref_t<decltype(saved(bad).stats.mt)>>();
  return fail(errc::non_finite, fn,
              "row " + std::to_string(bad) + " of '" + (teacher ? "teacher" : "student") +
                  "' is -inf in every class of every rank (no distribution); its loss and gradient are NaN");
}

/// Steps 1-3 of the file comment: local statistics, the merge, the losses of all rows.
template <class Policy, class Comm, class TS, class TT, class Acc>
status forward(const char* fn, const cpu& ctx, const Comm& comm, const vocab_shard& shard, const host_view<TS, 2>& student,
               const host_view<TT, 2>& teacher, const host_view<Acc, 1>& loss,
               const host_view<vocab_parallel_row<Acc>, 1>& saved, const soft_target_options& opt,
               const typename Policy::params& prm, const soft_target_extras<Acc, host_space>& ex,
               const host_view<std::byte, 1>& workspace) {
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  const host_view<const S, 2> s_all = student;
  const host_view<const T, 2> t_all = teacher;
  const index_t n = student.extent(0), cols = student.extent(1);
  const cpu_call<Acc> call = make_cpu_call(opt, ex, n, false);
  const Acc inv_t = call.sc.inv_temperature;
  const bool need_z = call.hard && call.sc.temperature != Acc(1);
  const host_view<S, 2> no_grad{};

  // 1. the state of this rank's slice of every row
  parallel_for(ctx, n, [&](index_t r0, index_t r1) {
    std::vector<Acc> scratch(static_cast<std::size_t>(cols) * 2);
    for_rows<Acc>(s_all, t_all, no_grad, false, false, r0, r1, scratch, [&](index_t r, const auto* s, const auto* t, auto*) {
      vocab_parallel_row<Acc>& out = saved(r);
      out = {dense_state<Acc>::empty(), Acc(0), Acc(0), Acc(0)};
      if (call.ignored(r)) return;
      Acc raw_ms = ninf<Acc>(), raw_mt = ninf<Acc>();
      max_range<Acc>(s, t, 0, cols, raw_ms, raw_mt);
      const Acc mx = raw_mt * inv_t, my = raw_ms * inv_t;
      const Acc mx_e = mx == ninf<Acc>() ? Acc(0) : mx, my_e = my == ninf<Acc>() ? Acc(0) : my;
      const Acc mz_e = raw_ms == ninf<Acc>() ? Acc(0) : raw_ms;
      range_sums<Acc> sums;
      with_bool(Policy::needs_a || call.want_diag, [&](auto a_) {
        with_bool(Policy::needs_tx || call.want_diag, [&](auto tx_) {
          with_bool(need_z, [&](auto z_) {
            sums = stats_range<Acc, decltype(a_)::value, decltype(tx_)::value, Policy::needs_b, decltype(z_)::value>(
                s, t, 0, cols, inv_t, mx_e, my_e, mz_e, scratch.data(), scratch.data() + cols, s, t);
          });
        });
      });
      dense_state<Acc>& st = out.stats;
      st.mt = mx, st.st = sums.st, st.a = sums.a, st.tx = sums.tx;
      st.ms = my, st.ss = sums.ss, st.b = sums.b;
      st.mz = raw_ms, st.sz = sums.sz;
      if (call.want_diag) {  // global indices of the slice's first maxima
        const std::int32_t it = first_argmax<Acc>(t, cols), is = first_argmax<Acc>(s, cols);
        st.it = it < 0 ? it : static_cast<std::int32_t>(it + shard.offset);
        st.is = is < 0 ? is : static_cast<std::int32_t>(is + shard.offset);
      }
      const std::int64_t label = call.label(r);
      if (label >= shard.offset && label < shard.offset + cols) out.label_logit = load<Acc>(s[label - shard.offset]);
    });
  });

  // 2. the one collective: every rank gets the statistics of the full rows
  DISTILL_TRY(comm.template all_reduce_merge<merge_rows<Acc>>(saved, workspace));

  // JSD: the mixture sums over this slice with the global normalisers, then summed over ranks
  if constexpr (Policy::has_mixture_pass) {
    std::vector<Acc> mix(static_cast<std::size_t>(2 * n), Acc(0));
    parallel_for(ctx, n, [&](index_t r0, index_t r1) {
      std::vector<Acc> scratch(static_cast<std::size_t>(cols) * 2);
      for_rows<Acc>(s_all, t_all, no_grad, false, false, r0, r1, scratch, [&](index_t r, const auto* s, const auto* t, auto*) {
        const dense_state<Acc>& st = saved(r).stats;
        if (call.ignored(r) || st.mt == ninf<Acc>() || st.ms == ninf<Acc>()) return;
        (void)stats_range<Acc, false, false, false, false>(s, t, 0, cols, inv_t, st.mt, st.ms, Acc(0), scratch.data(),
                                                           scratch.data() + cols, s, t);
        const typename Policy::row row = Policy::finalize(st, prm, target_values<Acc>{});
        mixture_range<Policy, Acc>(row, prm, s, t, 0, cols, inv_t, scratch.data(), scratch.data() + cols,
                                   Acc(1) / st.st, Acc(1) / st.ss, mix[std::size_t(2 * r)], mix[std::size_t(2 * r + 1)]);
      });
    });
    DISTILL_TRY(comm.all_reduce(make_view(mix.data(), 2 * n), reduce_op::sum));
    for (index_t r = 0; r < n; ++r) saved(r).mix_pa = mix[std::size_t(2 * r)], saved(r).mix_qb = mix[std::size_t(2 * r + 1)];
  }

  // 3. the loss of every row, identical on every rank
  row_sink<Acc, S> sink(call, ex, no_grad, n, cols);
  for (index_t r = 0; r < n; ++r) {
    if (call.ignored(r)) sink.put_ignored(r);
    else sink.put(r, finish_row<Policy>(call, prm, saved(r), r).out);
  }
  return no_distribution(fn, saved, sink.finish(loss, opt.reduction));
}

/// The gradient of this rank's slice from the saved statistics: no communication.
template <class Policy, class TS, class TT, class Acc, class G>
status backward(const char* fn, const cpu& ctx, const vocab_shard& shard, const host_view<TS, 2>& student,
                const host_view<TT, 2>& teacher, const host_view<const vocab_parallel_row<Acc>, 1>& saved,
                const host_view<G, 2>& grad, const soft_target_options& opt, const typename Policy::params& prm,
                const soft_target_extras<Acc, host_space>& ex) {
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  const host_view<const S, 2> s_all = student;
  const host_view<const T, 2> t_all = teacher;
  const index_t n = student.extent(0), cols = student.extent(1);
  const cpu_call<Acc> call = make_cpu_call(opt, ex, n, true);
  const Acc inv_t = call.sc.inv_temperature;
  const bool use_hard = call.hard_weight != Acc(0);
  const bool hard_from_q = call.sc.temperature == Acc(1);  // softmax(z^s) is q itself
  row_sink<Acc, G> sink(call, ex, grad, n, cols);
  parallel_for(ctx, n, [&](index_t r0, index_t r1) {
    std::vector<Acc> scratch(static_cast<std::size_t>(cols) * 2);
    for_rows<Acc>(s_all, t_all, grad, true, call.accumulate, r0, r1, scratch, [&](index_t r, const auto* s, const auto* t, auto* g) {
      using GP = std::remove_pointer_t<decltype(g)>;
      if (call.ignored(r)) {
        if (!call.accumulate)
          for (index_t k = 0; k < cols; ++k) g[k] = store<GP>(Acc(0));
        sink.put(r, row_result<Acc>{});
        return;
      }
      const vocab_parallel_row<Acc>& sv = saved(r);
      const dense_state<Acc>& st = sv.stats;
      row_scalars<Policy, Acc> o = finish_row<Policy>(call, prm, sv, r);
      if (o.out.masked) {  // no distribution: a NaN gradient (the sink also reports the row)
        for (index_t k = 0; k < cols; ++k) g[k] = store<GP>(std::numeric_limits<Acc>::quiet_NaN());
        sink.put(r, o.out);
        return;
      }
      (void)stats_range<Acc, false, false, false, false>(s, t, 0, cols, inv_t, st.mt, st.ms, Acc(0), scratch.data(),
                                                         scratch.data() + cols, s, t);
      grad_scalars<Acc> gk;
      gk.inv_t = inv_t, gk.pf = Acc(1) / st.st, gk.qf = Acc(1) / st.ss, gk.lz = o.lz;
      gk.coef_soft = call.grad_scale * call.weight(r) * call.soft_weight * call.sc.c * inv_t * call.inv_divisor;
      gk.coef_hard = call.grad_scale * call.weight(r) * call.hard_weight * call.inv_divisor;
      const std::int64_t label = call.label(r);
      const index_t c = (use_hard && label >= shard.offset && label < shard.offset + cols) ? index_t(label - shard.offset) : -1;
      const Acc old_label = c >= 0 && call.accumulate ? load<Acc>(g[c]) : Acc(0);
      auto run = [&](auto hard_c, auto acc_c) {
        constexpr hard_mode H = decltype(hard_c)::value;
        constexpr bool Accum = decltype(acc_c)::value;
        (void)grad_range<Policy, Acc, H, false, Accum>(o.row, prm, s, t, g, 0, cols, scratch.data(), scratch.data() + cols, gk);
        if (c >= 0) {  // the label's class again, minus the one-hot label (its logit was saved: g may alias s)
          Acc no_dt = Acc(0);
          const Acc v = class_grad<Policy, H, false, Accum>(o.row, prm, gk, sv.label_logit, load<Acc>(t[c]), scratch[std::size_t(c)],
                                                            scratch[std::size_t(cols + c)], old_label, no_dt);
          g[c] = store<GP>(v - gk.coef_hard);
        }
      };
      auto with_hard = [&](auto&& f) {
        if (!use_hard) return f(std::integral_constant<hard_mode, hard_mode::none>{});
        if (hard_from_q) return f(std::integral_constant<hard_mode, hard_mode::from_q>{});
        return f(std::integral_constant<hard_mode, hard_mode::from_exp>{});
      };
      with_hard([&](auto h) { with_bool(call.accumulate, [&](auto a) { run(h, a); }); });
      sink.put(r, o.out);
    });
  });
  return no_distribution(fn, saved, sink.finish(host_view<Acc, 1>{}, opt.reduction));
}

}  // namespace vocab_parallel_detail
}  // namespace distill

// The three passes of one vocab-parallel primitive (see the file comment).
#define DISTILL_VOCAB_PARALLEL_ENTRY_POINTS(name, Policy, Options)                                                        \
  /** Loss of the full rows from this rank's slice; one collective (JSD: two). Writes `saved`. */                        \
  template <class Comm, class TS, class TT>                                                                               \
  [[nodiscard]] status vocab_parallel_##name##_forward(                                                                   \
      const cpu& ctx, const Comm& comm, const vocab_shard& shard, host_view<TS, 2> student, host_view<TT, 2> teacher,    \
      host_view<accum_t<TS>, 1> loss, host_view<vocab_parallel_row<accum_t<TS>>, 1> saved,                                \
      const soft_target_extras<accum_t<TS>, host_space>& extras, host_view<std::byte, 1> workspace, const Options& opt = {}) { \
    static_assert(communicator<Comm> && std::is_same_v<typename Comm::memory_space, host_space>, "a host communicator"); \
    constexpr const char* fn = "vocab_parallel_" #name "_forward";                                                        \
    using Acc = accum_t<TS>;                                                                                              \
    using P = soft_target_detail::Policy<Acc>;                                                                            \
    const auto prm = P::make_params(opt);                                                                                 \
    DISTILL_TRY(vocab_parallel_detail::validate<P>(fn, shard, student, teacher, loss, true, saved,               \
                                                   host_view<std::remove_const_t<TS>, 2>{}, false, opt, prm, extras));   \
    DISTILL_TRY(check_workspace(fn, workspace, vocab_parallel_workspace_size<Acc>(ctx, comm, student.extent(0)),          \
                                "vocab_parallel_workspace_size"));                                                        \
    return vocab_parallel_detail::forward<P>(fn, ctx, comm, shard, student, teacher, loss, saved, opt, prm, extras, workspace); \
  }                                                                                                                       \
  /** Gradient of this rank's slice from `saved` (written by the forward): no communication. */                          \
  template <class TS, class TT>                                                                                           \
  [[nodiscard]] status vocab_parallel_##name##_backward(                                                                  \
      const cpu& ctx, const vocab_shard& shard, host_view<TS, 2> student, host_view<TT, 2> teacher,                      \
      in_view<vocab_parallel_row<accum_t<TS>>, 1, host_space> saved, host_view<std::remove_const_t<TS>, 2> grad_student, \
      const soft_target_extras<accum_t<TS>, host_space>& extras, host_view<std::byte, 1> /*workspace*/, const Options& opt = {}) { \
    constexpr const char* fn = "vocab_parallel_" #name "_backward";                                                       \
    using Acc = accum_t<TS>;                                                                                              \
    using P = soft_target_detail::Policy<Acc>;                                                                            \
    const auto prm = P::make_params(opt);                                                                                 \
    DISTILL_TRY(vocab_parallel_detail::validate<P>(fn, shard, student, teacher, host_view<Acc, 1>{}, false, saved,       \
                                                   grad_student, true, opt, prm, extras));                                \
    return vocab_parallel_detail::backward<P>(fn, ctx, shard, student, teacher, saved, grad_student, opt, prm, extras);  \
  }                                                                                                                       \
  /** Forward then backward (`loss` may be absent); the one collective of the forward only. */                            \
  template <class Comm, class TS, class TT>                                                                               \
  [[nodiscard]] status vocab_parallel_##name##_forward_backward(                                                          \
      const cpu& ctx, const Comm& comm, const vocab_shard& shard, host_view<TS, 2> student, host_view<TT, 2> teacher,    \
      host_view<accum_t<TS>, 1> loss, host_view<vocab_parallel_row<accum_t<TS>>, 1> saved,                                \
      host_view<std::remove_const_t<TS>, 2> grad_student, const soft_target_extras<accum_t<TS>, host_space>& extras,      \
      host_view<std::byte, 1> workspace, const Options& opt = {}) {                                                       \
    static_assert(communicator<Comm> && std::is_same_v<typename Comm::memory_space, host_space>, "a host communicator"); \
    constexpr const char* fn = "vocab_parallel_" #name "_forward_backward";                                               \
    using Acc = accum_t<TS>;                                                                                              \
    using P = soft_target_detail::Policy<Acc>;                                                                            \
    const auto prm = P::make_params(opt);                                                                                 \
    DISTILL_TRY(vocab_parallel_detail::validate<P>(fn, shard, student, teacher, loss, false, saved, grad_student, \
                                                   true, opt, prm, extras));                                              \
    DISTILL_TRY(check_workspace(fn, workspace, vocab_parallel_workspace_size<Acc>(ctx, comm, student.extent(0)),          \
                                "vocab_parallel_workspace_size"));                                                        \
    DISTILL_TRY(vocab_parallel_detail::forward<P>(fn, ctx, comm, shard, student, teacher, loss, saved, opt, prm, extras, \
                                                  workspace));                                                            \
    return vocab_parallel_detail::backward<P>(fn, ctx, shard, student, teacher,                                          \
                                              host_view<const vocab_parallel_row<Acc>, 1>(saved), grad_student, opt, prm, \
                                              extras);                                                                    \
  }

namespace distill {
DISTILL_VOCAB_PARALLEL_ENTRY_POINTS(kl_teacher_student, kl_teacher_student_policy, soft_target_options)
DISTILL_VOCAB_PARALLEL_ENTRY_POINTS(kl_student_teacher, kl_student_teacher_policy, soft_target_options)
DISTILL_VOCAB_PARALLEL_ENTRY_POINTS(jsd, jsd_policy, jsd_options)
}  // namespace distill

#undef DISTILL_VOCAB_PARALLEL_ENTRY_POINTS

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/vocab_parallel_soft_target.cuh"
#endif
