// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/conv2d.hpp.
//!
//! Workspace (caller's, conv2d_workspace_size floats): col (K, B P) | tmp (Co, B P) | ones (B P).
//! forward:  im2col kernel (one thread per col element, coalesced writes along B P) ->
//!           strided-batched GEMM Y_b = W col_b written straight into y -> bias kernel.
//! backward: permute dy to tmp (Co, B P) -> dW = tmp col^T (one GEMM over the whole batch) ->
//!           db = tmp ones (GEMV) -> dcol = W^T tmp (into col) -> col2im in gather form: one
//!           thread per input element sums the (ky, kx) taps that read it (no atomics).

#if !defined(__CUDACC__)
#error "distill/cuda/nn_conv2d.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/nn_blas.cuh"
#include "distill/nn/conv2d.hpp"

namespace distill::nn {
namespace cuda_detail {

/// Geometry plus the batch stride of x, as a kernel argument.
struct conv_arg {
  index_t B, Ci, H, W, Co, kh, kw, Ho, Wo, sh, sw, ph, pw;
};
inline conv_arg conv_arg_of(const conv2d_geometry& g) {
  return {g.B, g.Ci, g.H, g.W, g.Co, g.kh, g.kw, g.Ho, g.Wo, g.sh, g.sw, g.ph, g.pw};
}

template <class T>
__global__ void nn_conv2d_im2col_kernel(const T* x, index_t x_batch_stride, conv_arg g, T* col) {
  const index_t P = g.Ho * g.Wo, BP = g.B * P, total = g.Ci * g.kh * g.kw * BP;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t k = i / BP, bp = i - k * BP;
    const index_t b = bp / P, p = bp - b * P;
    const index_t oy = p / g.Wo, ox = p - oy * g.Wo;
    const index_t ci = k / (g.kh * g.kw), kk = k - ci * g.kh * g.kw;
    const index_t ky = kk / g.kw, kx = kk - ky * g.kw;
    const index_t iy = oy * g.sh - g.ph + ky, ix = ox * g.sw - g.pw + kx;
    T v = T(0);
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) v = x[b * x_batch_stride + (ci * g.H + iy) * g.W + ix];
    col[i] = v;
  }
}

template <class T>
__global__ void nn_conv2d_bias_kernel(T* y, index_t y_batch_stride, index_t B, index_t Co, index_t P, const T* bias) {
  const index_t total = B * Co * P;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t b = i / (Co * P), rem = i - b * Co * P, co = rem / P;
    T& o = y[b * y_batch_stride + rem];
    o = o + bias[co];
  }
}

// tmp[co, b P + p] = dy[b, co, p]
template <class T>
__global__ void nn_conv2d_permute_dy_kernel(const T* dy, index_t dy_batch_stride, index_t B, index_t Co, index_t P, T* tmp) {
  const index_t total = B * Co * P, BP = B * P;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t co = i / BP, bp = i - co * BP, b = bp / P, p = bp - b * P;
    tmp[i] = dy[b * dy_batch_stride + co * P + p];
  }
}

template <class T>
__global__ void nn_fill_kernel(T* p, index_t n, T value) {
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    p[i] = value;
}

// dx[b, ci, iy, ix] (+)= sum over taps (ky, kx) with iy = oy sh - ph + ky, ix = ox sw - pw + kx of dcol.
template <class T>
__global__ void nn_conv2d_col2im_gather_kernel(const T* dcol, conv_arg g, T* dx, index_t dx_batch_stride, bool accumulate) {
  const index_t P = g.Ho * g.Wo, BP = g.B * P, total = g.B * g.Ci * g.H * g.W;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t b = i / (g.Ci * g.H * g.W), rem = i - b * g.Ci * g.H * g.W;
    const index_t ci = rem / (g.H * g.W), hw = rem - ci * g.H * g.W;
    const index_t iy = hw / g.W, ix = hw - iy * g.W;
    T s = T(0);
    for (index_t ky = 0; ky < g.kh; ++ky) {
      const index_t ny = iy + g.ph - ky;  // = oy * sh
      if (ny < 0 || ny % g.sh != 0) continue;
      const index_t oy = ny / g.sh;
      if (oy >= g.Ho) continue;
      for (index_t kx = 0; kx < g.kw; ++kx) {
        const index_t nx = ix + g.pw - kx;
        if (nx < 0 || nx % g.sw != 0) continue;
        const index_t ox = nx / g.sw;
        if (ox >= g.Wo) continue;
        s += dcol[((ci * g.kh + ky) * g.kw + kx) * BP + b * P + oy * g.Wo + ox];
      }
    }
    T& o = dx[b * dx_batch_stride + rem];
    o = accumulate ? o + s : s;
  }
}

inline constexpr int conv_channel_sum_block = 256;

// Block c: out[c] (+)= sum_{b, q} v[b, c, q] (v: B images of C planes of P elements), each thread a fixed
// stride of (b, q), then a fixed reduction tree: the bias gradient, deterministic and without atomics.
template <class T, class TV>
__global__ void __launch_bounds__(conv_channel_sum_block)
    nn_conv_channel_sum_kernel(const TV* v, index_t batch_stride, index_t B, index_t C, index_t P, T* out, bool accumulate) {
  __shared__ T red[conv_channel_sum_block / 32];
  const index_t c = blockIdx.x;
  T s = T(0);
  for (index_t i = threadIdx.x; i < B * P; i += conv_channel_sum_block) {
    const index_t b = i / P, q = i - b * P;
    s += static_cast<T>(v[b * batch_stride + c * P + q]);
  }
  s = block_sum<conv_channel_sum_block>(s, red);
  if (threadIdx.x == 0) out[c] = accumulate ? out[c] + s : s;
}

template <class V>
index_t batch_stride(const V& v) {
  return v.extent(0) > 1 ? v.stride(0) : v.extent(1) * v.extent(2) * v.extent(3);
}

/// The workspace as elements of T (checked for size, layout, alignment and memory space).
template <class T>
status conv_workspace(const char* fn, const conv2d_geometry& g, const cuda_view<std::byte, 1>& ws, T*& out) {
  DISTILL_TRY(check_workspace(fn, ws, conv2d_workspace_size<T>(cuda{}, g.B, g.Ci, g.Co, g.kh, g.kw, g.Ho, g.Wo),
                              "conv2d_workspace_size"));
  DISTILL_TRY(check_device_view(fn, "workspace", ws));
  out = reinterpret_cast<T*>(ws.data());
  return {};
}

/// The device checks of a convolution backward's tensors (the variants' shared preamble; absent
/// gradients pass).
template <class X, class Wt, class DY, class DX, class DW, class DB>
status check_conv_grad_views(const char* fn, const X& x, const Wt& w, const DY& dy, const DX& dx, const DW& dw, const DB& db) {
  if (!db.empty() && !db.contiguous()) return fail(errc::unsupported_layout, fn, "'db' must be contiguous on CUDA");
  DISTILL_TRY(check_device_view(fn, "x", x));
  DISTILL_TRY(check_device_view(fn, "w", w));
  DISTILL_TRY(check_device_view(fn, "dy", dy));
  DISTILL_TRY(check_device_view(fn, "dx", dx));
  DISTILL_TRY(check_device_view(fn, "dw", dw));
  return check_device_view(fn, "db", db);
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status conv2d_forward(const cuda_blas& blas, in_view<T, 4, cuda_space> x, in_view<T, 4, cuda_space> w,
                                    in_view<T, 1, cuda_space> b, cuda_view<T, 4> y, cuda_view<std::byte, 1> workspace,
                                    const conv2d_params& p = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::conv2d_forward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(check_shape(fn, "y", y, {g.B, g.Co, g.Ho, g.Wo}));
  DISTILL_TRY(nn_detail::check_image_layout(fn, "y", y));
  DISTILL_TRY(check_device_view(fn, "x", x));
  DISTILL_TRY(check_device_view(fn, "w", w));
  DISTILL_TRY(check_device_view(fn, "y", y));
  if (!b.empty()) {
    DISTILL_TRY(check_shape(fn, "b", b, {g.Co}));
    if (!b.contiguous()) return fail(errc::unsupported_layout, fn, "'b' must be contiguous on CUDA");
    DISTILL_TRY(check_device_view(fn, "b", b));
  }
  T* col = nullptr;
  DISTILL_TRY(conv_workspace(fn, g, workspace, col));
  const index_t K = g.K(), P = g.P(), BP = g.B * P;
  const cudaStream_t s = stream_of(blas);
  nn_conv2d_im2col_kernel<T><<<elementwise_blocks(K * BP), 256, 0, s>>>(x.data(), batch_stride(x), conv_arg_of(g), col);
  DISTILL_TRY(launch_status(fn, s));
  // Y_b (Co, P) = W (Co, K) col[:, b P : (b + 1) P]
  DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, no_trans, g.Co, P, K, T(1), w.data(), K, 0, col, BP, P, T(0), y.data(), P,
                                      batch_stride(y), g.B));
  if (!b.empty()) {
    nn_conv2d_bias_kernel<T><<<elementwise_blocks(g.B * g.Co * P), 256, 0, s>>>(y.data(), batch_stride(y), g.B, g.Co, P, b.data());
    DISTILL_TRY(launch_status(fn, s));
  }
  return {};
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status conv2d_backward(const cuda_blas& blas, in_view<T, 4, cuda_space> x, in_view<T, 4, cuda_space> w,
                                     cuda_view<TD, 4> dy, out_view<T, 4, cuda_space> dx, out_view<T, 4, cuda_space> dw,
                                     out_view<T, 1, cuda_space> db, cuda_view<std::byte, 1> workspace, const conv2d_params& p = {},
                                     grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::conv2d_backward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(check_shape(fn, "dy", dy, {g.B, g.Co, g.Ho, g.Wo}));
  DISTILL_TRY(nn_detail::check_image_layout(fn, "dy", dy));
  DISTILL_TRY(check_device_view(fn, "x", x));
  DISTILL_TRY(check_device_view(fn, "w", w));
  DISTILL_TRY(check_device_view(fn, "dy", dy));
  if (!dx.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
    DISTILL_TRY(nn_detail::check_image_layout(fn, "dx", dx));
    DISTILL_TRY(check_device_view(fn, "dx", dx));
  }
  if (!dw.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dw", dw, "w", w));
    if (!dw.contiguous()) return fail(errc::unsupported_layout, fn, "'dw' must be contiguous");
    DISTILL_TRY(check_device_view(fn, "dw", dw));
  }
  if (!db.empty()) {
    DISTILL_TRY(check_shape(fn, "db", db, {g.Co}));
    if (!db.contiguous()) return fail(errc::unsupported_layout, fn, "'db' must be contiguous on CUDA");
    DISTILL_TRY(check_device_view(fn, "db", db));
  }
  T* col = nullptr;
  DISTILL_TRY(conv_workspace(fn, g, workspace, col));
  const index_t K = g.K(), P = g.P(), BP = g.B * P, Co = g.Co;
  const cudaStream_t s = stream_of(blas);
  T* tmp = col + K * BP;
  T* ones = tmp + Co * BP;
  nn_conv2d_permute_dy_kernel<T><<<elementwise_blocks(Co * BP), 256, 0, s>>>(dy.data(), batch_stride(dy), g.B, Co, P, tmp);
  DISTILL_TRY(launch_status(fn, s));
  const T beta_p = opt.accumulate_params ? T(1) : T(0);
  if (!dw.empty()) {
    nn_conv2d_im2col_kernel<T><<<elementwise_blocks(K * BP), 256, 0, s>>>(x.data(), batch_stride(x), conv_arg_of(g), col);
    DISTILL_TRY(launch_status(fn, s));
    // dW (Co, K) = tmp (Co, BP) col^T (BP, K)
    DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, trans, Co, K, BP, T(1), tmp, BP, 0, col, BP, 0, beta_p, dw.data(), K, 0, 1));
  }
  if (!db.empty()) {
    nn_fill_kernel<T><<<elementwise_blocks(BP), 256, 0, s>>>(ones, BP, T(1));
    DISTILL_TRY(launch_status(fn, s));
    // db (Co, 1) = tmp (Co, BP) ones (BP, 1)
    DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, no_trans, Co, 1, BP, T(1), tmp, BP, 0, ones, 1, 0, beta_p, db.data(), 1, 0, 1));
  }
  if (!dx.empty()) {
    // dcol (K, BP) = W^T (K, Co) tmp (Co, BP), over the col buffer (dW is done with it)
    DISTILL_TRY(gemm_strided_batched<T>(blas, fn, trans, no_trans, K, BP, Co, T(1), w.data(), K, 0, tmp, BP, 0, T(0), col, BP, 0, 1));
    nn_conv2d_col2im_gather_kernel<T><<<elementwise_blocks(g.B * g.Ci * g.H * g.W), 256, 0, s>>>(col, conv_arg_of(g), dx.data(),
                                                                                                batch_stride(dx), opt.accumulate_input);
    DISTILL_TRY(launch_status(fn, s));
  }
  return {};
}

}  // namespace distill::nn
