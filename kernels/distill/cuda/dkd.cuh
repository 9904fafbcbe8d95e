// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! DKD: the CUDA overloads (`distill::cuda` context, device views). The mathematics and the
//! policy live in include/distill/losses/dkd.hpp; the kernels (one block per row, row held in
//! registers up to 8192 classes, streamed with an L2 re-read beyond) in soft_target_dense.cuh.
//! Asynchronous on ctx.stream; no host synchronisation, no allocation. A reduced loss or
//! dL/dT needs `extras.workspace` (soft_target_workspace_bytes(N) bytes). Labels in device
//! memory cannot be checked from the host: an out-of-range label makes its row NaN.

#if !defined(__CUDACC__)
#error "distill/cuda/dkd.cuh must be compiled by nvcc"
#endif

#include <type_traits>

#include "distill/cuda/soft_target_dense.cuh"
#include "distill/losses/dkd.hpp"

namespace distill {

/// Loss only: `loss` (1) on the device, or (N) with reduction none.
template <class TS, class TT>
[[nodiscard]] status dkd_forward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                   cuda_view<accum_t<TS>, 1> loss, const dkd_options& opt = {},
                                   const soft_target_cuda_extras<accum_t<TS>>& extra = {}) {
  using P = soft_target_detail::dkd_policy<float>;
  return soft_target_cuda::dense_cuda_entry<P>("dkd_forward", ctx, student, teacher, loss, true,
                                               cuda_view<std::remove_const_t<TS>, 2>{}, false, opt, P::make_params(opt), extra);
}

/// Gradient with respect to the student logits (and dL/dT when requested).
template <class TS, class TT>
[[nodiscard]] status dkd_backward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                    cuda_view<std::remove_const_t<TS>, 2> grad_student, const dkd_options& opt = {},
                                    const soft_target_cuda_extras<accum_t<TS>>& extra = {}) {
  using P = soft_target_detail::dkd_policy<float>;
  return soft_target_cuda::dense_cuda_entry<P>("dkd_backward", ctx, student, teacher, cuda_view<float, 1>{}, false,
                                               grad_student, true, opt, P::make_params(opt), extra);
}

/// Loss and gradient in one launch (`loss` may be absent).
template <class TS, class TT>
[[nodiscard]] status dkd_forward_backward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                            cuda_view<accum_t<TS>, 1> loss,
                                            cuda_view<std::remove_const_t<TS>, 2> grad_student,
                                            const dkd_options& opt = {},
                                            const soft_target_cuda_extras<accum_t<TS>>& extra = {}) {
  using P = soft_target_detail::dkd_policy<float>;
  return soft_target_cuda::dense_cuda_entry<P>("dkd_forward_backward", ctx, student, teacher, loss, false,
                                               grad_student, true, opt, P::make_params(opt), extra);
}

}  // namespace distill
