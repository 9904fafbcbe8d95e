// SPDX-License-Identifier: MIT
#pragma once
// Fuzz targets: every loader of untrusted bytes (the rule parser, every file format) takes the
// fuzzer's input and must either refuse it with a status or accept it; on acceptance each
// target also checks a round trip (what was accepted, written back, is the same), so wrong
// acceptance is a finding too, not only a crash. One table, compiled into both the libFuzzer
// binary (fuzz_main.cpp, clang) and the regression runner that replays the seed corpus and
// every kept crash input in the normal test suite (regressions_main.cpp).
//
// Adding a loader: write `void fuzz_<name>(std::span<const std::uint8_t>)` below (or include
// it), add one line to fuzz_targets, and put a few valid files in fuzz/corpus/<name>/
// (make_seed_corpus.cpp writes them).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../examples/vqa_spatial_kd/src/dataset_io.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/safetensors.hpp"
#include "distill/logic/rules.hpp"
#include "distill/nn/checkpoint.hpp"

namespace distill_fuzz {

/// A violated property: print it and abort, which libFuzzer reports as a crash (and the
/// regression runner as a failure).
[[noreturn]] inline void violated(const std::string& what) {
  std::fprintf(stderr, "fuzz property violated: %s\n", what.c_str());
  std::abort();
}
inline void require(bool ok, const char* what) {
  if (!ok) violated(what);
}

// ---- the rule language: parse; what parses prints to text that parses to the same rules ----
inline void fuzz_rules(std::span<const std::uint8_t> bytes) {
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  distill::rule_set rules;
  distill::rule_error where;
  const distill::status st = distill::parse_rules(text, rules, "fuzz", &where);
  if (!st.ok()) {
    require(st.code() == distill::errc::parse_error && where.line >= 1 && where.column >= 1, "rules: errors are parse errors with a location");
    return;
  }
  const std::string canonical = rules.to_string();
  distill::rule_set again;
  const distill::status st2 = distill::parse_rules(canonical, again);
  if (!st2.ok()) violated("rules: the canonical text of accepted rules does not parse: " + st2.to_string() + "\n" + canonical);
  require(again.to_string() == canonical, "rules: the canonical text does not reproduce itself");
}

// ---- nn::checkpoint: parse; what parses serialises to a file that parses to the same entries ----
inline void fuzz_checkpoint(std::span<const std::uint8_t> bytes) {
  distill::nn::checkpoint ck;
  if (!distill::nn::checkpoint::parse(bytes.data(), bytes.size(), ck).ok()) return;
  for (const auto& [name, e] : ck.entries()) require(e.elements() >= 0, "checkpoint: an accepted entry has no valid element count");
  const auto file = ck.serialize();
  distill::nn::checkpoint again;
  require(distill::nn::checkpoint::parse(file.data(), file.size(), again).ok(), "checkpoint: a serialised checkpoint does not parse");
  require(again.entries().size() == ck.entries().size(), "checkpoint: entries lost in a round trip");
  for (const auto& [name, e] : ck.entries()) {
    const auto* f = again.find(name);
    require(f && f->dtype == e.dtype && f->shape == e.shape && f->bytes == e.bytes, "checkpoint: an entry changed in a round trip");
  }
}

// ---- sample-queue images: a queue shaped as the header says (when small) loads them; what
// loads serialises back to the same bytes ----
template <class T>
void fuzz_queue_of(std::span<const std::uint8_t> bytes, distill::index_t K, distill::index_t D, bool ids) {
  distill::host_sample_queue<T> q(K, D, ids);
  if (!distill::sample_queue_deserialize(distill::cpu{1}, q.queue(), bytes).ok()) return;
  if (distill::is_safetensors(bytes)) {
    // Another writer's spacing and metadata need not survive; the content must: its native
    // image loads into a second queue, whose native image is the same.
    std::vector<unsigned char> image, again;
    require(distill::sample_queue_serialize(distill::cpu{1}, q.queue(), image).ok(), "sample_queue: a loaded queue does not serialise");
    distill::host_sample_queue<T> q2(K, D, ids);
    require(distill::sample_queue_deserialize(distill::cpu{1}, q2.queue(), image).ok(), "sample_queue: a serialised queue does not load");
    require(distill::sample_queue_serialize(distill::cpu{1}, q2.queue(), again).ok() && again == image,
            "sample_queue: a safetensors queue changed in a round trip");
    return;
  }
  std::vector<unsigned char> image;
  require(distill::sample_queue_serialize(distill::cpu{1}, q.queue(), image).ok(), "sample_queue: a loaded queue does not serialise");
  require(image.size() == bytes.size() && std::memcmp(image.data(), bytes.data(), bytes.size()) == 0,
          "sample_queue: an accepted image does not serialise back to itself");
}
inline void fuzz_sample_queue(std::span<const std::uint8_t> bytes) {
  using distill::get_le32, distill::get_le64;
  distill::index_t K = 4, D = 3;
  std::uint32_t dtype = 1, flags = 1;
  if (bytes.size() >= 64) {  // take the shape from the header when it is small, to reach past the shape checks
    const std::uint64_t k = get_le64(bytes.data() + 24), d = get_le64(bytes.data() + 32);
    if (k >= 1 && d >= 1 && k <= 4096 && d <= 4096 && k * d <= 65536) K = static_cast<distill::index_t>(k), D = static_cast<distill::index_t>(d);
    dtype = get_le32(bytes.data() + 12);
    flags = get_le32(bytes.data() + 20);
  }
  const bool ids = (flags & 1u) != 0;
  switch (dtype) {
    case 2: fuzz_queue_of<double>(bytes, K, D, ids); break;
    case 3: fuzz_queue_of<distill::bfloat16>(bytes, K, D, ids); break;
    case 4: fuzz_queue_of<distill::float16>(bytes, K, D, ids); break;
    default: fuzz_queue_of<float>(bytes, K, D, ids);
  }
}

// ---- safetensors: every accepted tensor views bytes of the input; the tensors and metadata,
// written again (with distill's checksum), parse to the same ----
inline void fuzz_safetensors(std::span<const std::uint8_t> bytes) {
  distill::safetensors_file f;
  if (!distill::safetensors_parse("fuzz", bytes, f).ok()) return;
  for (const auto& t : f.tensors)
    require(t.bytes.empty() || (t.bytes.data() >= bytes.data() && t.bytes.data() + t.bytes.size() <= bytes.data() + bytes.size()),
            "safetensors: a tensor views bytes outside the file");
  auto meta = f.metadata;
  meta.erase("distill.checksum");
  meta.erase("distill.format_version");
  std::vector<unsigned char> image;
  require(distill::safetensors_serialize(f.tensors, meta, image).ok(), "safetensors: accepted tensors do not serialise");
  distill::safetensors_file again;
  require(distill::safetensors_parse("fuzz", image, again).ok(), "safetensors: a serialised file does not parse");
  require(again.tensors.size() == f.tensors.size(), "safetensors: tensors lost in a round trip");
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    const auto &a = f.tensors[i], &b = again.tensors[i];
    require(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.bytes.size() == b.bytes.size() &&
                (a.bytes.empty() || std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0),
            "safetensors: a tensor changed in a round trip");
  }
  again.metadata.erase("distill.checksum");
  again.metadata.erase("distill.format_version");
  require(again.metadata == meta, "safetensors: metadata changed in a round trip");
}

// ---- the flagship's Sort-of-CLEVR dataset files: what parses re-encodes to the same bytes ----
inline void fuzz_sort_of_clevr_dataset(std::span<const std::uint8_t> bytes) {
  using namespace vqa;
  const dataset_read_result r = parse_dataset(std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
  if (r.status != dataset_file_status::ok) {
    require(!r.message.empty(), "dataset: a refusal without a reason");
    return;
  }
  const auto scenes = dataset_io_detail::encode_scenes(r.data.scenes), questions = dataset_io_detail::encode_questions(r.data.questions);
  distill::fnv1a64 sum;
  sum.update(scenes).update(questions).update(r.data.pixels);
  const auto header = dataset_io_detail::encode_header(r.data.params, sum.value());
  std::vector<std::uint8_t> file(header.begin(), header.end());
  for (const auto* part : {&scenes, &questions, &r.data.pixels}) file.insert(file.end(), part->begin(), part->end());
  require(file.size() == bytes.size() && std::memcmp(file.data(), bytes.data(), bytes.size()) == 0,
          "dataset: an accepted file does not re-encode to itself");
}

struct fuzz_target {
  const char* name;
  void (*run)(std::span<const std::uint8_t>);
};

/// Every target; the name is the folder of its corpus (fuzz/corpus/<name>) and of its kept
/// crash inputs (fuzz/regressions/<name>).
inline constexpr fuzz_target fuzz_targets[] = {
    {"rules", fuzz_rules},
    {"checkpoint", fuzz_checkpoint},
    {"sample_queue", fuzz_sample_queue},
    {"safetensors", fuzz_safetensors},
    {"sort_of_clevr_dataset", fuzz_sort_of_clevr_dataset},
};

inline const fuzz_target* find_target(std::string_view name) {
  for (const auto& t : fuzz_targets)
    if (name == t.name) return &t;
  return nullptr;
}

}  // namespace distill_fuzz
