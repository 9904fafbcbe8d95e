// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of the box geometry features (math and table in distill/relational/box_geometry.hpp).
//! One thread per pair evaluates the shared scalar functions box_detail::pair_features /
//! pair_features_backward: 32 bytes of boxes in, 80 bytes of features out per pair. nvcc only.

#if !defined(__CUDACC__)
#error "distill/cuda/box_geometry.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include "distill/cuda/relational_common.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/relational/box_geometry.hpp"

namespace distill {
namespace cuda_detail::box {

/// Boxes addressed as rows r = b N + i of a [B, N, 4] tensor (N = 1 for a [P, 4] matrix).
using relational::rows_ref;
using relational::out_rows;

__global__ void box_pair_features_forward_thread_per_pair_kernel(rows_ref s_boxes, rows_ref o_boxes, index_t P, out_rows out) {
  const index_t p = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= P) return;
  float s[4], o[4], f[box_pair_feature_count];
  for (int k = 0; k < 4; ++k) s[k] = s_boxes(p, k), o[k] = o_boxes(p, k);
  box_detail::pair_features(s, o, f);
  float* dst = out.p + (p / out.N) * out.s0 + (p % out.N) * out.s1;
  for (int k = 0; k < box_pair_feature_count; ++k) dst[k * out.s2] = f[k];
}

/// All pairs: pair (b, i, j) = thread; out is [B, N, N, 20] with strides.
__global__ void box_pair_features_all_pairs_forward_thread_per_pair_kernel(rows_ref boxes, index_t B, index_t N, float* out,
                                                                           index_t s0, index_t s1, index_t s2, index_t s3) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * N * N) return;
  const index_t b = idx / (N * N), i = (idx / N) % N, j = idx % N;
  float s[4], o[4], f[box_pair_feature_count];
  for (int k = 0; k < 4; ++k) s[k] = boxes(b * N + i, k), o[k] = boxes(b * N + j, k);
  box_detail::pair_features(s, o, f);
  float* dst = out + b * s0 + i * s1 + j * s2;
  for (int k = 0; k < box_pair_feature_count; ++k) dst[k * s3] = f[k];
}

__global__ void box_pair_features_backward_thread_per_pair_kernel(rows_ref s_boxes, rows_ref o_boxes, rows_ref grad_f, index_t P,
                                                                  out_rows gs_out, out_rows go_out, bool accumulate) {
  const index_t p = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= P) return;
  float s[4], o[4], gf[box_pair_feature_count], gs[4] = {0, 0, 0, 0}, go[4] = {0, 0, 0, 0};
  for (int k = 0; k < 4; ++k) s[k] = s_boxes(p, k), o[k] = o_boxes(p, k);
  for (int k = 0; k < box_pair_feature_count; ++k) gf[k] = grad_f(p, k);
  box_detail::pair_features_backward(s, o, gf, gs, go);
  for (int k = 0; k < 4; ++k) {
    if (gs_out.p) {
      float* d = gs_out.p + p * gs_out.s0 + k * gs_out.s2;
      *d = accumulate ? *d + gs[k] : gs[k];
    }
    if (go_out.p) {
      float* d = go_out.p + p * go_out.s0 + k * go_out.s2;
      *d = accumulate ? *d + go[k] : go[k];
    }
  }
}

template <class V>
rows_ref matrix_rows(const V& v) {  // [P, C] as rows (N = 1)
  return {v.data(), v.stride(0), 0, v.stride(1), 1};
}
template <class V>
out_rows out_matrix_rows(const V& v) {
  if (v.empty()) return {};
  return {v.data(), v.stride(0), 0, v.stride(1), 1};
}

template <class T>
inline constexpr bool is_float_v = std::is_same_v<std::remove_const_t<T>, float>;

}  // namespace cuda_detail::box

/// CUDA: features [P, 20] of the pairs (boxes.subject[p], boxes.object[p]) (float). Degenerate
/// boxes are not checked here (no synchronisation): they give inf / NaN features.
template <class T>
[[nodiscard]] status box_pair_features_forward(const cuda& ctx, const box_pairs<T, cuda_space>& boxes, cuda_view<T, 2> features) {
  namespace cb = cuda_detail::box;
  static_assert(cb::is_float_v<T>, "CUDA box features take float views");
  constexpr const char* fn = "box_pair_features_forward";
  const auto& subject_boxes = boxes.subject;
  const auto& object_boxes = boxes.object;
  const index_t P = subject_boxes.extent(0);
  DISTILL_TRY(box_detail::check_pair_views(fn, subject_boxes, object_boxes, "features", features));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes.subject", subject_boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes.object", object_boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "features", features));
  if (P == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  cb::box_pair_features_forward_thread_per_pair_kernel<<<cuda_detail::relational::blocks_for(P), 256, 0, stream>>>(
      cb::matrix_rows(subject_boxes), cb::matrix_rows(object_boxes), P, cb::out_matrix_rows(features));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: gradients of sum(grad_features * features) with respect to the boxes (float).
template <class T>
[[nodiscard]] status box_pair_features_backward(const cuda& ctx, const box_pairs<T, cuda_space>& boxes,
                                                in_view<T, 2, cuda_space> grad_features, const box_pair_grads<T, cuda_space>& grads,
                                                const box_features_options& opt = {}) {
  namespace cb = cuda_detail::box;
  static_assert(cb::is_float_v<T>, "CUDA box features take float views");
  constexpr const char* fn = "box_pair_features_backward";
  const auto& subject_boxes = boxes.subject;
  const auto& object_boxes = boxes.object;
  const auto& grad_subject_boxes = grads.subject;
  const auto& grad_object_boxes = grads.object;
  const index_t P = subject_boxes.extent(0);
  DISTILL_TRY(box_detail::check_pair_views(fn, subject_boxes, object_boxes, "grad_features", grad_features));
  DISTILL_TRY(box_detail::check_box_grads(fn, grad_subject_boxes, grad_object_boxes, P));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes.subject", subject_boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes.object", object_boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_features", grad_features));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grads.subject", grad_subject_boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grads.object", grad_object_boxes));
  if (P == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  cb::box_pair_features_backward_thread_per_pair_kernel<<<cuda_detail::relational::blocks_for(P), 256, 0, stream>>>(
      cb::matrix_rows(subject_boxes), cb::matrix_rows(object_boxes), cb::matrix_rows(grad_features), P,
      cb::out_matrix_rows(grad_subject_boxes), cb::out_matrix_rows(grad_object_boxes), opt.accumulate);
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: features [B, N, N, 20] of every ordered pair of boxes [B, N, 4] (float).
template <class TB>
[[nodiscard]] status box_pair_features_all_pairs_forward(const cuda& ctx, cuda_view<TB, 3> boxes, cuda_view<float, 4> features) {
  namespace cb = cuda_detail::box;
  static_assert(cb::is_float_v<TB>, "CUDA box features take float views");
  constexpr const char* fn = "box_pair_features_all_pairs_forward";
  DISTILL_TRY(box_detail::check_all_pairs_views(fn, boxes, features));
  const index_t B = boxes.extent(0), N = boxes.extent(1);
  DISTILL_TRY(cuda_detail::check_device_view(fn, "boxes", boxes));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "features", features));
  if (B * N == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  cb::box_pair_features_all_pairs_forward_thread_per_pair_kernel<<<cuda_detail::relational::blocks_for(B * N * N), 256, 0,
                                                                   stream>>>(
      cuda_detail::relational::rows_of3(boxes), B, N, features.data(), features.stride(0), features.stride(1), features.stride(2),
      features.stride(3));
  return cuda_detail::launch_status(fn, stream);
}

}  // namespace distill
