// SPDX-License-Identifier: MIT
#pragma once
// The run's configuration: the presets, the command line (every value checked as it is parsed,
// before anything is read, generated or trained), the settings that decide how a model trains
// (kept in each checkpoint: --resume refuses to continue under other settings and names them)
// and results.json's "config".

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runner.hpp"

#ifndef DISTILL_VQA_RULES_DIR
#define DISTILL_VQA_RULES_DIR "rules"
#endif

namespace vqa {

struct run_options {
  std::string preset = "cpu-small";
  bool pixels = false;
  int seeds = 3;
  std::uint64_t first_seed = 1;
  std::uint64_t data_seed = 1;
  std::string out = "vqa_out";
  std::string data_dir;  // default: <out>/data
  std::string rules_dir = DISTILL_VQA_RULES_DIR;
  std::string device = "auto";
  int epochs = 12;
  int train_images = 5000;
  int test_images = 1000;
  int render = 8;
  bool resume = false;
  std::vector<std::string> models;  // default: all five
  model_spec arch;                  // g, f and scorer sizes of every model
  int student_g_hidden = 0;         // 0: same as the others
  train_config train;
};

inline void apply_preset(run_options& o) {
  if (o.preset == "cpu-small") {  // state descriptions, sized for 2 CPU cores (see README)
    o.train_images = 5000, o.test_images = 1000, o.epochs = 12, o.seeds = 3;
    o.arch.g_hidden = 128, o.arch.g_layers = 3, o.arch.f_hidden = {128}, o.arch.scorer_hidden = 128;
    o.train.lr = 1e-3, o.train.batch = 64, o.train.f_dropout = 0.0;
  } else if (o.preset == "paper") {  // Santoro et al. / kimhc6028: g 4x256, f 256-256-dropout-10, Adam 1e-4
    o.train_images = 10000, o.test_images = 1000, o.epochs = 40, o.seeds = 1;
    o.arch.g_hidden = 256, o.arch.g_layers = 4, o.arch.f_hidden = {256, 256}, o.arch.scorer_hidden = 256;
    o.train.lr = 1e-4, o.train.batch = 64, o.train.f_dropout = 0.5;
  } else if (o.preset == "smoke") {  // seconds: for tests and a first look
    o.train_images = 300, o.test_images = 60, o.epochs = 2, o.seeds = 1, o.render = 2;
    o.arch.g_hidden = 32, o.arch.g_layers = 2, o.arch.f_hidden = {32}, o.arch.scorer_hidden = 16;
    o.train.lr = 1e-3, o.train.batch = 32, o.train.f_dropout = 0.0;
  } else {
    throw std::invalid_argument("--preset must be cpu-small, paper or smoke, not '" + o.preset + "'");
  }
}

inline const std::vector<std::string> all_models = {"baseline", "teacher_logic", "teacher_predicted", "student_logits", "student_attention"};

inline model_spec spec_of(const std::string& name, const run_options& o) {
  model_spec s = o.arch;
  s.name = name;
  if (name == "baseline") {
    s.title = "baseline RN";
  } else if (name == "teacher_logic") {
    s.title = "teacher (logic mask)", s.mask = mask_source::logic, s.is_teacher = true;
  } else if (name == "teacher_predicted") {
    s.title = "teacher (predicted mask)", s.mask = mask_source::predicted, s.supervise_pairs = true;
  } else if (name == "student_logits") {
    s.title = "student (a) logit KD", s.distill_logits = true, s.distill_features = o.pixels;
  } else if (name == "student_attention") {
    s.title = "student (b) pair-attention KD", s.mask = mask_source::predicted, s.distill_logits = true, s.distill_pairs = true,
    s.distill_features = o.pixels;
  } else {
    throw std::invalid_argument("unknown model '" + name + "' (known: baseline, teacher_logic, teacher_predicted, student_logits, student_attention)");
  }
  if (o.student_g_hidden > 0 && (name == "student_logits" || name == "student_attention")) s.g_hidden = o.student_g_hidden;
  return s;
}

/// results.json's "config": everything the run was made with. `device` names the hardware.
inline nlohmann::json config_json(const run_options& o, const std::string& device) {
  nlohmann::json j;
  j["preset"] = o.preset, j["pixels"] = o.pixels, j["seeds"] = o.seeds, j["first_seed"] = o.first_seed;
  j["data_seed"] = o.data_seed, j["device"] = device, j["threads"] = o.train.threads;
  j["epochs"] = o.epochs, j["train_images"] = o.train_images, j["test_images"] = o.test_images;
  j["questions_per_image"] = 20, j["batch"] = o.train.batch, j["lr"] = o.train.lr, j["optimizer"] = "adam";
  j["g_hidden"] = o.arch.g_hidden, j["g_layers"] = o.arch.g_layers, j["f_hidden"] = o.arch.f_hidden;
  j["f_dropout"] = o.train.f_dropout, j["scorer_hidden"] = o.arch.scorer_hidden, j["student_g_hidden"] = o.student_g_hidden;
  j["alpha"] = o.train.alpha, j["temperature"] = o.train.temperature, j["pair_weight"] = o.train.pair_weight;
  j["attention_weight"] = o.train.attention_weight, j["models"] = o.models;
  if (o.pixels) {
    j["cnn_channels"] = o.train.cnn_channels, j["at_weight"] = o.train.at_weight, j["adain_weight"] = o.train.adain_weight;
    j["nce_weight"] = o.train.nce_weight, j["nce_temperature"] = o.train.nce_temperature, j["queue_size"] = o.train.queue_size;
  }
  return j;
}

/// The settings that decide how one model of one seed trains and what its curve shows: the
/// configuration without what only selects work (preset name, seeds, models), with the backend
/// ("cpu" or "cuda"; CPU results also depend on the thread count, which is in the configuration)
/// and a fingerprint of the rules (the logic masks). A checkpoint stores them; --resume
/// continues only under the same ones, so a resumed run is the uninterrupted run.
inline nlohmann::json training_settings(const run_options& o, const std::string& backend, std::uint64_t rules_fingerprint) {
  nlohmann::json j = config_json(o, backend);
  for (const char* only_selects_work : {"preset", "seeds", "first_seed", "models"}) j.erase(only_selects_work);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(rules_fingerprint));
  j["rules"] = hex;
  return j;
}

/// Empty when `stored` and `now` agree; otherwise every differing setting, e.g.
/// "lr = 0.001 in the checkpoint, 0.002 now; batch = ...".
inline std::string settings_mismatch(const nlohmann::json& stored, const nlohmann::json& now) {
  std::string diff;
  const auto describe = [](const nlohmann::json& j, const std::string& key) { return j.contains(key) ? j[key].dump() : std::string("(absent)"); };
  std::vector<std::string> keys;
  for (const auto& [k, v] : stored.items()) keys.push_back(k);
  for (const auto& [k, v] : now.items())
    if (!stored.contains(k)) keys.push_back(k);
  for (const auto& k : keys)
    if (!stored.contains(k) || !now.contains(k) || stored[k] != now[k])
      diff += (diff.empty() ? "" : "; ") + k + " = " + describe(stored, k) + " in the checkpoint, " + describe(now, k) + " now";
  return diff;
}

namespace config_detail {

// CLI11 reads integers with strtoull/strtoll in base 0: "-1" wraps to 2^64 - 1, "010" is octal
// and an out-of-range value saturates. Options here take plain decimal digits only (leading
// zeros are dropped before CLI11 converts, so "010" is ten).
inline std::string check_decimal(std::string& s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return "must be a non-negative decimal integer, not '" + s + "'";
  const std::string digits = s.substr(std::min(s.find_first_not_of('0'), s.size() - 1));
  if (digits.size() > 20 || (digits.size() == 20 && digits > "18446744073709551615"))
    return "'" + s + "' is larger than the largest value, 18446744073709551615";
  s = digits;
  return {};
}
// CLI11's number checks pass NaN (every comparison with it is false) and infinity.
inline std::string check_finite(std::string& s) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v) || errno == ERANGE) return "must be a finite number, not '" + s + "'";
  return {};
}
inline std::string check_not_empty(std::string& s) { return s.empty() ? std::string("must not be empty") : std::string(); }

inline const CLI::Validator decimal(check_decimal, "DECIMAL", "decimal");
inline const CLI::Validator finite(check_finite, "FINITE", "finite");
inline const CLI::Validator not_empty(check_not_empty, "NOT EMPTY", "not_empty");

}  // namespace config_detail

/// Parses and checks the command line into `o` (the preset, then the overrides). Returns the
/// exit status when the program should stop now (0 after --help, non-zero with the reason on
/// `err`), nothing when it should run.
inline std::optional<int> parse_command_line(int argc, const char* const* argv, run_options& o, std::ostream& out, std::ostream& err) {
  using config_detail::decimal, config_detail::finite, config_detail::not_empty;
  CLI::App app{"Spatial Knowledge Distillation on Sort-of-CLEVR: a logic-mask teacher teaches students that see no mask"};
  std::string preset = "cpu-small";
  app.add_option("--preset", preset, "cpu-small (state descriptions, 2 CPU cores), paper (Santoro et al. sizes; with --pixels for a GPU) or smoke")
      ->check(CLI::IsMember({"cpu-small", "paper", "smoke"}))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // scripts/run.sh passes a default first
  app.add_flag("--pixels", o.pixels, "learn from pixels: objects are the 25 cells of a 4-layer CNN");
  auto* seeds = app.add_option("--seeds", o.seeds, "number of seeds (mean ± std over them)")->transform(decimal)->check(CLI::Range(1, 100));
  app.add_option("--first-seed", o.first_seed, "seed of the first run (the others follow)")->transform(decimal);
  app.add_option("--out", o.out, "output folder: results.json, curves.csv, curves.png, examples.png, checkpoints/")
      ->check(not_empty)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--data-dir", o.data_dir, "where the dataset files live (default <out>/data)")->check(not_empty);
  app.add_option("--rules", o.rules_dir, "folder of the rule files (non_relational/closest/furthest/count.rules)")->check(not_empty);
  app.add_option("--device", o.device, "auto (CUDA when built with it and a GPU is present), cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("--threads", o.train.threads, "CPU threads (default: all cores)")->transform(decimal)->check(CLI::Range(1, 1024));
  app.add_flag("--resume", o.resume, "continue from the checkpoints in <out>/checkpoints (made with the same settings)");
  app.add_option("--models", o.models, "models to train (default all): baseline teacher_logic teacher_predicted student_logits student_attention")
      ->check(CLI::IsMember(all_models));
  // overrides of the preset
  std::optional<int> epochs, train_images, test_images, batch, g_hidden, g_layers, scorer_hidden, student_g_hidden, render;
  std::optional<double> lr, alpha, temperature, pair_weight, attention_weight, dropout, at_weight, adain_weight, nce_weight;
  std::optional<std::vector<int>> f_hidden;
  std::optional<std::uint64_t> data_seed;
  app.add_option("--epochs", epochs, "training epochs per model")->transform(decimal)->check(CLI::Range(1, 100000));
  app.add_option("--train-images", train_images, "training images (20 questions each)")->transform(decimal)->check(CLI::Range(1, 10000000));
  app.add_option("--test-images", test_images, "test images (20 questions each)")->transform(decimal)->check(CLI::Range(1, 10000000));
  app.add_option("--data-seed", data_seed, "seed of the generated dataset")->transform(decimal);
  app.add_option("--batch", batch, "questions per step")->transform(decimal)->check(CLI::Range(1, 65536));
  app.add_option("--lr", lr, "Adam learning rate")->check(finite)->check(CLI::PositiveNumber);
  app.add_option("--g-hidden", g_hidden, "width of g")->transform(decimal)->check(CLI::Range(1, 8192));
  app.add_option("--g-layers", g_layers, "layers of g")->transform(decimal)->check(CLI::Range(1, 8));
  app.add_option("--f-hidden", f_hidden, "hidden widths of f, e.g. --f-hidden 256 256")->transform(decimal)->check(CLI::Range(1, 8192));
  app.add_option("--dropout", dropout, "dropout before f's last layer")->check(finite)->check(CLI::Range(0.0, 0.99));
  app.add_option("--scorer-hidden", scorer_hidden, "hidden width of the pair scorer")->transform(decimal)->check(CLI::Range(1, 8192));
  app.add_option("--student-g-hidden", student_g_hidden, "width of the students' g (smaller students)")->transform(decimal)->check(CLI::Range(1, 8192));
  app.add_option("--alpha", alpha, "students: weight of the soft-target KL (1 - alpha on the labels)")->check(finite)->check(CLI::Range(0.0, 1.0));
  app.add_option("--temperature", temperature, "soft-target temperature")->check(finite)->check(CLI::PositiveNumber);
  app.add_option("--pair-weight", pair_weight, "teacher (predicted mask): weight of the pair supervision")->check(finite)->check(CLI::NonNegativeNumber);
  app.add_option("--attention-weight", attention_weight, "student (b): weight of the pair-attention distillation")->check(finite)->check(CLI::NonNegativeNumber);
  app.add_option("--at-weight", at_weight, "pixels: attention-transfer beta")->check(finite)->check(CLI::NonNegativeNumber);
  app.add_option("--adain-weight", adain_weight, "pixels: AdaIN statistics loss weight")->check(finite)->check(CLI::NonNegativeNumber);
  app.add_option("--nce-weight", nce_weight, "pixels: token contrastive loss weight")->check(finite)->check(CLI::NonNegativeNumber);
  app.add_option("--render", render, "example panels to draw into examples.png (0: none)")->transform(decimal)->check(CLI::Range(0, 64));
  o.train.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e, out, err);
  }

  o.preset = preset;
  const int threads = o.train.threads;
  const int seeds_given = o.seeds;
  apply_preset(o);
  o.train.threads = threads;
  if (seeds->count()) o.seeds = seeds_given;
  if (o.first_seed > std::numeric_limits<std::uint64_t>::max() - static_cast<std::uint64_t>(o.seeds - 1)) {
    err << "--first-seed: " << o.first_seed << " with " << o.seeds << " seeds runs past the largest seed, 18446744073709551615\n";
    return 1;
  }
  if (epochs) o.epochs = *epochs;
  if (train_images) o.train_images = *train_images;
  if (test_images) o.test_images = *test_images;
  if (data_seed) o.data_seed = *data_seed;
  if (batch) o.train.batch = *batch;
  if (lr) o.train.lr = *lr;
  if (g_hidden) o.arch.g_hidden = *g_hidden;
  if (g_layers) o.arch.g_layers = *g_layers;
  if (f_hidden) o.arch.f_hidden = *f_hidden;
  if (dropout) o.train.f_dropout = *dropout;
  if (scorer_hidden) o.arch.scorer_hidden = *scorer_hidden;
  if (student_g_hidden) o.student_g_hidden = *student_g_hidden;
  if (alpha) o.train.alpha = *alpha;
  if (temperature) o.train.temperature = *temperature;
  if (pair_weight) o.train.pair_weight = *pair_weight;
  if (attention_weight) o.train.attention_weight = *attention_weight;
  if (at_weight) o.train.at_weight = *at_weight;
  if (adain_weight) o.train.adain_weight = *adain_weight;
  if (nce_weight) o.train.nce_weight = *nce_weight;
  if (render) o.render = *render;
  o.train.pixels = o.pixels;
  if (o.models.empty()) o.models = all_models;
  const bool students = std::count(o.models.begin(), o.models.end(), "student_logits") ||
                        std::count(o.models.begin(), o.models.end(), "student_attention");
  if (students && !std::count(o.models.begin(), o.models.end(), "teacher_logic"))
    o.models.insert(o.models.begin(), "teacher_logic");  // the students' teacher
  std::stable_sort(o.models.begin(), o.models.end(), [](const std::string& a, const std::string& b) {
    return std::find(all_models.begin(), all_models.end(), a) < std::find(all_models.begin(), all_models.end(), b);
  });
  o.models.erase(std::unique(o.models.begin(), o.models.end()), o.models.end());
  return std::nullopt;
}

}  // namespace vqa
