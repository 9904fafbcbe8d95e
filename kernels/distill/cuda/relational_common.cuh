// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! CUDA pieces shared by relational pairing and the pair scorer. nvcc only.
//!
//! Both split a layer over concatenated pair inputs [o_i; o_j; q] into per-object terms:
//!   left_r  = b_left  + o_r W_left  + q_b Wq_left      (object r = b N + i in the role of i)
//!   right_r = b_right + o_r W_right + q_b Wq_right     (object r in the role of j)
//! and, backward, fold the per-object gradient sums R (role i) and S (role j) into
//!   dW_left = sum_r o_r^T R_r,  dW_right = sum_r o_r^T S_r,  dWq_left = sum_b q_b^T T_b (T_b = sum_i R_bi),
//!   dWq_right = sum_b q_b^T U_b (U_b = sum_j S_bj),  db_left = sum_b T_b,  db_right = sum_b U_b,
//!   do_r = R_r W_left^T + S_r W_right^T,  dq_b = T_b Wq_left^T + U_b Wq_right^T.
//! Every kernel here is a plain one-thread-per-output loop (these are O(B N (D + Q) H) next to
//! the O(B N^2 H^2) pair work); reductions over rows go through fixed-order partial sums, so
//! they are deterministic.

#if !defined(__CUDACC__)
#error "distill/cuda/relational_common.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "distill/core/tensor_view.hpp"
#include "distill/cuda/runtime.cuh"

namespace distill::cuda_detail::relational {

constexpr int kThreads1d = 256;

/// Read-only strided matrix: element (r, c) at p[r s0 + c s1]; absent when p is null.
struct mat_ref {
  const float* p = nullptr;
  index_t s0 = 0, s1 = 0;
  __device__ __forceinline__ float operator()(index_t r, index_t c) const { return p[r * s0 + c * s1]; }
};
/// Read-only strided vector; reads 0 when absent (a missing bias).
struct vec_ref {
  const float* p = nullptr;
  index_t s = 0;
  __device__ __forceinline__ float operator()(index_t i) const { return p ? p[i * s] : 0.0f; }
};
/// Rows r = b N + i of a [B, N, C] tensor (objects), or of a [B, C] matrix with N = 1.
struct rows_ref {
  const float* p = nullptr;
  index_t s0 = 0, s1 = 0, s2 = 0;
  index_t N = 1;
  __device__ __forceinline__ float operator()(index_t r, index_t c) const { return p[(r / N) * s0 + (r % N) * s1 + c * s2]; }
};
/// Writable strided outputs (absent when p is null).
struct out_mat {
  float* p = nullptr;
  index_t s0 = 0, s1 = 0;
};
struct out_vec {
  float* p = nullptr;
  index_t s = 0;
};
struct out_rows {  // rows r = b N + i of a [B, N, C] output
  float* p = nullptr;
  index_t s0 = 0, s1 = 0, s2 = 0;
  index_t N = 1;
};
/// Which rows take part: p[b s0 + i s1] != 0 (every row when p is null).
struct row_filter {
  const std::uint8_t* p = nullptr;
  index_t s0 = 0, s1 = 0;
  index_t N = 1;
  __device__ __forceinline__ bool ok(index_t r) const { return p == nullptr || p[(r / N) * s0 + (r % N) * s1] != 0; }
};

// ---- host-side builders

template <class V>
mat_ref mat_of(const V& v, index_t row0 = 0) {
  if (v.empty()) return {};
  return {v.data() + row0 * v.stride(0), v.stride(0), v.stride(1)};
}
template <class V>
vec_ref vec_of(const V& v) {
  if (v.empty()) return {};
  return {v.data(), v.stride(0)};
}
template <class V>
rows_ref rows_of3(const V& v) {  // [B, N, C]
  return {v.data(), v.stride(0), v.stride(1), v.stride(2), v.extent(1)};
}
template <class V>
rows_ref rows_of2(const V& v) {  // [B, C] as rows with N = 1
  if (v.empty()) return {};
  return {v.data(), v.stride(0), 0, v.stride(1), 1};
}
template <class V>
out_mat out_mat_of(const V& v, index_t row0 = 0) {
  if (v.empty()) return {};
  return {v.data() + row0 * v.stride(0), v.stride(0), v.stride(1)};
}
template <class V>
out_vec out_vec_of(const V& v) {
  if (v.empty()) return {};
  return {v.data(), v.stride(0)};
}
template <class V>
out_rows out_rows_of3(const V& v) {
  if (v.empty()) return {};
  return {v.data(), v.stride(0), v.stride(1), v.stride(2), v.extent(1)};
}

inline unsigned blocks_for(index_t n, int threads = kThreads1d) {
  const index_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 2147483647 ? 2147483647 : b));
}

// ---- kernels

/// left[r, n] and right[r, n] (rows r that fail the filter get 0: they are never read, and 0
/// keeps NaN features of padded objects out of every product).
__global__ void relational_object_split_forward_thread_per_element_kernel(rows_ref o, rows_ref q, row_filter ok, mat_ref w_left,
                                                                          mat_ref w_right, mat_ref wq_left, mat_ref wq_right,
                                                                          vec_ref b_left, vec_ref b_right, index_t rows,
                                                                          index_t D, index_t Q, index_t K, float* left,
                                                                          float* right) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * K) return;
  const index_t r = idx / K, n = idx % K;
  if (!ok.ok(r)) {
    left[idx] = 0.0f;
    if (right) right[idx] = 0.0f;
    return;
  }
  const index_t b = r / o.N;
  float a = b_left(n), c = b_right(n);
  for (index_t d = 0; d < D; ++d) {
    const float x = o(r, d);
    a += x * w_left(d, n);
    if (right) c += x * w_right(d, n);
  }
  for (index_t e = 0; e < Q; ++e) {
    const float x = q(b, e);
    a += x * wq_left(e, n);
    if (right && wq_right.p) c += x * wq_right(e, n);
  }
  left[idx] = a;
  if (right) right[idx] = c;
}

/// partial[z, d, n] = sum over rows r of chunk z (that pass the filter) of X(r, d) G[r, n].
__global__ void relational_weight_grad_partial_thread_per_element_kernel(rows_ref x, row_filter ok, const float* g, index_t rows,
                                                                         index_t C, index_t K, index_t chunk, float* partial) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= C * K) return;
  const index_t d = idx / K, n = idx % K, z = blockIdx.y;
  const index_t r0 = z * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
  float acc = 0.0f;
  for (index_t r = r0; r < r1; ++r)
    if (ok.ok(r)) acc += x(r, d) * g[r * K + n];
  partial[(z * C + d) * K + n] = acc;
}

/// out(d, n) (+)= sum_z partial[z, d, n], z in order (deterministic).
__global__ void relational_weight_grad_reduce_thread_per_element_kernel(const float* partial, index_t Z, index_t C, index_t K,
                                                                        out_mat out, bool accumulate) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= C * K) return;
  const index_t d = idx / K, n = idx % K;
  float s = 0.0f;
  for (index_t z = 0; z < Z; ++z) s += partial[(z * C + d) * K + n];
  float* dst = out.p + d * out.s0 + n * out.s1;
  *dst = accumulate ? *dst + s : s;
}

/// t[b, n] = sum_i src[(b N + i), n].
__global__ void relational_sample_sum_thread_per_element_kernel(const float* src, index_t B, index_t N, index_t K, float* t) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * K) return;
  const index_t b = idx / K, n = idx % K;
  float s = 0.0f;
  for (index_t i = 0; i < N; ++i) s += src[(b * N + i) * K + n];
  t[idx] = s;
}

/// db(n) (+)= sum_b t[b, n].
__global__ void relational_bias_grad_thread_per_element_kernel(const float* t, index_t B, index_t K, out_vec db,
                                                               bool accumulate) {
  const index_t n = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= K) return;
  float s = 0.0f;
  for (index_t b = 0; b < B; ++b) s += t[b * K + n];
  float* dst = db.p + n * db.s;
  *dst = accumulate ? *dst + s : s;
}

/// do(r, d) (+)= R[r] W_left(d, :) + S[r] W_right(d, :)  (0 for filtered rows).
__global__ void relational_object_grad_thread_per_element_kernel(const float* R, const float* S, row_filter ok, mat_ref w_left,
                                                                 mat_ref w_right, index_t rows, index_t D, index_t K,
                                                                 out_rows out, bool accumulate) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * D) return;
  const index_t r = idx / D, d = idx % D;
  float v = 0.0f;
  if (ok.ok(r))
    for (index_t n = 0; n < K; ++n) v += R[r * K + n] * w_left(d, n) + S[r * K + n] * w_right(d, n);
  float* dst = out.p + (r / out.N) * out.s0 + (r % out.N) * out.s1 + d * out.s2;
  *dst = accumulate ? *dst + v : v;
}

/// dq(b, e) (+)= T[b] Wq_left(e, :) (+ U[b] Wq_right(e, :) when U is given).
__global__ void relational_question_grad_thread_per_element_kernel(const float* T, const float* U, mat_ref wq_left,
                                                                   mat_ref wq_right, index_t B, index_t Q, index_t K, out_mat out,
                                                                   bool accumulate) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * Q) return;
  const index_t b = idx / Q, e = idx % Q;
  float v = 0.0f;
  for (index_t n = 0; n < K; ++n) {
    v += T[b * K + n] * wq_left(e, n);
    if (U) v += U[b * K + n] * wq_right(e, n);
  }
  float* dst = out.p + b * out.s0 + e * out.s1;
  *dst = accumulate ? *dst + v : v;
}

/// Sets every element of a rank <= 3 strided view to `value`.
__global__ void relational_fill_thread_per_element_kernel(float* p, index_t e0, index_t e1, index_t e2, index_t s0, index_t s1,
                                                          index_t s2, float value) {
  const index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= e0 * e1 * e2) return;
  const index_t a = idx / (e1 * e2), rem = idx % (e1 * e2), b = rem / e2, c = rem % e2;
  p[a * s0 + b * s1 + c * s2] = value;
}

// ---- host-side launchers (all asynchronous on `stream`)

template <class V>
void fill_async(const V& v, float value, cudaStream_t stream) {
  if (v.empty() || v.size() == 0) return;
  index_t e[3] = {1, 1, 1}, s[3] = {0, 0, 0};
  for (int d = 0; d < V::rank; ++d) e[3 - V::rank + d] = v.extent(d), s[3 - V::rank + d] = v.stride(d);
  relational_fill_thread_per_element_kernel<<<blocks_for(v.size()), kThreads1d, 0, stream>>>(v.data(), e[0], e[1], e[2], s[0],
                                                                                             s[1], s[2], value);
}

/// Per-object gradient sums R (role i) and S (role j) into the parameter and input gradients.
/// `t` and `u` are [B, K] scratch, `partial` holds ceil(rows / chunk) * max(D, Q) * K floats.
struct object_split_backward_args {
  index_t B = 0, N = 0, D = 0, Q = 0, K = 0;
  rows_ref o, q;
  row_filter ok;
  mat_ref w_left, w_right, wq_left, wq_right;
  const float* R = nullptr;
  const float* S = nullptr;
  float* t = nullptr;
  float* u = nullptr;  // only when wq_right or db_right is wanted
  float* partial = nullptr;
  out_mat dw_left, dw_right, dwq_left, dwq_right;
  out_vec db_left, db_right;
  out_rows d_objects;
  out_mat d_question;
  bool accumulate = false;
};

inline constexpr index_t kRowChunk = 64;

inline index_t partial_floats(index_t rows, index_t C, index_t K) { return ((rows + kRowChunk - 1) / kRowChunk) * C * K; }

inline void object_split_backward_async(const object_split_backward_args& a, cudaStream_t stream) {
  const index_t rows = a.B * a.N;
  auto tn = [&](rows_ref x, row_filter ok, const float* g, index_t nrows, index_t C, out_mat out) {
    if (!out.p || C == 0) return;
    // Chunks of 64 rows (more for huge batches, so grid.y stays <= 32768); Z <= ceil(nrows / 64).
    const index_t chunk = std::max<index_t>(kRowChunk, (nrows + 32767) / 32768);
    const index_t Z = (nrows + chunk - 1) / chunk;
    relational_weight_grad_partial_thread_per_element_kernel<<<dim3(blocks_for(C * a.K), static_cast<unsigned>(Z)), kThreads1d, 0,
                                                               stream>>>(x, ok, g, nrows, C, a.K, chunk, a.partial);
    relational_weight_grad_reduce_thread_per_element_kernel<<<blocks_for(C * a.K), kThreads1d, 0, stream>>>(a.partial, Z, C, a.K,
                                                                                                            out, a.accumulate);
  };
  // The partial buffer is reused: kernels on one stream run in order.
  tn(a.o, a.ok, a.R, rows, a.D, a.dw_left);
  tn(a.o, a.ok, a.S, rows, a.D, a.dw_right);
  const bool want_t = a.dwq_left.p || a.db_left.p || a.d_question.p;
  const bool want_u = a.u && (a.dwq_right.p || a.db_right.p || (a.d_question.p && a.wq_right.p));
  if (want_t)
    relational_sample_sum_thread_per_element_kernel<<<blocks_for(a.B * a.K), kThreads1d, 0, stream>>>(a.R, a.B, a.N, a.K, a.t);
  if (want_u)
    relational_sample_sum_thread_per_element_kernel<<<blocks_for(a.B * a.K), kThreads1d, 0, stream>>>(a.S, a.B, a.N, a.K, a.u);
  const row_filter all_rows{};
  tn(a.q, all_rows, a.t, a.B, a.Q, a.dwq_left);
  if (want_u) tn(a.q, all_rows, a.u, a.B, a.Q, a.dwq_right);
  if (a.db_left.p)
    relational_bias_grad_thread_per_element_kernel<<<blocks_for(a.K), kThreads1d, 0, stream>>>(a.t, a.B, a.K, a.db_left,
                                                                                               a.accumulate);
  if (a.db_right.p && want_u)
    relational_bias_grad_thread_per_element_kernel<<<blocks_for(a.K), kThreads1d, 0, stream>>>(a.u, a.B, a.K, a.db_right,
                                                                                               a.accumulate);
  if (a.d_objects.p)
    relational_object_grad_thread_per_element_kernel<<<blocks_for(rows * a.D), kThreads1d, 0, stream>>>(
        a.R, a.S, a.ok, a.w_left, a.w_right, rows, a.D, a.K, a.d_objects, a.accumulate);
  if (a.d_question.p && a.Q > 0)
    relational_question_grad_thread_per_element_kernel<<<blocks_for(a.B * a.Q), kThreads1d, 0, stream>>>(
        a.t, want_u && a.wq_right.p ? a.u : nullptr, a.wq_left, a.wq_right, a.B, a.Q, a.K, a.d_question, a.accumulate);
}

}  // namespace distill::cuda_detail::relational
