// SPDX-License-Identifier: MIT
// distillvlm: DistillVLM (Fang et al. 2021, "Compressing Visual-Linguistic Model via Knowledge
// Distillation") on visual questions about scenes of real Fashion-MNIST items
// (examples/common/scene_world.hpp, scene_questions.hpp): the paper's ablation at equal budget
// over student seeds, and a queue-size sweep of its token-wise NCE (README.md: results).
//
//   world     scenes and template questions (19 answers), generated once into <world-dir>
//   regions   the first K proposals of one class-agnostic region proposal network trained on the
//             train scenes' boxes (examples/common/region_proposals.hpp; cached in <world-dir>),
//             or with --regions oracle the true item boxes; the same regions for teacher and
//             student, so their region tokens line up
//   teacher   a larger VQA transformer (CNN + RoI Align region tokens, question words, [CLS]),
//             trained once (first seed); a second one on its own detector's regions; each
//             teacher's outputs on the train questions computed once for all its students
//   students  a smaller one per method and seed (the ablation): alone (CE), kd, attention, nce,
//             all, all_own_regions (the teacher on its own regions, tokens aligned by best IoU);
//             and the queue-size sweep of the nce method (rows nce_q<N>)
//   pretrain  with --pretrain-epochs N, each model first learns masked region classification
//             (src/pretraining.hpp; with --pretrain-distill the distilled students from the
//             pre-trained teacher), then is fine-tuned on the questions from those weights
//   report    mean +- std over seeds of accuracy per question family on validation and test,
//             parameters, inference time; results.json, results.md, curves.csv, curves.png,
//             attention.png (figures.hpp)
//
//   distillvlm --preset smoke|cpu-small|full [--methods a,b] [--queue-sweep 0,256] [--pretrain-epochs N] [--seeds 3] [--out DIR] [--resume]

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config.hpp"
#include "figures.hpp"
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
  for (std::size_t i = name.size(); i < 30; ++i) std::cout << ' ';
  std::cout << percent(val.overall()) << "\t" << percent(test.overall());
  for (int f = 0; f < ex::question_family_count; ++f) std::cout << "\t" << percent(test.family(f));
  std::cout << "\t" << extra << "\n";
}

/// "0,256,1024" -> {0, 256, 1024}; "none" or "" -> {}.
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  if (s == "none") return out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t end = std::min(s.find(',', start), s.size());
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

/// One row of the ablation table: the runs (one per seed) it summarises.
struct table_row {
  std::string name, model;  ///< row name; "teacher" or "student"
  std::vector<const model_result*> runs;
};

json row_summary(const table_row& r) {
  auto stat = [&](auto&& get) {
    std::vector<double> v;
    for (const auto* m : r.runs) v.push_back(get(*m));
    return ex::summarize(v);
  };
  auto split_json = [&](bool test) {
    json per = json::object();
    for (int f = 0; f < ex::question_family_count; ++f)
      per[std::string(ex::question_family_names[static_cast<std::size_t>(f)])] =
          ex::to_json(stat([&](const model_result& m) { return (test ? m.test : m.validation).family(f); }));
    return json{{"accuracy", ex::to_json(stat([&](const model_result& m) { return (test ? m.test : m.validation).overall(); }))}, {"per_family", per}};
  };
  return {{"row", r.name},
          {"model", r.model},
          {"runs", r.runs.size()},
          {"parameters", r.runs.empty() ? 0 : r.runs.front()->parameters},
          {"validation", split_json(false)},
          {"test", split_json(true)},
          {"ms_per_question", ex::to_json(stat([](const model_result& m) { return m.ms_per_question; }))},
          {"train_seconds", ex::to_json(stat([](const model_result& m) { return m.log.seconds; }))}};
}

/// The markdown table of the summary rows (accuracy in %, mean ± std over the runs).
std::string markdown_table(const json& summary) {
  auto cell = [](const json& j) {
    ex::mean_std m;
    m.n = j.at("n").get<std::size_t>();
    if (!j.at("mean").is_null()) m.mean = j.at("mean").get<double>();
    if (!j.at("std").is_null()) m.stddev = j.at("std").get<double>();
    return ex::table::percent_cell(m);
  };
  std::string t = "| row | runs | validation | test";
  for (const auto& f : ex::question_family_names) t += " | " + std::string(f);
  t += " | parameters | ms / question |\n|---|---|---|---";
  for (int f = 0; f < ex::question_family_count; ++f) t += "|---";
  t += "|---|---|\n";
  for (const auto& r : summary) {
    t += "| " + r.at("row").get<std::string>() + " | " + std::to_string(r.at("runs").get<int>()) + " | " + cell(r.at("validation").at("accuracy")) +
         " | " + cell(r.at("test").at("accuracy"));
    for (const auto& f : ex::question_family_names) t += " | " + cell(r.at("test").at("per_family").at(std::string(f)));
    const json& ms = r.at("ms_per_question");
    t += " | " + std::to_string(r.at("parameters").get<std::int64_t>()) + " | " + (ms.at("mean").is_null() ? std::string("n/a") : ex::table::fixed(ms.at("mean").get<double>(), 3)) +
         " |\n";
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"DistillVLM on visual questions about scenes of real Fashion-MNIST items: the ablation"};
  run_config c;
  std::string preset = "cpu-small", out = "distillvlm_out", world_dir, regions = "proposals";
  bool resume = false;
  std::optional<int> seeds, threads, teacher_epochs, student_epochs, nce_queue;
  std::optional<std::uint64_t> first_seed;
  std::optional<std::uint32_t> train_scenes;
  std::optional<int> max_regions;
  std::optional<double> kd_weight, kd_temperature, attention_weight, nce_weight;
  std::optional<std::string> methods, queue_sweep;
  std::optional<int> pretrain_epochs;
  std::optional<bool> pretrain_distill;
  app.add_option("--preset", preset, "smoke (under 30 s, CI), cpu-small, or full (teacher width 256, student 128)")->check(CLI::IsMember({"smoke", "cpu-small", "full"}));
  app.add_option("--regions", regions, "region source: proposals (one class-agnostic RPN's, read by teacher and student) or oracle (the true item boxes)")
      ->check(CLI::IsMember({"proposals", "oracle"}));
  app.add_option("--methods", methods, "rows of the ablation, comma-separated: alone, kd, attention, nce, all, all_own_regions (default: all six)");
  app.add_option("--queue-sweep", queue_sweep, "queue sizes at which the nce method is trained (rows nce_q<N>; 0: in-batch negatives), or none");
  app.add_option("--seeds", seeds, "number of student seeds (the teachers use the first)")->check(CLI::Range(1, 100));
  app.add_option("--first-seed", first_seed, "seed of the first run (the others follow)");
  app.add_option("--out", out, "output folder: results.json, results.md, curves.csv, checkpoints/");
  app.add_option("--world-dir", world_dir, "folder of the scene and question files (default <out>/world; reused across runs)");
  app.add_option("--data-dir", c.data_dir, "folder of the four Fashion-MNIST .gz files (Debian: /usr/share/datasets/fashion-mnist)");
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(1, 1024));
  app.add_flag("--resume", resume, "continue from the checkpoints in <out>/checkpoints (finished runs are not retrained)");
  app.add_option("--max-regions", max_regions, "K: region tokens per scene (proposals: the first K; oracle: at most K true boxes)")->check(CLI::Range(1, 20));
  app.add_option("--train-scenes", train_scenes, "train scenes (each with its questions)")->check(CLI::Range(1, 1000000));
  app.add_option("--teacher-epochs", teacher_epochs, "epochs of each teacher")->check(CLI::Range(1, 10000));
  app.add_option("--student-epochs", student_epochs, "epochs of each student")->check(CLI::Range(1, 10000));
  app.add_option("--kd-weight", kd_weight, "weight of the logit KD term w T^2 KL(p_t || p_s) where a method turns it on")->check(CLI::PositiveNumber);
  app.add_option("--kd-temperature", kd_temperature, "temperature of the logit KD term")->check(CLI::PositiveNumber);
  app.add_option("--attention-weight", attention_weight, "weight of the last-layer attention-map MSE where a method turns it on")->check(CLI::PositiveNumber);
  app.add_option("--nce-weight", nce_weight, "weight of the token-wise NCE where a method turns it on")->check(CLI::PositiveNumber);
  app.add_option("--nce-queue", nce_queue, "teacher keys in the NCE queue of the methods (0: no queue, in-batch negatives)")->check(CLI::Range(0, 1 << 20));
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
    c.rpn.threads = c.teacher_rpn.threads = c.threads;
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
    if (nce_queue) c.kd.nce_queue = *nce_queue;
    if (methods) {
      c.methods = split_list(*methods);
      if (c.methods.empty()) throw std::invalid_argument("--methods: name at least one method");
    }
    for (const auto& m : c.methods) find_method(m);  // throws on an unknown name
    if (c.regions == region_source::oracle) {  // the true boxes are the same for any detector
      const auto own = std::find(c.methods.begin(), c.methods.end(), "all_own_regions");
      if (own != c.methods.end()) {
        if (methods) throw std::invalid_argument("--methods: all_own_regions needs --regions proposals (the true boxes are every detector's)");
        c.methods.erase(own);
      }
    }
    if (queue_sweep) {
      c.queue_sweep.clear();
      for (const auto& q : split_list(*queue_sweep)) {
        std::size_t used = 0;
        int n = -1;
        try {
          n = std::stoi(q, &used);
        } catch (const std::exception&) {
        }
        if (used != q.size() || n < 0) throw std::invalid_argument("--queue-sweep: '" + q + "' is not a queue size (an integer >= 0)");
        c.queue_sweep.push_back(n);
      }
    }
    if (pretrain_epochs) c.pretrain.epochs = *pretrain_epochs;
    if (pretrain_distill) c.pretrain.distill = *pretrain_distill;
    if (c.teacher.heads % c.student.heads != 0) throw std::invalid_argument("the teacher's heads must be a multiple of the student's (group_mean head mapping)");

    const distill::cpu ctx{c.threads};
    const fs::path o(out), ckpt = o / "checkpoints";
    fs::create_directories(ckpt);
    const std::string device = "CPU, " + std::to_string(c.threads) + " thread" + (c.threads > 1 ? "s" : "");
    std::cerr << "distillvlm: preset " << c.preset << ", " << c.seeds << " student seed(s); " << device << "; load average " << load_average() << "\n";
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
    const bool own_regions = std::find(c.methods.begin(), c.methods.end(), "all_own_regions") != c.methods.end();
    json fp_own_world;
    if (c.regions == region_source::proposals) {
      auto attach = [&](const ex::region_proposal_config& rc, ex::proposal_set split_data::*target, const char* what) {
        const proposal_summary ps = attach_proposals(w, rc, c.max_regions, wdir, target);
        std::cout << "regions (" << what << "): the first K = " << c.max_regions << " proposals of a class-agnostic RPN (key " << hex16(ps.key) << ", "
                  << (ps.trained ? "trained in " + ex::table::fixed(ps.train_seconds, 1) + " s" : std::string("cached")) << "); recall@" << c.max_regions
                  << " of the validation items: " << ex::table::fixed(ps.recall50, 3) << " at IoU 0.5, " << ex::table::fixed(ps.recall70, 3)
                  << " at IoU 0.7 (all " << rc.max_proposals << " kept proposals: " << ex::table::fixed(ps.recall50_all, 3) << " / "
                  << ex::table::fixed(ps.recall70_all, 3) << ")\n";
        return std::pair{hex16(ps.key), json{{"key", hex16(ps.key)}, {"trained_in_this_run", ps.trained}, {"train_seconds", ps.train_seconds},
                                              {"validation_recall_at_K", {{"K", c.max_regions}, {"iou_0.5", ps.recall50}, {"iou_0.7", ps.recall70}}},
                                              {"validation_recall_all_kept", {{"kept", rc.max_proposals}, {"iou_0.5", ps.recall50_all}, {"iou_0.7", ps.recall70_all}}}}};
      };
      const auto [key, shared] = attach(c.rpn, &split_data::proposals, "teacher and students");
      fp_world["proposal_key"] = key;
      results["proposals"] = shared;
      if (own_regions) {
        auto [own_key, own] = attach(c.teacher_rpn, &split_data::own_proposals, "the teacher's own detector");
        fp_own_world = fp_world;  // the own teacher reads only its own detector's regions
        fp_own_world.erase("proposal_key");
        fp_own_world["teacher_own_proposal_key"] = own_key;
        const alignment_stats al = region_alignment(w.train, c.max_regions);
        std::cout << "alignment of the student's region tokens to the teacher's own (train scenes, best IoU): " << ex::table::fixed(al.matched, 3)
                  << " overlap a teacher region (the rest are masked), " << ex::table::fixed(al.matched50, 3) << " at IoU >= 0.5, mean best IoU "
                  << ex::table::fixed(al.mean_best_iou, 3) << "\n";
        own["train_alignment"] = {{"matched", al.matched}, {"matched_iou_0.5", al.matched50}, {"mean_best_iou", al.mean_best_iou}};
        results["teacher_own_proposals"] = own;
      }
    } else {
      std::cout << "regions: oracle, the true item boxes (at most K = " << c.max_regions << ")\n";
    }
    const accuracy prior_val = prior_accuracy(w.train, w.validation), prior_test = prior_accuracy(w.train, w.test);
    results["answer_prior"] = {{"validation", accuracy_json(prior_val)}, {"test", accuracy_json(prior_test)}};
    json pretraining = json::array();
    std::vector<run_log> logs;
    std::cout << "\nAccuracy (%): validation, test, and test per family (";
    for (int f = 0; f < ex::question_family_count; ++f) std::cout << (f ? ", " : "") << ex::question_family_names[static_cast<std::size_t>(f)];
    std::cout << ")\n";
    print_row("answer prior", prior_val, prior_test, "(most common train answer of the family)");

    std::map<std::string, model_result> done;  // by run name and seed: each run once
    json runs = json::array();
    auto report = [&](const model_result& r, const std::string& row, std::uint64_t seed, const json& extra) {
      print_row(row + " s" + std::to_string(seed), r.validation, r.test,
                std::to_string(r.parameters) + " parameters, " + ex::table::fixed(r.log.seconds, 1) + " s training, " +
                    ex::table::fixed(r.ms_per_question, 3) + " ms/question");
      json j = {{"run", r.name}, {"row", row}, {"seed", seed}};
      j.update(extra);
      j.update(json{{"parameters", r.parameters}, {"train_seconds", r.log.seconds}, {"ms_per_question", r.ms_per_question},
                    {"validation", accuracy_json(r.validation)}, {"test", accuracy_json(r.test)}});
      runs.push_back(j);
      logs.push_back(r.log);
    };

    // The teachers: trained once, with the first seed; every student seed learns from them.
    const std::uint64_t teacher_seed = c.first_seed;
    auto teacher_fp = [&](const json& fp_regions) {
      json fp = fp_regions;
      fp["teacher"] = to_json(c.teacher), fp["optimiser"] = to_json(c.teacher_opt), fp["seed"] = teacher_seed;
      return fp;
    };
    json fp_teacher = teacher_fp(fp_world), fp_own_teacher;
    vqa_transformer teacher("teacher", c.teacher, teacher_seed);
    std::optional<vqa_transformer> own_teacher;
    if (own_regions) fp_own_teacher = teacher_fp(fp_own_world), own_teacher.emplace("teacher", c.teacher, teacher_seed);
    std::vector<table_row> rows;

    // Pre-training (src/pretraining.hpp), before any fine-tuning: the distilled students learn
    // masked region classification from the pre-trained teacher, not from the fine-tuned one.
    std::map<std::uint64_t, student_pretraining> pretrained;  // by seed
    if (c.pretrain.epochs > 0) {
      auto log_pretraining = [&](const pretrain_result& r, std::uint64_t seed) {
        std::cout << "  " << r.name << " s" << seed << ": validation masked-region accuracy " << percent(r.validation.accuracy) << " % ("
                  << r.validation.regions << " regions; most common class " << percent(r.validation.majority) << " %), "
                  << ex::table::fixed(r.log.seconds, 1) << " s training\n";
        logs.push_back(r.log);
        pretraining.push_back(pretraining_json(r, seed));
      };
      mrc_model teacher_mrc(teacher, "teacher", teacher_seed);
      log_pretraining(pretrain_teacher(ctx, c, w, "pretrain_teacher", teacher_mrc, region_set::shared, teacher_seed, ckpt, resume, fp_teacher), teacher_seed);
      if (own_teacher) {
        mrc_model own_mrc(*own_teacher, "teacher", teacher_seed);
        log_pretraining(pretrain_teacher(ctx, c, w, "pretrain_teacher_own_regions", own_mrc, region_set::teacher_own, teacher_seed, ckpt, resume, fp_own_teacher),
                        teacher_seed);
      }
      for (int k = 0; k < c.seeds; ++k) {
        const std::uint64_t seed = c.first_seed + static_cast<std::uint64_t>(k);
        student_pretraining& sp = pretrained[seed];
        for (const auto& r : pretrain_students(ctx, c, w, fp_world, seed, ckpt, resume, teacher_mrc, fp_teacher, sp)) log_pretraining(r, seed);
      }
    }
    {
      const model_result& r = done["teacher"] = train_model(ctx, c, w, run_spec{"teacher", region_set::shared, nullptr, student_methods[0], 0}, teacher,
                                                            c.teacher_opt, teacher_seed, ckpt, resume, fp_teacher);
      report(r, "teacher", teacher_seed, {{"model", "teacher"}, {"regions", "shared"}});
      rows.push_back({"teacher", "teacher", {&r}});
    }
    if (own_regions) {
      const model_result& r = done["teacher_own_regions"] =
          train_model(ctx, c, w, run_spec{"teacher_own_regions", region_set::teacher_own, nullptr, student_methods[0], 0}, *own_teacher, c.teacher_opt,
                      teacher_seed, ckpt, resume, fp_own_teacher);
      report(r, "teacher_own_regions", teacher_seed, {{"model", "teacher"}, {"regions", "own"}});
      rows.push_back({"teacher_own_regions", "teacher", {&r}});
    }

    // What the frozen teachers give the distilled students, computed once for every seed.
    std::optional<teacher_outputs> teacher_out, own_teacher_out;
    auto outputs_of = [&](bool own) -> const teacher_outputs* {
      std::optional<teacher_outputs>& t = own ? own_teacher_out : teacher_out;
      if (!t) {
        const auto t0 = std::chrono::steady_clock::now();
        t = compute_teacher_outputs(ctx, own ? *own_teacher : teacher, w, c.regions, c.max_regions, own);
        std::cerr << "  " << (own ? "teacher_own_regions" : "teacher") << ": outputs on the " << w.train.questions.size() << " train questions in "
                  << ex::table::fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1) << " s\n";
      }
      return &*t;
    };

    // The students: each (row, queue size) per seed; the sweep's row at the methods' queue size
    // is the nce method's own run.
    struct student_row {
      std::string row;
      const student_method* method;
      int queue;
    };
    std::vector<student_row> student_rows;
    for (const auto& m : c.methods) student_rows.push_back({m, &find_method(m), c.kd.nce_queue});
    for (int q : c.queue_sweep) student_rows.push_back({"nce_q" + std::to_string(q), &find_method("nce"), q});
    for (const auto& sr : student_rows) rows.push_back({sr.row, "student", {}});
    const std::size_t first_student_row = rows.size() - student_rows.size();
    std::map<std::string, std::unique_ptr<vqa_transformer>> pictured;  // the first seed's alone and all students, for attention.png
    for (int k = 0; k < c.seeds; ++k) {
      const std::uint64_t seed = c.first_seed + static_cast<std::uint64_t>(k);
      for (std::size_t i = 0; i < student_rows.size(); ++i) {
        const student_row& sr = student_rows[i];
        const student_method& m = *sr.method;
        const std::string name = std::string("student_") + m.name + (m.nce ? "_q" + std::to_string(sr.queue) : std::string());
        const std::string key = name + "-seed" + std::to_string(seed);
        auto it = done.find(key);
        if (it == done.end()) {
          json fp = fp_world;
          fp["student"] = to_json(c.student), fp["optimiser"] = to_json(c.student_opt), fp["seed"] = seed, fp["method"] = m.name;
          if (m.distilled()) fp["teacher"] = m.own_regions ? fp_own_teacher : fp_teacher;
          if (m.kd) fp["kd"] = {{"weight", c.kd.kd_weight}, {"temperature", c.kd.kd_temperature}};
          if (m.attention) fp["attention"] = {{"weight", c.kd.attention_weight}};
          if (m.nce) fp["nce"] = {{"weight", c.kd.nce_weight}, {"temperature", c.kd.nce_temperature}, {"dim", c.kd.nce_dim}, {"queue", sr.queue}};
          auto student = std::make_unique<vqa_transformer>("student", c.student, seed);
          if (c.pretrain.epochs > 0) fp["pretraining"] = pretrained.at(seed).start(*student, m.distilled() && !m.own_regions);
          const teacher_outputs* t = m.distilled() ? outputs_of(m.own_regions) : nullptr;
          it = done.emplace(key, train_model(ctx, c, w, run_spec{name, region_set::shared, t, m, sr.queue}, *student, c.student_opt, seed, ckpt, resume, fp))
                   .first;
          if (k == 0 && (m.name == std::string("alone") || m.name == std::string("all"))) pictured[m.name] = std::move(student);
          report(it->second, sr.row, seed,
                 {{"model", "student"}, {"method", m.name}, {"nce_queue", m.nce ? json(sr.queue) : json()}});
        }
        rows[first_student_row + i].runs.push_back(&it->second);
      }
      if (k == 0 && pictured.count("alone") && pictured.count("all")) {  // the first seed's models on one test scene
        const attention_subject shown[] = {{"teacher", &teacher},
                                           {"student before distillation (alone)", pictured["alone"].get()},
                                           {"student after distillation (all)", pictured["all"].get()}};
        std::cerr << write_attention_picture(o / "attention.png", ctx, c, w, w.test, "test", 0, picture_question(w.test, 0), shown, std::cout).message << "\n";
        pictured.clear();
      }
    }

    json summary = json::array();
    for (const auto& r : rows) summary.push_back(row_summary(r));
    const std::string md = markdown_table(summary);
    std::cout << "\nSummary over " << c.seeds << " student seed(s) (accuracy in %, mean ± std; the teachers: one run each, seed " << teacher_seed
              << "; nce_q<N>: the nce method with a queue of N teacher keys, N = 0: in-batch negatives):\n\n"
              << md;
    results["runs"] = runs;
    results["summary"] = summary;
    if (c.pretrain.epochs > 0) results["pretraining"] = pretraining;
    results["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    results["cpu_seconds"] = cpu_seconds() - cpu_start;
    results["load_average_end"] = load_average();
    examples::write_text_file(o / "results.json", results.dump(2) + "\n");
    examples::write_text_file(o / "results.md", md);
    std::string csv = "run,epoch,train_loss,validation_accuracy,seconds\n";
    for (const auto& l : logs)
      for (const auto& e : l.curve)
        csv += l.name + "," + std::to_string(e.epoch) + "," + std::to_string(e.train_loss) + "," + std::to_string(e.validation) + "," + std::to_string(e.seconds) + "\n";
    examples::write_text_file(o / "curves.csv", csv);
    std::cerr << write_curves_png(o / "curves.png", logs).message << "\n";
    std::cout << "\n" << ex::table::fixed(results["seconds"].get<double>(), 1) << " s wall, " << ex::table::fixed(results["cpu_seconds"].get<double>(), 1)
              << " s CPU (" << device << ", load average now " << load_average() << ")\n";
    std::cerr << "wrote " << (o / "results.json").string() << ", results.md and curves.csv\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "distillvlm: " << e.what() << "\n";
    return 1;
  }
}
