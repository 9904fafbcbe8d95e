// SPDX-License-Identifier: MIT
// Top-k teacher files (losses/topk_teacher_file.hpp) on one process: the format as written, any
// row range read back bit for bit, only the needed shards opened, and every refusal leaving the
// output untouched. The same files on 2 and 3 MPI ranks: distributed_cases.hpp.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/losses/topk_teacher_file.hpp"

#include "distributed/topk_teacher_data.hpp"

namespace {

using namespace distill;
namespace fs = std::filesystem;

std::vector<unsigned char> slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void spill(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

/// Output buffers for rows [b, e), filled with a sentinel that a refused read must leave alone.
struct rows_out {
  std::vector<std::int64_t> idx;
  std::vector<float> val;
  rows_out(index_t rows, index_t k) : idx(std::size_t(rows * k), 77), val(std::size_t(rows * k), 7.5f) {}
  bool untouched() const {
    return std::all_of(idx.begin(), idx.end(), [](std::int64_t v) { return v == 77; }) &&
           std::all_of(val.begin(), val.end(), [](float v) { return v == 7.5f; });
  }
};

}  // namespace

TEST_CASE("top-k teacher files: the split, the file as written, any row range read back bit for bit", "[topk_file]") {
  const index_t N = 10, C = 23, k = 4, S = 3;
  const auto t = topk_teacher_data::random_teacher(N, C, k, 2.0, 301);
  const fs::path dir = topk_teacher_data::temp_folder("topk_file", ::getpid());
  const std::string prefix = (dir / "teacher").string();
  const topk_teacher_file_info info{.total_rows = N, .shards = S, .classes = C, .k = k, .variant = topk_variant::rest_bucket, .temperature = 2.0f};

  // near-equal, the first N % S shards one row longer
  CHECK(row_split_begin(N, S, 0) == 0);
  CHECK(row_split_begin(N, S, 1) == 4);
  CHECK(row_split_begin(N, S, 2) == 7);
  CHECK(row_split_begin(N, S, 3) == 10);
  CHECK(row_split_begin(9, 3, 1) == 3);
  CHECK(topk_teacher_shard_path("a/t", 1, 3) == "a/t-00001-of-00003.safetensors");
  CHECK(topk_teacher_shard_path("t", 7, 123456) == "t-00007-of-123456.safetensors");

  REQUIRE(topk_teacher_write(prefix, info, make_view(t.indices.data(), N, k), make_view(t.values.data(), N, k)).to_string() == "ok");

  // each file: the two tensors and the metadata the header comment documents
  for (index_t i = 0; i < S; ++i) {
    const std::vector<unsigned char> bytes = slurp(topk_teacher_shard_path(prefix, i, S));
    safetensors_file f;
    REQUIRE(safetensors_parse("test", bytes, f).ok());
    const index_t first = row_split_begin(N, S, i), rows = row_split_begin(N, S, i + 1) - first;
    REQUIRE(f.tensors.size() == 2);
    const auto* idx = f.find("indices");
    const auto* val = f.find("values");
    REQUIRE(idx);
    REQUIRE(val);
    CHECK(idx->dtype == "I64");
    CHECK(val->dtype == "F32");
    CHECK(idx->shape == std::vector<index_t>{rows, k});
    CHECK(val->shape == std::vector<index_t>{rows, k});
    CHECK(std::memcmp(idx->bytes.data(), t.indices.data() + first * k, std::size_t(rows * k) * 8) == 0);
    CHECK(std::memcmp(val->bytes.data(), t.values.data() + first * k, std::size_t(rows * k) * 4) == 0);
    CHECK(f.metadata.at("topk_teacher.total_rows") == "10");
    CHECK(f.metadata.at("topk_teacher.first_row") == std::to_string(first));
    CHECK(f.metadata.at("topk_teacher.classes") == "23");
    CHECK(f.metadata.at("topk_teacher.k") == "4");
    CHECK(f.metadata.at("topk_teacher.variant") == "rest_bucket");
    CHECK(f.metadata.at("topk_teacher.temperature") == "2");
  }

  // every row range, back bit for bit
  for (index_t b = 0; b <= N; ++b)
    for (index_t e = b; e <= N; ++e) {
      rows_out o(e - b, k);
      const status st = topk_teacher_read(prefix, info, b, e, make_view(o.idx.data(), e - b, k), make_view(o.val.data(), e - b, k));
      INFO("rows [" << b << ", " << e << "): " << st.to_string());
      REQUIRE(st.ok());
      if (e == b) continue;  // nothing read (and memcmp must not see the empty vectors' null pointers)
      CHECK(std::memcmp(o.idx.data(), t.indices.data() + b * k, o.idx.size() * 8) == 0);
      CHECK(std::memcmp(o.val.data(), t.values.data() + b * k, o.val.size() * 4) == 0);
    }
  // into padded rows: the padding stays
  {
    const index_t ld = k + 2;
    std::vector<std::int64_t> idx(std::size_t(5 * ld), -9);
    std::vector<float> val(std::size_t(5 * ld), -9.f);
    const index_t ext[2] = {5, k}, str[2] = {ld, 1};
    REQUIRE(topk_teacher_read(prefix, info, 3, 8, host_view<std::int64_t, 2>(idx.data(), ext, str), host_view<float, 2>(val.data(), ext, str)).ok());
    for (index_t r = 0; r < 5; ++r)
      for (index_t j = 0; j < ld; ++j) {
        CHECK(idx[std::size_t(r * ld + j)] == (j < k ? t.indices[std::size_t((3 + r) * k + j)] : -9));
        CHECK(std::memcmp(&val[std::size_t(r * ld + j)], j < k ? &t.values[std::size_t((3 + r) * k + j)] : &val[std::size_t(r * ld + k)], 4) == 0);
      }
  }

  // only the shards holding the rows are opened: without shard 2, rows [0, 7) still read
  fs::rename(topk_teacher_shard_path(prefix, 2, S), prefix + ".away");
  {
    rows_out o(7, k);
    CHECK(topk_teacher_read(prefix, info, 0, 7, make_view(o.idx.data(), 7, k), make_view(o.val.data(), 7, k)).ok());
    rows_out p(2, k);
    const status st = topk_teacher_read(prefix, info, 6, 8, make_view(p.idx.data(), 2, k), make_view(p.val.data(), 2, k));
    CHECK(st.code() == errc::io_error);
    CHECK(st.message().find("teacher-00002-of-00003.safetensors") != std::string::npos);
    CHECK(p.untouched());  // shard 1 was sound, but nothing is written before every file is
  }
  fs::rename(prefix + ".away", topk_teacher_shard_path(prefix, 2, S));

  // one file (S = 1) holds the same rows
  topk_teacher_file_info whole = info;
  whole.shards = 1;
  REQUIRE(topk_teacher_write(prefix, whole, make_view(t.indices.data(), N, k), make_view(t.values.data(), N, k)).ok());
  rows_out o(N, k);
  REQUIRE(topk_teacher_read(prefix, whole, 0, N, make_view(o.idx.data(), N, k), make_view(o.val.data(), N, k)).ok());
  CHECK(o.idx == t.indices);
  CHECK(std::memcmp(o.val.data(), t.values.data(), o.val.size() * 4) == 0);
  fs::remove_all(dir);
}

TEST_CASE("top-k teacher files: a file written as the Python safetensors package writes it reads back", "[topk_file]") {
  const index_t N = 5, C = 11, k = 3;
  const auto t = topk_teacher_data::random_teacher(N, C, k, 1.0, 302);
  const fs::path dir = topk_teacher_data::temp_folder("topk_file_py", ::getpid());
  const std::string prefix = (dir / "teacher").string();
  // safetensors.numpy.save_file: a JSON header (no distill metadata, no checksum) padded with
  // spaces to 8 bytes, then the tensors
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"topk_teacher.total_rows", "5"}, {"topk_teacher.first_row", "0"}, {"topk_teacher.classes", "11"},
                       {"topk_teacher.k", "3"}, {"topk_teacher.variant", "renormalized"}, {"topk_teacher.temperature", "1.0"}};
  h["indices"] = {{"dtype", "I64"}, {"shape", {N, k}}, {"data_offsets", {0, N * k * 8}}};
  h["values"] = {{"dtype", "F32"}, {"shape", {N, k}}, {"data_offsets", {N * k * 8, N * k * 12}}};
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<unsigned char> bytes(8);
  put_le64(bytes.data(), text.size());
  bytes.insert(bytes.end(), text.begin(), text.end());
  const auto* ib = reinterpret_cast<const unsigned char*>(t.indices.data());
  const auto* vb = reinterpret_cast<const unsigned char*>(t.values.data());
  bytes.insert(bytes.end(), ib, ib + N * k * 8);
  bytes.insert(bytes.end(), vb, vb + N * k * 4);
  spill(topk_teacher_shard_path(prefix, 0, 1), bytes);

  const topk_teacher_file_info info{.total_rows = N, .shards = 1, .classes = C, .k = k, .variant = topk_variant::renormalized, .temperature = 1.0f};
  rows_out o(N, k);
  REQUIRE(topk_teacher_read(prefix, info, 0, N, make_view(o.idx.data(), N, k), make_view(o.val.data(), N, k)).to_string() == "ok");
  CHECK(o.idx == t.indices);
  CHECK(std::memcmp(o.val.data(), t.values.data(), o.val.size() * 4) == 0);
  fs::remove_all(dir);
}

TEST_CASE("top-k teacher files: damaged files and mismatched readers are refused, naming the file and the field", "[topk_file][errors]") {
  const index_t N = 10, C = 23, k = 4, S = 3;
  const auto t = topk_teacher_data::random_teacher(N, C, k, 1.0, 303);
  const fs::path dir = topk_teacher_data::temp_folder("topk_file_bad", ::getpid());
  const std::string prefix = (dir / "teacher").string();
  const topk_teacher_file_info info{.total_rows = N, .shards = S, .classes = C, .k = k, .variant = topk_variant::renormalized, .temperature = 1.0f};
  REQUIRE(topk_teacher_write(prefix, info, make_view(t.indices.data(), N, k), make_view(t.values.data(), N, k)).ok());
  const std::string shard1 = topk_teacher_shard_path(prefix, 1, S);
  const std::vector<unsigned char> good = slurp(shard1);

  // rows [2, 6) span shards 0 and 1; every refusal leaves the output as it was
  const auto refused = [&](const topk_teacher_file_info& expect, errc code, const std::string& names_file, const std::string& names_field) {
    rows_out o(4, expect.k);
    const status st = topk_teacher_read(prefix, expect, 2, 6, make_view(o.idx.data(), 4, expect.k), make_view(o.val.data(), 4, expect.k));
    INFO(st.to_string());
    CHECK(st.code() == code);
    CHECK(st.message().find(names_file) != std::string::npos);
    CHECK(st.message().find(names_field) != std::string::npos);
    CHECK(o.untouched());
  };
  const std::string name1 = "teacher-00001-of-00003.safetensors", name0 = "teacher-00000-of-00003.safetensors";

  // truncated
  spill(shard1, std::vector<unsigned char>(good.begin(), good.end() - 5));
  refused(info, errc::corrupt_data, name1, "");
  spill(shard1, std::vector<unsigned char>(good.begin(), good.begin() + 6));
  refused(info, errc::corrupt_data, name1, "truncated");
  // one flipped bit in the data, then in the header
  std::vector<unsigned char> bad = good;
  bad[bad.size() - 3] ^= 0x10;
  spill(shard1, bad);
  refused(info, errc::corrupt_data, name1, "checksum");
  bad = good;
  bad[20] ^= 0x01;
  spill(shard1, bad);
  refused(info, errc::corrupt_data, name1, "");
  spill(shard1, good);

  // a reader expecting another teacher: the field that differs is named (shard 0 is read first)
  topk_teacher_file_info other = info;
  other.classes = 24;
  refused(other, errc::invalid_argument, name0, "topk_teacher.classes");
  other = info;
  other.k = 5;
  refused(other, errc::invalid_argument, name0, "topk_teacher.k");
  other = info;
  other.variant = topk_variant::rest_bucket;
  refused(other, errc::invalid_argument, name0, "topk_teacher.variant");
  other = info;
  other.temperature = 2.0f;
  refused(other, errc::invalid_argument, name0, "topk_teacher.temperature");
  other = info;
  other.total_rows = 11;
  refused(other, errc::invalid_argument, name0, "topk_teacher.total_rows");
  other = info;
  other.shards = 2;  // files of another split are not there
  refused(other, errc::io_error, "teacher-00000-of-00002.safetensors", "cannot open");

  // a sound file that leaves a gap (first_row 5 where the split puts 4), or holds an index >= C
  const auto rewrite = [&](const std::string& key, const std::string& value, std::int64_t index_at_0) {
    safetensors_file f;
    REQUIRE(safetensors_parse("test", good, f).ok());
    std::map<std::string, std::string> meta = f.metadata;
    if (!key.empty()) meta[key] = value;
    std::vector<std::int64_t> idx(f.find("indices")->bytes.size() / 8);
    std::memcpy(idx.data(), f.find("indices")->bytes.data(), idx.size() * 8);
    if (index_at_0 >= 0) idx[0] = index_at_0;
    const safetensors_tensor ts[2] = {{"indices", "I64", f.find("indices")->shape,
                                       {reinterpret_cast<const unsigned char*>(idx.data()), idx.size() * 8}},
                                      *f.find("values")};
    std::vector<unsigned char> image;
    REQUIRE(safetensors_serialize(ts, meta, image).ok());
    spill(shard1, image);
  };
  rewrite("topk_teacher.first_row", "5", -1);
  refused(info, errc::corrupt_data, name1, "gap or an overlap");
  rewrite("topk_teacher.classes", "twenty", -1);
  refused(info, errc::corrupt_data, name1, "topk_teacher.classes");
  rewrite("", "", C);
  refused(info, errc::corrupt_data, name1, "row 4, slot 0");
  // the right bytes under the wrong dtype, or the indices flattened to rank 1
  {
    safetensors_file f;
    REQUIRE(safetensors_parse("test", good, f).ok());
    const safetensors_tensor& idx = *f.find("indices");
    const safetensors_tensor& val = *f.find("values");
    std::vector<unsigned char> image;
    const safetensors_tensor as_i32[2] = {idx, {"values", "I32", val.shape, val.bytes}};
    REQUIRE(safetensors_serialize(as_i32, f.metadata, image).ok());
    spill(shard1, image);
    refused(info, errc::corrupt_data, name1, "tensor 'values' is I32, expected F32");
    const safetensors_tensor flat[2] = {{"indices", "I64", {idx.shape[0] * idx.shape[1]}, idx.bytes}, val};
    REQUIRE(safetensors_serialize(flat, f.metadata, image).ok());
    spill(shard1, image);
    refused(info, errc::corrupt_data, name1, "tensor 'indices' has shape [12], expected [3, 4]");
  }
  rewrite("", "", -1);  // the same file, sound again
  {
    rows_out o(4, k);
    CHECK(topk_teacher_read(prefix, info, 2, 6, make_view(o.idx.data(), 4, k), make_view(o.val.data(), 4, k)).ok());
    CHECK(std::memcmp(o.idx.data(), t.indices.data() + 2 * k, o.idx.size() * 8) == 0);
  }

  // reader arguments
  rows_out o(4, k);
  CHECK(topk_teacher_read(prefix, info, 8, 12, make_view(o.idx.data(), 4, k), make_view(o.val.data(), 4, k)).code() == errc::invalid_argument);
  CHECK(topk_teacher_read(prefix, info, 2, 5, make_view(o.idx.data(), 4, k), make_view(o.val.data(), 4, k)).code() == errc::shape_mismatch);
  other = info;
  other.shards = 11;  // more shards than rows
  CHECK(topk_teacher_read(prefix, other, 2, 6, make_view(o.idx.data(), 4, k), make_view(o.val.data(), 4, k)).code() == errc::invalid_argument);
  CHECK(o.untouched());

  // the writer refuses an index >= C and writes nothing
  std::vector<std::int64_t> idx = t.indices;
  idx[std::size_t(9 * k + 1)] = C;
  const std::string fresh = (dir / "fresh").string();
  const status st = topk_teacher_write(fresh, info, make_view(idx.data(), N, k), make_view(t.values.data(), N, k));
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'indices'") != std::string::npos);
  for (index_t i = 0; i < S; ++i) CHECK(!fs::exists(topk_teacher_shard_path(fresh, i, S)));
  CHECK(topk_teacher_write(fresh, info, make_view(idx.data(), N - 1, k), make_view(t.values.data(), N - 1, k)).code() == errc::shape_mismatch);
  fs::remove_all(dir);
}
