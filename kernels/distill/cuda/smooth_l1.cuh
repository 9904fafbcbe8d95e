// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the smooth L1 box regression loss (math in distill/detection/smooth_l1.hpp).
//! nvcc only, float. Up to three launches:
//!   1. (reduction mean) one block sums the row weights in a fixed order -> 1 / (D sum w) in
//!      the workspace; other reductions know their divisor on the host
//!   2. one warp per row: each lane takes columns lane, lane + 32, ...; reads each prediction and
//!      target once, writes each gradient once; the weighted row loss by a warp sum -> `loss`
//!      (reduction none) or the workspace's row losses
//!   3. (reduced loss) one block adds the row losses in a fixed order -> loss[0]
//! Deterministic: no atomics. Bytes moved: 2 N D floats read, N D written (gradient), N weights.

#if !defined(__CUDACC__)
#error "distill/cuda/smooth_l1.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/detection/smooth_l1.hpp"

namespace distill {
namespace smooth_l1_cuda_detail {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kReduceThreads = 1024;

__global__ void __launch_bounds__(kReduceThreads) smooth_l1_divisor_single_block_kernel(cuda_view<const float, 1> weights, index_t N, index_t D,
                                                                                      float* inv_divisor) {
  __shared__ float smem[kReduceThreads / 32];
  float s = 0.0f;
  for (index_t r = threadIdx.x; r < N; r += kReduceThreads) s += weights.empty() ? 1.0f : weights(r);
  s = cuda_detail::block_sum<kReduceThreads>(s, smem);
  if (threadIdx.x == 0) inv_divisor[0] = safe_inverse(s * static_cast<float>(D));
}

struct row_args {
  cuda_view<const float, 2> pred, target;
  cuda_view<const float, 1> weights;  // may be absent
  cuda_view<float, 2> grad;           // may be absent
  cuda_view<float, 1> loss_rows;      // reduction none, may be absent
  float* partial;                     // [N] weighted row losses for the reduced loss, may be null
  const float* inv_div_dev;           // 1 / divisor on the device (reduction mean), or null
  float inv_div_host;
  float beta, grad_scale;
  bool want_loss, accumulate;
};

__global__ void __launch_bounds__(kThreads) smooth_l1_forward_backward_warp_per_row_kernel(row_args a) {
  namespace sd = smooth_l1_detail;
  const index_t N = a.pred.extent(0), D = a.pred.extent(1);
  const int lane = threadIdx.x % 32;
  const float inv_div = a.inv_div_dev != nullptr ? a.inv_div_dev[0] : a.inv_div_host;
  for (index_t r = static_cast<index_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32; r < N; r += static_cast<index_t>(gridDim.x) * kRowsPerBlock) {
    const float w = a.weights.empty() ? 1.0f : a.weights(r);
    float row = 0.0f;
    for (index_t k = lane; k < D; k += 32) {
      const float x = a.pred(r, k) - a.target(r, k);
      if (a.want_loss && w != 0.0f) row += sd::huber(x, a.beta);
      if (!a.grad.empty()) {
        const float g = w != 0.0f ? a.grad_scale * w * inv_div * sd::huber_derivative(x, a.beta) : 0.0f;
        float& dst = a.grad(r, k);
        dst = a.accumulate ? dst + g : g;
      }
    }
    if (!a.want_loss) continue;
    row = cuda_detail::warp_sum(row);
    if (lane == 0) {
      if (!a.loss_rows.empty()) a.loss_rows(r) = w * row;
      if (a.partial != nullptr) a.partial[r] = w * row;
    }
  }
}

__global__ void __launch_bounds__(kReduceThreads) smooth_l1_reduce_single_block_kernel(const float* partial, index_t N, const float* inv_div_dev,
                                                                                     float inv_div_host, float* loss) {
  __shared__ float smem[kReduceThreads / 32];
  float s = 0.0f;
  for (index_t r = threadIdx.x; r < N; r += kReduceThreads) s += partial[r];
  s = cuda_detail::block_sum<kReduceThreads>(s, smem);
  if (threadIdx.x == 0) loss[0] = s * (inv_div_dev != nullptr ? inv_div_dev[0] : inv_div_host);
}

template <class TP, class TT>
status cuda_entry(const char* fn, const cuda& ctx, cuda_view<TP, 2> pred, cuda_view<TT, 2> target, cuda_view<const float, 1> weights,
                  cuda_view<float, 1> loss, bool want_loss, cuda_view<float, 2> grad, bool want_grad, cuda_view<std::byte, 1> workspace,
                  const smooth_l1_options& opt) {
  static_assert(std::is_same_v<std::remove_const_t<TP>, float> && std::is_same_v<std::remove_const_t<TT>, float>,
                "CUDA smooth_l1 takes float predictions and targets");
  DISTILL_TRY(smooth_l1_detail::check_args(fn, pred, target, weights, loss, want_loss, grad, want_grad, opt));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "prediction", pred));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "target", target));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "weights", weights));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_prediction", grad));
  const index_t N = pred.extent(0), D = pred.extent(1);
  const bool reduced_loss = want_loss && opt.reduction != reduction::none;
  const bool device_div = opt.reduction == reduction::mean && (reduced_loss || want_grad);
  float* inv_divisor = nullptr;
  float* row_loss = nullptr;
  if (reduced_loss || device_div) {
    DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, smooth_l1_workspace_size(ctx, N, D), "smooth_l1_workspace_size"));
    workspace_carver w(workspace.data());
    const smooth_l1_detail::cuda_scratch ws(w, N);
    inv_divisor = ws.inv_divisor;
    row_loss = ws.row_loss;
  }
  if (N == 0 && !reduced_loss) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  if (device_div) {
    smooth_l1_divisor_single_block_kernel<<<1, kReduceThreads, 0, stream>>>(weights, N, D, inv_divisor);
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  // sum and none divide by 1, batchmean by N (0 rows: nothing to scale)
  const float inv_div_host = opt.reduction == reduction::batchmean ? safe_inverse(static_cast<float>(N)) : 1.0f;
  if (N > 0) {
    const row_args a{pred,
                     target,
                     weights,
                     want_grad ? grad : cuda_view<float, 2>{},
                     want_loss && opt.reduction == reduction::none ? loss : cuda_view<float, 1>{},
                     reduced_loss ? row_loss : nullptr,
                     device_div ? inv_divisor : nullptr,
                     inv_div_host,
                     static_cast<float>(opt.beta),
                     opt.grad_scale,
                     want_loss,
                     opt.accumulate};
    const index_t blocks = std::min<index_t>(cuda_detail::ceil_div<index_t>(N, kRowsPerBlock), index_t(1) << 20);
    smooth_l1_forward_backward_warp_per_row_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  if (reduced_loss) {
    smooth_l1_reduce_single_block_kernel<<<1, kReduceThreads, 0, stream>>>(row_loss, N, device_div ? inv_divisor : nullptr, inv_div_host, loss.data());
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  return {};
}

}  // namespace smooth_l1_cuda_detail

/// CUDA: loss only (`workspace` of smooth_l1_workspace_size(ctx, N, D) bytes when the loss is reduced).
template <class TP, class TT>
[[nodiscard]] status smooth_l1_forward(const cuda& ctx, cuda_view<TP, 2> prediction, cuda_view<TT, 2> target, cuda_view<const float, 1> weights,
                                       cuda_view<float, 1> loss, cuda_view<std::byte, 1> workspace, const smooth_l1_options& opt = {}) {
  return smooth_l1_cuda_detail::cuda_entry("smooth_l1_forward", ctx, prediction, target, weights, loss, true, cuda_view<float, 2>{}, false, workspace, opt);
}

/// CUDA: gradient only (`workspace` needed with reduction mean).
template <class TP, class TT>
[[nodiscard]] status smooth_l1_backward(const cuda& ctx, cuda_view<TP, 2> prediction, cuda_view<TT, 2> target, cuda_view<const float, 1> weights,
                                        cuda_view<float, 2> grad_prediction, cuda_view<std::byte, 1> workspace, const smooth_l1_options& opt = {}) {
  return smooth_l1_cuda_detail::cuda_entry("smooth_l1_backward", ctx, prediction, target, weights, cuda_view<float, 1>{}, false, grad_prediction, true,
                                           workspace, opt);
}

/// CUDA: loss and gradient in one pass.
template <class TP, class TT>
[[nodiscard]] status smooth_l1_forward_backward(const cuda& ctx, cuda_view<TP, 2> prediction, cuda_view<TT, 2> target, cuda_view<const float, 1> weights,
                                                cuda_view<float, 1> loss, cuda_view<float, 2> grad_prediction, cuda_view<std::byte, 1> workspace,
                                                const smooth_l1_options& opt = {}) {
  return smooth_l1_cuda_detail::cuda_entry("smooth_l1_forward_backward", ctx, prediction, target, weights, loss, true, grad_prediction, true, workspace,
                                           opt);
}

}  // namespace distill
