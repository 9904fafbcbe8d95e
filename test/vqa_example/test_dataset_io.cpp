// Sort-of-CLEVR dataset files (examples/vqa_spatial_kd/src/dataset_io.hpp): the documented byte
// layout (decoded here independently), round trips, regeneration on changed parameters and
// versions, and corrupt or truncated files detected and regenerated, never used.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "../../examples/vqa_spatial_kd/src/dataset_io.hpp"
#include "support/random.hpp"

namespace fs = std::filesystem;

namespace {

// A fresh folder per test case, removed at the end.
struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name) {
    path = fs::temp_directory_path() / ("distill_vqa_io_" + name + "_" + std::to_string(distill_test::test_seed()) + "_" +
                                        std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// Independent little-endian readers and FNV-1a 64 (offset basis 14695981039346656037, prime 1099511628211).
std::uint64_t le(const std::vector<std::uint8_t>& b, std::size_t off, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | b[off + i];
  return v;
}
void put_le(std::vector<std::uint8_t>& b, std::size_t off, int bytes, std::uint64_t v) {
  for (int i = 0; i < bytes; ++i) b[off + i] = std::uint8_t(v >> (8 * i));
}
std::uint64_t fnv(const std::vector<std::uint8_t>& b, std::size_t from, std::size_t to) {
  std::uint64_t h = 14695981039346656037ull;
  for (std::size_t i = from; i < to; ++i) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}
// After editing header fields, make the header checksum right again (to reach later checks).
void reseal_header(std::vector<std::uint8_t>& b) { put_le(b, 64, 8, fnv(b, 0, 64)); }
void reseal_payload(std::vector<std::uint8_t>& b) {
  put_le(b, 56, 8, fnv(b, 72, b.size()));
  reseal_header(b);
}

vqa::generator_params params(std::uint32_t images, bool pixels = true) {
  vqa::generator_params p;
  p.seed = distill_test::test_seed();
  p.images = images;
  p.with_pixels = pixels;
  return p;
}

bool has_temp_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp") != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("dataset_io: the file layout is the documented one", "[vqa_example]") {
  temp_dir dir("layout");
  const auto p = params(12);
  const auto d = vqa::generate_dataset(p);
  const fs::path f = dir.path / "train.bin";
  vqa::write_dataset(f, d);
  const auto b = read_bytes(f);
  const std::size_t scenes = 12 * 6 * 4, questions = 12 * 20 * 8, pixels = 12 * 75 * 75 * 3;
  REQUIRE(b.size() == 72 + scenes + questions + pixels);
  CHECK(std::string(b.begin(), b.begin() + 8) == std::string("SOCLEVR\0", 8));
  CHECK(le(b, 8, 4) == 1);                           // format version
  CHECK(le(b, 12, 4) == vqa::generator_version);
  CHECK(le(b, 16, 8) == p.seed);
  CHECK(le(b, 24, 4) == 0);                          // train
  CHECK(le(b, 28, 4) == 12);
  CHECK(le(b, 32, 4) == 10);
  CHECK(le(b, 36, 4) == 10);
  CHECK(le(b, 40, 4) == 1);                          // pixels stored
  CHECK(le(b, 44, 1) == 75);
  CHECK(le(b, 45, 1) == 6);
  CHECK(le(b, 46, 1) == 5);
  CHECK(le(b, 47, 1) == 10);
  CHECK(le(b, 48, 8) == scenes + questions + pixels);
  CHECK(le(b, 56, 8) == fnv(b, 72, b.size()));
  CHECK(le(b, 64, 8) == fnv(b, 0, 64));
  // Records decode to the dataset.
  for (std::size_t k = 0; k < 12; ++k)
    for (int i = 0; i < 6; ++i) {
      const std::size_t o = 72 + (k * 6 + i) * 4;
      const auto& obj = d.scenes[k].objects[i];
      CHECK(b[o] == obj.x);
      CHECK(b[o + 1] == obj.y);
      CHECK(b[o + 2] == i);
      CHECK(b[o + 3] == int(obj.form));
    }
  for (std::size_t i = 0; i < d.questions.size(); ++i) {
    const std::size_t o = 72 + scenes + i * 8;
    CHECK(le(b, o, 4) == d.questions[i].image);
    CHECK(b[o + 4] == d.questions[i].colour);
    CHECK(b[o + 5] == int(d.questions[i].type));
    CHECK(b[o + 6] == d.questions[i].answer);
    CHECK(b[o + 7] == 0);
  }
  CHECK(std::equal(d.pixels.begin(), d.pixels.end(), b.begin() + std::ptrdiff_t(72 + scenes + questions)));

  // Without pixels: flag 0, no pixel section.
  auto np = params(12, false);
  vqa::write_dataset(f, vqa::generate_dataset(np));
  const auto b2 = read_bytes(f);
  CHECK(b2.size() == 72 + scenes + questions);
  CHECK(le(b2, 40, 4) == 0);
  CHECK_FALSE(has_temp_files(dir.path));
}

TEST_CASE("dataset_io: round trip and load_or_generate reuse", "[vqa_example]") {
  temp_dir dir("roundtrip");
  const fs::path f = dir.path / "sub" / "train.bin";  // the folder is created
  const auto p = params(20);
  std::ostringstream log;
  vqa::load_outcome how{};
  const auto first = vqa::load_or_generate(f, p, &how, log);
  CHECK(how == vqa::load_outcome::generated_missing);
  CHECK(fs::exists(f));
  CHECK(first == vqa::generate_dataset(p));
  CHECK(log.str().find("missing") != std::string::npos);

  const auto stamp = fs::last_write_time(f);
  const auto second = vqa::load_or_generate(f, p, &how, log);
  CHECK(how == vqa::load_outcome::loaded);
  CHECK(second == first);
  CHECK(fs::last_write_time(f) == stamp);  // not rewritten

  const auto r = vqa::read_dataset(f);
  CHECK(r.status == vqa::dataset_file_status::ok);
  CHECK(r.data == first);
  CHECK_FALSE(has_temp_files(f.parent_path()));
}

TEST_CASE("dataset_io: changed parameters or versions regenerate the file", "[vqa_example]") {
  temp_dir dir("changed");
  const fs::path f = dir.path / "d.bin";
  const auto p = params(10);
  std::ostringstream quiet;
  vqa::load_or_generate(f, p, nullptr, quiet);

  std::vector<vqa::generator_params> others;
  for (int k = 0; k < 5; ++k) others.push_back(p);
  others[0].seed += 1;
  others[1].images = 11;
  others[2].split = vqa::dataset_split::test;
  others[3].with_pixels = false;
  others[4].relational_per_image = 9;
  for (const auto& q : others) {
    vqa::write_dataset(f, vqa::generate_dataset(p));
    std::ostringstream log;
    vqa::load_outcome how{};
    const auto d = vqa::load_or_generate(f, q, &how, log);
    CHECK(how == vqa::load_outcome::regenerated_changed);
    CHECK(log.str().find("parameters changed") != std::string::npos);
    CHECK(d == vqa::generate_dataset(q));
    CHECK(vqa::read_dataset(f, &q).status == vqa::dataset_file_status::ok);  // the new file is kept
  }

  // Another format or generator version (header checksum made right again): changed.
  for (std::size_t field : {std::size_t{8}, std::size_t{12}}) {
    vqa::write_dataset(f, vqa::generate_dataset(p));
    auto b = read_bytes(f);
    put_le(b, field, 4, le(b, field, 4) + 1);
    reseal_header(b);
    write_bytes(f, b);
    std::ostringstream log;
    vqa::load_outcome how{};
    const auto d = vqa::load_or_generate(f, p, &how, log);
    CHECK(how == vqa::load_outcome::regenerated_changed);
    CHECK(log.str().find("version") != std::string::npos);
    CHECK(d == vqa::generate_dataset(p));
  }
}

TEST_CASE("dataset_io: corrupt bytes, truncation and trailing bytes are detected and regenerated", "[vqa_example]") {
  temp_dir dir("corrupt");
  const fs::path f = dir.path / "d.bin";
  const auto p = params(16);
  const auto good = vqa::generate_dataset(p);
  vqa::write_dataset(f, good);
  const auto pristine = read_bytes(f);
  const std::size_t scenes = 16 * 6 * 4, questions = 16 * 20 * 8;

  auto expect_regenerated = [&](const std::vector<std::uint8_t>& bytes, const std::string& why) {
    write_bytes(f, bytes);
    CHECK(vqa::read_dataset(f, &p).status == vqa::dataset_file_status::corrupt);
    std::ostringstream log;
    vqa::load_outcome how{};
    const auto d = vqa::load_or_generate(f, p, &how, log);
    INFO(log.str());
    CHECK(how == vqa::load_outcome::regenerated_corrupt);
    CHECK(log.str().find(why) != std::string::npos);
    CHECK(log.str().find("not used") != std::string::npos);
    CHECK(d == good);
    CHECK(read_bytes(f) == pristine);  // rewritten intact
  };

  distill_test::rng g(11);
  // One flipped bit in each payload section (scenes, questions, pixels) and in the checksum itself.
  for (std::size_t off : {std::size_t(72 + g.integer(0, scenes - 1)), std::size_t(72 + scenes + g.integer(0, questions - 1)),
                          std::size_t(72 + scenes + questions + g.integer(0, 16 * 75 * 75 * 3 - 1)), std::size_t(60)}) {
    auto b = pristine;
    b[off] ^= std::uint8_t(1u << g.integer(0, 7));
    expect_regenerated(b, off == 60 ? "header checksum" : "payload checksum");
  }
  // A header field flipped: caught by the header checksum (not mistaken for new parameters).
  {
    auto b = pristine;
    b[16] ^= 0x04;  // seed
    expect_regenerated(b, "header checksum");
  }
  {
    auto b = pristine;
    b[0] = 'X';
    expect_regenerated(b, "bad magic");
  }
  // Truncated inside the payload, inside the header, empty; and trailing bytes.
  {
    auto b = pristine;
    b.resize(b.size() - 1);
    expect_regenerated(b, "truncated");
  }
  {
    auto b = pristine;
    b.resize(40);
    expect_regenerated(b, "truncated");
  }
  expect_regenerated({}, "truncated");
  {
    auto b = pristine;
    b.push_back(0);
    expect_regenerated(b, "trailing bytes");
  }
  // A payload size that contradicts the parameters (header resealed).
  {
    auto b = pristine;
    put_le(b, 48, 8, le(b, 48, 8) + 8);
    reseal_header(b);
    expect_regenerated(b, "payload size");
  }
  // Records that pass both checksums but are wrong: an answer that contradicts the scene, an
  // object outside the image, a question about a colour that does not exist.
  {
    auto b = pristine;
    const std::size_t q0 = 72 + scenes + 8 * 3;  // question 3 of image 0
    b[q0 + 6] = std::uint8_t((b[q0 + 6] + 1) % 10);  // any other answer
    reseal_payload(b);
    expect_regenerated(b, "invalid question record");
  }
  {
    auto b = pristine;
    b[72] = 74;  // x of image 0's red object outside [5, 70)
    reseal_payload(b);
    expect_regenerated(b, "invalid object record");
  }
  {
    auto b = pristine;
    b[72 + scenes + 4] = 6;  // colour 6
    reseal_payload(b);
    expect_regenerated(b, "invalid question record");
  }
  CHECK_FALSE(has_temp_files(dir.path));
}

TEST_CASE("dataset_io: a FIFO or a device in place of the file is refused without blocking, then replaced", "[vqa_example]") {
  temp_dir dir("special");
  const auto p = params(4);
  const fs::path fifo = dir.path / "fifo.bin";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);  // no writer: a blocking read would wait forever
  const auto r = vqa::read_dataset(fifo, &p);
  CHECK(r.status == vqa::dataset_file_status::corrupt);
  CHECK(r.message.find("not a regular file") != std::string::npos);
  const fs::path zero = dir.path / "zero.bin";
  fs::create_symlink("/dev/zero", zero);  // would be read until memory runs out
  CHECK(vqa::read_dataset(zero, &p).status == vqa::dataset_file_status::corrupt);
  // load_or_generate replaces the special file with a real dataset (the rename replaces the link)
  std::ostringstream log;
  vqa::load_outcome how{};
  CHECK(vqa::load_or_generate(zero, p, &how, log) == vqa::generate_dataset(p));
  CHECK(how == vqa::load_outcome::regenerated_corrupt);
  CHECK(fs::is_regular_file(fs::symlink_status(zero)));
}

TEST_CASE("dataset_io: question counts whose sum would wrap are refused before any size is computed", "[vqa_example]") {
  // 2^31 + 2^31 questions per image wrap to 0 in 32 bits, which would make an empty question
  // section look consistent. Header resealed, so only the count check stands between.
  temp_dir dir("wrap");
  const fs::path f = dir.path / "d.bin";
  auto p = params(3);
  p.with_pixels = false;
  vqa::write_dataset(f, vqa::generate_dataset(p));
  auto b = read_bytes(f);
  put_le(b, 32, 4, 0x80000000u);
  put_le(b, 36, 4, 0x80000000u);
  reseal_header(b);
  const auto r = vqa::parse_dataset(b);
  CHECK(r.status == vqa::dataset_file_status::corrupt);
  CHECK(r.message.find("question counts") != std::string::npos);
}
