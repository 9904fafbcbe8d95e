// SPDX-License-Identifier: MIT
// The nn-layer cases every backend runs (nn_cases.hpp), here on the CPU in double and float; the
// CUDA binary runs the same cases from test_nn_cuda_layers.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "nn/nn_cases.hpp"
