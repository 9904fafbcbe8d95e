// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA half of nn/attention.hpp. Per head h, strided-batched cuBLAS GEMMs over the batch read
//! the head's columns of Q, K, V, dO in place (leading dimension D, batch stride L D); the maps
//! (B, H, Lq, Lk) go through a warp-per-row kernel: masked, online log-sum-exp softmax forward
//! (reads S once, writes P and optionally the scores), and the softmax backward
//! dS = P (dP + gP - <dP + gP, P>) + gS in place over the dP workspace (B H Lq Lk floats).

#if !defined(__CUDACC__)
#error "distill/cuda/nn_attention.cuh must be compiled by nvcc"
#endif

#include <cstdint>

#include "distill/cuda/nn_blas.cuh"
#include "distill/cuda/detail/reduce.cuh"
#include "distill/nn/attention.hpp"

namespace distill::nn {
namespace cuda_detail {

inline constexpr int attn_rows_per_block = 8;

/// (B, H, Lq, Lk) map with unit inner stride.
template <class T>
struct map_arg {
  T* p;
  index_t s0, s1, s2;
  __device__ T* row(index_t b, index_t h, index_t i) const { return p + b * s0 + h * s1 + i * s2; }
};
template <class V>
map_arg<typename V::element_type> map_of(const V& v) {
  if (v.empty()) return {nullptr, 0, 0, 0};
  return {v.data(), v.stride(0), v.stride(1), v.stride(2)};
}

template <class T>
__global__ void nn_attention_softmax_warp_per_row_kernel(map_arg<T> probs, map_arg<T> scores, const std::uint8_t* key_valid,
                                                         index_t kv_s0, index_t kv_s1, index_t B, index_t H, index_t Lq, index_t Lk) {
  const int lane = threadIdx.x % 32;
  const index_t row = static_cast<index_t>(blockIdx.x) * attn_rows_per_block + threadIdx.x / 32;
  if (row >= B * H * Lq) return;
  const index_t b = row / (H * Lq), h = (row / Lq) % H, i = row % Lq;
  T* p = probs.row(b, h, i);
  T* sc = scores.p ? scores.row(b, h, i) : nullptr;
  lse_state<float> st;
  for (index_t j = lane; j < Lk; j += 32) {
    float s = load<float>(p[j]);
    if (key_valid && key_valid[b * kv_s0 + j * kv_s1] == 0) s = neg_infinity<float>();
    if (sc) sc[j] = store<T>(s);
    st.add(s);
  }
  const float lse = warp_merge(st).value();
  for (index_t j = lane; j < Lk; j += 32) {
    const bool masked = key_valid && key_valid[b * kv_s0 + j * kv_s1] == 0;
    p[j] = store<T>((masked || lse == neg_infinity<float>()) ? 0.f : exp_(load<float>(p[j]) - lse));
  }
}

template <class T>
__global__ void nn_attention_softmax_backward_warp_per_row_kernel(map_arg<const T> probs, map_arg<const T> grad_probs,
                                                                  map_arg<const T> grad_scores, const std::uint8_t* key_valid,
                                                                  index_t kv_s0, index_t kv_s1, T* ds, index_t B, index_t H,
                                                                  index_t Lq, index_t Lk) {
  const int lane = threadIdx.x % 32;
  const index_t row = static_cast<index_t>(blockIdx.x) * attn_rows_per_block + threadIdx.x / 32;
  if (row >= B * H * Lq) return;
  const index_t b = row / (H * Lq), h = (row / Lq) % H, i = row % Lq;
  const T* p = probs.row(b, h, i);
  const T* gp = grad_probs.p ? grad_probs.row(b, h, i) : nullptr;
  const T* gs = grad_scores.p ? grad_scores.row(b, h, i) : nullptr;
  T* g = ds + row * Lk;  // workspace rows are dense (b, h, i) in order
  float dot = 0.f;
  for (index_t j = lane; j < Lk; j += 32) {
    float v = load<float>(g[j]);
    if (gp) v += load<float>(gp[j]);
    g[j] = store<T>(v);
    dot += v * load<float>(p[j]);
  }
  dot = warp_sum(dot);
  for (index_t j = lane; j < Lk; j += 32) {
    const bool masked = key_valid && key_valid[b * kv_s0 + j * kv_s1] == 0;
    float s = load<float>(p[j]) * (load<float>(g[j]) - dot);
    if (gs) s += load<float>(gs[j]);
    g[j] = store<T>(masked ? 0.f : s);
  }
}

template <class V>
status check_map(const char* fn, const char* name, const V& v, index_t B, index_t H, index_t Lq, index_t Lk) {
  if (v.empty()) return {};
  DISTILL_TRY(check_shape(fn, name, v, {B, H, Lq, Lk}));
  DISTILL_TRY(check_strides(fn, name, v));
  DISTILL_TRY(check_inner_contiguous(fn, name, v));
  return check_device_view(fn, name, v);
}

template <class V>
status check_device_rows(const char* fn, const char* name, const V& v) {
  if (v.empty()) return {};
  DISTILL_TRY(check_strides(fn, name, v));
  DISTILL_TRY(check_inner_contiguous(fn, name, v));
  return check_device_view(fn, name, v);
}

}  // namespace cuda_detail

template <class T>
[[nodiscard]] status attention_core_forward(const cuda_blas& blas, in_view<T, 3, cuda_space> q, in_view<T, 3, cuda_space> k,
                                            in_view<T, 3, cuda_space> v, in_view<std::uint8_t, 2, cuda_space> key_valid,
                                            out_view<T, 4, cuda_space> probs, out_view<T, 4, cuda_space> scores, cuda_view<T, 3> o,
                                            const attention_params& p) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::attention_core_forward";
  DISTILL_TRY(nn_detail::check_attention(fn, q, k, v, key_valid, p));
  const index_t B = q.extent(0), Lq = q.extent(1), Lk = k.extent(1), D = q.extent(2), H = p.heads, dh = D / H;
  DISTILL_TRY(check_present(fn, "probs", probs));
  DISTILL_TRY(check_map(fn, "probs", probs, B, H, Lq, Lk));
  DISTILL_TRY(check_map(fn, "scores", scores, B, H, Lq, Lk));
  DISTILL_TRY(check_same_shape(fn, "o", o, "q", q));
  for (auto [name, x] : {std::pair{"q", q}, std::pair{"k", k}, std::pair{"v", v}}) DISTILL_TRY(check_device_rows(fn, name, x));
  DISTILL_TRY(check_device_rows(fn, "o", o));
  DISTILL_TRY(check_device_view(fn, "key_valid", key_valid));
  const T scale = static_cast<T>(nn_detail::attention_scale(p, D));
  for (index_t h = 0; h < H; ++h)
    DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, trans, Lq, Lk, dh, scale, q.data() + h * dh, q.stride(1), q.stride(0),
                                        k.data() + h * dh, k.stride(1), k.stride(0), T(0), probs.data() + h * probs.stride(1),
                                        probs.stride(2), probs.stride(0), B));
  const cudaStream_t s = stream_of(blas);
  nn_attention_softmax_warp_per_row_kernel<T><<<static_cast<unsigned>(ceil_div<index_t>(B * H * Lq, attn_rows_per_block)),
                                                32 * attn_rows_per_block, 0, s>>>(map_of(probs), map_of(scores), key_valid.data(),
                                                                                  key_valid.stride(0), key_valid.stride(1), B, H, Lq, Lk);
  DISTILL_TRY(launch_status(fn, s));
  for (index_t h = 0; h < H; ++h)
    DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, no_trans, Lq, dh, Lk, T(1), probs.data() + h * probs.stride(1),
                                        probs.stride(2), probs.stride(0), v.data() + h * dh, v.stride(1), v.stride(0), T(0),
                                        o.data() + h * dh, o.stride(1), o.stride(0), B));
  return {};
}

/// CUDA core backward; `workspace` holds attention_core_workspace_size<T>(ctx, B, H, Lq, Lk) bytes (dP / dS).
template <class TD, class T = std::remove_const_t<TD>>
[[nodiscard]] status attention_core_backward(const cuda_blas& blas, in_view<T, 3, cuda_space> q, in_view<T, 3, cuda_space> k,
                                             in_view<T, 3, cuda_space> v, in_view<std::uint8_t, 2, cuda_space> key_valid,
                                             in_view<T, 4, cuda_space> probs, cuda_view<TD, 3> d_o, in_view<T, 4, cuda_space> grad_probs,
                                             in_view<T, 4, cuda_space> grad_scores, out_view<T, 3, cuda_space> dq,
                                             out_view<T, 3, cuda_space> dk, out_view<T, 3, cuda_space> dv,
                                             cuda_view<std::byte, 1> workspace, const attention_params& p, grad_options opt = {}) {
  using namespace cuda_detail;
  constexpr const char* fn = "nn::attention_core_backward";
  DISTILL_TRY(nn_detail::check_attention(fn, q, k, v, key_valid, p));
  const index_t B = q.extent(0), Lq = q.extent(1), Lk = k.extent(1), D = q.extent(2), H = p.heads, dh = D / H;
  DISTILL_TRY(check_present(fn, "probs", probs));
  DISTILL_TRY(check_map(fn, "probs", probs, B, H, Lq, Lk));
  DISTILL_TRY(check_map(fn, "grad_probs", grad_probs, B, H, Lq, Lk));
  DISTILL_TRY(check_map(fn, "grad_scores", grad_scores, B, H, Lq, Lk));
  DISTILL_TRY(check_same_shape(fn, "d_o", d_o, "q", q));
  for (auto [name, x] : {std::pair{"q", q}, std::pair{"k", k}, std::pair{"v", v}}) DISTILL_TRY(check_device_rows(fn, name, x));
  DISTILL_TRY(check_device_rows(fn, "d_o", d_o));
  if (!dq.empty()) DISTILL_TRY(check_same_shape(fn, "dq", dq, "q", q));
  if (!dk.empty()) DISTILL_TRY(check_same_shape(fn, "dk", dk, "k", k));
  if (!dv.empty()) DISTILL_TRY(check_same_shape(fn, "dv", dv, "v", v));
  for (auto [name, x] : {std::pair{"dq", dq}, std::pair{"dk", dk}, std::pair{"dv", dv}}) DISTILL_TRY(check_device_rows(fn, name, x));
  DISTILL_TRY(check_device_view(fn, "key_valid", key_valid));
  DISTILL_TRY(check_workspace(fn, workspace, attention_core_workspace_size<T>(blas, B, H, Lq, Lk), "attention_core_workspace_size"));
  DISTILL_TRY(check_device_view(fn, "workspace", workspace));
  const T scale = static_cast<T>(nn_detail::attention_scale(p, D));
  const T beta = opt.accumulate_input ? T(1) : T(0);
  const cudaStream_t s = stream_of(blas);
  T* ws = reinterpret_cast<T*>(workspace.data());
  const index_t map = Lq * Lk;
  for (index_t h = 0; h < H; ++h) {
    if (!dv.empty())  // dV_bh (Lk, dh) = P^T (Lk, Lq) dO_bh (Lq, dh)
      DISTILL_TRY(gemm_strided_batched<T>(blas, fn, trans, no_trans, Lk, dh, Lq, T(1), probs.data() + h * probs.stride(1),
                                          probs.stride(2), probs.stride(0), d_o.data() + h * dh, d_o.stride(1), d_o.stride(0), beta,
                                          dv.data() + h * dh, dv.stride(1), dv.stride(0), B));
    if (!dq.empty() || !dk.empty())  // dP_bh (Lq, Lk) = dO_bh (Lq, dh) V_bh^T
      DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, trans, Lq, Lk, dh, T(1), d_o.data() + h * dh, d_o.stride(1),
                                          d_o.stride(0), v.data() + h * dh, v.stride(1), v.stride(0), T(0), ws + h * map, Lk, H * map,
                                          B));
  }
  if (dq.empty() && dk.empty()) return {};
  nn_attention_softmax_backward_warp_per_row_kernel<T>
      <<<static_cast<unsigned>(ceil_div<index_t>(B * H * Lq, attn_rows_per_block)), 32 * attn_rows_per_block, 0, s>>>(
          map_of(probs), map_of(grad_probs), map_of(grad_scores), key_valid.data(), key_valid.stride(0), key_valid.stride(1), ws, B,
          H, Lq, Lk);
  DISTILL_TRY(launch_status(fn, s));
  for (index_t h = 0; h < H; ++h) {
    if (!dq.empty())  // dQ_bh (Lq, dh) = scale dS (Lq, Lk) K_bh (Lk, dh)
      DISTILL_TRY(gemm_strided_batched<T>(blas, fn, no_trans, no_trans, Lq, dh, Lk, scale, ws + h * map, Lk, H * map,
                                          k.data() + h * dh, k.stride(1), k.stride(0), beta, dq.data() + h * dh, dq.stride(1),
                                          dq.stride(0), B));
    if (!dk.empty())  // dK_bh (Lk, dh) = scale dS^T (Lk, Lq) Q_bh (Lq, dh)
      DISTILL_TRY(gemm_strided_batched<T>(blas, fn, trans, no_trans, Lk, dh, Lq, scale, ws + h * map, Lk, H * map,
                                          q.data() + h * dh, q.stride(1), q.stride(0), beta, dk.data() + h * dh, dk.stride(1),
                                          dk.stride(0), B));
  }
  return {};
}

}  // namespace distill::nn
