// SPDX-License-Identifier: MIT
#pragma once
// What a run of fashion_kd is: the presets, the architectures, the methods and every
// hyper-parameter, in one struct that results.json records.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fkd {

/// A CNN of stages, each a 3x3 convolution (padding 1, no bias) -> batch norm -> ReLU, the first
/// `pooled_stages` followed by a 2x2 max-pool (28 -> 14 -> 7), then a head of linear layers
/// (ReLU between them, dropout before each when `dropout` > 0) ending in the 10 classes. No
/// stages: an MLP on the 784 pixels.
struct net_spec {
  std::vector<int> channels;  ///< one entry per stage
  std::vector<int> head;      ///< hidden widths of the head
  int pooled_stages = 2;
  double dropout = 0.0;
};

/// The methods, each a row of the results table.
inline const std::vector<std::string> all_methods = {"ce", "kd", "dkd", "at", "at_kd", "stats", "adain", "ffsd", "mlp_ce", "mlp_kd"};

inline std::string method_title(const std::string& m) {
  if (m == "ce") return "student alone (CE)";
  if (m == "kd") return "Hinton KD";
  if (m == "dkd") return "DKD";
  if (m == "at") return "AT";
  if (m == "at_kd") return "AT + KD";
  if (m == "stats") return "feature statistics L2";
  if (m == "adain") return "AdaIN-KD";
  if (m == "ffsd") return "FFSD";
  if (m == "mlp_ce") return "MLP student alone (CE)";
  if (m == "mlp_kd") return "MLP Hinton KD";
  throw std::invalid_argument("unknown method '" + m + "' (known: ce kd dkd at at_kd stats adain ffsd mlp_ce mlp_kd)");
}
inline bool method_uses_teacher(const std::string& m) { return m != "ce" && m != "ffsd" && m != "mlp_ce"; }

struct optimiser_config {
  double lr = 0.05;            ///< peak learning rate (cosine decay to 0 over the run, per step)
  double momentum = 0.9;       ///< SGD, Nesterov
  double weight_decay = 5e-4;
  int batch = 128;
  int epochs = 8;
};

struct loss_config {
  // chosen on the validation split (seed 1, cpu-small; README "Choices made on validation")
  double kd_temperature = 2.0, kd_alpha = 0.9;                        ///< Hinton KD: (1 - a) CE + a T^2 KL
  double dkd_alpha = 1.0, dkd_beta = 2.0, dkd_temperature = 4.0;     ///< DKD: CE + w (alpha TCKD + beta NCKD) T^2
  double dkd_warmup_epochs = 1.0;                                     ///< DKD weight w = min(epochs done / warm-up, 1)
  double at_beta = 100.0;                                             ///< AT: beta / 2 * sum_j at_j (official code's form)
  double stats_weight = 0.1;                                          ///< CE + w L_stat(r(F_s), F_t)
  double adain_weight = 0.1;                                          ///< CE + w mse(O(AdaIN(F_t; r(F_s))), O(F_t))
  // FFSD (SJLeo/FFSD defaults; warm-up scaled to short runs, see README)
  int ffsd_students = 2;
  double ffsd_temperature = 2.0, ffsd_lambda_diversity = 1e-5, ffsd_lambda_self_distillation = 1000.0, ffsd_lambda_fusion = 10.0;
  double ffsd_warmup_epochs = 5.0;                                    ///< lambda(e) = lambda exp(-5 (1 - e / w)^2) for e <= w
  double ffsd_fusion_weight_decay = 1e-5;
  double ffsd_decoder_lr = 1e-3;                                      ///< decoders: Adam
};

struct run_config {
  std::string preset = "cpu-small";
  int seeds = 3;
  std::uint64_t first_seed = 1;
  std::uint64_t split_seed = 1;
  std::vector<std::string> methods = all_methods;
  int threads = 2;
  // data
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int validation_per_class = 500;  ///< 5 000 validation images from the 60 000
  int teacher_train_per_class = 0; ///< 0: the whole training split
  int student_train_per_class = 0;
  int eval_images = 0;             ///< 0: the whole validation and test sets (smoke: fewer)
  int teacher_augment_pad = 0;
  bool teacher_augment_flip = false;
  int student_augment_pad = 0;
  bool student_augment_flip = false;
  // models
  net_spec teacher{{32, 64, 64}, {256}, 2, 0.3};
  net_spec student{{8, 16}, {64}, 2, 0.0};
  net_spec mlp{{}, {96}, 0, 0.0};
  optimiser_config teacher_opt{0.05, 0.9, 5e-4, 128, 8};
  optimiser_config student_opt{0.05, 0.9, 5e-4, 128, 8};
  loss_config loss;
};

inline void apply_preset(run_config& c, const std::string& preset) {
  c.preset = preset;
  if (preset == "cpu-small") {  // 2 CPU cores, about 30 minutes for everything (README)
    c.seeds = 3, c.teacher_opt.epochs = 10, c.student_opt.epochs = 8, c.student_train_per_class = 1500, c.eval_images = 0;
  } else if (preset == "full") {  // more data and epochs, teacher with augmentation
    c.seeds = 3, c.teacher_opt.epochs = 30, c.student_opt.epochs = 30, c.student_train_per_class = 0, c.eval_images = 0;
    c.teacher_augment_pad = 2, c.teacher_augment_flip = true;
  } else if (preset == "smoke") {  // seconds: the whole pipeline on a few hundred images (CTest)
    c.seeds = 1, c.teacher_opt.epochs = 1, c.student_opt.epochs = 1, c.teacher_train_per_class = 40, c.student_train_per_class = 30;
    c.validation_per_class = 20, c.eval_images = 200, c.teacher_opt.batch = 32, c.student_opt.batch = 32;
  } else {
    throw std::invalid_argument("--preset must be smoke, cpu-small or full, not '" + preset + "'");
  }
}

inline nlohmann::ordered_json to_json(const net_spec& s) {
  return {{"channels", s.channels}, {"head", s.head}, {"pooled_stages", s.pooled_stages}, {"dropout", s.dropout}};
}
inline nlohmann::ordered_json to_json(const optimiser_config& o) {
  return {{"optimizer", "sgd_nesterov"}, {"lr", o.lr}, {"schedule", "cosine_per_step"}, {"momentum", o.momentum},
          {"weight_decay", o.weight_decay}, {"batch", o.batch}, {"epochs", o.epochs}};
}
inline nlohmann::ordered_json to_json(const loss_config& l) {
  return {{"kd_temperature", l.kd_temperature}, {"kd_alpha", l.kd_alpha}, {"dkd_alpha", l.dkd_alpha}, {"dkd_beta", l.dkd_beta},
          {"dkd_temperature", l.dkd_temperature}, {"dkd_warmup_epochs", l.dkd_warmup_epochs}, {"at_beta", l.at_beta},
          {"stats_weight", l.stats_weight}, {"adain_weight", l.adain_weight}, {"ffsd_students", l.ffsd_students},
          {"ffsd_temperature", l.ffsd_temperature}, {"ffsd_lambda_diversity", l.ffsd_lambda_diversity},
          {"ffsd_lambda_self_distillation", l.ffsd_lambda_self_distillation}, {"ffsd_lambda_fusion", l.ffsd_lambda_fusion},
          {"ffsd_warmup_epochs", l.ffsd_warmup_epochs}, {"ffsd_fusion_weight_decay", l.ffsd_fusion_weight_decay},
          {"ffsd_decoder_lr", l.ffsd_decoder_lr}};
}
/// Everything that decides the teacher's weights (its checkpoint is reused only when this matches).
inline nlohmann::ordered_json teacher_json(const run_config& c) {
  return {{"net", to_json(c.teacher)}, {"optimiser", to_json(c.teacher_opt)}, {"train_per_class", c.teacher_train_per_class},
          {"validation_per_class", c.validation_per_class}, {"split_seed", c.split_seed}, {"augment_pad", c.teacher_augment_pad},
          {"augment_flip", c.teacher_augment_flip}, {"seed", c.first_seed}};
}
inline nlohmann::ordered_json to_json(const run_config& c) {
  return {{"preset", c.preset}, {"seeds", c.seeds}, {"first_seed", c.first_seed}, {"split_seed", c.split_seed}, {"methods", c.methods},
          {"threads", c.threads}, {"validation_per_class", c.validation_per_class}, {"teacher_train_per_class", c.teacher_train_per_class},
          {"student_train_per_class", c.student_train_per_class}, {"eval_images", c.eval_images},
          {"teacher_augment", {{"pad", c.teacher_augment_pad}, {"flip", c.teacher_augment_flip}}},
          {"student_augment", {{"pad", c.student_augment_pad}, {"flip", c.student_augment_flip}}}, {"teacher", to_json(c.teacher)},
          {"student", to_json(c.student)}, {"mlp", to_json(c.mlp)}, {"teacher_optimiser", to_json(c.teacher_opt)},
          {"student_optimiser", to_json(c.student_opt)}, {"losses", to_json(c.loss)}};
}

}  // namespace fkd
