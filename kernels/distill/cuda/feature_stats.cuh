// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA kernels of include/distill/features/feature_stats.hpp (and the channel-statistics
//! machinery reused by adain.hpp): Welford partials merged with Chan's formula across the warp
//! and the block, one block per channel for [B, C, H, W], a 32-feature x 8-token tile per block
//! for [B, L, D]. Per-channel loss values go to a caller workspace and are summed by one block
//! in a fixed order (deterministic, no atomics, no host synchronisation).

#if !defined(__CUDACC__)
#error "distill/cuda/feature_stats.cuh must be compiled by nvcc"
#endif

#include <climits>
#include <cstddef>

#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"
#include "distill/features/feature_stats.hpp"

namespace distill {
namespace features_cuda_detail {

using features_detail::channel_grad_coef;
using features_detail::channel_term_result;
using features_detail::pivoted_moments;
using features_detail::welford_state;

template <class T>
constexpr void static_check_cuda_type() {
  static_assert(is_supported_float_v<T>, "distill features: CUDA paths take float, double, float16/__half or bfloat16/__nv_bfloat16");
}

// ---------------------------------------------------------------------------------------------
// Welford merges across the block (detail/reduce.cuh; Chan's merge is not symmetric, so every
// lane and warp ends with the same bits by construction there).
// ---------------------------------------------------------------------------------------------
/// Merge over a 1-D block; every thread gets the same result. `smem`: BlockSize / 32 states.
template <int BlockSize, class Acc>
__device__ DISTILL_FORCEINLINE welford_state<Acc> block_welford(welford_state<Acc> st, welford_state<Acc>* smem) {
  return cuda_detail::block_all_reduce<BlockSize>(st, cuda_detail::state_merge_op{}, welford_state<Acc>{}, smem);
}

/// Two independent merges in one exchange (2 barriers instead of 4).
template <class Acc>
struct welford_pair {
  welford_state<Acc> a, b;
  __device__ DISTILL_FORCEINLINE void merge(const welford_pair& o) {
    a.merge(o.a);
    b.merge(o.b);
  }
};
template <int BlockSize, class Acc>
__device__ DISTILL_FORCEINLINE void block_welford_pair(welford_state<Acc>& a, welford_state<Acc>& b, welford_pair<Acc>* smem) {
  const welford_pair<Acc> r =
      cuda_detail::block_all_reduce<BlockSize>(welford_pair<Acc>{a, b}, cuda_detail::state_merge_op{}, welford_pair<Acc>{}, smem);
  a = r.a;
  b = r.b;
}

/// Shared scratch of the block merges above (one pair per warp), reusable for any smaller value.
template <int BlockSize, class Acc>
struct welford_smem {
  cuda_detail::shared_array<welford_pair<Acc>, BlockSize / 32> pairs;
  __device__ DISTILL_FORCEINLINE welford_pair<Acc>* pair() { return pairs.data(); }
  __device__ DISTILL_FORCEINLINE welford_state<Acc>* single() { return as<welford_state<Acc>>(); }
  template <class T>
  __device__ DISTILL_FORCEINLINE T* as() {
    static_assert(sizeof(T) <= sizeof(welford_pair<Acc>) && alignof(T) <= alignof(welford_pair<Acc>), "too large for the scratch");
    return reinterpret_cast<T*>(pairs.data());
  }
};

/// Offset of element i (row-major over H x W) of a plane with unit stride along W.
__device__ DISTILL_FORCEINLINE index_t plane_offset(int i, int W, index_t row_stride, bool contiguous) {
  return contiguous ? static_cast<index_t>(i) : static_cast<index_t>(i / W) * row_stride + (i % W);
}

// ---------------------------------------------------------------------------------------------
// [B, C, H, W]: one block per channel (b, c).
// ---------------------------------------------------------------------------------------------
template <class Acc, class TS, class TT, class TG>
struct channel_pass_args {
  cuda_view<const TS, 4> s;   ///< student (or the only input)
  cuda_view<const TT, 4> t;   ///< teacher, may be absent
  cuda_view<TG, 4> grad;      ///< student gradient, may be absent
  Acc* partial_loss;          ///< [B*C] per-channel loss values, may be null
  cuda_view<Acc, 2> mean_out; ///< [B, C], may be absent
  cuda_view<Acc, 2> std_out;  ///< [B, C], may be absent
  Acc eps;
  bool unbiased;
  Acc grad_scale;
  bool accumulate;
  bool s_contig, t_contig, g_contig;  ///< plane is one contiguous span (row stride == W)
};

template <class V>
bool plane_contiguous(const V& v) {
  return v.empty() || v.extent(2) == 1 || v.stride(2) == v.extent(3);
}

/// This thread's statistics of x - pivot over a plane (pivot = the plane's first element, so a
/// constant plane gives exactly zero): registers (Items > 0: element tid + k*BlockSize kept
/// shifted in vals[k], exact two-pass inside the thread) or streaming Welford (Items == 0).
/// The block merge follows separately, so several planes' loads are in flight at once.
template <int BlockSize, int Items, class Acc, class T>
__device__ DISTILL_FORCEINLINE pivoted_moments<Acc> thread_plane_stats(const T* base, int n, int W, index_t row_stride,
                                                                       bool contig, Acc* vals) {
  welford_state<Acc> st;
  const Acc pivot = load<Acc>(base[0]);  // same address for every thread: one broadcast load
  if constexpr (Items > 0) {
    Acc sum = Acc(0), cnt = Acc(0);
#pragma unroll
    for (int k = 0; k < Items; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * BlockSize;
      vals[k] = Acc(0);
      if (i < n) {
        vals[k] = load<Acc>(base[plane_offset(i, W, row_stride, contig)]) - pivot;
        sum += vals[k];
        cnt += Acc(1);
      }
    }
    if (cnt > Acc(0)) {
      const Acc mu = sum / cnt;
      Acc m2 = Acc(0);
#pragma unroll
      for (int k = 0; k < Items; ++k) {
        const int i = static_cast<int>(threadIdx.x) + k * BlockSize;
        if (i < n) {
          const Acc d = vals[k] - mu;
          m2 += d * d;
        }
      }
      st.n = cnt;
      st.mean = mu;
      st.m2 = m2;
    }
  } else {
    (void)vals;
    for (int i = static_cast<int>(threadIdx.x); i < n; i += BlockSize)
      st.add(load<Acc>(base[plane_offset(i, W, row_stride, contig)]) - pivot);
  }
  pivoted_moments<Acc> m;
  m.shifted = st;
  m.pivot = pivot;
  return m;
}

template <int BlockSize, int Items, class Acc, class TS, class TT, class TG, class Term>
__global__ void __launch_bounds__(BlockSize)
    feature_stats_channel_block_per_channel_kernel(channel_pass_args<Acc, TS, TT, TG> a, Term term) {
  __shared__ welford_smem<BlockSize, Acc> smem;
  const index_t p = blockIdx.x;
  const index_t C = a.s.extent(1);
  const index_t b = p / C, c = p % C;
  constexpr int R = Items > 0 ? Items : 1;
  Acc xs[R];
  const int ns = static_cast<int>(a.s.extent(2) * a.s.extent(3)), ws_w = static_cast<int>(a.s.extent(3));
  const TS* sp = a.s.data() + b * a.s.stride(0) + c * a.s.stride(1);
  // Both planes are loaded before the first barrier, then merged in one exchange.
  pivoted_moments<Acc> ms = thread_plane_stats<BlockSize, Items, Acc>(sp, ns, ws_w, a.s.stride(2), a.s_contig, xs);
  welford_state<Acc> wt;
  if (!a.t.empty()) {
    Acc xt[R];
    const int nt = static_cast<int>(a.t.extent(2) * a.t.extent(3)), wt_w = static_cast<int>(a.t.extent(3));
    const TT* tp = a.t.data() + b * a.t.stride(0) + c * a.t.stride(1);
    pivoted_moments<Acc> mt = thread_plane_stats<BlockSize, Items, Acc>(tp, nt, wt_w, a.t.stride(2), a.t_contig, xt);
    block_welford_pair<BlockSize>(ms.shifted, mt.shifted, smem.pair());
    wt = mt.absolute();
  } else {
    ms.shifted = block_welford<BlockSize>(ms.shifted, smem.single());
  }
  const welford_state<Acc> ws = ms.absolute();
  const channel_term_result<Acc> r = term(p, ws, wt);
  if (threadIdx.x == 0) {
    if (a.partial_loss != nullptr) a.partial_loss[p] = r.loss;
    if (!a.mean_out.empty()) a.mean_out(b, c) = ws.mean;
    if (!a.std_out.empty()) a.std_out(b, c) = sqrt(features_detail::variance_of(ws, a.unbiased) + a.eps);
  }
  if (a.grad.empty()) return;
  channel_grad_coef<Acc> coef = features_detail::grad_coef(ms, r, a.unbiased, a.grad_scale);
  TG* gp = a.grad.data() + b * a.grad.stride(0) + c * a.grad.stride(1);
  const index_t gsh = a.grad.stride(2);
  if constexpr (Items > 0) {
    coef.pivot = Acc(0);  // xs already holds x - pivot
#pragma unroll
    for (int k = 0; k < Items; ++k) {
      const int i = static_cast<int>(threadIdx.x) + k * BlockSize;
      if (i < ns) {
        const index_t off = plane_offset(i, ws_w, gsh, a.g_contig);
        const Acc v = coef.at(xs[k]);
        gp[off] = store<TG>(a.accumulate ? load<Acc>(gp[off]) + v : v);
      }
    }
  } else {
    for (int i = static_cast<int>(threadIdx.x); i < ns; i += BlockSize) {
      const index_t off = plane_offset(i, ws_w, gsh, a.g_contig);
      const Acc v = coef.at(load<Acc>(sp[plane_offset(i, ws_w, a.s.stride(2), a.s_contig)]));
      gp[off] = store<TG>(a.accumulate ? load<Acc>(gp[off]) + v : v);
    }
  }
}

/// Picks the register-resident variant that holds the larger plane (up to 4096 elements), or
/// the streaming one beyond.
template <class Acc, class TS, class TT, class TG, class Term>
status launch_channel_pass(const char* fn, const cuda& ctx, const channel_pass_args<Acc, TS, TT, TG>& a, const Term& term) {
  const index_t planes = a.s.extent(0) * a.s.extent(1);
  index_t n = a.s.extent(2) * a.s.extent(3);
  if (!a.t.empty()) n = n > a.t.extent(2) * a.t.extent(3) ? n : a.t.extent(2) * a.t.extent(3);
  if (planes > INT_MAX || n > INT_MAX)
    return fail(errc::shape_mismatch, fn, "more than 2^31 - 1 channels or positions per channel are not supported on CUDA");
  const unsigned grid = static_cast<unsigned>(planes);
  cudaStream_t st = cuda_detail::stream_of(ctx);
  if (n <= 64) feature_stats_channel_block_per_channel_kernel<64, 1><<<grid, 64, 0, st>>>(a, term);
  else if (n <= 256) feature_stats_channel_block_per_channel_kernel<256, 1><<<grid, 256, 0, st>>>(a, term);
  else if (n <= 1024) feature_stats_channel_block_per_channel_kernel<256, 4><<<grid, 256, 0, st>>>(a, term);
  else if (n <= 4096) feature_stats_channel_block_per_channel_kernel<256, 16><<<grid, 256, 0, st>>>(a, term);
  else feature_stats_channel_block_per_channel_kernel<256, 0><<<grid, 256, 0, st>>>(a, term);
  return cuda_detail::launch_status(fn, st);
}

// ---------------------------------------------------------------------------------------------
// [B, L, D]: a block of 32 features x 8 token lanes; thread (tx, ty) sees tokens ty, ty+8, ...
// of feature d = tile*32 + tx (coalesced along D), partials merged down the 8 lanes in order.
// ---------------------------------------------------------------------------------------------
constexpr int token_tile_d = 32;
constexpr int token_tile_l = 8;

template <class Acc, class TS, class TT, class TG>
struct token_pass_args {
  cuda_view<const TS, 3> s;
  cuda_view<const std::uint8_t, 2> smask;
  cuda_view<const TT, 3> t;
  cuda_view<const std::uint8_t, 2> tmask;
  cuda_view<TG, 3> grad;
  Acc* partial_loss;
  cuda_view<Acc, 2> mean_out, std_out;
  Acc eps;
  bool unbiased;
  Acc grad_scale;
  bool accumulate;
};

template <class Acc>
__device__ DISTILL_FORCEINLINE welford_state<Acc> column_welford(welford_state<Acc> st, Acc (*sm)[token_tile_l][token_tile_d]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  sm[0][ty][tx] = st.n;
  sm[1][ty][tx] = st.mean;
  sm[2][ty][tx] = st.m2;
  __syncthreads();
  if (ty == 0) {
    for (int k = 1; k < token_tile_l; ++k) {
      welford_state<Acc> o;
      o.n = sm[0][k][tx];
      o.mean = sm[1][k][tx];
      o.m2 = sm[2][k][tx];
      st.merge(o);
    }
    sm[0][0][tx] = st.n;
    sm[1][0][tx] = st.mean;
    sm[2][0][tx] = st.m2;
  }
  __syncthreads();
  welford_state<Acc> r;
  r.n = sm[0][0][tx];
  r.mean = sm[1][0][tx];
  r.m2 = sm[2][0][tx];
  __syncthreads();
  return r;
}

/// Value of feature d at the first valid token of sample b (0 when none is valid).
template <class Acc, class XV, class MV>
__device__ DISTILL_FORCEINLINE Acc first_valid_value(const XV& x, const MV& mask, index_t b, index_t d) {
  for (index_t l = 0; l < x.extent(1); ++l)
    if (mask.empty() || mask(b, l) != 0) return load<Acc>(x(b, l, d));
  return Acc(0);
}

template <class Acc, class TS, class TT, class TG, class Term>
__global__ void __launch_bounds__(token_tile_d* token_tile_l)
    feature_stats_token_feature_tile_kernel(token_pass_args<Acc, TS, TT, TG> a, Term term) {
  __shared__ Acc sm[3][token_tile_l][token_tile_d];
  const index_t D = a.s.extent(2);
  const index_t tiles = (D + token_tile_d - 1) / token_tile_d;
  const index_t b = blockIdx.x / tiles;
  const index_t d = (blockIdx.x % tiles) * token_tile_d + threadIdx.x;
  const bool active = d < D;
  pivoted_moments<Acc> ms, mt;
  if (active) {
    ms.pivot = first_valid_value<Acc>(a.s, a.smask, b, d);
    for (index_t l = threadIdx.y; l < a.s.extent(1); l += token_tile_l)
      if (a.smask.empty() || a.smask(b, l) != 0) ms.shifted.add(load<Acc>(a.s(b, l, d)) - ms.pivot);
  }
  ms.shifted = column_welford(ms.shifted, sm);
  const welford_state<Acc> ws = ms.absolute();
  welford_state<Acc> wt;
  if (!a.t.empty()) {
    if (active) {
      mt.pivot = first_valid_value<Acc>(a.t, a.tmask, b, d);
      for (index_t l = threadIdx.y; l < a.t.extent(1); l += token_tile_l)
        if (a.tmask.empty() || a.tmask(b, l) != 0) mt.shifted.add(load<Acc>(a.t(b, l, d)) - mt.pivot);
    }
    mt.shifted = column_welford(mt.shifted, sm);
    wt = mt.absolute();
  }
  if (!active) return;  // no __syncthreads below
  const channel_term_result<Acc> r = term(b * D + d, ws, wt);
  if (threadIdx.y == 0) {
    if (a.partial_loss != nullptr) a.partial_loss[b * D + d] = r.loss;
    if (!a.mean_out.empty()) a.mean_out(b, d) = ws.mean;
    if (!a.std_out.empty()) a.std_out(b, d) = sqrt(features_detail::variance_of(ws, a.unbiased) + a.eps);
  }
  if (a.grad.empty()) return;
  const channel_grad_coef<Acc> coef = features_detail::grad_coef(ms, r, a.unbiased, a.grad_scale);
  for (index_t l = threadIdx.y; l < a.s.extent(1); l += token_tile_l) {
    const bool valid = a.smask.empty() || a.smask(b, l) != 0;
    TG& g = a.grad(b, l, d);
    if (!valid) {
      if (!a.accumulate) g = store<TG>(Acc(0));
      continue;
    }
    const Acc v = coef.at(load<Acc>(a.s(b, l, d)));
    g = store<TG>(a.accumulate ? load<Acc>(g) + v : v);
  }
}

template <class Acc, class TS, class TT, class TG, class Term>
status launch_token_pass(const char* fn, const cuda& ctx, const token_pass_args<Acc, TS, TT, TG>& a, const Term& term) {
  const index_t tiles = (a.s.extent(2) + token_tile_d - 1) / token_tile_d;
  if (a.s.extent(0) * tiles > INT_MAX) return fail(errc::shape_mismatch, fn, "too many samples x feature tiles for one grid");
  const dim3 block(token_tile_d, token_tile_l);
  cudaStream_t st = cuda_detail::stream_of(ctx);
  feature_stats_token_feature_tile_kernel<<<static_cast<unsigned>(a.s.extent(0) * tiles), block, 0, st>>>(a, term);
  return cuda_detail::launch_status(fn, st);
}

// ---------------------------------------------------------------------------------------------
// Deterministic sum of per-channel (per-row) partials into the scalar loss.
// out[0] = scale * (scale_dev ? scale_dev[0] : 1) * sum_i partial[i]
// ---------------------------------------------------------------------------------------------
template <int BlockSize, class Acc>
__global__ void __launch_bounds__(BlockSize)
    feature_stats_sum_partials_single_block_kernel(const Acc* partial, index_t n, Acc scale, const Acc* scale_dev, Acc* out) {
  __shared__ Acc smem[BlockSize / 32];
  Acc s = Acc(0);
  for (index_t i = threadIdx.x; i < n; i += BlockSize) s += partial[i];
  s = cuda_detail::block_sum<BlockSize>(s, smem);
  if (threadIdx.x == 0) out[0] = s * scale * (scale_dev != nullptr ? scale_dev[0] : Acc(1));
}

template <class Acc>
status launch_sum_partials(const char* fn, const cuda& ctx, const Acc* partial, index_t n, Acc scale,
                           const Acc* scale_dev, Acc* out) {
  cudaStream_t st = cuda_detail::stream_of(ctx);
  feature_stats_sum_partials_single_block_kernel<1024, Acc><<<1, 1024, 0, st>>>(partial, n, scale, scale_dev, out);
  return cuda_detail::launch_status(fn, st);
}

/// The per-channel loss accumulators (features_detail::channel_loss_scratch) in the caller's
/// workspace, checked for size and memory space.
template <class Acc>
status channel_loss_accumulators(const char* fn, cuda_view<std::byte, 1> workspace, index_t channels, const char* sizing_function,
                                 Acc** out) {
  using scratch = features_detail::channel_loss_scratch<Acc>;
  DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, workspace_carver::size_of<scratch>(channels), sizing_function));
  workspace_carver w(workspace.data());
  *out = scratch(w, channels).partial;
  return {};
}

/// Rank-R device view checks: present/shape done by the caller; here space, alignment, unit inner
/// stride.
template <class V>
status check_device_input(const char* fn, const char* name, const V& v) {
  if (v.empty()) return {};
  DISTILL_TRY(check_inner_contiguous(fn, name, v));
  return cuda_detail::check_device_view(fn, name, v);
}

}  // namespace features_cuda_detail

// =============================================================================================
// CUDA overloads: plain statistics
// =============================================================================================

template <class T>
[[nodiscard]] status channel_stats_forward(const cuda& ctx, cuda_view<T, 4> x, cuda_view<accum_t<T>, 2> mean,
                                           cuda_view<accum_t<T>, 2> std_dev, const feature_stats_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<T>();
  using Acc = accum_t<T>;
  using U = std::remove_const_t<T>;
  constexpr const char* fn = "channel_stats_forward";
  DISTILL_TRY(features_detail::check_channel_stats_args(fn, x, "mean", mean, "std_dev", std_dev, opt));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "x", x));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "mean", mean));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "std_dev", std_dev));
  features_cuda_detail::channel_pass_args<Acc, U, U, U> a{x, {}, {}, nullptr, mean, std_dev, static_cast<Acc>(opt.eps),
                                                          opt.unbiased, Acc(0), false,
                                                          features_cuda_detail::plane_contiguous(x), true, true};
  return features_cuda_detail::launch_channel_pass(fn, ctx, a, features_detail::zero_term{});
}

template <class T>
[[nodiscard]] status channel_stats_backward(const cuda& ctx, cuda_view<T, 4> x, cuda_view<const accum_t<T>, 2> grad_mean,
                                            cuda_view<const accum_t<T>, 2> grad_std,
                                            cuda_view<std::remove_const_t<T>, 4> grad_x,
                                            const feature_stats_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<T>();
  using Acc = accum_t<T>;
  using U = std::remove_const_t<T>;
  constexpr const char* fn = "channel_stats_backward";
  DISTILL_TRY(features_detail::check_channel_stats_args(fn, x, "grad_mean", grad_mean, "grad_std", grad_std, opt));
  DISTILL_TRY(features_detail::check_output(fn, "grad_x", grad_x, {x.extent(0), x.extent(1), x.extent(2), x.extent(3)}));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "x", x));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_mean", grad_mean));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_std", grad_std));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_x", grad_x));
  features_cuda_detail::channel_pass_args<Acc, U, U, U> a{x, {}, grad_x, nullptr, {}, {}, static_cast<Acc>(opt.eps),
                                                          opt.unbiased, Acc(1), opt.accumulate,
                                                          features_cuda_detail::plane_contiguous(x), true,
                                                          features_cuda_detail::plane_contiguous(grad_x)};
  const features_detail::stats_backward_term<cuda_view<const Acc, 2>> term{grad_mean, grad_std, x.extent(1),
                                                                          static_cast<Acc>(opt.eps), opt.unbiased};
  return features_cuda_detail::launch_channel_pass(fn, ctx, a, term);
}

template <class T>
[[nodiscard]] status token_stats_forward(const cuda& ctx, cuda_view<T, 3> x, cuda_view<const std::uint8_t, 2> token_mask,
                                         cuda_view<accum_t<T>, 2> mean, cuda_view<accum_t<T>, 2> std_dev,
                                         const feature_stats_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<T>();
  using Acc = accum_t<T>;
  using U = std::remove_const_t<T>;
  constexpr const char* fn = "token_stats_forward";
  DISTILL_TRY(features_detail::check_token_stats_args(fn, x, token_mask, "mean", mean, "std_dev", std_dev, opt));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "x", x));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "token_mask", token_mask));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "mean", mean));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "std_dev", std_dev));
  features_cuda_detail::token_pass_args<Acc, U, U, U> a{x,       token_mask, {}, {}, {}, nullptr, mean, std_dev,
                                                        static_cast<Acc>(opt.eps), opt.unbiased, Acc(0), false};
  return features_cuda_detail::launch_token_pass(fn, ctx, a, features_detail::zero_term{});
}

template <class T>
[[nodiscard]] status token_stats_backward(const cuda& ctx, cuda_view<T, 3> x, cuda_view<const std::uint8_t, 2> token_mask,
                                          cuda_view<const accum_t<T>, 2> grad_mean, cuda_view<const accum_t<T>, 2> grad_std,
                                          cuda_view<std::remove_const_t<T>, 3> grad_x,
                                          const feature_stats_options& opt = {}) {
  features_cuda_detail::static_check_cuda_type<T>();
  using Acc = accum_t<T>;
  using U = std::remove_const_t<T>;
  constexpr const char* fn = "token_stats_backward";
  DISTILL_TRY(features_detail::check_token_stats_args(fn, x, token_mask, "grad_mean", grad_mean, "grad_std", grad_std, opt));
  DISTILL_TRY(features_detail::check_output(fn, "grad_x", grad_x, {x.extent(0), x.extent(1), x.extent(2)}));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "x", x));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "token_mask", token_mask));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_mean", grad_mean));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_std", grad_std));
  DISTILL_TRY(features_cuda_detail::check_device_input(fn, "grad_x", grad_x));
  features_cuda_detail::token_pass_args<Acc, U, U, U> a{x,      token_mask, {}, {}, grad_x, nullptr, {}, {},
                                                        static_cast<Acc>(opt.eps), opt.unbiased, Acc(1), opt.accumulate};
  const features_detail::stats_backward_term<cuda_view<const Acc, 2>> term{grad_mean, grad_std, x.extent(2),
                                                                          static_cast<Acc>(opt.eps), opt.unbiased};
  return features_cuda_detail::launch_token_pass(fn, ctx, a, term);
}

// =============================================================================================
// CUDA overloads: statistics-matching loss. `workspace` (stats_matching_workspace_size(ctx, B, C) bytes,
// resp. (ctx, B, D)) is required whenever `loss` is present.
// =============================================================================================
namespace features_cuda_detail {

/// The loss driver shared by statistics matching and the AdaIN statistics loss over [B, C, H, W]
/// on the device (the caller has checked its own options): shapes, device pointers, one pass
/// over the channels with `term`, the reduced loss. `opt` supplies eps, unbiased, red,
/// grad_scale and accumulate.
template <class TS, class TT, class Opt, class Term>
status channel_loss_cuda(const char* fn, const cuda& ctx, cuda_view<TS, 4> s, cuda_view<TT, 4> t, cuda_view<accum_t<TS>, 1> loss,
                         cuda_view<std::remove_const_t<TS>, 4> grad, cuda_view<std::byte, 1> workspace, const Opt& opt,
                         const Term& term, const char* sizing_function) {
  static_check_cuda_type<TS>();
  static_check_cuda_type<TT>();
  using Acc = accum_t<TS>;
  DISTILL_TRY(features_detail::check_channel_loss_args(fn, s, t, loss, grad, opt.unbiased));
  DISTILL_TRY(check_device_input(fn, "student", s));
  DISTILL_TRY(check_device_input(fn, "teacher", t));
  DISTILL_TRY(check_device_input(fn, "grad_student", grad));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  const index_t P = s.extent(0) * s.extent(1);
  Acc* partial = nullptr;
  if (!loss.empty()) DISTILL_TRY(channel_loss_accumulators<Acc>(fn, workspace, P, sizing_function, &partial));
  const double inv_div = 1.0 / features_detail::stats_divisor(opt.reduction, s.extent(0), s.extent(1));
  using US = std::remove_const_t<TS>;
  using UT = std::remove_const_t<TT>;
  channel_pass_args<Acc, US, UT, US> a{s, t, grad, partial, {}, {}, static_cast<Acc>(opt.eps), opt.unbiased,
                                       static_cast<Acc>(opt.grad_scale * inv_div), opt.accumulate,
                                       plane_contiguous(s), plane_contiguous(t), plane_contiguous(grad)};
  DISTILL_TRY(launch_channel_pass(fn, ctx, a, term));
  if (!loss.empty()) DISTILL_TRY(launch_sum_partials<Acc>(fn, ctx, partial, P, static_cast<Acc>(inv_div), nullptr, loss.data()));
  return {};
}

template <class TS, class TT>
status stats_matching_channels_cuda(const char* fn, const cuda& ctx, cuda_view<TS, 4> s, cuda_view<TT, 4> t,
                                    cuda_view<accum_t<TS>, 1> loss, cuda_view<std::remove_const_t<TS>, 4> grad,
                                    cuda_view<std::byte, 1> workspace, const stats_matching_options& opt) {
  DISTILL_TRY(features_detail::check_stats_matching_options(fn, opt));
  return channel_loss_cuda(fn, ctx, s, t, loss, grad, workspace, opt, features_detail::make_stats_matching_term<accum_t<TS>>(opt),
                           "stats_matching_workspace_size");
}

template <class TS, class TT>
status stats_matching_tokens_cuda(const char* fn, const cuda& ctx, cuda_view<TS, 3> s, cuda_view<const std::uint8_t, 2> sm,
                                  cuda_view<TT, 3> t, cuda_view<const std::uint8_t, 2> tm, cuda_view<accum_t<TS>, 1> loss,
                                  cuda_view<std::remove_const_t<TS>, 3> grad, cuda_view<std::byte, 1> workspace,
                                  const stats_matching_options& opt) {
  static_check_cuda_type<TS>();
  static_check_cuda_type<TT>();
  using Acc = accum_t<TS>;
  DISTILL_TRY(features_detail::check_stats_matching_options(fn, opt));
  DISTILL_TRY(features_detail::check_token_loss_args(fn, s, sm, t, tm, loss, grad));
  DISTILL_TRY(check_device_input(fn, "student", s));
  DISTILL_TRY(check_device_input(fn, "teacher", t));
  DISTILL_TRY(check_device_input(fn, "grad_student", grad));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "student_mask", sm));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "teacher_mask", tm));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  const index_t P = s.extent(0) * s.extent(2);
  Acc* partial = nullptr;
  if (!loss.empty()) DISTILL_TRY(channel_loss_accumulators<Acc>(fn, workspace, P, "stats_matching_workspace_size", &partial));
  const double inv_div = 1.0 / features_detail::stats_divisor(opt.reduction, s.extent(0), s.extent(2));
  using US = std::remove_const_t<TS>;
  using UT = std::remove_const_t<TT>;
  token_pass_args<Acc, US, UT, US> a{s, sm, t, tm, grad, partial, {}, {}, static_cast<Acc>(opt.eps), opt.unbiased,
                                     static_cast<Acc>(opt.grad_scale * inv_div), opt.accumulate};
  DISTILL_TRY(launch_token_pass(fn, ctx, a, features_detail::make_stats_matching_term<Acc>(opt)));
  if (!loss.empty()) DISTILL_TRY(launch_sum_partials<Acc>(fn, ctx, partial, P, static_cast<Acc>(inv_div), nullptr, loss.data()));
  return {};
}

}  // namespace features_cuda_detail

template <class TS, class TT>
[[nodiscard]] status stats_matching_forward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TT, 4> teacher,
                                            cuda_view<accum_t<TS>, 1> loss, cuda_view<std::byte, 1> workspace,
                                            const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_cuda_detail::stats_matching_channels_cuda(fn, ctx, student, teacher, loss, {}, workspace, opt);
}
template <class TS, class TT>
[[nodiscard]] status stats_matching_backward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TT, 4> teacher,
                                             cuda_view<std::remove_const_t<TS>, 4> grad_student,
                                             cuda_view<std::byte, 1> /*workspace: not needed*/,
                                             const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::stats_matching_channels_cuda(fn, ctx, student, teacher, {}, grad_student, {}, opt);
}
template <class TS, class TT>
[[nodiscard]] status stats_matching_forward_backward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TT, 4> teacher,
                                                     cuda_view<accum_t<TS>, 1> loss,
                                                     cuda_view<std::remove_const_t<TS>, 4> grad_student,
                                                     cuda_view<std::byte, 1> workspace,
                                                     const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::stats_matching_channels_cuda(fn, ctx, student, teacher, loss, grad_student, workspace, opt);
}

template <class TS, class TT>
[[nodiscard]] status stats_matching_forward(const cuda& ctx, cuda_view<TS, 3> student,
                                            cuda_view<const std::uint8_t, 2> student_mask, cuda_view<TT, 3> teacher,
                                            cuda_view<const std::uint8_t, 2> teacher_mask, cuda_view<accum_t<TS>, 1> loss,
                                            cuda_view<std::byte, 1> workspace, const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return features_cuda_detail::stats_matching_tokens_cuda(fn, ctx, student, student_mask, teacher, teacher_mask, loss, {},
                                                          workspace, opt);
}
template <class TS, class TT>
[[nodiscard]] status stats_matching_backward(const cuda& ctx, cuda_view<TS, 3> student,
                                             cuda_view<const std::uint8_t, 2> student_mask, cuda_view<TT, 3> teacher,
                                             cuda_view<const std::uint8_t, 2> teacher_mask,
                                             cuda_view<std::remove_const_t<TS>, 3> grad_student,
                                             cuda_view<std::byte, 1> /*workspace: not needed*/,
                                             const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::stats_matching_tokens_cuda(fn, ctx, student, student_mask, teacher, teacher_mask, {},
                                                          grad_student, {}, opt);
}
template <class TS, class TT>
[[nodiscard]] status stats_matching_forward_backward(const cuda& ctx, cuda_view<TS, 3> student,
                                                     cuda_view<const std::uint8_t, 2> student_mask, cuda_view<TT, 3> teacher,
                                                     cuda_view<const std::uint8_t, 2> teacher_mask,
                                                     cuda_view<accum_t<TS>, 1> loss,
                                                     cuda_view<std::remove_const_t<TS>, 3> grad_student,
                                                     cuda_view<std::byte, 1> workspace,
                                                     const stats_matching_options& opt = {}) {
  constexpr const char* fn = "stats_matching_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return features_cuda_detail::stats_matching_tokens_cuda(fn, ctx, student, student_mask, teacher, teacher_mask, loss,
                                                          grad_student, workspace, opt);
}

}  // namespace distill
