// SPDX-License-Identifier: MIT
#pragma once
// System A, scene-based knowledge distillation (the seed proposal; README):
//   1. a context model learns to name a masked item from the rest of the scene (square or
//      circular masks, never more than max_mask_fraction of the canvas), on the context scenes;
//      test: top-k accuracy, k = 1..5, per mask shape, in-context vs out-of-context items;
//   2. its predictions on the recogniser scenes (which it never saw), each item masked in turn
//      (the mean of the square and circle predictions where both are allowed), become soft
//      targets for an item recogniser: L = (1 - w) CE + w T^2 KL(context || recogniser);
//      the same recogniser without them (w = 0) from the same initialisation on the same batches
//      is the comparison; test: clean items, degraded items (noise, blur, occlusion; one item of
//      each scene, the rest intact) and out-of-context items.

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "data.hpp"
#include "training.hpp"

namespace skd {

inline constexpr int topk_max = 5;
inline constexpr std::array<ex::degradation, 3> degradations = {ex::degradation::noise, ex::degradation::blur, ex::degradation::occlusion};

/// Top-k accuracies (k = 1..5) of one group of masked items, with its size.
struct topk_row {
  std::array<double, topk_max> acc{};
  std::size_t n = 0;
};

/// Recogniser accuracy on one group of test items.
struct accuracy_cell {
  double acc = 0;
  std::size_t n = 0;
};

struct recogniser_result {
  accuracy_cell clean_in, clean_out;                   ///< clean items in / out of context
  std::array<accuracy_cell, 3> degraded_in, degraded_out;  ///< per degradation, the degraded item in / out of context
  double validation = 0;                               ///< clean accuracy on validation items (all)
  run_log log;
};

struct context_seed_result {
  std::uint64_t seed = 0;
  std::array<std::array<topk_row, 2>, 2> topk{};  ///< [shape][0 in context, 1 out of context]
  double validation_top1 = 0;
  run_log context_log;
  recogniser_result plain, distilled;
  double teacher_coverage = 0;     ///< share of recogniser training items with a soft target
  double teacher_train_top1 = 0;   ///< the context teacher's top-1 on those items (mask-shape mean)
  // for pictures: the test predictions of the first seed
  std::vector<masked_example> test_examples;
  std::vector<float> test_probabilities;  ///< (examples, 10)
};

/// Baselines that know no scene: the class frequencies of masked training items, overall and per slot.
struct prior_baselines {
  std::array<std::array<topk_row, 2>, 2> class_prior{}, slot_prior{};  ///< [shape][in/out]
};

namespace context_detail {

/// Softmax probabilities of logits rows.
inline void softmax_rows(const tensor& logits, float* out) {
  const index_t N = logits.extent(0), C = logits.extent(1);
  for (index_t r = 0; r < N; ++r) {
    const float* z = logits.data() + r * C;
    const float m = *std::max_element(z, z + C);
    float s = 0;
    for (index_t k = 0; k < C; ++k) s += out[r * C + k] = std::exp(z[k] - m);
    for (index_t k = 0; k < C; ++k) out[r * C + k] /= s;
  }
}

/// The context model's probabilities (examples x 10) on masked examples, evaluation mode.
inline std::vector<float> predict_masked(const distill::cpu& ctx, context_net& net, const world& w, const ex::scene_set& set,
                                         const std::vector<masked_example>& examples, int batch = 128) {
  std::vector<float> probs(examples.size() * classes);
  tensor x;
  std::vector<std::int64_t> labels;
  net.set_training(false);
  for (std::size_t first = 0; first < examples.size(); first += static_cast<std::size_t>(batch)) {
    const std::size_t n = std::min(examples.size() - first, static_cast<std::size_t>(batch));
    fill_masked(w, set, std::span<const masked_example>(examples).subspan(first, n), x, labels);
    net.forward(ctx, x.cview<4>());
    softmax_rows(net.logits(), probs.data() + first * classes);
  }
  return probs;
}

/// Top-k rows split by mask shape and context from probabilities of `examples`.
inline std::array<std::array<topk_row, 2>, 2> topk_table(const ex::scene_set& set, const std::vector<masked_example>& examples,
                                                        const std::vector<float>& probs) {
  std::array<std::array<topk_row, 2>, 2> t{};
  const auto scores = distill::make_view(probs.data(), static_cast<index_t>(examples.size()), index_t(classes));
  for (int shape = 0; shape < 2; ++shape)
    for (int ooc = 0; ooc < 2; ++ooc) {
      std::vector<std::int64_t> labels(examples.size(), -100);  // -100: not in this group
      std::size_t n = 0;
      for (std::size_t i = 0; i < examples.size(); ++i) {
        const auto& it = set.scenes[examples[i].scene].items[examples[i].item];
        if (static_cast<int>(examples[i].shape) == shape && static_cast<int>(it.out_of_context) == ooc) labels[i] = it.cls, ++n;
      }
      topk_row& row = t[static_cast<std::size_t>(shape)][static_cast<std::size_t>(ooc)];
      row.n = n;
      if (n == 0) continue;
      const auto acc = lib::topk(scores, labels, topk_max);
      std::copy(acc.begin(), acc.end(), row.acc.begin());
    }
  return t;
}

/// Accuracy of the recogniser's logits rows against labels, split by the items' flags.
inline void add_accuracy(const tensor& logits, const std::vector<std::int64_t>& labels, const std::vector<bool>& out_of_context, std::array<double, 2>& right,
                         std::array<std::size_t, 2>& count) {
  const index_t C = logits.extent(1);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const float* z = logits.data() + static_cast<index_t>(i) * C;
    const auto best = std::max_element(z, z + C) - z;
    const int g = out_of_context[i] ? 1 : 0;
    right[static_cast<std::size_t>(g)] += best == labels[i];
    ++count[static_cast<std::size_t>(g)];
  }
}

inline accuracy_cell cell(double right, std::size_t n) { return {n ? right / static_cast<double>(n) : std::nan(""), n}; }

}  // namespace context_detail

/// The prior baselines, estimated on the masked examples of the context scenes.
inline prior_baselines context_priors(const world& w, const context_config& c, const std::vector<masked_example>& test_examples) {
  std::array<double, classes> overall{};
  std::array<std::array<double, classes>, ex::outfit_slot_count> per_slot{};
  for (const auto& e : all_masked_examples(w.train, 0, c.context_scenes, c.max_mask_fraction)) {
    const auto& it = w.train.scenes[e.scene].items[e.item];
    overall[it.cls] += 1, per_slot[static_cast<int>(it.slot)][it.cls] += 1;
  }
  std::vector<float> p_class(test_examples.size() * classes), p_slot(p_class.size());
  for (std::size_t i = 0; i < test_examples.size(); ++i) {
    const auto& it = w.test.scenes[test_examples[i].scene].items[test_examples[i].item];
    for (int k = 0; k < classes; ++k) {
      p_class[i * classes + k] = static_cast<float>(overall[k]);
      p_slot[i * classes + k] = static_cast<float>(per_slot[static_cast<int>(it.slot)][k]);
    }
  }
  return {context_detail::topk_table(w.test, test_examples, p_class), context_detail::topk_table(w.test, test_examples, p_slot)};
}

/// Trains and evaluates one seed of system A.
inline context_seed_result run_context_seed(const distill::cpu& ctx, const run_config& c, const world& w, std::uint64_t seed,
                                            const std::filesystem::path& checkpoints, bool resume, const json& base_fingerprint) {
  using namespace context_detail;
  const context_config& a = c.context;
  context_seed_result res;
  res.seed = seed;
  const int S = w.side;

  // ---- 1. the context model ---------------------------------------------------------------
  context_net teacher(seed, S);
  {
    const index_t steps = static_cast<index_t>(a.context_scenes / static_cast<std::uint32_t>(a.context_opt.batch));
    json fp = {{"world", base_fingerprint.at("world")}, {"context_scenes", a.context_scenes}, {"max_mask_fraction", a.max_mask_fraction},
               {"optimiser", to_json(a.context_opt)}, {"run", "context"}, {"seed", seed}};
    training_run run("context-seed" + std::to_string(seed), "top-1", checkpoints / ("context-seed" + std::to_string(seed) + ".ckpt"), fp,
                     teacher.parameters(), a.context_opt, steps);
    if (resume) run.try_resume();
    // validation: one fixed masked example per validation scene
    std::vector<masked_example> val;
    for (std::uint32_t k = 0; k < w.validation.size(); ++k) val.push_back(draw_masked_example(w.validation, k, w.validation.params.seed, 0, a.max_mask_fraction));
    tensor x;
    std::vector<std::int64_t> labels;
    std::vector<masked_example> batch(static_cast<std::size_t>(a.context_opt.batch));
    tensor grad;
    run.run(
        ctx,
        [&](int epoch, index_t s) {
          const auto order = ex::shuffled_order(a.context_scenes, seed, static_cast<std::uint64_t>(epoch));
          for (std::size_t i = 0; i < batch.size(); ++i)
            batch[i] = draw_masked_example(w.train, order[static_cast<std::size_t>(s) * batch.size() + i], seed, static_cast<std::uint64_t>(epoch),
                                           a.max_mask_fraction);
          fill_masked(w, w.train, batch, x, labels);
          teacher.forward(ctx, x.cview<4>());
          resize(grad, teacher.logits().shape());
          const double loss = lib::cross_entropy(ctx, teacher.logits().cview<2>(), distill::make_view(labels.data(), static_cast<index_t>(labels.size())), grad.view<2>());
          teacher.backward(ctx, x.cview<4>(), grad.cview<2>());
          return loss;
        },
        [&] {
          const auto probs = predict_masked(ctx, teacher, w, w.validation, val);
          std::vector<std::int64_t> y;
          for (const auto& e : val) y.push_back(w.validation.scenes[e.scene].items[e.item].cls);
          return lib::topk(distill::make_view(probs.data(), static_cast<index_t>(val.size()), index_t(classes)), y, 1)[0];
        },
        [&](bool t) { teacher.set_training(t); });
    res.context_log = run.log();
    res.validation_top1 = run.log().curve.empty() ? std::nan("") : run.log().curve.back().validation;
  }
  // test: every item of every test scene, each allowed shape
  res.test_examples = all_masked_examples(w.test, 0, static_cast<std::uint32_t>(w.test.size()), a.max_mask_fraction);
  res.test_probabilities = predict_masked(ctx, teacher, w, w.test, res.test_examples);
  res.topk = topk_table(w.test, res.test_examples, res.test_probabilities);

  // ---- 2. soft targets on the recogniser scenes ----------------------------------------------
  const std::uint32_t r0 = a.context_scenes, rn = a.recogniser_scenes;
  std::vector<std::size_t> first_item(rn + 1, 0);  // items of recogniser scene j start at first_item[j]
  for (std::uint32_t j = 0; j < rn; ++j) first_item[j + 1] = first_item[j] + w.train.scenes[r0 + j].items.size();
  std::vector<float> soft(first_item[rn] * classes, 0.0f), has_teacher(first_item[rn], 0.0f);
  {
    const auto examples = all_masked_examples(w.train, r0, rn, a.max_mask_fraction);
    const auto probs = predict_masked(ctx, teacher, w, w.train, examples);
    std::vector<float> count(first_item[rn], 0.0f);
    for (std::size_t i = 0; i < examples.size(); ++i) {
      const std::size_t k = first_item[examples[i].scene - r0] + examples[i].item;
      for (int c2 = 0; c2 < classes; ++c2) soft[k * classes + static_cast<std::size_t>(c2)] += probs[i * classes + static_cast<std::size_t>(c2)];
      count[k] += 1;
    }
    double right = 0, with = 0;
    for (std::uint32_t j = 0; j < rn; ++j)
      for (std::size_t i = 0; i < w.train.scenes[r0 + j].items.size(); ++i) {
        const std::size_t k = first_item[j] + i;
        if (count[k] == 0) continue;
        has_teacher[k] = 1, with += 1;
        float* p = &soft[k * classes];
        right += std::max_element(p, p + classes) - p == w.train.scenes[r0 + j].items[i].cls;
        for (int c2 = 0; c2 < classes; ++c2) p[c2] = std::log(std::max(p[c2] / count[k], 1e-30f));  // log of the mean probability: logits
      }
    res.teacher_coverage = with / static_cast<double>(count.size());
    res.teacher_train_top1 = with > 0 ? right / with : std::nan("");
  }

  // ---- 3. the recognisers, without and with the context teacher ------------------------------
  const auto recogniser = [&](bool distilled) {
    recogniser_result rr;
    item_recogniser net(seed, S);  // the same initialisation for both
    const std::string name = std::string(distilled ? "recogniser-context-kd" : "recogniser-plain") + "-seed" + std::to_string(seed);
    const index_t steps = static_cast<index_t>(rn / static_cast<std::uint32_t>(a.recogniser_opt.batch));
    // the plain recogniser depends on its data and schedule only, the distilled one on the teacher's run too
    json fp = {{"world", base_fingerprint.at("world")}, {"scenes", {a.context_scenes, a.recogniser_scenes}}, {"optimiser", to_json(a.recogniser_opt)},
               {"run", distilled ? "recogniser_kd" : "recogniser_plain"}, {"seed", seed}};
    if (distilled)
      fp["teacher"] = {{"max_mask_fraction", a.max_mask_fraction}, {"optimiser", to_json(a.context_opt)}, {"kd_weight", a.kd_weight},
                       {"kd_temperature", a.kd_temperature}};
    training_run run(name, "accuracy", checkpoints / (name + ".ckpt"), fp, net.parameters(), a.recogniser_opt, steps);
    if (resume) run.try_resume();
    tensor x, grad, teacher_logits;
    item_batch items;
    std::vector<std::int64_t> labels;
    std::vector<float> weights;
    std::vector<std::uint32_t> ids(static_cast<std::size_t>(a.recogniser_opt.batch));
    const auto val_ids = range_ids(0, static_cast<std::uint32_t>(w.validation.size()));
    const auto accuracy_on = [&](const ex::scene_set& set, const std::vector<std::uint32_t>& scene_ids, std::array<double, 2>& right,
                                 std::array<std::size_t, 2>& count) {
      for (std::size_t f = 0; f < scene_ids.size(); f += 64) {
        const auto part = std::span<const std::uint32_t>(scene_ids).subspan(f, std::min<std::size_t>(64, scene_ids.size() - f));
        fill_scenes(w, set, part, x);
        fill_items(w, set, part, items, labels);
        std::vector<bool> ooc;
        for (std::uint32_t id : part)
          for (const auto& it : set.scenes[id].items) ooc.push_back(it.out_of_context);
        net.forward(ctx, x.cview<4>(), items);
        add_accuracy(net.logits(), labels, ooc, right, count);
      }
    };
    run.run(
        ctx,
        [&](int epoch, index_t s) {
          const auto order = ex::shuffled_order(rn, seed ^ 0x5245434Full /* "RECO" */, static_cast<std::uint64_t>(epoch));
          for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = r0 + order[static_cast<std::size_t>(s) * ids.size() + i];
          fill_scenes(w, w.train, ids, x);
          fill_items(w, w.train, ids, items, labels);
          net.forward(ctx, x.cview<4>(), items);
          resize(grad, net.logits().shape());
          const auto y = distill::make_view(labels.data(), static_cast<index_t>(labels.size()));
          double loss = lib::cross_entropy(ctx, net.logits().cview<2>(), y, grad.view<2>(), distilled ? 1.0 - a.kd_weight : 1.0);
          if (distilled) {
            const index_t K = items.size();
            resize(teacher_logits, {K, classes});
            weights.assign(static_cast<std::size_t>(K), 0.0f);
            index_t k = 0;
            for (std::uint32_t id : ids)
              for (std::size_t i = 0; i < w.train.scenes[id].items.size(); ++i, ++k) {
                const std::size_t src = first_item[id - r0] + i;
                std::copy_n(&soft[src * classes], classes, teacher_logits.data() + k * classes);
                weights[static_cast<std::size_t>(k)] = has_teacher[src];
              }
            loss = (1 - a.kd_weight) * loss +
                   a.kd_weight * lib::soft_target_kd(ctx, net.logits().cview<2>(), teacher_logits.cview<2>(), distill::make_view(weights.data(), K),
                                                     a.kd_temperature, a.kd_weight, grad.view<2>());
          }
          net.backward(ctx, grad.cview<2>());
          return loss;
        },
        [&] {
          std::array<double, 2> right{};
          std::array<std::size_t, 2> count{};
          accuracy_on(w.validation, val_ids, right, count);
          return (right[0] + right[1]) / static_cast<double>(count[0] + count[1]);
        },
        [&](bool t) { net.set_training(t); });
    rr.log = run.log();
    rr.validation = run.log().curve.empty() ? std::nan("") : run.log().curve.back().validation;
    // test: clean items, then one degraded item per scene for each degradation
    const auto test_ids = range_ids(0, static_cast<std::uint32_t>(w.test.size()));
    {
      std::array<double, 2> right{};
      std::array<std::size_t, 2> count{};
      accuracy_on(w.test, test_ids, right, count);
      rr.clean_in = cell(right[0], count[0]), rr.clean_out = cell(right[1], count[1]);
    }
    for (std::size_t d = 0; d < degradations.size(); ++d) {
      std::array<double, 2> right{};
      std::array<std::size_t, 2> count{};
      for (std::size_t f = 0; f < test_ids.size(); f += 64) {
        const auto part = std::span<const std::uint32_t>(test_ids).subspan(f, std::min<std::size_t>(64, test_ids.size() - f));
        std::vector<std::uint16_t> which;
        std::vector<bool> ooc;
        for (std::uint32_t id : part) {
          which.push_back(degraded_item(w.test, id, degradations[d]));
          ooc.push_back(w.test.scenes[id].items[which.back()].out_of_context);
        }
        fill_degraded(w, w.test, part, which, degradations[d], x);
        fill_single_items(w, w.test, part, which, items, labels);
        net.forward(ctx, x.cview<4>(), items);
        add_accuracy(net.logits(), labels, ooc, right, count);
      }
      rr.degraded_in[d] = cell(right[0], count[0]), rr.degraded_out[d] = cell(right[1], count[1]);
    }
    return rr;
  };
  res.plain = recogniser(false);
  res.distilled = recogniser(true);
  return res;
}

}  // namespace skd
