// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the box operations (math in distill/detection/boxes.hpp). One thread per output
//! (per IoU entry, per box) evaluates the shared scalar functions of detection_detail; the IoU
//! kernel stages a tile of boxes_b in shared memory (16 bytes per box, read once per block).
//! float only. nvcc only.

#if !defined(__CUDACC__)
#error "distill/cuda/boxes.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "distill/cuda/runtime.cuh"
#include "distill/detection/boxes.hpp"

namespace distill {
namespace detection_cuda_detail {

/// A strided [N, 4] box matrix on the device.
struct box_rows {
  const float* p = nullptr;
  index_t s0 = 0, s1 = 0;
  __device__ __forceinline__ void load(index_t r, float out[4]) const {
    for (int k = 0; k < 4; ++k) out[k] = p[r * s0 + k * s1];
  }
};
struct box_rows_out {
  float* p = nullptr;
  index_t s0 = 0, s1 = 0;
  __device__ __forceinline__ float& operator()(index_t r, int k) const { return p[r * s0 + k * s1]; }
};
template <class V>
box_rows rows_of(const V& v) {
  return {v.data(), v.stride(0), v.stride(1)};
}
template <class V>
box_rows_out out_rows_of(const V& v) {
  return {v.data(), v.stride(0), v.stride(1)};
}

constexpr int kThreads = 256;
constexpr int kIouTile = 64;  // boxes_b per block (columns of the IoU matrix)

inline unsigned blocks_for(index_t n) { return static_cast<unsigned>(cuda_detail::ceil_div<index_t>(n, kThreads)); }

/// Block = kIouTile columns x (kThreads / kIouTile) rows of the IoU matrix, grid-strided over rows.
__global__ void __launch_bounds__(kThreads) box_iou_forward_tiled_kernel(box_rows a, index_t N, box_rows b, index_t M, float* iou,
                                                                         index_t is0, index_t is1) {
  __shared__ float tile[kIouTile][4];
  const index_t j0 = static_cast<index_t>(blockIdx.y) * kIouTile;
  for (int t = threadIdx.x; t < kIouTile; t += kThreads)
    if (j0 + t < M) b.load(j0 + t, tile[t]);
  __syncthreads();
  const int col = threadIdx.x % kIouTile;
  const index_t j = j0 + col;
  constexpr int rows_per_block = kThreads / kIouTile;
  for (index_t i = static_cast<index_t>(blockIdx.x) * rows_per_block + threadIdx.x / kIouTile; i < N;
       i += static_cast<index_t>(gridDim.x) * rows_per_block) {
    if (j >= M) continue;
    float box_a[4];
    a.load(i, box_a);
    iou[i * is0 + j * is1] = detection_detail::iou(box_a, tile[col]);
  }
}

/// One thread per box scans every target (targets are few: the ground truth of an image).
__global__ void box_match_box_per_thread_kernel(box_rows boxes, index_t N, box_rows targets, index_t M, std::int64_t* matched,
                                                index_t ms, float* matched_iou, index_t is) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float a[4], b[4];
  boxes.load(i, a);
  std::int64_t best = -1;
  float best_iou = 0.0f;
  for (index_t j = 0; j < M; ++j) {
    targets.load(j, b);
    const float v = detection_detail::iou(a, b);
    if (best < 0 || v > best_iou) best = j, best_iou = v;
  }
  matched[i * ms] = best;
  matched_iou[i * is] = best_iou;
}

__global__ void box_clip_box_per_thread_kernel(box_rows in, index_t N, float width, float height, box_rows_out out) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float b[4], c[4];
  in.load(i, b);
  detection_detail::clip(b, width, height, c);
  for (int k = 0; k < 4; ++k) out(i, k) = c[k];
}

using coder_args = detection_detail::coder_weights<float>;

__global__ void box_encode_box_per_thread_kernel(box_rows proposals, box_rows targets, index_t N, coder_args ca, box_rows_out deltas) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float p[4], g[4], d[4];
  proposals.load(i, p);
  targets.load(i, g);
  detection_detail::encode(p, g, ca, d);
  for (int k = 0; k < 4; ++k) deltas(i, k) = d[k];
}

__global__ void box_decode_forward_box_per_thread_kernel(box_rows proposals, box_rows deltas, index_t N, coder_args ca, box_rows_out boxes) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float p[4], d[4], b[4], size[2];
  bool clamped[2];
  proposals.load(i, p);
  deltas.load(i, d);
  detection_detail::decode(p, d, ca, b, size, clamped);
  for (int k = 0; k < 4; ++k) boxes(i, k) = b[k];
}

__global__ void box_decode_backward_box_per_thread_kernel(box_rows proposals, box_rows deltas, box_rows grad_boxes, index_t N, coder_args ca,
                                           bool accumulate, box_rows_out grad_deltas) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float p[4], d[4], g[4], gd[4];
  proposals.load(i, p);
  deltas.load(i, d);
  grad_boxes.load(i, g);
  detection_detail::decode_backward(p, d, ca, g, gd);
  for (int k = 0; k < 4; ++k) grad_deltas(i, k) = accumulate ? grad_deltas(i, k) + gd[k] : gd[k];
}

template <class T>
inline constexpr bool is_float_v = std::is_same_v<std::remove_const_t<T>, float>;

}  // namespace detection_cuda_detail

/// CUDA: iou[i, j] = IoU(boxes_a[i], boxes_b[j]) (float).
template <class TA, class TB>
[[nodiscard]] status box_iou(const cuda& ctx, cuda_view<TA, 2> boxes_a, cuda_view<TB, 2> boxes_b, cuda_view<float, 2> iou) {
  namespace dc = detection_cuda_detail;
  static_assert(dc::is_float_v<TA> && dc::is_float_v<TB>, "CUDA box_iou takes float views");
  constexpr const char* fn = "box_iou";
  DISTILL_TRY(detection_detail::check_iou_views(fn, boxes_a, boxes_b, iou));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes_a", boxes_a));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes_b", boxes_b));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "iou", iou));
  const index_t N = boxes_a.extent(0), M = boxes_b.extent(0);
  if (N == 0 || M == 0) return {};
  const index_t col_tiles = cuda_detail::ceil_div<index_t>(M, dc::kIouTile);
  if (col_tiles > 65535) return fail(errc::shape_mismatch, fn, "'boxes_b' has more than 65535 * 64 boxes");
  const index_t row_blocks = std::min<index_t>(cuda_detail::ceil_div<index_t>(N, dc::kThreads / dc::kIouTile), 65535);
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  dc::box_iou_forward_tiled_kernel<<<dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(col_tiles)), dc::kThreads, 0, stream>>>(
      dc::rows_of(boxes_a), N, dc::rows_of(boxes_b), M, iou.data(), iou.stride(0), iou.stride(1));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: for each box the target of largest IoU and that IoU (float).
template <class TB, class TT>
[[nodiscard]] status box_match(const cuda& ctx, cuda_view<TB, 2> boxes, cuda_view<TT, 2> targets, cuda_view<std::int64_t, 1> matched,
                               cuda_view<float, 1> matched_iou) {
  namespace dc = detection_cuda_detail;
  static_assert(dc::is_float_v<TB> && dc::is_float_v<TT>, "CUDA box_match takes float views");
  constexpr const char* fn = "box_match";
  DISTILL_TRY(detection_detail::check_match_views(fn, boxes, targets, matched, matched_iou));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes", boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "targets", targets));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "matched", matched));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "matched_iou", matched_iou));
  const index_t N = boxes.extent(0);
  if (N == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  dc::box_match_box_per_thread_kernel<<<dc::blocks_for(N), dc::kThreads, 0, stream>>>(
      dc::rows_of(boxes), N, dc::rows_of(targets), targets.extent(0), matched.data(), matched.stride(0), matched_iou.data(), matched_iou.stride(0));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: boxes clipped to [0, width] x [0, height] (float; `clipped` may be `boxes`).
template <class TB>
[[nodiscard]] status box_clip(const cuda& ctx, cuda_view<TB, 2> boxes, cuda_view<float, 2> clipped, const box_clip_options& opt) {
  namespace dc = detection_cuda_detail;
  static_assert(dc::is_float_v<TB>, "CUDA box_clip takes float views");
  constexpr const char* fn = "box_clip";
  DISTILL_TRY(detection_detail::check_boxes(fn, "boxes", boxes));
  DISTILL_TRY(detection_detail::check_boxes(fn, "clipped", clipped, boxes.extent(0)));
  DISTILL_TRY(detection_detail::check_clip_options(fn, opt));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes", boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "clipped", clipped));
  const index_t N = boxes.extent(0);
  if (N == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  dc::box_clip_box_per_thread_kernel<<<dc::blocks_for(N), dc::kThreads, 0, stream>>>(dc::rows_of(boxes), N, opt.width, opt.height,
                                                                      dc::out_rows_of(clipped));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: regression targets deltas = encode(proposals -> targets) (float).
template <class TP, class TG>
[[nodiscard]] status box_encode(const cuda& ctx, cuda_view<TP, 2> proposals, cuda_view<TG, 2> targets, cuda_view<float, 2> deltas,
                                const box_coder_options& opt = {}) {
  namespace dc = detection_cuda_detail;
  static_assert(dc::is_float_v<TP> && dc::is_float_v<TG>, "CUDA box_encode takes float views");
  constexpr const char* fn = "box_encode";
  DISTILL_TRY(detection_detail::check_coder_views(fn, "targets", proposals, targets, "deltas", deltas, opt));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "proposals", proposals));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "targets", targets));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "deltas", deltas));
  const index_t N = proposals.extent(0);
  if (N == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  dc::box_encode_box_per_thread_kernel<<<dc::blocks_for(N), dc::kThreads, 0, stream>>>(dc::rows_of(proposals), dc::rows_of(targets), N,
                                                                        detection_detail::coder_weights_of<float>(opt), dc::out_rows_of(deltas));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: boxes = decode(proposals, deltas) (float).
template <class TP, class TD>
[[nodiscard]] status box_decode_forward(const cuda& ctx, cuda_view<TP, 2> proposals, cuda_view<TD, 2> deltas, cuda_view<float, 2> boxes,
                                        const box_coder_options& opt = {}) {
  namespace dc = detection_cuda_detail;
  static_assert(dc::is_float_v<TP> && dc::is_float_v<TD>, "CUDA box_decode_forward takes float views");
  constexpr const char* fn = "box_decode_forward";
  DISTILL_TRY(detection_detail::check_coder_views(fn, "deltas", proposals, deltas, "boxes", boxes, opt));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "proposals", proposals));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "deltas", deltas));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes", boxes));
  const index_t N = proposals.extent(0);
  if (N == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  dc::box_decode_forward_box_per_thread_kernel<<<dc::blocks_for(N), dc::kThreads, 0, stream>>>(dc::rows_of(proposals), dc::rows_of(deltas), N,
                                                                                detection_detail::coder_weights_of<float>(opt), dc::out_rows_of(boxes));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: grad_deltas = dL/d(deltas) given grad_boxes = dL/d(decoded boxes) (float).
template <class TP, class TD, class TG>
[[nodiscard]] status box_decode_backward(const cuda& ctx, cuda_view<TP, 2> proposals, cuda_view<TD, 2> deltas,
                                         cuda_view<TG, 2> grad_boxes, cuda_view<float, 2> grad_deltas, const box_coder_options& opt = {}) {
  namespace dc = detection_cuda_detail;
  static_assert(dc::is_float_v<TP> && dc::is_float_v<TD> && dc::is_float_v<TG>, "CUDA box_decode_backward takes float views");
  constexpr const char* fn = "box_decode_backward";
  DISTILL_TRY(detection_detail::check_coder_views(fn, "deltas", proposals, deltas, "grad_deltas", grad_deltas, opt));
  DISTILL_TRY(detection_detail::check_boxes(fn, "grad_boxes", grad_boxes, proposals.extent(0)));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "proposals", proposals));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "deltas", deltas));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_boxes", grad_boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_deltas", grad_deltas));
  const index_t N = proposals.extent(0);
  if (N == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  dc::box_decode_backward_box_per_thread_kernel<<<dc::blocks_for(N), dc::kThreads, 0, stream>>>(
      dc::rows_of(proposals), dc::rows_of(deltas), dc::rows_of(grad_boxes), N, detection_detail::coder_weights_of<float>(opt), opt.accumulate,
      dc::out_rows_of(grad_deltas));
  return cuda_detail::launch_status(fn, stream);
}

}  // namespace distill
