// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/pooling.hpp. Global average: one warp per (n, c) plane (8 per block), backward
//! element-wise. Max/average pooling: one thread per output (forward) and, in gather form, one
//! thread per input element (backward), so overlapping windows need no atomics. Each kernel
//! reads its input once and writes its output once (window reads hit L1).

#if !defined(__CUDACC__)
#error "distill/cuda/nn_pooling.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/nn/pooling.hpp"

namespace distill::nn {
namespace cuda_detail {

template <class T>
__global__ void nn_global_avg_pool_forward_warp_kernel(nchw_arg<const T> x, matrix_arg<T> y, index_t N, index_t C, index_t S) {
  const int lane = threadIdx.x % 32;
  const index_t i = static_cast<index_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (i >= N * C) return;
  const index_t n = i / C, c = i - n * C;
  float s = 0.f;
  for (index_t k = lane; k < S; k += 32) s += load<float>(x(n, c, k));
  s = warp_sum(s);
  if (lane == 0) y(n, c) = store<T>(s / static_cast<float>(S));
}

template <class T>
__global__ void nn_global_avg_pool_backward_kernel(matrix_arg<const T> dy, nchw_arg<T> dx, index_t N, index_t C, index_t S,
                                                   bool accumulate) {
  const index_t total = N * C * S;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t n = i / (C * S), rem = i - n * C * S, c = rem / S, k = rem - c * S;
    const float g = load<float>(dy(n, c)) / static_cast<float>(S);
    dx(n, c, k) = store<T>(accumulate ? load<float>(dx(n, c, k)) + g : g);
  }
}

template <class T>
__global__ void nn_pool2d_forward_kernel(image_arg<const T> x, image_arg<T> y, std::int32_t* argmax, index_t N, index_t C,
                                         index_t W, index_t Ho, index_t Wo, index_t k, index_t s, bool is_max) {
  const index_t total = N * C * Ho * Wo;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t n = i / (C * Ho * Wo), r1 = i - n * C * Ho * Wo, c = r1 / (Ho * Wo), r2 = r1 - c * Ho * Wo;
    const index_t oy = r2 / Wo, ox = r2 - oy * Wo;
    if (is_max) {
      float best = load<float>(x(n, c, oy * s, ox * s));
      index_t at = oy * s * W + ox * s;
      for (index_t ky = 0; ky < k; ++ky)
        for (index_t kx = 0; kx < k; ++kx) {
          const float v = load<float>(x(n, c, oy * s + ky, ox * s + kx));
          if (v > best || (v != v && best == best)) best = v, at = (oy * s + ky) * W + ox * s + kx;
        }
      y(n, c, oy, ox) = store<T>(best);
      argmax[i] = static_cast<std::int32_t>(at);
    } else {
      float sum = 0.f;
      for (index_t ky = 0; ky < k; ++ky)
        for (index_t kx = 0; kx < k; ++kx) sum += load<float>(x(n, c, oy * s + ky, ox * s + kx));
      y(n, c, oy, ox) = store<T>(sum / static_cast<float>(k * k));
    }
  }
}

template <class T>
__global__ void nn_pool2d_backward_gather_kernel(image_arg<const T> dy, const std::int32_t* argmax, image_arg<T> dx, index_t N,
                                                 index_t C, index_t H, index_t W, index_t Ho, index_t Wo, index_t k, index_t s,
                                                 bool is_max, bool accumulate) {
  const index_t total = N * C * H * W;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t n = i / (C * H * W), r1 = i - n * C * H * W, c = r1 / (H * W), r2 = r1 - c * H * W;
    const index_t iy = r2 / W, ix = r2 - iy * W;
    index_t oy0, oy1, ox0, ox1;
    nn_detail::windows_containing(iy, k, s, Ho, oy0, oy1);
    nn_detail::windows_containing(ix, k, s, Wo, ox0, ox1);
    float sum = 0.f;
    for (index_t oy = oy0; oy < oy1; ++oy)
      for (index_t ox = ox0; ox < ox1; ++ox) {
        if (is_max) {
          const index_t o = ((n * C + c) * Ho + oy) * Wo + ox;
          if (argmax[o] == iy * W + ix) sum += load<float>(dy(n, c, oy, ox));
        } else {
          sum += load<float>(dy(n, c, oy, ox));
        }
      }
    if (!is_max) sum /= static_cast<float>(k * k);
    dx(n, c, iy, ix) = store<T>(accumulate ? load<float>(dx(n, c, iy, ix)) + sum : sum);
  }
}

/// argmax (N, C, Ho, Wo) as the pooling kernels read and write it: contiguous device memory.
template <class A>
status check_device_argmax(const char* fn, const A& argmax, index_t N, index_t C, index_t Ho, index_t Wo) {
  DISTILL_TRY(check_shape(fn, "argmax", argmax, {N, C, Ho, Wo}));
  if (!argmax.contiguous()) return fail(errc::unsupported_layout, fn, "'argmax' must be contiguous on CUDA");
  return check_device_view(fn, "argmax", argmax);
}

/// nn_detail::check_pool and device residence of the input-side view `in` (x or dx), then the
/// output-side view `out` (y or dy) must be (N, C, Ho, Wo) on the device; g gets the extents.
template <class In, class Out>
status check_device_pool_pair(const char* fn, const char* in_name, const In& in, const char* out_name, const Out& out,
                              const pool2d_params& p, nn_detail::pool2d_geometry& g) {
  DISTILL_TRY(nn_detail::check_pool(fn, in, p));
  DISTILL_TRY(check_device_input(fn, in_name, in));
  g = nn_detail::pool2d_geometry_of(in, p);
  DISTILL_TRY(check_shape(fn, out_name, out, {g.N, g.C, g.Ho, g.Wo}));
  return check_device_input(fn, out_name, out);
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status global_avg_pool_forward(const cuda& ctx, in_view<T, 3, cuda_space> x, cuda_view<T, 2> y) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::global_avg_pool_forward";
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_shape(fn, "y", y, {x.extent(0), x.extent(1)}));
  DISTILL_TRY(check_device_input(fn, "y", y));
  const index_t N = x.extent(0), C = x.extent(1), S = x.extent(2);
  nn_global_avg_pool_forward_warp_kernel<T><<<static_cast<unsigned>(ceil_div<index_t>(N * C, 8)), 256, 0, stream_of(ctx)>>>(
      arg3(x), arg(y), N, C, S);
  return launch_status(fn, stream_of(ctx));
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status global_avg_pool_backward(const cuda& ctx, cuda_view<TD, 2> dy, cuda_view<T, 3> dx, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::global_avg_pool_backward";
  DISTILL_TRY(check_device_input(fn, "dy", dy));
  DISTILL_TRY(check_device_input(fn, "dx", dx));
  DISTILL_TRY(check_extent(fn, "dx", dx, 0, dy.extent(0), "rows of 'dy'"));
  DISTILL_TRY(check_extent(fn, "dx", dx, 1, dy.extent(1), "columns of 'dy'"));
  const index_t N = dx.extent(0), C = dx.extent(1), S = dx.extent(2);
  cuda_view<const T, 2> dyc = dy;
  nn_global_avg_pool_backward_kernel<T><<<elementwise_blocks(N * C * S), 256, 0, stream_of(ctx)>>>(arg(dyc), arg3(dx), N, C, S,
                                                                                                  opt.accumulate_input);
  return launch_status(fn, stream_of(ctx));
}

template <class T>
[[nodiscard]] status max_pool2d_forward(const cuda& ctx, in_view<T, 4, cuda_space> x, cuda_view<T, 4> y,
                                        out_view<std::int32_t, 4, cuda_space> argmax, const pool2d_params& p = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::max_pool2d_forward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(check_device_pool_pair(fn, "x", x, "y", y, p, geom));
  const index_t N = geom.N, C = geom.C, W = geom.W, Ho = geom.Ho, Wo = geom.Wo;
  DISTILL_TRY(check_present(fn, "argmax", argmax));
  DISTILL_TRY(check_device_argmax(fn, argmax, N, C, Ho, Wo));
  nn_pool2d_forward_kernel<T><<<elementwise_blocks(N * C * Ho * Wo), 256, 0, stream_of(ctx)>>>(
      arg4(x), arg4(y), argmax.data(), N, C, W, Ho, Wo, p.kernel, p.stride, true);
  return launch_status(fn, stream_of(ctx));
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status max_pool2d_backward(const cuda& ctx, cuda_view<TD, 4> dy, in_view<std::int32_t, 4, cuda_space> argmax,
                                         cuda_view<T, 4> dx, const pool2d_params& p = {}, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::max_pool2d_backward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(check_device_pool_pair(fn, "dx", dx, "dy", dy, p, geom));
  const index_t N = geom.N, C = geom.C, H = geom.H, W = geom.W, Ho = geom.Ho, Wo = geom.Wo;
  DISTILL_TRY(check_device_argmax(fn, argmax, N, C, Ho, Wo));
  cuda_view<const T, 4> dyc = dy;
  nn_pool2d_backward_gather_kernel<T><<<elementwise_blocks(N * C * H * W), 256, 0, stream_of(ctx)>>>(
      arg4(dyc), argmax.data(), arg4(dx), N, C, H, W, Ho, Wo, p.kernel, p.stride, true, opt.accumulate_input);
  return launch_status(fn, stream_of(ctx));
}

template <class T>
[[nodiscard]] status avg_pool2d_forward(const cuda& ctx, in_view<T, 4, cuda_space> x, cuda_view<T, 4> y, const pool2d_params& p = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::avg_pool2d_forward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(check_device_pool_pair(fn, "x", x, "y", y, p, geom));
  const index_t N = geom.N, C = geom.C, W = geom.W, Ho = geom.Ho, Wo = geom.Wo;
  nn_pool2d_forward_kernel<T><<<elementwise_blocks(N * C * Ho * Wo), 256, 0, stream_of(ctx)>>>(
      arg4(x), arg4(y), nullptr, N, C, W, Ho, Wo, p.kernel, p.stride, false);
  return launch_status(fn, stream_of(ctx));
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status avg_pool2d_backward(const cuda& ctx, cuda_view<TD, 4> dy, cuda_view<T, 4> dx, const pool2d_params& p = {},
                                         grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::avg_pool2d_backward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(check_device_pool_pair(fn, "dx", dx, "dy", dy, p, geom));
  const index_t N = geom.N, C = geom.C, H = geom.H, W = geom.W, Ho = geom.Ho, Wo = geom.Wo;
  cuda_view<const T, 4> dyc = dy;
  nn_pool2d_backward_gather_kernel<T><<<elementwise_blocks(N * C * H * W), 256, 0, stream_of(ctx)>>>(
      arg4(dyc), nullptr, arg4(dx), N, C, H, W, Ho, Wo, p.kernel, p.stride, false, opt.accumulate_input);
  return launch_status(fn, stream_of(ctx));
}

}  // namespace distill::nn
