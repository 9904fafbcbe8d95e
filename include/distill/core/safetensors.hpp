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
//! The reader takes hostile input: the header is at most 100 MB (the format's own limit) and no
//! larger than the file, the JSON is a fixed two-level grammar (no recursion to exhaust), every
//! integer is range-checked, every size multiplied with checked_mul, names are unique.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

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

inline void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;  // UTF-8 passes through as it is
    }
  }
  out += '"';
}

/// Recursive-descent reader of the header's fixed grammar. Every method returns false on the
/// first fault (`error` says what); positions are byte offsets into the header text.
struct header_reader {
  std::string_view s;
  std::size_t at = 0;
  std::string error;

  bool fault(const std::string& what) {
    if (error.empty()) error = what + " at header byte " + std::to_string(at);
    return false;
  }
  void skip_space() {
    while (at < s.size() && (s[at] == ' ' || s[at] == '\t' || s[at] == '\n' || s[at] == '\r')) ++at;
  }
  bool expect(char c) {
    skip_space();
    if (at >= s.size() || s[at] != c) return fault(std::string("expected '") + c + "'");
    ++at;
    return true;
  }
  bool peek(char c) {
    skip_space();
    return at < s.size() && s[at] == c;
  }
  static void put_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  bool hex4(std::uint32_t& v) {
    if (s.size() - at < 4) return fault("truncated \\u escape");
    v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s[at++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<std::uint32_t>(c - 'A' + 10);
      else return fault("bad \\u escape");
    }
    return true;
  }
  /// A JSON string; `raw_begin` receives the offset of its first character inside the quotes.
  bool string(std::string& out, std::size_t* raw_begin = nullptr) {
    if (!expect('"')) return false;
    if (raw_begin) *raw_begin = at;
    out.clear();
    while (true) {
      if (at >= s.size()) return fault("unterminated string");
      const char c = s[at++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return fault("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at >= s.size()) return fault("unterminated escape");
      switch (const char e = s[at++]) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = 0;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00) {  // a surrogate pair
            std::uint32_t lo = 0;
            if (s.size() - at < 2 || s[at] != '\\' || s[at + 1] != 'u') return fault("lone surrogate");
            at += 2;
            if (!hex4(lo)) return false;
            if (lo < 0xDC00 || lo >= 0xE000) return fault("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            return fault("lone surrogate");
          }
          put_utf8(out, cp);
          break;
        }
        default: return fault("unknown escape");
      }
    }
  }
  /// A non-negative integer below 2^63.
  bool integer(std::uint64_t& v) {
    skip_space();
    if (at >= s.size() || s[at] < '0' || s[at] > '9') return fault("expected a non-negative integer");
    v = 0;
    while (at < s.size() && s[at] >= '0' && s[at] <= '9') {
      const auto d = static_cast<std::uint64_t>(s[at++] - '0');
      if (v > (static_cast<std::uint64_t>(INT64_MAX) - d) / 10) return fault("integer out of range");
      v = v * 10 + d;
    }
    return true;
  }
  bool integer_array(std::vector<std::uint64_t>& out, std::size_t max_items) {
    out.clear();
    if (!expect('[')) return false;
    if (peek(']')) return expect(']');
    do {
      if (out.size() == max_items) return fault("array too long");
      std::uint64_t v = 0;
      if (!integer(v)) return false;
      out.push_back(v);
    } while (peek(',') && expect(','));
    return expect(']');
  }
};

}  // namespace safetensors_detail

/// The file image: header (names in the order given) and data. `metadata` strings are added to
/// "__metadata__" together with the format version and the checksum. invalid_argument when a
/// tensor's dtype is unknown, its bytes disagree with its shape, or a name repeats / is
/// "__metadata__".
[[nodiscard]] inline status safetensors_serialize(std::span<const safetensors_tensor> tensors,
                                                  const std::map<std::string, std::string>& metadata, std::vector<unsigned char>& image) {
  using namespace safetensors_detail;
  constexpr const char* fn = "safetensors_serialize";
  std::string h = "{";
  std::uint64_t offset = 0;
  std::map<std::string_view, bool> seen;
  for (const auto& t : tensors) {
    const std::size_t eb = dtype_bytes(t.dtype);
    std::uint64_t n = 1;
    bool fits = eb != 0;
    for (const index_t d : t.shape) fits = fits && d >= 0 && checked_mul(n, static_cast<std::uint64_t>(d), n);
    fits = fits && checked_mul(n, eb, n) && n == t.bytes.size();
    if (!fits) return fail(errc::invalid_argument, fn, "tensor '" + t.name + "': dtype, shape and byte count disagree");
    if (t.name == "__metadata__" || !seen.emplace(t.name, true).second)
      return fail(errc::invalid_argument, fn, "tensor name '" + t.name + "' is reserved or repeated");
    if (h.size() > 1) h += ',';
    append_json_string(h, t.name);
    h += ":{\"dtype\":";
    append_json_string(h, t.dtype);
    h += ",\"shape\":[";
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(t.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes.size()) + "]}";
    offset += t.bytes.size();
  }
  if (h.size() > 1) h += ',';
  h += "\"__metadata__\":{";
  std::map<std::string, std::string> meta = metadata;
  meta[version_key] = "1";
  meta[checksum_key] = std::string(checksum_prefix) + std::string(16, '0');
  bool first = true;
  std::size_t digits_at = 0;  // offset of the checksum's hex digits in h
  for (const auto& [k, v] : meta) {
    if (!first) h += ',';
    first = false;
    append_json_string(h, k);
    h += ':';
    if (k == checksum_key) digits_at = h.size() + 1 + std::string_view(checksum_prefix).size();
    append_json_string(h, v);
  }
  h += "}}";
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
  const auto corrupt = [&](const std::string& what) { return fail(errc::corrupt_data, fn, "safetensors: " + what); };
  if (bytes.size() < 8) return corrupt("file of " + std::to_string(bytes.size()) + " bytes is truncated");
  const std::uint64_t n = get_le64(bytes.data());
  if (n > max_header_bytes || n > bytes.size() - 8) return corrupt("header length " + std::to_string(n) + " exceeds the file or 100 MB");
  header_reader r;
  r.s = std::string_view(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<std::size_t>(n));
  const std::uint64_t data_size = bytes.size() - 8 - n;
  safetensors_file f;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  // per tensor, data order later
  std::size_t checksum_at = 0;  // offset of the checksum string's characters in the header (0: none)
  bool have_meta = false;
  std::string key, field, str;
  std::vector<std::uint64_t> ints;
  const auto parse = [&]() -> bool {
    if (!r.expect('{')) return false;
    if (r.peek('}')) return r.expect('}');
    do {
      if (!r.string(key)) return false;
      if (!r.expect(':') || !r.expect('{')) return false;
      if (key == "__metadata__") {
        if (have_meta) return r.fault("two __metadata__ objects");
        have_meta = true;
        if (!r.peek('}')) do {
            if (!r.string(field) || !r.expect(':')) return false;
            std::size_t raw = 0;
            if (!r.string(str, &raw)) return false;
            if (f.metadata.count(field)) return r.fault("metadata key '" + field + "' repeats");
            if (field == checksum_key) checksum_at = raw;
            f.metadata[field] = str;
          } while (r.peek(',') && r.expect(','));
        if (!r.expect('}')) return false;
        continue;
      }
      if (f.find(key)) return r.fault("tensor '" + key + "' repeats");
      safetensors_tensor t;
      t.name = key;
      bool has_dtype = false, has_shape = false, has_offsets = false;
      std::pair<std::uint64_t, std::uint64_t> range{};
      do {
        if (!r.string(field) || !r.expect(':')) return false;
        if (field == "dtype" && !has_dtype) {
          if (!r.string(t.dtype)) return false;
          has_dtype = true;
        } else if (field == "shape" && !has_shape) {
          if (!r.integer_array(ints, 16)) return false;
          for (const auto d : ints) t.shape.push_back(static_cast<index_t>(d));
          has_shape = true;
        } else if (field == "data_offsets" && !has_offsets) {
          if (!r.integer_array(ints, 2)) return false;
          if (ints.size() != 2) return r.fault("data_offsets needs two integers");
          range = {ints[0], ints[1]};
          has_offsets = true;
        } else {
          return r.fault("unexpected or repeated field '" + field + "' in tensor '" + key + "'");
        }
      } while (r.peek(',') && r.expect(','));
      if (!r.expect('}')) return false;
      if (!has_dtype || !has_shape || !has_offsets) return r.fault("tensor '" + key + "' lacks dtype, shape or data_offsets");
      f.tensors.push_back(std::move(t));
      ranges.push_back(range);
    } while (r.peek(',') && r.expect(','));
    if (!r.expect('}')) return false;
    r.skip_space();
    return r.at == r.s.size() || r.fault("trailing characters after the header object");
  };
  if (!parse()) return corrupt(r.error);

  // Sizes: each tensor's bytes match its dtype and shape; together they tile the data buffer.
  std::vector<std::size_t> order(f.tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return ranges[a] < ranges[b]; });
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
    next = end;
  }
  if (next != data_size) return corrupt("the data buffer has " + std::to_string(data_size - next) + " bytes no tensor covers");

  // distill's own fields, when present.
  if (const auto v = f.metadata.find(version_key); v != f.metadata.end() && v->second != "1")
    return corrupt("unsupported distill.format_version '" + v->second + "' (this build reads 1)");
  // A file with distill's metadata must carry the checksum (a damaged key must not disable it).
  const bool distill_written = std::any_of(f.metadata.begin(), f.metadata.end(), [](const auto& kv) { return kv.first.rfind("distill.", 0) == 0; });
  if (distill_written && checksum_at == 0) return corrupt("distill metadata without distill.checksum");
  if (checksum_at != 0) {
    const std::string& c = f.metadata[checksum_key];
    const std::size_t plen = std::string_view(checksum_prefix).size();
    std::uint64_t stored = 0;
    bool well_formed = c.size() == plen + 16 && c.compare(0, plen, checksum_prefix) == 0;
    for (std::size_t i = plen; well_formed && i < c.size(); ++i) {
      const char h = c[i];
      const int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
      well_formed = d >= 0;
      stored = stored << 4 | static_cast<std::uint64_t>(d < 0 ? 0 : d);
    }
    // The digits must sit in the header as written (no escapes), so they can be zeroed in place.
    const std::size_t digits = 8 + checksum_at + plen;
    well_formed = well_formed && digits + 16 <= 8 + n &&
                  std::memcmp(bytes.data() + 8 + checksum_at, c.data(), c.size()) == 0;
    if (!well_formed) return corrupt("malformed distill.checksum '" + c + "'");
    fnv1a64 h;
    static constexpr unsigned char zeros[16] = {'0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0', '0'};
    h.update(bytes.first(digits)).update(zeros).update(bytes.subspan(digits + 16));
    if (h.value() != stored) return corrupt("checksum mismatch: the file is corrupt");
  }
  out = std::move(f);
  return {};
}

}  // namespace distill
