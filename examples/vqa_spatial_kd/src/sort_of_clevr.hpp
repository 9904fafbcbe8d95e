// SPDX-License-Identifier: MIT
#pragma once
// Sort-of-CLEVR: a deterministic, seeded generator of the relational-reasoning dataset of
// Santoro et al., "A simple neural network module for relational reasoning" (NeurIPS 2017,
// Appendix D), following the public generator kimhc6028/relational-networks
// `sort_of_clevr_generator.py`.
//
// Scene
//   75×75 RGB image, white background, 6 objects, one per colour, in this order (colour id):
//     0 red (255,0,0)  1 green (0,255,0)  2 blue (0,0,255)  3 orange (255,156,0)
//     4 gray (128,128,128)  5 yellow (255,255,0)          (kimhc6028's order r, g, b, o, k, y)
//   Object i always has colour i (the state description keeps the colour anyway).
//   Each object is a square (shape id 0: the 11×11 pixels |dx| ≤ 5, |dy| ≤ 5, as kimhc6028's
//   filled 10×10 cv2 rectangle of half-size 5) or a circle (shape id 1: dx² + dy² ≤ 30, a filled
//   circle of radius 5), each with probability 1/2.
//   Centres are integers drawn uniformly from [5, 70)² (kimhc6028) and redrawn while they are too
//   close to an earlier object. kimhc6028 rejects squared distances below 10², which still lets
//   two squares overlap diagonally; here a centre is rejected unless max(|dx|, |dy|) ≥ 12, so the
//   11×11 boxes never overlap nor touch (at least one background pixel between any two objects).
//   A scene in which some object has two equally near (or two equally far) other objects is
//   redrawn as a whole, so every "closest"/"furthest" question names exactly one object (the
//   public generator breaks such ties by index; ties occur in about 3 % of integer scenes).
//
// Questions (per image: `non_relational_per_image` + `relational_per_image`, 10 + 10 by default,
// as in the paper)
//   type      kind            subtype  question about the object of colour c      answer
//   shape     non-relational  0        what is its shape?                          square / circle
//   left      non-relational  1        is it on the left?      (x < 37.5)          yes / no
//   top       non-relational  2        is it on the top?       (y < 37.5)          yes / no
//   closest   relational      0        shape of the object closest to it?          square / circle
//   furthest  relational      1        shape of the object furthest from it?       square / circle
//   count     relational      2        how many objects have its shape (itself     1 .. 6
//                                      included)?
//   Distances are squared Euclidean distances between centres, as in kimhc6028. x grows to the
//   right and y grows downwards (image rows), so "top" means a small y.
//   Mix per image and kind: n questions are split evenly over the 3 subtypes (⌊n/3⌋ each) and
//   the n mod 3 remaining ones go to distinct subtypes drawn at random, so with n = 10 an image
//   has 4 + 3 + 3 questions in a random order of subtypes; within a subtype the colours are
//   distinct and drawn at random (no question repeats within an image; n ≤ 18). Over a dataset
//   each subtype is 1/3 of its kind. (kimhc6028 draws colour and subtype independently per
//   question, so its images may repeat questions; the CPU prototype drew 5 + 5 distinct ones.)
//   Stored order: the image's non-relational questions, then its relational ones, each grouped
//   by subtype; trainers shuffle.
//
// Answers: 10 classes, kimhc6028's indices:
//   0 yes, 1 no, 2 square (kimhc6028 calls it "rectangle"), 3 circle, 4..9 the counts 1..6
//   (kimhc6028's colour answers r, g, b, o, k, y at 4..9 are never generated; the count answer is
//   4 + count − 1, so these indices double as the counts).
//
// Question encoding: 11 floats, the paper's 11-bit string (6 bits colour one-hot + 5 bits type):
//   [0:6)  colour one-hot
//   [6]    1 for a non-relational question     [7] 1 for a relational question
//   [8:11) subtype one-hot (see the table above)
//   (the same layout as the team's PyTorch prototype; kimhc6028 uses 18 bits
//   because it adds ternary questions, which this dataset does not have).
//
// State description, per object: x, y (centre pixel), colour id, shape id, and a feature vector
//   of 10 floats [x/75, y/75, colour one-hot (6), shape one-hot (square, circle)].
// Pixels: uint8 RGB, row-major HWC (75·75·3 bytes per image); `to_chw_float` converts one image
//   to CHW floats in [0, 1] for a CNN.
//
// Determinism: image k of a dataset depends only on (seed, split, k, generator_version) through
// a splitmix64 stream of its own (no std:: distributions, whose results differ between standard
// libraries), so the same parameters give identical bytes on every platform, and the first m
// images of a larger dataset equal the m images of a smaller one.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "../../common/image.hpp"
#include "../../common/random.hpp"

namespace vqa {

inline constexpr int image_size = 75;              // pixels per side
inline constexpr int image_channels = 3;           // RGB
inline constexpr std::size_t image_bytes = std::size_t{image_size} * image_size * image_channels;
inline constexpr int object_count = 6;             // one object per colour
inline constexpr int object_half_size = 5;         // square half-size and circle radius (kimhc6028)
inline constexpr int centre_min = object_half_size;                   // centres in [5, 70)
inline constexpr int centre_max_exclusive = image_size - object_half_size;
inline constexpr int min_centre_separation = 2 * object_half_size + 2;  // Chebyshev: boxes apart
inline constexpr int circle_radius_sq = 30;        // dx² + dy² ≤ 30 (radius 5, rounded rim)
inline constexpr int answer_count = 10;
inline constexpr int question_size = 11;           // floats of an encoded question
inline constexpr int object_feature_size = 10;     // x/75, y/75, colour one-hot, shape one-hot
inline constexpr int question_type_count = 6;
inline constexpr int subtypes_per_kind = 3;
inline constexpr int max_questions_per_kind = object_count * subtypes_per_kind;  // 18 distinct
/// Bump when the generator's output changes for the same parameters (dataset files record it).
inline constexpr std::uint32_t generator_version = 1;

// ---- vocabulary -------------------------------------------------------------------------------

using examples::rgb8;

inline constexpr std::array<std::string_view, object_count> colour_names = {"red", "green", "blue",
                                                                           "orange", "gray", "yellow"};
inline constexpr std::array<rgb8, object_count> colour_rgb = {
    rgb8{255, 0, 0}, rgb8{0, 255, 0}, rgb8{0, 0, 255}, rgb8{255, 156, 0}, rgb8{128, 128, 128}, rgb8{255, 255, 0}};
inline constexpr rgb8 background_rgb = examples::white_rgb;

enum class shape : std::uint8_t { square = 0, circle = 1 };
inline constexpr std::array<std::string_view, 2> shape_names = {"square", "circle"};

enum class question_kind : std::uint8_t { non_relational = 0, relational = 1 };

/// The six question types; the value is kind * 3 + subtype.
enum class question_type : std::uint8_t { shape = 0, left = 1, top = 2, closest = 3, furthest = 4, count = 5 };
inline constexpr std::array<std::string_view, question_type_count> question_type_names = {
    "shape", "left", "top", "closest", "furthest", "count"};

inline constexpr question_kind kind_of(question_type t) {
  return static_cast<int>(t) < subtypes_per_kind ? question_kind::non_relational : question_kind::relational;
}
inline constexpr int subtype_of(question_type t) { return static_cast<int>(t) % subtypes_per_kind; }
inline constexpr question_type make_question_type(question_kind k, int subtype) {
  return static_cast<question_type>(static_cast<int>(k) * subtypes_per_kind + subtype);
}
inline constexpr std::string_view name_of(question_type t) { return question_type_names[static_cast<int>(t)]; }
inline constexpr std::string_view name_of(question_kind k) {
  return k == question_kind::non_relational ? "non-relational" : "relational";
}

/// Answer classes (kimhc6028's indices).
namespace answer {
inline constexpr std::uint8_t yes = 0, no = 1, square = 2, circle = 3;
inline constexpr std::uint8_t count_1 = 4;  // count k (1..6) is answer count_1 + k - 1
}  // namespace answer
inline constexpr std::array<std::string_view, answer_count> answer_names = {"yes", "no", "square", "circle", "1",
                                                                           "2",   "3",  "4",      "5",      "6"};
inline constexpr std::uint8_t shape_answer(shape s) { return static_cast<std::uint8_t>(answer::square + static_cast<int>(s)); }
inline constexpr std::uint8_t count_answer(int k) { return static_cast<std::uint8_t>(answer::count_1 + k - 1); }
inline constexpr std::uint8_t yes_no(bool b) { return b ? answer::yes : answer::no; }

// ---- state descriptions and questions ---------------------------------------------------------

/// One object of a scene: centre pixel (x = column, y = row), colour id and shape.
struct object_state {
  std::uint8_t x = 0, y = 0, colour = 0;
  shape form = shape::square;
  friend bool operator==(const object_state&, const object_state&) = default;
};

/// A scene's state description: objects[i] has colour i.
struct scene {
  std::array<object_state, object_count> objects{};
  friend bool operator==(const scene&, const scene&) = default;
};

/// One question about one image. `colour` is the queried object's colour (= its index).
struct question {
  std::uint32_t image = 0;
  std::uint8_t colour = 0;
  question_type type = question_type::shape;
  std::uint8_t answer = 0;
  friend bool operator==(const question&, const question&) = default;
};

inline int squared_distance(const object_state& a, const object_state& b) {
  const int dx = int{a.x} - int{b.x}, dy = int{a.y} - int{b.y};
  return dx * dx + dy * dy;
}

/// Index of the object nearest to object c (squared distance, c itself excluded). Unique in
/// generated scenes; on a tie (hand-made scenes) the lowest index wins, like numpy's argmin.
inline int closest_object(const scene& s, int c) {
  int best = -1, best_d = 0;
  for (int j = 0; j < object_count; ++j) {
    if (j == c) continue;
    const int d = squared_distance(s.objects[c], s.objects[j]);
    if (best < 0 || d < best_d) best = j, best_d = d;
  }
  return best;
}

/// Index of the object furthest from object c (ties: lowest index).
inline int furthest_object(const scene& s, int c) {
  int best = -1, best_d = -1;
  for (int j = 0; j < object_count; ++j) {
    if (j == c) continue;
    const int d = squared_distance(s.objects[c], s.objects[j]);
    if (d > best_d) best = j, best_d = d;
  }
  return best;
}

/// Number of objects with the same shape as object c, c included (1..6).
inline int same_shape_count(const scene& s, int c) {
  int n = 0;
  for (const auto& o : s.objects) n += o.form == s.objects[c].form;
  return n;
}

/// The ground-truth answer to question type t about the object of colour c.
inline std::uint8_t answer_question(const scene& s, int c, question_type t) {
  const object_state& o = s.objects[c];
  switch (t) {
    case question_type::shape: return shape_answer(o.form);
    case question_type::left: return yes_no(2 * int{o.x} < image_size);  // x < 37.5
    case question_type::top: return yes_no(2 * int{o.y} < image_size);   // y < 37.5
    case question_type::closest: return shape_answer(s.objects[closest_object(s, c)].form);
    case question_type::furthest: return shape_answer(s.objects[furthest_object(s, c)].form);
    case question_type::count: return count_answer(same_shape_count(s, c));
  }
  return answer::no;  // unreachable
}

/// Whether some object has two equally near or two equally far other objects (such scenes are
/// redrawn, so closest/furthest questions have one right object).
inline bool has_distance_ties(const scene& s) {
  for (int c = 0; c < object_count; ++c) {
    const int near = closest_object(s, c), far = furthest_object(s, c);
    const int dn = squared_distance(s.objects[c], s.objects[near]);
    const int df = squared_distance(s.objects[c], s.objects[far]);
    for (int j = 0; j < object_count; ++j) {
      if (j == c) continue;
      const int d = squared_distance(s.objects[c], s.objects[j]);
      if ((j != near && d == dn) || (j != far && d == df)) return true;
    }
  }
  return false;
}

// ---- encodings --------------------------------------------------------------------------------

/// The 11-float question encoding (layout in the header comment). out.size() must be 11.
inline void encode_question(const question& q, std::span<float> out) {
  if (out.size() != static_cast<std::size_t>(question_size)) throw std::invalid_argument("encode_question: out must hold 11 floats");
  std::fill(out.begin(), out.end(), 0.0f);
  out[q.colour] = 1.0f;
  out[6 + static_cast<int>(kind_of(q.type))] = 1.0f;
  out[8 + subtype_of(q.type)] = 1.0f;
}

/// Object features of a scene, row-major (6, 10): [x/75, y/75, colour one-hot, shape one-hot].
inline void object_features(const scene& s, std::span<float> out) {
  if (out.size() != static_cast<std::size_t>(object_count * object_feature_size))
    throw std::invalid_argument("object_features: out must hold 6 x 10 floats");
  std::fill(out.begin(), out.end(), 0.0f);
  for (int i = 0; i < object_count; ++i) {
    float* row = out.data() + i * object_feature_size;
    const object_state& o = s.objects[i];
    row[0] = static_cast<float>(o.x) / image_size;
    row[1] = static_cast<float>(o.y) / image_size;
    row[2 + o.colour] = 1.0f;
    row[8 + static_cast<int>(o.form)] = 1.0f;
  }
}

/// Whether pixel offset (dx, dy) from an object's centre belongs to the object.
inline bool shape_covers(shape s, int dx, int dy) {
  if (dx < -object_half_size || dx > object_half_size || dy < -object_half_size || dy > object_half_size) return false;
  return s == shape::square || dx * dx + dy * dy <= circle_radius_sq;
}

/// Draws a scene into a 75×75 RGB image (HWC, row-major). out.size() must be image_bytes.
inline void rasterize(const scene& s, std::span<std::uint8_t> out) {
  if (out.size() != image_bytes) throw std::invalid_argument("rasterize: out must hold 75 x 75 x 3 bytes");
  for (std::size_t p = 0; p < out.size(); p += 3) out[p] = background_rgb.r, out[p + 1] = background_rgb.g, out[p + 2] = background_rgb.b;
  for (const object_state& o : s.objects) {
    const rgb8 c = colour_rgb[o.colour];
    for (int dy = -object_half_size; dy <= object_half_size; ++dy)
      for (int dx = -object_half_size; dx <= object_half_size; ++dx) {
        if (!shape_covers(o.form, dx, dy)) continue;
        const std::size_t p = (static_cast<std::size_t>(o.y + dy) * image_size + static_cast<std::size_t>(o.x + dx)) * 3;
        out[p] = c.r, out[p + 1] = c.g, out[p + 2] = c.b;
      }
  }
}

/// One image from uint8 HWC to float CHW in [0, 1] (out.size() = 3·75·75).
inline void to_chw_float(std::span<const std::uint8_t> hwc, std::span<float> chw) {
  if (hwc.size() != image_bytes || chw.size() != image_bytes)
    throw std::invalid_argument("to_chw_float: both spans must hold 3 x 75 x 75 values");
  constexpr std::size_t plane = std::size_t{image_size} * image_size;
  for (std::size_t p = 0; p < plane; ++p)
    for (std::size_t c = 0; c < 3; ++c) chw[c * plane + p] = static_cast<float>(hwc[p * 3 + c]) * (1.0f / 255.0f);
}

/// Question text, e.g. "What is the shape of the object closest to the red object?".
inline std::string question_text(const question& q) {
  const std::string c(colour_names[q.colour]);
  switch (q.type) {
    case question_type::shape: return "What is the shape of the " + c + " object?";
    case question_type::left: return "Is the " + c + " object on the left?";
    case question_type::top: return "Is the " + c + " object on the top?";
    case question_type::closest: return "What is the shape of the object closest to the " + c + " object?";
    case question_type::furthest: return "What is the shape of the object furthest from the " + c + " object?";
    case question_type::count: return "How many objects have the same shape as the " + c + " object?";
  }
  return {};
}

// ---- seeded generation ------------------------------------------------------------------------

using examples::mix64;
using examples::splitmix64;

enum class dataset_split : std::uint32_t { train = 0, test = 1 };
inline constexpr std::string_view name_of(dataset_split s) { return s == dataset_split::train ? "train" : "test"; }

/// Everything that determines a dataset's bytes (dataset files store it and are regenerated
/// when it changes).
struct generator_params {
  std::uint64_t seed = 1;
  dataset_split split = dataset_split::train;   // train and test draw from disjoint streams
  std::uint32_t images = 10000;
  std::uint32_t non_relational_per_image = 10;  // 0..18
  std::uint32_t relational_per_image = 10;      // 0..18
  bool with_pixels = true;  // store the rendered images (state-description runs can skip them)
  friend bool operator==(const generator_params&, const generator_params&) = default;
  std::uint32_t questions_per_image() const { return non_relational_per_image + relational_per_image; }
};

inline void validate(const generator_params& p) {
  if (p.non_relational_per_image > static_cast<std::uint32_t>(max_questions_per_kind) ||
      p.relational_per_image > static_cast<std::uint32_t>(max_questions_per_kind))
    throw std::invalid_argument("sort_of_clevr: at most 18 questions per kind and image (6 colours x 3 subtypes)");
  if (p.split != dataset_split::train && p.split != dataset_split::test)
    throw std::invalid_argument("sort_of_clevr: split must be train or test");
}

/// The seed of image k's own random stream.
inline std::uint64_t image_seed(const generator_params& p, std::uint64_t k) {
  const std::uint64_t split_tag = p.split == dataset_split::train ? 0x747261696eull /* "train" */ : 0x74657374ull /* "test" */;
  return mix64(mix64(mix64(p.seed) ^ split_tag) + k);
}

/// Draws one scene (placement with rejection, see the header comment).
inline scene generate_scene(splitmix64& rng) {
  for (;;) {
    scene s;
    for (int i = 0; i < object_count; ++i) {
      object_state o;
      for (bool placed = false; !placed;) {
        o.x = static_cast<std::uint8_t>(centre_min + rng.below(centre_max_exclusive - centre_min));
        o.y = static_cast<std::uint8_t>(centre_min + rng.below(centre_max_exclusive - centre_min));
        placed = true;
        for (int j = 0; j < i && placed; ++j) {
          const int dx = int{o.x} - int{s.objects[j].x}, dy = int{o.y} - int{s.objects[j].y};
          placed = std::max(std::abs(dx), std::abs(dy)) >= min_centre_separation;
        }
      }
      o.colour = static_cast<std::uint8_t>(i);
      o.form = static_cast<shape>(rng.below(2));
      s.objects[i] = o;
    }
    if (!has_distance_ties(s)) return s;
  }
}

/// Appends `count` questions of one kind about image `image` (the balanced mix of the header).
inline void append_questions(const scene& s, std::uint32_t image, question_kind kind, int count, splitmix64& rng,
                             std::vector<question>& out) {
  if (count < 0 || count > max_questions_per_kind) throw std::invalid_argument("append_questions: count must be in [0, 18]");
  std::array<int, subtypes_per_kind> per_subtype;
  per_subtype.fill(count / subtypes_per_kind);
  std::array<int, subtypes_per_kind> order = {0, 1, 2};
  for (int i = 0; i < count % subtypes_per_kind; ++i) {  // distinct random subtypes get one more
    std::swap(order[i], order[i + static_cast<int>(rng.below(subtypes_per_kind - i))]);
    ++per_subtype[order[i]];
  }
  for (int sub = 0; sub < subtypes_per_kind; ++sub) {
    std::array<int, object_count> colours = {0, 1, 2, 3, 4, 5};
    const question_type t = make_question_type(kind, sub);
    for (int i = 0; i < per_subtype[sub]; ++i) {  // partial Fisher-Yates: distinct colours
      std::swap(colours[i], colours[i + static_cast<int>(rng.below(object_count - i))]);
      const int c = colours[i];
      out.push_back(question{image, static_cast<std::uint8_t>(c), t, answer_question(s, c, t)});
    }
  }
}

/// A generated dataset: state descriptions, questions and (optionally) pixels.
struct dataset {
  generator_params params;
  std::vector<scene> scenes;            // one per image
  std::vector<question> questions;      // questions_per_image per image, image by image
  std::vector<std::uint8_t> pixels;     // images × 75 × 75 × 3 (HWC RGB), empty without pixels

  std::size_t image_count() const { return scenes.size(); }
  bool has_pixels() const { return !pixels.empty(); }
  /// Image k's pixels (HWC RGB). Requires has_pixels(); else use rasterize(scenes[k], ...).
  std::span<const std::uint8_t> image(std::size_t k) const {
    return std::span<const std::uint8_t>(pixels).subspan(k * image_bytes, image_bytes);
  }
  friend bool operator==(const dataset&, const dataset&) = default;
};

/// Image k of the dataset `p` describes: its scene, and its questions appended to `out`.
inline scene generate_image(const generator_params& p, std::uint32_t k, std::vector<question>& out) {
  splitmix64 rng(image_seed(p, k));
  scene s = generate_scene(rng);
  append_questions(s, k, question_kind::non_relational, static_cast<int>(p.non_relational_per_image), rng, out);
  append_questions(s, k, question_kind::relational, static_cast<int>(p.relational_per_image), rng, out);
  return s;
}

inline dataset generate_dataset(const generator_params& p) {
  validate(p);
  dataset d;
  d.params = p;
  d.scenes.reserve(p.images);
  d.questions.reserve(std::size_t{p.images} * p.questions_per_image());
  for (std::uint32_t k = 0; k < p.images; ++k) d.scenes.push_back(generate_image(p, k, d.questions));
  if (p.with_pixels) {
    d.pixels.resize(std::size_t{p.images} * image_bytes);
    for (std::uint32_t k = 0; k < p.images; ++k)
      rasterize(d.scenes[k], std::span<std::uint8_t>(d.pixels).subspan(std::size_t{k} * image_bytes, image_bytes));
  }
  return d;
}

}  // namespace vqa
