// SPDX-License-Identifier: MIT
#pragma once
// What the scene-world tests share: synthetic "Fashion-MNIST" images (no data files needed),
// small world parameters, temporary directories and byte-level file helpers.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../../examples/common/scene_world.hpp"
#include "support/random.hpp"

namespace scene_world_test {

namespace fs = std::filesystem;
using namespace examples;

/// A stand-in for Fashion-MNIST: per class, filled rectangles of a class-dependent shape and a
/// random brightness, `train` + `test` images per class.
inline fashion_mnist synthetic_fashion(int train_per_class, int test_per_class, std::uint64_t salt) {
  distill_test::rng g(salt);
  auto make = [&](labelled_images& out, int per_class) {
    for (int i = 0; i < per_class; ++i)
      for (int c = 0; c < fashion_classes; ++c) {
        out.labels.push_back(static_cast<std::uint8_t>(c));
        const int w = 8 + 2 * c, h = 26 - 2 * (c % 5);
        const int v = static_cast<int>(g.integer(90, 250));
        for (int y = 0; y < fashion_side; ++y)
          for (int x = 0; x < fashion_side; ++x) {
            const bool in = std::abs(2 * x + 1 - fashion_side) < w && std::abs(2 * y + 1 - fashion_side) < h;
            out.pixels.push_back(static_cast<std::uint8_t>(in ? v - static_cast<int>(g.integer(0, 30)) : 0));
          }
      }
  };
  fashion_mnist d;
  make(d.train, train_per_class);
  make(d.test, test_per_class);
  return d;
}

inline scene_world_params small_params(scene_split split, std::uint32_t scenes, std::uint64_t seed = 7) {
  scene_world_params p;
  p.seed = seed, p.split = split, p.scenes = scenes, p.validation_per_class = 6, p.split_seed = 3;
  return p;
}

inline fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("distill_scene_world_" + name + "_" + std::to_string(distill_test::test_seed()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

inline std::vector<unsigned char> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), {});
}
inline void write_bytes(const fs::path& p, const std::vector<unsigned char>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
inline std::uint64_t le(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
/// FNV-1a 64, written out again here (the formats' checksum), to check and re-seal edited files.
inline std::uint64_t fnv(const unsigned char* p, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
inline void put(unsigned char* p, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

}  // namespace scene_world_test
