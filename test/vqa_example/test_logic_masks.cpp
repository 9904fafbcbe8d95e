// The flagship's rule files (examples/vqa_spatial_kd/rules/) on random Sort-of-CLEVR scenes give
// the intended masks, compared with a direct computation of nearest / furthest / same-shape
// objects (squared distances, as the public generator computes answers).
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/logic_masks.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;
using namespace vqa;

namespace {

std::string rules_dir() {
  return (std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "examples" / "vqa_spatial_kd" / "rules").string();
}

// Six objects, one per colour (in shuffled order), centres uniform in [5, 70)² at least 10 px apart.
std::vector<scene_object> sort_of_clevr_scene(distill_test::rng& g, int n = 6) {
  std::vector<int> colours(static_cast<std::size_t>(n));
  std::iota(colours.begin(), colours.end(), 0);
  std::shuffle(colours.begin(), colours.end(), g.engine());
  std::vector<scene_object> s;
  while (static_cast<int>(s.size()) < n) {
    const float x = static_cast<float>(g.uniform(5, 70)), y = static_cast<float>(g.uniform(5, 70));
    bool ok = true;
    for (const auto& o : s) ok = ok && (o.x - x) * (o.x - x) + (o.y - y) * (o.y - y) >= 100.0f;
    if (ok)
      s.push_back({x, y, colours[s.size()], static_cast<std::int32_t>(g.integer(0, 1)), 0, 0});
  }
  return s;
}

double squared(const scene_object& a, const scene_object& b) {
  const double dx = double(a.x) - double(b.x), dy = double(a.y) - double(b.y);
  return dx * dx + dy * dy;
}

// The intended mask, computed directly. `gap` gets the distance margin (pixels) between the
// chosen object and the runner-up for closest/furthest questions (infinity otherwise).
std::vector<float> intended_mask(const std::vector<scene_object>& s, int colour, sort_of_clevr_question q, double* gap) {
  const int n = static_cast<int>(s.size());
  int c = 0;
  while (s[static_cast<std::size_t>(c)].colour != colour) ++c;
  std::vector<float> m(static_cast<std::size_t>(n * n), 0.0f);
  *gap = std::numeric_limits<double>::infinity();
  auto set = [&](int i, int j) { m[static_cast<std::size_t>(i * n + j)] = 1.0f; };
  switch (q) {
    case sort_of_clevr_question::shape:
    case sort_of_clevr_question::horizontal:
    case sort_of_clevr_question::vertical: set(c, c); break;
    case sort_of_clevr_question::closest:
    case sort_of_clevr_question::furthest: {
      const bool closest = q == sort_of_clevr_question::closest;
      std::vector<std::pair<double, int>> d;
      for (int j = 0; j < n; ++j)
        if (j != c) d.push_back({std::sqrt(squared(s[static_cast<std::size_t>(c)], s[static_cast<std::size_t>(j)])), j});
      std::sort(d.begin(), d.end());
      if (!closest) std::reverse(d.begin(), d.end());
      set(c, d[0].second);
      if (d.size() > 1) *gap = std::fabs(d[0].first - d[1].first);
      break;
    }
    case sort_of_clevr_question::count:
      for (int j = 0; j < n; ++j)
        if (s[static_cast<std::size_t>(j)].shape == s[static_cast<std::size_t>(c)].shape) set(c, j);
      break;
  }
  return m;
}

}  // namespace

TEST_CASE("sort-of-clevr: the rule files load and say what they should", "[logic][sort_of_clevr]") {
  sort_of_clevr_rules rules;
  rule_error where;
  const status st = load_sort_of_clevr_rules(rules_dir(), rules, &where);
  INFO(st.to_string());
  REQUIRE(st.ok());
  const char* expected[] = {"10: queried(I) -> relevant(I, I) ^1", "10: queried(I) & closest_to(I, J) -> relevant(I, J) ^1",
                            "10: queried(I) & furthest_from(I, J) -> relevant(I, J) ^1",
                            "10: queried(I) & same_shape(I, J) -> relevant(I, J) ^1"};
  for (std::size_t k = 0; k < 4; ++k) {
    REQUIRE(rules.sets[k].rules().size() == 2);
    CHECK(rules.sets[k].rule_to_string(0) == expected[k]);
    CHECK(rules.sets[k].rule_to_string(1) == "1: !relevant(I, J) ^2");
  }
  CHECK(sort_of_clevr_rule_index(sort_of_clevr_question::shape) == 0);
  CHECK(sort_of_clevr_rule_index(sort_of_clevr_question::vertical) == 0);
  CHECK(sort_of_clevr_rule_index(sort_of_clevr_question::count) == 3);
}

TEST_CASE("sort-of-clevr: masks on random scenes equal the direct computation", "[logic][sort_of_clevr]") {
  sort_of_clevr_rules rules;
  REQUIRE(load_sort_of_clevr_rules(rules_dir(), rules).ok());
  sort_of_clevr_masker masker;
  REQUIRE(masker.prepare(rules).ok());
  distill_test::rng g(401);
  logic_options crisp = sort_of_clevr_logic_options();
  crisp.spatial.softmax_sharpness = std::numeric_limits<double>::infinity();
  const logic_options soft = sort_of_clevr_logic_options();
  int compared_soft = 0, near_ties = 0;
  int max_iterations = 0;
  for (int scene_index = 0; scene_index < 150; ++scene_index) {
    const int n = scene_index % 10 == 9 ? static_cast<int>(g.integer(2, 5)) : 6;  // a few smaller scenes
    const auto s = sort_of_clevr_scene(g, n);
    const auto sv = make_view(s.data(), static_cast<index_t>(n));
    for (int colour = 0; colour < n; ++colour)
      for (int q = 0; q < sort_of_clevr_question_count; ++q) {
        const auto question = static_cast<sort_of_clevr_question>(q);
        double gap = 0;
        const auto want = intended_mask(s, colour, question, &gap);
        INFO("scene " << scene_index << ", colour " << colour << ", question " << q);
        std::vector<float> got(static_cast<std::size_t>(n * n), -1.0f);
        logic_report rep;
        REQUIRE(masker.mask(sv, colour, question, make_view(got.data(), n, n), crisp, &rep).ok());
        max_iterations = std::max(max_iterations, rep.iterations);
        CHECK_CLOSE("crisp mask", got, want, (distill_test::tolerance{1e-5, 0}));
        REQUIRE(masker.mask(sv, colour, question, make_view(got.data(), n, n), soft, &rep).ok());
        if (gap > 1.0) {  // a pixel apart: the soft mask is crisp to e^-13
          CHECK_CLOSE("soft mask", got, want, (distill_test::tolerance{1e-4, 0}));
          ++compared_soft;
        } else {
          // A near-tie splits the pair's weight; the row still sums to 1 and stays in c's row.
          ++near_ties;
          int c = 0;
          while (s[static_cast<std::size_t>(c)].colour != colour) ++c;
          double row = 0.0, total = 0.0;
          for (int j = 0; j < n; ++j) row += got[static_cast<std::size_t>(c * n + j)];
          for (float v : got) total += v;
          CHECK(row == Approx(1.0).margin(1e-4));
          CHECK(total == Approx(1.0).margin(1e-4));
        }
      }
  }
  CHECK(compared_soft > 4000);
  INFO("near ties: " << near_ties << ", most iterations: " << max_iterations);
  CHECK(max_iterations < 200);
}

TEST_CASE("sort-of-clevr: batches equal single masks for every thread count", "[logic][sort_of_clevr][batch]") {
  sort_of_clevr_rules rules;
  REQUIRE(load_sort_of_clevr_rules(rules_dir(), rules).ok());
  distill_test::rng g(402);
  const int B = 37, N = 6;
  std::vector<scene_object> scenes;
  std::vector<std::int32_t> colours(B), questions(B);
  for (int b = 0; b < B; ++b) {
    const auto s = sort_of_clevr_scene(g);
    scenes.insert(scenes.end(), s.begin(), s.end());
    colours[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(g.integer(0, 5));
    questions[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(g.integer(0, 5));
  }
  sort_of_clevr_masker one;
  REQUIRE(one.prepare(rules).ok());
  std::vector<float> expected(B * N * N);
  for (int b = 0; b < B; ++b)
    REQUIRE(one.mask(make_view(scenes.data() + b * N, N), colours[static_cast<std::size_t>(b)],
                     static_cast<sort_of_clevr_question>(questions[static_cast<std::size_t>(b)]),
                     make_view(expected.data() + b * N * N, N, N))
                .ok());
  for (int threads : {1, 2}) {
    std::vector<sort_of_clevr_masker> maskers(2);
    for (auto& m : maskers) REQUIRE(m.prepare(rules).ok());
    std::vector<float> got(B * N * N, -1.0f);
    logic_batch_report rep;
    REQUIRE(sort_of_clevr_masks(cpu{threads}, maskers, make_view(static_cast<const scene_object*>(scenes.data()), B, N),
                                make_view(static_cast<const std::int32_t*>(colours.data()), B),
                                make_view(static_cast<const std::int32_t*>(questions.data()), B), make_view(got.data(), B, N, N),
                                sort_of_clevr_logic_options(), &rep)
                .ok());
    CHECK(rep.solved == B);
    CHECK(got == expected);  // bitwise
  }
  // A bad question type in the batch names its scene.
  questions[5] = 9;
  std::vector<sort_of_clevr_masker> maskers(1);
  REQUIRE(maskers[0].prepare(rules).ok());
  std::vector<float> got(B * N * N);
  const status st = sort_of_clevr_masks(cpu{1}, maskers, make_view(static_cast<const scene_object*>(scenes.data()), B, N),
                                        make_view(static_cast<const std::int32_t*>(colours.data()), B),
                                        make_view(static_cast<const std::int32_t*>(questions.data()), B), make_view(got.data(), B, N, N));
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("(scene 5)") != std::string::npos);
  CHECK(sort_of_clevr_masks(cpu{1}, maskers, make_view(static_cast<const scene_object*>(scenes.data()), B, N),
                            make_view(static_cast<const std::int32_t*>(colours.data()), B - 1),
                            make_view(static_cast<const std::int32_t*>(questions.data()), B), make_view(got.data(), B, N, N))
            .code() == errc::shape_mismatch);
}

TEST_CASE("sort-of-clevr: bad input gives clear errors", "[logic][sort_of_clevr][errors]") {
  sort_of_clevr_rules rules;
  REQUIRE(load_sort_of_clevr_rules(rules_dir(), rules).ok());
  sort_of_clevr_masker masker;
  std::vector<float> m(36);
  distill_test::rng g(403);
  auto s = sort_of_clevr_scene(g);
  const auto sv = make_view(static_cast<const scene_object*>(s.data()), 6);
  CHECK(masker.mask(sv, 0, sort_of_clevr_question::shape, make_view(m.data(), 6, 6)).code() == errc::invalid_argument);  // unprepared
  REQUIRE(masker.prepare(rules).ok());
  CHECK(masker.mask(sv, 0, sort_of_clevr_question::count, make_view(m.data(), 6, 6)).ok());
  const status missing_colour = masker.mask(sv, 6, sort_of_clevr_question::closest, make_view(m.data(), 6, 6));
  CHECK(missing_colour.code() == errc::invalid_argument);
  CHECK(missing_colour.message().find("colour 6") != std::string::npos);
  CHECK(masker.mask(sv, 0, static_cast<sort_of_clevr_question>(6), make_view(m.data(), 6, 6)).code() == errc::invalid_argument);
  CHECK(masker.mask(sv, 0, static_cast<sort_of_clevr_question>(-1), make_view(m.data(), 6, 6)).code() == errc::invalid_argument);
  CHECK(masker.mask(sv, 0, sort_of_clevr_question::shape, make_view(m.data(), 5, 6)).code() == errc::shape_mismatch);
  CHECK(masker.mask(make_view(static_cast<const scene_object*>(s.data()), 0), 0, sort_of_clevr_question::shape, make_view(m.data(), 0, 0))
            .code() == errc::invalid_argument);
  s[4].x = std::numeric_limits<float>::quiet_NaN();
  CHECK(masker.mask(sv, 0, sort_of_clevr_question::shape, make_view(m.data(), 6, 6)).code() == errc::non_finite);
  std::vector<scene_object> seven(7);
  CHECK(masker.mask(make_view(static_cast<const scene_object*>(seven.data()), 7), 0, sort_of_clevr_question::shape,
                    make_view(m.data(), 6, 6))
            .code() == errc::shape_mismatch);

  // Loading: a missing folder, and rule files without the required declarations.
  sort_of_clevr_rules none;
  CHECK(load_sort_of_clevr_rules("/nonexistent/rules", none).code() == errc::io_error);
  const auto dir = std::filesystem::temp_directory_path() / ("distill_logic_test_" + std::to_string(distill_test::test_seed()));
  std::filesystem::create_directories(dir);
  for (const auto& f : sort_of_clevr_rule_files) std::ofstream(dir / std::string(f)) << "observed queried/1.\nopen rel/2.\n1: !rel(I, J)\n";
  const status undeclared = load_sort_of_clevr_rules(dir.string(), none);
  CHECK(undeclared.code() == errc::invalid_argument);
  CHECK(undeclared.message().find("open relevant/2") != std::string::npos);
  std::ofstream(dir / "non_relational.rules") << "observed queried/1.\nopen relevant/2.\n1: queried(I) -> relevant(I, I, I)\n";
  rule_error where;
  CHECK(load_sort_of_clevr_rules(dir.string(), none, &where).code() == errc::parse_error);
  CHECK(where.line == 3);
  CHECK(where.column == 18);
  std::filesystem::remove_all(dir);
}
