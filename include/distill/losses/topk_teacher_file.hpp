// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! A sparse top-k teacher (losses/topk_teacher.hpp) stored once, offline, as S safetensors files
//! (core/safetensors.hpp: atomic writes, checksummed), so that each data-parallel rank reads only
//! the rows it trains on. N rows split into S shards, near-equal: shard i holds rows
//! [row_split_begin(N, S, i), row_split_begin(N, S, i + 1)), where
//!
//!   row_split_begin(N, S, i) = i * (N / S) + min(i, N % S)     (the first N % S shards get one more row)
//!
//! Shard i of S is the file "<prefix>-<i>-of-<S>.safetensors", i and S written with 5 digits
//! (more when S needs them): "teacher-00000-of-00002.safetensors". Each file holds
//!   tensor "indices": I64, shape [rows, k]   the teacher's classes; a negative index marks an unused slot
//!   tensor "values":  F32, shape [rows, k]   their values (log-probabilities, or logits for variant A)
//!   metadata (strings, integers in decimal):
//!     "topk_teacher.total_rows"  N, rows of the whole teacher
//!     "topk_teacher.first_row"   this shard's first row, row_split_begin(N, S, i)
//!     "topk_teacher.classes"     C, the vocabulary the indices point into
//!     "topk_teacher.k"           k, slots per row
//!     "topk_teacher.variant"     "renormalized" or "rest_bucket" (the topk_variant the values are for)
//!     "topk_teacher.temperature" the temperature the values were made at ("2", "2.0", "0.5", ...)
//! distill adds its "distill.format_version" and "distill.checksum" (core/safetensors.hpp); a file
//! written by the Python safetensors package carries neither and is accepted after the structural
//! checks:
//!
//!   from safetensors.numpy import save_file                 # idx (n, k) int64, val (n, k) float32
//!   save_file({"indices": idx, "values": val}, "teacher-00000-of-00002.safetensors",
//!             metadata={"topk_teacher.total_rows": str(N), "topk_teacher.first_row": "0",
//!                       "topk_teacher.classes": str(C), "topk_teacher.k": str(k),
//!                       "topk_teacher.variant": "rest_bucket", "topk_teacher.temperature": "1.0"})
//!
//! Reading rows [begin, end) opens only the shards that hold them (ranks == shards: one file each;
//! any other rank count works too). Every file is checked whole before anything is written to the
//! output: corrupt_data for a damaged or truncated file, a missing tensor, a wrong dtype or shape,
//! rows that leave a gap or overlap (a first_row or row count other than the split's) or an index
//! >= C; invalid_argument for metadata other than the reader expects (total rows, classes, k,
//! variant, temperature); io_error for a missing file. Messages name the file and the field. A
//! file larger than its rows need (plus 1 MiB of header) is refused before it is read.
//!
//!   topk_teacher_file_info info{.total_rows = N, .shards = S, .classes = C, .k = k,
//!                               .variant = topk_variant::rest_bucket, .temperature = 1.0f};
//!   DISTILL_TRY(topk_teacher_write("data/teacher", info, indices, values));        // all S shards
//!   const index_t begin = row_split_begin(N, P, rank), end = row_split_begin(N, P, rank + 1);
//!   DISTILL_TRY(topk_teacher_read("data/teacher", info, begin, end, my_indices, my_values));

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/file_io.hpp"
#include "distill/core/safetensors.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/losses/topk_teacher.hpp"

namespace distill {

/// What a set of top-k teacher files holds; the same for every shard. The writer stores it, the
/// reader refuses a file that disagrees with it.
struct topk_teacher_file_info {
  index_t total_rows = 0;  ///< N
  index_t shards = 1;      ///< S, files the rows are split into
  index_t classes = 0;     ///< C
  index_t k = 0;           ///< slots per row
  topk_variant variant = topk_variant::renormalized;
  float temperature = 1.0f;  ///< the temperature the values were made at
};

/// First row of part `i` of `n` rows split into `parts` near-equal parts (the first n % parts
/// get one row more); part i is [row_split_begin(n, parts, i), row_split_begin(n, parts, i + 1)).
/// The shards' split, and the natural one for ranks (ranks == shards: one file per rank).
[[nodiscard]] constexpr index_t row_split_begin(index_t n, index_t parts, index_t i) noexcept {
  return i * (n / parts) + std::min(i, n % parts);
}

/// "<prefix>-<shard>-of-<shards>.safetensors", numbers zero-padded to 5 digits.
inline std::string topk_teacher_shard_path(const std::string& prefix, index_t shard, index_t shards) {
  const auto padded = [](index_t v) {
    std::string s = std::to_string(v);
    return std::string(s.size() < 5 ? 5 - s.size() : 0, '0') + s;
  };
  return prefix + "-" + padded(shard) + "-of-" + padded(shards) + ".safetensors";
}

namespace topk_file_detail {

static_assert(std::endian::native == std::endian::little, "top-k teacher files are little-endian; big-endian hosts are not supported");

inline constexpr const char* key_total_rows = "topk_teacher.total_rows";
inline constexpr const char* key_first_row = "topk_teacher.first_row";
inline constexpr const char* key_classes = "topk_teacher.classes";
inline constexpr const char* key_k = "topk_teacher.k";
inline constexpr const char* key_variant = "topk_teacher.variant";
inline constexpr const char* key_temperature = "topk_teacher.temperature";
inline constexpr std::uint64_t header_allowance = 1 << 20;  // the JSON header of a shard is ~500 bytes

inline const char* variant_name(topk_variant v) noexcept {
  return v == topk_variant::rest_bucket ? "rest_bucket" : "renormalized";
}

/// The checks of the file description shared by writer and reader.
inline status check_info(const char* fn, const topk_teacher_file_info& info) {
  const auto bad = [&](const std::string& what) { return fail(errc::invalid_argument, fn, what); };
  if (info.total_rows < 0) return bad("'total_rows' is " + std::to_string(info.total_rows) + ", must be >= 0");
  if (info.shards < 1 || info.shards > std::max<index_t>(info.total_rows, 1))
    return bad("'shards' is " + std::to_string(info.shards) + ", must be in [1, max(total_rows, 1)] (no empty shard)");
  if (info.classes < 1) return bad("'classes' is " + std::to_string(info.classes) + ", must be >= 1");
  if (info.k < 1 || info.k > info.classes)
    return bad("'k' is " + std::to_string(info.k) + ", must be in [1, classes = " + std::to_string(info.classes) + "]");
  if (info.variant != topk_variant::renormalized && info.variant != topk_variant::rest_bucket)
    return bad("'variant' is not a valid topk_variant");
  if (!(info.temperature > 0.0f) || !std::isfinite(info.temperature)) return bad("'temperature' must be finite and > 0");
  return {};
}

/// Every index below `classes` (a negative one marks an unused slot).
inline status check_indices(const char* fn, in_view<std::int64_t, 2> indices, index_t classes) {
  for (index_t r = 0; r < indices.extent(0); ++r)
    for (index_t j = 0; j < indices.extent(1); ++j)
      if (indices(r, j) >= classes)
        return fail(errc::invalid_argument, fn, "'indices' holds " + std::to_string(indices(r, j)) + " at row " + std::to_string(r) +
                                                    ", slot " + std::to_string(j) + ", outside [0, classes = " + std::to_string(classes) + ")");
  return {};
}

/// The shortest decimal that reads back as `v` exactly.
inline std::string float_text(float v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// A whole-string decimal integer in [0, 2^63), or false.
inline bool parse_index(const std::string& s, index_t& out) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && out >= 0 && !s.empty() && s[0] != '-';
}

/// One shard read and checked whole: its tensors view `bytes`.
struct loaded_shard {
  std::string path;
  std::vector<unsigned char> bytes;
  safetensors_file file;
  const safetensors_tensor* indices = nullptr;
  const safetensors_tensor* values = nullptr;
};

/// Read shard i of `info` and check it against `info` and the split.
inline status read_shard(const char* fn, const std::string& prefix, const topk_teacher_file_info& info, index_t i, loaded_shard& s) {
  s.path = topk_teacher_shard_path(prefix, i, info.shards);
  const index_t first = row_split_begin(info.total_rows, info.shards, i);
  const index_t rows = row_split_begin(info.total_rows, info.shards, i + 1) - first;
  const auto corrupt = [&](const std::string& what) { return fail(errc::corrupt_data, fn, "'" + s.path + "': " + what); };
  const auto mismatch = [&](const std::string& what) { return fail(errc::invalid_argument, fn, "'" + s.path + "': " + what); };
  std::uint64_t largest = 0;  // 8 + header + rows * k * (8 + 4): I64 and F32
  if (!checked_mul(static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(info.k) * 12u, largest) ||
      !checked_add(largest, 8 + header_allowance, largest))
    largest = std::numeric_limits<std::uint64_t>::max();
  DISTILL_TRY(read_file(fn, s.path, s.bytes, largest));
  if (const status st = safetensors_parse(fn, s.bytes, s.file); !st.ok())
    return status(st.code(), std::string(fn) + ": '" + s.path + "': " + st.message().substr(std::strlen(fn) + 2));

  // metadata: present, well formed, equal to what the reader expects
  const auto meta = [&](const char* key, const std::string*& out) -> status {
    const auto it = s.file.metadata.find(key);
    if (it == s.file.metadata.end()) return corrupt("metadata '" + std::string(key) + "' is missing");
    out = &it->second;
    return {};
  };
  const auto number = [&](const char* key, index_t want) -> status {
    const std::string* text = nullptr;
    DISTILL_TRY(meta(key, text));
    index_t got = 0;
    if (!parse_index(*text, got)) return corrupt("metadata '" + std::string(key) + "' = '" + *text + "' is not a decimal integer");
    if (got != want)
      return mismatch("metadata '" + std::string(key) + "' is " + *text + ", the reader expects " + std::to_string(want));
    return {};
  };
  DISTILL_TRY(number(key_total_rows, info.total_rows));
  DISTILL_TRY(number(key_classes, info.classes));
  DISTILL_TRY(number(key_k, info.k));
  {
    const std::string* text = nullptr;
    DISTILL_TRY(meta(key_variant, text));
    if (*text != "renormalized" && *text != "rest_bucket")
      return corrupt("metadata '" + std::string(key_variant) + "' = '" + *text + "' is neither renormalized nor rest_bucket");
    if (*text != variant_name(info.variant))
      return mismatch("metadata '" + std::string(key_variant) + "' is " + *text + ", the reader expects " + variant_name(info.variant));
    DISTILL_TRY(meta(key_temperature, text));
    float t = 0.0f;
    const auto r = std::from_chars(text->data(), text->data() + text->size(), t);
    if (r.ec != std::errc() || r.ptr != text->data() + text->size() || !(t > 0.0f))
      return corrupt("metadata '" + std::string(key_temperature) + "' = '" + *text + "' is not a positive number");
    if (t != info.temperature)
      return mismatch("metadata '" + std::string(key_temperature) + "' is " + *text + ", the reader expects " +
                      float_text(info.temperature));
  }
  // a gap or an overlap: the shard does not start where the split puts it
  {
    const std::string* text = nullptr;
    DISTILL_TRY(meta(key_first_row, text));
    index_t got = 0;
    if (!parse_index(*text, got))
      return corrupt("metadata '" + std::string(key_first_row) + "' = '" + *text + "' is not a decimal integer");
    if (got != first)
      return corrupt("metadata '" + std::string(key_first_row) + "' is " + *text + " but shard " + std::to_string(i) + " of " +
                     std::to_string(info.shards) + " starts at row " + std::to_string(first) + " (a gap or an overlap between shards)");
  }
  // tensors
  s.indices = s.file.find("indices");
  s.values = s.file.find("values");
  if (!s.indices || !s.values || s.file.tensors.size() != 2) return corrupt("needs exactly the tensors 'indices' and 'values'");
  for (const safetensors_tensor* t : {s.indices, s.values}) {
    const char* want = t == s.indices ? "I64" : "F32";
    if (t->dtype != want) return corrupt("tensor '" + t->name + "' is " + t->dtype + ", expected " + want);
    if (t->shape.size() != 2 || t->shape[0] != rows || t->shape[1] != info.k) {
      std::string got = "[";
      for (std::size_t d = 0; d < t->shape.size(); ++d) got += (d ? ", " : "") + std::to_string(t->shape[d]);
      return corrupt("tensor '" + t->name + "' has shape " + got + "], expected [" + std::to_string(rows) + ", " +
                     std::to_string(info.k) + "] (rows of shard " + std::to_string(i) + ", k)");
    }
  }
  for (index_t e = 0; e < rows * info.k; ++e) {
    std::int64_t c = 0;
    std::memcpy(&c, s.indices->bytes.data() + e * 8, 8);
    if (c >= info.classes)
      return corrupt("tensor 'indices' holds " + std::to_string(c) + " at row " + std::to_string(first + e / info.k) + ", slot " +
                     std::to_string(e % info.k) + ", outside [0, classes = " + std::to_string(info.classes) + ")");
  }
  return {};
}

}  // namespace topk_file_detail

/// Write shard `shard` of `info`: `indices` and `values` are that shard's rows only,
/// (row_split_begin(N, S, shard + 1) - row_split_begin(N, S, shard), k). For producers that make
/// one shard at a time; topk_teacher_write writes them all.
[[nodiscard]] inline status topk_teacher_write_shard(const std::string& prefix, const topk_teacher_file_info& info, index_t shard,
                                                     in_view<std::int64_t, 2> indices, in_view<float, 2> values,
                                                     const atomic_write_options& opt = {}) {
  using namespace topk_file_detail;
  constexpr const char* fn = "topk_teacher_write_shard";
  DISTILL_TRY(check_info(fn, info));
  if (shard < 0 || shard >= info.shards)
    return fail(errc::invalid_argument, fn,
                "'shard' is " + std::to_string(shard) + ", outside [0, shards = " + std::to_string(info.shards) + ")");
  const index_t first = row_split_begin(info.total_rows, info.shards, shard);
  const index_t rows = row_split_begin(info.total_rows, info.shards, shard + 1) - first;
  if (rows > 0) {
    DISTILL_TRY(check_present(fn, "indices", indices));
    DISTILL_TRY(check_present(fn, "values", values));
  }
  DISTILL_TRY(check_shape(fn, "indices", indices, {rows, info.k}));
  DISTILL_TRY(check_shape(fn, "values", values, {rows, info.k}));
  DISTILL_TRY(check_strides(fn, "indices", indices));
  DISTILL_TRY(check_strides(fn, "values", values));
  DISTILL_TRY(check_indices(fn, indices, info.classes));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(rows * info.k));
  std::vector<float> val(idx.size());
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < info.k; ++j) {
      idx[static_cast<std::size_t>(r * info.k + j)] = indices(r, j);
      val[static_cast<std::size_t>(r * info.k + j)] = values(r, j);
    }
  const auto bytes = [](const auto& v) {
    return std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(v.data()), v.size() * sizeof(v[0]));
  };
  const safetensors_tensor tensors[2] = {{"indices", "I64", {rows, info.k}, bytes(idx)}, {"values", "F32", {rows, info.k}, bytes(val)}};
  const std::map<std::string, std::string> meta = {{key_total_rows, std::to_string(info.total_rows)},
                                                   {key_first_row, std::to_string(first)},
                                                   {key_classes, std::to_string(info.classes)},
                                                   {key_k, std::to_string(info.k)},
                                                   {key_variant, variant_name(info.variant)},
                                                   {key_temperature, float_text(info.temperature)}};
  std::vector<unsigned char> image;
  DISTILL_TRY(safetensors_serialize(tensors, meta, image));
  return write_file_atomically(fn, topk_teacher_shard_path(prefix, shard, info.shards), image, opt);
}

/// Write all `info.shards` shards of the whole teacher: `indices` and `values` are (N, k).
[[nodiscard]] inline status topk_teacher_write(const std::string& prefix, const topk_teacher_file_info& info, in_view<std::int64_t, 2> indices,
                                               in_view<float, 2> values, const atomic_write_options& opt = {}) {
  constexpr const char* fn = "topk_teacher_write";
  DISTILL_TRY(topk_file_detail::check_info(fn, info));
  DISTILL_TRY(check_shape(fn, "indices", indices, {info.total_rows, info.k}));
  DISTILL_TRY(check_shape(fn, "values", values, {info.total_rows, info.k}));
  DISTILL_TRY(check_strides(fn, "indices", indices));
  DISTILL_TRY(check_strides(fn, "values", values));
  DISTILL_TRY(topk_file_detail::check_indices(fn, indices, info.classes));  // before any shard is written
  for (index_t i = 0; i < info.shards; ++i) {
    const index_t first = row_split_begin(info.total_rows, info.shards, i);
    const index_t rows = row_split_begin(info.total_rows, info.shards, i + 1) - first;
    const index_t ext[2] = {rows, info.k};
    const index_t si[2] = {indices.stride(0), indices.stride(1)}, sv[2] = {values.stride(0), values.stride(1)};
    DISTILL_TRY(topk_teacher_write_shard(prefix, info, i, in_view<std::int64_t, 2>(indices.data() + first * si[0], ext, si),
                                         in_view<float, 2>(values.data() + first * sv[0], ext, sv), opt));
  }
  return {};
}

/// Read rows [begin, end) of the teacher that `expect` describes into `indices` and `values`,
/// both (end - begin, k): only the shards holding those rows are opened, each checked whole
/// (see the file comment) before any output is written.
[[nodiscard]] inline status topk_teacher_read(const std::string& prefix, const topk_teacher_file_info& expect, index_t begin, index_t end,
                                              host_view<std::int64_t, 2> indices, host_view<float, 2> values) {
  using namespace topk_file_detail;
  constexpr const char* fn = "topk_teacher_read";
  DISTILL_TRY(check_info(fn, expect));
  if (begin < 0 || end < begin || end > expect.total_rows)
    return fail(errc::invalid_argument, fn, "rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") are not within [0, total_rows = " +
                                                std::to_string(expect.total_rows) + ")");
  const index_t rows = end - begin;
  if (rows == 0) return {};  // nothing to read
  DISTILL_TRY(check_present(fn, "indices", indices));
  DISTILL_TRY(check_present(fn, "values", values));
  DISTILL_TRY(check_shape(fn, "indices", indices, {rows, expect.k}));
  DISTILL_TRY(check_shape(fn, "values", values, {rows, expect.k}));
  DISTILL_TRY(check_strides(fn, "indices", indices));
  DISTILL_TRY(check_strides(fn, "values", values));
  // the shards holding [begin, end): the last whose first row is <= begin, up to the one holding end - 1
  const auto shard_of = [&](index_t row) {
    index_t i = std::min<index_t>(row / std::max<index_t>(expect.total_rows / expect.shards, 1), expect.shards - 1);
    while (row_split_begin(expect.total_rows, expect.shards, i) > row) --i;
    while (row_split_begin(expect.total_rows, expect.shards, i + 1) <= row) ++i;
    return i;
  };
  const index_t first_shard = shard_of(begin), last_shard = shard_of(end - 1);
  std::vector<loaded_shard> shards(static_cast<std::size_t>(last_shard - first_shard + 1));
  for (index_t i = first_shard; i <= last_shard; ++i)
    DISTILL_TRY(read_shard(fn, prefix, expect, i, shards[static_cast<std::size_t>(i - first_shard)]));
  // every file is sound: copy the rows out
  for (index_t i = first_shard; i <= last_shard; ++i) {
    const loaded_shard& s = shards[static_cast<std::size_t>(i - first_shard)];
    const index_t s0 = row_split_begin(expect.total_rows, expect.shards, i), s1 = row_split_begin(expect.total_rows, expect.shards, i + 1);
    for (index_t r = std::max(begin, s0); r < std::min(end, s1); ++r)
      for (index_t j = 0; j < expect.k; ++j) {
        const std::size_t e = static_cast<std::size_t>((r - s0) * expect.k + j);
        std::memcpy(&indices(r - begin, j), s.indices->bytes.data() + e * 8, 8);
        std::memcpy(&values(r - begin, j), s.values->bytes.data() + e * 4, 4);
      }
  }
  return {};
}

}  // namespace distill
