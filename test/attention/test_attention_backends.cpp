// SPDX-License-Identifier: MIT
// The attention-map cases every backend runs (attention_map_cases.hpp), here on the CPU; the CUDA
// binary runs the same cases from test_attention_map_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "attention/attention_map_cases.hpp"
