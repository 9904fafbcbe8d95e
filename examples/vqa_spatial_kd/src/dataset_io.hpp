// SPDX-License-Identifier: MIT
#pragma once
// Sort-of-CLEVR dataset files: a documented binary format with a header and checksums, written
// atomically, and `load_or_generate`, which regenerates a file only when it is missing, was made
// with other parameters (or by another generator/format version), or is corrupt or truncated.
// A file that fails any check is never used: the reason is printed and the data regenerated.
//
// Format, version 1. All integers little-endian; offsets in bytes.
//   header (72 bytes)
//      0  8  magic "SOCLEVR\0"
//      8  4  format version (1)
//     12  4  generator version (vqa::generator_version: the generator's output for given parameters)
//     16  8  seed
//     24  4  split (0 train, 1 test)
//     28  4  images
//     32  4  non-relational questions per image
//     36  4  relational questions per image
//     40  4  flags: bit 0 = pixels stored; other bits 0
//     44  4  geometry, one byte each: image size (75), objects (6), object half-size (5), answers (10)
//     48  8  payload bytes
//     56  8  payload checksum: FNV-1a 64 of the payload bytes
//     64  8  header checksum: FNV-1a 64 of header bytes [0, 64)
//   payload, three sections back to back
//     scenes     images × 6 objects × 4 bytes: x, y, colour id, shape id (0 square, 1 circle)
//     questions  images × (questions per image) × 8 bytes: image (u32), colour, type
//                (0 shape, 1 left, 2 top, 3 closest, 4 furthest, 5 count), answer (0..9), 0
//     pixels     images × 75 × 75 × 3 bytes, RGB, row-major HWC (only when flag bit 0 is set)
// 10 000 images with pixels make a 171 MB file; without pixels, 1.8 MB.
//
// Checks on reading, in order (the first failure decides):
//   missing file → generate; not a regular file (FIFO, device) or unreadable, shorter than the
//   header, wrong magic, or header checksum mismatch → corrupt; other format/generator version,
//   other parameters or other geometry → changed;
//   payload size inconsistent with the parameters, file size ≠ 72 + payload bytes (truncated or
//   trailing bytes), payload checksum mismatch, or a decoded record out of range or whose answer
//   disagrees with the scene → corrupt.
// Writing goes to "<path>.tmp.XXXXXX", is flushed to disk, then renamed over <path>
// (distill::write_file_atomically), so a reader never sees a half-written file and a crash
// leaves the old file (or none).

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
#include "sort_of_clevr.hpp"

namespace vqa {

using distill::fnv1a64;
using distill::get_le32;
using distill::get_le64;
using distill::put_le32;
using distill::put_le64;

inline constexpr std::array<char, 8> dataset_magic = {'S', 'O', 'C', 'L', 'E', 'V', 'R', '\0'};
inline constexpr std::uint32_t dataset_format_version = 1;
inline constexpr std::size_t dataset_header_bytes = 72;
inline constexpr std::size_t scene_record_bytes = 4;     // per object
inline constexpr std::size_t question_record_bytes = 8;  // per question

namespace dataset_io_detail {

struct payload_layout {
  std::uint64_t scene_bytes, question_bytes, pixel_bytes;
  std::uint64_t total() const { return scene_bytes + question_bytes + pixel_bytes; }
};

inline payload_layout layout_of(const generator_params& p) {
  return {std::uint64_t{p.images} * object_count * scene_record_bytes,
          std::uint64_t{p.images} * p.questions_per_image() * question_record_bytes,
          p.with_pixels ? std::uint64_t{p.images} * image_bytes : 0};
}

inline std::array<std::uint8_t, 4> geometry_bytes() {
  return {static_cast<std::uint8_t>(image_size), static_cast<std::uint8_t>(object_count),
          static_cast<std::uint8_t>(object_half_size), static_cast<std::uint8_t>(answer_count)};
}

inline std::vector<std::uint8_t> encode_scenes(const std::vector<scene>& scenes) {
  std::vector<std::uint8_t> out;
  out.reserve(scenes.size() * object_count * scene_record_bytes);
  for (const scene& s : scenes)
    for (const object_state& o : s.objects) out.insert(out.end(), {o.x, o.y, o.colour, static_cast<std::uint8_t>(o.form)});
  return out;
}

inline std::vector<std::uint8_t> encode_questions(const std::vector<question>& qs) {
  std::vector<std::uint8_t> out(qs.size() * question_record_bytes);
  for (std::size_t i = 0; i < qs.size(); ++i) {
    std::uint8_t* p = out.data() + i * question_record_bytes;
    put_le32(p, qs[i].image);
    p[4] = qs[i].colour;
    p[5] = static_cast<std::uint8_t>(qs[i].type);
    p[6] = qs[i].answer;
    p[7] = 0;
  }
  return out;
}

/// The 72 header bytes of a dataset with parameters p and the given payload checksum.
inline std::array<std::uint8_t, dataset_header_bytes> encode_header(const generator_params& p, std::uint64_t payload_checksum) {
  std::array<std::uint8_t, dataset_header_bytes> h{};
  for (int i = 0; i < 8; ++i) h[i] = static_cast<std::uint8_t>(dataset_magic[i]);
  put_le32(&h[8], dataset_format_version);
  put_le32(&h[12], generator_version);
  put_le64(&h[16], p.seed);
  put_le32(&h[24], static_cast<std::uint32_t>(p.split));
  put_le32(&h[28], p.images);
  put_le32(&h[32], p.non_relational_per_image);
  put_le32(&h[36], p.relational_per_image);
  put_le32(&h[40], p.with_pixels ? 1u : 0u);
  const auto g = geometry_bytes();
  for (int i = 0; i < 4; ++i) h[44 + i] = g[i];
  put_le64(&h[48], layout_of(p).total());
  put_le64(&h[56], payload_checksum);
  fnv1a64 hc;
  hc.update(std::span<const std::uint8_t>(h.data(), 64));
  put_le64(&h[64], hc.value());
  return h;
}

inline std::string describe(const generator_params& p) {
  std::ostringstream os;
  os << "seed " << p.seed << ", " << name_of(p.split) << ", " << p.images << " images, " << p.non_relational_per_image
     << "+" << p.relational_per_image << " questions per image, " << (p.with_pixels ? "with" : "without") << " pixels";
  return os.str();
}

}  // namespace dataset_io_detail

/// What reading a dataset file found.
enum class dataset_file_status { ok, missing, corrupt, changed };

struct dataset_read_result {
  dataset_file_status status = dataset_file_status::missing;
  std::string message;  // why the file cannot be used (empty when ok)
  dataset data;         // filled when ok
};

/// The largest file the format can describe (2^32 - 1 images with pixels and the most questions):
/// read_dataset reads no more than this.
inline constexpr std::uint64_t dataset_max_file_bytes =
    dataset_header_bytes + std::uint64_t{0xFFFFFFFFu} * (object_count * scene_record_bytes +
                                                       2 * max_questions_per_kind * question_record_bytes + image_bytes);

/// Verifies and decodes the bytes of a dataset file (the checks of read_dataset, in its order).
/// Takes the bytes by value: the pixels are moved out of them, not copied.
inline dataset_read_result parse_dataset(std::vector<std::uint8_t> bytes, const generator_params* expected = nullptr) {
  using namespace dataset_io_detail;
  dataset_read_result r;
  auto fail = [&](dataset_file_status s, std::string m) {
    r.status = s;
    r.message = std::move(m);
    r.data = {};
    return r;
  };
  const std::uint64_t file_bytes = bytes.size();
  if (file_bytes < dataset_header_bytes)
    return fail(dataset_file_status::corrupt, "truncated: " + std::to_string(file_bytes) + " bytes, shorter than the 72-byte header");

  const std::uint8_t* h = bytes.data();
  for (int i = 0; i < 8; ++i)
    if (h[i] != static_cast<std::uint8_t>(dataset_magic[i])) return fail(dataset_file_status::corrupt, "not a Sort-of-CLEVR dataset file (bad magic)");
  if (fnv1a64::of({h, 64}) != get_le64(&h[64])) return fail(dataset_file_status::corrupt, "header checksum mismatch");

  const std::uint32_t format = get_le32(&h[8]), gen = get_le32(&h[12]);
  if (format != dataset_format_version)
    return fail(dataset_file_status::changed, "format version " + std::to_string(format) + ", this program writes " + std::to_string(dataset_format_version));
  if (gen != generator_version)
    return fail(dataset_file_status::changed, "generator version " + std::to_string(gen) + ", this program's is " + std::to_string(generator_version));
  const std::uint32_t split = get_le32(&h[24]), flags = get_le32(&h[40]);
  if (split > 1 || flags > 1) return fail(dataset_file_status::corrupt, "invalid split or flags in the header");
  generator_params p;
  p.seed = get_le64(&h[16]);
  p.split = static_cast<dataset_split>(split);
  p.images = get_le32(&h[28]);
  p.non_relational_per_image = get_le32(&h[32]);
  p.relational_per_image = get_le32(&h[36]);
  p.with_pixels = (flags & 1u) != 0;
  if (expected && !(p == *expected))
    return fail(dataset_file_status::changed, "parameters changed: file has " + describe(p) + "; wanted " + describe(*expected));
  const auto g = geometry_bytes();
  for (int i = 0; i < 4; ++i)
    if (h[44 + i] != g[i]) return fail(dataset_file_status::changed, "scene geometry (image size, objects, sizes) differs from this program's");
  // Checked before any size is computed from them: their sum must not wrap.
  if (p.non_relational_per_image > static_cast<std::uint32_t>(max_questions_per_kind) ||
      p.relational_per_image > static_cast<std::uint32_t>(max_questions_per_kind))
    return fail(dataset_file_status::corrupt, "invalid question counts in the header");

  const payload_layout lay = layout_of(p);  // at most 2^32 images x a few kB: no 64-bit overflow
  const std::uint64_t payload_bytes = get_le64(&h[48]);
  if (payload_bytes != lay.total()) return fail(dataset_file_status::corrupt, "payload size in the header does not match its parameters");
  if (file_bytes != dataset_header_bytes + payload_bytes)
    return fail(dataset_file_status::corrupt, (file_bytes < dataset_header_bytes + payload_bytes ? "truncated: " : "trailing bytes: ") +
                                                  std::to_string(file_bytes) + " bytes, the header says " +
                                                  std::to_string(dataset_header_bytes + payload_bytes));
  const std::uint8_t* scene_bytes = h + dataset_header_bytes;
  const std::uint8_t* question_bytes = scene_bytes + lay.scene_bytes;
  if (fnv1a64::of({scene_bytes, static_cast<std::size_t>(payload_bytes)}) != get_le64(&h[56]))
    return fail(dataset_file_status::corrupt, "payload checksum mismatch");

  // Decode, and check every record (a checksum collision or a bug must not slip through).
  dataset& d = r.data;
  d.params = p;
  d.scenes.resize(p.images);
  for (std::uint32_t k = 0; k < p.images; ++k)
    for (int i = 0; i < object_count; ++i) {
      const std::uint8_t* b = scene_bytes + (std::size_t{k} * object_count + i) * scene_record_bytes;
      if (b[0] < centre_min || b[0] >= centre_max_exclusive || b[1] < centre_min || b[1] >= centre_max_exclusive || b[2] != i || b[3] > 1)
        return fail(dataset_file_status::corrupt, "invalid object record in image " + std::to_string(k));
      d.scenes[k].objects[i] = object_state{b[0], b[1], b[2], static_cast<shape>(b[3])};
    }
  const std::uint32_t per_image = p.questions_per_image();
  d.questions.resize(std::size_t{p.images} * per_image);
  for (std::size_t i = 0; i < d.questions.size(); ++i) {
    const std::uint8_t* b = question_bytes + i * question_record_bytes;
    question q{get_le32(b), b[4], static_cast<question_type>(b[5]), b[6]};
    if (q.image != i / per_image || q.colour >= object_count || b[5] >= question_type_count || b[7] != 0 ||
        q.answer != answer_question(d.scenes[q.image], q.colour, q.type))
      return fail(dataset_file_status::corrupt, "invalid question record " + std::to_string(i));
    d.questions[i] = q;
  }
  // The pixels are the tail of the file: keep them in place (a move, not a 171 MB copy).
  bytes.erase(bytes.begin(), bytes.end() - static_cast<std::ptrdiff_t>(lay.pixel_bytes));
  d.pixels = std::move(bytes);
  r.status = dataset_file_status::ok;
  return r;
}

/// Reads and fully verifies a dataset file (a regular file: a FIFO or device is corrupt, never
/// waited on or read forever). With `expected`, a file made with other parameters is reported
/// as `changed`.
inline dataset_read_result read_dataset(const std::filesystem::path& path, const generator_params* expected = nullptr) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    dataset_read_result r;
    r.message = "missing";
    return r;
  }
  std::vector<std::uint8_t> bytes;
  if (const distill::status st = distill::read_file("read_dataset", path.string(), bytes, dataset_max_file_bytes); !st.ok()) {
    dataset_read_result r;
    r.status = dataset_file_status::corrupt;
    r.message = "cannot be read: " + st.message();
    return r;
  }
  return parse_dataset(std::move(bytes), expected);
}

/// Writes a dataset atomically (temporary file, flush to disk, rename). Throws std::runtime_error
/// on I/O errors (the temporary file is removed).
inline void write_dataset(const std::filesystem::path& path, const dataset& d) {
  using namespace dataset_io_detail;
  const payload_layout lay = layout_of(d.params);
  const std::vector<std::uint8_t> scene_bytes = encode_scenes(d.scenes), question_bytes = encode_questions(d.questions);
  if (scene_bytes.size() != lay.scene_bytes || question_bytes.size() != lay.question_bytes || d.pixels.size() != lay.pixel_bytes)
    throw std::invalid_argument("write_dataset: the dataset's contents do not match its parameters");
  fnv1a64 pc;
  pc.update(scene_bytes);
  pc.update(question_bytes);
  pc.update(d.pixels);
  const auto header = encode_header(d.params, pc.value());

  distill::atomic_write_options opt;
  opt.create_parent_directories = true;
  const distill::status st = distill::write_file_atomically("write_dataset", path.string(), {header, scene_bytes, question_bytes, d.pixels}, opt);
  if (!st.ok()) throw std::runtime_error(st.message());
}

/// How load_or_generate obtained its dataset.
enum class load_outcome { loaded, generated_missing, regenerated_changed, regenerated_corrupt };

/// The dataset at `path` if it is intact and was made with `params`; otherwise generates it,
/// writes it (atomically) and says why on `log`.
inline dataset load_or_generate(const std::filesystem::path& path, const generator_params& params,
                                load_outcome* outcome = nullptr, std::ostream& log = std::cerr) {
  validate(params);
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  dataset_read_result r = read_dataset(path, &params);
  if (r.status == dataset_file_status::ok) {
    if (outcome) *outcome = load_outcome::loaded;
    log << "sort-of-clevr: loaded " << path.string() << " (" << dataset_io_detail::describe(params) << ") in "
        << static_cast<int>(seconds() * 1000) << " ms\n";
    return std::move(r.data);
  }
  if (outcome)
    *outcome = r.status == dataset_file_status::missing  ? load_outcome::generated_missing
               : r.status == dataset_file_status::changed ? load_outcome::regenerated_changed
                                                          : load_outcome::regenerated_corrupt;
  log << "sort-of-clevr: " << path.string() << ": " << r.message
      << (r.status == dataset_file_status::corrupt ? " (the file is not used)" : "") << "; generating "
      << dataset_io_detail::describe(params) << "\n";
  dataset d = generate_dataset(params);
  write_dataset(path, d);
  log << "sort-of-clevr: wrote " << path.string() << " (" << d.questions.size() << " questions) in "
      << static_cast<int>(seconds() * 1000) << " ms\n";
  return d;
}

}  // namespace vqa
