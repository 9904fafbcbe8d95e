// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/batch_norm.hpp.
//!
//! Forward (training): grid (C, chunks) blocks each take a range of images of one channel and
//! write (count, mean, M2) from two passes over their slice (the second from L1/L2); one thread
//! per channel merges the chunk partials in order (Chan et al.'s parallel variance), writes the
//! saved statistics and updates the running ones; an element-wise kernel normalises. Backward:
//! the same grid sums dy and dy * xhat per chunk, one thread per channel adds them in order and
//! writes dgamma/dbeta and the two per-channel means, an element-wise kernel writes dx.
//! DRAM traffic: x read twice (statistics, normalise) + y written; backward x, dy read twice.
//! Scratch (in the cuda_blas): 3 * C * chunks + 2 * C floats.

#if !defined(__CUDACC__)
#error "distill/cuda/nn_batch_norm.cuh must be compiled by nvcc"
#endif

#include "distill/cuda/nn_blas.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/nn/batch_norm.hpp"

namespace distill::nn {
namespace cuda_detail {

inline constexpr int bn_block = 256;

inline index_t bn_chunks(index_t N, index_t C) {
  index_t chunks = ceil_div<index_t>(static_cast<index_t>(current_device_properties().sms) * 2, C);
  if (chunks < 1) chunks = 1;
  if (chunks > N) chunks = N;
  if (chunks > 65535) chunks = 65535;
  return chunks;
}

template <class T>
__global__ void nn_batch_norm_stats_partial_kernel(nchw_arg<const T> x, index_t N, index_t S, index_t per, float* partial) {
  __shared__ float smem[bn_block / 32];
  const index_t c = blockIdx.x, k = blockIdx.y;
  const index_t n0 = k * per, n1 = n0 + per < N ? n0 + per : N;
  const index_t count = n1 > n0 ? (n1 - n0) * S : 0;
  float s = 0.f;
  for (index_t i = threadIdx.x; i < count; i += bn_block) s += load<float>(x(n0 + i / S, c, i % S));
  const float mean = count ? block_sum<bn_block>(s, smem) / static_cast<float>(count) : 0.f;
  float m2 = 0.f;
  for (index_t i = threadIdx.x; i < count; i += bn_block) {
    const float d = load<float>(x(n0 + i / S, c, i % S)) - mean;
    m2 += d * d;
  }
  m2 = count ? block_sum<bn_block>(m2, smem) : 0.f;
  if (threadIdx.x == 0) {
    float* o = partial + (c * gridDim.y + k) * 3;
    o[0] = static_cast<float>(count);
    o[1] = mean;
    o[2] = m2;
  }
}

template <class T>
__global__ void nn_batch_norm_stats_finalize_kernel(const float* partial, index_t C, index_t chunks, float eps, float momentum,
                                                    T* running_mean, T* running_var, T* saved_mean, T* saved_invstd) {
  const index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double n = 0, mean = 0, m2 = 0;
  for (index_t k = 0; k < chunks; ++k) {
    const float* p = partial + (c * chunks + k) * 3;
    const double nb = p[0];
    if (nb == 0) continue;
    const double delta = static_cast<double>(p[1]) - mean, tot = n + nb;
    mean += delta * nb / tot;
    m2 += static_cast<double>(p[2]) + delta * delta * n * nb / tot;
    n = tot;
  }
  const double var = m2 / n;
  saved_mean[c] = store<T>(static_cast<float>(mean));
  saved_invstd[c] = store<T>(static_cast<float>(1.0 / sqrt(var + eps)));
  if (running_mean) {
    running_mean[c] = store<T>((1.f - momentum) * load<float>(running_mean[c]) + momentum * static_cast<float>(mean));
    running_var[c] = store<T>((1.f - momentum) * load<float>(running_var[c]) + momentum * static_cast<float>(var * n / (n - 1)));
  }
}

template <class T>
__global__ void nn_batch_norm_eval_stats_kernel(index_t C, float eps, const T* running_mean, const T* running_var, T* saved_mean,
                                                T* saved_invstd) {
  const index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  saved_mean[c] = running_mean[c];
  saved_invstd[c] = store<T>(rsqrtf(load<float>(running_var[c]) + eps));
}

template <class T>
__global__ void nn_batch_norm_normalize_kernel(nchw_arg<const T> x, nchw_arg<T> y, index_t N, index_t C, index_t S,
                                               const T* mean, const T* invstd, const T* gamma, const T* beta) {
  const index_t n_all = N * C * S;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_all;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t n = i / (C * S), rem = i - n * C * S, c = rem / S, s = rem - c * S;
    const float a = (gamma ? load<float>(gamma[c]) : 1.f) * load<float>(invstd[c]);
    const float o = (beta ? load<float>(beta[c]) : 0.f) - load<float>(mean[c]) * a;
    y(n, c, s) = store<T>(a * load<float>(x(n, c, s)) + o);
  }
}

template <class T>
__global__ void nn_batch_norm_backward_partial_kernel(nchw_arg<const T> x, nchw_arg<const T> dy, index_t N, index_t S, index_t per,
                                                      const T* mean, const T* invstd, float* partial) {
  __shared__ float smem[bn_block / 32];
  const index_t c = blockIdx.x, k = blockIdx.y;
  const index_t n0 = k * per, n1 = n0 + per < N ? n0 + per : N;
  const index_t count = n1 > n0 ? (n1 - n0) * S : 0;
  const float mu = load<float>(mean[c]), is = load<float>(invstd[c]);
  float sdy = 0.f, sdyx = 0.f;
  for (index_t i = threadIdx.x; i < count; i += bn_block) {
    const index_t n = n0 + i / S, s = i % S;
    const float g = load<float>(dy(n, c, s));
    sdy += g;
    sdyx += g * (load<float>(x(n, c, s)) - mu) * is;
  }
  sdy = block_sum<bn_block>(sdy, smem);
  sdyx = block_sum<bn_block>(sdyx, smem);
  if (threadIdx.x == 0) {
    float* o = partial + (c * gridDim.y + k) * 2;
    o[0] = sdy;
    o[1] = sdyx;
  }
}

template <class T>
__global__ void nn_batch_norm_backward_finalize_kernel(const float* partial, index_t C, index_t chunks, float M, bool training,
                                                       T* dgamma, T* dbeta, bool accumulate, float* coef) {
  const index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sdy = 0.f, sdyx = 0.f;
  for (index_t k = 0; k < chunks; ++k) {
    sdy += partial[(c * chunks + k) * 2];
    sdyx += partial[(c * chunks + k) * 2 + 1];
  }
  if (dgamma) dgamma[c] = store<T>(accumulate ? load<float>(dgamma[c]) + sdyx : sdyx);
  if (dbeta) dbeta[c] = store<T>(accumulate ? load<float>(dbeta[c]) + sdy : sdy);
  coef[2 * c] = training ? sdy / M : 0.f;
  coef[2 * c + 1] = training ? sdyx / M : 0.f;
}

template <class T>
__global__ void nn_batch_norm_backward_dx_kernel(nchw_arg<const T> x, nchw_arg<const T> dy, nchw_arg<T> dx, index_t N, index_t C,
                                                 index_t S, const T* mean, const T* invstd, const T* gamma, const float* coef,
                                                 bool accumulate) {
  const index_t n_all = N * C * S;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_all;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t n = i / (C * S), rem = i - n * C * S, c = rem / S, s = rem - c * S;
    const float is = load<float>(invstd[c]);
    const float a = (gamma ? load<float>(gamma[c]) : 1.f) * is;
    const float xh = (load<float>(x(n, c, s)) - load<float>(mean[c])) * is;
    const float v = a * (load<float>(dy(n, c, s)) - coef[2 * c] - xh * coef[2 * c + 1]);
    dx(n, c, s) = store<T>(accumulate ? load<float>(dx(n, c, s)) + v : v);
  }
}

template <class V>
status check_channel_vector(const char* fn, const char* name, const V& v, index_t C) {
  if (v.empty()) return {};
  DISTILL_TRY(check_shape(fn, name, v, {C}));
  if (!v.contiguous()) return fail(errc::unsupported_layout, fn, std::string("'") + name + "' must be contiguous on CUDA");
  return check_device_view(fn, name, v);
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status batch_norm_forward(const cuda_blas& blas, in_view<T, 3, cuda_space> x, in_view<T, 1, cuda_space> gamma,
                                        in_view<T, 1, cuda_space> beta, out_view<T, 1, cuda_space> running_mean,
                                        out_view<T, 1, cuda_space> running_var, cuda_view<T, 3> y,
                                        out_view<T, 1, cuda_space> saved_mean, out_view<T, 1, cuda_space> saved_invstd,
                                        const batch_norm_params& p) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::batch_norm_forward";
  DISTILL_TRY(nn_detail::check_batch_norm(fn, x, gamma, p));
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "y", y, "x", x));
  DISTILL_TRY(check_device_input(fn, "y", y));
  const index_t N = x.extent(0), C = x.extent(1), S = x.extent(2);
  DISTILL_TRY(check_present(fn, "saved_mean", saved_mean));
  DISTILL_TRY(check_present(fn, "saved_invstd", saved_invstd));
  if (running_mean.empty() != running_var.empty())
    return fail(errc::invalid_argument, fn, "'running_mean' and 'running_var' must be both present or both absent");
  if (!p.training && running_mean.empty())
    return fail(errc::invalid_argument, fn, "evaluation mode needs 'running_mean' and 'running_var'");
  for (auto [name, v] : {std::pair{"gamma", gamma}, std::pair{"beta", beta}}) DISTILL_TRY(check_channel_vector(fn, name, v, C));
  for (auto [name, v] : {std::pair{"running_mean", running_mean}, std::pair{"running_var", running_var},
                         std::pair{"saved_mean", saved_mean}, std::pair{"saved_invstd", saved_invstd}})
    DISTILL_TRY(check_channel_vector(fn, name, v, C));
  const cudaStream_t s = stream_of(blas);
  const unsigned cblocks = static_cast<unsigned>(ceil_div<index_t>(C, 128));
  if (p.training) {
    const index_t chunks = bn_chunks(N, C), per = ceil_div<index_t>(N, chunks);
    DISTILL_TRY(blas.reserve_scratch(3 * C * chunks));
    nn_batch_norm_stats_partial_kernel<T><<<dim3(static_cast<unsigned>(C), static_cast<unsigned>(chunks)), bn_block, 0, s>>>(
        arg3(x), N, S, per, blas.scratch());
    nn_batch_norm_stats_finalize_kernel<T><<<cblocks, 128, 0, s>>>(blas.scratch(), C, chunks, static_cast<float>(p.eps),
                                                                   static_cast<float>(p.momentum), running_mean.data(),
                                                                   running_var.data(), saved_mean.data(), saved_invstd.data());
  } else {
    nn_batch_norm_eval_stats_kernel<T><<<cblocks, 128, 0, s>>>(C, static_cast<float>(p.eps), running_mean.data(),
                                                               running_var.data(), saved_mean.data(), saved_invstd.data());
  }
  nn_batch_norm_normalize_kernel<T><<<elementwise_blocks(N * C * S), 256, 0, s>>>(
      arg3(x), arg3(y), N, C, S, saved_mean.data(), saved_invstd.data(), gamma.data(), beta.data());
  return launch_status(fn, s);
}

template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status batch_norm_backward(const cuda_blas& blas, in_view<T, 3, cuda_space> x, in_view<T, 1, cuda_space> gamma,
                                         in_view<T, 1, cuda_space> saved_mean, in_view<T, 1, cuda_space> saved_invstd,
                                         cuda_view<TD, 3> dy, out_view<T, 3, cuda_space> dx, out_view<T, 1, cuda_space> dgamma,
                                         out_view<T, 1, cuda_space> dbeta, bool training, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::batch_norm_backward";
  DISTILL_TRY(nn_detail::check_batch_norm(fn, x, gamma, batch_norm_params{1e-5, 0.1, training}));
  DISTILL_TRY(check_device_input(fn, "x", x));
  DISTILL_TRY(check_same_shape(fn, "dy", dy, "x", x));
  DISTILL_TRY(check_device_input(fn, "dy", dy));
  const index_t N = x.extent(0), C = x.extent(1), S = x.extent(2);
  DISTILL_TRY(check_present(fn, "saved_mean", saved_mean));
  DISTILL_TRY(check_present(fn, "saved_invstd", saved_invstd));
  if (!dx.empty()) {
    DISTILL_TRY(check_same_shape(fn, "dx", dx, "x", x));
    DISTILL_TRY(check_device_input(fn, "dx", dx));
  }
  for (auto [name, v] : {std::pair{"gamma", gamma}, std::pair{"saved_mean", saved_mean}, std::pair{"saved_invstd", saved_invstd}})
    DISTILL_TRY(check_channel_vector(fn, name, v, C));
  for (auto [name, v] : {std::pair{"dgamma", dgamma}, std::pair{"dbeta", dbeta}}) DISTILL_TRY(check_channel_vector(fn, name, v, C));
  const cudaStream_t s = stream_of(blas);
  const index_t chunks = bn_chunks(N, C), per = ceil_div<index_t>(N, chunks);
  DISTILL_TRY(blas.reserve_scratch(2 * C * chunks + 2 * C));
  float* partial = blas.scratch();
  float* coef = partial + 2 * C * chunks;
  cuda_view<const T, 3> dyc = dy;
  nn_batch_norm_backward_partial_kernel<T><<<dim3(static_cast<unsigned>(C), static_cast<unsigned>(chunks)), bn_block, 0, s>>>(
      arg3(x), arg3(dyc), N, S, per, saved_mean.data(), saved_invstd.data(), partial);
  nn_batch_norm_backward_finalize_kernel<T><<<static_cast<unsigned>(ceil_div<index_t>(C, 128)), 128, 0, s>>>(
      partial, C, chunks, static_cast<float>(N * S), training, dgamma.data(), dbeta.data(), opt.accumulate_params, coef);
  if (!dx.empty())
    nn_batch_norm_backward_dx_kernel<T><<<elementwise_blocks(N * C * S), 256, 0, s>>>(
        arg3(x), arg3(dyc), arg3(dx), N, C, S, saved_mean.data(), saved_invstd.data(), gamma.data(), coef, opt.accumulate_input);
  return launch_status(fn, s);
}

}  // namespace distill::nn
