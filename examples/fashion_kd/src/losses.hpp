// SPDX-License-Identifier: MIT
#pragma once
// The example's only calls to distill's loss primitives: each function is one training-loss term,
// returns its value and writes (or, with `accumulate`, adds) the gradient of `weight` times it.
// Keeping them here means the methods read as formulas and an API change touches one file.
//
//   cross_entropy      nn::softmax_cross_entropy_forward_backward           CE(z, y)
//   hinton_kd          kl_teacher_student (hard-label CE mixed in)           (1 - a) CE + a T^2 KL(p_t || q_s)
//   soft_kl            kl_teacher_student                                   T^2 KL(softmax(z_peer / T) || softmax(z / T))
//   dkd                dkd (CE mixed in)                                     CE + w DKD(alpha, beta, T)
//   attention_transfer attention_transfer (squared_mean form)               beta * mean_{b,n} (u_s - u_t)^2
//   stats_l2           stats_matching                                       mean_{b,c} (mu_s - mu_t)^2 + (sigma_s - sigma_t)^2
//   adain_kd           adain_kd_loss_forward_backward                       mse(O(AdaIN(F_t; F_s)), O(F_t))
//   diversity          attention_diversity_forward_backward                 FFSD's diversity term
//   normalized_mse     embedding_alignment (normalize clamp, mse)           mean_{b,i} (x/||x|| - y/||y||)^2 per sample
// Every call throws distill::error on a bad argument (the example treats it as a bug).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "distill/attention/attention_diversity.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/features/feature_stats.hpp"
#include "distill/losses/dkd.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "models.hpp"

namespace fkd::loss {

using distill::throw_if_error;
using labels_view = distill::host_view<const std::int64_t, 1>;
using no_workspace = distill::host_view<std::byte, 1>;  // every CPU loss here needs 0 bytes of scratch

inline labels_view labels_of(std::span<const std::int64_t> y) { return distill::make_view(y.data(), static_cast<index_t>(y.size())); }

/// CE(z, y), mean over the batch.
inline float cross_entropy(const distill::cpu& ctx, cview<2> logits, labels_view y, view<2> grad, double weight = 1.0) {
  float l = 0;
  distill::nn::cross_entropy_options o;
  o.grad_scale = weight;
  throw_if_error(distill::nn::softmax_cross_entropy_forward_backward(ctx, logits, y, distill::make_view(&l, 1), grad, o));
  return static_cast<float>(weight) * l;
}

/// (1 - alpha) CE(z_s, y) + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)), mean over the batch.
inline float hinton_kd(const distill::cpu& ctx, cview<2> student, cview<2> teacher, labels_view y, double temperature, double alpha, view<2> grad) {
  float l = 0;
  distill::soft_target_options o;
  o.temperature = static_cast<float>(temperature);
  o.soft_weight = static_cast<float>(alpha);
  o.hard_label_weight = static_cast<float>(1 - alpha);
  distill::soft_target_host_extras<float> extra;
  extra.labels = y;
  throw_if_error(distill::kl_teacher_student_forward_backward(ctx, student, teacher, distill::make_view(&l, 1), grad, extra, no_workspace{}, o));
  return l;
}

/// weight T^2 KL(softmax(peer / T) || softmax(z / T)) (the peer is a constant), mean over the batch.
inline float soft_kl(const distill::cpu& ctx, cview<2> logits, cview<2> peer, double temperature, double weight, view<2> grad, bool accumulate) {
  float l = 0;
  distill::soft_target_options o;
  o.temperature = static_cast<float>(temperature);
  o.soft_weight = static_cast<float>(weight);
  o.accumulate = accumulate;
  throw_if_error(distill::kl_teacher_student_forward_backward(ctx, logits, peer, distill::make_view(&l, 1), grad, {}, no_workspace{}, o));
  return l;
}

/// CE(z_s, y) + weight DKD(z_s, z_t; alpha, beta, T), mean over the batch.
inline float dkd(const distill::cpu& ctx, cview<2> student, cview<2> teacher, labels_view y, double alpha, double beta, double temperature,
                 double weight, view<2> grad) {
  float l = 0;
  distill::dkd_options o;
  o.alpha = static_cast<float>(alpha);
  o.beta = static_cast<float>(beta);
  o.temperature = static_cast<float>(temperature);
  o.soft_weight = static_cast<float>(weight);
  o.hard_label_weight = 1.0f;
  distill::soft_target_host_extras<float> extra;
  extra.labels = y;
  throw_if_error(distill::dkd_forward_backward(ctx, student, teacher, distill::make_view(&l, 1), grad, extra, no_workspace{}, o));
  return l;
}

/// beta * mean over samples and positions of (u_s - u_t)^2, u = normalised mean_c A^2 (the
/// official code's at_loss times beta). The student and teacher maps must have equal H, W.
inline float attention_transfer(const distill::cpu& ctx, cview<4> student, cview<4> teacher, double beta, view<4> grad, bool accumulate) {
  float l = 0;
  distill::attention_transfer_options o;
  o.beta = beta;
  o.accumulate = accumulate;
  throw_if_error(distill::attention_transfer_forward_backward(ctx, student, teacher, distill::make_view(&l, 1), grad, no_workspace{}, o));
  return l;
}

/// weight * mean over (b, c) of (mu_s - mu_t)^2 + (sigma_s - sigma_t)^2 (spec 4.1).
inline float stats_l2(const distill::cpu& ctx, cview<4> student, cview<4> teacher, double weight, view<4> grad) {
  float l = 0;
  distill::stats_matching_options o;
  o.grad_scale = weight;
  throw_if_error(distill::stats_matching_forward_backward(ctx, student, teacher, distill::make_view(&l, 1), grad, no_workspace{}, o));
  return static_cast<float>(weight) * l;
}

/// The frozen rest of the teacher, O: forward and vector-Jacobian product (see adain.hpp).
struct teacher_head {
  std::function<distill::status(cview<4>, view<2>)> forward;
  std::function<distill::status(cview<4>, cview<2>, view<4>)> vjp;
};

/// Scratch of adain_kd (the caller keeps it between steps).
struct adain_kd_buffers {
  tensor mixed, grad_mixed, out_mixed, out_teacher, grad_out;
};

/// weight * mse(O(AdaIN(F_t; F_s)), O(F_t)) over every logit (spec 4.3, reconstruction).
inline float adain_kd(const distill::cpu& ctx, cview<4> student, cview<4> teacher, const teacher_head& head, double weight, view<4> grad,
                      adain_kd_buffers& buf) {
  const auto& ts = teacher;
  const nn::tensor_shape fshape{ts.extent(0), ts.extent(1), ts.extent(2), ts.extent(3)}, oshape{ts.extent(0), classes};
  throw_if_error(buf.mixed.resize(fshape));
  throw_if_error(buf.grad_mixed.resize(fshape));
  for (tensor* t : {&buf.out_mixed, &buf.out_teacher, &buf.grad_out}) throw_if_error(t->resize(oshape));
  distill::adain_kd_buffers<float, distill::host_space> ws;
  ws.mixed = buf.mixed.view<4>(), ws.grad_mixed = buf.grad_mixed.view<4>();
  ws.out_mixed = buf.out_mixed.view<2>(), ws.out_teacher = buf.out_teacher.view<2>(), ws.grad_out = buf.grad_out.view<2>();
  distill::adain_kd_options o;
  o.grad_scale = weight;
  float l = 0;
  throw_if_error(distill::adain_kd_loss_forward_backward(ctx, student, teacher, head.forward, head.vjp, distill::make_view(&l, 1), grad, ws,
                                                        no_workspace{}, o));
  return static_cast<float>(weight) * l;
}

/// weight * FFSD's diversity term of the student's features against the peer's (detached).
inline float diversity(const distill::cpu& ctx, cview<4> student, cview<4> peer, double weight, view<4> grad, bool accumulate) {
  float l = 0;
  distill::attention_diversity_options o;
  o.weight = weight;
  o.accumulate = accumulate;
  throw_if_error(distill::attention_diversity_forward_backward(ctx, student, peer, distill::make_view(&l, 1), grad,
                                                               no_workspace{}, o));
  return l;
}

/// The peer's features moved towards the diversity target (the decoder input of FFSD).
inline void diversity_shift(const distill::cpu& ctx, cview<4> peer, view<4> shifted) {
  throw_if_error(distill::attention_diversity_shift(ctx, peer, shifted, no_workspace{}));
}

/// weight * mean over samples of mse(x_b / ||x_b||, y_b / ||y_b||), each sample flattened
/// (FFSD's attention_loss on raw feature maps).
inline float normalized_mse(const distill::cpu& ctx, cview<4> x, cview<4> target, double weight, view<4> grad, bool accumulate) {
  const index_t B = x.extent(0), D = x.size() / B;
  float l = 0;
  distill::embedding_alignment_options o;
  o.metric = distill::embedding_metric::mse;
  o.normalize = distill::l2_normalization::clamp;
  o.reduction = distill::reduction::batchmean;
  o.grad_scale = weight;
  o.accumulate = accumulate;
  throw_if_error(distill::embedding_alignment_forward_backward(ctx, distill::make_view(x.data(), B, D), distill::make_view(target.data(), B, D),
                                                               distill::host_view<const float, 1>{}, distill::host_view<const std::uint8_t, 1>{},
                                                               distill::make_view(&l, 1), distill::make_view(grad.data(), B, D), no_workspace{}, o));
  return static_cast<float>(weight) * l;
}

}  // namespace fkd::loss
