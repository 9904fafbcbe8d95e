// SPDX-License-Identifier: MIT
#pragma once
// Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, Zalando Research) from Debian's
// `dataset-fashion-mnist` package: 60 000 training and 10 000 test images of 28 × 28 grey
// pixels, 10 classes, as four gzipped IDX files in /usr/share/datasets/fashion-mnist/:
//   train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz
// Nothing is downloaded at run time; when the files are missing the error says what to install.
//
// IDX format (LeCun's MNIST page): big-endian u32 magic = 0x00000800 | (dims), where the third
// byte 0x08 is the element type (unsigned byte) and the last byte the number of dimensions:
// 2051 = images (count, rows, cols), 2049 = labels (count). Then the dimensions as big-endian
// u32, then count × rows × cols bytes, row-major. The reader decompresses with zlib (gzread,
// which also checks the gzip CRC) and checks the magic, the shape (28 × 28), that labels lie in
// [0, 10), that images and labels agree on the count, the expected counts (60 000 / 10 000 for
// the Debian files), and that nothing follows the payload.
//
// Splits: the 60 000 training images are split into a training and a validation set, stratified
// (the same number of validation images from each class) and seeded. The validation set is for
// choices (hyper-parameters, what to report); the test set is only reported.
//
// Normalisation: x = (pixel / 255 − mean) / std with the mean and standard deviation of the
// training split's pixels. Augmentation (a switch, off by default): a random crop of 28 × 28 from
// the image zero-padded by `pad` pixels on each side (shift dx, dy uniform in [−pad, pad]), and
// a horizontal flip with probability ½. The draws of image i in epoch e depend only on
// (seed, e, i) through splitmix64 (random.hpp), so training resumes exactly and a peer in another
// language can reproduce them: rng = splitmix64(mix64(mix64(mix64(seed) ^ 0x4155474D) + e) ^ i),
// then dx = rng.below(2 pad + 1) − pad, dy = rng.below(2 pad + 1) − pad, flip = rng.next() >> 63.

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "distill/core/status.hpp"
#include "random.hpp"

namespace examples {

inline constexpr int fashion_side = 28;
inline constexpr int fashion_pixels = fashion_side * fashion_side;
inline constexpr int fashion_classes = 10;
inline constexpr std::array<std::string_view, fashion_classes> fashion_class_names = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
inline constexpr std::string_view fashion_mnist_package = "dataset-fashion-mnist";
inline constexpr std::string_view fashion_mnist_default_dir = "/usr/share/datasets/fashion-mnist";
inline constexpr std::uint32_t idx_images_magic = 2051, idx_labels_magic = 2049;

/// Grey images (count × 28 × 28 bytes, row-major) and their labels (count bytes, 0..9).
struct labelled_images {
  std::vector<std::uint8_t> pixels;
  std::vector<std::uint8_t> labels;

  std::size_t size() const noexcept { return labels.size(); }
  std::span<const std::uint8_t> image(std::size_t i) const {
    return std::span<const std::uint8_t>(pixels).subspan(i * fashion_pixels, fashion_pixels);
  }
};

struct fashion_mnist {
  labelled_images train, test;
};

namespace fashion_detail {

inline std::string install_hint(const std::filesystem::path& dir) {
  return "install Debian's " + std::string(fashion_mnist_package) + " (sudo apt-get install " + std::string(fashion_mnist_package) +
         ", or bash scripts/setup.sh), which puts the four .gz files into " + std::string(fashion_mnist_default_dir) +
         ", or point to a folder holding them (" + dir.string() + " was searched)";
}

/// The whole decompressed content of a gzip file.
inline distill::status gunzip_file(const std::filesystem::path& path, std::vector<std::uint8_t>& out) {
  constexpr const char* fn = "read_idx";
  gzFile f = gzopen(path.string().c_str(), "rb");
  if (!f) return {distill::errc::io_error, std::string(fn) + ": cannot open " + path.string()};
  out.clear();
  std::array<std::uint8_t, 1 << 16> buf;
  for (;;) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int code = 0;
      const std::string msg = gzerror(f, &code);
      gzclose(f);
      return {distill::errc::corrupt_data, std::string(fn) + ": " + path.string() + " is not a valid gzip file (zlib: " + msg + ")"};
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  const int rc = gzclose(f);
  if (rc != Z_OK) return {distill::errc::corrupt_data, std::string(fn) + ": " + path.string() + ": zlib reports error " + std::to_string(rc) + " on close"};
  return {};
}

inline std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

}  // namespace fashion_detail

/// Reads one gzipped IDX file of unsigned bytes: its dimensions (from the header) and payload.
/// `magic` is 2051 (images: count, rows, cols) or 2049 (labels: count).
inline distill::status read_idx(const std::filesystem::path& path, std::uint32_t magic, std::vector<std::uint32_t>& dims,
                                std::vector<std::uint8_t>& payload) {
  constexpr const char* fn = "read_idx";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    return {distill::errc::io_error, std::string(fn) + ": " + path.string() + " does not exist: " + fashion_detail::install_hint(path.parent_path())};
  std::vector<std::uint8_t> bytes;
  DISTILL_TRY(fashion_detail::gunzip_file(path, bytes));
  const std::size_t rank = magic & 0xFF;
  if (bytes.size() < 4 + 4 * rank)
    return {distill::errc::corrupt_data, std::string(fn) + ": " + path.string() + " is shorter than an IDX header (" + std::to_string(bytes.size()) + " bytes)"};
  const std::uint32_t got = fashion_detail::be32(bytes.data());
  if (got != magic)
    return {distill::errc::corrupt_data, std::string(fn) + ": " + path.string() + " has magic number " + std::to_string(got) + ", expected " +
                                             std::to_string(magic) + (magic == idx_images_magic ? " (IDX unsigned-byte images)" : " (IDX unsigned-byte labels)")};
  dims.assign(rank, 0);
  std::size_t elements = 1;
  for (std::size_t d = 0; d < rank; ++d) elements *= dims[d] = fashion_detail::be32(bytes.data() + 4 + 4 * d);
  const std::size_t header = 4 + 4 * rank;
  if (bytes.size() != header + elements)
    return {distill::errc::corrupt_data, std::string(fn) + ": " + path.string() + " holds " + std::to_string(bytes.size() - header) +
                                             " data bytes, its header announces " + std::to_string(elements) +
                                             (bytes.size() < header + elements ? " (truncated)" : " (trailing bytes)")};
  payload.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return {};
}

/// Reads an images file and a labels file into `out`. `expected_count` > 0 also checks the count.
inline distill::status read_idx_pair(const std::filesystem::path& images, const std::filesystem::path& labels, labelled_images& out,
                                     std::size_t expected_count = 0) {
  constexpr const char* fn = "read_idx_pair";
  std::vector<std::uint32_t> idims, ldims;
  labelled_images r;
  DISTILL_TRY(read_idx(images, idx_images_magic, idims, r.pixels));
  DISTILL_TRY(read_idx(labels, idx_labels_magic, ldims, r.labels));
  if (idims[1] != fashion_side || idims[2] != fashion_side)
    return {distill::errc::shape_mismatch, std::string(fn) + ": " + images.string() + " holds " + std::to_string(idims[1]) + " x " +
                                               std::to_string(idims[2]) + " images, expected 28 x 28"};
  if (idims[0] != ldims[0])
    return {distill::errc::shape_mismatch, std::string(fn) + ": " + images.string() + " holds " + std::to_string(idims[0]) + " images but " +
                                               labels.string() + " " + std::to_string(ldims[0]) + " labels"};
  if (expected_count && idims[0] != expected_count)
    return {distill::errc::shape_mismatch, std::string(fn) + ": " + images.string() + " holds " + std::to_string(idims[0]) +
                                               " images, expected " + std::to_string(expected_count)};
  for (std::size_t i = 0; i < r.labels.size(); ++i)
    if (r.labels[i] >= fashion_classes)
      return {distill::errc::corrupt_data, std::string(fn) + ": label " + std::to_string(r.labels[i]) + " of image " + std::to_string(i) +
                                               " in " + labels.string() + " is not a class 0..9"};
  out = std::move(r);
  return {};
}

/// Counts a Fashion-MNIST folder must hold (0: any).
struct fashion_mnist_counts {
  std::size_t train = 60000, test = 10000;
};

/// Loads the four files from `dir` (default: Debian's folder).
inline distill::status load_fashion_mnist(const std::filesystem::path& dir, fashion_mnist& out, const fashion_mnist_counts& expect = {}) {
  fashion_mnist r;
  DISTILL_TRY(read_idx_pair(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz", r.train, expect.train));
  DISTILL_TRY(read_idx_pair(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz", r.test, expect.test));
  out = std::move(r);
  return {};
}

// ---- splits --------------------------------------------------------------------------------------

struct train_validation_split {
  std::vector<std::uint32_t> train, validation;  // indices into the training images, ascending
};

/// Stratified split: `validation_per_class` images of every class (chosen by `seed`) go to the
/// validation set, the rest to training. Throws std::invalid_argument when a class has fewer.
inline train_validation_split split_train_validation(const labelled_images& images, std::size_t validation_per_class, std::uint64_t seed) {
  std::array<std::vector<std::uint32_t>, fashion_classes> by_class;
  for (std::size_t i = 0; i < images.size(); ++i) by_class[images.labels[i]].push_back(static_cast<std::uint32_t>(i));
  train_validation_split s;
  for (int c = 0; c < fashion_classes; ++c) {
    auto& ids = by_class[static_cast<std::size_t>(c)];
    if (ids.size() < validation_per_class)
      throw std::invalid_argument("split_train_validation: class " + std::to_string(c) + " has " + std::to_string(ids.size()) + " images, " +
                                  std::to_string(validation_per_class) + " wanted for validation");
    const auto order = shuffled_order(ids.size(), seed ^ 0x56414C4944ull /* "VALID" */, static_cast<std::uint64_t>(c));
    for (std::size_t k = 0; k < ids.size(); ++k) (k < validation_per_class ? s.validation : s.train).push_back(ids[order[k]]);
  }
  std::sort(s.train.begin(), s.train.end());
  std::sort(s.validation.begin(), s.validation.end());
  return s;
}

/// The first `per_class` ids of every class in `ids` (in the order given): a stratified subset.
inline std::vector<std::uint32_t> take_per_class(const labelled_images& images, std::span<const std::uint32_t> ids, std::size_t per_class) {
  std::array<std::size_t, fashion_classes> taken{};
  std::vector<std::uint32_t> out;
  for (std::uint32_t i : ids)
    if (taken[images.labels[i]]++ < per_class) out.push_back(i);
  return out;
}

/// Every index 0..n-1 (e.g. the whole test set).
inline std::vector<std::uint32_t> all_ids(std::size_t n) {
  std::vector<std::uint32_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint32_t>(i);
  return v;
}

// ---- normalisation and augmentation ---------------------------------------------------------------

struct pixel_normalization {
  float mean = 0.0f, stddev = 1.0f;  // of pixel / 255
  float apply(std::uint8_t p) const noexcept { return (static_cast<float>(p) * (1.0f / 255.0f) - mean) / stddev; }
};

/// Mean and (population) standard deviation of pixel / 255 over the given images.
inline pixel_normalization pixel_statistics(const labelled_images& images, std::span<const std::uint32_t> ids) {
  double s = 0, ss = 0;
  for (std::uint32_t i : ids)
    for (std::uint8_t p : images.image(i)) {
      const double v = p / 255.0;
      s += v, ss += v * v;
    }
  const double n = static_cast<double>(ids.size()) * fashion_pixels;
  if (n == 0) return {};
  const double mean = s / n;
  return {static_cast<float>(mean), static_cast<float>(std::sqrt(std::max(ss / n - mean * mean, 1e-12)))};
}

struct augmentation {
  int pad = 0;       ///< random crop from the image zero-padded by this many pixels (0: no crop)
  bool flip = false; ///< horizontal flip with probability 1/2
  bool enabled() const noexcept { return pad > 0 || flip; }
};

/// The augmentation drawn for image `id` in `epoch` (see the file comment).
struct augmentation_draw {
  int dx = 0, dy = 0;
  bool flip = false;
};
inline augmentation_draw draw_augmentation(const augmentation& a, std::uint64_t seed, std::uint64_t epoch, std::uint32_t id) {
  splitmix64 rng(mix64(mix64(mix64(seed) ^ 0x4155474Dull /* "AUGM" */) + epoch) ^ id);
  augmentation_draw d;
  const auto span = static_cast<std::uint64_t>(2 * a.pad + 1);
  d.dx = static_cast<int>(rng.below(span)) - a.pad;
  d.dy = static_cast<int>(rng.below(span)) - a.pad;
  d.flip = a.flip && (rng.next() >> 63) != 0;
  return d;
}

/// Writes one image as normalised floats (28 × 28), shifted by (dx, dy) (zeros enter at the
/// borders: out(y, x) = in(y + dy, x + dx)) and then flipped horizontally when asked.
inline void write_image(std::span<const std::uint8_t> image, const pixel_normalization& norm, const augmentation_draw& d, float* out) {
  const float zero = norm.apply(0);
  for (int y = 0; y < fashion_side; ++y)
    for (int x = 0; x < fashion_side; ++x) {
      const int sx = (d.flip ? fashion_side - 1 - x : x) + d.dx, sy = y + d.dy;
      const bool inside = sx >= 0 && sx < fashion_side && sy >= 0 && sy < fashion_side;
      out[y * fashion_side + x] = inside ? norm.apply(image[static_cast<std::size_t>(sy * fashion_side + sx)]) : zero;
    }
}

/// A mini-batch: images (B × 1 × 28 × 28 floats, normalised, augmented when `aug` is enabled)
/// and labels (B). `images` and `labels` must hold B × 784 and B values.
inline void fill_batch(const labelled_images& data, std::span<const std::uint32_t> ids, const pixel_normalization& norm, const augmentation& aug,
                       std::uint64_t seed, std::uint64_t epoch, std::span<float> images, std::span<std::int64_t> labels) {
  if (images.size() != ids.size() * fashion_pixels || labels.size() != ids.size())
    throw std::invalid_argument("fill_batch: images must hold B x 784 floats and labels B values");
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const augmentation_draw d = aug.enabled() ? draw_augmentation(aug, seed, epoch, ids[i]) : augmentation_draw{};
    write_image(data.image(ids[i]), norm, d, images.data() + i * fashion_pixels);
    labels[i] = data.labels[ids[i]];
  }
}

}  // namespace examples
