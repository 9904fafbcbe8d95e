// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Feature statistics (spec §1 B3) and the statistics-matching loss (spec §4.1, AdaIN-KD baseline;
//! Yang et al., arXiv 2003.04289, and the mean-only `statm_loss` of jingyang2017/KD_SRRL).
//!
//! Two layouts, one set of statistics per "channel":
//!   [B, C, H, W]  channel (b, c) over its N = H*W positions        (channel_* / rank-4 overloads)
//!   [B, L, D]     feature (b, d) over the n_b valid tokens of b     (token_*   / rank-3 overloads,
//!                 token_mask [B, L], nonzero = valid, absent = all valid)
//!
//!   mu      = (1/N) sum_i x_i
//!   v       = (1/N') sum_i (x_i - mu)^2         N' = N (biased, default) or N - 1 (unbiased)
//!   sigma   = sqrt(v + eps)                     eps > 0 inside the square root (default 1e-5)
//!
//! A constant channel has v = 0 exactly (values are shifted by the channel's first element),
//! sigma = sqrt(eps), and every gradient below stays finite.
//!
//! Backward of any loss of (mu, sigma) (B3):
//!   dL/dx_i = (1/N) dL/dmu + (1/N') dL/dsigma * (x_i - mu) / sigma
//! and, written for a loss of (mu, v):  dL/dx_i = (1/N) dL/dmu + (2/N') dL/dv * (x_i - mu).
//!
//! Statistics-matching loss (§4.1), student s, teacher t, per channel:
//!   l_bc = w_mu (mu_s - mu_t)^2 + w_sigma (sigma_s - sigma_t)^2
//!   L    = reduce_bc(l_bc)        mean: / (B*C) (default, §4.1)   batchmean: / B   sum: / 1
//!   dL/ds_i = k [ 2 w_mu (mu_s - mu_t) / N + 2 w_sigma (sigma_s - sigma_t) (s_i - mu_s) / (N' sigma_s) ]
//!   with k = grad_scale / divisor. w_sigma = 0 is the mean-only `statm_loss` (which ignores eps).
//! Student and teacher must agree on B and C (resp. B and D); their spatial sizes (token counts)
//! may differ, since only statistics are compared. Only the student gets a gradient.
//!
//! Numerics: every channel is shifted by its first element (pivot) before accumulating, so a
//! constant channel gives exactly v = 0 and a large common offset does not cancel; then a
//! single-pass Welford per lane (32 float lanes / 16 double lanes advance together, so one
//! reciprocal serves a whole vector), lanes and partial blocks merged with Chan et al.'s formula;
//! accumulation in accum_t<T> (float for float/half/bf16, double for double).
//!
//! Bad input: shapes that disagree, empty extents, negative strides -> shape_mismatch /
//! unsupported_layout; eps <= 0 -> invalid_argument; unbiased variance of a single position ->
//! invalid_argument; a sample whose tokens are all masked (or, unbiased, only one valid) ->
//! invalid_argument on the CPU (the CUDA path cannot read the mask without synchronising: an
//! all-masked sample gets mu = 0, v = 0 and a zero gradient; an unbiased sample with one valid
//! token gets v = 0 and only the mean term's gradient). NaN/inf in an input: the CPU path writes the
//! outputs as the arithmetic gives (NaN in the affected channel, NaN loss) and returns
//! errc::non_finite naming the input (also when the squared deviations overflow the accumulator);
//! the CUDA path propagates NaN the same way without a status. With the options' `check_finite`
//! the CPU path refuses them (errc::non_finite naming the input) before writing anything.

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

namespace distill {

/// Options of the plain statistics (channel_stats_*, token_stats_*).
struct feature_stats_options {
  double eps = 1e-5;      ///< added to the variance inside the square root; must be > 0
  bool unbiased = false;  ///< N' = N - 1 instead of N
  bool accumulate = false;  ///< backward: add into grad_x instead of overwriting it
  bool check_finite = false;  ///< CPU: refuse NaN/inf inputs before computing (docs/reliability.md)
};

/// Options of the statistics-matching loss (spec §4.1).
struct stats_matching_options {
  double eps = 1e-5;
  bool unbiased = false;
  double mean_weight = 1.0;  ///< w_mu
  double std_weight = 1.0;   ///< w_sigma; 0 gives the mean-only statm_loss
  distill::reduction reduction = distill::reduction::mean;  ///< mean (/ B*C), batchmean (/ B) or sum; none is refused
  double grad_scale = 1.0;   ///< upstream gradient / loss weight, multiplies the gradient only
  bool accumulate = false;   ///< add into grad_student instead of overwriting it
  bool check_finite = false;  ///< CPU: refuse NaN/inf inputs before computing (docs/reliability.md)
};

namespace features_detail {

// ---------------------------------------------------------------------------------------------
// Welford state and Chan's merge (shared by the CPU loops and the CUDA kernels).
// ---------------------------------------------------------------------------------------------
template <class Acc>
struct welford_state {
  Acc n = Acc(0);     ///< count
  Acc mean = Acc(0);  ///< running mean
  Acc m2 = Acc(0);    ///< sum of squared deviations from the mean

  DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void add(Acc x) noexcept {
    n += Acc(1);
    const Acc d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
  /// Chan, Golub & LeVeque: combine two partial states.
  DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void merge(const welford_state& o) noexcept {
    if (o.n == Acc(0)) return;
    if (n == Acc(0)) {
      *this = o;
      return;
    }
    const Acc total = n + o.n;
    const Acc d = o.mean - mean;
    const Acc f = o.n / total;
    mean += d * f;
    m2 += o.m2 + d * d * n * f;
    n = total;
  }
};

/// Statistics of x - pivot, pivot = the channel's first element: exact (zero M2) for a constant
/// channel and insensitive to a large common offset. absolute() restores the mean.
template <class Acc>
struct pivoted_moments {
  welford_state<Acc> shifted;
  Acc pivot = Acc(0);
  DISTILL_HOST_DEVICE DISTILL_FORCEINLINE welford_state<Acc> absolute() const noexcept {
    welford_state<Acc> a = shifted;
    a.mean += pivot;
    return a;
  }
};

/// N' of the variance: N (biased) or N - 1 (unbiased).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc variance_dof(Acc n, bool unbiased) noexcept {
  return unbiased ? n - Acc(1) : n;
}
/// v = M2 / N'; 0 when N' <= 0 (documented fallback of the CUDA path for masked samples).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc variance_of(const welford_state<Acc>& s, bool unbiased) noexcept {
  const Acc dof = variance_dof(s.n, unbiased);
  return dof > Acc(0) ? s.m2 / dof : Acc(0);
}

/// What a per-channel loss term returns: its value and its derivatives with respect to the
/// student's mean and (raw) variance. The element gradient follows from B3.
template <class Acc>
struct channel_term_result {
  Acc loss = Acc(0);
  Acc d_mean = Acc(0);  ///< dl/dmu_s
  Acc d_var = Acc(0);   ///< dl/dv_s
};

/// Per-element affine map of a channel: at(x) = mean_coef + var_coef * ((x - pivot) - mu), mu the
/// mean of x - pivot (so x - mean is formed without cancellation).
template <class Acc>
struct channel_grad_coef {
  Acc mean_coef = Acc(0);
  Acc var_coef = Acc(0);
  Acc mu = Acc(0);
  Acc pivot = Acc(0);
  DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc at(Acc x) const noexcept { return mean_coef + var_coef * ((x - pivot) - mu); }
};

/// The element gradient of a channel term (B3): grad_i = scale (d_mean / N + 2 d_var (x_i - mu) / N').
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE channel_grad_coef<Acc> grad_coef(const pivoted_moments<Acc>& m,
                                                                         const channel_term_result<Acc>& r,
                                                                         bool unbiased, Acc scale) noexcept {
  channel_grad_coef<Acc> c;
  c.mu = m.shifted.mean;
  c.pivot = m.pivot;
  const Acc n = m.shifted.n;
  if (n > Acc(0)) c.mean_coef = scale * r.d_mean / n;
  const Acc dof = variance_dof(n, unbiased);
  if (dof > Acc(0)) c.var_coef = scale * Acc(2) * r.d_var / dof;
  return c;
}

/// §4.1: w_mu (mu_s - mu_t)^2 + w_sigma (sigma_s - sigma_t)^2, sigma = sqrt(v + eps).
template <class Acc>
struct stats_matching_term {
  Acc mean_weight, std_weight, eps;
  bool unbiased;
  DISTILL_HOST_DEVICE channel_term_result<Acc> operator()(index_t, const welford_state<Acc>& s,
                                                          const welford_state<Acc>& t) const noexcept {
    using std::sqrt;
    channel_term_result<Acc> r;
    const Acc dm = s.mean - t.mean;
    r.loss = mean_weight * dm * dm;
    r.d_mean = Acc(2) * mean_weight * dm;
    if (std_weight != Acc(0)) {
      const Acc sig_s = sqrt(variance_of(s, unbiased) + eps);
      const Acc sig_t = sqrt(variance_of(t, unbiased) + eps);
      const Acc ds = sig_s - sig_t;
      r.loss += std_weight * ds * ds;
      r.d_var = std_weight * ds / sig_s;  // d/dv (sig_s - sig_t)^2 = 2 ds * 1/(2 sig_s)
    }
    return r;
  }
};

/// No loss: the plain statistics forward.
struct zero_term {
  template <class Acc>
  DISTILL_HOST_DEVICE channel_term_result<Acc> operator()(index_t, const welford_state<Acc>&,
                                                          const welford_state<Acc>&) const noexcept {
    return {};
  }
};

/// Backward of the plain statistics: dL/dmu and dL/dsigma given per channel (either may be absent).
template <class GV>
struct stats_backward_term {
  GV grad_mean, grad_std;  // [B, C] (or [B, D]) views in the context's memory space
  index_t channels;
  typename GV::value_type eps;
  bool unbiased;
  template <class Acc>
  DISTILL_HOST_DEVICE channel_term_result<Acc> operator()(index_t p, const welford_state<Acc>& s,
                                                          const welford_state<Acc>&) const noexcept {
    using std::sqrt;
    channel_term_result<Acc> r;
    const index_t b = p / channels, c = p % channels;
    if (!grad_mean.empty()) r.d_mean = static_cast<Acc>(grad_mean(b, c));
    if (!grad_std.empty()) {
      const Acc sig = sqrt(variance_of(s, unbiased) + static_cast<Acc>(eps));
      r.d_var = static_cast<Acc>(grad_std(b, c)) / (Acc(2) * sig);
    }
    return r;
  }
};

/// Loss reduction divisor for the statistics losses (B*C channels over B samples).
inline double stats_divisor(reduction red, index_t batch, index_t channels) {
  switch (red) {
    case reduction::mean: return static_cast<double>(batch) * static_cast<double>(channels);
    case reduction::batchmean: return static_cast<double>(batch);
    default: return 1.0;
  }
}

// ---------------------------------------------------------------------------------------------
// Validation shared by every entry point of the family.
// ---------------------------------------------------------------------------------------------
template <class V>
status check_input(const char* fn, const char* name, const V& v) {
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_nonempty(fn, name, v));
  DISTILL_TRY(check_strides(fn, name, v));
  return {};
}
template <class V>
status check_output(const char* fn, const char* name, const V& v, const index_t (&extents)[V::rank]) {
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_shape(fn, name, v, extents));
  DISTILL_TRY(check_strides(fn, name, v));
  return {};
}
inline status check_eps(const char* fn, double eps) { return check_positive(fn, "eps", eps); }
inline status check_loss_reduction(const char* fn, reduction red) {
  if (red == reduction::none)
    return fail(errc::invalid_argument, fn, "'reduction' must be mean, batchmean or sum (reduction::none is not supported by this loss)");
  return {};
}
template <class V>
status check_scalar_out(const char* fn, const char* name, const V& v) {
  if (v.empty()) return {};
  const index_t one[1] = {1};
  return check_shape(fn, name, v, one);
}
/// Every position counts (NCHW): unbiased needs at least two.
inline status check_plane_dof(const char* fn, const char* name, index_t positions, bool unbiased) {
  if (unbiased && positions < 2)
    return fail(errc::invalid_argument, fn,
                std::string("'") + name + "' has a single spatial position per channel: the unbiased variance is undefined");
  return {};
}
/// Host-side mask check: every sample keeps at least one (unbiased: two) valid tokens.
template <class MV>
status check_token_mask_host(const char* fn, const char* name, const MV& mask, index_t batch, index_t tokens,
                             bool unbiased) {
  for (index_t b = 0; b < batch; ++b) {
    index_t valid = 0;
    if (mask.empty()) valid = tokens;
    else
      for (index_t l = 0; l < tokens; ++l) valid += mask(b, l) != 0;
    if (valid == 0)
      return fail(errc::invalid_argument, fn,
                  std::string("'") + name + "' masks every token of sample " + std::to_string(b) + ": its statistics are undefined");
    if (unbiased && valid < 2)
      return fail(errc::invalid_argument, fn,
                  std::string("'") + name + "' leaves a single valid token in sample " + std::to_string(b) +
                      ": the unbiased variance is undefined");
  }
  return {};
}

inline status non_finite_input(const char* fn, const char* name) {
  return fail(errc::non_finite, fn,
              std::string("'") + name + "' contains NaN or inf (or its squared deviations overflow the accumulator); "
                                        "the outputs of the affected channels are NaN");
}

// ---------------------------------------------------------------------------------------------
// CPU: statistics of one channel.
// ---------------------------------------------------------------------------------------------

/// Lane-parallel Welford: `lanes` independent states that all advance by one element per step,
/// so the reciprocal 1/n is shared and the loop vectorises. Lanes merge exactly (Chan's formula
/// for k groups of equal count n):
///   mean = avg_l mean_l,   M2 = sum_l M2_l + n sum_l (mean_l - mean)^2
/// (the average is taken around lane 0's mean, so equal lane means stay exact), and the tail
/// (< lanes elements) is merged with Chan's two-group formula.
template <class Acc>
struct lane_welford {
  static constexpr int lanes = sizeof(Acc) == 4 ? 32 : 16;
  alignas(64) Acc mean[lanes];
  alignas(64) Acc m2[lanes];
  Acc steps = Acc(0);
  welford_state<Acc> tail;

  lane_welford() noexcept {
    for (int l = 0; l < lanes; ++l) mean[l] = m2[l] = Acc(0);
  }
  /// `lanes` contiguous values, each shifted by -shift.
  template <class T>
  DISTILL_FORCEINLINE void add_lanes(const T* x, Acc shift) noexcept {
    steps += Acc(1);
    const Acc inv = Acc(1) / steps;
DISTILL_OMP_PRAGMA(omp simd)
    for (int l = 0; l < lanes; ++l) {
      const Acc v = load<Acc>(x[l]) - shift;
      const Acc d = v - mean[l];
      mean[l] += d * inv;
      m2[l] += d * (v - mean[l]);
    }
  }
  welford_state<Acc> result() const noexcept {
    welford_state<Acc> r;
    if (steps > Acc(0)) {
      Acc sum_dev = Acc(0);
      for (int l = 0; l < lanes; ++l) sum_dev += mean[l] - mean[0];
      const Acc mu = mean[0] + sum_dev / Acc(lanes);
      Acc sum_m2 = Acc(0), spread = Acc(0);
      for (int l = 0; l < lanes; ++l) {
        const Acc d = mean[l] - mu;
        sum_m2 += m2[l];
        spread += d * d;
      }
      r.n = steps * Acc(lanes);
      r.mean = mu;
      r.m2 = sum_m2 + steps * spread;
    }
    r.merge(tail);
    return r;
  }
};

/// Statistics of an H x W plane with strides (sh, sw) in elements.
template <class Acc, class T>
pivoted_moments<Acc> plane_moments(const T* base, index_t H, index_t W, index_t sh, index_t sw) {
  lane_welford<Acc> acc;
  constexpr int L = lane_welford<Acc>::lanes;
  pivoted_moments<Acc> m;
  m.pivot = load<Acc>(base[0]);
  if (sw == 1 && (H == 1 || sh == W)) {  // contiguous plane: one span
    const index_t n = H * W;
    index_t i = 0;
    for (; i + L <= n; i += L) acc.add_lanes(base + i, m.pivot);
    for (; i < n; ++i) acc.tail.add(load<Acc>(base[i]) - m.pivot);
    m.shifted = acc.result();
    return m;
  }
  Acc buf[L];
  int k = 0;
  for (index_t h = 0; h < H; ++h) {
    const T* row = base + h * sh;
    for (index_t w = 0; w < W; ++w) {
      buf[k++] = load<Acc>(row[w * sw]) - m.pivot;
      if (k == L) {
        acc.add_lanes(buf, Acc(0));
        k = 0;
      }
    }
  }
  for (int j = 0; j < k; ++j) acc.tail.add(buf[j]);
  m.shifted = acc.result();
  return m;
}

template <class Acc, class V>
pivoted_moments<Acc> channel_moments(const V& x, index_t b, index_t c) {
  return plane_moments<Acc>(x.data() + b * x.stride(0) + c * x.stride(1), x.extent(2), x.extent(3), x.stride(2),
                            x.stride(3));
}

/// grad(b, c, :, :) = coef.at(x(b, c, :, :)) (or += with accumulate).
template <class Acc, class GV, class XV>
void write_channel_grad(const GV& g, const XV& x, index_t b, index_t c, const channel_grad_coef<Acc>& coef,
                        bool accumulate) {
  using TG = typename GV::value_type;
  const index_t H = x.extent(2), W = x.extent(3);
  for (index_t h = 0; h < H; ++h) {
    const auto* xr = x.data() + b * x.stride(0) + c * x.stride(1) + h * x.stride(2);
    TG* gr = g.data() + b * g.stride(0) + c * g.stride(1) + h * g.stride(2);
    const index_t xs = x.stride(3), gs = g.stride(3);
    if (xs == 1 && gs == 1) {
      if (accumulate) {
DISTILL_OMP_PRAGMA(omp simd)
        for (index_t w = 0; w < W; ++w) gr[w] = store<TG>(load<Acc>(gr[w]) + coef.at(load<Acc>(xr[w])));
      } else {
DISTILL_OMP_PRAGMA(omp simd)
        for (index_t w = 0; w < W; ++w) gr[w] = store<TG>(coef.at(load<Acc>(xr[w])));
      }
    } else {
      for (index_t w = 0; w < W; ++w) {
        const Acc v = coef.at(load<Acc>(xr[w * xs]));
        gr[w * gs] = store<TG>(accumulate ? load<Acc>(gr[w * gs]) + v : v);
      }
    }
  }
}

/// Per-chunk result of the CPU channel loops: loss partial plus non-finite flags.
template <class Acc>
struct loss_partial {
  Acc loss = Acc(0);
  bool bad_student = false, bad_teacher = false;
  loss_partial() = default;
  explicit loss_partial(int) {}
  loss_partial& operator+=(const loss_partial& o) {
    loss += o.loss;
    bad_student = bad_student || o.bad_student;
    bad_teacher = bad_teacher || o.bad_teacher;
    return *this;
  }
};

template <class Acc>
bool moments_finite(const welford_state<Acc>& s) {
  return is_finite(s.mean) && is_finite(s.m2);
}

/// The CPU driver of every [B, C, H, W] channel loss: for each channel, the student's and (when
/// present) the teacher's statistics, the term, the loss partial and the student gradient.
/// Extra per-channel outputs (mean / std of the student) go through `on_channel`.
template <class Acc, class SV, class TV, class GV, class Term, class OnChannel>
loss_partial<Acc> channel_loop_cpu(const cpu& ctx, const SV& s, const TV& t, const GV& grad, const Term& term,
                                   bool unbiased, Acc grad_scale, bool accumulate, OnChannel&& on_channel) {
  const index_t C = s.extent(1), planes = s.extent(0) * C;
  return parallel_sum<loss_partial<Acc>>(ctx, planes, [&](index_t p0, index_t p1) {
    loss_partial<Acc> part;
    for (index_t p = p0; p < p1; ++p) {
      const index_t b = p / C, c = p % C;
      const pivoted_moments<Acc> ms = channel_moments<Acc>(s, b, c);
      const welford_state<Acc> ws = ms.absolute();
      welford_state<Acc> wt;
      if (!t.empty()) {
        wt = channel_moments<Acc>(t, b, c).absolute();
        part.bad_teacher = part.bad_teacher || !moments_finite(wt);
      }
      part.bad_student = part.bad_student || !moments_finite(ws);
      const channel_term_result<Acc> r = term(p, ws, wt);
      part.loss += r.loss;
      on_channel(b, c, ws);
      if (!grad.empty()) write_channel_grad(grad, s, b, c, grad_coef(ms, r, unbiased, grad_scale), accumulate);
    }
    return part;
  });
}

/// Token layout [B, L, D]: features are processed in blocks of `feature_block` so the per-feature
/// states live on the stack and the inner loop runs along the contiguous D axis.
inline constexpr index_t feature_block = 256;

/// Statistics of features [d0, d0 + nd) of sample b over its valid tokens (lane-parallel Welford
/// over features: every feature of the block has seen the same tokens, so 1/n is shared), of
/// x - pivot with pivot = the value at the first valid token.
template <class Acc, class XV, class MV>
void token_block_moments(const XV& x, const MV& mask, index_t b, index_t d0, index_t nd, Acc* mean, Acc* m2,
                         Acc* pivot, Acc& count) {
  const index_t L = x.extent(1), sd = x.stride(2);
  index_t first = 0;
  while (first < L && !mask.empty() && mask(b, first) == 0) ++first;
  for (index_t j = 0; j < nd; ++j) {
    mean[j] = m2[j] = Acc(0);
    pivot[j] = first < L ? load<Acc>(x(b, first, d0 + j)) : Acc(0);
  }
  count = Acc(0);
  for (index_t l = first; l < L; ++l) {
    if (!mask.empty() && mask(b, l) == 0) continue;
    count += Acc(1);
    const Acc inv = Acc(1) / count;
    const auto* row = x.data() + b * x.stride(0) + l * x.stride(1) + d0 * sd;
    if (sd == 1) {
DISTILL_OMP_PRAGMA(omp simd)
      for (index_t j = 0; j < nd; ++j) {
        const Acc v = load<Acc>(row[j]) - pivot[j];
        const Acc d = v - mean[j];
        mean[j] += d * inv;
        m2[j] += d * (v - mean[j]);
      }
    } else {
      for (index_t j = 0; j < nd; ++j) {
        const Acc v = load<Acc>(row[j * sd]) - pivot[j];
        const Acc d = v - mean[j];
        mean[j] += d * inv;
        m2[j] += d * (v - mean[j]);
      }
    }
  }
}

/// The CPU driver of every [B, L, D] token loss (mirror of channel_loop_cpu).
template <class Acc, class SV, class SMV, class TV, class TMV, class GV, class Term, class OnFeature>
loss_partial<Acc> token_loop_cpu(const cpu& ctx, const SV& s, const SMV& smask, const TV& t, const TMV& tmask,
                                 const GV& grad, const Term& term, bool unbiased, Acc grad_scale, bool accumulate,
                                 OnFeature&& on_feature) {
  const index_t B = s.extent(0), L = s.extent(1), D = s.extent(2);
  const index_t blocks_per_sample = (D + feature_block - 1) / feature_block;
  return parallel_sum<loss_partial<Acc>>(ctx, B * blocks_per_sample, [&](index_t t0, index_t t1) {
    loss_partial<Acc> part;
    Acc s_mean[feature_block], s_m2[feature_block], s_piv[feature_block];
    Acc t_mean[feature_block], t_m2[feature_block], t_piv[feature_block];
    channel_grad_coef<Acc> coef[feature_block];
    for (index_t task = t0; task < t1; ++task) {
      const index_t b = task / blocks_per_sample;
      const index_t d0 = (task % blocks_per_sample) * feature_block;
      const index_t nd = D - d0 < feature_block ? D - d0 : feature_block;
      Acc s_count, t_count = Acc(0);
      token_block_moments(s, smask, b, d0, nd, s_mean, s_m2, s_piv, s_count);
      if (!t.empty()) token_block_moments(t, tmask, b, d0, nd, t_mean, t_m2, t_piv, t_count);
      for (index_t j = 0; j < nd; ++j) {
        const pivoted_moments<Acc> ms{welford_state<Acc>{s_count, s_mean[j], s_m2[j]}, s_piv[j]};
        const welford_state<Acc> ws = ms.absolute();
        welford_state<Acc> wt;
        if (!t.empty()) {
          wt = pivoted_moments<Acc>{welford_state<Acc>{t_count, t_mean[j], t_m2[j]}, t_piv[j]}.absolute();
          part.bad_teacher = part.bad_teacher || !moments_finite(wt);
        }
        part.bad_student = part.bad_student || !moments_finite(ws);
        const channel_term_result<Acc> r = term(b * D + d0 + j, ws, wt);
        part.loss += r.loss;
        on_feature(b, d0 + j, ws);
        coef[j] = grad_coef(ms, r, unbiased, grad_scale);
      }
      if (grad.empty()) continue;
      using TG = typename GV::value_type;
      for (index_t l = 0; l < L; ++l) {
        const bool valid = smask.empty() || smask(b, l) != 0;
        const auto* xr = s.data() + b * s.stride(0) + l * s.stride(1) + d0 * s.stride(2);
        TG* gr = grad.data() + b * grad.stride(0) + l * grad.stride(1) + d0 * grad.stride(2);
        const index_t xs = s.stride(2), gs = grad.stride(2);
        for (index_t j = 0; j < nd; ++j) {
          if (!valid) {  // masked tokens get no gradient
            if (!accumulate) gr[j * gs] = store<TG>(Acc(0));
            continue;
          }
          const Acc v = coef[j].at(load<Acc>(xr[j * xs]));
          gr[j * gs] = store<TG>(accumulate ? load<Acc>(gr[j * gs]) + v : v);
        }
      }
    }
    return part;
  });
}

template <class T>
constexpr void static_check_cpu_type() {
  static_assert(std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, double>,
                "distill features: the CPU path takes float or double");
}

template <class Acc>
status report_flags(const char* fn, const loss_partial<Acc>& p, const char* sname, const char* tname) {
  if (p.bad_student) return non_finite_input(fn, sname);
  if (p.bad_teacher) return non_finite_input(fn, tname);
  return {};
}

/// Shape checks of a rank-4 student/teacher pair: same B and C; spatial sizes may differ.
template <class SV, class TV>
status check_channel_pair(const char* fn, const SV& s, const TV& t, bool unbiased) {
  DISTILL_TRY(check_input(fn, "student", s));
  DISTILL_TRY(check_input(fn, "teacher", t));
  DISTILL_TRY(check_extent(fn, "teacher", t, 0, s.extent(0), "batch size of 'student'"));
  DISTILL_TRY(check_extent(fn, "teacher", t, 1, s.extent(1), "channels of 'student'"));
  DISTILL_TRY(check_plane_dof(fn, "student", s.extent(2) * s.extent(3), unbiased));
  DISTILL_TRY(check_plane_dof(fn, "teacher", t.extent(2) * t.extent(3), unbiased));
  return {};
}

/// Shape checks of a rank-3 token pair: same B and D; token counts may differ; masks [B, L].
template <class SV, class SMV, class TV, class TMV>
status check_token_pair(const char* fn, const SV& s, const SMV& smask, const TV& t, const TMV& tmask) {
  DISTILL_TRY(check_input(fn, "student", s));
  DISTILL_TRY(check_input(fn, "teacher", t));
  DISTILL_TRY(check_extent(fn, "teacher", t, 0, s.extent(0), "batch size of 'student'"));
  DISTILL_TRY(check_extent(fn, "teacher", t, 2, s.extent(2), "features of 'student'"));
  DISTILL_TRY(check_optional(fn, "student_mask", smask, {s.extent(0), s.extent(1)}));
  DISTILL_TRY(check_optional(fn, "teacher_mask", tmask, {t.extent(0), t.extent(1)}));
  return {};
}

/// Checks shared by the CPU and CUDA channel_stats_forward/backward: x [B, C, H, W], eps, the
/// degrees of freedom, and two optional [B, C] views (mean and std_dev, or their gradients).
template <class XV, class AV, class BV>
status check_channel_stats_args(const char* fn, const XV& x, const char* name_a, const AV& a, const char* name_b, const BV& b,
                                const feature_stats_options& opt) {
  DISTILL_TRY(check_input(fn, "x", x));
  DISTILL_TRY(check_eps(fn, opt.eps));
  DISTILL_TRY(check_plane_dof(fn, "x", x.extent(2) * x.extent(3), opt.unbiased));
  DISTILL_TRY(check_optional(fn, name_a, a, {x.extent(0), x.extent(1)}));
  return check_optional(fn, name_b, b, {x.extent(0), x.extent(1)});
}

/// Checks shared by the CPU and CUDA token_stats_forward/backward: x [B, L, D], eps, the
/// optional token_mask [B, L] and two optional [B, D] views (mean and std_dev, or their gradients).
template <class XV, class MV, class AV, class BV>
status check_token_stats_args(const char* fn, const XV& x, const MV& token_mask, const char* name_a, const AV& a,
                              const char* name_b, const BV& b, const feature_stats_options& opt) {
  DISTILL_TRY(check_input(fn, "x", x));
  DISTILL_TRY(check_eps(fn, opt.eps));
  DISTILL_TRY(check_optional(fn, "token_mask", token_mask, {x.extent(0), x.extent(1)}));
  DISTILL_TRY(check_optional(fn, name_a, a, {x.extent(0), x.extent(2)}));
  return check_optional(fn, name_b, b, {x.extent(0), x.extent(2)});
}

/// Checks shared by the CPU and CUDA losses over a [B, C, H, W] pair (statistics matching, AdaIN
/// statistics): the pair, the optional scalar loss and the optional gradient (student's shape).
template <class SV, class TV, class LV, class GV>
status check_channel_loss_args(const char* fn, const SV& s, const TV& t, const LV& loss, const GV& grad, bool unbiased) {
  DISTILL_TRY(check_channel_pair(fn, s, t, unbiased));
  DISTILL_TRY(check_scalar_out(fn, "loss", loss));
  if (!grad.empty())
    DISTILL_TRY(check_output(fn, "grad_student", grad, {s.extent(0), s.extent(1), s.extent(2), s.extent(3)}));
  return {};
}

/// The same for a [B, L, D] token pair with optional masks.
template <class SV, class SMV, class TV, class TMV, class LV, class GV>
status check_token_loss_args(const char* fn, const SV& s, const SMV& smask, const TV& t, const TMV& tmask, const LV& loss,
                             const GV& grad) {
  DISTILL_TRY(check_token_pair(fn, s, smask, t, tmask));
  DISTILL_TRY(check_scalar_out(fn, "loss", loss));
  if (!grad.empty()) DISTILL_TRY(check_output(fn, "grad_student", grad, {s.extent(0), s.extent(1), s.extent(2)}));
  return {};
}

struct no_channel_output {
  template <class Acc>
  void operator()(index_t, index_t, const welford_state<Acc>&) const noexcept {}
};

}  // namespace features_detail

// =============================================================================================
// Plain statistics, [B, C, H, W]
// =============================================================================================

/// mean(b, c) and std(b, c) = sqrt(v + eps) of x [B, C, H, W]; either output may be absent.
template <class T>
[[nodiscard]] status channel_stats_forward(const cpu& ctx, host_view<T, 4> x, host_view<accum_t<T>, 2> mean,
                                           host_view<accum_t<T>, 2> std_dev, const feature_stats_options& opt = {}) {
  features_detail::static_check_cpu_type<T>();
  using Acc = accum_t<T>;
  constexpr const char* fn = "channel_stats_forward";
  DISTILL_TRY(features_detail::check_channel_stats_args(fn, x, "mean", mean, "std_dev", std_dev, opt));
  if (opt.check_finite) DISTILL_TRY(check_finite(fn, "x", x));
  const Acc eps = static_cast<Acc>(opt.eps);
  const host_view<const T, 4> none;
  const host_view<std::remove_const_t<T>, 4> no_grad;
  const auto part = features_detail::channel_loop_cpu<Acc>(
      ctx, x, none, no_grad,
      features_detail::zero_term{},
      opt.unbiased, Acc(0), false, [&](index_t b, index_t c, const features_detail::welford_state<Acc>& ws) {
        using std::sqrt;
        if (!mean.empty()) mean(b, c) = ws.mean;
        if (!std_dev.empty()) std_dev(b, c) = sqrt(features_detail::variance_of(ws, opt.unbiased) + eps);
      });
  return features_detail::report_flags(fn, part, "x", "x");
}

/// dL/dx from dL/dmean and dL/dstd (either may be absent = zero); statistics are recomputed.
template <class T>
[[nodiscard]] status channel_stats_backward(const cpu& ctx, host_view<T, 4> x, host_view<const accum_t<T>, 2> grad_mean,
                                            host_view<const accum_t<T>, 2> grad_std,
                                            host_view<std::remove_const_t<T>, 4> grad_x,
                                            const feature_stats_options& opt = {}) {
  features_detail::static_check_cpu_type<T>();
  using Acc = accum_t<T>;
  constexpr const char* fn = "channel_stats_backward";
  DISTILL_TRY(features_detail::check_channel_stats_args(fn, x, "grad_mean", grad_mean, "grad_std", grad_std, opt));
  DISTILL_TRY(features_detail::check_output(fn, "grad_x", grad_x, {x.extent(0), x.extent(1), x.extent(2), x.extent(3)}));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "x", x, "grad_mean", grad_mean, "grad_std", grad_std));
  const features_detail::stats_backward_term<host_view<const Acc, 2>> term{grad_mean, grad_std, x.extent(1),
                                                                          static_cast<Acc>(opt.eps), opt.unbiased};
  const host_view<const T, 4> none;
  const auto part = features_detail::channel_loop_cpu<Acc>(ctx, x, none, grad_x, term, opt.unbiased, Acc(1),
                                                           opt.accumulate, features_detail::no_channel_output{});
  return features_detail::report_flags(fn, part, "x", "x");
}

// =============================================================================================
// Plain statistics, [B, L, D] with a token mask
// =============================================================================================

/// mean(b, d) and std(b, d) of x [B, L, D] over the valid tokens of sample b.
template <class T>
[[nodiscard]] status token_stats_forward(const cpu& ctx, host_view<T, 3> x, host_view<const std::uint8_t, 2> token_mask,
                                         host_view<accum_t<T>, 2> mean, host_view<accum_t<T>, 2> std_dev,
                                         const feature_stats_options& opt = {}) {
  features_detail::static_check_cpu_type<T>();
  using Acc = accum_t<T>;
  constexpr const char* fn = "token_stats_forward";
  DISTILL_TRY(features_detail::check_token_stats_args(fn, x, token_mask, "mean", mean, "std_dev", std_dev, opt));
  DISTILL_TRY(features_detail::check_token_mask_host(fn, "token_mask", token_mask, x.extent(0), x.extent(1), opt.unbiased));
  if (opt.check_finite) DISTILL_TRY(check_finite(fn, "x", x));
  const Acc eps = static_cast<Acc>(opt.eps);
  const host_view<const T, 3> none;
  const host_view<std::remove_const_t<T>, 3> no_grad;
  const auto part = features_detail::token_loop_cpu<Acc>(
      ctx, x, token_mask, none, token_mask, no_grad,
      features_detail::zero_term{},
      opt.unbiased, Acc(0), false, [&](index_t b, index_t d, const features_detail::welford_state<Acc>& ws) {
        using std::sqrt;
        if (!mean.empty()) mean(b, d) = ws.mean;
        if (!std_dev.empty()) std_dev(b, d) = sqrt(features_detail::variance_of(ws, opt.unbiased) + eps);
      });
  return features_detail::report_flags(fn, part, "x", "x");
}

/// dL/dx [B, L, D] from dL/dmean, dL/dstd [B, D]; masked tokens get a zero gradient.
template <class T>
[[nodiscard]] status token_stats_backward(const cpu& ctx, host_view<T, 3> x, host_view<const std::uint8_t, 2> token_mask,
                                          host_view<const accum_t<T>, 2> grad_mean, host_view<const accum_t<T>, 2> grad_std,
                                          host_view<std::remove_const_t<T>, 3> grad_x,
                                          const feature_stats_options& opt = {}) {
  features_detail::static_check_cpu_type<T>();
  using Acc = accum_t<T>;
  constexpr const char* fn = "token_stats_backward";
  DISTILL_TRY(features_detail::check_token_stats_args(fn, x, token_mask, "grad_mean", grad_mean, "grad_std", grad_std, opt));
  DISTILL_TRY(features_detail::check_output(fn, "grad_x", grad_x, {x.extent(0), x.extent(1), x.extent(2)}));
  DISTILL_TRY(features_detail::check_token_mask_host(fn, "token_mask", token_mask, x.extent(0), x.extent(1), opt.unbiased));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "x", x, "grad_mean", grad_mean, "grad_std", grad_std));
  const features_detail::stats_backward_term<host_view<const Acc, 2>> term{grad_mean, grad_std, x.extent(2),
                                                                          static_cast<Acc>(opt.eps), opt.unbiased};
  const host_view<const T, 3> none;
  const auto part = features_detail::token_loop_cpu<Acc>(ctx, x, token_mask, none, token_mask, grad_x, term,
                                                         opt.unbiased, Acc(1), opt.accumulate,
                                                         features_detail::no_channel_output{});
  return features_detail::report_flags(fn, part, "x", "x");
}

// =============================================================================================
// Statistics-matching loss (§4.1)
// =============================================================================================

namespace features_detail {
template <class Acc>
stats_matching_term<Acc> make_stats_matching_term(const stats_matching_options& opt) {
  return {static_cast<Acc>(opt.mean_weight), static_cast<Acc>(opt.std_weight), static_cast<Acc>(opt.eps), opt.unbiased};
}
inline status check_stats_matching_options(const char* fn, const stats_matching_options& opt) {
  DISTILL_TRY(check_eps(fn, opt.eps));
  DISTILL_TRY(check_loss_reduction(fn, opt.reduction));
  if (!std::isfinite(opt.mean_weight) || !std::isfinite(opt.std_weight) || !std::isfinite(opt.grad_scale))
    return fail(errc::invalid_argument, fn, "'mean_weight', 'std_weight' and 'grad_scale' must be finite");
  return {};
}

/// The loss driver shared by statistics matching and the AdaIN statistics loss over [B, C, H, W]
/// (the caller has checked its own options): shapes, one pass over the channels with `term`,
/// the reduced loss. `opt` supplies unbiased, red, grad_scale and accumulate.
template <class TS, class TT, class Opt, class Term>
status channel_loss_cpu(const char* fn, const cpu& ctx, host_view<TS, 4> s, host_view<TT, 4> t, host_view<accum_t<TS>, 1> loss,
                        host_view<std::remove_const_t<TS>, 4> grad, const Opt& opt, const Term& term) {
  static_check_cpu_type<TS>();
  static_check_cpu_type<TT>();
  using Acc = accum_t<TS>;
  DISTILL_TRY(check_channel_loss_args(fn, s, t, loss, grad, opt.unbiased));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "student", s, "teacher", t));
  const double inv_div = 1.0 / stats_divisor(opt.reduction, s.extent(0), s.extent(1));
  const auto part = channel_loop_cpu<Acc>(ctx, s, t, grad, term, opt.unbiased, static_cast<Acc>(opt.grad_scale * inv_div),
                                          opt.accumulate, no_channel_output{});
  if (!loss.empty()) loss(0) = part.loss * static_cast<Acc>(inv_div);
  return report_flags(fn, part, "student", "teacher");
}

template <class TS, class TT>
status stats_matching_channels_cpu(const char* fn, const cpu& ctx, host_view<TS, 4> s, host_view<TT, 4> t,
                                   host_view<accum_t<TS>, 1> loss, host_view<std::remove_const_t<TS>, 4> grad,
                                   const stats_matching_options& opt) {
  DISTILL_TRY(check_stats_matching_options(fn, opt));
  return channel_loss_cpu(fn, ctx, s, t, loss, grad, opt, make_stats_matching_term<accum_t<TS>>(opt));
}

template <class TS, class TT>
status stats_matching_tokens_cpu(const char* fn, const cpu& ctx, host_view<TS, 3> s, host_view<const std::uint8_t, 2> sm,
                                 host_view<TT, 3> t, host_view<const std::uint8_t, 2> tm, host_view<accum_t<TS>, 1> loss,
                                 host_view<std::remove_const_t<TS>, 3> grad, const stats_matching_options& opt) {
  static_check_cpu_type<TS>();
  static_check_cpu_type<TT>();
  using Acc = accum_t<TS>;
  DISTILL_TRY(check_stats_matching_options(fn, opt));
  DISTILL_TRY(check_token_loss_args(fn, s, sm, t, tm, loss, grad));
  DISTILL_TRY(check_token_mask_host(fn, "student_mask", sm, s.extent(0), s.extent(1), opt.unbiased));
  DISTILL_TRY(check_token_mask_host(fn, "teacher_mask", tm, t.extent(0), t.extent(1), opt.unbiased));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "student", s, "teacher", t));
  const double inv_div = 1.0 / stats_divisor(opt.reduction, s.extent(0), s.extent(2));
  const auto part = token_loop_cpu<Acc>(ctx, s, sm, t, tm, grad, make_stats_matching_term<Acc>(opt), opt.unbiased,
                                        static_cast<Acc>(opt.grad_scale * inv_div), opt.accumulate,
                                        no_channel_output{});
  if (!loss.empty()) loss(0) = part.loss * static_cast<Acc>(inv_div);
  return report_flags(fn, part, "student", "teacher");
}
}  // namespace features_detail

/// L of §4.1 for [B, C, H, W] student and [B, C, H', W'] teacher, written to loss (1).
template <class TS, class TT>
[[nodiscard]] status stats_matching_forward(const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
                                            host_view<accum_t<TS>, 1> loss, host_view<std::byte, 1> /*workspace*/,
                                            const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_detail::stats_matching_channels_cpu(fn, ctx, student, teacher, loss, {}, opt);
}
/// dL/dstudent (times grad_scale).
template <class TS, class TT>
[[nodiscard]] status stats_matching_backward(const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
                                             host_view<std::remove_const_t<TS>, 4> grad_student,
                                             host_view<std::byte, 1> /*workspace*/,
                                             const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::stats_matching_channels_cpu(fn, ctx, student, teacher, {}, grad_student, opt);
}
/// Loss and gradient in one pass (loss may be absent).
template <class TS, class TT>
[[nodiscard]] status stats_matching_forward_backward(const cpu& ctx, host_view<TS, 4> student, host_view<TT, 4> teacher,
                                                     host_view<accum_t<TS>, 1> loss,
                                                     host_view<std::remove_const_t<TS>, 4> grad_student,
                                                     host_view<std::byte, 1> /*workspace*/,
                                                     const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::stats_matching_channels_cpu(fn, ctx, student, teacher, loss, grad_student, opt);
}

/// Token layout: student [B, L, D] with student_mask [B, L], teacher [B, L', D] with teacher_mask
/// [B, L'] (masks may be absent = every token valid); statistics per feature over valid tokens.
template <class TS, class TT>
[[nodiscard]] status stats_matching_forward(const cpu& ctx, host_view<TS, 3> student,
                                            host_view<const std::uint8_t, 2> student_mask, host_view<TT, 3> teacher,
                                            host_view<const std::uint8_t, 2> teacher_mask, host_view<accum_t<TS>, 1> loss,
                                            host_view<std::byte, 1> /*workspace*/,
                                            const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_detail::stats_matching_tokens_cpu(fn, ctx, student, student_mask, teacher, teacher_mask, loss, {}, opt);
}
template <class TS, class TT>
[[nodiscard]] status stats_matching_backward(const cpu& ctx, host_view<TS, 3> student,
                                             host_view<const std::uint8_t, 2> student_mask, host_view<TT, 3> teacher,
                                             host_view<const std::uint8_t, 2> teacher_mask,
                                             host_view<std::remove_const_t<TS>, 3> grad_student,
                                             host_view<std::byte, 1> /*workspace*/,
                                             const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::stats_matching_tokens_cpu(fn, ctx, student, student_mask, teacher, teacher_mask, {},
                                                    grad_student, opt);
}
template <class TS, class TT>
[[nodiscard]] status stats_matching_forward_backward(const cpu& ctx, host_view<TS, 3> student,
                                                     host_view<const std::uint8_t, 2> student_mask, host_view<TT, 3> teacher,
                                                     host_view<const std::uint8_t, 2> teacher_mask,
                                                     host_view<accum_t<TS>, 1> loss,
                                                     host_view<std::remove_const_t<TS>, 3> grad_student,
                                                     host_view<std::byte, 1> /*workspace*/,
                                                     const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_detail::stats_matching_tokens_cpu(fn, ctx, student, student_mask, teacher, teacher_mask, loss,
                                                    grad_student, opt);
}

namespace features_detail {
/// The CUDA scratch of the per-channel losses (core/workspace.hpp): one accumulator per channel.
template <class Acc>
struct channel_loss_scratch {
  Acc* partial;
  constexpr channel_loss_scratch(workspace_carver& w, index_t channels) : partial(w.take<Acc>(channels)) {}
};
}  // namespace features_detail

/// Bytes of scratch of the statistics-matching entry points for `batch` x `channels` statistics
/// (channels = C, or D in the token layout) of element type T: none on the CPU; on CUDA one
/// accumulator per channel when a loss value is requested, reduced in a fixed order
/// (deterministic). The backward pass needs none.
template <class T = float>
constexpr std::size_t stats_matching_workspace_size(const cpu&, index_t /*batch*/, index_t /*channels*/) noexcept { return 0; }
template <class T = float>
constexpr std::size_t stats_matching_workspace_size(const cuda&, index_t batch, index_t channels) noexcept {
  return workspace_carver::size_of<features_detail::channel_loss_scratch<accum_t<T>>>(batch * channels);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/feature_stats.cuh"
#endif
