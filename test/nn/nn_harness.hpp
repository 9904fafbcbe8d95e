// SPDX-License-Identifier: MIT
#pragma once
// Runs the nn layers on either backend (support/backend.hpp): a session with the context a model
// on the space uses (nn::exec_t: distill::cpu, or an nn::cuda_blas on the session's non-blocking
// stream with a chosen GEMM precision), tensors in the space's memory between canary bands (on
// the CPU with the padded rows and batch strides the layers accept there; on CUDA dense, as its
// kernels require for most operands), and conversions of double reference values to the storage
// type. The cases of every backend (nn_cases.hpp) are written on these.
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "distill/nn/blas.hpp"
#include "support/backend.hpp"

namespace nn_harness {

using namespace distill;
using distill_test::guarded_array;
using distill_test::guarded_tensor;
using vec = std::vector<double>;

template <class Space>
inline constexpr bool on_host = std::is_same_v<Space, host_space>;

/// A session and the nn context made on it (threads on the CPU, stream and precision on CUDA).
template <class Space>
struct nn_run {
  typename distill_test::backend<Space>::session session;
  nn::exec_t<Space> ctx;
  explicit nn_run(int threads = 2, matmul_precision precision = matmul_precision::fp32)
      : session(threads), ctx(nn::make_exec<Space>(options(session, threads, precision))) {}
  void sync() const { session.sync(); }

 private:
  static nn::exec_options options(const typename distill_test::backend<Space>::session& s, int threads, matmul_precision precision) {
    nn::exec_options o;
    o.threads = threads;
    o.precision = precision;
    if constexpr (!on_host<Space>) o.stream = s.stream;
    return o;
  }
};

/// A tensor in Space's memory; `host_pad` (padding after each axis's elements) applies on the CPU only.
template <class T, int R, class Space>
guarded_tensor<T, R, Space> tensor(const std::array<index_t, R>& extents, const std::array<index_t, R>& host_pad = {}) {
  if constexpr (on_host<Space>) return guarded_tensor<T, R, Space>(extents, host_pad);
  else return guarded_tensor<T, R, Space>(extents);
}

/// A tensor holding `values` (already rounded to T).
template <class T, int R, class Space>
guarded_tensor<T, R, Space> tensor_of(const std::array<index_t, R>& extents, const vec& values, const std::array<index_t, R>& host_pad = {}) {
  auto t = tensor<T, R, Space>(extents, host_pad);
  t.set(values);
  return t;
}

/// `v` rounded to T and back: what the library reads, for the reference to see the same.
template <class T>
vec rounded(vec v) {
  for (double& x : v) x = static_cast<double>(static_cast<T>(x));
  return v;
}

/// The empty (absent) view of an optional operand.
template <class T, int R, class Space>
tensor_view<const T, R, Space> absent() {
  return {};
}

}  // namespace nn_harness
