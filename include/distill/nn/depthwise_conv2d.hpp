// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Depthwise 2-D convolution (torch.nn.Conv2d with groups = in_channels = out_channels), NCHW:
//! every channel is filtered by its own kh x kw kernel, as in MobileNet and FFSD's fusion module.
//!
//!   x (B, C, H, W), w (C, 1, kh, kw), b (C), y (B, C, Ho, Wo)
//!   Ho = (H + 2 ph - kh) / sh + 1,  Wo = (W + 2 pw - kw) / sw + 1
//!   forward:   y[b, c, oy, ox] = sum_{ky, kx} w[c, ky, kx] x[b, c, oy sh - ph + ky, ox sw - pw + kx] + b[c]
//!              (x is 0 outside the image)
//!   backward:  dx[b, c, iy, ix] = sum over the (oy, ox, ky, kx) that read (iy, ix) of w[c, ky, kx] dy[b, c, oy, ox]
//!              dw[c, ky, kx] = sum_{b, oy, ox} dy[b, c, oy, ox] x[b, c, oy sh - ph + ky, ox sw - pw + kx]
//!              db[c] = sum_{b, oy, ox} dy[b, c, oy, ox]
//! FLOPs: 2 B C kh kw Ho Wo per pass.
//!
//! Workspace (the protocol of conv2d.hpp): the argument before the params,
//! depthwise_conv2d_workspace_size<T>(ctx, ...) bytes, 0 on both backends.
//!
//! CPU: direct loops, (b, c) planes in parallel for y and dx (dx is scattered within its own
//! plane, so no two threads write the same element), channels in parallel for dw and db (each
//! summed over the batch in order: deterministic).
//! CUDA (kernels/distill/cuda/nn_depthwise_conv2d.cuh): direct kernels, one thread per output (y)
//! and per input element (dx, gather form), one block per (channel, tap) for dw and per channel
//! for db with fixed-order block reductions (deterministic, no atomics).
//! Layouts: (C, H, W) of each image contiguous (any batch stride), w contiguous; b and db
//! contiguous on CUDA.

#include <string>
#include <vector>

#include "distill/nn/common.hpp"
#include "distill/nn/conv2d.hpp"

namespace distill::nn {

/// Bytes of scratch the depthwise forward and backward need: none on either backend.
template <class T = float>
constexpr std::size_t depthwise_conv2d_workspace_size(const cpu&, index_t /*B*/, index_t /*C*/, index_t /*kh*/, index_t /*kw*/,
                                                      index_t /*Ho*/, index_t /*Wo*/) noexcept {
  return 0;
}
template <class T = float>
constexpr std::size_t depthwise_conv2d_workspace_size(const cuda&, index_t /*B*/, index_t /*C*/, index_t /*kh*/, index_t /*kw*/,
                                                      index_t /*Ho*/, index_t /*Wo*/) noexcept {
  return 0;
}

namespace nn_detail {
template <class X, class Wt>
status depthwise_geometry_of(const char* fn, const X& x, const Wt& w, const conv2d_params& p, conv2d_geometry& g) {
  DISTILL_TRY(check_conv_args(fn, x, w, p, "(C, 1, kh, kw)"));
  DISTILL_TRY(check_extent(fn, "w", w, 0, x.extent(1), "channels of 'x'"));
  DISTILL_TRY(check_extent(fn, "w", w, 1, 1, "1 (one filter per channel)"));
  g = {x.extent(0), x.extent(1), x.extent(2), x.extent(3), x.extent(1), w.extent(2), w.extent(3), 0, 0,
       p.stride_h, p.stride_w, p.pad_h, p.pad_w};
  return set_output_extents(fn, x, g);
}

/// Calls f(oy, ox, iy, ix) for every output position of tap (ky, kx) whose input lies inside.
template <class F>
void for_each_tap_position(const conv2d_geometry& g, index_t ky, index_t kx, F&& f) {
  index_t lo, hi;
  valid_output_range(g.W, g.Wo, kx, g.sw, g.pw, lo, hi);
  for (index_t oy = 0; oy < g.Ho; ++oy) {
    const index_t iy = oy * g.sh - g.ph + ky;
    if (iy < 0 || iy >= g.H) continue;
    for (index_t ox = lo; ox < hi; ++ox) f(oy, ox, iy, ox * g.sw - g.pw + kx);
  }
}
}  // namespace nn_detail

/// y = depthwise_conv2d(x, w) + b. `b` may be absent.
template <class T>
[[nodiscard]] status depthwise_conv2d_forward(const cpu& ctx, in_view<T, 4> x, in_view<T, 4> w, in_view<T, 1> b, host_view<T, 4> y,
                                              host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/, const conv2d_params& p = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "nn::depthwise_conv2d_forward: float or double");
  constexpr const char* fn = "nn::depthwise_conv2d_forward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::depthwise_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_output(fn, y, b, g.B, g.Ci, g.Ho, g.Wo));
  parallel_for(ctx, g.B * g.Ci, [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      const index_t n = i / g.Ci, c = i % g.Ci;
      T* out = &y(n, c, 0, 0);
      const T* in = &x(n, c, 0, 0);
      const T bias = b.empty() ? T(0) : b(c);
      std::fill(out, out + g.Ho * g.Wo, bias);
      for (index_t ky = 0; ky < g.kh; ++ky)
        for (index_t kx = 0; kx < g.kw; ++kx) {
          const T wk = w(c, 0, ky, kx);
          nn_detail::for_each_tap_position(g, ky, kx, [&](index_t oy, index_t ox, index_t iy, index_t ix) {
            out[oy * g.Wo + ox] += wk * in[iy * g.W + ix];
          });
        }
    }
  });
  return {};
}

/// Gradients of the depthwise convolution. `dx`, `dw`, `db` may each be absent.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status depthwise_conv2d_backward(const cpu& ctx, in_view<T, 4> x, in_view<T, 4> w, host_view<TD, 4> dy, out_view<T, 4> dx,
                                               out_view<T, 4> dw, out_view<T, 1> db, host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/,
                                               const conv2d_params& p = {}, grad_options opt = {}) {
  constexpr const char* fn = "nn::depthwise_conv2d_backward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::depthwise_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_grads(fn, x, w, dy, dx, dw, db, g.B, g.Ci, g.Ho, g.Wo));
  if (!dx.empty())
    parallel_for(ctx, g.B * g.Ci, [&](index_t i0, index_t i1) {
      for (index_t i = i0; i < i1; ++i) {
        const index_t n = i / g.Ci, c = i % g.Ci;
        T* out = &dx(n, c, 0, 0);
        const TD* gy = &dy(n, c, 0, 0);
        if (!opt.accumulate_input) std::fill(out, out + g.H * g.W, T(0));
        for (index_t ky = 0; ky < g.kh; ++ky)
          for (index_t kx = 0; kx < g.kw; ++kx) {
            const T wk = w(c, 0, ky, kx);
            nn_detail::for_each_tap_position(g, ky, kx, [&](index_t oy, index_t ox, index_t iy, index_t ix) {
              out[iy * g.W + ix] += wk * static_cast<T>(gy[oy * g.Wo + ox]);
            });
          }
      }
    });
  if (!dw.empty() || !db.empty())
    parallel_for(ctx, g.Ci, [&](index_t c0, index_t c1) {
      std::vector<T> acc(static_cast<std::size_t>(g.kh * g.kw));
      for (index_t c = c0; c < c1; ++c) {
        std::fill(acc.begin(), acc.end(), T(0));
        T bias = T(0);
        for (index_t n = 0; n < g.B; ++n) {
          const TD* gy = &dy(n, c, 0, 0);
          const T* in = &x(n, c, 0, 0);
          if (!db.empty()) bias += nn_detail::sum_contiguous(gy, g.Ho * g.Wo);
          if (dw.empty()) continue;
          for (index_t ky = 0; ky < g.kh; ++ky)
            for (index_t kx = 0; kx < g.kw; ++kx) {
              T s = T(0);
              nn_detail::for_each_tap_position(g, ky, kx, [&](index_t oy, index_t ox, index_t iy, index_t ix) {
                s += static_cast<T>(gy[oy * g.Wo + ox]) * in[iy * g.W + ix];
              });
              acc[static_cast<std::size_t>(ky * g.kw + kx)] += s;
            }
        }
        if (!dw.empty())
          for (index_t k = 0; k < g.kh * g.kw; ++k) {
            T& d = dw(c, 0, k / g.kw, k % g.kw);
            d = opt.accumulate_params ? d + acc[static_cast<std::size_t>(k)] : acc[static_cast<std::size_t>(k)];
          }
        if (!db.empty()) db(c) = opt.accumulate_params ? db(c) + bias : bias;
      }
    });
  return {};
}

/// Depthwise convolution layer owning W (C, 1, k, k) and b (C); fan_in = fan_out = k k, as torch
/// computes them for groups = C. No workspace on either backend.
template <class T, class Space = host_space>
class depthwise_conv2d {
 public:
  index_t channels = 0, kernel = 0;
  conv2d_params params;
  parameter<T, Space> weight, bias;

  depthwise_conv2d() = default;
  depthwise_conv2d(const std::string& name, index_t c, index_t k, conv2d_params p = {}, const init_options& init = {}, bool with_bias = true)
      : channels(c),
        kernel(k),
        params(p),
        weight(name + ".weight", {c, 1, k, k}),
        bias(with_bias ? parameter<T, Space>(name + ".bias", {c}) : parameter<T, Space>{}) {
    throw_if_error(init_weight_and_bias(weight, with_bias ? &bias : nullptr, k * k, k * k, init));
  }

  tensor_shape output_shape(index_t B, index_t H, index_t W) const {
    return {B, channels, conv2d_output_extent(H, kernel, params.stride_h, params.pad_h), conv2d_output_extent(W, kernel, params.stride_w, params.pad_w)};
  }
  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 4, Space> x, out_view<T, 4, Space> y) {
    return depthwise_conv2d_forward(ctx, x, nn_detail::value_of<4>(weight), nn_detail::value_of<1>(bias), y, tensor_view<std::byte, 1, Space>{},
                                    params);
  }
  /// Accumulates into weight.grad / bias.grad (when trainable); `dx` may be absent.
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 4, Space> x, in_view<T, 4, Space> dy, out_view<T, 4, Space> dx) {
    return depthwise_conv2d_backward(ctx, x, nn_detail::value_of<4>(weight), dy, dx, nn_detail::grad_if_trainable<4>(weight),
                                     nn_detail::grad_if_trainable<1>(bias), tensor_view<std::byte, 1, Space>{}, params, layer_grad_options);
  }
  parameter_list<T, Space> parameters() { return nn_detail::weight_and_bias(weight, bias); }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_depthwise_conv2d.cuh"
#endif
