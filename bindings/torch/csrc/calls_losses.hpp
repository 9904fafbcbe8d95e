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
  return with_loss_views<2>(ctx, wide_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
    distill::soft_target_extras<accum_of<decltype(v)>, Space> extras;
    DISTILL_TRY(labels_view(fn, "labels", c.labels, extras.labels));
    DISTILL_TRY(view(fn, "row_weights", c.row_weights, extras.row_weights));
    DISTILL_TRY(view(fn, "temperature", c.temperature, extras.temperature));
    DISTILL_TRY(view(fn, "grad_temperature", c.grad_temperature, extras.grad_temperature));
    // the options of the dense losses: the common ones, extended by JSD, DKD and top-k
    const auto with_common = [&](auto o) {
      static_cast<distill::soft_target_options&>(o) = c.options;
      return o;
    };
    switch (c.kind) {
      case kind::kl_teacher_student:
        DISTILL_TORCH_RETURN_PASS(c.which, kl_teacher_student, v, (ctx, v.student, v.teacher), (extras, v.ws, c.options))
      case kind::kl_student_teacher:
        DISTILL_TORCH_RETURN_PASS(c.which, kl_student_teacher, v, (ctx, v.student, v.teacher), (extras, v.ws, c.options))
      case kind::soft_cross_entropy:
        DISTILL_TORCH_RETURN_PASS(c.which, soft_cross_entropy, v, (ctx, v.student, v.teacher), (extras, v.ws, c.options))
      case kind::jsd: {
        distill::jsd_options o = with_common(distill::jsd_options{});
        o.beta = c.jsd_beta;
        o.scaling = c.jsd_scaling;
        DISTILL_TORCH_RETURN_PASS(c.which, jsd, v, (ctx, v.student, v.teacher), (extras, v.ws, o))
      }
      case kind::dkd: {
        distill::dkd_options o = with_common(distill::dkd_options{});
        o.alpha = c.dkd_alpha;
        o.beta = c.dkd_beta;
        DISTILL_TORCH_RETURN_PASS(c.which, dkd, v, (ctx, v.student, v.teacher), (extras, v.ws, o))
      }
      case kind::kl_topk_teacher_student: {
        distill::topk_teacher_options o = with_common(distill::topk_teacher_options{});
        o.variant = c.topk_variant;
        distill::tensor_view<const std::int64_t, 2, Space> indices;
        DISTILL_TRY(view(fn, "teacher_indices", c.teacher_indices, indices));
        DISTILL_TORCH_RETURN_PASS(c.which, kl_topk_teacher_student, v, (ctx, v.student, indices, v.teacher), (extras, v.ws, o))
      }
    }
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
  return with_loss_views<2>(ctx, wide_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
    distill::multilabel_soft_target_inputs<accum_of<decltype(v)>, Space> in;
    DISTILL_TRY(view(fn, "labels", c.labels, in.labels));
    DISTILL_TRY(view(fn, "mask", c.mask, in.mask));
    DISTILL_TRY(view(fn, "row_weights", c.row_weights, in.row_weights));
    DISTILL_TRY(view(fn, "class_weights", c.class_weights, in.class_weights));
    DISTILL_TRY(view(fn, "pos_weights", c.pos_weights, in.pos_weights));
    DISTILL_TORCH_RETURN_PASS(c.which, multilabel_soft_target, v, (ctx, v.student, v.teacher, in), (v.ws, c.options))
  });
}

}  // namespace distill_torch
