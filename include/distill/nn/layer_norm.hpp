// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Layer normalisation over the last axis (Ba, Kiros & Hinton 2016).
//!
//!   x (N, D):  mu_n = mean_d x[n, d],  var_n = mean_d (x[n, d] - mu_n)^2 (biased),
//!              rstd_n = 1 / sqrt(var_n + eps),  xhat = (x - mu_n) rstd_n,
//!              y = xhat * gamma + beta                     gamma, beta (D)
//!   backward:  g = dy * gamma
//!              dx = rstd_n (g - mean_d g - xhat * mean_d(g * xhat))
//!              dgamma = sum_n dy * xhat,   dbeta = sum_n dy
//!
//! The forward writes mu and rstd (N) to caller views; the backward reads them (the cache).
//! gamma/beta may be absent (no affine transform: gamma = 1, beta = 0). CPU: rows in parallel,
//! parameter gradients per column (deterministic). CUDA: one warp per row; parameter gradients
//! with the two-stage column sum.

#include <cmath>

#include "distill/nn/common.hpp"

namespace distill::nn {

namespace nn_detail {
/// The row statistics mean and rstd (N): required by both passes on both backends.
template <class MV, class RV>
status check_layer_norm_stats(const char* fn, const MV& mean, const RV& rstd, index_t N) {
  DISTILL_TRY(check_present(fn, "mean", mean));
  DISTILL_TRY(check_present(fn, "rstd", rstd));
  DISTILL_TRY(check_shape(fn, "mean", mean, {N}));
  return check_shape(fn, "rstd", rstd, {N});
}
}  // namespace nn_detail

template <class T>
[[nodiscard]] status layer_norm_forward(const cpu& ctx, in_view<T, 2> x, in_view<T, 1> gamma, in_view<T, 1> beta,
                                        host_view<T, 2> y, out_view<T, 1> mean, out_view<T, 1> rstd, double eps = 1e-5) {
  constexpr const char* fn = "nn::layer_norm_forward";
  DISTILL_TRY(nn_detail::check_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
  DISTILL_TRY(check_positive(fn, "eps", eps));
  const index_t N = x.extent(0), D = x.extent(1);
  if (!gamma.empty()) DISTILL_TRY(check_shape(fn, "gamma", gamma, {D}));
  if (!beta.empty()) DISTILL_TRY(check_shape(fn, "beta", beta, {D}));
  DISTILL_TRY(nn_detail::check_layer_norm_stats(fn, mean, rstd, N));
  using Acc = accum_t<T>;
  parallel_for(
      ctx, N,
      [&](index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r) {
          Acc s = 0;
          for (index_t d = 0; d < D; ++d) s += static_cast<Acc>(x(r, d));
          const Acc mu = s / static_cast<Acc>(D);
          Acc v = 0;
          for (index_t d = 0; d < D; ++d) {
            const Acc c = static_cast<Acc>(x(r, d)) - mu;
            v += c * c;
          }
          const Acc rs = Acc(1) / std::sqrt(v / static_cast<Acc>(D) + static_cast<Acc>(eps));
          mean(r) = static_cast<T>(mu);
          rstd(r) = static_cast<T>(rs);
          for (index_t d = 0; d < D; ++d) {
            Acc o = (static_cast<Acc>(x(r, d)) - mu) * rs;
            if (!gamma.empty()) o *= static_cast<Acc>(gamma(d));
            if (!beta.empty()) o += static_cast<Acc>(beta(d));
            y(r, d) = static_cast<T>(o);
          }
        }
      },
      std::max<index_t>(1, (index_t(1) << 13) / D));
  return {};
}

/// `dx`, `dgamma`, `dbeta` may each be absent.
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status layer_norm_backward(const cpu& ctx, in_view<T, 2> x, in_view<T, 1> gamma, in_view<T, 1> mean,
                                         in_view<T, 1> rstd, host_view<TD, 2> dy, out_view<T, 2> dx, out_view<T, 1> dgamma,
                                         out_view<T, 1> dbeta, grad_options opt = {}) {
  constexpr const char* fn = "nn::layer_norm_backward";
  DISTILL_TRY(nn_detail::check_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
  DISTILL_TRY(nn_detail::check_not_null(fn, "dy", dy));
  const index_t N = x.extent(0), D = x.extent(1);
  if (!gamma.empty()) DISTILL_TRY(check_shape(fn, "gamma", gamma, {D}));
  DISTILL_TRY(nn_detail::check_layer_norm_stats(fn, mean, rstd, N));
  if (!dx.empty()) DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
  if (!dgamma.empty()) DISTILL_TRY(check_shape(fn, "dgamma", dgamma, {D}));
  if (!dbeta.empty()) DISTILL_TRY(check_shape(fn, "dbeta", dbeta, {D}));
  using Acc = accum_t<T>;
  if (!dx.empty()) {
    parallel_for(
        ctx, N,
        [&](index_t r0, index_t r1) {
          for (index_t r = r0; r < r1; ++r) {
            const Acc mu = static_cast<Acc>(mean(r)), rs = static_cast<Acc>(rstd(r));
            Acc sg = 0, sgx = 0;
            for (index_t d = 0; d < D; ++d) {
              const Acc g = static_cast<Acc>(dy(r, d)) * (gamma.empty() ? Acc(1) : static_cast<Acc>(gamma(d)));
              sg += g;
              sgx += g * (static_cast<Acc>(x(r, d)) - mu) * rs;
            }
            sg /= static_cast<Acc>(D);
            sgx /= static_cast<Acc>(D);
            for (index_t d = 0; d < D; ++d) {
              const Acc g = static_cast<Acc>(dy(r, d)) * (gamma.empty() ? Acc(1) : static_cast<Acc>(gamma(d)));
              const Acc xh = (static_cast<Acc>(x(r, d)) - mu) * rs;
              const Acc v = rs * (g - sg - xh * sgx);
              dx(r, d) = static_cast<T>(opt.accumulate_input ? static_cast<Acc>(dx(r, d)) + v : v);
            }
          }
        },
        std::max<index_t>(1, (index_t(1) << 13) / D));
  }
  if (!dgamma.empty() || !dbeta.empty()) {
    parallel_for(
        ctx, D,
        [&](index_t d0, index_t d1) {
          for (index_t d = d0; d < d1; ++d) {
            Acc sg = 0, sb = 0;
            for (index_t r = 0; r < N; ++r) {
              const Acc g = static_cast<Acc>(dy(r, d));
              sb += g;
              sg += g * (static_cast<Acc>(x(r, d)) - static_cast<Acc>(mean(r))) * static_cast<Acc>(rstd(r));
            }
            if (!dgamma.empty()) dgamma(d) = static_cast<T>(opt.accumulate_params ? static_cast<Acc>(dgamma(d)) + sg : sg);
            if (!dbeta.empty()) dbeta(d) = static_cast<T>(opt.accumulate_params ? static_cast<Acc>(dbeta(d)) + sb : sb);
          }
        },
        std::max<index_t>(1, (index_t(1) << 13) / N));
  }
  return {};
}

/// Layer norm over the last axis with learnable gamma (ones) and beta (zeros), named
/// "<name>.weight" / "<name>.bias". Cache: mean and rstd of the last forward.
template <class T, class Space = host_space>
class layer_norm {
 public:
  index_t features = 0;
  double eps = 1e-5;
  parameter<T, Space> gamma, beta;
  tensor<T, Space> mean, rstd;  // cache (N) of the last forward

  layer_norm() = default;
  layer_norm(const std::string& name, index_t d, double eps_ = 1e-5)
      : features(d), eps(eps_), gamma(name + ".weight", {d}), beta(name + ".bias", {d}) {
    throw_if_error(fill_constant(gamma.value, 1.0));
  }

  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 2, Space> x, out_view<T, 2, Space> y) {
    DISTILL_TRY(mean.resize({x.extent(0)}));
    DISTILL_TRY(rstd.resize({x.extent(0)}));
    return layer_norm_forward(ctx, x, gamma.value.template view<1>(), beta.value.template view<1>(), y, mean.template view<1>(),
                              rstd.template view<1>(), eps);
  }
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 2, Space> x, in_view<T, 2, Space> dy, out_view<T, 2, Space> dx) {
    return layer_norm_backward(ctx, x, gamma.value.template view<1>(), mean.template cview<1>(), rstd.template cview<1>(), dy, dx,
                               nn_detail::grad_if_trainable<1>(gamma), nn_detail::grad_if_trainable<1>(beta), layer_grad_options);
  }
  parameter_list<T, Space> parameters() { return {&gamma, &beta}; }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_layer_norm.cuh"
#endif
