// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA path of FFSD's attention diversity (math and the CPU path:
//! distill/attention/attention_diversity.hpp).
//!
//! One block per sample (N = H W is small, a few thousand at most):
//!   1. the peer map R (each position's channel sum in channel order) into the workspace,
//!      nu = ||R|| by a block reduction, y = R / max(nu, eps);
//!   2. theta, the k-th smallest y (k = floor(N / 3)), by exact rank counting: y[n] is it when
//!      #{y < y[n]} < k <= #{y <= y[n]}; every such n holds the same value, so ties give the
//!      CPU's theta and sign(y - theta) = 0 on all of them. O(N^2) compares, reads hit L1/L2;
//!   3. loss / gradient: the student map Q, ||Q||, sum (u - t)^2 and <u, u - t> by block
//!      reductions, then the column factor g_Q into the workspace and dL/dA over (c, n) with
//!      consecutive threads on consecutive positions; or the target / shifted features.
//! Reductions run in a fixed tree over a fixed thread-to-element assignment (deterministic).
//! Reduction `none` writes each sample's loss from its block; mean / sum add the per-sample
//! losses in one block afterwards. Features: any strides; no finiteness check on CUDA.

#if !defined(__CUDACC__)
#error "distill/cuda/attention_diversity.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "distill/attention/attention_diversity.hpp"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/cuda/runtime.cuh"

namespace distill {
namespace attention_diversity_cuda {

inline constexpr int block = 256;

/// A [B, C, H, W] feature tensor with any strides, as kernels see it.
template <class T>
struct features {
  T* data;
  index_t sb, sc, sh, sw, C, W;
  __device__ T& operator()(index_t b, index_t c, index_t n) const { return data[b * sb + c * sc + (n / W) * sh + (n % W) * sw]; }
};

template <class V>
features<typename V::element_type> make_features(const V& v) {
  return {v.data(), v.stride(0), v.stride(1), v.stride(2), v.stride(3), v.extent(1), v.extent(3)};
}

/// (1/C) sum_c f(b, c, n)^2, channels in order.
template <class T>
__device__ float energy(const features<T>& f, index_t b, index_t n) {
  float s = 0.f;
  for (index_t c = 0; c < f.C; ++c) {
    const float v = load<float>(f(b, c, n));
    s += v * v;
  }
  return s / static_cast<float>(f.C);
}

struct peer_stats {
  float nu, theta;
};

/// Steps 1 and 2 for sample b: y (N floats of the workspace) and nu, theta. Every thread returns them.
template <class TP>
__device__ peer_stats peer_statistics(const features<TP>& peer, index_t b, index_t N, float eps, float* y, float* red) {
  __shared__ float theta;
  if (threadIdx.x == 0) theta = __int_as_float(0x7fc00000);  // NaN unless found (a NaN map finds none)
  float ss = 0.f;
  for (index_t n = threadIdx.x; n < N; n += block) {
    const float r = energy(peer, b, n);
    y[n] = r;
    ss += r * r;
  }
  const float nu = sqrtf(cuda_detail::block_sum<block>(ss, red));
  const float scale = nu < eps ? eps : nu;
  for (index_t n = threadIdx.x; n < N; n += block) y[n] /= scale;  // the thread that wrote y[n]
  __syncthreads();
  const index_t k = N / 3;
  for (index_t n = threadIdx.x; n < N; n += block) {
    const float v = y[n];
    index_t below = 0, at_most = 0;
    for (index_t m = 0; m < N; ++m) {
      const float u = y[m];
      below += u < v;
      at_most += u <= v;
    }
    if (below < k && k <= at_most) theta = v;  // every writer writes the same value
  }
  __syncthreads();
  return {nu, theta};
}

/// t[n] = (nu/2 - y) sign(y - theta) + nu/2, sign(0) = 0 (as the CPU's peer_map::target).
__device__ DISTILL_FORCEINLINE float diversity_target(float y, const peer_stats& p) {
  const float d = y - p.theta;
  const float s = d > 0.f ? 1.f : d < 0.f ? -1.f : 0.f;
  return (p.nu / 2.f - y) * s + p.nu / 2.f;
}

struct loss_args {
  float eps;
  float loss_weight;  ///< w r
  float grad_weight;  ///< grad_scale w r
  bool accumulate;
  int loss_mode;      ///< 0 none requested, 1 per sample (reduction none) into `loss`, 2 into sample_loss
  float* loss;
  index_t loss_stride;
};

template <class TS, class TP, class TG>
__global__ void __launch_bounds__(block)
    attention_diversity_loss_kernel(features<const TS> student, features<const TP> peer, features<TG> grad, index_t N,
                                    attention_diversity_detail::cuda_scratch ws, loss_args a) {
  __shared__ float red[block / 32];
  const index_t b = blockIdx.x;
  float* y = ws.peer_map + b * N;
  float* q = ws.student_map + b * N;
  const peer_stats p = peer_statistics(peer, b, N, a.eps, y, red);
  float ss = 0.f;
  for (index_t n = threadIdx.x; n < N; n += block) {
    const float v = energy(student, b, n);
    q[n] = v;
    ss += v * v;
  }
  const float norm = sqrtf(cuda_detail::block_sum<block>(ss, red));
  const bool clamped = !(norm >= a.eps);
  const float ns = clamped ? a.eps : norm;
  float l = 0.f, ug = 0.f;  // sum (u - t)^2 and <u, u - t>
  for (index_t n = threadIdx.x; n < N; n += block) {
    const float u = q[n] / ns, d = u - diversity_target(y[n], p);
    l += d * d;
    ug += u * d;
  }
  l = cuda_detail::block_sum<block>(l, red);
  ug = cuda_detail::block_sum<block>(ug, red);
  if (threadIdx.x == 0) {
    const float sample = l / static_cast<float>(N);
    if (a.loss_mode == 1) a.loss[b * a.loss_stride] = a.loss_weight * sample;
    if (a.loss_mode == 2) ws.sample_loss[b] = sample;
  }
  if (grad.data == nullptr) return;
  const float k = a.grad_weight * 2.f / static_cast<float>(N);
  for (index_t n = threadIdx.x; n < N; n += block) {
    const float u = q[n] / ns, gu = u - diversity_target(y[n], p);
    q[n] = k * (clamped ? gu : gu - u * ug) / ns * 2.f / static_cast<float>(student.C);  // g_Q (2 / C), over Q
  }
  __syncthreads();
  for (index_t i = threadIdx.x; i < student.C * N; i += block) {
    const index_t c = i / N, n = i - c * N;
    TG& dst = grad(b, c, n);
    const float v = q[n] * load<float>(student(b, c, n));
    dst = store<TG>(a.accumulate ? load<float>(dst) + v : v);
  }
}

/// loss[0] = w r sum_b sample_loss[b]: one block, fixed assignment and tree. (A template, as a
/// header's kernels must be: one definition in every translation unit.)
template <int Block>
__global__ void __launch_bounds__(Block) attention_diversity_sum_kernel(const float* sample_loss, index_t B, float weight, float* loss) {
  __shared__ float red[Block / 32];
  float s = 0.f;
  for (index_t b = threadIdx.x; b < B; b += Block) s += sample_loss[b];
  s = cuda_detail::block_sum<Block>(s, red);
  if (threadIdx.x == 0) loss[0] = weight * s;
}

/// The target t [B, H, W] (shift false) or the shifted features peer + (t - y) nu / C' (shift true).
/// In place (out = peer) is safe: each element is read and then written by the same thread.
template <bool Shift, class TP, class TO>
__global__ void __launch_bounds__(block)
    attention_diversity_peer_kernel(features<const TP> peer, features<TO> out, index_t N, float eps, float* peer_map) {
  __shared__ float red[block / 32];
  const index_t b = blockIdx.x;
  float* y = peer_map + b * N;
  const peer_stats p = peer_statistics(peer, b, N, eps, y, red);
  if constexpr (!Shift) {
    for (index_t n = threadIdx.x; n < N; n += block) out(b, 0, n) = store<TO>(diversity_target(y[n], p));
  } else {
    const float scale = p.nu / static_cast<float>(peer.C);
    for (index_t i = threadIdx.x; i < peer.C * N; i += block) {
      const index_t c = i / N, n = i - c * N;
      const float d = (diversity_target(y[n], p) - y[n]) * scale;
      out(b, c, n) = store<TO>(load<float>(peer(b, c, n)) + d);
    }
  }
}

template <class T>
constexpr void check_type() {
  static_assert(!std::is_same_v<std::remove_const_t<T>, double>, "attention_diversity (CUDA): float, float16 and bfloat16 only");
  static_assert(is_supported_float_v<std::remove_const_t<T>>, "attention_diversity: unsupported element type");
}

inline status check_grid(const char* fn, index_t B) {
  if (B > 2147483647) return fail(errc::invalid_argument, fn, "the batch is too large for the CUDA path (above 2^31 - 1 samples)");
  return {};
}

template <class TS, class TP, class TG>
status run(const char* fn, const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TP, 4> peer, cuda_view<float, 1> loss,
           cuda_view<TG, 4> grad, cuda_view<std::byte, 1> workspace, const attention_diversity_options& o) {
  check_type<TS>();
  check_type<TP>();
  using namespace attention_diversity_detail;
  DISTILL_TRY(check_options(fn, o));
  DISTILL_TRY(check_pair(fn, student, peer));
  const index_t B = student.extent(0), N = student.extent(2) * student.extent(3);
  DISTILL_TRY(check_loss(fn, loss, B, o.reduction));
  if (!grad.empty()) DISTILL_TRY(check_same_shape(fn, "grad_student", grad, "student", student));
  DISTILL_TRY(check_grid(fn, B));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "student", student));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "peer", peer));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "loss", loss));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "grad_student", grad));
  DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, attention_diversity_workspace_size(ctx, B, student.extent(2), student.extent(3)),
                                                  "attention_diversity_workspace_size"));
  workspace_carver carver(workspace.data());
  const cuda_scratch ws(carver, B, N);
  const double r = o.reduction == reduction::sum || o.reduction == reduction::none ? 1.0 : 1.0 / static_cast<double>(B);  // as on the CPU
  loss_args a{};
  a.eps = static_cast<float>(o.eps);
  a.loss_weight = static_cast<float>(o.weight * r);
  a.grad_weight = static_cast<float>(o.grad_scale * o.weight * r);
  a.accumulate = o.accumulate;
  a.loss_mode = loss.empty() ? 0 : o.reduction == reduction::none ? 1 : 2;
  a.loss = loss.empty() ? nullptr : loss.data();
  a.loss_stride = loss.empty() ? 0 : loss.stride(0);
  features<TG> g{};
  if (!grad.empty()) g = make_features(grad);
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  attention_diversity_loss_kernel<std::remove_const_t<TS>, std::remove_const_t<TP>, TG>
      <<<static_cast<unsigned>(B), block, 0, stream>>>(make_features(cuda_view<const std::remove_const_t<TS>, 4>(student)),
                                                      make_features(cuda_view<const std::remove_const_t<TP>, 4>(peer)), g, N, ws, a);
  DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  if (a.loss_mode == 2) {
    attention_diversity_sum_kernel<block><<<1, block, 0, stream>>>(ws.sample_loss, B, a.loss_weight, loss.data());
    DISTILL_TRY(cuda_detail::launch_status(fn, stream));
  }
  return {};
}

template <bool Shift, class TP, class TO>
status run_peer(const char* fn, const cuda& ctx, cuda_view<TP, 4> peer, features<TO> out, const cuda_view<std::byte, 1>& workspace,
                double eps) {
  check_type<TP>();
  const index_t B = peer.extent(0);
  DISTILL_TRY(check_grid(fn, B));
  DISTILL_TRY(cuda_detail::check_device_view(fn, "peer", peer));
  DISTILL_TRY(cuda_detail::check_device_workspace(fn, workspace, attention_diversity_workspace_size(ctx, B, peer.extent(2), peer.extent(3)),
                                                  "attention_diversity_workspace_size"));
  workspace_carver carver(workspace.data());
  const attention_diversity_detail::cuda_scratch ws(carver, B, peer.extent(2) * peer.extent(3));
  const cudaStream_t stream = cuda_detail::stream_of(ctx);
  attention_diversity_peer_kernel<Shift, std::remove_const_t<TP>, TO><<<static_cast<unsigned>(B), block, 0, stream>>>(
      make_features(cuda_view<const std::remove_const_t<TP>, 4>(peer)), out, peer.extent(2) * peer.extent(3), static_cast<float>(eps),
      ws.peer_map);
  return cuda_detail::launch_status(fn, stream);
}

}  // namespace attention_diversity_cuda

/// L (see attention_diversity.hpp) written to `loss` on the context's stream: (1), or (B) with reduction none.
template <class TS, class TP>
[[nodiscard]] status attention_diversity_forward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TP, 4> peer,
                                                 cuda_view<accum_t<std::remove_const_t<TS>>, 1> loss, cuda_view<std::byte, 1> workspace,
                                                 const attention_diversity_options& opt = {}) {
  constexpr const char* fn = "attention_diversity_forward";
  DISTILL_TRY(check_present(fn, "loss", loss));
  return attention_diversity_cuda::run(fn, ctx, student, peer, loss, cuda_view<std::remove_const_t<TS>, 4>{}, workspace, opt);
}

/// dL/dstudent [B, C, H, W] (times grad_scale; added with accumulate) on the context's stream.
template <class TS, class TP>
[[nodiscard]] status attention_diversity_backward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TP, 4> peer,
                                                  cuda_view<std::remove_const_t<TS>, 4> grad_student, cuda_view<std::byte, 1> workspace,
                                                  const attention_diversity_options& opt = {}) {
  constexpr const char* fn = "attention_diversity_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return attention_diversity_cuda::run(fn, ctx, student, peer, cuda_view<float, 1>{}, grad_student, workspace, opt);
}

/// Loss (may be absent) and gradient in one pass, on the context's stream.
template <class TS, class TP>
[[nodiscard]] status attention_diversity_forward_backward(const cuda& ctx, cuda_view<TS, 4> student, cuda_view<TP, 4> peer,
                                                          cuda_view<accum_t<std::remove_const_t<TS>>, 1> loss,
                                                          cuda_view<std::remove_const_t<TS>, 4> grad_student,
                                                          cuda_view<std::byte, 1> workspace, const attention_diversity_options& opt = {}) {
  constexpr const char* fn = "attention_diversity_forward_backward";
  DISTILL_TRY(check_present(fn, "grad_student", grad_student));
  return attention_diversity_cuda::run(fn, ctx, student, peer, loss, grad_student, workspace, opt);
}

/// The diversity target t [B, H, W] of the peer's features, on the context's stream.
template <class TP, class TT>
[[nodiscard]] status attention_diversity_target(const cuda& ctx, cuda_view<TP, 4> peer, cuda_view<TT, 3> target,
                                                cuda_view<std::byte, 1> workspace, double eps = 1e-12) {
  static_assert(!std::is_const_v<TT>, "attention_diversity_target: 'target' is an output");
  attention_diversity_cuda::check_type<TT>();
  constexpr const char* fn = "attention_diversity_target";
  DISTILL_TRY(attention_diversity_detail::check_peer(fn, peer));
  DISTILL_TRY(check_shape(fn, "target", target, {peer.extent(0), peer.extent(2), peer.extent(3)}));
  if (!std::isfinite(eps) || eps <= 0) return fail(errc::invalid_argument, fn, "'eps' must be finite and > 0");
  DISTILL_TRY(cuda_detail::check_device_view(fn, "target", target));
  // target seen as [B, 1, H, W]
  const attention_diversity_cuda::features<TT> out{target.data(), target.stride(0), 0, target.stride(1), target.stride(2), 1,
                                                   target.extent(2)};
  return attention_diversity_cuda::run_peer<false>(fn, ctx, peer, out, workspace, eps);
}

/// shifted [B, C', H, W] = peer + (t - y) nu / C' on the context's stream. `shifted` may be the peer's own memory.
template <class TP, class TO>
[[nodiscard]] status attention_diversity_shift(const cuda& ctx, cuda_view<TP, 4> peer, cuda_view<TO, 4> shifted,
                                               cuda_view<std::byte, 1> workspace, double eps = 1e-12) {
  static_assert(!std::is_const_v<TO>, "attention_diversity_shift: 'shifted' is an output");
  attention_diversity_cuda::check_type<TO>();
  constexpr const char* fn = "attention_diversity_shift";
  DISTILL_TRY(attention_diversity_detail::check_peer(fn, peer));
  DISTILL_TRY(check_same_shape(fn, "shifted", shifted, "peer", peer));
  if (!std::isfinite(eps) || eps <= 0) return fail(errc::invalid_argument, fn, "'eps' must be finite and > 0");
  DISTILL_TRY(cuda_detail::check_device_view(fn, "shifted", shifted));
  return attention_diversity_cuda::run_peer<true>(fn, ctx, peer, attention_diversity_cuda::make_features(shifted), workspace, eps);
}

}  // namespace distill
