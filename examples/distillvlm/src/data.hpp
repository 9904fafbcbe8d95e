// SPDX-License-Identifier: MIT
#pragma once
// The data of a run: the scene world (train, validation and test scenes) and one question file
// per split, generated once and reused from <world-dir>; the regions each scene offers the two
// models (region_source: the proposals of one class-agnostic RPN, or the true boxes); and the
// batches the models read.
//
// A batch is `scenes` scenes and every question about them (questions_per_scene each): the CNNs
// run once per scene and each question's sequence gathers its scene's region tokens. Which scenes
// a step takes depends only on (seed, epoch), so a resumed run sees the same batches.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../common/random.hpp"
#include "../../common/region_proposals.hpp"
#include "../../common/scene_questions_io.hpp"
#include "../../common/scene_world_io.hpp"
#include "config.hpp"
#include "distill/detection/boxes.hpp"
#include "distill/nn/tensor.hpp"

namespace dvlm {

namespace ex = examples;
using distill::index_t;
using tensor = distill::nn::host_tensor<float>;

/// One split: its scenes and the questions about them.
struct split_data {
  ex::scene_set scenes;
  ex::scene_question_set questions;
  ex::proposal_set proposals;  ///< ranked proposals of each scene (region_source::proposals only)
  ex::proposal_set own_proposals;  ///< those of the teacher's own detector (all_own_regions only)
};

/// Which regions a model reads: the shared ones (both models, region_source) or the teacher's
/// own detector's proposals.
enum class region_set { shared, teacher_own };

struct world {
  split_data train, validation, test;
  float mean = 0, stddev = 1;  ///< of pixel / 255 over the train scenes
  int side = 96;
};

inline ex::scene_world_params world_params(const world_config& w, ex::scene_split split) {
  ex::scene_world_params p;
  p.seed = w.seed, p.split = split, p.side = w.side, p.out_of_context_rate = w.out_of_context_rate;
  p.validation_per_class = w.validation_per_class, p.split_seed = w.split_seed;
  p.scenes = split == ex::scene_split::train ? w.train_scenes : split == ex::scene_split::validation ? w.validation_scenes : w.test_scenes;
  return p;
}

inline ex::scene_question_params question_params(const world_config& w) {
  ex::scene_question_params q;
  q.seed = w.question_seed, q.questions_per_scene = w.questions_per_scene;
  return q;
}

/// Loads the three splits and their questions from `dir` (generating the files that are
/// missing, changed or corrupt) and the pixel statistics of the train scenes.
inline world load_world(const world_config& c, const std::string& data_dir, const std::filesystem::path& dir) {
  world w;
  w.side = c.side;
  ex::fashion_mnist fm;  // always read: a scene file is used only when made from these very images
  distill::throw_if_error(ex::load_fashion_mnist(data_dir, fm));
  const auto qp = question_params(c);
  const ex::scene_split splits[3] = {ex::scene_split::train, ex::scene_split::validation, ex::scene_split::test};
  split_data* out[3] = {&w.train, &w.validation, &w.test};
  for (int s = 0; s < 3; ++s) {
    const auto p = world_params(c, splits[s]);
    out[s]->scenes = ex::load_or_generate_scenes(dir / ex::scene_file_name(p), p, fm);
    out[s]->questions = ex::load_or_generate_questions(dir / ex::question_file_name(p, qp), qp, out[s]->scenes);
  }
  double sum = 0, sq = 0;
  for (std::uint8_t v : w.train.scenes.pixels) sum += v, sq += double(v) * v;
  const double n = static_cast<double>(w.train.scenes.pixels.size());
  const double mean = sum / (n * 255.0);
  w.mean = static_cast<float>(mean);
  w.stddev = static_cast<float>(std::sqrt(std::max(sq / (n * 255.0 * 255.0) - mean * mean, 1e-12)));
  return w;
}

// ---- regions ------------------------------------------------------------------------------

/// A region box (x1, y1, x2, y2) in canvas pixels. A region is a box and nothing else: the
/// models never see an item's class through it (proposals have none).
using region_box = std::array<float, 4>;

/// The proposal network's results for this world (region_source::proposals).
struct proposal_summary {
  std::uint64_t key = 0;          ///< proposal_cache_key: the network's config and train scenes
  bool trained = false;           ///< trained in this run (false: loaded or not needed, the caches held every split)
  double train_seconds = 0;
  double recall50 = 0, recall70 = 0;  ///< of the validation scenes' items by the first K proposals, IoU >= 0.5 / 0.7
  double recall50_all = 0, recall70_all = 0;  ///< the same by every kept proposal (max_proposals per scene)
};

inline std::string hex16(std::uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = digits[v & 15];
  return s;
}

/// Gives every split its proposals (into split_data::*target): one class-agnostic RPN trained on the train scenes' true
/// boxes (the only use of the boxes) and cached as <dir>/rpn-<key>.ckpt, its proposals of each
/// split cached as <dir>/proposals-<split>-<key>.bin (checked on every load; remade when missing,
/// stale or corrupt). Both caches are deterministic, so a resumed run reads the same regions.
inline proposal_summary attach_proposals(world& w, const ex::region_proposal_config& rc, int K, const std::filesystem::path& dir,
                                         ex::proposal_set split_data::*target = &split_data::proposals) {
  proposal_summary sum;
  sum.key = ex::proposal_cache_key(rc, w.train.scenes);
  const std::string tag = hex16(sum.key);
  std::optional<ex::region_proposal_network> net;
  auto network = [&]() -> ex::region_proposal_network& {
    if (net) return *net;
    net.emplace(rc, w.side);
    const auto path = dir / ("rpn-" + tag + ".ckpt");
    std::string why;
    if (!net->load(path, sum.key, why)) {
      std::cerr << "  proposal network " << path.string() << ": " << why << ", training it on " << w.train.scenes.size() << " train scenes\n";
      const ex::rpn_training_log log = net->train(w.train.scenes);
      net->save(path, sum.key);
      sum.trained = true, sum.train_seconds = log.seconds;
    }
    return *net;
  };
  const char* names[3] = {"train", "validation", "test"};
  split_data* splits[3] = {&w.train, &w.validation, &w.test};
  for (int s = 0; s < 3; ++s)
    splits[s]->*target = ex::load_or_make_proposals(dir / ("proposals-" + std::string(names[s]) + "-" + tag + ".bin"), splits[s]->scenes, sum.key,
                                                      rc.max_proposals, [&] { return network().propose(splits[s]->scenes); });
  const ex::proposal_set& val = w.validation.*target;
  sum.recall50 = ex::region_proposal_network::recall(val, w.validation.scenes, K, 0.5);
  sum.recall70 = ex::region_proposal_network::recall(val, w.validation.scenes, K, 0.7);
  sum.recall50_all = ex::region_proposal_network::recall(val, w.validation.scenes, rc.max_proposals, 0.5);
  sum.recall70_all = ex::region_proposal_network::recall(val, w.validation.scenes, rc.max_proposals, 0.7);
  return sum;
}

/// The regions of scene `id` of a split: at most K boxes. Oracle: the true item boxes (their
/// classes dropped). Proposals: the first K of the scene's ranked proposals (of the shared
/// detector, or of the teacher's own).
inline std::vector<region_box> scene_regions(const split_data& d, std::uint32_t id, region_source src, int K, region_set set) {
  std::vector<region_box> boxes;
  if (src == region_source::oracle) {
    for (const auto& it : d.scenes.scenes[id].items)
      if (static_cast<int>(boxes.size()) < K)
        boxes.push_back({static_cast<float>(it.box.x1), static_cast<float>(it.box.y1), static_cast<float>(it.box.x2), static_cast<float>(it.box.y2)});
    return boxes;
  }
  const ex::proposal_set& p = set == region_set::shared ? d.proposals : d.own_proposals;
  if (p.scenes() != d.scenes.size()) throw std::logic_error("scene_regions: the split has no proposals (attach_proposals)");
  const std::size_t n = std::min<std::size_t>(p.count(id), static_cast<std::size_t>(std::max(0, K)));
  for (std::size_t r = p.offsets[id]; r < p.offsets[id] + n; ++r) boxes.push_back({p.boxes[4 * r], p.boxes[4 * r + 1], p.boxes[4 * r + 2], p.boxes[4 * r + 3]});
  return boxes;
}

// ---- batches ------------------------------------------------------------------------------

/// Sequence layout: [CLS], K region tokens, question_max_tokens word tokens.
inline index_t sequence_length(int K) { return 1 + K + ex::question_max_tokens; }

/// What both models read for a batch of scenes and their questions.
struct vqa_batch {
  index_t scenes = 0, questions = 0, K = 0, L = 0;
  tensor pixels;                       ///< (S, 1, side, side), normalised
  tensor rois;                         ///< (S K, 5): (scene in batch, x1, y1, x2, y2); padded regions a 1-pixel box at the origin
  tensor geometry;                     ///< (S K, 6): x1, y1, x2, y2, width, height over side
  std::vector<std::int64_t> region_row;  ///< (B K): the row of rois each question's region tokens read
  std::vector<std::int64_t> word_ids;  ///< (B L): word of each token (cls_word / region_word for those)
  std::vector<std::int64_t> position_ids;  ///< (B L): 0 for [CLS] and regions, 1 + t for word t
  std::vector<std::uint8_t> key_valid;  ///< (B L): 1 = a real token
  std::vector<std::uint8_t> region_valid;  ///< (S K): 1 = a real region
  /// (B L): token NCE ids, equal only for the same token: region k of a scene has one id in every
  /// question about that scene (so those copies are not each other's negatives), words and [CLS]
  /// one per (question, position).
  std::vector<std::int64_t> token_ids;
  std::vector<std::int64_t> answers;    ///< (B)
  std::vector<const ex::scene_question*> source;  ///< (B)
  /// (rows of rois): 1 = the row's pooled features are replaced by zeros, its box kept (masked
  /// region classification, src/pretraining.hpp, appends masked copies of the S K rows for the
  /// questions' region_row to pick); empty (fill_batch's default): no row is masked.
  std::vector<std::uint8_t> masked_regions;
};

inline constexpr int cls_word = ex::question_word_count, region_word = ex::question_word_count + 1, vocabulary = ex::question_word_count + 2;

inline void fill_batch(const world& w, const split_data& d, std::span<const std::uint32_t> scene_ids, region_source src, int K, vqa_batch& b,
                       region_set set = region_set::shared) {
  const index_t S = static_cast<index_t>(scene_ids.size()), side = w.side, L = sequence_length(K);
  const std::uint32_t qps = d.questions.params.questions_per_scene;
  b.scenes = S, b.questions = S * qps, b.K = K, b.L = L;
  b.masked_regions.clear();
  distill::throw_if_error(b.pixels.resize({S, 1, side, side}));
  distill::throw_if_error(b.rois.resize({S * K, 5}));
  distill::throw_if_error(b.geometry.resize({S * K, 6}));
  const float a = 1.0f / (255.0f * w.stddev), c = -w.mean / w.stddev, inv = 1.0f / static_cast<float>(side);
  std::vector<std::uint8_t>& region_valid = b.region_valid;
  region_valid.assign(static_cast<std::size_t>(S * K), 0);
  for (index_t s = 0; s < S; ++s) {
    const auto px = d.scenes.image(scene_ids[static_cast<std::size_t>(s)]);
    float* out = b.pixels.data() + s * side * side;
    for (std::size_t i = 0; i < px.size(); ++i) out[i] = static_cast<float>(px[i]) * a + c;
    const auto boxes = scene_regions(d, scene_ids[static_cast<std::size_t>(s)], src, K, set);
    for (index_t k = 0; k < K; ++k) {
      float* r = b.rois.data() + (s * K + k) * 5;
      float* g = b.geometry.data() + (s * K + k) * 6;
      const bool real = k < static_cast<index_t>(boxes.size());
      const region_box bx = real ? boxes[static_cast<std::size_t>(k)] : region_box{0, 0, 1, 1};
      r[0] = static_cast<float>(s), r[1] = bx[0], r[2] = bx[1], r[3] = bx[2], r[4] = bx[3];
      g[0] = bx[0] * inv, g[1] = bx[1] * inv, g[2] = bx[2] * inv, g[3] = bx[3] * inv, g[4] = (bx[2] - bx[0]) * inv, g[5] = (bx[3] - bx[1]) * inv;
      if (!real) std::fill_n(g, 6, 0.0f);
      region_valid[static_cast<std::size_t>(s * K + k)] = real ? 1 : 0;
    }
  }
  const index_t B = b.questions;
  b.region_row.resize(static_cast<std::size_t>(B * K));
  b.word_ids.assign(static_cast<std::size_t>(B * L), 0);
  b.position_ids.assign(static_cast<std::size_t>(B * L), 0);
  b.key_valid.assign(static_cast<std::size_t>(B * L), 0);
  b.token_ids.assign(static_cast<std::size_t>(B * L), 0);
  b.answers.resize(static_cast<std::size_t>(B));
  b.source.resize(static_cast<std::size_t>(B));
  for (index_t s = 0; s < S; ++s) {
    const std::uint32_t scene = scene_ids[static_cast<std::size_t>(s)];
    const auto qs = d.questions.of_scene(scene);
    for (std::uint32_t j = 0; j < qps; ++j) {
      const index_t q = s * qps + j;
      const ex::scene_question& sq = qs[j];
      b.source[static_cast<std::size_t>(q)] = &sq;
      b.answers[static_cast<std::size_t>(q)] = sq.answer;
      const std::size_t base = static_cast<std::size_t>(q * L);
      b.word_ids[base] = cls_word, b.key_valid[base] = 1;
      // ids: regions (scene K + k), the other tokens (question L + position) above all of them
      const std::int64_t region_ids = static_cast<std::int64_t>(d.scenes.size()) * K;
      const std::int64_t question = static_cast<std::int64_t>(scene) * qps + j;
      for (index_t i = 0; i < L; ++i) b.token_ids[base + static_cast<std::size_t>(i)] = region_ids + question * L + i;
      for (index_t k = 0; k < K; ++k) {
        b.token_ids[base + 1 + static_cast<std::size_t>(k)] = static_cast<std::int64_t>(scene) * K + k;
        b.region_row[static_cast<std::size_t>(q * K + k)] = s * K + k;
        b.word_ids[base + 1 + static_cast<std::size_t>(k)] = region_word;
        b.key_valid[base + 1 + static_cast<std::size_t>(k)] = region_valid[static_cast<std::size_t>(s * K + k)];
      }
      for (int t = 0; t < ex::question_max_tokens; ++t) {
        const std::size_t i = base + 1 + static_cast<std::size_t>(K + t);
        b.word_ids[i] = sq.tokens[static_cast<std::size_t>(t)];
        b.position_ids[i] = 1 + t;
        b.key_valid[i] = t < sq.length ? 1 : 0;
      }
    }
  }
}

/// IoU of two [x1, y1, x2, y2] boxes, in double (the library's rule, detection/boxes.hpp).
inline double box_iou(const float* a, const float* b) {
  const double da[4] = {a[0], a[1], a[2], a[3]}, db[4] = {b[0], b[1], b[2], b[3]};
  return distill::detection_detail::iou(da, db);
}

/// For a student batch and a teacher batch of the same scenes and questions but other regions:
/// the teacher token each student token stands for (B L), -1 when none. [CLS] and words map to
/// themselves; student region k to the teacher region of best IoU in its scene, -1 when no real
/// teacher region overlaps it (or it is padding).
inline std::vector<std::int64_t> align_tokens(const vqa_batch& student, const vqa_batch& teacher) {
  if (student.scenes != teacher.scenes || student.questions != teacher.questions || student.L != teacher.L)
    throw std::logic_error("align_tokens: the batches hold other scenes or layouts");
  const index_t S = student.scenes, K = student.K, B = student.questions, L = student.L;
  std::vector<std::int64_t> region_match(static_cast<std::size_t>(S * K), -1);
  for (index_t r = 0; r < S * K; ++r) {
    if (!student.region_valid[static_cast<std::size_t>(r)]) continue;
    const index_t s = r / K;
    double best = 0;
    for (index_t k = 0; k < K; ++k)
      if (teacher.region_valid[static_cast<std::size_t>(s * K + k)])
        if (const double iou = box_iou(student.rois.data() + r * 5 + 1, teacher.rois.data() + (s * K + k) * 5 + 1); iou > best)
          best = iou, region_match[static_cast<std::size_t>(r)] = k;
  }
  std::vector<std::int64_t> map(static_cast<std::size_t>(B * L));
  for (index_t q = 0; q < B; ++q)
    for (index_t i = 0; i < L; ++i) {
      std::int64_t& t = map[static_cast<std::size_t>(q * L + i)];
      t = i;
      if (i >= 1 && i <= K) {
        const std::int64_t k = region_match[static_cast<std::size_t>(student.region_row[static_cast<std::size_t>(q * K + i - 1)])];
        t = k < 0 ? -1 : 1 + k;
      }
      if (!student.key_valid[static_cast<std::size_t>(q * L + i)]) t = -1;
    }
  return map;
}

/// Gathers the own-regions teacher's last attention [b, h, pi(i), pi(j)] and output rows pi(i)
/// onto the student's token positions (zeros where pi = -1; those tokens are masked).
inline void gather_teacher(distill::host_view<const float, 4> att, distill::host_view<const float, 2> rows, const std::vector<std::int64_t>& pi,
                           tensor& att_out, tensor& rows_out) {
  const index_t B = att.extent(0), H = att.extent(1), L = att.extent(2), W = rows.extent(1);
  distill::throw_if_error(att_out.resize({B, H, L, L}));
  distill::throw_if_error(rows_out.resize({B * L, W}));
  for (index_t b = 0; b < B; ++b) {
    const std::int64_t* p = pi.data() + b * L;
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < L; ++i)
        for (index_t j = 0; j < L; ++j)
          att_out.data()[((b * H + h) * L + i) * L + j] = p[i] < 0 || p[j] < 0 ? 0.0f : att(b, h, p[i], p[j]);
    for (index_t i = 0; i < L; ++i)
      if (p[i] < 0) std::fill_n(rows_out.data() + (b * L + i) * W, W, 0.0f);
      else std::copy_n(rows.data() + (b * L + p[i]) * W, W, rows_out.data() + (b * L + i) * W);
  }
}

/// How well the teacher's own regions cover the student's on a split (region_source::proposals):
/// the share of the student's real region tokens whose best-IoU teacher region overlaps at all
/// (the others are masked out of the attention and NCE terms), and overlaps at IoU >= 0.5.
struct alignment_stats {
  double matched = 0, matched50 = 0, mean_best_iou = 0;
};
inline alignment_stats region_alignment(const split_data& d, int K) {
  alignment_stats a;
  std::int64_t n = 0;
  for (std::uint32_t id = 0; id < d.scenes.size(); ++id) {
    const auto s = scene_regions(d, id, region_source::proposals, K, region_set::shared);
    const auto t = scene_regions(d, id, region_source::proposals, K, region_set::teacher_own);
    for (const auto& bs : s) {
      double best = 0;
      for (const auto& bt : t) best = std::max(best, box_iou(bs.data(), bt.data()));
      ++n, a.matched += best > 0, a.matched50 += best >= 0.5, a.mean_best_iou += best;
    }
  }
  if (n) a.matched /= static_cast<double>(n), a.matched50 /= static_cast<double>(n), a.mean_best_iou /= static_cast<double>(n);
  return a;
}

/// The scenes of step `step` of `epoch`: a permutation of the train scenes that depends only on
/// (seed, epoch), cut into consecutive groups (the last incomplete group is dropped).
inline std::vector<std::uint32_t> step_scenes(std::size_t n_scenes, int per_step, std::uint64_t seed, int epoch, index_t step) {
  const auto order = ex::shuffled_order(n_scenes, seed, static_cast<std::uint64_t>(epoch));
  const auto first = static_cast<std::size_t>(step) * static_cast<std::size_t>(per_step);
  return {order.begin() + static_cast<std::ptrdiff_t>(first), order.begin() + static_cast<std::ptrdiff_t>(first + static_cast<std::size_t>(per_step))};
}

}  // namespace dvlm
