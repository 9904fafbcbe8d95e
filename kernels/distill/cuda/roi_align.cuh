// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of RoI Align (math in distill/detection/roi_align.hpp). nvcc only.
//!   forward: one thread per output element (k, c, p, q) sums its gh x gw bilinear samples
//!     (4 reads each, mostly L1/L2 hits), writes the element once.
//!   backward, deterministic gather: a block owns a tile of 8 x 32 input cells of one image and
//!     kChannels channels. It walks the rois in chunks of 256: each thread tests one roi (same
//!     image, rows/columns it can touch overlap the tile), the survivors are compacted *in roi
//!     order* into shared memory (ballot + warp prefix), then every thread adds, for its cell,
//!     the contributions of the survivors' samples that read it (samples_touching bounds them;
//!     weight_of_cell gives the exact forward weight). No atomics: each input gradient element
//!     is summed by one thread in a fixed order, so results are bitwise reproducible. Cost: each
//!     block reads all K rois (20 bytes each) once per chunk, plus ~(2 / step + 2)^2 reads of
//!     grad_output per (cell, touching roi, channel); torchvision's scatter does 4 atomics per
//!     sample instead (non-deterministic).

#if !defined(__CUDACC__)
#error "distill/cuda/roi_align.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "distill/core/dtype.hpp"
#include "distill/cuda/runtime.cuh"
#include "distill/detection/roi_align.hpp"

namespace distill {
namespace roi_align_cuda_detail {

namespace rd = roi_align_detail;

constexpr int kThreads = 256;
constexpr int kTileH = 8, kTileW = 32;  // kTileH * kTileW == kThreads
constexpr int kChannels = 4;            // channels per block in the backward
static_assert(kTileH * kTileW == kThreads, "one thread per tile cell");

/// A strided rank-4 tensor of T on the device.
template <class T>
struct map4 {
  T* p;
  index_t s0, s1, s2, s3;
  __device__ __forceinline__ T& operator()(index_t a, index_t b, index_t c, index_t d) const {
    return p[a * s0 + b * s1 + c * s2 + d * s3];
  }
};
template <class V>
map4<typename V::element_type> map_of(const V& v) {
  return {v.data(), v.stride(0), v.stride(1), v.stride(2), v.stride(3)};
}

struct roi_rows {
  const float* p;
  index_t s0, s1;
  __device__ __forceinline__ void load(index_t k, float r[5]) const {
    for (int c = 0; c < 5; ++c) r[c] = p[k * s0 + c * s1];
  }
};

struct launch_params {
  index_t B, C, K;
  int H, W, ph, pw;
  float scale;
  int sampling_ratio;
  bool aligned;
};

__device__ __forceinline__ rd::geometry<float> geometry_at(const roi_rows& rois, index_t k, const launch_params& lp) {
  float r[5];
  rois.load(k, r);
  return rd::geometry_of(r, lp.B, lp.scale, lp.aligned, lp.ph, lp.pw, lp.sampling_ratio);
}

template <class T>
__global__ void __launch_bounds__(kThreads) roi_align_forward_element_per_thread_kernel(map4<const T> input, roi_rows rois, launch_params lp,
                                                                                        map4<T> output) {
  const index_t total = lp.K * lp.C * lp.ph * lp.pw;
  for (index_t idx = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * kThreads) {
    const int q = static_cast<int>(idx % lp.pw), p = static_cast<int>((idx / lp.pw) % lp.ph);
    const index_t c = (idx / (lp.pw * lp.ph)) % lp.C, k = idx / (lp.pw * lp.ph * lp.C);
    const rd::geometry<float> g = geometry_at(rois, k, lp);
    float sum = 0.0f;
    if (g.batch >= 0) {
      for (int a = 0; a < g.grid_h; ++a) {
        const rd::axis_weights<float> y = rd::interpolate_axis(rd::sample_position(g.start_h, g.bin_h, g.grid_h, p, a), lp.H);
        for (int e = 0; e < g.grid_w; ++e) {
          const rd::axis_weights<float> x = rd::interpolate_axis(rd::sample_position(g.start_w, g.bin_w, g.grid_w, q, e), lp.W);
          sum += y.w_lo * (x.w_lo * load<float>(input(g.batch, c, y.lo, x.lo)) + x.w_hi * load<float>(input(g.batch, c, y.lo, x.hi))) +
                 y.w_hi * (x.w_lo * load<float>(input(g.batch, c, y.hi, x.lo)) + x.w_hi * load<float>(input(g.batch, c, y.hi, x.hi)));
        }
      }
    }
    output(k, c, p, q) = store<T>(sum * g.inv_count);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) roi_align_backward_gather_tile_kernel(map4<const T> grad_output, roi_rows rois, launch_params lp,
                                                                                  index_t channel_groups, bool accumulate, map4<T> grad_input) {
  __shared__ rd::geometry<float> chosen[kThreads];
  __shared__ index_t chosen_roi[kThreads];
  __shared__ int warp_counts[kThreads / 32];
  const int tiles_w = (lp.W + kTileW - 1) / kTileW;
  const int ty0 = static_cast<int>(blockIdx.x / tiles_w) * kTileH, tx0 = static_cast<int>(blockIdx.x % tiles_w) * kTileW;
  const index_t b = blockIdx.y / channel_groups, c0 = (blockIdx.y % channel_groups) * kChannels;
  const int y = ty0 + static_cast<int>(threadIdx.x) / kTileW, x = tx0 + static_cast<int>(threadIdx.x) % kTileW;
  const bool inside = y < lp.H && x < lp.W;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float acc[kChannels] = {};
  for (index_t k0 = 0; k0 < lp.K; k0 += kThreads) {
    // 1. Which rois of this chunk can touch the tile (kept in roi order).
    const index_t k = k0 + threadIdx.x;
    bool keep = false;
    rd::geometry<float> g{};
    if (k < lp.K) {
      g = geometry_at(rois, k, lp);
      if (g.batch == b && g.grid_h > 0 && g.grid_w > 0) {
        int r0, r1, q0, q1;
        rd::cells_touched(g.start_h, g.bin_h * static_cast<float>(lp.ph), lp.H, r0, r1);
        rd::cells_touched(g.start_w, g.bin_w * static_cast<float>(lp.pw), lp.W, q0, q1);
        keep = r0 <= r1 && q0 <= q1 && r0 < ty0 + kTileH && r1 >= ty0 && q0 < tx0 + kTileW && q1 >= tx0;
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1u)), n = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      if (w < warp) before += warp_counts[w];
      n += warp_counts[w];
    }
    if (keep) chosen[before] = g, chosen_roi[before] = k;
    __syncthreads();
    // 2. This cell's share of every chosen roi's samples.
    if (inside) {
      for (int s = 0; s < n; ++s) {
        const rd::geometry<float> r = chosen[s];
        const index_t kr = chosen_roi[s];
        int sy0, sy1, sx0, sx1;
        rd::samples_touching(r.start_h, r.bin_h, r.grid_h, lp.ph, lp.H, y, sy0, sy1);
        rd::samples_touching(r.start_w, r.bin_w, r.grid_w, lp.pw, lp.W, x, sx0, sx1);
        for (int sy = sy0; sy <= sy1; ++sy) {
          const int p = sy / r.grid_h;
          const float wy = rd::weight_of_cell(rd::sample_position(r.start_h, r.bin_h, r.grid_h, p, sy % r.grid_h), lp.H, y);
          if (wy == 0.0f) continue;
          for (int sx = sx0; sx <= sx1; ++sx) {
            const int q = sx / r.grid_w;
            const float wx = rd::weight_of_cell(rd::sample_position(r.start_w, r.bin_w, r.grid_w, q, sx % r.grid_w), lp.W, x);
            if (wx == 0.0f) continue;
            const float w = wy * wx * r.inv_count;
#pragma unroll
            for (int j = 0; j < kChannels; ++j)
              if (c0 + j < lp.C) acc[j] += w * load<float>(grad_output(kr, c0 + j, p, q));
          }
        }
      }
    }
    __syncthreads();  // `chosen` is rewritten by the next chunk
  }
  if (!inside) return;
#pragma unroll
  for (int j = 0; j < kChannels; ++j)
    if (c0 + j < lp.C) {
      T& dst = grad_input(b, c0 + j, y, x);
      dst = store<T>(accumulate ? load<float>(dst) + acc[j] : acc[j]);
    }
}

template <class T>
inline constexpr bool is_cuda_feature_v = std::is_same_v<std::remove_const_t<T>, float> || is_16bit_float_v<T>;

template <class VR>
launch_params params_of(index_t B, index_t C, const VR& rois, int H, int W, int ph, int pw, const roi_align_options& opt) {
  return {B, C, rois.extent(0), H, W, ph, pw, opt.spatial_scale, opt.sampling_ratio, opt.aligned};
}

}  // namespace roi_align_cuda_detail

/// CUDA: output[k, c] = RoI Align of input[b_k, c] over roi k. Feature maps of float, float16 or
/// bfloat16; rois float.
template <class TI, class TR, class TO>
[[nodiscard]] status roi_align_forward(const cuda& ctx, cuda_view<TI, 4> input, cuda_view<TR, 2> rois, cuda_view<TO, 4> output,
                                       const roi_align_options& opt = {}) {
  namespace rc = roi_align_cuda_detail;
  using T = std::remove_const_t<TI>;
  static_assert(rc::is_cuda_feature_v<T>, "CUDA roi_align takes float, float16 or bfloat16 feature maps");
  static_assert(std::is_same_v<std::remove_const_t<TR>, float>, "CUDA roi_align takes float rois");
  static_assert(std::is_same_v<TO, T>, "roi_align_forward: input and output differ in type (output non-const)");
  constexpr const char* fn = "roi_align_forward";
  DISTILL_TRY(roi_align_detail::check_views(fn, "input", input, rois, "output", output, opt));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "input", input));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "rois", rois));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "output", output));
  const rc::launch_params lp = rc::params_of(input.extent(0), input.extent(1), rois, static_cast<int>(input.extent(2)),
                                             static_cast<int>(input.extent(3)), static_cast<int>(output.extent(2)),
                                             static_cast<int>(output.extent(3)), opt);
  const index_t total = output.size();
  if (total == 0) return {};
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  const index_t blocks = std::min<index_t>(cuda_detail::ceil_div<index_t>(total, rc::kThreads), index_t(1) << 20);
  rc::roi_align_forward_element_per_thread_kernel<T><<<static_cast<unsigned>(blocks), rc::kThreads, 0, stream>>>(
      rc::map4<const T>{input.data(), input.stride(0), input.stride(1), input.stride(2), input.stride(3)},
      rc::roi_rows{rois.data(), rois.stride(0), rois.stride(1)}, lp, rc::map_of(output));
  return cuda_detail::launch_status(fn, stream);
}

/// CUDA: grad_input = dL/d(input) given grad_output (deterministic gather, see above).
template <class TR, class TG, class TI>
[[nodiscard]] status roi_align_backward(const cuda& ctx, cuda_view<TR, 2> rois, cuda_view<TG, 4> grad_output, cuda_view<TI, 4> grad_input,
                                        const roi_align_options& opt = {}) {
  namespace rc = roi_align_cuda_detail;
  using T = std::remove_const_t<TG>;
  static_assert(rc::is_cuda_feature_v<T>, "CUDA roi_align takes float, float16 or bfloat16 feature maps");
  static_assert(std::is_same_v<std::remove_const_t<TR>, float>, "CUDA roi_align takes float rois");
  static_assert(std::is_same_v<TI, T>, "roi_align_backward: grad_output and grad_input differ in type (grad_input non-const)");
  constexpr const char* fn = "roi_align_backward";
  DISTILL_TRY(roi_align_detail::check_views(fn, "grad_input", grad_input, rois, "grad_output", grad_output, opt));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "rois", rois));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_output", grad_output));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_input", grad_input));
  const rc::launch_params lp = rc::params_of(grad_input.extent(0), grad_input.extent(1), rois, static_cast<int>(grad_input.extent(2)),
                                             static_cast<int>(grad_input.extent(3)), static_cast<int>(grad_output.extent(2)),
                                             static_cast<int>(grad_output.extent(3)), opt);
  const index_t tiles = cuda_detail::ceil_div<index_t>(lp.H, rc::kTileH) * cuda_detail::ceil_div<index_t>(lp.W, rc::kTileW);
  const index_t groups = cuda_detail::ceil_div<index_t>(lp.C, rc::kChannels);
  if (tiles > 0x7fffffff || lp.B * groups > 65535)
    return fail(errc::shape_mismatch, fn, "batch x ceil(channels / 4) must be at most 65535 on CUDA");
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  rc::roi_align_backward_gather_tile_kernel<T><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(lp.B * groups)), rc::kThreads, 0, stream>>>(
      rc::map4<const T>{grad_output.data(), grad_output.stride(0), grad_output.stride(1), grad_output.stride(2), grad_output.stride(3)},
      rc::roi_rows{rois.data(), rois.stride(0), rois.stride(1)}, lp, groups, opt.accumulate, rc::map_of(grad_input));
  return cuda_detail::launch_status(fn, stream);
}

}  // namespace distill
