// SPDX-License-Identifier: MIT
// The multi-label soft-target cases every backend runs (multilabel_cases.hpp), here on the CPU;
// the CUDA binary runs the same cases from test_multilabel_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "multilabel/multilabel_cases.hpp"
