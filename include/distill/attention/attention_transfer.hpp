// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).
//!
//! Inputs: student features A^s [B, C_s, H, W] and teacher features A^t [B, C_t, H, W] (NCHW; the
//! channel counts may differ, the spatial sizes may not: pool the larger map first, as
//! RepDistiller does). Per sample b, with N = H*W:
//!
//!   Q_b[n]  = (1/C) sum_c |A_{b,c,n}|^p                     spatial attention map (p > 0, default 2)
//!   u_b     = Q_b / max(||Q_b||_2, eps)                      L2-normalised (F.normalize, eps = 1e-12)
//!   d_b^2   = sum_n (u^s_b[n] - u^t_b[n])^2
//!   l_b     = beta * d_b^2 / N        form = squared_mean (the authors' code, at_loss: mean of squares)
//!   l_b     = beta / 2 * d_b          form = paper_norm   (the paper: beta/2 * ||u_s - u_t||_2, not squared)
//!   L       = w * r * sum_b l_b       r = 1/B (reduction mean / batchmean) or 1 (sum);
//!                                     reduction none writes w * l_b per sample
//!
//! With beta = 1e3 and the squared_mean form this is exactly `(at(x) - at(y)).pow(2).mean()` times
//! 1e3 of the official code (the channel mean instead of the paper's channel sum cancels in the
//! normalisation). Several layer pairs j in one call add up: L = sum_j w_j L_j.
//!
//! Gradients (teacher gets none); g = grad_scale * w * r:
//!   g_u[n]  = k (u^s[n] - u^t[n]),    k = g * 2 beta / N                     (squared_mean)
//!                                     k = g * beta / (2 max(d_b, eps)), 0 when d_b = 0  (paper_norm)
//!   g_Q     = (g_u - u^s <u^s, g_u>) / ||Q^s|| = (k / n_s) (<u^s, u^t> u^s - u^t)   (B2; n = clamped
//!             norms; when ||Q^s|| <= eps the normalisation is Q^s / eps and g_Q = (k / eps)(u^s - u^t))
//!   dL/dA^s_{b,c,n} = g_Q[n] * (1/C_s) * p |A|^{p-1} sign(A)           (= (2/C_s) g_Q A for p = 2;
//!                                                                        0 at A = 0 for p != 2)
//! For odd or non-integer p the energy is |A|^p (pow(p) alone is only right for even p).
//!
//! Numbers: NaN in a sample's features gives NaN for that sample's loss and gradient (and so for
//! the reduced loss); features so large that |A|^p overflows give inf/NaN the same way (float
//! accumulation; for p > 2 watch float16 inputs). A sample whose student map is all zeros has
//! ||Q^s|| <= eps and follows F.normalize's clamp.
//!
//! In place: grad_student may be the very view of the student (same pointer and strides); the
//! gradient then overwrites the features, on both backends.
//!
//! Entry points, the same for a distill::cpu and a distill::cuda context (CUDA engine in
//! kernels/distill/cuda/attention_transfer.cuh):
//!   attention_transfer_forward(ctx, student, teacher, loss, workspace, opt)
//!   attention_transfer_backward(ctx, student, teacher, grad_student, workspace, opt)
//!   attention_transfer_forward_backward(ctx, student, teacher, loss, grad_student, workspace, opt)
//!   ... and the same three taking a range of attention_transfer_layer {student, teacher,
//!   grad_student, weight} instead of one pair: (ctx, layers, [loss,] workspace, opt).
//! `workspace` holds attention_transfer_workspace_size(ctx, B, H, W) bytes (0 on the CPU: {}).

#include <cmath>
#include <cstddef>
#include <ranges>
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

/// Which loss of the two in the literature.
enum class attention_transfer_form {
  squared_mean,  ///< beta * mean_n (u_s - u_t)^2 per sample: the authors' code (`at_loss`), RepDistiller, mdistiller
  paper_norm,    ///< beta / 2 * ||u_s - u_t||_2 per sample: the paper's equation (not squared)
};

/// CUDA decomposition (ignored by the CPU path).
enum class attention_transfer_cuda_algorithm {
  automatic,      ///< fused_cluster where the device and the shape allow it, otherwise two_pass
  two_pass,       ///< map kernel, per-sample kernel, gradient kernel: reads the student twice; any shape
  fused_cluster,  ///< sm_90 thread-block cluster per sample keeps the student slice in shared memory:
                  ///< reads it once. Refused (invalid_argument) where unavailable.
};

struct attention_transfer_options {
  double p = 2.0;       ///< exponent of the channel energy |A|^p, finite and > 0
  double beta = 1.0;    ///< loss weight beta >= 0 (the paper and its code use 1e3 with squared_mean)
  attention_transfer_form form = attention_transfer_form::squared_mean;
  distill::reduction reduction = distill::reduction::mean;  ///< over the batch: mean (= batchmean), sum, or none (per sample)
  double eps = 1e-12;   ///< clamp of the L2 norms (F.normalize), > 0
  double grad_scale = 1.0;  ///< upstream gradient of the loss
  bool accumulate = false;  ///< add into grad_student instead of overwriting it
  attention_transfer_cuda_algorithm cuda_algorithm = attention_transfer_cuda_algorithm::automatic;
  /// CPU: refuse NaN/inf feature maps (errc::non_finite naming the input) before computing; off,
  /// they make the affected samples' loss and gradient NaN. CUDA: not inspected (docs/reliability.md).
  bool check_finite = false;
};

/// One (student, teacher) layer pair of a multi-layer call. `grad_student` may be absent for
/// the forward pass; `weight` multiplies this pair's loss and gradient.
template <class TS, class TT, class Space = host_space>
struct attention_transfer_layer {
  tensor_view<const TS, 4, Space> student;   ///< [B, C_s, H, W]
  tensor_view<const TT, 4, Space> teacher;   ///< [B, C_t, H, W]
  tensor_view<TS, 4, Space> grad_student;    ///< [B, C_s, H, W], or absent
  double weight = 1.0;
};

namespace attention_transfer_detail {
/// The CUDA scratch of one layer pair (core/workspace.hpp): the two attention maps, the
/// per-sample losses and the completion counter.
struct cuda_scratch {
  float* student_map;
  float* teacher_map;
  float* sample_loss;
  unsigned* counter;
  constexpr cuda_scratch(workspace_carver& w, index_t batch, index_t spatial)
      : student_map(w.take<float>(batch * spatial)),
        teacher_map(w.take<float>(batch * spatial)),
        sample_loss(w.take<float>(batch)),
        counter(w.take<unsigned>(1)) {}
};
}  // namespace attention_transfer_detail

/// Bytes of scratch the entry points need for features [batch, *, height, width] (for several
/// layer pairs: the maximum over the pairs). CPU: none. CUDA: the two attention maps, the
/// per-sample losses and a counter; 16-byte aligned, contents need no initialisation.
constexpr std::size_t attention_transfer_workspace_size(const cpu&, index_t /*batch*/, index_t /*height*/,
                                                        index_t /*width*/) noexcept {
  return 0;
}
constexpr std::size_t attention_transfer_workspace_size(const cuda&, index_t batch, index_t height, index_t width) noexcept {
  return workspace_carver::size_of<attention_transfer_detail::cuda_scratch>(batch, height * width);
}

namespace attention_transfer_detail {

// ---- scalar math shared by the CPU loops and the CUDA kernels ----

enum : int { power_generic = 0, power_one = 1, power_two = 2 };

inline int power_case(double p) noexcept { return p == 2.0 ? power_two : p == 1.0 ? power_one : power_generic; }

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc pow_(Acc x, Acc y) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Acc) == 4) return powf(x, y);
  else return ::pow(x, y);
#else
  return std::pow(x, y);
#endif
}

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc sqrt_(Acc x) noexcept {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Acc) == 4) return sqrtf(x);
  else return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

/// Channel energy |a|^p; PC = power_two / power_one / power_generic selects a^2, |a|, pow.
template <int PC, class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc channel_energy(Acc a, Acc p) noexcept {
  if constexpr (PC == power_two) {
    return a * a;
  } else {
    const Acc m = a < Acc(0) ? -a : a;
    if constexpr (PC == power_one) return m;
    else return pow_(m, p);
  }
}

/// d|a|^p / da = p |a|^(p-1) sign(a); 0 at a = 0 for p != 2 (subgradient, and the documented
/// value where the derivative is infinite for p < 1).
template <int PC, class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc channel_energy_derivative(Acc a, Acc p) noexcept {
  if constexpr (PC == power_two) {
    return Acc(2) * a;
  } else {
    if (a == Acc(0)) return Acc(0);
    const Acc s = a < Acc(0) ? Acc(-1) : Acc(1);
    if constexpr (PC == power_one) return s;
    else return s * p * pow_(s * a, p - Acc(1));
  }
}

/// Everything a per-sample step needs, prepared on the host (trivially copyable for kernels).
template <class Acc>
struct sample_params {
  Acc p;
  Acc beta;
  Acc eps;
  Acc loss_weight;    ///< w * r
  Acc grad_weight;    ///< grad_scale * w * r
  Acc inv_channels;   ///< 1 / C_s
  Acc spatial;        ///< N = H * W
  int form;           ///< 0 = squared_mean, 1 = paper_norm
};

/// max(sqrt(sq), eps), keeping NaN.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc clamped_norm(Acc sq, Acc eps) noexcept {
  const Acc n = sqrt_(sq);
  return n < eps ? eps : n;
}

template <class Acc>
struct sample_result {
  Acc loss;   ///< w * r * l_b
  Acc scale;  ///< k / n_s
  Acc cos;    ///< <u^s, u^t>, or 1 when ||Q^s|| <= eps
};

/// Per-sample loss and gradient coefficients from ss = ||Q^s||^2, st = <Q^s, Q^t>, the clamped
/// norms and d2 = sum (Q^s/n_s - Q^t/n_t)^2 (computed directly, not expanded, for accuracy).
/// The column gradient is then g_Q[n] = scale * (cos * Q^s[n]/n_s - Q^t[n]/n_t) (column_factor),
/// which is exactly 0 on 1x1 maps, where u^s = u^t = 1.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE sample_result<Acc> sample_coefficients(Acc ss, Acc st, Acc d2, Acc ns, Acc nt,
                                                                               const sample_params<Acc>& P) noexcept {
  Acc l, k;
  if (P.form == 0) {
    l = P.beta * d2 / P.spatial;
    k = P.grad_weight * Acc(2) * P.beta / P.spatial;
  } else {
    const Acc d = sqrt_(d2);
    l = P.beta / Acc(2) * d;
    const Acc dc = d < P.eps ? P.eps : d;
    k = d2 == Acc(0) ? Acc(0) : P.grad_weight * P.beta / (Acc(2) * dc);
  }
  const bool clamped = !(sqrt_(ss) >= P.eps);  // the normalisation used eps (NaN lands here and stays NaN)
  sample_result<Acc> r;
  r.loss = P.loss_weight * l;
  r.scale = k / ns;
  r.cos = clamped ? Acc(1) : st / (ns * nt);
  return r;
}

/// dL/dA^s_{b,c,n} = column_factor(...) * d|A|^p/dA: g_Q[n] / C_s.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc column_factor(const sample_result<Acc>& r, Acc qs, Acc qt, Acc ns, Acc nt,
                                                          Acc inv_channels) noexcept {
  return r.scale * (r.cos * (qs / ns) - qt / nt) * inv_channels;
}

template <class Acc>
sample_params<Acc> make_params(const attention_transfer_options& opt, double weight, index_t batch, index_t channels,
                               index_t spatial) {
  const double r = opt.reduction == reduction::sum || opt.reduction == reduction::none ? 1.0 : 1.0 / static_cast<double>(batch);
  sample_params<Acc> P;
  P.p = static_cast<Acc>(opt.p);
  P.beta = static_cast<Acc>(opt.beta);
  P.eps = static_cast<Acc>(opt.eps);
  P.loss_weight = static_cast<Acc>(weight * r);
  P.grad_weight = static_cast<Acc>(opt.grad_scale * weight * r);
  P.inv_channels = static_cast<Acc>(1.0 / static_cast<double>(channels));
  P.spatial = static_cast<Acc>(spatial);
  P.form = opt.form == attention_transfer_form::squared_mean ? 0 : 1;
  return P;
}

// ---- validation, shared by both backends ----

inline status check_finite_option(const char* fn, const char* name, double v, bool positive, bool nonnegative) {
  const bool ok = std::isfinite(v) && (!positive || v > 0) && (!nonnegative || v >= 0);
  if (!ok)
    return fail(errc::invalid_argument, fn,
                std::string("'") + name + "' must be finite" + (positive ? " and > 0" : nonnegative ? " and >= 0" : "") +
                    ", got " + check_detail::num(v));
  return {};
}

inline status check_options(const char* fn, const attention_transfer_options& opt) {
  DISTILL_TRY(check_finite_option(fn, "p", opt.p, true, false));
  DISTILL_TRY(check_finite_option(fn, "beta", opt.beta, false, true));
  DISTILL_TRY(check_finite_option(fn, "eps", opt.eps, true, false));
  DISTILL_TRY(check_finite_option(fn, "grad_scale", opt.grad_scale, false, false));
  if (opt.form != attention_transfer_form::squared_mean && opt.form != attention_transfer_form::paper_norm)
    return fail(errc::invalid_argument, fn, "'form' is not a valid attention_transfer_form");
  if (opt.reduction != reduction::none && opt.reduction != reduction::sum && opt.reduction != reduction::mean &&
      opt.reduction != reduction::batchmean)
    return fail(errc::invalid_argument, fn, "'reduction' is not a valid reduction");
  return {};
}

/// Shapes and strides of one layer pair. `sname`/`tname`/`gname` name the arguments (they carry
/// the layer index in multi-layer calls).
template <class VS, class VT, class VG>
status check_pair(const char* fn, const std::string& sname, const VS& student, const std::string& tname, const VT& teacher,
                  const std::string& gname, const VG& grad, bool need_grad) {
  DISTILL_TRY(check_present(fn, sname.c_str(), student));
  DISTILL_TRY(check_present(fn, tname.c_str(), teacher));
  DISTILL_TRY(check_nonempty(fn, sname.c_str(), student));
  DISTILL_TRY(check_nonempty(fn, tname.c_str(), teacher));
  DISTILL_TRY(check_strides(fn, sname.c_str(), student));
  DISTILL_TRY(check_strides(fn, tname.c_str(), teacher));
  DISTILL_TRY(check_aligned(fn, sname.c_str(), student));
  DISTILL_TRY(check_aligned(fn, tname.c_str(), teacher));
  if (teacher.extent(0) != student.extent(0))
    return fail(errc::shape_mismatch, fn,
                "'" + tname + "' has batch size " + std::to_string(teacher.extent(0)) + " but '" + sname + "' has " +
                    std::to_string(student.extent(0)));
  if (teacher.extent(2) != student.extent(2) || teacher.extent(3) != student.extent(3))
    return fail(errc::shape_mismatch, fn,
                "attention transfer needs equal spatial sizes: '" + sname + "' is " + std::to_string(student.extent(2)) +
                    "x" + std::to_string(student.extent(3)) + " but '" + tname + "' is " +
                    std::to_string(teacher.extent(2)) + "x" + std::to_string(teacher.extent(3)) +
                    " (pool the larger map to the smaller size first; channel counts may differ)");
  if (need_grad) {
    DISTILL_TRY(check_present(fn, gname.c_str(), grad));
    DISTILL_TRY(check_same_shape(fn, gname.c_str(), grad, sname.c_str(), student));
    DISTILL_TRY(check_strides(fn, gname.c_str(), grad));
    DISTILL_TRY(check_aligned(fn, gname.c_str(), grad));
  }
  return {};
}

template <class VL>
status check_loss(const char* fn, const VL& loss, index_t batch, reduction red) {
  DISTILL_TRY(check_present(fn, "loss", loss));
  DISTILL_TRY(check_strides(fn, "loss", loss));
  DISTILL_TRY(check_aligned(fn, "loss", loss));
  const index_t want = red == reduction::none ? batch : 1;
  if (loss.extent(0) != want)
    return fail(errc::shape_mismatch, fn,
                "'loss' has extent " + std::to_string(loss.extent(0)) + ", expected " + std::to_string(want) +
                    (red == reduction::none ? " (one loss per sample with reduction none)" : " (a reduced loss)"));
  return {};
}

template <class L>
struct layer_traits : std::false_type {};
template <class TS, class TT, class S>
struct layer_traits<attention_transfer_layer<TS, TT, S>> : std::true_type {
  using space = S;
  using student_type = TS;
  using teacher_type = TT;
};

template <class R>
using layer_of = std::remove_cv_t<std::ranges::range_value_t<const R>>;

/// A contiguous range (span, vector, array) of attention_transfer_layer in memory space `Space`.
template <class R, class Space>
concept layer_range = std::ranges::contiguous_range<const R> && layer_traits<layer_of<R>>::value &&
                      std::is_same_v<typename layer_traits<layer_of<R>>::space, Space>;

template <class R>
using layers_accum_t = accum_t<typename layer_traits<layer_of<R>>::student_type>;

inline std::string indexed(const char* name, std::size_t j) {
  return std::string("layers[") + std::to_string(j) + "]." + name;
}

/// Checks of layer j shared by the CPU and CUDA paths: its student/teacher pair (and gradient
/// when needed), the batch size B of layer 0, a finite weight, and with `check_values` (the
/// options' check_finite) finite maps.
template <class L>
status check_layer(const char* fn, std::size_t j, const L& layer, index_t B, bool need_grad, bool check_values = false) {
  DISTILL_TRY(check_pair(fn, indexed("student", j), layer.student, indexed("teacher", j), layer.teacher, indexed("grad_student", j),
                         layer.grad_student, need_grad));
  if (check_values) {
    DISTILL_TRY(check_finite(fn, indexed("student", j).c_str(), layer.student));
    DISTILL_TRY(check_finite(fn, indexed("teacher", j).c_str(), layer.teacher));
  }
  if (layer.student.extent(0) != B) {
    const std::string name = indexed("student", j);
    return fail(errc::shape_mismatch, fn,
                "'" + name + "' has batch size " + std::to_string(layer.student.extent(0)) + " but 'layers[0].student' has " +
                    std::to_string(B));
  }
  return check_finite_option(fn, indexed("weight", j).c_str(), layer.weight, false, false);
}

// ---- CPU path ----

template <class F>
decltype(auto) with_power_case(int pc, F&& f) {
  switch (pc) {
    case power_two: return f(std::integral_constant<int, power_two>{});
    case power_one: return f(std::integral_constant<int, power_one>{});
    default: return f(std::integral_constant<int, power_generic>{});
  }
}

/// q[n] = sum_c |a_{b,c,n}|^p (n = h * W + w); the caller scales by 1/C.
template <int PC, class Acc, class T>
void channel_energy_sum(const host_view<T, 4>& a, index_t b, Acc p, Acc* q) {
  const index_t C = a.extent(1), H = a.extent(2), W = a.extent(3);
  const index_t sc = a.stride(1), sh = a.stride(2), sw = a.stride(3);
  for (index_t n = 0; n < H * W; ++n) q[n] = Acc(0);
  const T* base = a.data() + b * a.stride(0);
  for (index_t c = 0; c < C; ++c) {
    for (index_t h = 0; h < H; ++h) {
      const T* row = base + c * sc + h * sh;
      Acc* qr = q + h * W;
      if (sw == 1) {
        for (index_t w = 0; w < W; ++w) qr[w] += channel_energy<PC>(load<Acc>(row[w]), p);
      } else {
        for (index_t w = 0; w < W; ++w) qr[w] += channel_energy<PC>(load<Acc>(row[w * sw]), p);
      }
    }
  }
}

/// grad_{b,c,n} (+)= G[n] * d|a|^p/da.
template <int PC, class Acc, class T, class TG>
void write_gradient(const host_view<T, 4>& a, const host_view<TG, 4>& g, index_t b, Acc p, const Acc* G, bool accumulate) {
  const index_t C = a.extent(1), H = a.extent(2), W = a.extent(3);
  const T* abase = a.data() + b * a.stride(0);
  TG* gbase = g.data() + b * g.stride(0);
  for (index_t c = 0; c < C; ++c) {
    for (index_t h = 0; h < H; ++h) {
      const T* ar = abase + c * a.stride(1) + h * a.stride(2);
      TG* gr = gbase + c * g.stride(1) + h * g.stride(2);
      const Acc* Gr = G + h * W;
      const index_t saw = a.stride(3), sgw = g.stride(3);
      if (saw == 1 && sgw == 1) {
        if (accumulate) {
          for (index_t w = 0; w < W; ++w)
            gr[w] = store<TG>(load<Acc>(gr[w]) + Gr[w] * channel_energy_derivative<PC>(load<Acc>(ar[w]), p));
        } else {
          for (index_t w = 0; w < W; ++w) gr[w] = store<TG>(Gr[w] * channel_energy_derivative<PC>(load<Acc>(ar[w]), p));
        }
      } else {
        for (index_t w = 0; w < W; ++w) {
          const Acc v = Gr[w] * channel_energy_derivative<PC>(load<Acc>(ar[w * saw]), p);
          gr[w * sgw] = store<TG>(accumulate ? load<Acc>(gr[w * sgw]) + v : v);
        }
      }
    }
  }
}

/// One layer pair on the CPU: per-sample losses into `sample_loss` (B entries, already weighted),
/// and the gradient when `grad` is present. Parallel over samples; deterministic.
template <class TS, class TT, class TG, class Acc>
void layer_cpu(const cpu& ctx, const host_view<TS, 4>& student, const host_view<TT, 4>& teacher,
               const host_view<TG, 4>& grad, const sample_params<Acc>& P, int pc, bool accumulate, Acc* sample_loss) {
  const index_t B = student.extent(0), N = student.extent(2) * student.extent(3);
  const Acc inv_ct = Acc(1) / static_cast<Acc>(teacher.extent(1));
  const index_t work_per_sample = (student.extent(1) + teacher.extent(1)) * N;
  const index_t min_chunk = work_per_sample >= (index_t(1) << 14) ? 1 : std::max<index_t>(1, (index_t(1) << 14) / work_per_sample);
  parallel_for(
      ctx, B,
      [&](index_t b0, index_t b1) {
        std::vector<Acc> qs(static_cast<std::size_t>(N)), qt(static_cast<std::size_t>(N));
        for (index_t b = b0; b < b1; ++b) {
          with_power_case(pc, [&](auto pcc) {
            constexpr int PC = decltype(pcc)::value;
            channel_energy_sum<PC>(student, b, P.p, qs.data());
            channel_energy_sum<PC>(teacher, b, P.p, qt.data());
          });
          Acc ss = 0, tt = 0, st = 0;
          for (index_t n = 0; n < N; ++n) {
            qs[n] *= P.inv_channels;
            qt[n] *= inv_ct;
            ss += qs[n] * qs[n];
            tt += qt[n] * qt[n];
            st += qs[n] * qt[n];
          }
          const Acc ns = clamped_norm(ss, P.eps), nt = clamped_norm(tt, P.eps);
          Acc d2 = 0;
          for (index_t n = 0; n < N; ++n) {
            const Acc d = qs[n] / ns - qt[n] / nt;  // division (not a reciprocal): u is exactly 1 on 1x1 maps
            d2 += d * d;
          }
          const sample_result<Acc> r = sample_coefficients(ss, st, d2, ns, nt, P);
          sample_loss[b] = r.loss;
          if (!grad.empty()) {
            for (index_t n = 0; n < N; ++n) qs[n] = column_factor(r, qs[n], qt[n], ns, nt, P.inv_channels);
            with_power_case(pc, [&](auto pcc) {
              write_gradient<decltype(pcc)::value>(student, grad, b, P.p, qs.data(), accumulate);
            });
          }
        }
      },
      min_chunk);
}

/// Writes (or adds, for later layers) the weighted per-sample losses into `loss`.
template <class Acc>
void reduce_loss_cpu(const host_view<Acc, 1>& loss, const std::vector<Acc>& sample_loss, reduction red, bool add) {
  if (red == reduction::none) {
    for (std::size_t b = 0; b < sample_loss.size(); ++b)
      loss(b) = (add ? loss(b) : Acc(0)) + sample_loss[b];
  } else {
    Acc total = 0;
    for (Acc v : sample_loss) total += v;
    loss(0) = (add ? loss(0) : Acc(0)) + total;
  }
}

template <class Layers>
status run_layers_cpu(const char* fn, const cpu& ctx, const Layers& layers, host_view<layers_accum_t<Layers>, 1> loss,
                      bool need_loss, bool need_grad, const attention_transfer_options& opt) {
  using L = layer_of<Layers>;
  using TS = typename layer_traits<L>::student_type;
  using TT = typename layer_traits<L>::teacher_type;
  using Acc = accum_t<TS>;
  static_assert(is_supported_float_v<TS> && is_supported_float_v<TT>, "attention_transfer: unsupported element type");
  DISTILL_TRY(check_options(fn, opt));
  if (std::ranges::size(layers) == 0) return fail(errc::invalid_argument, fn, "'layers' is empty");
  const index_t B = std::ranges::begin(layers)->student.extent(0);
  std::size_t j = 0;
  for (const L& layer : layers) {
    DISTILL_TRY(check_layer(fn, j, layer, B, need_grad, opt.check_finite));
    ++j;
  }
  if (need_loss) DISTILL_TRY(check_loss(fn, loss, B, opt.reduction));
  const int pc = power_case(opt.p);
  std::vector<Acc> sample_loss(static_cast<std::size_t>(B));
  bool first = true;
  for (const L& layer : layers) {
    const auto P = make_params<Acc>(opt, layer.weight, B, layer.student.extent(1),
                                    layer.student.extent(2) * layer.student.extent(3));
    const host_view<TS, 4> no_grad;
    layer_cpu(ctx, layer.student, layer.teacher, need_grad ? layer.grad_student : no_grad, P, pc, opt.accumulate,
              sample_loss.data());
    if (need_loss) reduce_loss_cpu(loss, sample_loss, opt.reduction, !first);
    first = false;
  }
  return {};
}

template <class TS, class TT, class Space>
attention_transfer_layer<std::remove_const_t<TS>, std::remove_const_t<TT>, Space> single_layer(
    tensor_view<TS, 4, Space> student, tensor_view<TT, 4, Space> teacher,
    tensor_view<std::remove_const_t<TS>, 4, Space> grad) {
  return {student, teacher, grad, 1.0};
}

/// The engine on memory `Space`: the CPU one here, the CUDA one (`backend<cuda_space>`) in
/// kernels/distill/cuda/attention_transfer.cuh.
template <class Space>
struct backend;

template <>
struct backend<host_space> {
  template <class Layers>
  static status run(const char* fn, const cpu& ctx, const Layers& layers, host_view<layers_accum_t<Layers>, 1> loss,
                    host_view<std::byte, 1> /*workspace: 0 bytes on the CPU*/, bool need_loss, bool need_grad,
                    const attention_transfer_options& opt) {
    return run_layers_cpu(fn, ctx, layers, loss, need_loss, need_grad, opt);
  }
};

// Names of the single-pair arguments (the multi-layer path names them layers[j].*; a single
// pair is reported with its own argument names).
template <class Ctx, class TS, class TT, class Space>
status run_single(const char* fn, const Ctx& ctx, tensor_view<TS, 4, Space> student, tensor_view<TT, 4, Space> teacher,
                  tensor_view<accum_t<TS>, 1, Space> loss, tensor_view<std::remove_const_t<TS>, 4, Space> grad,
                  tensor_view<std::byte, 1, Space> workspace, bool need_loss, bool need_grad,
                  const attention_transfer_options& opt) {
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  DISTILL_TRY(check_pair(fn, "student", student, "teacher", teacher, "grad_student", grad, need_grad));
  attention_transfer_options checked = opt;
  if (opt.check_finite) {  // here, under the single pair's own names (not layers[0].*)
    DISTILL_TRY(check_finite(fn, "student", student));
    DISTILL_TRY(check_finite(fn, "teacher", teacher));
    checked.check_finite = false;
  }
  const attention_transfer_layer<std::remove_const_t<TS>, std::remove_const_t<TT>, Space> layer[1] = {
      single_layer(student, teacher, grad)};
  return backend<Space>::run(fn, ctx, layer, loss, workspace, need_loss, need_grad, checked);
}

template <class Ctx, class Layers>
using layers_loss_view = tensor_view<layers_accum_t<Layers>, 1, typename Ctx::memory_space>;
template <class Ctx>
using workspace_view = tensor_view<std::byte, 1, typename Ctx::memory_space>;

}  // namespace attention_transfer_detail

// ---------------------------------------------------------------------------------------------
// Entry points: one layer pair (the same for every context)
// ---------------------------------------------------------------------------------------------

/// Loss only. `loss`: (1), or (B) with reduction none.
template <class Ctx, class TS, class TT, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status attention_transfer_forward(const Ctx& ctx, tensor_view<TS, 4, Space> student,
                                                tensor_view<TT, 4, Space> teacher, tensor_view<accum_t<TS>, 1, Space> loss,
                                                tensor_view<std::byte, 1, Space> workspace,
                                                const attention_transfer_options& opt = {}) {
  return attention_transfer_detail::run_single("attention_transfer_forward", ctx, student, teacher, loss, {}, workspace, true,
                                               false, opt);
}

/// Gradient with respect to the student features only (overwrites, or adds with accumulate).
template <class Ctx, class TS, class TT, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status attention_transfer_backward(const Ctx& ctx, tensor_view<TS, 4, Space> student,
                                                 tensor_view<TT, 4, Space> teacher,
                                                 tensor_view<std::remove_const_t<TS>, 4, Space> grad_student,
                                                 tensor_view<std::byte, 1, Space> workspace,
                                                 const attention_transfer_options& opt = {}) {
  return attention_transfer_detail::run_single("attention_transfer_backward", ctx, student, teacher, {}, grad_student,
                                               workspace, false, true, opt);
}

/// Loss and gradient in one pass over the inputs.
template <class Ctx, class TS, class TT, class Space>
  requires can_access_v<Ctx, Space>
[[nodiscard]] status attention_transfer_forward_backward(const Ctx& ctx, tensor_view<TS, 4, Space> student,
                                                         tensor_view<TT, 4, Space> teacher,
                                                         tensor_view<accum_t<TS>, 1, Space> loss,
                                                         tensor_view<std::remove_const_t<TS>, 4, Space> grad_student,
                                                         tensor_view<std::byte, 1, Space> workspace,
                                                         const attention_transfer_options& opt = {}) {
  return attention_transfer_detail::run_single("attention_transfer_forward_backward", ctx, student, teacher, loss,
                                               grad_student, workspace, true, true, opt);
}

// ---------------------------------------------------------------------------------------------
// Entry points: several layer pairs, L = sum_j weight_j * L_j (all pairs share the batch)
// ---------------------------------------------------------------------------------------------

template <class Ctx, class Layers>
  requires attention_transfer_detail::layer_range<Layers, typename Ctx::memory_space>
[[nodiscard]] status attention_transfer_forward(const Ctx& ctx, const Layers& layers,
                                                attention_transfer_detail::layers_loss_view<Ctx, Layers> loss,
                                                attention_transfer_detail::workspace_view<Ctx> workspace,
                                                const attention_transfer_options& opt = {}) {
  using Space = typename Ctx::memory_space;
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  return attention_transfer_detail::backend<Space>::run("attention_transfer_forward", ctx, layers, loss, workspace, true,
                                                        false, opt);
}

template <class Ctx, class Layers>
  requires attention_transfer_detail::layer_range<Layers, typename Ctx::memory_space>
[[nodiscard]] status attention_transfer_backward(const Ctx& ctx, const Layers& layers,
                                                 attention_transfer_detail::workspace_view<Ctx> workspace,
                                                 const attention_transfer_options& opt = {}) {
  using Space = typename Ctx::memory_space;
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  return attention_transfer_detail::backend<Space>::run("attention_transfer_backward", ctx, layers,
                                                        attention_transfer_detail::layers_loss_view<Ctx, Layers>{},
                                                        workspace, false, true, opt);
}

template <class Ctx, class Layers>
  requires attention_transfer_detail::layer_range<Layers, typename Ctx::memory_space>
[[nodiscard]] status attention_transfer_forward_backward(const Ctx& ctx, const Layers& layers,
                                                         attention_transfer_detail::layers_loss_view<Ctx, Layers> loss,
                                                         attention_transfer_detail::workspace_view<Ctx> workspace,
                                                         const attention_transfer_options& opt = {}) {
  using Space = typename Ctx::memory_space;
  static_assert(backend_available_v<Space>, "CUDA entry points need a translation unit compiled by nvcc");
  return attention_transfer_detail::backend<Space>::run("attention_transfer_forward_backward", ctx, layers, loss, workspace,
                                                        true, true, opt);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/attention_transfer.cuh"
#endif
