// SPDX-License-Identifier: MIT
// The features cases every backend runs (features_cases.hpp), here on the CPU in double and
// float; the CUDA binary runs the same cases from test_features_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "features/features_cases.hpp"
