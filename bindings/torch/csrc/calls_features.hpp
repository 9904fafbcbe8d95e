// SPDX-License-Identifier: MIT
#pragma once
// Call layer of attention transfer, attention maps, feature statistics, the statistics-matching
// loss, AdaIN, the AdaIN statistics loss and embedding alignment.

#include <span>

#include "calls_common.hpp"
#include "distill/attention/attention_map.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/features/feature_stats.hpp"

namespace distill_torch {

// ---- attention transfer ----

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const attention_transfer_call& c) {
  return distill::attention_transfer_workspace_size(ctx, extent(c.student, 0), extent(c.student, 2), extent(c.student, 3));
}

template <class Ctx>
distill::status run(const Ctx& ctx, const attention_transfer_call& c, tensor workspace) {
  constexpr const char* fn = "attention_transfer";
  return with_loss_views<4>(ctx, wide_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
    DISTILL_TORCH_RETURN_PASS(c.which, attention_transfer, v, (ctx, v.student, v.teacher), (v.ws, c.options))
  });
}

// ---- attention maps ----

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const attention_map_call&) {
  return distill::attention_map_workspace_size(ctx);
}

template <class Ctx>
distill::status run(const Ctx& ctx, const attention_map_call& c, tensor workspace) {
  using Space = typename Ctx::memory_space;
  const char* fn = c.kl ? "attention_map_kl_teacher_student" : "attention_map_mse";
  return with_loss_views<4>(ctx, wide_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
    distill::attention_masks<Space> masks;
    DISTILL_TRY(view(fn, "key_mask", c.key_mask, masks.key));
    DISTILL_TRY(view(fn, "query_mask", c.query_mask, masks.query));
    distill::attention_map_options o = c.options;
    o.teacher_heads = std::span<const int>(c.teacher_heads);
    if (c.kl)
      DISTILL_TORCH_RETURN_PASS(c.which, attention_map_kl_teacher_student, v, (ctx, v.student, v.teacher, masks), (v.ws, o))
    DISTILL_TORCH_RETURN_PASS(c.which, attention_map_mse, v, (ctx, v.student, v.teacher, masks), (v.ws, o))
  });
}

// ---- feature statistics ----

template <class Ctx>
distill::status run(const Ctx& ctx, const feature_stats_call& c, tensor) {
  using Space = typename Ctx::memory_space;
  const bool tokens = c.x && c.x->ndim == 3;
  const char* fn = tokens ? "token_stats" : "channel_stats";
  return dispatch(feature_types<Ctx>{}, fn, "x", c.x, [&]<class T>(type_tag<T>) -> distill::status {
    using Acc = distill::accum_t<T>;
    distill::tensor_view<Acc, 2, Space> mean, std_dev;
    distill::tensor_view<const Acc, 2, Space> grad_mean, grad_std;
    DISTILL_TRY(view(fn, "mean", c.mean, mean));
    DISTILL_TRY(view(fn, "std_dev", c.std_dev, std_dev));
    DISTILL_TRY(view(fn, "grad_mean", c.grad_mean, grad_mean));
    DISTILL_TRY(view(fn, "grad_std", c.grad_std, grad_std));
    if (tokens) {
      distill::tensor_view<const T, 3, Space> x;
      distill::tensor_view<T, 3, Space> grad_x;
      distill::tensor_view<const std::uint8_t, 2, Space> mask;
      DISTILL_TRY(view(fn, "x", c.x, x));
      DISTILL_TRY(view(fn, "grad_x", c.grad_x, grad_x));
      DISTILL_TRY(view(fn, "token_mask", c.token_mask, mask));
      if (c.backward) return distill::token_stats_backward(ctx, x, mask, grad_mean, grad_std, grad_x, c.options);
      return distill::token_stats_forward(ctx, x, mask, mean, std_dev, c.options);
    }
    if (c.token_mask)
      return distill::fail(distill::errc::invalid_argument, fn, "'token_mask' is for (B, L, D) tokens, not (B, C, H, W) maps");
    distill::tensor_view<const T, 4, Space> x;
    distill::tensor_view<T, 4, Space> grad_x;
    DISTILL_TRY(view(fn, "x", c.x, x));
    DISTILL_TRY(view(fn, "grad_x", c.grad_x, grad_x));
    if (c.backward) return distill::channel_stats_backward(ctx, x, grad_mean, grad_std, grad_x, c.options);
    return distill::channel_stats_forward(ctx, x, mean, std_dev, c.options);
  });
}

// ---- statistics-matching loss ----

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const stats_matching_call& c) {
  const int channel_dim = c.student && c.student->ndim == 3 ? 2 : 1;
  return distill::stats_matching_workspace_size(ctx, extent(c.student, 0), extent(c.student, channel_dim));
}

template <class Ctx>
distill::status run(const Ctx& ctx, const stats_matching_call& c, tensor workspace) {
  using Space = typename Ctx::memory_space;
  constexpr const char* fn = "stats_matching";
  if (c.student && c.student->ndim == 3)
    return with_loss_views<3>(ctx, feature_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
      distill::tensor_view<const std::uint8_t, 2, Space> sm, tm;
      DISTILL_TRY(view(fn, "student_mask", c.student_mask, sm));
      DISTILL_TRY(view(fn, "teacher_mask", c.teacher_mask, tm));
      DISTILL_TORCH_RETURN_PASS(c.which, stats_matching, v, (ctx, v.student, sm, v.teacher, tm), (v.ws, c.options))
    });
  if (c.student_mask || c.teacher_mask)
    return distill::fail(distill::errc::invalid_argument, fn, "token masks are for (B, L, D) tokens, not (B, C, H, W) maps");
  return with_loss_views<4>(ctx, feature_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
    DISTILL_TORCH_RETURN_PASS(c.which, stats_matching, v, (ctx, v.student, v.teacher), (v.ws, c.options))
  });
}

// ---- AdaIN ----

template <class Ctx>
distill::status run(const Ctx& ctx, const adain_call& c, tensor) {
  using Space = typename Ctx::memory_space;
  constexpr const char* fn = "adain";
  return dispatch(feature_types<Ctx>{}, fn, "content", c.content, [&]<class T>(type_tag<T>) -> distill::status {
    distill::tensor_view<const T, 4, Space> content, style, grad_out;
    distill::tensor_view<T, 4, Space> out, grad_style, grad_content;
    DISTILL_TRY(view(fn, "content", c.content, content));
    DISTILL_TRY(view(fn, "style", c.style, style));
    DISTILL_TRY(view(fn, "out", c.out, out));
    DISTILL_TRY(view(fn, "grad_out", c.grad_out, grad_out));
    DISTILL_TRY(view(fn, "grad_style", c.grad_style, grad_style));
    DISTILL_TRY(view(fn, "grad_content", c.grad_content, grad_content));
    if (c.backward) return distill::adain_backward(ctx, content, style, grad_out, grad_style, grad_content, c.options);
    return distill::adain_forward(ctx, content, style, out, c.options);
  });
}

// ---- AdaIN statistics loss ----

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const adain_stats_loss_call& c) {
  return distill::adain_stats_loss_workspace_size(ctx, extent(c.student, 0), extent(c.student, 1));
}

template <class Ctx>
distill::status run(const Ctx& ctx, const adain_stats_loss_call& c, tensor workspace) {
  constexpr const char* fn = "adain_stats_loss";
  return with_loss_views<4>(ctx, feature_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
    DISTILL_TORCH_RETURN_PASS(c.which, adain_stats_loss, v, (ctx, v.student, v.teacher), (v.ws, c.options))
  });
}

// ---- embedding alignment ----

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const embedding_alignment_call& c) {
  return distill::embedding_alignment_workspace_size(ctx, extent(c.student, 0));
}

template <class Ctx>
distill::status run(const Ctx& ctx, const embedding_alignment_call& c, tensor workspace) {
  using Space = typename Ctx::memory_space;
  constexpr const char* fn = "embedding_alignment";
  return with_loss_views<2>(ctx, feature_types<Ctx>{}, fn, c, workspace, [&](auto& v) -> distill::status {
    distill::tensor_view<const accum_of<decltype(v)>, 1, Space> weights;
    distill::tensor_view<const std::uint8_t, 1, Space> mask;
    DISTILL_TRY(view(fn, "row_weights", c.row_weights, weights));
    DISTILL_TRY(view(fn, "row_mask", c.row_mask, mask));
    DISTILL_TORCH_RETURN_PASS(c.which, embedding_alignment, v, (ctx, v.student, v.teacher, weights, mask), (v.ws, c.options))
  });
}

}  // namespace distill_torch
