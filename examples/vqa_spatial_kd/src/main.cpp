// SPDX-License-Identifier: MIT
// vqa_spatial_kd: Spatial Knowledge Distillation on Sort-of-CLEVR, end to end.
//
//   data    generate (or load) Sort-of-CLEVR: scenes, 20 questions per image, answers
//   logic   the rules in rules/*.rules turn each (scene, question) into a pair mask (distill::logic)
//   models  baseline RN, two teachers (logic mask / predicted mask), two students (model.hpp)
//   report  accuracy by question type, mean ± std over seeds; results.json, curves.csv, plot, PNGs
//
//   vqa_spatial_kd --preset cpu-small|paper|smoke [--pixels] [--seeds 3] [--out DIR] [overrides]

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "render.hpp"  // first: it owns the stb_image_write implementation
#include "batching.hpp"
#include "config.hpp"
#include "dataset_io.hpp"
#include "../../common/progress.hpp"
#include "../../common/replicas.hpp"
#include "distill/core/file_io.hpp"
#include "distill/nn/checkpoint.hpp"
#include "logic_masks.hpp"
#include "report.hpp"
#include "runner.hpp"
#include "sort_of_clevr.hpp"

namespace fs = std::filesystem;
using namespace vqa;
using examples::progress_bar;
using examples::progress_options;

namespace {

// ---- data: the dataset, its state inputs and the logic masks of every question ---------------

struct split_data {
  dataset d;
  int N = 6;                         // objects per scene the models see (6, or 25 cells)
  std::vector<float> masks;          // [questions, N, N]
};

sort_of_clevr_question logic_question(question_type t) {
  switch (t) {
    case question_type::shape: return sort_of_clevr_question::shape;
    case question_type::left: return sort_of_clevr_question::horizontal;
    case question_type::top: return sort_of_clevr_question::vertical;
    case question_type::closest: return sort_of_clevr_question::closest;
    case question_type::furthest: return sort_of_clevr_question::furthest;
    case question_type::count: return sort_of_clevr_question::count;
  }
  return sort_of_clevr_question::shape;
}

/// The CNN cell (of the 5 x 5 grid over the 75 x 75 image) holding a pixel position.
int cell_of(int x, int y) { return std::min(4, y / 15) * 5 + std::min(4, x / 15); }

/// Logic masks for every question of a split, from the rule files (distill::logic, MAP inference).
std::vector<float> logic_masks(const dataset& d, const sort_of_clevr_rules& rules, int threads, bool cells) {
  const std::size_t Q = d.questions.size();
  std::vector<distill::scene_object> scenes(Q * object_count);
  std::vector<std::int32_t> colours(Q), types(Q);
  for (std::size_t i = 0; i < Q; ++i) {
    const question& q = d.questions[i];
    for (int k = 0; k < object_count; ++k) {
      const object_state& s = d.scenes[q.image].objects[static_cast<std::size_t>(k)];
      scenes[i * object_count + static_cast<std::size_t>(k)] = {static_cast<float>(s.x), static_cast<float>(s.y), s.colour,
                                                               static_cast<std::int32_t>(s.form), 0, 0};
    }
    colours[i] = q.colour;
    types[i] = static_cast<std::int32_t>(logic_question(q.type));
  }
  std::vector<sort_of_clevr_masker> maskers(static_cast<std::size_t>(std::max(1, threads)));
  for (auto& m : maskers) distill::throw_if_error(m.prepare(rules, object_count));
  std::vector<float> m6(Q * object_count * object_count);
  const auto n = static_cast<distill::index_t>(Q);
  distill::throw_if_error(sort_of_clevr_masks(
      distill::cpu{threads}, maskers, distill::make_view(static_cast<const distill::scene_object*>(scenes.data()), n, object_count),
      distill::make_view(static_cast<const std::int32_t*>(colours.data()), n),
      distill::make_view(static_cast<const std::int32_t*>(types.data()), n), distill::make_view(m6.data(), n, object_count, object_count)));
  if (!cells) return m6;
  // Pixels: the models' objects are the 25 CNN cells; pair (i, j) of objects becomes the pair of
  // the cells holding their centres (two objects in one cell add up).
  std::vector<float> m25(Q * 625, 0.0f);
  for (std::size_t i = 0; i < Q; ++i) {
    const scene& s = d.scenes[d.questions[i].image];
    for (int a = 0; a < object_count; ++a)
      for (int b = 0; b < object_count; ++b) {
        const auto& oa = s.objects[static_cast<std::size_t>(a)];
        const auto& ob = s.objects[static_cast<std::size_t>(b)];
        float& dst = m25[i * 625 + static_cast<std::size_t>(cell_of(oa.x, oa.y) * 25 + cell_of(ob.x, ob.y))];
        dst = std::min(1.0f, dst + m6[i * 36 + static_cast<std::size_t>(a * 6 + b)]);
      }
  }
  return m25;
}

/// Host memory of one batch, filled from a split by question ids.
struct batch_buffers {
  std::vector<float> state, images, questions, masks;
  std::vector<std::int32_t> answers32;
  std::vector<std::int64_t> answers;

  host_batch fill(const split_data& s, std::span<const std::uint32_t> ids, bool pixels) {
    const std::size_t B = ids.size(), NN = static_cast<std::size_t>(s.N * s.N);
    questions.resize(B * question_size), answers32.resize(B), answers.resize(B), masks.resize(B * NN);
    state.resize(B * object_count * object_feature_size);
    gather_state_batch(s.d, ids, state, questions, answers32);
    if (pixels) {
      images.resize(B * image_bytes);
      gather_image_batch(s.d, ids, images);
    }
    for (std::size_t i = 0; i < B; ++i) {
      answers[i] = answers32[i];
      std::copy_n(s.masks.data() + ids[i] * NN, NN, masks.data() + i * NN);
    }
    host_batch b;
    b.size = static_cast<int>(B), b.objects = s.N;
    b.state = state.data(), b.images = pixels ? images.data() : nullptr, b.questions = questions.data();
    b.answers = answers.data(), b.logic_mask = masks.data();
    return b;
  }
};

// ---- training and evaluation -----------------------------------------------------------------

std::unique_ptr<model_runner> make_runner(const std::string& device, const model_spec& s, const train_config& c) {
#if defined(DISTILL_VQA_WITH_CUDA)
  if (device == "cuda") return make_cuda_runner(s, c);
#endif
  (void)device;
  return make_cpu_runner(s, c);
}

accuracy_counter evaluate(model_runner& m, const split_data& test, const run_options& o, std::vector<std::int32_t>* answers_out = nullptr) {
  accuracy_counter acc;
  batch_buffers buf;
  std::vector<std::int32_t> pred(static_cast<std::size_t>(o.train.batch));
  const std::size_t Q = test.d.questions.size();
  if (answers_out) answers_out->assign(Q, -1);
  std::vector<std::uint32_t> ids;
  for (std::size_t first = 0; first < Q; first += static_cast<std::size_t>(o.train.batch)) {
    ids.clear();
    for (std::size_t i = first; i < std::min(Q, first + static_cast<std::size_t>(o.train.batch)); ++i) ids.push_back(static_cast<std::uint32_t>(i));
    const host_batch b = buf.fill(test, ids, o.pixels);
    distill::throw_if_error(m.predict(b, pred.data(), nullptr));
    for (std::size_t i = 0; i < ids.size(); ++i) {
      acc.add(test.d.questions[ids[i]], pred[i]);
      if (answers_out) (*answers_out)[ids[i]] = pred[i];
    }
  }
  return acc;
}

struct trained {
  std::unique_ptr<model_runner> model;
  seed_result result;
};

std::string checkpoint_path(const run_options& o, const std::string& model, std::uint64_t seed) {
  return (fs::path(o.out) / "checkpoints" / (model + "-seed" + std::to_string(seed) + ".ckpt")).string();
}

/// What a checkpoint holds besides the model's state (its "meta" string, JSON): the training
/// settings it was made with, the training time so far and the curve so far.
nlohmann::json checkpoint_meta(const nlohmann::json& settings, double seconds, const std::vector<curve_point>& curve) {
  nlohmann::json meta;
  meta["settings"] = settings;
  meta["seconds"] = seconds;
  meta["curve"] = nlohmann::json::array();
  for (const auto& p : curve)
    meta["curve"].push_back({{"epoch", p.epoch}, {"train_loss", p.train_loss}, {"overall", p.overall}, {"non_relational", p.non_relational},
                             {"relational", p.relational}, {"seconds", p.seconds}});
  return meta;
}

/// --resume: the meta of an existing checkpoint, refused (with the reason, naming every setting
/// that differs) unless it was made with `settings`: a resumed run must be the uninterrupted run.
nlohmann::json resumable_meta(const std::string& ckpt, const std::string& what, const nlohmann::json& settings) {
  const std::string cannot = "--resume: cannot continue " + what + " from " + ckpt + ": ";
  const std::string start_over = " (to start this model over, delete the file or use another --out)";
  distill::nn::checkpoint ck;
  std::string text;
  if (const distill::status st = distill::nn::checkpoint::load(ckpt, ck); !st.ok()) throw std::runtime_error(cannot + st.to_string() + start_over);
  if (const distill::status st = ck.get_string("meta", text); !st.ok()) throw std::runtime_error(cannot + st.to_string() + start_over);
  const nlohmann::json meta = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!meta.is_object() || !meta.contains("settings") || !meta["settings"].is_object() || !meta.contains("curve") || !meta.contains("seconds"))
    throw std::runtime_error(cannot + "its metadata is not this program's (an older version?)" + start_over);
  if (const std::string diff = settings_mismatch(meta["settings"], settings); !diff.empty())
    throw std::runtime_error(cannot + "it was trained with other settings: " + diff +
                             ". Resume with the settings it was made with, or delete the checkpoint or use another --out to start over");
  return meta;
}

/// Trains one model for one seed (resuming from its checkpoint when asked), evaluating on the
/// test set after every epoch and checkpointing after every epoch (a failed save stops the run:
/// a later --resume must be able to continue from every finished epoch).
/// Data-parallel (examples/common/replicas.hpp): each rank takes its rows of every batch, the
/// gradients are combined before each step, and rank 0 alone shows progress and checkpoints.
trained train_model(const model_spec& spec, std::uint64_t seed, const run_options& o, const std::string& device, const nlohmann::json& settings,
                    const split_data& train, const split_data& test, model_runner* teacher, std::vector<curve_point>& curves,
                    const examples::replicas& world) {
  train_config cfg = o.train;
  cfg.seed = seed;
  trained t{make_runner(device, spec, cfg), {}};
  if (world.data_parallel()) distill::throw_if_error(t.model->set_gradient_combiner(world.combine_gradients));
  t.result.seed = seed;
  int start_epoch = 0;
  double seconds = 0;
  std::vector<curve_point> mine;
  const std::string ckpt = checkpoint_path(o, spec.name, seed);
  const std::string what = spec.name + " seed " + std::to_string(seed);
  if (o.resume && fs::exists(ckpt)) {
    const nlohmann::json meta = resumable_meta(ckpt, what, settings);
    std::string unused;
    if (const distill::status st = t.model->load(ckpt, start_epoch, unused); !st.ok())
      throw std::runtime_error("--resume: cannot continue " + what + " from " + ckpt + ": " + st.to_string());
    seconds = meta.at("seconds").get<double>();
    for (const auto& p : meta.at("curve"))
      mine.push_back({spec.name, seed, p.at("epoch").get<int>(), p.at("train_loss").get<double>(), p.at("overall").get<double>(),
                      p.at("non_relational").get<double>(), p.at("relational").get<double>(), p.at("seconds").get<double>()});
    std::cerr << "  resumed " << what << " after epoch " << start_epoch << "\n";
  }
  const std::size_t Q = train.d.questions.size();
  const auto B = static_cast<std::size_t>(o.train.batch);
  batch_buffers buf;
  accuracy_counter acc;
  for (int epoch = start_epoch; epoch < o.epochs; ++epoch) {
    const auto order = shuffled_order(Q, seed, static_cast<std::uint64_t>(epoch));
    progress_bar bar(spec.title + " seed " + std::to_string(seed) + " epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o.epochs),
                     static_cast<std::int64_t>(Q), progress_options{.unit = "q", .clock = {}});
    const auto t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;  // of the global batches' losses (this rank's share of each)
    std::size_t steps = 0;
    for (std::size_t first = 0; first < Q; first += B) {
      const std::size_t n = std::min(B, Q - first), mine_first = world.first_of(n), mine_n = world.count_of(n);
      host_batch b = buf.fill(train, std::span<const std::uint32_t>(order).subspan(first + mine_first, mine_n), o.pixels);
      if (world.data_parallel()) b.first_row = static_cast<int>(mine_first), b.global_size = static_cast<int>(n);
      double loss = 0;
      distill::throw_if_error(t.model->train_step(b, teacher, o.train.lr, loss));
      if (!std::isfinite(loss)) throw std::runtime_error(spec.name + ": the training loss is not finite (" + std::to_string(loss) + ")");
      loss_sum += loss * static_cast<double>(mine_n) / static_cast<double>(n), ++steps;
      bar.advance(static_cast<std::int64_t>(n));
      if (steps % 20 == 0 && !world.data_parallel()) {
        char s[48];
        std::snprintf(s, sizeof s, "loss %.4f", loss_sum / static_cast<double>(steps));
        bar.set_suffix(s);
      }
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    world.total(std::span<double>(&loss_sum, 1));
    acc = evaluate(*t.model, test, o);
    const double train_loss = loss_sum / static_cast<double>(std::max<std::size_t>(steps, 1));
    char s[96];
    std::snprintf(s, sizeof s, "loss %.4f | test %.1f%% (non-rel %.1f%%, rel %.1f%%)", train_loss, 100 * acc.overall(),
                  100 * acc.non_relational(), 100 * acc.relational());
    bar.set_suffix(s);
    bar.finish();
    mine.push_back(make_curve_point(spec.name, seed, epoch + 1, train_loss, acc.metrics(), seconds));
    if (!world.root()) continue;
    if (const distill::status st = t.model->save(ckpt, epoch + 1, checkpoint_meta(settings, seconds, mine).dump()); !st.ok())
      throw std::runtime_error("checkpoint of " + what + " after epoch " + std::to_string(epoch + 1) + " not saved: " + st.to_string() +
                               "; stopping, since --resume could not continue from it");
  }
  if (start_epoch >= o.epochs) acc = evaluate(*t.model, test, o);  // fully trained checkpoint
  t.result.test = acc.metrics();
  t.result.train_seconds = seconds;
  curves.insert(curves.end(), mine.begin(), mine.end());
  return t;
}

/// Fingerprint of the rule sets as parsed (canonical text: comments and layout do not count):
/// the logic masks, and so every model's training, depend on them.
std::uint64_t rules_fingerprint(const sort_of_clevr_rules& rules) {
  distill::fnv1a64 h;
  for (const auto& set : rules.sets) {
    const std::string text = set.to_string();
    h.update({reinterpret_cast<const unsigned char*>(text.data()), text.size() + 1});  // with the '\0' between sets
  }
  return h.value();
}

/// Fails unless files can be written into `folder` (through the atomic writer, as checkpoints
/// are): found out before training, not after the first epoch.
void require_writable(const fs::path& folder, const std::string& what) {
  const std::string probe = (folder / ".write-test").string();
  const unsigned char byte = 0;
  if (const distill::status st = distill::write_file_atomically("vqa_spatial_kd", probe, std::span<const unsigned char>(&byte, 1)); !st.ok())
    throw std::runtime_error("cannot write " + what + " into " + folder.string() + ": " + st.message());
  std::error_code ec;
  fs::remove(probe, ec);
}

/// PNG panels of a few test questions: the scene, the question, every model's answer, the logic
/// mask (what the logic teacher was told) and the predicted-mask teacher's pair attention.
void render_examples(const split_data& test, const run_options& o, const std::map<std::string, std::vector<std::int32_t>>& answers,
                     model_runner* predicted, const fs::path& path) {
  if (o.render <= 0) return;
  std::vector<panel_content> panels;
  const std::size_t Q = test.d.questions.size();
  const std::size_t NN = static_cast<std::size_t>(test.N * test.N);
  // One question of each type in turn (relational first), each from another image.
  const question_type order[] = {question_type::closest, question_type::furthest, question_type::count,
                                 question_type::shape,   question_type::left,     question_type::top};
  std::vector<std::size_t> picked;
  std::vector<bool> image_used(test.d.image_count(), false);
  for (int round = 0; static_cast<int>(picked.size()) < o.render && round < o.render; ++round)
    for (question_type t : order) {
      if (static_cast<int>(picked.size()) >= o.render) break;
      for (std::size_t i = 0; i < Q; ++i)
        if (test.d.questions[i].type == t && !image_used[test.d.questions[i].image]) {
          picked.push_back(i);
          image_used[test.d.questions[i].image] = true;
          break;
        }
    }
  for (std::size_t i : picked) {
    const question& q = test.d.questions[i];
    panel_content p;
    p.objects = test.d.scenes[q.image];
    if (test.d.has_pixels()) p.pixels.assign(test.d.image(q.image).begin(), test.d.image(q.image).end());
    p.asked = q;
    const auto centres = test.N == 25 ? grid_cell_centres(5) : std::vector<std::array<float, 2>>{};
    if (predicted) {
      batch_buffers buf;
      const std::uint32_t id = static_cast<std::uint32_t>(i);
      const host_batch b = buf.fill(test, std::span<const std::uint32_t>(&id, 1), o.pixels);
      std::int32_t a = 0;
      std::vector<float> w(NN);
      if (predicted->predict(b, &a, w.data()).ok())
        p.masks.emplace_back("predicted attention", std::move(w), rgb8{0, 120, 220}, true, centres);
    }
    p.masks.emplace_back("logic mask", std::vector<float>(test.masks.begin() + static_cast<std::ptrdiff_t>(i * NN),
                                                          test.masks.begin() + static_cast<std::ptrdiff_t>((i + 1) * NN)),
                         pair_mask::magenta, false, centres);  // on top: what the teacher was told
    for (const auto& [name, ans] : answers) p.answers.push_back({name, ans[i]});
    panels.push_back(std::move(p));
  }
  if (render_grid(panels, 4, path)) std::cerr << "wrote " << path.string() << "\n";
  else std::cerr << "could not write " << path.string() << "\n";
}

int run(int argc, char** argv, const examples::replicas& world);

}  // namespace

int main(int argc, char** argv) {
  return examples::run_replicated("vqa_spatial_kd", argc, argv, [&](const examples::replicas& world) { return run(argc, argv, world); });
}

namespace {

int run(int argc, char** argv, const examples::replicas& world) {
  run_options o;
  if (const auto stop = parse_command_line(argc, argv, o, std::cout, std::cerr)) return *stop;

  try {
    // device
    std::string device = o.device, device_name = "CPU (" + std::to_string(o.train.threads) + " threads)";
#if defined(DISTILL_VQA_WITH_CUDA)
    const std::string gpu = cuda_device_name();
    if (device == "auto") device = gpu.empty() ? "cpu" : "cuda";
    if (device == "cuda") {
      if (gpu.empty()) throw std::runtime_error("--device cuda: no usable CUDA device");
      device_name = gpu;
    }
#else
    if (device == "cuda") throw std::runtime_error("--device cuda: this build has no CUDA (nvcc was not found when it was configured)");
    device = "cpu";
#endif
    if (world.data_parallel()) {
      if (o.pixels) throw std::invalid_argument("data-parallel training takes state descriptions: pixels' token NCE uses in-batch negatives");
      if (device != "cpu") throw std::invalid_argument("data-parallel training runs on the CPU (--device cpu)");
      if (static_cast<int>(o.train.batch) < world.size) throw std::invalid_argument("--batch must be at least the number of ranks");
      device_name += " x " + std::to_string(world.size) + " MPI ranks";
    }
    if (!world.root()) std::cerr.setstate(std::ios::failbit);  // rank 0 speaks for the job
    fs::create_directories(fs::path(o.out) / "checkpoints");
    if (world.root()) {
      require_writable(fs::path(o.out) / "checkpoints", "checkpoints");  // without them --resume could not continue
      require_writable(o.out, "results");
    }
    if (o.data_dir.empty()) o.data_dir = (fs::path(o.out) / "data").string();
    fs::create_directories(o.data_dir);
    std::cerr << "vqa_spatial_kd: preset " << o.preset << (o.pixels ? " (pixels)" : " (state descriptions)") << ", " << o.seeds
              << " seed(s), " << o.epochs << " epochs, on " << device_name << "\n";

    // data + logic masks
    sort_of_clevr_rules rules;
    distill::rule_error rerr;
    if (const distill::status st = load_sort_of_clevr_rules(o.rules_dir, rules, &rerr); !st.ok())
      throw std::runtime_error(st.to_string() + " (pass --rules DIR)");
    const nlohmann::json settings = training_settings(o, device, rules_fingerprint(rules));
    auto load_split = [&](dataset_split split, int images) {
      generator_params p;
      p.seed = o.data_seed, p.split = split, p.images = static_cast<std::uint32_t>(images), p.with_pixels = o.pixels;
      split_data s;
      const fs::path path = fs::path(o.data_dir) / ("sort_of_clevr_" + std::string(name_of(split)) + (o.pixels ? "_pixels" : "") + ".bin");
      s.d = load_or_generate(path, p);
      s.N = o.pixels ? 25 : object_count;
      const auto t0 = std::chrono::steady_clock::now();
      s.masks = logic_masks(s.d, rules, o.train.threads, o.pixels);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::cerr << "  " << name_of(split) << ": " << s.d.image_count() << " images, " << s.d.questions.size() << " questions; logic masks in "
                << report_detail::fixed(dt, 2) << " s (" << report_detail::fixed(static_cast<double>(s.d.questions.size()) / std::max(dt, 1e-9), 0)
                << " masks/s)\n";
      return s;
    };
    if (!world.root()) world.barrier();  // rank 0 generates the data files first
    const split_data train = load_split(dataset_split::train, o.train_images);
    const split_data test = load_split(dataset_split::test, o.test_images);
    if (world.root()) world.barrier();
    if (world.data_parallel() && train.d.questions.size() % static_cast<std::size_t>(o.train.batch) != 0 &&
        train.d.questions.size() % static_cast<std::size_t>(o.train.batch) < static_cast<std::size_t>(world.size))
      throw std::invalid_argument("the last batch of each epoch would leave a rank without questions: choose --batch or --train-images");

    // train every model for every seed
    std::vector<model_result> results;
    for (const auto& m : o.models) results.push_back({spec_of(m, o).title, {}});
    std::vector<curve_point> curves;
    std::map<std::string, std::vector<std::int32_t>> last_answers;  // first seed: for the PNG panels
    std::unique_ptr<model_runner> last_predicted;
    for (int k = 0; k < o.seeds; ++k) {
      const std::uint64_t seed = o.first_seed + static_cast<std::uint64_t>(k);
      std::unique_ptr<model_runner> teacher;
      for (std::size_t mi = 0; mi < o.models.size(); ++mi) {
        const model_spec spec = spec_of(o.models[mi], o);
        trained t = train_model(spec, seed, o, device, settings, train, test, spec.distill_logits ? teacher.get() : nullptr, curves, world);
        results[mi].seeds.push_back(t.result);
        const auto& r = t.result.test;
        std::cerr << "  " << spec.title << " seed " << seed << ": non-relational " << report_detail::fixed(100 * r[metric_non_relational], 1)
                  << "%, relational " << report_detail::fixed(100 * r[metric_relational], 1) << "% ("
                  << report_detail::fixed(t.result.train_seconds, 0) << " s, " << t.model->parameter_count() << " parameters)\n";
        if (k == 0) {
          evaluate(*t.model, test, o, &last_answers[spec.name]);
          if (spec.name == "teacher_predicted") last_predicted = std::move(t.model);
        }
        if (spec.is_teacher) teacher = std::move(t.model);
      }
    }

    // report (rank 0)
    if (!world.root()) return 0;
    const std::string table = format_results_table(results);
    std::cout << "\nTest accuracy by question type (" << o.seeds << " seed" << (o.seeds > 1 ? "s, mean ± std" : "") << "), "
              << device_name << ":\n\n" << table << std::flush;
    const fs::path out(o.out);
    write_results_json(out / "results.json", config_json(o, device_name), results);
    write_curves_csv(out / "curves.csv", curves);
    const plot_result plot = plot_curves(curves, out / "curves.png");
    std::cerr << (plot.written ? "wrote " + (out / "curves.png").string() : plot.message) << "\n";
    render_examples(test, o, last_answers, last_predicted.get(), out / "examples.png");
    std::cerr << "wrote " << (out / "results.json").string() << " and " << (out / "curves.csv").string() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr.clear();
    std::cerr << "vqa_spatial_kd" << (world.data_parallel() ? " (rank " + std::to_string(world.rank) + ")" : std::string()) << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace
