// SPDX-License-Identifier: MIT
// The call layer of attention and feature primitives, instantiated for the CPU.
#include "calls_features.hpp"

DISTILL_TORCH_INSTANTIATE(distill::cpu, attention_transfer_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, attention_map_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, feature_stats_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, stats_matching_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, adain_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, adain_stats_loss_call)
DISTILL_TORCH_INSTANTIATE(distill::cpu, embedding_alignment_call)
