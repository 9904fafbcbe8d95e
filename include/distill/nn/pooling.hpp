// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Pooling over NCHW feature maps.
//!
//!   global average:  y[n, c] = (1/S) sum_s x[n, c, s]            dx[n, c, s] = dy[n, c] / S
//!                    (x as (N, C, S): pass (N, C, H, W) tensors as view<3>())
//!   max pool k x k, stride s (no padding; windows inside the input):
//!                    y[n, c, oy, ox] = max over the window,  argmax stored (int32, index iy * W + ix)
//!                    dx[n, c, iy, ix] = sum over windows whose argmax is (iy, ix) of dy  (first maximum
//!                    wins ties, as torch)
//!   average pool k x k, stride s (no padding):
//!                    y = mean over the window,  dx[i] = sum over windows containing i of dy / k^2
//!   Ho = (H - k) / s + 1,  Wo = (W - k) / s + 1
//!
//! The backward passes are written in gather form (each input element sums the windows that
//! read it), so neither backend needs atomics and overlapping windows are handled.

#include <algorithm>
#include <cstdint>
#include <limits>

#include "distill/nn/common.hpp"

namespace distill::nn {

struct pool2d_params {
  index_t kernel = 2;
  index_t stride = 2;
};

constexpr index_t pool2d_output_extent(index_t in, index_t k, index_t s) noexcept { return in < k ? 0 : (in - k) / s + 1; }

namespace nn_detail {
template <class X>
status check_pool(const char* fn, const X& x, const pool2d_params& p) {
  DISTILL_TRY(check_input(fn, "x", x));
  if (p.kernel <= 0 || p.stride <= 0) return fail(errc::invalid_argument, fn, "'kernel' and 'stride' must be > 0");
  if (x.extent(2) < p.kernel || x.extent(3) < p.kernel)
    return fail(errc::shape_mismatch, fn, "the pooling window " + std::to_string(p.kernel) + " does not fit 'x' of shape " +
                                              check_detail::shape_of(x));
  return {};
}
/// The extents of a pooling pass: input planes H x W (of x or dx), output planes Ho x Wo.
struct pool2d_geometry {
  index_t N, C, H, W, Ho, Wo;
};
template <class X>
pool2d_geometry pool2d_geometry_of(const X& x, const pool2d_params& p) {
  const index_t H = x.extent(2), W = x.extent(3);
  return {x.extent(0), x.extent(1), H, W, pool2d_output_extent(H, p.kernel, p.stride), pool2d_output_extent(W, p.kernel, p.stride)};
}
/// check_pool of the input-side view `in` (x or dx), then the output-side view `out` (y or dy)
/// must be (N, C, Ho, Wo) and present; g gets the extents.
template <class In, class Out>
status check_pool_pair(const char* fn, const In& in, const char* out_name, const Out& out, const pool2d_params& p, pool2d_geometry& g) {
  DISTILL_TRY(check_pool(fn, in, p));
  g = pool2d_geometry_of(in, p);
  DISTILL_TRY(check_shape(fn, out_name, out, {g.N, g.C, g.Ho, g.Wo}));
  return check_not_null(fn, out_name, out);
}
/// Whether each (n, c) plane of an NCHW view is contiguous (any batch and channel strides).
template <class V>
bool planes_contiguous(const V& v) {
  return (v.extent(3) <= 1 || v.stride(3) == 1) && (v.extent(2) <= 1 || v.stride(2) == v.extent(3));
}
/// Range of output positions o with o * s <= i < o * s + k (and o < n_out).
DISTILL_HOST_DEVICE inline void windows_containing(index_t i, index_t k, index_t s, index_t n_out, index_t& o0, index_t& o1) {
  o0 = i < k ? 0 : (i - k) / s + 1;
  o1 = i / s + 1;
  if (o1 > n_out) o1 = n_out;
}
}  // namespace nn_detail

// ---- global average pooling ----

template <class T>
[[nodiscard]] status global_avg_pool_forward(const cpu& ctx, in_view<T, 3> x, host_view<T, 2> y) {
  constexpr const char* fn = "nn::global_avg_pool_forward";
  DISTILL_TRY(nn_detail::check_input(fn, "x", x));
  DISTILL_TRY(check_shape(fn, "y", y, {x.extent(0), x.extent(1)}));
  DISTILL_TRY(nn_detail::check_not_null(fn, "y", y));
  const index_t N = x.extent(0), C = x.extent(1), S = x.extent(2);
  using Acc = accum_t<T>;
  parallel_for(
      ctx, N * C,
      [&](index_t i0, index_t i1) {
        for (index_t i = i0; i < i1; ++i) {
          const index_t n = i / C, c = i % C;
          Acc s = 0;
          for (index_t k = 0; k < S; ++k) s += static_cast<Acc>(x(n, c, k));
          y(n, c) = static_cast<T>(s / static_cast<Acc>(S));
        }
      },
      std::max<index_t>(1, (index_t(1) << 14) / S));
  return {};
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status global_avg_pool_backward(const cpu& ctx, host_view<TD, 2> dy, host_view<T, 3> dx, grad_options opt = {}) {
  constexpr const char* fn = "nn::global_avg_pool_backward";
  DISTILL_TRY(nn_detail::check_input(fn, "dy", dy));
  DISTILL_TRY(nn_detail::check_input(fn, "dx", dx));
  DISTILL_TRY(check_extent(fn, "dx", dx, 0, dy.extent(0), "rows of 'dy'"));
  DISTILL_TRY(check_extent(fn, "dx", dx, 1, dy.extent(1), "columns of 'dy'"));
  const index_t N = dx.extent(0), C = dx.extent(1), S = dx.extent(2);
  parallel_for(
      ctx, N * C,
      [&](index_t i0, index_t i1) {
        for (index_t i = i0; i < i1; ++i) {
          const index_t n = i / C, c = i % C;
          const T g = static_cast<T>(dy(n, c)) / static_cast<T>(S);
          for (index_t k = 0; k < S; ++k) dx(n, c, k) = opt.accumulate_input ? dx(n, c, k) + g : g;
        }
      },
      std::max<index_t>(1, (index_t(1) << 14) / S));
  return {};
}

// ---- max pooling ----

/// y (N, C, Ho, Wo) and argmax (same shape, int32 index iy * W + ix within the plane).
template <class T>
[[nodiscard]] status max_pool2d_forward(const cpu& ctx, in_view<T, 4> x, host_view<T, 4> y, out_view<std::int32_t, 4> argmax,
                                        const pool2d_params& p = {}) {
  constexpr const char* fn = "nn::max_pool2d_forward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(nn_detail::check_pool_pair(fn, x, "y", y, p, geom));
  const index_t N = geom.N, C = geom.C, W = geom.W, Ho = geom.Ho, Wo = geom.Wo;
  DISTILL_TRY(check_present(fn, "argmax", argmax));
  DISTILL_TRY(check_shape(fn, "argmax", argmax, {N, C, Ho, Wo}));
  if (nn_detail::planes_contiguous(x) && nn_detail::planes_contiguous(y) && nn_detail::planes_contiguous(argmax)) {
    // each (n, c) plane through raw pointers (the view arithmetic per element is the cost here)
    parallel_for(ctx, N * C, [&](index_t i0, index_t i1) {
      for (index_t i = i0; i < i1; ++i) {
        const index_t n = i / C, c = i % C;
        const T* in = &x(n, c, 0, 0);
        T* out = &y(n, c, 0, 0);
        std::int32_t* am = &argmax(n, c, 0, 0);
        if (p.kernel == 2 && p.stride == 2) {  // the common case
          for (index_t oy = 0; oy < Ho; ++oy) {
            const T* r0 = in + 2 * oy * W;
            const T* r1 = r0 + W;
            for (index_t ox = 0; ox < Wo; ++ox) {
              const auto base = static_cast<std::int32_t>(2 * oy * W + 2 * ox);
              T best = r0[2 * ox];
              std::int32_t at = base;
              const T cand[3] = {r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]};
              const std::int32_t where[3] = {base + 1, base + static_cast<std::int32_t>(W), base + static_cast<std::int32_t>(W) + 1};
              for (int k = 0; k < 3; ++k)  // (a select here is vectorised by GCC 12 into something 8x slower)
                if (cand[k] > best || (cand[k] != cand[k] && best == best)) best = cand[k], at = where[k];  // NaN propagates
              out[oy * Wo + ox] = best;
              am[oy * Wo + ox] = at;
            }
          }
          continue;
        }
        for (index_t oy = 0; oy < Ho; ++oy)
          for (index_t ox = 0; ox < Wo; ++ox) {
            index_t at = oy * p.stride * W + ox * p.stride;
            T best = in[at];
            for (index_t ky = 0; ky < p.kernel; ++ky) {
              const index_t row = (oy * p.stride + ky) * W + ox * p.stride;
              for (index_t kx = 0; kx < p.kernel; ++kx) {
                const T v = in[row + kx];
                if (v > best || (v != v && best == best)) best = v, at = row + kx;  // NaN propagates
              }
            }
            out[oy * Wo + ox] = best;
            am[oy * Wo + ox] = static_cast<std::int32_t>(at);
          }
      }
    });
    return {};
  }
  parallel_for(ctx, N * C, [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      const index_t n = i / C, c = i % C;
      for (index_t oy = 0; oy < Ho; ++oy)
        for (index_t ox = 0; ox < Wo; ++ox) {
          T best = x(n, c, oy * p.stride, ox * p.stride);
          index_t at = (oy * p.stride) * W + ox * p.stride;
          for (index_t ky = 0; ky < p.kernel; ++ky)
            for (index_t kx = 0; kx < p.kernel; ++kx) {
              const index_t iy = oy * p.stride + ky, ix = ox * p.stride + kx;
              const T v = x(n, c, iy, ix);
              if (v > best || (v != v && best == best)) best = v, at = iy * W + ix;  // NaN propagates
            }
          y(n, c, oy, ox) = best;
          argmax(n, c, oy, ox) = static_cast<std::int32_t>(at);
        }
    }
  });
  return {};
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status max_pool2d_backward(const cpu& ctx, host_view<TD, 4> dy, in_view<std::int32_t, 4> argmax, host_view<T, 4> dx,
                                         const pool2d_params& p = {}, grad_options opt = {}) {
  constexpr const char* fn = "nn::max_pool2d_backward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(nn_detail::check_pool_pair(fn, dx, "dy", dy, p, geom));
  const index_t N = geom.N, C = geom.C, H = geom.H, W = geom.W, Ho = geom.Ho, Wo = geom.Wo;
  DISTILL_TRY(check_shape(fn, "argmax", argmax, {N, C, Ho, Wo}));
  DISTILL_TRY(nn_detail::check_not_null(fn, "argmax", argmax));
  if (p.stride >= p.kernel && nn_detail::planes_contiguous(dy) && nn_detail::planes_contiguous(argmax) && nn_detail::planes_contiguous(dx)) {
    // windows do not overlap: every input element is the argmax of at most one window, so the
    // gather below equals one scatter per window (same sums, no comparisons per input element)
    parallel_for(ctx, N * C, [&](index_t i0, index_t i1) {
      for (index_t i = i0; i < i1; ++i) {
        const index_t n = i / C, c = i % C;
        const TD* g = &dy(n, c, 0, 0);
        const std::int32_t* am = &argmax(n, c, 0, 0);
        T* out = &dx(n, c, 0, 0);
        if (!opt.accumulate_input) std::fill(out, out + H * W, T(0));
        for (index_t k = 0; k < Ho * Wo; ++k) out[am[k]] += static_cast<T>(g[k]);
      }
    });
    return {};
  }
  parallel_for(ctx, N * C, [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      const index_t n = i / C, c = i % C;
      for (index_t iy = 0; iy < H; ++iy)
        for (index_t ix = 0; ix < W; ++ix) {
          index_t oy0, oy1, ox0, ox1;
          nn_detail::windows_containing(iy, p.kernel, p.stride, Ho, oy0, oy1);
          nn_detail::windows_containing(ix, p.kernel, p.stride, Wo, ox0, ox1);
          T s = 0;
          for (index_t oy = oy0; oy < oy1; ++oy)
            for (index_t ox = ox0; ox < ox1; ++ox)
              if (argmax(n, c, oy, ox) == iy * W + ix) s += static_cast<T>(dy(n, c, oy, ox));
          dx(n, c, iy, ix) = opt.accumulate_input ? dx(n, c, iy, ix) + s : s;
        }
    }
  });
  return {};
}

// ---- average pooling ----

template <class T>
[[nodiscard]] status avg_pool2d_forward(const cpu& ctx, in_view<T, 4> x, host_view<T, 4> y, const pool2d_params& p = {}) {
  constexpr const char* fn = "nn::avg_pool2d_forward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(nn_detail::check_pool_pair(fn, x, "y", y, p, geom));
  const index_t N = geom.N, C = geom.C, Ho = geom.Ho, Wo = geom.Wo;
  using Acc = accum_t<T>;
  const Acc inv = Acc(1) / static_cast<Acc>(p.kernel * p.kernel);
  parallel_for(ctx, N * C, [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      const index_t n = i / C, c = i % C;
      for (index_t oy = 0; oy < Ho; ++oy)
        for (index_t ox = 0; ox < Wo; ++ox) {
          Acc s = 0;
          for (index_t ky = 0; ky < p.kernel; ++ky)
            for (index_t kx = 0; kx < p.kernel; ++kx) s += static_cast<Acc>(x(n, c, oy * p.stride + ky, ox * p.stride + kx));
          y(n, c, oy, ox) = static_cast<T>(s * inv);
        }
    }
  });
  return {};
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status avg_pool2d_backward(const cpu& ctx, host_view<TD, 4> dy, host_view<T, 4> dx, const pool2d_params& p = {},
                                         grad_options opt = {}) {
  constexpr const char* fn = "nn::avg_pool2d_backward";
  nn_detail::pool2d_geometry geom;
  DISTILL_TRY(nn_detail::check_pool_pair(fn, dx, "dy", dy, p, geom));
  const index_t N = geom.N, C = geom.C, H = geom.H, W = geom.W, Ho = geom.Ho, Wo = geom.Wo;
  using Acc = accum_t<T>;
  const Acc inv = Acc(1) / static_cast<Acc>(p.kernel * p.kernel);
  parallel_for(ctx, N * C, [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      const index_t n = i / C, c = i % C;
      for (index_t iy = 0; iy < H; ++iy)
        for (index_t ix = 0; ix < W; ++ix) {
          index_t oy0, oy1, ox0, ox1;
          nn_detail::windows_containing(iy, p.kernel, p.stride, Ho, oy0, oy1);
          nn_detail::windows_containing(ix, p.kernel, p.stride, Wo, ox0, ox1);
          Acc s = 0;
          for (index_t oy = oy0; oy < oy1; ++oy)
            for (index_t ox = ox0; ox < ox1; ++ox) s += static_cast<Acc>(dy(n, c, oy, ox));
          const T g = static_cast<T>(s * inv);
          dx(n, c, iy, ix) = opt.accumulate_input ? dx(n, c, iy, ix) + g : g;
        }
    }
  });
  return {};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_pooling.cuh"
#endif
