// Mini-batch assembly (batching.hpp) of the VQA example.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/batching.hpp"
#include "support/random.hpp"

TEST_CASE("batching: reproducible shuffles", "[vqa_example]") {
  const auto a = vqa::shuffled_order(1000, 7, 3);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (std::uint32_t i = 0; i < 1000; ++i) REQUIRE(sorted[i] == i);
  CHECK(a == vqa::shuffled_order(1000, 7, 3));
  CHECK(a != vqa::shuffled_order(1000, 7, 4));
  CHECK(a != vqa::shuffled_order(1000, 8, 3));
  CHECK(vqa::shuffled_order(0, 1, 1).empty());
  // Each element is equally likely first: 5 elements over 5000 epochs, ~1000 each (sd ≈ 28).
  std::array<int, 5> first{};
  for (std::uint64_t e = 0; e < 5000; ++e) ++first[vqa::shuffled_order(5, 11, e)[0]];
  for (int c : first) CHECK(std::abs(c - 1000) < 150);
}

TEST_CASE("batching: state-description and pixel batches", "[vqa_example]") {
  vqa::generator_params p;
  p.images = 8;
  p.seed = distill_test::test_seed();
  const auto d = vqa::generate_dataset(p);
  auto p2 = p;
  p2.with_pixels = false;
  const auto d_np = vqa::generate_dataset(p2);

  const std::vector<std::uint32_t> ids = {0, 17, 159, 42, 42};
  const std::size_t b = ids.size();
  std::vector<float> obj(b * 60, -1), q(b * 11, -1);
  std::vector<std::int32_t> ans(b, -1);
  vqa::gather_state_batch(d, ids, obj, q, ans);
  for (std::size_t i = 0; i < b; ++i) {
    const auto& qq = d.questions[ids[i]];
    const auto& s = d.scenes[qq.image];
    CHECK(ans[i] == qq.answer);
    for (int o = 0; o < 6; ++o) {  // [x/75, y/75, colour one-hot, shape one-hot]
      const float* r = &obj[i * 60 + o * 10];
      CHECK(r[0] == Approx(s.objects[o].x / 75.0));
      CHECK(r[1] == Approx(s.objects[o].y / 75.0));
      for (int c = 0; c < 6; ++c) CHECK(r[2 + c] == (c == o ? 1.0f : 0.0f));
      CHECK(r[8 + int(s.objects[o].form)] == 1.0f);
      CHECK(r[9 - int(s.objects[o].form)] == 0.0f);
    }
    const float* e = &q[i * 11];
    float sum = 0;
    for (int k = 0; k < 11; ++k) sum += e[k];
    CHECK(sum == 3.0f);
    CHECK(e[qq.colour] == 1.0f);
    CHECK(e[int(qq.type) < 3 ? 6 : 7] == 1.0f);
    CHECK(e[8 + int(qq.type) % 3] == 1.0f);
  }
  std::vector<float> small(10);
  CHECK_THROWS(vqa::gather_state_batch(d, ids, small, q, ans));
  const std::vector<std::uint32_t> bad = {100000};
  std::vector<float> o1(60), q1(11);
  CHECK_THROWS(vqa::gather_state_batch(d, bad, o1, q1));

  std::vector<float> img(b * vqa::image_bytes, -1), img_np(b * vqa::image_bytes, -2);
  vqa::gather_image_batch(d, ids, img);
  vqa::gather_image_batch(d_np, ids, img_np);  // rasterised on the fly: identical
  CHECK(img == img_np);
  distill_test::rng g(5);
  for (int t = 0; t < 300; ++t) {
    const std::size_t i = std::size_t(g.integer(0, std::int64_t(b) - 1));
    const int c = int(g.integer(0, 2)), y = int(g.integer(0, 74)), x = int(g.integer(0, 74));
    const auto hwc = d.image(d.questions[ids[i]].image);
    CHECK(img[i * vqa::image_bytes + std::size_t(c) * 5625 + std::size_t(y) * 75 + x] ==
          Approx(hwc[(std::size_t(y) * 75 + x) * 3 + c] / 255.0));
  }
}
