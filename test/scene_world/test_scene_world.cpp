// SPDX-License-Identifier: MIT
// The scene world of the examples (examples/common/scene_world*.hpp), on synthetic "Fashion-MNIST"
// images (no data files needed): determinism and the prefix property, the documented file layout
// decoded here independently, round trips, corrupt/changed/missing files refused and regenerated,
// split disjointness, template and out-of-context statistics against the documented table,
// geometry (boxes, overlap), masks and their size threshold, degradations confined to the item;
// and the pictures drawn of them (scene_render.hpp, image.hpp: the heat colour scale and heat maps).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "../../examples/common/image.hpp"
#include "../../examples/common/scene_render.hpp"
#include "../../examples/common/scene_world_io.hpp"
#include "scene_world_support.hpp"
#include "support/random.hpp"

namespace fs = std::filesystem;
using namespace examples;
using namespace scene_world_test;

namespace {

void reseal(std::vector<unsigned char>& f) {
  put(&f[72], fnv(f.data() + 88, f.size() - 88), 8);
  put(&f[80], fnv(f.data(), 80), 8);
}

}  // namespace

TEST_CASE("scene world: deterministic from the seed, a prefix of larger sets", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 1);
  const auto p = small_params(scene_split::train, 60);
  const auto src = scene_sources(data, p);
  const scene_set a = generate_scenes(src, p), b = generate_scenes(src, p);
  CHECK(a.scenes == b.scenes);
  CHECK(a.pixels == b.pixels);
  auto p_small = p;
  p_small.scenes = 25;
  const scene_set c = generate_scenes(src, p_small);
  CHECK(std::equal(c.scenes.begin(), c.scenes.end(), a.scenes.begin()));
  CHECK(std::equal(c.pixels.begin(), c.pixels.end(), a.pixels.begin()));
  auto p_other = p;
  p_other.seed = 8;
  const scene_set d = generate_scenes(src, p_other);
  CHECK(d.pixels != a.pixels);
  // every scene holds 2..6 items, each inside the canvas, its box inside its pasted image
  for (const scene& sc : a.scenes) {
    REQUIRE(sc.items.size() >= 2);
    REQUIRE(sc.items.size() <= 6);
    for (const scene_item& it : sc.items) {
      CHECK(it.x0 + it.size <= p.side);
      CHECK(it.y0 + it.size <= p.side);
      CHECK(it.box.x1 >= it.x0);
      CHECK(it.box.x2 <= it.x0 + it.size);
      CHECK(it.box.y1 >= it.y0);
      CHECK(it.box.y2 <= it.y0 + it.size);
      CHECK(it.box.area() > 0);
      CHECK(data.train.labels[it.source] == it.cls);
    }
  }
}

TEST_CASE("scene world: the pixels show the items over a textured background", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 2);
  const auto p = small_params(scene_split::test, 40);
  const scene_set s = generate_scenes(scene_sources(data, p), p);
  double inside = 0, outside = 0, n_in = 0, n_out = 0, out_sq = 0;
  for (std::size_t k = 0; k < s.size(); ++k) {
    std::vector<bool> covered(s.pixels_per_scene(), false);
    for (const scene_item& it : s.scenes[k].items)
      for (int y = it.y0; y < it.y0 + it.size; ++y)
        for (int x = it.x0; x < it.x0 + it.size; ++x) covered[static_cast<std::size_t>(y * p.side + x)] = true;
    const auto img = s.image(k);
    for (std::size_t i = 0; i < img.size(); ++i) {
      if (covered[i]) continue;
      outside += img[i], out_sq += double(img[i]) * img[i], ++n_out;
    }
    for (const scene_item& it : s.scenes[k].items) {  // the centre pixel of a synthetic item is the item
      inside += img[static_cast<std::size_t>((it.y0 + it.size / 2) * p.side + it.x0 + it.size / 2)], ++n_in;
    }
  }
  const double bg_mean = outside / n_out, bg_sd = std::sqrt(out_sq / n_out - bg_mean * bg_mean);
  CHECK(bg_mean > 20);   // not black: a level of 30..60 plus noise
  CHECK(bg_mean < 80);
  CHECK(bg_sd > 5);      // textured, not flat
  CHECK(inside / n_in > bg_mean + 60);  // the items stand out
}

TEST_CASE("scene world: the file layout is the documented one and round-trips", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 3);
  const auto p = small_params(scene_split::validation, 30);
  const scene_set s = generate_scenes(scene_sources(data, p), p);
  const fs::path dir = temp_dir("layout"), file = dir / scene_file_name(p);
  CHECK(scene_file_name(p) == "scenes-validation-s96-n30-seed7.bin");
  write_scene_set(file, s, data.train);
  const auto f = read_bytes(file);
  const std::size_t items = s.item_count(), side2 = 96 * 96;
  REQUIRE(f.size() == 88 + 2 * 30 + 16 * items + 30 * side2);
  CHECK(std::string(f.begin(), f.begin() + 8) == "FMSCENES");
  CHECK(le(&f[8], 4) == 1);   // format version
  CHECK(le(&f[12], 4) == scene_generator_version);
  CHECK(le(&f[16], 8) == 7);  // seed
  CHECK(le(&f[24], 4) == 1);  // validation
  CHECK(le(&f[28], 4) == 30);
  CHECK(le(&f[32], 4) == 96);
  CHECK(le(&f[36], 4) == 250000);  // out-of-context rate 0.25 in millionths
  CHECK(le(&f[40], 4) == 6);
  CHECK(le(&f[44], 4) == items);
  CHECK(le(&f[48], 8) == 3);
  CHECK(le(&f[64], 8) == f.size() - 88);
  CHECK(le(&f[72], 8) == fnv(f.data() + 88, f.size() - 88));
  CHECK(le(&f[80], 8) == fnv(f.data(), 80));
  // the first scene's record and its first item, byte by byte
  const scene& s0 = s.scenes[0];
  CHECK(f[88] == s0.outfit);
  CHECK(f[89] == s0.items.size());
  const unsigned char* it = &f[88 + 60];
  const scene_item& i0 = s0.items[0];
  CHECK(it[0] == i0.cls);
  CHECK(it[1] == static_cast<int>(i0.slot));
  CHECK(it[2] == ((i0.out_of_context ? 1 : 0) | (i0.mirrored ? 2 : 0)));
  CHECK(it[3] == i0.size);
  CHECK(it[4] == i0.x0);
  CHECK(it[5] == i0.y0);
  CHECK(it[6] == i0.box.x1);
  CHECK(it[9] == i0.box.y2);
  CHECK(le(it + 10, 4) == i0.source);
  CHECK(std::equal(s.pixels.begin(), s.pixels.end(), f.begin() + static_cast<std::ptrdiff_t>(88 + 60 + 16 * items)));

  const scene_read_result r = read_scene_set(file, &p, &data.train);
  INFO(r.message);
  REQUIRE(r.status == scene_file_status::ok);
  CHECK(r.data.params == p);
  CHECK(r.data.scenes == s.scenes);
  CHECK(r.data.pixels == s.pixels);
  fs::remove_all(dir);
}

TEST_CASE("scene world: corrupt, truncated, changed and missing files are refused and regenerated", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 4);
  const auto p = small_params(scene_split::test, 20);
  const fs::path dir = temp_dir("corrupt"), file = dir / scene_file_name(p);
  std::ostringstream log;
  scene_load_outcome how{};
  const scene_set made = load_or_generate_scenes(file, p, data, &how, log);
  CHECK(how == scene_load_outcome::generated_missing);
  const scene_set again = load_or_generate_scenes(file, p, data, &how, log);
  CHECK(how == scene_load_outcome::loaded);
  CHECK(again.pixels == made.pixels);
  const auto good = read_bytes(file);

  auto expect = [&](std::vector<unsigned char> bytes, scene_file_status want, const std::string& why) {
    INFO(why);
    write_bytes(file, bytes);
    const scene_read_result r = read_scene_set(file, &p, &data.test);
    INFO(r.message);
    CHECK(r.status == want);
    CHECK(r.data.scenes.empty());
  };
  {
    auto b = good;
    b[b.size() - 5] ^= 0x10;  // a pixel
    expect(b, scene_file_status::corrupt, "payload byte flipped");
  }
  {
    auto b = good;
    b[20] ^= 1;  // the seed, without resealing
    expect(b, scene_file_status::corrupt, "header byte flipped");
  }
  expect(std::vector<unsigned char>(good.begin(), good.end() - 100), scene_file_status::corrupt, "truncated");
  expect(std::vector<unsigned char>(good.begin(), good.begin() + 50), scene_file_status::corrupt, "shorter than the header");
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
  {  // a record that contradicts its source label, resealed so every checksum holds
    auto b = good;
    const std::size_t first_item = 88 + 2 * 20;
    b[first_item] = static_cast<unsigned char>((b[first_item] + 1) % 10);
    reseal(b);
    expect(b, scene_file_status::corrupt, "class differs from the source label");
  }
  {  // an out-of-context flag that disagrees with the template, resealed
    auto b = good;
    b[88 + 2 * 20 + 2] ^= 1;
    reseal(b);
    expect(b, scene_file_status::corrupt, "out-of-context flag flipped");
  }
  {  // a box outside its pasted image, resealed
    auto b = good;
    b[88 + 2 * 20 + 8] = 255;
    reseal(b);
    expect(b, scene_file_status::corrupt, "box outside the canvas");
  }
  {  // another generator version (resealed): changed
    auto b = good;
    b[12] = static_cast<unsigned char>(scene_generator_version + 1);
    reseal(b);
    expect(b, scene_file_status::changed, "generator version");
  }
  write_bytes(file, good);
  auto other = p;
  other.out_of_context_rate = 0.5;
  CHECK(read_scene_set(file, &other, &data.test).status == scene_file_status::changed);
  const auto other_data = synthetic_fashion(40, 12, 99);
  CHECK(read_scene_set(file, &p, &other_data.test).status == scene_file_status::changed);
  CHECK(read_scene_set(dir / "none.bin").status == scene_file_status::missing);

  // load_or_generate replaces a corrupt file and a changed one with the right scenes
  auto bad = good;
  bad[100] ^= 0xFF;
  write_bytes(file, bad);
  const scene_set fixed = load_or_generate_scenes(file, p, data, &how, log);
  CHECK(how == scene_load_outcome::regenerated_corrupt);
  CHECK(fixed.pixels == made.pixels);
  CHECK(read_bytes(file) == good);
  const scene_set changed = load_or_generate_scenes(file, other, data, &how, log);
  CHECK(how == scene_load_outcome::regenerated_changed);
  CHECK(changed.params == other);
  fs::remove_all(dir);
}

TEST_CASE("scene world: train, validation and test scenes use disjoint source images", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 5);
  const auto pt = small_params(scene_split::train, 150), pv = small_params(scene_split::validation, 150), ps = small_params(scene_split::test, 150);
  const auto split = split_train_validation(data.train, pv.validation_per_class, pv.split_seed);
  const std::set<std::uint32_t> train_ids(split.train.begin(), split.train.end()), val_ids(split.validation.begin(), split.validation.end());
  std::set<std::uint32_t> used_train, used_val, used_test;
  for (const auto& sc : generate_scenes(scene_sources(data, pt), pt).scenes)
    for (const auto& it : sc.items) used_train.insert(it.source);
  for (const auto& sc : generate_scenes(scene_sources(data, pv), pv).scenes)
    for (const auto& it : sc.items) used_val.insert(it.source);
  for (const auto& sc : generate_scenes(scene_sources(data, ps), ps).scenes)
    for (const auto& it : sc.items) {
      used_test.insert(it.source);
      CHECK(data.test.labels[it.source] == it.cls);
    }
  for (auto id : used_train) CHECK(train_ids.count(id) == 1);
  for (auto id : used_val) CHECK(val_ids.count(id) == 1);
  for (auto id : used_test) CHECK(id < data.test.size());
  std::vector<std::uint32_t> both;
  std::set_intersection(used_train.begin(), used_train.end(), used_val.begin(), used_val.end(), std::back_inserter(both));
  CHECK(both.empty());
  CHECK(used_val.size() > 20);  // the validation pool is really used
}

TEST_CASE("scene world: templates, out-of-context items and layout follow the documented table", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 6);
  auto p = small_params(scene_split::train, 2500, 11);
  p.out_of_context_rate = 0.3;
  const scene_set s = generate_scenes(scene_sources(data, p), p);
  const world_statistics w = measure_world(s);
  const double n = static_cast<double>(w.scenes);
  auto within = [&](double count, double prob, double total) {  // binomial count within 4.5 standard deviations
    return std::fabs(count - prob * total) <= 4.5 * std::sqrt(total * prob * (1 - prob)) + 1;
  };
  for (int t = 0; t < outfit_template_count; ++t) CHECK(within(static_cast<double>(w.per_template[static_cast<std::size_t>(t)]), 0.2, n));
  CHECK(within(static_cast<double>(w.out_of_context_scenes), 0.3, n));
  CHECK(within(static_cast<double>(w.pairs), 0.5, n));
  CHECK(w.per_item_count[0] + w.per_item_count[1] == 0);
  CHECK(w.per_item_count[2] > 0);
  CHECK(w.per_item_count[6] > 0);
  CHECK(w.mean_overlap < 0.06);  // little overlap

  // per template: the top slot's in-context classes with the documented weights
  double summer_tops = 0, summer_tshirts = 0, office_feet = 0, office_boots = 0, winter_legs = 0, winter = 0;
  for (const scene& sc : s.scenes) {
    bool ooc_seen = false;
    int feet = 0;
    const scene_item* shoe = nullptr;
    winter += sc.outfit == 1;
    for (const scene_item& it : sc.items) {
      // the flag means exactly: the template does not admit this class in this slot; same group either way
      CHECK(it.out_of_context == !template_admits(sc.outfit, it.slot, it.cls));
      const auto group = slot_group(it.slot);
      CHECK(std::find(group.begin(), group.end(), it.cls) != group.end());
      if (it.out_of_context) {
        CHECK((it.slot == outfit_slot::top || it.slot == outfit_slot::feet));
        if (!ooc_seen) ooc_seen = true;
      }
      if (it.slot == outfit_slot::feet) {
        if (shoe) {  // a pair: the same image, mirrored, the same class
          CHECK(it.source == shoe->source);
          CHECK(it.cls == shoe->cls);
          CHECK(it.mirrored != shoe->mirrored);
          CHECK(it.out_of_context == shoe->out_of_context);
        }
        shoe = &it, ++feet;
      }
      if (sc.outfit == 0 && it.slot == outfit_slot::top && !it.out_of_context) summer_tops += 1, summer_tshirts += it.cls == fashion_class::tshirt;
      if (sc.outfit == 3 && it.slot == outfit_slot::feet && !it.out_of_context && !it.mirrored)
        office_feet += 1, office_boots += it.cls == fashion_class::ankle_boot;
      if (sc.outfit == 1 && it.slot == outfit_slot::legs) winter_legs += 1;
      if (sc.outfit == 4) CHECK(it.slot != outfit_slot::legs);
    }
    CHECK((feet == 1 || feet == 2));
  }
  CHECK(within(summer_tshirts, 0.75, summer_tops));
  CHECK(within(office_boots, 2.0 / 3.0, office_feet));
  CHECK(within(winter_legs, 0.9, winter));
}

TEST_CASE("scene world: masks cover the item and respect the size threshold", "[scene_world]") {
  scene_item it;
  it.box = {30, 20, 50, 60};  // 20 x 40
  const mask_region sq = mask_for(it, mask_shape::square), ci = mask_for(it, mask_shape::circle);
  for (int y = it.box.y1; y < it.box.y2; ++y)
    for (int x = it.box.x1; x < it.box.x2; ++x) {
      CHECK(sq.contains(x, y));
      CHECK(ci.contains(x, y));
    }
  CHECK(sq.pixel_count(200) == 44 * 44);  // side max(w, h) + 2 margins, centred on a pixel boundary
  const double r = 0.5 * std::hypot(20.0, 40.0) + 2;
  CHECK(std::fabs(ci.pixel_count(200) - 3.14159265 * r * r) < 2 * 3.14159265 * r);  // area up to the rim
  CHECK(sq.pixel_count(50) < sq.pixel_count(200));  // clipped by a small canvas
  CHECK(maskable(it, mask_shape::square, 96, 0.25));  // 1 936 of 9 216 pixels: 21 %
  CHECK_FALSE(maskable(it, mask_shape::square, 96, 0.2));
  CHECK(maskable(it, mask_shape::circle, 96, 0.25));         // r = 24.4: about 1 860 px, 20 %
  CHECK_FALSE(maskable(it, mask_shape::circle, 96, 0.19));
  std::vector<float> img(96 * 96, 5.0f), ind(96 * 96, 0.0f);
  apply_mask<float>(img, 96, ci, -1.0f, ind);
  int masked = 0;
  for (int y = 0; y < 96; ++y)
    for (int x = 0; x < 96; ++x) {
      const std::size_t i = static_cast<std::size_t>(y * 96 + x);
      CHECK((img[i] == -1.0f) == ci.contains(x, y));
      CHECK((ind[i] == 1.0f) == ci.contains(x, y));
      masked += ci.contains(x, y);
    }
  CHECK(masked == ci.pixel_count(96));
}

TEST_CASE("scene world: degradations change only the item's box, deterministically", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 7);
  const auto p = small_params(scene_split::test, 6);
  const scene_set s = generate_scenes(scene_sources(data, p), p);
  for (int d = 0; d < 4; ++d) {
    for (std::size_t k = 0; k < s.size(); ++k) {
      const scene_item& it = s.scenes[k].items[k % s.scenes[k].items.size()];
      std::vector<std::uint8_t> a(s.image(k).begin(), s.image(k).end()), b = a;
      degrade_item(a, 96, it, static_cast<degradation>(d), 42 + k);
      degrade_item(b, 96, it, static_cast<degradation>(d), 42 + k);
      CHECK(a == b);
      int changed_inside = 0;
      for (int y = 0; y < 96; ++y)
        for (int x = 0; x < 96; ++x) {
          const std::size_t i = static_cast<std::size_t>(y * 96 + x);
          const bool inside = x >= it.box.x1 && x < it.box.x2 && y >= it.box.y1 && y < it.box.y2;
          if (!inside) CHECK(a[i] == s.image(k)[i]);
          changed_inside += inside && a[i] != s.image(k)[i];
        }
      if (d == 0) CHECK(changed_inside == 0);
      if (d != 0) CHECK(changed_inside > it.box.area() / 10);
    }
  }
}

TEST_CASE("scene world: pictures of scenes", "[scene_world]") {
  const auto data = synthetic_fashion(40, 12, 8);
  const auto p = small_params(scene_split::test, 2);
  const scene_set s = generate_scenes(scene_sources(data, p), p);
  scene_picture_options o;
  o.caption = {"line one", "line two"};
  o.mask = mask_for(s.scenes[0].items[0], mask_shape::circle);
  o.boxes.push_back({10, 10, 30, 30, detection_rgb, "det"});
  const canvas c = render_scene(s, 0, o);
  CHECK(c.width() == 96 * 3);
  CHECK(c.height() == 96 * 3 + 2 * text_line_height(1) + 4);
  // box edges (anti-aliased, 3/4 of the colour over the scene): items green or orange, the extra box blue
  const scene_item& it = s.scenes[0].items.back();
  const rgb8 edge = c.at(it.box.x1 * 3, (it.box.y1 + it.box.y2) / 2 * 3);
  CHECK(edge.g > edge.b + 40);
  const rgb8 det = c.at(10 * 3, 20 * 3);
  CHECK(det.b > det.r + 60);
}

TEST_CASE("image: heat colour scale, rotation and heat maps", "[scene_world][image]") {
  // the scale: white at 0, ColorBrewer YlOrRd's stops (orange #fd8d3c at 1/2, #800026 at 1), darker and darker
  CHECK(heat_rgb(0.0f) == rgb8{255, 255, 255});
  CHECK(heat_rgb(0.5f) == rgb8{253, 141, 60});
  CHECK(heat_rgb(1.0f) == rgb8{128, 0, 38});
  CHECK(heat_rgb(-3.0f) == heat_rgb(0.0f));
  CHECK(heat_rgb(7.0f) == heat_rgb(1.0f));
  CHECK(heat_rgb(std::nanf("")) == heat_rgb(0.0f));
  const auto luma = [](rgb8 c) { return 0.299 * c.r + 0.587 * c.g + 0.114 * c.b; };
  for (int i = 1; i <= 64; ++i) CHECK(luma(heat_rgb(static_cast<float>(i) / 64)) < luma(heat_rgb(static_cast<float>(i - 1) / 64)));

  // a quarter turn counter-clockwise: the top-right pixel goes to the top-left, the top-left to the bottom-left
  canvas small(3, 2);
  small.set(2, 0, rgb8{1, 2, 3});
  small.set(0, 0, rgb8{4, 5, 6});
  const canvas turned = rotated_left(small);
  CHECK(turned.width() == 2);
  CHECK(turned.height() == 3);
  CHECK(turned.at(0, 0) == rgb8{1, 2, 3});
  CHECK(turned.at(0, 2) == rgb8{4, 5, 6});

  // a 2 x 3 map: cell colours from value / vmax (clamped), labels drawn left of and above the cells
  const std::vector<float> values = {0.0f, 0.25f, 0.5f, 0.125f, 1.0f, 0.05f};
  const std::vector<std::string> rows = {"query", "q2"}, cols = {"a", "bb", "longer"};
  heat_map_options o;
  o.cell = 10, o.vmax = 0.5f, o.groups = {1};
  const canvas m = heat_map(values, rows, cols, o);
  const int left = text_width("query", 1) + 4, top = text_width("longer", 1) + 4;
  CHECK(m.width() == left + 3 * 10 + 1);
  CHECK(m.height() == top + 2 * 10 + 1);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) {
      INFO("cell " << i << ", " << j);
      CHECK(m.at(left + j * 10 + 6, top + i * 10 + 5) == heat_rgb(values[static_cast<std::size_t>(i * 3 + j)] / 0.5f));
    }
  CHECK(m.at(left + 16, top + 15) == heat_rgb(1.0f));  // 1.0 over vmax 0.5: clamped to the darkest
  CHECK(m.at(left + 10, top + 3) == text_rgb);  // the group line before column 1
  CHECK(m.at(left + 25, top + 10) == text_rgb);  // and before row 1
  CHECK(m.at(left + 20, top + 3) == gap_rgb);    // an ordinary cell border
  const auto dark_in = [&](int x0, int y0, int x1, int y1) {
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x)
        if (luma(m.at(x, y)) < 100) return true;
    return false;
  };
  CHECK(dark_in(0, top, left - 4, top + 10));      // the row label "query"
  CHECK(dark_in(left, 0, left + 10, top - 4));     // the column label "a"
  CHECK_FALSE(dark_in(0, 0, left - 4, top - 4));   // nothing in the corner
  CHECK_THROWS_AS(heat_map(std::vector<float>(5), rows, cols, o), std::invalid_argument);
  const canvas bar = colour_bar(50, 6, "0", "32 %");
  CHECK(bar.at(0, 0) == heat_rgb(0.0f));
  CHECK(bar.at(49, 3) == heat_rgb(1.0f));
}
