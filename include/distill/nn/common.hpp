// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Pieces shared by every nn/ layer header.
//!
//! Two levels in every layer header:
//!  1. view-level functions, e.g. `linear_forward(ctx, x, w, b, y)`: stateless, on views of memory
//!     the caller owns (engines, the relational family's weight views), CPU overloads in the
//!     header and CUDA overloads (taking `const nn::cuda_blas&` or `const cuda&`) in
//!     kernels/distill/cuda/nn_<layer>.cuh;
//!  2. a layer class, e.g. `nn::linear<T, Space>`, that owns its parameters (and whatever its
//!     backward needs that is not an input or output, its *cache*), with member functions
//!     `forward(ctx, x, y)` and `backward(ctx, x, dy, dx)` calling level 1.
//!
//! Activations are the caller's: a layer's backward takes the same `x` its forward saw. Each
//! layer's cache holds the last forward only, so one layer instance is applied once per forward
//! pass (use two instances, or the view-level functions, to apply the same weights twice).
//!
//! Gradients: view-level backward functions overwrite `dx`, `dw`, `db` unless the
//! `grad_options` say accumulate; layer classes accumulate into their parameters' `grad`
//! (zero them with nn::zero_grad before each step, as in PyTorch) and overwrite `dx`.
//! An absent (default-constructed) `dx` skips the input gradient; a frozen parameter
//! (`trainable = false`) skips its own.

#include <algorithm>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/nn/blas.hpp"
#include "distill/nn/init.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/tensor.hpp"

namespace distill::nn {

// Input views are distill::in_view<T, R, Space> (core/tensor_view.hpp): views of `T` or `const T`,
// T deduced from an output view or a layer.
/// Output view that does not take part in deduction.
template <class T, int R, class Space = host_space>
using out_view = std::type_identity_t<tensor_view<T, R, Space>>;

/// Whether a backward pass adds to its gradient outputs (true) or overwrites them (false).
struct grad_options {
  bool accumulate_input = false;   ///< dx += ... instead of dx = ...
  bool accumulate_params = false;  ///< dw += ..., db += ... instead of =
};

/// What a layer's backward passes to the view-level function: parameters accumulate.
inline constexpr grad_options layer_grad_options{false, true};

namespace nn_detail {
/// Absent view when the parameter is frozen (no gradient wanted), else its gradient view.
template <int R, class T, class Space>
tensor_view<T, R, Space> grad_if_trainable(parameter<T, Space>& p) {
  if (!p.trainable || p.size() == 0) return {};
  return p.grad.template view<R>();
}
/// The parameter's value as a view of const, absent when the parameter is empty.
template <int R, class T, class Space>
tensor_view<const T, R, Space> value_of(const parameter<T, Space>& p) {
  if (p.size() == 0) return {};
  return p.value.template view<R>();
}

/// sum of p[0..n) in accum_t<T> with 8 independent partial sums (vectorisable, fixed order).
template <class T>
accum_t<T> sum_contiguous(const T* p, index_t n) {
  using Acc = accum_t<T>;
  Acc a[8] = {};
  index_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) a[k] += static_cast<Acc>(p[i + k]);
  for (; i < n; ++i) a[0] += static_cast<Acc>(p[i]);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/// out[c] = (accumulate ? out[c] : 0) + sum_r x(r, c). Each column is summed by one thread in row
/// order, so the result does not depend on the thread count.
template <class T, class X>
void column_sums(const cpu& ctx, const X& x, host_view<T, 1> out, bool accumulate) {
  const index_t rows = x.extent(0), cols = x.extent(1);
  parallel_for(
      ctx, cols,
      [&](index_t c0, index_t c1) {
        std::vector<T> acc(static_cast<std::size_t>(c1 - c0), T(0));
        for (index_t r = 0; r < rows; ++r) {
          const auto* row = x.row(r);
          const index_t cs = x.stride(1);
          for (index_t c = c0; c < c1; ++c) acc[static_cast<std::size_t>(c - c0)] += row[c * cs];
        }
        for (index_t c = c0; c < c1; ++c)
          out(c) = accumulate ? out(c) + acc[static_cast<std::size_t>(c - c0)] : acc[static_cast<std::size_t>(c - c0)];
      },
      std::max<index_t>(1, (index_t(1) << 15) / std::max<index_t>(1, rows)));
}

/// y(r, c) = f(r, c) over a (rows, cols) view, rows split across the context's threads.
template <class T, class X, class Y, class F>
void map_rows(const cpu& ctx, const X& x, const Y& y, F f) {
  const index_t rows = x.extent(0), cols = x.extent(1);
  parallel_for(
      ctx, rows,
      [&](index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r)
          for (index_t c = 0; c < cols; ++c) y(r, c) = f(r, c);
      },
      std::max<index_t>(1, (index_t(1) << 14) / std::max<index_t>(1, cols)));
}

/// A layer's parameters: its weight, then its bias when it has one (an empty bias: none).
template <class T, class Space>
parameter_list<T, Space> weight_and_bias(parameter<T, Space>& weight, parameter<T, Space>& bias) {
  parameter_list<T, Space> p{&weight};
  if (bias.size()) p.push_back(&bias);
  return p;
}

/// A required view whose shape was already checked: if it has elements, its data must be there.
template <class V>
status check_not_null(const char* fn, const char* name, const V& v) {
  return v.size() != 0 ? check_present(fn, name, v) : status{};
}

/// Validation shared by the layers: present, non-empty, non-negative strides.
template <class V>
status check_input(const char* fn, const char* name, const V& v) {
  DISTILL_TRY(check_present(fn, name, v));
  DISTILL_TRY(check_nonempty(fn, name, v));
  return check_strides(fn, name, v);
}
}  // namespace nn_detail

}  // namespace distill::nn
