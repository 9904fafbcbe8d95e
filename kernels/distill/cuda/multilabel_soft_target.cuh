// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the multi-label sigmoid soft-target loss (math in
//! distill/losses/multilabel_soft_target.hpp). nvcc only. Up to three launches:
//!   1. (reduction mean with a mask or row weights) one block sums w_r * (unmasked classes of
//!      row r) in a fixed order -> 1 / D in workspace[0]
//!   2. one warp per row: each lane takes classes lane, lane + 32, ...; reads each logit once,
//!      writes each gradient once; the row loss by a warp sum -> `loss` (reduction none) or
//!      workspace[1 + r]
//!   3. (reduced loss) one block adds the row losses in a fixed order -> loss[0]
//! Deterministic: no atomics anywhere. Workspace: multilabel_soft_target_workspace_size(ctx, N, C).

#if !defined(__CUDACC__)
#error "distill/cuda/multilabel_soft_target.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <string>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/losses/multilabel_soft_target.hpp"

namespace distill {
namespace multilabel_cuda_detail {

namespace md = multilabel_detail;
using inputs_t = multilabel_soft_target_inputs<float, cuda_space>;

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kReduceThreads = 1024;

__global__ void __launch_bounds__(kReduceThreads) multilabel_soft_target_divisor_single_block_kernel(inputs_t in, index_t N, index_t C, float* inv_div) {
  __shared__ float smem[kReduceThreads / 32];
  float s = 0.0f;
  for (index_t r = threadIdx.x; r < N; r += kReduceThreads) {
    index_t counted = C;
    if (!in.mask.empty())
      for (index_t k = 0; k < C; ++k) counted -= in.mask(r, k) == 0;
    s += md::row_weight(in, r) * static_cast<float>(counted);
  }
  s = cuda_detail::block_sum<kReduceThreads>(s, smem);
  if (threadIdx.x == 0) inv_div[0] = safe_inverse(s);
}

template <class TS, class TT, class TG>
struct row_args {
  cuda_view<const TS, 2> student;
  cuda_view<const TT, 2> teacher;
  inputs_t in;
  cuda_view<TG, 2> grad;          // may be absent
  cuda_view<float, 1> loss_rows;  // reduction none, may be absent
  float* partial;                 // [N] row losses for the reduced loss, may be null
  const float* inv_div_dev;       // 1 / D on the device (mean with mask / row weights), or null
  float inv_div_host;
  float grad_scale;
  md::scalars<float> s;
  bool accumulate;
};

template <class TS, class TT, class TG>
__global__ void __launch_bounds__(kThreads) multilabel_soft_target_forward_backward_warp_per_row_kernel(row_args<TS, TT, TG> a) {
  const index_t N = a.student.extent(0), C = a.student.extent(1);
  const int lane = threadIdx.x % 32;
  const float inv_div = a.inv_div_dev != nullptr ? a.inv_div_dev[0] : a.inv_div_host;
  const float grad_coef = a.grad_scale * inv_div;
  for (index_t r = static_cast<index_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32; r < N;
       r += static_cast<index_t>(gridDim.x) * kRowsPerBlock) {
    const float w = md::row_weight(a.in, r);
    float row = 0.0f;
    for (index_t k = lane; k < C; k += 32) {
      const float e = md::element_weight(a.in, w, r, k);
      float g = 0.0f;
      if (e != 0.0f) {
        const float label = a.in.labels.empty() ? 0.0f : (a.in.labels(r, k) != 0 ? 1.0f : 0.0f);
        const float pw = a.in.pos_weights.empty() ? 1.0f : a.in.pos_weights(k);
        const md::element_value<float> v = md::element(load<float>(a.student(r, k)), load<float>(a.teacher(r, k)), label, pw, a.s);
        row += e * v.loss;
        g = grad_coef * e * v.grad;
      }
      if (!a.grad.empty()) {
        TG& dst = a.grad(r, k);
        dst = store<TG>(a.accumulate ? load<float>(dst) + g : g);
      }
    }
    row = cuda_detail::warp_sum(row);
    if (lane == 0) {
      if (!a.loss_rows.empty()) a.loss_rows(r) = row;
      if (a.partial != nullptr) a.partial[r] = row;
    }
  }
}

__global__ void __launch_bounds__(kReduceThreads) multilabel_soft_target_reduce_single_block_kernel(const float* partial, index_t N, const float* inv_div_dev,
                                                                                          float inv_div_host, float* loss) {
  __shared__ float smem[kReduceThreads / 32];
  float s = 0.0f;
  for (index_t r = threadIdx.x; r < N; r += kReduceThreads) s += partial[r];
  s = cuda_detail::block_sum<kReduceThreads>(s, smem);
  if (threadIdx.x == 0) loss[0] = s * (inv_div_dev != nullptr ? inv_div_dev[0] : inv_div_host);
}

template <class TS, class TT>
status cuda_entry(const char* fn, const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher, const inputs_t& in,
                  cuda_view<float, 1> loss, bool loss_required, cuda_view<std::remove_const_t<TS>, 2> grad, bool grad_required,
                  cuda_view<std::byte, 1> workspace, const multilabel_soft_target_options& opt) {
  using S = std::remove_const_t<TS>;
  using T = std::remove_const_t<TT>;
  static_assert(!std::is_same_v<S, double> && !std::is_same_v<T, double> && is_supported_float_v<S> && is_supported_float_v<T>,
                "CUDA multilabel_soft_target takes float, float16 or bfloat16 logits");
  DISTILL_TRY(md::check_args(fn, student, teacher, in, loss, loss_required, grad, grad_required, opt));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "student", student));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "teacher", teacher));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "labels", in.labels));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "mask", in.mask));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_weights", in.row_weights));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "class_weights", in.class_weights));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "pos_weights", in.pos_weights));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_student", grad));
  const index_t N = student.extent(0), C = student.extent(1);
  const double host_div = md::host_divisor(opt.reduction, N, C, !in.mask.empty() || !in.row_weights.empty());
  const bool reduced_loss = !loss.empty() && opt.reduction != reduction::none;
  const bool device_div = host_div < 0 && (reduced_loss || !grad.empty());
  float* divisor = nullptr;
  float* row_loss = nullptr;
  if (reduced_loss || device_div) {
    DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, multilabel_soft_target_workspace_size(ctx, N, C),
                                                    "multilabel_soft_target_workspace_size"));
    workspace_carver w(workspace.data());
    const multilabel_detail::cuda_scratch ws(w, N);
    divisor = ws.divisor;
    row_loss = ws.row_loss;
  }
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  if (device_div) {
    multilabel_soft_target_divisor_single_block_kernel<<<1, kReduceThreads, 0, stream>>>(in, N, C, divisor);
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  const float inv_div_host = host_div < 0 ? 0.0f : safe_inverse(static_cast<float>(host_div));
  using G = std::remove_const_t<TS>;
  row_args<S, T, G> a{student,
                      teacher,
                      in,
                      grad,
                      opt.reduction == reduction::none ? loss : cuda_view<float, 1>{},
                      reduced_loss ? row_loss : nullptr,
                      device_div ? divisor : nullptr,
                      inv_div_host,
                      opt.grad_scale,
                      md::scalars_of<float>(opt),
                      opt.accumulate};
  const index_t blocks = std::min<index_t>(cuda_detail::ceil_div<index_t>(N, kRowsPerBlock), index_t(1) << 20);
  multilabel_soft_target_forward_backward_warp_per_row_kernel<S, T, G><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  if (reduced_loss) {
    multilabel_soft_target_reduce_single_block_kernel<<<1, kReduceThreads, 0, stream>>>(row_loss, N, device_div ? divisor : nullptr, inv_div_host, loss.data());
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  return {};
}

}  // namespace multilabel_cuda_detail

/// CUDA: loss only (same arguments as the CPU overload; `workspace` of
/// multilabel_soft_target_workspace_size(ctx, N, C) bytes when the loss is reduced).
template <class TS, class TT>
[[nodiscard]] status multilabel_soft_target_forward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                                    const multilabel_soft_target_cuda_inputs<float>& inputs, cuda_view<float, 1> loss,
                                                    cuda_view<std::byte, 1> workspace, const multilabel_soft_target_options& opt = {}) {
  return multilabel_cuda_detail::cuda_entry("multilabel_soft_target_forward", ctx, student, teacher, inputs, loss, true,
                                            cuda_view<std::remove_const_t<TS>, 2>{}, false, workspace, opt);
}

/// CUDA: gradient only (`workspace` needed with reduction mean and a mask or row weights).
template <class TS, class TT>
[[nodiscard]] status multilabel_soft_target_backward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                                     const multilabel_soft_target_cuda_inputs<float>& inputs,
                                                     cuda_view<std::remove_const_t<TS>, 2> grad_student, cuda_view<std::byte, 1> workspace,
                                                     const multilabel_soft_target_options& opt = {}) {
  return multilabel_cuda_detail::cuda_entry("multilabel_soft_target_backward", ctx, student, teacher, inputs, cuda_view<float, 1>{}, false,
                                            grad_student, true, workspace, opt);
}

/// CUDA: loss and gradient in one pass.
template <class TS, class TT>
[[nodiscard]] status multilabel_soft_target_forward_backward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                                             const multilabel_soft_target_cuda_inputs<float>& inputs, cuda_view<float, 1> loss,
                                                             cuda_view<std::remove_const_t<TS>, 2> grad_student,
                                                             cuda_view<std::byte, 1> workspace,
                                                             const multilabel_soft_target_options& opt = {}) {
  return multilabel_cuda_detail::cuda_entry("multilabel_soft_target_forward_backward", ctx, student, teacher, inputs, loss, false,
                                            grad_student, true, workspace, opt);
}

}  // namespace distill
