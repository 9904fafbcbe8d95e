// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Embedding lookup.
//!
//!   ids (N) integers in [0, V), table E (V, D), y (N, D):   y[n, :] = E[ids[n], :]
//!   backward:  dE[v, :] = sum over n with ids[n] = v of dy[n, :]
//!
//! ids are int32 or int64. CPU: an id outside [0, V) is refused with invalid_argument (checked
//! before anything is written). CUDA: ids live on the device and are not inspected by the host;
//! an out-of-range id yields a zero row forward and is skipped backward. The CUDA backward
//! scatters with atomicAdd, so its summation order (last bits) may vary from run to run when an
//! id repeats; the CPU backward is deterministic (each thread owns a column range).

#include <cstdint>
#include <string>

#include "distill/nn/common.hpp"

namespace distill::nn {

namespace nn_detail {
template <class I, class V>
status check_ids(const char* fn, const V& ids, index_t vocab) {
  DISTILL_TRY(check_input(fn, "ids", ids));
  for (index_t n = 0; n < ids.extent(0); ++n) {
    const auto id = static_cast<index_t>(ids(n));
    if (id < 0 || id >= vocab)
      return fail(errc::invalid_argument, fn, "'ids' holds " + std::to_string(id) + " at position " + std::to_string(n) +
                                                  ", outside [0, " + std::to_string(vocab) + ")");
  }
  return {};
}
}  // namespace nn_detail

template <class I, class T>
[[nodiscard]] status embedding_forward(const cpu& ctx, in_view<I, 1> ids, in_view<T, 2> table, host_view<T, 2> y) {
  static_assert(std::is_same_v<I, std::int32_t> || std::is_same_v<I, std::int64_t>, "ids are int32 or int64");
  constexpr const char* fn = "nn::embedding_forward";
  DISTILL_TRY(nn_detail::check_input(fn, "table", table));
  DISTILL_TRY(nn_detail::check_ids<I>(fn, ids, table.extent(0)));
  DISTILL_TRY(check_shape(fn, "y", y, {ids.extent(0), table.extent(1)}));
  DISTILL_TRY(nn_detail::check_not_null(fn, "y", y));
  DISTILL_TRY(check_strides(fn, "y", y));
  const index_t D = table.extent(1);
  parallel_for(
      ctx, ids.extent(0),
      [&](index_t n0, index_t n1) {
        for (index_t n = n0; n < n1; ++n) {
          const index_t v = static_cast<index_t>(ids(n));
          for (index_t d = 0; d < D; ++d) y(n, d) = table(v, d);
        }
      },
      std::max<index_t>(1, (index_t(1) << 14) / D));
  return {};
}

/// dtable (V, D) (+)= scatter of dy (N, D) by ids.
template <class I, class T>
[[nodiscard]] status embedding_backward(const cpu& ctx, in_view<I, 1> ids, in_view<T, 2> dy, host_view<T, 2> dtable,
                                        grad_options opt = {}) {
  constexpr const char* fn = "nn::embedding_backward";
  DISTILL_TRY(nn_detail::check_input(fn, "dtable", dtable));
  DISTILL_TRY(nn_detail::check_ids<I>(fn, ids, dtable.extent(0)));
  DISTILL_TRY(check_shape(fn, "dy", dy, {ids.extent(0), dtable.extent(1)}));
  DISTILL_TRY(nn_detail::check_not_null(fn, "dy", dy));
  const index_t N = ids.extent(0), V = dtable.extent(0), D = dtable.extent(1);
  parallel_for(
      ctx, D,
      [&](index_t d0, index_t d1) {
        if (!opt.accumulate_params)
          for (index_t v = 0; v < V; ++v)
            for (index_t d = d0; d < d1; ++d) dtable(v, d) = T(0);
        for (index_t n = 0; n < N; ++n) {
          const index_t v = static_cast<index_t>(ids(n));
          for (index_t d = d0; d < d1; ++d) dtable(v, d) += dy(n, d);
        }
      },
      std::max<index_t>(1, (index_t(1) << 14) / std::max<index_t>(1, N + V)));
  return {};
}

/// Embedding table "<name>.weight" (V, D), initialised N(0, 1) like torch.nn.Embedding.
template <class T, class Space = host_space>
class embedding {
 public:
  index_t vocab = 0, dim = 0;
  parameter<T, Space> weight;

  embedding() = default;
  embedding(const std::string& name, index_t v, index_t d, std::uint64_t seed = 0)
      : vocab(v), dim(d), weight(name + ".weight", {v, d}) {
    throw_if_error(assign(weight.value, draw_normal(v * d, 0.0, 1.0, stream_key(seed, name_hash(weight.name)))));
  }

  template <class Ctx, class I>
  [[nodiscard]] status forward(const Ctx& ctx, tensor_view<const I, 1, Space> ids, out_view<T, 2, Space> y) const {
    return embedding_forward<I, T>(ctx, ids, weight.value.template view<2>(), y);
  }
  /// Accumulates into weight.grad (when trainable).
  template <class Ctx, class I>
  [[nodiscard]] status backward(const Ctx& ctx, tensor_view<const I, 1, Space> ids, in_view<T, 2, Space> dy) {
    if (!weight.trainable) return {};
    return embedding_backward<I, T>(ctx, ids, dy, weight.grad.template view<2>(), layer_grad_options);
  }
  parameter_list<T, Space> parameters() { return {&weight}; }
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_embedding.cuh"
#endif
