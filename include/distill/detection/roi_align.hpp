// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! RoI Align (He et al., "Mask R-CNN", 2017), with the semantics of torchvision.ops.roi_align:
//! pools each region of interest of a feature map to a fixed ph x pw grid by bilinear sampling,
//! without quantising the region. Forward and backward (gradient with respect to the feature
//! map) on CPU and CUDA.
//!
//! Input x [B, C, H, W]; rois [K, 5] rows (b, x1, y1, x2, y2): batch index b (an integer value)
//! and the box in input-image coordinates; output y [K, C, ph, pw] (ph, pw from its shape).
//! With s = spatial_scale and o = 0.5 when `aligned` (pixel centres at half-integers,
//! Detectron2's ROIAlignV2) else 0:
//!   x1' = x1 s - o,  y1' = y1 s - o,  w = x2 s - o - x1',  h = y2 s - o - y1'
//!   (not aligned: w = max(w, 1), h = max(h, 1));  bin = (h / ph, w / pw)
//!   grid gh x gw samples per bin: gh = sampling_ratio if > 0, else ceil(h / ph) (gw alike)
//!   sample (i, j) of bin (p, q):  Y = y1' + p h/ph + (i + 1/2) (h/ph) / gh,
//!                                 X = x1' + q w/pw + (j + 1/2) (w/pw) / gw
//!   y[k, c, p, q] = 1 / max(gh gw, 1) * sum_{i, j} bilinear(x[b, c], Y, X)
//! bilinear(f, Y, X): 0 when Y < -1, Y > H, X < -1 or X > W; else Y, X clamped below at 0,
//!   y0 = floor(Y), y1 = y0 + 1 (both H - 1 and Y = H - 1 when y0 >= H - 1), ly = Y - y0
//!   (x alike), value = (1-ly)(1-lx) f[y0,x0] + (1-ly) lx f[y0,x1] + ly (1-lx) f[y1,x0] + ly lx f[y1,x1].
//! The weights factor per axis, w(Y -> row) * w(X -> column), so y_k = A_k x_b B_k^T per channel
//! with sparse A_k [ph, H], B_k [pw, W], and the backward is its transpose:
//!   dL/dx[b, c] = sum_{k: b_k = b} A_k^T (dL/dy[k, c]) B_k
//! No gradient flows to the rois (they are proposals, as in Mask R-CNN).
//!
//! Entry points (CUDA overloads with the same arguments in kernels/distill/cuda/roi_align.cuh):
//!   roi_align_forward(ctx, input [B, C, H, W], rois [K, 5], output [K, C, ph, pw], options)
//!   roi_align_backward(ctx, rois [K, 5], grad_output [K, C, ph, pw], grad_input [B, C, H, W], options)
//! Neither needs scratch memory. CPU: float or double (rois of the same type); CUDA: feature maps
//! of float, float16 or bfloat16 (accumulated in float), rois float.
//!
//! Determinism: both backends give the same bits run to run. The CPU backward splits the
//! channels across threads and adds the rois in index order; the CUDA backward gathers: each
//! input element sums the contributions of the rois that touch it, in roi order, with no
//! atomics (see roi_align.cuh).
//!
//! Bad input: the CPU path refuses non-finite rois, inverted rois (x2 < x1 or y2 < y1) and batch
//! indices that are not integers in [0, B) (errc::non_finite / invalid_argument). The CUDA path
//! cannot inspect values without a synchronisation: there a roi whose batch index is outside
//! [0, B) pools zeros and receives no gradient, and a non-finite roi gives NaN or zeros.

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

struct roi_align_options {
  float spatial_scale = 1.0f;  ///< feature-map cells per input pixel (1/16 for a stride-16 map)
  int sampling_ratio = -1;     ///< samples per bin side; <= 0: adaptive, ceil(roi size / output size)
  bool aligned = false;        ///< shift by half a pixel (Detectron2's ROIAlignV2); torchvision's default is false
  bool accumulate = false;     ///< backward: add into grad_input instead of overwriting it
  /// CPU: refuse NaN/inf in `input` (forward) or `grad_output` (backward) with errc::non_finite
  /// before computing (the rois are always checked); off, they propagate to the bins that read
  /// them. CUDA: not inspected (docs/reliability.md).
  bool check_finite = false;
};

namespace roi_align_detail {

/// Where one region samples the feature map.
template <class Acc>
struct geometry {
  std::int64_t batch;    // -1 when the index is not a valid batch
  Acc start_h, start_w;  // y1', x1'
  Acc bin_h, bin_w;      // h / ph, w / pw
  int grid_h, grid_w;    // samples per bin side
  Acc inv_count;         // 1 / max(gh gw, 1)
};

template <class Acc>
DISTILL_HOST_DEVICE inline geometry<Acc> geometry_of(const Acc roi[5], std::int64_t batches, Acc scale, bool aligned, int ph, int pw,
                                                     int sampling_ratio) noexcept {
  geometry<Acc> g;
  const std::int64_t b = static_cast<std::int64_t>(roi[0]);
  g.batch = (roi[0] >= Acc(0) && b < batches) ? b : -1;
  const Acc offset = aligned ? Acc(0.5) : Acc(0);
  g.start_w = roi[1] * scale - offset;
  g.start_h = roi[2] * scale - offset;
  Acc w = roi[3] * scale - offset - g.start_w;
  Acc h = roi[4] * scale - offset - g.start_h;
  if (!aligned) {
    w = w > Acc(1) ? w : Acc(1);
    h = h > Acc(1) ? h : Acc(1);
  }
  g.bin_h = h / static_cast<Acc>(ph);
  g.bin_w = w / static_cast<Acc>(pw);
  using std::ceil;
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(h / static_cast<Acc>(ph)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(w / static_cast<Acc>(pw)));
  const int count = g.grid_h * g.grid_w;
  g.inv_count = Acc(1) / static_cast<Acc>(count > 1 ? count : 1);
  return g;
}

/// Position of sample i of bin p along one axis (the exact expression torchvision evaluates).
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc sample_position(Acc start, Acc bin, int grid, int p, int i) noexcept {
  return start + static_cast<Acc>(p) * bin + (static_cast<Acc>(i) + Acc(0.5)) * bin / static_cast<Acc>(grid);
}

/// The two cells one sample interpolates along one axis and their weights (both 0 outside).
template <class Acc>
struct axis_weights {
  int lo, hi;
  Acc w_lo, w_hi;
};

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE axis_weights<Acc> interpolate_axis(Acc pos, int size) noexcept {
  axis_weights<Acc> a;
  if (pos < Acc(-1) || pos > static_cast<Acc>(size)) {
    a.lo = a.hi = 0;
    a.w_lo = a.w_hi = Acc(0);
    return a;
  }
  if (pos <= Acc(0)) pos = Acc(0);
  a.lo = static_cast<int>(pos);
  if (a.lo >= size - 1) {
    a.lo = a.hi = size - 1;
    pos = static_cast<Acc>(a.lo);
  } else {
    a.hi = a.lo + 1;
  }
  a.w_hi = pos - static_cast<Acc>(a.lo);
  a.w_lo = Acc(1) - a.w_hi;
  return a;
}

/// Weight with which a sample at `pos` reads cell `cell` of an axis of `size` cells.
template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE Acc weight_of_cell(Acc pos, int size, int cell) noexcept {
  const axis_weights<Acc> a = interpolate_axis(pos, size);
  return (a.lo == cell ? a.w_lo : Acc(0)) + (a.hi == cell ? a.w_hi : Acc(0));
}

/// Range [first, last] of global sample indices s = p * grid + i along one axis that may read
/// `cell` (a superset: callers weigh each with weight_of_cell). Empty when first > last.
template <class Acc>
DISTILL_HOST_DEVICE inline void samples_touching(Acc start, Acc bin, int grid, int bins, int size, int cell, int& first,
                                                 int& last) noexcept {
  const int total = grid * bins;
  const Acc step = grid > 0 ? bin / static_cast<Acc>(grid) : Acc(0);
  if (total <= 0 || !(step > Acc(0)) || !(start - start == Acc(0))) {  // no samples, or a non-finite roi
    first = 0, last = -1;
    return;
  }
  // Samples at Y in [cell - 1, cell + 1) read `cell`; the edge cells also take the samples
  // clamped onto them (Y in [-1, 0] and [size - 1, size]).
  const Acc lo = cell == 0 ? Acc(-1) : static_cast<Acc>(cell - 1);
  const Acc hi = cell == size - 1 ? static_cast<Acc>(size) : static_cast<Acc>(cell + 1);
  using std::floor;
  using std::ceil;
  const Acc f = floor((lo - start) / step - Acc(0.5)) - Acc(1);
  const Acc l = ceil((hi - start) / step - Acc(0.5)) + Acc(1);
  first = f < Acc(0) ? 0 : (f > static_cast<Acc>(total) ? total : static_cast<int>(f));
  last = l < Acc(0) ? -1 : (l >= static_cast<Acc>(total - 1) ? total - 1 : static_cast<int>(l));
}

/// Conservative first and last cell a roi's samples can read along one axis, clamped to the map
/// (the CUDA backward's tile filter). Empty when first > last.
template <class Acc>
DISTILL_HOST_DEVICE inline void cells_touched(Acc start, Acc extent, int size, int& first, int& last) noexcept {
  using std::floor;
  const Acc lo = floor(start) - Acc(1), hi = floor(start + extent) + Acc(1);
  first = lo < Acc(0) ? 0 : (lo > static_cast<Acc>(size - 1) ? size : static_cast<int>(lo));
  last = hi < Acc(0) ? -1 : (hi > static_cast<Acc>(size - 1) ? size - 1 : static_cast<int>(hi));
}

template <class VI, class VR, class VO>
status check_views(const char* fn, const char* in_name, const VI& input, const VR& rois, const char* out_name, const VO& output,
                   const roi_align_options& opt) {
  DISTILL_TRY(check_present(fn, in_name, input));
  DISTILL_TRY(check_nonempty(fn, in_name, input));
  DISTILL_TRY(check_strides(fn, in_name, input));
  DISTILL_TRY(check_aligned(fn, in_name, input));
  const index_t K = rois.extent(0), C = input.extent(1);
  if (rois.extent(1) != 5)
    return fail(errc::shape_mismatch, fn, "'rois' has shape " + check_detail::shape_of(rois) + ", expected [K, 5] rows (b, x1, y1, x2, y2)");
  if (K > 0) {
    DISTILL_TRY(check_present(fn, "rois", rois));
    DISTILL_TRY(check_strides(fn, "rois", rois));
    DISTILL_TRY(check_aligned(fn, "rois", rois));
  }
  if (output.extent(0) != K || output.extent(1) != C)
    return fail(errc::shape_mismatch, fn,
                std::string("'") + out_name + "' has shape " + check_detail::shape_of(output) + ", expected [" + std::to_string(K) +
                    ", " + std::to_string(C) + ", ph, pw] (one pooled map per roi and channel of '" + in_name + "')");
  if (output.extent(2) <= 0 || output.extent(3) <= 0 || output.extent(2) > 1 << 20 || output.extent(3) > 1 << 20)
    return fail(errc::shape_mismatch, fn, std::string("'") + out_name + "' must have a pooled size ph x pw with 1 <= ph, pw <= 2^20");
  if (input.extent(2) > 1 << 30 || input.extent(3) > 1 << 30)
    return fail(errc::shape_mismatch, fn, std::string("'") + in_name + "' is wider or higher than 2^30");
  if (K > 0) {
    DISTILL_TRY(check_present(fn, out_name, output));
    DISTILL_TRY(check_strides(fn, out_name, output));
    DISTILL_TRY(check_aligned(fn, out_name, output));
  }
  DISTILL_TRY(check_positive(fn, "spatial_scale", opt.spatial_scale));
  return {};
}

/// CPU: rois finite, not inverted, batch index an integer in [0, B).
template <class VR>
status check_roi_values(const char* fn, const VR& rois, index_t batches) {
  for (index_t k = 0; k < rois.extent(0); ++k) {
    double r[5];
    for (int c = 0; c < 5; ++c) r[c] = static_cast<double>(rois(k, c));
    for (int c = 0; c < 5; ++c)
      if (!std::isfinite(r[c])) return fail(errc::non_finite, fn, "'rois' row " + std::to_string(k) + " is not finite");
    if (r[0] < 0 || r[0] >= static_cast<double>(batches) || r[0] != std::floor(r[0]))
      return fail(errc::invalid_argument, fn,
                  "'rois' row " + std::to_string(k) + " has batch index " + check_detail::num(r[0]) + ", not an integer in [0, " +
                      std::to_string(batches) + ")");
    if (r[3] < r[1] || r[4] < r[2])
      return fail(errc::invalid_argument, fn, "'rois' row " + std::to_string(k) + " is inverted (needs x2 >= x1 and y2 >= y1)");
  }
  return {};
}

/// One sample along one axis on the CPU: the element offsets (cell * stride) it reads and their weights.
template <class Acc>
struct axis_read {
  index_t lo, hi;
  Acc w_lo, w_hi;
};

/// Per-axis sample table of one roi, entry p * grid + i, offsets along an axis of `stride`.
template <class Acc>
void axis_table(Acc start, Acc bin, int grid, int bins, int size, index_t stride, std::vector<axis_read<Acc>>& out) {
  out.resize(static_cast<std::size_t>(grid > 0 ? grid * bins : 0));
  for (int p = 0; p < bins; ++p)
    for (int i = 0; i < grid; ++i) {
      const axis_weights<Acc> a = interpolate_axis(sample_position(start, bin, grid, p, i), size);
      out[static_cast<std::size_t>(p * grid + i)] = {a.lo * stride, a.hi * stride, a.w_lo, a.w_hi};
    }
}

template <class VR, class Acc = std::remove_const_t<typename VR::element_type>>
geometry<Acc> roi_geometry(const VR& rois, index_t k, index_t batches, const roi_align_options& opt, int ph, int pw) {
  Acc r[5];
  for (int c = 0; c < 5; ++c) r[c] = rois(k, c);
  return geometry_of(r, batches, static_cast<Acc>(opt.spatial_scale), opt.aligned, ph, pw, opt.sampling_ratio);
}

}  // namespace roi_align_detail

/// output[k, c] = RoI Align of input[b_k, c] over roi k.
template <class TI, class TR, class TO>
[[nodiscard]] status roi_align_forward(const cpu& ctx, host_view<TI, 4> input, host_view<TR, 2> rois, host_view<TO, 4> output,
                                       const roi_align_options& opt = {}) {
  using T = std::remove_const_t<TI>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "roi_align on the CPU takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TR>, T> && std::is_same_v<TO, T>,
                "roi_align_forward: input, rois and output differ in type (output non-const)");
  namespace rd = roi_align_detail;
  constexpr const char* fn = "roi_align_forward";
  DISTILL_TRY(rd::check_views(fn, "input", input, rois, "output", output, opt));
  const index_t B = input.extent(0), C = input.extent(1), K = rois.extent(0);
  const int H = static_cast<int>(input.extent(2)), W = static_cast<int>(input.extent(3));
  const int ph = static_cast<int>(output.extent(2)), pw = static_cast<int>(output.extent(3));
  DISTILL_TRY(rd::check_roi_values(fn, rois, B));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "input", input));
  // Per roi, the four (offset, weight) reads of every sample, shared by all its channels (the
  // weights include 1 / count); per channel the loop is then loads and multiply-adds only.
  struct sample_reads {
    index_t offset[4];
    T weight[4];
  };
  parallel_for(ctx, K * C, [&](index_t i0, index_t i1) {
    std::vector<rd::axis_read<T>> ys, xs;
    std::vector<sample_reads> reads;
    index_t reads_of = -1;
    int per_bin = 0;
    for (index_t i = i0; i < i1; ++i) {
      const index_t k = i / C, c = i % C;
      const rd::geometry<T> g = rd::roi_geometry(rois, k, B, opt, ph, pw);
      if (reads_of != k) {
        rd::axis_table(g.start_h, g.bin_h, g.grid_h, ph, H, input.stride(2), ys);
        rd::axis_table(g.start_w, g.bin_w, g.grid_w, pw, W, input.stride(3), xs);
        per_bin = g.grid_h * g.grid_w;
        reads.clear();
        for (int p = 0; p < ph; ++p)
          for (int q = 0; q < pw; ++q)
            for (int a = 0; a < g.grid_h; ++a)
              for (int e = 0; e < g.grid_w; ++e) {
                const rd::axis_read<T>& y = ys[static_cast<std::size_t>(p * g.grid_h + a)];
                const rd::axis_read<T>& x = xs[static_cast<std::size_t>(q * g.grid_w + e)];
                const T wy_lo = y.w_lo * g.inv_count, wy_hi = y.w_hi * g.inv_count;
                reads.push_back({{y.lo + x.lo, y.lo + x.hi, y.hi + x.lo, y.hi + x.hi},
                                 {wy_lo * x.w_lo, wy_lo * x.w_hi, wy_hi * x.w_lo, wy_hi * x.w_hi}});
              }
        reads_of = k;
      }
      const TI* plane = &input(g.batch, c, 0, 0);
      const sample_reads* r = reads.data();
      for (int p = 0; p < ph; ++p)
        for (int q = 0; q < pw; ++q) {
          T sum = T(0);
          for (int n = 0; n < per_bin; ++n, ++r)
            sum += r->weight[0] * plane[r->offset[0]] + r->weight[1] * plane[r->offset[1]] + r->weight[2] * plane[r->offset[2]] +
                   r->weight[3] * plane[r->offset[3]];
          output(k, c, p, q) = sum;
        }
    }
  }, 4);
  return {};
}

/// grad_input = dL/d(input) given grad_output = dL/d(output) (overwritten unless accumulate).
template <class TR, class TG, class TI>
[[nodiscard]] status roi_align_backward(const cpu& ctx, host_view<TR, 2> rois, host_view<TG, 4> grad_output, host_view<TI, 4> grad_input,
                                        const roi_align_options& opt = {}) {
  using T = std::remove_const_t<TG>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "roi_align on the CPU takes float or double");
  static_assert(std::is_same_v<std::remove_const_t<TR>, T> && std::is_same_v<TI, T>,
                "roi_align_backward: rois, grad_output and grad_input differ in type (grad_input non-const)");
  namespace rd = roi_align_detail;
  constexpr const char* fn = "roi_align_backward";
  DISTILL_TRY(rd::check_views(fn, "grad_input", grad_input, rois, "grad_output", grad_output, opt));
  const index_t B = grad_input.extent(0), C = grad_input.extent(1), K = rois.extent(0);
  const int H = static_cast<int>(grad_input.extent(2)), W = static_cast<int>(grad_input.extent(3));
  const int ph = static_cast<int>(grad_output.extent(2)), pw = static_cast<int>(grad_output.extent(3));
  DISTILL_TRY(rd::check_roi_values(fn, rois, B));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "grad_output", grad_output));
  // Each thread owns a range of channels of every image, so the scatter needs no atomics and
  // the rois are added in index order whatever the thread count.
  parallel_for(ctx, C, [&](index_t c0, index_t c1) {
    if (!opt.accumulate)
      for (index_t b = 0; b < B; ++b)
        for (index_t c = c0; c < c1; ++c)
          for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x) grad_input(b, c, y, x) = T(0);
    std::vector<rd::axis_read<T>> ys, xs;
    for (index_t k = 0; k < K; ++k) {
      const rd::geometry<T> g = rd::roi_geometry(rois, k, B, opt, ph, pw);
      rd::axis_table(g.start_h, g.bin_h, g.grid_h, ph, H, grad_input.stride(2), ys);
      rd::axis_table(g.start_w, g.bin_w, g.grid_w, pw, W, grad_input.stride(3), xs);
      for (index_t c = c0; c < c1; ++c) {
        T* plane = &grad_input(g.batch, c, 0, 0);
        for (int p = 0; p < ph; ++p)
          for (int q = 0; q < pw; ++q) {
            const T go = grad_output(k, c, p, q) * g.inv_count;
            for (int a = 0; a < g.grid_h; ++a) {
              const rd::axis_read<T>& y = ys[static_cast<std::size_t>(p * g.grid_h + a)];
              T* row_lo = plane + y.lo;
              T* row_hi = plane + y.hi;
              const T g_lo = go * y.w_lo, g_hi = go * y.w_hi;
              for (int e = 0; e < g.grid_w; ++e) {
                const rd::axis_read<T>& x = xs[static_cast<std::size_t>(q * g.grid_w + e)];
                row_lo[x.lo] += g_lo * x.w_lo;
                row_lo[x.hi] += g_lo * x.w_hi;
                row_hi[x.lo] += g_hi * x.w_lo;
                row_hi[x.hi] += g_hi * x.w_hi;
              }
            }
          }
      }
    }
  }, 1);
  return {};
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/roi_align.cuh"
#endif
