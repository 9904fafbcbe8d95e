// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Execution contexts of the nn/ building blocks.
//!
//!   CPU:   distill::cpu{.threads = 2}          GEMMs through distill::gemm (Eigen, threaded)
//!   CUDA:  nn::cuda_blas blas(stream);         a cuBLAS handle bound to `stream`, owned by the
//!                                              caller (the model); derives from distill::cuda,
//!                                              so it also goes wherever a `const cuda&` does
//!
//! Every nn/ CUDA entry point accepts a `const nn::cuda_blas&`: those with a GEMM or a reduction
//! (linear, conv2d, attention, norms, cross-entropy) require it, purely element-wise ones take
//! any `const cuda&`. `nn::exec_t<Space>` names the context a model on `Space` passes everywhere
//! (cpu or cuda_blas).
//!
//! The cuda_blas's `distill::matmul_precision` (core/precision.hpp) picks the cuBLAS compute mode
//! for float GEMMs (the CPU always computes in the element type): fp32 (CUBLAS_COMPUTE_32F), TF32
//! tensor cores (..._FAST_TF32) or bf16 tensor cores (..._FAST_16BF), fp32 storage and
//! accumulation. Reduced modes change results at the 1e-3 relative level.

#include <type_traits>

#include "distill/core/context.hpp"
#include "distill/core/precision.hpp"

namespace distill::nn {

/// RAII cuBLAS handle bound to a stream (defined in kernels/distill/cuda/nn_blas.cuh, nvcc only).
struct cuda_blas;

/// The context a model living in `Space` passes to its layers.
template <class Space>
using exec_t = std::conditional_t<std::is_same_v<Space, host_space>, cpu, cuda_blas>;

/// What a model's context is made from: CPU threads and executor (as in distill::cpu), or a CUDA
/// stream and the precision of its cuBLAS GEMMs (each backend reads its own fields).
struct exec_options {
  int threads = hardware_threads();
  cpu_executor executor = {};
  CUstream_st* stream = nullptr;
  matmul_precision precision = matmul_precision::fp32;
};

/// The context of a model on `Space`, so code written once for both memory spaces makes it
/// without a branch: cpu{threads, executor} here, a cuda_blas in kernels/distill/cuda/nn_blas.cuh.
template <class Space>
exec_t<Space> make_exec(const exec_options& o);
template <>
inline cpu make_exec<host_space>(const exec_options& o) {
  return cpu{o.threads, o.executor};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_blas.cuh"
#endif
