// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/cross_entropy.hpp. Three launches, nothing copied to the host:
//!   1. one warp per row: online log-sum-exp (warp merge), row loss l_n, validity w_n -> scratch
//!   2. one block: sum_n w_n l_n and sum_n w_n in index order -> loss, and the gradient scale
//!      grad_scale / divisor -> scratch
//!   3. one warp per row: grad = scale * w_n * (exp(z - lse_n) - target)
//! Logits are read twice (passes 1 and 3, C is small for classifiers), the gradient written once.
//! Scratch (cuda_blas): 3 N + 1 floats.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_cross_entropy.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/nn/cross_entropy.hpp"

namespace distill::nn {
namespace cuda_detail {

inline constexpr int ce_rows_per_block = 8;

template <class T>
__global__ void nn_cross_entropy_rows_warp_kernel(matrix_arg<const T> z, label_view<cuda_space> labels, index_t N, index_t C,
                                                  long long ignore_index, float eps, float* row_loss, float* row_lse,
                                                  float* row_weight, float* loss_none) {
  const int lane = threadIdx.x % 32;
  const index_t n = static_cast<index_t>(blockIdx.x) * ce_rows_per_block + threadIdx.x / 32;
  if (n >= N) return;
  lse_state<float> st;
  float zsum = 0.f;
  for (index_t c = lane; c < C; c += 32) {
    const float v = load<float>(z(n, c));
    st.add(v);
    zsum += v;
  }
  st = warp_merge(st);
  zsum = warp_sum(zsum);
  if (lane != 0) return;
  const long long y = labels(n);
  const float lse = st.value();
  float l, w;
  if (y == ignore_index) {
    l = 0.f, w = 0.f;
  } else if (y < 0 || y >= C) {
    l = __int_as_float(0x7fc00000), w = 0.f;  // NaN loss, zero gradient
  } else {
    l = lse - (1.f - eps) * load<float>(z(n, static_cast<index_t>(y)));
    if (eps > 0.f) l -= eps / static_cast<float>(C) * zsum;
    w = 1.f;
  }
  row_loss[n] = l;
  row_lse[n] = lse;
  row_weight[n] = w;
  if (loss_none) loss_none[n] = l;
}

template <int Block>
__global__ void nn_cross_entropy_reduce_kernel(const float* row_loss, const float* row_weight, index_t N, int red, float grad_scale,
                                               float* loss, float* scale_out) {
  __shared__ float smem[Block / 32];
  float s = 0.f, w = 0.f;
  for (index_t n = threadIdx.x; n < N; n += Block) {
    s += row_loss[n];
    w += row_weight[n];
  }
  s = block_sum<Block>(s, smem);
  w = block_sum<Block>(w, smem);
  if (threadIdx.x == 0) {
    const reduction r = static_cast<reduction>(red);
    const float inv = safe_inverse(reduction_divisor<float>(r, static_cast<float>(N), w));
    if (r != reduction::none) *loss = s * inv;
    *scale_out = grad_scale * inv;
  }
}

template <class T>
__global__ void nn_cross_entropy_grad_warp_kernel(matrix_arg<const T> z, label_view<cuda_space> labels, index_t N, index_t C,
                                                  float eps, const float* row_lse, const float* row_weight, const float* scale,
                                                  matrix_arg<T> grad) {
  const int lane = threadIdx.x % 32;
  const index_t n = static_cast<index_t>(blockIdx.x) * ce_rows_per_block + threadIdx.x / 32;
  if (n >= N) return;
  const float w = row_weight[n] * *scale, lse = row_lse[n];
  const long long y = labels(n);
  for (index_t c = lane; c < C; c += 32) {
    float g = 0.f;
    if (w != 0.f) {
      const float target = (c == y ? 1.f - eps : 0.f) + eps / static_cast<float>(C);
      g = w * (exp_(load<float>(z(n, c)) - lse) - target);
    }
    grad(n, c) = store<T>(g);
  }
}

/// Arg-max of a row: larger value wins; NaN beats numbers; ties (and NaN vs NaN) go to the
/// lower index; at == C means "none yet".
struct row_argmax {
  float best;
  index_t at;
};
struct row_argmax_op {
  index_t C;
  __device__ DISTILL_FORCEINLINE row_argmax operator()(row_argmax a, const row_argmax& o) const {
    const bool o_nan = o.best != o.best, m_nan = a.best != a.best;
    bool take;
    if (o.at == C) take = false;
    else if (a.at == C) take = true;
    else if (o_nan != m_nan) take = o_nan;
    else if (o_nan || o.best == a.best) take = o.at < a.at;
    else take = o.best > a.best;
    return take ? o : a;
  }
};

template <class T>
__global__ void nn_argmax_rows_warp_kernel(matrix_arg<const T> z, index_t N, index_t C, std::int32_t* idx, index_t si) {
  const int lane = threadIdx.x % 32;
  const index_t n = static_cast<index_t>(blockIdx.x) * ce_rows_per_block + threadIdx.x / 32;
  if (n >= N) return;
  row_argmax m{neg_infinity<float>(), C};
  for (index_t c = lane; c < C; c += 32) {
    const float v = load<float>(z(n, c));
    if (m.at == C || v > m.best || (v != v && m.best == m.best)) m = {v, c};
  }
  m = warp_all_reduce(m, row_argmax_op{C});
  if (lane == 0) idx[n * si] = static_cast<std::int32_t>(m.at);
}

}  // namespace cuda_detail

template <class TL, class T = std::remove_const_t<TL>>
[[nodiscard]] status softmax_cross_entropy_forward_backward(const cuda_blas& blas, cuda_view<TL, 2> logits,
                                                            label_view<cuda_space> labels,
                                                            out_view<accum_t<T>, 1, cuda_space> loss, out_view<T, 2, cuda_space> grad,
                                                            const cross_entropy_options& o = {}) {
  static_assert(std::is_same_v<accum_t<T>, float>, "the CUDA cross-entropy takes float, float16 or bfloat16 logits");
  using namespace cuda_detail;
  constexpr const char* fn = "nn::softmax_cross_entropy";
  DISTILL_TRY(nn_detail::check_cross_entropy(fn, logits, labels, o));
  DISTILL_TRY(check_device_input(fn, "logits", logits));
  DISTILL_TRY(check_device_view(fn, "labels", labels));
  const index_t N = logits.extent(0), C = logits.extent(1);
  DISTILL_TRY(check_present(fn, "loss", loss));
  DISTILL_TRY(check_shape(fn, "loss", loss, {o.reduction == reduction::none ? N : index_t(1)}));
  if (o.reduction == reduction::none && !loss.contiguous()) return fail(errc::unsupported_layout, fn, "'loss' must be contiguous on CUDA");
  DISTILL_TRY(check_device_view(fn, "loss", loss));
  if (!grad.empty()) {
    DISTILL_TRY(check_same_shape(fn, "grad", grad, "logits", logits));
    DISTILL_TRY(check_device_input(fn, "grad", grad));
  }
  DISTILL_TRY(blas.reserve_scratch(3 * N + 1));
  float* row_loss = blas.scratch();
  float* row_lse = row_loss + N;
  float* row_weight = row_lse + N;
  float* scale = row_weight + N;
  const cudaStream_t s = stream_of(blas);
  const unsigned blocks = static_cast<unsigned>(ceil_div<index_t>(N, ce_rows_per_block));
  const auto eps = static_cast<float>(o.label_smoothing);
  const cuda_view<const T, 2> lc = logits;
  nn_cross_entropy_rows_warp_kernel<T><<<blocks, 32 * ce_rows_per_block, 0, s>>>(
      arg(lc), labels, N, C, static_cast<long long>(o.ignore_index), eps, row_loss, row_lse, row_weight,
      o.reduction == reduction::none ? loss.data() : nullptr);
  nn_cross_entropy_reduce_kernel<256><<<1, 256, 0, s>>>(row_loss, row_weight, N, static_cast<int>(o.reduction),
                                                        static_cast<float>(o.grad_scale), loss.data(), scale);
  if (!grad.empty())
    nn_cross_entropy_grad_warp_kernel<T><<<blocks, 32 * ce_rows_per_block, 0, s>>>(
        arg(lc), labels, N, C, eps, row_lse, row_weight, scale, arg(grad));
  return launch_status(fn, s);
}

template <class TL, class T = std::remove_const_t<TL>>
[[nodiscard]] status softmax_cross_entropy_forward(const cuda_blas& blas, cuda_view<TL, 2> logits, label_view<cuda_space> labels,
                                                   out_view<accum_t<T>, 1, cuda_space> loss, const cross_entropy_options& o = {}) {
  return softmax_cross_entropy_forward_backward(blas, logits, labels, loss, out_view<T, 2, cuda_space>{}, o);
}

template <class TL>
[[nodiscard]] status argmax_rows(const cuda& ctx, cuda_view<TL, 2> logits, cuda_view<std::int32_t, 1> idx) {
  using T = std::remove_const_t<TL>;
  using namespace cuda_detail;
  constexpr const char* fn = "nn::argmax_rows";
  DISTILL_TRY(check_device_input(fn, "logits", logits));
  DISTILL_TRY(check_shape(fn, "idx", idx, {logits.extent(0)}));
  DISTILL_TRY(check_device_view(fn, "idx", idx));
  const index_t N = logits.extent(0);
  cuda_view<const T, 2> lc = logits;
  nn_argmax_rows_warp_kernel<T><<<static_cast<unsigned>(ceil_div<index_t>(N, ce_rows_per_block)), 32 * ce_rows_per_block, 0,
                                  stream_of(ctx)>>>(arg(lc), N, logits.extent(1), idx.data(), idx.stride(0));
  return launch_status(fn, stream_of(ctx));
}

}  // namespace distill::nn
