// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Batch normalisation (Ioffe & Szegedy 2015) over (N, C, S) inputs: statistics per channel c
//! over the N * S values x[n, c, s] (S = H * W for images, 1 for (N, C) features). Pass an
//! (N, C, H, W) tensor as `t.view<3>()`.
//!
//!   training:  mu_c = mean x[:, c, :],  var_c = mean (x - mu_c)^2 (biased),  M = N * S
//!              invstd_c = 1 / sqrt(var_c + eps),  xhat = (x - mu_c) invstd_c,  y = gamma_c xhat + beta_c
//!              running_mean = (1 - momentum) running_mean + momentum mu_c
//!              running_var  = (1 - momentum) running_var  + momentum var_c * M / (M - 1)   (torch)
//!   evaluation: mu_c = running_mean, invstd_c = 1 / sqrt(running_var + eps), no update
//!   backward (training):  dx = gamma_c invstd_c (dy - mean(dy) - xhat mean(dy xhat))   (means over n, s)
//!   backward (evaluation): dx = gamma_c invstd_c dy
//!   dgamma_c = sum dy xhat,  dbeta_c = sum dy
//!
//! The forward writes mu_c and invstd_c (the ones it used, in both modes) to `saved_mean` and
//! `saved_invstd`; the backward reads them. Training needs M >= 2. CPU: channels in parallel,
//! two vectorised passes for the statistics (in double; deterministic). CUDA: grid (channel,
//! chunk of images) blocks compute (count, mean, M2) partials merged in order with Chan's
//! formula, then an element-wise pass; the backward likewise.
//! Data-parallel (CPU): with a sum over replicas (nn/replica.hpp) the means above are over the
//! global batch: the forward adds the replicas' sum x and M, then their sum (x - mu)^2; the
//! backward their sum dy and sum dy xhat (synchronised batch norm, as torch's SyncBatchNorm).

#include <cmath>
#include <span>
#include <vector>

#include "distill/core/simd.hpp"
#include "distill/nn/common.hpp"
#include "distill/nn/replica.hpp"

namespace distill::nn {

struct batch_norm_params {
  double eps = 1e-5;
  double momentum = 0.1;
  bool training = true;
};

namespace nn_detail {
/// sum_k r[k] (squared = false) or sum_k (r[k] - mu)^2 (squared = true) over n contiguous values,
/// in double with two batch accumulators (a fixed lane order: the result depends on the
/// instruction set, never on the thread count). A serial double sum would run at one add per
/// add latency, which made the statistics of small convolutional layers cost more than the
/// convolutions.
template <class T>
double contiguous_sum(const T* r, index_t n, bool squared, double mu) {
  constexpr index_t w = simd::width<double>;
  simd::batch<double> a0(0.0), a1(0.0);
  const simd::batch<double> m(mu);
  index_t k = 0;
  if (!squared) {
    for (; k + 2 * w <= n; k += 2 * w) a0 += simd::load<double>(r + k), a1 += simd::load<double>(r + k + w);
  } else {
    for (; k + 2 * w <= n; k += 2 * w) {
      const auto d0 = simd::load<double>(r + k) - m, d1 = simd::load<double>(r + k + w) - m;
      a0 = simd::fma(d0, d0, a0), a1 = simd::fma(d1, d1, a1);
    }
  }
  double s = simd::reduce_sum(a0 + a1);
  for (; k < n; ++k) {
    const double d = static_cast<double>(r[k]) - (squared ? mu : 0.0);
    s += squared ? d * d : d;
  }
  return s;
}

/// sdy += sum_k g[k], sdyx += sum_k g[k] (x[k] - mu) over n contiguous values (as contiguous_sum).
template <class T, class G>
void contiguous_grad_sums(const T* x, const G* g, index_t n, double mu, double& sdy, double& sdyx) {
  constexpr index_t w = simd::width<double>;
  simd::batch<double> a(0.0), b(0.0);
  const simd::batch<double> m(mu);
  index_t k = 0;
  for (; k + w <= n; k += w) {
    const auto gk = simd::load<double>(g + k);
    a += gk, b = simd::fma(gk, simd::load<double>(x + k) - m, b);
  }
  double s0 = simd::reduce_sum(a), s1 = simd::reduce_sum(b);
  for (; k < n; ++k) {
    const double gk = static_cast<double>(g[k]);
    s0 += gk, s1 += gk * (static_cast<double>(x[k]) - mu);
  }
  sdy += s0, sdyx += s1;
}

/// sum_k x(n, c, k) (squared = false) or sum_k (x(n, c, k) - mu)^2 (squared = true) over one
/// row, in double.
template <class X>
double row_sum(const X& x, index_t n, index_t c, index_t S, bool squared, double mu = 0.0) {
  if (x.stride(2) == 1) return contiguous_sum(&x(n, c, 0), S, squared, mu);
  double s = 0;
  for (index_t k = 0; k < S; ++k) {
    const double d = static_cast<double>(x(n, c, k)) - (squared ? mu : 0.0);
    s += squared ? d * d : d;
  }
  return s;
}

template <class X, class G>
status check_batch_norm(const char* fn, const X& x, const G& gamma, const batch_norm_params& p) {
  DISTILL_TRY(check_input(fn, "x", x));
  DISTILL_TRY(check_positive(fn, "eps", p.eps));
  DISTILL_TRY(check_in_range(fn, "momentum", p.momentum, 0.0, 1.0));
  if (!gamma.empty()) DISTILL_TRY(check_shape(fn, "gamma", gamma, {x.extent(1)}));
  if (p.training && x.extent(0) * x.extent(2) < 2)
    return fail(errc::shape_mismatch, fn, "training needs at least 2 values per channel (N * S >= 2), got shape " +
                                              check_detail::shape_of(x));
  return {};
}
}  // namespace nn_detail

/// running_mean / running_var are updated in training and read in evaluation; they may be absent
/// in training (no running statistics kept). gamma / beta may be absent (no affine transform).
/// `sum_over_replicas` (training only): synchronised statistics over a data-parallel global batch
/// (nn/replica.hpp); two calls, with C + 1 and C values.
template <class T>
[[nodiscard]] status batch_norm_forward(const cpu& ctx, in_view<T, 3> x, in_view<T, 1> gamma, in_view<T, 1> beta,
                                        out_view<T, 1> running_mean, out_view<T, 1> running_var, host_view<T, 3> y,
                                        out_view<T, 1> saved_mean, out_view<T, 1> saved_invstd, const batch_norm_params& p,
                                        const replica_sum& sum_over_replicas = {}) {
  constexpr const char* fn = "nn::batch_norm_forward";
  DISTILL_TRY(nn_detail::check_batch_norm(fn, x, gamma, p));
  DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
  const index_t N = x.extent(0), C = x.extent(1), S = x.extent(2);
  if (!beta.empty()) DISTILL_TRY(check_shape(fn, "beta", beta, {C}));
  DISTILL_TRY(check_present(fn, "saved_mean", saved_mean));
  DISTILL_TRY(check_present(fn, "saved_invstd", saved_invstd));
  DISTILL_TRY(check_shape(fn, "saved_mean", saved_mean, {C}));
  DISTILL_TRY(check_shape(fn, "saved_invstd", saved_invstd, {C}));
  if (running_mean.empty() != running_var.empty())
    return fail(errc::invalid_argument, fn, "'running_mean' and 'running_var' must be both present or both absent");
  if (!p.training && running_mean.empty())
    return fail(errc::invalid_argument, fn, "evaluation mode needs 'running_mean' and 'running_var'");
  if (!running_mean.empty()) {
    DISTILL_TRY(check_shape(fn, "running_mean", running_mean, {C}));
    DISTILL_TRY(check_shape(fn, "running_var", running_var, {C}));
  }
  const index_t grain = std::max<index_t>(1, (index_t(1) << 14) / std::max<index_t>(1, N * S));
  const bool synchronised = p.training && static_cast<bool>(sum_over_replicas);
  // Synchronised: stats = [sum x per channel (C), M, sum (x - mu)^2 per channel (C)], each part
  // added over the replicas by the caller's sum (first the C + 1, then the C), so mu and var are
  // the global batch's.
  std::vector<double> stats;
  double M = static_cast<double>(N * S);
  if (synchronised) {
    stats.assign(static_cast<std::size_t>(2 * C + 1), 0.0);
    parallel_for(ctx, C, [&](index_t c0, index_t c1) {
      for (index_t c = c0; c < c1; ++c)
        for (index_t n = 0; n < N; ++n) stats[static_cast<std::size_t>(c)] += nn_detail::row_sum(x, n, c, S, false);
    }, grain);
    stats[static_cast<std::size_t>(C)] = M;
    DISTILL_TRY(sum_over_replicas(std::span<double>(stats.data(), static_cast<std::size_t>(C + 1))));
    M = stats[static_cast<std::size_t>(C)];
    parallel_for(ctx, C, [&](index_t c0, index_t c1) {
      for (index_t c = c0; c < c1; ++c) {
        const double mu = stats[static_cast<std::size_t>(c)] / M;
        for (index_t n = 0; n < N; ++n) stats[static_cast<std::size_t>(C + 1 + c)] += nn_detail::row_sum(x, n, c, S, true, mu);
      }
    }, grain);
    DISTILL_TRY(sum_over_replicas(std::span<double>(stats.data() + C + 1, static_cast<std::size_t>(C))));
  }
  parallel_for(
      ctx, C,
      [&](index_t c0, index_t c1) {
        for (index_t c = c0; c < c1; ++c) {
          double mu, invstd;
          if (p.training) {
            double var;
            if (synchronised) {
              mu = stats[static_cast<std::size_t>(c)] / M, var = stats[static_cast<std::size_t>(C + 1 + c)] / M;
            } else {
              double s = 0;
              for (index_t n = 0; n < N; ++n) s += nn_detail::row_sum(x, n, c, S, false);
              mu = s / M;
              double v = 0;
              for (index_t n = 0; n < N; ++n) v += nn_detail::row_sum(x, n, c, S, true, mu);
              var = v / M;
            }
            invstd = 1.0 / std::sqrt(var + p.eps);
            if (!running_mean.empty()) {
              running_mean(c) = static_cast<T>((1 - p.momentum) * static_cast<double>(running_mean(c)) + p.momentum * mu);
              running_var(c) =
                  static_cast<T>((1 - p.momentum) * static_cast<double>(running_var(c)) + p.momentum * var * M / (M - 1));
            }
          } else {
            mu = static_cast<double>(running_mean(c));
            invstd = 1.0 / std::sqrt(static_cast<double>(running_var(c)) + p.eps);
          }
          saved_mean(c) = static_cast<T>(mu);
          saved_invstd(c) = static_cast<T>(invstd);
          const double g = gamma.empty() ? 1.0 : static_cast<double>(gamma(c));
          const double b = beta.empty() ? 0.0 : static_cast<double>(beta(c));
          const double a = g * invstd, o = b - mu * a;  // y = a x + o
          for (index_t n = 0; n < N; ++n) {
            if (x.stride(2) == 1 && y.stride(2) == 1) {
              const T* xr = &x(n, c, 0);
              T* yr = &y(n, c, 0);
              for (index_t k = 0; k < S; ++k) yr[k] = static_cast<T>(a * static_cast<double>(xr[k]) + o);
            } else {
              for (index_t k = 0; k < S; ++k) y(n, c, k) = static_cast<T>(a * static_cast<double>(x(n, c, k)) + o);
            }
          }
        }
      },
      grain);
  return {};
}

/// `dx`, `dgamma`, `dbeta` may each be absent. `training` must match the forward's mode.
/// `sum_over_replicas` (training only, as in the forward): dx uses the means of dy and dy xhat
/// over the global batch (one call with 2 C + 1 values); dgamma and dbeta stay this replica's.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status batch_norm_backward(const cpu& ctx, in_view<T, 3> x, in_view<T, 1> gamma, in_view<T, 1> saved_mean,
                                         in_view<T, 1> saved_invstd, host_view<TD, 3> dy, out_view<T, 3> dx,
                                         out_view<T, 1> dgamma, out_view<T, 1> dbeta, bool training, grad_options opt = {},
                                         const replica_sum& sum_over_replicas = {}) {
  constexpr const char* fn = "nn::batch_norm_backward";
  DISTILL_TRY(nn_detail::check_batch_norm(fn, x, gamma, batch_norm_params{1e-5, 0.1, training}));
  DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
  DISTILL_TRY(nn_detail::check_not_null(fn, "dy", dy));
  const index_t N = x.extent(0), C = x.extent(1), S = x.extent(2);
  DISTILL_TRY(check_present(fn, "saved_mean", saved_mean));
  DISTILL_TRY(check_present(fn, "saved_invstd", saved_invstd));
  DISTILL_TRY(check_shape(fn, "saved_mean", saved_mean, {C}));
  DISTILL_TRY(check_shape(fn, "saved_invstd", saved_invstd, {C}));
  if (!dx.empty()) DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
  if (!dgamma.empty()) DISTILL_TRY(check_shape(fn, "dgamma", dgamma, {C}));
  if (!dbeta.empty()) DISTILL_TRY(check_shape(fn, "dbeta", dbeta, {C}));
  const index_t grain = std::max<index_t>(1, (index_t(1) << 14) / std::max<index_t>(1, N * S));
  const bool rows = x.stride(2) == 1 && dy.stride(2) == 1 && (dx.empty() || dx.stride(2) == 1);
  // sums[c] = sum dy, sums[C + c] = sum dy xhat over this replica's values of channel c; sums[2C] = M
  std::vector<double> sums(static_cast<std::size_t>(2 * C + 1), 0.0);
  sums[static_cast<std::size_t>(2 * C)] = static_cast<double>(N * S);
  const auto channel_sums = [&](index_t c) {
    const double mu = static_cast<double>(saved_mean(c)), is = static_cast<double>(saved_invstd(c));
    double sdy = 0, sdyx = 0;
    for (index_t n = 0; n < N; ++n) {
      if (rows) {
        nn_detail::contiguous_grad_sums(&x(n, c, 0), &dy(n, c, 0), S, mu, sdy, sdyx);
      } else {
        for (index_t k = 0; k < S; ++k) {
          const double g = static_cast<double>(dy(n, c, k));
          sdy += g;
          sdyx += g * (static_cast<double>(x(n, c, k)) - mu);
        }
      }
    }
    sdyx *= is;
    if (!dgamma.empty()) dgamma(c) = static_cast<T>(opt.accumulate_params ? static_cast<double>(dgamma(c)) + sdyx : sdyx);
    if (!dbeta.empty()) dbeta(c) = static_cast<T>(opt.accumulate_params ? static_cast<double>(dbeta(c)) + sdy : sdy);
    sums[static_cast<std::size_t>(c)] = sdy, sums[static_cast<std::size_t>(C + c)] = sdyx;
  };
  const auto input_grad = [&](index_t c) {
    const double mu = static_cast<double>(saved_mean(c)), is = static_cast<double>(saved_invstd(c));
    const double a = (gamma.empty() ? 1.0 : static_cast<double>(gamma(c))) * is, M = sums[static_cast<std::size_t>(2 * C)];
    const double mdy = training ? sums[static_cast<std::size_t>(c)] / M : 0.0, mdyx = training ? sums[static_cast<std::size_t>(C + c)] / M : 0.0;
    // dx = a (dy - mdy - (x - mu) is mdyx)
    for (index_t n = 0; n < N; ++n) {
      if (rows) {
        const T* xr = &x(n, c, 0);
        const TD* gr = &dy(n, c, 0);
        T* dr = &dx(n, c, 0);
        for (index_t k = 0; k < S; ++k) {
          const double v = a * (static_cast<double>(gr[k]) - mdy - (static_cast<double>(xr[k]) - mu) * is * mdyx);
          dr[k] = static_cast<T>(opt.accumulate_input ? static_cast<double>(dr[k]) + v : v);
        }
      } else {
        for (index_t k = 0; k < S; ++k) {
          const double xh = (static_cast<double>(x(n, c, k)) - mu) * is;
          const double v = a * (static_cast<double>(dy(n, c, k)) - mdy - xh * mdyx);
          dx(n, c, k) = static_cast<T>(opt.accumulate_input ? static_cast<double>(dx(n, c, k)) + v : v);
        }
      }
    }
  };
  if (training && sum_over_replicas) {
    parallel_for(ctx, C, [&](index_t c0, index_t c1) { for (index_t c = c0; c < c1; ++c) channel_sums(c); }, grain);
    DISTILL_TRY(sum_over_replicas(std::span<double>(sums)));
    if (!dx.empty()) parallel_for(ctx, C, [&](index_t c0, index_t c1) { for (index_t c = c0; c < c1; ++c) input_grad(c); }, grain);
  } else {  // one pass per channel while its values are in cache
    parallel_for(
        ctx, C,
        [&](index_t c0, index_t c1) {
          for (index_t c = c0; c < c1; ++c) {
            channel_sums(c);
            if (!dx.empty()) input_grad(c);
          }
        },
        grain);
  }
  return {};
}

/// Batch norm with gamma (ones), beta (zeros) and running statistics (buffers "running_mean" =
/// 0, "running_var" = 1). `training` selects the mode. Cache: the saved mean/invstd.
template <class T, class Space = host_space>
class batch_norm {
 public:
  index_t channels = 0;
  batch_norm_params params;
  parameter<T, Space> gamma, beta, running_mean, running_var;
  tensor<T, Space> saved_mean, saved_invstd;  // cache (C) of the last forward
  replica_sum sum_over_replicas;               // data-parallel: synchronised statistics (CPU)

  batch_norm() = default;
  batch_norm(const std::string& name, index_t c, double eps = 1e-5, double momentum = 0.1)
      : channels(c),
        params{eps, momentum, true},
        gamma(name + ".weight", {c}),
        beta(name + ".bias", {c}),
        running_mean(parameter<T, Space>::make_buffer(name + ".running_mean", {c})),
        running_var(parameter<T, Space>::make_buffer(name + ".running_var", {c})),
        saved_mean(tensor_shape{c}),
        saved_invstd(tensor_shape{c}) {
    throw_if_error(fill_constant(gamma.value, 1.0));
    throw_if_error(fill_constant(running_var.value, 1.0));
  }
  bool training() const noexcept { return params.training; }
  void set_training(bool t) noexcept { params.training = t; }

  /// x, y: (N, C, S); pass (N, C, H, W) tensors as view<3>().
  /// Synchronised statistics when `r` has a sum over replicas (nn/replica.hpp; CPU only).
  void set_replica(const replica& r) { sum_over_replicas = r.sum; }

  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 3, Space> x, out_view<T, 3, Space> y) {
    if constexpr (std::is_same_v<Space, host_space>) {
      return batch_norm_forward(ctx, x, gamma.value.template view<1>(), beta.value.template view<1>(),
                                running_mean.value.template view<1>(), running_var.value.template view<1>(), y,
                                saved_mean.template view<1>(), saved_invstd.template view<1>(), params, sum_over_replicas);
    } else {
      if (sum_over_replicas) return fail(errc::invalid_argument, "nn::batch_norm", "synchronised statistics (sum_over_replicas) are CPU-only");
      return batch_norm_forward(ctx, x, gamma.value.template view<1>(), beta.value.template view<1>(),
                                running_mean.value.template view<1>(), running_var.value.template view<1>(), y,
                                saved_mean.template view<1>(), saved_invstd.template view<1>(), params);
    }
  }
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 3, Space> x, in_view<T, 3, Space> dy, out_view<T, 3, Space> dx) {
    if constexpr (std::is_same_v<Space, host_space>) {
      return batch_norm_backward(ctx, x, gamma.value.template view<1>(), saved_mean.template cview<1>(),
                                 saved_invstd.template cview<1>(), dy, dx, nn_detail::grad_if_trainable<1>(gamma),
                                 nn_detail::grad_if_trainable<1>(beta), params.training, layer_grad_options, sum_over_replicas);
    } else {
      return batch_norm_backward(ctx, x, gamma.value.template view<1>(), saved_mean.template cview<1>(),
                                 saved_invstd.template cview<1>(), dy, dx, nn_detail::grad_if_trainable<1>(gamma),
                                 nn_detail::grad_if_trainable<1>(beta), params.training, layer_grad_options);
    }
  }
  parameter_list<T, Space> parameters() { return {&gamma, &beta, &running_mean, &running_var}; }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_batch_norm.cuh"
#endif
