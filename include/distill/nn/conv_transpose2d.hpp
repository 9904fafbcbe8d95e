// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! 2-D transposed convolution (torch.nn.ConvTranspose2d, groups = 1), NCHW: the adjoint of
//! conv2d, used to upsample (FFSD's self-distillation decoders, segmentation heads).
//!
//!   x (B, Ci, H, W), w (Ci, Co, kh, kw) (torch's layout), b (Co), y (B, Co, Ho, Wo)
//!   Ho = (H - 1) sh - 2 ph + kh + oph,   Wo = (W - 1) sw - 2 pw + kw + opw    (0 <= op < stride)
//!   y[b, co, oy, ox] = b[co] + sum over (ci, ky, kx, iy, ix) with oy = iy sh - ph + ky,
//!                      ox = ix sw - pw + kx of w[ci, co, ky, kx] x[b, ci, iy, ix]
//! It is conv2d's input gradient: seen as a conv2d from y's shape to x's (kernel w read as
//! (Ci, Co kh kw), same stride and padding), with K = Co kh kw and P = H W,
//!   forward:   col_b (K, P) = W^T x_b (Ci, P),  y_b = col2im(col_b) + b
//!   backward:  cy_b = im2col(dy_b) (K, P),  dx_b = W cy_b,  dW = sum_b x_b cy_b^T,  db = sum dy
//! FLOPs: 2 B Ci K P per GEMM.
//!
//! Workspace (the protocol of conv2d.hpp): the argument before the params,
//! conv_transpose2d_workspace_size<T>(ctx, ...) bytes (0 on the CPU).
//!
//! CPU: images in parallel as in conv2d.hpp (im2col / col2im of that header, GEMMs through
//! distill::gemm on one thread per image), dW summed per thread and added in thread order
//! (deterministic for a fixed thread count).
//! CUDA (kernels/distill/cuda/nn_conv_transpose2d.cuh): conv2d's CUDA pieces, a strided-batched
//! cuBLAS GEMM and the gather-form col2im forward; im2col of dy, GEMMs for dx and dW (x permuted
//! to (Ci, B H W) in the workspace), per-channel block sums for db (deterministic, no atomics).
//! Layouts: (C, H, W) of each image contiguous (any batch stride), w contiguous; b and db
//! contiguous on CUDA.

#include <string>
#include <vector>

#include "distill/core/cpu_gemm.hpp"
#include "distill/nn/common.hpp"
#include "distill/nn/conv2d.hpp"

namespace distill::nn {

struct conv_transpose2d_params {
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;
  index_t output_pad_h = 0, output_pad_w = 0;  ///< extra rows / columns at the bottom / right, < stride
};

/// Output extent along one axis of a transposed convolution (<= 0 when invalid).
constexpr index_t conv_transpose2d_output_extent(index_t in, index_t k, index_t stride, index_t pad, index_t output_pad) noexcept {
  return (in - 1) * stride - 2 * pad + k + output_pad;
}

/// Bytes of scratch the transposed convolution needs for B input images of Ci x H x W: none on the CPU
/// (each thread keeps one image's Co kh kw x H W columns in a vector).
template <class T = float>
constexpr std::size_t conv_transpose2d_workspace_size(const cpu&, index_t /*B*/, index_t /*Ci*/, index_t /*Co*/, index_t /*kh*/,
                                                      index_t /*kw*/, index_t /*H*/, index_t /*W*/) noexcept {
  return 0;
}
/// On CUDA: the im2col matrix of dy (Co kh kw x B H W) and x permuted to (Ci, B H W).
template <class T = float>
constexpr std::size_t conv_transpose2d_workspace_size(const cuda&, index_t B, index_t Ci, index_t Co, index_t kh, index_t kw, index_t H,
                                                      index_t W) noexcept {
  const index_t BP = B * H * W;
  return static_cast<std::size_t>(Co * kh * kw * BP + Ci * BP) * sizeof(T);
}

namespace nn_detail {
/// The conv2d geometry whose input is y (B, Co, Ho, Wo) and whose output is x (B, Ci, H, W).
template <class X, class Wt>
status conv_transpose2d_geometry_of(const char* fn, const X& x, const Wt& w, const conv_transpose2d_params& p, conv2d_geometry& g) {
  DISTILL_TRY(check_conv_args(fn, x, w, p, "(Ci, Co, kh, kw)"));
  if (p.output_pad_h < 0 || p.output_pad_w < 0 || p.output_pad_h >= p.stride_h || p.output_pad_w >= p.stride_w)
    return fail(errc::invalid_argument, fn, "output padding must be >= 0 and smaller than the stride");
  DISTILL_TRY(check_extent(fn, "w", w, 0, x.extent(1), "in_channels = channels of 'x'"));
  const index_t Ho = conv_transpose2d_output_extent(x.extent(2), w.extent(2), p.stride_h, p.pad_h, p.output_pad_h);
  const index_t Wo = conv_transpose2d_output_extent(x.extent(3), w.extent(3), p.stride_w, p.pad_w, p.output_pad_w);
  if (Ho <= 0 || Wo <= 0) return fail(errc::shape_mismatch, fn, "the padding leaves no output for 'x' of shape " + check_detail::shape_of(x));
  // conv2d roles: input = y (Co channels, Ho x Wo), output = x (Ci channels, H x W), K = Co kh kw.
  g = {x.extent(0), w.extent(1), Ho, Wo, x.extent(1), w.extent(2), w.extent(3), x.extent(2), x.extent(3),
       p.stride_h, p.stride_w, p.pad_h, p.pad_w};
  return {};
}
}  // namespace nn_detail

/// y = conv_transpose2d(x, w) + b. `b` may be absent.
template <class T>
[[nodiscard]] status conv_transpose2d_forward(const cpu& ctx, in_view<T, 4> x, in_view<T, 4> w, in_view<T, 1> b, host_view<T, 4> y,
                                              host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/, const conv_transpose2d_params& p = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "nn::conv_transpose2d_forward: float or double");
  constexpr const char* fn = "nn::conv_transpose2d_forward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv_transpose2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_output(fn, y, b, g.B, g.Ci, g.H, g.W));
  const index_t K = g.K(), P = g.P(), Cin = g.Co;  // Cin: channels of x
  const auto wm = make_view(w.data(), Cin, K);
  status st;
  nn_detail::for_each_image(ctx, g.B, [&](int, index_t b0, index_t b1, const cpu& inner) {
    std::vector<T> col(static_cast<std::size_t>(K * P)), phases(static_cast<std::size_t>((g.W + g.sw) * g.H));
    for (index_t img = b0; img < b1; ++img) {
      const status s = gemm(inner, transpose::yes, transpose::no, T(1), wm, make_view(&x(img, 0, 0, 0), Cin, P), T(0),
                            make_view(col.data(), K, P));
      if (!s.ok()) st = s;  // cannot fail after the checks above; kept for completeness
      T* out = &y(img, 0, 0, 0);
      nn_detail::col2im_image(col.data(), g, out, false, phases.data());
      if (!b.empty())
        for (index_t c = 0; c < g.Ci; ++c)
          for (index_t q = 0; q < g.H * g.W; ++q) out[c * g.H * g.W + q] += b(c);
    }
  });
  return st;
}

/// Gradients of the transposed convolution. `dx`, `dw`, `db` may each be absent.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status conv_transpose2d_backward(const cpu& ctx, in_view<T, 4> x, in_view<T, 4> w, host_view<TD, 4> dy, out_view<T, 4> dx,
                                               out_view<T, 4> dw, out_view<T, 1> db, host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/,
                                               const conv_transpose2d_params& p = {},
                                               grad_options opt = {}) {
  constexpr const char* fn = "nn::conv_transpose2d_backward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv_transpose2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_grads(fn, x, w, dy, dx, dw, db, g.B, g.Ci, g.H, g.W));
  const index_t K = g.K(), P = g.P(), Cin = g.Co, Cout = g.Ci;
  const auto wm = make_view(w.data(), Cin, K);
  const int threads = std::max(1, parallel_threads(ctx, g.B));
  std::vector<T> dw_part(dw.empty() ? 0 : static_cast<std::size_t>(threads * Cin * K), T(0));
  std::vector<T> db_part(db.empty() ? 0 : static_cast<std::size_t>(threads * Cout), T(0));
  status st;
  nn_detail::for_each_image(ctx, g.B, [&](int tid, index_t b0, index_t b1, const cpu& inner) {
    std::vector<T> col(dx.empty() && dw.empty() ? 0 : static_cast<std::size_t>(K * P));
    for (index_t img = b0; img < b1; ++img) {
      const TD* dyp = &dy(img, 0, 0, 0);
      if (!db.empty())
        for (index_t c = 0; c < Cout; ++c)
          db_part[static_cast<std::size_t>(tid * Cout + c)] += nn_detail::sum_contiguous(dyp + c * g.H * g.W, g.H * g.W);
      if (dx.empty() && dw.empty()) continue;
      nn_detail::im2col_image(dyp, g, col.data());
      const auto colv = make_view(static_cast<const T*>(col.data()), K, P);
      if (!dx.empty()) {
        const status s = gemm(inner, transpose::no, transpose::no, T(1), wm, colv, opt.accumulate_input ? T(1) : T(0),
                              make_view(&dx(img, 0, 0, 0), Cin, P));
        if (!s.ok()) st = s;
      }
      if (!dw.empty()) {
        const status s = gemm(inner, transpose::no, transpose::yes, T(1), make_view(&x(img, 0, 0, 0), Cin, P), colv, T(1),
                              make_view(dw_part.data() + static_cast<std::size_t>(tid) * Cin * K, Cin, K));
        if (!s.ok()) st = s;
      }
    }
  });
  if (!st.ok()) return st;
  if (!dw.empty()) {
    T* out = dw.data();
    for (index_t i = 0; i < Cin * K; ++i) {
      const T s = nn_detail::sum_thread_parts(dw_part, threads, Cin * K, i);
      out[i] = opt.accumulate_params ? out[i] + s : s;
    }
  }
  if (!db.empty())
    for (index_t c = 0; c < Cout; ++c) {
      const T s = nn_detail::sum_thread_parts(db_part, threads, Cout, c);
      db(c) = opt.accumulate_params ? db(c) + s : s;
    }
  return {};
}

/// Transposed convolution layer owning W (Ci, Co, k, k) and b (Co); fan_in = Co k k and fan_out
/// = Ci k k, as torch computes them for this weight layout. Owns the CUDA workspace (grown on
/// first use for a batch size).
template <class T, class Space = host_space>
class conv_transpose2d {
 public:
  index_t in_channels = 0, out_channels = 0, kernel = 0;
  conv_transpose2d_params params;
  parameter<T, Space> weight, bias;
  tensor<std::byte, Space> workspace;  // conv_transpose2d_workspace_size bytes (none on the CPU)

  conv_transpose2d() = default;
  conv_transpose2d(const std::string& name, index_t ci, index_t co, index_t k, conv_transpose2d_params p = {}, const init_options& init = {},
                   bool with_bias = true)
      : in_channels(ci),
        out_channels(co),
        kernel(k),
        params(p),
        weight(name + ".weight", {ci, co, k, k}),
        bias(with_bias ? parameter<T, Space>(name + ".bias", {co}) : parameter<T, Space>{}) {
    throw_if_error(init_weight_and_bias(weight, with_bias ? &bias : nullptr, co * k * k, ci * k * k, init));
  }

  tensor_shape output_shape(index_t B, index_t H, index_t W) const {
    return {B, out_channels, conv_transpose2d_output_extent(H, kernel, params.stride_h, params.pad_h, params.output_pad_h),
            conv_transpose2d_output_extent(W, kernel, params.stride_w, params.pad_w, params.output_pad_w)};
  }
  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 4, Space> x, out_view<T, 4, Space> y) {
    DISTILL_TRY(reserve(ctx, x));
    return conv_transpose2d_forward(ctx, x, nn_detail::value_of<4>(weight), nn_detail::value_of<1>(bias), y, workspace.template view<1>(),
                                    params);
  }
  /// Accumulates into weight.grad / bias.grad (when trainable); `dx` may be absent.
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 4, Space> x, in_view<T, 4, Space> dy, out_view<T, 4, Space> dx) {
    DISTILL_TRY(reserve(ctx, x));
    return conv_transpose2d_backward(ctx, x, nn_detail::value_of<4>(weight), dy, dx, nn_detail::grad_if_trainable<4>(weight),
                                     nn_detail::grad_if_trainable<1>(bias), workspace.template view<1>(), params, layer_grad_options);
  }
  parameter_list<T, Space> parameters() { return nn_detail::weight_and_bias(weight, bias); }

 private:
  template <class Ctx>
  status reserve(const Ctx& ctx, const tensor_view<const T, 4, Space>& x) {
    const auto n = static_cast<index_t>(
        conv_transpose2d_workspace_size<T>(ctx, x.extent(0), in_channels, out_channels, kernel, kernel, x.extent(2), x.extent(3)));
    if (n > workspace.size()) return workspace.resize({n});
    return {};
  }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_conv_transpose2d.cuh"
#endif
