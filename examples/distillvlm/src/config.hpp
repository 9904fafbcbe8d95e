// SPDX-License-Identifier: MIT
#pragma once
// What a run of distillvlm is: the presets, the world and its questions, both transformers, the
// losses and the schedules, in one struct that results.json records.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../common/region_proposals.hpp"

namespace dvlm {

using json = nlohmann::ordered_json;

struct optimiser_config {
  double lr = 1e-3;            ///< AdamW peak learning rate, cosine decay to 0 over the run (per step)
  double weight_decay = 1e-2;  ///< decoupled
  int scenes = 16;             ///< scenes per step; every question of each scene is in the batch
  int epochs = 6;
};

/// The scene world (examples/common/scene_world.hpp) and its questions (scene_questions.hpp):
/// train questions feed the models, validation questions show the curves, test questions are
/// only reported (nothing is selected on them).
struct world_config {
  std::uint64_t seed = 1;
  int side = 96;
  double out_of_context_rate = 0.25;
  std::uint32_t train_scenes = 1500, validation_scenes = 300, test_scenes = 1000;
  std::uint32_t validation_per_class = 500;
  std::uint64_t split_seed = 1;
  std::uint64_t question_seed = 1;
  std::uint32_t questions_per_scene = 10;
};

/// One VQA transformer: CNN backbone (conv 3x3 stages) -> RoI Align of each region -> linear to
/// `width`, + box geometry -> region tokens; [CLS] + regions + question words -> encoder -> answer.
struct vlm_config {
  int channels0 = 16, channels1 = 32, channels2 = 64;  ///< the backbone's three stages (stride 2, 2, 1)
  int roi_side = 4;
  int width = 256, layers = 4, heads = 8, ffn = 512;
};

struct distill_config {
  double kd_weight = 1.0;         ///< logit KD: w T^2 KL(p_t || p_s) (Hinton et al.), added to CE
  double kd_temperature = 2.0;
  double attention_weight = 1.0;  ///< last-layer attention-map MSE, teacher heads averaged in groups onto student heads, sum / B
  /// Token-wise NCE between projected student and teacher output tokens, negatives from a queue
  /// of teacher keys (nce_queue > 0) or, with nce_queue = 0, the other tokens of the batch.
  double nce_weight = 1.0;
  double nce_temperature = 0.07;
  int nce_dim = 64;               ///< width of both projections
  int nce_queue = 4096;           ///< teacher keys in the queue of the methods that use NCE
};

/// A row of the ablation: a student trained with CE and the terms that are on (their weights
/// from distill_config), from the aligned teacher or from the teacher on its own regions.
struct student_method {
  const char* name;
  bool kd, attention, nce;
  bool own_regions;  ///< the teacher read its own detector's regions (tokens aligned by best IoU)
  bool distilled() const { return kd || attention || nce; }
};

inline constexpr student_method student_methods[] = {
    {"alone", false, false, false, false},     {"kd", true, false, false, false},  {"attention", false, true, false, false},
    {"nce", false, false, true, false},        {"all", true, true, true, false},   {"all_own_regions", true, true, true, true},
};

inline const student_method& find_method(const std::string& name) {
  for (const auto& m : student_methods)
    if (name == m.name) return m;
  throw std::invalid_argument("--methods: unknown method '" + name + "' (alone, kd, attention, nce, all, all_own_regions)");
}

/// The pre-training stage (src/pretraining.hpp): masked region classification. A scene's [CLS],
/// K region tokens and the words of one of its questions; in each such sequence a fraction of the
/// real regions have their visual features zeroed (box kept) and a linear head on their output
/// tokens names the Fashion-MNIST class of the item each overlaps best at IoU >= 0.5, or
/// background (11 classes).
struct pretrain_config {
  int epochs = 0;          ///< 0: no pre-training; else teacher and students are pre-trained, then fine-tuned from it
  double mask_rate = 0.2;  ///< masked regions per scene: max(1, round(rate x its real regions))
  bool distill = true;     ///< the distilled student is pre-trained from the pre-trained teacher (CE + region-logit KD + attention MSE); false: it starts from the student pre-trained alone
};

/// Where the region tokens of a scene come from (src/data.hpp). Teacher and student always read
/// the same boxes, so their region tokens correspond one to one.
///   proposals  the first K proposals of one class-agnostic region proposal network
///              (examples/common/region_proposals.hpp), trained once per world on the train
///              scenes' boxes: DistillVLM's setting (the regions carry boxes, no class)
///   oracle     the world's true item boxes (an upper bound: the models are told where every item is)
enum class region_source { proposals, oracle };

inline const char* region_source_name(region_source s) { return s == region_source::oracle ? "oracle" : "proposals"; }

struct run_config {
  std::string preset = "cpu-small";
  int seeds = 3;  ///< of the students; each teacher is trained once, with the first seed
  std::uint64_t first_seed = 1;
  int threads = 2;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int max_regions = 6;  ///< K: region tokens per scene (padded with a key mask)
  region_source regions = region_source::proposals;
  examples::region_proposal_config rpn;  ///< the proposal network (its default training; smoke() in the smoke preset)
  /// The teacher's own detector (all_own_regions): another class-agnostic RPN, another seed and
  /// twice the widths, whose proposals do not line up with the student's.
  examples::region_proposal_config teacher_rpn = own_detector(rpn);
  std::vector<std::string> methods = {"alone", "kd", "attention", "nce", "all", "all_own_regions"};
  std::vector<int> queue_sweep = {0, 256, 1024, 4096};  ///< queue sizes of the `nce` method (rows nce_q<N>)
  world_config world;
  // cpu-small sizes: the target teacher (4 layers, 8 heads, width 256) and student (2 layers, 4
  // heads, width 128) at half the width (the full preset has the target widths).
  vlm_config teacher{16, 32, 64, 4, 128, 4, 8, 256};
  vlm_config student{8, 16, 32, 4, 64, 2, 4, 128};
  optimiser_config teacher_opt{1e-3, 1e-2, 16, 8};
  optimiser_config student_opt{1e-3, 1e-2, 16, 8};
  distill_config kd;
  pretrain_config pretrain;  ///< its optimiser: the model's, with pretrain.epochs epochs

  static examples::region_proposal_config own_detector(examples::region_proposal_config r) {
    r.seed += 1;
    for (int& w : r.widths) w *= 2;
    return r;
  }
};

inline void apply_preset(run_config& c, const std::string& preset) {
  c.preset = preset;
  if (preset == "cpu-small") {
    c.seeds = 3;
  } else if (preset == "full") {  // the target widths, more scenes and epochs (hours on CPU)
    c.seeds = 3;
    c.world.train_scenes = 4000, c.world.validation_scenes = 500, c.world.test_scenes = 1000;
    c.teacher = {16, 32, 64, 4, 256, 4, 8, 512};
    c.student = {8, 16, 32, 4, 128, 2, 4, 256};
    c.teacher_opt = {1e-3, 1e-2, 16, 8}, c.student_opt = {1e-3, 1e-2, 16, 8};
    c.kd.nce_dim = 128;
    c.rpn.epochs = 6;
  } else if (preset == "smoke") {  // seconds on 2 cores: the pipeline on a few dozen scenes (CTest)
    c.seeds = 1;
    c.queue_sweep = {0, 256};
    c.world.train_scenes = 48, c.world.validation_scenes = 16, c.world.test_scenes = 16;
    c.world.questions_per_scene = 4;
    c.teacher = {8, 16, 32, 3, 64, 2, 4, 128};
    c.student = {8, 16, 16, 3, 32, 1, 2, 64};
    c.teacher_opt = {1e-3, 1e-2, 8, 1}, c.student_opt = {1e-3, 1e-2, 8, 1};
    c.kd.nce_dim = 16, c.kd.nce_queue = 256;
    c.rpn = examples::region_proposal_config::smoke();
    c.pretrain.epochs = 1;
  } else {
    throw std::invalid_argument("--preset must be smoke, cpu-small or full, not '" + preset + "'");
  }
  c.teacher_rpn = run_config::own_detector(c.rpn);
}

inline json to_json(const optimiser_config& o) {
  return {{"optimizer", "adamw"}, {"lr", o.lr}, {"schedule", "cosine_per_step"}, {"weight_decay", o.weight_decay}, {"scenes_per_step", o.scenes}, {"epochs", o.epochs}};
}
inline json to_json(const world_config& w) {
  return {{"seed", w.seed}, {"side", w.side}, {"out_of_context_rate", w.out_of_context_rate}, {"train_scenes", w.train_scenes},
          {"validation_scenes", w.validation_scenes}, {"test_scenes", w.test_scenes}, {"validation_per_class", w.validation_per_class},
          {"split_seed", w.split_seed}, {"question_seed", w.question_seed}, {"questions_per_scene", w.questions_per_scene}};
}
inline json to_json(const vlm_config& v) {
  return {{"backbone_channels", {v.channels0, v.channels1, v.channels2}}, {"roi_side", v.roi_side}, {"width", v.width}, {"layers", v.layers},
          {"heads", v.heads}, {"ffn", v.ffn}};
}
inline json to_json(const distill_config& d) {
  return {{"kd_weight", d.kd_weight}, {"kd_temperature", d.kd_temperature}, {"attention_weight", d.attention_weight},
          {"attention_loss", "mse on probabilities, last layer, head_map group_mean, reduction batchmean"}, {"nce_weight", d.nce_weight},
          {"nce_temperature", d.nce_temperature}, {"nce_dim", d.nce_dim}, {"nce_queue", d.nce_queue}};
}
/// The proposal network's configuration (every field that decides its proposals).
inline json to_json(const examples::region_proposal_config& r) {
  return {{"anchor_sizes", r.anchor_sizes}, {"anchor_ratios", r.anchor_ratios}, {"widths", r.widths}, {"epochs", r.epochs}, {"batch", r.batch},
          {"lr", r.lr}, {"weight_decay", r.weight_decay}, {"sampled_anchors", r.sampled_anchors}, {"positive_fraction", r.positive_fraction},
          {"positive_iou", r.positive_iou}, {"negative_iou", r.negative_iou}, {"pre_nms", r.pre_nms}, {"nms_iou", r.nms_iou},
          {"max_proposals", r.max_proposals}, {"seed", r.seed}};
}
inline json to_json(const pretrain_config& p) {
  return {{"objective", "masked region classification (10 Fashion-MNIST classes + background, IoU >= 0.5)"}, {"epochs", p.epochs},
          {"mask_rate", p.mask_rate}, {"masked", "pooled region features zeroed, box geometry kept"}, {"distill", p.distill}};
}
inline json regions_json(const run_config& c) {
  if (c.regions == region_source::oracle) return {{"source", "oracle"}, {"meaning", "the true item boxes"}};
  return {{"source", "proposals"},
          {"meaning", "the first max_regions proposals of one class-agnostic RPN trained on the train scenes' boxes, read by teacher and student"},
          {"rpn", to_json(c.rpn)},
          {"teacher_own_rpn", to_json(c.teacher_rpn)},
          {"teacher_own_meaning", "all_own_regions: the teacher's own detector (another seed, twice the widths); each student region token is "
                                  "mapped to the teacher region of best IoU, student regions with no overlapping teacher region are masked out of "
                                  "the attention and NCE terms"}};
}
inline json to_json(const run_config& c) {
  json methods = json::array();
  for (const auto& name : c.methods) {
    const student_method& m = find_method(name);
    methods.push_back({{"name", m.name}, {"kd", m.kd}, {"attention", m.attention}, {"nce", m.nce}, {"teacher_regions", m.own_regions ? "own" : "shared"}});
  }
  return {{"preset", c.preset}, {"seeds", c.seeds}, {"first_seed", c.first_seed},
          {"teachers", "each teacher is trained once, with the first seed, and teaches every student seed"}, {"threads", c.threads},
          {"methods", methods}, {"queue_sweep", c.queue_sweep}, {"max_regions", c.max_regions},
          {"regions", regions_json(c)}, {"world", to_json(c.world)}, {"teacher", to_json(c.teacher)}, {"student", to_json(c.student)},
          {"teacher_optimiser", to_json(c.teacher_opt)}, {"student_optimiser", to_json(c.student_opt)}, {"distillation", to_json(c.kd)},
          {"pretraining", to_json(c.pretrain)}};
}

}  // namespace dvlm
