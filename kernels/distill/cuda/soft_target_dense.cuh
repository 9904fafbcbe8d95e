// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path shared by the dense soft-target losses (forward KL, reverse KL, JSD, soft CE, DKD).
//! The per-row mathematics is the primitive's policy from include/distill/losses/ (the same
//! DISTILL_HOST_DEVICE functions the CPU path runs); this file only moves data. nvcc only.
//!
//! Kernels (one block per row; float accumulation for every input type):
//!  - `dense_soft_target_block_per_row_resident_kernel` (C <= 16 * 512, JSD 8 * 512): the block
//!    holds its row in registers (16 values, JSD 8, of student and teacher per thread), so the row is read from memory
//!    exactly once: maxima -> block reduce -> sums -> block reduce -> [JSD: mixture sums] ->
//!    gradient, all from registers. Bytes: read s + t once, write g once.
//!  - `dense_soft_target_block_per_row_streaming_kernel` (any C): a persistent grid of about one
//!    block per SM walks the rows; pass A streams the row once with online maxima/sums (rescaled
//!    when a maximum grows), pass C re-reads it for the gradient. With ~one row in flight per SM
//!    (132 x 256 KiB on an H100) the re-read mostly hits L2, so DRAM sees close to one read.
//! Loads and stores are 16-byte vectors when every row of every tensor is aligned for them
//! (else scalar, still coalesced). No atomics: the batch loss and dL/dT are per-row values in the
//! caller's workspace summed by `soft_target_finalize_kernel` in a fixed order (deterministic),
//! and the mean divisor, when it must be counted, by `soft_target_divisor_kernel` first.
//! Nothing synchronises with the host; every launch goes to the context's stream.

#if !defined(__CUDACC__)
#error "distill/cuda/soft_target_dense.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/detail/device.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/losses/detail/soft_target_dispatch.hpp"
#include "distill/losses/soft_target_common.hpp"

namespace distill::soft_target_cuda {

using soft_target_detail::dense_state;
using soft_target_detail::ninf;
using soft_target_detail::st_exp;
using soft_target_detail::target_values;

template <class T>
inline constexpr bool cuda_storage_v =
    std::is_same_v<std::remove_cv_t<T>, float> || std::is_same_v<std::remove_cv_t<T>, float16> ||
    std::is_same_v<std::remove_cv_t<T>, bfloat16> || std::is_same_v<std::remove_cv_t<T>, __half> ||
    std::is_same_v<std::remove_cv_t<T>, __nv_bfloat16>;

// ---------------------------------------------------------------------------------------------
// Vector access: V consecutive elements of T as one aligned load/store of V * sizeof(T) bytes.
// ---------------------------------------------------------------------------------------------
template <class T, int V>
struct alignas(V * sizeof(T)) packed {
  T v[V];
};

template <int V, class T>
__device__ DISTILL_FORCEINLINE void load_chunk(const T* p, float (&out)[V]) {
  const packed<T, V> r = *reinterpret_cast<const packed<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = load<float>(r.v[i]);
}
template <int V, class T>
__device__ DISTILL_FORCEINLINE void store_chunk(T* p, const float (&in)[V]) {
  packed<T, V> r;
#pragma unroll
  for (int i = 0; i < V; ++i) r.v[i] = store<T>(in[i]);
  *reinterpret_cast<packed<T, V>*>(p) = r;
}
/// V elements starting at column c of a row with `cols` columns; out-of-range elements get `fill`.
/// Full chunks use one vector access (the host checked the alignment); the row's last partial
/// chunk is read element by element.
template <int V, class T>
__device__ DISTILL_FORCEINLINE void load_cols(const T* row, index_t c, index_t cols, float fill, float (&out)[V]) {
  if (c + V <= cols) {
    load_chunk<V>(row + c, out);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = c + i < cols ? load<float>(row[c + i]) : fill;
  }
}
/// The same, kept in the storage type until each value is used: a 16-bit chunk of 8 values takes
/// 4 registers instead of 8 (the streaming kernel holds several chunks of three inputs in flight).
template <int V, class T>
__device__ DISTILL_FORCEINLINE void load_cols_raw(const T* row, index_t c, index_t cols, float fill, packed<T, V>& out) {
  if (c + V <= cols) {
    out = *reinterpret_cast<const packed<T, V>*>(row + c);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out.v[i] = c + i < cols ? row[c + i] : store<T>(fill);
  }
}
template <int V, class T>
__device__ DISTILL_FORCEINLINE void store_cols(T* row, index_t c, index_t cols, const float (&in)[V]) {
  if (c + V <= cols) {
    store_chunk<V>(row + c, in);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (c + i < cols) row[c + i] = store<T>(in[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Block reductions (detail/reduce.cuh) for any blockDim.x that is a multiple of 32 (<= 1024).
// ---------------------------------------------------------------------------------------------
using cuda_detail::block_sum_n;

/// (value, index) maximum with ties to the lower index; NaN values never win.
struct arg_max {
  float v;
  int i;
};
__device__ DISTILL_FORCEINLINE arg_max better(arg_max a, arg_max b) {
  if (b.v > a.v || (b.v == a.v && b.i >= 0 && (a.i < 0 || b.i < a.i))) return b;
  return a;
}
struct arg_max_op {
  __device__ DISTILL_FORCEINLINE arg_max operator()(arg_max a, arg_max b) const { return better(a, b); }
};
/// Two arg-maxima reduced together (teacher, student).
struct arg_max2 {
  arg_max t, s;
};
struct arg_max2_op {
  __device__ DISTILL_FORCEINLINE arg_max2 operator()(arg_max2 a, const arg_max2& b) const { return {better(a.t, b.t), better(a.s, b.s)}; }
};
__device__ DISTILL_FORCEINLINE void block_arg_max2(arg_max& t, arg_max& s, arg_max2* smem) {
  const arg_max none{-INFINITY, -1};
  const arg_max2 r = cuda_detail::block_all_reduce(arg_max2{t, s}, arg_max2_op{}, arg_max2{none, none}, smem);
  t = r.t;
  s = r.s;
}

/// Merge every thread's online state; every thread gets the row's state.
__device__ DISTILL_FORCEINLINE dense_state<float> block_merge_state(dense_state<float> s, dense_state<float>* smem) {
  return cuda_detail::block_all_reduce(s, cuda_detail::state_merge_op{}, dense_state<float>::empty(), smem);
}

// ---------------------------------------------------------------------------------------------
// Kernel arguments (plain values, copied to the device with the launch).
// ---------------------------------------------------------------------------------------------
/// The dense kernels' arguments. The top-k kernel's extend them (with no policy and its values
/// as `t`): setup_common fills every field they share.
template <class TS, class TT, class Policy>
struct dense_args {
  const TS* s;
  index_t lds;
  const TT* t;
  index_t ldt;
  TS* g;  // nullptr: no gradient
  index_t ldg;
  index_t rows;
  index_t cols;
  float temperature;
  const float* temperature_ptr;  // device scalar overriding `temperature`
  bool t_squared;
  float soft_weight, hard_weight, grad_scale;
  label_view<cuda_space> labels;  // absent: no labels
  std::int64_t ignore_index;
  const float* row_weights;
  float divisor;            // used when divisor_ptr is null
  const float* divisor_ptr;  // normalizer or the counted mean divisor
  bool accumulate;
  bool hard;      // the raw-student LSE is needed (hard term or its diagnostic)
  bool want_dt;
  float* row_loss;  // per-row weighted losses (reduction none: the loss output; else workspace)
  float* row_dt;    // per-row dL/dT terms (workspace) or nullptr
  float* diag_kl;
  float* diag_entropy;
  float* diag_top1;
  float* diag_hard;
  typename Policy::params prm;
};

/// The policy of a kernel that uses only the fields dense_args shares (the top-k loss).
struct no_policy {
  struct params {};
};

/// Everything a block knows about its row after the statistics pass.
template <class Policy>
struct row_ctx {
  soft_target_detail::call_scalars<float> sc;
  std::int64_t label;  // -1: none
  index_t tgt;         // DKD's target column, else -1
  float weight;
  target_values<float> tv;
  typename Policy::row row;
  float lz;            // raw-student LSE (hard term)
  bool bad;            // masked row or (CUDA) a label outside [0, C): NaN results
  float inv_divisor;
};

/// Row prologue shared by both kernels: label, weight, temperature, the label column.
/// Returns false for an ignored row (whose outputs it has written).
/// A row whose label is the ignore index (dense and top-k kernels): zero gradient (unless
/// accumulating) and zero row outputs; the block's threads call it together.
template <class Args>
__device__ void write_ignored_row(const Args& a, index_t r) {
  if (a.g && !a.accumulate)
    for (index_t c = threadIdx.x; c < a.cols; c += blockDim.x) a.g[r * a.ldg + c] = store<std::remove_pointer_t<decltype(a.g)>>(0.0f);
  if (threadIdx.x == 0) {
    float* const outputs[] = {a.row_loss, a.row_dt, a.diag_kl, a.diag_entropy, a.diag_top1, a.diag_hard};
    for (float* out : outputs)
      if (out) out[r] = 0.0f;
  }
}

template <class TS, class TT, class Policy>
__device__ bool row_begin(const dense_args<TS, TT, Policy>& a, index_t r, row_ctx<Policy>& x) {
  x.sc.t_squared = a.t_squared;
  x.sc.set_temperature(a.temperature_ptr ? soft_target_detail::checked_temperature(*a.temperature_ptr) : a.temperature);
  x.label = a.labels.empty() ? std::int64_t(-1) : a.labels(r);
  x.weight = a.row_weights ? a.row_weights[r] : 1.0f;
  x.inv_divisor = safe_inverse(a.divisor_ptr ? soft_target_detail::checked_normalizer(*a.divisor_ptr) : a.divisor);
  x.bad = false;
  x.tv = {};
  if (!a.labels.empty() && x.label == a.ignore_index) {
    write_ignored_row(a, r);
    return false;
  }
  if (!a.labels.empty() && (x.label < 0 || x.label >= a.cols)) {  // cannot be reported: NaN row
    x.bad = true;
    x.label = -1;
  }
  x.tgt = Policy::uses_target ? static_cast<index_t>(x.label) : index_t(-1);
  if (Policy::uses_target && x.label < 0) x.bad = true;
  if (x.label >= 0) {  // read before any gradient store (the gradient may alias the student)
    x.tv.z = load<float>(a.s[r * a.lds + x.label]);
    x.tv.y = x.tv.z * x.sc.inv_temperature;
    x.tv.x = load<float>(a.t[r * a.ldt + x.label]) * x.sc.inv_temperature;
  }
  return true;
}

/// After the statistics: the policy's row, the hard-term LSE, the row's outputs (thread 0).
template <class TS, class TT, class Policy>
__device__ void row_finish_stats(const dense_args<TS, TT, Policy>& a, index_t r, row_ctx<Policy>& x,
                                 dense_state<float> st) {
  dense_state<float> full = st;
  if (Policy::uses_target && x.tgt >= 0) {
    dense_state<float> one = dense_state<float>::empty();
    one.add(x.tv.x, x.tv.y, x.tv.z, static_cast<std::int32_t>(x.tgt), a.hard);
    full.merge(one);
  }
  x.bad = x.bad || full.mt == ninf<float>() || full.ms == ninf<float>();
  x.row = Policy::finalize(st, a.prm, x.tv);
  x.lz = 0.0f;
  float hard_ce = 0.0f;
  if (a.hard && x.label >= 0) {
    x.lz = x.sc.temperature != 1.0f ? full.raw_student_lse() : full.student_lse();
    hard_ce = x.lz - x.tv.z;
  }
  if (threadIdx.x == 0) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float soft = a.soft_weight * x.sc.c * x.row.f;
    const float hard = a.hard_weight != 0.0f ? a.hard_weight * hard_ce : 0.0f;
    if (a.row_loss && !Policy::has_mixture_pass) a.row_loss[r] = x.bad ? nan : x.weight * (soft + hard);
    if (a.diag_kl || a.diag_entropy || a.diag_top1) {
      const auto d = soft_target_detail::diagnostics_of(full);
      if (a.diag_kl) a.diag_kl[r] = x.bad ? nan : d.kl;
      if (a.diag_entropy) a.diag_entropy[r] = x.bad ? nan : d.entropy;
      if (a.diag_top1) a.diag_top1[r] = x.bad ? nan : d.top1;
    }
    if (a.diag_hard) a.diag_hard[r] = x.bad ? nan : hard_ce;
  }
}

/// JSD: after the mixture sums, the row's loss (thread 0).
template <class TS, class TT, class Policy>
__device__ void row_finish_mixture(const dense_args<TS, TT, Policy>& a, index_t r, row_ctx<Policy>& x, float pa, float qb) {
  if constexpr (Policy::has_mixture_pass) {
    Policy::finish_mixture(x.row, a.prm, pa, qb);
    if (threadIdx.x == 0 && a.row_loss) {
      const float hard_ce = (a.hard && x.label >= 0) ? x.lz - x.tv.z : 0.0f;
      const float hard = a.hard_weight != 0.0f ? a.hard_weight * hard_ce : 0.0f;
      a.row_loss[r] = x.bad ? std::numeric_limits<float>::quiet_NaN() : x.weight * (a.soft_weight * x.sc.c * x.row.f + hard);
    }
  }
}

/// p and q of one class (0 for -inf logits; DKD: over the non-target classes).
template <class Policy>
__device__ DISTILL_FORCEINLINE void probs(const row_ctx<Policy>& x, float xv, float yv, float& p, float& q) {
  p = (xv == ninf<float>() || x.row.lpn == ninf<float>()) ? 0.0f : st_exp(xv - x.row.lpn);
  q = (yv == ninf<float>() || x.row.lqn == ninf<float>()) ? 0.0f : st_exp(yv - x.row.lqn);
}

/// Gradient value of class c from its raw student logit zs and scaled logits xv = z^t/T,
/// yv = z^s/T, and its dL/dT term; `old` is the previous gradient when accumulating.
template <class TS, class TT, class Policy>
__device__ DISTILL_FORCEINLINE float grad_value(const dense_args<TS, TT, Policy>& a, const row_ctx<Policy>& x, index_t c,
                                                float zs, float xv, float yv, float old, float& dt) {
  if (x.bad) return std::numeric_limits<float>::quiet_NaN();
  float gs = 0.0f, gt = 0.0f;
  if constexpr (Policy::uses_target) {
    if (c == x.tgt) {
      gs = Policy::grad_student_target(x.row, a.prm);
      gt = Policy::grad_teacher_target(x.row, a.prm);
    }
  }
  if (!Policy::uses_target || c != x.tgt) {
    float p, q;
    probs(x, xv, yv, p, q);
    gs = Policy::grad_student(x.row, a.prm, xv, yv, p, q);
    gt = a.want_dt ? Policy::grad_teacher(x.row, a.prm, xv, yv, p, q) : 0.0f;
  }
  const float coef_soft = a.grad_scale * x.weight * a.soft_weight * x.sc.c * x.sc.inv_temperature * x.inv_divisor;
  float v = coef_soft * gs;
  if (a.hard_weight != 0.0f) {
    const float coef_hard = a.grad_scale * x.weight * a.hard_weight * x.inv_divisor;
    const float sm = zs == ninf<float>() ? 0.0f : st_exp(zs - x.lz);
    v += coef_hard * (sm - (c == x.label ? 1.0f : 0.0f));
  }
  if (a.want_dt)
    dt += soft_target_detail::keep_or_zero(gs != 0.0f, gs * yv) + soft_target_detail::keep_or_zero(gt != 0.0f, gt * xv);
  return a.accumulate ? v + old : v;
}

/// Thread 0: the row's dL/dT term.
template <class TS, class TT, class Policy>
__device__ void row_finish_dt(const dense_args<TS, TT, Policy>& a, index_t r, const row_ctx<Policy>& x, float dt_sum) {
  if (threadIdx.x == 0 && a.row_dt)
    a.row_dt[r] = x.bad ? std::numeric_limits<float>::quiet_NaN()
                        : x.weight * a.soft_weight * (x.sc.dc * x.row.f - x.sc.c * x.sc.inv_temperature * dt_sum);
}

// ---------------------------------------------------------------------------------------------
// Resident kernel: the row in registers. Thread `tid` holds chunks j = 0 .. N/V-1 at columns
// (j * blockDim.x + tid) * V .. + V - 1, with N * blockDim.x >= C (checked by the launcher).
// ---------------------------------------------------------------------------------------------
/// Values of each input a thread holds. JSD's gradient evaluates two log-add-exps per class on
/// top of the mixture pass; with 16 values per thread its unrolled loops need more than the 128
/// registers 512 threads allow and spilled 200-300 bytes per thread (more than the row data
/// itself), so it holds 8 and rows above 8 x 512 classes take the streaming kernel.
template <class Policy>
constexpr int resident_elems = Policy::has_mixture_pass ? 8 : 16;
constexpr int resident_max_threads = 512;

template <class TS, class TT, class Policy, int V>
__global__ void __launch_bounds__(resident_max_threads)
    dense_soft_target_block_per_row_resident_kernel(const dense_args<TS, TT, Policy> a) {
  constexpr int N = resident_elems<Policy>, J = N / V;
  __shared__ float sum_smem[6 * 32];
  __shared__ arg_max2 arg_smem[32];
  const index_t r = blockIdx.x;
  row_ctx<Policy> x;
  if (!row_begin(a, r, x)) return;
  const TS* srow = a.s + r * a.lds;
  const TT* trow = a.t + r * a.ldt;
  const float inv_t = x.sc.inv_temperature;

  // the row: raw logits, -inf outside [0, C) and at DKD's target column
  float sv[J][V], tv[J][V];
  arg_max am_s{-INFINITY, -1}, am_t{-INFINITY, -1};
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const index_t c0 = (static_cast<index_t>(j) * blockDim.x + threadIdx.x) * V;
    load_cols<V>(srow, c0, a.cols, -INFINITY, sv[j]);
    load_cols<V>(trow, c0, a.cols, -INFINITY, tv[j]);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (c0 + i == x.tgt) sv[j][i] = tv[j][i] = -INFINITY;
      if (sv[j][i] > am_s.v) am_s = {sv[j][i], static_cast<int>(c0 + i)};
      if (tv[j][i] > am_t.v) am_t = {tv[j][i], static_cast<int>(c0 + i)};
    }
  }
  block_arg_max2(am_t, am_s, arg_smem);

  // sums relative to the (known) maxima: no rescaling ever happens in `add`
  dense_state<float> st = dense_state<float>::empty();
  st.mt = am_t.v * inv_t;
  st.ms = am_s.v * inv_t;
  st.mz = am_s.v;
  if (st.mt == ninf<float>()) st.mt = 0.0f;  // all -inf: keep e^{-inf - 0} = 0 (restored below)
  if (st.ms == ninf<float>()) st.ms = 0.0f, st.mz = 0.0f;
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int i = 0; i < V; ++i) st.add(tv[j][i] * inv_t, sv[j][i] * inv_t, sv[j][i], 0, a.hard);
  float sums[6] = {st.st, st.a, st.tx, st.ss, st.b, st.sz};
  block_sum_n<6>(sums, sum_smem);
  st.st = sums[0], st.a = sums[1], st.tx = sums[2], st.ss = sums[3], st.b = sums[4], st.sz = sums[5];
  if (am_t.v == ninf<float>()) st.mt = ninf<float>();
  if (am_s.v == ninf<float>()) st.ms = st.mz = ninf<float>();
  st.it = am_t.i;
  st.is = am_s.i;
  row_finish_stats(a, r, x, st);  // (DKD: merges the target element back for the diagnostics)

  if constexpr (Policy::has_mixture_pass) {
    float m[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < J; ++j)
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float xv = tv[j][i] * inv_t, yv = sv[j][i] * inv_t;
        float p, q, pa, qb;
        probs(x, xv, yv, p, q);
        Policy::mixture_terms(x.row, a.prm, xv, yv, p, q, pa, qb);
        m[0] += pa;
        m[1] += qb;
      }
    block_sum_n<2>(m, sum_smem);
    row_finish_mixture(a, r, x, m[0], m[1]);
  }

  if (a.g) {
    TS* grow = a.g + r * a.ldg;
    float dt = 0.0f;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const index_t c0 = (static_cast<index_t>(j) * blockDim.x + threadIdx.x) * V;
      if (c0 >= a.cols) continue;
      float old[V], out[V];
      if (a.accumulate) load_cols<V>(static_cast<const TS*>(grow), c0, a.cols, 0.0f, old);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const index_t c = c0 + i;
        if (c >= a.cols) {
          out[i] = 0.0f;  // not stored
        } else if (c == x.tgt) {  // DKD: its registers hold -inf, the saved logits are in x.tv
          out[i] = grad_value(a, x, c, x.tv.z, x.tv.x, x.tv.y, a.accumulate ? old[i] : 0.0f, dt);
        } else {
          out[i] = grad_value(a, x, c, sv[j][i], tv[j][i] * inv_t, sv[j][i] * inv_t, a.accumulate ? old[i] : 0.0f, dt);
        }
      }
      store_cols<V>(grow, c0, a.cols, out);
    }
    if (a.want_dt) {
      float d[1] = {dt};
      block_sum_n<1>(d, sum_smem);
      row_finish_dt(a, r, x, d[0]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Streaming kernel: any C. Rows r = blockIdx.x, blockIdx.x + gridDim.x, ...
// ---------------------------------------------------------------------------------------------
constexpr int streaming_threads = 512;
/// Elements of each input in flight per thread per iteration. JSD's heavier gradient keeps 8 (of
/// 16-bit inputs: one 16-byte chunk of each input), which still puts 24 KiB in flight per SM, and
/// fits its registers without spilling.
template <class Policy>
constexpr int streaming_elems = Policy::has_mixture_pass ? 8 : 16;

template <class TS, class TT, class Policy, int V>
__global__ void __launch_bounds__(streaming_threads)
    dense_soft_target_block_per_row_streaming_kernel(const dense_args<TS, TT, Policy> a) {
  __shared__ dense_state<float> state_smem[32];
  __shared__ float sum_smem[2 * 32];
  constexpr int U = V == 1 ? streaming_elems<Policy> / 2 : streaming_elems<Policy> / V;  // chunks per iteration
  const index_t step = static_cast<index_t>(blockDim.x) * V;
  for (index_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    row_ctx<Policy> x;
    if (!row_begin(a, r, x)) continue;  // uniform across the block: every thread sees the same label
    const TS* srow = a.s + r * a.lds;
    const TT* trow = a.t + r * a.ldt;
    const float inv_t = x.sc.inv_temperature;

    // pass A: online statistics over one read of the row
    dense_state<float> st = dense_state<float>::empty();
    for (index_t base = static_cast<index_t>(threadIdx.x) * V; base < a.cols; base += U * step) {
      packed<TS, V> sv[U];
      packed<TT, V> tv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {  // issue all loads first
        const index_t c0 = base + u * step;
        if (c0 < a.cols) {
          load_cols_raw<V>(srow, c0, a.cols, -INFINITY, sv[u]);
          load_cols_raw<V>(trow, c0, a.cols, -INFINITY, tv[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const index_t c0 = base + u * step;
        if (c0 >= a.cols) break;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const index_t c = c0 + i;
          if (c >= a.cols || c == x.tgt) continue;
          const float z = load<float>(sv[u].v[i]);
          st.add(load<float>(tv[u].v[i]) * inv_t, z * inv_t, z, static_cast<std::int32_t>(c), a.hard);
        }
      }
    }
    st = block_merge_state(st, state_smem);
    row_finish_stats(a, r, x, st);

    if constexpr (Policy::has_mixture_pass) {  // pass B: the mixture sums (a second read)
      float m[2] = {0.0f, 0.0f};
      for (index_t c0 = static_cast<index_t>(threadIdx.x) * V; c0 < a.cols; c0 += step) {
        float sv[V], tv[V];
        load_cols<V>(srow, c0, a.cols, -INFINITY, sv);
        load_cols<V>(trow, c0, a.cols, -INFINITY, tv);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float xv = tv[i] * inv_t, yv = sv[i] * inv_t;
          float p, q, pa, qb;
          probs(x, xv, yv, p, q);
          Policy::mixture_terms(x.row, a.prm, xv, yv, p, q, pa, qb);
          m[0] += pa;
          m[1] += qb;
        }
      }
      block_sum_n<2>(m, sum_smem);
      row_finish_mixture(a, r, x, m[0], m[1]);
    }

    if (a.g) {  // pass C: re-read (mostly from L2) and write the gradient
      TS* grow = a.g + r * a.ldg;
      float dt = 0.0f;
      for (index_t base = static_cast<index_t>(threadIdx.x) * V; base < a.cols; base += U * step) {
        packed<TS, V> sv[U], old[U];
        packed<TT, V> tv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const index_t c0 = base + u * step;
          if (c0 < a.cols) {
            load_cols_raw<V>(srow, c0, a.cols, 0.0f, sv[u]);
            load_cols_raw<V>(trow, c0, a.cols, 0.0f, tv[u]);
            if (a.accumulate) load_cols_raw<V>(static_cast<const TS*>(grow), c0, a.cols, 0.0f, old[u]);
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const index_t c0 = base + u * step;
          if (c0 >= a.cols) break;
          float out[V];
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const float z = load<float>(sv[u].v[i]);
            out[i] = c0 + i < a.cols ? grad_value(a, x, c0 + i, z, load<float>(tv[u].v[i]) * inv_t, z * inv_t,
                                                  a.accumulate ? load<float>(old[u].v[i]) : 0.0f, dt)
                                     : 0.0f;
          }
          store_cols<V>(grow, c0, a.cols, out);
        }
      }
      if (a.want_dt) {
        float d[1] = {dt};
        block_sum_n<1>(d, sum_smem);
        row_finish_dt(a, r, x, d[0]);
      }
    }
    __syncthreads();  // the next row reuses the shared scratch
  }
}

// ---------------------------------------------------------------------------------------------
// Batch reductions (one block, fixed order: deterministic).
// ---------------------------------------------------------------------------------------------
constexpr int reduce_threads = 1024;

/// Mean divisor: sum of the weights of the rows that are not ignored.
__global__ void __launch_bounds__(reduce_threads)
    soft_target_divisor_kernel(label_view<cuda_space> labels, std::int64_t ignore_index, const float* weights, index_t rows,
                               float* divisor) {
  __shared__ float smem[32];
  float s[1] = {0.0f};
  for (index_t r = threadIdx.x; r < rows; r += blockDim.x)
    if (labels.empty() || labels(r) != ignore_index) s[0] += weights ? weights[r] : 1.0f;
  block_sum_n<1>(s, smem);
  if (threadIdx.x == 0) *divisor = s[0];
}

/// loss = sum_r row_loss[r] / D; dL/dT = grad_scale * sum_r row_dt[r] / D.
__global__ void __launch_bounds__(reduce_threads)
    soft_target_finalize_kernel(const float* row_loss, const float* row_dt, index_t rows, float divisor,
                                const float* divisor_ptr, float grad_scale, float* loss, float* grad_temperature) {
  __shared__ float smem[2 * 32];
  float s[2] = {0.0f, 0.0f};
  for (index_t r = threadIdx.x; r < rows; r += blockDim.x) {
    if (loss) s[0] += row_loss[r];
    if (grad_temperature) s[1] += row_dt[r];
  }
  block_sum_n<2>(s, smem);
  if (threadIdx.x == 0) {
    const float inv = safe_inverse(divisor_ptr ? soft_target_detail::checked_normalizer(*divisor_ptr) : divisor);
    if (loss) *loss = s[0] * inv;
    if (grad_temperature) *grad_temperature = grad_scale * s[1] * inv;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: validation, launch configuration, the three launches.
// ---------------------------------------------------------------------------------------------
template <class V>
status check_device_views(const char* fn, const char* name, const V& v) {
  return cuda_detail::check_device_view(fn, name, v);
}

template <class Acc>
status check_extras_on_device(const char* fn, const soft_target_extras<Acc, cuda_space>& ex) {
  DISTILL_TRY(cuda_detail::check_device_view(fn, "labels", ex.labels));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_weights", ex.row_weights));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "normalizer", ex.normalizer));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "temperature", ex.temperature));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_temperature", ex.grad_temperature));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_kl", ex.row_kl));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_teacher_entropy", ex.row_teacher_entropy));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_top1_agreement", ex.row_top1_agreement));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_hard_loss", ex.row_hard_loss));
  // rank-1 extras: unit stride (the kernels index them densely)
  auto unit = [&](const char* name, index_t extent, index_t stride) -> status {
    if (extent > 1 && stride != 1)
      return fail(errc::unsupported_layout, fn, std::string("'") + name + "' must be contiguous on the CUDA path");
    return {};
  };
  DISTILL_TRY(unit("labels", ex.labels.extent(0), ex.labels.stride(0)));  // the kernels index labels densely too
  DISTILL_TRY(unit("row_weights", ex.row_weights.extent(0), ex.row_weights.stride(0)));
  DISTILL_TRY(unit("row_kl", ex.row_kl.extent(0), ex.row_kl.stride(0)));
  DISTILL_TRY(unit("row_teacher_entropy", ex.row_teacher_entropy.extent(0), ex.row_teacher_entropy.stride(0)));
  DISTILL_TRY(unit("row_top1_agreement", ex.row_top1_agreement.extent(0), ex.row_top1_agreement.stride(0)));
  DISTILL_TRY(unit("row_hard_loss", ex.row_hard_loss.extent(0), ex.row_hard_loss.stride(0)));
  return {};
}

/// The CUDA-side checks every soft-target entry point makes after the shared validation: device
/// memory (the caller checks its teacher's views), the workspace, a contiguous loss.
template <class TS, class G>
status check_cuda_io(const char* fn, const cuda& ctx, const cuda_view<TS, 2>& student, const cuda_view<float, 1>& loss,
                     const cuda_view<G, 2>& grad, bool want_grad, const soft_target_extras<float, cuda_space>& ex,
                     const cuda_view<std::byte, 1>& workspace) {
  DISTILL_TRY(cuda_detail::check_device_view(fn, "student", student));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  if (want_grad) DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_student", grad));
  DISTILL_TRY(check_extras_on_device(fn, ex));
  DISTILL_TRY(check_workspace(fn, workspace, soft_target_workspace_size(ctx, student.extent(0)), "soft_target_workspace_size"));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "workspace", workspace));
  if (loss.extent(0) > 1 && loss.stride(0) != 1)
    return fail(errc::unsupported_layout, fn, "'loss' must be contiguous on the CUDA path");
  return {};
}

/// Fills the fields every primitive shares (dense_args') and launches the divisor kernel if
/// the mean must be counted; `a.divisor_ptr` is where the finalize kernel then reads it.
template <class Args, class TS, class TT, class G>
status setup_common(const char* fn, const cuda& ctx, Args& a, const cuda_view<TS, 2>& student, const cuda_view<TT, 2>& teacher,
                    const cuda_view<float, 1>& loss, const cuda_view<G, 2>& grad, bool want_grad,
                    const soft_target_options& opt, const soft_target_extras<float, cuda_space>& ex,
                    const soft_target_scratch& ws) {
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const index_t n = student.extent(0);
  a.s = student.data();
  a.lds = student.stride(0);
  a.t = teacher.data();
  a.ldt = teacher.stride(0);
  a.g = want_grad ? grad.data() : nullptr;
  a.ldg = want_grad ? grad.stride(0) : 0;
  a.rows = n;
  a.cols = student.extent(1);
  a.temperature = opt.temperature;
  a.temperature_ptr = ex.temperature.data();
  a.t_squared = opt.scale_by_t_squared;
  a.soft_weight = opt.soft_weight;
  a.hard_weight = opt.hard_label_weight;
  a.grad_scale = opt.grad_scale;
  a.labels = ex.labels;
  a.ignore_index = opt.ignore_index;
  a.row_weights = ex.row_weights.data();
  a.accumulate = opt.accumulate;
  a.hard = !ex.labels.empty() && (opt.hard_label_weight != 0.0f || !ex.row_hard_loss.empty());
  a.want_dt = want_grad && !ex.grad_temperature.empty();
  a.diag_kl = ex.row_kl.data();
  a.diag_entropy = ex.row_teacher_entropy.data();
  a.diag_top1 = ex.row_top1_agreement.data();
  a.diag_hard = ex.row_hard_loss.data();
  const bool reduced = opt.reduction != reduction::none && !loss.empty();
  a.row_loss = opt.reduction == reduction::none ? loss.data() : (reduced ? ws.row_loss : nullptr);
  a.row_dt = a.want_dt ? ws.row_dt : nullptr;
  // the divisor D: the caller's normalizer, a count on the device, or a host constant
  a.divisor = 1.0f;
  a.divisor_ptr = nullptr;
  if (!ex.normalizer.empty()) {
    a.divisor_ptr = ex.normalizer.data();
  } else if (opt.reduction == reduction::batchmean) {
    a.divisor = static_cast<float>(n);
  } else if (opt.reduction == reduction::mean) {
    if (ex.labels.empty() && ex.row_weights.empty()) {
      a.divisor = static_cast<float>(n);
    } else {
      soft_target_divisor_kernel<<<1, reduce_threads, 0, stream>>>(a.labels, a.ignore_index, a.row_weights, n, ws.divisor);
      DISTILL_TRY(cuda_detail::launch_status(fn, stream));
      a.divisor_ptr = ws.divisor;
    }
  }
  return {};
}

template <class Args>
status launch_finalize(const char* fn, const cuda& ctx, const Args& a, const soft_target_options& opt,
                       const cuda_view<float, 1>& loss, const soft_target_extras<float, cuda_space>& ex,
                       const soft_target_scratch& ws) {
  const bool reduced = opt.reduction != reduction::none && !loss.empty();
  if (!reduced && !a.want_dt) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  soft_target_finalize_kernel<<<1, reduce_threads, 0, stream>>>(ws.row_loss, ws.row_dt, a.rows, a.divisor, a.divisor_ptr,
                                                                opt.grad_scale, reduced ? loss.data() : nullptr,
                                                                a.want_dt ? ex.grad_temperature.data() : nullptr);
  return cuda_detail::launch_status(fn, stream);
}

/// Launch configuration of the main kernel.
template <class TS, class TT, class Policy, int V>
status launch_dense(const char* fn, const cuda& ctx, const dense_args<TS, TT, Policy>& a) {
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  if (a.cols <= static_cast<index_t>(resident_elems<Policy>) * resident_max_threads) {
    // enough warps that resident_elems values per thread cover the row
    const index_t per_thread_chunks = resident_elems<Policy> / V;
    const index_t chunks = cuda_detail::ceil_div<index_t>(a.cols, V);
    index_t threads = cuda_detail::ceil_div<index_t>(chunks, per_thread_chunks);
    threads = cuda_detail::ceil_div<index_t>(threads, 32) * 32;
    threads = threads < 32 ? 32 : threads;
    const index_t grid_limit = 2147483647;
    if (a.rows > grid_limit) return fail(errc::shape_mismatch, fn, "more than 2^31 - 1 rows");
    dense_soft_target_block_per_row_resident_kernel<TS, TT, Policy, V>
        <<<static_cast<unsigned>(a.rows), static_cast<unsigned>(threads), 0, stream>>>(a);
  } else {
    // about one row in flight per SM keeps the re-read of pass C in L2; more rows for small rows
    const index_t row_bytes = a.cols * static_cast<index_t>(sizeof(TS) + sizeof(TT));
    const index_t sms = cuda_detail::current_device_properties().sms;
    index_t blocks = (24 << 20) / (row_bytes > 0 ? row_bytes : 1);
    blocks = blocks < sms ? sms : (blocks > 4 * sms ? 4 * sms : blocks);
    blocks = blocks > a.rows ? a.rows : blocks;
    dense_soft_target_block_per_row_streaming_kernel<TS, TT, Policy, V>
        <<<static_cast<unsigned>(blocks), streaming_threads, 0, stream>>>(a);
  }
  return cuda_detail::launch_status(fn, stream);
}

/// Validation + launches for every dense primitive's CUDA entry points.
template <class Policy, class TS, class TT, class G>
status dense_cuda_entry(const char* fn, const cuda& ctx, const cuda_view<TS, 2>& student, const cuda_view<TT, 2>& teacher,
                        const cuda_view<float, 1>& loss, bool loss_required, const cuda_view<G, 2>& grad, bool want_grad,
                        const soft_target_options& opt, const typename Policy::params& prm,
                        const soft_target_extras<float, cuda_space>& ex, const cuda_view<std::byte, 1>& workspace) {
  static_assert(cuda_storage_v<TS> && cuda_storage_v<TT>,
                "the CUDA soft-target losses take float, float16/__half or bfloat16/__nv_bfloat16 logits");
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  DISTILL_TRY(soft_target_detail::validate_soft_target(fn, student, teacher, true, loss, loss_required, grad, want_grad,
                                                       opt, ex, Policy::uses_target, true));
  DISTILL_TRY(Policy::validate(fn, student.extent(1), prm));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "teacher", teacher));
  DISTILL_TRY(check_cuda_io(fn, ctx, student, loss, grad, want_grad, ex, workspace));

  dense_args<S, T, Policy> a{};
  workspace_carver carver(workspace.data());
  const soft_target_scratch ws(carver, student.extent(0));
  DISTILL_TRY(setup_common(fn, ctx, a, student, teacher, loss, grad, want_grad, opt, ex, ws));
  a.prm = prm;

  constexpr int vec = 16 / static_cast<int>(sizeof(S) > sizeof(T) ? sizeof(S) : sizeof(T));
  const bool vectorised = cuda_detail::vector_loadable(student, vec * static_cast<int>(sizeof(S))) &&
                          cuda_detail::vector_loadable(teacher, vec * static_cast<int>(sizeof(T))) &&
                          (!want_grad || cuda_detail::vector_loadable(grad, vec * static_cast<int>(sizeof(S))));
  if (vectorised) DISTILL_TRY((launch_dense<S, T, Policy, vec>(fn, ctx, a)));
  else DISTILL_TRY((launch_dense<S, T, Policy, 1>(fn, ctx, a)));
  return launch_finalize(fn, ctx, a, opt, loss, ex, ws);
}

}  // namespace distill::soft_target_cuda

namespace distill::soft_target_detail {

/// The CUDA engine of the dense losses (declared in losses/detail/soft_target_dispatch.hpp).
template <>
struct dense_backend<cuda_space> {
  template <class Policy, class TS, class TT, class Acc, class G>
  static status run(const char* fn, const cuda& ctx, const cuda_view<TS, 2>& student, const cuda_view<TT, 2>& teacher,
                    const cuda_view<Acc, 1>& loss, bool loss_required, const cuda_view<G, 2>& grad, bool want_grad,
                    const soft_target_options& opt, const typename Policy::params& prm,
                    const soft_target_extras<Acc, cuda_space>& extras, const cuda_view<std::byte, 1>& workspace) {
    return soft_target_cuda::dense_cuda_entry<Policy>(fn, ctx, student, teacher, loss, loss_required, grad, want_grad, opt,
                                                      prm, extras, workspace);
  }
};

}  // namespace distill::soft_target_detail
