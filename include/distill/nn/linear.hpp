// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Fully connected layer  y = x W^T + b.
//!
//!   x (N, in), W (out, in), b (out), y (N, out)
//!   forward:   y[n, o]  = sum_i x[n, i] W[o, i] + b[o]
//!   backward:  dx = dy W            (N, out) x (out, in)
//!              dW = dy^T x          (out, N) x (N, in)
//!              db = sum_n dy[n, :]
//!
//! CPU: three distill::gemm calls (Eigen, split across the context's threads) and a bias pass.
//! CUDA: three cuBLAS GEMMs (compute mode from the cuda_blas) and two small kernels (bias add,
//! deterministic bias column sum). Float and double on the CPU; float on CUDA (double compiles, but its bias sums run in float).
//! Views need unit inner stride; row strides are free (slices, padded rows).

#include <string>

#include "distill/core/cpu_gemm.hpp"
#include "distill/nn/common.hpp"

namespace distill::nn {

/// y = x W^T + b. `b` may be absent (no bias).
template <class T>
[[nodiscard]] status linear_forward(const cpu& ctx, in_view<T, 2> x, in_view<T, 2> w, in_view<T, 1> b, host_view<T, 2> y) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "nn::linear_forward: float or double");
  constexpr const char* fn = "nn::linear_forward";
  DISTILL_TRY(nn_detail::check_input(fn, "x", x));
  DISTILL_TRY(nn_detail::check_input(fn, "w", w));
  DISTILL_TRY(nn_detail::check_input(fn, "y", y));
  DISTILL_TRY(check_extent(fn, "w", w, 1, x.extent(1), "in_features = columns of 'x'"));
  DISTILL_TRY(check_shape(fn, "y", y, {x.extent(0), w.extent(0)}));
  if (!b.empty()) DISTILL_TRY(check_shape(fn, "b", b, {w.extent(0)}));
  DISTILL_TRY(gemm(ctx, transpose::no, transpose::yes, T(1), x, w, T(0), y));
  if (!b.empty()) {
    const index_t out = y.extent(1);
    parallel_for(
        ctx, y.extent(0),
        [&](index_t r0, index_t r1) {
          for (index_t r = r0; r < r1; ++r) {
            T* row = y.row(r);
            for (index_t o = 0; o < out; ++o) row[o] += b(o);
          }
        },
        std::max<index_t>(1, (index_t(1) << 15) / out));
  }
  return {};
}

/// Gradients of y = x W^T + b. `dx`, `dw`, `db` may each be absent (not computed).
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status linear_backward(const cpu& ctx, in_view<T, 2> x, in_view<T, 2> w, host_view<TD, 2> dy,
                                     out_view<T, 2> dx, out_view<T, 2> dw, out_view<T, 1> db, grad_options opt = {}) {
  constexpr const char* fn = "nn::linear_backward";
  DISTILL_TRY(nn_detail::check_input(fn, "dy", dy));
  DISTILL_TRY(nn_detail::check_input(fn, "w", w));
  const index_t N = dy.extent(0), out = dy.extent(1), in = w.extent(1);
  DISTILL_TRY(check_shape(fn, "w", w, {out, in}));
  if (!dx.empty()) DISTILL_TRY(check_shape(fn, "dx", dx, {N, in}));
  if (!dw.empty()) {
    DISTILL_TRY(nn_detail::check_input(fn, "x", x));
    DISTILL_TRY(check_shape(fn, "x", x, {N, in}));
    DISTILL_TRY(check_shape(fn, "dw", dw, {out, in}));
  }
  if (!db.empty()) DISTILL_TRY(check_shape(fn, "db", db, {out}));
  host_view<const T, 2> dyc = dy;
  if (!dx.empty()) DISTILL_TRY(gemm(ctx, transpose::no, transpose::no, T(1), dyc, w, opt.accumulate_input ? T(1) : T(0), dx));
  if (!dw.empty()) DISTILL_TRY(gemm(ctx, transpose::yes, transpose::no, T(1), dyc, x, opt.accumulate_params ? T(1) : T(0), dw));
  if (!db.empty()) nn_detail::column_sums(ctx, dyc, db, opt.accumulate_params);
  return {};
}

/// Linear layer owning W (out, in) and b (out), named "<name>.weight" / "<name>.bias".
template <class T, class Space = host_space>
class linear {
 public:
  index_t in_features = 0, out_features = 0;
  parameter<T, Space> weight, bias;  // bias is empty (size 0) without a bias

  linear() = default;
  linear(const std::string& name, index_t in, index_t out, const init_options& init = {}, bool with_bias = true)
      : in_features(in),
        out_features(out),
        weight(name + ".weight", {out, in}),
        bias(with_bias ? parameter<T, Space>(name + ".bias", {out}) : parameter<T, Space>{}) {
    throw_if_error(init_weight_and_bias(weight, with_bias ? &bias : nullptr, in, out, init));
  }

  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 2, Space> x, out_view<T, 2, Space> y) const {
    return linear_forward(ctx, x, nn_detail::value_of<2>(weight), nn_detail::value_of<1>(bias), y);
  }
  /// Accumulates into weight.grad / bias.grad (when trainable); `dx` may be absent.
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 2, Space> x, in_view<T, 2, Space> dy, out_view<T, 2, Space> dx) {
    return linear_backward(ctx, x, nn_detail::value_of<2>(weight), dy, dx, nn_detail::grad_if_trainable<2>(weight),
                           nn_detail::grad_if_trainable<1>(bias), layer_grad_options);
  }
  parameter_list<T, Space> parameters() { return nn_detail::weight_and_bias(weight, bias); }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_linear.cuh"
#endif
