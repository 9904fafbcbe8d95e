// SPDX-License-Identifier: MIT
// scene_kd: two distillation systems on scenes of real Fashion-MNIST items (examples/common/scene_world.hpp)
//
//   world    outfit scenes (2-6 items, templates, a measured share of out-of-context items),
//            generated once into <world-dir> and reused (checksummed files)
//   context  scene-based KD: a context model names masked items (top-k per mask shape, in vs out
//            of context); its guesses become soft targets for an item recogniser, compared with
//            the same recogniser without them on clean, degraded and out-of-context items
//   wsd      multi-label KD from a weakly-supervised detector: a WSDDN teacher over sliding
//            windows (mAP, CorLoc), a plain CNN student alone, + stage 1, + stage 2, + both (mAP)
//   report   tables (mean ± std over seeds, paired differences), results.json, curves.csv,
//            topk.png, ap_per_class.png and pictures of scenes
//
//   scene_kd --preset smoke|cpu-small|full [--systems context wsd] [--seeds 3] [--out DIR] [--resume]

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

#include "../../common/image.hpp"  // first: it owns the stb_image_write implementation
#include "config.hpp"
#include "context_system.hpp"
#include "report.hpp"
#include "wsd_system.hpp"

namespace fs = std::filesystem;
using namespace skd;

namespace {

/// CPU time of this process, all threads (user + system), seconds.
double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  return in >> one ? one : std::string("?");
}

/// What decides a system's results (a checkpoint is reused only when this matches).
json fingerprint(const run_config& c, const char* system) {
  json j = {{"world", to_json(c.world)}};
  if (std::string(system) == "context") j["context"] = to_json(c.context);
  else j["wsd"] = to_json(c.wsd);
  return j;
}

void save_png(const examples::canvas& img, const fs::path& path) {
  std::string err;
  if (!examples::write_png(img, path, &err)) std::cerr << "  " << err << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Scene-based KD and multi-label KD from a weakly-supervised detector, on scenes of real Fashion-MNIST items"};
  run_config c;
  std::string preset = "cpu-small", out = "scene_kd_out", world_dir;
  bool resume = false;
  std::vector<std::string> systems = {"context", "wsd"};
  std::optional<int> seeds, threads, context_epochs, recogniser_epochs, teacher_epochs, student_epochs;
  std::optional<std::uint64_t> first_seed, world_seed;
  std::optional<double> kd_weight, kd_temperature, stage1_weight, stage2_temperature, ooc_rate, teacher_scale;
  app.add_option("--preset", preset, "smoke (about a minute, CI), cpu-small (each system within 20 minutes on 2 cores) or full")
      ->check(CLI::IsMember({"smoke", "cpu-small", "full"}));
  app.add_option("--systems", systems, "which systems to run: context, wsd (default both)")->check(CLI::IsMember({"context", "wsd"}));
  app.add_option("--seeds", seeds, "number of seeds (mean ± std over them)")->check(CLI::Range(1, 100));
  app.add_option("--first-seed", first_seed, "seed of the first run (the others follow)");
  app.add_option("--out", out, "output folder: results.json, curves.csv, *.png, checkpoints/");
  app.add_option("--world-dir", world_dir, "folder of the scene files (default <out>/world; reused across runs)");
  app.add_option("--data-dir", c.data_dir, "folder of the four Fashion-MNIST .gz files (Debian: /usr/share/datasets/fashion-mnist)");
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(1, 1024));
  app.add_flag("--resume", resume, "continue from the checkpoints in <out>/checkpoints (finished runs are not retrained)");
  app.add_option("--world-seed", world_seed, "seed of the scene world");
  app.add_option("--out-of-context-rate", ooc_rate, "share of scenes with an out-of-context slot")->check(CLI::Range(0.0, 1.0));
  app.add_option("--context-epochs", context_epochs, "epochs of the context model")->check(CLI::Range(1, 10000));
  app.add_option("--recogniser-epochs", recogniser_epochs, "epochs of the item recognisers")->check(CLI::Range(1, 10000));
  app.add_option("--teacher-epochs", teacher_epochs, "epochs of the WSDDN teacher")->check(CLI::Range(1, 10000));
  app.add_option("--student-epochs", student_epochs, "epochs of the multi-label students")->check(CLI::Range(1, 10000));
  app.add_option("--kd-weight", kd_weight, "weight w of the context teacher: (1 - w) CE + w T^2 KL")->check(CLI::Range(0.0, 1.0));
  app.add_option("--kd-temperature", kd_temperature, "temperature of the context teacher's soft targets")->check(CLI::PositiveNumber);
  app.add_option("--teacher-scale", teacher_scale, "scale of both WSDDN softmaxes' logits (Liu et al. start a learnable one at 2)")->check(CLI::PositiveNumber);
  app.add_option("--stage1-weight", stage1_weight, "weight of the RoI-feature regression (stage 1)")->check(CLI::NonNegativeNumber);
  app.add_option("--stage2-temperature", stage2_temperature, "temperature of the sigmoid soft targets (stage 2)")->check(CLI::PositiveNumber);
  c.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  CLI11_PARSE(app, argc, argv);

  try {
    apply_preset(c, preset);
    if (seeds) c.seeds = *seeds;
    if (first_seed) c.first_seed = *first_seed;
    if (threads) c.threads = *threads;
    if (world_seed) c.world.seed = *world_seed;
    if (ooc_rate) c.world.out_of_context_rate = *ooc_rate;
    if (context_epochs) c.context.context_opt.epochs = *context_epochs;
    if (recogniser_epochs) c.context.recogniser_opt.epochs = *recogniser_epochs;
    if (teacher_epochs) c.wsd.teacher_opt.epochs = *teacher_epochs;
    if (student_epochs) c.wsd.student_opt.epochs = *student_epochs;
    if (kd_weight) c.context.kd_weight = *kd_weight;
    if (kd_temperature) c.context.kd_temperature = *kd_temperature;
    if (stage1_weight) c.wsd.stage1_weight = *stage1_weight;
    if (teacher_scale) c.wsd.teacher_scale = *teacher_scale;
    if (stage2_temperature) c.wsd.stage2_temperature = *stage2_temperature;
    c.run_context = std::find(systems.begin(), systems.end(), "context") != systems.end();
    c.run_wsd = std::find(systems.begin(), systems.end(), "wsd") != systems.end();
    if (c.context.context_scenes + c.context.recogniser_scenes > c.world.train_scenes || c.wsd.train_scenes > c.world.train_scenes)
      throw std::invalid_argument("the systems use more train scenes than the world has");

    const distill::cpu ctx{c.threads};
    const fs::path o(out), ckpt = o / "checkpoints";
    fs::create_directories(ckpt);
    const std::string device = "CPU, " + std::to_string(c.threads) + " thread" + (c.threads > 1 ? "s" : "");
    std::cerr << "scene_kd: preset " << c.preset << ", " << c.seeds << " seed(s); " << device << "; load average " << load_average() << "\n";

    json results;
    const auto t_world = std::chrono::steady_clock::now();
    const world w = load_world(c.world, c.data_dir, world_dir.empty() ? o / "world" : fs::path(world_dir));
    const auto stats_train = examples::measure_world(w.train), stats_test = examples::measure_world(w.test);
    std::cout << "scene world: " << w.train.size() << " train / " << w.validation.size() << " validation / " << w.test.size() << " test scenes of " << w.side
              << " x " << w.side << "; " << stats_test.items << " test items (" << table::fixed(static_cast<double>(stats_test.items) / stats_test.scenes, 2)
              << " per scene), out of context: " << table::fixed(100 * stats_test.out_of_context_item_fraction(), 1) << "% of items, "
              << table::fixed(100 * stats_test.out_of_context_scene_fraction(), 1) << "% of scenes; mean box overlap "
              << table::fixed(100 * stats_test.mean_overlap, 1) << "% (" << table::fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_world).count(), 1)
              << " s)\n";
    {  // the sizes of the networks (learnt values; batch-norm statistics excluded)
      context_net a(1, w.side);
      item_recogniser r(1, w.side);
      wsddn_teacher t(1, lib::sliding_windows(c.wsd.proposal_sizes, c.wsd.proposal_ratios, c.wsd.proposal_stride, w.side), 1.0);
      multilabel_student s(1, wsddn_teacher::feature_width);
      results["parameters"] = {{"context_model", count_learnt(a.parameters())}, {"item_recogniser", count_learnt(r.parameters())},
                               {"wsddn_teacher", count_learnt(t.parameters())}, {"student", count_learnt(s.classifier_parameters())},
                               {"student_stage1_adapter", count_learnt(s.parameters()) - count_learnt(s.classifier_parameters())}};
      std::cout << "networks (learnt values): context model " << count_learnt(a.parameters()) << ", item recogniser " << count_learnt(r.parameters())
                << ", WSDDN teacher " << count_learnt(t.parameters()) << ", student " << count_learnt(s.classifier_parameters())
                << " (+ " << count_learnt(s.parameters()) - count_learnt(s.classifier_parameters()) << " in the stage-1 adapter)\n";
    }
    save_png(picture_world(w), o / "world.png");
    save_png(picture_degradations(w), o / "degradations.png");

    results["config"] = to_json(c);
    results["device"] = device;
    results["load_average_start"] = load_average();
    results["world"] = {{"train_items", stats_train.items}, {"test_items", stats_test.items},
                        {"test_out_of_context_item_fraction", stats_test.out_of_context_item_fraction()},
                        {"test_out_of_context_scene_fraction", stats_test.out_of_context_scene_fraction()},
                        {"train_out_of_context_item_fraction", stats_train.out_of_context_item_fraction()},
                        {"test_per_template", stats_test.per_template}, {"test_per_class", stats_test.per_class},
                        {"test_per_item_count", stats_test.per_item_count}, {"test_mean_box_overlap", stats_test.mean_overlap}};
    std::vector<context_seed_result> context_runs;
    std::vector<wsd_seed_result> wsd_runs;
    std::vector<const run_log*> logs;

    if (c.run_context) {
      const auto t0 = std::chrono::steady_clock::now();
      const double cpu0 = cpu_seconds();
      const json fp = fingerprint(c, "context");
      for (int k = 0; k < c.seeds; ++k) context_runs.push_back(run_context_seed(ctx, c, w, c.first_seed + static_cast<std::uint64_t>(k), ckpt, resume, fp));
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), cpu = cpu_seconds() - cpu0;
      const prior_baselines priors = context_priors(w, c.context, context_runs.front().test_examples);
      std::cout << "\nSystem A: scene-based KD, " << c.seeds << " seed(s), " << table::fixed(seconds / 60, 1) << " min wall, " << table::fixed(cpu / 60, 1)
                << " min CPU (" << device << ", load average now " << load_average() << ")\n\n"
                << "Context model: the class of a masked item from the rest of the scene (test scenes; mean ± std over seeds)\n"
                << context_topk_table(context_runs, priors) << context_gap_lines(context_runs) << "\n"
                << "Item recogniser with and without the context model as teacher (w = " << c.context.kd_weight << ", T = " << c.context.kd_temperature
                << "; the teacher's top-1 on the recogniser's training items: "
                << table::percent_cell(over_seeds(context_runs, [](const auto& x) { return x.teacher_train_top1; })) << "%)\n"
                << recogniser_table(context_runs) << std::flush;
      results["context_system"] = context_json(context_runs, priors);
      results["context_system"]["seconds"] = seconds;
      results["context_system"]["cpu_seconds"] = cpu;
      std::cerr << plot_topk(context_runs, priors, o / "topk.png").message << "\n";
      save_png(picture_context(w, context_runs.front()), o / "context_examples.png");
      for (const auto& r : context_runs) logs.insert(logs.end(), {&r.context_log, &r.plain.log, &r.distilled.log});
    }

    if (c.run_wsd) {
      const auto t0 = std::chrono::steady_clock::now();
      const double cpu0 = cpu_seconds();
      const json fp = fingerprint(c, "wsd");
      const auto proposals = lib::sliding_windows(c.wsd.proposal_sizes, c.wsd.proposal_ratios, c.wsd.proposal_stride, w.side);
      const double recall = proposal_recall(proposals, w.test);
      std::cerr << "  " << proposals.size() / 4 << " sliding-window proposals per scene; " << table::fixed(100 * recall, 1)
                << "% of the test items have one with IoU >= 0.5\n";
      for (int k = 0; k < c.seeds; ++k) wsd_runs.push_back(run_wsd_seed(ctx, c, w, proposals, c.first_seed + static_cast<std::uint64_t>(k), ckpt, resume, fp));
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), cpu = cpu_seconds() - cpu0;
      std::cout << "\nSystem B: multi-label KD from a weakly-supervised detector, " << c.seeds << " seed(s), " << table::fixed(seconds / 60, 1) << " min wall, "
                << table::fixed(cpu / 60, 1) << " min CPU (" << device << ", load average now " << load_average() << "); " << proposals.size() / 4 << " proposals per scene\n\n"
                << wsd_table(wsd_runs, recall) << std::flush;
      results["wsd_system"] = wsd_json(wsd_runs, recall, static_cast<index_t>(proposals.size() / 4));
      results["wsd_system"]["seconds"] = seconds;
      results["wsd_system"]["cpu_seconds"] = cpu;
      std::cerr << plot_ap_per_class(wsd_runs, o / "ap_per_class.png").message << "\n";
      save_png(picture_wsd(w, wsd_runs.front()), o / "wsd_examples.png");
      for (const auto& r : wsd_runs) {
        logs.insert(logs.end(), {&r.teacher_log, &r.stage1_log});
        for (const auto& s : r.students) logs.push_back(&s.log);
      }
    }
    results["load_average_end"] = load_average();
    examples::write_text_file(o / "results.json", results.dump(2) + "\n");
    write_curves(o / "curves.csv", logs);
    std::cerr << "wrote " << (o / "results.json").string() << ", curves.csv and the pictures in " << o.string() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "scene_kd: " << e.what() << "\n";
    return 1;
  }
}
