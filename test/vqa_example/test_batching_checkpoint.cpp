// Mini-batch assembly (batching.hpp) and checkpoints (checkpoint.hpp) of the VQA example.
#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/batching.hpp"
#include "../../examples/vqa_spatial_kd/src/checkpoint.hpp"
#include "support/random.hpp"

namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name) {
    path = fs::temp_directory_path() / ("distill_vqa_ckpt_" + name + "_" + std::to_string(distill_test::test_seed()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
std::uint64_t le(const std::vector<std::uint8_t>& b, std::size_t off, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | b[off + i];
  return v;
}

}  // namespace

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

TEST_CASE("checkpoint: round trip, documented layout, corruption detected", "[vqa_example]") {
  temp_dir dir("rt");
  vqa::checkpoint c;
  c.meta["epoch"] = 7;
  c.meta["model"] = "student (b)";
  c.meta["config"] = {{"alpha", 0.5}, {"seeds", {1, 2, 3}}};
  distill_test::rng g(3);
  c.add("g.w1", g.normals<float>(1000));
  c.add("empty", {});
  c.add("specials", {-0.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min(), 1e-38f, -3.5f});
  const fs::path f = dir.path / "ck" / "last.ckpt";
  vqa::save_checkpoint(f, c);

  const auto r = vqa::load_checkpoint(f);
  INFO(r.error);
  REQUIRE(r.ok);
  CHECK(r.data == c);
  CHECK(std::signbit((*r.data.find("specials"))[0]));
  CHECK(r.data.find("nope") == nullptr);
  CHECK(r.data.meta["config"]["seeds"][2] == 3);

  const auto b = read_bytes(f);
  CHECK(std::string(b.begin(), b.begin() + 8) == "DSTLCKPT");
  CHECK(le(b, 8, 4) == 1);
  CHECK(le(b, 12, 4) == 3);
  const std::size_t m = le(b, 16, 8);
  CHECK(std::string(b.begin() + 24, b.begin() + 24 + std::ptrdiff_t(m)) == c.meta.dump());
  std::size_t o = 24 + m;
  CHECK(le(b, o, 4) == 4);
  CHECK(std::string(b.begin() + std::ptrdiff_t(o + 4), b.begin() + std::ptrdiff_t(o + 8)) == "g.w1");
  CHECK(le(b, o + 8, 8) == 1000);
  CHECK(le(b, o + 16, 4) == std::bit_cast<std::uint32_t>((*c.find("g.w1"))[0]));
  std::uint64_t h = 14695981039346656037ull;
  for (std::size_t i = 0; i + 8 < b.size(); ++i) h = (h ^ b[i]) * 1099511628211ull;
  CHECK(le(b, b.size() - 8, 8) == h);
  for (const auto& e : fs::directory_iterator(f.parent_path())) CHECK(e.path().filename() == "last.ckpt");

  auto flipped = b;
  flipped[o + 20] ^= 0x10;
  write_bytes(f, flipped);
  CHECK_FALSE(vqa::load_checkpoint(f).ok);
  CHECK(vqa::load_checkpoint(f).error.find("checksum") != std::string::npos);
  auto cut = b;
  cut.resize(b.size() - 5);
  write_bytes(f, cut);
  CHECK_FALSE(vqa::load_checkpoint(f).ok);
  write_bytes(f, std::vector<std::uint8_t>(b.begin(), b.begin() + 10));
  CHECK(vqa::load_checkpoint(f).error.find("truncated") != std::string::npos);
  CHECK(vqa::load_checkpoint(dir.path / "none.ckpt").error.find("missing") != std::string::npos);
}
