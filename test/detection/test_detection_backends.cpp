// SPDX-License-Identifier: MIT
// The detection cases every backend runs (wsddn_cases.hpp), here on the CPU; the CUDA binary
// runs the same cases from test_wsddn_cuda.cu.
#include "support/backend.hpp"

using test_space = distill::host_space;

#include "detection/wsddn_cases.hpp"
