// SPDX-License-Identifier: MIT
#pragma once
// The scene world: grey canvases (96 x 96 by default) holding 2 to 6 real Fashion-MNIST items
// dressed as outfits, with every item's box, class, source image, slot and out-of-context flag.
// Shared by the examples that need several objects per image (scene-based KD, multi-label KD from
// a weakly-supervised detector, and the later VQA / detection / relationship examples).
//
// ---- Outfit templates (what context there is to learn) ------------------------------------------
// A scene draws one of five templates (each 1/5). A template says which classes go in each slot:
//
//   template  top slot (weights)            trousers  feet (weights)            bag, each side
//   summer    T-shirt 3, Shirt 1            1/2       Sandal                    1/4
//   winter    Coat 1, Pullover 1            9/10      Ankle boot                1/4
//   sport     T-shirt 1, Pullover 1         4/5       Sneaker                   3/20
//   office    Shirt 2, Coat 1               always    Ankle boot 2, Sneaker 1   1/2
//   evening   Dress (full length, no legs)  never     Sandal 2, Ankle boot 1    1/2
//
// Feet are a pair (the same shoe image, the right one mirrored) with probability 1/2, else one
// shoe. So a scene holds 1 top or dress + 0/1 trousers + 1/2 shoes + 0-2 bags = 2..6 items.
// Slots and where they sit (canvas of side S, coordinates x S/96; centre and pasted size):
//   top    (48, 25)  32-40 px          legs  (48, 60)  32-40 px        full (dress) (48, 41) 46-54 px
//   feet   (48, 84) single, (36, 84) + (60, 84) pair, 22-28 px       side (bags)  (14, 52) / (82, 52) 22-28 px
// The whole outfit shifts by up to +-4 px, each item by up to +-3 px; a layout whose tight boxes
// overlap by more than a quarter of the smaller box is redrawn (16 tries, then the least
// overlapping). Items are the 28 x 28 images resampled (bilinear) to their size.
//
// Out of context: with probability `out_of_context_rate` a scene changes one slot's class to one
// of the same group that its template never puts there (a sandal with a coat: winter feet ->
// Sandal or Sneaker; summer top -> Pullover or Coat), uniformly among the eligible slots (top
// unless a dress, and feet) and classes; a pair changes both shoes. Those items are flagged.
// Groups: upper garments {T-shirt, Pullover, Coat, Shirt}, footwear {Sandal, Sneaker, Ankle boot};
// dress, trousers and bags have no alternative. `measure_world` counts what came out.
//
// ---- Pixels -------------------------------------------------------------------------------------
// Background: a level in [30, 60] + value noise on a 4 x 4 grid (amplitude 22) and a 9 x 9 grid
// (amplitude 10), smoothstep-interpolated, + triangular pixel noise in [-8, 8], + 3-7 faint strokes
// (+20..+60, 1-2 px wide, 10-40 px long), so finding the items is not trivial. An item pixel p
// (resampled, 0..255) covers the background with opacity clamp((p - 8) / 40, 0, 1). Drawing order:
// trousers, top or dress, feet, bags. Box of an item: the tight box [x1, y1, x2, y2) (half-open,
// integer pixels) of its resampled pixels >= 24 (occlusion by later items not subtracted).
//
// ---- Splits and determinism ---------------------------------------------------------------------
// Train scenes draw items only from the training part of the Fashion-MNIST train/validation split
// (split_train_validation with `validation_per_class` and `split_seed`), validation scenes only
// from its validation part, test scenes only from the 10 000 test images. Scene k of a split is a
// function of (seed, split, k) alone: rng = splitmix64(mix64(mix64(mix64(seed) ^ tag(split)) + k)),
// so a set of n scenes is a prefix of a larger one, and generation may run in parallel.
//
// ---- Masks and degradations (what the examples do to a scene) -----------------------------------
// mask_for(item, square | circle): a square of side max(w, h) + 2 margin, or a circle of radius
// half the box diagonal + margin, centred on the box: either covers the whole item. `maskable`
// refuses masks covering more than `max_fraction` of the canvas. degrade_item: additive noise,
// box blur, or a background-like occluder over part of the item's box, seeded.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "fashion_mnist.hpp"
#include "random.hpp"

namespace examples {

// ---- classes, slots, templates --------------------------------------------------------------

namespace fashion_class {
inline constexpr std::uint8_t tshirt = 0, trouser = 1, pullover = 2, dress = 3, coat = 4, sandal = 5, shirt = 6, sneaker = 7, bag = 8,
                              ankle_boot = 9;
}

enum class outfit_slot : std::uint8_t { top = 0, legs = 1, full = 2, feet = 3, side = 4 };
inline constexpr int outfit_slot_count = 5;
inline constexpr std::array<std::string_view, outfit_slot_count> outfit_slot_names = {"top", "legs", "full", "feet", "side"};

/// The classes a slot can hold in any outfit (its group).
inline std::span<const std::uint8_t> slot_group(outfit_slot s) {
  using namespace fashion_class;
  static constexpr std::uint8_t upper[] = {tshirt, pullover, coat, shirt}, dress_g[] = {dress}, legs_g[] = {trouser},
                                footwear[] = {sandal, sneaker, ankle_boot}, bag_g[] = {bag};
  switch (s) {
    case outfit_slot::top: return upper;
    case outfit_slot::legs: return legs_g;
    case outfit_slot::full: return dress_g;
    case outfit_slot::feet: return footwear;
    case outfit_slot::side: return bag_g;
  }
  return {};
}

struct weighted_class {
  std::uint8_t cls = 0, weight = 0;  // weight 0: unused entry
};

struct outfit_template {
  std::string_view name;
  bool dress = false;                 ///< the top slot is a full-length dress (no trousers)
  std::array<weighted_class, 2> top;  ///< top (or full) slot
  double legs = 0;                    ///< probability of trousers
  std::array<weighted_class, 2> feet;
  double bag = 0;                     ///< probability of a bag on each side
};

inline constexpr int outfit_template_count = 5;
inline constexpr std::array<outfit_template, outfit_template_count> outfit_templates = {{
    {"summer", false, {{{fashion_class::tshirt, 3}, {fashion_class::shirt, 1}}}, 0.5, {{{fashion_class::sandal, 1}, {}}}, 0.25},
    {"winter", false, {{{fashion_class::coat, 1}, {fashion_class::pullover, 1}}}, 0.9, {{{fashion_class::ankle_boot, 1}, {}}}, 0.25},
    {"sport", false, {{{fashion_class::tshirt, 1}, {fashion_class::pullover, 1}}}, 0.8, {{{fashion_class::sneaker, 1}, {}}}, 0.15},
    {"office", false, {{{fashion_class::shirt, 2}, {fashion_class::coat, 1}}}, 1.0, {{{fashion_class::ankle_boot, 2}, {fashion_class::sneaker, 1}}}, 0.5},
    {"evening", true, {{{fashion_class::dress, 1}, {}}}, 0.0, {{{fashion_class::sandal, 2}, {fashion_class::ankle_boot, 1}}}, 0.5},
}};
inline constexpr double pair_of_shoes_probability = 0.5;

/// Whether template t ever puts class c in slot s (the in-context classes of the slot).
inline bool template_admits(int t, outfit_slot s, std::uint8_t c) {
  const outfit_template& o = outfit_templates.at(static_cast<std::size_t>(t));
  auto in = [c](const std::array<weighted_class, 2>& w) { return (w[0].weight && w[0].cls == c) || (w[1].weight && w[1].cls == c); };
  switch (s) {
    case outfit_slot::top: return !o.dress && in(o.top);
    case outfit_slot::full: return o.dress && in(o.top);
    case outfit_slot::legs: return o.legs > 0 && c == fashion_class::trouser;
    case outfit_slot::feet: return in(o.feet);
    case outfit_slot::side: return o.bag > 0 && c == fashion_class::bag;
  }
  return false;
}

// ---- scenes -----------------------------------------------------------------------------------

enum class scene_split : std::uint8_t { train = 0, validation = 1, test = 2 };
inline constexpr std::array<std::string_view, 3> scene_split_names = {"train", "validation", "test"};

struct scene_world_params {
  std::uint64_t seed = 1;
  scene_split split = scene_split::train;
  std::uint32_t scenes = 1000;
  int side = 96;                          ///< canvas side in pixels, 64..255
  double out_of_context_rate = 0.25;      ///< probability that a scene has an out-of-context slot
  std::uint32_t validation_per_class = 500;  ///< the Fashion-MNIST train/validation split the items come from
  std::uint64_t split_seed = 1;
  friend bool operator==(const scene_world_params&, const scene_world_params&) = default;
};

/// A half-open integer pixel box [x1, x2) x [y1, y2).
struct pixel_box {
  int x1 = 0, y1 = 0, x2 = 0, y2 = 0;
  int width() const { return x2 - x1; }
  int height() const { return y2 - y1; }
  int area() const { return std::max(0, width()) * std::max(0, height()); }
  float centre_x() const { return 0.5f * static_cast<float>(x1 + x2); }
  float centre_y() const { return 0.5f * static_cast<float>(y1 + y2); }
  friend bool operator==(const pixel_box&, const pixel_box&) = default;
};

inline int intersection_area(const pixel_box& a, const pixel_box& b) {
  const int w = std::min(a.x2, b.x2) - std::max(a.x1, b.x1), h = std::min(a.y2, b.y2) - std::max(a.y1, b.y1);
  return w > 0 && h > 0 ? w * h : 0;
}

struct scene_item {
  std::uint8_t cls = 0;          ///< Fashion-MNIST class 0..9
  outfit_slot slot = outfit_slot::top;
  bool out_of_context = false;   ///< its class is one the scene's template never puts in its slot
  bool mirrored = false;         ///< drawn flipped horizontally (the right shoe of a pair)
  std::uint8_t size = 28;        ///< side of the resampled 28 x 28 image, pixels
  std::uint8_t x0 = 0, y0 = 0;   ///< top-left corner of the resampled image on the canvas
  pixel_box box;                 ///< tight box of the item's pixels
  std::uint32_t source = 0;      ///< index into the Fashion-MNIST set (train set for train/validation scenes, test set for test scenes)
  friend bool operator==(const scene_item&, const scene_item&) = default;
};

struct scene {
  std::uint8_t outfit = 0;  ///< template index
  std::vector<scene_item> items;
  friend bool operator==(const scene&, const scene&) = default;
};

/// Scenes and their pixels (scenes x side x side grey bytes, row-major).
struct scene_set {
  scene_world_params params;
  std::vector<scene> scenes;
  std::vector<std::uint8_t> pixels;

  std::size_t size() const { return scenes.size(); }
  std::size_t pixels_per_scene() const { return static_cast<std::size_t>(params.side) * static_cast<std::size_t>(params.side); }
  std::span<const std::uint8_t> image(std::size_t i) const { return std::span<const std::uint8_t>(pixels).subspan(i * pixels_per_scene(), pixels_per_scene()); }
  std::span<std::uint8_t> image(std::size_t i) { return std::span<std::uint8_t>(pixels).subspan(i * pixels_per_scene(), pixels_per_scene()); }
  std::size_t item_count() const {
    std::size_t n = 0;
    for (const auto& s : scenes) n += s.items.size();
    return n;
  }
};

/// The Fashion-MNIST images a split's items come from: the source set, the allowed indices
/// (ascending) and the same indices grouped by class.
struct scene_item_source {
  const labelled_images* images = nullptr;
  std::vector<std::uint32_t> ids;
  std::array<std::vector<std::uint32_t>, fashion_classes> by_class;
};

inline scene_item_source make_item_source(const labelled_images& images, std::vector<std::uint32_t> ids) {
  scene_item_source s{&images, std::move(ids), {}};
  std::sort(s.ids.begin(), s.ids.end());
  for (std::uint32_t id : s.ids) s.by_class[images.labels.at(id)].push_back(id);
  return s;
}

/// The items a split may use: train and validation scenes the two parts of the Fashion-MNIST
/// training images (split_train_validation), test scenes the test images.
inline scene_item_source scene_sources(const fashion_mnist& data, const scene_world_params& p) {
  if (p.split == scene_split::test) return make_item_source(data.test, all_ids(data.test.size()));
  auto split = split_train_validation(data.train, p.validation_per_class, p.split_seed);
  return make_item_source(data.train, p.split == scene_split::train ? std::move(split.train) : std::move(split.validation));
}

inline void validate(const scene_world_params& p) {
  if (p.side < 64 || p.side > 255) throw std::invalid_argument("scene world: side must be in [64, 255], not " + std::to_string(p.side));
  if (!(p.out_of_context_rate >= 0 && p.out_of_context_rate <= 1)) throw std::invalid_argument("scene world: out_of_context_rate must be in [0, 1]");
  if (static_cast<int>(p.split) > 2) throw std::invalid_argument("scene world: unknown split");
}

// ---- generation -------------------------------------------------------------------------------

namespace scene_detail {

inline constexpr std::uint64_t split_tags[3] = {0x545241494Eull /* "TRAIN" */, 0x56414C4944ull /* "VALID" */, 0x54455354ull /* "TEST" */};
inline constexpr int item_threshold = 24;  // resampled pixel value that belongs to an item's box

inline double uniform01(splitmix64& r) { return static_cast<double>(r.next() >> 11) * 0x1.0p-53; }
inline int uniform_int(splitmix64& r, int lo, int hi) { return lo + static_cast<int>(r.below(static_cast<std::uint64_t>(hi - lo + 1))); }

inline std::uint8_t pick(splitmix64& r, const std::array<weighted_class, 2>& w) {
  const int total = w[0].weight + w[1].weight;
  return static_cast<int>(r.below(static_cast<std::uint64_t>(total))) < w[0].weight ? w[0].cls : w[1].cls;
}

/// The 28 x 28 image resampled to s x s (bilinear, pixel centres aligned), optionally mirrored.
inline std::vector<float> resample(std::span<const std::uint8_t> src, int s, bool mirror) {
  std::vector<float> out(static_cast<std::size_t>(s) * s);
  const float ratio = static_cast<float>(fashion_side) / static_cast<float>(s);
  auto at = [&](int y, int x) { return static_cast<float>(src[static_cast<std::size_t>(y * fashion_side + x)]); };
  for (int y = 0; y < s; ++y) {
    const float sy = std::clamp((static_cast<float>(y) + 0.5f) * ratio - 0.5f, 0.0f, static_cast<float>(fashion_side - 1));
    const int y0 = static_cast<int>(sy), y1 = std::min(y0 + 1, fashion_side - 1);
    const float fy = sy - static_cast<float>(y0);
    for (int x = 0; x < s; ++x) {
      const int xs = mirror ? s - 1 - x : x;
      const float sx = std::clamp((static_cast<float>(xs) + 0.5f) * ratio - 0.5f, 0.0f, static_cast<float>(fashion_side - 1));
      const int x0 = static_cast<int>(sx), x1 = std::min(x0 + 1, fashion_side - 1);
      const float fx = sx - static_cast<float>(x0);
      out[static_cast<std::size_t>(y * s + x)] =
          (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
    }
  }
  return out;
}

/// Tight box (canvas coordinates) of the pixels >= item_threshold of a resampled item at (x0, y0).
inline pixel_box tight_box(const std::vector<float>& img, int s, int x0, int y0) {
  pixel_box b{s, s, -1, -1};
  for (int y = 0; y < s; ++y)
    for (int x = 0; x < s; ++x)
      if (img[static_cast<std::size_t>(y * s + x)] >= static_cast<float>(item_threshold)) {
        b.x1 = std::min(b.x1, x), b.y1 = std::min(b.y1, y), b.x2 = std::max(b.x2, x + 1), b.y2 = std::max(b.y2, y + 1);
      }
  if (b.x2 < 0) b = {s / 2, s / 2, s / 2 + 1, s / 2 + 1};  // an (almost) empty image: a 1-pixel box at its centre
  return {b.x1 + x0, b.y1 + y0, b.x2 + x0, b.y2 + y0};
}

/// Smooth value noise in [-1, 1]: a (g + 1) x (g + 1) grid of random values, smoothstep-interpolated.
inline void add_value_noise(std::vector<float>& bg, int side, int g, float amplitude, splitmix64& r) {
  std::vector<float> grid(static_cast<std::size_t>((g + 1) * (g + 1)));
  for (auto& v : grid) v = static_cast<float>(2 * uniform01(r) - 1);
  for (int y = 0; y < side; ++y) {
    const float gy = static_cast<float>(y) / static_cast<float>(side) * static_cast<float>(g);
    const int iy = std::min(static_cast<int>(gy), g - 1);
    float ty = gy - static_cast<float>(iy);
    ty = ty * ty * (3 - 2 * ty);
    for (int x = 0; x < side; ++x) {
      const float gx = static_cast<float>(x) / static_cast<float>(side) * static_cast<float>(g);
      const int ix = std::min(static_cast<int>(gx), g - 1);
      float tx = gx - static_cast<float>(ix);
      tx = tx * tx * (3 - 2 * tx);
      auto at = [&](int a, int b) { return grid[static_cast<std::size_t>(a * (g + 1) + b)]; };
      const float v = (1 - ty) * ((1 - tx) * at(iy, ix) + tx * at(iy, ix + 1)) + ty * ((1 - tx) * at(iy + 1, ix) + tx * at(iy + 1, ix + 1));
      bg[static_cast<std::size_t>(y * side + x)] += amplitude * v;
    }
  }
}

inline std::vector<float> background(int side, splitmix64& r) {
  std::vector<float> bg(static_cast<std::size_t>(side) * side, static_cast<float>(30 + 30 * uniform01(r)));
  add_value_noise(bg, side, 4, 22.0f, r);
  add_value_noise(bg, side, 9, 10.0f, r);
  const int strokes = uniform_int(r, 3, 7);
  for (int k = 0; k < strokes; ++k) {
    const float x0 = static_cast<float>(uniform01(r) * side), y0 = static_cast<float>(uniform01(r) * side);
    const float angle = static_cast<float>(uniform01(r) * 6.283185307179586), len = static_cast<float>(10 + 30 * uniform01(r));
    const float x1 = x0 + len * std::cos(angle), y1 = y0 + len * std::sin(angle);
    const float half = static_cast<float>(0.5 + 0.5 * uniform01(r)), add = static_cast<float>(20 + 40 * uniform01(r));
    const float dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    const int bx0 = std::max(0, static_cast<int>(std::floor(std::min(x0, x1) - 2))), bx1 = std::min(side - 1, static_cast<int>(std::ceil(std::max(x0, x1) + 2)));
    const int by0 = std::max(0, static_cast<int>(std::floor(std::min(y0, y1) - 2))), by1 = std::min(side - 1, static_cast<int>(std::ceil(std::max(y0, y1) + 2)));
    for (int y = by0; y <= by1; ++y)
      for (int x = bx0; x <= bx1; ++x) {
        const float px = static_cast<float>(x) + 0.5f - x0, py = static_cast<float>(y) + 0.5f - y0;
        const float t = std::clamp((px * dx + py * dy) / len2, 0.0f, 1.0f);
        const float d = std::hypot(px - t * dx, py - t * dy);
        bg[static_cast<std::size_t>(y * side + x)] += add * std::clamp(half + 0.5f - d, 0.0f, 1.0f);
      }
  }
  for (auto& v : bg) v += static_cast<float>(8 * (uniform01(r) + uniform01(r) - 1));
  return bg;
}

/// A planned item before its pixels exist.
struct planned_item {
  std::uint8_t cls;
  outfit_slot slot;
  bool mirrored;
  int cx, cy, size_lo, size_hi;  // at side 96
  int pair_of = -1;              // index of the shoe this one mirrors
};

}  // namespace scene_detail

/// Scene `index` of a split: its items (with boxes) and pixels (side x side bytes into `pixels`).
inline scene generate_scene(const scene_item_source& source, const scene_world_params& p, std::uint64_t index, std::span<std::uint8_t> pixels) {
  using namespace scene_detail;
  namespace fc = fashion_class;
  const int side = p.side;
  if (pixels.size() != static_cast<std::size_t>(side) * side) throw std::invalid_argument("generate_scene: pixels must hold side x side bytes");
  splitmix64 r(mix64(mix64(mix64(p.seed) ^ split_tags[static_cast<int>(p.split)]) + index));

  // which classes go where
  scene sc;
  sc.outfit = static_cast<std::uint8_t>(r.below(outfit_template_count));
  const outfit_template& t = outfit_templates[sc.outfit];
  std::vector<planned_item> plan;
  if (uniform01(r) < t.legs) plan.push_back({fc::trouser, outfit_slot::legs, false, 48, 60, 32, 40});
  if (t.dress)
    plan.push_back({pick(r, t.top), outfit_slot::full, false, 48, 41, 46, 54});
  else
    plan.push_back({pick(r, t.top), outfit_slot::top, false, 48, 25, 32, 40});
  const std::uint8_t shoe = pick(r, t.feet);
  if (uniform01(r) < pair_of_shoes_probability) {
    plan.push_back({shoe, outfit_slot::feet, false, 36, 84, 22, 28});
    plan.push_back({shoe, outfit_slot::feet, true, 60, 84, 22, 28, static_cast<int>(plan.size()) - 1});
  } else {
    plan.push_back({shoe, outfit_slot::feet, false, 48, 84, 22, 28});
  }
  for (const int cx : {14, 82})
    if (uniform01(r) < t.bag) plan.push_back({fc::bag, outfit_slot::side, false, cx, 52, 22, 28});

  // out of context: one slot (top unless a dress, or feet) gets a class of its group the template never uses there
  std::vector<bool> ooc(plan.size(), false);
  if (uniform01(r) < p.out_of_context_rate) {
    std::vector<outfit_slot> eligible;
    if (!t.dress) eligible.push_back(outfit_slot::top);
    eligible.push_back(outfit_slot::feet);
    const outfit_slot s = eligible[r.below(eligible.size())];
    std::vector<std::uint8_t> others;
    for (std::uint8_t c : slot_group(s))
      if (!template_admits(sc.outfit, s, c)) others.push_back(c);
    const std::uint8_t c = others[r.below(others.size())];
    for (std::size_t i = 0; i < plan.size(); ++i)
      if (plan[i].slot == s) plan[i].cls = c, ooc[i] = true;
  }

  // source images (a pair shares its image)
  const auto& images = *source.images;
  std::vector<std::uint32_t> src(plan.size());
  for (std::size_t i = 0; i < plan.size(); ++i) {
    if (plan[i].pair_of >= 0) {
      src[i] = src[static_cast<std::size_t>(plan[i].pair_of)];
      continue;
    }
    const auto& pool = source.by_class[plan[i].cls];
    if (pool.empty()) throw std::invalid_argument("generate_scene: the source has no image of class " + std::string(fashion_class_names[plan[i].cls]));
    src[i] = pool[r.below(pool.size())];
  }

  // layout: sizes and jitter, redrawn while tight boxes overlap too much
  const float scale = static_cast<float>(side) / 96.0f;
  std::vector<std::vector<float>> resampled(plan.size());
  std::vector<scene_item> best;
  double best_overlap = 2.0;
  for (int attempt = 0; attempt < 16 && best_overlap > 0.25; ++attempt) {
    const int gx = uniform_int(r, -4, 4), gy = uniform_int(r, -4, 4);
    std::vector<scene_item> items(plan.size());
    std::vector<int> sizes(plan.size());
    for (std::size_t i = 0; i < plan.size(); ++i) {
      const planned_item& q = plan[i];
      sizes[i] = q.pair_of >= 0 ? sizes[static_cast<std::size_t>(q.pair_of)] : static_cast<int>(std::lround(static_cast<float>(uniform_int(r, q.size_lo, q.size_hi)) * scale));
      const int jx = uniform_int(r, -3, 3), jy = uniform_int(r, -3, 3);
      const int s = sizes[i];
      const int cx = static_cast<int>(std::lround(static_cast<float>(q.cx + gx + jx) * scale)),
                cy = static_cast<int>(std::lround(static_cast<float>(q.cy + gy + jy) * scale));
      scene_item& it = items[i];
      it.cls = q.cls, it.slot = q.slot, it.out_of_context = ooc[i], it.mirrored = q.mirrored, it.source = src[i];
      it.size = static_cast<std::uint8_t>(s);
      it.x0 = static_cast<std::uint8_t>(std::clamp(cx - s / 2, 0, side - s));
      it.y0 = static_cast<std::uint8_t>(std::clamp(cy - s / 2, 0, side - s));
      if (resampled[i].size() != static_cast<std::size_t>(s) * s) resampled[i] = resample(images.image(src[i]), s, q.mirrored);
      it.box = tight_box(resampled[i], s, it.x0, it.y0);
    }
    double worst = 0;
    for (std::size_t a = 0; a < items.size(); ++a)
      for (std::size_t b = a + 1; b < items.size(); ++b) {
        const int m = std::min(items[a].box.area(), items[b].box.area());
        if (m > 0) worst = std::max(worst, static_cast<double>(intersection_area(items[a].box, items[b].box)) / m);
      }
    if (worst < best_overlap) best_overlap = worst, best = std::move(items);
  }
  sc.items = std::move(best);

  // pixels: background, then the items in order
  std::vector<float> canvas = background(side, r);
  for (const scene_item& it : sc.items) {
    const std::vector<float> img = resample(images.image(it.source), it.size, it.mirrored);
    for (int y = 0; y < it.size; ++y)
      for (int x = 0; x < it.size; ++x) {
        const float v = img[static_cast<std::size_t>(y * it.size + x)];
        const float alpha = std::clamp((v - 8.0f) / 40.0f, 0.0f, 1.0f);
        float& c = canvas[static_cast<std::size_t>((it.y0 + y) * side + it.x0 + x)];
        c = alpha * v + (1 - alpha) * c;
      }
  }
  for (std::size_t i = 0; i < canvas.size(); ++i) pixels[i] = static_cast<std::uint8_t>(std::clamp(std::lround(canvas[i]), 0L, 255L));
  return sc;
}

/// All scenes of a split.
inline scene_set generate_scenes(const scene_item_source& source, const scene_world_params& p) {
  validate(p);
  if (!source.images) throw std::invalid_argument("generate_scenes: no source images");
  scene_set s;
  s.params = p;
  s.scenes.resize(p.scenes);
  s.pixels.resize(static_cast<std::size_t>(p.scenes) * s.pixels_per_scene());
  for (std::uint32_t k = 0; k < p.scenes; ++k) s.scenes[k] = generate_scene(source, p, k, s.image(k));
  return s;
}

// ---- what came out: template and context statistics ----------------------------------------

struct world_statistics {
  std::size_t scenes = 0, items = 0;
  std::array<std::size_t, outfit_template_count> per_template{};
  std::array<std::size_t, fashion_classes> per_class{};
  std::array<std::size_t, 7> per_item_count{};  ///< scenes holding n items, n = 0..6
  std::size_t out_of_context_items = 0, out_of_context_scenes = 0, pairs = 0;
  double mean_overlap = 0, max_overlap = 0;     ///< pairwise tight-box intersection / smaller area
  double out_of_context_item_fraction() const { return items ? static_cast<double>(out_of_context_items) / static_cast<double>(items) : 0; }
  double out_of_context_scene_fraction() const { return scenes ? static_cast<double>(out_of_context_scenes) / static_cast<double>(scenes) : 0; }
};

inline world_statistics measure_world(const scene_set& s) {
  world_statistics w;
  std::size_t overlap_pairs = 0;
  double overlap_sum = 0;
  for (const scene& sc : s.scenes) {
    ++w.scenes, ++w.per_template[sc.outfit], ++w.per_item_count[std::min<std::size_t>(sc.items.size(), 6)];
    bool any = false;
    int feet = 0;
    for (std::size_t a = 0; a < sc.items.size(); ++a) {
      const scene_item& it = sc.items[a];
      ++w.items, ++w.per_class[it.cls];
      if (it.out_of_context) ++w.out_of_context_items, any = true;
      feet += it.slot == outfit_slot::feet;
      for (std::size_t b = a + 1; b < sc.items.size(); ++b) {
        const int m = std::min(it.box.area(), sc.items[b].box.area());
        const double o = m > 0 ? static_cast<double>(intersection_area(it.box, sc.items[b].box)) / m : 0.0;
        overlap_sum += o, ++overlap_pairs, w.max_overlap = std::max(w.max_overlap, o);
      }
    }
    w.out_of_context_scenes += any;
    w.pairs += feet == 2;
  }
  w.mean_overlap = overlap_pairs ? overlap_sum / static_cast<double>(overlap_pairs) : 0;
  return w;
}

// ---- masks ------------------------------------------------------------------------------------

enum class mask_shape : std::uint8_t { square = 0, circle = 1 };
inline constexpr std::array<std::string_view, 2> mask_shape_names = {"square", "circle"};

/// A square (half side) or circle (radius) centred at (cx, cy), in pixels; pixel (x, y) is inside
/// when its centre (x + 1/2, y + 1/2) is.
struct mask_region {
  mask_shape shape = mask_shape::square;
  float cx = 0, cy = 0, half = 0;
  bool contains(int x, int y) const {
    const float dx = static_cast<float>(x) + 0.5f - cx, dy = static_cast<float>(y) + 0.5f - cy;
    return shape == mask_shape::square ? std::fabs(dx) < half && std::fabs(dy) < half : dx * dx + dy * dy < half * half;
  }
  /// Its bounding box, clipped to a side x side canvas.
  pixel_box bounds(int side) const {
    return {std::clamp(static_cast<int>(std::floor(cx - half)), 0, side), std::clamp(static_cast<int>(std::floor(cy - half)), 0, side),
            std::clamp(static_cast<int>(std::ceil(cx + half)), 0, side), std::clamp(static_cast<int>(std::ceil(cy + half)), 0, side)};
  }
  /// Canvas pixels it covers.
  int pixel_count(int side) const {
    const pixel_box b = bounds(side);
    int n = 0;
    for (int y = b.y1; y < b.y2; ++y)
      for (int x = b.x1; x < b.x2; ++x) n += contains(x, y);
    return n;
  }
};

/// The mask hiding an item: a square of side max(w, h) + 2 margin or a circle of radius
/// half the box diagonal + margin, centred on its box (either covers the whole box).
inline mask_region mask_for(const scene_item& it, mask_shape shape, float margin = 2.0f) {
  const float w = static_cast<float>(it.box.width()), h = static_cast<float>(it.box.height());
  const float half = shape == mask_shape::square ? 0.5f * std::max(w, h) + margin : 0.5f * std::hypot(w, h) + margin;
  return {shape, it.box.centre_x(), it.box.centre_y(), half};
}

/// Whether the mask of `it` covers at most `max_fraction` of the canvas (the size threshold).
inline bool maskable(const scene_item& it, mask_shape shape, int side, double max_fraction, float margin = 2.0f) {
  return mask_for(it, shape, margin).pixel_count(side) <= max_fraction * side * side;
}

/// Sets the masked pixels of a side x side image to `fill` (and to 1 in `indicator`, when given).
template <class T>
void apply_mask(std::span<T> image, int side, const mask_region& m, T fill, std::span<T> indicator = {}) {
  const pixel_box b = m.bounds(side);
  for (int y = b.y1; y < b.y2; ++y)
    for (int x = b.x1; x < b.x2; ++x)
      if (m.contains(x, y)) {
        image[static_cast<std::size_t>(y * side + x)] = fill;
        if (!indicator.empty()) indicator[static_cast<std::size_t>(y * side + x)] = T(1);
      }
}

// ---- degradations ----------------------------------------------------------------------------

enum class degradation : std::uint8_t { none = 0, noise = 1, blur = 2, occlusion = 3 };
inline constexpr std::array<std::string_view, 4> degradation_names = {"clean", "noise", "blur", "occlusion"};

struct degradation_options {
  int noise_amplitude = 110;   ///< noise: + uniform integer in [-a, a] on every pixel of the box
  int blur_radius = 3;         ///< blur: three passes of a (2r + 1) box filter over the box (about a Gaussian of sigma 1.7 r)
  double occluded_fraction = 0.5;  ///< occlusion: this share of the box, from a random side, becomes background-like texture
};

/// Degrades the pixels of one item (its box) in a side x side grey image, deterministically from `seed`.
inline void degrade_item(std::span<std::uint8_t> image, int side, const scene_item& it, degradation d, std::uint64_t seed,
                         const degradation_options& o = {}) {
  using scene_detail::uniform01;
  splitmix64 r(mix64(seed ^ 0x444547524144ull /* "DEGRAD" */));
  const pixel_box b{std::max(0, it.box.x1), std::max(0, it.box.y1), std::min(side, it.box.x2), std::min(side, it.box.y2)};
  auto px = [&](int x, int y) -> std::uint8_t& { return image[static_cast<std::size_t>(y * side + x)]; };
  if (d == degradation::noise) {
    for (int y = b.y1; y < b.y2; ++y)
      for (int x = b.x1; x < b.x2; ++x) {
        const int v = px(x, y) + static_cast<int>(r.below(static_cast<std::uint64_t>(2 * o.noise_amplitude + 1))) - o.noise_amplitude;
        px(x, y) = static_cast<std::uint8_t>(std::clamp(v, 0, 255));
      }
  } else if (d == degradation::blur) {
    const int w = b.width(), h = b.height(), rad = o.blur_radius;
    if (w <= 0 || h <= 0) return;
    std::vector<float> a(static_cast<std::size_t>(w) * h), t(a.size());
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) a[static_cast<std::size_t>(y * w + x)] = px(b.x1 + x, b.y1 + y);
    for (int pass = 0; pass < 3; ++pass) {  // separable box filter, edges clamped inside the box
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          float s = 0;
          for (int k = -rad; k <= rad; ++k) s += a[static_cast<std::size_t>(y * w + std::clamp(x + k, 0, w - 1))];
          t[static_cast<std::size_t>(y * w + x)] = s / static_cast<float>(2 * rad + 1);
        }
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          float s = 0;
          for (int k = -rad; k <= rad; ++k) s += t[static_cast<std::size_t>(std::clamp(y + k, 0, h - 1) * w + x)];
          a[static_cast<std::size_t>(y * w + x)] = s / static_cast<float>(2 * rad + 1);
        }
    }
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) px(b.x1 + x, b.y1 + y) = static_cast<std::uint8_t>(std::clamp(std::lround(a[static_cast<std::size_t>(y * w + x)]), 0L, 255L));
  } else if (d == degradation::occlusion) {
    pixel_box o_box = b;
    const int from = static_cast<int>(r.below(4));  // left, right, top, bottom
    const int cw = static_cast<int>(std::lround(b.width() * o.occluded_fraction)), ch = static_cast<int>(std::lround(b.height() * o.occluded_fraction));
    if (from == 0) o_box.x2 = b.x1 + cw;
    if (from == 1) o_box.x1 = b.x2 - cw;
    if (from == 2) o_box.y2 = b.y1 + ch;
    if (from == 3) o_box.y1 = b.y2 - ch;
    const double level = 35 + 30 * uniform01(r);
    for (int y = o_box.y1; y < o_box.y2; ++y)
      for (int x = o_box.x1; x < o_box.x2; ++x)
        px(x, y) = static_cast<std::uint8_t>(std::clamp(std::lround(level + 10 * (uniform01(r) + uniform01(r) - 1)), 0L, 255L));
  }
}

}  // namespace examples
