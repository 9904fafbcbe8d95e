// SPDX-License-Identifier: MIT
// distill_cpu: nn::sequential and the passes of every stage type, for float and double on the
// host (declared `extern template` by nn/sequential.hpp under DISTILL_CPU_LIBRARY).
#include "distill/nn/sequential.hpp"

namespace distill::nn {
DISTILL_SEQUENTIAL_INSTANCES(, float)
DISTILL_SEQUENTIAL_INSTANCES(, double)
}  // namespace distill::nn
