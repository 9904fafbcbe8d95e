// SPDX-License-Identifier: MIT
// distill_cpu: distill::gemm's float and double products (the only translation unit that
// compiles Eigen's GEMM kernels when the library is used).
#include "distill/core/cpu_gemm.hpp"
#include "distill/core/detail/cpu_gemm_eigen.hpp"
