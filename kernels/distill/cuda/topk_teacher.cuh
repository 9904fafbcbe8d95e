// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! KL from a sparse top-k teacher to the student's full softmax: the CUDA engine behind the
//! entry points of include/distill/losses/topk_teacher.hpp (math, options, CPU path). nvcc only.
//!
//! `topk_teacher_block_per_row_kernel`: one block of 256 threads per row. The row's teacher
//! classes are marked in a shared-memory bitmap (C / 8 bytes; a repeated or out-of-range index
//! makes the row NaN, since device indices cannot be reported without a synchronisation), the
//! student row is streamed once for the online log-sum-exp over the classes outside the top-k,
//! the k slots are combined in shared memory, and a second read (from L2) writes the gradient
//! of every class outside the top-k; the k teacher classes are written last, by their slots.
//! Bytes: read the student twice (the second mostly from L2), read k indices and values, write
//! the gradient once. The batch loss and dL/dT go through the same deterministic finalize kernel
//! as the dense losses.

#if !defined(__CUDACC__)
#error "distill/cuda/topk_teacher.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "distill/cuda/detail/device.cuh"
#include "distill/cuda/soft_target_dense.cuh"
#include "distill/losses/topk_teacher.hpp"

namespace distill {
namespace soft_target_cuda {

template <class TS, class TT>
struct topk_args : dense_args<TS, TT, no_policy> {  // t, ldt: the teacher's top-k values
  const std::int64_t* idx;
  index_t ldi;
  index_t k;
  topk_variant variant;
};

constexpr int topk_threads = 256;

/// Pass A's per-row statistics, merged across the block in one exchange: the log-sum-exps of
/// y outside I, of the raw logits, of y over I and of the teacher values, and the first argmax.
struct row_stats {
  lse_state<float> rest, raw, in_i, teach;
  arg_max am;
};
struct row_stats_op {
  __device__ DISTILL_FORCEINLINE row_stats operator()(row_stats a, const row_stats& b) const {
    a.rest.merge(b.rest);
    a.raw.merge(b.raw);
    a.in_i.merge(b.in_i);
    a.teach.merge(b.teach);
    a.am = better(a.am, b.am);
    return a;
  }
};

template <class TS, class TT>
__global__ void __launch_bounds__(topk_threads) topk_teacher_block_per_row_kernel(const topk_args<TS, TT> a) {
  extern __shared__ unsigned char topk_smem[];
  __shared__ float sums[2 * 32];
  __shared__ cuda_detail::shared_array<row_stats, topk_threads / 32> stats_smem;
  __shared__ arg_max arg_smem[topk_threads / 32];
  __shared__ int row_bad;
  using soft_target_detail::keep_or_zero;
  const index_t r = blockIdx.x;
  const index_t words = (a.cols + 31) / 32;
  unsigned* bitmap = reinterpret_cast<unsigned*>(topk_smem);
  float* val = reinterpret_cast<float*>(bitmap + words);  // teacher values of the slots
  float* sraw = val + a.k;                               // raw student logits at the slots
  int* cls = reinterpret_cast<int*>(sraw + a.k);         // classes of the slots (-1: unused)

  soft_target_detail::call_scalars<float> sc;
  sc.t_squared = a.t_squared;
  sc.set_temperature(a.temperature_ptr ? soft_target_detail::checked_temperature(*a.temperature_ptr) : a.temperature);
  const float inv_t = sc.inv_temperature;
  const std::int64_t label0 = a.labels.empty() ? std::int64_t(-1) : a.labels(r);
  const float weight = a.row_weights ? a.row_weights[r] : 1.0f;
  const float inv_div = safe_inverse(a.divisor_ptr ? soft_target_detail::checked_normalizer(*a.divisor_ptr) : a.divisor);
  const TS* srow = a.s + r * a.lds;
  TS* grow = a.g ? a.g + r * a.ldg : nullptr;
  const float nan = std::numeric_limits<float>::quiet_NaN();

  if (!a.labels.empty() && label0 == a.ignore_index) {
    write_ignored_row(a, r);
    return;
  }
  const bool label_ok = a.labels.empty() || (label0 >= 0 && label0 < a.cols);
  const std::int64_t label = label_ok ? label0 : std::int64_t(-1);

  // mark the teacher classes; read what the gradient stores may overwrite (in place)
  if (threadIdx.x == 0) row_bad = label_ok ? 0 : 1;
  for (index_t w = threadIdx.x; w < words; w += blockDim.x) bitmap[w] = 0u;
  __syncthreads();
  for (index_t j = threadIdx.x; j < a.k; j += blockDim.x) {
    const std::int64_t c = a.idx[r * a.ldi + j];
    cls[j] = -1;
    val[j] = 0.0f;
    sraw[j] = 0.0f;
    if (c < 0) continue;
    if (c >= a.cols) {
      atomicOr(&row_bad, 1);
      continue;
    }
    const unsigned bit = 1u << (c & 31);
    if (atomicOr(&bitmap[c >> 5], bit) & bit) atomicOr(&row_bad, 1);  // a repeated index
    cls[j] = static_cast<int>(c);
    val[j] = load<float>(a.t[r * a.ldt + j]);
    sraw[j] = load<float>(srow[c]);
  }
  const float z_label = label >= 0 ? load<float>(srow[label]) : 0.0f;
  __syncthreads();

  // pass A: LSE of y over the classes outside I, LSE of the raw logits, first argmax
  lse_state<float> rest, raw;
  arg_max am{-INFINITY, -1};
  for (index_t c = threadIdx.x; c < a.cols; c += blockDim.x) {
    const float z = load<float>(srow[c]);
    if (z > am.v) am = {z, static_cast<int>(c)};
    if (a.hard) raw.add(z);
    if (!(bitmap[c >> 5] & (1u << (c & 31)))) rest.add(z * inv_t);
  }
  // the slots: LSE of y over I, LSE of the teacher values
  lse_state<float> in_i, teach;
  for (index_t j = threadIdx.x; j < a.k; j += blockDim.x)
    if (cls[j] >= 0) in_i.add(sraw[j] * inv_t), teach.add(val[j]);
  {  // one exchange for the four log-sum-exps and the arg-max
    const row_stats r = cuda_detail::block_all_reduce<topk_threads>(row_stats{rest, raw, in_i, teach, am}, row_stats_op{},
                                                                     row_stats{{}, {}, {}, {}, {-INFINITY, -1}}, stats_smem.data());
    rest = r.rest, raw = r.raw, in_i = r.in_i, teach = r.teach, am = r.am;
  }
  lse_state<float> all = rest;
  all.merge(in_i);
  const float ls = all.value(), lrest = rest.value(), lv = teach.value();

  // residual teacher mass r (variant C); the student's rest mass comes from the log-sum-exps
  float r_mass, log_r, log_s_unused, rest_coef_unused;
  soft_target_detail::topk_rest(a.variant, lv, 1.0f, 1.0f, r_mass, log_r, log_s_unused, rest_coef_unused);
  const float log_s = lrest - ls;  // log of the student mass outside I, without a subtraction
  // slot sums: f, entropy, best teacher slot
  float acc[2] = {0.0f, 0.0f};
  arg_max best{-INFINITY, -1};
  for (index_t j = threadIdx.x; j < a.k; j += blockDim.x) {
    if (cls[j] < 0) continue;
    const float lp = soft_target_detail::topk_teacher_logprob(a.variant, val[j], lv), p = st_exp(lp);
    acc[0] += keep_or_zero(p != 0.0f, p * (lp - (sraw[j] * inv_t - ls)));
    acc[1] -= keep_or_zero(p != 0.0f, p * lp);
    if (val[j] > best.v || (val[j] == best.v && (best.i < 0 || cls[j] < best.i))) best = {val[j], cls[j]};
  }
  block_sum_n<2>(acc, sums);
  best = cuda_detail::block_all_reduce<topk_threads>(best, arg_max_op{}, arg_max{-INFINITY, -1}, arg_smem);
  float f = acc[0] + keep_or_zero(r_mass != 0.0f, r_mass * (log_r - log_s));
  const float entropy = acc[1] - keep_or_zero(r_mass != 0.0f, r_mass * log_r);
  const bool bad = row_bad != 0 || am.v == ninf<float>() ||
                   (a.variant == topk_variant::renormalized && lv == ninf<float>());
  const float lz = sc.temperature != 1.0f ? raw.value() : ls;
  const float hard_ce = (a.hard && label >= 0) ? lz - z_label : 0.0f;
  if (threadIdx.x == 0) {
    const float hard = a.hard_weight != 0.0f ? a.hard_weight * hard_ce : 0.0f;
    if (a.row_loss) a.row_loss[r] = bad ? nan : weight * (a.soft_weight * sc.c * f + hard);
    if (a.diag_kl) a.diag_kl[r] = bad ? nan : f;
    if (a.diag_entropy) a.diag_entropy[r] = bad ? nan : entropy;
    if (a.diag_top1) a.diag_top1[r] = bad ? nan : (best.i >= 0 && best.i == am.i ? 1.0f : 0.0f);
    if (a.diag_hard) a.diag_hard[r] = bad ? nan : hard_ce;
  }
  if (!grow) return;

  // pass C: classes outside I (re-read, mostly from L2), then the slots
  const float coef_soft = a.grad_scale * weight * a.soft_weight * sc.c * inv_t * inv_div;
  const float coef_hard = a.grad_scale * weight * a.hard_weight * inv_div;
  auto hard_term = [&](index_t c, float z) {
    if (a.hard_weight == 0.0f) return 0.0f;
    const float sm = z == ninf<float>() ? 0.0f : st_exp(z - lz);
    return coef_hard * (sm - (c == label ? 1.0f : 0.0f));
  };
  float dt = 0.0f;
  for (index_t c = threadIdx.x; c < a.cols; c += blockDim.x) {
    if (bitmap[c >> 5] & (1u << (c & 31))) continue;
    const float z = load<float>(srow[c]), y = z * inv_t;
    // q_k - r q_k / s = e^{y - LSE} - r e^{y - LSE_rest}
    const float gs = y == ninf<float>() ? 0.0f : st_exp(y - ls) - r_mass * st_exp(y - lrest);
    float v = bad ? nan : coef_soft * gs + hard_term(c, z);
    if (a.accumulate) v += load<float>(grow[c]);
    grow[c] = store<TS>(v);
    dt += keep_or_zero(gs != 0.0f, gs * y);
  }
  for (index_t j = threadIdx.x; j < a.k; j += blockDim.x) {
    const int c = cls[j];
    if (c < 0) continue;
    const float y = sraw[j] * inv_t;
    const float q = y == ninf<float>() ? 0.0f : st_exp(y - ls);
    const float gs = q - soft_target_detail::topk_teacher_prob(a.variant, val[j], lv);
    float v = bad ? nan : coef_soft * gs + hard_term(c, sraw[j]);
    if (a.accumulate) v += load<float>(grow[c]);
    grow[c] = store<TS>(v);
    dt += keep_or_zero(gs != 0.0f, gs * y);
  }
  if (a.want_dt) {
    float d[1] = {dt};
    block_sum_n<1>(d, sums);
    if (threadIdx.x == 0 && a.row_dt) a.row_dt[r] = bad ? nan : weight * a.soft_weight * (sc.dc * f - sc.c * inv_t * d[0]);
  }
}

/// Dynamic shared memory of the kernel: the class bitmap (C / 8 bytes) and three 4-byte arrays
/// over the k slots.
inline std::size_t topk_dynamic_smem_bytes(index_t classes, index_t k) {
  return static_cast<std::size_t>((classes + 31) / 32) * 4 + static_cast<std::size_t>(k) * 12;
}

template <class TS, class TT, class G>
status topk_cuda_entry(const char* fn, const cuda& ctx, const cuda_view<TS, 2>& student,
                       const cuda_view<const std::int64_t, 2>& idx, const cuda_view<TT, 2>& values,
                       const cuda_view<float, 1>& loss, bool loss_required, const cuda_view<G, 2>& grad, bool want_grad,
                       const topk_teacher_options& opt, const soft_target_extras<float, cuda_space>& ex,
                       const cuda_view<std::byte, 1>& workspace) {
  static_assert(cuda_storage_v<TS> && cuda_storage_v<TT>,
                "the CUDA top-k loss takes float, float16/__half or bfloat16/__nv_bfloat16 values");
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  DISTILL_TRY(soft_target_detail::topk_validate(fn, student, idx, values, loss, loss_required, grad, want_grad, opt, ex, true));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "teacher_indices", idx));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "teacher_logprobs", values));
  DISTILL_TRY(check_cuda_io(fn, ctx, student, loss, grad, want_grad, ex, workspace));

  // the shared scratch: the class bitmap and three arrays over the k slots; the kernel's static
  // shared memory counts against the same per-block limit (allow_dynamic_smem)
  const std::size_t smem = topk_dynamic_smem_bytes(student.extent(1), idx.extent(1));
  DISTILL_TRY(cuda_detail::allow_dynamic_smem(fn, topk_teacher_block_per_row_kernel<S, T>, smem));

  topk_args<S, T> a{};
  workspace_carver carver(workspace.data());
  const soft_target_scratch ws(carver, student.extent(0));
  DISTILL_TRY(setup_common(fn, ctx, a, student, values, loss, grad, want_grad, opt, ex, ws));
  a.idx = idx.data(), a.ldi = idx.stride(0);
  a.k = idx.extent(1);
  a.variant = opt.variant;

  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  if (a.rows > 2147483647) return fail(errc::shape_mismatch, fn, "more than 2^31 - 1 rows");
  topk_teacher_block_per_row_kernel<S, T><<<static_cast<unsigned>(a.rows), topk_threads, smem, stream>>>(a);
  DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  return launch_finalize(fn, ctx, a, opt, loss, ex, ws);
}

}  // namespace soft_target_cuda

namespace soft_target_detail {

/// The CUDA engine of the top-k loss (declared in include/distill/losses/topk_teacher.hpp).
template <>
struct topk_backend<cuda_space> {
  template <class TS, class TT, class Acc, class G>
  static status run(const char* fn, const cuda& ctx, const cuda_view<TS, 2>& student,
                    const cuda_view<const std::int64_t, 2>& idx, const cuda_view<TT, 2>& values,
                    const cuda_view<Acc, 1>& loss, bool loss_required, const cuda_view<G, 2>& grad, bool want_grad,
                    const topk_teacher_options& opt, const soft_target_extras<Acc, cuda_space>& ex,
                    const cuda_view<std::byte, 1>& workspace) {
    return soft_target_cuda::topk_cuda_entry(fn, ctx, student, idx, values, loss, loss_required, grad, want_grad, opt, ex,
                                             workspace);
  }
};

}  // namespace soft_target_detail

}  // namespace distill
