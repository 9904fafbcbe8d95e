// SPDX-License-Identifier: MIT
// The call layer of the losses, instantiated for the CPU (one translation unit per family, so
// the heavy distill templates compile in parallel and apart from PyTorch's headers).
#include "calls_losses.hpp"

DISTILL_TORCH_INSTANTIATE(distill::cpu, soft_target_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, multilabel_soft_target_call)
