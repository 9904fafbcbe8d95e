// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! 2-D convolution (cross-correlation, as torch.nn.Conv2d), NCHW, any kernel size, stride and
//! zero padding, through im2col + GEMM.
//!
//!   x (B, Ci, H, W), W (Co, Ci, kh, kw), b (Co), y (B, Co, Ho, Wo)
//!   Ho = (H + 2 ph - kh) / sh + 1,  Wo = (W + 2 pw - kw) / sw + 1
//!   col_b[(ci, ky, kx), (oy, ox)] = x[b, ci, oy sh - ph + ky, ox sw - pw + kx]   (0 outside)
//!   forward:   Y_b (Co, P) = W (Co, K) col_b (K, P) + b,        K = Ci kh kw, P = Ho Wo
//!   backward:  dW = sum_b dY_b col_b^T,   db = sum_{b, p} dY_b,
//!              dcol_b = W^T dY_b,  dx = col2im(dcol_b) (the adjoint of im2col: scatter-add)
//! FLOPs: 2 B Co K P per GEMM (forward, dW, dx), the count the benchmarks use.
//!
//! CPU: images in parallel (one per thread at a time), each thread im2col's its image into a
//! private K x P buffer (L2-resident for the Relation-Network shapes) and runs distill::gemm on
//! one thread; dW and db are summed per thread and added in thread order (deterministic for a
//! fixed thread count). db rides in the dW GEMM (a row of ones appended to col), col2im gathers
//! per input row through the stride phases (contiguous loops, dx written once). A 1x1 stride-1
//! unpadded convolution skips im2col. With fewer images than threads, images run one after
//! another with threaded GEMMs. At the Relation-Network shapes this reaches the rate of the same
//! three GEMMs on a pre-built im2col matrix (bench nn_conv2d/cpu/...).
//! CUDA: im2col of the whole batch into a caller workspace (K x B P), a strided-batched cuBLAS
//! GEMM straight into y, a bias kernel; backward permutes dy to (Co, B P), one GEMM for dW, a
//! GEMV for db, one GEMM for dcol and a gather-form col2im kernel (no atomics). Workspace (the
//! argument before the params, on both backends): conv2d_workspace_size<T>(ctx, ...) bytes. Layouts: (C, H, W) of each image contiguous (batch stride free).

#include <string>
#include <vector>

#include "distill/core/cpu_gemm.hpp"
#include "distill/nn/common.hpp"

namespace distill::nn {

struct conv2d_params {
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;
};

/// Geometry of a convolution, derived from the shapes and params.
struct conv2d_geometry {
  index_t B, Ci, H, W, Co, kh, kw, Ho, Wo;
  index_t sh, sw, ph, pw;
  index_t K() const noexcept { return Ci * kh * kw; }
  index_t P() const noexcept { return Ho * Wo; }
  bool is_pointwise() const noexcept { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

/// Output extent along one axis (0 or negative when the kernel does not fit).
constexpr index_t conv2d_output_extent(index_t in, index_t k, index_t stride, index_t pad) noexcept {
  return in + 2 * pad < k ? 0 : (in + 2 * pad - k) / stride + 1;
}

/// Bytes of scratch the conv2d forward and backward need for a batch of B images, T the element
/// type: none on the CPU (each thread keeps one image's K x P columns on its stack of vectors);
/// on CUDA the im2col matrix of the whole batch (K x B P), the permuted dy (Co x B P) and a
/// vector of ones (B P).
template <class T = float>
constexpr std::size_t conv2d_workspace_size(const cpu&, index_t /*B*/, index_t /*Ci*/, index_t /*Co*/, index_t /*kh*/,
                                            index_t /*kw*/, index_t /*Ho*/, index_t /*Wo*/) noexcept {
  return 0;
}
template <class T = float>
constexpr std::size_t conv2d_workspace_size(const cuda&, index_t B, index_t Ci, index_t Co, index_t kh, index_t kw, index_t Ho,
                                            index_t Wo) noexcept {
  const index_t BP = B * Ho * Wo;
  return static_cast<std::size_t>(Ci * kh * kw * BP + Co * BP + BP) * sizeof(T);
}

namespace nn_detail {

template <class V>
status check_image_layout(const char* fn, const char* name, const V& v) {
  if (v.empty()) return {};
  DISTILL_TRY(check_strides(fn, name, v));
  const bool ok = (v.extent(3) <= 1 || v.stride(3) == 1) && (v.extent(2) <= 1 || v.stride(2) == v.extent(3)) &&
                  (v.extent(1) <= 1 || v.stride(1) == v.extent(2) * v.extent(3));
  if (!ok)
    return fail(errc::unsupported_layout, fn,
                std::string("'") + name + "' must have each image's (C, H, W) contiguous (any batch stride)");
  return {};
}

/// The checks every convolution entry point makes of x, w and the stride / padding of `p`
/// (conv2d_params or conv_transpose2d_params); `w_layout` names the layout w must have.
template <class X, class Wt, class Params>
status check_conv_args(const char* fn, const X& x, const Wt& w, const Params& p, const char* w_layout) {
  DISTILL_TRY(check_input(fn, "x", x));
  DISTILL_TRY(check_input(fn, "w", w));
  DISTILL_TRY(check_image_layout(fn, "x", x));
  if (!w.contiguous()) return fail(errc::unsupported_layout, fn, std::string("'w' must be contiguous ") + w_layout);
  if (p.stride_h <= 0 || p.stride_w <= 0) return fail(errc::invalid_argument, fn, "strides must be > 0");
  if (p.pad_h < 0 || p.pad_w < 0) return fail(errc::invalid_argument, fn, "padding must be >= 0");
  return {};
}

/// g.Ho and g.Wo from the other fields of g, or the error that the kernel does not fit x.
template <class X>
status set_output_extents(const char* fn, const X& x, conv2d_geometry& g) {
  g.Ho = conv2d_output_extent(g.H, g.kh, g.sh, g.ph);
  g.Wo = conv2d_output_extent(g.W, g.kw, g.sw, g.pw);
  if (g.Ho <= 0 || g.Wo <= 0)
    return fail(errc::shape_mismatch, fn, "the kernel " + std::to_string(g.kh) + "x" + std::to_string(g.kw) +
                                              " does not fit the padded input " + check_detail::shape_of(x));
  return {};
}

template <class X, class Wt>
status conv2d_geometry_of(const char* fn, const X& x, const Wt& w, const conv2d_params& p, conv2d_geometry& g) {
  DISTILL_TRY(check_conv_args(fn, x, w, p, "(Co, Ci, kh, kw)"));
  DISTILL_TRY(check_extent(fn, "w", w, 1, x.extent(1), "in_channels = channels of 'x'"));
  g = {x.extent(0), x.extent(1), x.extent(2), x.extent(3), w.extent(0), w.extent(2), w.extent(3), 0, 0,
       p.stride_h, p.stride_w, p.pad_h, p.pad_w};
  return set_output_extents(fn, x, g);
}

/// The checks of a convolution forward's y (B, C, Ho, Wo: present, each image contiguous) and
/// of its bias b (C), when given.
template <class Y, class Bias>
status check_conv_output(const char* fn, const Y& y, const Bias& b, index_t B, index_t C, index_t Ho, index_t Wo) {
  DISTILL_TRY(check_shape(fn, "y", y, {B, C, Ho, Wo}));
  DISTILL_TRY(check_not_null(fn, "y", y));
  DISTILL_TRY(check_image_layout(fn, "y", y));
  if (!b.empty()) DISTILL_TRY(check_shape(fn, "b", b, {C}));
  return {};
}

/// The checks of a convolution backward's dy (B, C, Ho, Wo: present, each image contiguous)
/// and of the gradients it is given: dx shaped as x (each image contiguous), dw shaped as w
/// (contiguous), db (C).
template <class X, class Wt, class DY, class DX, class DW, class DB>
status check_conv_grads(const char* fn, const X& x, const Wt& w, const DY& dy, const DX& dx, const DW& dw, const DB& db, index_t B,
                        index_t C, index_t Ho, index_t Wo) {
  DISTILL_TRY(check_shape(fn, "dy", dy, {B, C, Ho, Wo}));
  DISTILL_TRY(check_not_null(fn, "dy", dy));
  DISTILL_TRY(check_image_layout(fn, "dy", dy));
  if (!dx.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
    DISTILL_TRY(check_image_layout(fn, "dx", dx));
  }
  if (!dw.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dw", dw, "w", w));
    if (!dw.contiguous()) return fail(errc::unsupported_layout, fn, "'dw' must be contiguous");
  }
  if (!db.empty()) DISTILL_TRY(check_shape(fn, "db", db, {C}));
  return {};
}

/// Element i of per-thread partial sums (thread t's block starts at t * stride), added in
/// thread order (deterministic for a fixed thread count).
template <class T>
T sum_thread_parts(const std::vector<T>& part, int threads, index_t stride, index_t i) {
  T s = T(0);
  for (int t = 0; t < threads; ++t) s += part[static_cast<std::size_t>(t * stride + i)];
  return s;
}

/// Output columns ox whose input column ix = ox * s - pad + k lies in [0, in): [lo, hi).
inline void valid_output_range(index_t in, index_t out, index_t k, index_t s, index_t pad, index_t& lo, index_t& hi) {
  const index_t first = pad - k;  // ix >= 0  <=>  ox * s >= pad - k
  lo = first <= 0 ? 0 : (first + s - 1) / s;
  const index_t last = in - 1 + pad - k;  // ix <= in - 1  <=>  ox * s <= in - 1 + pad - k
  hi = last < 0 ? 0 : std::min(out, last / s + 1);
  if (lo > hi) lo = hi;
}

/// A row position ox * s + shift as (phase r, index ox + m) of the row split by stride s into
/// phases (phase r holds elements r, r + s, r + 2s, ...): shift = m s + r, 0 <= r < s.
inline void phase_of(index_t shift, index_t s, index_t& r, index_t& m) {
  m = shift >= 0 ? shift / s : -((-shift + s - 1) / s);
  r = shift - m * s;
}

/// col (K, P) of one image (x_img points at its (Ci, H, W), contiguous). The valid output
/// columns of each tap are computed once, so the inner loops are branch-free strided copies (a
/// literal stride 2 lets the compiler vectorise the gather).
template <class T, class TX>
void im2col_image(const TX* x_img, const conv2d_geometry& g, T* col) {
  const index_t P = g.P();
  for (index_t ci = 0; ci < g.Ci; ++ci)
    for (index_t ky = 0; ky < g.kh; ++ky)
      for (index_t kx = 0; kx < g.kw; ++kx) {
        T* row = col + ((ci * g.kh + ky) * g.kw + kx) * P;
        const TX* plane = x_img + ci * g.H * g.W;
        index_t lo, hi;
        valid_output_range(g.W, g.Wo, kx, g.sw, g.pw, lo, hi);
        const index_t shift = kx - g.pw;
        for (index_t oy = 0; oy < g.Ho; ++oy) {
          const index_t iy = oy * g.sh - g.ph + ky;
          T* out = row + oy * g.Wo;
          if (iy < 0 || iy >= g.H) {
            for (index_t ox = 0; ox < g.Wo; ++ox) out[ox] = T(0);
            continue;
          }
          const TX* in = plane + iy * g.W;
          for (index_t ox = 0; ox < lo; ++ox) out[ox] = T(0);
          if (g.sw == 1)
            for (index_t ox = lo; ox < hi; ++ox) out[ox] = static_cast<T>(in[ox + shift]);
          else if (g.sw == 2)
            for (index_t ox = lo; ox < hi; ++ox) out[ox] = static_cast<T>(in[2 * ox + shift]);
          else
            for (index_t ox = lo; ox < hi; ++ox) out[ox] = static_cast<T>(in[ox * g.sw + shift]);
          for (index_t ox = hi; ox < g.Wo; ++ox) out[ox] = T(0);
        }
      }
}

/// dx_img (Ci, H, W) = (or += with accumulate) col2im(dcol (K, P)), the adjoint of im2col.
/// Per channel, the taps add their contiguous row segments into the plane split by the
/// horizontal stride into phases (phase r holds columns r, r + sw, ...; position ox sw + kx - pw
/// is phase r, index ox + m), which is then interleaved into dx once: every inner loop is
/// contiguous, and dx is written once (no zeroing pass, no strided read-modify-write).
/// `scratch` holds at least (W + sw) H elements.
template <class T>
void col2im_image(const T* dcol, const conv2d_geometry& g, T* dx_img, bool accumulate, T* scratch) {
  const index_t P = g.P(), s = g.sw, nph = (g.W + s - 1) / s;
  for (index_t ci = 0; ci < g.Ci; ++ci) {
    std::fill(scratch, scratch + s * g.H * nph, T(0));  // layout [r][iy][j]
    for (index_t ky = 0; ky < g.kh; ++ky)
      for (index_t kx = 0; kx < g.kw; ++kx) {
        const T* tap = dcol + ((ci * g.kh + ky) * g.kw + kx) * P;
        index_t lo, hi, r, m;
        valid_output_range(g.W, g.Wo, kx, s, g.pw, lo, hi);
        phase_of(kx - g.pw, s, r, m);
        for (index_t oy = 0; oy < g.Ho; ++oy) {
          const index_t iy = oy * g.sh - g.ph + ky;
          if (iy < 0 || iy >= g.H) continue;
          T* dst = scratch + (r * g.H + iy) * nph;
          const T* src = tap + oy * g.Wo;
          for (index_t ox = lo; ox < hi; ++ox) dst[ox + m] += src[ox];
        }
      }
    for (index_t iy = 0; iy < g.H; ++iy) {
      T* out = dx_img + (ci * g.H + iy) * g.W;
      const T* ph0 = scratch + iy * nph;
      if (s == 1 && !accumulate) {
        for (index_t ix = 0; ix < g.W; ++ix) out[ix] = ph0[ix];
      } else if (s == 2 && !accumulate) {  // interleave two phases (literal stride: vectorised)
        const T* ph1 = scratch + (g.H + iy) * nph;
        for (index_t j = 0; 2 * j < g.W; ++j) out[2 * j] = ph0[j];
        for (index_t j = 0; 2 * j + 1 < g.W; ++j) out[2 * j + 1] = ph1[j];
      } else {
        for (index_t r = 0; r < s; ++r)
          for (index_t j = 0; j * s + r < g.W; ++j) {
            const T v = scratch[(r * g.H + iy) * nph + j];
            out[j * s + r] = accumulate ? out[j * s + r] + v : v;
          }
      }
    }
  }
}

/// Run body(thread, b0, b1, inner_ctx) over images: one image range per thread with a
/// one-thread GEMM context, or all images serially with the full context when B < threads.
template <class Body>
void for_each_image(const cpu& ctx, index_t B, Body&& body) {
  const int t = parallel_threads(ctx, B);
  if (t <= 1 || B < ctx.threads) {
    body(0, index_t(0), B, ctx);
    return;
  }
  // t items on t threads: chunk `tid` is exactly thread `tid`, which owns images [B tid / t, B (tid + 1) / t).
  parallel_for(ctx, t, [&](index_t i0, index_t i1) {
    for (index_t tid = i0; tid < i1; ++tid) body(static_cast<int>(tid), B * tid / t, B * (tid + 1) / t, cpu{1});
  });
}

}  // namespace nn_detail

/// y = conv2d(x, w) + b. `b` may be absent.
template <class T>
[[nodiscard]] status conv2d_forward(const cpu& ctx, in_view<T, 4> x, in_view<T, 4> w, in_view<T, 1> b, host_view<T, 4> y,
                                    host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/, const conv2d_params& p = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "nn::conv2d_forward: float or double");
  constexpr const char* fn = "nn::conv2d_forward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_output(fn, y, b, g.B, g.Co, g.Ho, g.Wo));
  const index_t K = g.K(), P = g.P();
  const auto wm = make_view(w.data(), g.Co, K);
  status st;
  nn_detail::for_each_image(ctx, g.B, [&](int, index_t b0, index_t b1, const cpu& inner) {
    std::vector<T> col(g.is_pointwise() ? 0 : static_cast<std::size_t>(K * P));
    for (index_t img = b0; img < b1; ++img) {
      const T* src = &x(img, 0, 0, 0);
      if (!g.is_pointwise()) nn_detail::im2col_image(src, g, col.data());
      const T* colp = g.is_pointwise() ? src : col.data();
      auto ym = make_view(&y(img, 0, 0, 0), g.Co, P);
      const status s = gemm(inner, transpose::no, transpose::no, T(1), wm, make_view(colp, K, P), T(0), ym);
      if (!s.ok()) st = s;  // cannot fail after the checks above; kept for completeness
      if (!b.empty())
        for (index_t co = 0; co < g.Co; ++co) {
          T* row = ym.row(co);
          const T bias = b(co);
          for (index_t q = 0; q < P; ++q) row[q] += bias;
        }
    }
  });
  return st;
}

/// Gradients of conv2d. `dx`, `dw`, `db` may each be absent.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status conv2d_backward(const cpu& ctx, in_view<T, 4> x, in_view<T, 4> w, host_view<TD, 4> dy, out_view<T, 4> dx,
                                     out_view<T, 4> dw, out_view<T, 1> db, host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/,
                                     const conv2d_params& p = {}, grad_options opt = {}) {
  constexpr const char* fn = "nn::conv2d_backward";
  conv2d_geometry g;
  DISTILL_TRY(nn_detail::conv2d_geometry_of(fn, x, w, p, g));
  DISTILL_TRY(nn_detail::check_conv_grads(fn, x, w, dy, dx, dw, db, g.B, g.Co, g.Ho, g.Wo));
  const index_t K = g.K(), P = g.P(), Co = g.Co;
  const auto wm = make_view(w.data(), Co, K);
  const int threads = std::max(1, parallel_threads(ctx, g.B));
  // With im2col, db rides along in the dW GEMM: col gets an extra row of ones, so column K of
  // dW_aug = dY [col; 1]^T is sum_p dY = db (no separate pass over dy).
  const bool fuse_db = !db.empty() && !dw.empty() && !g.is_pointwise();
  const index_t Kc = K + (fuse_db ? 1 : 0);
  // Per-thread partial dW (Co, Kc) and db (Co), added in thread order at the end.
  std::vector<T> dw_part(dw.empty() ? 0 : static_cast<std::size_t>(threads * Co * Kc), T(0));
  std::vector<T> db_part(db.empty() || fuse_db ? 0 : static_cast<std::size_t>(threads * Co), T(0));
  status st;
  nn_detail::for_each_image(ctx, g.B, [&](int tid, index_t b0, index_t b1, const cpu& inner) {
    std::vector<T> col((g.is_pointwise() || dw.empty()) ? 0 : static_cast<std::size_t>(Kc * P));
    std::vector<T> dcol((g.is_pointwise() || dx.empty()) ? 0 : static_cast<std::size_t>(K * P));
    std::vector<T> phases(dx.empty() || g.is_pointwise() ? 0 : static_cast<std::size_t>((g.W + g.sw) * g.H));
    if (fuse_db) std::fill(col.begin() + K * P, col.end(), T(1));  // im2col never touches row K
    for (index_t img = b0; img < b1; ++img) {
      const TD* dyp = &dy(img, 0, 0, 0);
      const auto dym = make_view(static_cast<const T*>(dyp), Co, P);
      if (!dw.empty()) {
        const T* src = &x(img, 0, 0, 0);
        if (!g.is_pointwise()) nn_detail::im2col_image(src, g, col.data());
        const T* colp = g.is_pointwise() ? src : col.data();
        const status s = gemm(inner, transpose::no, transpose::yes, T(1), dym, make_view(colp, Kc, P), T(1),
                              make_view(dw_part.data() + static_cast<std::size_t>(tid) * Co * Kc, Co, Kc));
        if (!s.ok()) st = s;
      }
      if (!db.empty() && !fuse_db)
        for (index_t co = 0; co < Co; ++co) db_part[static_cast<std::size_t>(tid * Co + co)] += nn_detail::sum_contiguous(dym.row(co), P);
      if (!dx.empty()) {
        T* dxp = &dx(img, 0, 0, 0);
        if (g.is_pointwise()) {
          // dx_img (Ci, P) = W^T dY_b
          const status s = gemm(inner, transpose::yes, transpose::no, T(1), wm, dym, opt.accumulate_input ? T(1) : T(0),
                                make_view(dxp, g.Ci, P));
          if (!s.ok()) st = s;
        } else {
          const status s = gemm(inner, transpose::yes, transpose::no, T(1), wm, dym, T(0), make_view(dcol.data(), K, P));
          if (!s.ok()) st = s;
          nn_detail::col2im_image(dcol.data(), g, dxp, opt.accumulate_input, phases.data());
        }
      }
    }
  });
  if (!st.ok()) return st;
  if (!dw.empty()) {
    T* out = dw.data();
    for (index_t co = 0; co < Co; ++co)
      for (index_t k = 0; k < K; ++k) {
        const T s = nn_detail::sum_thread_parts(dw_part, threads, Co * Kc, co * Kc + k);
        out[co * K + k] = opt.accumulate_params ? out[co * K + k] + s : s;
      }
  }
  if (!db.empty())
    for (index_t co = 0; co < Co; ++co) {
      const T s = fuse_db ? nn_detail::sum_thread_parts(dw_part, threads, Co * Kc, co * Kc + K)
                          : nn_detail::sum_thread_parts(db_part, threads, Co, co);
      db(co) = opt.accumulate_params ? db(co) + s : s;
    }
  return {};
}

/// Conv2d layer owning W (Co, Ci, kh, kw) and b (Co); fan_in = Ci kh kw. Owns the CUDA workspace
/// (grown on first use for a batch size).
template <class T, class Space = host_space>
class conv2d {
 public:
  index_t in_channels = 0, out_channels = 0, kernel_h = 0, kernel_w = 0;
  conv2d_params params;
  parameter<T, Space> weight, bias;
  tensor<std::byte, Space> workspace;  // conv2d_workspace_size bytes (none on the CPU)

  conv2d() = default;
  conv2d(const std::string& name, index_t ci, index_t co, index_t k, conv2d_params p = {}, const init_options& init = {},
         bool with_bias = true)
      : in_channels(ci),
        out_channels(co),
        kernel_h(k),
        kernel_w(k),
        params(p),
        weight(name + ".weight", {co, ci, k, k}),
        bias(with_bias ? parameter<T, Space>(name + ".bias", {co}) : parameter<T, Space>{}) {
    throw_if_error(init_weight_and_bias(weight, with_bias ? &bias : nullptr, ci * k * k, co * k * k, init));
  }

  /// Output shape for an input of (B, Ci, H, W).
  tensor_shape output_shape(index_t B, index_t H, index_t W) const {
    return {B, out_channels, conv2d_output_extent(H, kernel_h, params.stride_h, params.pad_h),
            conv2d_output_extent(W, kernel_w, params.stride_w, params.pad_w)};
  }

  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 4, Space> x, out_view<T, 4, Space> y) {
    DISTILL_TRY(reserve(ctx, x));
    return conv2d_forward(ctx, x, nn_detail::value_of<4>(weight), nn_detail::value_of<1>(bias), y, workspace.template view<1>(),
                          params);
  }
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 4, Space> x, in_view<T, 4, Space> dy, out_view<T, 4, Space> dx) {
    DISTILL_TRY(reserve(ctx, x));
    return conv2d_backward(ctx, x, nn_detail::value_of<4>(weight), dy, dx, nn_detail::grad_if_trainable<4>(weight),
                           nn_detail::grad_if_trainable<1>(bias), workspace.template view<1>(), params, layer_grad_options);
  }
  parameter_list<T, Space> parameters() { return nn_detail::weight_and_bias(weight, bias); }

 private:
  template <class Ctx>
  status reserve(const Ctx& ctx, const tensor_view<const T, 4, Space>& x) {
    const auto s = output_shape(x.extent(0), x.extent(2), x.extent(3));
    const auto n = static_cast<index_t>(conv2d_workspace_size<T>(ctx, x.extent(0), in_channels, out_channels, kernel_h, kernel_w, s[2], s[3]));
    if (n > workspace.size()) return workspace.resize({n});
    return {};
  }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_conv2d.cuh"
#endif
