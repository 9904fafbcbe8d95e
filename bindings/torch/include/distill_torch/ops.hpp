// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! distill's primitives as PyTorch operators (namespace `distill` of the dispatcher; Python:
//! `torch.ops.distill.<name>`, or the autograd-aware functions of the `distill_torch` package).
//! A C++ program that links libtorch calls the same functions directly, declared here; each is
//! registered for the CPU key (and the CUDA key when built against a CUDA-enabled PyTorch) and
//! throws c10::ValueError / c10::TypeError / c10::Error carrying distill's message, which names
//! the entry point and the argument.
//!
//! Tensors are used in place: distill views their memory with their own strides (no copy);
//! outputs are new contiguous tensors. CPU calls run on at::get_num_threads() threads; CUDA calls
//! on the tensors' device and its current stream, with scratch from PyTorch's caching allocator.
//!
//! `pass` is "forward" (loss only), "backward" (gradient only) or "forward_backward" (both, one
//! pass over the inputs); outputs a pass does not compute are undefined tensors (None in Python).
//! A reduced loss is a 0-dim tensor; reduction "none" gives one value per row (sample, token).
//! Losses accumulate in float32 (float64 for float64 inputs). Option names and defaults are
//! those of the distill options structs (docs/torch.md lists them per operator).

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace distill_torch {

using opt_tensor = c10::optional<at::Tensor>;

/// Soft targets: loss in {"kl_teacher_student", "kl_student_teacher", "jsd", "soft_cross_entropy",
/// "dkd", "kl_topk_teacher_student"}; student (N, C); teacher (N, C) logits, or for the top-k loss
/// (N, k) values with `teacher_indices` (N, k) int64. `temperature_tensor` (1): a learnable
/// temperature (overrides `temperature`; its gradient is the third output).
/// Returns (loss, grad_student, grad_temperature).
std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target(
    c10::string_view loss, c10::string_view pass, const at::Tensor& student, const at::Tensor& teacher,
    const opt_tensor& teacher_indices, const opt_tensor& labels, const opt_tensor& row_weights,
    const opt_tensor& temperature_tensor, double temperature, bool scale_by_t_squared, c10::string_view reduction,
    double soft_weight, double hard_label_weight, int64_t ignore_index, double grad_scale, double jsd_beta,
    c10::string_view jsd_scaling, double dkd_alpha, double dkd_beta, c10::string_view topk_variant);

/// Multi-label sigmoid soft targets; labels and mask (N, C) uint8 or bool. Returns (loss, grad_student).
std::tuple<at::Tensor, at::Tensor> multilabel_soft_target(
    c10::string_view pass, const at::Tensor& student, const at::Tensor& teacher, const opt_tensor& labels,
    const opt_tensor& mask, const opt_tensor& row_weights, const opt_tensor& class_weights, const opt_tensor& pos_weights,
    double temperature, bool scale_by_t_squared, c10::string_view reduction, double soft_weight, double hard_label_weight,
    bool subtract_teacher_entropy, double grad_scale);

/// Attention transfer between (B, C, H, W) feature maps. Returns (loss, grad_student).
std::tuple<at::Tensor, at::Tensor> attention_transfer(c10::string_view pass, const at::Tensor& student,
                                                      const at::Tensor& teacher, double p, double beta,
                                                      c10::string_view form, c10::string_view reduction, double eps,
                                                      double grad_scale);

/// Attention-map MSE or KL ("mse", "kl_teacher_student") between (B, H, Lq, Lk) maps.
/// Returns (loss, grad_student).
std::tuple<at::Tensor, at::Tensor> attention_map(c10::string_view divergence, c10::string_view pass,
                                                 const at::Tensor& student, const at::Tensor& teacher,
                                                 const opt_tensor& key_mask, const opt_tensor& query_mask,
                                                 c10::string_view student_input, c10::string_view teacher_input,
                                                 c10::string_view head_map, at::IntArrayRef teacher_heads,
                                                 c10::string_view reduction, double grad_scale);

/// Per-channel ((B, C, H, W)) or per-feature ((B, L, D), optional token_mask) mean and standard
/// deviation sqrt(var + eps). Returns (mean, std), each (B, C) or (B, D).
std::tuple<at::Tensor, at::Tensor> feature_stats(const at::Tensor& x, const opt_tensor& token_mask, double eps,
                                                 bool unbiased);
/// Gradient of any loss of (mean, std) with respect to x.
at::Tensor feature_stats_backward(const at::Tensor& x, const at::Tensor& grad_mean, const at::Tensor& grad_std,
                                  const opt_tensor& token_mask, double eps, bool unbiased);

/// Statistics-matching loss (channel or token layout). Returns (loss, grad_student).
std::tuple<at::Tensor, at::Tensor> stats_matching(c10::string_view pass, const at::Tensor& student,
                                                  const at::Tensor& teacher, const opt_tensor& student_mask,
                                                  const opt_tensor& teacher_mask, double eps, bool unbiased,
                                                  double mean_weight, double std_weight, c10::string_view reduction,
                                                  double grad_scale);

/// AdaIN(content; style) over (B, C, H, W) maps.
at::Tensor adain(const at::Tensor& content, const at::Tensor& style, double eps, bool unbiased);
/// Its backward: (grad_content (undefined unless content_grad), grad_style).
std::tuple<at::Tensor, at::Tensor> adain_backward(const at::Tensor& content, const at::Tensor& style,
                                                  const at::Tensor& grad_out, bool content_grad, double eps,
                                                  bool unbiased);

/// AdaIN statistics loss. Returns (loss, grad_student).
std::tuple<at::Tensor, at::Tensor> adain_stats_loss(c10::string_view pass, const at::Tensor& student,
                                                    const at::Tensor& teacher, double eps, bool unbiased,
                                                    double adain_weight, double mean_weight, double std_weight,
                                                    c10::string_view reduction, double grad_scale);

/// Embedding alignment of (N, D) rows; metric "mse", "squared_l2", "l1", "cosine"; normalize
/// "none", "clamp", "zero_below_eps". Returns (loss, grad_student).
std::tuple<at::Tensor, at::Tensor> embedding_alignment(c10::string_view pass, const at::Tensor& student,
                                                       const at::Tensor& teacher, const opt_tensor& row_weights,
                                                       const opt_tensor& row_mask, c10::string_view metric,
                                                       c10::string_view normalize, double norm_eps, double scale,
                                                       c10::string_view reduction, double grad_scale);

/// Token-wise InfoNCE of (M, D) tokens against the queue (keys (K, D), optional ids (K), state).
/// Returns (loss, per_token_loss, grad_student, grad_teacher).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_nce(
    c10::string_view pass, const at::Tensor& student, const at::Tensor& teacher, const opt_tensor& queue_keys,
    const opt_tensor& queue_ids, int64_t queue_write_position, int64_t queue_size, const opt_tensor& token_mask,
    const opt_tensor& token_ids, bool teacher_grad, bool per_token, double temperature, c10::string_view reduction,
    bool in_batch_negatives, double normalize_eps, double grad_scale, c10::string_view precision);

/// Sample queue over caller-owned keys (K, D) and optional ids (K); each returns the new
/// (write_position, size) except save.
std::vector<int64_t> sample_queue_enqueue(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position,
                                          int64_t size, const at::Tensor& new_keys, const opt_tensor& new_ids,
                                          bool normalize, double normalize_eps);
std::vector<int64_t> sample_queue_init_random(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position,
                                              int64_t size, int64_t seed);
void sample_queue_save(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position, int64_t size,
                       c10::string_view path);
std::vector<int64_t> sample_queue_load(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position,
                                       int64_t size, c10::string_view path);

/// Relational pairing y (B, H) = mask_scale * sum_ij M_ij g(o_i, o_j, q); g's weights (in, out)
/// (an nn.Linear weight transposed, no copy), biases (out) or None.
at::Tensor relational_pairing(const at::Tensor& objects, const at::Tensor& question, const opt_tensor& pair_mask,
                              const opt_tensor& object_mask, at::TensorList weights,
                              const c10::List<c10::optional<at::Tensor>>& biases, bool include_self_pairs,
                              bool last_relu, double mask_scale, c10::string_view precision, int64_t tile_pairs);
/// Its backward; `needs` says which of (objects, question, pair_mask, g's parameters) get a
/// gradient. Returns (grad_objects, grad_question, grad_pair_mask, grad_weights, grad_biases).
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> relational_pairing_backward(
    const at::Tensor& objects, const at::Tensor& question, const opt_tensor& pair_mask, const opt_tensor& object_mask,
    at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases, const at::Tensor& grad_out,
    at::IntArrayRef needs, bool include_self_pairs, bool last_relu, double mask_scale, c10::string_view precision,
    int64_t tile_pairs);

/// RoI Align (torchvision semantics): input (B, C, H, W), rois (K, 5) -> (K, C, pooled_height, pooled_width).
at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width,
                     double spatial_scale, int64_t sampling_ratio, bool aligned);
/// Gradient with respect to the input map of shape `input_shape` (B, C, H, W).
at::Tensor roi_align_backward(const at::Tensor& rois, const at::Tensor& grad_output, at::IntArrayRef input_shape,
                              double spatial_scale, int64_t sampling_ratio, bool aligned);

}  // namespace distill_torch
