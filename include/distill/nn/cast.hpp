// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Element-type conversion between views: float <-> double <-> float16 / bfloat16 storage
//! (round to nearest even, NaN and inf kept; core/dtype.hpp). Use it to keep large tensors in
//! 16-bit storage where that helps, e.g. a frozen teacher's logits or feature maps handed to the
//! soft-target or feature losses (which read bf16/half inputs and accumulate in float), or to
//! snapshot activations for a later distillation pass at half the memory.
//!
//!   nn::cast(ctx, logits_f32, logits_bf16);     // (N, C) float -> (N, C) bfloat16
//!
//! Views are (rows, cols); tensors of any rank pass as view<2>(). CPU: any strides; CUDA: unit
//! inner stride, one grid-stride kernel (reads and writes each element once). On CUDA the 16-bit
//! types may be distill::float16 / bfloat16 or __half / __nv_bfloat16.

#include "distill/core/dtype.hpp"
#include "distill/nn/common.hpp"

namespace distill::nn {

/// out[r, c] = convert(in[r, c]).
template <class TI, class TO>
[[nodiscard]] status cast(const cpu& ctx, host_view<TI, 2> in, host_view<TO, 2> out) {
  static_assert(is_supported_float_v<TI> && is_supported_float_v<TO> && !std::is_const_v<TO>, "nn::cast: float types only");
  constexpr const char* fn = "nn::cast";
  DISTILL_TRY(nn_detail::check_input(fn, "in", in));
  DISTILL_TRY(check_same_shape(fn, "out", out, "in", in));
  DISTILL_TRY(nn_detail::check_not_null(fn, "out", out));
  DISTILL_TRY(check_strides(fn, "out", out));
  using Acc = std::conditional_t<std::is_same_v<std::remove_cv_t<TI>, double> && std::is_same_v<TO, double>, double, float>;
  const index_t cols = in.extent(1);
  parallel_for(
      ctx, in.extent(0),
      [&](index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r)
          for (index_t c = 0; c < cols; ++c) out(r, c) = store<TO>(load<Acc>(in(r, c)));
      },
      std::max<index_t>(1, (index_t(1) << 15) / cols));
  return {};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_cast.cuh"
#endif
