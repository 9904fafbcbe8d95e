// SPDX-License-Identifier: MIT
#pragma once
// Question files (scene_questions.hpp), one per split, in the manner of the scene-world files
// (scene_world_io.hpp): a documented binary format with checksums, written atomically through
// distill/core/file_io.hpp, and `load_or_generate_questions`, which regenerates a file when it is
// missing, was made with other parameters, by another generator, format or vocabulary, or from
// another scene world (the world's checksum is in the header), or is corrupt or truncated. A file
// that fails any check is never used: the reason is printed and the questions are made again.
//
// Format, version 1. Integers little-endian; offsets in bytes.
//   header (96 bytes)
//      0  8  magic "FMQUESTS"
//      8  4  format version (1)
//     12  4  generator version (question_generator_version: the questions a parameter set makes)
//     16  8  question seed
//     24  4  questions per scene
//     28  4  direction margin, pixels
//     32  4  tie margin, pixels
//     36  4  split of the scenes (0 train, 1 validation, 2 test)
//     40  8  scene-world seed
//     48  4  scenes
//     52  4  canvas side
//     56  8  world checksum: the payload checksum of the scene file (scene_set_checksum, header
//            bytes 72..80 of that file): FNV-1a 64 of its scene, item and pixel sections
//     64  2  words in the vocabulary (question_word_count)
//     66  2  answers in the vocabulary (answer_count)
//     68  4  tokens per question (question_max_tokens)
//     72  8  payload bytes
//     80  8  payload checksum: FNV-1a 64 of the payload
//     88  8  header checksum: FNV-1a 64 of bytes [0, 88)
//   payload: scenes x questions-per-scene records of 20 bytes, scene by scene, question by question:
//      0  4  scene index (u32)
//      4  1  family (0 left_of, 1 above, 2 closest_to, 3 furthest_from, 4 count, 5 is_above)
//      5  1  answer (0..18)
//      6  1  subject: the named class (0..9), or the category of a count question (0..7)
//      7  1  object: the second named class of is_above, else 255
//      8  1  named item (index in the scene's items), 255 for count
//      9  1  other item: the answer item (relations), the object's item (is_above), 255 for count
//     10  1  counted items, bit i = item i (count), else 0
//     11  1  token count (1..8)
//     12  8  tokens (word indices), zero after the token count
// 4 000 scenes x 10 questions make a 800 kB file.
//
// Checks on reading, in order (the first failure decides): missing -> generate; shorter than the
// header, bad magic or header checksum -> corrupt; other format or generator version, other
// vocabulary sizes, other parameters, another split, world seed, scene count, side, or world
// checksum -> changed; payload size inconsistent with the header, file size != 96 + payload,
// payload checksum -> corrupt; then every record: its scene index, family, answer in the family's
// range, arguments, item indices, counted bits, tokens equal to the encoding of (family, subject,
// object) and zero padding -> corrupt otherwise; and, given the scene set, each question's named
// items, counted items and answer must be those its rule computes on its scene -> corrupt.

#include <algorithm>
#include <array>
#include <bit>
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
#include "scene_questions.hpp"
#include "scene_world_io.hpp"

namespace examples {

inline constexpr std::array<char, 8> question_file_magic = {'F', 'M', 'Q', 'U', 'E', 'S', 'T', 'S'};
inline constexpr std::uint32_t question_file_format_version = 1;
inline constexpr std::uint32_t question_generator_version = 1;
inline constexpr std::size_t question_file_header_bytes = 96;
inline constexpr std::size_t question_record_bytes = 20;

/// A file name saying what the file holds: "questions-train-n4000-q10-seed1-world1.bin".
inline std::string question_file_name(const scene_world_params& world, const scene_question_params& q) {
  return "questions-" + std::string(scene_split_names[static_cast<int>(world.split)]) + "-n" + std::to_string(world.scenes) + "-q" +
         std::to_string(q.questions_per_scene) + "-seed" + std::to_string(q.seed) + "-world" + std::to_string(world.seed) + ".bin";
}

namespace question_io_detail {

using distill::get_le32;
using distill::get_le64;
using distill::put_le32;
using distill::put_le64;

inline std::string describe(const scene_question_params& q, scene_split split, std::uint64_t world_seed, std::uint32_t scenes) {
  std::ostringstream os;
  os << scene_split_names[static_cast<int>(split)] << ", " << q.questions_per_scene << " questions on each of " << scenes << " scenes (world seed "
     << world_seed << "), seed " << q.seed << ", margins " << q.direction_margin << "/" << q.tie_margin << " px";
  return os.str();
}

inline std::vector<unsigned char> encode_header(const scene_question_set& s, std::uint64_t world_checksum, std::uint64_t payload_bytes,
                                                std::uint64_t payload_checksum) {
  std::vector<unsigned char> h(question_file_header_bytes, 0);
  for (int i = 0; i < 8; ++i) h[static_cast<std::size_t>(i)] = static_cast<unsigned char>(question_file_magic[static_cast<std::size_t>(i)]);
  put_le32(&h[8], question_file_format_version);
  put_le32(&h[12], question_generator_version);
  put_le64(&h[16], s.params.seed);
  put_le32(&h[24], s.params.questions_per_scene);
  put_le32(&h[28], static_cast<std::uint32_t>(s.params.direction_margin));
  put_le32(&h[32], static_cast<std::uint32_t>(s.params.tie_margin));
  put_le32(&h[36], static_cast<std::uint32_t>(s.split));
  put_le64(&h[40], s.world_seed);
  put_le32(&h[48], s.scenes);
  put_le32(&h[52], static_cast<std::uint32_t>(s.side));
  put_le64(&h[56], world_checksum);
  h[64] = static_cast<unsigned char>(question_word_count), h[65] = 0;
  h[66] = static_cast<unsigned char>(answer_count), h[67] = 0;
  put_le32(&h[68], question_max_tokens);
  put_le64(&h[72], payload_bytes);
  put_le64(&h[80], payload_checksum);
  put_le64(&h[88], distill::fnv1a64::of(std::span<const unsigned char>(h.data(), 88)));
  return h;
}

inline void encode_record(const scene_question& q, unsigned char* b) {
  put_le32(b, q.scene);
  b[4] = static_cast<unsigned char>(q.family), b[5] = q.answer, b[6] = q.subject, b[7] = q.object;
  b[8] = q.named_item, b[9] = q.other_item, b[10] = q.counted, b[11] = q.length;
  for (int i = 0; i < question_max_tokens; ++i) b[12 + i] = q.tokens[static_cast<std::size_t>(i)];
}

/// Whether a decoded record is well formed on its own (ranges, arguments, tokens).
inline bool record_consistent(const scene_question& q) {
  const int f = static_cast<int>(q.family);
  if (f >= question_family_count || q.answer >= answer_count) return false;
  bool answer_ok = false, args_ok = false;
  if (is_relation(q.family)) {
    answer_ok = q.answer < fashion_classes;
    args_ok = q.subject < fashion_classes && q.object == no_argument && q.named_item < 6 && q.other_item < 6 && q.named_item != q.other_item &&
              q.counted == 0;
  } else if (q.family == question_family::count) {
    answer_ok = q.answer >= answer_for_count(0) && q.answer <= answer_for_count(answer_max_count);
    args_ok = q.subject < question_category_count && q.object == no_argument && q.named_item == no_item && q.other_item == no_item &&
              q.counted < 64 && std::popcount(q.counted) == q.answer - answer_for_count(0);
  } else {
    answer_ok = q.answer == answer_no || q.answer == answer_yes;
    args_ok = q.subject < fashion_classes && q.object < fashion_classes && q.subject != q.object && q.named_item < 6 && q.other_item < 6 &&
              q.named_item != q.other_item && q.counted == 0;
  }
  if (!answer_ok || !args_ok) return false;
  std::array<std::uint8_t, question_max_tokens> tokens{};
  return encode_question_tokens(q.family, q.subject, q.object, tokens) == q.length && tokens == q.tokens;
}

}  // namespace question_io_detail

/// What reading a question file found (the same states as a scene file).
struct question_read_result {
  scene_file_status status = scene_file_status::missing;
  std::string message;       ///< why the file cannot be used (empty when ok)
  scene_question_set data;   ///< filled when ok
};

/// Reads and verifies a question file. With `expected` (the question parameters) and `world` (the
/// scene set the questions must be about), a file made with other parameters or from another
/// world is `changed`, and every question is checked against its scene: the items it names, what
/// it counts and its answer must be what the rules compute.
inline question_read_result read_question_set(const std::filesystem::path& path, const scene_question_params* expected = nullptr,
                                              const scene_set* world = nullptr) {
  using namespace question_io_detail;
  question_read_result r;
  auto fail = [&](scene_file_status s, std::string m) {
    r.status = s, r.message = std::move(m), r.data = {};
    return r;
  };
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return fail(scene_file_status::missing, "missing");
  std::vector<unsigned char> file;
  if (const distill::status st = distill::read_file("read_question_set", path.string(), file); !st.ok()) return fail(scene_file_status::corrupt, st.message());
  if (file.size() < question_file_header_bytes)
    return fail(scene_file_status::corrupt, "truncated: " + std::to_string(file.size()) + " bytes, shorter than the 96-byte header");
  const unsigned char* h = file.data();
  for (int i = 0; i < 8; ++i)
    if (h[i] != static_cast<unsigned char>(question_file_magic[static_cast<std::size_t>(i)])) return fail(scene_file_status::corrupt, "not a question file (bad magic)");
  if (distill::fnv1a64::of(std::span<const unsigned char>(h, 88)) != get_le64(h + 88)) return fail(scene_file_status::corrupt, "header checksum mismatch");
  if (const std::uint32_t v = get_le32(h + 8); v != question_file_format_version)
    return fail(scene_file_status::changed, "format version " + std::to_string(v) + ", this program reads " + std::to_string(question_file_format_version));
  if (const std::uint32_t v = get_le32(h + 12); v != question_generator_version)
    return fail(scene_file_status::changed, "generator version " + std::to_string(v) + ", this program's is " + std::to_string(question_generator_version));
  if (h[64] != question_word_count || h[65] != 0 || h[66] != answer_count || h[67] != 0 || get_le32(h + 68) != question_max_tokens)
    return fail(scene_file_status::changed, "another vocabulary (word, answer or token counts differ)");
  scene_question_set& d = r.data;
  d.params.seed = get_le64(h + 16);
  d.params.questions_per_scene = get_le32(h + 24);
  const std::uint32_t dm = get_le32(h + 28), tm = get_le32(h + 32), split = get_le32(h + 36), side = get_le32(h + 52);
  if (split > 2 || dm > 64 || tm > 64 || side < 64 || side > 255 || d.params.questions_per_scene < 1 || d.params.questions_per_scene > 1000)
    return fail(scene_file_status::corrupt, "invalid split, margins, side or question count in the header");
  d.params.direction_margin = static_cast<int>(dm), d.params.tie_margin = static_cast<int>(tm);
  d.split = static_cast<scene_split>(split);
  d.world_seed = get_le64(h + 40);
  d.scenes = get_le32(h + 48);
  d.side = static_cast<int>(side);
  if (expected && !(d.params == *expected))
    return fail(scene_file_status::changed, "parameters changed: the file has " + describe(d.params, d.split, d.world_seed, d.scenes) + "; wanted " +
                                                describe(*expected, d.split, d.world_seed, d.scenes));
  if (world) {
    const scene_world_params& w = world->params;
    if (world->scenes.size() != w.scenes) throw std::invalid_argument("read_question_set: the scene set does not match its parameters");
    if (d.split != w.split || d.world_seed != w.seed || d.scenes != w.scenes || d.side != w.side)
      return fail(scene_file_status::changed, "made for other scenes: the file has " + describe(d.params, d.split, d.world_seed, d.scenes) +
                                                  "; the world is " + describe(d.params, w.split, w.seed, w.scenes) + ", side " + std::to_string(w.side));
    if (get_le64(h + 56) != scene_set_checksum(*world)) return fail(scene_file_status::changed, "made from another scene world (world checksum differs)");
  }

  const std::uint64_t count = static_cast<std::uint64_t>(d.scenes) * d.params.questions_per_scene;
  const std::uint64_t payload = get_le64(h + 72);
  if (payload != count * question_record_bytes) return fail(scene_file_status::corrupt, "payload size in the header does not match its counts");
  if (file.size() != question_file_header_bytes + payload)
    return fail(scene_file_status::corrupt, std::string(file.size() < question_file_header_bytes + payload ? "truncated: " : "trailing bytes: ") +
                                                std::to_string(file.size()) + " bytes, the header says " + std::to_string(question_file_header_bytes + payload));
  const std::span<const unsigned char> body(file.data() + question_file_header_bytes, static_cast<std::size_t>(payload));
  if (distill::fnv1a64::of(body) != get_le64(h + 80)) return fail(scene_file_status::corrupt, "payload checksum mismatch");

  // decode, checking every record; against the scenes when given
  d.questions.resize(static_cast<std::size_t>(count));
  std::vector<scene_question> candidates;
  for (std::uint64_t i = 0; i < count; ++i) {
    const unsigned char* b = body.data() + question_record_bytes * i;
    scene_question& q = d.questions[static_cast<std::size_t>(i)];
    q.scene = get_le32(b);
    q.family = static_cast<question_family>(b[4]);
    q.answer = b[5], q.subject = b[6], q.object = b[7], q.named_item = b[8], q.other_item = b[9], q.counted = b[10], q.length = b[11];
    for (int t = 0; t < question_max_tokens; ++t) q.tokens[static_cast<std::size_t>(t)] = b[12 + t];
    const std::uint32_t k = static_cast<std::uint32_t>(i / d.params.questions_per_scene);
    if (q.scene != k || !record_consistent(q)) return fail(scene_file_status::corrupt, "invalid question record " + std::to_string(i));
    if (world) {
      if (i % d.params.questions_per_scene == 0) candidates = question_candidates(world->scenes[k], d.params);
      scene_question c = q;
      c.scene = 0;
      if (std::find(candidates.begin(), candidates.end(), c) == candidates.end())
        return fail(scene_file_status::corrupt, "question record " + std::to_string(i) + " does not hold on scene " + std::to_string(k));
    }
  }
  r.status = scene_file_status::ok;
  return r;
}

/// Writes the questions about `world` atomically (temporary file, flush, rename). Throws
/// std::runtime_error on I/O errors (the previous file is then untouched).
inline void write_question_set(const std::filesystem::path& path, const scene_question_set& s, const scene_set& world) {
  using namespace question_io_detail;
  if (s.questions.size() != static_cast<std::size_t>(s.scenes) * s.params.questions_per_scene || s.split != world.params.split ||
      s.world_seed != world.params.seed || s.scenes != world.params.scenes || s.side != world.params.side)
    throw std::invalid_argument("write_question_set: the questions do not match their parameters or their scene world");
  std::vector<unsigned char> payload(s.questions.size() * question_record_bytes);
  for (std::size_t i = 0; i < s.questions.size(); ++i) encode_record(s.questions[i], payload.data() + question_record_bytes * i);
  const auto header = encode_header(s, scene_set_checksum(world), payload.size(), distill::fnv1a64::of(payload));
  distill::atomic_write_options opt;
  opt.create_parent_directories = true;
  const distill::status st = distill::write_file_atomically("write_question_set", path.string(), {header, payload}, opt);
  if (!st.ok()) throw std::runtime_error(st.message());
}

/// How load_or_generate_questions obtained its questions (the same outcomes as for scenes).
using question_load_outcome = scene_load_outcome;

/// The questions at `path` if the file is intact and was made with `params` about `world`;
/// otherwise generates them, writes the file (atomically) and says why on `log`.
inline scene_question_set load_or_generate_questions(const std::filesystem::path& path, const scene_question_params& params, const scene_set& world,
                                                     question_load_outcome* outcome = nullptr, std::ostream& log = std::cerr) {
  validate(params);
  const auto t0 = std::chrono::steady_clock::now();
  auto ms = [&] { return static_cast<long>(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()); };
  const std::string what = question_io_detail::describe(params, world.params.split, world.params.seed, world.params.scenes);
  question_read_result r = read_question_set(path, &params, &world);
  if (r.status == scene_file_status::ok) {
    if (outcome) *outcome = scene_load_outcome::loaded;
    log << "scene questions: loaded " << path.string() << " (" << what << ") in " << ms() << " ms\n";
    return std::move(r.data);
  }
  if (outcome)
    *outcome = r.status == scene_file_status::missing   ? scene_load_outcome::generated_missing
               : r.status == scene_file_status::changed ? scene_load_outcome::regenerated_changed
                                                        : scene_load_outcome::regenerated_corrupt;
  log << "scene questions: " << path.string() << ": " << r.message << (r.status == scene_file_status::corrupt ? " (the file is not used)" : "")
      << "; generating " << what << "\n";
  scene_question_set s = generate_questions(world, params);
  write_question_set(path, s, world);
  log << "scene questions: wrote " << path.string() << " (" << s.size() << " questions) in " << ms() << " ms\n";
  return s;
}

}  // namespace examples
