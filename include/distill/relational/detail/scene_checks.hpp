// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! What the relational primitives (pairing, pair scorer) share about a batch of scenes: which
//! object pairs take part, and the checks of the scene inputs and of their gradients.
//!
//!   objects      [B, N, D]  required
//!   question     [B, Q]     optional (Q = 0 when absent)
//!   object_mask  [B, N]     optional, nonzero = the object is present (absent: all present)

#include <cstdint>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill::relational_detail {

/// Pair (i, j) of a sample takes part: both objects present, and i != j unless self pairs count.
DISTILL_HOST_DEVICE inline bool pair_in_set(bool obj_i, bool obj_j, index_t i, index_t j, bool include_self) noexcept {
  return obj_i && obj_j && (include_self || i != j);
}

/// Extents of a batch of scenes.
struct scene_dims {
  index_t B = 0, N = 0, D = 0, Q = 0;
};

/// Shapes and strides of the scene inputs; fills `d`.
template <class Space, class TO, class TQ>
status check_scene(const char* fn, const tensor_view<TO, 3, Space>& objects, const tensor_view<TQ, 2, Space>& question,
                   const tensor_view<const std::uint8_t, 2, Space>& object_mask, scene_dims& d) {
  DISTILL_TRY(check_present(fn, "objects", objects));
  DISTILL_TRY(check_nonempty(fn, "objects", objects));
  DISTILL_TRY(check_strides(fn, "objects", objects));
  d.B = objects.extent(0), d.N = objects.extent(1), d.D = objects.extent(2), d.Q = 0;
  DISTILL_TRY(check_optional(fn, "question", question));
  if (!question.empty()) {
    DISTILL_TRY(check_extent(fn, "question", question, 0, d.B, "batch size of 'objects'"));
    d.Q = question.extent(1);
  }
  return check_optional(fn, "object_mask", object_mask, {d.B, d.N});
}

/// The optional gradients of the scene inputs: grads.objects [B, N, D], grads.question [B, Q]
/// (only with a question).
template <class Space, class TG>
status check_scene_grads(const char* fn, const tensor_view<TG, 3, Space>& grad_objects,
                         const tensor_view<TG, 2, Space>& grad_question, const scene_dims& d) {
  DISTILL_TRY(check_optional(fn, "grads.objects", grad_objects, {d.B, d.N, d.D}));
  if (!grad_question.empty() && d.Q == 0)
    return fail(errc::invalid_argument, fn, "'grads.question' is given but 'question' is absent");
  return check_optional(fn, "grads.question", grad_question, {d.B, d.Q});
}

}  // namespace distill::relational_detail
