// SPDX-License-Identifier: MIT
#pragma once
// Call layer of the soft-target losses (dense and top-k) and the multi-label soft targets.

#include "calls_common.hpp"
#include "distill/losses/dkd.hpp"
#include "distill/losses/jsd.hpp"
#include "distill/losses/kl_student_teacher.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/losses/multilabel_soft_target.hpp"
#include "distill/losses/soft_cross_entropy.hpp"
#include "distill/losses/topk_teacher.hpp"

namespace distill_torch {

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const soft_target_call& c) {
  return distill::soft_target_workspace_size(ctx, extent(c.student, 0));
}

template <class Ctx>
distill::status run(const Ctx& ctx, const soft_target_call& c, tensor workspace) {
  using Space = typename Ctx::memory_space;
  using kind = soft_target_call::loss_kind;
  static constexpr const char* names[] = {"kl_teacher_student", "kl_student_teacher", "jsd",
                                          "soft_cross_entropy", "dkd",                "kl_topk_teacher_student"};
  const char* fn = names[static_cast<int>(c.kind)];
  return dispatch(wide_types<Ctx>{}, fn, "student", c.student, [&]<class T>(type_tag<T>) -> distill::status {
    using Acc = distill::accum_t<T>;
    distill::tensor_view<const T, 2, Space> student, teacher;
    distill::tensor_view<T, 2, Space> grad;
    distill::tensor_view<Acc, 1, Space> loss;
    distill::tensor_view<std::byte, 1, Space> ws;
    distill::soft_target_extras<Acc, Space> extras;
    DISTILL_TRY(view(fn, "student", c.student, student));
    DISTILL_TRY(view(fn, "teacher", c.teacher, teacher));
    DISTILL_TRY(view(fn, "grad_student", c.grad_student, grad));
    DISTILL_TRY(view(fn, "loss", c.loss, loss));
    DISTILL_TRY(workspace_view(fn, workspace, ws));
    DISTILL_TRY(labels_view(fn, "labels", c.labels, extras.labels));
    DISTILL_TRY(view(fn, "row_weights", c.row_weights, extras.row_weights));
    DISTILL_TRY(view(fn, "temperature", c.temperature, extras.temperature));
    DISTILL_TRY(view(fn, "grad_temperature", c.grad_temperature, extras.grad_temperature));

// One primitive's three passes with the views above and the options `o`.
#define DISTILL_TORCH_PASSES(name, ...)                                                                   \
  switch (c.which) {                                                                                     \
    case pass::forward: return distill::name##_forward(ctx, __VA_ARGS__, loss, extras, ws, o);           \
    case pass::backward: return distill::name##_backward(ctx, __VA_ARGS__, grad, extras, ws, o);         \
    default: return distill::name##_forward_backward(ctx, __VA_ARGS__, loss, grad, extras, ws, o);       \
  }

    switch (c.kind) {
      case kind::kl_teacher_student: {
        const auto& o = c.options;
        DISTILL_TORCH_PASSES(kl_teacher_student, student, teacher)
      }
      case kind::kl_student_teacher: {
        const auto& o = c.options;
        DISTILL_TORCH_PASSES(kl_student_teacher, student, teacher)
      }
      case kind::soft_cross_entropy: {
        const auto& o = c.options;
        DISTILL_TORCH_PASSES(soft_cross_entropy, student, teacher)
      }
      case kind::jsd: {
        distill::jsd_options o;
        static_cast<distill::soft_target_options&>(o) = c.options;
        o.beta = c.jsd_beta;
        o.scaling = c.jsd_scaling;
        DISTILL_TORCH_PASSES(jsd, student, teacher)
      }
      case kind::dkd: {
        distill::dkd_options o;
        static_cast<distill::soft_target_options&>(o) = c.options;
        o.alpha = c.dkd_alpha;
        o.beta = c.dkd_beta;
        DISTILL_TORCH_PASSES(dkd, student, teacher)
      }
      case kind::kl_topk_teacher_student: {
        distill::topk_teacher_options o;
        static_cast<distill::soft_target_options&>(o) = c.options;
        o.variant = c.topk_variant;
        distill::tensor_view<const std::int64_t, 2, Space> indices;
        DISTILL_TRY(view(fn, "teacher_indices", c.teacher_indices, indices));
        DISTILL_TORCH_PASSES(kl_topk_teacher_student, student, indices, teacher)
      }
    }
#undef DISTILL_TORCH_PASSES
    return distill::fail(distill::errc::invalid_argument, fn, "unknown loss");
  });
}

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const multilabel_soft_target_call& c) {
  return distill::multilabel_soft_target_workspace_size(ctx, extent(c.student, 0), extent(c.student, 1));
}

template <class Ctx>
distill::status run(const Ctx& ctx, const multilabel_soft_target_call& c, tensor workspace) {
  using Space = typename Ctx::memory_space;
  constexpr const char* fn = "multilabel_soft_target";
  return dispatch(wide_types<Ctx>{}, fn, "student", c.student, [&]<class T>(type_tag<T>) -> distill::status {
    using Acc = distill::accum_t<T>;
    distill::tensor_view<const T, 2, Space> student, teacher;
    distill::tensor_view<T, 2, Space> grad;
    distill::tensor_view<Acc, 1, Space> loss;
    distill::tensor_view<std::byte, 1, Space> ws;
    distill::multilabel_soft_target_inputs<Acc, Space> in;
    DISTILL_TRY(view(fn, "student", c.student, student));
    DISTILL_TRY(view(fn, "teacher", c.teacher, teacher));
    DISTILL_TRY(view(fn, "grad_student", c.grad_student, grad));
    DISTILL_TRY(view(fn, "loss", c.loss, loss));
    DISTILL_TRY(workspace_view(fn, workspace, ws));
    DISTILL_TRY(view(fn, "labels", c.labels, in.labels));
    DISTILL_TRY(view(fn, "mask", c.mask, in.mask));
    DISTILL_TRY(view(fn, "row_weights", c.row_weights, in.row_weights));
    DISTILL_TRY(view(fn, "class_weights", c.class_weights, in.class_weights));
    DISTILL_TRY(view(fn, "pos_weights", c.pos_weights, in.pos_weights));
    switch (c.which) {
      case pass::forward: return distill::multilabel_soft_target_forward(ctx, student, teacher, in, loss, ws, c.options);
      case pass::backward: return distill::multilabel_soft_target_backward(ctx, student, teacher, in, grad, ws, c.options);
      default:
        return distill::multilabel_soft_target_forward_backward(ctx, student, teacher, in, loss, grad, ws, c.options);
    }
  });
}

}  // namespace distill_torch
