// PNG panels (examples/vqa_spatial_kd/src/render.hpp): files decode (with stb_image, an
// independent decoder) to exactly the drawn pixels; the scene is the rasterised image enlarged;
// masks are drawn where and as opaque as their weights say; text stays in its box.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/render.hpp"
#include "support/random.hpp"

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name) {
    path = fs::temp_directory_path() / ("distill_vqa_render_" + name + "_" + std::to_string(distill_test::test_seed()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

struct decoded {
  int w = 0, h = 0;
  std::vector<std::uint8_t> rgb;
};

// Checks the PNG signature and IHDR size, then decodes with stb_image.
decoded read_png(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<std::uint8_t> b{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  REQUIRE(b.size() > 33);
  const std::uint8_t signature[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  REQUIRE(std::equal(signature, signature + 8, b.begin()));
  REQUIRE(std::string(b.begin() + 12, b.begin() + 16) == "IHDR");
  auto be32 = [&](std::size_t o) { return int(b[o]) << 24 | int(b[o + 1]) << 16 | int(b[o + 2]) << 8 | int(b[o + 3]); };
  decoded d;
  int comp = 0;
  unsigned char* px = stbi_load_from_memory(b.data(), int(b.size()), &d.w, &d.h, &comp, 3);
  REQUIRE(px != nullptr);
  CHECK(be32(16) == d.w);
  CHECK(be32(20) == d.h);
  d.rgb.assign(px, px + std::size_t(d.w) * d.h * 3);
  stbi_image_free(px);
  return d;
}

// Red at (10,10), green at (60,60): the diagonal between them crosses no other object.
vqa::scene diagonal_scene() {
  vqa::scene s;
  const int xy[6][2] = {{10, 10}, {60, 60}, {60, 10}, {10, 60}, {35, 64}, {64, 35}};
  for (int i = 0; i < 6; ++i)
    s.objects[i] = {std::uint8_t(xy[i][0]), std::uint8_t(xy[i][1]), std::uint8_t(i), i % 2 ? vqa::shape::circle : vqa::shape::square};
  return s;
}

const vqa::rgb8 white{255, 255, 255}, magenta{200, 0, 200};

}  // namespace

TEST_CASE("render: blending and the canvas", "[vqa_example]") {
  vqa::canvas c(4, 3);
  CHECK(c.at(3, 2) == white);
  c.blend(1, 1, vqa::rgb8{255, 0, 0}, 0.5f);  // 255 + 0.5·(0 − 255) = 127.5 → 128
  CHECK(c.at(1, 1) == vqa::rgb8{255, 128, 128});
  c.blend(2, 1, vqa::rgb8{0, 0, 0}, 1.0f);
  CHECK(c.at(2, 1) == vqa::rgb8{0, 0, 0});
  c.blend(0, 0, vqa::rgb8{0, 0, 0}, 0.0f);
  CHECK(c.at(0, 0) == white);
  c.set(-1, 7, vqa::rgb8{0, 0, 0});  // outside: ignored
  c.fill_rect(-5, -5, 100, 1, vqa::rgb8{1, 2, 3});
  CHECK(c.at(0, 0) == white);
  CHECK_THROWS(vqa::canvas(0, 5));
}

TEST_CASE("render: a panel's PNG decodes to the drawn pixels and shows the enlarged scene", "[vqa_example]") {
  temp_dir dir("panel");
  vqa::generator_params p;
  p.images = 3;
  p.seed = distill_test::test_seed();
  const auto d = vqa::generate_dataset(p);
  const auto& q = d.questions[13];
  vqa::panel_content pc;
  pc.objects = d.scenes[q.image];
  pc.asked = q;
  pc.answers = {{"baseline", q.answer}, {"student (b)", (q.answer + 1) % 10}};
  const vqa::render_options opt;  // ×4, margin 8
  const auto img = vqa::render_panel(pc, opt);
  CHECK(img.width() == 75 * 4 + 16);
  REQUIRE(img.height() > 75 * 4 + 16 + 5 * vqa::text_line_height(opt.text_scale));

  // Without masks, the scene area is exactly the 75×75 image with each pixel a 4×4 block.
  const auto scene_px = d.image(q.image);
  for (int y = 0; y < 300; ++y)
    for (int x = 0; x < 300; ++x) {
      const std::size_t s = (std::size_t(y / 4) * 75 + x / 4) * 3;
      REQUIRE(img.at(8 + x, 8 + y) == vqa::rgb8{scene_px[s], scene_px[s + 1], scene_px[s + 2]});
    }
  // The wrong answer is written in red, the right one in green.
  int red = 0, green = 0;
  for (int y = 316; y < img.height(); ++y)
    for (int x = 0; x < img.width(); ++x) red += img.at(x, y) == vqa::wrong_rgb, green += img.at(x, y) == vqa::right_rgb;
  CHECK(red > 20);
  CHECK(green > 20);

  const fs::path f = dir.path / "panel.png";
  REQUIRE(vqa::write_png(img, f));
  const auto png = read_png(f);
  CHECK(png.w == img.width());
  CHECK(png.h == img.height());
  CHECK(std::equal(png.rgb.begin(), png.rgb.end(), img.bytes().begin()));

  // The convenience overload (pixels absent: rasterised) writes a decodable PNG too.
  std::vector<float> mask(36, 0.0f);
  mask[q.colour * 6 + q.colour] = 1.0f;
  REQUIRE(vqa::render_panel(pc.objects, {}, q, mask, pc.answers, dir.path / "one.png"));
  const auto one = read_png(dir.path / "one.png");
  CHECK(one.w == img.width());
}

TEST_CASE("render: pair masks are drawn along the pairs with opacity = weight", "[vqa_example]") {
  const auto s = diagonal_scene();
  std::vector<std::uint8_t> px(vqa::image_bytes);
  vqa::rasterize(s, px);
  const int f = 4;
  auto draw = [&](float w01, float w22) {
    vqa::canvas c(75 * f, 75 * f);
    c.draw_image(0, 0, px, 75, 75, f);
    std::vector<float> m(36, 0.0f);
    m[0 * 6 + 1] = w01;  // red → green
    m[2 * 6 + 2] = w22;  // blue with itself
    vqa::draw_pair_mask(c, 0, 0, f, s, vqa::pair_mask("logic mask", m));
    return c;
  };
  // Midpoint of red (10.5, 10.5)·4 and green (60.5, 60.5)·4 is pixel (142, 142); its centre lies on the line.
  const auto full = draw(1.0f, 0.0f), half = draw(0.5f, 0.0f), none = draw(0.0f, 0.0f);
  CHECK(full.at(142, 142) == magenta);
  CHECK(half.at(142, 142) == vqa::rgb8{228, 128, 228});  // white + 0.5·(magenta − white), rounded
  CHECK(none.at(142, 142) == white);
  CHECK(full.at(142, 60) == white);  // away from the pair
  CHECK(none.bytes().size() == full.bytes().size());
  // The arrowhead is at green's end: pixels drawn more than 2.2 px off the red → green axis
  // (wider than the 2.4 px line) exist in the half next to green and not in the half next to red.
  int wide_near_head = 0, wide_near_tail = 0;
  for (int y = 0; y < full.height(); ++y)
    for (int x = 0; x < full.width(); ++x) {
      if (full.at(x, y) == none.at(x, y)) continue;
      const double px0 = x + 0.5 - 42, py0 = y + 0.5 - 42;  // from red's centre (42, 42)
      const double along = (px0 + py0) / std::sqrt(2.0), across = std::fabs(px0 - py0) / std::sqrt(2.0);
      if (across > 2.2) (along > 100 * std::sqrt(2.0) ? wide_near_head : wide_near_tail)++;
    }
  CHECK(wide_near_head > 10);
  CHECK(wide_near_tail == 0);

  // A self pair is a ring of radius (5 + 1.5 + 0.5)·4 = 28 around the object; the object is untouched.
  const auto ring = draw(0.0f, 1.0f);
  const int bx = 60 * f + 2, by = 10 * f + 2;  // blue's centre, (60.5, 10.5)·4
  CHECK(ring.at(bx + 28, by) == magenta);
  CHECK(ring.at(bx, by - 28) == magenta);
  CHECK(ring.at(bx, by) == vqa::rgb8{0, 0, 255});
  CHECK(ring.at(bx + 40, by) == white);

  // Scaled to the maximum: weights 0.5 and 0.25 draw like 1.0 and 0.5.
  {
    vqa::canvas c(75 * f, 75 * f);
    c.draw_image(0, 0, px, 75, 75, f);
    std::vector<float> m(36, 0.0f);
    m[0 * 6 + 1] = 0.25f;
    m[2 * 6 + 2] = 0.5f;
    vqa::draw_pair_mask(c, 0, 0, f, s, vqa::pair_mask("predicted", m, magenta, true));
    CHECK(c.at(142, 142) == vqa::rgb8{228, 128, 228});
    CHECK(c.at(bx + 28, by) == magenta);
  }
  vqa::canvas c(10, 10);
  CHECK_THROWS(vqa::draw_pair_mask(c, 0, 0, f, s, vqa::pair_mask("bad", std::vector<float>(35))));

  // Centres of a 5×5 feature map: cell k at column k % 5, row k / 5, 15 pixels a cell.
  const auto cells = vqa::grid_cell_centres(5);
  REQUIRE(cells.size() == 25);
  CHECK(cells[0] == std::array<float, 2>{7.5f, 7.5f});
  CHECK(cells[1] == std::array<float, 2>{22.5f, 7.5f});
  CHECK(cells[13] == std::array<float, 2>{52.5f, 37.5f});
}

TEST_CASE("render: text stays inside its box; wrapping respects the width", "[vqa_example]") {
  vqa::canvas c(400, 100);
  const std::string text = "Is the red object on the left? 123";
  vqa::draw_text(c, 10, 20, text, vqa::rgb8{0, 0, 0}, 2);
  const int w = vqa::text_width(text, 2), h = vqa::text_line_height(2);
  int inside = 0, outside = 0;
  for (int y = 0; y < c.height(); ++y)
    for (int x = 0; x < c.width(); ++x)
      if (c.at(x, y) != white) (x >= 10 && x < 10 + w && y >= 20 && y < 20 + h ? inside : outside)++;
  CHECK(inside > 100);
  CHECK(outside == 0);

  // Bytes outside printable ASCII (UTF-8, control characters) are drawn as '?'.
  CHECK(examples::printable_ascii("a\xC2\xB1" "b\n\x7F") == "a??b??");
  CHECK(vqa::text_width("\xC2\xB1\t", 2) == vqa::text_width("???", 2));
  vqa::canvas u(100, 40), qm(100, 40);
  vqa::draw_text(u, 2, 2, "\xC2\xB1\t", vqa::rgb8{0, 0, 0}, 2);
  vqa::draw_text(qm, 2, 2, "???", vqa::rgb8{0, 0, 0}, 2);
  CHECK(std::equal(u.bytes().begin(), u.bytes().end(), qm.bytes().begin()));

  const std::string long_text = "What is the shape of the object furthest from the yellow object?";
  const auto lines = vqa::wrap_text(long_text, 200, 2);
  CHECK(lines.size() > 1);
  std::string joined;
  for (const auto& l : lines) {
    CHECK(vqa::text_width(l, 2) <= 200);
    joined += (joined.empty() ? "" : " ") + l;
  }
  CHECK(joined == long_text);
}

TEST_CASE("render: a grid of panels", "[vqa_example]") {
  temp_dir dir("grid");
  vqa::generator_params p;
  p.images = 5;
  p.seed = distill_test::test_seed() + 9;
  const auto d = vqa::generate_dataset(p);
  std::vector<vqa::panel_content> panels;
  for (int k = 0; k < 5; ++k) {
    vqa::panel_content pc;
    pc.objects = d.scenes[k];
    pc.pixels.assign(d.image(k).begin(), d.image(k).end());
    pc.asked = d.questions[k * 20 + 10 + k];
    std::vector<float> m(36, 0.0f);
    m[pc.asked.colour * 6 + vqa::closest_object(pc.objects, pc.asked.colour)] = 1.0f;
    pc.masks.emplace_back("logic mask", m);
    pc.answers = {{"teacher", pc.asked.answer}};
    panels.push_back(pc);
  }
  const auto one = vqa::render_panel(panels[0]);
  const auto grid = vqa::render_grid(panels, 3);
  CHECK(grid.width() == 3 * one.width() + 4 * 2);
  CHECK(grid.height() >= 2 * one.height() + 3 * 2);
  REQUIRE(vqa::render_grid(panels, 3, dir.path / "grid.png"));
  const auto png = read_png(dir.path / "grid.png");
  CHECK(png.w == grid.width());
  CHECK(png.h == grid.height());
  CHECK(std::equal(png.rgb.begin(), png.rgb.end(), grid.bytes().begin()));
  CHECK_THROWS(vqa::render_grid(std::span<const vqa::panel_content>{}, 3));
}
