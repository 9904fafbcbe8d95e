// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Element-wise activations y = f(x) and their backward dx = dy * f'(x).
//!
//!   relu        f = max(x, 0)                            f' = [x > 0]
//!   gelu        f = x Phi(x) = x/2 (1 + erf(x/sqrt2))    f' = Phi(x) + x phi(x)     (Hendrycks & Gimpel 2016,
//!                                                                                torch's default GELU)
//!   gelu_tanh   f = x/2 (1 + tanh(u)), u = k (x + 0.044715 x^3), k = sqrt(2/pi)
//!               f' = (1 + t)/2 + x/2 (1 - t^2) k (1 + 3 * 0.044715 x^2),  t = tanh(u)
//!   tanh        f = tanh(x)                              f' = 1 - f^2
//!   sigmoid     f = 1 / (1 + exp(-x))                    f' = f (1 - f)
//!   identity    f = x                                    f' = 1
//!
//! Views are (rows, cols) with unit inner stride on CUDA (any strides on the CPU); tensors of
//! any rank pass as `t.view<2>()`. The backward recomputes f'(x) from x, so only x is kept.
//! y may alias x (in place) in the forward, dx may alias dy in the backward.

#include <cmath>

#include <type_traits>

#include "distill/nn/common.hpp"

namespace distill::nn {

enum class activation { identity, relu, gelu, gelu_tanh, tanh, sigmoid };

constexpr const char* to_string(activation a) noexcept {
  switch (a) {
    case activation::identity: return "identity";
    case activation::relu: return "relu";
    case activation::gelu: return "gelu";
    case activation::gelu_tanh: return "gelu_tanh";
    case activation::tanh: return "tanh";
    case activation::sigmoid: return "sigmoid";
  }
  return "unknown";
}

/// f(x), shared by the CPU loops and the kernels.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc activation_value(activation a, Acc x) noexcept {
  using std::erf;
  using std::exp;
  using std::tanh;
  constexpr Acc inv_sqrt2 = Acc(0.70710678118654752440);
  constexpr Acc k = Acc(0.79788456080286535588);  // sqrt(2/pi)
  switch (a) {
    case activation::relu: return x > Acc(0) ? x : Acc(0);
    case activation::gelu: return Acc(0.5) * x * (Acc(1) + erf(x * inv_sqrt2));
    case activation::gelu_tanh: return Acc(0.5) * x * (Acc(1) + tanh(k * (x + Acc(0.044715) * x * x * x)));
    case activation::tanh: return tanh(x);
    case activation::sigmoid: return Acc(1) / (Acc(1) + exp(-x));
    default: return x;
  }
}

/// f'(x).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc activation_derivative(activation a, Acc x) noexcept {
  using std::erf;
  using std::exp;
  using std::tanh;
  constexpr Acc inv_sqrt2 = Acc(0.70710678118654752440);
  constexpr Acc inv_sqrt_2pi = Acc(0.39894228040143267794);
  constexpr Acc k = Acc(0.79788456080286535588);
  switch (a) {
    case activation::relu: return x > Acc(0) ? Acc(1) : Acc(0);
    case activation::gelu: return Acc(0.5) * (Acc(1) + erf(x * inv_sqrt2)) + x * inv_sqrt_2pi * exp(Acc(-0.5) * x * x);
    case activation::gelu_tanh: {
      const Acc t = tanh(k * (x + Acc(0.044715) * x * x * x));
      return Acc(0.5) * (Acc(1) + t) + Acc(0.5) * x * (Acc(1) - t * t) * k * (Acc(1) + Acc(3 * 0.044715) * x * x);
    }
    case activation::tanh: {
      const Acc t = tanh(x);
      return Acc(1) - t * t;
    }
    case activation::sigmoid: {
      const Acc s = Acc(1) / (Acc(1) + exp(-x));
      return s * (Acc(1) - s);
    }
    default: return Acc(1);
  }
}

namespace nn_detail {
/// f(std::integral_constant<activation, A>{}) for the runtime kind `a`: one branch per call, so the
/// element loops below see a constant kind (inlined, vectorised).
template <class F>
void with_activation(activation a, F&& f) {
  switch (a) {
    case activation::relu: return f(std::integral_constant<activation, activation::relu>{});
    case activation::gelu: return f(std::integral_constant<activation, activation::gelu>{});
    case activation::gelu_tanh: return f(std::integral_constant<activation, activation::gelu_tanh>{});
    case activation::tanh: return f(std::integral_constant<activation, activation::tanh>{});
    case activation::sigmoid: return f(std::integral_constant<activation, activation::sigmoid>{});
    default: return f(std::integral_constant<activation, activation::identity>{});
  }
}
}  // namespace nn_detail

/// y = f(x).
template <class T>
[[nodiscard]] status activation_forward(const cpu& ctx, activation a, in_view<T, 2> x, host_view<T, 2> y) {
  constexpr const char* fn = "nn::activation_forward";
  DISTILL_TRY(nn_detail::check_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
  DISTILL_TRY(check_strides(fn, "y", y));
  using Acc = accum_t<T>;
  if (x.contiguous() && y.contiguous()) {  // the common case: one flat loop per thread
    const T* xp = x.data();
    T* yp = y.data();
    nn_detail::with_activation(a, [&](auto kind) {
      parallel_for(
          ctx, x.size(),
          [&](index_t b, index_t e) {
            for (index_t i = b; i < e; ++i) yp[i] = static_cast<T>(activation_value<Acc>(kind.value, static_cast<Acc>(xp[i])));
          },
          index_t(1) << 15);
    });
    return {};
  }
  nn_detail::map_rows<T>(ctx, x, y, [&](index_t r, index_t c) { return static_cast<T>(activation_value<Acc>(a, static_cast<Acc>(x(r, c)))); });
  return {};
}

/// dx = dy * f'(x)  (dx += ... with opt.accumulate_input).
template <class T>
[[nodiscard]] status activation_backward(const cpu& ctx, activation a, in_view<T, 2> x, in_view<T, 2> dy, host_view<T, 2> dx,
                                         grad_options opt = {}) {
  constexpr const char* fn = "nn::activation_backward";
  DISTILL_TRY(nn_detail::check_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
  DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
  DISTILL_TRY(check_strides(fn, "dx", dx));
  using Acc = accum_t<T>;
  if (x.contiguous() && dy.contiguous() && dx.contiguous()) {
    const T *xp = x.data(), *gp = dy.data();
    T* dp = dx.data();
    nn_detail::with_activation(a, [&](auto kind) {
      parallel_for(
          ctx, x.size(),
          [&](index_t b, index_t e) {
            for (index_t i = b; i < e; ++i) {
              const Acc g = static_cast<Acc>(gp[i]) * activation_derivative<Acc>(kind.value, static_cast<Acc>(xp[i]));
              dp[i] = static_cast<T>(opt.accumulate_input ? static_cast<Acc>(dp[i]) + g : g);
            }
          },
          index_t(1) << 15);
    });
    return {};
  }
  nn_detail::map_rows<T>(ctx, x, dx, [&](index_t r, index_t c) {
    const Acc g = static_cast<Acc>(dy(r, c)) * activation_derivative<Acc>(a, static_cast<Acc>(x(r, c)));
    return static_cast<T>(opt.accumulate_input ? static_cast<Acc>(dx(r, c)) + g : g);
  });
  return {};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_activation.cuh"
#endif
