// SPDX-License-Identifier: MIT
#pragma once
// distillvlm's training pieces: the runs (examples/common/training_run.hpp: AdamW with a per-step
// cosine schedule, progress bar, per-epoch validation and checkpoint, exact --resume, the NCE
// queue saved as extra state) and the losses of the teacher and the students below.

#include <array>
#include <chrono>
#include <limits>
#include <optional>
#include <utility>
#include <filesystem>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "../../common/progress.hpp"
#include "../../common/random.hpp"
#include "../../common/results.hpp"
#include "../../common/training_run.hpp"
#include "config.hpp"
#include "distill/nn/schedule.hpp"
#include "models.hpp"
#include "distill/attention/attention_map.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/cross_entropy.hpp"

namespace dvlm {

using examples::epoch_record;
using examples::run_log;
using examples::training_run;

// ---- losses -------------------------------------------------------------------------------

/// Mean softmax cross-entropy over the rows; dL/dlogits (overwritten) into `grad`. Returns the loss.
inline double cross_entropy(const distill::cpu& ctx, cview<2> logits, const std::vector<std::int64_t>& labels, view<2> grad) {
  float loss = 0;
  throw_if_error(nn::softmax_cross_entropy_forward_backward(ctx, logits, ids_view(labels), distill::make_view(&loss, 1), grad));
  return loss;
}

/// Hinton KD: w T^2 KL(p_t || p_s) at temperature T, mean over the rows; w times its gradient
/// is added to `grad`. Returns the loss before w.
inline double logit_kd(const distill::cpu& ctx, cview<2> student, cview<2> teacher, double T, double w, view<2> grad) {
  float loss = 0;
  distill::soft_target_options o;
  o.temperature = static_cast<float>(T);
  o.reduction = distill::reduction::mean;
  o.grad_scale = static_cast<float>(w);
  o.accumulate = true;
  throw_if_error(distill::kl_teacher_student_forward_backward(ctx, student, teacher, distill::make_view(&loss, 1), grad, {}, {}, o));
  return loss;
}

/// DistillVLM's attention loss on the last layer: sum over valid (head, query, key) of
/// (P_s - mean of the teacher heads of its group)^2, divided by B; w times its gradient into
/// `grad` (overwritten). Padded regions and padding words are masked as keys and as queries.
inline double attention_mse(const distill::cpu& ctx, cview<4> student, cview<4> teacher, distill::host_view<const std::uint8_t, 2> valid, double w,
                            view<4> grad) {
  float loss = 0;
  distill::attention_map_options o;
  o.student_input = o.teacher_input = distill::attention_input::probabilities;
  o.head_map = distill::attention_head_map::group_mean;
  o.reduction = distill::reduction::batchmean;
  o.grad_scale = w;
  throw_if_error(distill::attention_map_mse_forward_backward(ctx, student, teacher, distill::attention_masks<distill::host_space>{valid, valid},
                                                             distill::make_view(&loss, 1), grad, distill::host_view<std::byte, 1>{}, o));
  return loss;
}

/// DistillVLM's token-wise NCE: student output tokens and teacher output tokens, each through a
/// linear projection of its own (both trained; the teacher itself stays frozen), compared token
/// by token (the same token of the same question is the positive) against a queue of earlier
/// teacher keys (contrastive/token_nce.hpp, MoCo's per-token loss, mean over the real tokens);
/// the teacher keys of each step are enqueued after the loss.
/// With a queue size of 0 there is no queue: the negatives are the batch's other teacher tokens
/// (token_nce_options::in_batch_negatives). Either way negatives with the token's own id (the
/// same region of the same scene, in another question or an earlier step) are dropped.
struct token_nce_head {
  nn::linear<float> student_proj, teacher_proj;
  distill::host_sample_queue<float> queue;  ///< empty when queue_size is 0
  tensor zs, zt, dzs, dzt, dhs, keys;
  std::vector<std::int64_t> key_ids;
  std::vector<std::byte> workspace;

  token_nce_head(const distill::cpu& ctx, index_t student_width, index_t teacher_width, const distill_config& d, index_t queue_size, std::uint64_t seed)
      : student_proj("nce.student_proj", student_width, d.nce_dim, nn::init_options{seed, nn::init_scheme::torch_default, 0}),
        teacher_proj("nce.teacher_proj", teacher_width, d.nce_dim, nn::init_options{seed, nn::init_scheme::torch_default, 0}) {
    if (queue_size == 0) return;
    queue = distill::host_sample_queue<float>(queue_size, d.nce_dim, true);
    throw_if_error(distill::sample_queue_init_random(ctx, queue.queue(), ex::mix64(seed ^ 0x515545554Eull)));
  }
  bool has_queue() const { return queue.queue().capacity() > 0; }
  param_list parameters() {
    return nn::collect_parameters(student_proj, teacher_proj);
  }
  /// The loss (before w) and w times its gradient into the student's output tokens (dhs).
  /// `valid`: the tokens that take part; `ids`: their token ids (vqa_batch::token_ids).
  double step(const distill::cpu& ctx, cview<2> hs, cview<2> ht, const std::vector<std::uint8_t>& valid, const std::vector<std::int64_t>& ids,
              const distill_config& d) {
    const index_t M = hs.extent(0), D = d.nce_dim;
    resize(zs, {M, D}), resize(zt, {M, D}), resize(dzs, {M, D}), resize(dzt, {M, D}), resize(dhs, {M, hs.extent(1)});
    throw_if_error(student_proj.forward(ctx, hs, zs.view<2>()));
    throw_if_error(teacher_proj.forward(ctx, ht, zt.view<2>()));
    distill::token_nce_options o;
    o.temperature = static_cast<float>(d.nce_temperature);
    o.reduction = distill::reduction::mean;
    o.grad_scale = static_cast<float>(d.nce_weight);
    o.in_batch_negatives = !has_queue();
    workspace.resize(distill::token_nce_queue_workspace_size<float>(ctx, M, D, queue.queue().capacity(), o));
    float loss = 0;
    distill::token_nce_inputs<float> in;
    in.student = zs.cview<2>(), in.teacher = zt.cview<2>(), in.token_mask = distill::make_view(valid.data(), M);
    in.token_ids = distill::make_view(ids.data(), M);
    distill::token_nce_outputs<float> out;
    out.loss = distill::make_view(&loss, 1), out.grad_student = dzs.view<2>(), out.grad_teacher = dzt.view<2>();
    throw_if_error(distill::token_nce_queue_forward_backward(ctx, in, std::as_const(queue.queue()), out,
                                                             distill::make_view(workspace.data(), static_cast<index_t>(workspace.size())), o));
    throw_if_error(student_proj.backward(ctx, hs, dzs.cview<2>(), dhs.view<2>()));
    throw_if_error(teacher_proj.backward(ctx, ht, dzt.cview<2>(), view<2>{}));
    if (!has_queue()) return loss;
    index_t n = 0;  // the real tokens' teacher keys and ids, in order
    resize(keys, {M, D});
    key_ids.clear();
    for (index_t i = 0; i < M; ++i)
      if (valid[static_cast<std::size_t>(i)]) std::copy_n(zt.data() + i * D, D, keys.data() + n++ * D), key_ids.push_back(ids[static_cast<std::size_t>(i)]);
    throw_if_error(distill::sample_queue_enqueue(ctx, queue.queue(), distill::make_view(static_cast<const float*>(keys.data()), n, D),
                                                 distill::make_view(static_cast<const std::int64_t*>(key_ids.data()), n)));
    return loss;
  }
  void save(nn::checkpoint& ck) const {
    if (!has_queue()) return;
    const auto& q = queue.queue();
    throw_if_error(ck.put("nce_queue/keys", q.keys().data(), {q.capacity(), q.dim()}));
    throw_if_error(ck.put("nce_queue/ids", q.ids().data(), {q.capacity()}));
    ck.put_int("nce_queue_write_position", q.write_position());
    ck.put_int("nce_queue_fill_count", q.size());
  }
  distill::status restore(const nn::checkpoint& ck) {
    auto& q = queue.queue();
    std::int64_t wp = 0, n = 0;
    if (!has_queue()) return {};
    DISTILL_TRY(ck.get("nce_queue/keys", {q.capacity(), q.dim()}, q.keys().data()));
    DISTILL_TRY(ck.get("nce_queue/ids", {q.capacity()}, q.ids().data()));
    DISTILL_TRY(ck.get_int("nce_queue_write_position", wp));
    DISTILL_TRY(ck.get_int("nce_queue_fill_count", n));
    return q.restore_state(wp, n);
  }
};

// ---- evaluation ---------------------------------------------------------------------------

/// Accuracy over every question of a split and per question family.
struct accuracy {
  std::int64_t correct = 0, total = 0;
  std::array<std::int64_t, ex::question_family_count> family_correct{}, family_total{};
  double overall() const { return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0; }
  double family(int f) const {
    const auto t = family_total[static_cast<std::size_t>(f)];
    return t ? static_cast<double>(family_correct[static_cast<std::size_t>(f)]) / static_cast<double>(t) : std::numeric_limits<double>::quiet_NaN();
  }
  void add(const ex::scene_question& q, bool right) {
    ++total, ++family_total[static_cast<std::size_t>(q.family)];
    if (right) ++correct, ++family_correct[static_cast<std::size_t>(q.family)];
  }
};

inline accuracy evaluate(const distill::cpu& ctx, vqa_transformer& m, const world& w, const split_data& d, region_source src, int K,
                         region_set set = region_set::shared) {
  m.set_training(false);
  accuracy acc;
  vqa_batch b;
  constexpr std::uint32_t chunk = 32;
  for (std::uint32_t first = 0; first < d.scenes.size(); first += chunk) {
    std::vector<std::uint32_t> ids;
    for (std::uint32_t k = first; k < std::min<std::uint32_t>(first + chunk, static_cast<std::uint32_t>(d.scenes.size())); ++k) ids.push_back(k);
    fill_batch(w, d, ids, src, K, b, set);
    m.forward(ctx, b);
    const float* z = m.logits().data();
    for (index_t q = 0; q < b.questions; ++q, z += ex::answer_count) {
      const auto best = std::max_element(z, z + ex::answer_count) - z;
      acc.add(*b.source[static_cast<std::size_t>(q)], best == b.answers[static_cast<std::size_t>(q)]);
    }
  }
  return acc;
}

/// The answer prior: the most common train answer of each family, asked of every question.
inline accuracy prior_accuracy(const split_data& train, const split_data& d) {
  std::array<std::array<std::int64_t, ex::answer_count>, ex::question_family_count> counts{};
  for (const auto& q : train.questions.questions) ++counts[static_cast<std::size_t>(q.family)][q.answer];
  accuracy acc;
  for (const auto& q : d.questions.questions) {
    const auto& c = counts[static_cast<std::size_t>(q.family)];
    acc.add(q, std::max_element(c.begin(), c.end()) - c.begin() == q.answer);
  }
  return acc;
}

// ---- one run -----------------------------------------------------------------------------

struct model_result {
  std::string name;
  run_log log;
  accuracy validation, test;
  index_t parameters = 0;          ///< of the deployed model (the NCE projections are dropped after training)
  double ms_per_question = 0;      ///< inference: evaluate() on the test split, wall time / questions
};

/// What a frozen teacher gives its students on the train questions, computed once (one forward
/// pass over the train scenes) and read by every student run and seed that learns from it.
/// Exact: the teacher is in evaluation mode (batch norm on running statistics), so a
/// question's outputs depend only on its scene and question, never on the batch around it.
/// Questions in scene order (scene s, question j at s * questions_per_scene + j); with the
/// teacher's own regions, its attention and output rows are already gathered onto the student's
/// token positions (align_tokens, gather_teacher) and `matched` marks the tokens it could map.
/// Size: questions x (19 + H L^2 + L W) floats (cpu-small: 15 000 questions, 224 MB).
struct teacher_outputs {
  index_t questions_per_scene = 0, heads = 0, L = 0, width = 0;
  std::vector<float> logits;          ///< (N, 19)
  std::vector<float> attention;       ///< (N, H, L, L): last layer, on the student's token positions
  std::vector<float> hidden;          ///< (N L, width): output tokens, on the student's positions
  std::vector<std::uint8_t> matched;  ///< (N L): 1 = the student's token has a teacher token

  /// The rows of a batch of scenes (fill_batch's order), into the given tensors and mask.
  void gather(std::span<const std::uint32_t> scenes, tensor& z, tensor& att, tensor& rows, std::vector<std::uint8_t>& m) const {
    const index_t Q = questions_per_scene, B = static_cast<index_t>(scenes.size()) * Q, A = ex::answer_count, P = heads * L * L;
    resize(z, {B, A}), resize(att, {B, heads, L, L}), resize(rows, {B * L, width});
    m.resize(static_cast<std::size_t>(B * L));
    for (index_t s = 0; s < static_cast<index_t>(scenes.size()); ++s) {
      const index_t from = static_cast<index_t>(scenes[static_cast<std::size_t>(s)]) * Q, to = s * Q;
      std::copy_n(logits.data() + from * A, Q * A, z.data() + to * A);
      std::copy_n(attention.data() + from * P, Q * P, att.data() + to * P);
      std::copy_n(hidden.data() + from * L * width, Q * L * width, rows.data() + to * L * width);
      std::copy_n(matched.data() + from * L, Q * L, m.data() + to * L);
    }
  }
};

/// The teacher's outputs on every train question; `own_regions`: it reads its own detector's
/// regions and its tokens are aligned onto the student's (shared) regions by best IoU.
inline teacher_outputs compute_teacher_outputs(const distill::cpu& ctx, vqa_transformer& teacher, const world& w, region_source src, int K,
                                               bool own_regions) {
  teacher.set_training(false);
  const split_data& d = w.train;
  teacher_outputs t;
  t.questions_per_scene = d.questions.params.questions_per_scene, t.heads = teacher.heads(), t.L = sequence_length(K), t.width = teacher.config().width;
  const index_t N = static_cast<index_t>(d.scenes.size()) * t.questions_per_scene, L = t.L, P = t.heads * L * L;
  t.logits.resize(static_cast<std::size_t>(N * ex::answer_count));
  t.attention.resize(static_cast<std::size_t>(N * P));
  t.hidden.resize(static_cast<std::size_t>(N * L * t.width));
  t.matched.resize(static_cast<std::size_t>(N * L));
  vqa_batch b, tb;
  tensor att, rows;
  constexpr std::uint32_t chunk = 32;
  for (std::uint32_t first = 0; first < d.scenes.size(); first += chunk) {
    std::vector<std::uint32_t> ids;
    for (std::uint32_t k = first; k < std::min<std::uint32_t>(first + chunk, static_cast<std::uint32_t>(d.scenes.size())); ++k) ids.push_back(k);
    fill_batch(w, d, ids, src, K, b, region_set::shared);
    cview<4> a;
    cview<2> h;
    std::vector<std::int64_t> pi(b.key_valid.size());
    if (own_regions) {
      fill_batch(w, d, ids, src, K, tb, region_set::teacher_own);
      teacher.forward(ctx, tb);
      pi = align_tokens(b, tb);
      gather_teacher(teacher.last_attention(), teacher.hidden_rows(), pi, att, rows);
      a = att.cview<4>(), h = rows.cview<2>();
    } else {
      teacher.forward(ctx, b);
      for (std::size_t i = 0; i < pi.size(); ++i) pi[i] = b.key_valid[i] ? 0 : -1;
      a = teacher.last_attention(), h = teacher.hidden_rows();
    }
    const index_t q0 = static_cast<index_t>(first) * t.questions_per_scene, B = b.questions;
    std::copy_n(teacher.logits().data(), B * ex::answer_count, t.logits.data() + q0 * ex::answer_count);
    std::copy_n(a.data(), B * P, t.attention.data() + q0 * P);
    std::copy_n(h.data(), B * L * t.width, t.hidden.data() + q0 * L * t.width);
    for (index_t i = 0; i < B * L; ++i) t.matched[static_cast<std::size_t>(q0 * L + i)] = pi[static_cast<std::size_t>(i)] >= 0 ? 1 : 0;
  }
  return t;
}

/// What a run trains: the model reads `regions`; with a teacher's outputs, the student learns
/// CE + the terms `method` turns on (weights from distill_config) from them; without, CE alone.
struct run_spec {
  std::string name;  ///< of the run and its checkpoint
  region_set regions = region_set::shared;
  const teacher_outputs* teacher = nullptr;
  student_method method = student_methods[0];
  int nce_queue = 0;  ///< queue size of the NCE term (0: in-batch negatives)
};

/// Trains `m` as `spec` says, resuming from its checkpoint when asked, then evaluates it.
inline model_result train_model(const distill::cpu& ctx, const run_config& c, const world& w, const run_spec& spec, vqa_transformer& m,
                                const optimiser_config& o, std::uint64_t seed, const std::filesystem::path& ckpt_dir, bool resume,
                                const json& fingerprint) {
  const region_source src = c.regions;
  const int K = c.max_regions;
  const index_t steps = static_cast<index_t>(w.train.scenes.size()) / o.scenes;
  const teacher_outputs* teacher = spec.teacher;
  const student_method& method = spec.method;
  std::optional<token_nce_head> nce;
  param_list params = m.parameters();
  if (teacher && method.nce) {
    nce.emplace(ctx, m.config().width, teacher->width, c.kd, spec.nce_queue, seed);
    params = nn::collect_parameters(params, *nce);
  }
  const std::string run_name = spec.name + "-seed" + std::to_string(seed);
  training_run run(run_name, "accuracy", ckpt_dir / (run_name + ".ckpt"), fingerprint, params, o, steps);
  if (nce) {
    run.save_extra = [&](nn::checkpoint& ck) { nce->save(ck); };
    run.restore_extra = [&](const nn::checkpoint& ck) { return nce->restore(ck); };
  }
  if (resume) run.try_resume();
  vqa_batch b;
  tensor grad, grad_att, t_logits, t_att, t_rows;
  std::vector<std::uint8_t> valid, matched;
  auto step = [&](int epoch, index_t s) {
    const auto ids = step_scenes(w.train.scenes.size(), o.scenes, seed, epoch, s);
    fill_batch(w, w.train, ids, src, K, b, spec.regions);
    m.forward(ctx, b);
    resize(grad, m.logits().shape());
    double loss = cross_entropy(ctx, m.logits().cview<2>(), b.answers, grad.view<2>());
    if (!teacher || !method.distilled()) {
      m.backward(ctx, grad.cview<2>());
      return loss;
    }
    // The frozen teacher's outputs on the same questions (its own regions' tokens mapped onto
    // the student's; the tokens it has no match for are masked).
    teacher->gather(ids, t_logits, t_att, t_rows, matched);
    valid = b.key_valid;
    for (std::size_t i = 0; i < valid.size(); ++i) valid[i] = valid[i] && matched[i];
    const cview<4> t_attention = t_att.cview<4>();
    const cview<2> t_hidden = t_rows.cview<2>();
    if (method.kd)
      loss += c.kd.kd_weight * logit_kd(ctx, m.logits().cview<2>(), t_logits.cview<2>(), c.kd.kd_temperature, c.kd.kd_weight, grad.view<2>());
    cview<4> d_att;
    if (method.attention) {
      const auto ps = m.last_attention();
      resize(grad_att, {ps.extent(0), ps.extent(1), ps.extent(2), ps.extent(3)});
      loss += c.kd.attention_weight * attention_mse(ctx, ps, t_attention, distill::make_view(static_cast<const std::uint8_t*>(valid.data()), b.questions, b.L),
                                                    c.kd.attention_weight, grad_att.view<4>());
      d_att = grad_att.cview<4>();
    }
    cview<2> d_hidden;
    if (nce) {
      loss += c.kd.nce_weight * nce->step(ctx, m.hidden_rows(), t_hidden, valid, b.token_ids, c.kd);
      d_hidden = nce->dhs.cview<2>();
    }
    m.backward(ctx, grad.cview<2>(), d_att, d_hidden);
    return loss;
  };
  if (!run.finished())
    run.run(ctx, step, [&] { return evaluate(ctx, m, w, w.validation, src, K, spec.regions).overall(); }, [&](bool t) { m.set_training(t); });
  model_result r;
  r.name = spec.name;
  r.log = run.log();
  r.validation = evaluate(ctx, m, w, w.validation, src, K, spec.regions);
  const auto t0 = std::chrono::steady_clock::now();
  r.test = evaluate(ctx, m, w, w.test, src, K, spec.regions);
  r.ms_per_question = 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(std::max<std::int64_t>(1, r.test.total));
  r.parameters = count_learnt(m.parameters());
  return r;
}

}  // namespace dvlm
