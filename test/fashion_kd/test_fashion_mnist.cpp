// The Fashion-MNIST data module (examples/common/fashion_mnist.hpp): IDX files written here with
// zlib and read back, every check of the reader (missing files with the install hint, magic,
// shapes, counts, labels, truncation, trailing bytes, corrupt gzip), the split, subsets,
// normalisation and augmentation against hand-computed values, and the Debian files when present.
#include <catch2/catch.hpp>

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "../../examples/common/fashion_mnist.hpp"
#include "support/random.hpp"

namespace fs = std::filesystem;
using examples::labelled_images;

namespace {

struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name) {
    path = fs::temp_directory_path() / ("distill_fashion_" + name + "_" + std::to_string(distill_test::test_seed()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void put_be32(std::vector<std::uint8_t>& v, std::uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<std::uint8_t>(x >> s));
}

void write_gz(const fs::path& p, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(p.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<std::uint8_t> idx_images(std::uint32_t n, std::uint32_t rows, std::uint32_t cols, const std::vector<std::uint8_t>& pixels,
                                     std::uint32_t magic = 2051) {
  std::vector<std::uint8_t> v;
  put_be32(v, magic), put_be32(v, n), put_be32(v, rows), put_be32(v, cols);
  v.insert(v.end(), pixels.begin(), pixels.end());
  return v;
}
std::vector<std::uint8_t> idx_labels(const std::vector<std::uint8_t>& labels, std::uint32_t magic = 2049) {
  std::vector<std::uint8_t> v;
  put_be32(v, magic), put_be32(v, static_cast<std::uint32_t>(labels.size()));
  v.insert(v.end(), labels.begin(), labels.end());
  return v;
}

/// n random images (pixel values) and labels cycling 0..9.
struct small_set {
  std::vector<std::uint8_t> pixels, labels;
  small_set(std::uint32_t n, distill_test::rng& r) {
    for (std::uint32_t i = 0; i < n * 784; ++i) pixels.push_back(static_cast<std::uint8_t>(r.integer(0, 255)));
    for (std::uint32_t i = 0; i < n; ++i) labels.push_back(static_cast<std::uint8_t>(i % 10));
  }
};

bool mentions(const distill::status& st, const std::string& text) {
  INFO(st.to_string());
  return !st.ok() && st.message().find(text) != std::string::npos;
}

}  // namespace

TEST_CASE("fashion_mnist: gzipped IDX files round trip through zlib", "[fashion_kd][data]") {
  distill_test::rng r(1);
  temp_dir dir("roundtrip");
  const small_set s(23, r);
  write_gz(dir.path / "i.gz", idx_images(23, 28, 28, s.pixels));
  write_gz(dir.path / "l.gz", idx_labels(s.labels));
  labelled_images got;
  REQUIRE(examples::read_idx_pair(dir.path / "i.gz", dir.path / "l.gz", got, 23).ok());
  CHECK(got.size() == 23);
  CHECK(got.pixels == s.pixels);
  CHECK(got.labels == s.labels);
  CHECK(std::equal(got.image(5).begin(), got.image(5).end(), s.pixels.begin() + 5 * 784));

  // a folder with the four Debian names
  write_gz(dir.path / "train-images-idx3-ubyte.gz", idx_images(23, 28, 28, s.pixels));
  write_gz(dir.path / "train-labels-idx1-ubyte.gz", idx_labels(s.labels));
  write_gz(dir.path / "t10k-images-idx3-ubyte.gz", idx_images(10, 28, 28, std::vector<std::uint8_t>(s.pixels.begin(), s.pixels.begin() + 7840)));
  write_gz(dir.path / "t10k-labels-idx1-ubyte.gz", idx_labels(std::vector<std::uint8_t>(s.labels.begin(), s.labels.begin() + 10)));
  examples::fashion_mnist fm;
  CHECK(mentions(examples::load_fashion_mnist(dir.path, fm), "expected 60000"));  // the Debian counts by default
  REQUIRE(examples::load_fashion_mnist(dir.path, fm, {23, 10}).ok());
  CHECK(fm.train.size() == 23);
  CHECK(fm.test.size() == 10);
  REQUIRE(examples::load_fashion_mnist(dir.path, fm, {0, 0}).ok());
}

TEST_CASE("fashion_mnist: every bad file is refused with a reason", "[fashion_kd][data]") {
  distill_test::rng r(2);
  temp_dir dir("errors");
  const small_set s(12, r);
  const auto good_images = idx_images(12, 28, 28, s.pixels);
  write_gz(dir.path / "l.gz", idx_labels(s.labels));
  labelled_images got;
  auto read = [&](const std::vector<std::uint8_t>& images) {
    write_gz(dir.path / "i.gz", images);
    return examples::read_idx_pair(dir.path / "i.gz", dir.path / "l.gz", got);
  };
  // missing files: the message says what to install
  const auto missing = examples::read_idx_pair(dir.path / "none.gz", dir.path / "l.gz", got);
  CHECK(missing.code() == distill::errc::io_error);
  CHECK(mentions(missing, "apt-get install dataset-fashion-mnist"));
  examples::fashion_mnist fm;
  CHECK(mentions(examples::load_fashion_mnist(dir.path / "nowhere", fm), "dataset-fashion-mnist"));
  // magic, shape, counts, labels
  CHECK(mentions(read(idx_images(12, 28, 28, s.pixels, 2049)), "magic number 2049, expected 2051"));
  CHECK(mentions(read(idx_images(12, 28, 28, s.pixels, 2049 + 0x100)), "magic number"));
  std::vector<std::uint8_t> small(12 * 27 * 28);
  CHECK(mentions(read(idx_images(12, 27, 28, small)), "27 x 28 images, expected 28 x 28"));
  CHECK(mentions(read(idx_images(11, 28, 28, std::vector<std::uint8_t>(s.pixels.begin(), s.pixels.begin() + 11 * 784))), "11 images but"));
  CHECK(examples::read_idx_pair(dir.path / "i.gz", dir.path / "l.gz", got, 0).code() == distill::errc::shape_mismatch);
  REQUIRE(read(good_images).ok());
  CHECK(mentions(examples::read_idx_pair(dir.path / "i.gz", dir.path / "l.gz", got, 13), "expected 13"));
  auto bad_labels = s.labels;
  bad_labels[4] = 10;
  write_gz(dir.path / "bad_l.gz", idx_labels(bad_labels));
  CHECK(mentions(examples::read_idx_pair(dir.path / "i.gz", dir.path / "bad_l.gz", got), "label 10 of image 4"));
  // truncated payload, trailing bytes, a header cut short
  auto cut = good_images;
  cut.pop_back();
  CHECK(mentions(read(cut), "(truncated)"));
  auto longer = good_images;
  longer.push_back(7);
  CHECK(mentions(read(longer), "(trailing bytes)"));
  CHECK(mentions(read(std::vector<std::uint8_t>(good_images.begin(), good_images.begin() + 10)), "shorter than an IDX header"));
  // a corrupt gzip stream (a byte of the compressed data changed; zlib's CRC or inflate fails)
  write_gz(dir.path / "i.gz", good_images);
  std::vector<char> raw;
  {
    std::ifstream in(dir.path / "i.gz", std::ios::binary);
    raw.assign(std::istreambuf_iterator<char>(in), {});
  }
  raw[raw.size() / 2] = static_cast<char>(raw[raw.size() / 2] ^ 0x5A);
  {
    std::ofstream o(dir.path / "i.gz", std::ios::binary | std::ios::trunc);
    o.write(raw.data(), static_cast<std::streamsize>(raw.size()));
  }
  const auto corrupt = examples::read_idx_pair(dir.path / "i.gz", dir.path / "l.gz", got);
  CHECK(corrupt.code() == distill::errc::corrupt_data);
  // nothing was written into `got` by the failed reads after the last good one
  CHECK(got.size() == 12);
}

TEST_CASE("fashion_mnist: the stratified split, subsets and pixel statistics", "[fashion_kd][data]") {
  distill_test::rng r(3);
  const small_set s(200, r);  // 20 per class
  labelled_images d{s.pixels, s.labels};
  const auto split = examples::split_train_validation(d, 3, 7);
  CHECK(split.validation.size() == 30);
  CHECK(split.train.size() == 170);
  std::vector<int> per_class(10);
  for (auto i : split.validation) ++per_class[d.labels[i]];
  for (int c : per_class) CHECK(c == 3);
  std::set<std::uint32_t> all(split.train.begin(), split.train.end());
  for (auto i : split.validation) CHECK(all.insert(i).second);  // disjoint
  CHECK(all.size() == 200);
  CHECK(std::is_sorted(split.train.begin(), split.train.end()));
  CHECK(examples::split_train_validation(d, 3, 7).validation == split.validation);  // deterministic
  CHECK(examples::split_train_validation(d, 3, 8).validation != split.validation);  // seeded
  CHECK_THROWS_AS(examples::split_train_validation(d, 21, 7), std::invalid_argument);

  const auto sub = examples::take_per_class(d, split.train, 4);
  CHECK(sub.size() == 40);
  std::fill(per_class.begin(), per_class.end(), 0);
  for (auto i : sub) ++per_class[d.labels[i]];
  for (int c : per_class) CHECK(c == 4);
  CHECK(examples::all_ids(3) == std::vector<std::uint32_t>{0, 1, 2});

  // pixel statistics against a direct double computation
  const std::vector<std::uint32_t> ids{1, 5, 9};
  double sum = 0, sq = 0;
  for (auto i : ids)
    for (auto p : d.image(i)) sum += p / 255.0, sq += (p / 255.0) * (p / 255.0);
  const double n = 3 * 784.0, mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
  const auto norm = examples::pixel_statistics(d, ids);
  CHECK(norm.mean == Approx(mean).epsilon(1e-6));
  CHECK(norm.stddev == Approx(sd).epsilon(1e-5));
  CHECK(norm.apply(255) == Approx((1.0 - mean) / sd).epsilon(1e-5));
}

TEST_CASE("fashion_mnist: augmentation draws and the shifted, flipped images", "[fashion_kd][data]") {
  distill_test::rng r(4);
  const small_set s(4, r);
  labelled_images d{s.pixels, s.labels};
  const examples::pixel_normalization norm{0.25f, 0.5f};
  auto px = [&](int id, int y, int x) { return norm.apply(d.image(static_cast<std::size_t>(id))[static_cast<std::size_t>(y * 28 + x)]); };
  std::vector<float> out(784);
  // no augmentation: the normalised image
  examples::write_image(d.image(2), norm, {}, out.data());
  for (int i = 0; i < 784; ++i) CHECK(out[static_cast<std::size_t>(i)] == norm.apply(d.image(2)[static_cast<std::size_t>(i)]));
  // a shift: out(y, x) = in(y + dy, x + dx), zeros (normalised) from outside
  examples::write_image(d.image(1), norm, {2, -1, false}, out.data());
  CHECK(out[static_cast<std::size_t>(5 * 28 + 3)] == px(1, 4, 5));
  CHECK(out[0] == norm.apply(0));                                    // y + dy = -1: outside
  CHECK(out[static_cast<std::size_t>(3 * 28 + 27)] == norm.apply(0));  // x + dx = 29: outside
  // a flip, then the shift
  examples::write_image(d.image(3), norm, {1, 0, true}, out.data());
  CHECK(out[static_cast<std::size_t>(7 * 28 + 4)] == px(3, 7, 27 - 4 + 1));
  CHECK(out[static_cast<std::size_t>(7 * 28 + 0)] == norm.apply(0));  // column 28: outside

  // draws: deterministic in (seed, epoch, id), within [-pad, pad], both flips occur
  const examples::augmentation a{2, true};
  int flips = 0;
  std::set<int> dxs;
  for (std::uint32_t id = 0; id < 400; ++id) {
    const auto g = examples::draw_augmentation(a, 5, 3, id);
    const auto again = examples::draw_augmentation(a, 5, 3, id);
    CHECK((g.dx == again.dx && g.dy == again.dy && g.flip == again.flip));
    CHECK(std::abs(g.dx) <= 2);
    CHECK(std::abs(g.dy) <= 2);
    flips += g.flip;
    dxs.insert(g.dx);
  }
  CHECK(flips > 150);
  CHECK(flips < 250);
  CHECK(dxs.size() == 5);
  const auto other_epoch = examples::draw_augmentation(a, 5, 4, 0), same = examples::draw_augmentation(a, 5, 3, 0);
  const auto other_seed = examples::draw_augmentation(a, 6, 3, 0);
  CHECK((other_epoch.dx != same.dx || other_epoch.dy != same.dy || other_epoch.flip != same.flip || other_seed.dx != same.dx ||
         other_seed.dy != same.dy || other_seed.flip != same.flip));
  CHECK(examples::draw_augmentation({0, false}, 5, 3, 0).dx == 0);
  // fill_batch: labels and the draws of each id
  std::vector<float> images(2 * 784);
  std::vector<std::int64_t> labels(2);
  const std::vector<std::uint32_t> ids{3, 0};
  examples::fill_batch(d, ids, norm, a, 5, 3, images, labels);
  CHECK(labels == std::vector<std::int64_t>{d.labels[3], d.labels[0]});
  examples::write_image(d.image(0), norm, examples::draw_augmentation(a, 5, 3, 0), out.data());
  CHECK(std::equal(out.begin(), out.end(), images.begin() + 784));
  CHECK_THROWS_AS(examples::fill_batch(d, ids, norm, a, 5, 3, std::span<float>(images.data(), 784), labels), std::invalid_argument);
}

TEST_CASE("fashion_mnist: Debian's files, when installed", "[fashion_kd][data][debian]") {
  const fs::path dir(examples::fashion_mnist_default_dir);
  if (!fs::exists(dir / "train-images-idx3-ubyte.gz")) {
    WARN("Debian's dataset-fashion-mnist is not installed: nothing to check");
    return;
  }
  examples::fashion_mnist fm;
  REQUIRE(examples::load_fashion_mnist(dir, fm).ok());
  CHECK(fm.train.size() == 60000);
  CHECK(fm.test.size() == 10000);
  std::vector<int> train_count(10), test_count(10);
  for (auto l : fm.train.labels) ++train_count[l];
  for (auto l : fm.test.labels) ++test_count[l];
  for (int c = 0; c < 10; ++c) CHECK(train_count[static_cast<std::size_t>(c)] == 6000);
  for (int c = 0; c < 10; ++c) CHECK(test_count[static_cast<std::size_t>(c)] == 1000);
  // the mean pixel of the training set is 0.2860 (the value every Fashion-MNIST pipeline uses)
  const auto norm = examples::pixel_statistics(fm.train, examples::all_ids(60000));
  CHECK(norm.mean == Approx(0.2860).margin(5e-4));
  CHECK(norm.stddev == Approx(0.3530).margin(5e-4));
}
