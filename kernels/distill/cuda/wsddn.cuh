// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the WSDDN two-stream head (math in distill/detection/wsddn.hpp). nvcc only.
//! One block per image (an image's R x C logits are a few thousand values; the batch gives the
//! parallelism), in phases separated by __syncthreads:
//!   1. thread per proposal: the classification softmax's max and 1 / sum -> workspace
//!   2. warp per class: the detection softmax's max and 1 / sum over proposals -> shared memory
//!   3. warp per class: s_k = sum_r a_rk d_rk (lanes over proposals, a warp sum) -> image scores
//!   4. optional: region scores; then for the backward g_k (given, or from the image-level loss,
//!      whose per-image value goes to workspace) and, thread per proposal, u_r and both gradients
//! A second single-block launch adds the per-image losses in image order. Every sum has a fixed
//! order: the same bits run to run, no atomics. Reads each logit a few times (it stays in L1/L2),
//! writes each output once. Float logits; up to 3 072 classes (shared memory).

#if !defined(__CUDACC__)
#error "distill/cuda/wsddn.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/detection/wsddn.hpp"

namespace distill {
namespace wsddn_cuda_detail {

constexpr int kThreads = 256;
constexpr int kReduceThreads = 1024;
constexpr index_t kMaxClasses = 3072;  // 4 C floats of shared memory

enum class pass { forward, backward, fused };

struct kernel_args {
  cuda_view<const float, 3> x, y;           // logits (B, R, C)
  cuda_view<float, 2> image_scores;         // may be absent (fused, backward)
  cuda_view<float, 3> region_scores;        // may be absent
  cuda_view<const float, 2> grad_scores;    // backward: dL/ds
  cuda_view<const std::uint8_t, 2> labels;  // fused
  cuda_view<float, 3> dx, dy;               // backward, fused
  cuda_view<float, 1> loss_per_image;       // fused, reduction none
  float* row_stats;                         // workspace: (B, R, 2) max and 1 / sum of the classification softmax
  float* image_loss;                        // workspace: (B) per-image losses for the reduced loss, or null
  float kc, kr, eps, gscale;                // gscale = grad_scale / divisor
  bool accumulate;
};

template <pass P>
__device__ void image_pass(const kernel_args& a) {
  extern __shared__ float smem[];
  const index_t R = a.x.extent(1), C = a.x.extent(2);
  float* col_max = smem;
  float* col_inv = smem + C;
  float* s = smem + 2 * C;
  float* g = smem + 3 * C;
  const index_t b = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = kThreads / 32;
  float* rows = a.row_stats + 2 * b * R;
  // 1. classification softmax statistics per proposal
  for (index_t r = threadIdx.x; r < R; r += kThreads) {
    float m = -INFINITY;
    for (index_t k = 0; k < C; ++k) m = fmaxf(m, a.kc * a.x(b, r, k));
    float z = 0.0f;
    for (index_t k = 0; k < C; ++k) z += expf(a.kc * a.x(b, r, k) - m);
    rows[2 * r] = m, rows[2 * r + 1] = 1.0f / z;
  }
  // 2. detection softmax statistics per class
  for (index_t k = warp; k < C; k += warps) {
    float m = -INFINITY;
    for (index_t r = lane; r < R; r += 32) m = fmaxf(m, a.kr * a.y(b, r, k));
    m = cuda_detail::warp_max(m);
    float z = 0.0f;
    for (index_t r = lane; r < R; r += 32) z += expf(a.kr * a.y(b, r, k) - m);
    z = cuda_detail::warp_sum(z);
    if (lane == 0) col_max[k] = m, col_inv[k] = 1.0f / z;
  }
  __syncthreads();
  auto prob_a = [&](index_t r, index_t k) { return expf(a.kc * a.x(b, r, k) - rows[2 * r]) * rows[2 * r + 1]; };
  auto prob_d = [&](index_t r, index_t k) { return expf(a.kr * a.y(b, r, k) - col_max[k]) * col_inv[k]; };
  // 3. image scores
  for (index_t k = warp; k < C; k += warps) {
    float sum = 0.0f;
    for (index_t r = lane; r < R; r += 32) sum += prob_a(r, k) * prob_d(r, k);
    sum = cuda_detail::warp_sum(sum);
    if (lane == 0) {
      s[k] = sum;
      if (!a.image_scores.empty()) a.image_scores(b, k) = sum;
    }
  }
  __syncthreads();
  if (!a.region_scores.empty())
    for (index_t i = threadIdx.x; i < R * C; i += kThreads) a.region_scores(b, i / C, i % C) = prob_a(i / C, i % C) * prob_d(i / C, i % C);
  if constexpr (P == pass::forward) return;
  // 4. dL/ds, the image's loss, and the gradients of both streams
  if constexpr (P == pass::fused) {
    if (warp == 0) {
      float l = 0.0f;
      for (index_t k = lane; k < C; k += 32) {
        const float p = fminf(fmaxf(s[k], 0.0f), 1.0f);
        const bool pos = a.labels(b, k) != 0;
        l -= pos ? logf(p + a.eps) : logf(1.0f - p + a.eps);
        g[k] = a.gscale * (pos ? -1.0f / (p + a.eps) : 1.0f / (1.0f - p + a.eps));
      }
      l = cuda_detail::warp_sum(l);
      if (lane == 0) {
        if (!a.loss_per_image.empty()) a.loss_per_image(b) = l;
        if (a.image_loss != nullptr) a.image_loss[b] = l;
      }
    }
  } else {
    for (index_t k = threadIdx.x; k < C; k += kThreads) g[k] = a.grad_scores(b, k);
  }
  __syncthreads();
  for (index_t r = threadIdx.x; r < R; r += kThreads) {
    float u = 0.0f;
    for (index_t k = 0; k < C; ++k) u += g[k] * prob_a(r, k) * prob_d(r, k);
    for (index_t k = 0; k < C; ++k) {
      const float pa = prob_a(r, k), pd = prob_d(r, k);
      const float gx = a.kc * pa * (g[k] * pd - u), gy = a.kr * g[k] * pd * (pa - s[k]);
      float& ox = a.dx(b, r, k);
      float& oy = a.dy(b, r, k);
      ox = a.accumulate ? ox + gx : gx;
      oy = a.accumulate ? oy + gy : gy;
    }
  }
}

// One kernel per pass, as the library names them; the body is shared.
__global__ void __launch_bounds__(kThreads) wsddn_forward_block_per_image_kernel(kernel_args a) { image_pass<pass::forward>(a); }
__global__ void __launch_bounds__(kThreads) wsddn_backward_block_per_image_kernel(kernel_args a) { image_pass<pass::backward>(a); }
__global__ void __launch_bounds__(kThreads) wsddn_forward_backward_block_per_image_kernel(kernel_args a) { image_pass<pass::fused>(a); }

__global__ void __launch_bounds__(kReduceThreads) wsddn_loss_reduce_single_block_kernel(const float* image_loss, index_t B, float inv_div, float* loss) {
  __shared__ float smem[kReduceThreads / 32];
  float sum = 0.0f;
  for (index_t b = threadIdx.x; b < B; b += kReduceThreads) sum += image_loss[b];
  sum = cuda_detail::block_sum<kReduceThreads>(sum, smem);
  if (threadIdx.x == 0) loss[0] = sum * inv_div;
}

template <class TL>
constexpr void check_types() {
  static_assert(std::is_same_v<std::remove_const_t<TL>, float>, "wsddn on CUDA takes float logits");
}

inline status check_workspace(const char* fn, cuda_view<std::byte, 1> workspace, index_t B, index_t R, index_t C) {
  DISTILL_TRY(distill::check_workspace(fn, workspace, wsddn_workspace_size(cuda{}, B, R, C), "wsddn_workspace_size"));
  return cuda_detail::check_device_view(fn, "workspace", workspace);
}

template <class TL>
status check_common(const char* fn, const wsddn_streams<TL, cuda_space>& logits, cuda_view<std::byte, 1> workspace, const wsddn_options& opt) {
  DISTILL_TRY(wsddn_detail::check_logits(fn, logits, opt));
  DISTILL_TRY(check_inner_contiguous(fn, "logits.classification", logits.classification));
  DISTILL_TRY(check_inner_contiguous(fn, "logits.detection", logits.detection));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "logits.classification", logits.classification));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "logits.detection", logits.detection));
  const index_t B = logits.classification.extent(0), R = logits.classification.extent(1), C = logits.classification.extent(2);
  if (C > kMaxClasses) return fail(errc::shape_mismatch, fn, "at most " + std::to_string(kMaxClasses) + " classes on CUDA, got " + std::to_string(C));
  return check_workspace(fn, workspace, B, R, C);
}

inline status launch(const char* fn, const cuda& ctx, pass p, const kernel_args& a, index_t B, index_t C) {
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const std::size_t shared = static_cast<std::size_t>(4 * C) * sizeof(float);
  const unsigned blocks = static_cast<unsigned>(B);
  if (p == pass::forward) wsddn_forward_block_per_image_kernel<<<blocks, kThreads, shared, stream>>>(a);
  if (p == pass::backward) wsddn_backward_block_per_image_kernel<<<blocks, kThreads, shared, stream>>>(a);
  if (p == pass::fused) wsddn_forward_backward_block_per_image_kernel<<<blocks, kThreads, shared, stream>>>(a);
  return cuda_detail::launch_status(fn, stream);
}

}  // namespace wsddn_cuda_detail

/// CUDA: image scores (B, C) and, when given, region scores (B, R, C). `workspace`:
/// wsddn_workspace_size(ctx, B, R, C) bytes.
template <class TL>
[[nodiscard]] status wsddn_forward(const cuda& ctx, const wsddn_streams<TL, cuda_space>& logits, cuda_view<float, 2> image_scores,
                                   cuda_view<float, 3> region_scores, cuda_view<std::byte, 1> workspace, const wsddn_options& opt = {}) {
  namespace wd = wsddn_cuda_detail;
  wd::check_types<TL>();
  constexpr const char* fn = "wsddn_forward";
  DISTILL_TRY(wd::check_common(fn, logits, workspace, opt));
  const index_t B = logits.classification.extent(0), R = logits.classification.extent(1), C = logits.classification.extent(2);
  DISTILL_TRY(wsddn_detail::check_image_matrix(fn, "image_scores", image_scores, B, C));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "image_scores", image_scores));
  if (!region_scores.empty()) {
    DISTILL_TRY(check_shape(fn, "region_scores", region_scores, {B, R, C}));
    DISTILL_TRY(check_strides(fn, "region_scores", region_scores));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "region_scores", region_scores));
  }
  wd::kernel_args a{};
  a.x = logits.classification, a.y = logits.detection, a.image_scores = image_scores, a.region_scores = region_scores;
  a.row_stats = reinterpret_cast<float*>(workspace.data());
  a.kc = opt.class_scale, a.kr = opt.region_scale;
  return wd::launch(fn, ctx, wd::pass::forward, a, B, C);
}

/// CUDA: gradients of both streams from dL/ds (B, C).
template <class TL, class TG>
[[nodiscard]] status wsddn_backward(const cuda& ctx, const wsddn_streams<TL, cuda_space>& logits, cuda_view<TG, 2> grad_image_scores,
                                    const wsddn_streams<float, cuda_space>& grads, cuda_view<std::byte, 1> workspace, const wsddn_options& opt = {}) {
  namespace wd = wsddn_cuda_detail;
  wd::check_types<TL>();
  static_assert(std::is_same_v<std::remove_const_t<TG>, float>, "wsddn_backward on CUDA: grad_image_scores are float");
  constexpr const char* fn = "wsddn_backward";
  DISTILL_TRY(wd::check_common(fn, logits, workspace, opt));
  DISTILL_TRY(wsddn_detail::check_grads(fn, logits, grads));
  const index_t B = logits.classification.extent(0), C = logits.classification.extent(2);
  DISTILL_TRY(check_present(fn, "grad_image_scores", grad_image_scores));
  DISTILL_TRY(wsddn_detail::check_image_matrix(fn, "grad_image_scores", grad_image_scores, B, C));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_image_scores", grad_image_scores));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grads.classification", grads.classification));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grads.detection", grads.detection));
  wd::kernel_args a{};
  a.x = logits.classification, a.y = logits.detection, a.grad_scores = grad_image_scores, a.dx = grads.classification, a.dy = grads.detection;
  a.row_stats = reinterpret_cast<float*>(workspace.data());
  a.kc = opt.class_scale, a.kr = opt.region_scale, a.accumulate = opt.accumulate;
  return wd::launch(fn, ctx, wd::pass::backward, a, B, C);
}

/// CUDA: image scores (may be absent), the image-level loss and both gradients in one pass.
/// Labels are not inspected on the device: a nonzero label counts as 1.
template <class TL>
[[nodiscard]] status wsddn_forward_backward(const cuda& ctx, const wsddn_streams<TL, cuda_space>& logits, cuda_view<const std::uint8_t, 2> labels,
                                            cuda_view<float, 2> image_scores, cuda_view<float, 1> loss, const wsddn_streams<float, cuda_space>& grads,
                                            cuda_view<std::byte, 1> workspace, const wsddn_options& opt = {}) {
  namespace wd = wsddn_cuda_detail;
  wd::check_types<TL>();
  constexpr const char* fn = "wsddn_forward_backward";
  DISTILL_TRY(wd::check_common(fn, logits, workspace, opt));
  DISTILL_TRY(wsddn_detail::check_grads(fn, logits, grads));
  const index_t B = logits.classification.extent(0), R = logits.classification.extent(1), C = logits.classification.extent(2);
  DISTILL_TRY(wsddn_detail::check_loss_args(fn, logits, labels, image_scores, loss, opt));
  const bool per_image = opt.reduction == reduction::none;
  DISTILL_TRY(cuda_detail::check_device_view(fn, "labels", labels));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "image_scores", image_scores));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grads.classification", grads.classification));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grads.detection", grads.detection));
  const float divisor = wsddn_detail::loss_divisor<float>(opt, B, C);
  wd::kernel_args a{};
  a.x = logits.classification, a.y = logits.detection, a.image_scores = image_scores, a.labels = labels, a.dx = grads.classification,
  a.dy = grads.detection;
  float* ws = reinterpret_cast<float*>(workspace.data());
  a.row_stats = ws;
  a.loss_per_image = per_image ? loss : cuda_view<float, 1>{};
  a.image_loss = per_image ? nullptr : ws + 2 * B * R;
  a.kc = opt.class_scale, a.kr = opt.region_scale, a.eps = opt.probability_eps, a.gscale = opt.grad_scale / divisor, a.accumulate = opt.accumulate;
  DISTILL_TRY(wd::launch(fn, ctx, wd::pass::fused, a, B, C));
  if (per_image) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  wd::wsddn_loss_reduce_single_block_kernel<<<1, wd::kReduceThreads, 0, stream>>>(a.image_loss, B, 1.0f / divisor, loss.data());
  return cuda_detail::launch_status(fn, stream);
}

}  // namespace distill
