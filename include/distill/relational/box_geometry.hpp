// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Pairwise box geometry of RVL-BERT's spatial module (Chiou, Zimmermann, Feng, IEEE Access
//! 2021; math spec §9.1, the `USE_COORD_VECTOR` encoding): the 19 coordinate features of a
//! subject box s and an object box o, plus their IoU. Boxes are [x1, y1, x2, y2] in
//! image-normalised coordinates (divided by the image width and height, so the image area is 1),
//! with x2 > x1 and y2 > y1. w = x2 - x1, h = y2 - y1.
//!
//!   index  feature                        formula
//!   0..3   subject box                    s.x1, s.y1, s.x2, s.y2
//!   4      subject area ratio             w_s h_s                  (box area / image area)
//!   5      x offset, subject vs object    (s.x1 - o.x1) / w_o
//!   6      y offset, subject vs object    (s.y1 - o.y1) / h_o
//!   7      log width ratio                log(w_s / w_o)
//!   8      log height ratio               log(h_s / h_o)
//!   9      x offset, object vs subject    (o.x1 - s.x1) / w_s
//!   10     y offset, object vs subject    (o.y1 - s.y1) / h_s
//!   11     log width ratio, reverse       log(w_o / w_s)
//!   12     log height ratio, reverse      log(h_o / h_s)
//!   13     union-box area ratio           area of the smallest box enclosing both (RVL-BERT's
//!                                         "union"/predicate box) / image area
//!   14..17 object box                     o.x1, o.y1, o.x2, o.y2
//!   18     object area ratio              w_o h_o
//!   19     IoU (not among the 19)         I / (w_s h_s + w_o h_o - I), I = intersection area
//!
//! Reconstruction notes: the spec lists the 19 dimensions as subject box + area ratio, 9
//! relative features (the 4 VTransE-style offsets/log ratios, the 4 reverse terms, the union
//! area ratio) and object box + area ratio. Offsets use the top-left corners (as VTransE does).
//! RVL-BERT's loop fills only row 0 of its batch (a bug, not reproduced here).
//!
//! Differentiable with respect to both boxes almost everywhere: features 13 and 19 have kinks
//! where edges coincide (ties go to the subject box) and IoU is flat (gradient 0) for disjoint
//! boxes. `box_pair_features_backward` gives that gradient.
//!
//! Bad input: on the CPU boxes must be finite with x2 > x1 and y2 > y1 (errc::non_finite /
//! errc::invalid_argument). The CUDA path cannot inspect values without a synchronisation:
//! there a degenerate box gives inf or NaN features, as the formulas do.

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/math.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/detection/boxes.hpp"

namespace distill {

inline constexpr int box_pair_feature_count = 20;

struct box_features_options {
  bool accumulate = false;  ///< the backward adds into the box gradients instead of overwriting them
};

/// P (subject, object) box pairs, [P, 4] each: named, so the two cannot be swapped by position.
template <class T, class Space = host_space>
struct box_pairs {
  tensor_view<const T, 2, Space> subject;
  tensor_view<const T, 2, Space> object;
};

template <class TS, class TO, class Space>
box_pairs(tensor_view<TS, 2, Space>, tensor_view<TO, 2, Space>) -> box_pairs<std::remove_const_t<TS>, Space>;

/// Gradients with respect to the boxes of the pairs, [P, 4] each; either may be absent.
template <class T, class Space = host_space>
struct box_pair_grads {
  tensor_view<T, 2, Space> subject;
  tensor_view<T, 2, Space> object;
};

template <class T, class Space>
box_pair_grads(tensor_view<T, 2, Space>, tensor_view<T, 2, Space>) -> box_pair_grads<T, Space>;

namespace box_detail {

/// The 20 features of one (subject, object) pair (see the table above).
template <class Acc>
DISTILL_HOST_DEVICE inline void pair_features(const Acc s[4], const Acc o[4], Acc f[box_pair_feature_count]) noexcept {
  const Acc ws = s[2] - s[0], hs = s[3] - s[1], wo = o[2] - o[0], ho = o[3] - o[1];
  const Acc ux1 = s[0] <= o[0] ? s[0] : o[0], uy1 = s[1] <= o[1] ? s[1] : o[1];
  const Acc ux2 = s[2] >= o[2] ? s[2] : o[2], uy2 = s[3] >= o[3] ? s[3] : o[3];
  const Acc as = ws * hs, ao = wo * ho;
  f[0] = s[0], f[1] = s[1], f[2] = s[2], f[3] = s[3], f[4] = as;
  f[5] = (s[0] - o[0]) / wo, f[6] = (s[1] - o[1]) / ho;
  f[7] = log_(ws / wo), f[8] = log_(hs / ho);
  f[9] = (o[0] - s[0]) / ws, f[10] = (o[1] - s[1]) / hs;
  f[11] = log_(wo / ws), f[12] = log_(ho / hs);
  f[13] = (ux2 - ux1) * (uy2 - uy1);
  f[14] = o[0], f[15] = o[1], f[16] = o[2], f[17] = o[3], f[18] = ao;
  f[19] = detection_detail::iou(s, o);  // the one IoU of distill (detection/boxes.hpp)
}

/// Gradient of sum_k gf[k] f[k] with respect to both boxes (added into gs and go).
template <class Acc>
DISTILL_HOST_DEVICE inline void pair_features_backward(const Acc s[4], const Acc o[4], const Acc gf[box_pair_feature_count],
                                                       Acc gs[4], Acc go[4]) noexcept {
  const Acc ws = s[2] - s[0], hs = s[3] - s[1], wo = o[2] - o[0], ho = o[3] - o[1];
  // Box coordinates themselves.
  for (int k = 0; k < 4; ++k) gs[k] += gf[k], go[k] += gf[14 + k];
  // Areas: d(w h) = h dw + w dh, with dw/dx2 = 1, dw/dx1 = -1.
  gs[0] -= gf[4] * hs, gs[2] += gf[4] * hs, gs[1] -= gf[4] * ws, gs[3] += gf[4] * ws;
  go[0] -= gf[18] * ho, go[2] += gf[18] * ho, go[1] -= gf[18] * wo, go[3] += gf[18] * wo;
  // (a1 - b1) / w_b with w_b = b2 - b1: d/da1 = 1/w_b, d/db1 = -1/w_b + (a1 - b1)/w_b^2, d/db2 = -(a1 - b1)/w_b^2.
  auto offset = [](Acc g, Acc a1, Acc b1, Acc wb, Acc& ga1, Acc& gb1, Acc& gb2) {
    const Acc r = (a1 - b1) / (wb * wb);
    ga1 += g / wb;
    gb1 += g * (r - Acc(1) / wb);
    gb2 -= g * r;
  };
  offset(gf[5], s[0], o[0], wo, gs[0], go[0], go[2]);
  offset(gf[6], s[1], o[1], ho, gs[1], go[1], go[3]);
  offset(gf[9], o[0], s[0], ws, go[0], gs[0], gs[2]);
  offset(gf[10], o[1], s[1], hs, go[1], gs[1], gs[3]);
  // log(w_s / w_o) and its reverse: d/dw_s = 1/w_s, d/dw_o = -1/w_o.
  const Acc gx = gf[7] - gf[11], gy = gf[8] - gf[12];
  gs[2] += gx / ws, gs[0] -= gx / ws, go[2] -= gx / wo, go[0] += gx / wo;
  gs[3] += gy / hs, gs[1] -= gy / hs, go[3] -= gy / ho, go[1] += gy / ho;
  // Union box (ties to the subject, as in the forward).
  {
    const bool sx1 = s[0] <= o[0], sy1 = s[1] <= o[1], sx2 = s[2] >= o[2], sy2 = s[3] >= o[3];
    const Acc uw = (sx2 ? s[2] : o[2]) - (sx1 ? s[0] : o[0]);
    const Acc uh = (sy2 ? s[3] : o[3]) - (sy1 ? s[1] : o[1]);
    const Acc g = gf[13];
    (sx1 ? gs[0] : go[0]) -= g * uh;
    (sx2 ? gs[2] : go[2]) += g * uh;
    (sy1 ? gs[1] : go[1]) -= g * uw;
    (sy2 ? gs[3] : go[3]) += g * uw;
  }
  // IoU = I / U, U = A_s + A_o - I: dIoU = dI (U + I) / U^2 - I (dA_s + dA_o) / U^2.
  {
    const bool lx1 = s[0] >= o[0], ly1 = s[1] >= o[1], lx2 = s[2] <= o[2], ly2 = s[3] <= o[3];  // which box bounds the intersection
    const Acc iw = (lx2 ? s[2] : o[2]) - (lx1 ? s[0] : o[0]);
    const Acc ih = (ly2 ? s[3] : o[3]) - (ly1 ? s[1] : o[1]);
    const Acc as = ws * hs, ao = wo * ho;
    const bool overlap = iw > Acc(0) && ih > Acc(0);
    const Acc inter = overlap ? iw * ih : Acc(0);
    const Acc u = as + ao - inter;
    const Acc g = gf[19];
    const Acc gi = g * (u + inter) / (u * u);  // d/dI
    const Acc ga = -g * inter / (u * u);       // d/dA_s and d/dA_o
    if (overlap) {
      (lx1 ? gs[0] : go[0]) -= gi * ih;
      (lx2 ? gs[2] : go[2]) += gi * ih;
      (ly1 ? gs[1] : go[1]) -= gi * iw;
      (ly2 ? gs[3] : go[3]) += gi * iw;
    }
    gs[0] -= ga * hs, gs[2] += ga * hs, gs[1] -= ga * ws, gs[3] += ga * ws;
    go[0] -= ga * ho, go[2] += ga * ho, go[1] -= ga * wo, go[3] += ga * wo;
  }
}

template <class V>
status check_boxes_view(const char* fn, const char* name, const V& v, index_t rows) {
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_strides(fn, name, v));
  return check_shape(fn, name, v, {rows, 4});
}

/// Shapes shared by the CPU and CUDA pair entry points: subject and object boxes [P, 4] and the
/// features (or their gradient, named `features_name`) [P, 20].
template <class SV, class OV, class FV>
status check_pair_views(const char* fn, const SV& subject_boxes, const OV& object_boxes, const char* features_name,
                        const FV& features) {
  const index_t P = subject_boxes.extent(0);
  DISTILL_TRY(check_boxes_view(fn, "boxes.subject", subject_boxes, P));
  DISTILL_TRY(check_boxes_view(fn, "boxes.object", object_boxes, P));
  DISTILL_TRY(check_present(fn, features_name, features));
  DISTILL_TRY(check_strides(fn, features_name, features));
  return check_shape(fn, features_name, features, {P, box_pair_feature_count});
}

/// The backward's optional box gradients [P, 4].
template <class GSV, class GOV>
status check_box_grads(const char* fn, const GSV& grad_subject_boxes, const GOV& grad_object_boxes, index_t P) {
  if (!grad_subject_boxes.empty()) DISTILL_TRY(check_boxes_view(fn, "grads.subject", grad_subject_boxes, P));
  if (!grad_object_boxes.empty()) DISTILL_TRY(check_boxes_view(fn, "grads.object", grad_object_boxes, P));
  return {};
}

/// Shapes of the all-pairs entry points: boxes [B, N, 4], features [B, N, N, 20].
template <class BV, class FV>
status check_all_pairs_views(const char* fn, const BV& boxes, const FV& features) {
  DISTILL_TRY(check_present(fn, "boxes", boxes));
  DISTILL_TRY(check_strides(fn, "boxes", boxes));
  const index_t B = boxes.extent(0), N = boxes.extent(1);
  DISTILL_TRY(check_shape(fn, "boxes", boxes, {B, N, 4}));
  DISTILL_TRY(check_present(fn, "features", features));
  DISTILL_TRY(check_strides(fn, "features", features));
  return check_shape(fn, "features", features, {B, N, N, box_pair_feature_count});
}

/// CPU: every box finite with x2 > x1 and y2 > y1.
template <class Box>
status check_box_values(const char* fn, const char* name, Box box, index_t count) {
  for (index_t r = 0; r < count; ++r) {
    double b[4];
    for (int k = 0; k < 4; ++k) b[k] = static_cast<double>(box(r, k));
    for (int k = 0; k < 4; ++k)
      if (!std::isfinite(b[k]))
        return fail(errc::non_finite, fn, std::string("'") + name + "' box " + std::to_string(r) + " is not finite");
    if (!(b[2] > b[0] && b[3] > b[1]))
      return fail(errc::invalid_argument, fn,
                  std::string("'") + name + "' box " + std::to_string(r) + " is empty or inverted (needs x2 > x1 and y2 > y1)");
  }
  return {};
}

}  // namespace box_detail

/// features [P, 20] of the pairs (boxes.subject[p], boxes.object[p]).
template <class T>
[[nodiscard]] status box_pair_features_forward(const cpu& ctx, const box_pairs<T, host_space>& boxes, host_view<T, 2> features) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box features on the CPU take float or double");
  constexpr const char* fn = "box_pair_features_forward";
  const auto& subject_boxes = boxes.subject;
  const auto& object_boxes = boxes.object;
  const index_t P = subject_boxes.extent(0);
  DISTILL_TRY(box_detail::check_pair_views(fn, subject_boxes, object_boxes, "features", features));
  DISTILL_TRY(box_detail::check_box_values(fn, "boxes.subject", subject_boxes, P));
  DISTILL_TRY(box_detail::check_box_values(fn, "boxes.object", object_boxes, P));
  parallel_for(ctx, P, [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      T s[4], o[4], f[box_pair_feature_count];
      for (int k = 0; k < 4; ++k) s[k] = subject_boxes(p, k), o[k] = object_boxes(p, k);
      box_detail::pair_features(s, o, f);
      for (int k = 0; k < box_pair_feature_count; ++k) features(p, k) = f[k];
    }
  }, 256);
  return {};
}

/// Gradients of sum(grad_features * features) with respect to the boxes; either member of
/// `grads` may be absent.
template <class T>
[[nodiscard]] status box_pair_features_backward(const cpu& ctx, const box_pairs<T, host_space>& boxes,
                                                in_view<T, 2, host_space> grad_features, const box_pair_grads<T, host_space>& grads,
                                                const box_features_options& opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box features on the CPU take float or double");
  constexpr const char* fn = "box_pair_features_backward";
  const auto& subject_boxes = boxes.subject;
  const auto& object_boxes = boxes.object;
  const auto& grad_subject_boxes = grads.subject;
  const auto& grad_object_boxes = grads.object;
  const index_t P = subject_boxes.extent(0);
  DISTILL_TRY(box_detail::check_pair_views(fn, subject_boxes, object_boxes, "grad_features", grad_features));
  DISTILL_TRY(box_detail::check_box_grads(fn, grad_subject_boxes, grad_object_boxes, P));
  DISTILL_TRY(box_detail::check_box_values(fn, "boxes.subject", subject_boxes, P));
  DISTILL_TRY(box_detail::check_box_values(fn, "boxes.object", object_boxes, P));
  parallel_for(ctx, P, [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      T s[4], o[4], gf[box_pair_feature_count], gs[4] = {0, 0, 0, 0}, go[4] = {0, 0, 0, 0};
      for (int k = 0; k < 4; ++k) s[k] = subject_boxes(p, k), o[k] = object_boxes(p, k);
      for (int k = 0; k < box_pair_feature_count; ++k) gf[k] = grad_features(p, k);
      box_detail::pair_features_backward(s, o, gf, gs, go);
      for (int k = 0; k < 4; ++k) {
        if (!grad_subject_boxes.empty()) grad_subject_boxes(p, k) = opt.accumulate ? grad_subject_boxes(p, k) + gs[k] : gs[k];
        if (!grad_object_boxes.empty()) grad_object_boxes(p, k) = opt.accumulate ? grad_object_boxes(p, k) + go[k] : go[k];
      }
    }
  }, 256);
  return {};
}

/// features [B, N, N, 20] of every ordered pair of a scene's boxes [B, N, 4] (i = subject, j = object).
template <class TB, class TF>
[[nodiscard]] status box_pair_features_all_pairs_forward(const cpu& ctx, host_view<TB, 3> boxes, host_view<TF, 4> features) {
  using T = std::remove_const_t<TB>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "box features on the CPU take float or double");
  static_assert(std::is_same_v<TF, T>, "box_pair_features_all_pairs_forward: element types differ (features non-const)");
  constexpr const char* fn = "box_pair_features_all_pairs_forward";
  DISTILL_TRY(box_detail::check_all_pairs_views(fn, boxes, features));
  const index_t B = boxes.extent(0), N = boxes.extent(1);
  DISTILL_TRY(box_detail::check_box_values(fn, "boxes", [&](index_t r, int k) { return boxes(r / N, r % N, k); }, B * N));
  parallel_for(ctx, B * N, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / N, i = r % N;
      T s[4], o[4], f[box_pair_feature_count];
      for (int k = 0; k < 4; ++k) s[k] = boxes(b, i, k);
      for (index_t j = 0; j < N; ++j) {
        for (int k = 0; k < 4; ++k) o[k] = boxes(b, j, k);
        box_detail::pair_features(s, o, f);
        for (int k = 0; k < box_pair_feature_count; ++k) features(b, i, j, k) = f[k];
      }
    }
  }, 16);
  return {};
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/box_geometry.cuh"
#endif
