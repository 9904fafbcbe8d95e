// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/depthwise_conv2d.hpp. Direct kernels, no workspace, no atomics:
//!   y:  one thread per output element, its kh x kw taps in order, plus the bias.
//!   dx: gather form, one thread per input element sums the (ky, kx) taps whose window reads it.
//!   dw: one block per (channel, tap), db: one block per channel (nn_conv2d.cuh's channel sum);
//!       each thread sums a fixed stride of (b, oy, ox) and the block reduces in a fixed tree, so
//!       the result does not depend on scheduling.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_depthwise_conv2d.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/nn_conv2d.cuh"
#include "distill/nn/depthwise_conv2d.hpp"

namespace distill::nn {
namespace cuda_detail {

template <class T>
__global__ void nn_depthwise_forward_kernel(const T* x, index_t x_batch_stride, const T* w, const T* bias, conv_arg g, T* y,
                                            index_t y_batch_stride) {
  const index_t C = g.Ci, total = g.B * C * g.Ho * g.Wo;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t b = i / (C * g.Ho * g.Wo), rem = i - b * C * g.Ho * g.Wo;
    const index_t c = rem / (g.Ho * g.Wo), p = rem - c * g.Ho * g.Wo, oy = p / g.Wo, ox = p - oy * g.Wo;
    const T* plane = x + b * x_batch_stride + c * g.H * g.W;
    const T* wc = w + c * g.kh * g.kw;
    T s = bias != nullptr ? bias[c] : T(0);
    for (index_t ky = 0; ky < g.kh; ++ky) {
      const index_t iy = oy * g.sh - g.ph + ky;
      if (iy < 0 || iy >= g.H) continue;
      for (index_t kx = 0; kx < g.kw; ++kx) {
        const index_t ix = ox * g.sw - g.pw + kx;
        if (ix >= 0 && ix < g.W) s += wc[ky * g.kw + kx] * plane[iy * g.W + ix];
      }
    }
    y[b * y_batch_stride + rem] = s;
  }
}

// dx[b, c, iy, ix] (+)= sum over taps (ky, kx) with iy = oy sh - ph + ky, ix = ox sw - pw + kx of w[c, ky, kx] dy[b, c, oy, ox].
template <class T, class TD>
__global__ void nn_depthwise_dx_gather_kernel(const TD* dy, index_t dy_batch_stride, const T* w, conv_arg g, T* dx,
                                              index_t dx_batch_stride, bool accumulate) {
  const index_t C = g.Ci, total = g.B * C * g.H * g.W;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t b = i / (C * g.H * g.W), rem = i - b * C * g.H * g.W;
    const index_t c = rem / (g.H * g.W), hw = rem - c * g.H * g.W, iy = hw / g.W, ix = hw - iy * g.W;
    const TD* gy = dy + b * dy_batch_stride + c * g.Ho * g.Wo;
    const T* wc = w + c * g.kh * g.kw;
    T s = T(0);
    for (index_t ky = 0; ky < g.kh; ++ky) {
      const index_t ny = iy + g.ph - ky;  // = oy * sh
      if (ny < 0 || ny % g.sh != 0 || ny / g.sh >= g.Ho) continue;
      const index_t oy = ny / g.sh;
      for (index_t kx = 0; kx < g.kw; ++kx) {
        const index_t nx = ix + g.pw - kx;
        if (nx < 0 || nx % g.sw != 0 || nx / g.sw >= g.Wo) continue;
        s += wc[ky * g.kw + kx] * static_cast<T>(gy[oy * g.Wo + nx / g.sw]);
      }
    }
    T& o = dx[b * dx_batch_stride + rem];
    o = accumulate ? o + s : s;
  }
}

inline constexpr int depthwise_dw_block = 256;

// Block (c, tap): dw[c, ky, kx] (+)= sum_{b, oy, ox} dy[b, c, oy, ox] x[b, c, oy sh - ph + ky, ox sw - pw + kx].
template <class T, class TD>
__global__ void __launch_bounds__(depthwise_dw_block)
    nn_depthwise_dw_kernel(const T* x, index_t x_batch_stride, const TD* dy, index_t dy_batch_stride, conv_arg g, T* dw, bool accumulate) {
  __shared__ T red[depthwise_dw_block / 32];
  const index_t c = blockIdx.x, tap = blockIdx.y, ky = tap / g.kw, kx = tap - ky * g.kw, P = g.Ho * g.Wo;
  T s = T(0);
  for (index_t i = threadIdx.x; i < g.B * P; i += depthwise_dw_block) {
    const index_t b = i / P, p = i - b * P, oy = p / g.Wo, ox = p - oy * g.Wo;
    const index_t iy = oy * g.sh - g.ph + ky, ix = ox * g.sw - g.pw + kx;
    if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) continue;
    s += static_cast<T>(dy[b * dy_batch_stride + c * P + p]) * x[b * x_batch_stride + (c * g.H + iy) * g.W + ix];
  }
  s = block_sum<depthwise_dw_block>(s, red);
  if (threadIdx.x == 0) {
    T& o = dw[c * g.kh * g.kw + tap];
    o = accumulate ? o + s : s;
  }
}

}  // namespace cuda_detail

/// y = depthwise_conv2d(x, w) + b on the context's stream. `b` may be absent.
template <class T>
[[nodiscard]] status depthwise_conv2d_forward(const cuda& ctx, in_view<T, 4, cuda_space> x, in_view<T, 4, cuda_space> w,
                                              in_view<T, 1, cuda_space> b, cuda_view<T, 4> y,
                                              cuda_view<std::byte, 1> /*workspace: 0 bytes*/, const conv2d_params& p = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "nn::depthwise_conv2d_forward: float or double");
  using namespace cuda_detail;
  constexpr const char* fn = "nn::depthwise_conv2d_forward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::depthwise_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_output(fn, y, b, g.B, g.Ci, g.Ho, g.Wo));
  if (!b.empty() && !b.contiguous()) return fail(errc::unsupported_layout, fn, "'b' must be contiguous on CUDA");
  DISTILL_TRY(check_device_view(fn, "x", x));
  DISTILL_TRY(check_device_view(fn, "w", w));
  DISTILL_TRY(check_device_view(fn, "b", b));
  DISTILL_TRY(check_device_view(fn, "y", y));
  const cudaStream_t s = stream_of(ctx);
  nn_depthwise_forward_kernel<T><<<elementwise_blocks(g.B * g.Ci * g.P()), 256, 0, s>>>(
      x.data(), batch_stride(x), w.data(), b.empty() ? nullptr : b.data(), conv_arg_of(g), y.data(), batch_stride(y));
  return launch_status(fn, s);
}

/// Gradients of the depthwise convolution on the context's stream. `dx`, `dw`, `db` may each be absent.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status depthwise_conv2d_backward(const cuda& ctx, in_view<T, 4, cuda_space> x, in_view<T, 4, cuda_space> w,
                                               cuda_view<TD, 4> dy, out_view<T, 4, cuda_space> dx, out_view<T, 4, cuda_space> dw,
                                               out_view<T, 1, cuda_space> db, cuda_view<std::byte, 1> /*workspace: 0 bytes*/,
                                               const conv2d_params& p = {}, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::depthwise_conv2d_backward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::depthwise_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_grads(fn, x, w, dy, dx, dw, db, g.B, g.Ci, g.Ho, g.Wo));
  DISTILL_TRY(check_conv_grad_views(fn, x, w, dy, dx, dw, db));
  const cudaStream_t s = stream_of(ctx);
  if (!dx.empty()) {
    nn_depthwise_dx_gather_kernel<T, std::remove_const_t<TD>><<<elementwise_blocks(g.B * g.Ci * g.H * g.W), 256, 0, s>>>(
        dy.data(), batch_stride(dy), w.data(), conv_arg_of(g), dx.data(), batch_stride(dx), opt.accumulate_input);
    DISTILL_TRY(launch_status(fn, s));
  }
  if (!dw.empty()) {
    const dim3 grid(static_cast<unsigned>(g.Ci), static_cast<unsigned>(g.kh * g.kw));
    nn_depthwise_dw_kernel<T, std::remove_const_t<TD>><<<grid, depthwise_dw_block, 0, s>>>(x.data(), batch_stride(x), dy.data(), batch_stride(dy),
                                                                      conv_arg_of(g), dw.data(), opt.accumulate_params);
    DISTILL_TRY(launch_status(fn, s));
  }
  if (!db.empty()) {
    nn_conv_channel_sum_kernel<T, std::remove_const_t<TD>><<<static_cast<unsigned>(g.Ci), conv_channel_sum_block, 0, s>>>(
        dy.data(), batch_stride(dy), g.B, g.Ci, g.P(), db.data(), opt.accumulate_params);
    DISTILL_TRY(launch_status(fn, s));
  }
  return {};
}

}  // namespace distill::nn
