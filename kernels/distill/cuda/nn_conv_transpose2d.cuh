// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/conv_transpose2d.hpp, built from conv2d's pieces (nn_conv2d.cuh) on the conv2d
//! geometry whose input is y and whose output is x (K = Co kh kw, P = H W):
//! Workspace (caller's, conv_transpose2d_workspace_size bytes): col (K, B P) | xt (Ci, B P).
//! forward:  col_b = W^T x_b (strided-batched GEMM) -> col2im gather kernel into y -> bias kernel.
//! backward: col = im2col(dy) -> dx_b = W col_b (strided-batched GEMM); xt = x permuted to
//!           (Ci, B P) -> dW = xt col^T (one GEMM over the batch); db = per-channel block sums
//!           of dy (fixed order, no atomics).

#if !defined(__CUDACC__)
#error "distill/cuda/nn_conv_transpose2d.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/cuda/nn_conv2d.cuh"
#include "distill/nn/conv_transpose2d.hpp"

namespace distill::nn {
namespace cuda_detail {

/// The workspace as elements of T (checked for size, layout, alignment and memory space).
template <class T>
status conv_transpose_workspace(const char* fn, const conv2d_geometry& g, const cuda_view<std::byte, 1>& ws, T*& out) {
  // conv2d roles: g.Co = channels of x, g.Ci = channels of y, (g.Ho, g.Wo) = x's (H, W)
  DISTILL_TRY(check_workspace(fn, ws, conv_transpose2d_workspace_size<T>(cuda{}, g.B, g.Co, g.Ci, g.kh, g.kw, g.Ho, g.Wo),
                              "conv_transpose2d_workspace_size"));
  DISTILL_TRY(check_device_view(fn, "workspace", ws));
  out = reinterpret_cast<T*>(ws.data());
  return {};
}

}  // namespace cuda_detail

/// y = conv_transpose2d(x, w) + b on the handle's stream. `b` may be absent.
template <class T>
[[nodiscard]] status conv_transpose2d_forward(const cuda_blas& blas, in_view<T, 4, cuda_space> x, in_view<T, 4, cuda_space> w,
                                              in_view<T, 1, cuda_space> b, cuda_view<T, 4> y, cuda_view<std::byte, 1> workspace,
                                              const conv_transpose2d_params& p = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "nn::conv_transpose2d_forward: float or double");
  using namespace cuda_detail;
  constexpr const char* fn = "nn::conv_transpose2d_forward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv_transpose2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_output(fn, y, b, g.B, g.Ci, g.H, g.W));
  if (!b.empty() && !b.contiguous()) return fail(errc::unsupported_layout, fn, "'b' must be contiguous on CUDA");
  DISTILL_TRY(check_device_view(fn, "x", x));
  DISTILL_TRY(check_device_view(fn, "w", w));
  DISTILL_TRY(check_device_view(fn, "b", b));
  DISTILL_TRY(check_device_view(fn, "y", y));
  T* col = nullptr;
  DISTILL_TRY(conv_transpose_workspace(fn, g, workspace, col));
  const index_t K = g.K(), P = g.P(), BP = g.B * P, Cin = g.Co;
  const cudaStream_t s = stream_of(blas);
  // col[:, b P : (b + 1) P] (K, P) = W^T (K, Cin) x_b (Cin, P)
  DISTILL_TRY(gemm_strided_batched<T>(blas, fn, trans, no_trans, K, P, Cin, T(1), w.data(), K, 0, x.data(), P, batch_stride(x), T(0), col,
                                      BP, P, g.B));
  nn_conv2d_col2im_gather_kernel<T><<<elementwise_blocks(g.B * g.Ci * g.H * g.W), 256, 0, s>>>(col, conv_arg_of(g), y.data(),
                                                                                              batch_stride(y), false);
  DISTILL_TRY(launch_status(fn, s));
  if (!b.empty()) {
    nn_conv2d_bias_kernel<T><<<elementwise_blocks(g.B * g.Ci * g.H * g.W), 256, 0, s>>>(y.data(), batch_stride(y), g.B, g.Ci, g.H * g.W,
                                                                                       b.data());
    DISTILL_TRY(launch_status(fn, s));
  }
  return {};
}

/// Gradients of the transposed convolution on the handle's stream. `dx`, `dw`, `db` may each be absent.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status conv_transpose2d_backward(const cuda_blas& blas, in_view<T, 4, cuda_space> x, in_view<T, 4, cuda_space> w,
                                               cuda_view<TD, 4> dy, out_view<T, 4, cuda_space> dx, out_view<T, 4, cuda_space> dw,
                                               out_view<T, 1, cuda_space> db, cuda_view<std::byte, 1> workspace,
                                               const conv_transpose2d_params& p = {}, grad_options opt = {}) {
  static_assert(std::is_same_v<std::remove_const_t<TD>, T>, "nn::conv_transpose2d_backward: 'dy' has the element type of 'x' on CUDA");
  using namespace cuda_detail;
  constexpr const char* fn = "nn::conv_transpose2d_backward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv_transpose2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_grads(fn, x, w, dy, dx, dw, db, g.B, g.Ci, g.H, g.W));
  DISTILL_TRY(check_conv_grad_views(fn, x, w, dy, dx, dw, db));
  T* col = nullptr;
  DISTILL_TRY(conv_transpose_workspace(fn, g, workspace, col));
  const index_t K = g.K(), P = g.P(), BP = g.B * P, Cin = g.Co, Cout = g.Ci;
  T* xt = col + K * BP;
  const cudaStream_t s = stream_of(blas);
  if (!dx.empty() || !dw.empty()) {
    nn_conv2d_im2col_kernel<T><<<elementwise_blocks(K * BP), 256, 0, s>>>(dy.data(), batch_stride(dy), conv_arg_of(g), col);
    DISTILL_TRY(launch_status(fn, s));
  }
  if (!dx.empty()) {
    // dx_b (Cin, P) = W (Cin, K) col[:, b P : (b + 1) P] (K, P)
    DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, no_trans, Cin, P, K, T(1), w.data(), K, 0, col, BP, P,
                                        opt.accumulate_input ? T(1) : T(0), dx.data(), P, batch_stride(dx), g.B));
  }
  if (!dw.empty()) {
    nn_conv2d_permute_dy_kernel<T><<<elementwise_blocks(Cin * BP), 256, 0, s>>>(x.data(), batch_stride(x), g.B, Cin, P, xt);
    DISTILL_TRY(launch_status(fn, s));
    // dW (Cin, K) = xt (Cin, BP) col^T (BP, K)
    DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, trans, Cin, K, BP, T(1), xt, BP, 0, col, BP, 0,
                                        opt.accumulate_params ? T(1) : T(0), dw.data(), K, 0, 1));
  }
  if (!db.empty()) {
    nn_conv_channel_sum_kernel<T, std::remove_const_t<TD>><<<static_cast<unsigned>(Cout), conv_channel_sum_block, 0, s>>>(
        dy.data(), batch_stride(dy), g.B, Cout, g.H * g.W, db.data(), opt.accumulate_params);
    DISTILL_TRY(launch_status(fn, s));
  }
  return {};
}

}  // namespace distill::nn
