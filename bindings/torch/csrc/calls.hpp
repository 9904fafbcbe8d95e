// SPDX-License-Identifier: MIT
#pragma once
// The binding's calls into distill, free of PyTorch: every operator of the torch layer (ops.cpp)
// fills one of these structs with DLPack descriptions of its tensors (no copy: pointers, shapes
// and strides of the tensors' own memory) and distill's own options, and `run` turns them into
// views (interop/dlpack.hpp checks dtype, rank, memory space and strides) and calls the primitive.
//
// Keeping PyTorch out of this layer lets the CUDA instantiation (calls_cuda.cu) be compiled by
// nvcc without PyTorch's headers, and keeps the heavy distill templates out of the translation
// unit that parses ATen. `run` and `workspace_size` are templates over the context, instantiated
// for distill::cpu in calls_cpu_*.cpp and for distill::cuda in calls_cuda.cu.
//
// Conventions: a null `const DLTensor*` is an absent (optional) tensor; outputs are tensors the
// torch layer allocated; `which` selects forward, backward or the fused pass where a primitive
// has all three.

#include <dlpack/dlpack.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "distill/attention/attention_map.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/core/context.hpp"
#include "distill/core/status.hpp"
#include "distill/detection/roi_align.hpp"
#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/features/feature_stats.hpp"
#include "distill/losses/dkd.hpp"
#include "distill/losses/jsd.hpp"
#include "distill/losses/multilabel_soft_target.hpp"
#include "distill/losses/topk_teacher.hpp"
#include "distill/relational/pairing.hpp"

namespace distill_torch {

using tensor = const DLTensor*;  ///< nullptr: absent

enum class pass { forward, backward, forward_backward };

/// What every loss call has: the pass, the student and teacher, the loss and the student's
/// gradient (outputs the pass computes, nullptr otherwise) and the primitive's options.
template <class Options>
struct loss_call {
  pass which = pass::forward_backward;
  tensor student = nullptr, teacher = nullptr;
  tensor loss = nullptr, grad_student = nullptr;
  Options options;
};

/// KL(teacher||student), reverse KL, JSD, soft cross-entropy, DKD, top-k teacher: student (N, C),
/// teacher (N, C), or (N, k) log-probabilities for top-k. `options` are the common ones; the
/// fields after them add JSD's, DKD's and top-k's own.
struct soft_target_call : loss_call<distill::soft_target_options> {
  enum class loss_kind { kl_teacher_student, kl_student_teacher, jsd, soft_cross_entropy, dkd, kl_topk_teacher_student };
  loss_kind kind = loss_kind::kl_teacher_student;
  tensor teacher_indices = nullptr;  ///< (N, k) int64, top-k only
  tensor labels = nullptr, row_weights = nullptr, temperature = nullptr;
  tensor grad_temperature = nullptr;
  float jsd_beta = 0.5f;
  distill::jsd_scaling jsd_scaling = distill::jsd_scaling::continuous;
  float dkd_alpha = 1.0f, dkd_beta = 8.0f;
  distill::topk_variant topk_variant = distill::topk_variant::renormalized;
};

/// Sigmoid soft targets for multi-label outputs: student, teacher (N, C).
struct multilabel_soft_target_call : loss_call<distill::multilabel_soft_target_options> {
  tensor labels = nullptr, mask = nullptr;  ///< (N, C) uint8
  tensor row_weights = nullptr, class_weights = nullptr, pos_weights = nullptr;
};

/// Attention transfer between (B, C, H, W) feature maps.
struct attention_transfer_call : loss_call<distill::attention_transfer_options> {};

/// Attention-map MSE or KL between (B, H, Lq, Lk) maps.
struct attention_map_call : loss_call<distill::attention_map_options> {
  bool kl = false;  ///< attention_map_kl_teacher_student instead of attention_map_mse
  tensor key_mask = nullptr, query_mask = nullptr;  ///< (B, Lk), (B, Lq) uint8
  std::vector<int> teacher_heads;  ///< what options.teacher_heads points into
};

/// Channel ((B, C, H, W)) or token ((B, L, D), optional mask) mean and standard deviation.
struct feature_stats_call {
  bool backward = false;
  tensor x = nullptr, token_mask = nullptr;
  tensor mean = nullptr, std_dev = nullptr;          ///< forward outputs
  tensor grad_mean = nullptr, grad_std = nullptr;    ///< backward inputs
  tensor grad_x = nullptr;                           ///< backward output
  distill::feature_stats_options options;
};

/// Statistics-matching loss (channel or token layout).
struct stats_matching_call : loss_call<distill::stats_matching_options> {
  tensor student_mask = nullptr, teacher_mask = nullptr;
};

/// AdaIN(content; style) and its backward.
struct adain_call {
  bool backward = false;
  tensor content = nullptr, style = nullptr;
  tensor out = nullptr;                                           ///< forward output
  tensor grad_out = nullptr, grad_style = nullptr, grad_content = nullptr;  ///< backward
  distill::adain_options options;
};

/// AdaIN statistics loss.
struct adain_stats_loss_call : loss_call<distill::adain_stats_loss_options> {};

/// Embedding alignment (MSE, squared L2, L1, cosine).
struct embedding_alignment_call : loss_call<distill::embedding_alignment_options> {
  tensor row_weights = nullptr, row_mask = nullptr;
};

/// The state of a sample queue whose storage is owned by the caller (a Python object).
struct queue_state {
  tensor keys = nullptr, ids = nullptr;  ///< (K, D), optional (K) int64
  std::int64_t write_position = 0, size = 0;
};

/// Token-wise InfoNCE against a sample queue.
struct token_nce_call : loss_call<distill::token_nce_options> {
  tensor token_mask = nullptr, token_ids = nullptr;
  queue_state queue;
  tensor per_token_loss = nullptr, grad_teacher = nullptr;
};

/// Enqueue, random initialisation, save and load of a sample queue; the new state is written
/// back into `queue`.
struct sample_queue_call {
  enum class action { enqueue, init_random, save, load };
  action what = action::enqueue;
  queue_state queue;
  tensor keys = nullptr, ids = nullptr;  ///< enqueue
  distill::enqueue_options enqueue;
  std::uint64_t seed = 0;  ///< init_random
  std::string path;        ///< save, load
};

/// Mask-gated relational pairing y = s sum_ij M_ij g(o_i, o_j, q).
struct relational_pairing_call {
  bool backward = false;
  tensor objects = nullptr, question = nullptr, pair_mask = nullptr, object_mask = nullptr;
  std::vector<tensor> weights, biases;  ///< g's layers: weight l (in, out), bias l (out) or nullptr
  tensor out = nullptr;                 ///< forward output (B, H)
  tensor grad_out = nullptr;            ///< backward input (B, H)
  tensor grad_objects = nullptr, grad_question = nullptr, grad_pair_mask = nullptr;
  std::vector<tensor> grad_weights, grad_biases;  ///< nullptr where not wanted
  distill::relational_pairing_options options;
};

/// RoI Align.
struct roi_align_call {
  bool backward = false;
  tensor input = nullptr, rois = nullptr, output = nullptr;  ///< forward
  tensor grad_output = nullptr, grad_input = nullptr;        ///< backward (rois as above)
  distill::roi_align_options options;
};

/// For each call type above: `workspace_size(ctx, call)`, the bytes of scratch `run` needs on
/// `ctx` (the torch layer allocates them with the tensors' allocator, so CUDA scratch comes from
/// PyTorch's caching allocator; 0 for the calls declared without scratch), and
/// `run(ctx, call, workspace)`, which views the call's tensors and runs the primitive
/// (`workspace`: that many bytes, or nullptr when it is 0). Templates over the context,
/// instantiated in calls_cpu_*.cpp (distill::cpu) and calls_cuda.cu (distill::cuda).
#define DISTILL_TORCH_DECLARE_RUN(Call) \
  template <class Ctx>                  \
  distill::status run(const Ctx& ctx, const Call& call, tensor workspace);
#define DISTILL_TORCH_DECLARE_CALL(Call)                        \
  template <class Ctx>                                          \
  std::size_t workspace_size(const Ctx& ctx, const Call& call); \
  DISTILL_TORCH_DECLARE_RUN(Call)
#define DISTILL_TORCH_DECLARE_CALL_WITHOUT_SCRATCH(Call) \
  template <class Ctx>                                   \
  std::size_t workspace_size(const Ctx&, const Call&) {  \
    return 0;                                            \
  }                                                      \
  DISTILL_TORCH_DECLARE_RUN(Call)
DISTILL_TORCH_DECLARE_CALL(soft_target_call)
DISTILL_TORCH_DECLARE_CALL(multilabel_soft_target_call)
DISTILL_TORCH_DECLARE_CALL(attention_transfer_call)
DISTILL_TORCH_DECLARE_CALL(attention_map_call)
DISTILL_TORCH_DECLARE_CALL_WITHOUT_SCRATCH(feature_stats_call)
DISTILL_TORCH_DECLARE_CALL(stats_matching_call)
DISTILL_TORCH_DECLARE_CALL_WITHOUT_SCRATCH(adain_call)
DISTILL_TORCH_DECLARE_CALL(adain_stats_loss_call)
DISTILL_TORCH_DECLARE_CALL(embedding_alignment_call)
DISTILL_TORCH_DECLARE_CALL(token_nce_call)
DISTILL_TORCH_DECLARE_CALL(relational_pairing_call)
DISTILL_TORCH_DECLARE_CALL_WITHOUT_SCRATCH(roi_align_call)
#undef DISTILL_TORCH_DECLARE_CALL_WITHOUT_SCRATCH
#undef DISTILL_TORCH_DECLARE_CALL
#undef DISTILL_TORCH_DECLARE_RUN

/// Enqueue, init_random, save or load; the new write position and size go back into call.queue.
template <class Ctx>
distill::status run(const Ctx& ctx, sample_queue_call& call);

}  // namespace distill_torch
