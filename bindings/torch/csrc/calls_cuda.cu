// SPDX-License-Identifier: MIT
// The whole call layer instantiated for CUDA: compiled by nvcc, without PyTorch's headers (the
// torch layer, ops.cpp, calls these through the declarations in calls.hpp). Linked into the
// operator library when PyTorch has CUDA; otherwise compiled only as a check
// (target distill_torch_cuda_calls_check).
#include "calls_contrastive.hpp"
#include "calls_features.hpp"
#include "calls_losses.hpp"

DISTILL_TORCH_INSTANTIATE(distill::cuda, soft_target_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, multilabel_soft_target_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, attention_transfer_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, attention_map_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, feature_stats_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, stats_matching_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, adain_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, adain_stats_loss_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, embedding_alignment_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, token_nce_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, relational_pairing_call)
DISTILL_TORCH_INSTANTIATE(distill::cuda, roi_align_call)
template distill::status distill_torch::run<distill::cuda>(const distill::cuda&, distill_torch::sample_queue_call&);
