// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Compiler and platform switches shared by every header.
//!
//! DISTILL_HOST_DEVICE marks the scalar math that CPU loops and CUDA kernels share. It expands to
//! `__host__ __device__` only when nvcc compiles the translation unit, so every header in
//! include/ still parses with a plain C++20 compiler.

#include <cstdint>

#if defined(__CUDACC__)
#define DISTILL_CUDA_COMPILER 1
#define DISTILL_HOST_DEVICE __host__ __device__
#define DISTILL_DEVICE __device__
#else
#define DISTILL_CUDA_COMPILER 0
#define DISTILL_HOST_DEVICE
#define DISTILL_DEVICE
#endif

#if defined(_MSC_VER)
#define DISTILL_FORCEINLINE __forceinline
#else
#define DISTILL_FORCEINLINE inline __attribute__((always_inline))
#endif

#if defined(_OPENMP)
#define DISTILL_HAS_OPENMP 1
#else
#define DISTILL_HAS_OPENMP 0
#endif

/// DISTILL_OMP_PRAGMA(omp simd reduction(+ : s)) is that OpenMP pragma when the translation unit
/// is compiled with OpenMP, and nothing otherwise (a loop hint, never a change of results).
#if DISTILL_HAS_OPENMP
#define DISTILL_OMP_PRAGMA(x) _Pragma(#x)
#else
#define DISTILL_OMP_PRAGMA(x)
#endif

/// DISTILL_CPU_LIBRARY is 1 when the translation unit links the compiled `distill_cpu` library
/// (the CMake target distill::cpu defines it): the float and double CPU instances listed in
/// src/ are then compiled once there and the headers only declare them (a function template
/// without its definition, `extern template` classes), so neither Eigen's GEMM nor those
/// instances are compiled again here. Header-only use (the default) defines everything in the
/// headers.
#if !defined(DISTILL_CPU_LIBRARY)
#define DISTILL_CPU_LIBRARY 0
#endif

namespace distill {

/// Extents, strides and indices are 64-bit: vocab x tokens easily exceeds 2^31 elements.
using index_t = std::int64_t;

}  // namespace distill
