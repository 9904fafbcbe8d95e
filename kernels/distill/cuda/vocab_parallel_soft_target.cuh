// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the vocabulary-parallel soft-target losses (distributed/vocab_parallel_soft_target.hpp):
//! the same steps, enqueued on the context's stream, with a communicator on cuda_space
//! (nccl_communicator) enqueuing its collectives on that same stream. nvcc only.
//!
//!   slice state kernel  one block per row: the online dense_state of this rank's columns
//!                       (soft_target_dense.cuh's block merge) and the label's logit -> saved
//!   comm.all_reduce_merge(saved): in rank order, so every rank holds the same bits
//!   JSD: mixture kernel (one block per row, with the merged normalisers) -> 2 floats per row in
//!        the workspace, then comm.all_reduce(sum) of them
//!   finish kernel       one thread per row: loss and diagnostics from the merged state (JSD:
//!                       stores the mixture sums into saved); soft_target_finalize_kernel sums the
//!                       row losses in a fixed order: the same bits on every rank
//!   backward kernel     one block per row: the slice's gradient from saved; no communication
//! Nothing waits on the host. A row without a distribution, or with a label outside [0, C), gets
//! NaN results, as on the single-GPU CUDA path (the CPU path reports it).

#if !defined(__CUDACC__)
#error "distill/cuda/vocab_parallel_soft_target.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "distill/cuda/runtime.cuh"
#include "distill/cuda/soft_target_dense.cuh"
#include "distill/distributed/vocab_parallel_soft_target.hpp"

namespace distill::vocab_parallel_cuda {

using soft_target_cuda::row_ctx;
using soft_target_detail::dense_state;
using soft_target_detail::ninf;
using soft_target_detail::target_values;
using row_state = vocab_parallel_row<float>;

/// The dense kernels' arguments (a.cols: this slice's width) plus where the slice lies and the
/// saved rows.
template <class TS, class TT, class Policy>
struct vp_args : soft_target_cuda::dense_args<TS, TT, Policy> {
  index_t offset;             // global index of this slice's first class
  index_t classes;            // C
  const row_state* saved_in;  // the merged rows (forward: after the merge)
  row_state* saved_out;       // forward only
};

constexpr int block_threads = 256;

template <class A>
__device__ DISTILL_FORCEINLINE std::int64_t label_of(const A& a, index_t r) {
  return a.labels.empty() ? std::int64_t(-1) : a.labels(r);
}
template <class A>
__device__ DISTILL_FORCEINLINE bool ignored(const A& a, std::int64_t label) {
  return !a.labels.empty() && label == a.ignore_index;
}
template <class A>
__device__ DISTILL_FORCEINLINE soft_target_detail::call_scalars<float> scalars_of(const A& a) {
  soft_target_detail::call_scalars<float> sc;
  sc.t_squared = a.t_squared;
  sc.set_temperature(a.temperature_ptr ? soft_target_detail::checked_temperature(*a.temperature_ptr) : a.temperature);
  return sc;
}
/// A row whose results are NaN: a label outside [0, C) or no distribution in the merged row.
template <class A>
__device__ DISTILL_FORCEINLINE bool bad_row(const A& a, std::int64_t label, const dense_state<float>& s) {
  return (!a.labels.empty() && (label < 0 || label >= a.classes)) || s.mt == ninf<float>() || s.ms == ninf<float>();
}
/// The policy's row from the merged state (JSD: with the summed mixture terms).
template <class Policy, class A>
__device__ DISTILL_FORCEINLINE typename Policy::row policy_row(const A& a, const row_state& sv) {
  typename Policy::row row = Policy::finalize(sv.stats, a.prm, target_values<float>{});
  if constexpr (Policy::has_mixture_pass) Policy::finish_mixture(row, a.prm, sv.mix_pa, sv.mix_qb);
  return row;
}
/// The raw student's log-sum-exp of the hard-label term (the scaled one when T = 1).
template <class A>
__device__ DISTILL_FORCEINLINE float hard_lse(const A& a, const soft_target_detail::call_scalars<float>& sc, std::int64_t label,
                                             const dense_state<float>& s) {
  if (!a.hard || label < 0) return 0.0f;
  return sc.temperature != 1.0f ? s.raw_student_lse() : s.student_lse();
}

/// Step 1: the state of this rank's slice of row blockIdx.x.
template <class TS, class TT, class Policy>
__global__ void __launch_bounds__(block_threads) vocab_parallel_slice_state_kernel(const vp_args<TS, TT, Policy> a) {
  __shared__ dense_state<float> smem[32];
  const index_t r = blockIdx.x;
  const std::int64_t label = label_of(a, r);
  row_state out{dense_state<float>::empty(), 0.0f, 0.0f, 0.0f};
  if (!ignored(a, label)) {  // uniform across the block
    const float inv_t = scalars_of(a).inv_temperature;
    const TS* srow = a.s + r * a.lds;
    const TT* trow = a.t + r * a.ldt;
    dense_state<float> st = dense_state<float>::empty();
    for (index_t c = threadIdx.x; c < a.cols; c += blockDim.x) {
      const float z = load<float>(srow[c]);
      st.add(load<float>(trow[c]) * inv_t, z * inv_t, z, static_cast<std::int32_t>(a.offset + c), a.hard);
    }
    out.stats = soft_target_cuda::block_merge_state(st, smem);
    if (label >= a.offset && label < a.offset + a.cols) out.label_logit = load<float>(srow[label - a.offset]);
  }
  if (threadIdx.x == 0) a.saved_out[r] = out;
}

/// JSD: this slice's mixture sums <p, a>, <q, b> of row blockIdx.x with the merged normalisers.
template <class TS, class TT, class Policy>
__global__ void __launch_bounds__(block_threads) vocab_parallel_mixture_kernel(const vp_args<TS, TT, Policy> a, float* mix) {
  __shared__ float smem[2 * 32];
  const index_t r = blockIdx.x;
  const std::int64_t label = label_of(a, r);
  const row_state sv = a.saved_in[r];
  float m[2] = {0.0f, 0.0f};
  if (!ignored(a, label) && !bad_row(a, label, sv.stats)) {  // uniform across the block
    row_ctx<Policy> x{};
    x.row = Policy::finalize(sv.stats, a.prm, target_values<float>{});
    const float inv_t = scalars_of(a).inv_temperature;
    const TS* srow = a.s + r * a.lds;
    const TT* trow = a.t + r * a.ldt;
    for (index_t c = threadIdx.x; c < a.cols; c += blockDim.x) {
      const float xv = load<float>(trow[c]) * inv_t, yv = load<float>(srow[c]) * inv_t;
      float p, q, pa, qb;
      soft_target_cuda::probs(x, xv, yv, p, q);
      Policy::mixture_terms(x.row, a.prm, xv, yv, p, q, pa, qb);
      m[0] += pa;
      m[1] += qb;
    }
    soft_target_cuda::block_sum_n<2>(m, smem);
  }
  if (threadIdx.x == 0) mix[2 * r] = m[0], mix[2 * r + 1] = m[1];
}

/// Step 3, one thread per row: the row's loss (a.row_loss) and diagnostics from the merged state.
/// `mix` (JSD's summed mixture terms) is stored into the saved rows first when given.
template <class TS, class TT, class Policy>
__global__ void vocab_parallel_finish_kernel(const vp_args<TS, TT, Policy> a, const float* mix) {
  const index_t r = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= a.rows) return;
  const std::int64_t label = label_of(a, r);
  float* const outputs[] = {a.row_loss, a.diag_kl, a.diag_entropy, a.diag_top1, a.diag_hard};
  if (ignored(a, label)) {
    for (float* out : outputs)
      if (out) out[r] = 0.0f;
    return;
  }
  row_state sv = a.saved_in[r];
  if (mix) {
    sv.mix_pa = mix[2 * r], sv.mix_qb = mix[2 * r + 1];
    a.saved_out[r].mix_pa = sv.mix_pa, a.saved_out[r].mix_qb = sv.mix_qb;
  }
  const dense_state<float>& s = sv.stats;
  const soft_target_detail::call_scalars<float> sc = scalars_of(a);
  const bool bad = bad_row(a, label, s);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float hard_ce = a.hard && label >= 0 ? hard_lse(a, sc, label, s) - sv.label_logit : 0.0f;
  if (a.row_loss) {
    const typename Policy::row row = policy_row<Policy>(a, sv);
    const float weight = a.row_weights ? a.row_weights[r] : 1.0f;
    const float hard = a.hard_weight != 0.0f ? a.hard_weight * hard_ce : 0.0f;
    a.row_loss[r] = bad ? nan : weight * (a.soft_weight * sc.c * row.f + hard);
  }
  if (a.diag_kl || a.diag_entropy || a.diag_top1) {
    const auto d = soft_target_detail::diagnostics_of(s);
    if (a.diag_kl) a.diag_kl[r] = bad ? nan : d.kl;
    if (a.diag_entropy) a.diag_entropy[r] = bad ? nan : d.entropy;
    if (a.diag_top1) a.diag_top1[r] = bad ? nan : d.top1;
  }
  if (a.diag_hard) a.diag_hard[r] = bad ? nan : hard_ce;
}

/// The gradient of this slice of row blockIdx.x from its saved row: the single-GPU kernels'
/// per-class formula (grad_value) with the one-hot label at its local column, if in this slice.
template <class TS, class TT, class Policy>
__global__ void __launch_bounds__(block_threads) vocab_parallel_backward_kernel(const vp_args<TS, TT, Policy> a) {
  const index_t r = blockIdx.x;
  const std::int64_t label = label_of(a, r);
  if (ignored(a, label)) {
    soft_target_cuda::write_ignored_row(a, r);  // zeros (its row outputs are null here)
    return;
  }
  const row_state sv = a.saved_in[r];
  row_ctx<Policy> x{};
  x.sc = scalars_of(a);
  x.label = label >= a.offset && label < a.offset + a.cols ? label - a.offset : std::int64_t(-1);
  x.tgt = -1;
  x.weight = a.row_weights ? a.row_weights[r] : 1.0f;
  x.row = policy_row<Policy>(a, sv);
  x.lz = hard_lse(a, x.sc, label, sv.stats);
  x.bad = bad_row(a, label, sv.stats);
  x.inv_divisor = safe_inverse(a.divisor_ptr ? soft_target_detail::checked_normalizer(*a.divisor_ptr) : a.divisor);
  const float inv_t = x.sc.inv_temperature;
  const TS* srow = a.s + r * a.lds;
  const TT* trow = a.t + r * a.ldt;
  TS* grow = a.g + r * a.ldg;
  for (index_t c = threadIdx.x; c < a.cols; c += blockDim.x) {
    const float z = load<float>(srow[c]);  // read before the store: the gradient may alias the student
    const float old = a.accumulate ? load<float>(grow[c]) : 0.0f;
    float no_dt = 0.0f;
    grow[c] = store<TS>(soft_target_cuda::grad_value(a, x, c, z, load<float>(trow[c]) * inv_t, z * inv_t, old, no_dt));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: the checks of the CPU path, then the launches.
// ---------------------------------------------------------------------------------------------
template <class Policy, class TS, class TT, class G, class SV>
status validate(const char* fn, const vocab_shard& shard, const cuda_view<TS, 2>& student, const cuda_view<TT, 2>& teacher,
                const cuda_view<float, 1>& loss, bool loss_required, const SV& saved, const cuda_view<G, 2>& grad, bool want_grad,
                const soft_target_options& opt, const typename Policy::params& prm, const soft_target_extras<float, cuda_space>& ex,
                const cuda_view<std::byte, 1>& workspace, std::size_t workspace_bytes, const char* sizing_function) {
  static_assert(soft_target_cuda::cuda_storage_v<TS> && soft_target_cuda::cuda_storage_v<TT>,
                "the CUDA soft-target losses take float, float16/__half or bfloat16/__nv_bfloat16 logits");
  if (!ex.grad_temperature.empty())
    return fail(errc::invalid_argument, fn,
                "'grad_temperature' is not available vocab-parallel (dL/dT sums over every class: a collective in the backward)");
  DISTILL_TRY(soft_target_detail::validate_soft_target(fn, student, teacher, true, loss, loss_required, grad, want_grad, opt, ex,
                                                       false, true));
  DISTILL_TRY(vocab_parallel_detail::check_shard<float>(fn, shard, student.extent(1)));
  DISTILL_TRY(Policy::validate(fn, shard.classes, prm));
  DISTILL_TRY(check_present(fn, "saved", saved));
  DISTILL_TRY(check_extent(fn, "saved", saved, 0, student.extent(0), "one saved row per row"));
  if (saved.stride(0) != 1) return fail(errc::unsupported_layout, fn, "'saved' must be contiguous");
  if (student.extent(0) > index_t(std::numeric_limits<int>::max()))
    return fail(errc::shape_mismatch, fn, "more than 2^31 - 1 rows");
  DISTILL_TRY(cuda_detail::check_device_view(fn, "student", student));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "teacher", teacher));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "saved", saved));
  if (want_grad) DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_student", grad));
  DISTILL_TRY(soft_target_cuda::check_extras_on_device(fn, ex));
  if (loss.extent(0) > 1 && loss.stride(0) != 1)
    return fail(errc::unsupported_layout, fn, "'loss' must be contiguous on the CUDA path");
  DISTILL_TRY(check_workspace(fn, workspace, workspace_bytes, sizing_function));
  return cuda_detail::check_device_view(fn, "workspace", workspace);
}

/// The collectives are ordered after the kernels only on the same stream.
template <class Comm>
status check_stream(const char* fn, const cuda& ctx, const Comm& comm) {
  static_assert(communicator<Comm> && std::is_same_v<typename Comm::memory_space, cuda_space>,
                "the CUDA path takes a communicator on cuda_space (nccl_communicator)");
  if constexpr (requires { comm.stream(); })
    if (comm.stream() != cuda_detail::stream_of(ctx))
      return fail(errc::invalid_argument, fn, "'comm' works on another stream than 'ctx': its collectives would not follow the kernels");
  return {};
}

/// The arguments every kernel shares; launches the mean divisor's count when it is needed.
template <class Policy, class S, class T, class TS, class TT, class G>
status setup(const char* fn, const cuda& ctx, vp_args<S, T, Policy>& a, const vocab_shard& shard, const cuda_view<TS, 2>& student,
             const cuda_view<TT, 2>& teacher, const cuda_view<float, 1>& loss, const cuda_view<G, 2>& grad, bool want_grad,
             const soft_target_options& opt, const typename Policy::params& prm, const soft_target_extras<float, cuda_space>& ex,
             const soft_target_scratch& ws) {
  DISTILL_TRY(soft_target_cuda::setup_common(fn, ctx, a, student, teacher, loss, grad, want_grad, opt, ex, ws));
  a.prm = prm;
  a.offset = shard.offset;
  a.classes = shard.classes;
  return {};
}

inline unsigned row_blocks(index_t rows, int threads) { return static_cast<unsigned>((rows + threads - 1) / threads); }

template <class Policy, class Comm, class TS, class TT>
status forward(const char* fn, const cuda& ctx, const Comm& comm, const vocab_shard& shard, const cuda_view<TS, 2>& student,
               const cuda_view<TT, 2>& teacher, const cuda_view<float, 1>& loss, const cuda_view<row_state, 1>& saved,
               const soft_target_options& opt, const typename Policy::params& prm, const soft_target_extras<float, cuda_space>& ex,
               const cuda_view<std::byte, 1>& workspace) {
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const index_t n = student.extent(0);
  const std::size_t merge_bytes = all_reduce_merge_workspace_size(comm, n, sizeof(row_state));
  workspace_carver carver(workspace.data());
  const vocab_parallel_cuda_scratch ws(carver, n, merge_bytes);
  vp_args<S, T, Policy> a{};
  DISTILL_TRY(setup(fn, ctx, a, shard, student, teacher, loss, cuda_view<S, 2>{}, false, opt, prm, ex, ws.rows));
  a.saved_in = saved.data();
  a.saved_out = saved.data();

  // 1. the state of this rank's slice of every row; 2. the one merge across ranks
  vocab_parallel_slice_state_kernel<S, T, Policy><<<static_cast<unsigned>(n), block_threads, 0, stream>>>(a);
  DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  const cuda_view<std::byte, 1> merge_ws = merge_bytes ? make_view<cuda_space>(ws.merge, index_t(merge_bytes)) : cuda_view<std::byte, 1>{};
  DISTILL_TRY(comm.template all_reduce_merge<vocab_parallel_detail::merge_rows<float>>(saved, merge_ws));

  // JSD: the mixture sums over this slice with the global normalisers, summed over ranks
  const float* mix = nullptr;
  if constexpr (Policy::has_mixture_pass) {
    vocab_parallel_mixture_kernel<S, T, Policy><<<static_cast<unsigned>(n), block_threads, 0, stream>>>(a, ws.mix);
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
    DISTILL_TRY(comm.all_reduce(make_view<cuda_space>(ws.mix, 2 * n), reduce_op::sum));
    mix = ws.mix;
  }

  // 3. the loss of every row, then the batch loss in a fixed order
  vocab_parallel_finish_kernel<S, T, Policy><<<row_blocks(n, block_threads), block_threads, 0, stream>>>(a, mix);
  DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  return soft_target_cuda::launch_finalize(fn, ctx, a, opt, loss, ex, ws.rows);
}

template <class Policy, class TS, class TT>
status backward(const char* fn, const cuda& ctx, const vocab_shard& shard, const cuda_view<TS, 2>& student,
                const cuda_view<TT, 2>& teacher, const in_view<row_state, 1, cuda_space>& saved,
                const cuda_view<std::remove_const_t<TS>, 2>& grad, const soft_target_options& opt, const typename Policy::params& prm,
                const soft_target_extras<float, cuda_space>& ex, const cuda_view<std::byte, 1>& workspace, bool diagnostics) {
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const index_t n = student.extent(0);
  workspace_carver carver(workspace.data());
  const soft_target_scratch ws(carver, n);
  vp_args<S, T, Policy> a{};
  DISTILL_TRY(setup(fn, ctx, a, shard, student, teacher, cuda_view<float, 1>{}, grad, true, opt, prm, ex, ws));
  a.saved_in = saved.data();
  a.saved_out = nullptr;
  a.row_loss = nullptr;
  if (diagnostics && (a.diag_kl || a.diag_entropy || a.diag_top1 || a.diag_hard)) {  // as the CPU backward
    vocab_parallel_finish_kernel<S, T, Policy><<<row_blocks(n, block_threads), block_threads, 0, stream>>>(a, nullptr);
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  a.diag_kl = a.diag_entropy = a.diag_top1 = a.diag_hard = nullptr;
  vocab_parallel_backward_kernel<S, T, Policy><<<static_cast<unsigned>(n), block_threads, 0, stream>>>(a);
  return cuda_detail::launch_status(fn, stream);
}

}  // namespace distill::vocab_parallel_cuda

// The CUDA overloads of the three passes (see distributed/vocab_parallel_soft_target.hpp).
#define DISTILL_VOCAB_PARALLEL_CUDA_ENTRY_POINTS(name, Policy, Options)                                                    \
  template <class Comm, class TS, class TT>                                                                                \
  [[nodiscard]] status vocab_parallel_##name##_forward(                                                                    \
      const cuda& ctx, const Comm& comm, const vocab_shard& shard, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,    \
      cuda_view<float, 1> loss, cuda_view<vocab_parallel_row<float>, 1> saved, const soft_target_extras<float, cuda_space>& extras, \
      cuda_view<std::byte, 1> workspace, const Options& opt = {}) {                                                        \
    constexpr const char* fn = "vocab_parallel_" #name "_forward";                                                         \
    using P = soft_target_detail::Policy<float>;                                                                           \
    const auto prm = P::make_params(opt);                                                                                  \
    DISTILL_TRY(vocab_parallel_cuda::check_stream(fn, ctx, comm));                                                         \
    DISTILL_TRY(vocab_parallel_cuda::validate<P>(fn, shard, student, teacher, loss, true, saved,                           \
                                                 cuda_view<std::remove_const_t<TS>, 2>{}, false, opt, prm, extras, workspace, \
                                                 vocab_parallel_workspace_size(ctx, comm, student.extent(0)),              \
                                                 "vocab_parallel_workspace_size"));                                        \
    return vocab_parallel_cuda::forward<P>(fn, ctx, comm, shard, student, teacher, loss, saved, opt, prm, extras, workspace); \
  }                                                                                                                        \
  template <class TS, class TT>                                                                                            \
  [[nodiscard]] status vocab_parallel_##name##_backward(                                                                   \
      const cuda& ctx, const vocab_shard& shard, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,                      \
      in_view<vocab_parallel_row<float>, 1, cuda_space> saved, cuda_view<std::remove_const_t<TS>, 2> grad_student,         \
      const soft_target_extras<float, cuda_space>& extras, cuda_view<std::byte, 1> workspace, const Options& opt = {}) {   \
    constexpr const char* fn = "vocab_parallel_" #name "_backward";                                                        \
    using P = soft_target_detail::Policy<float>;                                                                           \
    const auto prm = P::make_params(opt);                                                                                  \
    DISTILL_TRY(vocab_parallel_cuda::validate<P>(fn, shard, student, teacher, cuda_view<float, 1>{}, false, saved,        \
                                                 grad_student, true, opt, prm, extras, workspace,                          \
                                                 soft_target_workspace_size(ctx, student.extent(0)), "soft_target_workspace_size")); \
    return vocab_parallel_cuda::backward<P>(fn, ctx, shard, student, teacher, saved, grad_student, opt, prm, extras, workspace, \
                                            true);                                                                         \
  }                                                                                                                        \
  template <class Comm, class TS, class TT>                                                                                \
  [[nodiscard]] status vocab_parallel_##name##_forward_backward(                                                           \
      const cuda& ctx, const Comm& comm, const vocab_shard& shard, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,    \
      cuda_view<float, 1> loss, cuda_view<vocab_parallel_row<float>, 1> saved, cuda_view<std::remove_const_t<TS>, 2> grad_student, \
      const soft_target_extras<float, cuda_space>& extras, cuda_view<std::byte, 1> workspace, const Options& opt = {}) {   \
    constexpr const char* fn = "vocab_parallel_" #name "_forward_backward";                                                \
    using P = soft_target_detail::Policy<float>;                                                                           \
    const auto prm = P::make_params(opt);                                                                                  \
    DISTILL_TRY(vocab_parallel_cuda::check_stream(fn, ctx, comm));                                                         \
    DISTILL_TRY(vocab_parallel_cuda::validate<P>(fn, shard, student, teacher, loss, false, saved, grad_student, true, opt, \
                                                 prm, extras, workspace,                                                   \
                                                 vocab_parallel_workspace_size(ctx, comm, student.extent(0)),              \
                                                 "vocab_parallel_workspace_size"));                                        \
    DISTILL_TRY(vocab_parallel_cuda::forward<P>(fn, ctx, comm, shard, student, teacher, loss, saved, opt, prm, extras,     \
                                                workspace));                                                               \
    return vocab_parallel_cuda::backward<P>(fn, ctx, shard, student, teacher,                                              \
                                            in_view<vocab_parallel_row<float>, 1, cuda_space>(saved), grad_student, opt,   \
                                            prm, extras, workspace, false);                                                \
  }

namespace distill {
DISTILL_VOCAB_PARALLEL_CUDA_ENTRY_POINTS(kl_teacher_student, kl_teacher_student_policy, soft_target_options)
DISTILL_VOCAB_PARALLEL_CUDA_ENTRY_POINTS(kl_student_teacher, kl_student_teacher_policy, soft_target_options)
DISTILL_VOCAB_PARALLEL_CUDA_ENTRY_POINTS(jsd, jsd_policy, jsd_options)
}  // namespace distill

#undef DISTILL_VOCAB_PARALLEL_CUDA_ENTRY_POINTS
