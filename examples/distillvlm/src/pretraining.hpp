// SPDX-License-Identifier: MIT
#pragma once
// distillvlm's pre-training stage: masked region classification (MRC, as in UNITER and LXMERT).
//
//   input     a scene's [CLS] + K region tokens + the words of one of its questions (no answer),
//             for every question of the step's scenes; each sequence masks max(1, round(mask_rate
//             x real regions)) of the real regions, drawn for it: their pooled features are zeroed,
//             their box geometry kept (vqa_batch::masked_regions)
//   label     of a region: the Fashion-MNIST class of the item its box overlaps best, when that
//             IoU is >= 0.5, else background (class 10); 11 classes
//   head      linear(width -> 11) on the masked regions' output tokens, cross-entropy over them
//             (one row per masked region and sequence). The head is dropped afterwards: the
//             answer head is not trained here and fine-tuning starts from the backbone, the
//             embeddings and the encoder
//   distill   the distilled student is pre-trained from the pre-trained, frozen teacher: CE +
//             KD on the region-class logits + the last-layer attention MSE (training.hpp's losses
//             and weights), both models reading the same batch and the same masks
//
// The scenes of a step depend only on (seed, epoch), its masks on (seed, epoch, step), so a resumed
// pre-training sees the same batches. Validation uses fixed masks, the same for every model: the
// masked-region accuracy of results.json.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "training.hpp"

namespace dvlm {

inline constexpr int region_classes = 11;  ///< the 10 Fashion-MNIST classes + background
inline constexpr int background_class = 10;

/// The class of each of scene `id`'s regions (region_source as in fill_batch): the class of the
/// item its box overlaps best when the IoU is >= 0.5, else background.
inline std::vector<int> region_class_labels(const split_data& d, std::uint32_t id, region_source src, int K, region_set set) {
  std::vector<int> labels;
  for (const region_box& r : scene_regions(d, id, src, K, set)) {
    double best = 0;
    int cls = background_class;
    for (const auto& it : d.scenes.scenes[id].items) {
      const float item[4] = {static_cast<float>(it.box.x1), static_cast<float>(it.box.y1), static_cast<float>(it.box.x2), static_cast<float>(it.box.y2)};
      if (const double iou = box_iou(r.data(), item); iou >= 0.5 && iou > best) best = iou, cls = it.cls;
    }
    labels.push_back(cls);
  }
  return labels;
}

/// A pre-training batch: every question of each scene, each sequence with masks of its own.
struct mrc_batch {
  vqa_batch input;
  std::vector<index_t> token_rows;    ///< (M): row of each masked region's output token in hidden_rows (question q, region k: q L + 1 + k)
  std::vector<std::int64_t> targets;  ///< (M): its class
};

/// Scenes `ids` of split `d` with all their questions; each question's sequence masks
/// max(1, round(mask_rate x real regions)) of its scene's real regions, drawn from `stream` (so
/// a resumed run rebuilds the same batch). The batch's S K region rows are followed by S K
/// masked copies (features zeroed, box kept); a masked token reads its copy.
inline void fill_mrc_batch(const world& w, const split_data& d, std::span<const std::uint32_t> ids, region_source src, region_set set, int K,
                           double mask_rate, std::uint64_t stream, mrc_batch& mb) {
  vqa_batch& b = mb.input;
  fill_batch(w, d, ids, src, K, b, set);
  const index_t S = b.scenes, L = b.L, SK = S * K, qps = b.questions / S;
  for (tensor* t : {&b.rois, &b.geometry}) {  // append the masked copies
    const index_t cols = t->extent(1);
    std::vector<float> rows(t->data(), t->data() + SK * cols);
    resize(*t, {2 * SK, cols});
    std::copy(rows.begin(), rows.end(), t->data());
    std::copy(rows.begin(), rows.end(), t->data() + SK * cols);
  }
  b.masked_regions.assign(static_cast<std::size_t>(SK), 0);
  b.masked_regions.resize(static_cast<std::size_t>(2 * SK), 1);
  mb.token_rows.clear(), mb.targets.clear();
  ex::splitmix64 rng(ex::mix64(stream ^ 0x4D524321ull /* "MRC!" */));
  for (index_t s = 0; s < S; ++s) {
    const std::vector<int> labels = region_class_labels(d, ids[static_cast<std::size_t>(s)], src, K, set);
    const std::size_t n = labels.size();
    if (n == 0) continue;
    const auto m = std::max<std::size_t>(1, static_cast<std::size_t>(std::lround(mask_rate * static_cast<double>(n))));
    std::vector<std::uint32_t> pick(n);
    for (index_t q = s * qps; q < (s + 1) * qps; ++q) {
      for (std::uint32_t i = 0; i < n; ++i) pick[i] = i;
      for (std::size_t i = 0; i < m; ++i) std::swap(pick[i], pick[i + rng.below(n - i)]);  // the first m of a Fisher-Yates shuffle
      std::sort(pick.begin(), pick.begin() + static_cast<std::ptrdiff_t>(m));
      for (std::size_t i = 0; i < m; ++i) {
        const index_t k = pick[i];
        b.region_row[static_cast<std::size_t>(q * K + k)] = SK + s * K + k;
        mb.token_rows.push_back(q * L + 1 + k);
        mb.targets.push_back(labels[static_cast<std::size_t>(k)]);
      }
    }
  }
}

/// A VQA transformer with a region-class head on its output tokens, for pre-training.
struct mrc_model {
  vqa_transformer& m;
  nn::linear<float> head;
  tensor gathered, logits, d_logits, d_gathered, d_hidden;

  mrc_model(vqa_transformer& model, const std::string& name, std::uint64_t seed)
      : m(model), head(name + ".region_class_head", model.config().width, region_classes, nn::init_options{seed, nn::init_scheme::torch_default, 0}) {}

  param_list parameters() {
    param_list body = m.body_parameters();
    return nn::collect_parameters(body, head);
  }

  /// Region-class logits (M, 11) of the masked regions of `mb`.
  void forward(const distill::cpu& ctx, const mrc_batch& mb) {
    m.forward(ctx, mb.input);
    const auto h = m.hidden_rows();
    const index_t M = static_cast<index_t>(mb.token_rows.size()), W = h.extent(1);
    resize(gathered, {M, W}), resize(logits, {M, region_classes});
    for (index_t i = 0; i < M; ++i) std::copy_n(h.data() + mb.token_rows[static_cast<std::size_t>(i)] * W, W, gathered.data() + i * W);
    throw_if_error(head.forward(ctx, gathered.cview<2>(), logits.view<2>()));
  }
  /// From dL/dlogits (M, 11) and, when given, a gradient into the last layer's attention.
  void backward(const distill::cpu& ctx, const mrc_batch& mb, cview<2> dlogits, cview<4> grad_last_attention = {}) {
    const auto h = m.hidden_rows();
    const index_t M = static_cast<index_t>(mb.token_rows.size()), W = h.extent(1);
    resize(d_gathered, {M, W}), resize(d_hidden, {h.extent(0), W});
    throw_if_error(head.backward(ctx, gathered.cview<2>(), dlogits, d_gathered.view<2>()));
    std::fill_n(d_hidden.data(), d_hidden.size(), 0.0f);
    for (index_t i = 0; i < M; ++i) std::copy_n(d_gathered.data() + i * W, W, d_hidden.data() + mb.token_rows[static_cast<std::size_t>(i)] * W);
    m.backward(ctx, cview<2>{}, grad_last_attention, d_hidden.cview<2>());
  }
};

/// Masked-region accuracy on a split: fixed masks (a stream per chunk of scenes), the same for
/// every model. `majority`: the accuracy of always answering the
/// most common class of those masked regions (what a model that ignores its input could reach).
struct mrc_accuracy {
  double accuracy = 0, majority = 0;
  std::int64_t regions = 0;
};

inline mrc_accuracy evaluate_mrc(const distill::cpu& ctx, mrc_model& mm, const world& w, const split_data& d, const run_config& c, region_set set) {
  mm.m.set_training(false);
  std::int64_t right = 0, total = 0;
  std::array<std::int64_t, region_classes> counts{};
  mrc_batch mb;
  constexpr std::uint32_t chunk = 32;
  for (std::uint32_t first = 0; first < d.scenes.size(); first += chunk) {
    std::vector<std::uint32_t> ids;
    for (std::uint32_t k = first; k < std::min<std::uint32_t>(first + chunk, static_cast<std::uint32_t>(d.scenes.size())); ++k) ids.push_back(k);
    fill_mrc_batch(w, d, ids, c.regions, set, c.max_regions, c.pretrain.mask_rate, ex::mix64(0x56414C4944ull /* "VALID" */ + first), mb);
    mm.forward(ctx, mb);
    for (std::size_t i = 0; i < mb.targets.size(); ++i) {
      const float* z = mm.logits.data() + static_cast<index_t>(i) * region_classes;
      right += std::max_element(z, z + region_classes) - z == mb.targets[i];
      ++counts[static_cast<std::size_t>(mb.targets[i])], ++total;
    }
  }
  mrc_accuracy a;
  a.regions = total;
  if (total) {
    a.accuracy = static_cast<double>(right) / static_cast<double>(total);
    a.majority = static_cast<double>(*std::max_element(counts.begin(), counts.end())) / static_cast<double>(total);
  }
  return a;
}

struct pretrain_result {
  std::string name;
  run_log log;
  mrc_accuracy validation;
};

/// Pre-trains `mm` with MRC (CE alone when `teacher` is null; CE + region-logit KD + last-layer
/// attention MSE from the frozen pre-trained `teacher` otherwise) as a checkpointed run, resumed
/// when asked; a finished run's checkpoint only restores the weights.
inline pretrain_result pretrain_model(const distill::cpu& ctx, const run_config& c, const world& w, const std::string& name, mrc_model& mm,
                                      mrc_model* teacher, optimiser_config o, std::uint64_t seed, const std::filesystem::path& ckpt_dir, bool resume,
                                      const json& fingerprint, region_set set = region_set::shared) {
  o.epochs = c.pretrain.epochs;
  const index_t steps = static_cast<index_t>(w.train.scenes.size()) / o.scenes;
  const std::string run_name = name + "-seed" + std::to_string(seed);
  training_run run(run_name, "masked-region accuracy", ckpt_dir / (run_name + ".ckpt"), fingerprint, mm.parameters(), o, steps);
  if (resume) run.try_resume();
  mrc_batch mb;
  tensor grad, grad_att;
  auto step = [&](int epoch, index_t s) {
    const auto ids = step_scenes(w.train.scenes.size(), o.scenes, seed, epoch, s);
    fill_mrc_batch(w, w.train, ids, c.regions, set, c.max_regions, c.pretrain.mask_rate,
                   ex::mix64(ex::mix64(seed) ^ (static_cast<std::uint64_t>(epoch) << 32 | static_cast<std::uint64_t>(s))), mb);
    if (teacher) teacher->forward(ctx, mb);  // frozen, in evaluation mode
    mm.forward(ctx, mb);
    resize(grad, mm.logits.shape());
    double loss = cross_entropy(ctx, mm.logits.cview<2>(), mb.targets, grad.view<2>());
    cview<4> d_att;
    if (teacher) {
      if (c.kd.kd_weight > 0)
        loss += c.kd.kd_weight * logit_kd(ctx, mm.logits.cview<2>(), teacher->logits.cview<2>(), c.kd.kd_temperature, c.kd.kd_weight, grad.view<2>());
      if (c.kd.attention_weight > 0) {
        const auto ps = mm.m.last_attention();
        resize(grad_att, {ps.extent(0), ps.extent(1), ps.extent(2), ps.extent(3)});
        loss += c.kd.attention_weight *
                attention_mse(ctx, ps, teacher->m.last_attention(), mm.m.key_valid(), c.kd.attention_weight, grad_att.view<4>());
        d_att = grad_att.cview<4>();
      }
    }
    mm.backward(ctx, mb, grad.cview<2>(), d_att);
    return loss;
  };
  if (teacher) teacher->m.set_training(false);
  if (!run.finished())
    run.run(ctx, step, [&] { return evaluate_mrc(ctx, mm, w, w.validation, c, set).accuracy; }, [&](bool t) { mm.m.set_training(t); });
  return {name, run.log(), evaluate_mrc(ctx, mm, w, w.validation, c, set)};
}

/// The pre-training task's fingerprint entries (the distill switch concerns the students only).
inline json pretrain_task_json(const run_config& c) {
  json task = to_json(c.pretrain);
  task.erase("distill");
  return task;
}

/// Pre-trains a teacher (MRC alone) on region set `set`; its fine-tuning fingerprint
/// `fp_teacher` gains the pre-training's, so a teacher fine-tuned from other weights is not resumed.
inline pretrain_result pretrain_teacher(const distill::cpu& ctx, const run_config& c, const world& w, const std::string& name, mrc_model& teacher,
                                        region_set set, std::uint64_t seed, const std::filesystem::path& ckpt_dir, bool resume, json& fp_teacher) {
  json fp = fp_teacher;
  fp["optimiser"]["epochs"] = c.pretrain.epochs, fp["pretraining"] = pretrain_task_json(c);
  pretrain_result r = pretrain_model(ctx, c, w, name, teacher, nullptr, c.teacher_opt, seed, ckpt_dir, resume, fp, set);
  fp_teacher["pretraining"] = fp;
  return r;
}

/// One seed's pre-trained students: the body weights of the student pre-trained alone and (with
/// pretrain.distill) of the one pre-trained from the teacher, and their fingerprints. Every
/// student of the ablation starts from one of them (start()).
struct student_pretraining {
  std::vector<float> alone, distilled;
  json fp_alone, fp_distilled;
  /// Loads the weights a student starts from (the distilled ones for a student distilled from the
  /// aligned teacher, when there are any) and returns their fingerprint.
  json start(vqa_transformer& student, bool from_teacher) const {
    const bool d = from_teacher && !distilled.empty();
    student.set_body_weights(d ? distilled : alone);
    return d ? fp_distilled : fp_alone;
  }
};

/// Pre-trains one seed's students: alone, and (with pretrain.distill) from the pre-trained
/// `teacher` with CE + region-logit KD + attention MSE.
inline std::vector<pretrain_result> pretrain_students(const distill::cpu& ctx, const run_config& c, const world& w, const json& fp_world,
                                                      std::uint64_t seed, const std::filesystem::path& ckpt_dir, bool resume, mrc_model& teacher,
                                                      const json& fp_teacher, student_pretraining& out) {
  json fp = fp_world;
  fp["student"] = to_json(c.student), fp["optimiser"] = to_json(c.student_opt), fp["seed"] = seed, fp["pretraining"] = pretrain_task_json(c);
  fp["optimiser"]["epochs"] = c.pretrain.epochs;
  std::vector<pretrain_result> rs;
  {
    vqa_transformer s("student", c.student, seed);
    mrc_model mm(s, "student", seed);
    rs.push_back(pretrain_model(ctx, c, w, "pretrain_student_alone", mm, nullptr, c.student_opt, seed, ckpt_dir, resume, fp));
    out.alone = s.body_weights(), out.fp_alone = fp;
  }
  if (c.pretrain.distill) {
    json fp_d = fp;
    fp_d["teacher"] = fp_teacher, fp_d["distillation"] = {{"kd_weight", c.kd.kd_weight}, {"kd_temperature", c.kd.kd_temperature},
                                                          {"attention_weight", c.kd.attention_weight}};
    vqa_transformer s("student", c.student, seed);
    mrc_model mm(s, "student", seed);
    rs.push_back(pretrain_model(ctx, c, w, "pretrain_student_distilled", mm, &teacher, c.student_opt, seed, ckpt_dir, resume, fp_d));
    out.distilled = s.body_weights(), out.fp_distilled = fp_d;
  }
  return rs;
}

/// A pre-training run in results.json: its curve and its final masked-region accuracy.
inline json pretraining_json(const pretrain_result& r, std::uint64_t seed) {
  json curve = json::array();
  for (const auto& e : r.log.curve) curve.push_back({{"epoch", e.epoch}, {"train_loss", e.train_loss}, {"validation_masked_region_accuracy", e.validation}});
  return {{"run", r.name}, {"seed", seed}, {"train_seconds", r.log.seconds}, {"curve", curve},
          {"validation", {{"masked_region_accuracy", r.validation.accuracy}, {"majority_class_accuracy", r.validation.majority},
                          {"masked_regions", r.validation.regions}}}};
}

}  // namespace dvlm
