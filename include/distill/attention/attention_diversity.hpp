// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Attention diversity of FFSD (online knowledge distillation with feature fusion and
//! self-distillation, Li et al., arXiv 2103.14473; code SJLeo/FFSD `CIFARTrainer.py`,
//! `diversity_loss` and `diversity_target`). Student i of an online cohort is pushed away from the spatial attention
//! of student i − 1: where the peer attends least, the student is asked to attend as the peer
//! does; elsewhere it is asked to attend where the peer does not.
//!
//! Per sample b, with the student's features A [B, C, H, W], the peer's (detached) features
//! P [B, C', H, W] and N = H W:
//!   Q[n]  = (1/C) sum_c A[c, n]^2,        u = Q / max(||Q||, eps)                (AT's map, p = 2)
//!   R[n]  = (1/C') sum_c P[c, n]^2,       nu = ||R||,   y = R / max(nu, eps)
//!   theta = the k-th smallest y[n], k = floor(N / 3)   (torch.topk(y, k, largest=False)[-1])
//!   t[n]  = (nu/2 - y[n]) sign(y[n] - theta) + nu/2    the diversity target: y[n] where
//!                                                      y < theta, nu - y[n] where y > theta,
//!                                                      nu/2 at theta (sign(0) = 0)
//!   l_b   = (1/N) sum_n (u[n] - t[n])^2                (t is not normalised, as in the code)
//!   L     = w r sum_b l_b,     r = 1/B (mean, batchmean), 1 (sum); none writes w l_b per sample
//! Gradient (the peer gets none), k_b = grad_scale w r 2 / N:
//!   g_u[n] = k_b (u[n] - t[n])
//!   g_Q    = (g_u - u <u, g_u>) / ||Q||     (B2; g_u / eps when ||Q|| <= eps)
//!   dL/dA[c, n] = g_Q[n] (2 / C) A[c, n]
//!
//! FFSD also feeds the peer's features, moved towards the target, to the student's
//! self-distillation decoder (`diversity_target` in the code):
//!   shifted[c, n] = P[c, n] + (t[n] - y[n]) nu / C'          (attention_diversity_shift)
//!
//! Needs N >= 3 (k >= 1). NaN in a sample gives NaN in its loss and gradient. The CPU path keeps
//! a copy of one sample's peer map per thread (N floats); it needs no workspace.
//! CUDA (kernels/distill/cuda/attention_diversity.cuh; float, float16, bfloat16 features): one
//! block per sample, the maps in the workspace, theta by exact rank counting (ties as on the
//! CPU), fixed-order block reductions; the reduced loss summed by one block (deterministic).
//!
//! Entry points (a distill::cpu or a distill::cuda context; every one takes a workspace of
//! attention_diversity_workspace_size(ctx, ...) bytes before the options, empty on the CPU):
//!   attention_diversity_forward(ctx, student, peer, loss, workspace, opt)
//!   attention_diversity_backward(ctx, student, peer, grad_student, workspace, opt)
//!   attention_diversity_forward_backward(ctx, student, peer, loss, grad_student, workspace, opt)
//!   attention_diversity_target(ctx, peer, target [B, H, W], workspace)
//!   attention_diversity_shift(ctx, peer, shifted [B, C', H, W], workspace)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/reduction.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/core/workspace.hpp"

namespace distill {

struct attention_diversity_options {
  double weight = 1.0;      ///< w >= 0 (FFSD: lambda_diversity, 1e-5 after its warm-up)
  double eps = 1e-12;       ///< clamp of the L2 norms (F.normalize), > 0
  distill::reduction reduction = distill::reduction::mean;  ///< over the batch: mean (= batchmean), sum, or none
  double grad_scale = 1.0;  ///< upstream gradient of the loss
  bool accumulate = false;  ///< add into grad_student instead of overwriting it
  /// CPU: refuse NaN/inf feature maps (errc::non_finite naming the input) before computing; off,
  /// they make the affected samples NaN. CUDA: not inspected (docs/reliability.md).
  bool check_finite = false;
};

/// Bytes of scratch the entry points need (none on the CPU).
inline std::size_t attention_diversity_workspace_size(const cpu&, index_t /*batch*/, index_t /*height*/, index_t /*width*/) noexcept {
  return 0;
}

namespace attention_diversity_detail {
/// The CUDA workspace: the peer's normalised map y and the student's map (later its column
/// factor) of every sample, and the per-sample losses.
struct cuda_scratch {
  float* peer_map;
  float* student_map;
  float* sample_loss;
  constexpr cuda_scratch(workspace_carver& w, index_t batch, index_t spatial)
      : peer_map(w.take<float>(batch * spatial)), student_map(w.take<float>(batch * spatial)), sample_loss(w.take<float>(batch)) {}
};
}  // namespace attention_diversity_detail

/// On CUDA: two float maps per sample and one float per sample.
constexpr std::size_t attention_diversity_workspace_size(const cuda&, index_t batch, index_t height, index_t width) noexcept {
  return workspace_carver::size_of<attention_diversity_detail::cuda_scratch>(batch, height * width);
}

namespace attention_diversity_detail {

/// q[h W + w] = (1/C) sum_c a(b, c, h, w)^2 for one sample; returns ||q||.
template <class Acc, class V>
Acc energy_map(const V& a, index_t b, std::vector<Acc>& q) {
  const index_t C = a.extent(1), H = a.extent(2), W = a.extent(3);
  q.assign(static_cast<std::size_t>(H * W), Acc(0));
  for (index_t c = 0; c < C; ++c)
    for (index_t h = 0; h < H; ++h)
      for (index_t w = 0; w < W; ++w) {
        const Acc v = load<Acc>(a(b, c, h, w));
        q[static_cast<std::size_t>(h * W + w)] += v * v;
      }
  Acc ss = 0;
  for (auto& v : q) v /= static_cast<Acc>(C), ss += v * v;
  return std::sqrt(ss);
}

/// One sample's peer statistics: y = R / max(nu, eps) (in `y`), nu and theta.
template <class Acc>
struct peer_map {
  std::vector<Acc> y, sorted;
  Acc nu = 0, theta = 0;

  template <class V>
  void compute(const V& peer, index_t b, Acc eps) {
    const index_t N = peer.extent(2) * peer.extent(3);
    nu = energy_map(peer, b, y);
    const Acc n = nu < eps ? eps : nu;
    for (auto& v : y) v /= n;
    sorted = y;
    const auto k = static_cast<std::size_t>(N / 3);  // >= 1 (checked)
    std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k - 1), sorted.end());
    theta = sorted[k - 1];
  }
  Acc target(std::size_t n) const {
    const Acc d = y[n] - theta;
    const Acc s = d > Acc(0) ? Acc(1) : d < Acc(0) ? Acc(-1) : Acc(0);
    return (nu / Acc(2) - y[n]) * s + nu / Acc(2);
  }
};

template <class VS, class VP>
status check_pair(const char* fn, const VS& student, const VP& peer) {
  DISTILL_TRY(check_present(fn, "student", student));
  DISTILL_TRY(check_present(fn, "peer", peer));
  DISTILL_TRY(check_nonempty(fn, "student", student));
  DISTILL_TRY(check_nonempty(fn, "peer", peer));
  DISTILL_TRY(check_strides(fn, "student", student));
  DISTILL_TRY(check_strides(fn, "peer", peer));
  DISTILL_TRY(check_extent(fn, "peer", peer, 0, student.extent(0), "the batch of 'student'"));
  DISTILL_TRY(check_extent(fn, "peer", peer, 2, student.extent(2), "the height of 'student'"));
  DISTILL_TRY(check_extent(fn, "peer", peer, 3, student.extent(3), "the width of 'student'"));
  if (student.extent(2) * student.extent(3) < 3)
    return fail(errc::shape_mismatch, fn, "the maps need at least 3 positions (H * W >= 3), got " + check_detail::shape_of(student));
  return {};
}

inline status check_options(const char* fn, const attention_diversity_options& o) {
  if (!std::isfinite(o.weight) || o.weight < 0) return fail(errc::invalid_argument, fn, "'weight' must be finite and >= 0");
  if (!std::isfinite(o.eps) || o.eps <= 0) return fail(errc::invalid_argument, fn, "'eps' must be finite and > 0");
  if (!std::isfinite(o.grad_scale)) return fail(errc::invalid_argument, fn, "'grad_scale' must be finite");
  return {};
}

template <class VL>
status check_loss(const char* fn, const VL& loss, index_t batch, distill::reduction red) {
  if (loss.empty()) return {};
  return check_shape(fn, "loss", loss, {red == distill::reduction::none ? batch : index_t(1)});
}

/// The loss (and gradient when `grad` is present) of every sample, in parallel over samples.
template <class TS, class TP, class TG, class TL>
status run(const char* fn, const cpu& ctx, host_view<TS, 4> student, host_view<TP, 4> peer, host_view<TL, 1> loss,
           host_view<TG, 4> grad, const attention_diversity_options& o) {
  using Acc = accum_t<std::remove_const_t<TS>>;
  DISTILL_TRY(check_options(fn, o));
  DISTILL_TRY(check_pair(fn, student, peer));
  const index_t B = student.extent(0), C = student.extent(1), H = student.extent(2), W = student.extent(3), N = H * W;
  DISTILL_TRY(check_loss(fn, loss, B, o.reduction));
  if (!grad.empty()) DISTILL_TRY(check_same_shape(fn, "grad_student", grad, "student", student));
  if (o.check_finite) {
    DISTILL_TRY(check_finite(fn, "student", student));
    DISTILL_TRY(check_finite(fn, "peer", peer));
  }
  const double r = o.reduction == distill::reduction::sum || o.reduction == distill::reduction::none ? 1.0 : 1.0 / static_cast<double>(B);
  const Acc eps = static_cast<Acc>(o.eps), lw = static_cast<Acc>(o.weight * r), gw = static_cast<Acc>(o.grad_scale * o.weight * r);
  std::vector<Acc> sample_loss(static_cast<std::size_t>(B));
  parallel_for(ctx, B, [&](index_t b0, index_t b1) {
    peer_map<Acc> pm;
    std::vector<Acc> q;
    for (index_t b = b0; b < b1; ++b) {
      pm.compute(peer, b, eps);
      const Acc norm = energy_map(student, b, q);
      const bool clamped = !(norm >= eps);
      const Acc ns = clamped ? eps : norm;
      Acc l = 0, ug = 0;  // sum (u - t)^2 and <u, u - t>
      for (std::size_t n = 0; n < q.size(); ++n) {
        const Acc u = q[n] / ns, d = u - pm.target(n);
        l += d * d;
        ug += u * d;
      }
      sample_loss[static_cast<std::size_t>(b)] = l / static_cast<Acc>(N);
      if (grad.empty()) continue;
      const Acc k = gw * Acc(2) / static_cast<Acc>(N);
      for (index_t h = 0; h < H; ++h)
        for (index_t w = 0; w < W; ++w) {
          const std::size_t n = static_cast<std::size_t>(h * W + w);
          const Acc u = q[n] / ns, gu = u - pm.target(n);
          const Acc gq = k * (clamped ? gu : gu - u * ug) / ns * Acc(2) / static_cast<Acc>(C);
          for (index_t c = 0; c < C; ++c) {
            auto& dst = grad(b, c, h, w);
            const Acc v = gq * load<Acc>(student(b, c, h, w));
            dst = store<std::remove_const_t<TG>>(o.accumulate ? load<Acc>(dst) + v : v);
          }
        }
    }
  });
  if (!loss.empty()) {
    if (o.reduction == distill::reduction::none) {
      for (index_t b = 0; b < B; ++b) loss(b) = static_cast<TL>(lw * sample_loss[static_cast<std::size_t>(b)]);
    } else {
      Acc s = 0;
      for (Acc v : sample_loss) s += v;  // in sample order: deterministic
      loss(0) = static_cast<TL>(lw * s);
    }
  }
  return {};
}

template <class VP>
status check_peer(const char* fn, const VP& peer) {
  DISTILL_TRY(check_present(fn, "peer", peer));
  DISTILL_TRY(check_nonempty(fn, "peer", peer));
  DISTILL_TRY(check_strides(fn, "peer", peer));
  if (peer.extent(2) * peer.extent(3) < 3)
    return fail(errc::shape_mismatch, fn, "the maps need at least 3 positions (H * W >= 3), got " + check_detail::shape_of(peer));
  return {};
}

}  // namespace attention_diversity_detail

/// L (see the file comment) written to `loss`: (1), or (B) with reduction none.
template <class TS, class TP>
[[nodiscard]] status attention_diversity_forward(const cpu& ctx, host_view<TS, 4> student, host_view<TP, 4> peer,
                                                 host_view<accum_t<std::remove_const_t<TS>>, 1> loss, host_view<std::byte, 1> workspace,
                                                 const attention_diversity_options& opt = {}) {
  (void)workspace;
  constexpr const char* fn = "attention_diversity_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return attention_diversity_detail::run(fn, ctx, student, peer, loss, host_view<std::remove_const_t<TS>, 4>{}, opt);
}

/// dL/dstudent [B, C, H, W] (times grad_scale; added with accumulate).
template <class TS, class TP>
[[nodiscard]] status attention_diversity_backward(const cpu& ctx, host_view<TS, 4> student, host_view<TP, 4> peer,
                                                  host_view<std::remove_const_t<TS>, 4> grad_student, host_view<std::byte, 1> workspace,
                                                  const attention_diversity_options& opt = {}) {
  (void)workspace;
  constexpr const char* fn = "attention_diversity_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return attention_diversity_detail::run(fn, ctx, student, peer, host_view<accum_t<std::remove_const_t<TS>>, 1>{}, grad_student, opt);
}

/// Loss (may be absent) and gradient in one pass.
template <class TS, class TP>
[[nodiscard]] status attention_diversity_forward_backward(const cpu& ctx, host_view<TS, 4> student, host_view<TP, 4> peer,
                                                          host_view<accum_t<std::remove_const_t<TS>>, 1> loss,
                                                          host_view<std::remove_const_t<TS>, 4> grad_student,
                                                          host_view<std::byte, 1> workspace, const attention_diversity_options& opt = {}) {
  (void)workspace;
  constexpr const char* fn = "attention_diversity_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return attention_diversity_detail::run(fn, ctx, student, peer, loss, grad_student, opt);
}

/// The diversity target t [B, H, W] of the peer's features (see the file comment).
template <class TP, class TT>
[[nodiscard]] status attention_diversity_target(const cpu& ctx, host_view<TP, 4> peer, host_view<TT, 3> target,
                                                host_view<std::byte, 1> workspace, double eps = 1e-12) {
  (void)workspace;
  static_assert(!std::is_const_v<TT>, "attention_diversity_target: 'target' is an output");
  constexpr const char* fn = "attention_diversity_target";
  DISTILL_TRY(attention_diversity_detail::check_peer(fn, peer));
  DISTILL_TRY(check_shape(fn, "target", target, {peer.extent(0), peer.extent(2), peer.extent(3)}));
  if (!std::isfinite(eps) || eps <= 0) return fail(errc::invalid_argument, fn, "'eps' must be finite and > 0");
  using Acc = accum_t<TT>;
  const index_t W = peer.extent(3);
  parallel_for(ctx, peer.extent(0), [&](index_t b0, index_t b1) {
    attention_diversity_detail::peer_map<Acc> pm;
    for (index_t b = b0; b < b1; ++b) {
      pm.compute(peer, b, static_cast<Acc>(eps));
      for (std::size_t n = 0; n < pm.y.size(); ++n)
        target(b, static_cast<index_t>(n) / W, static_cast<index_t>(n) % W) = store<TT>(pm.target(n));
    }
  });
  return {};
}

/// shifted [B, C', H, W] = peer + (t - y) nu / C' broadcast over the channels (FFSD's decoder
/// input). `shifted` may be the peer's own memory.
template <class TP, class TO>
[[nodiscard]] status attention_diversity_shift(const cpu& ctx, host_view<TP, 4> peer, host_view<TO, 4> shifted,
                                               host_view<std::byte, 1> workspace, double eps = 1e-12) {
  (void)workspace;
  static_assert(!std::is_const_v<TO>, "attention_diversity_shift: 'shifted' is an output");
  constexpr const char* fn = "attention_diversity_shift";
  DISTILL_TRY(attention_diversity_detail::check_peer(fn, peer));
  DISTILL_TRY(check_same_shape(fn, "shifted", shifted, "peer", peer));
  if (!std::isfinite(eps) || eps <= 0) return fail(errc::invalid_argument, fn, "'eps' must be finite and > 0");
  using Acc = accum_t<TO>;
  const index_t C = peer.extent(1), H = peer.extent(2), W = peer.extent(3);
  parallel_for(ctx, peer.extent(0), [&](index_t b0, index_t b1) {
    attention_diversity_detail::peer_map<Acc> pm;
    for (index_t b = b0; b < b1; ++b) {
      pm.compute(peer, b, static_cast<Acc>(eps));
      const Acc scale = pm.nu / static_cast<Acc>(C);
      for (index_t h = 0; h < H; ++h)
        for (index_t w = 0; w < W; ++w) {
          const std::size_t n = static_cast<std::size_t>(h * W + w);
          const Acc d = (pm.target(n) - pm.y[n]) * scale;
          for (index_t c = 0; c < C; ++c) shifted(b, c, h, w) = store<TO>(load<Acc>(peer(b, c, h, w)) + d);
        }
    }
  });
  return {};
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/attention_diversity.cuh"
#endif
