// SPDX-License-Identifier: MIT
// fashion_kd: knowledge distillation on Fashion-MNIST, every method side by side.
//
//   data     Debian's dataset-fashion-mnist (examples/common/fashion_mnist.hpp): a stratified
//            train/validation split of the 60 000 training images, the 10 000 test images
//   teacher  a CNN with batch norm, trained once and checkpointed (reused by every seed)
//   methods  CE, Hinton KD, DKD, AT, AT + KD, statistics L2, AdaIN-KD, FFSD, MLP CE / KD,
//            all methods of a seed on the same batches from the same initialisation
//   report   the table (mean ± std over seeds), paired differences, results.json, curves.csv,
//            curves.png, confusion matrices and misclassified test images (PNG)
//
//   fashion_kd --preset smoke|cpu-small|full [--methods ...] [--seeds 3] [--out DIR] [overrides]
//   mpirun -np P fashion_kd ... --threads 1     data-parallel over P processes (built with MPI):
//            the same models as one process with the same (global) batch, up to float rounding

#include <CLI/CLI.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../../common/image.hpp"  // first: it owns the stb_image_write implementation
#include "config.hpp"
#include "ffsd.hpp"
#include "learner.hpp"
#include "report.hpp"
#include "trainer.hpp"

namespace fs = std::filesystem;
using namespace fkd;

namespace {

/// CPU seconds (user + system) this process has used: on a shared machine, the measure of the
/// work done that the other processes do not inflate (wall time on 2 dedicated cores ~ CPU / 2).
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}
/// The 1-minute load average ("" where /proc is missing).
std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string v;
  f >> v;
  return v;
}

/// What must match for a student checkpoint to be resumed: everything but the list of seeds
/// and methods and the thread count.
nlohmann::json student_fingerprint(const run_config& c, std::uint64_t seed) {
  nlohmann::json j = nlohmann::json::parse(to_json(c).dump());
  for (const char* k : {"seeds", "methods", "threads", "first_seed"}) j.erase(k);
  j["seed"] = seed;
  j["teacher"] = nlohmann::json::parse(teacher_json(c).dump());
  return j;
}

data_sets load_data(const run_config& c) {
  data_sets s;
  examples::fashion_mnist_counts expect;
  distill::throw_if_error(examples::load_fashion_mnist(c.data_dir, s.d, expect));
  const auto split = examples::split_train_validation(s.d.train, static_cast<std::size_t>(c.validation_per_class), c.split_seed);
  s.validation = split.validation;
  s.teacher_train = c.teacher_train_per_class > 0 ? examples::take_per_class(s.d.train, split.train, static_cast<std::size_t>(c.teacher_train_per_class))
                                                  : split.train;
  s.student_train = c.student_train_per_class > 0 ? examples::take_per_class(s.d.train, split.train, static_cast<std::size_t>(c.student_train_per_class))
                                                  : split.train;
  s.test = examples::all_ids(s.d.test.size());
  if (c.eval_images > 0) {
    const auto per_class = static_cast<std::size_t>(std::max(1, c.eval_images / examples::fashion_classes));
    s.validation = examples::take_per_class(s.d.train, s.validation, per_class);
    s.test = examples::take_per_class(s.d.test, s.test, per_class);
  }
  s.norm = examples::pixel_statistics(s.d.train, split.train);
  return s;
}

std::unique_ptr<learner> make_learner(const std::string& method, const run_config& c, std::uint64_t seed, index_t total_steps, staged_net* teacher) {
  if (method == "ffsd") return std::make_unique<ffsd_learner>(c, seed, total_steps);
  return std::make_unique<student_learner>(method, c, seed, total_steps, teacher);
}

/// The row keys a method's evaluated networks report into.
std::string row_of(const std::string& evaluated) {
  return evaluated.rfind("ffsd_student", 0) == 0 ? "ffsd_students" : evaluated;
}
std::string row_title(const std::string& key) {
  if (key == "ffsd_leader") return "FFSD leader";
  if (key == "ffsd_students") return "FFSD common students (mean)";
  if (key == "teacher") return "teacher";
  return method_title(key);
}

/// Folds a member's curve (per evaluated network) into per-row points: FFSD's common students
/// become their mean.
std::vector<curve_point> row_curve(const member& m) {
  std::map<std::pair<std::string, int>, std::pair<curve_point, int>> acc;
  std::vector<std::pair<std::string, int>> order;
  for (const auto& p : m.curve) {
    const auto key = std::make_pair(row_of(p.row), p.epoch);
    auto [it, fresh] = acc.try_emplace(key, curve_point{key.first, p.seed, p.epoch, 0, 0, p.train_seconds}, 0);
    if (fresh) order.push_back(key);
    it->second.first.val += p.val, it->second.first.test += p.test, it->second.second += 1;
  }
  std::vector<curve_point> out;
  for (const auto& k : order) {
    auto [p, n] = acc[k];
    p.val /= n, p.test /= n;
    out.push_back(p);
  }
  return out;
}

int run(int argc, char** argv, const examples::replicas& world);

}  // namespace

int main(int argc, char** argv) {
  return examples::run_replicated("fashion_kd", argc, argv, [&](const examples::replicas& world) { return run(argc, argv, world); });
}

namespace {

int run(int argc, char** argv, const examples::replicas& world) {
  CLI::App app{"Knowledge distillation on Fashion-MNIST: Hinton KD, DKD, attention transfer, AdaIN-KD and FFSD side by side"};
  run_config c;
  std::string preset = "cpu-small", out = "fashion_out";
  bool resume = false, retrain_teacher = false;
  app.add_option("--preset", preset, "smoke (seconds, CI), cpu-small (2 CPU cores, ~30 min) or full")
      ->check(CLI::IsMember({"smoke", "cpu-small", "full"}))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::optional<std::vector<std::string>> methods;
  app.add_option("--methods", methods, "methods to run (default all): ce kd dkd at at_kd stats adain ffsd mlp_ce mlp_kd");
  std::optional<int> seeds, threads, epochs, teacher_epochs, batch, student_per_class, teacher_per_class, eval_images, augment_pad;
  std::optional<std::uint64_t> first_seed;
  std::optional<double> lr, kd_t, kd_alpha, dkd_beta, dkd_t, dkd_warmup, at_beta, stats_w, adain_w;
  std::optional<std::vector<int>> student_channels, teacher_channels, student_head, teacher_head, mlp_hidden;
  bool augment_flip = false;
  app.add_option("--seeds", seeds, "number of seeds (mean ± std over them)")->check(CLI::Range(1, 100));
  app.add_option("--first-seed", first_seed, "seed of the first run (the others follow); also the teacher's seed");
  app.add_option("--out", out, "output folder: results.json, curves.csv, *.png, checkpoints/")->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--data-dir", c.data_dir, "folder of the four Fashion-MNIST .gz files (Debian: /usr/share/datasets/fashion-mnist)");
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(1, 1024));
  app.add_flag("--resume", resume, "continue from the checkpoints in <out>/checkpoints (finished runs are not retrained)");
  app.add_flag("--retrain-teacher", retrain_teacher, "train the teacher again even when <out>/teacher.ckpt matches");
  app.add_option("--epochs", epochs, "student epochs")->check(CLI::Range(1, 10000));
  app.add_option("--teacher-epochs", teacher_epochs, "teacher epochs")->check(CLI::Range(1, 10000));
  app.add_option("--batch,--global-batch", batch, "student batch size (data-parallel: the global batch, split over the ranks)")->check(CLI::Range(2, 65536));
  app.add_option("--lr", lr, "student peak learning rate (SGD, Nesterov, cosine)")->check(CLI::PositiveNumber);
  app.add_option("--student-train-per-class", student_per_class, "students' training images per class (0: all 5 500)")->check(CLI::Range(0, 6000));
  app.add_option("--teacher-train-per-class", teacher_per_class, "teacher's training images per class (0: all 5 500)")->check(CLI::Range(0, 6000));
  app.add_option("--eval-images", eval_images, "validation and test images used (0: all)")->check(CLI::Range(0, 100000));
  app.add_option("--student-channels", student_channels, "student CNN stages, e.g. 8 16");
  app.add_option("--student-head", student_head, "student hidden widths of the head, e.g. 64");
  app.add_option("--teacher-channels", teacher_channels, "teacher CNN stages, e.g. 32 64 64");
  app.add_option("--teacher-head", teacher_head, "teacher hidden widths of the head, e.g. 256");
  app.add_option("--mlp-hidden", mlp_hidden, "MLP student hidden widths, e.g. 96");
  app.add_option("--augment-pad", augment_pad, "students: random crop from images zero-padded by this many pixels")->check(CLI::Range(0, 8));
  app.add_flag("--augment-flip", augment_flip, "students: random horizontal flips");
  app.add_option("--kd-temperature", kd_t, "Hinton KD temperature")->check(CLI::PositiveNumber);
  app.add_option("--kd-alpha", kd_alpha, "Hinton KD weight of the soft term (1 - alpha on CE)")->check(CLI::Range(0.0, 1.0));
  app.add_option("--dkd-beta", dkd_beta, "DKD weight of NCKD")->check(CLI::NonNegativeNumber);
  app.add_option("--dkd-temperature", dkd_t, "DKD temperature")->check(CLI::PositiveNumber);
  app.add_option("--dkd-warmup", dkd_warmup, "DKD warm-up in epochs (weight min(epochs done / warm-up, 1))")->check(CLI::NonNegativeNumber);
  app.add_option("--at-beta", at_beta, "attention transfer beta (beta/2 per stage pair)")->check(CLI::NonNegativeNumber);
  app.add_option("--stats-weight", stats_w, "weight of the statistics L2 loss")->check(CLI::NonNegativeNumber);
  app.add_option("--adain-weight", adain_w, "weight of the AdaIN-KD loss")->check(CLI::NonNegativeNumber);
  c.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(world.size)));
  CLI11_PARSE(app, argc, argv);

  try {
    apply_preset(c, preset);
    if (methods) c.methods = *methods;
    for (const auto& m : c.methods) (void)method_title(m);  // unknown names fail here
    if (seeds) c.seeds = *seeds;
    if (first_seed) c.first_seed = *first_seed;
    if (threads) c.threads = *threads;
    if (epochs) c.student_opt.epochs = *epochs;
    if (teacher_epochs) c.teacher_opt.epochs = *teacher_epochs;
    if (batch) c.student_opt.batch = *batch;
    if (lr) c.student_opt.lr = *lr;
    if (student_per_class) c.student_train_per_class = *student_per_class;
    if (teacher_per_class) c.teacher_train_per_class = *teacher_per_class;
    if (eval_images) c.eval_images = *eval_images;
    if (student_channels) c.student.channels = *student_channels;
    if (student_head) c.student.head = *student_head;
    if (teacher_channels) c.teacher.channels = *teacher_channels;
    if (teacher_head) c.teacher.head = *teacher_head;
    if (mlp_hidden) c.mlp.head = *mlp_hidden;
    if (augment_pad) c.student_augment_pad = *augment_pad;
    if (augment_flip) c.student_augment_flip = true;
    if (kd_t) c.loss.kd_temperature = *kd_t;
    if (kd_alpha) c.loss.kd_alpha = *kd_alpha;
    if (dkd_beta) c.loss.dkd_beta = *dkd_beta;
    if (dkd_t) c.loss.dkd_temperature = *dkd_t;
    if (dkd_warmup) c.loss.dkd_warmup_epochs = *dkd_warmup;
    if (at_beta) c.loss.at_beta = *at_beta;
    if (stats_w) c.loss.stats_weight = *stats_w;
    if (adain_w) c.loss.adain_weight = *adain_w;
    if (world.data_parallel() && std::count(c.methods.begin(), c.methods.end(), "ffsd"))
      throw std::invalid_argument("ffsd does not train data-parallel yet: leave it out of --methods under mpirun, or run one process");
    const distill::cpu ctx{c.threads};
    const auto wall0 = std::chrono::steady_clock::now();
    const std::string load0 = load_average();
    std::string device = "CPU, " + std::to_string(c.threads) + " thread" + (c.threads > 1 ? "s" : "");
    if (world.data_parallel()) device += " x " + std::to_string(world.size) + " MPI ranks";
    if (!world.root()) std::cerr.setstate(std::ios::failbit);  // rank 0 speaks for the job
    fs::create_directories(fs::path(out) / "checkpoints");
    std::cerr << "fashion_kd: preset " << c.preset << ", " << c.seeds << " seed(s), methods:";
    for (const auto& m : c.methods) std::cerr << " " << m;
    std::cerr << "; " << device << "\n";

    const data_sets data = load_data(c);
    std::cerr << "  data: " << data.teacher_train.size() << " teacher / " << data.student_train.size() << " student training images, "
              << data.validation.size() << " validation, " << data.test.size() << " test (pixel mean " << data.norm.mean << ", std "
              << data.norm.stddev << ")\n";

    // ---- the teacher: trained once, reused by every seed --------------------------------------
    const bool any_teacher = std::any_of(c.methods.begin(), c.methods.end(), method_uses_teacher);
    std::vector<member> teacher_run(1);
    row_result teacher_row{"teacher", "teacher", 0, {}};
    staged_net* teacher = nullptr;
    if (any_teacher) {
      member& t = teacher_run[0];
      t.key = "teacher";
      t.checkpoint = (fs::path(out) / "teacher.ckpt").string();
      run_config tc = c;
      tc.student = c.teacher, tc.student_opt = c.teacher_opt;
      const index_t steps = static_cast<index_t>(data.teacher_train.size() / static_cast<std::size_t>(c.teacher_opt.batch)) * c.teacher_opt.epochs;
      auto tl = std::make_unique<student_learner>("ce", tc, c.first_seed, steps, nullptr, "teacher");
      teacher = &tl->net();
      t.model = std::move(tl);
      train_plan plan{data.teacher_train, {c.teacher_augment_pad, c.teacher_augment_flip}, c.teacher_opt.batch, c.teacher_opt.epochs, c.first_seed,
                      "teacher", nlohmann::json::parse(teacher_json(c).dump())};
      if (!retrain_teacher) try_resume(t, plan);
      if (t.start_epoch < plan.epochs && t.start_epoch > 0 && !resume) {
        std::cerr << "  the teacher checkpoint is unfinished (epoch " << t.start_epoch << "); pass --resume to continue it, training anew\n";
        t.model = std::make_unique<student_learner>("ce", tc, c.first_seed, steps, nullptr, "teacher");
        teacher = &static_cast<student_learner*>(t.model.get())->net();
        t.start_epoch = 0, t.seconds = 0, t.curve.clear();
      }
      if (t.start_epoch >= plan.epochs) std::cerr << "  teacher: reusing " << t.checkpoint << "\n";
      train_members(ctx, world, teacher_run, plan, nullptr, data);
      teacher->set_training(false);
      nn::set_trainable(teacher->parameters(), false);
      seed_run r{c.first_seed, t.curve.back().val, t.curve.back().test, t.seconds, c.teacher_opt.epochs,
                 static_cast<std::int64_t>(data.teacher_train.size() / static_cast<std::size_t>(c.teacher_opt.batch)) * c.teacher_opt.batch};
      teacher_row.parameters = count_learnt(teacher->parameters());
      teacher_row.runs.push_back(r);
      std::cerr << "  teacher: " << thousands(teacher_row.parameters) << " parameters, validation " << examples::table::fixed(100 * r.val, 2)
                << "%, test " << examples::table::fixed(100 * r.test, 2) << "%\n";
    }

    // ---- the students, seed by seed -----------------------------------------------------------
    std::vector<row_result> rows;
    std::vector<curve_point> curves = teacher_run[0].curve;
    std::map<std::string, std::vector<std::int32_t>> first_seed_predictions;  // row -> test predictions
    auto row_ref = [&](const std::string& key) -> row_result& {
      for (auto& r : rows)
        if (r.key == key) return r;
      rows.push_back({key, row_title(key), 0, {}});
      return rows.back();
    };
    const index_t steps_per_epoch = static_cast<index_t>(data.student_train.size() / static_cast<std::size_t>(c.student_opt.batch));
    for (int k = 0; k < c.seeds; ++k) {
      const std::uint64_t seed = c.first_seed + static_cast<std::uint64_t>(k);
      std::vector<member> members;
      for (const auto& m : c.methods) {
        member mb;
        mb.key = m;
        mb.model = make_learner(m, c, seed, steps_per_epoch * c.student_opt.epochs, teacher);
        mb.uses_teacher = method_uses_teacher(m);
        mb.checkpoint = (fs::path(out) / "checkpoints" / (m + "-seed" + std::to_string(seed) + ".ckpt")).string();
        members.push_back(std::move(mb));
      }
      train_plan plan{data.student_train, {c.student_augment_pad, c.student_augment_flip}, c.student_opt.batch, c.student_opt.epochs, seed,
                      "seed " + std::to_string(seed), student_fingerprint(c, seed)};
      if (resume)
        for (auto& m : members) try_resume(m, plan);
      train_members(ctx, world, members, plan, teacher, data);
      for (auto& m : members) {
        const auto points = row_curve(m);
        curves.insert(curves.end(), points.begin(), points.end());
        for (const auto& e : m.model->evaluated()) {
          row_result& r = row_ref(row_of(e.name));
          r.parameters = count_learnt(e.net->parameters());
          if (k == 0 && world.root() && !first_seed_predictions.count(r.key)) first_seed_predictions[r.key] = predict(ctx, *e.net, data.d.test, data.test, data.norm);
        }
        for (const auto& p : points)
          if (p.epoch == c.student_opt.epochs)
            row_ref(p.row).runs.push_back({seed, p.val, p.test, m.seconds, c.student_opt.epochs, steps_per_epoch * c.student_opt.batch});
      }
    }

    // ---- report (rank 0) ------------------------------------------------------------------------
    if (!world.root()) return 0;
    std::vector<row_result> table_rows;
    if (!teacher_row.runs.empty()) table_rows.push_back(teacher_row);
    table_rows.insert(table_rows.end(), rows.begin(), rows.end());
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count(), cpu = cpu_seconds();
    const std::string run_line = "whole run: " + examples::table::fixed(wall / 60, 1) + " min wall, " + examples::table::fixed(cpu / 60, 1) +
                                 " min CPU (user + system); load average " + load0 + " at the start, " + load_average() + " at the end";
    std::cout << "\n" << format_table(table_rows, device) << "\n" << format_comparisons(rows) << run_line << "\n" << std::flush;
    const fs::path o(out);
    auto config_json = nlohmann::ordered_json::parse(to_json(c).dump());
    config_json["run"] = {{"wall_seconds", wall}, {"cpu_seconds", cpu}, {"load_average_start", load0}, {"load_average_end", load_average()}};
    write_results_json(o / "results.json", config_json, device, teacher_row, rows);
    write_curves_csv(o / "curves.csv", curves);
    const auto plot = plot_curves(curves, table_rows, o / "curves.png");
    std::cerr << plot.message << "\n";
    // pictures: the teacher and the student row with the best mean validation accuracy
    const row_result* best = nullptr;
    for (const auto& r : rows)
      if (!best || summarize_runs(r, [](const seed_run& s) { return s.val; }).mean > summarize_runs(*best, [](const seed_run& s) { return s.val; }).mean)
        best = &r;
    std::vector<std::uint8_t> truth;
    for (auto i : data.test) truth.push_back(data.d.test.labels[i]);
    std::vector<std::int32_t> teacher_pred;
    if (teacher) {
      teacher_pred = predict(ctx, *teacher, data.d.test, data.test, data.norm);
      examples::write_png(render_confusion(confusion_of(truth, teacher_pred), "Teacher: confusion matrix on the test set"), o / "confusion_teacher.png");
    }
    if (best) {
      const auto& pred = first_seed_predictions.at(best->key);
      examples::write_png(render_confusion(confusion_of(truth, pred), best->title + " (best validation accuracy), seed " + std::to_string(c.first_seed)),
                          o / "confusion_student.png");
      std::vector<error_panel> panels;
      for (std::size_t i = 0; i < data.test.size() && panels.size() < 24; ++i)
        if (pred[i] != truth[i])
          panels.push_back({data.d.test.image(data.test[i]), truth[i], pred[i], teacher_pred.empty() ? -1 : teacher_pred[i]});
      if (teacher_pred.empty())
        for (auto& p : panels) p.teacher = p.truth;  // no teacher in this run
      examples::write_png(render_errors(panels, best->title + ", seed " + std::to_string(c.first_seed) + ": misclassified test images, with the teacher's answers", 6),
                          o / "errors.png");
    }
    std::cerr << "wrote " << (o / "results.json").string() << ", curves.csv, curves.png, confusion_teacher.png, confusion_student.png, errors.png\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr.clear();
    std::cerr << "fashion_kd" << (world.data_parallel() ? " (rank " + std::to_string(world.rank) + ")" : std::string()) << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace
