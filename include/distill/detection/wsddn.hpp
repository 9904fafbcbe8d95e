// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The two-stream head of a weakly-supervised detector: Bilen & Vedaldi, "Weakly Supervised Deep
//! Detection Networks" (WSDDN, CVPR 2016), the teacher of Liu et al., "Multi-Label Image
//! Classification via Knowledge Distillation from Weakly-Supervised Detection" (ACM MM 2018).
//! Trained from image-level labels only: each of R proposals of an image gets a classification
//! logit x and a detection logit y per class; the classification stream normalises over classes,
//! the detection stream over proposals, and their product summed over proposals is the image's
//! class score.
//!
//! Per image, proposal r, class k (κc, κr = class_scale, region_scale; Liu et al. use a learnable
//! scale initialised at 2, here a fixed option):
//!   a_rk = softmax_k(κc x_r.)          (classification stream: which class is proposal r)
//!   d_rk = softmax_r(κr y_.k)          (detection stream: which proposal shows class k)
//!   ρ_rk = a_rk d_rk                   region score (detections: rank proposals of class k by it)
//!   s_k  = sum_r ρ_rk  in [0, 1]       image score
//! Backward from g_k = dL/ds_k:
//!   dL/dx_rk = κc a_rk (g_k d_rk - u_r),   u_r = sum_j g_j a_rj d_rj
//!   dL/dy_rk = κr g_k d_rk (a_rk - s_k)
//! Image-level loss of wsddn_forward_backward, labels t_k in {0, 1}, ŝ = clamp(s, 0, 1) (a guard
//! against rounding only: s <= 1 exactly), ε = probability_eps:
//!   l_k = -(t_k log(ŝ_k + ε) + (1 - t_k) log(1 - ŝ_k + ε)),    dl_k/ds_k = -t_k / (ŝ_k + ε) + (1 - t_k) / (1 - ŝ_k + ε)
//! (binary cross-entropy on the probabilities, smoothed by ε so that it is bounded by -log ε and
//! differentiable everywhere), reduced over the B images: none loss[b] = sum_k l_bk; sum; mean
//! (divided by B C); batchmean (divided by B). g = grad_scale dL/ds.
//!
//! Entry points (CPU here; CUDA overloads with the same arguments in kernels/distill/cuda/wsddn.cuh):
//!   wsddn_forward(ctx, logits, image_scores [B, C], region_scores [B, R, C] or {}, workspace, options)
//!   wsddn_backward(ctx, logits, grad_image_scores [B, C], grads, workspace, options)
//!   wsddn_forward_backward(ctx, logits, labels [B, C], image_scores [B, C] or {}, loss, grads, workspace, options)
//!   wsddn_workspace_size(ctx, images, regions, classes)    bytes of `workspace`: 0 on the CPU
//! logits: wsddn_streams{classification, detection}, each [B, R, C] of float or double on the CPU,
//! float on CUDA (const or not; CUDA needs unit stride along classes); grads: wsddn_streams of
//! the same shapes (overwritten, or added to with `accumulate`); scores of the logits' element
//! type; loss (1), or (B) with reduction none, of accum_t.
//!
//! Bad input: shapes, strides, scales <= 0 or non-finite, ε outside (0, 1/2), labels other than
//! 0/1 -> status (CUDA cannot inspect device labels: a nonzero label counts as 1 there). NaN
//! logits give NaN in their image; a proposal whose classification logits are all -inf, or a
//! class whose detection logits are all -inf, gives NaN (an empty softmax).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

struct wsddn_options {
  float class_scale = 1.0f;        ///< κc > 0: classification logits are multiplied by it before their softmax
  float region_scale = 1.0f;       ///< κr > 0: detection logits alike
  float probability_eps = 1e-6f;   ///< ε in (0, 1/2) of the image-level binary cross-entropy
  distill::reduction reduction = distill::reduction::batchmean;  ///< of the loss over images
  float grad_scale = 1.0f;         ///< upstream gradient dTotal/dL (forward_backward)
  bool accumulate = false;         ///< add to `grads` instead of overwriting them
  /// CPU: refuse NaN or +inf logits (-inf stays allowed: a class or proposal of probability 0)
  /// and non-finite upstream gradients with errc::non_finite before computing; off, they
  /// propagate to the images that use them. CUDA: not inspected (docs/reliability.md).
  bool check_finite = false;
};

/// The two streams of a WSDDN head, [B, R, C] each: logits (inputs) or their gradients (outputs).
template <class T, class Space>
struct wsddn_streams {
  tensor_view<T, 3, Space> classification;  ///< x: softmax over classes per proposal
  tensor_view<T, 3, Space> detection;       ///< y: softmax over proposals per class
};
template <class T>
using wsddn_host_streams = wsddn_streams<T, host_space>;

/// Bytes of `workspace` the entry points need on `ctx`: none on the CPU; on CUDA two floats per
/// proposal (the classification softmax's statistics) and one per image (its loss), rounded up to
/// 256 bytes.
template <class Ctx>
constexpr std::size_t wsddn_workspace_size(const Ctx&, index_t images, index_t regions, index_t /*classes*/) noexcept {
  if constexpr (std::is_same_v<Ctx, cuda>) {
    const std::size_t B = static_cast<std::size_t>(images < 0 ? 0 : images), R = static_cast<std::size_t>(regions < 0 ? 0 : regions);
    return ((2 * B * R + B) * sizeof(float) + 255) / 256 * 256;
  } else {
    return 0;
  }
}

namespace wsddn_detail {

template <class V>
status check_stream(const char* fn, const char* name, const V& v) {
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_nonempty(fn, name, v));
  return check_strides(fn, name, v);
}

template <class L>
status check_logits(const char* fn, const L& logits, const wsddn_options& opt) {
  DISTILL_TRY(check_stream(fn, "logits.classification", logits.classification));
  DISTILL_TRY(check_stream(fn, "logits.detection", logits.detection));
  DISTILL_TRY(check_same_shape(fn, "logits.detection", logits.detection, "logits.classification", logits.classification));
  DISTILL_TRY(check_positive(fn, "class_scale", opt.class_scale));
  DISTILL_TRY(check_positive(fn, "region_scale", opt.region_scale));
  if (!(opt.probability_eps > 0.0f && opt.probability_eps < 0.5f))
    return fail(errc::invalid_argument, fn, "'probability_eps' must be in (0, 1/2), got " + check_detail::num(static_cast<double>(opt.probability_eps)));
  if (!std::isfinite(opt.grad_scale)) return fail(errc::invalid_argument, fn, "'grad_scale' must be finite");
  if (opt.check_finite) {
    DISTILL_TRY(check_finite(fn, "logits.classification", logits.classification, finite_rule::finite_or_minus_inf));
    DISTILL_TRY(check_finite(fn, "logits.detection", logits.detection, finite_rule::finite_or_minus_inf));
  }
  return {};
}

template <class L, class G>
status check_grads(const char* fn, const L& logits, const G& grads) {
  DISTILL_TRY(check_stream(fn, "grads.classification", grads.classification));
  DISTILL_TRY(check_stream(fn, "grads.detection", grads.detection));
  DISTILL_TRY(check_same_shape(fn, "grads.classification", grads.classification, "logits.classification", logits.classification));
  return check_same_shape(fn, "grads.detection", grads.detection, "logits.classification", logits.classification);
}

template <class V>
status check_image_matrix(const char* fn, const char* name, const V& v, index_t B, index_t C) {
  DISTILL_TRY(check_shape(fn, name, v, {B, C}));
  return check_strides(fn, name, v);
}

/// The arguments of the fused loss beyond the logits and gradients.
template <class L, class VL, class VS, class VLoss>
status check_loss_args(const char* fn, const L& logits, const VL& labels, const VS& image_scores, const VLoss& loss, const wsddn_options& opt) {
  const index_t B = logits.classification.extent(0), C = logits.classification.extent(2);
  DISTILL_TRY(check_present(fn, "labels", labels));
  DISTILL_TRY(check_image_matrix(fn, "labels", labels, B, C));
  if (!image_scores.empty()) DISTILL_TRY(check_image_matrix(fn, "image_scores", image_scores, B, C));
  DISTILL_TRY(check_present(fn, "loss", loss));
  return check_shape(fn, "loss", loss, {opt.reduction == reduction::none ? B : index_t(1)});
}

/// D of the loss's reduction over B images of C classes.
template <class Acc>
Acc loss_divisor(const wsddn_options& opt, index_t B, index_t C) {
  return opt.reduction == reduction::mean ? static_cast<Acc>(B * C) : opt.reduction == reduction::batchmean ? static_cast<Acc>(B) : Acc(1);
}

/// One image's streams: a (R x C) and d (R x C) row-major, and s (C).
template <class Acc>
struct image_state {
  std::vector<Acc> a, d, s;
};

/// Fills a, d, s of image b.
template <class L, class Acc>
void image_forward(const L& logits, index_t b, Acc kc, Acc kr, image_state<Acc>& st) {
  using std::exp;
  const index_t R = logits.classification.extent(1), C = logits.classification.extent(2);
  st.a.resize(static_cast<std::size_t>(R * C));
  st.d.resize(static_cast<std::size_t>(R * C));
  st.s.assign(static_cast<std::size_t>(C), Acc(0));
  for (index_t r = 0; r < R; ++r) {  // softmax over classes
    Acc m = -INFINITY;
    for (index_t k = 0; k < C; ++k) m = std::max(m, kc * static_cast<Acc>(logits.classification(b, r, k)));
    Acc z = 0;
    for (index_t k = 0; k < C; ++k) z += st.a[static_cast<std::size_t>(r * C + k)] = exp(kc * static_cast<Acc>(logits.classification(b, r, k)) - m);
    for (index_t k = 0; k < C; ++k) st.a[static_cast<std::size_t>(r * C + k)] /= z;
  }
  for (index_t k = 0; k < C; ++k) {  // softmax over proposals
    Acc m = -INFINITY;
    for (index_t r = 0; r < R; ++r) m = std::max(m, kr * static_cast<Acc>(logits.detection(b, r, k)));
    Acc z = 0;
    for (index_t r = 0; r < R; ++r) z += st.d[static_cast<std::size_t>(r * C + k)] = exp(kr * static_cast<Acc>(logits.detection(b, r, k)) - m);
    for (index_t r = 0; r < R; ++r) {
      Acc& d = st.d[static_cast<std::size_t>(r * C + k)];
      d /= z;
      st.s[static_cast<std::size_t>(k)] += st.a[static_cast<std::size_t>(r * C + k)] * d;
    }
  }
}

/// Writes the gradients of image b from g (C values, dL/ds).
template <class G, class Acc>
void image_backward(const G& grads, index_t b, const image_state<Acc>& st, const Acc* g, Acc kc, Acc kr, bool accumulate) {
  using T = typename decltype(grads.classification)::value_type;
  const index_t R = grads.classification.extent(1), C = grads.classification.extent(2);
  for (index_t r = 0; r < R; ++r) {
    const Acc* a = &st.a[static_cast<std::size_t>(r * C)];
    const Acc* d = &st.d[static_cast<std::size_t>(r * C)];
    Acc u = 0;
    for (index_t k = 0; k < C; ++k) u += g[k] * a[k] * d[k];
    for (index_t k = 0; k < C; ++k) {
      const Acc gx = kc * a[k] * (g[k] * d[k] - u), gy = kr * g[k] * d[k] * (a[k] - st.s[static_cast<std::size_t>(k)]);
      T& ox = grads.classification(b, r, k);
      T& oy = grads.detection(b, r, k);
      ox = static_cast<T>(accumulate ? static_cast<Acc>(ox) + gx : gx);
      oy = static_cast<T>(accumulate ? static_cast<Acc>(oy) + gy : gy);
    }
  }
}

template <class T>
constexpr void check_types() {
  static_assert(std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, double>,
                "wsddn on the CPU takes float or double logits");
}

}  // namespace wsddn_detail

/// Image scores s [B, C] and, when given, region scores ρ [B, R, C] (the detections).
template <class TL, class TS>
[[nodiscard]] status wsddn_forward(const cpu& ctx, const wsddn_host_streams<TL>& logits, host_view<TS, 2> image_scores,
                                   host_view<TS, 3> region_scores, host_view<std::byte, 1> /*workspace*/, const wsddn_options& opt = {}) {
  using T = std::remove_const_t<TL>;
  wsddn_detail::check_types<T>();
  static_assert(std::is_same_v<TS, T>, "wsddn_forward: scores must be non-const views of the logits' element type");
  using Acc = accum_t<T>;
  constexpr const char* fn = "wsddn_forward";
  DISTILL_TRY(wsddn_detail::check_logits(fn, logits, opt));
  const index_t B = logits.classification.extent(0), R = logits.classification.extent(1), C = logits.classification.extent(2);
  DISTILL_TRY(wsddn_detail::check_image_matrix(fn, "image_scores", image_scores, B, C));
  if (!region_scores.empty()) {
    DISTILL_TRY(check_shape(fn, "region_scores", region_scores, {B, R, C}));
    DISTILL_TRY(check_strides(fn, "region_scores", region_scores));
  }
  const Acc kc = static_cast<Acc>(opt.class_scale), kr = static_cast<Acc>(opt.region_scale);
  parallel_for(ctx, B, [&](index_t b0, index_t b1) {
    wsddn_detail::image_state<Acc> st;
    for (index_t b = b0; b < b1; ++b) {
      wsddn_detail::image_forward(logits, b, kc, kr, st);
      for (index_t k = 0; k < C; ++k) image_scores(b, k) = static_cast<T>(st.s[static_cast<std::size_t>(k)]);
      if (!region_scores.empty())
        for (index_t r = 0; r < R; ++r)
          for (index_t k = 0; k < C; ++k)
            region_scores(b, r, k) = static_cast<T>(st.a[static_cast<std::size_t>(r * C + k)] * st.d[static_cast<std::size_t>(r * C + k)]);
    }
  });
  return {};
}

/// Gradients of both streams from dL/ds [B, C] (any loss on the image scores). grad_scale and
/// reduction are not applied here: grad_image_scores is the whole upstream gradient.
template <class TL, class TG, class TO>
[[nodiscard]] status wsddn_backward(const cpu& ctx, const wsddn_host_streams<TL>& logits, host_view<TG, 2> grad_image_scores,
                                    const wsddn_host_streams<TO>& grads, host_view<std::byte, 1> /*workspace*/, const wsddn_options& opt = {}) {
  using T = std::remove_const_t<TL>;
  wsddn_detail::check_types<T>();
  static_assert(std::is_same_v<std::remove_const_t<TG>, T> && std::is_same_v<TO, T>,
                "wsddn_backward: grad_image_scores and grads are of the logits' element type (grads non-const)");
  using Acc = accum_t<T>;
  constexpr const char* fn = "wsddn_backward";
  DISTILL_TRY(wsddn_detail::check_logits(fn, logits, opt));
  DISTILL_TRY(wsddn_detail::check_grads(fn, logits, grads));
  const index_t B = logits.classification.extent(0), C = logits.classification.extent(2);
  DISTILL_TRY(check_present(fn, "grad_image_scores", grad_image_scores));
  DISTILL_TRY(wsddn_detail::check_image_matrix(fn, "grad_image_scores", grad_image_scores, B, C));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "grad_image_scores", grad_image_scores));
  const Acc kc = static_cast<Acc>(opt.class_scale), kr = static_cast<Acc>(opt.region_scale);
  parallel_for(ctx, B, [&](index_t b0, index_t b1) {
    wsddn_detail::image_state<Acc> st;
    std::vector<Acc> g(static_cast<std::size_t>(C));
    for (index_t b = b0; b < b1; ++b) {
      wsddn_detail::image_forward(logits, b, kc, kr, st);
      for (index_t k = 0; k < C; ++k) g[static_cast<std::size_t>(k)] = static_cast<Acc>(grad_image_scores(b, k));
      wsddn_detail::image_backward(grads, b, st, g.data(), kc, kr, opt.accumulate);
    }
  });
  return {};
}

/// Image scores, the image-level loss against 0/1 labels and the gradients of both streams in
/// one pass. `image_scores` may be absent ({}); `loss` is (1), or (B) with reduction none.
template <class TL, class TO, class TS = std::remove_const_t<TL>>
[[nodiscard]] status wsddn_forward_backward(const cpu& ctx, const wsddn_host_streams<TL>& logits, host_view<const std::uint8_t, 2> labels,
                                            host_view<TS, 2> image_scores, host_view<accum_t<TL>, 1> loss, const wsddn_host_streams<TO>& grads,
                                            host_view<std::byte, 1> /*workspace*/, const wsddn_options& opt = {}) {
  using T = std::remove_const_t<TL>;
  wsddn_detail::check_types<T>();
  static_assert(std::is_same_v<TS, T> && std::is_same_v<TO, T>, "wsddn_forward_backward: scores and grads are non-const views of the logits' type");
  using Acc = accum_t<T>;
  using std::log;
  constexpr const char* fn = "wsddn_forward_backward";
  DISTILL_TRY(wsddn_detail::check_logits(fn, logits, opt));
  DISTILL_TRY(wsddn_detail::check_grads(fn, logits, grads));
  const index_t B = logits.classification.extent(0), C = logits.classification.extent(2);
  DISTILL_TRY(wsddn_detail::check_loss_args(fn, logits, labels, image_scores, loss, opt));
  const bool per_image = opt.reduction == reduction::none;
  for (index_t b = 0; b < B; ++b)
    for (index_t k = 0; k < C; ++k)
      if (labels(b, k) > 1)
        return fail(errc::invalid_argument, fn, "labels must be 0 or 1; labels(" + std::to_string(b) + ", " + std::to_string(k) + ") = " +
                                                    std::to_string(static_cast<int>(labels(b, k))));
  const Acc divisor = wsddn_detail::loss_divisor<Acc>(opt, B, C);
  const Acc gscale = static_cast<Acc>(opt.grad_scale) / divisor, eps = static_cast<Acc>(opt.probability_eps);
  const Acc kc = static_cast<Acc>(opt.class_scale), kr = static_cast<Acc>(opt.region_scale);
  std::vector<Acc> image_loss(static_cast<std::size_t>(B));
  parallel_for(ctx, B, [&](index_t b0, index_t b1) {
    wsddn_detail::image_state<Acc> st;
    std::vector<Acc> g(static_cast<std::size_t>(C));
    for (index_t b = b0; b < b1; ++b) {
      wsddn_detail::image_forward(logits, b, kc, kr, st);
      Acc l = 0;
      for (index_t k = 0; k < C; ++k) {
        const Acc s = std::clamp(st.s[static_cast<std::size_t>(k)], Acc(0), Acc(1));
        const bool pos = labels(b, k) != 0;
        l -= pos ? log(s + eps) : log(Acc(1) - s + eps);
        g[static_cast<std::size_t>(k)] = gscale * (pos ? -Acc(1) / (s + eps) : Acc(1) / (Acc(1) - s + eps));
        if (!image_scores.empty()) image_scores(b, k) = static_cast<T>(st.s[static_cast<std::size_t>(k)]);
      }
      image_loss[static_cast<std::size_t>(b)] = l;
      wsddn_detail::image_backward(grads, b, st, g.data(), kc, kr, opt.accumulate);
    }
  });
  if (per_image) {
    for (index_t b = 0; b < B; ++b) loss(b) = image_loss[static_cast<std::size_t>(b)];
  } else {
    Acc total = 0;  // images in order: the same bits for any thread count
    for (const Acc l : image_loss) total += l;
    loss(0) = total / divisor;
  }
  return {};
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/wsddn.cuh"
#endif
