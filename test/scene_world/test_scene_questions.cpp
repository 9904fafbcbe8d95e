// SPDX-License-Identifier: MIT
// Template questions over the scene world (examples/common/scene_questions*.hpp), on synthetic
// "Fashion-MNIST" images: every question a scene offers and every drawn question against a
// brute-force recomputation written here from the item boxes and classes, a hand-made scene with
// its questions worked out by hand (margins, ties, repeated classes), exactly one answer,
// determinism and the prefix properties, splits, answer balance, the documented file layout
// decoded here independently, round trips, corrupt/changed/missing files refused and regenerated.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "../../examples/common/scene_questions_io.hpp"
#include "scene_world_support.hpp"
#include "support/random.hpp"

namespace fs = std::filesystem;
using namespace examples;
using namespace scene_world_test;

namespace {

// ---- the reference: the rules of the header's top comment, written plainly ----

const char* const class_words[10] = {"t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"};
const char* const category_words[8] = {"tops", "dresses", "trousers", "footwear", "bags", "garments", "accessories", "items"};
// classes: 0 T-shirt, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot
const std::vector<std::vector<int>> category_classes = {{0, 2, 4, 6}, {3}, {1}, {5, 7, 9}, {8}, {0, 2, 4, 6, 3, 1}, {5, 7, 9, 8}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}};

double centre_x(const scene_item& it) { return (it.box.x1 + it.box.x2) / 2.0; }
double centre_y(const scene_item& it) { return (it.box.y1 + it.box.y2) / 2.0; }
double distance(const scene_item& a, const scene_item& b) {
  const double dx = centre_x(a) - centre_x(b), dy = centre_y(a) - centre_y(b);
  return std::sqrt(dx * dx + dy * dy);
}
int items_of_class(const scene& sc, int c) {
  int n = 0;
  for (const auto& it : sc.items) n += it.cls == c;
  return n;
}
int index_of_class(const scene& sc, int c) {
  for (std::size_t i = 0; i < sc.items.size(); ++i)
    if (sc.items[i].cls == c) return static_cast<int>(i);
  return -1;
}

/// A question as the reference sees it.
struct reference_question {
  int family = 0, subject = 0, object = 255, answer = 0, named = 255, other = 255, counted = 0;
  std::string text;
  auto key() const { return std::make_tuple(family, subject, object); }
};

/// Every question the scene offers, by the rules, with the words it should read as.
std::vector<reference_question> reference_questions(const scene& sc, double m, double t) {
  std::vector<reference_question> out;
  const char* const openings[4] = {"what is left of the ", "what is above the ", "what is closest to the ", "what is furthest from the "};
  for (int f = 0; f < 4; ++f)
    for (int c = 0; c < 10; ++c) {
      if (items_of_class(sc, c) != 1) continue;
      const int r = index_of_class(sc, c);
      const scene_item& ref = sc.items[static_cast<std::size_t>(r)];
      std::vector<std::pair<double, int>> cands;  // (distance, item)
      for (std::size_t i = 0; i < sc.items.size(); ++i) {
        if (static_cast<int>(i) == r) continue;
        if (f == 0 && !(centre_x(ref) - centre_x(sc.items[i]) > m)) continue;
        if (f == 1 && !(centre_y(ref) - centre_y(sc.items[i]) > m)) continue;
        cands.push_back({distance(ref, sc.items[i]), static_cast<int>(i)});
      }
      if (cands.empty()) continue;
      std::sort(cands.begin(), cands.end());
      if (f == 3) std::reverse(cands.begin(), cands.end());
      if (cands.size() > 1 && !(std::fabs(cands[1].first - cands[0].first) > t)) continue;
      reference_question q;
      q.family = f, q.subject = c, q.named = r, q.other = cands[0].second;
      q.answer = sc.items[static_cast<std::size_t>(q.other)].cls;
      q.text = std::string(openings[f]) + class_words[c] + "?";
      out.push_back(q);
    }
  for (int k = 0; k < 8; ++k) {
    reference_question q;
    q.family = 4, q.subject = k;
    int n = 0;
    for (std::size_t i = 0; i < sc.items.size(); ++i)
      if (std::find(category_classes[static_cast<std::size_t>(k)].begin(), category_classes[static_cast<std::size_t>(k)].end(), sc.items[i].cls) !=
          category_classes[static_cast<std::size_t>(k)].end())
        ++n, q.counted |= 1 << i;
    q.answer = 10 + n;
    q.text = std::string("how many ") + category_words[k] + " are there?";
    out.push_back(q);
  }
  for (int a = 0; a < 10; ++a)
    for (int b = 0; b < 10; ++b) {
      if (a == b || items_of_class(sc, a) != 1 || items_of_class(sc, b) != 1) continue;
      const scene_item &ia = sc.items[static_cast<std::size_t>(index_of_class(sc, a))], &ib = sc.items[static_cast<std::size_t>(index_of_class(sc, b))];
      if (!(std::fabs(centre_y(ia) - centre_y(ib)) > m)) continue;
      reference_question q;
      q.family = 5, q.subject = a, q.object = b, q.named = index_of_class(sc, a), q.other = index_of_class(sc, b);
      q.answer = centre_y(ia) < centre_y(ib) ? 18 : 17;  // yes : no
      q.text = std::string("is the ") + class_words[a] + " above the " + class_words[b] + "?";
      out.push_back(q);
    }
  return out;
}

/// Whether a generated question is the reference one (every field, and its words).
bool same(const scene_question& q, const reference_question& r) {
  return static_cast<int>(q.family) == r.family && q.subject == r.subject && q.object == r.object && q.answer == r.answer && q.named_item == r.named &&
         q.other_item == r.other && q.counted == r.counted && question_text(q) == r.text;
}

/// Checks every question of a set against the reference on its scene; returns how many were checked.
std::size_t check_against_reference(const scene_set& world, const scene_question_set& qs) {
  std::size_t checked = 0;
  REQUIRE(qs.size() == world.size() * qs.params.questions_per_scene);
  for (std::size_t k = 0; k < world.size(); ++k) {
    const auto ref = reference_questions(world.scenes[k], qs.params.direction_margin, qs.params.tie_margin);
    for (const scene_question& q : qs.of_scene(k)) {
      INFO("scene " << k << ": " << question_text(q) << " -> " << answer_name(q.answer));
      REQUIRE(q.scene == k);
      const auto it = std::find_if(ref.begin(), ref.end(), [&](const reference_question& r) { return same(q, r); });
      CHECK(it != ref.end());
      ++checked;
    }
  }
  return checked;
}

scene_question_params question_params(std::uint32_t per_scene, std::uint64_t seed = 5) {
  scene_question_params q;
  q.seed = seed, q.questions_per_scene = per_scene;
  return q;
}

scene_item item_at(std::uint8_t cls, int x1, int y1, int x2, int y2) {
  scene_item it;
  it.cls = cls, it.box = {x1, y1, x2, y2};
  return it;
}

void reseal_questions(std::vector<unsigned char>& f) {
  put(&f[80], fnv(f.data() + 96, f.size() - 96), 8);
  put(&f[88], fnv(f.data(), 88), 8);
}

}  // namespace

TEST_CASE("scene questions: every question a scene offers, and every drawn one, is the brute-force one", "[scene_questions]") {
  const auto data = synthetic_fashion(40, 12, 21);
  for (const scene_split split : {scene_split::train, scene_split::validation, scene_split::test}) {
    const auto p = small_params(split, 150, 3);
    const scene_set world = generate_scenes(scene_sources(data, p), p);
    for (const auto& q : {question_params(8), [] {
                            auto o = question_params(8, 9);
                            o.direction_margin = 3, o.tie_margin = 1;
                            return o;
                          }()}) {
      // the candidate lists agree both ways: nothing missing, nothing extra
      std::size_t offered = 0;
      for (const scene& sc : world.scenes) {
        const auto ref = reference_questions(sc, q.direction_margin, q.tie_margin);
        const auto got = question_candidates(sc, q);
        CHECK(got.size() == ref.size());
        for (const auto& r : ref) {
          INFO(r.text);
          CHECK(std::count_if(got.begin(), got.end(), [&](const scene_question& g) { return same(g, r); }) == 1);
        }
        offered += ref.size();
      }
      CHECK(offered > 150 * 12);
      const scene_question_set qs = generate_questions(world, q);
      CHECK(check_against_reference(world, qs) == 150 * 8);
    }
  }
}

TEST_CASE("scene questions: a hand-made scene, margins, ties and repeated classes", "[scene_questions]") {
  namespace fc = fashion_class;
  scene sc;  // centres: coat (48, 25), trouser (48, 60), bag (14, 52), sneakers (36, 84) and (60, 84)
  sc.items = {item_at(fc::coat, 40, 17, 56, 33), item_at(fc::trouser, 40, 52, 56, 68), item_at(fc::bag, 8, 46, 20, 58),
              item_at(fc::sneaker, 30, 78, 42, 90), item_at(fc::sneaker, 54, 78, 66, 90)};
  scene_question_params q;  // margins 8 and 4
  const auto all = question_candidates(sc, q);
  auto find = [&](question_family f, std::uint8_t subject, std::uint8_t object = no_argument) -> const scene_question* {
    for (const auto& c : all)
      if (c.family == f && c.subject == subject && c.object == object) return &c;
    return nullptr;
  };
  // left of the coat: the bag (d 43.4) and the left sneaker (d 60.2) are left of it by more than 8 px
  const scene_question* l = find(question_family::left_of, fc::coat);
  REQUIRE(l);
  CHECK(l->answer == answer_for_class(fc::bag));
  CHECK(l->named_item == 0);
  CHECK(l->other_item == 2);
  CHECK(question_text(*l) == "what is left of the coat?");
  // left of the trousers: the left sneaker (d 26.8) beats the bag (d 34.9) by more than 4 px
  REQUIRE(find(question_family::left_of, fc::trouser));
  CHECK(find(question_family::left_of, fc::trouser)->other_item == 3);
  CHECK(find(question_family::left_of, fc::trouser)->answer == answer_for_class(fc::sneaker));
  // closest to the trousers: the two sneakers tie (26.8 each): no question, though both are sneakers
  CHECK_FALSE(find(question_family::closest_to, fc::trouser));
  // nothing is left of the bag; above the bag only the coat (the trousers are 8 px lower: not strictly more)
  CHECK_FALSE(find(question_family::left_of, fc::bag));
  REQUIRE(find(question_family::above, fc::bag));
  CHECK(find(question_family::above, fc::bag)->answer == answer_for_class(fc::coat));
  CHECK_FALSE(find(question_family::above, fc::coat));
  // the sneakers appear twice: never named
  for (const auto& c : all) CHECK((c.subject != fc::sneaker || c.family == question_family::count));
  for (const auto& c : all) CHECK(c.object != fc::sneaker);
  // furthest from the coat: the two sneakers tie again (60.2 each); from the bag: the right sneaker
  CHECK_FALSE(find(question_family::furthest_from, fc::coat));
  REQUIRE(find(question_family::furthest_from, fc::bag));
  CHECK(find(question_family::furthest_from, fc::bag)->other_item == 4);
  // is_above: the coat above the trousers; trousers and bag 8 px apart vertically: no question
  REQUIRE(find(question_family::is_above, fc::coat, fc::trouser));
  CHECK(find(question_family::is_above, fc::coat, fc::trouser)->answer == answer_yes);
  CHECK(find(question_family::is_above, fc::trouser, fc::coat)->answer == answer_no);
  CHECK(question_text(*find(question_family::is_above, fc::trouser, fc::coat)) == "is the trouser above the coat?");
  CHECK_FALSE(find(question_family::is_above, fc::trouser, fc::bag));
  // counts
  const int expected[8] = {1, 0, 1, 2, 1, 2, 3, 5};  // tops dresses trousers footwear bags garments accessories items
  for (int k = 0; k < 8; ++k) {
    const scene_question* c = find(question_family::count, static_cast<std::uint8_t>(k));
    REQUIRE(c);
    CHECK(c->answer == answer_for_count(expected[k]));
  }
  CHECK(find(question_family::count, static_cast<std::uint8_t>(question_category::footwear))->counted == 0b11000);
  CHECK(question_text(*find(question_family::count, 3)) == "how many footwear are there?");
  // with a 7 px direction margin the trousers (y 60) are below the bag (y 52) by more than the margin
  q.direction_margin = 7;
  const auto loose = question_candidates(sc, q);
  CHECK(std::any_of(loose.begin(), loose.end(), [](const scene_question& c) {
    return c.family == question_family::is_above && c.subject == fc::trouser && c.object == fc::bag && c.answer == answer_no;
  }));
}

TEST_CASE("scene questions: each has exactly one answer and well-formed tokens", "[scene_questions]") {
  const auto data = synthetic_fashion(40, 12, 22);
  const auto p = small_params(scene_split::train, 200, 4);
  const scene_set world = generate_scenes(scene_sources(data, p), p);
  const auto q = question_params(10);
  const scene_question_set qs = generate_questions(world, q);
  for (const scene_question& x : qs.questions) {
    const scene& sc = world.scenes[x.scene];
    INFO(question_text(x));
    CHECK(x.length >= 5);
    CHECK(x.length <= question_max_tokens);
    for (int i = 0; i < question_max_tokens; ++i) {
      CHECK(x.tokens[static_cast<std::size_t>(i)] < question_word_count);
      CHECK((i < x.length) == (x.tokens[static_cast<std::size_t>(i)] != 0));
    }
    if (x.family == question_family::count) continue;
    // the named classes are each held by exactly one item, the one the question refers to
    REQUIRE(x.named_item < sc.items.size());
    REQUIRE(x.other_item < sc.items.size());
    CHECK(items_of_class(sc, x.subject) == 1);
    CHECK(sc.items[x.named_item].cls == x.subject);
    const scene_item& r = sc.items[x.named_item];
    if (x.family == question_family::is_above) {
      CHECK(items_of_class(sc, x.object) == 1);
      CHECK(sc.items[x.other_item].cls == x.object);
      CHECK(std::fabs(centre_y(r) - centre_y(sc.items[x.other_item])) > q.direction_margin);
      continue;
    }
    // relations: the answer item qualifies, every other qualifying item is further (nearer) by more than the tie margin
    CHECK(x.answer == sc.items[x.other_item].cls);
    const double d = distance(r, sc.items[x.other_item]);
    for (std::size_t i = 0; i < sc.items.size(); ++i) {
      if (i == x.named_item || i == x.other_item) continue;
      const bool qualifies = x.family == question_family::left_of ? centre_x(r) - centre_x(sc.items[i]) > q.direction_margin
                             : x.family == question_family::above ? centre_y(r) - centre_y(sc.items[i]) > q.direction_margin
                                                                  : true;
      if (!qualifies) continue;
      if (x.family == question_family::furthest_from)
        CHECK(distance(r, sc.items[i]) < d - q.tie_margin);
      else
        CHECK(distance(r, sc.items[i]) > d + q.tie_margin);
    }
  }
}

TEST_CASE("scene questions: deterministic, prefixes of more questions and more scenes", "[scene_questions]") {
  const auto data = synthetic_fashion(40, 12, 23);
  const auto p = small_params(scene_split::train, 80, 6);
  const auto src = scene_sources(data, p);
  const scene_set world = generate_scenes(src, p);
  const scene_question_set a = generate_questions(world, question_params(7)), b = generate_questions(world, question_params(7));
  CHECK(a.questions == b.questions);
  const scene_question_set fewer = generate_questions(world, question_params(3));
  for (std::size_t k = 0; k < world.size(); ++k) {
    CHECK(std::equal(fewer.of_scene(k).begin(), fewer.of_scene(k).end(), a.of_scene(k).begin()));
    const auto one = questions_for_scene(world.scenes[k], p.seed, p.split, static_cast<std::uint32_t>(k), 7, question_params(7));
    CHECK(std::equal(one.begin(), one.end(), a.of_scene(k).begin()));
  }
  auto p_small = p;
  p_small.scenes = 30;
  const scene_question_set prefix = generate_questions(generate_scenes(src, p_small), question_params(7));
  REQUIRE(prefix.size() == 30 * 7);
  CHECK(std::equal(prefix.questions.begin(), prefix.questions.end(), a.questions.begin()));
  // another question seed, another world seed: other questions
  CHECK(generate_questions(world, question_params(7, 6)).questions != a.questions);
  auto p_other = p;
  p_other.seed = 60;
  const scene_set other_world = generate_scenes(src, p_other);
  const scene_question_set c = generate_questions(other_world, question_params(7));
  CHECK(c.questions != a.questions);
  check_against_reference(other_world, c);
  // a question repeats in its scene only once every question with its family and answer was asked
  std::size_t repeats = 0;
  for (std::size_t k = 0; k < world.size(); ++k) {
    const auto asked = a.of_scene(k);
    const auto ref = reference_questions(world.scenes[k], 8, 4);
    for (std::size_t j = 0; j < asked.size(); ++j) {
      if (std::find(asked.begin(), asked.begin() + static_cast<std::ptrdiff_t>(j), asked[j]) == asked.begin() + static_cast<std::ptrdiff_t>(j)) continue;
      ++repeats;
      for (const auto& r : ref)
        if (r.family == static_cast<int>(asked[j].family) && r.answer == asked[j].answer)
          CHECK(std::any_of(asked.begin(), asked.begin() + static_cast<std::ptrdiff_t>(j), [&](const scene_question& x) { return same(x, r); }));
    }
  }
  CHECK(repeats > 0);
  CHECK(repeats < a.size() / 2);
  // varied: many different questions over the set
  std::map<std::tuple<int, int, int>, int> kinds;
  for (const auto& x : a.questions) ++kinds[{static_cast<int>(x.family), x.subject, x.object}];
  CHECK(kinds.size() > 40);
  CHECK_THROWS_AS(generate_questions(world, question_params(0)), std::invalid_argument);
  auto bad = question_params(3);
  bad.tie_margin = -1;
  CHECK_THROWS_AS(generate_questions(world, bad), std::invalid_argument);
}

TEST_CASE("scene questions: questions of a split are about that split's scenes", "[scene_questions]") {
  const auto data = synthetic_fashion(40, 12, 24);
  const auto pt = small_params(scene_split::train, 60, 8), ps = small_params(scene_split::test, 60, 8);
  const scene_set train = generate_scenes(scene_sources(data, pt), pt), test = generate_scenes(scene_sources(data, ps), ps);
  const auto q = question_params(6);
  const scene_question_set qt = generate_questions(train, q), qs = generate_questions(test, q);
  CHECK(qt.split == scene_split::train);
  CHECK(qs.split == scene_split::test);
  CHECK(qs.scenes == 60);
  CHECK(qs.questions != qt.questions);
  // every test question refers to items of its test scene (whose images are test images) and holds there
  check_against_reference(test, qs);
  for (const auto& x : qs.questions) {
    REQUIRE(x.scene < test.size());
    for (const std::uint8_t i : {x.named_item, x.other_item})
      if (i != no_item) {
        REQUIRE(i < test.scenes[x.scene].items.size());
        CHECK(data.test.labels[test.scenes[x.scene].items[i].source] == test.scenes[x.scene].items[i].cls);
      }
  }
  // a test question file is not accepted for the training scenes
  const fs::path dir = temp_dir("questions_split"), file = dir / question_file_name(ps, q);
  write_question_set(file, qs, test);
  CHECK(read_question_set(file, &q, &test).status == scene_file_status::ok);
  const question_read_result r = read_question_set(file, &q, &train);
  CHECK(r.status == scene_file_status::changed);
  CHECK_THROWS_AS(write_question_set(file, qs, train), std::invalid_argument);
  fs::remove_all(dir);
}

TEST_CASE("scene questions: answers are balanced within each family", "[scene_questions]") {
  const auto data = synthetic_fashion(40, 12, 25);
  const auto p = small_params(scene_split::train, 2500, 12);
  const scene_set world = generate_scenes(scene_sources(data, p), p);
  const scene_question_set qs = generate_questions(world, question_params(4));
  const question_statistics w = measure_questions(qs);
  INFO(describe_answers(w));
  // measure_questions counts what a plain tally counts
  std::array<std::array<std::size_t, answer_count>, question_family_count> tally{};
  for (const auto& x : qs.questions) ++tally[static_cast<std::size_t>(x.family)][x.answer];
  CHECK(tally == w.answers);
  CHECK(w.questions == 10000);
  const std::string table = describe_answers(w);
  for (const auto name : question_family_names) CHECK(table.find(std::string(name) + " (") != std::string::npos);
  CHECK(table.find("yes ") != std::string::npos);
  for (int f = 0; f < question_family_count; ++f) {
    INFO(question_family_names[static_cast<std::size_t>(f)]);
    const double share = static_cast<double>(w.per_family[static_cast<std::size_t>(f)]) / 10000.0;
    CHECK(share > 0.07);  // every family is asked
    CHECK(share < 0.32);
    if (f == static_cast<int>(question_family::is_above)) {
      CHECK(std::fabs(w.answer_share(f, answer_yes) - 0.5) < 0.05);
      CHECK(w.distinct_answers(f) == 2);
    } else {
      CHECK(w.max_answer_share(f) < 0.30);  // no answer dominates
      CHECK(w.distinct_answers(f) >= 6);
    }
  }
  for (int n = 0; n <= 5; ++n) CHECK(w.answer_share(static_cast<int>(question_family::count), answer_for_count(n)) > 0.01);
  for (int k = 0; k < question_category_count; ++k) CHECK(w.per_category[static_cast<std::size_t>(k)] > 100);
  // without the answer-first draw the layout would dominate: the most common closest_to answer of all candidates
  std::array<std::size_t, answer_count> offered{};
  std::size_t closest = 0;
  for (const scene& sc : world.scenes)
    for (const auto& c : question_candidates(sc, qs.params))
      if (c.family == question_family::closest_to) ++offered[c.answer], ++closest;
  CHECK(static_cast<double>(*std::max_element(offered.begin(), offered.end())) / static_cast<double>(closest) >
        w.max_answer_share(static_cast<int>(question_family::closest_to)) + 0.1);
}

TEST_CASE("scene questions: the file layout is the documented one and round-trips", "[scene_questions]") {
  const auto data = synthetic_fashion(40, 12, 26);
  const auto p = small_params(scene_split::validation, 30);
  const scene_set world = generate_scenes(scene_sources(data, p), p);
  const auto q = question_params(5);
  const scene_question_set qs = generate_questions(world, q);
  const fs::path dir = temp_dir("questions_layout"), file = dir / question_file_name(p, q), world_file = dir / scene_file_name(p);
  CHECK(question_file_name(p, q) == "questions-validation-n30-q5-seed5-world7.bin");
  write_question_set(file, qs, world);
  write_scene_set(world_file, world, data.train);
  const auto f = read_bytes(file), wf = read_bytes(world_file);
  REQUIRE(f.size() == 96 + 20 * 150);
  CHECK(std::string(f.begin(), f.begin() + 8) == "FMQUESTS");
  CHECK(le(&f[8], 4) == 1);  // format version
  CHECK(le(&f[12], 4) == question_generator_version);
  CHECK(le(&f[16], 8) == 5);  // question seed
  CHECK(le(&f[24], 4) == 5);  // per scene
  CHECK(le(&f[28], 4) == 8);  // direction margin
  CHECK(le(&f[32], 4) == 4);  // tie margin
  CHECK(le(&f[36], 4) == 1);  // validation
  CHECK(le(&f[40], 8) == 7);  // world seed
  CHECK(le(&f[48], 4) == 30);
  CHECK(le(&f[52], 4) == 96);
  CHECK(le(&f[56], 8) == le(&wf[72], 8));  // the world file's payload checksum
  CHECK(le(&f[56], 8) == fnv(wf.data() + 88, wf.size() - 88));
  CHECK(le(&f[64], 2) == 33);
  CHECK(le(&f[66], 2) == 19);
  CHECK(le(&f[68], 4) == 8);
  CHECK(le(&f[72], 8) == f.size() - 96);
  CHECK(le(&f[80], 8) == fnv(f.data() + 96, f.size() - 96));
  CHECK(le(&f[88], 8) == fnv(f.data(), 88));
  // every record, byte by byte
  for (std::size_t i = 0; i < qs.size(); ++i) {
    const unsigned char* b = &f[96 + 20 * i];
    const scene_question& x = qs.questions[i];
    CHECK(le(b, 4) == i / 5);
    CHECK(b[4] == static_cast<int>(x.family));
    CHECK(b[5] == x.answer);
    CHECK(b[6] == x.subject);
    CHECK(b[7] == (x.family == question_family::is_above ? x.object : 255));
    CHECK(b[8] == x.named_item);
    CHECK(b[9] == x.other_item);
    CHECK(b[10] == x.counted);
    CHECK(b[11] == x.length);
    for (int t = 0; t < 8; ++t) CHECK(b[12 + t] == (t < x.length ? x.tokens[static_cast<std::size_t>(t)] : 0));
  }
  const question_read_result r = read_question_set(file, &q, &world);
  INFO(r.message);
  REQUIRE(r.status == scene_file_status::ok);
  CHECK(r.data.params == q);
  CHECK(r.data.split == scene_split::validation);
  CHECK(r.data.world_seed == 7);
  CHECK(r.data.scenes == 30);
  CHECK(r.data.side == 96);
  CHECK(r.data.questions == qs.questions);
  CHECK(read_question_set(file).status == scene_file_status::ok);  // without expectations: the records alone
  fs::remove_all(dir);
}

TEST_CASE("scene questions: corrupt, truncated, changed and missing files are refused and regenerated", "[scene_questions]") {
  const auto data = synthetic_fashion(40, 12, 27);
  const auto p = small_params(scene_split::test, 20);
  const scene_set world = generate_scenes(scene_sources(data, p), p);
  const auto q = question_params(6);
  const fs::path dir = temp_dir("questions_corrupt"), file = dir / question_file_name(p, q);
  std::ostringstream log;
  question_load_outcome how{};
  const scene_question_set made = load_or_generate_questions(file, q, world, &how, log);
  CHECK(how == scene_load_outcome::generated_missing);
  const scene_question_set again = load_or_generate_questions(file, q, world, &how, log);
  CHECK(how == scene_load_outcome::loaded);
  CHECK(again.questions == made.questions);
  const auto good = read_bytes(file);

  auto expect = [&](std::vector<unsigned char> bytes, scene_file_status want, const std::string& why) {
    INFO(why);
    write_bytes(file, bytes);
    const question_read_result r = read_question_set(file, &q, &world);
    INFO(r.message);
    CHECK(r.status == want);
    CHECK(r.data.questions.empty());
  };
  {
    auto b = good;
    b[b.size() - 12] ^= 0x10;
    expect(b, scene_file_status::corrupt, "payload byte flipped");
  }
  {
    auto b = good;
    b[20] ^= 1;  // the seed, without resealing
    expect(b, scene_file_status::corrupt, "header byte flipped");
  }
  expect(std::vector<unsigned char>(good.begin(), good.end() - 20), scene_file_status::corrupt, "truncated");
  expect(std::vector<unsigned char>(good.begin(), good.begin() + 60), scene_file_status::corrupt, "shorter than the header");
  {
    auto b = good;
    b.push_back(0);
    expect(b, scene_file_status::corrupt, "trailing byte");
  }
  {
    auto b = good;
    b[0] = 'X';
    expect(b, scene_file_status::corrupt, "bad magic");
  }
  // records that contradict themselves or their scene, resealed so every checksum holds
  auto first = [&](auto pred) {
    for (std::size_t i = 0; i < made.size(); ++i)
      if (pred(made.questions[i])) return 96 + 20 * i;
    FAIL("no such question");
    return std::size_t{0};
  };
  {
    auto b = good;
    b[first([](const scene_question&) { return true; }) + 12 + 7] = 3;  // a word in the padding
    reseal_questions(b);
    expect(b, scene_file_status::corrupt, "token after the end");
  }
  {
    auto b = good;
    const std::size_t at = first([](const scene_question& x) { return is_relation(x.family); });
    b[at + 5] = static_cast<unsigned char>((b[at + 5] + 1) % 10);  // another class: well formed, false on the scene
    reseal_questions(b);
    expect(b, scene_file_status::corrupt, "a relation's answer changed");
  }
  {
    auto b = good;
    const std::size_t at = first([](const scene_question& x) { return x.family == question_family::is_above; });
    b[at + 5] = b[at + 5] == answer_yes ? answer_no : answer_yes;
    reseal_questions(b);
    expect(b, scene_file_status::corrupt, "yes and no swapped");
  }
  {
    auto b = good;
    b[96] = 7;  // the first record's scene index
    reseal_questions(b);
    expect(b, scene_file_status::corrupt, "scene index");
  }
  {
    auto b = good;
    b[12] = static_cast<unsigned char>(question_generator_version + 1);
    reseal_questions(b);
    expect(b, scene_file_status::changed, "generator version");
  }
  {
    auto b = good;
    b[64] = 34;  // another vocabulary
    reseal_questions(b);
    expect(b, scene_file_status::changed, "vocabulary");
  }
  write_bytes(file, good);
  auto other = q;
  other.tie_margin = 2;
  CHECK(read_question_set(file, &other, &world).status == scene_file_status::changed);
  auto p_other = p;
  p_other.seed = 8;
  const scene_set other_world = generate_scenes(scene_sources(data, p_other), p_other);
  CHECK(read_question_set(file, &q, &other_world).status == scene_file_status::changed);
  scene_set moved = world;  // same parameters, one item moved: another world checksum
  moved.scenes[0].items[0].box.x1 += 1;
  const question_read_result rm = read_question_set(file, &q, &moved);
  CHECK(rm.status == scene_file_status::changed);
  CHECK(rm.message.find("world checksum") != std::string::npos);
  CHECK(read_question_set(dir / "none.bin").status == scene_file_status::missing);

  // load_or_generate replaces a corrupt file and a changed one
  auto bad = good;
  bad[200] ^= 0xFF;
  write_bytes(file, bad);
  const scene_question_set fixed = load_or_generate_questions(file, q, world, &how, log);
  CHECK(how == scene_load_outcome::regenerated_corrupt);
  CHECK(fixed.questions == made.questions);
  CHECK(read_bytes(file) == good);
  const scene_question_set changed = load_or_generate_questions(file, other, world, &how, log);
  CHECK(how == scene_load_outcome::regenerated_changed);
  CHECK(changed.params == other);
  const scene_question_set rewritten = load_or_generate_questions(file, other, other_world, &how, log);
  CHECK(how == scene_load_outcome::regenerated_changed);
  CHECK(rewritten.world_seed == 8);
  check_against_reference(other_world, rewritten);
  fs::remove_all(dir);
}
