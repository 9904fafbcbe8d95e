// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Axis-aligned boxes for detectors: the pairwise IoU matrix, clipping to the image, and the
//! Faster R-CNN box coder (Ren et al. 2015, torchvision's `BoxCoder`) with the gradient of the
//! decode. Boxes are rows [x1, y1, x2, y2] in continuous coordinates (x2 >= x1, y2 >= y1;
//! width = x2 - x1, no "+1"), as torchvision.ops uses them.
//!
//! IoU (the one implementation in distill; box_geometry.hpp, NMS and the metrics call it):
//!   I = max(0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
//!   IoU(a, b) = I / (area(a) + area(b) - I),   0 when the union is 0 (two empty boxes)
//!
//! Clip:  x -> min(max(x, 0), width),  y -> min(max(y, 0), height)   (clip_boxes_to_image)
//!
//! Box coder, proposal P (centre (px, py), size (pw, ph)) and target G, weights (wx, wy, ww, wh):
//!   encode  dx = wx (gx - px) / pw,  dy = wy (gy - py) / ph,  dw = ww log(gw / pw),  dh = wh log(gh / ph)
//!   decode  cx = px + pw dx / wx,    cy = py + ph dy / wy,
//!           w  = pw exp(min(dw / ww, c)),  h = ph exp(min(dh / wh, c))   (c = max_log_scale)
//!           box = [cx - w/2, cy - h/2, cx + w/2, cy + h/2]
//! Gradient of the decode (a loss on decoded boxes, e.g. GIoU), g = dL/d[x1, y1, x2, y2]:
//!   dL/ddx = (g_x1 + g_x2) pw / wx,   dL/ddw = (g_x2 - g_x1) w / (2 ww)   (0 where dw/ww > c,
//!   the clamp is flat; the same for y and h). Proposals get no gradient (they are inputs).
//! Faster R-CNN's RoI head uses weights (10, 10, 5, 5), its RPN (1, 1, 1, 1); c = log(1000/16).
//!
//! Entry points (CUDA overloads with the same arguments in kernels/distill/cuda/boxes.cuh):
//!   box_iou(ctx, boxes_a [N, 4], boxes_b [M, 4], iou [N, M])
//!   box_match(ctx, boxes [N, 4], targets [M, 4], matched [N] (int64), matched_iou [N])
//!       for each box the target of largest IoU (first on ties; -1 and IoU 0 when M = 0): the
//!       proposal-to-ground-truth assignment of a detector head (threshold matched_iou, e.g.
//!       >= 0.5 foreground, < 0.5 background, as Fast R-CNN)
//!   box_clip(ctx, boxes [N, 4], clipped [N, 4], box_clip_options)        (in place allowed)
//!   box_encode(ctx, proposals [N, 4], targets [N, 4], deltas [N, 4], box_coder_options)
//!   box_decode_forward(ctx, proposals, deltas, boxes [N, 4], box_coder_options)
//!   box_decode_backward(ctx, proposals, deltas, grad_boxes, grad_deltas [N, 4], box_coder_options)
//! CPU: float or double; CUDA: float. None needs scratch memory.
//!
//! Bad input: the CPU path refuses non-finite coordinates (errc::non_finite) and inverted boxes
//! (x2 < x1 or y2 < y1, errc::invalid_argument); the coder also refuses proposals and targets
//! of zero width or height (their log is -inf). The CUDA path cannot inspect values without a
//! synchronisation: there such boxes give inf or NaN, as the formulas do.

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

struct box_clip_options {
  float width = 0.0f;   ///< image width: x is clipped to [0, width]
  float height = 0.0f;  ///< image height: y is clipped to [0, height]
};

struct box_coder_options {
  float weight_x = 1.0f, weight_y = 1.0f, weight_w = 1.0f, weight_h = 1.0f;  ///< (wx, wy, ww, wh), > 0
  float max_log_scale = 4.135166556742356f;  ///< c: dw / ww and dh / wh are clamped to <= c (log(1000/16))
  bool accumulate = false;                   ///< backward: add into grad_deltas instead of overwriting
};

namespace detection_detail {

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc box_area(const Acc b[4]) noexcept {
  const Acc w = b[2] - b[0], h = b[3] - b[1];
  return (w > Acc(0) ? w : Acc(0)) * (h > Acc(0) ? h : Acc(0));
}

/// IoU of two [x1, y1, x2, y2] boxes (0 when both are empty).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc iou(const Acc a[4], const Acc b[4]) noexcept {
  const Acc iw = (a[2] < b[2] ? a[2] : b[2]) - (a[0] > b[0] ? a[0] : b[0]);
  const Acc ih = (a[3] < b[3] ? a[3] : b[3]) - (a[1] > b[1] ? a[1] : b[1]);
  const Acc inter = (iw > Acc(0) ? iw : Acc(0)) * (ih > Acc(0) ? ih : Acc(0));
  const Acc uni = box_area(a) + box_area(b) - inter;
  return uni > Acc(0) ? inter / uni : Acc(0);
}

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void clip(const Acc b[4], Acc width, Acc height, Acc out[4]) noexcept {
  const Acc lim[4] = {width, height, width, height};
  for (int k = 0; k < 4; ++k) {
    const Acc v = b[k] > Acc(0) ? b[k] : Acc(0);
    out[k] = v < lim[k] ? v : lim[k];
  }
}

template <class Acc>
struct coder_weights {
  Acc w[4];       // wx, wy, ww, wh
  Acc max_scale;  // c
};
template <class Acc>
coder_weights<Acc> coder_weights_of(const box_coder_options& o) noexcept {
  return {{Acc(o.weight_x), Acc(o.weight_y), Acc(o.weight_w), Acc(o.weight_h)}, Acc(o.max_log_scale)};
}

/// Centre and size of a box: c[0..1] = centre, c[2..3] = width, height.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void centre_size(const Acc b[4], Acc c[4]) noexcept {
  c[2] = b[2] - b[0], c[3] = b[3] - b[1];
  c[0] = b[0] + Acc(0.5) * c[2], c[1] = b[1] + Acc(0.5) * c[3];
}

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void encode(const Acc p[4], const Acc g[4], const coder_weights<Acc>& cw,
                                                    Acc d[4]) noexcept {
  using std::log;
  Acc pc[4], gc[4];
  centre_size(p, pc);
  centre_size(g, gc);
  d[0] = cw.w[0] * (gc[0] - pc[0]) / pc[2];
  d[1] = cw.w[1] * (gc[1] - pc[1]) / pc[3];
  d[2] = cw.w[2] * log(gc[2] / pc[2]);
  d[3] = cw.w[3] * log(gc[3] / pc[3]);
}

/// Decoded box; `scale` gets exp(min(d/w, c)) per axis and `clamped` whether the clamp bit.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void decode(const Acc p[4], const Acc d[4], const coder_weights<Acc>& cw, Acc out[4],
                                                    Acc size[2], bool clamped[2]) noexcept {
  using std::exp;
  Acc pc[4];
  centre_size(p, pc);
  const Acc cx = pc[0] + pc[2] * d[0] / cw.w[0], cy = pc[1] + pc[3] * d[1] / cw.w[1];
  const Acc lw = d[2] / cw.w[2], lh = d[3] / cw.w[3];
  clamped[0] = lw > cw.max_scale, clamped[1] = lh > cw.max_scale;
  size[0] = pc[2] * exp(clamped[0] ? cw.max_scale : lw);
  size[1] = pc[3] * exp(clamped[1] ? cw.max_scale : lh);
  out[0] = cx - Acc(0.5) * size[0], out[1] = cy - Acc(0.5) * size[1];
  out[2] = cx + Acc(0.5) * size[0], out[3] = cy + Acc(0.5) * size[1];
}

/// dL/d(deltas) from dL/d(decoded box) g.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void decode_backward(const Acc p[4], const Acc d[4], const coder_weights<Acc>& cw,
                                                             const Acc g[4], Acc gd[4]) noexcept {
  Acc out[4], size[2];
  bool clamped[2];
  decode(p, d, cw, out, size, clamped);
  const Acc pw = p[2] - p[0], ph = p[3] - p[1];
  gd[0] = (g[0] + g[2]) * pw / cw.w[0];
  gd[1] = (g[1] + g[3]) * ph / cw.w[1];
  gd[2] = clamped[0] ? Acc(0) : (g[2] - g[0]) * Acc(0.5) * size[0] / cw.w[2];
  gd[3] = clamped[1] ? Acc(0) : (g[3] - g[1]) * Acc(0.5) * size[1] / cw.w[3];
}

template <class V>
inline constexpr bool host_real_v = std::is_same_v<typename V::value_type, float> || std::is_same_v<typename V::value_type, double>;

/// A [rows, 4] box matrix (rows < 0: any count). Zero rows may come with a null pointer.
template <class V>
status check_boxes(const char* fn, const char* name, const V& v, index_t rows = -1) {
  static_assert(V::rank == 2, "boxes are [N, 4] matrices");
  if (v.extent(1) != 4 || (rows >= 0 && v.extent(0) != rows))
    return fail(errc::shape_mismatch, fn,
                std::string("'") + name + "' has shape " + check_detail::shape_of(v) + ", expected [" +
                    (rows >= 0 ? std::to_string(rows) : std::string("N")) + ", 4]");
  if (v.extent(0) == 0) return {};
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_strides(fn, name, v));
  return check_aligned(fn, name, v);
}

/// CPU: coordinates finite and x2 >= x1, y2 >= y1 (strictly, when `positive_size`).
template <class V>
status check_box_values(const char* fn, const char* name, const V& v, bool positive_size = false) {
  for (index_t r = 0; r < v.extent(0); ++r) {
    double b[4];
    for (int k = 0; k < 4; ++k) b[k] = static_cast<double>(v(r, k));
    for (int k = 0; k < 4; ++k)
      if (!std::isfinite(b[k]))
        return fail(errc::non_finite, fn, std::string("'") + name + "' box " + std::to_string(r) + " is not finite");
    const bool ok = positive_size ? (b[2] > b[0] && b[3] > b[1]) : (b[2] >= b[0] && b[3] >= b[1]);
    if (!ok)
      return fail(errc::invalid_argument, fn,
                  std::string("'") + name + "' box " + std::to_string(r) +
                      (positive_size ? " has zero or negative width or height" : " is inverted (needs x2 >= x1 and y2 >= y1)"));
  }
  return {};
}

inline status check_coder_options(const char* fn, const box_coder_options& o) {
  DISTILL_TRY(check_positive(fn, "weight_x", o.weight_x));
  DISTILL_TRY(check_positive(fn, "weight_y", o.weight_y));
  DISTILL_TRY(check_positive(fn, "weight_w", o.weight_w));
  DISTILL_TRY(check_positive(fn, "weight_h", o.weight_h));
  if (!std::isfinite(o.max_log_scale)) return fail(errc::invalid_argument, fn, "'max_log_scale' must be finite");
  return {};
}

inline status check_clip_options(const char* fn, const box_clip_options& o) {
  if (!(o.width >= 0.0f) || !(o.height >= 0.0f) || !std::isfinite(o.width) || !std::isfinite(o.height))
    return fail(errc::invalid_argument, fn, "'width' and 'height' must be finite and >= 0");
  return {};
}

/// Shapes shared by both backends.
template <class VA, class VB, class VI>
status check_iou_views(const char* fn, const VA& a, const VB& b, const VI& iou) {
  DISTILL_TRY(check_boxes(fn, "boxes_a", a));
  DISTILL_TRY(check_boxes(fn, "boxes_b", b));
  DISTILL_TRY(check_shape(fn, "iou", iou, {a.extent(0), b.extent(0)}));
  if (iou.size() == 0) return {};
  DISTILL_TRY(check_present(fn, "iou", iou));
  DISTILL_TRY(check_strides(fn, "iou", iou));
  return check_aligned(fn, "iou", iou);
}

template <class VB, class VT, class VM, class VI>
status check_match_views(const char* fn, const VB& boxes, const VT& targets, const VM& matched, const VI& matched_iou) {
  const index_t n = boxes.extent(0);
  DISTILL_TRY(check_boxes(fn, "boxes", boxes));
  DISTILL_TRY(check_boxes(fn, "targets", targets));
  DISTILL_TRY(check_extent(fn, "matched", matched, 0, n, "one per box"));
  DISTILL_TRY(check_extent(fn, "matched_iou", matched_iou, 0, n, "one per box"));
  if (n > 0) {
    DISTILL_TRY(check_present(fn, "matched", matched));
    DISTILL_TRY(check_present(fn, "matched_iou", matched_iou));
  }
  DISTILL_TRY(check_strides(fn, "matched", matched));
  DISTILL_TRY(check_strides(fn, "matched_iou", matched_iou));
  DISTILL_TRY(check_aligned(fn, "matched", matched));
  return check_aligned(fn, "matched_iou", matched_iou);
}

template <class VP, class VD, class VO>
status check_coder_views(const char* fn, const char* in_name, const VP& proposals, const VD& in, const char* out_name,
                         const VO& out, const box_coder_options& opt) {
  const index_t n = proposals.extent(0);
  DISTILL_TRY(check_boxes(fn, "proposals", proposals));
  DISTILL_TRY(check_boxes(fn, in_name, in, n));
  DISTILL_TRY(check_boxes(fn, out_name, out, n));
  return check_coder_options(fn, opt);
}

template <class T>
void load4(const T& v, index_t r, typename T::value_type out[4]) {
  for (int k = 0; k < 4; ++k) out[k] = v(r, k);
}

}  // namespace detection_detail

/// iou[i, j] = IoU(boxes_a[i], boxes_b[j]).
template <class TA, class TB, class TI>
[[nodiscard]] status box_iou(const cpu& ctx, host_view<TA, 2> boxes_a, host_view<TB, 2> boxes_b, host_view<TI, 2> iou) {
  using T = std::remove_const_t<TA>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box_iou on the CPU takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TB>, T> && std::is_same_v<TI, T>, "box_iou: element types differ (iou non-const)");
  constexpr const char* fn = "box_iou";
  DISTILL_TRY(detection_detail::check_iou_views(fn, boxes_a, boxes_b, iou));
  DISTILL_TRY(detection_detail::check_box_values(fn, "boxes_a", boxes_a));
  DISTILL_TRY(detection_detail::check_box_values(fn, "boxes_b", boxes_b));
  const index_t M = boxes_b.extent(0);
  parallel_for(ctx, boxes_a.extent(0), [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      T a[4], b[4];
      detection_detail::load4(boxes_a, i, a);
      for (index_t j = 0; j < M; ++j) {
        detection_detail::load4(boxes_b, j, b);
        iou(i, j) = detection_detail::iou(a, b);
      }
    }
  }, 16);
  return {};
}

/// matched[i] = argmax_j IoU(boxes[i], targets[j]) (first on ties, -1 when there is no target),
/// matched_iou[i] = that IoU (0 when there is no target).
template <class TB, class TT, class TI>
[[nodiscard]] status box_match(const cpu& ctx, host_view<TB, 2> boxes, host_view<TT, 2> targets, host_view<std::int64_t, 1> matched,
                               host_view<TI, 1> matched_iou) {
  using T = std::remove_const_t<TB>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box_match on the CPU takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TT>, T> && std::is_same_v<TI, T>, "box_match: element types differ (matched_iou non-const)");
  constexpr const char* fn = "box_match";
  DISTILL_TRY(detection_detail::check_match_views(fn, boxes, targets, matched, matched_iou));
  DISTILL_TRY(detection_detail::check_box_values(fn, "boxes", boxes));
  DISTILL_TRY(detection_detail::check_box_values(fn, "targets", targets));
  const index_t M = targets.extent(0);
  parallel_for(ctx, boxes.extent(0), [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      T a[4], b[4];
      detection_detail::load4(boxes, i, a);
      std::int64_t best = -1;
      T best_iou = T(0);
      for (index_t j = 0; j < M; ++j) {
        detection_detail::load4(targets, j, b);
        const T v = detection_detail::iou(a, b);
        if (best < 0 || v > best_iou) best = j, best_iou = v;
      }
      matched(i) = best, matched_iou(i) = best_iou;
    }
  }, 16);
  return {};
}

/// clipped[i] = boxes[i] clipped to [0, width] x [0, height]; `clipped` may be `boxes` itself.
template <class TB, class TC>
[[nodiscard]] status box_clip(const cpu& ctx, host_view<TB, 2> boxes, host_view<TC, 2> clipped, const box_clip_options& opt) {
  using T = std::remove_const_t<TB>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box_clip on the CPU takes float or double");
  static_assert(std::is_same_v<TC, T>, "box_clip: element types differ (clipped non-const)");
  constexpr const char* fn = "box_clip";
  DISTILL_TRY(detection_detail::check_boxes(fn, "boxes", boxes));
  DISTILL_TRY(detection_detail::check_boxes(fn, "clipped", clipped, boxes.extent(0)));
  DISTILL_TRY(detection_detail::check_clip_options(fn, opt));
  DISTILL_TRY(detection_detail::check_box_values(fn, "boxes", boxes));
  parallel_for(ctx, boxes.extent(0), [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      T b[4], c[4];
      detection_detail::load4(boxes, i, b);
      detection_detail::clip(b, T(opt.width), T(opt.height), c);
      for (int k = 0; k < 4; ++k) clipped(i, k) = c[k];
    }
  }, 256);
  return {};
}

/// deltas[i] = encode(proposals[i] -> targets[i]): the regression targets of a detector head.
template <class TP, class TG, class TD>
[[nodiscard]] status box_encode(const cpu& ctx, host_view<TP, 2> proposals, host_view<TG, 2> targets, host_view<TD, 2> deltas,
                                const box_coder_options& opt = {}) {
  using T = std::remove_const_t<TP>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box_encode on the CPU takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TG>, T> && std::is_same_v<TD, T>, "box_encode: element types differ (deltas non-const)");
  constexpr const char* fn = "box_encode";
  DISTILL_TRY(detection_detail::check_coder_views(fn, "targets", proposals, targets, "deltas", deltas, opt));
  DISTILL_TRY(detection_detail::check_box_values(fn, "proposals", proposals, true));
  DISTILL_TRY(detection_detail::check_box_values(fn, "targets", targets, true));
  const auto cw = detection_detail::coder_weights_of<T>(opt);
  parallel_for(ctx, proposals.extent(0), [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      T p[4], g[4], d[4];
      detection_detail::load4(proposals, i, p);
      detection_detail::load4(targets, i, g);
      detection_detail::encode(p, g, cw, d);
      for (int k = 0; k < 4; ++k) deltas(i, k) = d[k];
    }
  }, 256);
  return {};
}

/// boxes[i] = decode(proposals[i], deltas[i]).
template <class TP, class TD, class TB>
[[nodiscard]] status box_decode_forward(const cpu& ctx, host_view<TP, 2> proposals, host_view<TD, 2> deltas, host_view<TB, 2> boxes,
                                        const box_coder_options& opt = {}) {
  using T = std::remove_const_t<TP>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box_decode_forward on the CPU takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TD>, T> && std::is_same_v<TB, T>,
                "box_decode_forward: element types differ (boxes non-const)");
  constexpr const char* fn = "box_decode_forward";
  DISTILL_TRY(detection_detail::check_coder_views(fn, "deltas", proposals, deltas, "boxes", boxes, opt));
  DISTILL_TRY(detection_detail::check_box_values(fn, "proposals", proposals, true));
  const auto cw = detection_detail::coder_weights_of<T>(opt);
  parallel_for(ctx, proposals.extent(0), [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      T p[4], d[4], b[4], size[2];
      bool clamped[2];
      detection_detail::load4(proposals, i, p);
      detection_detail::load4(deltas, i, d);
      detection_detail::decode(p, d, cw, b, size, clamped);
      for (int k = 0; k < 4; ++k) boxes(i, k) = b[k];
    }
  }, 256);
  return {};
}

/// grad_deltas[i] = dL/d(deltas[i]) given grad_boxes[i] = dL/d(decoded box i).
template <class TP, class TD, class TG, class TO>
[[nodiscard]] status box_decode_backward(const cpu& ctx, host_view<TP, 2> proposals, host_view<TD, 2> deltas,
                                         host_view<TG, 2> grad_boxes, host_view<TO, 2> grad_deltas, const box_coder_options& opt = {}) {
  using T = std::remove_const_t<TP>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box_decode_backward on the CPU takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TD>, T> && std::is_same_v<std::remove_const_t<TG>, T> && std::is_same_v<TO, T>,
                "box_decode_backward: element types differ (grad_deltas non-const)");
  constexpr const char* fn = "box_decode_backward";
  DISTILL_TRY(detection_detail::check_coder_views(fn, "deltas", proposals, deltas, "grad_deltas", grad_deltas, opt));
  DISTILL_TRY(detection_detail::check_boxes(fn, "grad_boxes", grad_boxes, proposals.extent(0)));
  DISTILL_TRY(detection_detail::check_box_values(fn, "proposals", proposals, true));
  const auto cw = detection_detail::coder_weights_of<T>(opt);
  parallel_for(ctx, proposals.extent(0), [&](index_t i0, index_t i1) {
    for (index_t i = i0; i < i1; ++i) {
      T p[4], d[4], g[4], gd[4];
      detection_detail::load4(proposals, i, p);
      detection_detail::load4(deltas, i, d);
      detection_detail::load4(grad_boxes, i, g);
      detection_detail::decode_backward(p, d, cw, g, gd);
      for (int k = 0; k < 4; ++k) grad_deltas(i, k) = opt.accumulate ? grad_deltas(i, k) + gd[k] : gd[k];
    }
  }, 256);
  return {};
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/boxes.cuh"
#endif
