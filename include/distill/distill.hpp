// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Umbrella header: everything distill offers. Each include lists what it defines.
//! CUDA overloads (taking `distill::cuda` and `cuda_view`s) are visible only when nvcc compiles
//! the translation unit.

// ---- core ----
#include "distill/version.hpp"            // defines: version_string
#include "distill/core/config.hpp"        // defines: index_t, DISTILL_HOST_DEVICE
#include "distill/core/status.hpp"        // defines: status, errc, error, throw_if_error, DISTILL_TRY
#include "distill/core/tensor_view.hpp"   // defines: tensor_view, host_view, cuda_view, make_view, make_strided_view
#include "distill/core/context.hpp"       // defines: cpu, cuda (execution contexts)
#include "distill/core/dtype.hpp"         // defines: float16, bfloat16, accum_t, load, store
#include "distill/core/math.hpp"          // defines: lse_state, xlogy, log1mexp, log_add_exp
#include "distill/core/reduction.hpp"     // defines: reduction (none, sum, mean, batchmean)
#include "distill/core/checks.hpp"        // defines: check_* argument validation helpers
#include "distill/core/parallel.hpp"      // defines: parallel_for, parallel_sum
#include "distill/core/cpu_gemm.hpp"      // defines: gemm (Eigen, threaded), transpose

// ---- primitives ----
