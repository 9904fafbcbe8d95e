// SPDX-License-Identifier: MIT
#pragma once
// Checkpoints for --resume: named float arrays (parameters, optimiser moments, ...) plus free
// JSON metadata (epoch, seed, configuration, elapsed time), in one checksummed file written
// atomically. A file that fails any check is reported, never half-used.
//
// Format, version 1. Integers and floats little-endian (floats as IEEE-754 binary32).
//    0  8  magic "DSTLCKPT"
//    8  4  format version (1)
//   12  4  tensor count T
//   16  8  metadata bytes M
//   24  M  metadata: JSON text (UTF-8)
//   then T times:  u32 name bytes, name (UTF-8), u64 element count n, n × binary32
//   last 8 bytes:  FNV-1a 64 of every byte before them

#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "file_io.hpp"

namespace vqa {

inline constexpr std::uint32_t checkpoint_format_version = 1;
inline constexpr char checkpoint_magic[8] = {'D', 'S', 'T', 'L', 'C', 'K', 'P', 'T'};

struct checkpoint {
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  std::vector<std::pair<std::string, std::vector<float>>> tensors;  // in the order added

  void add(std::string name, std::vector<float> values) { tensors.emplace_back(std::move(name), std::move(values)); }
  /// The tensor of that name, or nullptr.
  const std::vector<float>* find(std::string_view name) const {
    for (const auto& [n, v] : tensors)
      if (n == name) return &v;
    return nullptr;
  }
  friend bool operator==(const checkpoint&, const checkpoint&) = default;
};

/// Writes a checkpoint atomically; throws std::runtime_error on I/O errors.
inline void save_checkpoint(const std::filesystem::path& path, const checkpoint& c) {
  static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "checkpoints store IEEE-754 binary32");
  const std::string meta = c.meta.dump();
  std::vector<std::uint8_t> b(24);
  std::memcpy(b.data(), checkpoint_magic, 8);
  put_le32(&b[8], checkpoint_format_version);
  put_le32(&b[12], static_cast<std::uint32_t>(c.tensors.size()));
  put_le64(&b[16], meta.size());
  b.insert(b.end(), meta.begin(), meta.end());
  for (const auto& [name, values] : c.tensors) {
    std::size_t o = b.size();
    b.resize(o + 4 + name.size() + 8 + 4 * values.size());
    put_le32(&b[o], static_cast<std::uint32_t>(name.size()));
    std::memcpy(&b[o + 4], name.data(), name.size());
    o += 4 + name.size();
    put_le64(&b[o], values.size());
    o += 8;
    for (float v : values) put_le32(&b[o], std::bit_cast<std::uint32_t>(v)), o += 4;
  }
  fnv1a64 h;
  h.update(b);
  std::uint8_t tail[8];
  put_le64(tail, h.value());
  write_file_atomically(path, {b, tail});
}

struct checkpoint_load_result {
  bool ok = false;
  std::string error;  // why not (empty when ok)
  checkpoint data;
};

/// Reads and verifies a checkpoint.
inline checkpoint_load_result load_checkpoint(const std::filesystem::path& path) {
  checkpoint_load_result r;
  auto fail = [&](std::string m) {
    r.ok = false;
    r.error = path.string() + ": " + std::move(m);
    r.data = {};
    return r;
  };
  std::vector<std::uint8_t> b;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return fail("missing");
  if (!read_whole_file(path, b)) return fail("cannot be read");
  if (b.size() < 32) return fail("truncated");
  if (std::memcmp(b.data(), checkpoint_magic, 8) != 0) return fail("not a checkpoint (bad magic)");
  fnv1a64 h;
  h.update(std::span<const std::uint8_t>(b.data(), b.size() - 8));
  if (h.value() != get_le64(&b[b.size() - 8])) return fail("checksum mismatch (corrupt or truncated)");
  if (get_le32(&b[8]) != checkpoint_format_version) return fail("format version " + std::to_string(get_le32(&b[8])));
  const std::size_t end = b.size() - 8;
  std::size_t o = 24;
  const std::uint64_t meta_bytes = get_le64(&b[16]);
  if (meta_bytes > end - o) return fail("bad metadata size");
  try {
    r.data.meta = nlohmann::ordered_json::parse(b.begin() + static_cast<std::ptrdiff_t>(o), b.begin() + static_cast<std::ptrdiff_t>(o + meta_bytes));
  } catch (const std::exception& e) {
    return fail(std::string("bad metadata: ") + e.what());
  }
  o += meta_bytes;
  const std::uint32_t count = get_le32(&b[12]);
  for (std::uint32_t t = 0; t < count; ++t) {
    if (end - o < 4) return fail("bad tensor record");
    const std::uint32_t name_bytes = get_le32(&b[o]);
    o += 4;
    if (end - o < std::uint64_t{name_bytes} + 8) return fail("bad tensor record");
    std::string name(reinterpret_cast<const char*>(&b[o]), name_bytes);
    o += name_bytes;
    const std::uint64_t n = get_le64(&b[o]);
    o += 8;
    if ((end - o) / 4 < n) return fail("bad tensor size");
    std::vector<float> values(n);
    for (std::uint64_t i = 0; i < n; ++i, o += 4) values[i] = std::bit_cast<float>(get_le32(&b[o]));
    r.data.tensors.emplace_back(std::move(name), std::move(values));
  }
  if (o != end) return fail("trailing bytes");
  r.ok = true;
  return r;
}

}  // namespace vqa
