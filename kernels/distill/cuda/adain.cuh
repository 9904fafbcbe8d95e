// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA kernels of include/distill/features/adain.hpp.
//!   AdaIN forward / backward: one block per channel (b, c); the content and style statistics are
//!   Welford partials merged across the block (Chan), then one pass writes the output (forward)
//!   or the style and content gradients after two block sums of g and g * x_hat (backward).
//!   Reads: content and style twice (statistics, then the elementwise pass; a channel is small
//!   and usually still in L2), grad_out twice in the backward.
//!   AdaIN statistics loss: the channel machinery of feature_stats.cuh with the adain term; for
//!   planes up to 4096 positions both planes stay in registers, so the fused pass reads fs and
//!   ft once and writes the gradient once (3 x 4 bytes per position in fp32).

#if !defined(__CUDACC__)
#error "distill/cuda/adain.cuh must be compiled by nvcc"
#endif

#include <climits>

#include "distill/cuda/feature_stats.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/features/adain.hpp"

namespace distill {
namespace features_cuda_detail {

template <class Acc, class TX, class TY, class TO, class TGY>
struct adain_args {
  cuda_view<const TX, 4> x;    ///< content
  cuda_view<const TY, 4> y;    ///< style
  cuda_view<const TO, 4> g;    ///< backward: grad_out (content shape)
  cuda_view<TO, 4> out;        ///< forward: output (content shape)
  cuda_view<TGY, 4> grad_y;    ///< backward: style gradient
  cuda_view<TX, 4> grad_x;     ///< backward: content gradient, may be absent
  Acc eps;
  bool unbiased, accumulate;
  bool x_contig, y_contig, g_contig, out_contig, gy_contig, gx_contig;
};

template <int BlockSize, class Acc, class TX, class TY, class TO, class TGY>
__global__ void __launch_bounds__(BlockSize) adain_forward_block_per_channel_kernel(adain_args<Acc, TX, TY, TO, TGY> a) {
  __shared__ welford_smem<BlockSize, Acc> smem;
  const index_t C = a.x.extent(1), p = blockIdx.x, b = p / C, c = p % C;
  const int nx = static_cast<int>(a.x.extent(2) * a.x.extent(3)), wxw = static_cast<int>(a.x.extent(3));
  const int ny = static_cast<int>(a.y.extent(2) * a.y.extent(3)), wyw = static_cast<int>(a.y.extent(3));
  const TX* xp = a.x.data() + b * a.x.stride(0) + c * a.x.stride(1);
  const TY* yp = a.y.data() + b * a.y.stride(0) + c * a.y.stride(1);
  pivoted_moments<Acc> mx = thread_plane_stats<BlockSize, 0, Acc>(xp, nx, wxw, a.x.stride(2), a.x_contig, nullptr);
  pivoted_moments<Acc> my = thread_plane_stats<BlockSize, 0, Acc>(yp, ny, wyw, a.y.stride(2), a.y_contig, nullptr);
  block_welford_pair<BlockSize>(mx.shifted, my.shifted, smem.pair());  // both planes in one exchange
  const Acc ratio = features_detail::sigma_of(my.shifted, a.unbiased, a.eps) / features_detail::sigma_of(mx.shifted, a.unbiased, a.eps);
  const Acc mu_y = my.absolute().mean;
  TO* op = a.out.data() + b * a.out.stride(0) + c * a.out.stride(1);
  for (int i = static_cast<int>(threadIdx.x); i < nx; i += BlockSize) {
    const Acc v = load<Acc>(xp[plane_offset(i, wxw, a.x.stride(2), a.x_contig)]);
    op[plane_offset(i, wxw, a.out.stride(2), a.out_contig)] = store<TO>(mu_y + ratio * ((v - mx.pivot) - mx.shifted.mean));
  }
}

template <int BlockSize, class Acc, class TX, class TY, class TO, class TGY>
__global__ void __launch_bounds__(BlockSize) adain_backward_block_per_channel_kernel(adain_args<Acc, TX, TY, TO, TGY> a) {
  __shared__ welford_smem<BlockSize, Acc> smem;
  const index_t C = a.x.extent(1), p = blockIdx.x, b = p / C, c = p % C;
  const int nx = static_cast<int>(a.x.extent(2) * a.x.extent(3)), wxw = static_cast<int>(a.x.extent(3));
  const int ny = static_cast<int>(a.y.extent(2) * a.y.extent(3)), wyw = static_cast<int>(a.y.extent(3));
  const TX* xp = a.x.data() + b * a.x.stride(0) + c * a.x.stride(1);
  const TY* yp = a.y.data() + b * a.y.stride(0) + c * a.y.stride(1);
  const TO* gp = a.g.data() + b * a.g.stride(0) + c * a.g.stride(1);
  pivoted_moments<Acc> mx = thread_plane_stats<BlockSize, 0, Acc>(xp, nx, wxw, a.x.stride(2), a.x_contig, nullptr);
  pivoted_moments<Acc> my = thread_plane_stats<BlockSize, 0, Acc>(yp, ny, wyw, a.y.stride(2), a.y_contig, nullptr);
  block_welford_pair<BlockSize>(mx.shifted, my.shifted, smem.pair());  // both planes in one exchange
  const Acc sx = features_detail::sigma_of(mx.shifted, a.unbiased, a.eps);
  Acc sum_g = Acc(0), sum_gx = Acc(0);
  for (int i = static_cast<int>(threadIdx.x); i < nx; i += BlockSize) {
    const Acc g = load<Acc>(gp[plane_offset(i, wxw, a.g.stride(2), a.g_contig)]);
    const Acc xv = load<Acc>(xp[plane_offset(i, wxw, a.x.stride(2), a.x_contig)]);
    sum_g += g;
    sum_gx += g * (((xv - mx.pivot) - mx.shifted.mean) / sx);
  }
  {  // both sums in one exchange
    using two = cuda_detail::sums<Acc, 2>;
    const two r = cuda_detail::block_all_reduce<BlockSize>(two{{sum_g, sum_gx}}, cuda_detail::sums_op{}, two{}, smem.template as<two>());
    sum_g = r.v[0];
    sum_gx = r.v[1];
  }
  const auto k = features_detail::adain_backward_coefficients(mx, my, sum_g, sum_gx, a.unbiased, a.eps);
  TGY* gyp = a.grad_y.data() + b * a.grad_y.stride(0) + c * a.grad_y.stride(1);
  for (int i = static_cast<int>(threadIdx.x); i < ny; i += BlockSize) {
    const index_t off = plane_offset(i, wyw, a.grad_y.stride(2), a.gy_contig);
    const Acc v = k.style.at(load<Acc>(yp[plane_offset(i, wyw, a.y.stride(2), a.y_contig)]));
    gyp[off] = store<TGY>(a.accumulate ? load<Acc>(gyp[off]) + v : v);
  }
  if (a.grad_x.empty()) return;
  TX* gxp = a.grad_x.data() + b * a.grad_x.stride(0) + c * a.grad_x.stride(1);
  for (int i = static_cast<int>(threadIdx.x); i < nx; i += BlockSize) {
    const index_t off = plane_offset(i, wxw, a.grad_x.stride(2), a.gx_contig);
    const Acc g = load<Acc>(gp[plane_offset(i, wxw, a.g.stride(2), a.g_contig)]);
    const Acc xv = load<Acc>(xp[plane_offset(i, wxw, a.x.stride(2), a.x_contig)]);
    const Acc v = k.g_coef * g + k.content.at(xv);
    gxp[off] = store<TX>(a.accumulate ? load<Acc>(gxp[off]) + v : v);
  }
}

template <class XV, class YV>
status check_adain_sizes(const char* fn, const XV& x, const YV& y) {
  if (x.extent(0) * x.extent(1) > INT_MAX || x.extent(2) * x.extent(3) > INT_MAX || y.extent(2) * y.extent(3) > INT_MAX)
    return fail(errc::shape_mismatch, fn, "more than 2^31 - 1 channels or positions per channel are not supported on CUDA");
  return {};
}

}  // namespace features_cuda_detail

/// CUDA AdaIN forward: out = AdaIN(content; style).
template <class TX, class TY>
[[nodiscard]] status adain_forward(const cuda& ctx, cuda_view<TX, 4> content, cuda_view<TY, 4> style,
                                   cuda_view<std::remove_const_t<TX>, 4> out, const adain_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<TX>();
  features_cuda_detail::static_check_cuda_type<TY>();
  using Acc = accum_t<TX>;
  using UX = std::remove_const_t<TX>;
  using UY = std::remove_const_t<TY>;
  constexpr const char* fn = "adain_forward";
  DISTILL_TRY(features_detail::check_adain_forward_args(fn, content, style, out, opt));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "content", content));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "style", style));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "out", out));
  DISTILL_TRY(features_cuda_detail::check_adain_sizes(fn, content, style));
  using features_cuda_detail::plane_contiguous;
  features_cuda_detail::adain_args<Acc, UX, UY, UX, UY> a{content, style, {}, out, {}, {}, static_cast<Acc>(opt.eps),
                                                          opt.unbiased, false, plane_contiguous(content),
                                                          plane_contiguous(style), true, plane_contiguous(out), true, true};
  cudaStream_t st = cuda_detail::stream_of(ctx);
  features_cuda_detail::adain_forward_block_per_channel_kernel<256>
      <<<static_cast<unsigned>(content.extent(0) * content.extent(1)), 256, 0, st>>>(a);
  return cuda_detail::launch_status(fn, st);
}

/// CUDA AdaIN backward: grad_style and (optional) grad_content from grad_out. grad_out has the
/// content's element type.
template <class TX, class TY, class TGO>
[[nodiscard]] status adain_backward(const cuda& ctx, cuda_view<TX, 4> content, cuda_view<TY, 4> style,
                                    cuda_view<TGO, 4> grad_out, cuda_view<std::remove_const_t<TY>, 4> grad_style,
                                    cuda_view<std::remove_const_t<TX>, 4> grad_content, const adain_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<TX>();
  features_cuda_detail::static_check_cuda_type<TY>();
  static_assert(std::is_same_v<std::remove_const_t<TGO>, std::remove_const_t<TX>>,
                "adain_backward (CUDA): grad_out must have the content's element type");
  using Acc = accum_t<TX>;
  using UX = std::remove_const_t<TX>;
  using UY = std::remove_const_t<TY>;
  constexpr const char* fn = "adain_backward";
  DISTILL_TRY(features_detail::check_adain_backward_args(fn, content, style, grad_out, grad_style, grad_content, opt));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "content", content));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "style", style));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_out", grad_out));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_style", grad_style));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_content", grad_content));
  DISTILL_TRY(features_cuda_detail::check_adain_sizes(fn, content, style));
  using features_cuda_detail::plane_contiguous;
  features_cuda_detail::adain_args<Acc, UX, UY, UX, UY> a{content,
                                                          style,
                                                          grad_out,
                                                          {},
                                                          grad_style,
                                                          grad_content,
                                                          static_cast<Acc>(opt.eps),
                                                          opt.unbiased,
                                                          opt.accumulate,
                                                          plane_contiguous(content),
                                                          plane_contiguous(style),
                                                          plane_contiguous(grad_out),
                                                          true,
                                                          plane_contiguous(grad_style),
                                                          plane_contiguous(grad_content)};
  cudaStream_t st = cuda_detail::stream_of(ctx);
  features_cuda_detail::adain_backward_block_per_channel_kernel<256>
      <<<static_cast<unsigned>(content.extent(0) * content.extent(1)), 256, 0, st>>>(a);
  return cuda_detail::launch_status(fn, st);
}

// ---- AdaIN statistics loss on CUDA: `workspace` of adain_stats_loss_workspace_size(ctx, B, C) bytes
// ---- whenever `loss` is present.
namespace features_cuda_detail {
template <class TS, class TT>
status adain_stats_loss_cuda(const char* fn, const cuda& ctx, cuda_view<TS, 4> s, cuda_view<TT, 4> t,
                             cuda_view<accum_t<TS>, 1> loss, cuda_view<std::remove_const_t<TS>, 4> grad,
                             cuda_view<std::byte, 1> workspace, const adain_stats_loss_options& opt) {
  DISTILL_TRY(features_detail::check_adain_stats_options(fn, opt));
  return channel_loss_cuda(fn, ctx, s, t, loss, grad, workspace, opt, features_detail::make_adain_stats_term<accum_t<TS>>(opt),
                           "adain_stats_loss_workspace_size");
}
}  // namespace features_cuda_detail

template <class TS, class TT>
[[nodiscard]] status adain_stats_loss_forward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TT, 4> teacher,
                                              cuda_view<accum_t<TS>, 1> loss, cuda_view<std::byte, 1> workspace,
                                              const adain_stats_loss_options& opt = {}) {
  constexpr const char* fn = "adain_stats_loss_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_cuda_detail::adain_stats_loss_cuda(fn, ctx, student, teacher, loss, {}, workspace, opt);
}
template <class TS, class TT>
[[nodiscard]] status adain_stats_loss_backward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TT, 4> teacher,
                                               cuda_view<std::remove_const_t<TS>, 4> grad_student,
                                               cuda_view<std::byte, 1> /*workspace: not needed*/,
                                               const adain_stats_loss_options& opt = {}) {
  constexpr const char* fn = "adain_stats_loss_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::adain_stats_loss_cuda(fn, ctx, student, teacher, {}, grad_student, {}, opt);
}
template <class TS, class TT>
[[nodiscard]] status adain_stats_loss_forward_backward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TT, 4> teacher,
                                                       cuda_view<accum_t<TS>, 1> loss,
                                                       cuda_view<std::remove_const_t<TS>, 4> grad_student,
                                                       cuda_view<std::byte, 1> workspace,
                                                       const adain_stats_loss_options& opt = {}) {
  constexpr const char* fn = "adain_stats_loss_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::adain_stats_loss_cuda(fn, ctx, student, teacher, loss, grad_student, workspace, opt);
}

}  // namespace distill
