// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Inverted dropout (Srivastava et al. 2014), seeded and reproducible.
//!
//!   training:   m[i] = [u(i) >= p],  y[i] = m[i] x[i] / (1 - p),   dx[i] = m[i] dy[i] / (1 - p)
//!   evaluation: y = x, dx = dy
//! with i = offset + r * cols + c the element's logical index and u(i) = random_u24(key, i) / 2^24
//! the counter-based uniform of nn/random.hpp, key = stream_key(seed, 0x64726f70). The mask is
//! never stored: backward regenerates it from (seed, offset), and the comparison is on integers
//! (u24 >= round(p * 2^24)), so CPU and CUDA drop exactly the same elements. p = 1 drops all.
//!
//! The `nn::dropout` layer advances `offset` by the element count after every training-mode
//! forward, so consecutive steps draw fresh masks, and its backward uses the offset of the last
//! forward. Saving `offset` in a checkpoint (the layer exposes it) resumes the same sequence.
//! Data-parallel (nn/replica.hpp): a replica holding rows [first_row, first_row + n) of a global
//! batch draws the masks of those global rows (offset + first_row * cols) and advances `offset`
//! by the global batch's element count, so the replicas together drop what one process would.

#include <cmath>
#include <cstdint>

#include "distill/nn/common.hpp"
#include "distill/nn/random.hpp"
#include "distill/nn/replica.hpp"

namespace distill::nn {

struct dropout_params {
  double p = 0.5;            ///< drop probability in [0, 1]
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;  ///< counter of the first element
  bool training = true;      ///< false: identity
};

/// Mask rule shared by the CPU loops and the kernels.
struct dropout_mask {
  std::uint64_t key;
  std::uint32_t threshold;  // keep iff u24 >= threshold
  DISTILL_HOST_DEVICE bool keep(std::uint64_t i) const noexcept { return random_u24(key, i) >= threshold; }
  static dropout_mask of(const dropout_params& d) noexcept {
    const double t = std::nearbyint(d.p * 16777216.0);
    return {stream_key(d.seed, 0x64726f70ull), static_cast<std::uint32_t>(t < 0 ? 0 : (t > 16777216.0 ? 16777216.0 : t))};
  }
};

namespace nn_detail {
inline status check_dropout(const char* fn, const dropout_params& d) {
  return check_in_range(fn, "p", d.p, 0.0, 1.0);
}
template <class Acc>
Acc dropout_scale(double p) {
  return p < 1.0 ? static_cast<Acc>(1.0 / (1.0 - p)) : Acc(0);
}
}  // namespace nn_detail

/// y = dropout(x). y may alias x.
template <class T>
[[nodiscard]] status dropout_forward(const cpu& ctx, in_view<T, 2> x, host_view<T, 2> y, const dropout_params& d) {
  constexpr const char* fn = "nn::dropout_forward";
  DISTILL_TRY(nn_detail::check_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
  DISTILL_TRY(check_strides(fn, "y", y));
  DISTILL_TRY(nn_detail::check_dropout(fn, d));
  const index_t cols = x.extent(1);
  if (!d.training || d.p == 0) {
    nn_detail::map_rows<T>(ctx, x, y, [&](index_t r, index_t c) { return x(r, c); });
    return {};
  }
  const auto m = dropout_mask::of(d);
  const T scale = nn_detail::dropout_scale<T>(d.p);
  nn_detail::map_rows<T>(ctx, x, y, [&](index_t r, index_t c) {
    return m.keep(d.offset + static_cast<std::uint64_t>(r * cols + c)) ? x(r, c) * scale : T(0);
  });
  return {};
}

/// dx = dropout'(dy) with the mask of the forward that used the same params.
template <class T>
[[nodiscard]] status dropout_backward(const cpu& ctx, in_view<T, 2> dy, host_view<T, 2> dx, const dropout_params& d,
                                      grad_options opt = {}) {
  constexpr const char* fn = "nn::dropout_backward";
  DISTILL_TRY(nn_detail::check_input(fn, "dy", dy));
  DISTILL_TRY(check_same_shape(fn, "dx", dx, "dy", dy));
  DISTILL_TRY(check_strides(fn, "dx", dx));
  DISTILL_TRY(nn_detail::check_dropout(fn, d));
  const index_t cols = dy.extent(1);
  const bool identity = !d.training || d.p == 0;
  const auto m = dropout_mask::of(d);
  const T scale = nn_detail::dropout_scale<T>(d.p);
  nn_detail::map_rows<T>(ctx, dy, dx, [&](index_t r, index_t c) {
    const T g = identity ? dy(r, c) : (m.keep(d.offset + static_cast<std::uint64_t>(r * cols + c)) ? dy(r, c) * scale : T(0));
    return opt.accumulate_input ? dx(r, c) + g : g;
  });
  return {};
}

/// Dropout layer: p, seed, and the running element offset (see the file comment).
template <class T, class Space = host_space>
class dropout {
 public:
  double p = 0.5;
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;  ///< counter of the next training forward
  bool training = true;
  index_t first_row = 0, global_rows = 0;  ///< data-parallel share (nn/replica.hpp); 0: the batch is global

  dropout() = default;
  explicit dropout(double p_, std::uint64_t seed_ = 0) : p(p_), seed(seed_) {}

  void set_replica(const replica& r) noexcept { first_row = r.first_row, global_rows = r.global_rows; }

  template <class Ctx>
  [[nodiscard]] status forward(const Ctx& ctx, in_view<T, 2, Space> x, out_view<T, 2, Space> y) {
    const index_t rows = x.extent(0), cols = x.extent(1);
    if (training && global_rows > 0 && (first_row < 0 || first_row + rows > global_rows))
      return fail(errc::shape_mismatch, "nn::dropout", "this replica's rows [" + std::to_string(first_row) + ", " +
                                                          std::to_string(first_row + rows) + ") do not lie in the global batch of " +
                                                          std::to_string(global_rows) + " rows");
    last_ = {p, seed, offset + static_cast<std::uint64_t>(training && global_rows > 0 ? first_row * cols : 0), training};
    DISTILL_TRY(dropout_forward(ctx, x, y, last_));
    if (training) offset += static_cast<std::uint64_t>((global_rows > 0 ? global_rows : rows) * cols);
    return {};
  }
  template <class Ctx>
  [[nodiscard]] status backward(const Ctx& ctx, in_view<T, 2, Space> dy, out_view<T, 2, Space> dx) const {
    return dropout_backward(ctx, dy, dx, last_);
  }
  parameter_list<T, Space> parameters() { return {}; }

 private:
  dropout_params last_{};
};

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_dropout.cuh"
#endif
