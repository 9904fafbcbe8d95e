// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Umbrella header: everything distill offers. Each include lists what it defines.
//! CUDA overloads (taking `distill::cuda` and `cuda_view`s) are visible only when nvcc compiles
//! the translation unit.

// ---- core ----
#include "distill/version.hpp"            // defines: version_string
#include "distill/core/config.hpp"        // defines: index_t, DISTILL_HOST_DEVICE
#include "distill/core/status.hpp"        // defines: status, errc, error, throw_if_error, DISTILL_TRY
#include "distill/core/tensor_view.hpp"   // defines: tensor_view, host_view, cuda_view, in_view, make_view, make_strided_view
#include "distill/core/labels.hpp"        // defines: label_view (int32 or int64 labels)
#include "distill/core/precision.hpp"     // defines: matmul_precision (fp32, tf32, bf16)
#include "distill/core/context.hpp"       // defines: cpu, cuda (execution contexts)
#include "distill/core/dtype.hpp"         // defines: float16, bfloat16, accum_t, load, store
#include "distill/core/math.hpp"          // defines: lse_state, xlogy, log1mexp, log_add_exp
#include "distill/core/reduction.hpp"     // defines: reduction (none, sum, mean, batchmean)
#include "distill/core/checks.hpp"        // defines: check_* argument validation helpers, check_workspace
#include "distill/core/parallel.hpp"      // defines: parallel_for, parallel_sum
#include "distill/core/simd.hpp"          // defines: simd::batch, simd::width, simd::load/store/stream, simd::instruction_set
#include "distill/core/cpu_gemm.hpp"      // defines: gemm (Eigen, threaded), gemm_workspace_size, transpose
#include "distill/core/file_io.hpp"       // defines: fnv1a64, put_le32/64, get_le32/64, write_file_atomically, read_file
#include "distill/core/safetensors.hpp"   // defines: safetensors_serialize, safetensors_parse, safetensors_file, is_safetensors, file_format
#include "distill/core/splitmix64.hpp"    // defines: splitmix64, splitmix64_mix, splitmix64_at, splitmix64_hash

// ---- primitives ----
#include "distill/core/fast_math.hpp"                // defines: fast_exp, fast_log, fast_log1p (float and SIMD batches)
#include "distill/losses/soft_target_common.hpp"      // defines: soft_target_options, soft_target_extras, soft_target_workspace_size
#include "distill/losses/kl_teacher_student.hpp"      // defines: kl_teacher_student_forward/backward/forward_backward
#include "distill/losses/kl_student_teacher.hpp"      // defines: kl_student_teacher_forward/backward/forward_backward
#include "distill/losses/jsd.hpp"                     // defines: jsd_forward/backward/forward_backward, jsd_options, jsd_scaling
#include "distill/losses/soft_cross_entropy.hpp"      // defines: soft_cross_entropy_forward/backward/forward_backward
#include "distill/losses/dkd.hpp"                     // defines: dkd_forward/backward/forward_backward, dkd_options
#include "distill/losses/topk_teacher.hpp"            // defines: kl_topk_teacher_student_forward/backward/forward_backward, topk_teacher_options, topk_variant
#include "distill/losses/topk_teacher_file.hpp"       // defines: topk_teacher_write, topk_teacher_write_shard, topk_teacher_read, topk_teacher_file_info, row_split_begin
#include "distill/losses/multilabel_soft_target.hpp"   // defines: multilabel_soft_target_forward/backward/forward_backward, multilabel_soft_target_options, multilabel_soft_target_inputs, multilabel_soft_target_workspace_size
#include "distill/relational/pairing.hpp"       // defines: relational_pairing_forward/backward/forward_backward, relational_mlp, relational_mlp_view, relational_pairing_grads, relational_pairing_options, relational_pairing_workspace_size
#include "distill/relational/pair_scorer.hpp"   // defines: pair_scorer_forward/backward, pair_scorer_loss_forward/backward/forward_backward, pair_scorer_weights, pair_scorer_grads, pair_scorer_options, pair_scorer_kind, pair_normalization, pair_scorer_workspace_size
#include "distill/relational/box_geometry.hpp"  // defines: box_pair_features_forward/backward, box_pair_features_all_pairs_forward, box_pairs, box_pair_grads, box_pair_feature_count, box_features_options
#include "distill/detection/boxes.hpp"      // defines: box_iou, box_match, box_clip, box_encode, box_decode_forward/backward, box_clip_options, box_coder_options
#include "distill/detection/nms.hpp"        // defines: non_max_suppression, nms_options
#include "distill/detection/sliding_windows.hpp"  // defines: sliding_window_boxes, sliding_window_count, sliding_window_options
#include "distill/detection/anchor_labels.hpp"    // defines: anchor_labels, anchor_label_options, anchor_positive/negative/ignored
#include "distill/detection/smooth_l1.hpp"        // defines: smooth_l1_forward/backward/forward_backward, smooth_l1_options, smooth_l1_workspace_size
#include "distill/detection/roi_align.hpp"  // defines: roi_align_forward/backward, roi_align_options
#include "distill/detection/wsddn.hpp"      // defines: wsddn_forward/backward/forward_backward, wsddn_streams, wsddn_host_streams, wsddn_options, wsddn_workspace_size
#include "distill/metrics/average_precision.hpp"  // defines: average_precision, multilabel_average_precision, ap_interpolation, average_precision_options
#include "distill/metrics/detection_metrics.hpp"  // defines: detection_average_precision, corloc, detection_list, ground_truth_list, detection_ap_options, corloc_options
#include "distill/metrics/topk_accuracy.hpp"      // defines: topk_accuracy, topk_accuracy_options
#include "distill/metrics/proposal_recall.hpp"    // defines: proposal_recall, image_box_list, proposal_recall_options
#include "distill/logic/lukasiewicz.hpp"    // defines: lukasiewicz_and/or/not/implies(_n), distance_to_satisfaction, hinge_energy
#include "distill/logic/scene.hpp"          // defines: scene_object, spatial_predicate_options, builtin_predicate, builtin_truth_values, check_scene
#include "distill/logic/rules.hpp"          // defines: rule_set, parse_rules, load_rules, rule_error, logic_rule, predicate_kind
#include "distill/logic/inference.hpp"      // defines: logic_solver, logic_options, logic_report, logic_mask, logic_mask_batch, observed_values
#include "distill/features/feature_stats.hpp"              // defines: channel_stats_*, token_stats_*, stats_matching_*, feature_stats_options, stats_matching_options, stats_matching_workspace_size
#include "distill/features/adain.hpp"                      // defines: adain_forward/backward, adain_stats_loss_*, adain_kd_loss_forward(_backward), adain_kd_buffers, adain_options, adain_stats_loss_workspace_size, adain_kd_loss_workspace_size
#include "distill/features/embedding_alignment.hpp"        // defines: embedding_alignment_*, embedding_metric, l2_normalization, embedding_alignment_options, embedding_alignment_workspace_size
#include "distill/features/text_embedding_classifier.hpp"  // defines: text_classifier_forward/backward, text_classifier_cross_entropy_*, text_classifier_options, text_classifier_workspace_size
#include "distill/attention/attention_transfer.hpp"  // defines: attention_transfer_{forward,backward,forward_backward}, attention_transfer_options, attention_transfer_layer, attention_transfer_workspace_size
#include "distill/attention/attention_map.hpp"       // defines: attention_map_mse_*, attention_map_kl_teacher_student_*, attention_map_options, attention_masks, attention_map_workspace_size
#include "distill/attention/attention_diversity.hpp"  // defines: attention_diversity_{forward,backward,forward_backward,target,shift}, attention_diversity_options, attention_diversity_workspace_size
#include "distill/contrastive/sample_queue.hpp"     // defines: sample_queue, host_sample_queue, cuda_sample_queue (nvcc), sample_queue_enqueue, sample_queue_init_random, sample_queue_save, sample_queue_load, sample_queue_serialize, sample_queue_deserialize, no_sample_id
#include "distill/contrastive/token_nce.hpp"        // defines: token_nce_queue_forward, token_nce_queue_backward, token_nce_queue_forward_backward, token_nce_queue_workspace_size, token_nce_inputs, token_nce_outputs, token_nce_options
#include "distill/contrastive/momentum_update.hpp"  // defines: momentum_update, momentum_param
#include "distill/distributed/communicator.hpp"  // defines: communicator (concept), reduce_op, single_process_communicator, counting_communicator, all_reduce_merge_workspace_size (MPI: distributed/mpi_communicator.hpp, NCCL: distributed/nccl_communicator.hpp)
#include "distill/distributed/vocab_parallel_soft_target.hpp"  // defines: vocab_parallel_{kl_teacher_student,kl_student_teacher,jsd}_{forward,backward,forward_backward}, vocab_shard, vocab_parallel_row, vocab_parallel_workspace_size (CPU; CUDA under nvcc: distill/cuda/vocab_parallel_soft_target.cuh)
#include "distill/distributed/sample_queue_all_ranks.hpp"  // defines: sample_queue_enqueue_all_ranks, sample_queue_save_rank0, sample_queue_load_all_ranks, sample_queue_all_ranks_workspace_size
#include "distill/distributed/data_parallel.hpp"  // defines: data_parallel_replica, local_batch, all_reduce_gradients, gradient_buckets, broadcast_parameters
#include "distill/nn/tensor.hpp"         // defines: nn::tensor, nn::host_tensor, nn::device_tensor (nvcc), nn::tensor_shape, nn::fill_zero
#include "distill/nn/blas.hpp"           // defines: nn::cuda_blas (nvcc), nn::exec_t, nn::exec_options, nn::make_exec
#include "distill/nn/random.hpp"         // defines: nn::stream_key, nn::random_bits, nn::random_u24 (counter-based RNG)
#include "distill/nn/parameter.hpp"      // defines: nn::parameter, nn::parameter_list, nn::collect_parameters, nn::set_trainable, nn::zero_grad, nn::grad_norm, nn::clip_grad_norm
#include "distill/nn/init.hpp"           // defines: nn::init_scheme, nn::init_options, nn::init_weight_and_bias, nn::draw_uniform, nn::draw_normal
#include "distill/nn/common.hpp"         // defines: nn::grad_options, nn::out_view
#include "distill/nn/linear.hpp"         // defines: nn::linear_forward/backward, nn::linear
#include "distill/nn/activation.hpp"     // defines: nn::activation, nn::activation_forward/backward
#include "distill/nn/dropout.hpp"        // defines: nn::dropout_forward/backward, nn::dropout_params, nn::dropout
#include "distill/nn/replica.hpp"        // defines: nn::replica, nn::replica_sum (data-parallel share of a batch)
#include "distill/nn/embedding.hpp"      // defines: nn::embedding_forward/backward, nn::embedding
#include "distill/nn/layer_norm.hpp"     // defines: nn::layer_norm_forward/backward, nn::layer_norm
#include "distill/nn/batch_norm.hpp"     // defines: nn::batch_norm_forward/backward, nn::batch_norm_params, nn::batch_norm
#include "distill/nn/conv2d.hpp"         // defines: nn::conv2d_forward/backward, nn::conv2d_params, nn::conv2d_workspace_size, nn::conv2d
#include "distill/nn/depthwise_conv2d.hpp"  // defines: nn::depthwise_conv2d_forward/backward, nn::depthwise_conv2d_workspace_size, nn::depthwise_conv2d
#include "distill/nn/conv_transpose2d.hpp"  // defines: nn::conv_transpose2d_forward/backward, nn::conv_transpose2d_params, nn::conv_transpose2d_workspace_size, nn::conv_transpose2d
#include "distill/nn/pooling.hpp"        // defines: nn::global_avg_pool_*, nn::max_pool2d_*, nn::avg_pool2d_*, nn::pool2d_params
#include "distill/nn/reshape.hpp"        // defines: nn::nchw_to_tokens, nn::tokens_to_nchw
#include "distill/nn/cast.hpp"           // defines: nn::cast (float, double, float16, bfloat16 storage)
#include "distill/nn/attention.hpp"      // defines: nn::attention_core_forward/backward, nn::attention_params, nn::attention_core_workspace_size, nn::multi_head_attention
#include "distill/nn/transformer.hpp"    // defines: nn::transformer_encoder_layer, nn::transformer_encoder, nn::transformer_options
#include "distill/nn/cross_entropy.hpp"  // defines: nn::softmax_cross_entropy_forward(_backward), nn::cross_entropy_options, nn::argmax_rows
#include "distill/nn/optimizer.hpp"      // defines: nn::sgd, nn::adam, nn::adamw, nn::param_group, nn::sgd_options, nn::adam_options
#include "distill/nn/schedule.hpp"       // defines: nn::lr_schedule (constant, step, cosine, warm-up)
#include "distill/nn/checkpoint.hpp"     // defines: nn::checkpoint, nn::checkpoint_save_options
#include "distill/nn/sequential.hpp"     // defines: nn::sequential (layer_if), nn::make_mlp, nn::mlp_options, pooling/flatten stages
