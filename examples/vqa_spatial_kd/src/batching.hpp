// SPDX-License-Identifier: MIT
#pragma once
// Mini-batches for the Sort-of-CLEVR trainers: the gathering of a batch of questions into the
// dense arrays the models read (the reproducible shuffle per (seed, epoch) is
// examples::shuffled_order, ../../common/random.hpp):
//   objects    (B, 6, 10)       state-description features of each question's image
//                               [x/75, y/75, colour one-hot, shape one-hot] (sort_of_clevr.hpp)
//   questions  (B, 11)          the 11-float question encoding
//   answers    (B)              the answer class 0..9
//   images     (B, 3, 75, 75)   pixels as CHW floats in [0, 1] (rasterised on the fly when the
//                               dataset was generated without pixels)
// All arrays are row-major and contiguous; the caller owns them.

#include <cstdint>
#include <span>
#include <stdexcept>
#include <utility>
#include <vector>

#include "sort_of_clevr.hpp"

namespace vqa {

using examples::shuffled_order;

/// Fills the state-description inputs of a batch of questions (ids index d.questions).
/// objects.size() = B·60, questions.size() = B·11, answers.size() = B (answers may be empty).
inline void gather_state_batch(const dataset& d, std::span<const std::uint32_t> question_ids, std::span<float> objects,
                               std::span<float> questions, std::span<std::int32_t> answers = {}) {
  const std::size_t b = question_ids.size();
  constexpr std::size_t obj = std::size_t{object_count} * object_feature_size;
  if (objects.size() != b * obj || questions.size() != b * question_size || (!answers.empty() && answers.size() != b))
    throw std::invalid_argument("gather_state_batch: objects must hold B x 6 x 10, questions B x 11, answers B values");
  for (std::size_t i = 0; i < b; ++i) {
    if (question_ids[i] >= d.questions.size()) throw std::out_of_range("gather_state_batch: question id out of range");
    const question& q = d.questions[question_ids[i]];
    object_features(d.scenes[q.image], objects.subspan(i * obj, obj));
    encode_question(q, questions.subspan(i * question_size, question_size));
    if (!answers.empty()) answers[i] = q.answer;
  }
}

/// Fills the pixel input of a batch of questions: images.size() = B·3·75·75 (CHW floats in [0, 1]).
inline void gather_image_batch(const dataset& d, std::span<const std::uint32_t> question_ids, std::span<float> images) {
  const std::size_t b = question_ids.size();
  if (images.size() != b * image_bytes) throw std::invalid_argument("gather_image_batch: images must hold B x 3 x 75 x 75 floats");
  std::vector<std::uint8_t> scratch;
  for (std::size_t i = 0; i < b; ++i) {
    if (question_ids[i] >= d.questions.size()) throw std::out_of_range("gather_image_batch: question id out of range");
    const question& q = d.questions[question_ids[i]];
    std::span<const std::uint8_t> hwc;
    if (d.has_pixels()) {
      hwc = d.image(q.image);
    } else {
      scratch.resize(image_bytes);
      rasterize(d.scenes[q.image], scratch);
      hwc = scratch;
    }
    to_chw_float(hwc, images.subspan(i * image_bytes, image_bytes));
  }
}

}  // namespace vqa
