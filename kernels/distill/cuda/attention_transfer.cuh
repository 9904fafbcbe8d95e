// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of attention transfer (math and the CPU path: distill/attention/attention_transfer.hpp).
//!
//! Two decompositions, both deterministic (fixed reduction orders, no float atomics):
//!
//! fused_cluster (sm_90): one thread-block cluster per sample, each block owning a slab of
//!   columns n (all channels). A block streams its teacher slab (computing Q^t), streams its
//!   student slab into shared memory (computing Q^s), the cluster exchanges three partial sums
//!   through distributed shared memory, then each block writes its gradient slab from shared
//!   memory. Bytes: student + teacher read once, gradient written once (the floor).
//! two_pass (any device, any shape): (1) map kernel, a block per 64-column tile computes Q^s and
//!   Q^t into the workspace; (2) a block per sample reduces norms and turns Q^s into the column
//!   factor G = g_Q / C_s; (3) gradient kernel, a block per (sample, 8 channels,
//!   1024 columns) tile. Bytes: student read twice (the second read partly from L2: kernel 3
//!   starts with the samples kernel 1 read last), teacher once, gradient written once.
//! The reduced loss is summed by the last block (cluster) to finish, over per-sample losses in
//! sample order; the workspace counter that detects it is zeroed by cudaMemsetAsync per call.

#if !defined(__CUDACC__)
#error "distill/cuda/attention_transfer.cuh must be compiled by nvcc"
#endif

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "distill/attention/attention_transfer.hpp"
#include "distill/cuda/detail/device.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"

namespace distill {
namespace attention_transfer_cuda {

using attention_transfer_detail::channel_energy;
using attention_transfer_detail::channel_energy_derivative;
using attention_transfer_detail::sample_params;

/// A [B, C, H, W] feature tensor with unit stride along W, as kernels see it.
template <class T>
struct features {
  T* data;
  index_t sb, sc, sh;
  int C, H, W;
};

template <class T, class V>
features<T> make_features(const V& v) {
  return {v.data(), v.stride(0), v.stride(1), v.stride(2), static_cast<int>(v.extent(1)), static_cast<int>(v.extent(2)),
          static_cast<int>(v.extent(3))};
}

/// Where the loss goes. mode: 0 = no loss, 1 = per sample (reduction none), 2 = reduced.
struct loss_args {
  float* out;
  index_t stride;
  int mode;
  bool add;             ///< add to the existing value (layers after the first)
  float* sample_loss;   ///< workspace, B floats
  unsigned* counter;    ///< workspace, zeroed before the launch
  int batch;
};

/// Offset of column n (h * W + w) inside a channel plane with row stride sh.
__device__ DISTILL_FORCEINLINE index_t column_offset(int n, int W, index_t sh) {
  const int h = n / W;
  return static_cast<index_t>(h) * sh + (n - h * W);
}

/// Column sums sum_c |a_{b,c,n}|^p for `ncols` columns starting at n0, into out[0..ncols) (times
/// inv_c). Warp w takes 32 columns (chunk w % chunks) and every groups-th channel starting at
/// w / chunks; the per-group partials are added in group order through `red`
/// (groups * chunks * 32 floats). With Store, the raw values also go to tile[c * tile_ld + col].
/// Called by every thread of the block; ends with __syncthreads.
template <int PC, int Block, bool Store, class T, class TTile>
__device__ void column_energy(const features<T>& f, int b, int n0, int ncols, int chunks, float p, float inv_c, float* out,
                              float* red, TTile* tile, int tile_ld) {
  constexpr int warps = Block / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int groups = warps / chunks;
  const int chunk = warp % chunks, group = warp / chunks;
  const int col = chunk * 32 + lane;
  if (group < groups) {
    float acc = 0.f;
    if (col < ncols) {
      const T* base = f.data + static_cast<index_t>(b) * f.sb + column_offset(n0 + col, f.W, f.sh);
      int c = group;
      constexpr int unroll = 8;
      for (; c + (unroll - 1) * groups < f.C; c += unroll * groups) {
        std::remove_const_t<T> raw[unroll];  // all loads in flight before the first use
#pragma unroll
        for (int u = 0; u < unroll; ++u) raw[u] = base[static_cast<index_t>(c + u * groups) * f.sc];
#pragma unroll
        for (int u = 0; u < unroll; ++u) {
          acc += channel_energy<PC>(load<float>(raw[u]), p);
          if constexpr (Store) tile[static_cast<index_t>(c + u * groups) * tile_ld + col] = raw[u];
        }
      }
      for (; c < f.C; c += groups) {
        const std::remove_const_t<T> raw = base[static_cast<index_t>(c) * f.sc];
        acc += channel_energy<PC>(load<float>(raw), p);
        if constexpr (Store) tile[static_cast<index_t>(c) * tile_ld + col] = raw;
      }
    }
    red[group * chunks * 32 + col] = acc;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < ncols; i += Block) {
    float s = 0.f;
    for (int g = 0; g < groups; ++g) s += red[g * chunks * 32 + i];
    out[i] = s * inv_c;
  }
  __syncthreads();
}

/// Records this sample's loss; with a reduced loss the last block to finish sums all samples.
/// Called by every thread of the block.
template <int Block>
__device__ void finish_sample_loss(const loss_args& L, int b, float value, float* smem) {
  __shared__ bool is_last;
  if (L.mode == 0) return;
  if (L.mode == 1) {
    if (threadIdx.x == 0) {
      float* o = L.out + static_cast<index_t>(b) * L.stride;
      *o = (L.add ? *o : 0.f) + value;
    }
    return;
  }
  if (threadIdx.x == 0) {
    L.sample_loss[b] = value;
    __threadfence();
    is_last = atomicAdd(L.counter, 1u) == static_cast<unsigned>(L.batch - 1);
  }
  __syncthreads();
  if (is_last) {
    __threadfence();
    float s = 0.f;
    for (int i = threadIdx.x; i < L.batch; i += Block) s += __ldcg(L.sample_loss + i);
    s = cuda_detail::block_sum<Block>(s, smem);
    if (threadIdx.x == 0) L.out[0] = (L.add ? L.out[0] : 0.f) + s;
  }
}

// ---------------------------------------------------------------------------------------------
// two_pass
// ---------------------------------------------------------------------------------------------

constexpr int map_block = 256;   // 8 warps: 2 column chunks (64 columns) x 4 channel groups
constexpr int map_chunks = 2;
constexpr int map_cols = 32 * map_chunks;

/// Pass 1: Q maps. Flat grid over (which, sample, tile); which 0 = teacher, 1 = student, so the
/// student slices are the ones most recently read when pass 3 starts.
template <int PC, class TS, class TT>
__global__ void __launch_bounds__(map_block)
    attention_transfer_map_block_per_tile_kernel(features<const TS> s, features<const TT> t, float* qs, float* qt, int B,
                                                 int N, int tiles, float p) {
  __shared__ float red[map_block];  // (warps / chunks) groups * chunks * 32 = Block floats
  const index_t id = blockIdx.x;
  const int tile = static_cast<int>(id % tiles);
  const int b = static_cast<int>((id / tiles) % B);
  const int which = static_cast<int>(id / (static_cast<index_t>(tiles) * B));
  const int n0 = tile * map_cols;
  const int ncols = min(map_cols, N - n0);
  if (which == 0)
    column_energy<PC, map_block, false>(t, b, n0, ncols, map_chunks, p, 1.f / static_cast<float>(t.C),
                                        qt + static_cast<index_t>(b) * N + n0, red, static_cast<TT*>(nullptr), 0);
  else
    column_energy<PC, map_block, false>(s, b, n0, ncols, map_chunks, p, 1.f / static_cast<float>(s.C),
                                        qs + static_cast<index_t>(b) * N + n0, red, static_cast<TS*>(nullptr), 0);
}

constexpr int sample_block = 256;

/// Pass 2: a block per sample. Norms, d^2, the sample's loss; with `write_factor` it overwrites
/// Q^s by the column factor G = g_Q / C_s.
__global__ void __launch_bounds__(sample_block)
    attention_transfer_sample_block_per_sample_kernel(float* qs, const float* qt, int N, sample_params<float> P,
                                                      bool write_factor, loss_args L) {
  __shared__ float smem[sample_block / 32];
  const int b = blockIdx.x;
  float* a = qs + static_cast<index_t>(b) * N;
  const float* t = qt + static_cast<index_t>(b) * N;
  float ss = 0.f, tt = 0.f, st = 0.f;
  for (int n = threadIdx.x; n < N; n += sample_block) {
    const float x = a[n], y = t[n];
    ss += x * x;
    tt += y * y;
    st += x * y;
  }
  ss = cuda_detail::block_sum<sample_block>(ss, smem);
  tt = cuda_detail::block_sum<sample_block>(tt, smem);
  st = cuda_detail::block_sum<sample_block>(st, smem);
  const float ns = attention_transfer_detail::clamped_norm(ss, P.eps);
  const float nt = attention_transfer_detail::clamped_norm(tt, P.eps);
  float d2 = 0.f;
  for (int n = threadIdx.x; n < N; n += sample_block) {
    const float d = a[n] / ns - t[n] / nt;  // division, as on the CPU: u is exactly 1 on 1x1 maps
    d2 += d * d;
  }
  d2 = cuda_detail::block_sum<sample_block>(d2, smem);
  const auto r = attention_transfer_detail::sample_coefficients(ss, st, d2, ns, nt, P);
  if (write_factor)
    for (int n = threadIdx.x; n < N; n += sample_block)
      a[n] = attention_transfer_detail::column_factor(r, a[n], t[n], ns, nt, P.inv_channels);
  finish_sample_loss<sample_block>(L, b, r.loss, smem);
}

constexpr int grad_block = 256;
constexpr int grad_cols_per_thread = 4;                  // columns n = tile*1024 + k*256 + tid
constexpr int grad_cols = grad_block * grad_cols_per_thread;
constexpr int grad_channels = 8;                         // channels per block

/// Pass 3: gradient. Flat grid over (sample, channel tile, column tile), samples in reverse order.
template <int PC, class TS>
__global__ void __launch_bounds__(grad_block)
    attention_transfer_grad_block_per_tile_kernel(features<const TS> s, features<TS> g, const float* G, int B, int N,
                                                  int col_tiles, int chan_tiles, float p, bool accumulate) {
  const index_t id = blockIdx.x;
  const int col_tile = static_cast<int>(id % col_tiles);
  const int chan_tile = static_cast<int>((id / col_tiles) % chan_tiles);
  const int b = B - 1 - static_cast<int>(id / (static_cast<index_t>(col_tiles) * chan_tiles));
  const float* Gb = G + static_cast<index_t>(b) * N;
  float gf[grad_cols_per_thread];
  index_t aoff[grad_cols_per_thread], goff[grad_cols_per_thread];
  bool valid[grad_cols_per_thread];
#pragma unroll
  for (int k = 0; k < grad_cols_per_thread; ++k) {
    const int n = col_tile * grad_cols + k * grad_block + static_cast<int>(threadIdx.x);
    valid[k] = n < N;
    gf[k] = valid[k] ? Gb[n] : 0.f;
    aoff[k] = valid[k] ? static_cast<index_t>(b) * s.sb + column_offset(n, s.W, s.sh) : 0;
    goff[k] = valid[k] ? static_cast<index_t>(b) * g.sb + column_offset(n, g.W, g.sh) : 0;
  }
  const int c0 = chan_tile * grad_channels;
  const int c1 = min(s.C, c0 + grad_channels);
  for (int c = c0; c < c1; ++c) {
#pragma unroll
    for (int k = 0; k < grad_cols_per_thread; ++k) {
      if (!valid[k]) continue;
      const float a = load<float>(s.data[aoff[k] + static_cast<index_t>(c) * s.sc]);
      TS* out = g.data + goff[k] + static_cast<index_t>(c) * g.sc;
      float v = gf[k] * channel_energy_derivative<PC>(a, p);
      if (accumulate) v += load<float>(*out);
      *out = store<TS>(v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// fused_cluster (sm_90)
// ---------------------------------------------------------------------------------------------

constexpr int fused_block = 512;        // 16 warps
constexpr int fused_max_cols = 512;     // 16 chunks of 32 columns
constexpr int fused_max_cluster = 16;   // non-portable cluster size on H100
constexpr std::size_t fused_tile_budget = 100 * 1024;  // two blocks per SM on a 228 KB SM

/// Dynamic shared memory: [tile: C * cols elements of TS][Q^s: cols floats][Q^t: cols floats].
template <int PC, class TS, class TT>
__global__ void __launch_bounds__(fused_block)
    attention_transfer_fused_cluster_per_sample_kernel(features<const TS> s, features<const TT> t, features<TS> g,
                                                       int N, int cols, sample_params<float> P, bool want_grad,
                                                       bool accumulate, loss_args L) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ float red[fused_block];
  __shared__ float smem[fused_block / 32];
  __shared__ float partial[4];  // this block's ss, tt, st, d2: read by the whole cluster
  __shared__ float totals[4];   // the cluster's sums (same in every block)
  __shared__ float coef[3];     // scale, cos, loss
  extern __shared__ float4 dynamic_smem[];
  const int rank = static_cast<int>(cluster.block_rank());
  const int ranks = static_cast<int>(cluster.num_blocks());
  const int b = blockIdx.y;
  const int n0 = rank * cols;
  const int ncols = min(cols, N - n0);
  const int chunks = (ncols + 31) / 32;
  TS* tile = reinterpret_cast<TS*>(dynamic_smem);
  const std::size_t tile_bytes = (static_cast<std::size_t>(s.C) * cols * sizeof(TS) + 15) / 16 * 16;
  float* qs = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(dynamic_smem) + tile_bytes);
  float* qt = qs + cols;

  // 1. Teacher slab -> Q^t (streamed); student slab -> shared tile and Q^s.
  column_energy<PC, fused_block, false>(t, b, n0, ncols, chunks, P.p, 1.f / static_cast<float>(t.C), qt, red,
                                        static_cast<TT*>(nullptr), 0);
  column_energy<PC, fused_block, true>(s, b, n0, ncols, chunks, P.p, P.inv_channels, qs, red, tile, cols);

  // 2. Partial sums over this block's columns, exchanged through distributed shared memory.
  float ss = 0.f, tt = 0.f, st = 0.f;
  for (int i = threadIdx.x; i < ncols; i += fused_block) {
    ss += qs[i] * qs[i];
    tt += qt[i] * qt[i];
    st += qs[i] * qt[i];
  }
  ss = cuda_detail::block_sum<fused_block>(ss, smem);
  tt = cuda_detail::block_sum<fused_block>(tt, smem);
  st = cuda_detail::block_sum<fused_block>(st, smem);
  if (threadIdx.x == 0) partial[0] = ss, partial[1] = tt, partial[2] = st;
  cluster.sync();
  if (threadIdx.x == 0) {
    float a0 = 0.f, a1 = 0.f, a2 = 0.f;
    for (int r = 0; r < ranks; ++r) {  // rank order: every block gets bitwise the same sums
      const float* remote = cluster.map_shared_rank(partial, static_cast<unsigned>(r));
      a0 += remote[0];
      a1 += remote[1];
      a2 += remote[2];
    }
    totals[0] = a0, totals[1] = a1, totals[2] = a2;
  }
  __syncthreads();
  const float ns = attention_transfer_detail::clamped_norm(totals[0], P.eps);
  const float nt = attention_transfer_detail::clamped_norm(totals[1], P.eps);
  float d2 = 0.f;
  for (int i = threadIdx.x; i < ncols; i += fused_block) {
    const float d = qs[i] / ns - qt[i] / nt;
    d2 += d * d;
  }
  d2 = cuda_detail::block_sum<fused_block>(d2, smem);
  if (threadIdx.x == 0) partial[3] = d2;
  cluster.sync();
  if (threadIdx.x == 0) {
    float a3 = 0.f;
    for (int r = 0; r < ranks; ++r) a3 += cluster.map_shared_rank(partial, static_cast<unsigned>(r))[3];
    const auto res = attention_transfer_detail::sample_coefficients(totals[0], totals[2], a3, ns, nt, P);
    coef[0] = res.scale, coef[1] = res.cos, coef[2] = res.loss;
  }
  cluster.sync();  // no block leaves (or reuses `partial`) while another may still read it

  // 3. Loss (rank 0 of each cluster), then the gradient slab from shared memory.
  if (rank == 0) finish_sample_loss<fused_block>(L, b, coef[2], smem);
  if (!want_grad) return;
  attention_transfer_detail::sample_result<float> res;
  res.scale = coef[0], res.cos = coef[1], res.loss = coef[2];
  for (int i = threadIdx.x; i < ncols; i += fused_block)
    qs[i] = attention_transfer_detail::column_factor(res, qs[i], qt[i], ns, nt, P.inv_channels);
  __syncthreads();
  constexpr int warps = fused_block / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int groups = warps / chunks;
  const int chunk = warp % chunks, group = warp / chunks;
  const int col = chunk * 32 + lane;
  if (group >= groups || col >= ncols) return;
  const float G = qs[col];
  TS* out = g.data + static_cast<index_t>(b) * g.sb + column_offset(n0 + col, g.W, g.sh);
  for (int c = group; c < s.C; c += groups) {
    float v = G * channel_energy_derivative<PC>(load<float>(tile[static_cast<index_t>(c) * cols + col]), P.p);
    TS* o = out + static_cast<index_t>(c) * g.sc;
    if (accumulate) v += load<float>(*o);
    *o = store<TS>(v);
  }
#else
  (void)s, (void)t, (void)g, (void)N, (void)cols, (void)P, (void)want_grad, (void)accumulate, (void)L;
#endif
}

/// How a layer will run on the device: the cluster shape, or two_pass.
struct plan {
  bool fused = false;
  int cluster = 0;        // blocks per sample
  int cols = 0;           // columns per block
  std::size_t smem = 0;   // dynamic shared memory per block
  const char* why_not = "";
};

inline bool device_has_clusters() { return cuda_detail::current_device_properties().major >= 9; }

/// Fills the launch configuration of the fused kernel; `usable` is false (and the caller falls
/// back to two_pass) when the kernel has no sm_90 code or the cluster cannot be scheduled.
template <class Kernel>
void configure_fused(Kernel kernel, const plan& pl, cudaLaunchConfig_t& cfg, cudaLaunchAttribute* attr, dim3 grid,
                     cudaStream_t stream, bool& usable) {
  usable = false;
  cudaFuncAttributes fa{};
  const bool ok = cudaFuncGetAttributes(&fa, kernel) == cudaSuccess &&
                  fa.ptxVersion >= 90 &&  // built without sm_90 code: the kernel body is empty
                  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(pl.smem)) ==
                      cudaSuccess &&
                  (pl.cluster <= 8 ||
                   cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess);
  if (!ok) {
    (void)cudaGetLastError();  // these queries leave no sticky error; clear the last-error slot
    return;
  }
  cfg = cudaLaunchConfig_t{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(fused_block, 1, 1);
  cfg.dynamicSmemBytes = pl.smem;
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(pl.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int active = 0;
  if (cudaOccupancyMaxActiveClusters(&active, kernel, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  usable = active > 0;
}

/// Shape-only part of the plan (the device checks follow at launch).
template <class TS>
plan make_plan(index_t B, index_t C, index_t N, attention_transfer_cuda_algorithm algo) {
  plan pl;
  auto refuse = [&](const char* why) {
    pl.why_not = why;
    return pl;
  };
  if (algo == attention_transfer_cuda_algorithm::two_pass) return pl;
  if (!device_has_clusters()) return refuse("it needs a device of compute capability 9.0 or newer");
  if (B > 65535) return refuse("it supports at most 65535 samples");
  const std::size_t per_col = static_cast<std::size_t>(C) * sizeof(TS);
  std::size_t max_cols = std::min<std::size_t>(fused_max_cols, fused_tile_budget / per_col);
  if (max_cols >= 32) max_cols = max_cols / 32 * 32;
  if (max_cols == 0) return refuse("one column of the student (C_s elements) exceeds its shared-memory budget");
  const index_t k = (N + static_cast<index_t>(max_cols) - 1) / static_cast<index_t>(max_cols);
  if (k > fused_max_cluster) return refuse("the student slice of one sample exceeds 16 blocks x 100 KiB of shared memory");
  const index_t cols = (N + k - 1) / k;
  pl.cluster = static_cast<int>((N + cols - 1) / cols);
  pl.cols = static_cast<int>(cols);
  pl.smem = (static_cast<std::size_t>(C) * cols * sizeof(TS) + 15) / 16 * 16 + 2 * static_cast<std::size_t>(cols) * sizeof(float);
  pl.fused = true;
  return pl;
}

template <class Layers>
status run_layers_cuda(const char* fn, const cuda& ctx, const Layers& layers,
                       cuda_view<attention_transfer_detail::layers_accum_t<Layers>, 1> loss,
                       cuda_view<std::byte, 1> workspace, bool need_loss, bool need_grad,
                       const attention_transfer_options& opt) {
  using namespace attention_transfer_detail;
  using Lr = layer_of<Layers>;
  using TS = typename layer_traits<Lr>::student_type;
  using TT = typename layer_traits<Lr>::teacher_type;
  static_assert(!std::is_same_v<TS, double> && !std::is_same_v<TT, double>,
                "attention_transfer (CUDA): float, float16 and bfloat16 only");
  static_assert(is_supported_float_v<TS> && is_supported_float_v<TT>, "attention_transfer: unsupported element type");
  DISTILL_TRY(check_options(fn, opt));
  if (std::ranges::size(layers) == 0) return fail(errc::invalid_argument, fn, "'layers' is empty");
  const index_t B = std::ranges::begin(layers)->student.extent(0);
  std::size_t need_ws = 0;
  std::vector<plan> plans;
  std::size_t j = 0;
  for (const Lr& layer : layers) {
    DISTILL_TRY(check_layer(fn, j, layer, B, need_grad));
    DISTILL_TRY(check_inner_contiguous(fn, indexed("student", j).c_str(), layer.student));
    DISTILL_TRY(check_inner_contiguous(fn, indexed("teacher", j).c_str(), layer.teacher));
    if (need_grad) DISTILL_TRY(check_inner_contiguous(fn, indexed("grad_student", j).c_str(), layer.grad_student));
    const index_t N = layer.student.extent(2) * layer.student.extent(3);
    if (N > INT_MAX || layer.student.extent(1) > INT_MAX || layer.teacher.extent(1) > INT_MAX || B > INT_MAX)
      return fail(errc::invalid_argument, fn, "'" + indexed("student", j) + "' is too large for the CUDA path (extents above 2^31)");
    DISTILL_TRY(cuda_detail::check_device_view(fn, indexed("student", j).c_str(), layer.student));
    DISTILL_TRY(cuda_detail::check_device_view(fn, indexed("teacher", j).c_str(), layer.teacher));
    if (need_grad) DISTILL_TRY(cuda_detail::check_device_view(fn, indexed("grad_student", j).c_str(), layer.grad_student));
    need_ws = std::max(need_ws, workspace_carver::size_of<cuda_scratch>(B, N));
    plans.push_back(make_plan<TS>(B, layer.student.extent(1), N, opt.cuda_algorithm));
    if (opt.cuda_algorithm == attention_transfer_cuda_algorithm::fused_cluster && !plans.back().fused)
      return fail(errc::invalid_argument, fn,
                  std::string("cuda_algorithm fused_cluster is not available for '") + indexed("student", j) + "': " +
                      plans.back().why_not);
    ++j;
  }
  if (need_loss) {
    DISTILL_TRY(check_loss(fn, loss, B, opt.reduction));
    DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  }
  DISTILL_TRY(check_workspace(fn, workspace, need_ws, "attention_transfer_workspace_size"));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "workspace", workspace));

  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const int pc = power_case(opt.p);
  bool first = true;
  j = 0;
  for (const Lr& layer : layers) {
    const plan& pl = plans[j++];
    const index_t N = layer.student.extent(2) * layer.student.extent(3);
    workspace_carver carver(workspace.data());
    const cuda_scratch ws(carver, B, N);
    float* qs = ws.student_map;
    float* qt = ws.teacher_map;
    loss_args L{};
    L.mode = !need_loss ? 0 : opt.reduction == reduction::none ? 1 : 2;
    L.out = need_loss ? loss.data() : nullptr;
    L.stride = need_loss ? loss.stride(0) : 0;
    L.add = !first;
    L.sample_loss = ws.sample_loss;
    L.counter = ws.counter;
    L.batch = static_cast<int>(B);
    first = false;
    if (L.mode == 2) DISTILL_CUDA_TRY(cudaMemsetAsync(L.counter, 0, sizeof(unsigned), stream));
    const auto P = make_params<float>(opt, layer.weight, B, layer.student.extent(1), N);
    const auto s = make_features<const TS>(layer.student);
    const auto t = make_features<const TT>(layer.teacher);
    const auto g = need_grad ? make_features<TS>(layer.grad_student) : features<TS>{};
    const float p = static_cast<float>(opt.p);

    status launched = with_power_case(pc, [&](auto pcc) -> status {
      constexpr int PC = decltype(pcc)::value;
      if (pl.fused) {
        auto kernel = attention_transfer_fused_cluster_per_sample_kernel<PC, TS, TT>;
        cudaLaunchConfig_t cfg;
        cudaLaunchAttribute attr[1];
        bool usable = false;
        configure_fused(kernel, pl, cfg, attr, dim3(static_cast<unsigned>(pl.cluster), static_cast<unsigned>(B), 1), stream,
                        usable);
        if (usable) {
          DISTILL_CUDA_TRY(cudaLaunchKernelEx(&cfg, kernel, s, t, g, static_cast<int>(N), pl.cols, P, need_grad,
                                              opt.accumulate, L));
          return cuda_detail::launch_status(fn, stream);
        }
        if (opt.cuda_algorithm == attention_transfer_cuda_algorithm::fused_cluster)
          return fail(errc::invalid_argument, fn,
                      "cuda_algorithm fused_cluster is not available: the kernel was built without sm_90 code or the "
                      "cluster does not fit on this device");
      }
      const int tiles = static_cast<int>((N + map_cols - 1) / map_cols);
      const index_t map_blocks = 2 * B * tiles;
      attention_transfer_map_block_per_tile_kernel<PC, TS, TT><<<static_cast<unsigned>(map_blocks), map_block, 0, stream>>>(
          s, t, qs, qt, static_cast<int>(B), static_cast<int>(N), tiles, p);
      DISTILL_TRY(cuda_detail::launch_status(fn, stream));
      attention_transfer_sample_block_per_sample_kernel<<<static_cast<unsigned>(B), sample_block, 0, stream>>>(
          qs, qt, static_cast<int>(N), P, need_grad, L);
      DISTILL_TRY(cuda_detail::launch_status(fn, stream));
      if (need_grad) {
        const int col_tiles = static_cast<int>((N + grad_cols - 1) / grad_cols);
        const int chan_tiles = static_cast<int>((layer.student.extent(1) + grad_channels - 1) / grad_channels);
        const index_t grad_blocks = B * col_tiles * chan_tiles;
        attention_transfer_grad_block_per_tile_kernel<PC, TS><<<static_cast<unsigned>(grad_blocks), grad_block, 0, stream>>>(
            s, g, qs, static_cast<int>(B), static_cast<int>(N), col_tiles, chan_tiles, p, opt.accumulate);
        DISTILL_TRY(cuda_detail::launch_status(fn, stream));
      }
      return {};
    });
    DISTILL_TRY(launched);
  }
  return {};
}

}  // namespace attention_transfer_cuda

namespace attention_transfer_detail {

/// The CUDA engine (declared in include/distill/attention/attention_transfer.hpp).
template <>
struct backend<cuda_space> {
  template <class Layers>
  static status run(const char* fn, const cuda& ctx, const Layers& layers, cuda_view<layers_accum_t<Layers>, 1> loss,
                    cuda_view<std::byte, 1> workspace, bool need_loss, bool need_grad, const attention_transfer_options& opt) {
    return attention_transfer_cuda::run_layers_cuda(fn, ctx, layers, loss, workspace, need_loss, need_grad, opt);
  }
};

}  // namespace attention_transfer_detail

}  // namespace distill
