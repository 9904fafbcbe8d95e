// SPDX-License-Identifier: MIT
#pragma once
// Template questions over the scene world (scene_world.hpp), for visual question answering: each
// question names items by their class, has exactly one correct answer from a fixed vocabulary, is
// a short token sequence for a transformer, and carries the indices of the items it is about.
//
// ---- Geometry -----------------------------------------------------------------------------------
// An item's position is the centre of its tight box, kept doubled so it stays an integer:
// X = x1 + x2, Y = y1 + y2 (pixels x 2). The distance of two items is that of their centres,
// d(a, b) = sqrt((Xa - Xb)^2 + (Ya - Yb)^2) / 2 pixels. Two margins (canvas pixels, in the
// parameters): m = direction_margin, t = tie_margin. "b is left of a" means Xa - Xb > 2m, "b is
// above a" means Ya - Yb > 2m (y grows downwards), both strict.
//
// ---- Families (the rule that computes each answer) ---------------------------------------------
// A class is *named* only when exactly one item of the scene has it; R is that item.
//   left_of        "what is left of the <c>"       candidates: the items left of R.
//   above          "what is above the <c>"         candidates: the items above R.
//   closest_to     "what is closest to the <c>"    candidates: every other item.
//   furthest_from  "what is furthest from the <c>" candidates: every other item.
//       The answer item is the candidate nearest to R (left_of, above, closest_to) or furthest
//       from R (furthest_from); the answer is its class. The question exists only when there is a
//       candidate and the runner-up (the next candidate in the same order, whatever its class) is
//       more than t further from (nearer to, for furthest_from) R than the answer item:
//       |d(R, runner-up) - d(R, answer)| > t. So "left of" is "the nearest of the items left of".
//   count          "how many <category> are there"  answer: the number of items whose class is in
//       the category (0..6); always exists. Categories:
//         tops {T-shirt, Pullover, Coat, Shirt}   dresses {Dress}   trousers {Trouser}
//         footwear {Sandal, Sneaker, Ankle boot}  bags {Bag}
//         garments = tops + dresses + trousers     accessories = footwear + bags
//         items = every class
//   is_above       "is the <a> above the <b>"       a != b, both named; exists when |Ya - Yb| > 2m;
//       answer yes when Ya < Yb (a higher on the canvas), no otherwise.
//
// ---- Answers and words --------------------------------------------------------------------------
// One answer index space of answer_count = 19: 0..9 the Fashion-MNIST classes (fashion_class),
// 10..16 the counts 0..6 (answer_for_count), 17 no, 18 yes. Words (question_words, 33, index 0 is
// padding): "what is left of the above closest to furthest from how many are there", then the ten
// class words (15 + class), then the eight category words (25 + category). A question is at most 6
// words, padded with 0 to question_max_tokens = 8; `length` says how many are real.
// Items a question refers to (indices into its scene's items): named_item = R (relations), a
// (is_above); other_item = the answer item (relations), b (is_above); count questions have none
// and set bit i of `counted` for every counted item i.
//
// ---- Drawing a question (balance) --------------------------------------------------------------
// A scene's *candidates* are all its questions above that exist (each with its answer). Question
// j of scene k of a split draws from rng = splitmix64(mix64(mix64(mix64(base) + k) + j)), base =
// mix64(mix64(seed) ^ mix64(world seed) ^ "QUEST" ^ tag(split)) (the world's split tags).
// A draw: a family uniformly from the six (again, uniformly among the families with candidates,
// when the scene has none of it), then the answer first, uniformly among the distinct answers of
// that family's candidates; the draw is kept with probability answer_acceptance_percent(family,
// answer) / 100, else drawn again (16 draws at most, then the last is kept); then a candidate with
// that answer, uniformly among those not asked yet about the scene (among all of them when every
// one was asked). Drawing the answer before the question keeps an answer that many questions of a
// scene lead to from dominating (a scene offering answers A gives each 1/|A|); the acceptance
// table corrects what the layout makes common across scenes (the trousers sit in the middle, so
// they are most often what is closest):
//   left_of: Bag 50 %    closest_to: Trouser 20 %, Bag 70 %    everything else 100 %.
// No state crosses scenes, so question j of scene k is a function of (seed, world seed, split, k, j)
// alone: n questions per scene are a prefix of n + 1, n scenes a prefix of n + 1, and generation
// may run in parallel. A question repeats in a scene only when its family and answer were drawn
// again and every question with them was asked already (avoiding repeats by drawing again would
// shift the balance towards the count family, which always has eight candidates). A scene offers
// about 19 questions (8 counts, 4.3 is_above, 1.4 left_of, 1.4 above, 1.9 closest_to, 1.6
// furthest_from); with 10 questions a scene, 28 % of them repeat an earlier one of their scene.
// Questions come from the scenes of one split, so train, validation and test questions are
// about disjoint images. measure_questions counts the answers per family. Measured on 4 000
// train scenes of real Fashion-MNIST (defaults, 10 questions a scene), the most common answer of
// each family holds: left_of 25 % (Bag), above 20 % (Trouser), closest_to 20 % (Bag),
// furthest_from 19 % (Ankle boot), count 24 % (1), is_above 50.5 % (yes); the families hold 15,
// 17, 10, 16, 24 and 18 % of the questions. Some answers are rare by construction (a coat is
// seldom left of anything; 6 items in 0.7 % of count questions).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "random.hpp"
#include "scene_world.hpp"

namespace examples {

// ---- families, categories, vocabularies ------------------------------------------------------

enum class question_family : std::uint8_t { left_of = 0, above = 1, closest_to = 2, furthest_from = 3, count = 4, is_above = 5 };
inline constexpr int question_family_count = 6;
inline constexpr std::array<std::string_view, question_family_count> question_family_names = {"left_of",       "above", "closest_to",
                                                                                              "furthest_from", "count", "is_above"};
/// Whether a family asks for the class of an item in a relation to a named one.
inline constexpr bool is_relation(question_family f) { return static_cast<int>(f) <= static_cast<int>(question_family::furthest_from); }

enum class question_category : std::uint8_t { tops = 0, dresses = 1, trousers = 2, footwear = 3, bags = 4, garments = 5, accessories = 6, items = 7 };
inline constexpr int question_category_count = 8;
inline constexpr std::array<std::string_view, question_category_count> question_category_names = {
    "tops", "dresses", "trousers", "footwear", "bags", "garments", "accessories", "items"};

/// Whether class c belongs to the category (the table at the top).
inline constexpr bool category_contains(question_category k, std::uint8_t c) {
  namespace fc = fashion_class;
  const bool top = c == fc::tshirt || c == fc::pullover || c == fc::coat || c == fc::shirt;
  const bool shoe = c == fc::sandal || c == fc::sneaker || c == fc::ankle_boot;
  switch (k) {
    case question_category::tops: return top;
    case question_category::dresses: return c == fc::dress;
    case question_category::trousers: return c == fc::trouser;
    case question_category::footwear: return shoe;
    case question_category::bags: return c == fc::bag;
    case question_category::garments: return top || c == fc::dress || c == fc::trouser;
    case question_category::accessories: return shoe || c == fc::bag;
    case question_category::items: return c < fashion_classes;
  }
  return false;
}

// answers: classes, counts, no/yes
inline constexpr int answer_count = 19;
inline constexpr int answer_max_count = 6;
inline constexpr std::uint8_t answer_no = 17, answer_yes = 18;
inline constexpr std::uint8_t answer_for_class(std::uint8_t c) { return c; }
inline constexpr std::uint8_t answer_for_count(int n) { return static_cast<std::uint8_t>(10 + n); }
inline constexpr std::uint8_t answer_for_bool(bool yes) { return yes ? answer_yes : answer_no; }
inline std::string answer_name(std::uint8_t a) {
  if (a < fashion_classes) return std::string(fashion_class_names[a]);
  if (a < answer_no) return std::to_string(a - 10);
  return a == answer_no ? "no" : a == answer_yes ? "yes" : "?";
}

// words
inline constexpr int question_max_tokens = 8;
inline constexpr int question_word_count = 33;
inline constexpr std::array<std::string_view, question_word_count> question_words = {
    "<pad>",   "what",     "is",       "left",     "of",       "the",      "above",   "closest", "to",         "furthest", "from",
    "how",     "many",     "are",      "there",    "t-shirt",  "trouser",  "pullover", "dress",  "coat",       "sandal",   "shirt",
    "sneaker", "bag",      "ankle-boot", "tops",   "dresses",  "trousers", "footwear", "bags",   "garments",   "accessories", "items"};
namespace question_word {
inline constexpr std::uint8_t pad = 0, what = 1, is = 2, left = 3, of = 4, the = 5, above = 6, closest = 7, to = 8, furthest = 9, from = 10,
                              how = 11, many = 12, are = 13, there = 14, first_class = 15, first_category = 25;
}

inline constexpr std::uint8_t no_item = 0xFF;      ///< an item index that refers to nothing
inline constexpr std::uint8_t no_argument = 0xFF;  ///< an unused class argument

struct scene_question {
  std::uint32_t scene = 0;  ///< index of its scene in the split
  question_family family = question_family::left_of;
  std::uint8_t answer = 0;                 ///< answer index (answers above)
  std::uint8_t subject = 0;                ///< the named class; count: the category
  std::uint8_t object = no_argument;       ///< is_above: the second named class; otherwise no_argument
  std::uint8_t named_item = no_item;       ///< the item `subject` names (relations, is_above)
  std::uint8_t other_item = no_item;       ///< relations: the answer item; is_above: the item `object` names
  std::uint8_t counted = 0;                ///< count: bit i set for every counted item i
  std::uint8_t length = 0;                 ///< real tokens
  std::array<std::uint8_t, question_max_tokens> tokens{};  ///< words, 0-padded
  friend bool operator==(const scene_question&, const scene_question&) = default;
};

/// The word sequence of a question with these arguments (its length, the rest padded with 0).
inline std::uint8_t encode_question_tokens(question_family f, std::uint8_t subject, std::uint8_t object,
                                           std::array<std::uint8_t, question_max_tokens>& tokens) {
  namespace w = question_word;
  tokens.fill(w::pad);
  const auto cls = [](std::uint8_t c) { return static_cast<std::uint8_t>(w::first_class + c); };
  std::vector<std::uint8_t> s;
  switch (f) {
    case question_family::left_of: s = {w::what, w::is, w::left, w::of, w::the, cls(subject)}; break;
    case question_family::above: s = {w::what, w::is, w::above, w::the, cls(subject)}; break;
    case question_family::closest_to: s = {w::what, w::is, w::closest, w::to, w::the, cls(subject)}; break;
    case question_family::furthest_from: s = {w::what, w::is, w::furthest, w::from, w::the, cls(subject)}; break;
    case question_family::count: s = {w::how, w::many, static_cast<std::uint8_t>(w::first_category + subject), w::are, w::there}; break;
    case question_family::is_above: s = {w::is, w::the, cls(subject), w::above, w::the, cls(object)}; break;
  }
  std::copy(s.begin(), s.end(), tokens.begin());
  return static_cast<std::uint8_t>(s.size());
}

/// The question as text: "what is left of the sandal?".
inline std::string question_text(const scene_question& q) {
  std::string s;
  for (int i = 0; i < q.length; ++i) {
    if (i) s += ' ';
    s += q.tokens[static_cast<std::size_t>(i)] < question_word_count ? question_words[q.tokens[static_cast<std::size_t>(i)]] : "?";
  }
  return s + "?";
}

// ---- parameters ---------------------------------------------------------------------------------

struct scene_question_params {
  std::uint64_t seed = 1;
  std::uint32_t questions_per_scene = 10;  ///< 1..1000
  int direction_margin = 8;                ///< m, canvas pixels, 0..64: how far a centre must be left of / above another (defaults suit side 96)
  int tie_margin = 4;                      ///< t, canvas pixels, 0..64: how much nearer the answer item must be than the runner-up
  friend bool operator==(const scene_question_params&, const scene_question_params&) = default;
};

inline void validate(const scene_question_params& q) {
  if (q.questions_per_scene < 1 || q.questions_per_scene > 1000)
    throw std::invalid_argument("scene questions: questions_per_scene must be in [1, 1000], not " + std::to_string(q.questions_per_scene));
  if (q.direction_margin < 0 || q.direction_margin > 64)
    throw std::invalid_argument("scene questions: direction_margin must be in [0, 64], not " + std::to_string(q.direction_margin));
  if (q.tie_margin < 0 || q.tie_margin > 64) throw std::invalid_argument("scene questions: tie_margin must be in [0, 64], not " + std::to_string(q.tie_margin));
}

/// The questions of the scenes of one split: questions_per_scene per scene, scene by scene.
struct scene_question_set {
  scene_question_params params;
  scene_split split = scene_split::train;  ///< of the scenes they are about
  std::uint64_t world_seed = 0;            ///< the scene world's seed
  std::uint32_t scenes = 0;
  int side = 96;
  std::vector<scene_question> questions;

  std::size_t size() const { return questions.size(); }
  std::span<const scene_question> of_scene(std::size_t k) const {
    return std::span<const scene_question>(questions).subspan(k * params.questions_per_scene, params.questions_per_scene);
  }
};

// ---- the rules ----------------------------------------------------------------------------------

namespace question_detail {

inline constexpr std::uint64_t question_tag = 0x5155455354ull;  // "QUEST"

/// Distance of the box centres of two items, pixels.
inline double centre_distance(const scene_item& a, const scene_item& b) {
  const double dx = (a.box.x1 + a.box.x2) - (b.box.x1 + b.box.x2), dy = (a.box.y1 + a.box.y2) - (b.box.y1 + b.box.y2);
  return 0.5 * std::sqrt(dx * dx + dy * dy);
}

/// The index of the only item of class c, or -1 when there is none or more than one.
inline int only_item_of(const scene& sc, std::uint8_t c) {
  int found = -1;
  for (std::size_t i = 0; i < sc.items.size(); ++i)
    if (sc.items[i].cls == c) {
      if (found >= 0) return -1;
      found = static_cast<int>(i);
    }
  return found;
}

/// The answer item of a relation question about item r, or -1 when the question does not exist
/// (no candidate, or a runner-up within the tie margin).
inline int relation_answer_item(const scene& sc, std::size_t r, question_family f, const scene_question_params& q) {
  const scene_item& ref = sc.items[r];
  const int rx = ref.box.x1 + ref.box.x2, ry = ref.box.y1 + ref.box.y2;
  int best = -1;
  double best_d = 0, runner_d = 0;
  bool runner = false;
  const bool furthest = f == question_family::furthest_from;
  for (std::size_t i = 0; i < sc.items.size(); ++i) {
    if (i == r) continue;
    const scene_item& it = sc.items[i];
    if (f == question_family::left_of && !(rx - (it.box.x1 + it.box.x2) > 2 * q.direction_margin)) continue;
    if (f == question_family::above && !(ry - (it.box.y1 + it.box.y2) > 2 * q.direction_margin)) continue;
    const double d = centre_distance(ref, it);
    const bool better = best < 0 || (furthest ? d > best_d : d < best_d);
    if (better) {
      if (best >= 0) runner = true, runner_d = best_d;
      best = static_cast<int>(i), best_d = d;
    } else if (!runner || (furthest ? d > runner_d : d < runner_d)) {
      runner = true, runner_d = d;
    }
  }
  if (best < 0 || (runner && !(std::fabs(runner_d - best_d) > q.tie_margin))) return -1;
  return best;
}

}  // namespace question_detail

/// Every question of the scene that exists (the rules at the top), each with its answer and items
/// (scene index 0): the relation families per named class in class order, the eight counts, then
/// is_above over ordered pairs of named classes.
inline std::vector<scene_question> question_candidates(const scene& sc, const scene_question_params& q) {
  using namespace question_detail;
  std::vector<scene_question> out;
  auto add = [&](scene_question c) {
    c.length = encode_question_tokens(c.family, c.subject, c.object, c.tokens);
    out.push_back(c);
  };
  std::vector<int> named(fashion_classes);
  for (int c = 0; c < fashion_classes; ++c) named[static_cast<std::size_t>(c)] = only_item_of(sc, static_cast<std::uint8_t>(c));
  for (int f = 0; f <= static_cast<int>(question_family::furthest_from); ++f)
    for (int c = 0; c < fashion_classes; ++c) {
      const int r = named[static_cast<std::size_t>(c)];
      if (r < 0) continue;
      const int a = relation_answer_item(sc, static_cast<std::size_t>(r), static_cast<question_family>(f), q);
      if (a < 0) continue;
      scene_question x;
      x.family = static_cast<question_family>(f), x.subject = static_cast<std::uint8_t>(c);
      x.answer = answer_for_class(sc.items[static_cast<std::size_t>(a)].cls);
      x.named_item = static_cast<std::uint8_t>(r), x.other_item = static_cast<std::uint8_t>(a);
      add(x);
    }
  for (int k = 0; k < question_category_count; ++k) {
    scene_question x;
    x.family = question_family::count, x.subject = static_cast<std::uint8_t>(k);
    int n = 0;
    for (std::size_t i = 0; i < sc.items.size(); ++i)
      if (category_contains(static_cast<question_category>(k), sc.items[i].cls)) ++n, x.counted = static_cast<std::uint8_t>(x.counted | (1u << i));
    x.answer = answer_for_count(std::min(n, answer_max_count));
    add(x);
  }
  for (int a = 0; a < fashion_classes; ++a)
    for (int b = 0; b < fashion_classes; ++b) {
      const int ia = named[static_cast<std::size_t>(a)], ib = named[static_cast<std::size_t>(b)];
      if (a == b || ia < 0 || ib < 0) continue;
      const scene_item &ta = sc.items[static_cast<std::size_t>(ia)], &tb = sc.items[static_cast<std::size_t>(ib)];
      const int dy = (ta.box.y1 + ta.box.y2) - (tb.box.y1 + tb.box.y2);
      if (std::abs(dy) <= 2 * q.direction_margin) continue;
      scene_question x;
      x.family = question_family::is_above, x.subject = static_cast<std::uint8_t>(a), x.object = static_cast<std::uint8_t>(b);
      x.answer = answer_for_bool(dy < 0);
      x.named_item = static_cast<std::uint8_t>(ia), x.other_item = static_cast<std::uint8_t>(ib);
      add(x);
    }
  return out;
}

/// Percent of the draws of answer a in family f that are kept (the rest draw again): below 100
/// only for the answers the layout offers far more often than the others (the table at the top).
inline constexpr int answer_acceptance_percent(question_family f, std::uint8_t a) {
  if (f == question_family::left_of && a == answer_for_class(fashion_class::bag)) return 50;
  if (f == question_family::closest_to && a == answer_for_class(fashion_class::trouser)) return 20;
  if (f == question_family::closest_to && a == answer_for_class(fashion_class::bag)) return 70;
  return 100;
}
inline constexpr int question_draw_attempts = 16;

/// Questions 0..n-1 of scene `k` of a split (the drawing rule at the top).
inline std::vector<scene_question> questions_for_scene(const scene& sc, std::uint64_t world_seed, scene_split split, std::uint32_t k,
                                                       std::uint32_t n, const scene_question_params& q) {
  const std::vector<scene_question> all = question_candidates(sc, q);
  std::array<std::vector<std::size_t>, question_family_count> by_family;
  for (std::size_t i = 0; i < all.size(); ++i) by_family[static_cast<std::size_t>(all[i].family)].push_back(i);
  std::vector<int> available;
  for (int f = 0; f < question_family_count; ++f)
    if (!by_family[static_cast<std::size_t>(f)].empty()) available.push_back(f);
  const std::uint64_t base = mix64(mix64(q.seed) ^ mix64(world_seed) ^ question_detail::question_tag ^ scene_detail::split_tags[static_cast<int>(split)]);
  std::vector<bool> asked(all.size(), false);
  std::vector<scene_question> out;
  out.reserve(n);
  for (std::uint32_t j = 0; j < n; ++j) {
    splitmix64 r(mix64(mix64(mix64(base) + k) + j));
    int f = 0;
    std::uint8_t answer = 0;
    for (int attempt = 0; attempt < question_draw_attempts; ++attempt) {
      f = static_cast<int>(r.below(question_family_count));
      if (by_family[static_cast<std::size_t>(f)].empty()) f = available[r.below(available.size())];
      std::vector<std::uint8_t> answers;
      for (std::size_t i : by_family[static_cast<std::size_t>(f)]) answers.push_back(all[i].answer);
      std::sort(answers.begin(), answers.end());
      answers.erase(std::unique(answers.begin(), answers.end()), answers.end());
      answer = answers[r.below(answers.size())];
      if (static_cast<int>(r.below(100)) < answer_acceptance_percent(static_cast<question_family>(f), answer)) break;
    }
    std::vector<std::size_t> with, fresh;  // the candidates with that answer; those not asked yet
    for (std::size_t i : by_family[static_cast<std::size_t>(f)])
      if (all[i].answer == answer) {
        with.push_back(i);
        if (!asked[i]) fresh.push_back(i);
      }
    const std::vector<std::size_t>& pool = fresh.empty() ? with : fresh;
    const std::size_t pick = pool[r.below(pool.size())];
    asked[pick] = true;
    scene_question x = all[pick];
    x.scene = k;
    out.push_back(x);
  }
  return out;
}

/// The questions about every scene of a set.
inline scene_question_set generate_questions(const scene_set& world, const scene_question_params& q) {
  validate(q);
  if (world.scenes.size() != world.params.scenes) throw std::invalid_argument("generate_questions: the scene set does not match its parameters");
  scene_question_set s;
  s.params = q, s.split = world.params.split, s.world_seed = world.params.seed, s.scenes = world.params.scenes, s.side = world.params.side;
  s.questions.reserve(static_cast<std::size_t>(world.params.scenes) * q.questions_per_scene);
  for (std::uint32_t k = 0; k < world.params.scenes; ++k) {
    const auto qs = questions_for_scene(world.scenes[k], world.params.seed, world.params.split, k, q.questions_per_scene, q);
    s.questions.insert(s.questions.end(), qs.begin(), qs.end());
  }
  return s;
}

// ---- what came out: answers per family ----------------------------------------------------------

struct question_statistics {
  std::size_t questions = 0;
  std::array<std::size_t, question_family_count> per_family{};
  std::array<std::array<std::size_t, answer_count>, question_family_count> answers{};  ///< [family][answer]
  std::array<std::size_t, question_category_count> per_category{};                     ///< count questions per category
  std::array<std::size_t, answer_count> all_answers{};

  /// Share of family f's questions whose answer is a (0 when the family has none).
  double answer_share(int f, int a) const {
    const std::size_t n = per_family[static_cast<std::size_t>(f)];
    return n ? static_cast<double>(answers[static_cast<std::size_t>(f)][static_cast<std::size_t>(a)]) / static_cast<double>(n) : 0.0;
  }
  /// Share of the most common answer of family f.
  double max_answer_share(int f) const {
    double m = 0;
    for (int a = 0; a < answer_count; ++a) m = std::max(m, answer_share(f, a));
    return m;
  }
  /// How many answers family f gave at least once.
  int distinct_answers(int f) const {
    int n = 0;
    for (std::size_t c : answers[static_cast<std::size_t>(f)]) n += c > 0;
    return n;
  }
};

inline question_statistics measure_questions(const scene_question_set& s) {
  question_statistics w;
  for (const scene_question& q : s.questions) {
    ++w.questions, ++w.per_family[static_cast<std::size_t>(q.family)];
    ++w.answers[static_cast<std::size_t>(q.family)][q.answer], ++w.all_answers[q.answer];
    if (q.family == question_family::count) ++w.per_category[q.subject];
  }
  return w;
}

/// The answer distribution per family as text: one line per family, "answer share%" pairs.
inline std::string describe_answers(const question_statistics& w) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1);
  for (int f = 0; f < question_family_count; ++f) {
    os << question_family_names[static_cast<std::size_t>(f)] << " (" << w.per_family[static_cast<std::size_t>(f)] << "):";
    for (int a = 0; a < answer_count; ++a)
      if (w.answers[static_cast<std::size_t>(f)][static_cast<std::size_t>(a)]) os << "  " << answer_name(static_cast<std::uint8_t>(a)) << " " << 100 * w.answer_share(f, a) << "%";
    os << '\n';
  }
  return os.str();
}

}  // namespace examples
