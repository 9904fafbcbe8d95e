// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the attention-distribution losses (math and the CPU path:
//! distill/attention/attention_map.hpp).
//!
//! warp_per_row (L_k <= 1024): one warp owns a query row; each lane keeps PL = ceil(L_k/32)
//!   keys in registers (key j = lane + 32 k, so every load is coalesced), takes the softmax of
//!   the student and of each teacher head with warp reductions, and writes the gradient from the
//!   same registers. Bytes: student and teacher rows read once, gradient row written once; the
//!   probabilities never touch memory. A group_mean teacher reads each of its G heads once (the
//!   second pass over a head, after its log-sum-exp, hits L1).
//! block_per_row (L_k > 1024, e.g. "pair attention" over N^2 object pairs): a block owns a row and
//!   makes three passes over it (log-sum-exps, loss and row sums, gradient); rows this long are
//!   few and the re-reads hit L1/L2.
//! Reduced losses: per-block partial sums in the workspace, added in block order by the last
//! block to finish (deterministic); the counter is zeroed with cudaMemsetAsync per call. With
//! masks and reduction mean a one-block kernel first counts the valid elements (|V|) into the
//! workspace, so nothing synchronises with the host.

#if !defined(__CUDACC__)
#error "distill/cuda/attention_map.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>

#include "distill/attention/attention_map.hpp"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"

namespace distill {
namespace attention_map_cuda {

constexpr int max_index_heads = 128;  // head_map index: the table travels in the kernel parameters
constexpr int max_group = 256;        // group_mean: teacher heads per student head
constexpr int max_blocks = attention_map_detail::cuda_max_blocks;  // grid cap (grid-stride loops); also the number of partial sums
constexpr int row_block = 256;        // 8 warps
constexpr int max_warp_keys = 1024;   // warp_per_row up to 32 keys per lane

struct head_table {
  int head[max_index_heads];
};

template <class TS, class TT>
struct problem {
  const TS* s;
  index_t ssb, ssh, ssq;  // unit stride along keys
  const TT* t;
  index_t tsb, tsh, tsq;
  TS* g;                  // nullptr: no gradient
  index_t gsb, gsh, gsq;
  const std::uint8_t* km;  // nullptr: every key valid
  index_t kmb;
  const std::uint8_t* qm;  // nullptr: every query valid
  index_t qmb;
  int B, Hs, Lq, Lk, group;
  int head_map;            // 0 one_to_one, 1 index, 2 group_mean
  bool s_logits, t_logits, kl, accumulate;
  float grad_scale;
  float host_inv_divisor;  // used when divisor is nullptr
  const float* divisor;    // device |V| (masks with reduction mean)
  float* loss;
  index_t loss_stride;
  int loss_mode;           // 0 no loss, 1 per row, 2 reduced
  float* partials;
  unsigned* counter;
  head_table heads;
};

template <class TS, class TT>
__device__ DISTILL_FORCEINLINE int teacher_head(const problem<TS, TT>& P, int h, int k) {
  return P.head_map == 2 ? h * P.group + k : P.head_map == 1 ? P.heads.head[h] : h;
}

template <class TS, class TT>
__device__ DISTILL_FORCEINLINE float inverse_divisor(const problem<TS, TT>& P) {
  return P.divisor ? safe_inverse(*P.divisor) : P.host_inv_divisor;
}

/// The block's summed row losses: per-row output is written by the caller; a reduced loss goes
/// through the partials and the last block.
template <class TS, class TT>
__device__ void finish_loss(const problem<TS, TT>& P, float block_value, float inv_divisor, float* smem) {
  __shared__ bool is_last;
  if (P.loss_mode != 2) return;
  if (threadIdx.x == 0) {
    P.partials[blockIdx.x] = block_value;
    __threadfence();
    is_last = atomicAdd(P.counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  float s = 0.f;
  for (unsigned k = threadIdx.x; k < gridDim.x; k += row_block) s += __ldcg(P.partials + k);
  s = cuda_detail::block_sum<row_block>(s, smem);
  if (threadIdx.x == 0) P.loss[0] = s * inv_divisor;
}

/// log-softmax of a register row in place (x: -inf at masked keys); p = exp(x) afterwards. A
/// row with no finite mass becomes x = -inf (p = 0), unless it holds NaN, which then spreads to
/// the row.
template <int PL>
__device__ DISTILL_FORCEINLINE void warp_log_softmax(float (&x)[PL]) {
  float m = neg_infinity<float>();
#pragma unroll
  for (int k = 0; k < PL; ++k) m = fmaxf(m, x[k]);
  m = cuda_detail::warp_max(m);
  if (m == neg_infinity<float>()) {
    bool nan = false;
#pragma unroll
    for (int k = 0; k < PL; ++k) nan |= x[k] != x[k];
    const float fill = __any_sync(cuda_detail::full_mask, nan) ? __int_as_float(0x7fc00000) : neg_infinity<float>();
#pragma unroll
    for (int k = 0; k < PL; ++k) x[k] = fill;
    return;
  }
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < PL; ++k) sum += exp_(x[k] - m);
  const float lse = m + log_(cuda_detail::warp_sum(sum));
#pragma unroll
  for (int k = 0; k < PL; ++k) x[k] -= lse;
}

/// One row on one warp; returns l_r on every lane. Two register arrays of PL values per lane:
/// the student's (log p_s for logits, else p_s) and the teacher's (log p_t when kept exact for
/// KL, else p_t); p_s = exp(log p_s) is recomputed where needed rather than held in a third
/// array (one exp per key more, on a memory-bound kernel, keeps PL = 32 within 128 registers:
/// two blocks per SM instead of one).
template <int PL, class TS, class TT>
__device__ float warp_row(const problem<TS, TT>& P, int b, int h, int i, float c) {
  const int lane = threadIdx.x & 31;
  TS* grow = P.g ? P.g + static_cast<index_t>(b) * P.gsb + static_cast<index_t>(h) * P.gsh + static_cast<index_t>(i) * P.gsq
                 : nullptr;
  if (P.qm && P.qm[static_cast<index_t>(b) * P.qmb + i] == 0) {
    if (grow && !P.accumulate)
      for (int j = lane; j < P.Lk; j += 32) grow[j] = store<TS>(0.f);
    return 0.f;
  }
  const std::uint8_t* km = P.km ? P.km + static_cast<index_t>(b) * P.kmb : nullptr;
  unsigned valid = 0;  // bit k: key lane + 32 k is in range and unmasked
  float xs[PL], tv[PL];

  // Student: xs = raw values (masked: -inf logits, 0 probabilities).
  const TS* srow = P.s + static_cast<index_t>(b) * P.ssb + static_cast<index_t>(h) * P.ssh + static_cast<index_t>(i) * P.ssq;
  const float s_masked = P.s_logits ? neg_infinity<float>() : 0.f;
#pragma unroll
  for (int k = 0; k < PL; ++k) {
    const int j = lane + 32 * k;
    const bool v = j < P.Lk && (!km || km[j] != 0);
    valid |= static_cast<unsigned>(v) << k;
    xs[k] = v ? load<float>(srow[j]) : s_masked;
  }
  // Teacher: tv = log p_t (one logit head, kept exact for kl) or p_t. A single teacher row is
  // loaded together with the student row, so both are in flight at once.
  const int nheads = P.head_map == 2 ? P.group : 1;
  bool t_is_log = false;
  const float t_masked = P.t_logits ? neg_infinity<float>() : 0.f;
  auto trow_of = [&](int k) {
    return P.t + static_cast<index_t>(b) * P.tsb + static_cast<index_t>(teacher_head(P, h, k)) * P.tsh +
           static_cast<index_t>(i) * P.tsq;
  };
  if (nheads == 1) {
    const TT* trow = trow_of(0);
#pragma unroll
    for (int k = 0; k < PL; ++k) tv[k] = (valid >> k) & 1u ? load<float>(trow[lane + 32 * k]) : t_masked;
  }
  if (P.s_logits) warp_log_softmax<PL>(xs);  // xs = log p_s
  const auto p_s = [&](int k) { return P.s_logits ? exp_(xs[k]) : xs[k]; };
  if (nheads == 1) {
    if (P.t_logits) {
      warp_log_softmax<PL>(tv);
      if (P.kl) {
        t_is_log = true;
      } else {
#pragma unroll
        for (int k = 0; k < PL; ++k) tv[k] = exp_(tv[k]);
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < PL; ++k) tv[k] = 0.f;
    for (int g = 0; g < nheads; ++g) {
      const TT* trow = trow_of(g);
      if (P.t_logits) {
        lse_state<float> st;  // first pass: log-sum-exp of this head's row
        bool nan = false;
#pragma unroll
        for (int k = 0; k < PL; ++k)
          if ((valid >> k) & 1u) {
            const float x = load<float>(trow[lane + 32 * k]);
            nan |= x != x;
            st.add(x);
          }
        st = cuda_detail::warp_merge(st);
        const float lse = __any_sync(cuda_detail::full_mask, nan) ? __int_as_float(0x7fc00000) : st.value();
        const bool empty = lse == neg_infinity<float>();
#pragma unroll
        for (int k = 0; k < PL; ++k)  // second pass (L1): accumulate the probabilities
          if ((valid >> k) & 1u) tv[k] += empty ? 0.f : exp_(load<float>(trow[lane + 32 * k]) - lse);
      } else {
#pragma unroll
        for (int k = 0; k < PL; ++k)
          if ((valid >> k) & 1u) tv[k] += load<float>(trow[lane + 32 * k]);
      }
    }
    const float g = static_cast<float>(nheads);
#pragma unroll
    for (int k = 0; k < PL; ++k) tv[k] /= g;  // division, as on the CPU
  }

  float loss = 0.f, aux = 0.f;
  if (!P.kl) {
#pragma unroll
    for (int k = 0; k < PL; ++k) {
      const float ps = p_s(k);
      loss += attention_map_detail::mse_term(ps, tv[k]);
      aux += ps * attention_map_detail::mse_upstream(ps, tv[k], c);
    }
  } else {
#pragma unroll
    for (int k = 0; k < PL; ++k) {
      const float pt = t_is_log ? exp_(tv[k]) : tv[k];
      const float log_pt = t_is_log ? tv[k] : log_(tv[k]);
      const float log_ps = P.s_logits ? xs[k] : log_(xs[k]);
      loss += attention_map_detail::kl_term(pt, log_pt, log_ps);
      aux += pt;
    }
  }
  loss = cuda_detail::warp_sum(loss);
  if (grow) {
    aux = cuda_detail::warp_sum(aux);  // mse: sum_k p_s g_k; kl: teacher mass
#pragma unroll
    for (int k = 0; k < PL; ++k) {
      const int j = lane + 32 * k;
      if (j >= P.Lk) continue;
      const float ps = p_s(k);
      float gv;
      if (!P.kl) {
        gv = attention_map_detail::mse_upstream(ps, tv[k], c);
        if (P.s_logits) gv = attention_map_detail::softmax_backward(ps, gv, aux);
      } else {
        const float pt = t_is_log ? exp_(tv[k]) : tv[k];
        gv = P.s_logits ? attention_map_detail::kl_grad_logits(ps, pt, aux, c)
                        : attention_map_detail::kl_grad_probabilities(ps, pt, c);
      }
      if (!((valid >> k) & 1u)) gv = 0.f;
      if (P.accumulate) gv += load<float>(grow[j]);
      grow[j] = store<TS>(gv);
    }
  }
  return loss;
}

template <int PL, class TS, class TT>
__global__ void __launch_bounds__(row_block, 2) attention_map_warp_per_row_kernel(const problem<TS, TT> P) {
  __shared__ float smem[row_block / 32];
  constexpr int warps = row_block / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float inv = inverse_divisor(P);
  const float c = P.grad_scale * inv;
  const index_t rows = static_cast<index_t>(P.B) * P.Hs * P.Lq;
  float total = 0.f;
  for (index_t r = static_cast<index_t>(blockIdx.x) * warps + warp; r < rows; r += static_cast<index_t>(gridDim.x) * warps) {
    const int i = static_cast<int>(r % P.Lq);
    const index_t bh = r / P.Lq;
    const int h = static_cast<int>(bh % P.Hs), b = static_cast<int>(bh / P.Hs);
    const float l = warp_row<PL>(P, b, h, i, c);
    if (P.loss_mode == 1 && lane == 0) P.loss[r * P.loss_stride] = l;
    total += l;
  }
  total = cuda_detail::block_sum<row_block>(lane == 0 ? total : 0.f, smem);
  finish_loss(P, total, inv, smem);
}

/// Block-wide log-sum-exp over the valid keys of a row (all threads get it); NaN when the row
/// holds a NaN (lse_state alone would call an all-NaN row empty).
template <class T>
__device__ float block_row_lse(const T* row, const std::uint8_t* km, int Lk, lse_state<float>* lsmem) {
  lse_state<float> st;
  int nan = 0;
  for (int j = threadIdx.x; j < Lk; j += row_block)
    if (!km || km[j] != 0) {
      const float x = load<float>(row[j]);
      nan |= x != x;
      st.add(x);
    }
  const float lse = cuda_detail::block_merge<row_block>(st, lsmem).value();
  return __syncthreads_or(nan) ? __int_as_float(0x7fc00000) : lse;
}

template <class TS, class TT>
__global__ void __launch_bounds__(row_block) attention_map_block_per_row_kernel(const problem<TS, TT> P) {
  __shared__ float smem[row_block / 32];
  __shared__ cuda_detail::shared_array<lse_state<float>, row_block / 32> lsmem_raw;
  lse_state<float>* lsmem = lsmem_raw.data();
  __shared__ float lse_t[max_group];
  const float inv = inverse_divisor(P);
  const float c = P.grad_scale * inv;
  const index_t rows = static_cast<index_t>(P.B) * P.Hs * P.Lq;
  const int nheads = P.head_map == 2 ? P.group : 1;
  const bool exact_log_t = P.t_logits && nheads == 1;
  float total = 0.f;
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int i = static_cast<int>(r % P.Lq);
    const index_t bh = r / P.Lq;
    const int h = static_cast<int>(bh % P.Hs), b = static_cast<int>(bh / P.Hs);
    TS* grow = P.g ? P.g + static_cast<index_t>(b) * P.gsb + static_cast<index_t>(h) * P.gsh + static_cast<index_t>(i) * P.gsq
                   : nullptr;
    float l = 0.f;
    if (P.qm && P.qm[static_cast<index_t>(b) * P.qmb + i] == 0) {
      if (grow && !P.accumulate)
        for (int j = threadIdx.x; j < P.Lk; j += row_block) grow[j] = store<TS>(0.f);
    } else {
      const std::uint8_t* km = P.km ? P.km + static_cast<index_t>(b) * P.kmb : nullptr;
      const TS* srow = P.s + static_cast<index_t>(b) * P.ssb + static_cast<index_t>(h) * P.ssh + static_cast<index_t>(i) * P.ssq;
      auto trow_of = [&](int k) {
        return P.t + static_cast<index_t>(b) * P.tsb + static_cast<index_t>(teacher_head(P, h, k)) * P.tsh +
               static_cast<index_t>(i) * P.tsq;
      };
      // Pass 1: log-sum-exps (student, then each teacher head into shared memory).
      const float lse_s = P.s_logits ? block_row_lse(srow, km, P.Lk, lsmem) : 0.f;
      if (P.t_logits)
        for (int g = 0; g < nheads; ++g) {
          const float v = block_row_lse(trow_of(g), km, P.Lk, lsmem);
          if (threadIdx.x == 0) lse_t[g] = v;
        }
      __syncthreads();
      // p_s, log p_s, p_t, log p_t of key j (valid keys only).
      auto probabilities = [&](int j, float& ps, float& log_ps, float& pt, float& log_pt) {
        const float x = load<float>(srow[j]);
        if (P.s_logits) {
          log_ps = lse_s == neg_infinity<float>() ? neg_infinity<float>() : x - lse_s;
          ps = exp_(log_ps);
        } else {
          ps = x;
          log_ps = log_(x);
        }
        if (exact_log_t) {
          const float y = load<float>(trow_of(0)[j]);
          log_pt = lse_t[0] == neg_infinity<float>() ? neg_infinity<float>() : y - lse_t[0];
          pt = exp_(log_pt);
        } else {
          float acc = 0.f;
          for (int g = 0; g < nheads; ++g) {
            const float y = load<float>(trow_of(g)[j]);
            acc += P.t_logits ? (lse_t[g] == neg_infinity<float>() ? 0.f : exp_(y - lse_t[g])) : y;
          }
          pt = acc / static_cast<float>(nheads);
          log_pt = log_(pt);
        }
      };
      // Pass 2: the row's loss and its row sum (mse: sum p_s g; kl: teacher mass).
      float part = 0.f, aux = 0.f;
      for (int j = threadIdx.x; j < P.Lk; j += row_block) {
        if (km && km[j] == 0) continue;
        float ps, log_ps, pt, log_pt;
        probabilities(j, ps, log_ps, pt, log_pt);
        if (!P.kl) {
          part += attention_map_detail::mse_term(ps, pt);
          aux += ps * attention_map_detail::mse_upstream(ps, pt, c);
        } else {
          part += attention_map_detail::kl_term(pt, log_pt, log_ps);
          aux += pt;
        }
      }
      l = cuda_detail::block_sum<row_block>(part, smem);
      aux = cuda_detail::block_sum<row_block>(aux, smem);
      // Pass 3: gradient.
      if (grow) {
        for (int j = threadIdx.x; j < P.Lk; j += row_block) {
          float gv = 0.f;
          if (!km || km[j] != 0) {
            float ps, log_ps, pt, log_pt;
            probabilities(j, ps, log_ps, pt, log_pt);
            if (!P.kl) {
              gv = attention_map_detail::mse_upstream(ps, pt, c);
              if (P.s_logits) gv = attention_map_detail::softmax_backward(ps, gv, aux);
            } else {
              gv = P.s_logits ? attention_map_detail::kl_grad_logits(ps, pt, aux, c)
                              : attention_map_detail::kl_grad_probabilities(ps, pt, c);
            }
          }
          if (P.accumulate) gv += load<float>(grow[j]);
          grow[j] = store<TS>(gv);
        }
      }
      __syncthreads();  // lse_t is rewritten by the next row
    }
    if (P.loss_mode == 1 && threadIdx.x == 0) P.loss[r * P.loss_stride] = l;
    total += l;  // the same value on every thread
  }
  finish_loss(P, threadIdx.x == 0 ? total : 0.f, inv, smem);
}

/// |V| of the file comment from the device masks: a warp per sample, one block.
__global__ void __launch_bounds__(row_block)
    attention_map_valid_count_kernel(const std::uint8_t* km, index_t kmb, const std::uint8_t* qm, index_t qmb, int B,
                                     int Lq, int Lk, int Hs, bool kl, float* divisor) {
  __shared__ double smem[row_block / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double acc = 0.0;
  for (int b = warp; b < B; b += row_block / 32) {
    int nk = Lk, nq = Lq;
    if (km) {
      int n = 0;
      for (int j = lane; j < Lk; j += 32) n += km[static_cast<index_t>(b) * kmb + j] != 0;
      nk = cuda_detail::warp_sum(n);
    }
    if (qm) {
      int n = 0;
      for (int j = lane; j < Lq; j += 32) n += qm[static_cast<index_t>(b) * qmb + j] != 0;
      nq = cuda_detail::warp_sum(n);
    }
    if (lane == 0) acc += kl ? (nk > 0 ? static_cast<double>(nq) : 0.0) : static_cast<double>(nq) * static_cast<double>(nk);
  }
  acc = cuda_detail::block_sum<row_block>(acc, smem);
  if (threadIdx.x == 0) *divisor = static_cast<float>(acc * static_cast<double>(Hs));
}

template <class TS, class TT, class Launch>
status dispatch_warp_kernel(int Lk, Launch&& launch) {
  if (Lk <= 32) return launch(attention_map_warp_per_row_kernel<1, TS, TT>);
  if (Lk <= 64) return launch(attention_map_warp_per_row_kernel<2, TS, TT>);
  if (Lk <= 128) return launch(attention_map_warp_per_row_kernel<4, TS, TT>);
  if (Lk <= 256) return launch(attention_map_warp_per_row_kernel<8, TS, TT>);
  if (Lk <= 512) return launch(attention_map_warp_per_row_kernel<16, TS, TT>);
  return launch(attention_map_warp_per_row_kernel<32, TS, TT>);
}

template <class TS, class TT>
status run_cuda(const char* fn, attention_map_detail::divergence div, const cuda& ctx, cuda_view<TS, 4> student,
                cuda_view<TT, 4> teacher, const attention_masks<cuda_space>& masks, cuda_view<accum_t<TS>, 1> loss,
                cuda_view<std::remove_const_t<TS>, 4> grad, cuda_view<std::byte, 1> workspace, bool need_loss, bool need_grad,
                const attention_map_options& opt) {
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  static_assert(!std::is_same_v<S, double> && !std::is_same_v<T, double>,
                "attention_map (CUDA): float, float16 and bfloat16 only");
  static_assert(is_supported_float_v<S> && is_supported_float_v<T>, "attention_map: unsupported element type");
  using namespace attention_map_detail;
  DISTILL_TRY(check_inputs(fn, student, teacher, masks, opt, max_index_heads));
  const index_t B = student.extent(0), Hs = student.extent(1), Lq = student.extent(2), Lk = student.extent(3);
  const index_t rows = B * Hs * Lq;
  if (need_loss) DISTILL_TRY(check_loss(fn, loss, rows, opt.reduction));
  if (need_grad) DISTILL_TRY(check_grad(fn, grad, student));
  DISTILL_TRY(check_inner_contiguous(fn, "student", student));
  DISTILL_TRY(check_inner_contiguous(fn, "teacher", teacher));
  if (need_grad) DISTILL_TRY(check_inner_contiguous(fn, "grad_student", grad));
  if (!masks.key.empty()) DISTILL_TRY(check_inner_contiguous(fn, "key_mask", masks.key));
  if (!masks.query.empty()) DISTILL_TRY(check_inner_contiguous(fn, "query_mask", masks.query));
  if (B > INT_MAX || Hs > INT_MAX || Lq > INT_MAX || Lk > INT_MAX || teacher.extent(1) > INT_MAX)
    return fail(errc::invalid_argument, fn, "'student' is too large for the CUDA path (extents above 2^31)");
  const index_t group = teacher.extent(1) / Hs;
  if (opt.head_map == attention_head_map::group_mean && group > max_group)
    return fail(errc::invalid_argument, fn,
                "head_map group_mean averages at most " + std::to_string(max_group) + " teacher heads per student head here, got " +
                    std::to_string(group));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "student", student));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "teacher", teacher));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "key_mask", masks.key));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "query_mask", masks.query));
  if (need_grad) DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_student", grad));
  if (need_loss) DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  DISTILL_TRY(check_workspace(fn, workspace, attention_map_workspace_size(ctx), "attention_map_workspace_size"));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "workspace", workspace));

  problem<S, T> P{};
  P.s = student.data(), P.ssb = student.stride(0), P.ssh = student.stride(1), P.ssq = student.stride(2);
  P.t = teacher.data(), P.tsb = teacher.stride(0), P.tsh = teacher.stride(1), P.tsq = teacher.stride(2);
  if (need_grad) P.g = grad.data(), P.gsb = grad.stride(0), P.gsh = grad.stride(1), P.gsq = grad.stride(2);
  if (!masks.key.empty()) P.km = masks.key.data(), P.kmb = masks.key.stride(0);
  if (!masks.query.empty()) P.qm = masks.query.data(), P.qmb = masks.query.stride(0);
  P.B = static_cast<int>(B), P.Hs = static_cast<int>(Hs), P.Lq = static_cast<int>(Lq), P.Lk = static_cast<int>(Lk);
  P.group = static_cast<int>(group);
  P.head_map = opt.head_map == attention_head_map::one_to_one ? 0 : opt.head_map == attention_head_map::index ? 1 : 2;
  for (std::size_t h = 0; h < opt.teacher_heads.size(); ++h) P.heads.head[h] = opt.teacher_heads[h];
  P.s_logits = opt.student_input == attention_input::logits;
  P.t_logits = opt.teacher_input == attention_input::logits;
  P.kl = div == attention_map_detail::divergence::kl_teacher_student;
  P.accumulate = opt.accumulate;
  P.grad_scale = static_cast<float>(opt.grad_scale);
  P.loss_mode = !need_loss ? 0 : opt.reduction == reduction::none ? 1 : 2;
  P.loss = need_loss ? loss.data() : nullptr;
  P.loss_stride = need_loss ? loss.stride(0) : 0;
  workspace_carver carver(workspace.data());
  const attention_map_detail::cuda_scratch ws(carver);
  P.partials = ws.partials;
  P.counter = ws.counter;

  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const bool masked = !masks.key.empty() || !masks.query.empty();
  if (opt.reduction == reduction::mean && masked) {
    float* d = ws.divisor;
    attention_map_valid_count_kernel<<<1, row_block, 0, stream>>>(P.km, P.kmb, P.qm, P.qmb, P.B, P.Lq, P.Lk, P.Hs, P.kl, d);
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
    P.divisor = d;
  } else {
    const double valid = static_cast<double>(Hs) * static_cast<double>(B) * static_cast<double>(Lq) *
                         (P.kl ? 1.0 : static_cast<double>(Lk));
    P.host_inv_divisor = static_cast<float>(safe_inverse(divisor(opt.reduction, valid, B)));
  }
  if (P.loss_mode == 2) DISTILL_CUDA_TRY(cudaMemsetAsync(P.counter, 0, sizeof(unsigned), stream));

  if (Lk <= max_warp_keys) {
    const index_t blocks = std::min<index_t>((rows + row_block / 32 - 1) / (row_block / 32), max_blocks);
    auto launch = [&](auto kernel) -> status {
      kernel<<<static_cast<unsigned>(blocks), row_block, 0, stream>>>(P);
      return cuda_detail::launch_status(fn, stream);
    };
    DISTILL_TRY((dispatch_warp_kernel<S, T>(P.Lk, launch)));
  } else {
    const index_t blocks = std::min<index_t>(rows, max_blocks);
    attention_map_block_per_row_kernel<S, T><<<static_cast<unsigned>(blocks), row_block, 0, stream>>>(P);
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  return {};
}

}  // namespace attention_map_cuda

namespace attention_map_detail {

/// The CUDA engine (declared in include/distill/attention/attention_map.hpp).
template <>
struct backend<cuda_space> {
  template <class TS, class TT>
  static status run(const char* fn, divergence div, const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TT, 4> teacher,
                    const attention_masks<cuda_space>& masks, cuda_view<accum_t<TS>, 1> loss,
                    cuda_view<std::remove_const_t<TS>, 4> grad, cuda_view<std::byte, 1> workspace, bool need_loss,
                    bool need_grad, const attention_map_options& opt) {
    return attention_map_cuda::run_cuda(fn, div, ctx, student, teacher, masks, loss, grad, workspace, need_loss, need_grad, opt);
  }
};

}  // namespace attention_map_detail

}  // namespace distill
