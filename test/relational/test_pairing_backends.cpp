// SPDX-License-Identifier: MIT
// The relational-pairing cases every backend runs (pairing_cases.hpp), here on the CPU; the CUDA
// binary runs the same cases from test_relational_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "relational/pairing_cases.hpp"
