// SPDX-License-Identifier: MIT
// The call layer of token NCE, the sample queue, relational pairing and RoI Align, instantiated
// for the CPU.
#include "calls_contrastive.hpp"

DISTILL_TORCH_INSTANTIATE(distill::cpu, token_nce_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, relational_pairing_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, roi_align_call)
template distill::status distill_torch::run<distill::cpu>(const distill::cpu&, distill_torch::sample_queue_call&);
