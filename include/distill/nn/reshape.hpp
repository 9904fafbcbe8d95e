// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Flatten and layout helpers.
//!
//! Flatten / reshape cost nothing: an `nn::tensor` hands out views of any rank over the same
//! memory (`t.view<2>()` of a (B, C, H, W) tensor is (B, C*H*W)), and `distill::reshape<R>(view,
//! extents)` re-shapes any contiguous view. The backward of a reshape is the same reshape of the
//! gradient.
//!
//! Feature maps to object tokens (Relation Networks: the 5x5 cells of a CNN map are the objects):
//!   nchw_to_tokens:  x (B, C, S) -> y (B, S, C),  y[b, s, c] = x[b, c, s]      (S = H * W)
//!   tokens_to_nchw:  y (B, S, C) -> x (B, C, S)   (the inverse, and the backward of nchw_to_tokens;
//!                    nchw_to_tokens is likewise the backward of tokens_to_nchw)
//! Both are batched transposes: CPU in 32x32 blocks, CUDA through a shared-memory tile.

#include "distill/nn/common.hpp"

namespace distill::nn {

namespace nn_detail {
template <class X, class Y>
status batched_transpose(const cpu& ctx, const char* fn, const X& x, const Y& y, bool accumulate) {
  DISTILL_TRY(check_input(fn, "x", x));
  DISTILL_TRY(check_shape(fn, "y", y, {x.extent(0), x.extent(2), x.extent(1)}));
  DISTILL_TRY(check_strides(fn, "y", y));
  const index_t B = x.extent(0), R = x.extent(1), S = x.extent(2);
  constexpr index_t tile = 32;
  const index_t tr = (R + tile - 1) / tile, ts = (S + tile - 1) / tile;
  parallel_for(
      ctx, B * tr * ts,
      [&](index_t t0, index_t t1) {
        for (index_t t = t0; t < t1; ++t) {
          const index_t b = t / (tr * ts), rem = t % (tr * ts), r0 = (rem / ts) * tile, s0 = (rem % ts) * tile;
          for (index_t r = r0; r < std::min(R, r0 + tile); ++r)
            for (index_t s = s0; s < std::min(S, s0 + tile); ++s) y(b, s, r) = accumulate ? y(b, s, r) + x(b, r, s) : x(b, r, s);
        }
      },
      std::max<index_t>(1, 64 / std::max<index_t>(1, B)));
  return {};
}
}  // namespace nn_detail

/// y (B, S, C) = x (B, C, S) transposed per batch (y += with accumulate).
template <class T>
[[nodiscard]] status nchw_to_tokens(const cpu& ctx, in_view<T, 3> x, host_view<T, 3> y, bool accumulate = false) {
  return nn_detail::batched_transpose(ctx, "nn::nchw_to_tokens", x, y, accumulate);
}

/// x (B, C, S) = y (B, S, C) transposed per batch (x += with accumulate).
template <class T>
[[nodiscard]] status tokens_to_nchw(const cpu& ctx, in_view<T, 3> y, host_view<T, 3> x, bool accumulate = false) {
  return nn_detail::batched_transpose(ctx, "nn::tokens_to_nchw", y, x, accumulate);
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_reshape.cuh"
#endif
