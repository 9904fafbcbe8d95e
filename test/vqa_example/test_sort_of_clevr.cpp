// Sort-of-CLEVR generator (examples/vqa_spatial_kd/src/sort_of_clevr.hpp): every answer against
// an independent recomputation from the state descriptions, the pixels against the state, the
// question mix, the encodings and determinism.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/sort_of_clevr.hpp"
#include "support/random.hpp"

namespace {

using vqa::question_type;

// ---- an independent model of the dataset, written from the spec (math.md §11.2), in doubles ----

// RGB colours in colour-id order: red, green, blue, orange, gray, yellow.
const std::array<std::array<int, 3>, 6> expected_rgb = {{{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 156, 0}, {128, 128, 128}, {255, 255, 0}}};

double dist(const vqa::object_state& a, const vqa::object_state& b) { return std::hypot(double(a.x) - b.x, double(a.y) - b.y); }

// Index of the nearest (want_far = false) or furthest other object; `unique` says whether the
// extreme distance is attained once.
int extreme_other(const vqa::scene& s, int c, bool want_far, bool* unique) {
  std::vector<std::pair<double, int>> d;
  for (int j = 0; j < 6; ++j)
    if (j != c) d.push_back({dist(s.objects[c], s.objects[j]), j});
  std::sort(d.begin(), d.end());
  if (want_far) std::reverse(d.begin(), d.end());
  *unique = d[0].first != d[1].first;
  return d[0].second;
}

int reference_answer(const vqa::scene& s, int c, question_type t, bool* unique = nullptr) {
  bool u = true;
  int a = -1;
  const auto& o = s.objects[c];
  const int shape_square = 2, shape_circle = 3, yes = 0, no = 1;
  auto shape_ans = [&](const vqa::object_state& x) { return x.form == vqa::shape::square ? shape_square : shape_circle; };
  switch (t) {
    case question_type::shape: a = shape_ans(o); break;
    case question_type::left: a = double(o.x) < 75.0 / 2 ? yes : no; break;
    case question_type::top: a = double(o.y) < 75.0 / 2 ? yes : no; break;
    case question_type::closest: a = shape_ans(s.objects[extreme_other(s, c, false, &u)]); break;
    case question_type::furthest: a = shape_ans(s.objects[extreme_other(s, c, true, &u)]); break;
    case question_type::count: {
      int n = 0;
      for (const auto& x : s.objects) n += x.form == o.form;
      a = 4 + n - 1;
      break;
    }
  }
  if (unique) *unique = u;
  return a;
}

vqa::generator_params small_params(std::uint32_t images, std::uint64_t seed) {
  vqa::generator_params p;
  p.images = images;
  p.seed = seed;
  return p;
}

}  // namespace

TEST_CASE("sort_of_clevr: splitmix64 matches the published reference stream", "[vqa_example]") {
  // First outputs of Vigna's splitmix64.c from state 0.
  vqa::splitmix64 g(0);
  CHECK(g.next() == 0xE220A8397B1DCDAFull);
  CHECK(g.next() == 0x6E789E6AA1B965F4ull);
  CHECK(g.next() == 0x06C45D188009454Full);
  vqa::splitmix64 h(12345);
  for (int i = 0; i < 1000; ++i) {
    const auto v = h.below(7);
    REQUIRE(v < 7);
  }
}

TEST_CASE("sort_of_clevr: a hand-made scene has the answers worked out by hand", "[vqa_example]") {
  // red (10,10) square, green (30,10) circle, blue (60,60) circle, orange (10,40) square,
  // gray (40,30) square, yellow (65,10) circle.
  vqa::scene s;
  const int xy[6][2] = {{10, 10}, {30, 10}, {60, 60}, {10, 40}, {40, 30}, {65, 10}};
  const vqa::shape sh[6] = {vqa::shape::square, vqa::shape::circle, vqa::shape::circle,
                            vqa::shape::square, vqa::shape::square, vqa::shape::circle};
  for (int i = 0; i < 6; ++i) s.objects[i] = {std::uint8_t(xy[i][0]), std::uint8_t(xy[i][1]), std::uint8_t(i), sh[i]};
  // red: distances² green 400, blue 5000, orange 900, gray 1300, yellow 3025 → closest green
  // (circle), furthest blue (circle); 3 squares.
  CHECK(vqa::closest_object(s, 0) == 1);
  CHECK(vqa::furthest_object(s, 0) == 2);
  CHECK(vqa::answer_question(s, 0, question_type::shape) == 2);
  CHECK(vqa::answer_question(s, 0, question_type::left) == 0);
  CHECK(vqa::answer_question(s, 0, question_type::top) == 0);
  CHECK(vqa::answer_question(s, 0, question_type::closest) == 3);
  CHECK(vqa::answer_question(s, 0, question_type::furthest) == 3);
  CHECK(vqa::answer_question(s, 0, question_type::count) == 4 + 3 - 1);
  // blue (60,60): right, bottom; closest gray (400+900=1300; yellow 25+2500) → square;
  // furthest red (5000; orange 2500+400, green 900+2500) → square.
  CHECK(vqa::answer_question(s, 2, question_type::left) == 1);
  CHECK(vqa::answer_question(s, 2, question_type::top) == 1);
  CHECK(vqa::answer_question(s, 2, question_type::closest) == 2);
  CHECK(vqa::answer_question(s, 2, question_type::furthest) == 2);
  CHECK(vqa::answer_question(s, 2, question_type::count) == 4 + 3 - 1);
  // orange (10,40): x = 10 left, y = 40 ≥ 37.5 → not top.
  CHECK(vqa::answer_question(s, 3, question_type::top) == 1);
  // gray (40,30): x = 40 ≥ 37.5 → not left (37 would be left).
  CHECK(vqa::answer_question(s, 4, question_type::left) == 1);
  s.objects[4].x = 37;
  CHECK(vqa::answer_question(s, 4, question_type::left) == 0);
  s.objects[4].x = 38;
  CHECK(vqa::answer_question(s, 4, question_type::left) == 1);
  // A tie: gray moved to (10, 30) is 20 from red... and orange (10,40) is 10 from it; put
  // green at (10, 50): orange then has gray and green both at distance 10.
  s.objects[4].x = 10, s.objects[4].y = 30;
  s.objects[1].x = 10, s.objects[1].y = 50;
  CHECK(vqa::has_distance_ties(s));
}

TEST_CASE("sort_of_clevr: every answer matches an independent recomputation", "[vqa_example]") {
  const auto d = vqa::generate_dataset(small_params(400, distill_test::test_seed()));
  REQUIRE(d.scenes.size() == 400);
  REQUIRE(d.questions.size() == 400 * 20);
  std::array<int, 10> answer_hist{};
  for (const auto& q : d.questions) {
    const auto& s = d.scenes[q.image];
    bool unique = false;
    const int expect = reference_answer(s, q.colour, q.type, &unique);
    INFO("image " << q.image << " colour " << int(q.colour) << " type " << vqa::name_of(q.type));
    REQUIRE(unique);  // generated scenes have no closest/furthest ties
    REQUIRE(int(q.answer) == expect);
    ++answer_hist[q.answer];
  }
  // Every answer class a question type can have occurs (counts 1..6 are rarer: 1 and 6 have p = 1/32).
  for (int a = 0; a < 10; ++a) CHECK(answer_hist[a] > 0);
  // Colour answers are never generated and every object's colour is its index.
  for (const auto& s : d.scenes)
    for (int i = 0; i < 6; ++i) CHECK(s.objects[i].colour == i);
}

TEST_CASE("sort_of_clevr: objects lie inside the image and never overlap; pixels match the state", "[vqa_example]") {
  const auto d = vqa::generate_dataset(small_params(200, distill_test::test_seed() + 1));
  REQUIRE(d.has_pixels());
  REQUIRE(d.pixels.size() == 200u * 75 * 75 * 3);
  for (std::size_t k = 0; k < d.scenes.size(); ++k) {
    const auto& s = d.scenes[k];
    const auto img = d.image(k);
    auto px = [&](int x, int y) {
      const std::size_t p = (std::size_t(y) * 75 + x) * 3;
      return std::array<int, 3>{img[p], img[p + 1], img[p + 2]};
    };
    int coloured = 0;
    for (int i = 0; i < 6; ++i) {
      const auto& o = s.objects[i];
      REQUIRE(o.x >= 5);
      REQUIRE(o.x < 70);
      REQUIRE(o.y >= 5);
      REQUIRE(o.y < 70);
      for (int j = 0; j < i; ++j) {  // 11×11 boxes disjoint, with a gap: Chebyshev distance ≥ 12
        const int dx = std::abs(o.x - s.objects[j].x), dy = std::abs(o.y - s.objects[j].y);
        REQUIRE(std::max(dx, dy) >= 12);
      }
      CHECK(px(o.x, o.y) == expected_rgb[i]);
      // Squares fill their corners; circles do not (and reach ±5 along the axes).
      const bool square = o.form == vqa::shape::square;
      CHECK((px(o.x + 5, o.y + 5) == expected_rgb[i]) == square);
      CHECK((px(o.x - 5, o.y - 5) == expected_rgb[i]) == square);
      CHECK(px(o.x + 5, o.y) == expected_rgb[i]);
      CHECK(px(o.x, o.y - 5) == expected_rgb[i]);
      // Count this object's pixels over the whole image: intact footprint = no overlap.
      int n = 0;
      for (int y = 0; y < 75; ++y)
        for (int x = 0; x < 75; ++x) n += px(x, y) == expected_rgb[i];
      int footprint = 0;
      for (int dy = -5; dy <= 5; ++dy)
        for (int dx = -5; dx <= 5; ++dx) footprint += square || dx * dx + dy * dy <= 30;
      CHECK(n == footprint);
      CHECK(footprint == (square ? 121 : 97));
      coloured += n;
    }
    int white = 0;
    for (int y = 0; y < 75; ++y)
      for (int x = 0; x < 75; ++x) white += px(x, y) == std::array<int, 3>{255, 255, 255};
    CHECK(white + coloured == 75 * 75);
    // rasterize() alone reproduces the stored pixels.
    std::vector<std::uint8_t> again(vqa::image_bytes);
    vqa::rasterize(s, again);
    CHECK(std::equal(again.begin(), again.end(), img.begin()));
  }
}

TEST_CASE("sort_of_clevr: the same parameters give identical bytes; others differ", "[vqa_example]") {
  const auto seed = distill_test::test_seed();
  const auto a = vqa::generate_dataset(small_params(60, seed));
  const auto b = vqa::generate_dataset(small_params(60, seed));
  CHECK(a == b);
  CHECK(a.pixels == b.pixels);

  const auto other_seed = vqa::generate_dataset(small_params(60, seed + 1));
  CHECK(other_seed.scenes != a.scenes);
  CHECK(other_seed.pixels != a.pixels);
  auto pt = small_params(60, seed);
  pt.split = vqa::dataset_split::test;
  const auto test_split = vqa::generate_dataset(pt);
  CHECK(test_split.scenes != a.scenes);
  int same_scenes = 0;
  for (std::size_t k = 0; k < 60; ++k) same_scenes += test_split.scenes[k] == a.scenes[k];
  CHECK(same_scenes == 0);

  // Image k does not depend on the dataset's size: a prefix of a larger dataset is the smaller one.
  const auto longer = vqa::generate_dataset(small_params(90, seed));
  CHECK(std::equal(a.scenes.begin(), a.scenes.end(), longer.scenes.begin()));
  CHECK(std::equal(a.questions.begin(), a.questions.end(), longer.questions.begin()));

  // Pixels are optional and do not change the state descriptions or questions.
  auto np = small_params(60, seed);
  np.with_pixels = false;
  const auto no_pixels = vqa::generate_dataset(np);
  CHECK_FALSE(no_pixels.has_pixels());
  CHECK(no_pixels.scenes == a.scenes);
  CHECK(no_pixels.questions == a.questions);
}

TEST_CASE("sort_of_clevr: 10 + 10 questions per image, a balanced mix of subtypes, none repeated", "[vqa_example]") {
  const std::uint32_t n_images = 1500;
  auto p = small_params(n_images, distill_test::test_seed() + 2);
  p.with_pixels = false;
  const auto d = vqa::generate_dataset(p);
  REQUIRE(d.questions.size() == n_images * 20u);
  std::array<long, 6> per_type{};
  std::array<long, 6> per_colour{};
  long left_yes = 0, left_n = 0, squares = 0;
  for (std::uint32_t k = 0; k < n_images; ++k) {
    std::array<int, 6> t{};
    std::set<std::pair<int, int>> seen;
    for (int i = 0; i < 20; ++i) {
      const auto& q = d.questions[k * 20 + i];
      REQUIRE(q.image == k);
      // Stored order: 10 non-relational (types 0..2), then 10 relational (types 3..5).
      REQUIRE((int(q.type) < 3) == (i < 10));
      ++t[int(q.type)];
      ++per_type[int(q.type)];
      ++per_colour[q.colour];
      CHECK(seen.insert({int(q.type), q.colour}).second);  // no repeated question
      if (q.type == question_type::left) left_n++, left_yes += q.answer == 0;
    }
    for (int kind = 0; kind < 2; ++kind) {  // 10 = 4 + 3 + 3 in some order
      std::array<int, 3> c = {t[kind * 3], t[kind * 3 + 1], t[kind * 3 + 2]};
      std::sort(c.begin(), c.end());
      CHECK(c == std::array<int, 3>{3, 3, 4});
    }
    for (const auto& o : d.scenes[k].objects) squares += o.form == vqa::shape::square;
  }
  // Each subtype gets 3 per image plus the extra question a third of the time: 3N + Bin(N, 1/3),
  // sd = sqrt(N·2/9) ≈ 18; allow 8 sd.
  for (int t = 0; t < 6; ++t) {
    INFO("type " << vqa::name_of(static_cast<question_type>(t)));
    CHECK(std::abs(per_type[t] - n_images * 10.0 / 3) < 150);
  }
  for (int c = 0; c < 6; ++c) CHECK(std::abs(per_colour[c] - n_images * 20.0 / 6) < 300);
  CHECK(double(left_yes) / left_n > 0.4);
  CHECK(double(left_yes) / left_n < 0.6);
  CHECK(double(squares) / (n_images * 6) > 0.47);
  CHECK(double(squares) / (n_images * 6) < 0.53);
}

TEST_CASE("sort_of_clevr: other question counts per image", "[vqa_example]") {
  for (auto [nr, r] : std::vector<std::pair<int, int>>{{18, 0}, {0, 1}, {2, 5}, {7, 18}}) {
    auto p = small_params(30, distill_test::test_seed() + 3);
    p.non_relational_per_image = std::uint32_t(nr);
    p.relational_per_image = std::uint32_t(r);
    const auto d = vqa::generate_dataset(p);
    REQUIRE(d.questions.size() == 30u * (nr + r));
    for (std::uint32_t k = 0; k < 30; ++k) {
      std::set<std::pair<int, int>> seen;
      std::array<int, 6> t{};
      for (int i = 0; i < nr + r; ++i) {
        const auto& q = d.questions[k * (nr + r) + i];
        CHECK(seen.insert({int(q.type), q.colour}).second);
        ++t[int(q.type)];
        CHECK(int(q.answer) == reference_answer(d.scenes[k], q.colour, q.type));
      }
      for (int kind = 0; kind < 2; ++kind) {
        const int n = kind == 0 ? nr : r;
        for (int s = 0; s < 3; ++s) {
          CHECK(t[kind * 3 + s] >= n / 3);
          CHECK(t[kind * 3 + s] <= (n + 2) / 3);
        }
      }
    }
  }
  auto bad = small_params(3, 1);
  bad.relational_per_image = 19;
  CHECK_THROWS_AS(vqa::generate_dataset(bad), std::invalid_argument);
}

TEST_CASE("sort_of_clevr: the 11-float question encoding and the object features", "[vqa_example]") {
  // Layout from the header: [0:6) colour one-hot, [6] non-relational, [7] relational, [8:11) subtype.
  const std::map<question_type, std::pair<int, int>> kind_and_subtype_bit = {
      {question_type::shape, {6, 8}},    {question_type::left, {6, 9}},      {question_type::top, {6, 10}},
      {question_type::closest, {7, 8}}, {question_type::furthest, {7, 9}}, {question_type::count, {7, 10}}};
  for (const auto& [t, bits] : kind_and_subtype_bit)
    for (int c = 0; c < 6; ++c) {
      std::vector<float> e(11, -1.0f);
      vqa::encode_question(vqa::question{0, std::uint8_t(c), t, 0}, e);
      for (int i = 0; i < 11; ++i) {
        const bool on = i == c || i == bits.first || i == bits.second;
        CHECK(e[i] == (on ? 1.0f : 0.0f));
      }
    }
  std::vector<float> wrong(10);
  CHECK_THROWS(vqa::encode_question(vqa::question{}, wrong));

  const auto d = vqa::generate_dataset(small_params(5, distill_test::test_seed() + 4));
  for (const auto& s : d.scenes) {
    std::vector<float> f(60, -1.0f);
    vqa::object_features(s, f);
    for (int i = 0; i < 6; ++i) {
      const float* r = f.data() + i * 10;
      CHECK(r[0] == Approx(s.objects[i].x / 75.0));
      CHECK(r[1] == Approx(s.objects[i].y / 75.0));
      for (int c = 0; c < 6; ++c) CHECK(r[2 + c] == (c == i ? 1.0f : 0.0f));
      CHECK(r[8] == (s.objects[i].form == vqa::shape::square ? 1.0f : 0.0f));
      CHECK(r[9] == (s.objects[i].form == vqa::shape::circle ? 1.0f : 0.0f));
    }
  }

  // HWC uint8 → CHW float in [0, 1].
  std::vector<float> chw(vqa::image_bytes);
  const auto img = d.image(0);
  vqa::to_chw_float(img, chw);
  distill_test::rng g(7);
  for (int n = 0; n < 200; ++n) {
    const int y = int(g.integer(0, 74)), x = int(g.integer(0, 74)), c = int(g.integer(0, 2));
    CHECK(chw[std::size_t(c) * 75 * 75 + std::size_t(y) * 75 + x] == Approx(img[(std::size_t(y) * 75 + x) * 3 + c] / 255.0));
  }
}

TEST_CASE("sort_of_clevr: names of types, answers and question texts", "[vqa_example]") {
  CHECK(vqa::name_of(question_type::shape) == "shape");
  CHECK(vqa::name_of(question_type::left) == "left");
  CHECK(vqa::name_of(question_type::top) == "top");
  CHECK(vqa::name_of(question_type::closest) == "closest");
  CHECK(vqa::name_of(question_type::furthest) == "furthest");
  CHECK(vqa::name_of(question_type::count) == "count");
  CHECK(vqa::kind_of(question_type::top) == vqa::question_kind::non_relational);
  CHECK(vqa::kind_of(question_type::closest) == vqa::question_kind::relational);
  CHECK(vqa::subtype_of(question_type::count) == 2);
  CHECK(vqa::answer_names[2] == "square");
  CHECK(vqa::answer_names[4] == "1");
  CHECK(vqa::answer_names[9] == "6");
  CHECK(vqa::question_text(vqa::question{0, 3, question_type::closest, 0}) ==
        "What is the shape of the object closest to the orange object?");
  CHECK(vqa::question_text(vqa::question{0, 4, question_type::count, 0}) == "How many objects have the same shape as the gray object?");
}
