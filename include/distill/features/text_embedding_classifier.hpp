// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! ViLD's text-embedding classifier (Gu et al., ICLR 2022, arXiv 2104.13921; spec §7): region
//! embeddings classified by cosine similarity to (frozen) class text embeddings, with a
//! trainable background embedding and a per-class mask.
//!
//! Inputs: regions e [N, D] (projected RoI features), classes t [C, D] (one text embedding per
//! row), background w [D] (optional), class_mask m [C] (optional, 0/1; absent = all 1).
//! Every row is L2-normalised first (spec B2; ViLD uses divide_no_nan, i.e. zero_below_eps):
//!   e^_r = e_r a_r,  t^_c = t_c a_c,  w^ = w a_w            (a = 1/||.||, see embedding_alignment)
//! Logits [N, K], K = C + 1 with a background (column 0 = background, column c + 1 = class c, as
//! in ViLD), K = C without:
//!   z_r,bg = <e^_r, w^> / tau
//!   z_r,c  = m_c <e^_r, t^_c> / tau       (masked classes get logit exactly 0, not -inf: they stay
//!                                          in the softmax denominator as e^0, as ViLD's mask_rare)
//! tau = temperature (ViLD: 0.01, i.e. the config's `temperature: 100` multiplies the logits).
//! Backward from G = dL/dz [N, K]:
//!   dL/de^_r = (1/tau) [ G_r,bg w^ + sum_c G_r,c m_c t^_c ]
//!   dL/dw^   = (1/tau) sum_r G_r,bg e^_r
//!   dL/dt^_c = (m_c/tau) sum_r G_r,c e^_r                   (optional; ViLD freezes the classes)
//! then B2 to the raw rows: dL/dx = (g - [projected] x^ <x^, g>) a_x.
//!
//! Cross-entropy on these logits (ViLD's L_text), fused for convenience:
//!   l_r = LSE(z_r) - z_r,y_r,  labels y_r in [0, K) (0 = background when present) or ignore_index
//!   L = sum_r w_r l_r / divisor   (mean: sum of w_r over non-ignored rows; batchmean: N; sum: 1)
//!   dL/dz_r = grad_scale * w_r / divisor * (softmax(z_r) - onehot(y_r))
//! It computes the logits into `logits_scratch`, overwrites them with dL/dz and runs the backward.
//! (The soft-target family's hard-label CE can be composed the same way: forward, its CE, backward.)
//!
//! Element types: regions/classes/background share T; logits and dL/dz are accum_t<T> (float for
//! half/bf16 on CUDA). CPU paths use distill::gemm (Eigen) for the two products.
//!
//! Bad input: shape mismatches (classes' D, logits' K, mask/weights/labels lengths) ->
//! shape_mismatch; temperature <= 0 or non-finite, norm_eps <= 0 -> invalid_argument; on the
//! CPU a label outside [0, K) that is not ignore_index -> invalid_argument naming 'labels',
//! negative/non-finite row weights -> invalid_argument/non_finite, NaN/inf in the inputs ->
//! non_finite after the outputs are written (NaN where the arithmetic puts it). On CUDA labels and
//! weights are not inspected: an out-of-range label gives that row a NaN loss and no gradient.

#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/cpu_gemm.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/labels.hpp"
#include "distill/core/math.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/features/feature_stats.hpp"

namespace distill {

struct text_classifier_options {
  double temperature = 0.01;  ///< logits = cosine / temperature (ViLD: 0.01)
  l2_normalization normalize = l2_normalization::zero_below_eps;  ///< ViLD: divide_no_nan
  double norm_eps = 1e-8;     ///< spec B2 (ViLD)
  bool accumulate = false;    ///< backward: add into the gradients instead of overwriting them
  bool check_finite = false;  ///< CPU: refuse NaN/inf inputs before computing (docs/reliability.md)
};

/// Options of the fused cross-entropy entry points: the classifier's options plus the loss's.
struct text_classifier_cross_entropy_options : text_classifier_options {
  std::int64_t ignore_index = -100;
  distill::reduction reduction = distill::reduction::mean;  ///< mean, batchmean or sum
  double grad_scale = 1.0;
};

namespace features_detail {

inline status check_classifier_options(const char* fn, const text_classifier_options& o) {
  DISTILL_TRY(check_positive(fn, "temperature", o.temperature));
  if (o.normalize != l2_normalization::none) DISTILL_TRY(check_positive(fn, "norm_eps", o.norm_eps));
  return {};
}
inline status check_ce_options(const char* fn, const text_classifier_cross_entropy_options& o) {
  DISTILL_TRY(check_loss_reduction(fn, o.reduction));
  if (!std::isfinite(o.grad_scale)) return fail(errc::invalid_argument, fn, "'grad_scale' must be finite");
  return {};
}

/// Shapes of the classifier's inputs; returns the logit count K through `k_out`.
template <class RV, class CV, class BV, class MV>
status check_classifier_inputs(const char* fn, const RV& regions, const CV& classes, const BV& background,
                               const MV& class_mask, index_t& k_out) {
  DISTILL_TRY(check_input(fn, "regions", regions));
  DISTILL_TRY(check_input(fn, "classes", classes));
  DISTILL_TRY(check_extent(fn, "classes", classes, 1, regions.extent(1), "embedding size D of 'regions'"));
  DISTILL_TRY(check_optional(fn, "background", background, {regions.extent(1)}));
  DISTILL_TRY(check_optional(fn, "class_mask", class_mask, {classes.extent(0)}));
  k_out = classes.extent(0) + (background.empty() ? 0 : 1);
  return {};
}

/// Gradient outputs, shared by the CPU and CUDA backward and cross-entropy passes:
/// grad_regions [N, D], optional grad_background [D] (only with a background), optional
/// grad_classes [C, D].
template <class RV, class CV, class BV, class GRV, class GBV, class GCV>
status check_classifier_grads(const char* fn, const RV& regions, const CV& classes, const BV& background, const GRV& grad_regions,
                              const GBV& grad_background, const GCV& grad_classes) {
  DISTILL_TRY(check_output(fn, "grad_regions", grad_regions, {regions.extent(0), regions.extent(1)}));
  if (!grad_background.empty() && background.empty())
    return fail(errc::invalid_argument, fn, "'grad_background' was given but 'background' is absent");
  DISTILL_TRY(check_optional(fn, "grad_background", grad_background, {regions.extent(1)}));
  return check_optional(fn, "grad_classes", grad_classes, {classes.extent(0), classes.extent(1)});
}

/// Checks shared by the CPU and CUDA cross-entropy passes, before any data is read: options,
/// inputs (K through `k_out`), labels [N], row_weights [N], loss (1), logits_scratch [N, K] and,
/// when `backward`, the gradients.
template <class RV, class CV, class BV, class MV, class LV, class WV, class SV, class XV, class GRV, class GBV, class GCV>
status check_classifier_ce_args(const char* fn, const RV& regions, const CV& classes, const BV& background, const MV& class_mask,
                                const LV& labels, const WV& row_weights, const SV& loss, const XV& logits_scratch,
                                const GRV& grad_regions, const GBV& grad_background, const GCV& grad_classes,
                                const text_classifier_options& opt, const text_classifier_cross_entropy_options& ce, bool backward,
                                index_t& k_out) {
  DISTILL_TRY(check_classifier_options(fn, opt));
  DISTILL_TRY(check_ce_options(fn, ce));
  DISTILL_TRY(check_classifier_inputs(fn, regions, classes, background, class_mask, k_out));
  const index_t N = regions.extent(0);
  if (labels.empty()) return fail(errc::invalid_argument, fn, "'labels' is required but absent");
  DISTILL_TRY(check_optional_labels(fn, "labels", labels, N));
  DISTILL_TRY(check_optional(fn, "row_weights", row_weights, {N}));
  DISTILL_TRY(check_scalar_out(fn, "loss", loss));
  DISTILL_TRY(check_output(fn, "logits_scratch", logits_scratch, {N, k_out}));
  if (backward) DISTILL_TRY(check_classifier_grads(fn, regions, classes, background, grad_regions, grad_background, grad_classes));
  return {};
}

/// B2 factor of row r of a matrix (or of a vector when V is rank 1).
template <class Acc, class V>
l2_factor<Acc> row_l2_factor(const V& m, index_t r, l2_normalization mode, Acc eps, bool& bad) {
  Acc sq = Acc(0), chk = Acc(0);
  if constexpr (V::rank == 2) {
    for (index_t d = 0; d < m.extent(1); ++d) {
      const Acc x = load<Acc>(m(r, d));
      sq += x * x;
      chk += x * Acc(0);
    }
  } else {
    (void)r;
    for (index_t d = 0; d < m.extent(0); ++d) {
      const Acc x = load<Acc>(m(d));
      sq += x * x;
      chk += x * Acc(0);
    }
  }
  if (!(chk == Acc(0))) bad = true;
  return l2_normalize_factor(sq, mode, eps);
}

/// C = alpha op(A) op(B) + beta C through distill::gemm, or plain loops when a view has a
/// non-unit inner stride (the CPU path accepts any layout).
template <class T, class VA, class VB, class VC>
status gemm_any_layout(const cpu& ctx, transpose ta, transpose tb, T alpha, const VA& a, const VB& b, T beta, const VC& c) {
  if (a.inner_contiguous() && b.inner_contiguous() && c.inner_contiguous())
    return gemm(ctx, ta, tb, alpha, host_view<const T, 2>(a), host_view<const T, 2>(b), beta, c);
  const index_t M = c.extent(0), N = c.extent(1), K = ta == transpose::no ? a.extent(1) : a.extent(0);
  for (index_t m = 0; m < M; ++m)
    for (index_t n = 0; n < N; ++n) {
      T acc = T(0);
      for (index_t k = 0; k < K; ++k)
        acc += (ta == transpose::no ? a(m, k) : a(k, m)) * (tb == transpose::no ? b(k, n) : b(n, k));
      c(m, n) = alpha * acc + (beta == T(0) ? T(0) : beta * c(m, n));
    }
  return {};
}

template <class T>
struct classifier_factors {
  std::vector<l2_factor<T>> regions, classes;
  l2_factor<T> background;
  bool bad_regions = false, bad_classes = false, bad_background = false;
};

template <class T, class RV, class CV, class BV>
classifier_factors<T> compute_classifier_factors(const cpu& ctx, const RV& regions, const CV& classes,
                                                 const BV& background, const text_classifier_options& opt) {
  classifier_factors<T> f;
  const T eps = static_cast<T>(opt.norm_eps);
  f.regions.resize(static_cast<std::size_t>(regions.extent(0)));
  f.classes.resize(static_cast<std::size_t>(classes.extent(0)));
  std::atomic<bool> bad_r{false};
  parallel_for(ctx, regions.extent(0), [&](index_t r0, index_t r1) {
    bool bad = false;
    for (index_t r = r0; r < r1; ++r) f.regions[static_cast<std::size_t>(r)] = row_l2_factor<T>(regions, r, opt.normalize, eps, bad);
    if (bad) bad_r = true;
  });
  f.bad_regions = bad_r;
  for (index_t c = 0; c < classes.extent(0); ++c)
    f.classes[static_cast<std::size_t>(c)] = row_l2_factor<T>(classes, c, opt.normalize, eps, f.bad_classes);
  if (!background.empty()) f.background = row_l2_factor<T>(background, 0, opt.normalize, eps, f.bad_background);
  return f;
}

template <class T>
status report_classifier_flags(const char* fn, const classifier_factors<T>& f) {
  if (f.bad_regions) return non_finite_input(fn, "regions");
  if (f.bad_classes) return non_finite_input(fn, "classes");
  if (f.bad_background) return non_finite_input(fn, "background");
  return {};
}

template <class T, class RV, class CV, class BV, class MV, class LV>
status classifier_logits_cpu(const cpu& ctx, const RV& regions, const CV& classes, const BV& background,
                             const MV& class_mask, const LV& logits, const classifier_factors<T>& f,
                             const text_classifier_options& opt) {
  const index_t N = regions.extent(0), C = classes.extent(0), D = regions.extent(1);
  const index_t off = background.empty() ? 0 : 1;
  const auto cls = make_strided_view(logits.data() + off * logits.stride(1), std::array<index_t, 2>{N, C},
                                     std::array<index_t, 2>{logits.stride(0), logits.stride(1)});
  DISTILL_TRY(gemm_any_layout<T>(ctx, transpose::no, transpose::yes, T(1), regions, classes, T(0), cls));
  const T inv_tau = static_cast<T>(1.0 / opt.temperature);
  parallel_for(ctx, N, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T ar = f.regions[static_cast<std::size_t>(r)].inv * inv_tau;
      for (index_t c = 0; c < C; ++c) {
        const bool on = class_mask.empty() || class_mask(c) != 0;
        cls(r, c) = on ? cls(r, c) * ar * f.classes[static_cast<std::size_t>(c)].inv : T(0);
      }
      if (off) {
        T dot = T(0);
        for (index_t d = 0; d < D; ++d) dot += regions(r, d) * background(d);
        logits(r, 0) = dot * ar * f.background.inv;
      }
    }
  });
  return {};
}

/// B2 backward of one row of D values: out(d) = (pre(d) - x^(d) <x^, pre>) a (or += with
/// accumulate), x^ = x a; the projection only where the norm was not clamped / zeroed. Each
/// pre(d) is read before out(d) is written, so out may alias pre.
template <class T, class X, class Pre, class Out>
void l2_backward_row_cpu(index_t D, const l2_factor<T>& f, X&& x, Pre&& pre, Out&& out, bool accumulate) {
  T ug = T(0);
  if (f.project)
    for (index_t d = 0; d < D; ++d) ug += x(d) * f.inv * pre(d);
  for (index_t d = 0; d < D; ++d) {
    const T g = (pre(d) - x(d) * f.inv * ug) * f.inv;
    T& o = out(d);
    o = accumulate ? o + g : g;
  }
}

/// The backward of the classifier given dL/dz (any layout), CPU.
template <class T, class RV, class CV, class BV, class MV, class GV, class GRV, class GBV, class GCV>
status classifier_backward_cpu(const cpu& ctx, const RV& regions, const CV& classes, const BV& background,
                               const MV& class_mask, const GV& grad_logits, const GRV& grad_regions,
                               const GBV& grad_background, const GCV& grad_classes, const classifier_factors<T>& f,
                               const text_classifier_options& opt) {
  const index_t N = regions.extent(0), C = classes.extent(0), D = regions.extent(1);
  const index_t off = background.empty() ? 0 : 1;
  const T inv_tau = static_cast<T>(1.0 / opt.temperature);
  std::vector<T> class_scale(static_cast<std::size_t>(C));  // m_c a_c / tau
  for (index_t c = 0; c < C; ++c)
    class_scale[static_cast<std::size_t>(c)] =
        (class_mask.empty() || class_mask(c) != 0) ? f.classes[static_cast<std::size_t>(c)].inv * inv_tau : T(0);
  const T bg_scale = off ? f.background.inv * inv_tau : T(0);
  constexpr index_t rows_per_block = 64;
  const index_t blocks = (N + rows_per_block - 1) / rows_per_block;

  // ---- regions: E = (G_cls diag(m a / tau)) t  (+ background term), then B2 per row ----
  status first_error;
  std::atomic<bool> failed{false};
  parallel_for(ctx, blocks, [&](index_t b0, index_t b1) {
    std::vector<T> gs(static_cast<std::size_t>(rows_per_block * C)), e(static_cast<std::size_t>(rows_per_block * D));
    for (index_t blk = b0; blk < b1; ++blk) {
      const index_t r0 = blk * rows_per_block, rb = N - r0 < rows_per_block ? N - r0 : rows_per_block;
      for (index_t i = 0; i < rb; ++i)
        for (index_t c = 0; c < C; ++c)
          gs[static_cast<std::size_t>(i * C + c)] = grad_logits(r0 + i, off + c) * class_scale[static_cast<std::size_t>(c)];
      const status st = gemm_any_layout<T>(ctx, transpose::no, transpose::no, T(1), make_view(static_cast<const T*>(gs.data()), rb, C),
                                           classes, T(0), make_view(e.data(), rb, D));
      if (!st.ok()) {
        if (!failed.exchange(true)) first_error = st;
        return;
      }
      for (index_t i = 0; i < rb; ++i) {
        const index_t r = r0 + i;
        T* er = e.data() + i * D;
        if (off) {
          const T gbg = grad_logits(r, 0) * bg_scale;
          for (index_t d = 0; d < D; ++d) er[d] += gbg * background(d);
        }
        l2_backward_row_cpu(
            D, f.regions[static_cast<std::size_t>(r)], [&](index_t d) { return regions(r, d); },
            [&](index_t d) { return er[d]; }, [&](index_t d) -> T& { return grad_regions(r, d); }, opt.accumulate);
      }
    }
  });
  if (failed) return first_error;

  // ---- background: g_w = (1/tau) sum_r G_r,bg e^_r, then B2 ----
  if (off && !grad_background.empty()) {
    std::vector<T> gw(static_cast<std::size_t>(D), T(0));
    for (index_t r = 0; r < N; ++r) {
      const T k = grad_logits(r, 0) * inv_tau * f.regions[static_cast<std::size_t>(r)].inv;
      for (index_t d = 0; d < D; ++d) gw[static_cast<std::size_t>(d)] += k * regions(r, d);
    }
    l2_backward_row_cpu(
        D, f.background, [&](index_t d) { return background(d); }, [&](index_t d) { return gw[static_cast<std::size_t>(d)]; },
        [&](index_t d) -> T& { return grad_background(d); }, opt.accumulate);
  }

  // ---- classes: E_t = sum over row blocks of (G diag(a_r) )^T e, scaled by m_c / tau, then B2 ----
  if (!grad_classes.empty()) {
    std::vector<T> temp;
    host_view<T, 2> target;
    if (opt.accumulate || !grad_classes.inner_contiguous()) {
      temp.assign(static_cast<std::size_t>(C * D), T(0));
      target = make_view(temp.data(), C, D);
    } else {
      target = grad_classes;
    }
    std::vector<T> gs(static_cast<std::size_t>(rows_per_block * C));
    for (index_t blk = 0; blk < blocks; ++blk) {
      const index_t r0 = blk * rows_per_block, rb = N - r0 < rows_per_block ? N - r0 : rows_per_block;
      for (index_t i = 0; i < rb; ++i) {
        const T ar = f.regions[static_cast<std::size_t>(r0 + i)].inv * inv_tau;
        for (index_t c = 0; c < C; ++c) {
          const bool on = class_mask.empty() || class_mask(c) != 0;
          gs[static_cast<std::size_t>(i * C + c)] = on ? grad_logits(r0 + i, off + c) * ar : T(0);
        }
      }
      const auto rblk = make_strided_view(regions.data() + r0 * regions.stride(0), std::array<index_t, 2>{rb, D},
                                          std::array<index_t, 2>{regions.stride(0), regions.stride(1)});
      DISTILL_TRY(gemm_any_layout<T>(ctx, transpose::yes, transpose::no, T(1), make_view(static_cast<const T*>(gs.data()), rb, C),
                                     rblk, blk == 0 ? T(0) : T(1), target));
    }
    parallel_for(ctx, C, [&](index_t c0, index_t c1) {
      for (index_t c = c0; c < c1; ++c)  // target may be grad_classes itself (read before written)
        l2_backward_row_cpu(
            D, f.classes[static_cast<std::size_t>(c)], [&](index_t d) { return classes(c, d); },
            [&](index_t d) { return target(c, d); }, [&](index_t d) -> T& { return grad_classes(c, d); }, opt.accumulate);
    });
  }
  return {};
}

/// Hard-label CE on logits [N, K] in place: writes dL/dz over the logits; returns the loss.
template <class T, class LV, class YV, class WV>
T classifier_cross_entropy_cpu(const cpu& ctx, const LV& z, const YV& labels, const WV& weights,
                               const text_classifier_cross_entropy_options& o) {
  const index_t N = z.extent(0), K = z.extent(1);
  T weight_sum = T(0);
  for (index_t r = 0; r < N; ++r)
    if (labels(r) != o.ignore_index) weight_sum += weights.empty() ? T(1) : weights(r);
  const T inv_div = safe_inverse(reduction_divisor(o.reduction, static_cast<T>(N), weight_sum));
  const T gscale = static_cast<T>(o.grad_scale) * inv_div;
  const T total = parallel_sum<T>(ctx, N, [&](index_t r0, index_t r1) {
    T part = T(0);
    for (index_t r = r0; r < r1; ++r) {
      const std::int64_t y = labels(r);
      const T w = y == o.ignore_index ? T(0) : (weights.empty() ? T(1) : weights(r));
      if (w == T(0)) {
        for (index_t k = 0; k < K; ++k) z(r, k) = T(0);
        continue;
      }
      lse_state<T> st;
      for (index_t k = 0; k < K; ++k) st.add(z(r, k));
      const T lse = st.value();
      part += w * (lse - z(r, y));
      for (index_t k = 0; k < K; ++k) {
        const T p = std::exp(z(r, k) - lse);
        z(r, k) = gscale * w * (p - (k == y ? T(1) : T(0)));
      }
    }
    return part;
  });
  return total * inv_div;
}

}  // namespace features_detail

/// logits [N, K] (K = C + 1 with a background, column 0) of the header comment.
template <class T>
[[nodiscard]] status text_classifier_forward(const cpu& ctx, host_view<T, 2> regions,
                                             host_view<const std::remove_const_t<T>, 2> classes,
                                             host_view<const std::remove_const_t<T>, 1> background,
                                             host_view<const std::uint8_t, 1> class_mask,
                                             host_view<accum_t<T>, 2> logits, host_view<std::byte, 1> /*workspace*/,
                                             const text_classifier_options& opt = {}) {
  features_detail::static_check_cpu_type<T>();
  using U = std::remove_const_t<T>;
  constexpr const char* fn = "text_classifier_forward";
  DISTILL_TRY(features_detail::check_classifier_options(fn, opt));
  index_t K = 0;
  DISTILL_TRY(features_detail::check_classifier_inputs(fn, regions, classes, background, class_mask, K));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "regions", regions, "classes", classes, "background", background));
  DISTILL_TRY(features_detail::check_output(fn, "logits", logits, {regions.extent(0), K}));
  const auto f = features_detail::compute_classifier_factors<U>(ctx, regions, classes, background, opt);
  DISTILL_TRY(features_detail::classifier_logits_cpu<U>(ctx, regions, classes, background, class_mask, logits, f, opt));
  return features_detail::report_classifier_flags(fn, f);
}

/// grad_regions [N, D], grad_background [D] (optional; needs a background), grad_classes [C, D]
/// (optional) from grad_logits [N, K].
template <class T>
[[nodiscard]] status text_classifier_backward(const cpu& ctx, host_view<T, 2> regions,
                                              host_view<const std::remove_const_t<T>, 2> classes,
                                              host_view<const std::remove_const_t<T>, 1> background,
                                              host_view<const std::uint8_t, 1> class_mask,
                                              host_view<const accum_t<T>, 2> grad_logits,
                                              host_view<std::remove_const_t<T>, 2> grad_regions,
                                              host_view<std::remove_const_t<T>, 1> grad_background,
                                              host_view<std::remove_const_t<T>, 2> grad_classes,
                                              host_view<std::byte, 1> /*workspace*/,
                                              const text_classifier_options& opt = {}) {
  features_detail::static_check_cpu_type<T>();
  using U = std::remove_const_t<T>;
  constexpr const char* fn = "text_classifier_backward";
  DISTILL_TRY(features_detail::check_classifier_options(fn, opt));
  index_t K = 0;
  DISTILL_TRY(features_detail::check_classifier_inputs(fn, regions, classes, background, class_mask, K));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "regions", regions, "classes", classes, "background", background));
  DISTILL_TRY(features_detail::check_input(fn, "grad_logits", grad_logits));
  DISTILL_TRY(check_shape(fn, "grad_logits", grad_logits, {regions.extent(0), K}));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "grad_logits", grad_logits));
  DISTILL_TRY(features_detail::check_classifier_grads(fn, regions, classes, background, grad_regions, grad_background, grad_classes));
  const auto f = features_detail::compute_classifier_factors<U>(ctx, regions, classes, background, opt);
  DISTILL_TRY(features_detail::classifier_backward_cpu<U>(ctx, regions, classes, background, class_mask, grad_logits,
                                                          grad_regions, grad_background, grad_classes, f, opt));
  return features_detail::report_classifier_flags(fn, f);
}

namespace features_detail {
template <class T>
status classifier_ce_cpu(const char* fn, const cpu& ctx, host_view<T, 2> regions, host_view<const std::remove_const_t<T>, 2> classes,
                         host_view<const std::remove_const_t<T>, 1> background, host_view<const std::uint8_t, 1> class_mask,
                         label_view<host_space> labels, host_view<const accum_t<T>, 1> row_weights,
                         host_view<accum_t<T>, 1> loss, host_view<std::remove_const_t<T>, 2> grad_regions,
                         host_view<std::remove_const_t<T>, 1> grad_background, host_view<std::remove_const_t<T>, 2> grad_classes,
                         host_view<accum_t<T>, 2> logits_scratch, const text_classifier_options& opt,
                         const text_classifier_cross_entropy_options& ce, bool backward) {
  static_check_cpu_type<T>();
  using U = std::remove_const_t<T>;
  index_t K = 0;
  DISTILL_TRY(check_classifier_ce_args(fn, regions, classes, background, class_mask, labels, row_weights, loss, logits_scratch,
                                       grad_regions, grad_background, grad_classes, opt, ce, backward, K));
  DISTILL_TRY(check_label_range(fn, "labels", labels, K, ce.ignore_index));
  DISTILL_TRY(check_row_weights_host(fn, row_weights));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "regions", regions, "classes", classes, "background", background));
  const auto f = compute_classifier_factors<U>(ctx, regions, classes, background, opt);
  DISTILL_TRY(classifier_logits_cpu<U>(ctx, regions, classes, background, class_mask, logits_scratch, f, opt));
  const U l = classifier_cross_entropy_cpu<U>(ctx, logits_scratch, labels, row_weights, ce);
  if (!loss.empty()) loss(0) = l;
  if (backward)
    DISTILL_TRY(classifier_backward_cpu<U>(ctx, regions, classes, background, class_mask, as_const(logits_scratch),
                                           grad_regions, grad_background, grad_classes, f, opt));
  return report_classifier_flags(fn, f);
}
}  // namespace features_detail

/// Cross-entropy of the classifier's logits against labels [N] (int64; ignore_index skipped),
/// with optional row weights; the logits are computed into logits_scratch [N, K].
template <class T>
[[nodiscard]] status text_classifier_cross_entropy_forward(
    const cpu& ctx, host_view<T, 2> regions, host_view<const std::remove_const_t<T>, 2> classes,
    host_view<const std::remove_const_t<T>, 1> background, host_view<const std::uint8_t, 1> class_mask,
    label_view<host_space> labels, host_view<const accum_t<T>, 1> row_weights, host_view<accum_t<T>, 1> loss,
    host_view<accum_t<T>, 2> logits_scratch, host_view<std::byte, 1> /*workspace*/,
    const text_classifier_cross_entropy_options& opt = {}) {
  constexpr const char* fn = "text_classifier_cross_entropy_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_detail::classifier_ce_cpu(fn, ctx, regions, classes, background, class_mask, labels, row_weights, loss,
                                            {}, {}, {}, logits_scratch, opt, opt, false);
}

/// Loss (may be absent) and the gradients to the regions, the background (optional) and the
/// classes (optional); logits_scratch ends up holding dL/dz.
template <class T>
[[nodiscard]] status text_classifier_cross_entropy_forward_backward(
    const cpu& ctx, host_view<T, 2> regions, host_view<const std::remove_const_t<T>, 2> classes,
    host_view<const std::remove_const_t<T>, 1> background, host_view<const std::uint8_t, 1> class_mask,
    label_view<host_space> labels, host_view<const accum_t<T>, 1> row_weights, host_view<accum_t<T>, 1> loss,
    host_view<std::remove_const_t<T>, 2> grad_regions, host_view<std::remove_const_t<T>, 1> grad_background,
    host_view<std::remove_const_t<T>, 2> grad_classes, host_view<accum_t<T>, 2> logits_scratch,
    host_view<std::byte, 1> /*workspace*/, const text_classifier_cross_entropy_options& opt = {}) {
  constexpr const char* fn = "text_classifier_cross_entropy_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_regions", grad_regions));
  return features_detail::classifier_ce_cpu(fn, ctx, regions, classes, background, class_mask, labels, row_weights, loss,
                                            grad_regions, grad_background, grad_classes, logits_scratch, opt, opt, true);
}

namespace features_detail {
/// The CUDA scratch of the classifier (core/workspace.hpp): the normalisation factors of the
/// regions, classes and background, the class scales, the pre-normalisation gradients and the
/// cross-entropy divisor and partials.
template <class Acc>
struct classifier_scratch {
  Acc *row_inv, *row_proj, *row_scale, *class_inv, *class_proj, *class_scale, *class_on, *class_on_tau;
  Acc *bg_inv, *bg_proj, *e_pre, *t_pre, *w_pre, *inv_div, *partial;
  constexpr classifier_scratch(workspace_carver& w, index_t N, index_t C, index_t D)
      : row_inv(w.take<Acc>(N)),
        row_proj(w.take<Acc>(N)),
        row_scale(w.take<Acc>(N)),
        class_inv(w.take<Acc>(C)),
        class_proj(w.take<Acc>(C)),
        class_scale(w.take<Acc>(C)),
        class_on(w.take<Acc>(C)),
        class_on_tau(w.take<Acc>(C)),
        bg_inv(w.take<Acc>(1)),
        bg_proj(w.take<Acc>(1)),
        e_pre(w.take<Acc>(N * D)),
        t_pre(w.take<Acc>(C * D)),
        w_pre(w.take<Acc>(D)),
        inv_div(w.take<Acc>(1)),
        partial(w.take<Acc>(N)) {}
};
}  // namespace features_detail

/// Bytes of scratch of every text_classifier_* entry point for N regions, C classes and
/// embedding size D of element type T: none on the CPU; on CUDA features_detail::classifier_scratch.
template <class T = float>
constexpr std::size_t text_classifier_workspace_size(const cpu&, index_t /*N*/, index_t /*C*/, index_t /*D*/) noexcept { return 0; }
template <class T = float>
constexpr std::size_t text_classifier_workspace_size(const cuda&, index_t N, index_t C, index_t D) noexcept {
  return workspace_carver::size_of<features_detail::classifier_scratch<accum_t<T>>>(N, C, D);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/text_embedding_classifier.cuh"
#endif
