// SPDX-License-Identifier: MIT
// The soft-target cases every backend runs (soft_target_cases.hpp), here on the CPU; the CUDA
// binary runs the same cases from test_soft_target_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "soft_target_cases.hpp"
