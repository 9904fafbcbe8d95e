// SPDX-License-Identifier: MIT
#pragma once
// The two interfaces that separate a network from what it is trained with:
//
//   teacher_signals<Space>  what a trained model exposes to students: its answer logits, the
//                           distribution over object pairs it attends to, its CNN feature maps
//                           and object tokens (pixels). Any model can be a teacher by
//                           implementing it; a student reads nothing else of its teacher.
//   gradient_hooks<Space>   what a training objective (objective.hpp) adds to the gradients of a
//                           network's intermediate signals while the network runs its backward
//                           pass, at the moment the pass reaches them.
//
// Views live in the model's memory space (host or CUDA) and stay valid until the next forward.

#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "runner.hpp"

namespace vqa {

template <class Space>
class teacher_signals {
 public:
  template <int R>
  using cview = distill::tensor_view<const float, R, Space>;
  virtual ~teacher_signals() = default;

  /// Runs the model on the batch in evaluation mode; the views below then describe it.
  [[nodiscard]] virtual distill::status observe(const host_batch& b) = 0;
  /// [B, answers] answer logits.
  virtual cview<2> logits() const = 0;
  /// [B, 1, 1, N * N] the distribution over ordered object pairs the model weights its pairs
  /// by (absent when it weighs every pair alike).
  virtual cview<4> pair_distribution() const = 0;
  /// [B, C, H, W] the feature map after CNN block k (pixels; absent otherwise).
  virtual cview<4> feature_map(int block) const = 0;
  /// [B * cells, C] the object tokens: the CNN's last map as one row per cell (pixels).
  virtual cview<2> tokens() const = 0;
};

template <class Space>
class gradient_hooks {
 public:
  template <int R>
  using view = distill::tensor_view<float, R, Space>;
  template <int R>
  using cview = distill::tensor_view<const float, R, Space>;
  virtual ~gradient_hooks() = default;

  /// Pair scores [B, N, N] (attention models); `d_scores` is zero before the call.
  [[nodiscard]] virtual distill::status pair_scores(cview<3> scores, view<3> d_scores) = 0;
  /// Object tokens [B * cells, C]; `d_tokens` holds what the relational part sends back.
  [[nodiscard]] virtual distill::status tokens(cview<2> tokens, view<2> d_tokens) = 0;
  /// The feature map after CNN block k; `d_map` holds what the later blocks send back.
  [[nodiscard]] virtual distill::status feature_map(int block, cview<4> map, view<4> d_map) = 0;
};

}  // namespace vqa
