// SPDX-License-Identifier: MIT
// distillvlm: DistillVLM (Fang et al. 2021, "Compressing Visual-Linguistic Model via Knowledge
// Distillation") on visual questions about scenes of real Fashion-MNIST items
// (examples/common/scene_world.hpp, scene_questions.hpp). Work in progress: README.md says what
// exists and what does not yet.
//
//   world     scenes and template questions (19 answers), generated once into <world-dir>
//   regions   the first K proposals of one class-agnostic region proposal network trained on the
//             train scenes' boxes (examples/common/region_proposals.hpp; cached in <world-dir>),
//             or with --regions oracle the true item boxes; the same regions for teacher and
//             student, so their region tokens line up
//   teacher   a larger VQA transformer (CNN + RoI Align region tokens, question words, [CLS])
//   student   a smaller one, trained alone (CE) and distilled (CE + logit KD + last-layer
//             attention-map MSE with the teacher's heads averaged in groups onto the student's,
//             and, with --nce-weight, token-wise NCE against a queue of teacher keys)
//   pretrain  with --pretrain-epochs N, each model first learns masked region classification
//             (src/pretraining.hpp; the distilled student from the pre-trained teacher), then is
//             fine-tuned on the questions from those weights
//   report    accuracy per question family on validation and test, results.json, curves.csv
//
//   distillvlm --preset smoke|cpu-small [--regions proposals|oracle] [--pretrain-epochs N] [--seeds 1] [--out DIR] [--resume]

#include <CLI/CLI.hpp>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config.hpp"
#include "pretraining.hpp"
#include "training.hpp"

namespace fs = std::filesystem;
using namespace dvlm;

namespace {

double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  return in >> one ? one : std::string("?");
}

json accuracy_json(const accuracy& a) {
  json per = json::object();
  for (int f = 0; f < ex::question_family_count; ++f)
    per[std::string(ex::question_family_names[static_cast<std::size_t>(f)])] = {{"accuracy", a.family(f)}, {"questions", a.family_total[static_cast<std::size_t>(f)]}};
  return {{"accuracy", a.overall()}, {"questions", a.total}, {"per_family", per}};
}

std::string percent(double v) { return std::isnan(v) ? std::string("-") : ex::table::fixed(100 * v, 1); }

void print_row(const std::string& name, const accuracy& val, const accuracy& test, const std::string& extra) {
  std::cout << "  " << name;
  for (std::size_t i = name.size(); i < 22; ++i) std::cout << ' ';
  std::cout << percent(val.overall()) << "\t" << percent(test.overall());
  for (int f = 0; f < ex::question_family_count; ++f) std::cout << "\t" << percent(test.family(f));
  std::cout << "\t" << extra << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"DistillVLM on visual questions about scenes of real Fashion-MNIST items (work in progress)"};
  run_config c;
  std::string preset = "cpu-small", out = "distillvlm_out", world_dir, regions = "proposals";
  bool resume = false;
  std::optional<int> seeds, threads, teacher_epochs, student_epochs;
  std::optional<std::uint64_t> first_seed;
  std::optional<std::uint32_t> train_scenes;
  std::optional<int> max_regions;
  std::optional<double> kd_weight, kd_temperature, attention_weight, nce_weight;
  std::optional<int> pretrain_epochs;
  std::optional<bool> pretrain_distill;
  app.add_option("--preset", preset, "smoke (under 30 s, CI) or cpu-small")->check(CLI::IsMember({"smoke", "cpu-small"}));
  app.add_option("--regions", regions, "region source: proposals (one class-agnostic RPN's, read by teacher and student) or oracle (the true item boxes)")
      ->check(CLI::IsMember({"proposals", "oracle"}));
  app.add_option("--seeds", seeds, "number of seeds")->check(CLI::Range(1, 100));
  app.add_option("--first-seed", first_seed, "seed of the first run (the others follow)");
  app.add_option("--out", out, "output folder: results.json, curves.csv, checkpoints/");
  app.add_option("--world-dir", world_dir, "folder of the scene and question files (default <out>/world; reused across runs)");
  app.add_option("--data-dir", c.data_dir, "folder of the four Fashion-MNIST .gz files (Debian: /usr/share/datasets/fashion-mnist)");
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(1, 1024));
  app.add_flag("--resume", resume, "continue from the checkpoints in <out>/checkpoints (finished runs are not retrained)");
  app.add_option("--max-regions", max_regions, "K: region tokens per scene (proposals: the first K; oracle: at most K true boxes)")->check(CLI::Range(1, 20));
  app.add_option("--train-scenes", train_scenes, "train scenes (each with its questions)")->check(CLI::Range(1, 1000000));
  app.add_option("--teacher-epochs", teacher_epochs, "epochs of the teacher")->check(CLI::Range(1, 10000));
  app.add_option("--student-epochs", student_epochs, "epochs of each student")->check(CLI::Range(1, 10000));
  app.add_option("--kd-weight", kd_weight, "weight of the logit KD term w T^2 KL(p_t || p_s)")->check(CLI::NonNegativeNumber);
  app.add_option("--kd-temperature", kd_temperature, "temperature of the logit KD term")->check(CLI::PositiveNumber);
  app.add_option("--attention-weight", attention_weight, "weight of the last-layer attention-map MSE")->check(CLI::NonNegativeNumber);
  app.add_option("--nce-weight", nce_weight, "weight of the token-wise NCE against the queue of teacher keys (0: off)")->check(CLI::NonNegativeNumber);
  app.add_option("--pretrain-epochs", pretrain_epochs, "epochs of masked-region-classification pre-training of every model before fine-tuning (0: none)")
      ->check(CLI::Range(0, 10000));
  app.add_option("--pretrain-distill", pretrain_distill,
                 "true: the distilled student is pre-trained from the pre-trained teacher (region-logit KD + attention MSE); false: it starts from the student pre-trained alone");
  c.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  CLI11_PARSE(app, argc, argv);

  try {
    apply_preset(c, preset);
    c.regions = regions == "oracle" ? region_source::oracle : region_source::proposals;
    if (seeds) c.seeds = *seeds;
    if (first_seed) c.first_seed = *first_seed;
    if (threads) c.threads = *threads;
    c.rpn.threads = c.threads;
    if (train_scenes) c.world.train_scenes = *train_scenes;
    if (max_regions) c.max_regions = *max_regions;
    if (c.regions == region_source::proposals && c.max_regions > c.rpn.max_proposals)
      throw std::invalid_argument("--max-regions must not exceed the proposals kept per scene (" + std::to_string(c.rpn.max_proposals) + ")");
    if (teacher_epochs) c.teacher_opt.epochs = *teacher_epochs;
    if (student_epochs) c.student_opt.epochs = *student_epochs;
    if (kd_weight) c.kd.kd_weight = *kd_weight;
    if (kd_temperature) c.kd.kd_temperature = *kd_temperature;
    if (attention_weight) c.kd.attention_weight = *attention_weight;
    if (nce_weight) c.kd.nce_weight = *nce_weight;
    if (pretrain_epochs) c.pretrain.epochs = *pretrain_epochs;
    if (pretrain_distill) c.pretrain.distill = *pretrain_distill;
    if (c.teacher.heads % c.student.heads != 0) throw std::invalid_argument("the teacher's heads must be a multiple of the student's (group_mean head mapping)");

    const distill::cpu ctx{c.threads};
    const fs::path o(out), ckpt = o / "checkpoints";
    fs::create_directories(ckpt);
    const std::string device = "CPU, " + std::to_string(c.threads) + " thread" + (c.threads > 1 ? "s" : "");
    std::cerr << "distillvlm: preset " << c.preset << ", " << c.seeds << " seed(s); " << device << "; load average " << load_average() << "\n";
    const auto t_start = std::chrono::steady_clock::now();
    const double cpu_start = cpu_seconds();

    const fs::path wdir = world_dir.empty() ? o / "world" : fs::path(world_dir);
    world w = load_world(c.world, c.data_dir, wdir);
    std::cout << "scene world: " << w.train.scenes.size() << " / " << w.validation.scenes.size() << " / " << w.test.scenes.size()
              << " train / validation / test scenes, " << w.train.questions.size() << " / " << w.validation.questions.size() << " / "
              << w.test.questions.size() << " questions\n";

    json results;
    results["config"] = to_json(c);
    results["device"] = device;
    results["load_average_start"] = load_average();
    json fp_world = {{"world", to_json(c.world)}, {"max_regions", c.max_regions}, {"regions", region_source_name(c.regions)}};
    if (c.regions == region_source::proposals) {
      const proposal_summary ps = attach_proposals(w, c.rpn, c.max_regions, wdir);
      fp_world["proposal_key"] = hex16(ps.key);
      std::cout << "regions: the first K = " << c.max_regions << " proposals of the class-agnostic RPN (key " << hex16(ps.key) << ", "
                << (ps.trained ? "trained in " + ex::table::fixed(ps.train_seconds, 1) + " s" : std::string("cached")) << "); recall@" << c.max_regions
                << " of the validation items: " << ex::table::fixed(ps.recall50, 3) << " at IoU 0.5, " << ex::table::fixed(ps.recall70, 3)
                << " at IoU 0.7 (all " << c.rpn.max_proposals << " kept proposals: " << ex::table::fixed(ps.recall50_all, 3) << " / "
                << ex::table::fixed(ps.recall70_all, 3) << ")\n";
      results["proposals"] = {{"key", hex16(ps.key)}, {"trained_in_this_run", ps.trained}, {"train_seconds", ps.train_seconds},
                              {"validation_recall_at_K", {{"K", c.max_regions}, {"iou_0.5", ps.recall50}, {"iou_0.7", ps.recall70}}},
                              {"validation_recall_all_kept", {{"kept", c.rpn.max_proposals}, {"iou_0.5", ps.recall50_all}, {"iou_0.7", ps.recall70_all}}}};
    } else {
      std::cout << "regions: oracle, the true item boxes (at most K = " << c.max_regions << ")\n";
    }
    const accuracy prior_val = prior_accuracy(w.train, w.validation), prior_test = prior_accuracy(w.train, w.test);
    results["answer_prior"] = {{"validation", accuracy_json(prior_val)}, {"test", accuracy_json(prior_test)}};
    json runs = json::array(), pretraining = json::array();
    std::vector<run_log> logs;
    std::cout << "\nAccuracy (%): validation, test, and test per family (";
    for (int f = 0; f < ex::question_family_count; ++f) std::cout << (f ? ", " : "") << ex::question_family_names[static_cast<std::size_t>(f)];
    std::cout << ")\n";
    print_row("answer prior", prior_val, prior_test, "(most common train answer of the family)");

    for (int k = 0; k < c.seeds; ++k) {
      const std::uint64_t seed = c.first_seed + static_cast<std::uint64_t>(k);
      json fp_teacher = fp_world;
      fp_teacher["teacher"] = to_json(c.teacher), fp_teacher["optimiser"] = to_json(c.teacher_opt), fp_teacher["seed"] = seed;
      json fp_alone = fp_world;
      fp_alone["student"] = to_json(c.student), fp_alone["optimiser"] = to_json(c.student_opt), fp_alone["seed"] = seed;
      json fp_kd = fp_alone;
      fp_kd["teacher"] = fp_teacher, fp_kd["distillation"] = to_json(c.kd);

      vqa_transformer teacher("teacher", c.teacher, seed), alone("student", c.student, seed), distilled("student", c.student, seed);
      if (c.pretrain.epochs > 0) {  // pre-training (src/pretraining.hpp); fine-tuning starts from its weights
        const seed_pretraining p = pretrain_seed(ctx, c, w, fp_world, seed, ckpt, resume, teacher, alone, distilled, fp_teacher, fp_alone, fp_kd);
        for (const auto& r : p.results) {
          std::cout << "  " << r.name << " s" << seed << ": validation masked-region accuracy " << percent(r.validation.accuracy) << " % ("
                    << r.validation.regions << " regions; most common class " << percent(r.validation.majority) << " %), "
                    << ex::table::fixed(r.log.seconds, 1) << " s training\n";
          logs.push_back(r.log);
        }
        pretraining.push_back({{"seed", seed}, {"models", p.to_json()}});
      }
      std::vector<model_result> rs;
      rs.push_back(train_model(ctx, c, w, "teacher", teacher, nullptr, c.teacher_opt, seed, ckpt, resume, fp_teacher));
      rs.push_back(train_model(ctx, c, w, "student_alone", alone, nullptr, c.student_opt, seed, ckpt, resume, fp_alone));
      rs.push_back(train_model(ctx, c, w, "student_distilled", distilled, &teacher, c.student_opt, seed, ckpt, resume, fp_kd));
      for (const auto& r : rs) {
        print_row(r.name + " s" + std::to_string(seed), r.validation, r.test,
                  std::to_string(r.parameters) + " parameters, " + ex::table::fixed(r.log.seconds, 1) + " s training");
        runs.push_back({{"model", r.name}, {"seed", seed}, {"parameters", r.parameters}, {"train_seconds", r.log.seconds},
                        {"validation", accuracy_json(r.validation)}, {"test", accuracy_json(r.test)}});
        logs.push_back(r.log);
      }
    }
    results["runs"] = runs;
    if (c.pretrain.epochs > 0) results["pretraining"] = pretraining;
    results["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    results["cpu_seconds"] = cpu_seconds() - cpu_start;
    results["load_average_end"] = load_average();
    examples::write_text_file(o / "results.json", results.dump(2) + "\n");
    std::string csv = "run,epoch,train_loss,validation_accuracy,seconds\n";
    for (const auto& l : logs)
      for (const auto& e : l.curve)
        csv += l.name + "," + std::to_string(e.epoch) + "," + std::to_string(e.train_loss) + "," + std::to_string(e.validation) + "," + std::to_string(e.seconds) + "\n";
    examples::write_text_file(o / "curves.csv", csv);
    std::cout << "\n" << ex::table::fixed(results["seconds"].get<double>(), 1) << " s wall, " << ex::table::fixed(results["cpu_seconds"].get<double>(), 1)
              << " s CPU (" << device << ", load average now " << load_average() << ")\n";
    std::cerr << "wrote " << (o / "results.json").string() << " and curves.csv\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "distillvlm: " << e.what() << "\n";
    return 1;
  }
}
