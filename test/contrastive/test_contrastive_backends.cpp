// SPDX-License-Identifier: MIT
// The contrastive cases every backend runs (nce_backend_cases.hpp: token-wise InfoNCE;
// queue_cases.hpp: sample-queue enqueue), here on the CPU; the CUDA binary runs the same cases
// from test_contrastive_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "contrastive/nce_backend_cases.hpp"
#include "contrastive/queue_cases.hpp"
