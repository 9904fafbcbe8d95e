// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! AdaIN for knowledge distillation (Yang, Martinez, Bulat, Tzimiropoulos, "Knowledge distillation
//! via adaptive instance normalization", arXiv 2003.04289; spec §4.2, §4.3). No official code
//! exists; the transform and its gradients are standard, the way AdaIN-KD composes them (§4.3)
//! is a reconstruction from the abstract [UNVERIFIED].
//!
//! 1. The transform (§4.2), per sample b and channel c, statistics as in feature_stats.hpp (B3):
//!      AdaIN(x; y) = sigma_y (x - mu_x) / sigma_x + mu_y,    x_hat = (x - mu_x) / sigma_x
//!    x = content [B, C, H, W] (the teacher's features), y = style [B, C, H', W'] (the student's).
//!    With upstream g = dL/dAdaIN (content shape):
//!      dL/dmu_y    = sum_hw g                dL/dsigma_y = sum_hw g x_hat
//!      dL/dy       = (1/N_y) dL/dmu_y + (1/N'_y) dL/dsigma_y (y - mu_y) / sigma_y
//!      dL/dx       = (sigma_y / sigma_x) [ g - mean(g) - x_hat * sum(g x_hat) / N'_x ]   (optional)
//!    AdaIN(x; x) = x (the statistics cancel exactly, eps included).
//!
//! 2. AdaIN-KD loss (§4.3, reconstruction): teacher content re-styled with the student's
//!    statistics, then the rest of the frozen teacher O, compared with the teacher's own output:
//!      F~ = AdaIN(F_t; F_s),   L = mse(O(F~), O(F_t))   (mean over every element of O's output;
//!                                                        or the sum, reduction = sum)
//!      dL/dF_s = AdaIN backward to the style input of  O^T-vjp( 2 (O(F~) - O(F_t)) / numel )
//!    `adain_kd_loss_forward_backward` runs it given O as two callables (forward and
//!    vector-Jacobian product); the teacher's weights are never updated.
//!
//! 3. AdaIN statistics loss: the composite used as the performance anchor (the
//!    PyTorch peer `adain(fs, ft)` in bench/peers/compare.py), biased variance and eps = 1e-5 by default:
//!      out = AdaIN(ft; fs)
//!      L   = w_a mse(out, ft) + w_mu mse(mu_s, mu_t) + w_sigma mse(sqrt(v_s), sqrt(v_t))
//!    Note out - ft = (ft - mu_t)(sigma_s / sigma_t - 1) + (mu_s - mu_t), whose square summed over
//!    the channel is N_t [ (sigma_s / sigma_t - 1)^2 M2_t / N_t + (mu_s - mu_t)^2 ], so the whole
//!    loss is a function of the per-channel statistics (sigma = sqrt(v + eps); the std term uses
//!    sqrt(v) without eps, exactly as the peer does):
//!      l_bc = w_a [ r^2 M2_t / N_t + dm^2 ] + w_mu dm^2 + w_sigma (sqrt(v_s) - sqrt(v_t))^2,
//!             r = sigma_s / sigma_t - 1,  dm = mu_s - mu_t
//!      L    = sum_bc l_bc / (B C)        (reduction = mean; batchmean / B, sum / 1)
//!      dl/dmu_s = 2 dm (w_a + w_mu)
//!      dl/dv_s  = w_a r M2_t / (N_t sigma_t sigma_s) + w_sigma (sqrt(v_s) - sqrt(v_t)) / sqrt(v_s)
//!    (the last term is taken as 0 for a constant student channel, where x - mu = 0 anyway), and
//!    the element gradient follows from B3. The fused pass reads fs and ft once and writes the
//!    gradient once. fs and ft must agree on B and C; their spatial sizes may differ.
//!
//! Bad input: as in feature_stats.hpp (shapes, eps <= 0, unbiased with one position, NaN/inf ->
//! non_finite on the CPU, propagated on CUDA).

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/features/feature_stats.hpp"

namespace distill {

struct adain_options {
  double eps = 1e-5;
  bool unbiased = false;
  bool accumulate = false;  ///< backward: add into grad_style / grad_content
  bool check_finite = false;  ///< CPU: refuse NaN/inf inputs before computing (docs/reliability.md)
};

/// The "AdaIN statistics loss" (item 3 of the header comment).
struct adain_stats_loss_options {
  double eps = 1e-5;
  bool unbiased = false;
  double adain_weight = 1.0;  ///< w_a: mse(AdaIN(ft; fs), ft)
  double mean_weight = 1.0;   ///< w_mu: mse(mu_s, mu_t)
  double std_weight = 1.0;    ///< w_sigma: mse(sqrt(v_s), sqrt(v_t))
  distill::reduction reduction = distill::reduction::mean;
  double grad_scale = 1.0;
  bool accumulate = false;
  bool check_finite = false;  ///< CPU: refuse NaN/inf inputs before computing (docs/reliability.md)
};

/// AdaIN-KD loss (item 2).
struct adain_kd_options {
  double eps = 1e-5;
  bool unbiased = false;
  distill::reduction reduction = distill::reduction::mean;  ///< mean: mse over every output element; sum: squared L2
  double grad_scale = 1.0;
  bool accumulate = false;  ///< add into grad_student
  bool check_finite = false;  ///< CPU: refuse NaN/inf inputs before computing (docs/reliability.md)
};

namespace features_detail {

template <class Acc>
struct adain_stats_term {
  Acc adain_weight, mean_weight, std_weight, eps;
  bool unbiased;
  DISTILL_HOST_DEVICE channel_term_result<Acc> operator()(index_t, const welford_state<Acc>& s,
                                                          const welford_state<Acc>& t) const noexcept {
    using std::sqrt;
    channel_term_result<Acc> res;
    const Acc vs = variance_of(s, unbiased), vt = variance_of(t, unbiased);
    const Acc sig_s = sqrt(vs + eps), sig_t = sqrt(vt + eps);
    const Acc r = sig_s / sig_t - Acc(1);
    const Acc spread_t = t.n > Acc(0) ? t.m2 / t.n : Acc(0);  // mean over ft's positions of (ft - mu_t)^2
    const Acc dm = s.mean - t.mean;
    const Acc rs = sqrt(vs), rt = sqrt(vt);
    res.loss = adain_weight * (r * r * spread_t + dm * dm) + mean_weight * dm * dm + std_weight * (rs - rt) * (rs - rt);
    res.d_mean = Acc(2) * dm * (adain_weight + mean_weight);
    res.d_var = adain_weight * r * spread_t / (sig_t * sig_s);
    if (rs > Acc(0)) res.d_var += std_weight * (rs - rt) / rs;
    return res;
  }
};

template <class Acc>
adain_stats_term<Acc> make_adain_stats_term(const adain_stats_loss_options& o) {
  return {static_cast<Acc>(o.adain_weight), static_cast<Acc>(o.mean_weight), static_cast<Acc>(o.std_weight),
          static_cast<Acc>(o.eps), o.unbiased};
}

inline status check_adain_stats_options(const char* fn, const adain_stats_loss_options& o) {
  DISTILL_TRY(check_eps(fn, o.eps));
  DISTILL_TRY(check_loss_reduction(fn, o.reduction));
  if (!std::isfinite(o.adain_weight) || !std::isfinite(o.mean_weight) || !std::isfinite(o.std_weight) ||
      !std::isfinite(o.grad_scale))
    return fail(errc::invalid_argument, fn, "the term weights and 'grad_scale' must be finite");
  return {};
}

/// Content/style pair: same B and C, spatial sizes free.
template <class XV, class YV>
status check_adain_pair(const char* fn, const XV& x, const YV& y, bool unbiased) {
  DISTILL_TRY(check_input(fn, "content", x));
  DISTILL_TRY(check_input(fn, "style", y));
  DISTILL_TRY(check_extent(fn, "style", y, 0, x.extent(0), "batch size of 'content'"));
  DISTILL_TRY(check_extent(fn, "style", y, 1, x.extent(1), "channels of 'content'"));
  DISTILL_TRY(check_plane_dof(fn, "content", x.extent(2) * x.extent(3), unbiased));
  DISTILL_TRY(check_plane_dof(fn, "style", y.extent(2) * y.extent(3), unbiased));
  return {};
}

/// Checks shared by the CPU and CUDA adain_forward: eps, the pair, out (content's shape).
template <class XV, class YV, class OV>
status check_adain_forward_args(const char* fn, const XV& content, const YV& style, const OV& out, const adain_options& opt) {
  DISTILL_TRY(check_eps(fn, opt.eps));
  DISTILL_TRY(check_adain_pair(fn, content, style, opt.unbiased));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "content", content, "style", style));
  return check_output(fn, "out", out, {content.extent(0), content.extent(1), content.extent(2), content.extent(3)});
}

/// Checks shared by the CPU and CUDA adain_backward: eps, the pair, grad_out (content's shape),
/// grad_style (style's shape) and the optional grad_content (content's shape).
template <class XV, class YV, class GOV, class GYV, class GXV>
status check_adain_backward_args(const char* fn, const XV& content, const YV& style, const GOV& grad_out, const GYV& grad_style,
                                 const GXV& grad_content, const adain_options& opt) {
  DISTILL_TRY(check_eps(fn, opt.eps));
  DISTILL_TRY(check_adain_pair(fn, content, style, opt.unbiased));
  const index_t cx[4] = {content.extent(0), content.extent(1), content.extent(2), content.extent(3)};
  DISTILL_TRY(check_input(fn, "grad_out", grad_out));
  DISTILL_TRY(check_shape(fn, "grad_out", grad_out, cx));
  DISTILL_TRY(check_output(fn, "grad_style", grad_style, {style.extent(0), style.extent(1), style.extent(2), style.extent(3)}));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "content", content, "style", style, "grad_out", grad_out));
  return check_optional(fn, "grad_content", grad_content, cx);
}

/// sigma = sqrt(v + eps).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc sigma_of(const welford_state<Acc>& s, bool unbiased, Acc eps) noexcept {
  using std::sqrt;
  return sqrt(variance_of(s, unbiased) + eps);
}

/// Per channel: the affine maps of the AdaIN backward, from the statistics and the two sums
/// sum_g = sum g, sum_gx = sum g x_hat over the content plane.
template <class Acc>
struct adain_backward_coefs {
  channel_grad_coef<Acc> style;    ///< grad_y = style.at(y)
  channel_grad_coef<Acc> content;  ///< grad_x = g_coef g + content.at(x)
  Acc g_coef;
};
/// From the (pivoted) statistics of x and y and the content-plane sums sum_g = sum g and
/// sum_gx = sum g x_hat.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE adain_backward_coefs<Acc> adain_backward_coefficients(
    const pivoted_moments<Acc>& mx, const pivoted_moments<Acc>& my, Acc sum_g, Acc sum_gx, bool unbiased, Acc eps) noexcept {
  adain_backward_coefs<Acc> k;
  const welford_state<Acc>& wx = mx.shifted;
  const welford_state<Acc>& wy = my.shifted;
  const Acc sx = sigma_of(wx, unbiased, eps), sy = sigma_of(wy, unbiased, eps);
  k.style.mu = wy.mean;
  k.style.pivot = my.pivot;
  k.style.mean_coef = sum_g / wy.n;
  const Acc dof_y = variance_dof(wy.n, unbiased);
  k.style.var_coef = dof_y > Acc(0) ? sum_gx / (dof_y * sy) : Acc(0);
  const Acc a = sy / sx;
  const Acc dof_x = variance_dof(wx.n, unbiased);
  k.g_coef = a;
  k.content.mean_coef = -a * sum_g / wx.n;
  k.content.var_coef = dof_x > Acc(0) ? -a * sum_gx / (dof_x * sx) : Acc(0);
  k.content.mu = wx.mean;
  k.content.pivot = mx.pivot;
  return k;
}

}  // namespace features_detail

// =============================================================================================
// AdaIN transform (CPU)
// =============================================================================================

/// out [B, C, H, W] = AdaIN(content; style).
template <class TX, class TY>
[[nodiscard]] status adain_forward(const cpu& ctx, host_view<TX, 4> content, host_view<TY, 4> style,
                                   host_view<std::remove_const_t<TX>, 4> out, const adain_options& opt = {}) {
  features_detail::static_check_cpu_type<TX>();
  features_detail::static_check_cpu_type<TY>();
  using Acc = accum_t<TX>;
  constexpr const char* fn = "adain_forward";
  DISTILL_TRY(features_detail::check_adain_forward_args(fn, content, style, out, opt));
  const Acc eps = static_cast<Acc>(opt.eps);
  const index_t C = content.extent(1);
  const auto part = parallel_sum<features_detail::loss_partial<Acc>>(ctx, content.extent(0) * C, [&](index_t p0, index_t p1) {
    features_detail::loss_partial<Acc> part;
    for (index_t p = p0; p < p1; ++p) {
      const index_t b = p / C, c = p % C;
      const auto mx = features_detail::channel_moments<Acc>(content, b, c);
      const auto my = features_detail::channel_moments<Acc>(style, b, c);
      const auto wx = mx.absolute(), wy = my.absolute();
      part.bad_student = part.bad_student || !features_detail::moments_finite(wx);
      part.bad_teacher = part.bad_teacher || !features_detail::moments_finite(wy);
      features_detail::channel_grad_coef<Acc> map;  // out = mu_y + (sigma_y / sigma_x) (x - mu_x)
      map.mu = mx.shifted.mean;
      map.pivot = mx.pivot;
      map.mean_coef = wy.mean;
      map.var_coef = features_detail::sigma_of(wy, opt.unbiased, eps) / features_detail::sigma_of(wx, opt.unbiased, eps);
      features_detail::write_channel_grad(out, content, b, c, map, false);
    }
    return part;
  });
  return features_detail::report_flags(fn, part, "content", "style");
}

/// grad_style [B, C, H', W'] and (optional) grad_content [B, C, H, W] from grad_out [B, C, H, W].
template <class TX, class TY, class TGO>
[[nodiscard]] status adain_backward(const cpu& ctx, host_view<TX, 4> content, host_view<TY, 4> style,
                                    host_view<TGO, 4> grad_out, host_view<std::remove_const_t<TY>, 4> grad_style,
                                    host_view<std::remove_const_t<TX>, 4> grad_content, const adain_options& opt = {}) {
  features_detail::static_check_cpu_type<TX>();
  features_detail::static_check_cpu_type<TY>();
  features_detail::static_check_cpu_type<TGO>();
  using Acc = accum_t<TX>;
  constexpr const char* fn = "adain_backward";
  DISTILL_TRY(features_detail::check_adain_backward_args(fn, content, style, grad_out, grad_style, grad_content, opt));
  const Acc eps = static_cast<Acc>(opt.eps);
  const index_t C = content.extent(1), H = content.extent(2), W = content.extent(3);
  const auto part = parallel_sum<features_detail::loss_partial<Acc>>(ctx, content.extent(0) * C, [&](index_t p0, index_t p1) {
    features_detail::loss_partial<Acc> part;
    for (index_t p = p0; p < p1; ++p) {
      const index_t b = p / C, c = p % C;
      const auto mx = features_detail::channel_moments<Acc>(content, b, c);
      const auto my = features_detail::channel_moments<Acc>(style, b, c);
      part.bad_student = part.bad_student || !features_detail::moments_finite(mx.absolute());
      part.bad_teacher = part.bad_teacher || !features_detail::moments_finite(my.absolute());
      const Acc sx = features_detail::sigma_of(mx.shifted, opt.unbiased, eps);
      Acc sum_g = Acc(0), sum_gx = Acc(0);
      for (index_t h = 0; h < H; ++h)
        for (index_t w = 0; w < W; ++w) {
          const Acc g = load<Acc>(grad_out(b, c, h, w));
          sum_g += g;
          sum_gx += g * (((load<Acc>(content(b, c, h, w)) - mx.pivot) - mx.shifted.mean) / sx);
        }
      const auto k = features_detail::adain_backward_coefficients(mx, my, sum_g, sum_gx, opt.unbiased, eps);
      features_detail::write_channel_grad(grad_style, style, b, c, k.style, opt.accumulate);
      if (grad_content.empty()) continue;
      for (index_t h = 0; h < H; ++h)
        for (index_t w = 0; w < W; ++w) {
          auto& dst = grad_content(b, c, h, w);
          const Acc v = k.g_coef * load<Acc>(grad_out(b, c, h, w)) + k.content.at(load<Acc>(content(b, c, h, w)));
          dst = store<std::remove_const_t<TX>>(opt.accumulate ? load<Acc>(dst) + v : v);
        }
    }
    return part;
  });
  return features_detail::report_flags(fn, part, "content", "style");
}

// =============================================================================================
// AdaIN statistics loss (CPU)
// =============================================================================================
namespace features_detail {
template <class TS, class TT>
status adain_stats_loss_cpu(const char* fn, const cpu& ctx, host_view<TS, 4> s, host_view<TT, 4> t,
                            host_view<accum_t<TS>, 1> loss, host_view<std::remove_const_t<TS>, 4> grad,
                            const adain_stats_loss_options& opt) {
  DISTILL_TRY(check_adain_stats_options(fn, opt));
  return channel_loss_cpu(fn, ctx, s, t, loss, grad, opt, make_adain_stats_term<accum_t<TS>>(opt));
}
}  // namespace features_detail

/// AdaIN statistics loss of student fs [B, C, H, W] against teacher ft [B, C, H', W'].
template <class TS, class TT>
[[nodiscard]] status adain_stats_loss_forward(const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
                                              host_view<accum_t<TS>, 1> loss, host_view<std::byte, 1> /*workspace*/,
                                              const adain_stats_loss_options& opt = {}) {
  constexpr const char* fn = "adain_stats_loss_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_detail::adain_stats_loss_cpu(fn, ctx, student, teacher, loss, {}, opt);
}
template <class TS, class TT>
[[nodiscard]] status adain_stats_loss_backward(const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
                                               host_view<std::remove_const_t<TS>, 4> grad_student,
                                               host_view<std::byte, 1> /*workspace*/,
                                               const adain_stats_loss_options& opt = {}) {
  constexpr const char* fn = "adain_stats_loss_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::adain_stats_loss_cpu(fn, ctx, student, teacher, {}, grad_student, opt);
}
template <class TS, class TT>
[[nodiscard]] status adain_stats_loss_forward_backward(const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
                                                       host_view<accum_t<TS>, 1> loss,
                                                       host_view<std::remove_const_t<TS>, 4> grad_student,
                                                       host_view<std::byte, 1> /*workspace*/,
                                                       const adain_stats_loss_options& opt = {}) {
  constexpr const char* fn = "adain_stats_loss_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::adain_stats_loss_cpu(fn, ctx, student, teacher, loss, grad_student, opt);
}

/// Bytes of scratch of the AdaIN statistics loss for `batch` x `channels` statistics of element
/// type T: as stats_matching_workspace_size (the same per-channel accumulators on CUDA, none on
/// the CPU).
template <class T = float, class Ctx>
constexpr std::size_t adain_stats_loss_workspace_size(const Ctx& ctx, index_t batch, index_t channels) noexcept {
  return stats_matching_workspace_size<T>(ctx, batch, channels);
}

// =============================================================================================
// AdaIN-KD loss through the teacher's next layer (CPU and CUDA; the context picks the backend)
// =============================================================================================

/// Activations the AdaIN-KD helper works in (the caller owns them; nothing is allocated). T is
/// the student's element type; R x K is the shape of the teacher head's output.
template <class T, class Space>
struct adain_kd_buffers {
  tensor_view<T, 4, Space> mixed;        ///< [B, C, H, W] (teacher's shape): AdaIN(F_t; F_s)
  tensor_view<T, 4, Space> grad_mixed;   ///< [B, C, H, W]: dL/dF~
  tensor_view<T, 2, Space> out_mixed;    ///< [R, K]: O(F~)
  tensor_view<T, 2, Space> out_teacher;  ///< [R, K]: O(F_t)
  tensor_view<T, 2, Space> grad_out;     ///< [R, K]: dL/dO(F~)
};

/// Bytes of scratch of the AdaIN-KD loss for a teacher head with R output rows (the output
/// loss is an embedding alignment over them), element type T.
template <class T = float, class Ctx>
constexpr std::size_t adain_kd_loss_workspace_size(const Ctx& ctx, index_t head_rows) noexcept {
  return embedding_alignment_workspace_size<T>(ctx, head_rows);
}

namespace features_detail {
template <class T, class Space, class TV>
status check_adain_kd_buffers(const char* fn, const adain_kd_buffers<T, Space>& ws, const TV& teacher, bool backward) {
  const index_t tx[4] = {teacher.extent(0), teacher.extent(1), teacher.extent(2), teacher.extent(3)};
  DISTILL_TRY(check_present(fn, "buffers.mixed", ws.mixed));
  DISTILL_TRY(check_shape(fn, "buffers.mixed", ws.mixed, tx));
  DISTILL_TRY(check_input(fn, "buffers.out_mixed", ws.out_mixed));
  DISTILL_TRY(check_present(fn, "buffers.out_teacher", ws.out_teacher));
  DISTILL_TRY(check_same_shape(fn, "buffers.out_teacher", ws.out_teacher, "buffers.out_mixed", ws.out_mixed));
  if (backward) {
    DISTILL_TRY(check_present(fn, "buffers.grad_mixed", ws.grad_mixed));
    DISTILL_TRY(check_shape(fn, "buffers.grad_mixed", ws.grad_mixed, tx));
    DISTILL_TRY(check_present(fn, "buffers.grad_out", ws.grad_out));
    DISTILL_TRY(check_same_shape(fn, "buffers.grad_out", ws.grad_out, "buffers.out_mixed", ws.out_mixed));
  }
  return {};
}
inline embedding_alignment_options adain_kd_output_loss(const adain_kd_options& o) {
  embedding_alignment_options e;
  e.metric = o.reduction == reduction::sum ? embedding_metric::squared_l2 : embedding_metric::mse;
  e.reduction = o.reduction == reduction::sum ? reduction::sum : reduction::batchmean;  // mse/batchmean = mean over R*K
  e.grad_scale = o.grad_scale;
  return e;
}

template <class Ctx, class TS, class TT, class T, class Space, class HeadForward>
status adain_kd_forward_part(const char* fn, const Ctx& ctx, tensor_view<TS, 4, Space> student,
                             tensor_view<TT, 4, Space> teacher, HeadForward&& head_forward,
                             const adain_kd_buffers<T, Space>& ws, const adain_kd_options& opt) {
  static_assert(std::is_same_v<std::remove_const_t<TS>, T> && std::is_same_v<std::remove_const_t<TT>, T>,
                "adain_kd: student, teacher and workspace must share one element type");
  DISTILL_TRY(check_eps(fn, opt.eps));
  if (opt.reduction != reduction::mean && opt.reduction != reduction::sum)
    return fail(errc::invalid_argument, fn, "'reduction' must be reduction::mean (mse) or reduction::sum");
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "student", student, "teacher", teacher));
  adain_options a;
  a.eps = opt.eps;
  a.unbiased = opt.unbiased;
  DISTILL_TRY(adain_forward(ctx, teacher, student, ws.mixed, a));
  DISTILL_TRY(head_forward(as_const(ws.mixed), ws.out_mixed));
  DISTILL_TRY(head_forward(tensor_view<const T, 4, Space>(teacher), ws.out_teacher));
  return {};
}
}  // namespace features_detail

/// L = mse(O(AdaIN(F_t; F_s)), O(F_t)) written to loss (1). `head_forward(in, out)` computes the
/// frozen teacher head O: in = tensor_view<const T, 4, Space> [B, C, H, W], out = tensor_view<T, 2,
/// Space> [R, K]; it returns distill::status. `workspace`: adain_kd_loss_workspace_size(ctx, R).
template <class Ctx, class TS, class TT, class T, class Space, class HeadForward>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status adain_kd_loss_forward(const Ctx& ctx, tensor_view<TS, 4, Space> student,
                                           tensor_view<TT, 4, Space> teacher, HeadForward&& head_forward,
                                           tensor_view<accum_t<TS>, 1, Space> loss, const adain_kd_buffers<T, Space>& buffers,
                                           tensor_view<std::byte, 1, Space> workspace, const adain_kd_options& opt = {}) {
  constexpr const char* fn = "adain_kd_loss_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  DISTILL_TRY(features_detail::check_channel_pair(fn, student, teacher, opt.unbiased));
  DISTILL_TRY(features_detail::check_adain_kd_buffers(fn, buffers, teacher, false));
  DISTILL_TRY(features_detail::adain_kd_forward_part(fn, ctx, student, teacher, head_forward, buffers, opt));
  return embedding_alignment_forward(ctx, as_const(buffers.out_mixed), as_const(buffers.out_teacher), {}, {}, loss, workspace,
                                     features_detail::adain_kd_output_loss(opt));
}

/// Loss (may be absent) and dL/dF_s [B, C, H', W'] (times grad_scale). `head_vjp(in, grad_out,
/// grad_in)` is the vector-Jacobian product of O at `in`: in = tensor_view<const T, 4, Space>,
/// grad_out = tensor_view<const T, 2, Space> [R, K], grad_in = tensor_view<T, 4, Space>; it
/// overwrites grad_in and returns distill::status.
template <class Ctx, class TS, class TT, class T, class Space, class HeadForward, class HeadVjp>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status adain_kd_loss_forward_backward(const Ctx& ctx, tensor_view<TS, 4, Space> student,
                                                    tensor_view<TT, 4, Space> teacher, HeadForward&& head_forward,
                                                    HeadVjp&& head_vjp, tensor_view<accum_t<TS>, 1, Space> loss,
                                                    tensor_view<std::remove_const_t<TS>, 4, Space> grad_student,
                                                    const adain_kd_buffers<T, Space>& buffers,
                                                    tensor_view<std::byte, 1, Space> workspace,
                                                    const adain_kd_options& opt = {}) {
  constexpr const char* fn = "adain_kd_loss_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  DISTILL_TRY(features_detail::check_channel_pair(fn, student, teacher, opt.unbiased));
  DISTILL_TRY(features_detail::check_adain_kd_buffers(fn, buffers, teacher, true));
  DISTILL_TRY(features_detail::adain_kd_forward_part(fn, ctx, student, teacher, head_forward, buffers, opt));
  DISTILL_TRY(embedding_alignment_forward_backward(ctx, as_const(buffers.out_mixed), as_const(buffers.out_teacher), {}, {},
                                                   loss, buffers.grad_out, workspace,
                                                   features_detail::adain_kd_output_loss(opt)));
  DISTILL_TRY(head_vjp(as_const(buffers.mixed), as_const(buffers.grad_out), buffers.grad_mixed));
  adain_options a;
  a.eps = opt.eps;
  a.unbiased = opt.unbiased;
  a.accumulate = opt.accumulate;
  return adain_backward(ctx, teacher, student, as_const(buffers.grad_mixed), grad_student,
                        tensor_view<std::remove_const_t<TT>, 4, Space>{}, a);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/adain.cuh"
#endif
