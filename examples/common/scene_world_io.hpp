// SPDX-License-Identifier: MIT
#pragma once
// Scene-world files (scene_world.hpp): a documented binary format with checksums, written
// atomically through distill/core/file_io.hpp, and `load_or_generate_scenes`, which regenerates a
// file when it is missing, was made with other parameters (or by another generator or format
// version, or from other Fashion-MNIST files), or is corrupt or truncated. A file that fails any
// check is never used: the reason is printed and the scenes are generated again.
//
// Format, version 1. Integers little-endian; offsets in bytes.
//   header (88 bytes)
//      0  8  magic "FMSCENES"
//      8  4  format version (1)
//     12  4  generator version (scene_generator_version: the scenes a given parameter set makes)
//     16  8  seed
//     24  4  split (0 train, 1 validation, 2 test)
//     28  4  scenes
//     32  4  canvas side
//     36  4  out-of-context rate in millionths
//     40  4  validation images per class of the Fashion-MNIST split the items come from
//     44  4  items in all scenes
//     48  8  seed of that Fashion-MNIST split
//     56  8  source fingerprint: FNV-1a 64 of the source set's labels, then its pixels
//     64  8  payload bytes
//     72  8  payload checksum: FNV-1a 64 of the payload
//     80  8  header checksum: FNV-1a 64 of bytes [0, 80)
//   payload, three sections back to back
//     scenes  scenes x 2 bytes: template (0..4), item count (2..6)
//     items   items x 16 bytes, scene by scene: class, slot (0 top, 1 legs, 2 full, 3 feet, 4 side),
//             flags (bit 0 out of context, bit 1 mirrored), size, x0, y0, box x1, y1, x2, y2 (one byte
//             each), source image index (u32), two zero bytes
//     pixels  scenes x side x side grey bytes, row-major
// 4 000 scenes of 96 x 96 make a 37 MB file. Files derived from a scene set (the question files of
// scene_questions_io.hpp) record its payload checksum (scene_set_checksum) to notice a changed world.
//
// Checks on reading, in order (the first failure decides): missing -> generate; shorter than the
// header, bad magic or header checksum -> corrupt; other format or generator version, other
// parameters or other source images -> changed; payload size inconsistent with the header, file
// size != 88 + payload (truncated or trailing bytes), payload checksum -> corrupt; then every
// record: template, counts, class, slot, flags, geometry inside the canvas, a box inside its
// pasted image, a source index in range whose label is the item's class, and the out-of-context
// flag equal to "the template does not admit this class in this slot" -> corrupt otherwise.

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "distill/core/file_io.hpp"
#include "scene_world.hpp"

namespace examples {

inline constexpr std::array<char, 8> scene_file_magic = {'F', 'M', 'S', 'C', 'E', 'N', 'E', 'S'};
inline constexpr std::uint32_t scene_file_format_version = 1;
inline constexpr std::uint32_t scene_generator_version = 1;
inline constexpr std::size_t scene_file_header_bytes = 88;
inline constexpr std::size_t scene_item_record_bytes = 16;

/// FNV-1a 64 of a Fashion-MNIST set's labels, then its pixels: which images the items came from.
inline std::uint64_t source_fingerprint(const labelled_images& images) {
  distill::fnv1a64 h;
  h.update(images.labels);
  h.update(images.pixels);
  return h.value();
}

/// A file name saying what the file holds: "scenes-train-s96-n4000-seed1.bin".
inline std::string scene_file_name(const scene_world_params& p) {
  return "scenes-" + std::string(scene_split_names[static_cast<int>(p.split)]) + "-s" + std::to_string(p.side) + "-n" +
         std::to_string(p.scenes) + "-seed" + std::to_string(p.seed) + ".bin";
}

namespace scene_io_detail {

using distill::get_le32;
using distill::get_le64;
using distill::put_le32;
using distill::put_le64;

inline std::uint32_t rate_ppm(double rate) { return static_cast<std::uint32_t>(std::llround(rate * 1e6)); }

inline std::string describe(const scene_world_params& p) {
  std::ostringstream os;
  os << scene_split_names[static_cast<int>(p.split)] << ", " << p.scenes << " scenes of " << p.side << " x " << p.side << ", seed " << p.seed
     << ", out-of-context rate " << p.out_of_context_rate << ", Fashion-MNIST split " << p.validation_per_class << "/class seed " << p.split_seed;
  return os.str();
}

inline std::vector<unsigned char> encode_header(const scene_world_params& p, std::uint32_t items, std::uint64_t source, std::uint64_t payload_bytes,
                                                std::uint64_t payload_checksum) {
  std::vector<unsigned char> h(scene_file_header_bytes, 0);
  for (int i = 0; i < 8; ++i) h[static_cast<std::size_t>(i)] = static_cast<unsigned char>(scene_file_magic[static_cast<std::size_t>(i)]);
  put_le32(&h[8], scene_file_format_version);
  put_le32(&h[12], scene_generator_version);
  put_le64(&h[16], p.seed);
  put_le32(&h[24], static_cast<std::uint32_t>(p.split));
  put_le32(&h[28], p.scenes);
  put_le32(&h[32], static_cast<std::uint32_t>(p.side));
  put_le32(&h[36], rate_ppm(p.out_of_context_rate));
  put_le32(&h[40], p.validation_per_class);
  put_le32(&h[44], items);
  put_le64(&h[48], p.split_seed);
  put_le64(&h[56], source);
  put_le64(&h[64], payload_bytes);
  put_le64(&h[72], payload_checksum);
  put_le64(&h[80], distill::fnv1a64::of(std::span<const unsigned char>(h.data(), 80)));
  return h;
}

}  // namespace scene_io_detail

/// What reading a scene file found.
enum class scene_file_status { ok, missing, corrupt, changed };

struct scene_read_result {
  scene_file_status status = scene_file_status::missing;
  std::string message;  ///< why the file cannot be used (empty when ok)
  scene_set data;       ///< filled when ok
};

/// Reads and verifies a scene file. With `expected`, a file made with other parameters is
/// `changed`; with `source` (the Fashion-MNIST set its items come from), a file made from other
/// images is `changed` and every item's class is checked against its source label.
inline scene_read_result read_scene_set(const std::filesystem::path& path, const scene_world_params* expected = nullptr,
                                        const labelled_images* source = nullptr) {
  using namespace scene_io_detail;
  scene_read_result r;
  auto fail = [&](scene_file_status s, std::string m) {
    r.status = s, r.message = std::move(m), r.data = {};
    return r;
  };
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return fail(scene_file_status::missing, "missing");
  std::vector<unsigned char> file;
  if (const distill::status st = distill::read_file("read_scene_set", path.string(), file); !st.ok()) return fail(scene_file_status::corrupt, st.message());
  if (file.size() < scene_file_header_bytes)
    return fail(scene_file_status::corrupt, "truncated: " + std::to_string(file.size()) + " bytes, shorter than the 88-byte header");
  const unsigned char* h = file.data();
  for (int i = 0; i < 8; ++i)
    if (h[i] != static_cast<unsigned char>(scene_file_magic[static_cast<std::size_t>(i)])) return fail(scene_file_status::corrupt, "not a scene-world file (bad magic)");
  if (distill::fnv1a64::of(std::span<const unsigned char>(h, 80)) != get_le64(h + 80)) return fail(scene_file_status::corrupt, "header checksum mismatch");
  if (const std::uint32_t v = get_le32(h + 8); v != scene_file_format_version)
    return fail(scene_file_status::changed, "format version " + std::to_string(v) + ", this program reads " + std::to_string(scene_file_format_version));
  if (const std::uint32_t v = get_le32(h + 12); v != scene_generator_version)
    return fail(scene_file_status::changed, "generator version " + std::to_string(v) + ", this program's is " + std::to_string(scene_generator_version));
  scene_world_params p;
  p.seed = get_le64(h + 16);
  const std::uint32_t split = get_le32(h + 24);
  if (split > 2) return fail(scene_file_status::corrupt, "invalid split " + std::to_string(split));
  p.split = static_cast<scene_split>(split);
  p.scenes = get_le32(h + 28);
  p.side = static_cast<int>(get_le32(h + 32));
  const std::uint32_t ppm = get_le32(h + 36);
  p.out_of_context_rate = ppm / 1e6;
  p.validation_per_class = get_le32(h + 40);
  const std::uint32_t items = get_le32(h + 44);
  p.split_seed = get_le64(h + 48);
  if (p.side < 64 || p.side > 255 || ppm > 1000000) return fail(scene_file_status::corrupt, "invalid side or rate in the header");
  if (expected) {
    scene_world_params e = *expected;
    e.out_of_context_rate = rate_ppm(e.out_of_context_rate) / 1e6;
    if (!(p == e)) return fail(scene_file_status::changed, "parameters changed: the file has " + describe(p) + "; wanted " + describe(*expected));
  }
  if (source && get_le64(h + 56) != source_fingerprint(*source))
    return fail(scene_file_status::changed, "made from other Fashion-MNIST images (source fingerprint differs)");

  const std::uint64_t side2 = static_cast<std::uint64_t>(p.side) * static_cast<std::uint64_t>(p.side);
  const std::uint64_t expect_payload = 2ull * p.scenes + scene_item_record_bytes * items + side2 * p.scenes;
  const std::uint64_t payload = get_le64(h + 64);
  if (payload != expect_payload) return fail(scene_file_status::corrupt, "payload size in the header does not match its counts");
  if (file.size() != scene_file_header_bytes + payload)
    return fail(scene_file_status::corrupt, std::string(file.size() < scene_file_header_bytes + payload ? "truncated: " : "trailing bytes: ") +
                                                std::to_string(file.size()) + " bytes, the header says " + std::to_string(scene_file_header_bytes + payload));
  const std::span<const unsigned char> body(file.data() + scene_file_header_bytes, static_cast<std::size_t>(payload));
  if (distill::fnv1a64::of(body) != get_le64(h + 72)) return fail(scene_file_status::corrupt, "payload checksum mismatch");

  // decode, checking every record (a checksum collision or a bug must not slip through)
  scene_set& d = r.data;
  d.params = p;
  d.scenes.resize(p.scenes);
  const unsigned char* sp = body.data();
  const unsigned char* ip = sp + 2ull * p.scenes;
  std::uint64_t seen = 0;
  for (std::uint32_t k = 0; k < p.scenes; ++k) {
    scene& sc = d.scenes[k];
    sc.outfit = sp[2 * k];
    const int count = sp[2 * k + 1];
    if (sc.outfit >= outfit_template_count || count < 2 || count > 6 || seen + static_cast<std::uint64_t>(count) > items)
      return fail(scene_file_status::corrupt, "invalid scene record " + std::to_string(k));
    sc.items.resize(static_cast<std::size_t>(count));
    for (scene_item& it : sc.items) {
      const unsigned char* b = ip + scene_item_record_bytes * seen++;
      it.cls = b[0];
      it.slot = static_cast<outfit_slot>(b[1]);
      it.out_of_context = (b[2] & 1u) != 0, it.mirrored = (b[2] & 2u) != 0;
      it.size = b[3], it.x0 = b[4], it.y0 = b[5];
      it.box = {b[6], b[7], b[8], b[9]};
      it.source = get_le32(b + 10);
      const bool geometry_ok = it.size >= 8 && it.x0 + it.size <= p.side && it.y0 + it.size <= p.side && it.box.x1 >= it.x0 &&
                               it.box.y1 >= it.y0 && it.box.x2 <= it.x0 + it.size && it.box.y2 <= it.y0 + it.size && it.box.x1 < it.box.x2 &&
                               it.box.y1 < it.box.y2;
      const bool ok = it.cls < fashion_classes && b[1] < outfit_slot_count && b[2] < 4 && b[14] == 0 && b[15] == 0 && geometry_ok &&
                      (!source || (it.source < source->size() && source->labels[it.source] == it.cls)) &&
                      it.out_of_context == !template_admits(sc.outfit, it.slot, it.cls);
      if (!ok) return fail(scene_file_status::corrupt, "invalid item record " + std::to_string(seen - 1) + " (scene " + std::to_string(k) + ")");
    }
  }
  if (seen != items) return fail(scene_file_status::corrupt, "the scene records hold " + std::to_string(seen) + " items, the header says " + std::to_string(items));
  const unsigned char* px = ip + scene_item_record_bytes * items;
  d.pixels.assign(px, px + side2 * p.scenes);
  r.status = scene_file_status::ok;
  return r;
}

namespace scene_io_detail {

/// The scene and item sections of the payload (the format above).
inline void encode_records(const scene_set& d, std::vector<unsigned char>& scenes, std::vector<unsigned char>& items) {
  scenes.clear(), items.clear();
  scenes.reserve(2 * d.scenes.size());
  items.reserve(scene_item_record_bytes * d.item_count());
  for (const scene& sc : d.scenes) {
    scenes.push_back(sc.outfit);
    scenes.push_back(static_cast<unsigned char>(sc.items.size()));
    for (const scene_item& it : sc.items) {
      const std::size_t at = items.size();
      items.resize(at + scene_item_record_bytes, 0);
      unsigned char* b = items.data() + at;
      b[0] = it.cls, b[1] = static_cast<unsigned char>(it.slot);
      b[2] = static_cast<unsigned char>((it.out_of_context ? 1u : 0u) | (it.mirrored ? 2u : 0u));
      b[3] = it.size, b[4] = it.x0, b[5] = it.y0;
      b[6] = static_cast<unsigned char>(it.box.x1), b[7] = static_cast<unsigned char>(it.box.y1);
      b[8] = static_cast<unsigned char>(it.box.x2), b[9] = static_cast<unsigned char>(it.box.y2);
      put_le32(b + 10, it.source);
    }
  }
}

}  // namespace scene_io_detail

/// The payload checksum a scene file of `d` holds (header bytes 72..80): FNV-1a 64 of its scene,
/// item and pixel sections. Files derived from a scene set (questions) record it to notice when
/// the world they were made from changes.
inline std::uint64_t scene_set_checksum(const scene_set& d) {
  std::vector<unsigned char> scenes, items;
  scene_io_detail::encode_records(d, scenes, items);
  distill::fnv1a64 pc;
  pc.update(scenes).update(items).update(d.pixels);
  return pc.value();
}

/// Writes a scene set atomically (temporary file, flush, rename). `source` is the Fashion-MNIST
/// set its items come from (its fingerprint goes into the header). Throws std::runtime_error on
/// I/O errors (the previous file is then untouched).
inline void write_scene_set(const std::filesystem::path& path, const scene_set& d, const labelled_images& source) {
  using namespace scene_io_detail;
  if (d.scenes.size() != d.params.scenes || d.pixels.size() != d.params.scenes * d.pixels_per_scene())
    throw std::invalid_argument("write_scene_set: the set's contents do not match its parameters");
  std::vector<unsigned char> scenes, items;
  encode_records(d, scenes, items);
  distill::fnv1a64 pc;
  pc.update(scenes).update(items).update(d.pixels);
  const auto header = encode_header(d.params, static_cast<std::uint32_t>(d.item_count()), source_fingerprint(source),
                                    scenes.size() + items.size() + d.pixels.size(), pc.value());
  distill::atomic_write_options opt;
  opt.create_parent_directories = true;
  const distill::status st = distill::write_file_atomically("write_scene_set", path.string(), {header, scenes, items, d.pixels}, opt);
  if (!st.ok()) throw std::runtime_error(st.message());
}

/// How load_or_generate_scenes obtained its scenes.
enum class scene_load_outcome { loaded, generated_missing, regenerated_changed, regenerated_corrupt };

/// The scenes at `path` if the file is intact and was made with `params` from `data`; otherwise
/// generates them, writes the file (atomically) and says why on `log`.
inline scene_set load_or_generate_scenes(const std::filesystem::path& path, const scene_world_params& params, const fashion_mnist& data,
                                         scene_load_outcome* outcome = nullptr, std::ostream& log = std::cerr) {
  validate(params);
  const auto t0 = std::chrono::steady_clock::now();
  auto ms = [&] { return static_cast<long>(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()); };
  const labelled_images& source = params.split == scene_split::test ? data.test : data.train;
  scene_read_result r = read_scene_set(path, &params, &source);
  if (r.status == scene_file_status::ok) {
    if (outcome) *outcome = scene_load_outcome::loaded;
    log << "scene world: loaded " << path.string() << " (" << scene_io_detail::describe(params) << ") in " << ms() << " ms\n";
    return std::move(r.data);
  }
  if (outcome)
    *outcome = r.status == scene_file_status::missing   ? scene_load_outcome::generated_missing
               : r.status == scene_file_status::changed ? scene_load_outcome::regenerated_changed
                                                        : scene_load_outcome::regenerated_corrupt;
  log << "scene world: " << path.string() << ": " << r.message << (r.status == scene_file_status::corrupt ? " (the file is not used)" : "")
      << "; generating " << scene_io_detail::describe(params) << "\n";
  scene_set s = generate_scenes(scene_sources(data, params), params);
  write_scene_set(path, s, source);
  log << "scene world: wrote " << path.string() << " (" << s.item_count() << " items) in " << ms() << " ms\n";
  return s;
}

}  // namespace examples
