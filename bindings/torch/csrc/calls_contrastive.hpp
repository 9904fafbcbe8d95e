// SPDX-License-Identifier: MIT
#pragma once
// Call layer of token-wise InfoNCE with its sample queue, relational pairing and RoI Align.
// Token NCE: student, teacher and queue keys share one element type.

#include "calls_common.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/detection/roi_align.hpp"
#include "distill/relational/pairing.hpp"

namespace distill_torch {

/// The caller's queue storage and state as a distill::sample_queue.
template <class T, class Space>
distill::status queue_view(const char* fn, const queue_state& s, distill::sample_queue<T, Space>& q) {
  distill::tensor_view<T, 2, Space> keys;
  distill::tensor_view<std::int64_t, 1, Space> ids;
  DISTILL_TRY(view(fn, "queue keys", s.keys, keys));
  DISTILL_TRY(view(fn, "queue ids", s.ids, ids));
  q = distill::sample_queue<T, Space>(keys, ids);
  return q.restore_state(s.write_position, s.size);
}

// ---- token-wise InfoNCE ----

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const token_nce_call& c) {
  return workspace_size_by_type(narrow_types<Ctx>{}, "token_nce_queue", "student", c.student, [&]<class T>(type_tag<T>) {
    return distill::token_nce_queue_workspace_size<T>(ctx, extent(c.student, 0), extent(c.student, 1), extent(c.queue.keys, 0),
                                                      c.options);
  });
}

template <class Ctx>
distill::status run(const Ctx& ctx, const token_nce_call& c, tensor workspace) {
  using Space = typename Ctx::memory_space;
  constexpr const char* fn = "token_nce_queue";
  return dispatch(narrow_types<Ctx>{}, fn, "student", c.student, [&]<class T>(type_tag<T>) -> distill::status {
    distill::token_nce_inputs<T, T, Space> in;
    distill::token_nce_outputs<T, T, Space> out;
    distill::sample_queue<T, Space> queue;
    distill::tensor_view<std::byte, 1, Space> ws;
    DISTILL_TRY(view(fn, "student", c.student, in.student));
    DISTILL_TRY(view(fn, "teacher", c.teacher, in.teacher));
    DISTILL_TRY(view(fn, "token_mask", c.token_mask, in.token_mask));
    DISTILL_TRY(view(fn, "token_ids", c.token_ids, in.token_ids));
    DISTILL_TRY(view(fn, "loss", c.loss, out.loss));
    DISTILL_TRY(view(fn, "per_token_loss", c.per_token_loss, out.per_token_loss));
    DISTILL_TRY(view(fn, "grad_student", c.grad_student, out.grad_student));
    DISTILL_TRY(view(fn, "grad_teacher", c.grad_teacher, out.grad_teacher));
    if (c.queue.keys) DISTILL_TRY(queue_view(fn, c.queue, queue));
    DISTILL_TRY(workspace_view(fn, workspace, ws));
    switch (c.which) {
      case pass::forward: return distill::token_nce_queue_forward(ctx, in, queue, out, ws, c.options);
      case pass::backward: return distill::token_nce_queue_backward(ctx, in, queue, out, ws, c.options);
      default: return distill::token_nce_queue_forward_backward(ctx, in, queue, out, ws, c.options);
    }
  });
}

// ---- the sample queue ----

template <class Ctx>
distill::status run(const Ctx& ctx, sample_queue_call& c) {
  using Space = typename Ctx::memory_space;
  constexpr const char* fn = "sample_queue";
  using action = sample_queue_call::action;
  return dispatch(narrow_types<Ctx>{}, fn, "queue keys", c.queue.keys, [&]<class T>(type_tag<T>) -> distill::status {
    distill::sample_queue<T, Space> queue;
    DISTILL_TRY(queue_view(fn, c.queue, queue));
    switch (c.what) {
      case action::enqueue: {
        distill::tensor_view<const T, 2, Space> keys;
        distill::tensor_view<const std::int64_t, 1, Space> ids;
        DISTILL_TRY(view("sample_queue_enqueue", "keys", c.keys, keys));
        DISTILL_TRY(view("sample_queue_enqueue", "ids", c.ids, ids));
        DISTILL_TRY(distill::sample_queue_enqueue(ctx, queue, keys, ids, c.enqueue));
        break;
      }
      case action::init_random: DISTILL_TRY(distill::sample_queue_init_random(ctx, queue, c.seed)); break;
      case action::save: DISTILL_TRY(distill::sample_queue_save(ctx, queue, c.path)); break;
      case action::load: DISTILL_TRY(distill::sample_queue_load(ctx, queue, c.path)); break;
    }
    c.queue.write_position = queue.write_position();
    c.queue.size = queue.size();
    return {};
  });
}

// ---- relational pairing ----

namespace pairing_detail {
/// g's layers from the call's weight and bias tensors (absent entries stay absent).
template <class T, class Space>
distill::status mlp_view(const char* fn, const std::vector<tensor>& weights, const std::vector<tensor>& biases, const char* what,
                         distill::relational_mlp<T, Space>& g) {
  if (weights.size() > static_cast<std::size_t>(distill::relational_max_layers) || biases.size() > weights.size())
    return distill::fail(distill::errc::invalid_argument, fn,
                         std::string("'") + what + "' has " + std::to_string(weights.size()) + " weights and " +
                             std::to_string(biases.size()) + " biases (at most " +
                             std::to_string(distill::relational_max_layers) + " layers, one bias per weight)");
  g.layers = static_cast<int>(weights.size());
  for (std::size_t l = 0; l < weights.size(); ++l) {
    const std::string w = std::string(what) + " weight " + std::to_string(l), b = std::string(what) + " bias " + std::to_string(l);
    DISTILL_TRY(view(fn, w.c_str(), weights[l], g.weight[l]));
    if (l < biases.size()) DISTILL_TRY(view(fn, b.c_str(), biases[l], g.bias[l]));
  }
  return {};
}
}  // namespace pairing_detail

template <class Ctx>
std::size_t workspace_size(const Ctx& ctx, const relational_pairing_call& c) {
  const int layers = static_cast<int>(c.weights.size());
  const distill::index_t hidden = c.weights.empty() ? 0 : extent(c.weights.back(), 1);
  return workspace_size_by_type(pairing_types<Ctx>{}, "relational_pairing", "objects", c.objects, [&]<class T>(type_tag<T>) {
    return distill::relational_pairing_workspace_size<T>(ctx, extent(c.objects, 0), extent(c.objects, 1), extent(c.objects, 2),
                                                         extent(c.question, 1), hidden, layers, c.options);
  });
}

template <class Ctx>
distill::status run(const Ctx& ctx, const relational_pairing_call& c, tensor workspace) {
  using Space = typename Ctx::memory_space;
  constexpr const char* fn = "relational_pairing";
  return dispatch(pairing_types<Ctx>{}, fn, "objects", c.objects, [&]<class T>(type_tag<T>) -> distill::status {
    distill::tensor_view<const T, 3, Space> objects, pair_mask;
    distill::tensor_view<const T, 2, Space> question, grad_out;
    distill::tensor_view<const std::uint8_t, 2, Space> object_mask;
    distill::tensor_view<T, 2, Space> out;
    distill::relational_mlp<const T, Space> g;
    distill::relational_pairing_grads<T, Space> grads;
    distill::tensor_view<std::byte, 1, Space> ws;
    DISTILL_TRY(view(fn, "objects", c.objects, objects));
    DISTILL_TRY(view(fn, "question", c.question, question));
    DISTILL_TRY(view(fn, "pair_mask", c.pair_mask, pair_mask));
    DISTILL_TRY(view(fn, "object_mask", c.object_mask, object_mask));
    DISTILL_TRY(pairing_detail::mlp_view(fn, c.weights, c.biases, "g", g));
    DISTILL_TRY(workspace_view(fn, workspace, ws));
    if (!c.backward) {
      DISTILL_TRY(view(fn, "out", c.out, out));
      return distill::relational_pairing_forward(ctx, objects, question, pair_mask, object_mask, g, out, ws, c.options);
    }
    DISTILL_TRY(view(fn, "grad_out", c.grad_out, grad_out));
    DISTILL_TRY(view(fn, "grad_objects", c.grad_objects, grads.objects));
    DISTILL_TRY(view(fn, "grad_question", c.grad_question, grads.question));
    DISTILL_TRY(view(fn, "grad_pair_mask", c.grad_pair_mask, grads.pair_mask));
    if (!c.grad_weights.empty()) DISTILL_TRY(pairing_detail::mlp_view(fn, c.grad_weights, c.grad_biases, "grad g", grads.g));
    return distill::relational_pairing_backward(ctx, objects, question, pair_mask, object_mask, g, grad_out, grads, ws,
                                                c.options);
  });
}

// ---- RoI Align ----

template <class Ctx>
distill::status run(const Ctx& ctx, const roi_align_call& c, tensor) {
  using Space = typename Ctx::memory_space;
  const char* fn = c.backward ? "roi_align_backward" : "roi_align_forward";
  const tensor features = c.backward ? c.grad_output : c.input;
  return dispatch(narrow_types<Ctx>{}, fn, c.backward ? "grad_output" : "input", features,
                  [&]<class T>(type_tag<T>) -> distill::status {
    using R = std::conditional_t<is_cuda_v<Ctx>, float, T>;  // CUDA: float rois for every map type
    distill::tensor_view<const R, 2, Space> rois;
    DISTILL_TRY(view(fn, "rois", c.rois, rois));
    if (c.backward) {
      distill::tensor_view<const T, 4, Space> grad_output;
      distill::tensor_view<T, 4, Space> grad_input;
      DISTILL_TRY(view(fn, "grad_output", c.grad_output, grad_output));
      DISTILL_TRY(view(fn, "grad_input", c.grad_input, grad_input));
      return distill::roi_align_backward(ctx, rois, grad_output, grad_input, c.options);
    }
    distill::tensor_view<const T, 4, Space> input;
    distill::tensor_view<T, 4, Space> output;
    DISTILL_TRY(view(fn, "input", c.input, input));
    DISTILL_TRY(view(fn, "output", c.output, output));
    return distill::roi_align_forward(ctx, input, rois, output, c.options);
  });
}

}  // namespace distill_torch
