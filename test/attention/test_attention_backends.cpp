// SPDX-License-Identifier: MIT
// The attention cases every backend runs (attention_map_cases.hpp, attention_transfer_cases.hpp),
// here on the CPU; the CUDA binary runs the same cases from test_attention_map_cuda.cu and
// test_attention_transfer_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "attention/attention_map_cases.hpp"
#include "attention/attention_transfer_cases.hpp"
