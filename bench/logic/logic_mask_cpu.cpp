// SPDX-License-Identifier: MIT
// Spatial-knowledge masks made on the fly: the flagship's four Sort-of-CLEVR rule sets
// (examples/vqa_spatial_kd/rules/) on six-object scenes, one question per mask, cycling through
// 1024 pre-generated scene-question pairs of every question type.
//   logic_mask/cpu/6objects          one mask per iteration on one core (target ≥ 5 000 masks/s)
//   logic_mask/cpu/6objects/batch64  sort_of_clevr_masks over a batch of 64 on cpu_threads()
//   logic_mask/cpu/25objects         closest-to rules on 25-object scenes (the pixel RN's cells)
// Counter masks_per_s = masks per second of CPU time (one core) or real time (batch).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "../../examples/vqa_spatial_kd/src/logic_masks.hpp"

namespace {

std::string rules_dir() {
  return (std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "examples" / "vqa_spatial_kd" / "rules").string();
}

struct workload {
  int n = 6, count = 1024;
  std::vector<distill::scene_object> scenes;  // [count, n]
  std::vector<std::int32_t> colours, questions;
  explicit workload(int objects, int items = 1024) : n(objects), count(items) {
    std::mt19937_64 g(20261126);
    std::uniform_real_distribution<float> pos(5.0f, 70.0f);
    for (int k = 0; k < count; ++k) {
      for (int i = 0; i < n; ++i)
        scenes.push_back({pos(g), pos(g), static_cast<std::int32_t>(i), static_cast<std::int32_t>(g() % 2), 0, 0});
      colours.push_back(static_cast<std::int32_t>(g() % static_cast<unsigned>(n)));
      questions.push_back(static_cast<std::int32_t>(k % vqa::sort_of_clevr_question_count));
    }
  }
  distill::host_view<const distill::scene_object, 1> scene(int k) const {
    return distill::make_view(scenes.data() + static_cast<std::size_t>(k) * static_cast<std::size_t>(n), n);
  }
};

void logic_mask_6objects(benchmark::State& state) {
  vqa::sort_of_clevr_rules rules;
  if (auto st = vqa::load_sort_of_clevr_rules(rules_dir(), rules); !st.ok()) {
    state.SkipWithError(st.to_string().c_str());
    return;
  }
  vqa::sort_of_clevr_masker masker;
  if (auto st = masker.prepare(rules); !st.ok()) {
    state.SkipWithError(st.to_string().c_str());
    return;
  }
  const workload w(6);
  const distill::logic_options opt = vqa::sort_of_clevr_logic_options();
  std::vector<float> mask(36);
  int k = 0;
  distill_bench::run_cpu(state, [&] {
    const distill::status st = masker.mask(w.scene(k), w.colours[static_cast<std::size_t>(k)],
                                           static_cast<vqa::sort_of_clevr_question>(w.questions[static_cast<std::size_t>(k)]),
                                           distill::make_view(mask.data(), 6, 6), opt);
    k = (k + 1) % w.count;
    return st;
  });
  state.counters["masks_per_s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

void logic_mask_6objects_batch64(benchmark::State& state) {
  vqa::sort_of_clevr_rules rules;
  if (auto st = vqa::load_sort_of_clevr_rules(rules_dir(), rules); !st.ok()) {
    state.SkipWithError(st.to_string().c_str());
    return;
  }
  const int threads = distill_bench::cpu_threads();
  std::vector<vqa::sort_of_clevr_masker> maskers(static_cast<std::size_t>(threads));
  for (auto& m : maskers)
    if (auto st = m.prepare(rules); !st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      return;
    }
  const int B = 64;
  const workload w(6);
  std::vector<float> masks(static_cast<std::size_t>(B) * 36);
  int k = 0;
  distill_bench::run_cpu(state, [&] {
    const distill::status st = vqa::sort_of_clevr_masks(
        distill::cpu{threads}, maskers, distill::make_view(w.scenes.data() + static_cast<std::size_t>(k) * 6, B, 6),
        distill::make_view(w.colours.data() + k, B), distill::make_view(w.questions.data() + k, B),
        distill::make_view(masks.data(), B, 6, 6));
    k = (k + B) % (w.count - B + 1);
    return st;
  });
  state.counters["masks_per_s"] = benchmark::Counter(B, benchmark::Counter::kIsIterationInvariantRate);
}

void logic_mask_25objects(benchmark::State& state) {
  distill::rule_set rules;
  if (auto st = distill::load_rules(rules_dir() + "/closest.rules", rules); !st.ok()) {
    state.SkipWithError(st.to_string().c_str());
    return;
  }
  distill::logic_solver solver;
  if (auto st = solver.prepare(rules, 25); !st.ok()) {
    state.SkipWithError(st.to_string().c_str());
    return;
  }
  const workload w(25, 256);
  const int queried = rules.find_predicate("queried"), relevant = rules.find_predicate("relevant");
  const distill::logic_options opt = vqa::sort_of_clevr_logic_options();
  std::vector<float> q(25), mask(625);
  int k = 0;
  distill_bench::run_cpu(state, [&] {
    for (int i = 0; i < 25; ++i) q[static_cast<std::size_t>(i)] = i == w.colours[static_cast<std::size_t>(k)] ? 1.0f : 0.0f;
    const distill::observed_values obs[] = {{queried, distill::make_view(static_cast<const float*>(q.data()), 25)}};
    const distill::status st = distill::logic_mask(distill::cpu{1}, solver, w.scene(k), obs, relevant, distill::make_view(mask.data(), 25, 25), opt);
    k = (k + 1) % w.count;
    return st;
  });
  state.counters["masks_per_s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

const int registered = [] {
  // Single-threaded: CPU time is the one-core figure the target is about (and is less noisy than
  // wall time on a shared machine), so no UseRealTime and the name stays exact.
  benchmark::RegisterBenchmark("logic_mask/cpu/6objects", logic_mask_6objects)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("logic_mask/cpu/6objects/batch64", logic_mask_6objects_batch64)
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("logic_mask/cpu/25objects", logic_mask_25objects)->Unit(benchmark::kMicrosecond);
  return 0;
}();

}  // namespace
