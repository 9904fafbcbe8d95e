// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! safetensors (huggingface.co/docs/safetensors; the format PyTorch, NumPy, JAX and Rust users
//! open with `safetensors.torch.load_file` & co.): many named tensors in one file, readable
//! without running code. Checkpoints (nn/checkpoint.hpp) and sample queues
//! (contrastive/sample_queue.hpp) can be saved in it.
//!
//!   u64 little-endian N | N bytes of JSON header | data buffer
//!   header: {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//!            "__metadata__": {"<key>": "<string>", ...}}
//!   offsets are byte offsets into the data buffer, row-major little-endian tensors that tile it
//!   exactly (no holes, no overlap); the header may end in spaces (padding to 8 bytes).
//!
//! Files distill writes carry two metadata strings: "distill.format_version" ("1") and
//! "distill.checksum" = "fnv1a64:" + 16 hex digits, the byte-wise FNV-1a 64 (core/file_io.hpp) of
//! the whole file with those 16 digits read as '0's, so a changed byte anywhere, header or data,
//! is caught. Files without any "distill." metadata (written by other tools) are accepted after
//! the structural checks; a missing or wrong checksum in a file with distill metadata, a wrong
//! version or any structural fault is corrupt_data.
//!
//! nlohmann-json reads and writes the header, without exceptions (parse with allow_exceptions =
//! false, then only type-checked accessors). The reader takes hostile input: the header is at most
//! 100 MB (the format's own limit) and no larger than the file, nests at most 3 levels (checked by
//! a scan before parsing), every integer is range-checked, every size multiplied with
//! checked_mul, names and keys are unique. The writer dumps an ordered_json: tensors in data
//! order, the checksum last.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/core/checks.hpp"
#include "distill/core/config.hpp"
#include "distill/core/file_io.hpp"
#include "distill/core/status.hpp"

namespace distill {

/// File format of the savers that offer both: distill's own (the default) or safetensors. The
/// loaders recognise either.
enum class file_format { native, safetensors };

/// One tensor of a safetensors file: dtype as the format spells it (F32, F64, F16, BF16, I64,
/// I32, U8, ...), shape, and its bytes (into the caller's buffer on write, into the parsed file on
/// read).
struct safetensors_tensor {
  std::string name;
  std::string dtype;
  std::vector<index_t> shape;
  std::span<const unsigned char> bytes;
};

/// A parsed file: tensors in data order (views into the bytes given to safetensors_parse) and
/// the metadata strings.
struct safetensors_file {
  std::vector<safetensors_tensor> tensors;
  std::map<std::string, std::string> metadata;
  const safetensors_tensor* find(std::string_view name) const noexcept {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
};

namespace safetensors_detail {

inline constexpr std::uint64_t max_header_bytes = 100'000'000;  // the format's own limit
inline constexpr const char* checksum_key = "distill.checksum";
inline constexpr const char* version_key = "distill.format_version";
inline constexpr const char* checksum_prefix = "fnv1a64:";

/// Bytes per element of a dtype name, 0 for a name this reader does not know.
inline std::size_t dtype_bytes(std::string_view d) noexcept {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL") return 1;
  return 0;
}

/// Deepest nesting of '{' and '[' outside strings and longest array: the header's grammar needs 3
/// levels (object, tensor, shape) and arrays of a shape's rank or two offsets, so anything deeper
/// or longer, or a close without an open, is refused before nlohmann-json builds (and later
/// frees) it.
inline constexpr int max_depth = 3;
inline constexpr int max_array_items = 16;  // the rank limit below
inline bool nesting_within(std::string_view s, int limit, int max_items = max_array_items) noexcept {
  int depth = 0;
  bool in_array[max_depth + 1] = {};
  int items[max_depth + 1] = {};
  bool in_string = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;  // the escaped character cannot end the string
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit || depth > max_depth) return false;
      in_array[depth] = c == '[';
      items[depth] = 1;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return false;  // a close with nothing open: not JSON, and no level to pop
      --depth;
    } else if (c == ',' && depth > 0 && in_array[depth] && ++items[depth] > max_items) {
      return false;
    }
  }
  return true;
}

/// True when `s` is valid UTF-8, which nlohmann-json's dump() requires (it would throw): the
/// replacing dump parses back to `s` exactly then.
inline bool is_utf8(const std::string& s) {
  using nlohmann::json;
  const json back = json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace), nullptr, false);
  return back.is_string() && *back.get_ptr<const std::string*>() == s;
}

/// A non-negative JSON integer below 2^63 (so it fits index_t), or false.
inline bool small_unsigned(const nlohmann::json& v, std::uint64_t& out) noexcept {
  if (!v.is_number_unsigned()) return false;
  out = *v.get_ptr<const nlohmann::json::number_unsigned_t*>();
  return out <= static_cast<std::uint64_t>(INT64_MAX);
}

/// An array of at most `max_items` such integers, or false.
inline bool small_unsigned_array(const nlohmann::json& v, std::size_t max_items, std::vector<std::uint64_t>& out) {
  out.clear();
  if (!v.is_array() || v.size() > max_items) return false;
  for (const auto& e : v) {
    std::uint64_t x = 0;
    if (!small_unsigned(e, x)) return false;
    out.push_back(x);
  }
  return true;
}

}  // namespace safetensors_detail

/// The file image: header (names in the order given) and data. `metadata` strings are added to
/// "__metadata__" together with the format version and the checksum. invalid_argument when a
/// tensor's dtype is unknown, its bytes disagree with its shape, or a name repeats / is
/// "__metadata__".
[[nodiscard]] inline status safetensors_serialize(std::span<const safetensors_tensor> tensors,
                                                  const std::map<std::string, std::string>& metadata, std::vector<unsigned char>& image) {
  using namespace safetensors_detail;
  constexpr const char* fn = "safetensors_serialize";
  nlohmann::ordered_json header = nlohmann::ordered_json::object();  // tensors in data order
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    const std::size_t eb = dtype_bytes(t.dtype);
    std::uint64_t n = 1;
    bool fits = eb != 0;
    for (const index_t d : t.shape) fits = fits && d >= 0 && checked_mul(n, static_cast<std::uint64_t>(d), n);
    fits = fits && checked_mul(n, eb, n) && n == t.bytes.size();
    if (!fits) return fail(errc::invalid_argument, fn, "tensor '" + t.name + "': dtype, shape and byte count disagree");
    if (t.name == "__metadata__" || header.contains(t.name))
      return fail(errc::invalid_argument, fn, "tensor name '" + t.name + "' is reserved or repeated");
    if (!is_utf8(t.name)) return fail(errc::invalid_argument, fn, "tensor name '" + t.name + "' is not UTF-8");
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  // The checksum comes last, so its digits end the serialised header at a known place.
  auto& meta = header["__metadata__"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : metadata) {
    if (k == checksum_key || k == version_key) continue;  // distill's own, set below
    if (!is_utf8(k) || !is_utf8(v)) return fail(errc::invalid_argument, fn, "metadata '" + k + "' is not UTF-8");
    meta[k] = v;
  }
  meta[version_key] = "1";
  const std::string zeros(16, '0');
  meta[checksum_key] = checksum_prefix + zeros;
  // Compact dump() puts no space anywhere, so the header ends in <16 digits>"}}.
  std::string h = header.dump();
  const std::size_t digits_at = h.size() - 16 - 3;  // offset of the checksum's hex digits in h
  h.append((8 - h.size() % 8) % 8, ' ');  // the data buffer starts 8-byte aligned
  image.assign(8 + h.size() + offset, 0);
  put_le64(image.data(), h.size());
  std::memcpy(image.data() + 8, h.data(), h.size());
  unsigned char* data = image.data() + 8 + h.size();
  for (const auto& t : tensors) {
    if (!t.bytes.empty()) std::memcpy(data, t.bytes.data(), t.bytes.size());
    data += t.bytes.size();
  }
  static constexpr char hex[] = "0123456789abcdef";
  const std::uint64_t sum = fnv1a64::of(image);
  for (int i = 0; i < 16; ++i) image[8 + digits_at + static_cast<std::size_t>(i)] = static_cast<unsigned char>(hex[(sum >> (60 - 4 * i)) & 15]);
  return {};
}

/// True when `bytes` look like a safetensors file rather than one of distill's own formats (whose
/// first 8 bytes are ASCII magic): a header length that fits and a header that opens with '{'.
inline bool is_safetensors(std::span<const unsigned char> bytes) noexcept {
  if (bytes.size() < 10) return false;
  const std::uint64_t n = get_le64(bytes.data());
  return n >= 2 && n <= bytes.size() - 8 && bytes[8] == '{';
}

/// Parse and check a safetensors image (see the file comment); corrupt_data naming `fn` and what
/// is wrong otherwise. The tensors of `out` view `bytes`, which must outlive them.
[[nodiscard]] inline status safetensors_parse(const char* fn, std::span<const unsigned char> bytes, safetensors_file& out) {
  using namespace safetensors_detail;
  using nlohmann::json;
  const auto corrupt = [&](const std::string& what) { return fail(errc::corrupt_data, fn, "safetensors: " + what); };
  if (bytes.size() < 8) return corrupt("file of " + std::to_string(bytes.size()) + " bytes is truncated");
  const std::uint64_t n = get_le64(bytes.data());
  if (n > max_header_bytes || n > bytes.size() - 8) return corrupt("header length " + std::to_string(n) + " exceeds the file or 100 MB");
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<std::size_t>(n));
  const std::uint64_t data_size = bytes.size() - 8 - n;
  if (!nesting_within(text, max_depth)) return corrupt("the header nests deeper than " + std::to_string(max_depth) + " levels, closes a bracket it never opened or has an array of more than " + std::to_string(max_array_items) + " items");
  // Of two equal keys nlohmann-json silently keeps one: count the keys the parser meets, compare
  // with the keys kept below.
  std::size_t keys_met = 0;
  const json header = json::parse(
      text.begin(), text.end(),
      [&](int, json::parse_event_t event, json&) {
        keys_met += event == json::parse_event_t::key;
        return true;
      },
      /*allow_exceptions=*/false);
  if (header.is_discarded()) return corrupt("the header is not valid JSON");
  if (!header.is_object()) return corrupt("the header is not a JSON object");

  safetensors_file f;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  // data_offsets, per tensor
  std::size_t keys_kept = header.size();
  std::vector<std::uint64_t> ints;
  for (const auto& item : header.items()) {
    const std::string& key = item.key();
    const json& value = item.value();
    if (!value.is_object()) return corrupt("'" + key + "' is not a JSON object");
    keys_kept += value.size();
    if (key == "__metadata__") {
      for (const auto& m : value.items()) {
        if (!m.value().is_string()) return corrupt("metadata '" + m.key() + "' is not a string");
        f.metadata.emplace(m.key(), *m.value().get_ptr<const std::string*>());
      }
      continue;
    }
    const auto dtype = value.find("dtype"), shape = value.find("shape"), offsets = value.find("data_offsets");
    if (value.size() != 3 || dtype == value.end() || shape == value.end() || offsets == value.end() || !dtype->is_string())
      return corrupt("tensor '" + key + "' needs exactly a string dtype, shape and data_offsets");
    safetensors_tensor t;
    t.name = key;
    t.dtype = *dtype->get_ptr<const std::string*>();
    if (!small_unsigned_array(*shape, 16, ints)) return corrupt("tensor '" + key + "': shape is not at most 16 integers in [0, 2^63)");
    for (const auto d : ints) t.shape.push_back(static_cast<index_t>(d));
    if (!small_unsigned_array(*offsets, 2, ints) || ints.size() != 2)
      return corrupt("tensor '" + key + "': data_offsets is not two integers in [0, 2^63)");
    f.tensors.push_back(std::move(t));
    ranges.emplace_back(ints[0], ints[1]);
  }
  // Tensor fields hold no objects (checked above), so every key sits on these two levels.
  if (keys_met != keys_kept) return corrupt("a key repeats in the header");

  // Sizes: each tensor's bytes match its dtype and shape; together they tile the data buffer.
  std::vector<std::size_t> order(f.tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return ranges[a] < ranges[b]; });
  std::vector<safetensors_tensor> in_data_order;
  in_data_order.reserve(order.size());
  std::uint64_t next = 0;
  for (const std::size_t i : order) {
    auto& t = f.tensors[i];
    const auto [begin, end] = ranges[i];
    const std::size_t eb = dtype_bytes(t.dtype);
    if (eb == 0) return corrupt("tensor '" + t.name + "' has the unknown dtype '" + t.dtype + "'");
    std::uint64_t want = eb;
    for (const index_t d : t.shape)
      if (!checked_mul(want, static_cast<std::uint64_t>(d), want)) return corrupt("tensor '" + t.name + "' has a shape beyond 64 bits");
    if (begin != next || end < begin || end - begin != want || end > data_size)
      return corrupt("tensor '" + t.name + "': data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                     "] do not tile the data buffer or disagree with its shape");
    t.bytes = bytes.subspan(static_cast<std::size_t>(8 + n + begin), static_cast<std::size_t>(want));
    in_data_order.push_back(std::move(t));
    next = end;
  }
  if (next != data_size) return corrupt("the data buffer has " + std::to_string(data_size - next) + " bytes no tensor covers");
  f.tensors = std::move(in_data_order);

  // distill's own fields, when present.
  if (const auto v = f.metadata.find(version_key); v != f.metadata.end() && v->second != "1")
    return corrupt("unsupported distill.format_version '" + v->second + "' (this build reads 1)");
  // A file with distill's metadata must carry the checksum (a damaged key must not disable it).
  const bool distill_written = std::any_of(f.metadata.begin(), f.metadata.end(), [](const auto& kv) { return kv.first.rfind("distill.", 0) == 0; });
  const auto checksum = f.metadata.find(checksum_key);
  if (distill_written && checksum == f.metadata.end()) return corrupt("distill metadata without distill.checksum");
  if (checksum != f.metadata.end()) {
    const std::string& c = checksum->second;
    const std::size_t plen = std::string_view(checksum_prefix).size();
    std::uint64_t stored = 0;
    bool well_formed = c.size() == plen + 16 && c.compare(0, plen, checksum_prefix) == 0;
    for (std::size_t i = plen; well_formed && i < c.size(); ++i) {
      const char h = c[i];
      const int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
      well_formed = d >= 0;
      stored = stored << 4 | static_cast<std::uint64_t>(d < 0 ? 0 : d);
    }
    // The digits are zeroed in place, so the value must stand in the header as written (no
    // escapes), and only once, for its place to be known.
    const std::string quoted = '"' + c + '"';
    const std::size_t at = text.find(quoted);
    well_formed = well_formed && at != std::string_view::npos && text.find(quoted, at + 1) == std::string_view::npos;
    if (!well_formed) return corrupt("malformed distill.checksum '" + c + "'");
    const std::size_t digits = 8 + at + 1 + plen;
    fnv1a64 h;
    static constexpr unsigned char zeros[16] = {'0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0'};
    h.update(bytes.first(digits)).update(zeros).update(bytes.subspan(digits + 16));
    if (h.value() != stored) return corrupt("checksum mismatch: the file is corrupt");
  }
  out = std::move(f);
  return {};
}

}  // namespace distill
