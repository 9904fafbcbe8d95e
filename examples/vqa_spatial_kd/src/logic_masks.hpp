// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The example's glue between Sort-of-CLEVR and distill's logic language (it names the rule
//! files of rules/, so it lives with the example): question → rule set and observed constants →
//! pair mask M [N, N] (M(i, j) = relevant(i, j), i the first object of the pair), as the Spatial
//! Knowledge Distillation teacher consumes it (Aditya et al., WACV 2019).
//!
//! Question types (Santoro et al. 2017, Appendix D) and the rule file that serves each
//! (rules/):
//!   shape, horizontal, vertical  → non_relational.rules   the pair (c, c)
//!   closest                      → closest.rules          (c, nearest neighbour of c)
//!   furthest                     → furthest.rules         (c, furthest object from c)
//!   count                        → count.rules            (c, j) for every j with c's shape (c included)
//! where c is the object of the question's colour. Each file declares `observed queried/1`
//! (set here: 1 for objects of the question's colour, 0 otherwise) and `open relevant/2`.
//!
//! Positions are pixels of the 75×75 image (scale 75); closest_to/furthest_from use a softmax
//! sharpness of 1000 per image width, so a distance gap of one pixel separates the two
//! candidates by e^-13: masks are crisp except for near-ties, which share the pair's weight.

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/logic/inference.hpp"
#include "distill/logic/rules.hpp"
#include "distill/logic/scene.hpp"

namespace vqa {

enum class sort_of_clevr_question : std::int32_t { shape = 0, horizontal = 1, vertical = 2, closest = 3, furthest = 4, count = 5 };
inline constexpr int sort_of_clevr_question_count = 6;

/// The four rule sets, in the order non-relational, closest, furthest, count.
inline constexpr std::array<std::string_view, 4> sort_of_clevr_rule_files{
    {"non_relational.rules", "closest.rules", "furthest.rules", "count.rules"}};

/// Which of the four rule sets serves question type q.
constexpr int sort_of_clevr_rule_index(sort_of_clevr_question q) noexcept {
  switch (q) {
    case sort_of_clevr_question::closest: return 1;
    case sort_of_clevr_question::furthest: return 2;
    case sort_of_clevr_question::count: return 3;
    default: return 0;
  }
}

struct sort_of_clevr_rules {
  std::array<distill::rule_set, 4> sets;  ///< indexed by sort_of_clevr_rule_index
};

/// Options for 75×75-pixel scenes (see the file comment). Tolerances are tighter than the
/// defaults so masks are exact to about 1e-5; that costs a few dozen iterations per mask.
inline distill::logic_options sort_of_clevr_logic_options() {
  distill::logic_options o;
  o.spatial.scale = 75.0;
  o.spatial.sigmoid_sharpness = 100.0;
  o.spatial.softmax_sharpness = 1000.0;
  o.spatial.near_radius = 0.25;
  o.admm.rho = 4.0;
  o.admm.epsilon_abs = 1e-7;
  o.admm.epsilon_rel = 1e-6;
  o.admm.max_iterations = 2000;
  return o;
}

/// Loads the four rule files from `dir` and checks each declares queried/1 (observed) and
/// relevant/2 (open).
[[nodiscard]] inline distill::status load_sort_of_clevr_rules(const std::string& dir, sort_of_clevr_rules& out,
                                                     distill::rule_error* error = nullptr) {
  constexpr const char* fn = "load_sort_of_clevr_rules";
  sort_of_clevr_rules loaded;
  for (std::size_t k = 0; k < sort_of_clevr_rule_files.size(); ++k) {
    const std::string path = dir + "/" + std::string(sort_of_clevr_rule_files[k]);
    DISTILL_TRY(distill::load_rules(path, loaded.sets[k], error));
    const distill::rule_set& rs = loaded.sets[k];
    const int q = rs.find_predicate("queried"), r = rs.find_predicate("relevant");
    const auto& preds = rs.predicates();
    if (q < 0 || preds[static_cast<std::size_t>(q)].kind != distill::predicate_kind::observed || preds[static_cast<std::size_t>(q)].arity != 1)
      return distill::fail(distill::errc::invalid_argument, fn, "'" + path + "' must declare 'observed queried/1.'");
    if (r < 0 || preds[static_cast<std::size_t>(r)].kind != distill::predicate_kind::open || preds[static_cast<std::size_t>(r)].arity != 2)
      return distill::fail(distill::errc::invalid_argument, fn, "'" + path + "' must declare 'open relevant/2.'");
  }
  out = std::move(loaded);
  return {};
}

/// Makes Sort-of-CLEVR masks: four prepared solvers (one per rule set). One per thread.
class sort_of_clevr_masker {
 public:
  [[nodiscard]] distill::status prepare(const sort_of_clevr_rules& rules, distill::index_t max_objects = 6) {
    for (std::size_t k = 0; k < solvers_.size(); ++k) {
      DISTILL_TRY(solvers_[k].prepare(rules.sets[k], max_objects));
      queried_[k] = rules.sets[k].find_predicate("queried");
      relevant_[k] = rules.sets[k].find_predicate("relevant");
      if (queried_[k] < 0 || relevant_[k] < 0)
        return distill::fail(distill::errc::invalid_argument, "sort_of_clevr_masker::prepare",
                    "rule set " + std::to_string(k) + " lacks 'queried' or 'relevant' (load it with load_sort_of_clevr_rules)");
    }
    queried_values_.assign(static_cast<std::size_t>(max_objects), 0.0f);
    return {};
  }

  /// The mask for question type `question` about the object of colour `colour`: out [N, N].
  [[nodiscard]] distill::status mask(distill::host_view<const distill::scene_object, 1> scene, std::int32_t colour, sort_of_clevr_question question,
                            distill::host_view<float, 2> out, const distill::logic_options& opt = sort_of_clevr_logic_options(),
                            distill::logic_report* report = nullptr) {
    constexpr const char* fn = "sort_of_clevr_masker::mask";
    if (queried_values_.empty()) return distill::fail(distill::errc::invalid_argument, fn, "the masker is not prepared");
    const auto q = static_cast<std::int32_t>(question);
    if (q < 0 || q >= sort_of_clevr_question_count)
      return distill::fail(distill::errc::invalid_argument, fn, "question type " + std::to_string(q) + " is not in [0, 6)");
    DISTILL_TRY(distill::check_scene(fn, "scene", scene));
    const distill::index_t n = scene.extent(0);
    if (n > static_cast<distill::index_t>(queried_values_.size()))
      return distill::fail(distill::errc::shape_mismatch, fn,
                  "'scene' has " + std::to_string(n) + " objects, the masker was prepared for " + std::to_string(queried_values_.size()));
    bool found = false;
    for (distill::index_t i = 0; i < n; ++i) {
      const bool hit = scene(i).colour == colour;
      queried_values_[static_cast<std::size_t>(i)] = hit ? 1.0f : 0.0f;
      found = found || hit;
    }
    if (!found) return distill::fail(distill::errc::invalid_argument, fn, "no object of the scene has the question's colour " + std::to_string(colour));
    const std::size_t k = static_cast<std::size_t>(sort_of_clevr_rule_index(question));
    const distill::observed_values obs[1] = {{queried_[k], distill::make_view(static_cast<const float*>(queried_values_.data()), n)}};
    return distill::logic_mask(distill::cpu{1}, solvers_[k], scene, obs, relevant_[k], out, opt, report);
  }

 private:
  std::array<distill::logic_solver, 4> solvers_;
  std::array<int, 4> queried_{}, relevant_{};
  std::vector<float> queried_values_;
};

/// Masks for a batch: scenes [B, N], colours [B], questions [B] (sort_of_clevr_question values),
/// masks [B, N, N]. Chunked over threads like logic_mask_batch (chunk c uses maskers[c]); the
/// result does not depend on the thread count.
[[nodiscard]] inline distill::status sort_of_clevr_masks(const distill::cpu& ctx, std::span<sort_of_clevr_masker> maskers,
                                                distill::host_view<const distill::scene_object, 2> scenes, distill::host_view<const std::int32_t, 1> colours,
                                                distill::host_view<const std::int32_t, 1> questions, distill::host_view<float, 3> masks,
                                                const distill::logic_options& opt = sort_of_clevr_logic_options(),
                                                distill::logic_batch_report* report = nullptr) {
  constexpr const char* fn = "sort_of_clevr_masks";
  if (report) *report = distill::logic_batch_report{};
  if (maskers.empty()) return distill::fail(distill::errc::invalid_argument, fn, "'maskers' is empty: pass at least one prepared masker");
  DISTILL_TRY(distill::logic_detail::check_batch_scenes_and_masks(fn, scenes, masks));
  const distill::index_t B = scenes.extent(0);
  for (const auto& [name, v] : {std::pair{"colours", colours}, std::pair{"questions", questions}}) {
    DISTILL_TRY(distill::check_present(fn, name, v));
    DISTILL_TRY(distill::check_shape(fn, name, v, {B}));
    DISTILL_TRY(distill::check_strides(fn, name, v));
  }
  return distill::logic_detail::run_batch(
      ctx, static_cast<distill::index_t>(maskers.size()), B,
      [&](distill::index_t worker, distill::index_t b, distill::logic_report& rep) {
        return maskers[static_cast<std::size_t>(worker)].mask(distill::logic_detail::batch_scene(scenes, b), colours(b),
                                                              static_cast<sort_of_clevr_question>(questions(b)),
                                                              distill::logic_detail::batch_mask(masks, b), opt, &rep);
      },
      report);
}

}  // namespace vqa
