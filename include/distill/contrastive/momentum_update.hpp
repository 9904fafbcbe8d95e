// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Momentum (EMA) update of a key encoder from a query encoder, MoCo (He et al., CVPR 2020):
//!
//!   theta_k <- m * theta_k + (1 - m) * theta_q        for every parameter buffer, m in [0, 1]
//!
//! computed as fma(m, theta_k, (1 - m) * theta_q) in float (double for double buffers), so
//! m = 1 leaves theta_k bit-identical and m = 0 copies theta_q exactly. No gradient flows
//! (the key encoder is not trained by backpropagation). MoCo's default m = 0.999; MoCo runs it
//! before encoding the keys of the step.
//!
//! Parameters come as a list of {key, query} rank-1 views of equal length (one per tensor of
//! the encoder; flatten matrices with `reshape<1>`). The CPU path splits every buffer across the
//! context's threads; the CUDA path updates up to 64 buffers per launch (multi-tensor apply),
//! so a whole encoder costs a handful of launches.

#include <cmath>
#include <iterator>
#include <utility>
#include <span>
#include <string>
#include <type_traits>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

/// One parameter buffer of the key encoder (updated in place) and its query-encoder twin.
template <class T, class Space = host_space>
struct momentum_param {
  tensor_view<T, 1, Space> key;
  tensor_view<const T, 1, Space> query;
};

namespace contrastive_detail {

/// m * k + (1 - m) * q with m = 1 -> k and m = 0 -> q exactly (finite inputs).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc momentum_blend(Acc k, Acc q, Acc m) noexcept {
  using std::fma;
  return fma(m, k, (Acc(1) - m) * q);
}

template <class T, class Space>
status check_momentum_params(const char* fn, std::span<const momentum_param<T, Space>> params, double momentum) {
  DISTILL_TRY(check_in_range(fn, "momentum", momentum, 0.0, 1.0));
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const std::string k = "params[" + std::to_string(i) + "].key", q = "params[" + std::to_string(i) + "].query";
    if (p.key.extent(0) == 0 && p.query.extent(0) == 0) continue;
    DISTILL_TRY(check_present(fn, k.c_str(), p.key));
    DISTILL_TRY(check_present(fn, q.c_str(), p.query));
    DISTILL_TRY(check_same_shape(fn, k.c_str(), p.key, q.c_str(), p.query));
    DISTILL_TRY(check_strides(fn, k.c_str(), p.key));
    DISTILL_TRY(check_strides(fn, q.c_str(), p.query));
  }
  return {};
}

template <class P, class Space>
inline constexpr bool is_momentum_param_v = false;
template <class T, class Space>
inline constexpr bool is_momentum_param_v<momentum_param<T, Space>, Space> = true;

/// Element type of a contiguous range of momentum_param (std::vector, std::array, std::span, C array).
template <class Range>
using momentum_range_value_t = std::remove_cvref_t<decltype(*std::data(std::declval<const Range&>()))>;

}  // namespace contrastive_detail

/// theta_k <- m theta_k + (1 - m) theta_q for every buffer in `params` (CPU; float or double).
/// `params` is any contiguous range of momentum_param<T> (std::vector, std::array, std::span).
template <class Range>
  requires contrastive_detail::is_momentum_param_v<contrastive_detail::momentum_range_value_t<Range>, host_space>
[[nodiscard]] status momentum_update(const cpu& ctx, const Range& param_range, double momentum) {
  using P = contrastive_detail::momentum_range_value_t<Range>;
  using T = std::remove_const_t<typename decltype(P::key)::element_type>;
  const std::span<const P> params(std::data(param_range), std::size(param_range));
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "momentum_update (CPU): parameters must be float or double");
  constexpr const char* fn = "momentum_update";
  DISTILL_TRY(contrastive_detail::check_momentum_params(fn, params, momentum));
  const T m = static_cast<T>(momentum);
  for (const auto& p : params) {
    const index_t n = p.key.extent(0);
    if (n == 0) continue;
    const index_t ks = p.key.stride(0), qs = p.query.stride(0);
    T* k = p.key.data();
    const T* q = p.query.data();
    parallel_for(
        ctx, n,
        [&](index_t b, index_t e) {
          if (ks == 1 && qs == 1) {
            for (index_t i = b; i < e; ++i) k[i] = contrastive_detail::momentum_blend(k[i], q[i], m);
          } else {
            for (index_t i = b; i < e; ++i) k[i * ks] = contrastive_detail::momentum_blend(k[i * ks], q[i * qs], m);
          }
        },
        index_t(1) << 15);
  }
  return {};
}

/// Single-buffer convenience overload.
template <class T, class TQ>
[[nodiscard]] status momentum_update(const cpu& ctx, host_view<T, 1> key, host_view<TQ, 1> query, double momentum) {
  static_assert(std::is_same_v<std::remove_const_t<TQ>, T>, "momentum_update: key and query must have the same element type");
  const momentum_param<T, host_space> p{key, query};
  return momentum_update(ctx, std::span<const momentum_param<T, host_space>>(&p, 1), momentum);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/momentum_update.cuh"
#endif
