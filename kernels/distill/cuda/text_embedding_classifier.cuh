// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA kernels of include/distill/features/text_embedding_classifier.hpp.
//!   factors   one warp per row: a = 1/||x|| (B2) of regions, classes and the background
//!   products  the shared tile layer (detail/tile_gemm.cuh): a 64 x 64 output tile per 256-thread
//!             block, 16-deep K slices staged in shared memory, 4 x 4 outputs per thread, FMA in
//!             the accumulator type (no tensor cores: these products are small next to the
//!             detector); the scaling by a_r, a_c, m_c / tau is applied when
//!             an operand is loaded or in the epilogue, so nothing normalised is materialised
//!               logits  z[N, C]  = e t^T            (k = D)
//!               E       [N, D]   = (G diag(m a_c / tau)) t
//!               E_t     [C, D]   = (diag(a_r / tau) G diag(m))^T e
//!   B2        one block per row: <x^, g> by a block sum, then the projected gradient
//!   CE        one block per row: online log-sum-exp, dL/dz written over the logits in place
//! All scratch lives in the caller's workspace (text_classifier_workspace_size).

#if !defined(__CUDACC__)
#error "distill/cuda/text_embedding_classifier.cuh must be compiled by nvcc"
#endif

#include <climits>

#include "distill/cuda/feature_stats.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/detail/tile_gemm.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/features/text_embedding_classifier.hpp"

namespace distill {
namespace features_cuda_detail {

namespace tile = cuda_detail::tile;

// ---------------------------------------------------------------------------------------------
// Products C[m, n] = sum_k a(m, k) b(k, n), epilogue epi(m, n, value), on the shared tile layer
// (detail/tile_gemm.cuh): 64 x 64 output tiles, 16-deep K slices, 8 warps of 8 x 64 outputs,
// 4 x 4 per thread, FMA in Acc. AKFast / BKFast: whether consecutive k are adjacent in memory for
// a / b (coalesced staging).
// ---------------------------------------------------------------------------------------------
using gemm_shape = tile::block_shape<64, 64, 16, 8, 1, 0>;
template <class Acc>
using gemm_warp_tile = tile::simt_warp_tile<Acc, 8, 64, 16, 16>;

template <bool AKFast, bool BKFast, class Acc, class AFn, class BFn, class Epi>
status launch_gemm_tile64(const char* fn, cudaStream_t st, index_t M, index_t N, index_t K, const AFn& a, const BFn& b,
                          const Epi& epi) {
  const index_t gy = (M + gemm_shape::BM - 1) / gemm_shape::BM, gx = (N + gemm_shape::BN - 1) / gemm_shape::BN;
  if (gy > 65535 || gx > INT_MAX) return fail(errc::shape_mismatch, fn, "product too large for one grid (more than 4M rows)");
  tile::tile_gemm_block_per_tile_kernel<gemm_shape, gemm_warp_tile<Acc>, !AKFast, !BKFast>
      <<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), gemm_shape::threads, 0, st>>>(M, N, K, a, b, epi);
  return cuda_detail::launch_status(fn, st);
}

/// a(m, k) = X[m, k]
template <class Acc, class T>
struct matrix_fn {
  cuda_view<const T, 2> x;
  __device__ DISTILL_FORCEINLINE Acc operator()(index_t i, index_t j) const { return load<Acc>(x(i, j)); }
};
/// b(k, n) = X[n, k]
template <class Acc, class T>
struct matrix_transposed_fn {
  cuda_view<const T, 2> x;
  __device__ DISTILL_FORCEINLINE Acc operator()(index_t k, index_t n) const { return load<Acc>(x(n, k)); }
};
/// a(r, c) = G[r, off + c] * col_scale[c]
template <class Acc>
struct grad_cols_scaled_fn {
  cuda_view<const Acc, 2> g;
  index_t off;
  const Acc* col_scale;
  __device__ DISTILL_FORCEINLINE Acc operator()(index_t r, index_t c) const { return g(r, off + c) * col_scale[c]; }
};
/// a(c, r) = G[r, off + c] * row_scale[r] * col_scale[c]
template <class Acc>
struct grad_transposed_scaled_fn {
  cuda_view<const Acc, 2> g;
  index_t off;
  const Acc* row_scale;
  const Acc* col_scale;
  __device__ DISTILL_FORCEINLINE Acc operator()(index_t c, index_t r) const {
    return g(r, off + c) * row_scale[r] * col_scale[c];
  }
};
/// logits epilogue: z[m, off + n] = m_n ? value * a_m * (a_n m_n / tau) : 0
template <class Acc>
struct logits_epilogue {
  cuda_view<Acc, 2> z;
  index_t off;
  const Acc* row_inv;
  const Acc* class_scale;
  const Acc* class_on;
  __device__ DISTILL_FORCEINLINE void operator()(index_t m, index_t n, Acc v) const {
    z(m, off + n) = class_on[n] != Acc(0) ? v * row_inv[m] * class_scale[n] : Acc(0);
  }
};
template <class Acc>
struct store_epilogue {
  Acc* out;
  index_t ld;
  __device__ DISTILL_FORCEINLINE void operator()(index_t m, index_t n, Acc v) const { out[m * ld + n] = v; }
};

// ---------------------------------------------------------------------------------------------
// Small kernels.
// ---------------------------------------------------------------------------------------------

/// One warp per row: inv[r] = a_r, proj[r] = 1 if the norm was not clamped / zeroed.
template <class Acc, class T>
__global__ void __launch_bounds__(256)
    text_classifier_l2_factor_warp_per_row_kernel(cuda_view<const T, 2> x, l2_normalization mode, Acc eps, Acc* inv, Acc* proj) {
  const index_t r = static_cast<index_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= x.extent(0)) return;  // whole warp leaves together
  Acc sq = Acc(0);
  for (index_t d = lane; d < x.extent(1); d += 32) {
    const Acc v = load<Acc>(x(r, d));
    sq += v * v;
  }
  sq = cuda_detail::warp_sum(sq);
  if (lane == 0) {
    const features_detail::l2_factor<Acc> f = features_detail::l2_normalize_factor(sq, mode, eps);
    inv[r] = f.inv;
    proj[r] = f.project ? Acc(1) : Acc(0);
  }
}

template <class Acc>
__global__ void text_classifier_class_scale_thread_per_element_kernel(const Acc* class_inv, cuda_view<const std::uint8_t, 1> mask,
                                                                      index_t C, Acc inv_tau, Acc* class_scale, Acc* class_on,
                                                                      Acc* class_on_over_tau) {
  const index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const bool on = mask.empty() || mask(c) != 0;
  class_scale[c] = on ? class_inv[c] * inv_tau : Acc(0);
  class_on[c] = on ? Acc(1) : Acc(0);
  class_on_over_tau[c] = on ? inv_tau : Acc(0);
}

/// row_scale[r] = a_r / tau
template <class Acc>
__global__ void text_classifier_scale_thread_per_element_kernel(const Acc* in, index_t n, Acc s, Acc* out) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] * s;
}

/// One warp per row: z[r, 0] = <e_r, w> a_r a_w / tau.
template <class Acc, class T>
__global__ void __launch_bounds__(256)
    text_classifier_background_logit_warp_per_row_kernel(cuda_view<const T, 2> e, cuda_view<const T, 1> w, const Acc* row_inv,
                                                         const Acc* bg_inv, Acc inv_tau, cuda_view<Acc, 2> z) {
  const index_t r = static_cast<index_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= e.extent(0)) return;
  Acc dot = Acc(0);
  for (index_t d = lane; d < e.extent(1); d += 32) dot += load<Acc>(e(r, d)) * load<Acc>(w(d));
  dot = cuda_detail::warp_sum(dot);
  if (lane == 0) z(r, 0) = dot * row_inv[r] * bg_inv[0] * inv_tau;
}

/// gw[d] = sum_r G[r, 0] row_scale[r] e[r, d]  (thread per d, rows in order: deterministic)
template <class Acc, class T>
__global__ void text_classifier_background_grad_column_kernel(cuda_view<const Acc, 2> g, cuda_view<const T, 2> e,
                                                              const Acc* row_scale, Acc* gw) {
  const index_t d = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= e.extent(1)) return;
  Acc s = Acc(0);
  for (index_t r = 0; r < e.extent(0); ++r) s += g(r, 0) * row_scale[r] * load<Acc>(e(r, d));
  gw[d] = s;
}

struct no_extra {
  __device__ DISTILL_FORCEINLINE float operator()(index_t, index_t) const { return 0.0f; }
};
/// The background's share of dL/de^: G[r, 0] a_w / tau * w[d].
template <class Acc, class T>
struct background_extra {
  cuda_view<const Acc, 2> g;
  cuda_view<const T, 1> w;
  const Acc* bg_inv;
  Acc inv_tau;
  __device__ DISTILL_FORCEINLINE Acc operator()(index_t r, index_t d) const {
    return g(r, 0) * bg_inv[0] * inv_tau * load<Acc>(w(d));
  }
};

/// One block per row: out = (pre - x^ <x^, pre>) a   (projection only where proj[r] = 1).
template <int BlockSize, class Acc, class TX, class TG, class Extra>
__global__ void __launch_bounds__(BlockSize)
    text_classifier_l2_backward_block_per_row_kernel(const Acc* pre, cuda_view<const TX, 2> x, const Acc* inv, const Acc* proj,
                                                     cuda_view<TG, 2> out, bool accumulate, Extra extra) {
  __shared__ Acc smem[BlockSize / 32];
  const index_t r = blockIdx.x, D = x.extent(1);
  const Acc a = inv[r];
  const Acc* pr = pre + r * D;
  Acc ug = Acc(0);
  if (proj[r] != Acc(0))
    for (index_t d = threadIdx.x; d < D; d += BlockSize)
      ug += load<Acc>(x(r, d)) * a * (pr[d] + static_cast<Acc>(extra(r, d)));
  ug = cuda_detail::block_sum<BlockSize>(ug, smem);
  for (index_t d = threadIdx.x; d < D; d += BlockSize) {
    const Acc g = (pr[d] + static_cast<Acc>(extra(r, d)) - load<Acc>(x(r, d)) * a * ug) * a;
    TG& o = out(r, d);
    o = store<TG>(accumulate ? load<Acc>(o) + g : g);
  }
}

/// 1 / divisor of the CE reduction.
template <int BlockSize, class Acc>
__global__ void __launch_bounds__(BlockSize)
    text_classifier_cross_entropy_weight_sum_single_block_kernel(label_view<cuda_space> labels, cuda_view<const Acc, 1> weights,
                                                                 std::int64_t ignore_index, reduction red, Acc* inv_div) {
  __shared__ Acc smem[BlockSize / 32];
  const index_t n = labels.extent(0);
  Acc s = Acc(0);
  for (index_t r = threadIdx.x; r < n; r += BlockSize)
    if (labels(r) != ignore_index) s += weights.empty() ? Acc(1) : weights(r);
  s = cuda_detail::block_sum<BlockSize>(s, smem);
  if (threadIdx.x == 0) inv_div[0] = safe_inverse(reduction_divisor(red, static_cast<Acc>(n), s));
}

/// One block per row: loss partial w (LSE - z_y) and dL/dz written over z.
template <int BlockSize, class Acc>
__global__ void __launch_bounds__(BlockSize)
    text_classifier_cross_entropy_block_per_row_kernel(cuda_view<Acc, 2> z, label_view<cuda_space> labels,
                                                       cuda_view<const Acc, 1> weights, std::int64_t ignore_index,
                                                       const Acc* inv_div, Acc grad_scale, Acc* partial) {
  __shared__ Acc smem[2 * (BlockSize / 32)];
  const index_t r = blockIdx.x, K = z.extent(1);
  const std::int64_t y = labels(r);
  const Acc w = y == ignore_index ? Acc(0) : (weights.empty() ? Acc(1) : weights(r));
  const bool in_range = y >= 0 && y < K;
  if (w == Acc(0) || !in_range) {  // ignored row, or a bad label: NaN loss, no gradient
    if (threadIdx.x == 0) partial[r] = w == Acc(0) ? Acc(0) : Acc(NAN);
    for (index_t k = threadIdx.x; k < K; k += BlockSize) z(r, k) = Acc(0);
    return;
  }
  const Acc zy = z(r, y);  // read before any thread overwrites the row
  lse_state<Acc> st;
  for (index_t k = threadIdx.x; k < K; k += BlockSize) st.add(z(r, k));
  st = cuda_detail::block_merge<BlockSize>(st, reinterpret_cast<lse_state<Acc>*>(smem));
  const Acc lse = st.value();
  if (threadIdx.x == 0) partial[r] = w * (lse - zy);
  const Acc k_scale = grad_scale * w * inv_div[0];
  for (index_t k = threadIdx.x; k < K; k += BlockSize) {
    const Acc p = exp_(z(r, k) - lse);
    z(r, k) = k_scale * (p - (k == y ? Acc(1) : Acc(0)));
  }
}

// ---------------------------------------------------------------------------------------------
// Workspace layout and the three stages.
// ---------------------------------------------------------------------------------------------
template <class Acc>
using classifier_ws = features_detail::classifier_scratch<Acc>;

/// The caller's workspace holds classifier_ws (size and memory space).
template <class Acc>
status check_classifier_workspace(const char* fn, cuda_view<std::byte, 1> workspace, index_t N, index_t C, index_t D) {
  return cuda_detail::check_device_workspace(fn, workspace, workspace_carver::size_of<classifier_ws<Acc>>(N, C, D),
                                             "text_classifier_workspace_size");
}

template <class T>
cuda_view<const T, 2> as_row_matrix(cuda_view<const T, 1> v) {
  const index_t ext[2] = {1, v.extent(0)};
  const index_t str[2] = {v.extent(0) * v.stride(0), v.stride(0)};
  return cuda_view<const T, 2>(v.data(), ext, str);
}

template <class Acc, class T>
status classifier_prepare_cuda(const char* fn, cudaStream_t st, cuda_view<const T, 2> regions, cuda_view<const T, 2> classes,
                               cuda_view<const T, 1> background, cuda_view<const std::uint8_t, 1> mask,
                               const classifier_ws<Acc>& w, const text_classifier_options& opt) {
  const index_t N = regions.extent(0), C = classes.extent(0);
  const Acc eps = static_cast<Acc>(opt.norm_eps), inv_tau = static_cast<Acc>(1.0 / opt.temperature);
  if (N > INT_MAX / 8 || C > INT_MAX / 8) return fail(errc::shape_mismatch, fn, "too many rows for one grid");
  text_classifier_l2_factor_warp_per_row_kernel<Acc>
      <<<static_cast<unsigned>((N + 7) / 8), 256, 0, st>>>(regions, opt.normalize, eps, w.row_inv, w.row_proj);
  text_classifier_l2_factor_warp_per_row_kernel<Acc>
      <<<static_cast<unsigned>((C + 7) / 8), 256, 0, st>>>(classes, opt.normalize, eps, w.class_inv, w.class_proj);
  if (!background.empty())
    text_classifier_l2_factor_warp_per_row_kernel<Acc>
        <<<1, 256, 0, st>>>(as_row_matrix(background), opt.normalize, eps, w.bg_inv, w.bg_proj);
  text_classifier_class_scale_thread_per_element_kernel<Acc><<<static_cast<unsigned>((C + 255) / 256), 256, 0, st>>>(
      w.class_inv, mask, C, inv_tau, w.class_scale, w.class_on, w.class_on_tau);
  text_classifier_scale_thread_per_element_kernel<Acc>
      <<<static_cast<unsigned>((N + 255) / 256), 256, 0, st>>>(w.row_inv, N, inv_tau, w.row_scale);
  return cuda_detail::launch_status(fn, st);
}

template <class Acc, class T>
status classifier_logits_cuda(const char* fn, cudaStream_t st, cuda_view<const T, 2> regions, cuda_view<const T, 2> classes,
                              cuda_view<const T, 1> background, cuda_view<Acc, 2> logits, const classifier_ws<Acc>& w,
                              const text_classifier_options& opt) {
  const index_t N = regions.extent(0), C = classes.extent(0), D = regions.extent(1);
  const index_t off = background.empty() ? 0 : 1;
  DISTILL_TRY((launch_gemm_tile64<true, true, Acc>(fn, st, N, C, D, matrix_fn<Acc, T>{regions},
                                                   matrix_transposed_fn<Acc, T>{classes},
                                                   logits_epilogue<Acc>{logits, off, w.row_inv, w.class_scale, w.class_on})));
  if (off) {
    text_classifier_background_logit_warp_per_row_kernel<Acc><<<static_cast<unsigned>((N + 7) / 8), 256, 0, st>>>(
        regions, background, w.row_inv, w.bg_inv, static_cast<Acc>(1.0 / opt.temperature), logits);
    DISTILL_TRY(cuda_detail::launch_status(fn, st));
  }
  return {};
}

template <class Acc, class T>
status classifier_backward_cuda(const char* fn, cudaStream_t st, cuda_view<const T, 2> regions, cuda_view<const T, 2> classes,
                                cuda_view<const T, 1> background, cuda_view<const Acc, 2> g, cuda_view<T, 2> grad_regions,
                                cuda_view<T, 1> grad_background, cuda_view<T, 2> grad_classes, const classifier_ws<Acc>& w,
                                const text_classifier_options& opt) {
  const index_t N = regions.extent(0), C = classes.extent(0), D = regions.extent(1);
  const index_t off = background.empty() ? 0 : 1;
  const Acc inv_tau = static_cast<Acc>(1.0 / opt.temperature);
  // regions: E = (G diag(m a_c / tau)) t, then B2 with the background term folded in
  DISTILL_TRY((launch_gemm_tile64<true, false, Acc>(fn, st, N, D, C, grad_cols_scaled_fn<Acc>{g, off, w.class_scale},
                                                    matrix_fn<Acc, T>{classes}, store_epilogue<Acc>{w.e_pre, D})));
  if (off)
    text_classifier_l2_backward_block_per_row_kernel<128>
        <<<static_cast<unsigned>(N), 128, 0, st>>>(static_cast<const Acc*>(w.e_pre), regions, w.row_inv, w.row_proj, grad_regions,
                                                   opt.accumulate, background_extra<Acc, T>{g, background, w.bg_inv, inv_tau});
  else
    text_classifier_l2_backward_block_per_row_kernel<128><<<static_cast<unsigned>(N), 128, 0, st>>>(
        static_cast<const Acc*>(w.e_pre), regions, w.row_inv, w.row_proj, grad_regions, opt.accumulate, no_extra{});
  DISTILL_TRY(cuda_detail::launch_status(fn, st));
  // background: g_w = sum_r G[r, 0] a_r / tau e_r, then B2
  if (off && !grad_background.empty()) {
    text_classifier_background_grad_column_kernel<Acc>
        <<<static_cast<unsigned>((D + 255) / 256), 256, 0, st>>>(g, regions, w.row_scale, w.w_pre);
    const index_t ext[2] = {1, D};
    const index_t str[2] = {D * grad_background.stride(0), grad_background.stride(0)};
    text_classifier_l2_backward_block_per_row_kernel<128>
        <<<1, 128, 0, st>>>(static_cast<const Acc*>(w.w_pre), as_row_matrix(background), w.bg_inv, w.bg_proj,
                            cuda_view<T, 2>(grad_background.data(), ext, str), opt.accumulate, no_extra{});
    DISTILL_TRY(cuda_detail::launch_status(fn, st));
  }
  // classes: E_t = (diag(a_r / tau) G diag(m))^T e, then B2
  if (!grad_classes.empty()) {
    DISTILL_TRY((launch_gemm_tile64<false, false, Acc>(fn, st, C, D, N,
                                                       grad_transposed_scaled_fn<Acc>{g, off, w.row_inv, w.class_on_tau},
                                                       matrix_fn<Acc, T>{regions}, store_epilogue<Acc>{w.t_pre, D})));
    text_classifier_l2_backward_block_per_row_kernel<128><<<static_cast<unsigned>(C), 128, 0, st>>>(
        static_cast<const Acc*>(w.t_pre), classes, w.class_inv, w.class_proj, grad_classes, opt.accumulate, no_extra{});
    DISTILL_TRY(cuda_detail::launch_status(fn, st));
  }
  return {};
}

template <class T>
status check_classifier_device_inputs(const char* fn, cuda_view<const T, 2> regions, cuda_view<const T, 2> classes,
                                      cuda_view<const T, 1> background, cuda_view<const std::uint8_t, 1> mask) {
  DISTILL_TRY(check_device_input(fn, "regions", regions));
  DISTILL_TRY(check_device_input(fn, "classes", classes));
  DISTILL_TRY(check_device_input(fn, "background", background));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "class_mask", mask));
  return {};
}

}  // namespace features_cuda_detail

/// CUDA overloads, the same arguments as on the CPU. `workspace`: text_classifier_workspace_size(ctx, N, C, D) bytes.
template <class T>
[[nodiscard]] status text_classifier_forward(const cuda& ctx, cuda_view<T, 2> regions,
                                             cuda_view<const std::remove_const_t<T>, 2> classes,
                                             cuda_view<const std::remove_const_t<T>, 1> background,
                                             cuda_view<const std::uint8_t, 1> class_mask, cuda_view<accum_t<T>, 2> logits,
                                             cuda_view<std::byte, 1> workspace, const text_classifier_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<T>();
  using U = std::remove_const_t<T>;
  using Acc = accum_t<T>;
  constexpr const char* fn = "text_classifier_forward";
  DISTILL_TRY(features_detail::check_classifier_options(fn, opt));
  index_t K = 0;
  DISTILL_TRY(features_detail::check_classifier_inputs(fn, regions, classes, background, class_mask, K));
  DISTILL_TRY(features_detail::check_output(fn, "logits", logits, {regions.extent(0), K}));
  DISTILL_TRY(features_cuda_detail::check_classifier_device_inputs<U>(fn, regions, classes, background, class_mask));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "logits", logits));
  DISTILL_TRY(features_cuda_detail::check_classifier_workspace<Acc>(fn, workspace, regions.extent(0), classes.extent(0),
                                                                    regions.extent(1)));
  workspace_carver carver(workspace.data());
  const features_cuda_detail::classifier_ws<Acc> w(carver, regions.extent(0), classes.extent(0), regions.extent(1));
  cudaStream_t st = cuda_detail::stream_of(ctx);
  DISTILL_TRY((features_cuda_detail::classifier_prepare_cuda<Acc, U>(fn, st, regions, classes, background, class_mask, w, opt)));
  return features_cuda_detail::classifier_logits_cuda<Acc, U>(fn, st, regions, classes, background, logits, w, opt);
}

template <class T>
[[nodiscard]] status text_classifier_backward(const cuda& ctx, cuda_view<T, 2> regions,
                                              cuda_view<const std::remove_const_t<T>, 2> classes,
                                              cuda_view<const std::remove_const_t<T>, 1> background,
                                              cuda_view<const std::uint8_t, 1> class_mask,
                                              cuda_view<const accum_t<T>, 2> grad_logits,
                                              cuda_view<std::remove_const_t<T>, 2> grad_regions,
                                              cuda_view<std::remove_const_t<T>, 1> grad_background,
                                              cuda_view<std::remove_const_t<T>, 2> grad_classes,
                                              cuda_view<std::byte, 1> workspace, const text_classifier_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<T>();
  using U = std::remove_const_t<T>;
  using Acc = accum_t<T>;
  constexpr const char* fn = "text_classifier_backward";
  DISTILL_TRY(features_detail::check_classifier_options(fn, opt));
  index_t K = 0;
  DISTILL_TRY(features_detail::check_classifier_inputs(fn, regions, classes, background, class_mask, K));
  DISTILL_TRY(features_detail::check_input(fn, "grad_logits", grad_logits));
  DISTILL_TRY(check_shape(fn, "grad_logits", grad_logits, {regions.extent(0), K}));
  DISTILL_TRY(features_detail::check_classifier_grads(fn, regions, classes, background, grad_regions, grad_background, grad_classes));
  DISTILL_TRY(features_cuda_detail::check_classifier_device_inputs<U>(fn, regions, classes, background, class_mask));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_logits", grad_logits));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_regions", grad_regions));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_background", grad_background));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_classes", grad_classes));
  DISTILL_TRY(features_cuda_detail::check_classifier_workspace<Acc>(fn, workspace, regions.extent(0), classes.extent(0),
                                                                    regions.extent(1)));
  workspace_carver carver(workspace.data());
  const features_cuda_detail::classifier_ws<Acc> w(carver, regions.extent(0), classes.extent(0), regions.extent(1));
  cudaStream_t st = cuda_detail::stream_of(ctx);
  DISTILL_TRY((features_cuda_detail::classifier_prepare_cuda<Acc, U>(fn, st, regions, classes, background, class_mask, w, opt)));
  return features_cuda_detail::classifier_backward_cuda<Acc, U>(fn, st, regions, classes, background, grad_logits,
                                                                grad_regions, grad_background, grad_classes, w, opt);
}

namespace features_cuda_detail {
template <class T>
status classifier_ce_cuda(const char* fn, const cuda& ctx, cuda_view<T, 2> regions, cuda_view<const std::remove_const_t<T>, 2> classes,
                          cuda_view<const std::remove_const_t<T>, 1> background, cuda_view<const std::uint8_t, 1> class_mask,
                          label_view<cuda_space> labels, cuda_view<const accum_t<T>, 1> row_weights,
                          cuda_view<accum_t<T>, 1> loss, cuda_view<std::remove_const_t<T>, 2> grad_regions,
                          cuda_view<std::remove_const_t<T>, 1> grad_background, cuda_view<std::remove_const_t<T>, 2> grad_classes,
                          cuda_view<accum_t<T>, 2> logits_scratch, cuda_view<std::byte, 1> workspace,
                          const text_classifier_options& opt, const text_classifier_cross_entropy_options& ce, bool backward) {
  static_check_cuda_type<T>();
  using U = std::remove_const_t<T>;
  using Acc = accum_t<T>;
  index_t K = 0;
  DISTILL_TRY(features_detail::check_classifier_ce_args(fn, regions, classes, background, class_mask, labels, row_weights, loss,
                                                        logits_scratch, grad_regions, grad_background, grad_classes, opt, ce,
                                                        backward, K));
  const index_t N = regions.extent(0);
  DISTILL_TRY(check_classifier_device_inputs<U>(fn, regions, classes, background, class_mask));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "labels", labels));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "row_weights", row_weights));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  DISTILL_TRY(check_device_input(fn, "logits_scratch", logits_scratch));
  DISTILL_TRY(check_device_input(fn, "grad_regions", grad_regions));
  DISTILL_TRY(check_device_input(fn, "grad_background", grad_background));
  DISTILL_TRY(check_device_input(fn, "grad_classes", grad_classes));
  if (N > INT_MAX) return fail(errc::shape_mismatch, fn, "more than 2^31 - 1 rows are not supported on CUDA");
  DISTILL_TRY(check_classifier_workspace<Acc>(fn, workspace, N, classes.extent(0), regions.extent(1)));
  workspace_carver carver(workspace.data());
  const classifier_ws<Acc> w(carver, N, classes.extent(0), regions.extent(1));
  cudaStream_t st = cuda_detail::stream_of(ctx);
  DISTILL_TRY((classifier_prepare_cuda<Acc, U>(fn, st, regions, classes, background, class_mask, w, opt)));
  DISTILL_TRY((classifier_logits_cuda<Acc, U>(fn, st, regions, classes, background, logits_scratch, w, opt)));
  text_classifier_cross_entropy_weight_sum_single_block_kernel<1024, Acc>
      <<<1, 1024, 0, st>>>(labels, row_weights, ce.ignore_index, ce.reduction, w.inv_div);
  text_classifier_cross_entropy_block_per_row_kernel<256, Acc><<<static_cast<unsigned>(N), 256, 0, st>>>(
      logits_scratch, labels, row_weights, ce.ignore_index, w.inv_div, static_cast<Acc>(ce.grad_scale), w.partial);
  DISTILL_TRY(cuda_detail::launch_status(fn, st));
  if (!loss.empty()) DISTILL_TRY(launch_sum_partials<Acc>(fn, ctx, w.partial, N, Acc(1), w.inv_div, loss.data()));
  if (!backward) return {};
  return classifier_backward_cuda<Acc, U>(fn, st, regions, classes, background, as_const(logits_scratch), grad_regions,
                                          grad_background, grad_classes, w, opt);
}
}  // namespace features_cuda_detail

template <class T>
[[nodiscard]] status text_classifier_cross_entropy_forward(
    const cuda& ctx, cuda_view<T, 2> regions, cuda_view<const std::remove_const_t<T>, 2> classes,
    cuda_view<const std::remove_const_t<T>, 1> background, cuda_view<const std::uint8_t, 1> class_mask,
    label_view<cuda_space> labels, cuda_view<const accum_t<T>, 1> row_weights, cuda_view<accum_t<T>, 1> loss,
    cuda_view<accum_t<T>, 2> logits_scratch, cuda_view<std::byte, 1> workspace,
    const text_classifier_cross_entropy_options& opt = {}) {
  constexpr const char* fn = "text_classifier_cross_entropy_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_cuda_detail::classifier_ce_cuda(fn, ctx, regions, classes, background, class_mask, labels, row_weights, loss,
                                                  {}, {}, {}, logits_scratch, workspace, opt, opt, false);
}

template <class T>
[[nodiscard]] status text_classifier_cross_entropy_forward_backward(
    const cuda& ctx, cuda_view<T, 2> regions, cuda_view<const std::remove_const_t<T>, 2> classes,
    cuda_view<const std::remove_const_t<T>, 1> background, cuda_view<const std::uint8_t, 1> class_mask,
    label_view<cuda_space> labels, cuda_view<const accum_t<T>, 1> row_weights, cuda_view<accum_t<T>, 1> loss,
    cuda_view<std::remove_const_t<T>, 2> grad_regions, cuda_view<std::remove_const_t<T>, 1> grad_background,
    cuda_view<std::remove_const_t<T>, 2> grad_classes, cuda_view<accum_t<T>, 2> logits_scratch,
    cuda_view<std::byte, 1> workspace, const text_classifier_cross_entropy_options& opt = {}) {
  constexpr const char* fn = "text_classifier_cross_entropy_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_regions", grad_regions));
  return features_cuda_detail::classifier_ce_cuda(fn, ctx, regions, classes, background, class_mask, labels, row_weights, loss,
                                                  grad_regions, grad_background, grad_classes, logits_scratch, workspace, opt,
                                                  opt, true);
}

}  // namespace distill
