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
//! Scratch: `token_nce_queue_workspace_size(ctx, M, D, K, opt)` bytes, never O(M K). CPU: a
//! few per-token vectors, the split accumulators (M x D per key split), one row-block x
//! key-tile buffer and Eigen's GEMM packing buffers per thread; an absent workspace is
//! allocated internally (CPU only). CUDA:
//! per-token vectors plus the key-split partials (see kernels/distill/cuda/token_nce.cuh).

#include <Eigen/Core>

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
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

/// Matrix arithmetic of the CUDA path (the CPU path always computes in its accumulator type).
enum class nce_precision {
  strict_fp32,  ///< FFMA, IEEE float products
  tf32,         ///< TF32 tensor cores (10-bit mantissa products, float accumulation), sm_80+
  bf16,         ///< bfloat16 tensor cores (8-bit mantissa products, float accumulation), sm_80+
};

struct token_nce_options {
  float temperature = 0.07f;           ///< tau > 0
  reduction red = reduction::mean;     ///< mean = over valid (unmasked) tokens
  bool in_batch_negatives = false;     ///< add the other valid teacher tokens as negatives
  float normalize_eps = 1e-12f;        ///< eps of the L2 normalisation (F.normalize's default)
  float grad_scale = 1.0f;             ///< upstream gradient (loss weight)
  bool accumulate = false;             ///< gradients add into their outputs instead of overwriting
  nce_precision precision = nce_precision::strict_fp32;  ///< CUDA only
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

// ---- CPU plan and workspace ----
inline constexpr index_t cpu_row_block = 128;  ///< query rows per GEMM block
inline constexpr index_t cpu_key_tile = 256;   ///< keys per tile (the online-LSE step)

// ---- Eigen's GEBP product with caller-owned packing buffers ----
// Every Eigen product allocates its packing buffers (kc x mc and kc x nc) on entry and frees
// them on exit; with a few hundred tile products per call, glibc then trims and re-grows the
// heap and the page faults cost 30-40% (measured: 28 ms -> 39 ms for 512 x 256 x 8192 on one
// thread). Here the buffers live in the workspace, one set per thread, and the products go
// straight to Eigen's blocked kernel (the same code distill::gemm reaches through operator*).
template <class T>
struct gemm_packing : Eigen::internal::level3_blocking<T, T> {
  void attach(T* a, T* b, index_t kc, index_t mc, index_t nc) noexcept {
    this->m_blockA = a;
    this->m_blockB = b;
    this->m_kc = kc;
    this->m_mc = mc;
    this->m_nc = nc;
  }
};

struct gemm_blocking {
  index_t kc = 0, mc = 0, nc = 0;
  std::size_t size_a() const noexcept { return static_cast<std::size_t>(kc * mc); }
  std::size_t size_b() const noexcept { return static_cast<std::size_t>(kc * nc); }
};

/// Eigen's blocking for row-major C [rows, cols] += A [rows, depth] B [depth, cols] (solved as the
/// transposed column-major product, exactly as Eigen's own gemm_blocking_space<RowMajor> does).
template <class T>
gemm_blocking blocking_for(index_t rows, index_t cols, index_t depth) {
  gemm_blocking b;
  b.kc = std::max<index_t>(depth, 1);
  b.mc = std::max<index_t>(cols, 1);
  b.nc = std::max<index_t>(rows, 1);
  Eigen::internal::computeProductBlockingSizes<T, T, 1>(b.kc, b.mc, b.nc, index_t(1));
  return b;
}

/// C [M, N] (row-major, row stride ldc) = (zero_c ? 0 : C) + alpha op(A) op(B), op(X) = X or X^T
/// of row-major storage; packing buffers from `pk` (sized by blocking_for of a larger shape).
template <class T>
void packed_gemm(gemm_packing<T>& pk, bool ta, bool tb, T alpha, const T* a, index_t lda, const T* b, index_t ldb, T* c, index_t ldc,
                 index_t M, index_t N, index_t K, bool zero_c) {
  if (zero_c)
    for (index_t i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, T(0));
  if (M == 0 || N == 0 || K == 0) return;
  using Eigen::ColMajor;
  using Eigen::RowMajor;
#if EIGEN_VERSION_AT_LEAST(3, 3, 90)
#define DISTILL_NCE_GEMM(LO, RO) \
  Eigen::internal::general_matrix_matrix_product<index_t, T, LO, false, T, RO, false, RowMajor, 1>::run(M, N, K, a, lda, b, ldb, c, 1, ldc, alpha, pk)
#else
#define DISTILL_NCE_GEMM(LO, RO) \
  Eigen::internal::general_matrix_matrix_product<index_t, T, LO, false, T, RO, false, RowMajor>::run(M, N, K, a, lda, b, ldb, c, ldc, alpha, pk)
#endif
  // Row-major storage of X read as X^T is column-major storage of op(X).
  if (!ta && !tb) DISTILL_NCE_GEMM(RowMajor, RowMajor);
  else if (!ta && tb) DISTILL_NCE_GEMM(RowMajor, ColMajor);
  else if (ta && !tb) DISTILL_NCE_GEMM(ColMajor, RowMajor);
  else DISTILL_NCE_GEMM(ColMajor, ColMajor);
#undef DISTILL_NCE_GEMM
}

struct cpu_plan {
  index_t M = 0, D = 0;
  int workers = 1;  ///< threads used
  int splits = 1;   ///< key splits (1: threads split the rows; >1: each thread takes a key range)
  bool in_batch = false;
  gemm_blocking logits, gradient, key_gradient;  ///< S = Z K^T, acc += P K, gk += W^T Z
  std::size_t pack_a = 0, pack_b = 0;            ///< packing buffer elements per thread
  // offsets in accumulator elements
  std::size_t invq, invk, s0, projq, projk, weight, lse, loss, part_m, part_l, acc, gk, tiles, packs, total;
};

template <class Acc>
cpu_plan make_cpu_plan(int threads, index_t M, index_t D, bool in_batch) {
  cpu_plan p;
  p.M = M;
  p.D = D;
  p.in_batch = in_batch;
  p.workers = std::max(1, threads);
  // Enough row blocks for every thread: split rows (the queue streams once per row block).
  // Otherwise (few tokens) split the keys and merge the partial log-sum-exps at the end.
  p.splits = M >= static_cast<index_t>(p.workers) * cpu_row_block ? 1 : std::min(p.workers, 64);
  const auto m = static_cast<std::size_t>(M), d = static_cast<std::size_t>(D);
  const auto pad = [](std::size_t n) { return (n + 15) & ~std::size_t(15); };  // 64-byte alignment for float
  std::size_t o = 0;
  const auto take = [&](std::size_t n) {
    const std::size_t at = o;
    o += pad(n);
    return at;
  };
  p.invq = take(m);
  p.invk = take(m);
  p.s0 = take(m);
  p.projq = take(m);
  p.projk = take(m);
  p.weight = take(m);
  p.lse = take(m);
  p.loss = take(m);
  p.part_m = take(m * p.splits);
  p.part_l = take(m * p.splits);
  p.acc = take(m * d * p.splits);
  p.gk = take(in_batch ? m * d : 0);
  p.tiles = take(static_cast<std::size_t>(p.workers) * cpu_row_block * cpu_key_tile);
  p.logits = blocking_for<Acc>(cpu_row_block, cpu_key_tile, D);
  p.gradient = blocking_for<Acc>(cpu_row_block, D, cpu_key_tile);
  p.key_gradient = blocking_for<Acc>(cpu_key_tile, D, cpu_row_block);
  p.pack_a = pad(std::max({p.logits.size_a(), p.gradient.size_a(), p.key_gradient.size_a()}));
  p.pack_b = pad(std::max({p.logits.size_b(), p.gradient.size_b(), p.key_gradient.size_b()}));
  p.packs = take(static_cast<std::size_t>(p.workers) * (p.pack_a + p.pack_b));
  p.total = o;
  return p;
}

template <class Acc>
struct key_set {
  const Acc* data = nullptr;  ///< row j at data + j * ld
  index_t ld = 0;
  index_t count = 0;           ///< rows in the set
  const std::int64_t* ids = nullptr;  ///< per-row ids (queue slots or tokens) or nullptr
  index_t ids_stride = 0;
  bool in_batch = false;       ///< teacher rows: scale by inv norm, exclude self/padding
};

}  // namespace token_nce_detail

/// Bytes of scratch the CPU path needs for M tokens of dimension D with accumulator `Acc`
/// (float, or double for double tokens). The queue size does not matter on the CPU; it is part
/// of the signature so both backends are called alike.
template <class Acc = float>
[[nodiscard]] inline index_t token_nce_queue_workspace_size(const cpu& ctx, index_t tokens, index_t dim, index_t /*queue_capacity*/,
                                                            const token_nce_options& opt = {}) {
  const auto p = token_nce_detail::make_cpu_plan<Acc>(ctx.threads, tokens, dim, opt.in_batch_negatives);
  return static_cast<index_t>(p.total * sizeof(Acc) + 64);
}

namespace token_nce_detail {

/// The CPU path. Acc = float or double; every view's element type is Acc (const for inputs).
template <class Acc>
status cpu_run(const char* fn, const cpu& ctx, host_view<const Acc, 2> Z, host_view<const Acc, 2> Y,
               const sample_queue<Acc, host_space>& queue, host_view<const std::uint8_t, 1> mask,
               host_view<const std::int64_t, 1> ids, host_view<Acc, 1> loss, host_view<Acc, 1> per_token,
               host_view<Acc, 2> grad_student, host_view<Acc, 2> grad_teacher, host_view<std::byte, 1> workspace,
               const token_nce_options& opt) {
  using std::exp;
  using std::log;
  const index_t M = Z.extent(0), D = Z.extent(1);
  const bool want_grad = !grad_student.empty() || !grad_teacher.empty();
  const bool want_teacher = !grad_teacher.empty();
  const cpu_plan plan = make_cpu_plan<Acc>(ctx.threads, M, D, opt.in_batch_negatives);

  // ---- workspace ----
  std::vector<Acc> owned;
  Acc* ws = nullptr;
  const std::size_t need_bytes = plan.total * sizeof(Acc) + 64;
  if (workspace.empty()) {
    owned.resize(plan.total + 16);
    auto addr = reinterpret_cast<std::uintptr_t>(owned.data());
    ws = owned.data() + ((64 - addr % 64) % 64) / sizeof(Acc);  // same alignment as a caller's workspace
  } else {
    if (static_cast<std::size_t>(workspace.extent(0)) < need_bytes)
      return fail(errc::invalid_argument, fn,
                  "'workspace' has " + std::to_string(workspace.extent(0)) + " bytes, needs " + std::to_string(need_bytes) +
                      " (token_nce_queue_workspace_size)");
    if (!workspace.inner_contiguous()) return fail(errc::unsupported_layout, fn, "'workspace' must be contiguous");
    auto addr = reinterpret_cast<std::uintptr_t>(workspace.data());
    addr = (addr + 63) & ~std::uintptr_t(63);
    ws = reinterpret_cast<Acc*>(addr);
  }
  Acc* invq = ws + plan.invq;
  Acc* invk = ws + plan.invk;
  Acc* s0 = ws + plan.s0;
  Acc* projq = ws + plan.projq;
  Acc* projk = ws + plan.projk;
  Acc* weight = ws + plan.weight;
  Acc* lse = ws + plan.lse;
  Acc* tok_loss = ws + plan.loss;
  Acc* part_m = ws + plan.part_m;
  Acc* part_l = ws + plan.part_l;
  Acc* acc = ws + plan.acc;
  Acc* gk = ws + plan.gk;
  Acc* tiles = ws + plan.tiles;
  // Thread w's packing buffers, attached with the blocking of each product shape.
  const auto packing = [&](index_t w, const gemm_blocking& b) {
    gemm_packing<Acc> pk;
    Acc* base = ws + plan.packs + static_cast<std::size_t>(w) * (plan.pack_a + plan.pack_b);
    pk.attach(base, base + plan.pack_a, b.kc, b.mc, b.nc);
    return pk;
  };

  const Acc inv_tau = Acc(1) / static_cast<Acc>(opt.temperature);
  const Acc eps = static_cast<Acc>(opt.normalize_eps);
  const auto valid = [&](index_t i) { return mask.empty() || mask(i) != 0; };
  const auto row_id = [&](index_t i) { return ids.empty() ? no_sample_id : ids(i); };

  // ---- 1. per-token norms and positive logits (B2 forward, s_i0) ----
  index_t valid_count = 0;
  for (index_t i = 0; i < M; ++i) valid_count += valid(i) ? 1 : 0;
  if (valid_count == 0) return fail(errc::invalid_argument, fn, "every token is masked: the loss is undefined");
  parallel_for(
      ctx, M,
      [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) {
          const Acc* z = Z.row(i);
          const Acc* y = Y.row(i);
          Acc zz = 0, yy = 0, zy = 0;
          for (index_t d = 0; d < D; ++d) {
            zz += z[d] * z[d];
            yy += y[d] * y[d];
            zy += z[d] * y[d];
          }
          invq[i] = contrastive_detail::inverse_norm(zz, eps);
          invk[i] = contrastive_detail::inverse_norm(yy, eps);
          projq[i] = contrastive_detail::norm_unclamped(zz, eps) ? Acc(1) : Acc(0);
          projk[i] = contrastive_detail::norm_unclamped(yy, eps) ? Acc(1) : Acc(0);
          s0[i] = zy * invq[i] * invk[i] * inv_tau;
          weight[i] = token_weight(valid(i), opt.red, static_cast<Acc>(valid_count), static_cast<Acc>(M));
        }
      },
      256);

  // ---- 2. one tiled pass over the keys: online LSE and sum_j e^{s_j - m} key_j ----
  key_set<Acc> sets[2];
  int nsets = 0;
  if (queue.size() > 0) {
    sets[nsets].data = queue.keys().data();
    sets[nsets].ld = queue.keys().stride(0);
    sets[nsets].count = queue.size();
    sets[nsets].ids = queue.has_ids() ? queue.ids().data() : nullptr;
    sets[nsets].ids_stride = queue.has_ids() ? queue.ids().stride(0) : 0;
    sets[nsets].in_batch = false;
    ++nsets;
  }
  if (opt.in_batch_negatives) {
    sets[nsets].data = Y.data();
    sets[nsets].ld = Y.stride(0);
    sets[nsets].count = M;
    sets[nsets].ids = ids.empty() ? nullptr : ids.data();
    sets[nsets].ids_stride = ids.empty() ? 0 : ids.stride(0);
    sets[nsets].in_batch = true;
    ++nsets;
  }
  const int S = plan.splits;
  for (index_t x = 0; x < M * S; ++x) {
    part_m[x] = neg_infinity<Acc>();
    part_l[x] = Acc(0);
  }
  if (want_grad) std::fill(acc, acc + static_cast<std::size_t>(M * D * S), Acc(0));

  using row_array = Eigen::Map<Eigen::Array<Acc, 1, Eigen::Dynamic>>;
  using const_row_array = Eigen::Map<const Eigen::Array<Acc, 1, Eigen::Dynamic>>;
  // Key `key` of set `ks` is not a negative of query row i (id rid): a false negative, or for
  // in-batch keys the row itself or padding.
  const auto excluded = [&](const key_set<Acc>& ks, index_t i, std::int64_t rid, index_t key) {
    const std::int64_t kid = ks.ids ? ks.ids[key * ks.ids_stride] : no_sample_id;
    return ks.in_batch ? inbatch_excluded(i, key, valid(key), rid, kid) : same_sample(rid, kid);
  };
  // Rows [r0, r1) against keys [k0, k1) of set `ks`, into split `s`'s state.
  auto tile_pass = [&](index_t r0, index_t r1, const key_set<Acc>& ks, index_t k0, index_t k1, int s, index_t w) {
    const index_t R = r1 - r0;
    Acc* tile = tiles + static_cast<std::size_t>(w) * cpu_row_block * cpu_key_tile;
    auto pk_logits = packing(w, plan.logits);
    auto pk_gradient = packing(w, plan.gradient);
    Acc* pm = part_m + static_cast<std::size_t>(s) * M;
    Acc* pl = part_l + static_cast<std::size_t>(s) * M;
    Acc* pacc = acc + static_cast<std::size_t>(s) * M * D;
    const Acc* zrows = Z.data() + r0 * Z.stride(0);
    for (index_t t0 = k0; t0 < k1; t0 += cpu_key_tile) {
      const index_t n = std::min(cpu_key_tile, k1 - t0);
      const Acc* krows = ks.data + t0 * ks.ld;
      packed_gemm(pk_logits, false, true, Acc(1), zrows, Z.stride(0), krows, ks.ld, tile, n, R, n, D, true);  // S = Z K^T
      for (index_t rr = 0; rr < R; ++rr) {
        const index_t i = r0 + rr;
        row_array srow(tile + rr * n, n);
        if (!valid(i)) {
          srow.setZero();
          continue;
        }
        const bool nan_row = std::isnan(srow.sum());  // Eigen's vectorised exp/max do not propagate NaN
        if (ks.in_batch) srow *= const_row_array(invk + t0, n);
        const std::int64_t rid = row_id(i);
        const bool check_ids = ks.ids != nullptr && rid != no_sample_id;
        bool any_excluded = false;
        if (ks.in_batch || check_ids) {
          for (index_t j = 0; j < n; ++j) {
            if (excluded(ks, i, rid, t0 + j)) {
              srow[j] = neg_infinity<Acc>();
              any_excluded = true;
            }
          }
        }
        const Acc scale = invq[i] * inv_tau;
        const Acc tile_max = srow.maxCoeff() * scale;
        const Acc m_old = pm[i];
        const Acc m_new = tile_max > m_old ? tile_max : m_old;
        Acc alpha = Acc(1);
        if (m_new == neg_infinity<Acc>()) {
          srow.setZero();
        } else {
          alpha = exp(m_old - m_new);
          srow = (srow * scale - m_new).exp();
          if (any_excluded) {
            for (index_t j = 0; j < n; ++j)
              if (excluded(ks, i, rid, t0 + j)) srow[j] = Acc(0);
          }
          pl[i] = pl[i] * alpha + srow.sum();
          pm[i] = m_new;
        }
        if (nan_row) pl[i] = std::numeric_limits<Acc>::quiet_NaN();
        if (want_grad) {
          if (alpha != Acc(1)) row_array(pacc + i * D, D) *= alpha;
          if (ks.in_batch) srow *= const_row_array(invk + t0, n);  // P_ib / ||y_b||: the GEMM uses raw y
        }
      }
      if (want_grad) packed_gemm(pk_gradient, false, false, Acc(1), tile, n, krows, ks.ld, pacc + r0 * D, D, R, D, n, false);  // acc += P K
    }
  };

  const index_t row_blocks = (M + cpu_row_block - 1) / cpu_row_block;
  const int W = S > 1 ? S : static_cast<int>(std::min<index_t>(plan.workers, row_blocks));
  parallel_for(ctx, W, [&](index_t wb, index_t we) {
    for (index_t w = wb; w < we; ++w) {
      const index_t rb0 = S > 1 ? 0 : row_blocks * w / W, rb1 = S > 1 ? row_blocks : row_blocks * (w + 1) / W;
      const int s = S > 1 ? static_cast<int>(w) : 0;
      for (index_t rb = rb0; rb < rb1; ++rb) {
        const index_t r0 = rb * cpu_row_block, r1 = std::min(M, r0 + cpu_row_block);
        for (int k = 0; k < nsets; ++k) {
          const index_t n = sets[k].count;
          const index_t k0 = S > 1 ? n * s / S : 0, k1 = S > 1 ? n * (s + 1) / S : n;
          tile_pass(r0, r1, sets[k], k0, k1, s, w);
        }
      }
    }
  });

  // ---- 3. per token: merge the splits, loss, gradient to the student (and the teacher's
  //         positive term) through the B2 backward ----
  const Acc g = static_cast<Acc>(opt.grad_scale);
  parallel_for(
      ctx, M,
      [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) {
          if (!valid(i)) {
            tok_loss[i] = Acc(0);
            lse[i] = Acc(0);
            if (!grad_student.empty() && !opt.accumulate)
              for (index_t d = 0; d < D; ++d) grad_student(i, d) = Acc(0);
            if (want_teacher) {
              if (opt.in_batch_negatives) std::fill(gk + i * D, gk + (i + 1) * D, Acc(0));
              else if (!opt.accumulate)
                for (index_t d = 0; d < D; ++d) grad_teacher(i, d) = Acc(0);
            }
            continue;
          }
          const merged_row<Acc> r = merge_row(s0[i], part_m + i, part_l + i, S, M);
          tok_loss[i] = r.loss;
          lse[i] = r.lse;
          if (!want_grad) continue;
          const Acc c = g * weight[i] * inv_tau;
          const Acc* z = Z.row(i);
          const Acc* y = Y.row(i);
          if (!grad_student.empty()) {
            Acc* gq = acc + i * D;  // split 0's accumulator row becomes g_q
            Acc wsplit[64];
            const int ns = std::min(S, 64);
            for (int s = 0; s < ns; ++s) wsplit[s] = part_weight(part_m[static_cast<std::size_t>(s) * M + i], r);
            Acc dot = 0;
            for (index_t d = 0; d < D; ++d) {
              Acc neg = 0;
              for (int s = 0; s < ns; ++s) neg += wsplit[s] * acc[static_cast<std::size_t>(s) * M * D + i * D + d];
              gq[d] = c * ((r.pi0 - Acc(1)) * y[d] * invk[i] + neg);
              dot += z[d] * invq[i] * gq[d];
            }
            const bool unclamped = projq[i] != Acc(0);
            for (index_t d = 0; d < D; ++d)
              write_grad(grad_student(i, d), normalize_backward(gq[d], z[d] * invq[i], dot, invq[i], unclamped), opt.accumulate);
          }
          if (want_teacher) {
            const Acc cp = c * (r.pi0 - Acc(1));
            if (opt.in_batch_negatives) {
              for (index_t d = 0; d < D; ++d) gk[i * D + d] = cp * z[d] * invq[i];
            } else {
              Acc dot = 0;
              for (index_t d = 0; d < D; ++d) dot += y[d] * invk[i] * cp * z[d] * invq[i];
              const bool unclamped = projk[i] != Acc(0);
              for (index_t d = 0; d < D; ++d)
                write_grad(grad_teacher(i, d), normalize_backward(cp * z[d] * invq[i], y[d] * invk[i], dot, invk[i], unclamped),
                           opt.accumulate);
            }
          }
        }
      },
      16);

  // ---- 4. teacher gradient through the in-batch negatives: dL/dk_b += sum_i c_i pi_ib q_i ----
  if (want_teacher && opt.in_batch_negatives) {
    const index_t key_tiles = (M + cpu_key_tile - 1) / cpu_key_tile;
    const int WT = static_cast<int>(std::min<index_t>(plan.workers, key_tiles));
    parallel_for(ctx, WT, [&](index_t wb, index_t we) {
      for (index_t w = wb; w < we; ++w) {
        Acc* tile = tiles + static_cast<std::size_t>(w) * cpu_row_block * cpu_key_tile;
        auto pk_logits = packing(w, plan.logits);
        auto pk_keys = packing(w, plan.key_gradient);
        for (index_t bt = key_tiles * w / WT; bt < key_tiles * (w + 1) / WT; ++bt) {
          const index_t b0 = bt * cpu_key_tile, n = std::min(cpu_key_tile, M - b0);
          const Acc* yrows = Y.data() + b0 * Y.stride(0);
          for (index_t r0 = 0; r0 < M; r0 += cpu_row_block) {
            const index_t R = std::min(cpu_row_block, M - r0);
            const Acc* zrows = Z.data() + r0 * Z.stride(0);
            packed_gemm(pk_logits, false, true, Acc(1), zrows, Z.stride(0), yrows, Y.stride(0), tile, n, R, n, D, true);
            for (index_t rr = 0; rr < R; ++rr) {
              const index_t i = r0 + rr;
              Acc* srow = tile + rr * n;
              const Acc ci = g * weight[i] * inv_tau;
              if (!valid(i) || ci == Acc(0)) {
                std::fill(srow, srow + n, Acc(0));
                continue;
              }
              const std::int64_t rid = row_id(i);
              for (index_t j = 0; j < n; ++j) {
                const index_t key = b0 + j;
                if (inbatch_excluded(i, key, valid(key), rid, row_id(key))) {
                  srow[j] = Acc(0);
                } else {
                  const Acc sij = srow[j] * invq[i] * invk[key] * inv_tau;
                  srow[j] = exp(sij - lse[i]) * ci * invq[i];  // c_i pi_ib / ||z_i||: the GEMM uses raw z
                }
              }
            }
            packed_gemm(pk_keys, true, false, Acc(1), tile, n, zrows, Z.stride(0), gk + b0 * D, D, n, D, R, false);  // gk += W^T Z
          }
        }
      }
    });
    parallel_for(
        ctx, M,
        [&](index_t b, index_t e) {
          for (index_t i = b; i < e; ++i) {
            const Acc* y = Y.row(i);
            const Acc* gki = gk + i * D;
            Acc dot = 0;
            for (index_t d = 0; d < D; ++d) dot += y[d] * invk[i] * gki[d];
            const bool unclamped = projk[i] != Acc(0);
            for (index_t d = 0; d < D; ++d)
              write_grad(grad_teacher(i, d), normalize_backward(gki[d], y[d] * invk[i], dot, invk[i], unclamped), opt.accumulate);
          }
        },
        16);
  }

  // ---- 5. losses (summed in token order: reproducible for any thread count) ----
  if (!per_token.empty())
    for (index_t i = 0; i < M; ++i) per_token(i) = tok_loss[i];
  if (!loss.empty()) {
    if (opt.red == reduction::none) {
      for (index_t i = 0; i < M; ++i) loss(i) = tok_loss[i];
    } else {
      Acc total = 0;
      for (index_t i = 0; i < M; ++i)
        if (valid(i)) total += weight[i] * tok_loss[i];
      loss(0) = total;
    }
  }
  return {};
}

template <class TS, class TT, class TQ>
constexpr void static_check_cpu_types() {
  using S = std::remove_const_t<TS>;
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "token_nce_queue (CPU): student tokens must be float or double");
  static_assert(std::is_same_v<std::remove_const_t<TT>, S>, "token_nce_queue (CPU): teacher tokens must have the student's type");
  static_assert(std::is_same_v<TQ, S>, "token_nce_queue (CPU): queue keys must have the tokens' type");
}

}  // namespace token_nce_detail

/// Fused forward + backward on the CPU: loss (and optional per-token losses), gradient to the
/// student tokens and, when `grad_teacher` is given, to the teacher tokens.
///   student, teacher   [M, D] float or double, unit stride along D
///   queue              sample_queue of the same element type (absent/empty: in-batch only)
///   token_mask         [M] optional, nonzero = real token (absent: all real)
///   token_ids          [M] optional sample ids for false-negative masking (absent: none)
///   loss               [1], or [M] with reduction::none
///   per_token_loss     [M] optional (masked tokens get 0)
///   grad_student       [M, D]; grad_teacher [M, D] optional (absent: stop-gradient)
///   workspace          token_nce_queue_workspace_size bytes, or absent (allocated here)
template <class TS, class TT, class TQ>
[[nodiscard]] status token_nce_queue_forward_backward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                      const sample_queue<TQ, host_space>& queue,
                                                      host_view<const std::uint8_t, 1> token_mask,
                                                      host_view<const std::int64_t, 1> token_ids, host_view<accum_t<TS>, 1> loss,
                                                      host_view<accum_t<TS>, 1> per_token_loss,
                                                      host_view<std::remove_const_t<TS>, 2> grad_student,
                                                      host_view<std::remove_const_t<TT>, 2> grad_teacher,
                                                      host_view<std::byte, 1> workspace, const token_nce_options& opt = {}) {
  token_nce_detail::static_check_cpu_types<TS, TT, TQ>();
  using Acc = std::remove_const_t<TS>;
  constexpr const char* fn = "token_nce_queue_forward_backward";
  DISTILL_TRY(token_nce_detail::check_inputs(fn, student, teacher, queue, token_mask, token_ids, opt));
  const index_t M = student.extent(0);
  DISTILL_TRY(token_nce_detail::check_loss_outputs(fn, loss, per_token_loss, M, opt.red));
  DISTILL_TRY(token_nce_detail::check_grad_outputs(fn, grad_student, grad_teacher, student));
  return token_nce_detail::cpu_run<Acc>(fn, ctx, student, teacher, queue, token_mask, token_ids, loss, per_token_loss, grad_student,
                                        grad_teacher, workspace, opt);
}

/// Forward only (CPU): the loss and optional per-token losses; one GEMM per key tile.
template <class TS, class TT, class TQ>
[[nodiscard]] status token_nce_queue_forward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                             const sample_queue<TQ, host_space>& queue, host_view<const std::uint8_t, 1> token_mask,
                                             host_view<const std::int64_t, 1> token_ids, host_view<accum_t<TS>, 1> loss,
                                             host_view<accum_t<TS>, 1> per_token_loss, host_view<std::byte, 1> workspace,
                                             const token_nce_options& opt = {}) {
  token_nce_detail::static_check_cpu_types<TS, TT, TQ>();
  using Acc = std::remove_const_t<TS>;
  constexpr const char* fn = "token_nce_queue_forward";
  DISTILL_TRY(token_nce_detail::check_inputs(fn, student, teacher, queue, token_mask, token_ids, opt));
  DISTILL_TRY(token_nce_detail::check_loss_outputs(fn, loss, per_token_loss, student.extent(0), opt.red));
  return token_nce_detail::cpu_run<Acc>(fn, ctx, student, teacher, queue, token_mask, token_ids, loss, per_token_loss, {}, {},
                                        workspace, opt);
}

/// Backward only (CPU): the gradients of the loss the forward computes, with upstream gradient
/// opt.grad_scale (per token for reduction::none). Recomputes the statistics (no saved state).
template <class TS, class TT, class TQ>
[[nodiscard]] status token_nce_queue_backward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                              const sample_queue<TQ, host_space>& queue, host_view<const std::uint8_t, 1> token_mask,
                                              host_view<const std::int64_t, 1> token_ids,
                                              host_view<std::remove_const_t<TS>, 2> grad_student,
                                              host_view<std::remove_const_t<TT>, 2> grad_teacher, host_view<std::byte, 1> workspace,
                                              const token_nce_options& opt = {}) {
  token_nce_detail::static_check_cpu_types<TS, TT, TQ>();
  using Acc = std::remove_const_t<TS>;
  constexpr const char* fn = "token_nce_queue_backward";
  DISTILL_TRY(token_nce_detail::check_inputs(fn, student, teacher, queue, token_mask, token_ids, opt));
  DISTILL_TRY(token_nce_detail::check_grad_outputs(fn, grad_student, grad_teacher, student));
  return token_nce_detail::cpu_run<Acc>(fn, ctx, student, teacher, queue, token_mask, token_ids, {}, {}, grad_student, grad_teacher,
                                        workspace, opt);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/token_nce.cuh"
#endif
