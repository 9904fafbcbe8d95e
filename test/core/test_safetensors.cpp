// safetensors (core/safetensors.hpp): round trips of checkpoints and sample queues, the layout
// the format specifies, hand-written files from other writers, and corrupted or hostile files
// refused with corrupt_data. The Python side (an independent reader and writer) is
// test/core/safetensors_interop.py.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/core/safetensors.hpp"
#include "distill/nn/checkpoint.hpp"

using namespace distill;

namespace {

std::vector<unsigned char> file_of(const std::string& header, const std::vector<unsigned char>& data) {
  std::vector<unsigned char> f(8 + header.size() + data.size());
  put_le64(f.data(), header.size());
  std::memcpy(f.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(f.data() + 8 + header.size(), data.data(), data.size());
  return f;
}

errc parse_code(const std::vector<unsigned char>& f) {
  safetensors_file out;
  return safetensors_parse("test", f, out).code();
}

nn::checkpoint sample_checkpoint() {
  nn::checkpoint ck;
  const std::vector<float> w{1.5f, -2.0f, 3.25f, 0.0f, 1e-20f, -7.0f};
  const std::vector<double> b{0.1, -0.2};
  REQUIRE(ck.put("param/fc.weight", w.data(), {2, 3}).ok());
  REQUIRE(ck.put("param/fc.bias", b.data(), {2}).ok());
  REQUIRE(ck.put("param/empty", static_cast<const float*>(nullptr), {0, 4}).ok());
  ck.put_int("epoch", 7);
  ck.put_string("note", "héllo \"quoted\" \\ tab\t");
  return ck;
}

}  // namespace

TEST_CASE("safetensors: a checkpoint round trips, and the file has the specified layout", "[core][safetensors]") {
  const nn::checkpoint ck = sample_checkpoint();
  const std::vector<unsigned char> f = ck.serialize_safetensors();
  const std::uint64_t n = get_le64(f.data());
  REQUIRE(n % 8 == 0);  // data buffer 8-byte aligned
  REQUIRE(8 + n <= f.size());
  CHECK(f[8] == '{');
  const std::string header(reinterpret_cast<const char*>(f.data() + 8), n);
  CHECK(header.find("\"param/fc.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[") != std::string::npos);
  CHECK(header.find("\"distill.format_version\":\"1\"") != std::string::npos);
  // The data buffer holds every tensor's raw little-endian bytes.
  safetensors_file parsed;
  REQUIRE(safetensors_parse("test", f, parsed).ok());
  const auto* w = parsed.find("param/fc.weight");
  REQUIRE(w);
  CHECK(w->bytes.data() >= f.data() + 8 + n);
  float w1;
  std::memcpy(&w1, w->bytes.data() + 4, 4);
  CHECK(w1 == -2.0f);

  nn::checkpoint back;
  REQUIRE(nn::checkpoint::parse(f.data(), f.size(), back).ok());
  REQUIRE(back.entries().size() == ck.entries().size());
  for (const auto& [name, e] : ck.entries()) {
    const auto* g = back.find(name);
    REQUIRE(g);
    CHECK(g->dtype == e.dtype);
    CHECK(g->shape == e.shape);
    CHECK(g->bytes == e.bytes);
  }
  std::string note;
  REQUIRE(back.get_string("note", note).ok());
  CHECK(note == "héllo \"quoted\" \\ tab\t");

  // Through a file: save atomically in either format, load recognises both.
  const auto dir = std::filesystem::temp_directory_path() / "distill_safetensors_test";
  std::filesystem::create_directories(dir);
  for (const file_format fmt : {file_format::native, file_format::safetensors}) {
    const std::string path = (dir / "model.bin").string();
    REQUIRE(ck.save(path, {.format = fmt}).ok());
    nn::checkpoint loaded;
    REQUIRE(nn::checkpoint::load(path, loaded).ok());
    CHECK(loaded.entries().size() == ck.entries().size());
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: every changed byte of a distill file is caught", "[core][safetensors][errors]") {
  const std::vector<unsigned char> f = sample_checkpoint().serialize_safetensors();
  for (std::size_t i = 0; i < f.size(); ++i) {
    auto bad = f;
    bad[i] ^= 0x01;
    nn::checkpoint out;
    const status st = nn::checkpoint::parse(bad.data(), bad.size(), out);
    INFO("byte " << i);
    REQUIRE(st.code() == errc::corrupt_data);
  }
  for (std::size_t len : {std::size_t(0), std::size_t(7), std::size_t(8), f.size() / 2, f.size() - 1}) {
    safetensors_file out;
    INFO("truncated to " << len);
    CHECK(safetensors_parse("test", std::span(f.data(), len), out).code() == errc::corrupt_data);
  }
}

TEST_CASE("safetensors: files of other writers are read; malformed ones refused", "[core][safetensors][errors]") {
  const std::vector<unsigned char> data{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0};
  // As Python's json.dumps writes it: spaces, \u escapes, metadata first, padding, no checksum.
  const std::string good =
      R"({"__metadata__": {"format": "pt"}, "b\u00e9": {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]}, )"
      R"("a": {"dtype": "U8", "shape": [2, 4], "data_offsets": [0, 8]}}   )";
  const auto good_file = file_of(good, data);  // the parsed tensors view these bytes
  safetensors_file out;
  REQUIRE(safetensors_parse("test", good_file, out).ok());
  REQUIRE(out.tensors.size() == 2);
  REQUIRE(out.find("bé"));
  CHECK(out.find("bé")->bytes[0] == 3);
  CHECK(out.metadata.at("format") == "pt");

  const auto bad = [&](const std::string& header, const std::vector<unsigned char>& d) {
    INFO(header);
    CHECK(parse_code(file_of(header, d)) == errc::corrupt_data);
  };
  const std::vector<unsigned char> eight(8, 0);
  bad(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", eight);          // hole at the end
  bad(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", eight);          // hole at the start
  bad(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
      eight);                                                                             // overlap
  bad(R"({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}})", eight);          // unknown dtype
  bad(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", eight);          // shape disagrees
  bad(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", eight);          // reversed
  bad(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}})",
      eight);                                                                             // repeated name
  bad(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", eight);  // size beyond 64 bits
  bad(R"({"a": {"dtype": "F32", "shape": [99999999999999999999], "data_offsets": [0, 8]}})", eight);   // integer overflow
  bad(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}})", eight);          // unknown field
  bad(R"({"a": {"dtype": "F32", "shape": [2]}})", eight);                                              // no offsets
  bad(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", eight);                     // negative extent
  bad(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}} x)", eight);                    // trailing text
  bad(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})", eight);                       // unterminated
  bad(R"({"a\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", eight);                // lone surrogate
  bad(R"({"__metadata__": {"distill.format_version": "2"}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
      eight);                                                                                          // future version
  bad(R"({"__metadata__": {"distill.checksum": "fnv1a64:xyz"}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
      eight);                                                                                          // malformed checksum
  bad(R"({"a": {"dtype": "F32", "dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", eight);      // repeated field
  bad(R"({"__metadata__": {"k": "1", "k": "2"}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
      eight);                                                                                          // repeated metadata key
  bad(R"({"a": {"dtype": "F32", "shape": [[2]], "data_offsets": [0, 8]}})", eight);                    // nested too deep
  bad(R"({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", eight);                    // not an integer
  bad("{\"a\": " + std::string(100000, '[') + std::string(100000, ']') + "}", eight);                 // hostile nesting
  bad(R"({}}}[[{"a": 1}]])", eight);                                                                   // closes what never opened
  // Arrays hold a shape's extents or two offsets: 16 items parse; 17 are refused by the scan that
  // runs before nlohmann-json builds anything (a long array cannot cost memory).
  const auto header_with_rank = [](int rank) {
    std::string sh = "[";
    for (int k = 1; k < rank; ++k) sh += "1, ";
    return R"({"a": {"dtype": "F32", "shape": )" + sh + R"(2], "data_offsets": [0, 8]}})";
  };
  safetensors_file wide;
  CHECK(safetensors_parse("test", file_of(header_with_rank(16), eight), wide).ok());
  const status too_wide = safetensors_parse("test", file_of(header_with_rank(17), eight), wide);
  CHECK(too_wide.code() == errc::corrupt_data);
  CHECK(too_wide.message().find("more than 16 items") != std::string::npos);
  // A header length beyond the file or beyond 100 MB.
  auto f = file_of("{}", {});
  put_le64(f.data(), 1ull << 62);
  CHECK(parse_code(f) == errc::corrupt_data);
  // Checkpoints hold F32, F64, I64 and U8 only.
  const auto i32 = file_of(good, data);
  nn::checkpoint ck;
  CHECK(nn::checkpoint::parse(i32.data(), i32.size(), ck).code() == errc::corrupt_data);
}

TEST_CASE("safetensors: the writer refuses names it cannot write", "[core][safetensors][errors]") {
  const std::vector<unsigned char> four{0, 0, 128, 63};
  std::vector<unsigned char> image;
  const auto code = [&](const std::string& name, const std::map<std::string, std::string>& meta = {}) {
    const safetensors_tensor t{name, "F32", {1}, four};
    return safetensors_serialize(std::span(&t, 1), meta, image).code();
  };
  CHECK(code("w\xff") == errc::invalid_argument);  // not UTF-8
  CHECK(code("w", {{"k", "\xc3"}}) == errc::invalid_argument);
  CHECK(code("__metadata__") == errc::invalid_argument);
  // Control characters and quotes are escaped, and a user's "distill.checksum" cannot displace
  // distill's own.
  REQUIRE(code("a\"\n\x01", {{"distill.checksum", "fnv1a64:0000000000000000"}}) == errc::ok);
  safetensors_file back;
  REQUIRE(safetensors_parse("test", image, back).ok());
  REQUIRE(back.tensors.size() == 1);
  CHECK(back.tensors[0].name == "a\"\n\x01");
}

TEST_CASE("safetensors: a sample queue round trips with its keys, ids and state", "[core][safetensors][contrastive]") {
  const cpu ctx{};
  host_sample_queue<float> q(5, 3, true);
  std::vector<float> keys{1, 0, 0, 0, 2, 0, 0, 0, 3, 1, 1, 1, 4, 0, 3, 0, 1, 0, 2, 2, 1};
  const std::vector<std::int64_t> ids{10, 11, 12, 13, 14, 15, 16};
  REQUIRE(sample_queue_enqueue(ctx, q.queue(), make_view(keys.data(), 7, 3), make_view(ids.data(), 7)).ok());
  std::vector<unsigned char> image;
  REQUIRE(sample_queue_serialize(ctx, q.queue(), image, file_format::safetensors).ok());
  REQUIRE(is_safetensors(image));
  safetensors_file parsed;
  REQUIRE(safetensors_parse("test", image, parsed).ok());
  CHECK(parsed.metadata.at("write_position") == "2");
  CHECK(parsed.metadata.at("fill_count") == "5");
  REQUIRE(parsed.find("ids"));
  CHECK(parsed.find("ids")->shape == std::vector<index_t>{5});

  host_sample_queue<float> back(5, 3, true);
  REQUIRE(sample_queue_deserialize(ctx, back.queue(), image).ok());
  CHECK(back.queue().write_position() == 2);
  CHECK(back.queue().size() == 5);
  for (index_t j = 0; j < 5; ++j) {
    CHECK(back.queue().ids()(j) == q.queue().ids()(j));
    for (index_t d = 0; d < 3; ++d) CHECK(back.queue().keys()(j, d) == q.queue().keys()(j, d));
  }
  // A queue of another shape or without ids refuses the file and stays unchanged.
  host_sample_queue<float> other(4, 3, true), no_ids(5, 3, false);
  CHECK(sample_queue_deserialize(ctx, other.queue(), image).code() == errc::corrupt_data);
  CHECK(sample_queue_deserialize(ctx, no_ids.queue(), image).code() == errc::corrupt_data);
  CHECK(other.queue().size() == 0);
  // Through a file, and a flipped byte is caught.
  const auto dir = std::filesystem::temp_directory_path() / "distill_safetensors_queue_test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "queue.safetensors").string();
  REQUIRE(sample_queue_save(ctx, q.queue(), path, {.format = file_format::safetensors}).ok());
  host_sample_queue<float> loaded(5, 3, true);
  REQUIRE(sample_queue_load(ctx, loaded.queue(), path).ok());
  CHECK(loaded.queue().write_position() == 2);
  image[image.size() - 3] ^= 0x10;
  CHECK(sample_queue_deserialize(ctx, back.queue(), image).code() == errc::corrupt_data);
  std::filesystem::remove_all(dir);
}
