// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Parameters and what is done to all of them at once: collecting, zeroing gradients, the global
//! gradient norm and gradient-norm clipping.
//!
//! A `parameter<T, Space>` is a name, a value tensor and a gradient tensor of the same shape
//! (host or device memory), and a `trainable` flag. Layers own their parameters; a model gathers
//! them into a `parameter_list` (plain pointers, in a fixed order) for the optimiser and the
//! checkpoint:
//!
//!   auto params = nn::collect_parameters(conv1, bn1, conv2, head);   // layers with .parameters()
//!   DISTILL_TRY(nn::zero_grad(ctx, params));
//!
//! Buffers (`buffer = true`: batch-norm running statistics) travel in the same lists so checkpoints
//! save them; they have no gradient and are never trainable.
//!
//! Frozen parameters (`trainable = false`, e.g. a teacher's) receive no gradient from the layers
//! and are skipped by zero_grad, the norm and the optimisers; backward passes still propagate the
//! input gradient through them (vector-Jacobian products through a frozen teacher).
//!
//! Gradient-norm clipping (as torch.nn.utils.clip_grad_norm_):
//!   n = sqrt(sum over trainable p, i of grad_p[i]^2)
//!   if max_norm > 0 and n > max_norm:  grad_p *= max_norm / (n + 1e-6)
//! n is written to `total_norm` (a one-element view in the context's memory, so CUDA never
//! synchronises). A non-finite n leaves the gradients untouched (check the returned norm).

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/nn/tensor.hpp"

namespace distill::nn {

template <class T, class Space>
struct parameter {
  std::string name;
  tensor<T, Space> value;
  tensor<T, Space> grad;   ///< same shape as value (empty for buffers)
  bool trainable = true;   ///< false: frozen (no gradient, skipped by optimisers)
  bool buffer = false;     ///< state saved with the model but never learnt (batch-norm running statistics)

  parameter() = default;
  parameter(std::string n, const tensor_shape& s) : name(std::move(n)), value(s), grad(s) {}

  /// A non-learnable state tensor (no gradient storage, never trainable).
  static parameter make_buffer(std::string n, const tensor_shape& s) {
    parameter p;
    p.name = std::move(n);
    throw_if_error(p.value.resize(s));
    p.trainable = false;
    p.buffer = true;
    return p;
  }

  const tensor_shape& shape() const noexcept { return value.shape(); }
  index_t size() const noexcept { return value.size(); }
};

template <class T, class Space>
using parameter_list = std::vector<parameter<T, Space>*>;

/// Concatenate the `.parameters()` of every argument (layers, helpers, or parameter_lists).
template <class First, class... Rest>
auto collect_parameters(First& first, Rest&... rest) {
  auto out = [&] {
    if constexpr (requires { first.parameters(); }) return first.parameters();
    else return first;  // already a parameter_list
  }();
  (
      [&] {
        if constexpr (requires { rest.parameters(); }) {
          auto more = rest.parameters();
          out.insert(out.end(), more.begin(), more.end());
        } else {
          out.insert(out.end(), rest.begin(), rest.end());
        }
      }(),
      ...);
  return out;
}

/// Set every parameter's `trainable` flag (freeze a teacher: set_trainable(params, false)).
/// Buffers stay non-trainable.
template <class T, class Space>
void set_trainable(const parameter_list<T, Space>& params, bool trainable) {
  for (auto* p : params) p->trainable = trainable && !p->buffer;
}

/// Total number of parameter elements.
template <class T, class Space>
index_t count_parameters(const parameter_list<T, Space>& params) {
  index_t n = 0;
  for (const auto* p : params) n += p->size();
  return n;
}

/// Stable 64-bit FNV-1a hash of a name (the initialisers use it as the random stream).
inline std::uint64_t name_hash(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

/// Zero the gradient of every trainable parameter.
template <class T>
[[nodiscard]] status zero_grad(const cpu& ctx, const parameter_list<T, host_space>& params) {
  for (auto* p : params)
    if (p->trainable) DISTILL_TRY(fill_zero(ctx, p->grad.template view<1>()));
  return {};
}

namespace parameter_detail {
template <class T>
double sum_of_squared_grads(const cpu& ctx, const parameter_list<T, host_space>& params) {
  double sum = 0;
  for (auto* p : params) {
    if (!p->trainable) continue;
    const T* g = p->grad.data();
    sum += parallel_sum<double>(
        ctx, p->grad.size(),
        [&](index_t b, index_t e) {
          double s = 0;
          for (index_t i = b; i < e; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
          return s;
        },
        index_t(1) << 15);
  }
  return sum;
}
}  // namespace parameter_detail

/// Global gradient norm of the trainable parameters (CPU; returned directly, in double).
template <class T>
double grad_norm(const cpu& ctx, const parameter_list<T, host_space>& params) {
  return std::sqrt(parameter_detail::sum_of_squared_grads(ctx, params));
}

/// Clip the global gradient norm (see the file comment). `scratch` is unused on the CPU (the
/// CUDA overload keeps its per-block partial sums there); `total_norm` may be absent.
template <class T>
[[nodiscard]] status clip_grad_norm(const cpu& ctx, const parameter_list<T, host_space>& params, double max_norm,
                                    host_tensor<float>& scratch, host_view<float, 1> total_norm) {
  (void)scratch;
  constexpr const char* fn = "nn::clip_grad_norm";
  if (!(max_norm >= 0) || !std::isfinite(max_norm))
    return fail(errc::invalid_argument, fn, "'max_norm' must be finite and >= 0 (0 = only measure)");
  if (!total_norm.empty()) DISTILL_TRY(check_shape(fn, "total_norm", total_norm, {1}));
  const double norm = grad_norm(ctx, params);
  if (!total_norm.empty()) total_norm(0) = static_cast<float>(norm);
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
    const T scale = static_cast<T>(max_norm / (norm + 1e-6));
    for (auto* p : params) {
      if (!p->trainable) continue;
      T* g = p->grad.data();
      parallel_for(
          ctx, p->grad.size(),
          [&](index_t b, index_t e) {
            for (index_t i = b; i < e; ++i) g[i] *= scale;
          },
          index_t(1) << 15);
    }
  }
  return {};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_parameter.cuh"
#endif
