// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA kernels of include/distill/features/embedding_alignment.hpp.
//!   1. (mean only) one block sums the row weights -> 1 / divisor in the workspace
//!   2. one block per row: norms (when normalising), the row loss and <u, g> by block sums, then
//!      the gradient; reads each row of s and t twice or three times (rows are small and stay in
//!      L1/L2), writes the gradient once
//!   3. one block sums the per-row partials in a fixed order (deterministic)

#if !defined(__CUDACC__)
#error "distill/cuda/embedding_alignment.cuh must be compiled by nvcc"
#endif

#include <climits>

#include "distill/cuda/feature_stats.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/features/embedding_alignment.hpp"

namespace distill {
namespace features_cuda_detail {

template <class Acc, class TS, class TT, class TG>
struct embedding_args {
  cuda_view<const TS, 2> s;
  cuda_view<const TT, 2> t;
  cuda_view<const Acc, 1> weights;
  cuda_view<const std::uint8_t, 1> mask;
  cuda_view<TG, 2> grad;        ///< may be absent
  Acc* partial;                 ///< [N] w_r * l_r for the reduced loss, may be null
  cuda_view<Acc, 1> loss_rows;  ///< reduction::none output, may be absent
  const Acc* inv_div_dev;       ///< 1 / sum of weights (mean), null otherwise
  Acc inv_div_host;
  Acc scale, grad_scale, eps;
  embedding_metric metric;
  l2_normalization norm;
  bool accumulate;
};

template <int BlockSize, class Acc>
__global__ void __launch_bounds__(BlockSize)
    embedding_alignment_row_weight_sum_single_block_kernel(cuda_view<const Acc, 1> weights, cuda_view<const std::uint8_t, 1> mask,
                                                           index_t n, Acc* inv_div) {
  __shared__ Acc smem[BlockSize / 32];
  Acc s = Acc(0);
  for (index_t r = threadIdx.x; r < n; r += BlockSize) s += features_detail::row_weight<Acc>(weights, mask, r);
  s = cuda_detail::block_sum<BlockSize>(s, smem);
  if (threadIdx.x == 0) inv_div[0] = safe_inverse(s);
}

template <int BlockSize, class Acc, class TS, class TT, class TG>
__global__ void __launch_bounds__(BlockSize) embedding_alignment_block_per_row_kernel(embedding_args<Acc, TS, TT, TG> a) {
  __shared__ Acc smem[BlockSize / 32];
  const index_t r = blockIdx.x, D = a.s.extent(1);
  const Acc w = features_detail::row_weight<Acc>(a.weights, a.mask, r);
  TG* gr = a.grad.empty() ? nullptr : a.grad.row(r);
  if (w == Acc(0)) {  // uniform per block: skipped rows are not read
    if (threadIdx.x == 0) {
      if (a.partial != nullptr) a.partial[r] = Acc(0);
      if (!a.loss_rows.empty()) a.loss_rows(r) = Acc(0);
    }
    if (gr != nullptr && !a.accumulate)
      for (index_t d = threadIdx.x; d < D; d += BlockSize) gr[d] = store<TG>(Acc(0));
    return;
  }
  const TS* sr = a.s.row(r);
  const TT* tr = a.t.row(r);
  features_detail::l2_factor<Acc> fs, ft;
  if (a.norm != l2_normalization::none) {
    Acc s2 = Acc(0), t2 = Acc(0);
    for (index_t d = threadIdx.x; d < D; d += BlockSize) {
      const Acc x = load<Acc>(sr[d]), y = load<Acc>(tr[d]);
      s2 += x * x;
      t2 += y * y;
    }
    s2 = cuda_detail::block_sum<BlockSize>(s2, smem);
    t2 = cuda_detail::block_sum<BlockSize>(t2, smem);
    fs = features_detail::l2_normalize_factor(s2, a.norm, a.eps);
    ft = features_detail::l2_normalize_factor(t2, a.norm, a.eps);
  }
  const Acc inv_dim = Acc(1) / static_cast<Acc>(D);
  Acc l = Acc(0), ug = Acc(0);
  for (index_t d = threadIdx.x; d < D; d += BlockSize) {
    const Acc u = load<Acc>(sr[d]) * fs.inv, v = load<Acc>(tr[d]) * ft.inv;
    const features_detail::elem_loss<Acc> e = features_detail::embedding_element(a.metric, u, v, inv_dim);
    l += e.loss;
    ug += u * e.grad;
  }
  l = cuda_detail::block_sum<BlockSize>(l, smem) + features_detail::embedding_row_constant<Acc>(a.metric);
  ug = cuda_detail::block_sum<BlockSize>(ug, smem);
  if (threadIdx.x == 0) {
    if (a.partial != nullptr) a.partial[r] = w * l;
    if (!a.loss_rows.empty()) a.loss_rows(r) = a.scale * w * l;
  }
  if (gr == nullptr) return;
  const Acc inv_div = a.inv_div_dev != nullptr ? a.inv_div_dev[0] : a.inv_div_host;
  const Acc k = a.grad_scale * a.scale * inv_div * w;
  const Acc proj = fs.project ? ug : Acc(0);
  for (index_t d = threadIdx.x; d < D; d += BlockSize) {
    const Acc u = load<Acc>(sr[d]) * fs.inv, v = load<Acc>(tr[d]) * ft.inv;
    const Acc g = k * (features_detail::embedding_element(a.metric, u, v, inv_dim).grad - u * proj) * fs.inv;
    gr[d] = store<TG>(a.accumulate ? load<Acc>(gr[d]) + g : g);
  }
}

template <class TS, class TT>
status embedding_alignment_cuda(const char* fn, const cuda& ctx, cuda_view<TS, 2> s, cuda_view<TT, 2> t,
                                cuda_view<const accum_t<TS>, 1> weights, cuda_view<const std::uint8_t, 1> mask,
                                cuda_view<accum_t<TS>, 1> loss, cuda_view<std::remove_const_t<TS>, 2> grad,
                                cuda_view<std::byte, 1> workspace, const embedding_alignment_options& opt) {
  static_check_cuda_type<TS>();
  static_check_cuda_type<TT>();
  using Acc = accum_t<TS>;
  DISTILL_TRY(features_detail::check_embedding_args(fn, s, t, weights, mask, loss, grad, opt));
  DISTILL_TRY(check_device_input(fn, "student", s));
  DISTILL_TRY(check_device_input(fn, "teacher", t));
  DISTILL_TRY(check_device_input(fn, "grad_student", grad));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_weights", weights));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_mask", mask));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  const index_t N = s.extent(0);
  if (N > INT_MAX) return fail(errc::shape_mismatch, fn, "more than 2^31 - 1 rows are not supported on CUDA");
  const bool reduced_loss = !loss.empty() && opt.reduction != reduction::none;
  const bool need_div = opt.reduction == reduction::mean;
  using scratch = features_detail::embedding_alignment_scratch<Acc>;
  Acc* divisor = nullptr;
  Acc* row_loss = nullptr;
  if (reduced_loss || need_div) {
    DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, workspace_carver::size_of<scratch>(N),
                                                    "embedding_alignment_workspace_size"));
    workspace_carver w(workspace.data());
    const scratch ws(w, N);
    divisor = ws.divisor;
    row_loss = ws.row_loss;
  }
  cudaStream_t st = cuda_detail::stream_of(ctx);
  if (need_div) {
    embedding_alignment_row_weight_sum_single_block_kernel<1024, Acc><<<1, 1024, 0, st>>>(weights, mask, N, divisor);
    DISTILL_TRY(cuda_detail::launch_status(fn, st));
  }
  const Acc inv_div_host = opt.reduction == reduction::batchmean ? Acc(1) / static_cast<Acc>(N) : Acc(1);
  using US = std::remove_const_t<TS>;
  using UT = std::remove_const_t<TT>;
  embedding_args<Acc, US, UT, US> a{s,
                                    t,
                                    weights,
                                    mask,
                                    grad,
                                    reduced_loss ? row_loss : nullptr,
                                    opt.reduction == reduction::none ? loss : cuda_view<Acc, 1>{},
                                    need_div ? divisor : nullptr,
                                    inv_div_host,
                                    static_cast<Acc>(opt.scale),
                                    static_cast<Acc>(opt.grad_scale),
                                    static_cast<Acc>(opt.norm_eps),
                                    opt.metric,
                                    features_detail::effective_normalization(opt),
                                    opt.accumulate};
  embedding_alignment_block_per_row_kernel<128><<<static_cast<unsigned>(N), 128, 0, st>>>(a);
  DISTILL_TRY(cuda_detail::launch_status(fn, st));
  if (reduced_loss)
    DISTILL_TRY(launch_sum_partials<Acc>(fn, ctx, row_loss, N, static_cast<Acc>(opt.scale) * inv_div_host,
                                         need_div ? divisor : nullptr, loss.data()));
  return {};
}

}  // namespace features_cuda_detail

/// CUDA overloads, the same arguments as the CPU ones. `workspace`:
/// embedding_alignment_workspace_size(ctx, N) bytes (may be absent with reduction::none, or when
/// neither a reduced loss nor reduction::mean is involved).
template <class TS, class TT>
[[nodiscard]] status embedding_alignment_forward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                                 cuda_view<const accum_t<TS>, 1> row_weights,
                                                 cuda_view<const std::uint8_t, 1> row_mask,
                                                 cuda_view<accum_t<TS>, 1> loss, cuda_view<std::byte, 1> workspace,
                                                 const embedding_alignment_options& opt = {}) {
  constexpr const char* fn = "embedding_alignment_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_cuda_detail::embedding_alignment_cuda(fn, ctx, student, teacher, row_weights, row_mask, loss, {},
                                                        workspace, opt);
}
template <class TS, class TT>
[[nodiscard]] status embedding_alignment_backward(const cuda& ctx, cuda_view<TS, 2> student, cuda_view<TT, 2> teacher,
                                                  cuda_view<const accum_t<TS>, 1> row_weights,
                                                  cuda_view<const std::uint8_t, 1> row_mask,
                                                  cuda_view<std::remove_const_t<TS>, 2> grad_student,
                                                  cuda_view<std::byte, 1> workspace,
                                                  const embedding_alignment_options& opt = {}) {
  constexpr const char* fn = "embedding_alignment_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::embedding_alignment_cuda(fn, ctx, student, teacher, row_weights, row_mask, {},
                                                        grad_student, workspace, opt);
}
template <class TS, class TT>
[[nodiscard]] status embedding_alignment_forward_backward(const cuda& ctx, cuda_view<TS, 2> student,
                                                          cuda_view<TT, 2> teacher,
                                                          cuda_view<const accum_t<TS>, 1> row_weights,
                                                          cuda_view<const std::uint8_t, 1> row_mask,
                                                          cuda_view<accum_t<TS>, 1> loss,
                                                          cuda_view<std::remove_const_t<TS>, 2> grad_student,
                                                          cuda_view<std::byte, 1> workspace,
                                                          const embedding_alignment_options& opt = {}) {
  constexpr const char* fn = "embedding_alignment_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::embedding_alignment_cuda(fn, ctx, student, teacher, row_weights, row_mask, loss,
                                                        grad_student, workspace, opt);
}

}  // namespace distill
