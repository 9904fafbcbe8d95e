// SPDX-License-Identifier: MIT
#pragma once
// What a model of the example is trained with (model_spec says which terms apply), written once
// for both memory spaces. It sees the student only through the signals its network hands over
// (logits, then through gradient_hooks the pair scores, tokens and feature maps) and the teacher
// only through teacher_signals, so any network can be a student of any teacher.
//
//   CE(logits, answer)                                           every model (students: weight 1 - alpha)
//   alpha T^2 KL(softmax(teacher/T) || softmax(student/T))        students (kl_teacher_student)
//   pair_weight * CE(softmax(scores), M_logic / sum M_logic)      teacher_predicted (pair_scorer_loss)
//   attention_weight * KL(teacher pairs || softmax(scores))       student (b) (attention_map_kl_teacher_student)
//   pixels, students: at_weight * AT(a_k^s, a_k^t) for conv blocks k = 1..3,
//                     adain_weight * AdaIN-statistics(a_3^s, a_3^t),
//                     nce_weight * token InfoNCE(student cells, teacher cells, queue of teacher cells)

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distill/attention/attention_map.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/features/adain.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/nn/blas.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/tensor.hpp"
#include "distill/relational/pair_scorer.hpp"
#include "runner.hpp"
#include "signals.hpp"

namespace vqa {

template <class Space>
class kd_objective final : public gradient_hooks<Space> {
 public:
  using T = float;
  using ctx_t = distill::nn::exec_t<Space>;
  using tensor = distill::nn::tensor<T, Space>;
  template <int R>
  using view = distill::tensor_view<T, R, Space>;
  template <int R>
  using cview = distill::tensor_view<const T, R, Space>;
  using byte_view = distill::tensor_view<std::byte, 1, Space>;

  kd_objective(const model_spec& spec, const train_config& cfg, const ctx_t& ctx) : spec_(spec), cfg_(cfg), ctx_(ctx) {}

  /// Whether this objective reads a teacher.
  bool needs_teacher() const { return spec_.distill_logits || spec_.distill_pairs || (spec_.distill_features && cfg_.pixels); }

  /// Starts the batch: its answers and logic mask, and the teacher (observed already, or null).
  distill::status begin(const host_batch& b, const teacher_signals<Space>* teacher) {
    teacher_ = teacher;
    losses_.clear(), loss_weights_.clear();
    if (b.answers) DISTILL_TRY(upload(answers_, b.answers, {b.size}));
    if (spec_.supervise_pairs && b.logic_mask) DISTILL_TRY(upload(logic_, b.logic_mask, {b.size, b.objects, b.objects}));
    return {};
  }

  /// The loss on the logits: CE, or for students (1 - alpha) CE + alpha T^2 KL from the teacher.
  distill::status logits(cview<2> logits, view<2> d_logits) {
    using namespace distill;
    if (spec_.distill_logits) {
      soft_target_options kd;
      kd.temperature = static_cast<float>(cfg_.temperature);
      kd.soft_weight = static_cast<float>(cfg_.alpha);
      kd.hard_label_weight = static_cast<float>(1.0 - cfg_.alpha);
      soft_target_extras<float, Space> extras;
      extras.labels = answers_.template cview<1>();
      const index_t B = logits.extent(0);
      return kl_teacher_student_forward_backward(ctx_, logits, teacher_->logits(), next_loss(), d_logits, extras,
                                                 sized(ws_soft_, soft_target_workspace_size(ctx_, B)), kd);
    }
    return nn::softmax_cross_entropy_forward_backward(ctx_, logits, answers_.template cview<1>(), next_loss(), d_logits);
  }

  // ---- gradient_hooks
  distill::status pair_scores(cview<3> scores, view<3> d_scores) override {
    using namespace distill;
    const index_t B = scores.extent(0), N = scores.extent(1);
    if (spec_.supervise_pairs) {  // CE(softmax(scores), logic mask / sum)
      pair_scorer_options o;
      o.normalization = pair_normalization::softmax_all;
      o.include_self_pairs = true;
      o.accumulate = true;
      o.reduction = reduction::batchmean;
      o.grad_scale = static_cast<float>(cfg_.pair_weight);
      const index_t D = cfg_.pixels ? cfg_.cnn_channels + 2 : 10;
      DISTILL_TRY(pair_scorer_loss_forward_backward(
          ctx_, scores, logic_.template cview<3>(), tensor_view<const std::uint8_t, 2, Space>{}, next_loss(cfg_.pair_weight),
          d_scores, sized(ws_scorer_, pair_scorer_workspace_size(ctx_, B, N, D, 11, spec_.scorer_hidden)), o));
    }
    if (spec_.distill_pairs) {  // KL(teacher pair distribution || softmax(scores)) over the N^2 pairs
      attention_map_options o;
      o.student_input = attention_input::logits;
      o.teacher_input = attention_input::probabilities;
      o.reduction = reduction::batchmean;
      o.grad_scale = cfg_.attention_weight;
      o.accumulate = true;
      const auto s4 = reshape<4>(scores, {B, 1, 1, N * N});
      const auto d4 = reshape<4>(d_scores, {B, 1, 1, N * N});
      DISTILL_TRY(attention_map_kl_teacher_student_forward_backward(ctx_, s4, teacher_->pair_distribution(), attention_masks<Space>{},
                                                                    next_loss(cfg_.attention_weight), d4,
                                                                    sized(ws_att_, attention_map_workspace_size(ctx_)), o));
    }
    return {};
  }

  distill::status tokens(cview<2> tokens, view<2> d_tokens) override {
    using namespace distill;
    if (!distils_features()) return {};
    // token-wise InfoNCE: student cell vs the teacher's cell at the same place, queue negatives
    const index_t M = tokens.extent(0), C = tokens.extent(1);
    if (queue_keys_.size() == 0) DISTILL_TRY(make_queue(C));
    token_nce_options o;
    o.temperature = static_cast<float>(cfg_.nce_temperature);
    o.in_batch_negatives = true;
    o.grad_scale = static_cast<float>(cfg_.nce_weight);
    o.accumulate = true;
    const token_nce_inputs<T, T, Space> in{tokens, teacher_->tokens()};
    const token_nce_outputs<T, T, Space> out{.loss = next_loss(cfg_.nce_weight), .grad_student = d_tokens};
    return token_nce_queue_forward_backward(ctx_, in, queue_, out,
                                            sized(ws_nce_, token_nce_queue_workspace_size<T>(ctx_, M, C, cfg_.queue_size, o)), o);
  }

  distill::status feature_map(int block, cview<4> map, view<4> d_map) override {
    using namespace distill;
    if (!distils_features() || block < 1) return {};
    // attention transfer on blocks 1..3, AdaIN statistics on the last block
    const index_t B = map.extent(0), C = map.extent(1);
    attention_transfer_options at;
    at.beta = cfg_.at_weight;
    at.accumulate = true;
    DISTILL_TRY(attention_transfer_forward_backward(
        ctx_, map, teacher_->feature_map(block), next_loss(), d_map,
        sized(ws_at_, attention_transfer_workspace_size(ctx_, B, map.extent(2), map.extent(3))), at));
    if (block == 3) {
      adain_stats_loss_options ad;
      ad.grad_scale = cfg_.adain_weight;
      ad.accumulate = true;
      DISTILL_TRY(adain_stats_loss_forward_backward(ctx_, map, teacher_->feature_map(block), next_loss(cfg_.adain_weight), d_map,
                                                    sized(ws_adain_, adain_stats_loss_workspace_size(ctx_, B, C)), ad));
    }
    return {};
  }

  /// The training loss of the batch: every term times its weight (the objective the gradients belong to).
  distill::status total(double& total) {
    total = 0;
    for (std::size_t i = 0; i < losses_.size(); ++i) {
      const auto v = losses_[i].to_host();
      total += loss_weights_[i] * v[0];
    }
    return {};
  }

  /// After the optimiser step: the teacher's tokens join the contrastive queue.
  distill::status end_step() {
    if (!distils_features() || !teacher_) return {};
    return distill::sample_queue_enqueue(ctx_, queue_, teacher_->tokens());
  }

  /// The contrastive queue is training state like the weights: checkpoints hold its image (keys,
  /// write position, fill), so a resumed student sees the same negatives as an uninterrupted one.
  distill::status save_state(distill::nn::checkpoint& ck) const {
    if (queue_keys_.size() == 0) return {};
    std::vector<unsigned char> image;
    DISTILL_TRY(distill::sample_queue_serialize(ctx_, queue_, image));
    return ck.put("state/contrastive_queue", image.data(), {static_cast<distill::index_t>(image.size())});
  }
  distill::status load_state(const distill::nn::checkpoint& ck, const std::string& path) {
    const auto* e = ck.find("state/contrastive_queue");
    if (!e) {
      if (cfg_.pixels && spec_.distill_features)  // a student past its first epoch always has one
        return distill::fail(distill::errc::corrupt_data, "kd_objective::load_state", "'" + path + "' holds no contrastive queue");
      return {};
    }
    if (queue_keys_.size() == 0) DISTILL_TRY(make_queue(cfg_.cnn_channels));
    return distill::sample_queue_deserialize(ctx_, queue_, e->bytes);
  }

 private:
  bool distils_features() const { return teacher_ && cfg_.pixels && spec_.distill_features; }

  template <class U>
  static distill::status upload(distill::nn::tensor<U, Space>& dst, const U* src, const distill::nn::tensor_shape& shape) {
    DISTILL_TRY(dst.resize(shape));
    return dst.copy_from_host(src, shape.size());
  }
  /// The workspace view of `bytes` bytes (absent if it cannot be allocated: the primitive then
  /// reports a missing workspace).
  static byte_view sized(distill::nn::tensor<std::byte, Space>& ws, std::size_t bytes) {
    if (!ws.resize({static_cast<distill::index_t>(bytes)}).ok()) return {};
    return ws.template view<1>();
  }
  /// Next loss scalar: each loss term writes its own; `weight` is what its gradient was scaled
  /// by (grad_scale), so that the weighted sum on the host is the objective being minimised.
  view<1> next_loss(double weight = 1.0) {
    losses_.emplace_back();
    loss_weights_.push_back(weight);
    distill::throw_if_error(losses_.back().resize({1}));
    return losses_.back().template view<1>();
  }
  /// The contrastive queue of teacher cells: keys [queue_size, dim] in Space, zero until filled.
  distill::status make_queue(distill::index_t dim) {
    DISTILL_TRY(queue_keys_.resize({cfg_.queue_size, dim}));
    DISTILL_TRY(distill::nn::fill_zero(ctx_, queue_keys_.template view<1>()));
    queue_ = distill::sample_queue<T, Space>(queue_keys_.template view<2>());
    return {};
  }

  model_spec spec_;
  train_config cfg_;
  const ctx_t& ctx_;
  const teacher_signals<Space>* teacher_ = nullptr;
  distill::nn::tensor<std::int64_t, Space> answers_;
  tensor logic_, queue_keys_;
  distill::sample_queue<T, Space> queue_;
  std::vector<tensor> losses_;
  std::vector<double> loss_weights_;
  distill::nn::tensor<std::byte, Space> ws_soft_, ws_scorer_, ws_att_, ws_at_, ws_adain_, ws_nce_;
};

}  // namespace vqa
