// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Token-wise InfoNCE against a sample queue (DistillVLM, Fang et al. ICCV 2021, §6.2 of the
//! spec; the per-token loss is MoCo's B4, He et al. CVPR 2020), with L2 normalisation (B2)
//! fused in, optional in-batch negatives and false-negative masking by id.
//!
//! Inputs: student tokens z [M, D] (after the caller's projection), teacher tokens y [M, D],
//! queue keys Q_j (rows of a sample_queue, j < n valid), token mask v_i (padding), ids.
//!   q_i = z_i / max(||z_i||, eps),  k_i = y_i / max(||y_i||, eps)                      (B2)
//!   s_i0 = <q_i, k_i> / tau                                     positive
//!   s_ij = <q_i, Q_j> / tau              for queue slots j with id_j != id_i (or no id)
//!   s_ib = <q_i, k_b> / tau              in-batch (option): b != i, v_b = 1, id_b != id_i
//!   l_i  = -s_i0 + LSE_j(s_ij)  (the LSE includes the positive)              per valid token
//!   L    = sum_i w_i l_i           w_i = v_i / divisor (reduction: none, sum, mean over valid
//!                                  tokens, batchmean = / M); l_i >= 0 always
//! Gradients (g = grad_scale, pi_i = softmax_j(s_ij), c_i = g w_i / tau):
//!   dL/dq_i = c_i [ (pi_i0 - 1) k_i + sum_queue pi_ij Q_j + sum_b pi_ib k_b ]
//!   dL/dk_b = c_b (pi_b0 - 1) q_b + sum_i c_i pi_ib q_i        (second term: in-batch only)
//!   dL/dz   = (g_q - [||z|| > eps] q <q, g_q>) / max(||z||, eps)                       (B2)
//!   the same for y; the queue gets no gradient; the teacher gets none unless grad_teacher
//!   is given (stop-gradient by default, as MoCo).
//! Note sum_j pi_ij Q_j = (sum_j e^{s_ij - m} Q_j) / (sum_j e^{s_ij - m}): the gradient is the
//! output of an attention whose values are the keys, so it is accumulated in the same tiled
//! pass as the log-sum-exp (flash-attention style, rescaling the accumulator when the running
//! maximum grows) and the [M, K] logits never exist anywhere.
//!
//! Bad numbers: a NaN in z_i or y_i makes l_i (and the reduced loss) NaN; a NaN in a queue row
//! or in an in-batch negative makes every token that uses it NaN. The CPU path refuses an
//! all-masked batch with invalid_argument; the CUDA path cannot see a device mask without
//! synchronising and returns loss 0 and zero gradients for it.
//!
//! Entry points, the same for a distill::cpu and a distill::cuda context (CPU engine in
//! contrastive/detail/token_nce_cpu.hpp, CUDA engine in kernels/distill/cuda/token_nce.cuh):
//!   token_nce_queue_forward          (ctx, inputs, queue, outputs, workspace, opt)   loss (+ per token)
//!   token_nce_queue_backward         (ctx, inputs, queue, outputs, workspace, opt)   gradients
//!   token_nce_queue_forward_backward (ctx, inputs, queue, outputs, workspace, opt)   both, one pass
//! `inputs` (token_nce_inputs) names the student and teacher tokens, the token mask and ids;
//! `outputs` (token_nce_outputs) names loss, per_token_loss, grad_student and grad_teacher, so
//! two views of the same type cannot be swapped by position.
//!
//! Scratch: `token_nce_queue_workspace_size<T>(ctx, M, D, K, opt)` bytes, never O(M K), the same
//! rule on both backends (an undersized workspace is refused). CPU: a few per-token vectors,
//! the split accumulators (M x D per key split), one row-block x key-tile buffer and the GEMM
//! packing panels per thread. CUDA: per-token vectors plus the key-split partials.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/math.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/precision.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

struct token_nce_options {
  float temperature = 0.07f;                                ///< tau > 0
  distill::reduction reduction = distill::reduction::mean;  ///< mean = over valid (unmasked) tokens
  bool in_batch_negatives = false;                          ///< add the other valid teacher tokens as negatives
  float normalize_eps = 1e-12f;                             ///< eps of the L2 normalisation (F.normalize's default)
  float grad_scale = 1.0f;                                  ///< upstream gradient (loss weight)
  bool accumulate = false;                                  ///< gradients add into their outputs instead of overwriting
  /// products of the CUDA path (the CPU computes in its accumulator type)
  matmul_precision precision = matmul_precision::fp32;
  /// CPU: refuse NaN/inf tokens or queue keys (errc::non_finite naming the input) before
  /// computing; off, a NaN token makes its loss NaN and a NaN key every loss. CUDA: not
  /// inspected (docs/reliability.md).
  bool check_finite = false;
};

namespace token_nce_detail {

/// A query row excludes a key with the same (real) id: a false negative.
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE bool same_sample(std::int64_t row_id, std::int64_t key_id) noexcept {
  return row_id != no_sample_id && key_id == row_id;
}

/// In-batch key b for query row r: not itself, not padding, not the same sample.
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE bool inbatch_excluded(index_t r, index_t b, bool key_valid, std::int64_t row_id,
                                                              std::int64_t key_id) noexcept {
  return b == r || !key_valid || same_sample(row_id, key_id);
}

/// Reduction weight w_i of a token.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc token_weight(bool valid, reduction red, Acc valid_count, Acc tokens) noexcept {
  return valid ? safe_inverse(reduction_divisor(red, tokens, valid_count)) : Acc(0);
}

/// A token's softmax statistics after merging the positive and the key-split partials
/// (m_s, l_s): running max m, normaliser l = sum_j e^{s_j - m}, lse, loss, pi_0.
template <class Acc>
struct merged_row {
  Acc m, l, lse, loss, pi0;
};

template <class Acc>
DISTILL_HOST_DEVICE inline merged_row<Acc> merge_row(Acc s0, const Acc* part_m, const Acc* part_l, int parts,
                                                     index_t part_stride) noexcept {
  merged_row<Acc> r;
  Acc m = s0;  // a NaN s0 keeps m NaN: the whole row becomes NaN, as documented
  for (int s = 0; s < parts; ++s) {
    const Acc ms = part_m[s * part_stride];
    if (ms > m) m = ms;
  }
  Acc l = exp_(s0 - m);
  for (int s = 0; s < parts; ++s) {
    const Acc ms = part_m[s * part_stride], ls = part_l[s * part_stride];
    if (ms != neg_infinity<Acc>() || ls != ls) l += ls * exp_(ms - m);  // a NaN l_s propagates
  }
  r.m = m;
  r.l = l;
  r.lse = m + log_(l);
  r.loss = r.lse - s0;
  r.pi0 = exp_(s0 - r.lse);
  return r;
}

/// Factor of split s's accumulator in sum_j pi_j key_j: e^{m_s - m} / l.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc part_weight(Acc ms, const merged_row<Acc>& r) noexcept {
  return ms == neg_infinity<Acc>() ? Acc(0) : exp_(ms - r.m) / r.l;
}

/// B2 backward of one element: (g - [unclamped] u <u, g>) * inv_norm.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc normalize_backward(Acc g, Acc u, Acc u_dot_g, Acc inv_norm, bool unclamped) noexcept {
  return (unclamped ? g - u * u_dot_g : g) * inv_norm;
}

template <class T>
void write_grad(T& out, T value, bool accumulate) {
  out = accumulate ? out + value : value;
}

// ---- validation shared by both backends ----
template <class VS, class VT, class Q, class VM, class VI>
status check_inputs(const char* fn, const VS& student, const VT& teacher, const Q& queue, const VM& mask, const VI& ids,
                    const token_nce_options& opt) {
  DISTILL_TRY(check_present(fn, "student", student));
  DISTILL_TRY(check_nonempty(fn, "student", student));
  DISTILL_TRY(check_strides(fn, "student", student));
  DISTILL_TRY(check_inner_contiguous(fn, "student", student));
  DISTILL_TRY(check_present(fn, "teacher", teacher));
  DISTILL_TRY(check_same_shape(fn, "teacher", teacher, "student", student));
  DISTILL_TRY(check_strides(fn, "teacher", teacher));
  DISTILL_TRY(check_inner_contiguous(fn, "teacher", teacher));
  const index_t M = student.extent(0), D = student.extent(1);
  DISTILL_TRY(contrastive_detail::check_queue(fn, queue, true));
  if (queue.capacity() > 0 && queue.dim() != D)
    return fail(errc::shape_mismatch, fn,
                "the queue holds keys of dimension " + std::to_string(queue.dim()) + " but the tokens have D = " +
                    std::to_string(D));
  if (queue.size() == 0 && !opt.in_batch_negatives)
    return fail(errc::invalid_argument, fn,
                "the queue is empty and in_batch_negatives is off: there are no negatives to contrast against");
  DISTILL_TRY(check_positive(fn, "temperature", opt.temperature));
  DISTILL_TRY(check_positive(fn, "normalize_eps", opt.normalize_eps));
  if (!std::isfinite(opt.grad_scale)) return fail(errc::invalid_argument, fn, "'grad_scale' must be finite");
  if (!mask.empty()) {
    DISTILL_TRY(check_extent(fn, "token_mask", mask, 0, M, "tokens M"));
    DISTILL_TRY(check_strides(fn, "token_mask", mask));
  }
  if (!ids.empty()) {
    DISTILL_TRY(check_extent(fn, "token_ids", ids, 0, M, "tokens M"));
    DISTILL_TRY(check_strides(fn, "token_ids", ids));
  }
  return {};
}

template <class VL, class VP>
status check_loss_outputs(const char* fn, const VL& loss, const VP& per_token, index_t M, reduction red) {
  DISTILL_TRY(check_present(fn, "loss", loss));
  DISTILL_TRY(check_strides(fn, "loss", loss));
  if (red == reduction::none) DISTILL_TRY(check_extent(fn, "loss", loss, 0, M, "tokens M (reduction none)"));
  else DISTILL_TRY(check_extent(fn, "loss", loss, 0, 1, "one reduced value"));
  if (!per_token.empty()) {
    DISTILL_TRY(check_extent(fn, "per_token_loss", per_token, 0, M, "tokens M"));
    DISTILL_TRY(check_strides(fn, "per_token_loss", per_token));
  }
  return {};
}

template <class VG, class VS>
status check_grad_output(const char* fn, const char* name, const VG& grad, const VS& like, bool required) {
  if (grad.empty()) {
    if (required) return fail(errc::invalid_argument, fn, std::string("'") + name + "' is required but absent");
    return {};
  }
  DISTILL_TRY(check_same_shape(fn, name, grad, "student", like));
  DISTILL_TRY(check_strides(fn, name, grad));
  return {};
}

/// Both gradient outputs (shared by the CPU and CUDA backward passes): grad_student required,
/// grad_teacher optional, each the student's shape.
template <class VGS, class VGT, class VS>
status check_grad_outputs(const char* fn, const VGS& grad_student, const VGT& grad_teacher, const VS& student) {
  DISTILL_TRY(check_grad_output(fn, "grad_student", grad_student, student, true));
  return check_grad_output(fn, "grad_teacher", grad_teacher, student, false);
}

}  // namespace token_nce_detail

/// The tokens of a call (all [M, D] with unit stride along D, or [M]); absent mask: every
/// token is real, absent ids: no false-negative masking.
template <class TS, class TT = TS, class Space = host_space>
struct token_nce_inputs {
  tensor_view<const TS, 2, Space> student{};            ///< z [M, D] after the caller's projection
  tensor_view<const TT, 2, Space> teacher{};            ///< y [M, D]
  tensor_view<const std::uint8_t, 1, Space> token_mask{};  ///< [M] optional, nonzero = real token
  tensor_view<const std::int64_t, 1, Space> token_ids{};   ///< [M] optional sample ids
};

/// The outputs of a call; each pass writes the ones it computes and refuses the others.
template <class TS, class TT = TS, class Space = host_space>
struct token_nce_outputs {
  tensor_view<accum_t<TS>, 1, Space> loss{};            ///< [1], or [M] with reduction::none (forward passes)
  tensor_view<accum_t<TS>, 1, Space> per_token_loss{};  ///< [M] optional (masked tokens get 0)
  tensor_view<TS, 2, Space> grad_student{};             ///< [M, D] (backward passes)
  tensor_view<TT, 2, Space> grad_teacher{};             ///< [M, D] optional (absent: stop-gradient)
};

namespace token_nce_detail {

/// The engine on memory `Space`: the CPU one (`backend<host_space>`) in
/// contrastive/detail/token_nce_cpu.hpp, the CUDA one in kernels/distill/cuda/token_nce.cuh.
template <class Space>
struct backend;

template <class Acc>
std::size_t cpu_workspace_bytes(int threads, index_t M, index_t D, bool in_batch);

}  // namespace token_nce_detail

/// Bytes of scratch for M tokens of dimension D against a queue of capacity K, for token
/// element type T. CPU: depends on ctx.threads and T (float or double accumulators); the queue
/// size does not matter. CUDA: the number of key splits depends on the current device's SM
/// count (size it on the device you run on); T is not used.
template <class T = float>
[[nodiscard]] std::size_t token_nce_queue_workspace_size(const cpu& ctx, index_t tokens, index_t dim, index_t /*queue_capacity*/,
                                                         const token_nce_options& opt = {}) {
  return token_nce_detail::cpu_workspace_bytes<accum_t<T>>(ctx.threads, tokens, dim, opt.in_batch_negatives);
}
// (the CUDA overload, with the same arguments, is in kernels/distill/cuda/token_nce.cuh)

namespace token_nce_detail {

enum class pass { forward, backward, forward_backward };
inline const char* name_of(pass p) {
  return p == pass::forward    ? "token_nce_queue_forward"
         : p == pass::backward ? "token_nce_queue_backward"
                               : "token_nce_queue_forward_backward";
}

/// Validation shared by every pass and backend, then the backend.
template <class Ctx, class TS, class TT, class TQ, class Space>
status run(pass p, const Ctx& ctx, const token_nce_inputs<TS, TT, Space>& in, const sample_queue<TQ, Space>& queue,
           const token_nce_outputs<TS, TT, Space>& out, tensor_view<std::byte, 1, Space> workspace,
           const token_nce_options& opt) {
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  const char* fn = name_of(p);
  DISTILL_TRY(check_inputs(fn, in.student, in.teacher, queue, in.token_mask, in.token_ids, opt));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "inputs.student", in.student, "inputs.teacher", in.teacher, "queue",
                              queue.valid_keys()));
  const index_t M = in.student.extent(0);
  if (p != pass::backward) {
    DISTILL_TRY(check_loss_outputs(fn, out.loss, out.per_token_loss, M, opt.reduction));
  } else if (!out.loss.empty() || !out.per_token_loss.empty()) {
    return fail(errc::invalid_argument, fn, "'outputs.loss' is computed by the forward passes, not the backward");
  }
  if (p != pass::forward) {
    DISTILL_TRY(check_grad_outputs(fn, out.grad_student, out.grad_teacher, in.student));
  } else if (!out.grad_student.empty() || !out.grad_teacher.empty()) {
    return fail(errc::invalid_argument, fn, "the gradients are computed by the backward passes, not the forward");
  }
  DISTILL_TRY(check_workspace(fn, workspace,
                              token_nce_queue_workspace_size<TS>(ctx, M, in.student.extent(1), queue.capacity(), opt),
                              "token_nce_queue_workspace_size"));
  return backend<Space>::run(fn, ctx, in, queue, out, workspace, opt);
}

}  // namespace token_nce_detail

/// Loss and optional per-token losses.
template <class Ctx, class TS, class TT, class TQ, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status token_nce_queue_forward(const Ctx& ctx, const token_nce_inputs<TS, TT, Space>& inputs,
                                             const sample_queue<TQ, Space>& queue, const token_nce_outputs<TS, TT, Space>& outputs,
                                             tensor_view<std::byte, 1, Space> workspace, const token_nce_options& opt = {}) {
  return token_nce_detail::run(token_nce_detail::pass::forward, ctx, inputs, queue, outputs, workspace, opt);
}

/// The gradients of the loss the forward computes, with upstream gradient opt.grad_scale (per
/// token for reduction::none). Recomputes the statistics (no saved state).
template <class Ctx, class TS, class TT, class TQ, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status token_nce_queue_backward(const Ctx& ctx, const token_nce_inputs<TS, TT, Space>& inputs,
                                              const sample_queue<TQ, Space>& queue, const token_nce_outputs<TS, TT, Space>& outputs,
                                              tensor_view<std::byte, 1, Space> workspace, const token_nce_options& opt = {}) {
  return token_nce_detail::run(token_nce_detail::pass::backward, ctx, inputs, queue, outputs, workspace, opt);
}

/// Loss and gradients in one pass over the keys.
template <class Ctx, class TS, class TT, class TQ, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status token_nce_queue_forward_backward(const Ctx& ctx, const token_nce_inputs<TS, TT, Space>& inputs,
                                                      const sample_queue<TQ, Space>& queue,
                                                      const token_nce_outputs<TS, TT, Space>& outputs,
                                                      tensor_view<std::byte, 1, Space> workspace,
                                                      const token_nce_options& opt = {}) {
  return token_nce_detail::run(token_nce_detail::pass::forward_backward, ctx, inputs, queue, outputs, workspace, opt);
}

}  // namespace distill

#include "distill/contrastive/detail/token_nce_cpu.hpp"

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/token_nce.cuh"
#endif
