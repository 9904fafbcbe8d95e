// SPDX-License-Identifier: MIT
#pragma once
// What a run of scene_kd is: the presets, the world, both systems' networks, losses and
// schedules, in one struct that results.json records.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace skd {

using json = nlohmann::ordered_json;

struct optimiser_config {
  double lr = 2e-3;            ///< AdamW peak learning rate, cosine decay to 0 over the run (per step)
  double weight_decay = 1e-4;  ///< decoupled
  int batch = 32;              ///< scenes per step
  int epochs = 8;
};

/// The scene world the run uses (examples/common/scene_world.hpp): train scenes feed the models,
/// validation scenes pick nothing but show the curves, test scenes are only reported.
struct world_config {
  std::uint64_t seed = 1;
  int side = 96;
  double out_of_context_rate = 0.25;
  std::uint32_t train_scenes = 6000, validation_scenes = 600, test_scenes = 2000;
  std::uint32_t validation_per_class = 500;  ///< the Fashion-MNIST train/validation split of the items
  std::uint64_t split_seed = 1;
};

/// System A: scene-based KD. The context model learns on train scenes [0, context_scenes), the
/// item recognisers on the next recogniser_scenes (scenes the context model never saw, so its
/// soft targets there are honest predictions, not memories).
struct context_config {
  std::uint32_t context_scenes = 4000, recogniser_scenes = 2000;
  double max_mask_fraction = 0.3;  ///< a mask never covers more than this share of the canvas
  optimiser_config context_opt{2e-3, 1e-4, 64, 10};
  optimiser_config recogniser_opt{2e-3, 1e-4, 32, 8};
  double kd_weight = 0.5;          ///< L = (1 - w) CE + w T^2 KL(context teacher || recogniser) on items with a teacher
  double kd_temperature = 2.0;
};

/// System B: multi-label KD from a weakly-supervised detector (Liu et al. 2018).
struct wsd_config {
  std::uint32_t train_scenes = 3000;
  std::vector<double> proposal_sizes = {18, 28, 40};  ///< sliding windows (sqrt of the area), pixels
  std::vector<double> proposal_ratios = {0.5, 1.0, 2.0};      ///< height / width
  double proposal_stride = 8;
  optimiser_config teacher_opt{2e-3, 1e-4, 16, 8};
  optimiser_config student_opt{2e-3, 1e-4, 32, 8};
  double teacher_scale = 1.0;      ///< class and region scale of the WSDDN softmaxes (Liu et al.: learnable from 2; 1 localised better on validation)
  int stage1_epochs = 4;           ///< stage 1 (before the classification phase): feature regression only
  int stage1_proposals = 16;       ///< per image: the teacher's top proposals (by region score) whose features the student regresses
  double stage1_weight = 1.0;      ///< Caffe Euclidean loss 1/(2N) sum ||f_s - f_t||^2, times this
  double stage2_temperature = 1.0; ///< SigmoidCE(z_s / T, s_t) + SigmoidCE(z_s, y), no T^2; Liu et al. use 5, the validation sweep picked 1 (README)
  double stage2_soft_weight = 1.0, stage2_hard_weight = 1.0;
};

struct run_config {
  std::string preset = "cpu-small";
  int seeds = 3;
  std::uint64_t first_seed = 1;
  int threads = 2;
  bool run_context = true, run_wsd = true;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  world_config world;
  context_config context;
  wsd_config wsd;
};

inline void apply_preset(run_config& c, const std::string& preset) {
  c.preset = preset;
  if (preset == "cpu-small") {  // each system within 20 minutes on 2 CPU cores (README)
    c.seeds = 3;
  } else if (preset == "full") {  // a bigger machine: more scenes and epochs
    c.seeds = 3;
    c.world.train_scenes = 24000, c.world.validation_scenes = 2000, c.world.test_scenes = 4000;
    c.context.context_scenes = 16000, c.context.recogniser_scenes = 8000;
    c.context.context_opt.epochs = 20, c.context.recogniser_opt.epochs = 16;
    c.wsd.train_scenes = 12000, c.wsd.teacher_opt.epochs = 16, c.wsd.student_opt.epochs = 16;
  } else if (preset == "smoke") {  // about a minute: the whole pipeline on a few hundred scenes (CTest)
    c.seeds = 1;
    c.world.train_scenes = 240, c.world.validation_scenes = 40, c.world.test_scenes = 80;
    c.context.context_scenes = 160, c.context.recogniser_scenes = 80;
    c.context.context_opt = {2e-3, 1e-4, 32, 1}, c.context.recogniser_opt = {2e-3, 1e-4, 16, 1};
    c.wsd.train_scenes = 64, c.wsd.teacher_opt = {2e-3, 1e-4, 8, 1}, c.wsd.student_opt = {2e-3, 1e-4, 16, 1}, c.wsd.stage1_epochs = 1;
    c.wsd.proposal_stride = 16;
  } else {
    throw std::invalid_argument("--preset must be smoke, cpu-small or full, not '" + preset + "'");
  }
}

inline json to_json(const optimiser_config& o) {
  return {{"optimizer", "adamw"}, {"lr", o.lr}, {"schedule", "cosine_per_step"}, {"weight_decay", o.weight_decay}, {"batch", o.batch}, {"epochs", o.epochs}};
}
inline json to_json(const world_config& w) {
  return {{"seed", w.seed}, {"side", w.side}, {"out_of_context_rate", w.out_of_context_rate}, {"train_scenes", w.train_scenes},
          {"validation_scenes", w.validation_scenes}, {"test_scenes", w.test_scenes}, {"validation_per_class", w.validation_per_class},
          {"split_seed", w.split_seed}};
}
inline json to_json(const context_config& a) {
  return {{"context_scenes", a.context_scenes}, {"recogniser_scenes", a.recogniser_scenes}, {"max_mask_fraction", a.max_mask_fraction},
          {"context_optimiser", to_json(a.context_opt)}, {"recogniser_optimiser", to_json(a.recogniser_opt)}, {"kd_weight", a.kd_weight},
          {"kd_temperature", a.kd_temperature}};
}
inline json to_json(const wsd_config& b) {
  return {{"train_scenes", b.train_scenes}, {"proposal_sizes", b.proposal_sizes}, {"proposal_ratios", b.proposal_ratios},
          {"proposal_stride", b.proposal_stride}, {"teacher_optimiser", to_json(b.teacher_opt)}, {"student_optimiser", to_json(b.student_opt)},
          {"teacher_scale", b.teacher_scale}, {"stage1_epochs", b.stage1_epochs}, {"stage1_proposals", b.stage1_proposals}, {"stage1_weight", b.stage1_weight},
          {"stage2_temperature", b.stage2_temperature}, {"stage2_soft_weight", b.stage2_soft_weight}, {"stage2_hard_weight", b.stage2_hard_weight}};
}
inline json to_json(const run_config& c) {
  return {{"preset", c.preset}, {"seeds", c.seeds}, {"first_seed", c.first_seed}, {"threads", c.threads}, {"context_system", c.run_context},
          {"wsd_system", c.run_wsd}, {"world", to_json(c.world)}, {"context", to_json(c.context)}, {"wsd", to_json(c.wsd)}};
}

}  // namespace skd
