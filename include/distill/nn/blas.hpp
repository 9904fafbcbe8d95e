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
//! `gemm_math` picks the cuBLAS compute mode for float GEMMs (the CPU always computes in the
//! element type): strict fp32, TF32 tensor cores, or bf16 tensor cores with fp32 storage and
//! accumulation. Reduced modes change results at the 1e-3 relative level.

#include <type_traits>

#include "distill/core/context.hpp"

namespace distill::nn {

enum class gemm_math {
  strict_fp32,  ///< CUBLAS_COMPUTE_32F: bitwise the classic SGEMM
  tf32,         ///< CUBLAS_COMPUTE_32F_FAST_TF32: 10-bit mantissa products, fp32 accumulation
  bf16,         ///< CUBLAS_COMPUTE_32F_FAST_16BF: 8-bit mantissa products, fp32 accumulation
};

constexpr const char* to_string(gemm_math m) noexcept {
  switch (m) {
    case gemm_math::strict_fp32: return "fp32";
    case gemm_math::tf32: return "tf32";
    case gemm_math::bf16: return "bf16";
  }
  return "unknown";
}

/// RAII cuBLAS handle bound to a stream (defined in kernels/distill/cuda/nn_blas.cuh, nvcc only).
struct cuda_blas;

/// The context a model living in `Space` passes to its layers.
template <class Space>
using exec_t = std::conditional_t<std::is_same_v<Space, host_space>, cpu, cuda_blas>;

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_blas.cuh"
#endif
