// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Embedding alignment between student and teacher embeddings [N, D], one row per region /
//! token / sample: FitNets and TextBrewer hidden-state matching, ViLD's L1 region-to-image
//! distillation (spec §7), multi-label KD's RoI feature L2 (spec §12.2).
//!
//! Optional L2 normalisation of both rows first (spec B2), fused:
//!   u = s * a_s,  v = t * a_t,   a = 1/||x||            (normalize = clamp / zero_below_eps)
//!   clamp:           a = 1 / max(||x||, eps)            (PyTorch F.normalize, eps 1e-12)
//!   zero_below_eps:  a = ||x|| > eps ? 1/||x|| : 0      (TF divide_no_nan as in ViLD)
//!   none:            a = 1 (u = s, v = t)
//! Per-row loss l_r (metric):
//!   mse         (1/D) sum_d (u_d - v_d)^2        dl/du = 2 (u - v) / D
//!   squared_l2        sum_d (u_d - v_d)^2        dl/du = 2 (u - v)
//!   l1                sum_d |u_d - v_d|          dl/du = sign(u - v)   (0 at a tie)
//!   cosine      1 - <u, v>                       dl/du = -v            (always normalised;
//!                                                                       none acts as clamp)
//! Row weights w_r = row_weights[r] (absent: 1) * (row_mask[r] != 0) (absent: 1), then
//!   none       loss[r] = scale * w_r * l_r                     (loss has N entries)
//!   sum        L = scale * sum_r w_r l_r
//!   mean       L = scale * sum_r w_r l_r / sum_r w_r           (0 when every weight is 0)
//!   batchmean  L = scale * sum_r w_r l_r / N
//! Gradient (student only; the teacher is frozen), with k = grad_scale * scale * w_r / divisor:
//!   dL/ds_r = k * (g - [projected] u <u, g>) * a_s,   g = dl/du
//! where the projection applies when the norm was not clamped (B2; a clamped row has
//! dL/ds = k g a_s, a zeroed row has dL/ds = 0). Rows with w_r = 0 are not read: their loss is 0,
//! their gradient 0 (or left as is with accumulate).
//!
//! Recipes:
//!   torch F.mse_loss(s, t)                      metric mse, red batchmean
//!   TextBrewer hid_mse_loss(s, t, mask)         metric mse, red mean, row_mask = token mask
//!   FitNets 1/2 ||s - t||^2 per sample          metric squared_l2, red batchmean, scale 0.5
//!   multi-label KD stage 1 (Caffe Euclidean)    metric squared_l2, red batchmean, scale 0.5
//!                                               -> dL/df_s = (f_s - f_t) / N
//!   ViLD L_img (weight w)                       metric l1, normalize zero_below_eps (1e-8 per
//!                                               spec B2), red mean, row_mask = valid
//!                                               proposals, grad_scale = w
//!
//! Bad input: shape mismatches, negative strides -> shape_mismatch / unsupported_layout;
//! scale/grad_scale non-finite, norm_eps <= 0 -> invalid_argument; row weights negative or
//! non-finite -> invalid_argument / non_finite on the CPU (device weights are not inspected).
//! NaN/inf in a valid row gives NaN in that row's loss and gradient; the CPU path also returns
//! errc::non_finite naming the input. Every-row-masked with mean gives 0 loss and 0 gradient
//! (core/reduction.hpp convention).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/math.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"
#include "distill/features/feature_stats.hpp"

namespace distill {

enum class embedding_metric { mse, squared_l2, l1, cosine };
enum class l2_normalization { none, clamp, zero_below_eps };

constexpr const char* to_string(embedding_metric m) noexcept {
  switch (m) {
    case embedding_metric::mse: return "mse";
    case embedding_metric::squared_l2: return "squared_l2";
    case embedding_metric::l1: return "l1";
    case embedding_metric::cosine: return "cosine";
  }
  return "unknown";
}

struct embedding_alignment_options {
  embedding_metric metric = embedding_metric::mse;
  l2_normalization normalize = l2_normalization::none;
  double norm_eps = 1e-12;          ///< eps of the normalisation (clamp / zero threshold), > 0
  distill::reduction reduction = distill::reduction::mean;  ///< over rows, weighted (see the header comment)
  double scale = 1.0;               ///< part of the loss definition (value and gradient)
  double grad_scale = 1.0;          ///< upstream gradient / loss weight (gradient only)
  bool accumulate = false;          ///< add into grad_student instead of overwriting it
  bool check_finite = false;  ///< CPU: refuse NaN/inf inputs before computing (docs/reliability.md)
};

namespace features_detail {

/// Result of B2 for one row: u = x * inv; backward (g - project * u <u, g>) * inv.
template <class Acc>
struct l2_factor {
  Acc inv = Acc(1);
  bool project = false;
};

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE l2_factor<Acc> l2_normalize_factor(Acc sum_squares, l2_normalization mode,
                                                                           Acc eps) noexcept {
  using std::sqrt;
  l2_factor<Acc> f;
  if (mode == l2_normalization::none) return f;
  const Acc norm = sqrt(sum_squares);
  if (norm > eps) {
    f.inv = Acc(1) / norm;
    f.project = true;
  } else if (mode == l2_normalization::clamp) {
    f.inv = Acc(1) / eps;
  } else {
    f.inv = Acc(0);
  }
  // A NaN norm falls through to the clamp / zero branch; keep it NaN so it shows.
  if (!(norm == norm)) f.inv = norm;
  return f;
}

/// Effective normalisation: cosine always normalises.
inline l2_normalization effective_normalization(const embedding_alignment_options& o) {
  if (o.metric == embedding_metric::cosine && o.normalize == l2_normalization::none) return l2_normalization::clamp;
  return o.normalize;
}

template <class Acc>
struct elem_loss {
  Acc loss;
  Acc grad;  ///< dl/du
};

/// One element of the per-row loss (cosine's constant 1 is added once per row), metric fixed at
/// compile time so the CPU loops vectorise.
template <embedding_metric M, class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE elem_loss<Acc> embedding_element_of(Acc u, Acc v, Acc inv_dim) noexcept {
  const Acc d = u - v;
  if constexpr (M == embedding_metric::mse) return {d * d * inv_dim, Acc(2) * d * inv_dim};
  else if constexpr (M == embedding_metric::squared_l2) return {d * d, Acc(2) * d};
  else if constexpr (M == embedding_metric::l1)
    return {d < Acc(0) ? -d : d, d > Acc(0) ? Acc(1) : (d < Acc(0) ? Acc(-1) : Acc(0))};
  else return {-u * v, -v};  // cosine
}
/// The same with the metric known at run time.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE elem_loss<Acc> embedding_element(embedding_metric m, Acc u, Acc v,
                                                                         Acc inv_dim) noexcept {
  switch (m) {
    case embedding_metric::mse: return embedding_element_of<embedding_metric::mse>(u, v, inv_dim);
    case embedding_metric::squared_l2: return embedding_element_of<embedding_metric::squared_l2>(u, v, inv_dim);
    case embedding_metric::l1: return embedding_element_of<embedding_metric::l1>(u, v, inv_dim);
    default: return embedding_element_of<embedding_metric::cosine>(u, v, inv_dim);
  }
}
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc embedding_row_constant(embedding_metric m) noexcept {
  return m == embedding_metric::cosine ? Acc(1) : Acc(0);
}

/// w_r from optional weights and mask.
template <class Acc, class WV, class MV>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc row_weight(const WV& w, const MV& m, index_t r) noexcept {
  Acc x = w.empty() ? Acc(1) : static_cast<Acc>(w(r));
  if (!m.empty() && m(r) == 0) x = Acc(0);
  return x;
}

inline status check_embedding_options(const char* fn, const embedding_alignment_options& o) {
  if (!std::isfinite(o.scale) || !std::isfinite(o.grad_scale))
    return fail(errc::invalid_argument, fn, "'scale' and 'grad_scale' must be finite");
  if (effective_normalization(o) != l2_normalization::none) DISTILL_TRY(check_positive(fn, "norm_eps", o.norm_eps));
  return {};
}

/// Checks shared by the CPU and CUDA paths: options, the pair, the optional row weights, row
/// mask, loss ([N] with reduction::none, else [1]) and gradient (student's shape).
template <class SV, class TV, class WV, class MV, class LV, class GV>
status check_embedding_args(const char* fn, const SV& s, const TV& t, const WV& w, const MV& m, const LV& loss, const GV& grad,
                            const embedding_alignment_options& opt) {
  DISTILL_TRY(check_embedding_options(fn, opt));
  DISTILL_TRY(check_input(fn, "student", s));
  DISTILL_TRY(check_input(fn, "teacher", t));
  DISTILL_TRY(check_same_shape(fn, "teacher", t, "student", s));
  DISTILL_TRY(check_optional(fn, "row_weights", w, {s.extent(0)}));
  DISTILL_TRY(check_optional(fn, "row_mask", m, {s.extent(0)}));
  if (!loss.empty()) {
    const index_t want[1] = {opt.reduction == reduction::none ? s.extent(0) : 1};
    DISTILL_TRY(check_shape(fn, "loss", loss, want));
  }
  if (!grad.empty()) DISTILL_TRY(check_output(fn, "grad_student", grad, {s.extent(0), s.extent(1)}));
  return {};
}

/// Host-side weight check (CPU path): finite and >= 0.
template <class WV>
status check_row_weights_host(const char* fn, const WV& w) {
  for (index_t r = 0; r < w.extent(0) && !w.empty(); ++r) {
    const double x = static_cast<double>(w(r));
    if (!std::isfinite(x)) return fail(errc::non_finite, fn, "'row_weights' has a NaN or inf at row " + std::to_string(r));
    if (x < 0) return fail(errc::invalid_argument, fn, "'row_weights' has a negative weight at row " + std::to_string(r));
  }
  return {};
}

/// One row on the CPU: norms, loss, <u, g>, then the gradient (k = coefficient, 0 = none wanted).
/// Stride 1 is a compile-time constant on the contiguous path so the loops vectorise.
template <embedding_metric M, bool Contig, class Acc, class TS, class TT, class TG>
Acc embedding_row_cpu(const TS* sr, index_t ss, const TT* tr, index_t ts, TG* gr, index_t gs, index_t D,
                      l2_normalization norm, Acc eps, Acc k, bool accumulate, bool& bad_s, bool& bad_t) {
  if constexpr (Contig) ss = ts = gs = 1;
  const Acc inv_dim = Acc(1) / static_cast<Acc>(D);
  Acc s_sq = Acc(0), t_sq = Acc(0), s_bad = Acc(0), t_bad = Acc(0);
DISTILL_OMP_PRAGMA(omp simd reduction(+ : s_sq, t_sq, s_bad, t_bad))
  for (index_t d = 0; d < D; ++d) {
    const Acc a = load<Acc>(sr[d * ss]), b = load<Acc>(tr[d * ts]);
    s_sq += a * a;
    t_sq += b * b;
    s_bad += a * Acc(0);  // NaN iff a is NaN or inf
    t_bad += b * Acc(0);
  }
  bad_s = !(s_bad == Acc(0));
  bad_t = !(t_bad == Acc(0));
  const l2_factor<Acc> fs = l2_normalize_factor(s_sq, norm, eps), ft = l2_normalize_factor(t_sq, norm, eps);
  Acc l = Acc(0), ug = Acc(0);
DISTILL_OMP_PRAGMA(omp simd reduction(+ : l, ug))
  for (index_t d = 0; d < D; ++d) {
    const Acc u = load<Acc>(sr[d * ss]) * fs.inv, v = load<Acc>(tr[d * ts]) * ft.inv;
    const elem_loss<Acc> e = embedding_element_of<M>(u, v, inv_dim);
    l += e.loss;
    ug += u * e.grad;
  }
  l += embedding_row_constant<Acc>(M);
  if (gr == nullptr) return l;
  const Acc proj = fs.project ? ug : Acc(0);
  if (accumulate) {
    for (index_t d = 0; d < D; ++d) {
      const Acc u = load<Acc>(sr[d * ss]) * fs.inv, v = load<Acc>(tr[d * ts]) * ft.inv;
      const Acc g = k * (embedding_element_of<M>(u, v, inv_dim).grad - u * proj) * fs.inv;
      gr[d * gs] = store<TG>(load<Acc>(gr[d * gs]) + g);
    }
  } else {
DISTILL_OMP_PRAGMA(omp simd)
    for (index_t d = 0; d < D; ++d) {
      const Acc u = load<Acc>(sr[d * ss]) * fs.inv, v = load<Acc>(tr[d * ts]) * ft.inv;
      gr[d * gs] = store<TG>(k * (embedding_element_of<M>(u, v, inv_dim).grad - u * proj) * fs.inv);
    }
  }
  return l;
}

template <embedding_metric M, class Acc, class TS, class TT, class TG>
Acc embedding_row_dispatch(bool contig, const TS* sr, index_t ss, const TT* tr, index_t ts, TG* gr, index_t gs, index_t D,
                           l2_normalization norm, Acc eps, Acc k, bool accumulate, bool& bad_s, bool& bad_t) {
  return contig ? embedding_row_cpu<M, true>(sr, ss, tr, ts, gr, gs, D, norm, eps, k, accumulate, bad_s, bad_t)
                : embedding_row_cpu<M, false>(sr, ss, tr, ts, gr, gs, D, norm, eps, k, accumulate, bad_s, bad_t);
}

template <class Acc, class SV, class TV, class WV, class MV, class LV, class GV>
status embedding_alignment_cpu(const char* fn, const cpu& ctx, const SV& s, const TV& t, const WV& weights,
                               const MV& mask, const LV& loss, const GV& grad, const embedding_alignment_options& opt) {
  DISTILL_TRY(check_embedding_args(fn, s, t, weights, mask, loss, grad, opt));
  DISTILL_TRY(check_row_weights_host(fn, weights));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "student", s, "teacher", t));
  const index_t N = s.extent(0), D = s.extent(1);
  Acc weight_sum = Acc(0);
  for (index_t r = 0; r < N; ++r) weight_sum += row_weight<Acc>(weights, mask, r);
  const Acc inv_div = safe_inverse(reduction_divisor(opt.reduction, static_cast<Acc>(N), weight_sum));
  const Acc scale = static_cast<Acc>(opt.scale);
  const Acc gcoef = static_cast<Acc>(opt.grad_scale) * scale * inv_div;
  const l2_normalization norm = effective_normalization(opt);
  const Acc eps = static_cast<Acc>(opt.norm_eps);
  using TG = typename GV::value_type;
  const bool contig = s.stride(1) == 1 && t.stride(1) == 1 && (grad.empty() || grad.stride(1) == 1);

  const auto part = parallel_sum<loss_partial<Acc>>(ctx, N, [&](index_t r0, index_t r1) {
    loss_partial<Acc> p;
    for (index_t r = r0; r < r1; ++r) {
      const Acc w = row_weight<Acc>(weights, mask, r);
      TG* gr = grad.empty() ? nullptr : grad.data() + r * grad.stride(0);
      const index_t gs = grad.empty() ? 0 : grad.stride(1);
      if (w == Acc(0)) {  // skipped row: not read
        if (opt.reduction == reduction::none && !loss.empty()) loss(r) = Acc(0);
        if (gr != nullptr && !opt.accumulate)
          for (index_t d = 0; d < D; ++d) gr[d * gs] = store<TG>(Acc(0));
        continue;
      }
      const auto* sr = s.data() + r * s.stride(0);
      const auto* tr = t.data() + r * t.stride(0);
      const index_t ss = s.stride(1), ts = t.stride(1);
      const Acc k = gcoef * w;
      bool bad_s = false, bad_t = false;
      Acc l = Acc(0);
      switch (opt.metric) {
        case embedding_metric::mse:
          l = embedding_row_dispatch<embedding_metric::mse>(contig, sr, ss, tr, ts, gr, gs, D, norm, eps, k, opt.accumulate, bad_s, bad_t);
          break;
        case embedding_metric::squared_l2:
          l = embedding_row_dispatch<embedding_metric::squared_l2>(contig, sr, ss, tr, ts, gr, gs, D, norm, eps, k, opt.accumulate,
                                                                   bad_s, bad_t);
          break;
        case embedding_metric::l1:
          l = embedding_row_dispatch<embedding_metric::l1>(contig, sr, ss, tr, ts, gr, gs, D, norm, eps, k, opt.accumulate, bad_s, bad_t);
          break;
        case embedding_metric::cosine:
          l = embedding_row_dispatch<embedding_metric::cosine>(contig, sr, ss, tr, ts, gr, gs, D, norm, eps, k, opt.accumulate, bad_s,
                                                               bad_t);
          break;
      }
      p.bad_student = p.bad_student || bad_s;
      p.bad_teacher = p.bad_teacher || bad_t;
      p.loss += w * l;
      if (opt.reduction == reduction::none && !loss.empty()) loss(r) = scale * w * l;
    }
    return p;
  });
  if (opt.reduction != reduction::none && !loss.empty()) loss(0) = scale * part.loss * inv_div;
  return report_flags(fn, part, "student", "teacher");
}

}  // namespace features_detail

/// Loss of the header comment: (1) for sum/mean/batchmean, (N) for none.
template <class TS, class TT>
[[nodiscard]] status embedding_alignment_forward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                 host_view<const accum_t<TS>, 1> row_weights,
                                                 host_view<const std::uint8_t, 1> row_mask,
                                                 host_view<accum_t<TS>, 1> loss, host_view<std::byte, 1> /*workspace*/,
                                                 const embedding_alignment_options& opt = {}) {
  features_detail::static_check_cpu_type<TS>();
  features_detail::static_check_cpu_type<TT>();
  constexpr const char* fn = "embedding_alignment_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_detail::embedding_alignment_cpu<accum_t<TS>>(fn, ctx, student, teacher, row_weights, row_mask, loss,
                                                               host_view<std::remove_const_t<TS>, 2>{}, opt);
}
/// dL/dstudent [N, D].
template <class TS, class TT>
[[nodiscard]] status embedding_alignment_backward(const cpu& ctx, host_view<TS, 2> student, host_view<TT, 2> teacher,
                                                  host_view<const accum_t<TS>, 1> row_weights,
                                                  host_view<const std::uint8_t, 1> row_mask,
                                                  host_view<std::remove_const_t<TS>, 2> grad_student,
                                                  host_view<std::byte, 1> /*workspace*/,
                                                  const embedding_alignment_options& opt = {}) {
  features_detail::static_check_cpu_type<TS>();
  features_detail::static_check_cpu_type<TT>();
  constexpr const char* fn = "embedding_alignment_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::embedding_alignment_cpu<accum_t<TS>>(fn, ctx, student, teacher, row_weights, row_mask,
                                                               host_view<accum_t<TS>, 1>{}, grad_student, opt);
}
/// Loss (may be absent) and gradient in one pass.
template <class TS, class TT>
[[nodiscard]] status embedding_alignment_forward_backward(const cpu& ctx, host_view<TS, 2> student,
                                                          host_view<TT, 2> teacher,
                                                          host_view<const accum_t<TS>, 1> row_weights,
                                                          host_view<const std::uint8_t, 1> row_mask,
                                                          host_view<accum_t<TS>, 1> loss,
                                                          host_view<std::remove_const_t<TS>, 2> grad_student,
                                                          host_view<std::byte, 1> /*workspace*/,
                                                          const embedding_alignment_options& opt = {}) {
  features_detail::static_check_cpu_type<TS>();
  features_detail::static_check_cpu_type<TT>();
  constexpr const char* fn = "embedding_alignment_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::embedding_alignment_cpu<accum_t<TS>>(fn, ctx, student, teacher, row_weights, row_mask, loss,
                                                               grad_student, opt);
}

namespace features_detail {
/// The CUDA scratch of embedding alignment (core/workspace.hpp): the mean divisor and one
/// partial loss per row.
template <class Acc>
struct embedding_alignment_scratch {
  Acc* divisor;
  Acc* row_loss;
  constexpr embedding_alignment_scratch(workspace_carver& w, index_t rows) : divisor(w.take<Acc>(1)), row_loss(w.take<Acc>(rows)) {}
};
}  // namespace features_detail

/// Bytes of scratch for N rows of element type T: none on the CPU; on CUDA the reduction divisor
/// and one partial per row (used when a reduced loss is requested or the reduction is mean).
template <class T = float>
constexpr std::size_t embedding_alignment_workspace_size(const cpu&, index_t /*rows*/) noexcept { return 0; }
template <class T = float>
constexpr std::size_t embedding_alignment_workspace_size(const cuda&, index_t rows) noexcept {
  return workspace_carver::size_of<features_detail::embedding_alignment_scratch<accum_t<T>>>(rows);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/embedding_alignment.cuh"
#endif
