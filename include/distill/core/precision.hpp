// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! `matmul_precision`: the arithmetic of the matrix products inside a primitive's CUDA path
//! (token NCE's logit and gradient tiles, relational pairing's pair MLP, the nn/ cuBLAS GEMMs).
//! Storage and accumulation stay in float; only the products are rounded. The CPU paths always
//! compute in their element type and ignore it, so one options struct serves both backends.
//!
//!   fp32  IEEE float products (FFMA, or CUBLAS_COMPUTE_32F): results match the CPU to float rounding
//!   tf32  TF32 tensor cores, 10-bit mantissa products (sm_80+): about 1e-3 relative error
//!   bf16  bfloat16 tensor cores, 8-bit mantissa products (sm_80+): about 1e-2 relative error

namespace distill {

enum class matmul_precision {
  fp32,  ///< float products: the reference arithmetic
  tf32,  ///< TF32 tensor-core products, float accumulation
  bf16,  ///< bfloat16 tensor-core products, float accumulation
};

constexpr const char* to_string(matmul_precision p) noexcept {
  switch (p) {
    case matmul_precision::fp32: return "fp32";
    case matmul_precision::tf32: return "tf32";
    case matmul_precision::bf16: return "bf16";
  }
  return "unknown";
}

}  // namespace distill
