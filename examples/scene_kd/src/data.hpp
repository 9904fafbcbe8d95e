// SPDX-License-Identifier: MIT
#pragma once
// The scene world of a run (train, validation and test scenes, generated once and reused from
// <world-dir>) and the inputs the networks read: normalised pixels, masked scenes (pixels + mask
// indicator), item boxes, image-level labels, degraded items. Every random choice (which item a
// training step masks, with which shape; which test item is degraded) is a function of
// (seed, epoch, scene) through splitmix64, so runs resume exactly.

#include <array>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../common/scene_world_io.hpp"
#include "config.hpp"
#include "models.hpp"

namespace skd {

namespace ex = examples;

struct world {
  ex::scene_set train, validation, test;
  float mean = 0, stddev = 1;  ///< of pixel / 255 over the train scenes
  int side = 96;
};

inline ex::scene_world_params world_params(const world_config& w, ex::scene_split split) {
  ex::scene_world_params p;
  p.seed = w.seed, p.split = split, p.side = w.side, p.out_of_context_rate = w.out_of_context_rate;
  p.validation_per_class = w.validation_per_class, p.split_seed = w.split_seed;
  p.scenes = split == ex::scene_split::train ? w.train_scenes : split == ex::scene_split::validation ? w.validation_scenes : w.test_scenes;
  return p;
}

/// Loads the three splits from `dir` (generating the files that are missing, changed or corrupt)
/// and the pixel statistics of the train scenes.
inline world load_world(const world_config& c, const std::string& data_dir, const std::filesystem::path& dir) {
  world w;
  w.side = c.side;
  const auto p_train = world_params(c, ex::scene_split::train), p_val = world_params(c, ex::scene_split::validation),
             p_test = world_params(c, ex::scene_split::test);
  ex::fashion_mnist fm;  // always read: a file is used only when made from these very images
  distill::throw_if_error(ex::load_fashion_mnist(data_dir, fm));
  w.train = ex::load_or_generate_scenes(dir / ex::scene_file_name(p_train), p_train, fm);
  w.validation = ex::load_or_generate_scenes(dir / ex::scene_file_name(p_val), p_val, fm);
  w.test = ex::load_or_generate_scenes(dir / ex::scene_file_name(p_test), p_test, fm);
  double s = 0, ss = 0;
  for (std::uint8_t v : w.train.pixels) s += v, ss += double(v) * v;
  const double n = static_cast<double>(w.train.pixels.size()) * 255.0 * 255.0;
  const double mean = s / (static_cast<double>(w.train.pixels.size()) * 255.0);
  w.mean = static_cast<float>(mean);
  w.stddev = static_cast<float>(std::sqrt(std::max(ss / n - mean * mean, 1e-12)));
  return w;
}

/// Scene pixels (side x side bytes) as normalised floats.
inline void write_pixels(const world& w, std::span<const std::uint8_t> px, float* out) {
  const float a = 1.0f / (255.0f * w.stddev), b = -w.mean / w.stddev;
  for (std::size_t i = 0; i < px.size(); ++i) out[i] = static_cast<float>(px[i]) * a + b;
}

/// A batch of scenes (B, 1, S, S).
inline void fill_scenes(const world& w, const ex::scene_set& set, std::span<const std::uint32_t> ids, tensor& x) {
  const auto S = static_cast<index_t>(w.side);
  resize(x, {static_cast<index_t>(ids.size()), 1, S, S});
  for (std::size_t i = 0; i < ids.size(); ++i) write_pixels(w, set.image(ids[i]), x.data() + i * static_cast<std::size_t>(S * S));
}

// ---- masked scenes (system A) --------------------------------------------------------------

/// One masked example: scene, item, mask shape.
struct masked_example {
  std::uint32_t scene = 0;
  std::uint16_t item = 0;
  ex::mask_shape shape = ex::mask_shape::square;
};

/// The example a training step draws for `scene` in `epoch`: a mask shape (1/2 each), then an
/// item that shape may mask (uniformly; the other shape when none can be).
inline masked_example draw_masked_example(const ex::scene_set& set, std::uint32_t scene, std::uint64_t seed, std::uint64_t epoch, double max_fraction) {
  ex::splitmix64 r(ex::mix64(ex::mix64(ex::mix64(seed) ^ 0x4D41534Bull /* "MASK" */) + epoch) ^ scene);
  const auto& items = set.scenes[scene].items;
  const int first = static_cast<int>(r.next() >> 63);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto shape = static_cast<ex::mask_shape>((first + attempt) % 2);
    std::vector<std::uint16_t> ok;
    for (std::size_t i = 0; i < items.size(); ++i)
      if (ex::maskable(items[i], shape, set.params.side, max_fraction)) ok.push_back(static_cast<std::uint16_t>(i));
    if (!ok.empty()) return {scene, ok[r.below(ok.size())], shape};
  }
  throw std::runtime_error("scene " + std::to_string(scene) + " has no item a mask of at most the size threshold can hide");
}

/// Every (scene, item, shape) of the scenes whose mask respects the threshold.
inline std::vector<masked_example> all_masked_examples(const ex::scene_set& set, std::uint32_t first, std::uint32_t count, double max_fraction) {
  std::vector<masked_example> out;
  for (std::uint32_t k = first; k < first + count; ++k)
    for (std::size_t i = 0; i < set.scenes[k].items.size(); ++i)
      for (int s = 0; s < 2; ++s)
        if (ex::maskable(set.scenes[k].items[i], static_cast<ex::mask_shape>(s), set.params.side, max_fraction))
          out.push_back({k, static_cast<std::uint16_t>(i), static_cast<ex::mask_shape>(s)});
  return out;
}

/// Masked inputs (B, 2, S, S): channel 0 the normalised scene with the mask at 0 (the training
/// mean), channel 1 the mask indicator; labels the masked items' classes.
inline void fill_masked(const world& w, const ex::scene_set& set, std::span<const masked_example> ex_list, tensor& x, std::vector<std::int64_t>& labels) {
  const int S = w.side;
  const std::size_t plane = static_cast<std::size_t>(S) * S;
  resize(x, {static_cast<index_t>(ex_list.size()), 2, S, S});
  labels.resize(ex_list.size());
  for (std::size_t i = 0; i < ex_list.size(); ++i) {
    const masked_example& e = ex_list[i];
    const ex::scene_item& it = set.scenes[e.scene].items[e.item];
    float* img = x.data() + i * 2 * plane;
    write_pixels(w, set.image(e.scene), img);
    std::fill(img + plane, img + 2 * plane, 0.0f);
    ex::apply_mask<float>(std::span<float>(img, plane), S, ex::mask_for(it, e.shape), 0.0f, std::span<float>(img + plane, plane));
    labels[i] = it.cls;
  }
}

// ---- items (system A recognisers) ------------------------------------------------------------

/// All items of the scenes `ids` (scene i of the batch = ids[i]), with their labels.
inline void fill_items(const world& w, const ex::scene_set& set, std::span<const std::uint32_t> ids, item_batch& b, std::vector<std::int64_t>& labels) {
  std::size_t K = 0;
  for (std::uint32_t id : ids) K += set.scenes[id].items.size();
  resize(b.rois, {static_cast<index_t>(K), 5});
  resize(b.boxes, {static_cast<index_t>(K), 4});
  b.scene_of.resize(K);
  labels.resize(K);
  std::size_t k = 0;
  const float inv = 1.0f / static_cast<float>(w.side);
  for (std::size_t i = 0; i < ids.size(); ++i)
    for (const ex::scene_item& it : set.scenes[ids[i]].items) {
      float* r = b.rois.data() + 5 * k;
      float* g = b.boxes.data() + 4 * k;
      r[0] = static_cast<float>(i);
      r[1] = static_cast<float>(it.box.x1), r[2] = static_cast<float>(it.box.y1), r[3] = static_cast<float>(it.box.x2), r[4] = static_cast<float>(it.box.y2);
      for (int c = 0; c < 4; ++c) g[c] = r[1 + c] * inv;
      b.scene_of[k] = static_cast<std::int64_t>(i);
      labels[k++] = it.cls;
    }
}

/// One item per scene: rois of items[i] of scene ids[i].
inline void fill_single_items(const world& w, const ex::scene_set& set, std::span<const std::uint32_t> ids, std::span<const std::uint16_t> items,
                              item_batch& b, std::vector<std::int64_t>& labels) {
  const index_t K = static_cast<index_t>(ids.size());
  resize(b.rois, {K, 5});
  resize(b.boxes, {K, 4});
  b.scene_of.resize(static_cast<std::size_t>(K));
  labels.resize(static_cast<std::size_t>(K));
  const float inv = 1.0f / static_cast<float>(w.side);
  for (index_t k = 0; k < K; ++k) {
    const ex::scene_item& it = set.scenes[ids[static_cast<std::size_t>(k)]].items[items[static_cast<std::size_t>(k)]];
    float* r = b.rois.data() + 5 * k;
    r[0] = static_cast<float>(k);
    r[1] = static_cast<float>(it.box.x1), r[2] = static_cast<float>(it.box.y1), r[3] = static_cast<float>(it.box.x2), r[4] = static_cast<float>(it.box.y2);
    for (int c = 0; c < 4; ++c) b.boxes.data()[4 * k + c] = r[1 + c] * inv;
    b.scene_of[static_cast<std::size_t>(k)] = k;
    labels[static_cast<std::size_t>(k)] = it.cls;
  }
}

/// The test item degraded with `d` in `scene`: a function of (world seed, d, scene).
inline std::uint16_t degraded_item(const ex::scene_set& set, std::uint32_t scene, ex::degradation d) {
  ex::splitmix64 r(ex::mix64(ex::mix64(set.params.seed ^ 0x44454752ull /* "DEGR" */) + static_cast<std::uint64_t>(d)) ^ scene);
  return static_cast<std::uint16_t>(r.below(set.scenes[scene].items.size()));
}

/// Scenes with one item each degraded (B, 1, S, S).
inline void fill_degraded(const world& w, const ex::scene_set& set, std::span<const std::uint32_t> ids, std::span<const std::uint16_t> items,
                          ex::degradation d, tensor& x) {
  const auto S = static_cast<index_t>(w.side);
  resize(x, {static_cast<index_t>(ids.size()), 1, S, S});
  std::vector<std::uint8_t> px;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto img = set.image(ids[i]);
    px.assign(img.begin(), img.end());
    ex::degrade_item(px, w.side, set.scenes[ids[i]].items[items[i]], d, ex::mix64(set.params.seed + 0x10000ull * static_cast<std::uint64_t>(d)) ^ ids[i]);
    write_pixels(w, px, x.data() + i * static_cast<std::size_t>(S * S));
  }
}

// ---- image-level labels (system B) -----------------------------------------------------------

/// Multi-hot labels (B, 10) of the scenes: which classes are present.
inline std::vector<std::uint8_t> present_classes(const ex::scene_set& set, std::span<const std::uint32_t> ids) {
  std::vector<std::uint8_t> y(ids.size() * classes, 0);
  for (std::size_t i = 0; i < ids.size(); ++i)
    for (const auto& it : set.scenes[ids[i]].items) y[i * classes + it.cls] = 1;
  return y;
}

inline std::vector<std::uint32_t> range_ids(std::uint32_t first, std::uint32_t count) {
  std::vector<std::uint32_t> v(count);
  for (std::uint32_t i = 0; i < count; ++i) v[i] = first + i;
  return v;
}

}  // namespace skd
