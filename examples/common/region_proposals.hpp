// SPDX-License-Identifier: MIT
#pragma once
// One class-agnostic region proposal network (RPN, Ren et al. 2015) for the scene world, shared
// by the examples that need regions of a scene (DistillVLM: the student's proposals are used by
// teacher and student alike, so their region tokens line up one to one; ViLD, LSKD, RVL-BERT).
//
// Anchors: the sliding windows of detection/sliding_windows.hpp over the side x side canvas, sizes
// {16, 24, 32, 48, 64} x aspect ratios (h / w) {0.5, 1, 2}, stride 8 = the stride of the network's
// map, so each anchor of one (size, ratio) type sits on its own map cell: the cell holding its
// centre. Network (distill nn blocks): 3 x [conv 3x3 stride 2 -> batch norm -> ReLU] (96 -> 12),
// 2 more at stride 1 (receptive field 47 px), then a 1x1 convolution giving, per cell and anchor
// type t, 5 numbers: the objectness logit (channel 5 t) and the box deltas (5 t + 1 .. 5 t + 4,
// Faster R-CNN's RPN coder, weights (1, 1, 1, 1)).
//
// Training targets (library: anchor_labels, box_encode): positive at IoU >= 0.6 with a true box
// (0.7 in Faster R-CNN: on 500 Fashion-MNIST scenes no anchor reaches 0.7 for 54% of the items,
// which then have only their best anchor, 1.1 positives per item; at 0.6: 16%, 2.1 per item),
// background below 0.3, each box's best anchors positive too; per scene 64 anchors sampled,
// at most half positive (Faster R-CNN: 256 per image). Loss = binary cross-entropy on the sampled
// anchors' objectness (library: multilabel_soft_target with only its hard-label term, mean over
// the sampled anchors) + smooth L1 (beta 1/9) of the positives' deltas divided by the sampled
// count (library: smooth_l1, batchmean), as torchvision's RPN. AdamW with a cosine schedule.
// Inference: decode every anchor (box_decode_forward), clip to the canvas, drop boxes under 2 px,
// keep the 300 best by objectness, NMS at IoU 0.5 (non_max_suppression), first K per scene.
//
// Everything random (initialisation, batches, anchor sampling) follows the config's seed.
//
// Measured on Fashion-MNIST scenes (2 shared cores of an EPYC, OMP_WAIT_POLICY=passive: with the
// default spinning wait an oversubscribed machine runs several times slower): the default config
// trains on 3000 scenes in about 35 s; its first 10 proposals per test scene cover 0.99 of the
// items at IoU 0.5 and 0.79 at 0.7 (all 974 windows: 0.98 and 0.43; 10 random windows: 0.06 and
// 0.00). smoke() trains on 400 scenes in under 2 s and reaches 0.56 / 0.17.
//
// A trained network saves and loads itself (nn::checkpoint, keyed like the cache below).
//
// Proposal cache: later examples read the proposals of a scene set from a file instead of
// retraining (load_or_make_proposals). Format, version 1, integers little-endian:
//   header (56 bytes)
//      0  8  magic "RPNPROPS"
//      8  4  format version (1)
//     12  4  scenes
//     16  8  scene set checksum (scene_set_checksum of the scenes the proposals are of)
//     24  8  key: what made the proposals (proposal_cache_key: the config and the training scenes)
//     32  8  proposal rows in all
//     40  8  payload checksum: FNV-1a 64 of the payload
//     48  8  header checksum: FNV-1a 64 of bytes [0, 48)
//   payload: scenes x u32 proposal counts, then rows x 4 float32 boxes (x1, y1, x2, y2), then rows
//   x float32 objectness logits; a scene's rows best first.
// A file that is missing, of other scenes or another key, or corrupt (checksums, sizes, counts
// above the config's maximum, boxes outside the canvas) is not used: the proposals are made again
// and the file rewritten (atomically).

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <numeric>
#include <sstream>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "distill/core/file_io.hpp"
#include "distill/core/splitmix64.hpp"
#include "distill/detection/anchor_labels.hpp"
#include "distill/detection/boxes.hpp"
#include "distill/detection/nms.hpp"
#include "distill/detection/sliding_windows.hpp"
#include "distill/detection/smooth_l1.hpp"
#include "distill/losses/multilabel_soft_target.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/metrics/proposal_recall.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/init.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/schedule.hpp"
#include "distill/nn/sequential.hpp"
#include "scene_world.hpp"
#include "scene_world_io.hpp"

namespace examples {

struct region_proposal_config {
  std::vector<double> anchor_sizes = {16, 24, 32, 48, 64};  ///< sqrt of the anchor area, px
  std::vector<double> anchor_ratios = {0.5, 1.0, 2.0};      ///< height / width
  std::vector<int> widths = {16, 32, 32, 32, 32};           ///< channels of the 5 stages (3 of stride 2, then stride 1)
  int epochs = 4;
  int batch = 16;                 ///< scenes per step
  double lr = 3e-3, weight_decay = 1e-4;
  int sampled_anchors = 64;       ///< anchors per scene in the loss
  double positive_fraction = 0.5; ///< at most this share of them positive
  double positive_iou = 0.6, negative_iou = 0.3;
  int pre_nms = 300;              ///< best anchors (by objectness) that enter NMS
  float nms_iou = 0.5f;
  int max_proposals = 20;         ///< proposals kept per scene (ranked)
  std::uint64_t seed = 1;
  int threads = 2;

  /// A few seconds on 2 cores for a few hundred scenes: a narrow network, small batches.
  static region_proposal_config smoke() {
    region_proposal_config c;
    c.widths = {8, 16, 16, 16, 16};
    c.epochs = 3;
    c.batch = 8;
    c.lr = 5e-3;
    return c;
  }
};

/// Ranked proposals of a set of scenes: scene i owns rows [offsets[i], offsets[i + 1]).
struct proposal_set {
  std::vector<float> boxes;   ///< (rows, 4) x1, y1, x2, y2, best first within a scene
  std::vector<float> scores;  ///< (rows) objectness logit
  std::vector<std::size_t> offsets{0};
  std::size_t scenes() const { return offsets.size() - 1; }
  std::size_t count(std::size_t scene) const { return offsets[scene + 1] - offsets[scene]; }
};

namespace rpn_detail {

namespace nn = distill::nn;
using distill::index_t;
using distill::throw_if_error;
using tensor = nn::host_tensor<float>;

/// Normalised pixels of scenes ids (B, 1, S, S).
inline void write_scenes(const scene_set& set, std::span<const std::size_t> ids, float mean, float stddev, tensor& x) {
  const index_t S = set.params.side;
  throw_if_error(x.resize({static_cast<index_t>(ids.size()), 1, S, S}));
  const float a = 1.0f / (255.0f * stddev), b = -mean / stddev;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto px = set.image(ids[i]);
    float* out = x.data() + i * px.size();
    for (std::size_t k = 0; k < px.size(); ++k) out[k] = a * static_cast<float>(px[k]) + b;
  }
}

/// True boxes of a scene, (G, 4) floats.
inline std::vector<float> true_boxes(const scene& sc) {
  std::vector<float> b;
  for (const scene_item& it : sc.items)
    b.insert(b.end(), {static_cast<float>(it.box.x1), static_cast<float>(it.box.y1), static_cast<float>(it.box.x2), static_cast<float>(it.box.y2)});
  return b;
}

}  // namespace rpn_detail

/// The anchors and where each reads the network's output.
class anchor_grid {
 public:
  anchor_grid(const region_proposal_config& c, int side) : side_(side), cells_(side / stride), types_(static_cast<int>(c.anchor_sizes.size() * c.anchor_ratios.size())) {
    if (side % stride != 0) throw std::invalid_argument("anchor_grid: the canvas side must be a multiple of 8");
    const auto s = distill::make_view(c.anchor_sizes.data(), static_cast<distill::index_t>(c.anchor_sizes.size()));
    const auto r = distill::make_view(c.anchor_ratios.data(), static_cast<distill::index_t>(c.anchor_ratios.size()));
    const distill::sliding_window_options o{static_cast<double>(side), static_cast<double>(side), static_cast<double>(stride)};
    const distill::index_t n = distill::sliding_window_count(s, r, o);
    boxes_.resize(static_cast<std::size_t>(n) * 4);
    distill::throw_if_error(distill::sliding_window_boxes(distill::cpu{1}, s, r, distill::make_view(boxes_.data(), n, 4), o));
    // Windows come by size, then ratio, then position: type t = (size i, ratio j) owns the next
    // sliding_window_count({s_i}, {r_j}) rows.
    std::vector<distill::index_t> type_end;
    for (std::size_t i = 0; i < c.anchor_sizes.size(); ++i)
      for (std::size_t j = 0; j < c.anchor_ratios.size(); ++j)
        type_end.push_back((type_end.empty() ? 0 : type_end.back()) +
                           distill::sliding_window_count(distill::make_view(&c.anchor_sizes[i], 1), distill::make_view(&c.anchor_ratios[j], 1), o));
    std::vector<char> used(static_cast<std::size_t>(types_ * cells_ * cells_), 0);
    for (distill::index_t a = 0, t = 0; a < n; ++a) {
      const float* b = &boxes_[static_cast<std::size_t>(a) * 4];
      while (a >= type_end[static_cast<std::size_t>(t)]) ++t;
      const int cx = std::min(cells_ - 1, static_cast<int>(0.5f * (b[0] + b[2]) / stride));
      const int cy = std::min(cells_ - 1, static_cast<int>(0.5f * (b[1] + b[3]) / stride));
      const std::size_t slot = (static_cast<std::size_t>(t) * cells_ + cy) * cells_ + cx;
      if (t >= types_ || used[slot]) throw std::logic_error("anchor_grid: two anchors on one cell");
      used[slot] = 1;
      type_.push_back(static_cast<int>(t)), cell_.push_back(cy * cells_ + cx);
    }
  }
  static constexpr int stride = 8;
  distill::index_t size() const { return static_cast<distill::index_t>(type_.size()); }
  int types() const { return types_; }
  int cells() const { return cells_; }
  int side() const { return side_; }
  const std::vector<float>& boxes() const { return boxes_; }
  /// Offset of anchor a's value k (0 objectness, 1..4 deltas) in one scene's head output (5 T, cells, cells).
  std::size_t offset(distill::index_t a, int k) const {
    return (static_cast<std::size_t>(type_[static_cast<std::size_t>(a)]) * 5 + static_cast<std::size_t>(k)) * static_cast<std::size_t>(cells_ * cells_) +
           static_cast<std::size_t>(cell_[static_cast<std::size_t>(a)]);
  }

 private:
  int side_, cells_, types_;
  std::vector<float> boxes_;
  std::vector<int> type_, cell_;
};

/// Per-scene training targets: label of every anchor (1, 0, -1) and the deltas of the positives.
struct anchor_targets {
  std::vector<std::int32_t> labels;  ///< (A)
  std::vector<float> deltas;         ///< (A, 4), 0 where not positive
};

inline anchor_targets make_anchor_targets(const anchor_grid& grid, const scene& sc, const region_proposal_config& c) {
  namespace d = distill;
  const d::index_t A = grid.size();
  const std::vector<float> gt = rpn_detail::true_boxes(sc);
  const d::index_t G = static_cast<d::index_t>(gt.size() / 4);
  anchor_targets t;
  t.labels.resize(static_cast<std::size_t>(A));
  t.deltas.assign(static_cast<std::size_t>(A) * 4, 0.0f);
  std::vector<std::int64_t> matched(static_cast<std::size_t>(A));
  std::vector<float> miou(static_cast<std::size_t>(A));
  d::anchor_label_options o;
  o.positive_iou = c.positive_iou, o.negative_iou = c.negative_iou;
  const auto anchors = d::make_view(grid.boxes().data(), A, 4);
  d::throw_if_error(d::anchor_labels(d::cpu{1}, anchors, d::make_view(gt.data(), G, 4), d::make_view(t.labels.data(), A), d::make_view(matched.data(), A),
                                     d::make_view(miou.data(), A), o));
  std::vector<float> target(static_cast<std::size_t>(A) * 4, 0.0f);
  for (d::index_t a = 0; a < A; ++a) {
    const std::int64_t m = matched[static_cast<std::size_t>(a)];
    if (m >= 0) std::copy_n(&gt[static_cast<std::size_t>(m) * 4], 4, &target[static_cast<std::size_t>(a) * 4]);
    else std::copy_n(&grid.boxes()[static_cast<std::size_t>(a) * 4], 4, &target[static_cast<std::size_t>(a) * 4]);
  }
  d::throw_if_error(d::box_encode(d::cpu{1}, anchors, d::make_view(target.data(), A, 4), d::make_view(t.deltas.data(), A, 4), d::box_coder_options{}));
  for (d::index_t a = 0; a < A; ++a)
    if (t.labels[static_cast<std::size_t>(a)] != d::anchor_positive) std::fill_n(&t.deltas[static_cast<std::size_t>(a) * 4], 4, 0.0f);
  return t;
}

/// Up to `n` anchors of a scene for the loss: at most n * fraction positives, the rest
/// background, each drawn without replacement from `rng` (fewer when the scene has fewer).
inline std::vector<distill::index_t> sample_anchors(const anchor_targets& t, int n, double fraction, distill::splitmix64& rng) {
  std::vector<distill::index_t> pos, neg;
  for (std::size_t a = 0; a < t.labels.size(); ++a) {
    if (t.labels[a] == distill::anchor_positive) pos.push_back(static_cast<distill::index_t>(a));
    if (t.labels[a] == distill::anchor_negative) neg.push_back(static_cast<distill::index_t>(a));
  }
  auto draw = [&](std::vector<distill::index_t>& from, std::size_t k, std::vector<distill::index_t>& into) {
    k = std::min(k, from.size());
    for (std::size_t i = 0; i < k; ++i) {  // partial Fisher-Yates
      const std::size_t j = i + static_cast<std::size_t>(rng.below(from.size() - i));
      std::swap(from[i], from[j]);
      into.push_back(from[i]);
    }
  };
  std::vector<distill::index_t> out;
  draw(pos, static_cast<std::size_t>(static_cast<double>(n) * fraction), out);
  draw(neg, static_cast<std::size_t>(n) - out.size(), out);
  return out;
}

/// What training reports.
struct rpn_training_log {
  std::vector<double> epoch_loss;  ///< mean loss per step of each epoch
  double seconds = 0;              ///< training time
};

class region_proposal_network {
 public:
  region_proposal_network(const region_proposal_config& c, int side) : config_(c), grid_(c, side) {
    namespace nn = distill::nn;
    if (c.widths.size() != 5) throw std::invalid_argument("region_proposal_network: widths needs 5 stage widths");
    int in = 1;
    for (int k = 0; k < 5; ++k) {
      const distill::index_t s = k < 3 ? 2 : 1;
      const std::string name = "rpn.stage" + std::to_string(k);
      net_.add(nn::conv2d<float>(name + ".conv", in, c.widths[static_cast<std::size_t>(k)], 3, {s, s, 1, 1}, {c.seed, nn::init_scheme::kaiming_normal, 0}, false));
      net_.add(nn::batch_norm<float>(name + ".bn", c.widths[static_cast<std::size_t>(k)]));
      net_.add(nn::activation::relu);
      in = c.widths[static_cast<std::size_t>(k)];
    }
    net_.add(nn::conv2d<float>("rpn.head", in, 5 * grid_.types(), 1, {1, 1, 0, 0}, {c.seed, nn::init_scheme::torch_default, 0}, true));
  }

  const anchor_grid& anchors() const { return grid_; }
  const region_proposal_config& config() const { return config_; }
  distill::nn::parameter_list<float, distill::host_space> parameters() { return net_.parameters(); }

  /// Trains on `set` (every scene's true boxes; set.params.side must match). Pixel statistics
  /// come from the set.
  rpn_training_log train(const scene_set& set) {
    namespace d = distill;
    namespace nn = distill::nn;
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    check_side(set);
    measure_pixels(set);
    const d::cpu ctx{config_.threads};
    std::vector<anchor_targets> targets;
    targets.reserve(set.size());
    for (const scene& sc : set.scenes) targets.push_back(make_anchor_targets(grid_, sc, config_));
    const std::size_t B = static_cast<std::size_t>(config_.batch);
    const std::size_t steps = set.size() / B;
    if (steps == 0) throw std::invalid_argument("region_proposal_network::train: fewer scenes than one batch");
    auto params = net_.parameters();
    nn::adamw<float> opt(params, nn::adam_options{config_.lr, 0.9, 0.999, 1e-8, config_.weight_decay, true, 0.0});
    const auto schedule = nn::lr_schedule::cosine(config_.lr, static_cast<d::index_t>(steps) * config_.epochs);
    rpn_training_log log;
    std::vector<std::size_t> order(set.size());
    rpn_detail::tensor x, d_out;
    std::vector<float> logits, d_logits, deltas, d_deltas, target_deltas, weights;
    std::vector<std::uint8_t> labels;
    std::vector<std::size_t> where;  // offset in the head output of each sampled anchor
    for (int epoch = 0; epoch < config_.epochs; ++epoch) {
      d::splitmix64 rng(d::splitmix64_mix(config_.seed ^ 0x5250'4E00ull) + static_cast<std::uint64_t>(epoch));
      std::iota(order.begin(), order.end(), std::size_t(0));
      for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[static_cast<std::size_t>(rng.below(i))]);
      net_.set_training(true);
      double total = 0;
      for (std::size_t step = 0; step < steps; ++step) {
        const std::span<const std::size_t> ids(order.data() + step * B, B);
        rpn_detail::write_scenes(set, ids, mean_, stddev_, x);
        throw_if_error(net_.forward(ctx, x.cview<4>()));
        const rpn_detail::tensor& out = net_.output();
        const std::size_t per_scene = static_cast<std::size_t>(out.size()) / B;
        logits.clear(), deltas.clear(), target_deltas.clear(), weights.clear(), labels.clear(), where.clear();
        for (std::size_t i = 0; i < B; ++i) {
          const anchor_targets& t = targets[ids[i]];
          for (const d::index_t a : sample_anchors(t, config_.sampled_anchors, config_.positive_fraction, rng)) {
            const std::size_t base = i * per_scene;
            where.push_back(base + grid_.offset(a, 0));
            logits.push_back(out.data()[where.back()]);
            for (int k = 1; k <= 4; ++k) deltas.push_back(out.data()[base + grid_.offset(a, k)]);
            const bool positive = t.labels[static_cast<std::size_t>(a)] == d::anchor_positive;
            labels.push_back(positive ? 1 : 0);
            weights.push_back(positive ? 1.0f : 0.0f);
            target_deltas.insert(target_deltas.end(), &t.deltas[static_cast<std::size_t>(a) * 4], &t.deltas[static_cast<std::size_t>(a) * 4 + 4]);
          }
        }
        const d::index_t M = static_cast<d::index_t>(logits.size());
        d_logits.assign(logits.size(), 0.0f), d_deltas.assign(deltas.size(), 0.0f);
        float cls_loss = 0, box_loss = 0;
        d::multilabel_soft_target_options bce;
        bce.soft_weight = 0.0f, bce.hard_label_weight = 1.0f, bce.reduction = d::reduction::mean;
        d::multilabel_soft_target_host_inputs<float> in;
        in.labels = d::make_view(static_cast<const std::uint8_t*>(labels.data()), M, 1);
        const auto lv = d::make_view(static_cast<const float*>(logits.data()), M, 1);
        throw_if_error(d::multilabel_soft_target_forward_backward(ctx, lv, lv, in, d::make_view(&cls_loss, 1), d::make_view(d_logits.data(), M, 1), {}, bce));
        d::smooth_l1_options l1;
        l1.reduction = d::reduction::batchmean;
        throw_if_error(d::smooth_l1_forward_backward(ctx, d::make_view(static_cast<const float*>(deltas.data()), M, 4),
                                                     d::make_view(static_cast<const float*>(target_deltas.data()), M, 4),
                                                     d::make_view(static_cast<const float*>(weights.data()), M), d::make_view(&box_loss, 1),
                                                     d::make_view(d_deltas.data(), M, 4), {}, l1));
        throw_if_error(d_out.resize(out.shape()));
        std::fill_n(d_out.data(), d_out.size(), 0.0f);
        for (std::size_t m = 0; m < where.size(); ++m) {
          d_out.data()[where[m]] = d_logits[m];
          for (int k = 1; k <= 4; ++k) d_out.data()[where[m] + static_cast<std::size_t>(k) * grid_.cells() * grid_.cells()] = d_deltas[m * 4 + static_cast<std::size_t>(k) - 1];
        }
        throw_if_error(nn::zero_grad(ctx, params));
        throw_if_error(net_.backward(ctx, x.cview<4>(), d_out.cview<4>(), d::host_view<float, 1>{}));
        opt.options.lr = schedule(static_cast<d::index_t>(static_cast<std::size_t>(epoch) * steps + step));
        throw_if_error(opt.step(ctx));
        total += static_cast<double>(cls_loss) + static_cast<double>(box_loss);
      }
      log.epoch_loss.push_back(total / static_cast<double>(steps));
    }
    net_.set_training(false);
    log.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    return log;
  }

  /// Saves the trained network (parameters, batch-norm statistics, pixel statistics) with `key`
  /// (e.g. proposal_cache_key) as an nn::checkpoint, atomically. Throws on I/O errors.
  void save(const std::filesystem::path& path, std::uint64_t key) {
    distill::nn::checkpoint ck;
    throw_if_error(ck.add_parameters(net_.parameters()));
    auto bits = [](float v) { std::uint32_t u; std::memcpy(&u, &v, 4); return std::to_string(u); };  // exact
    ck.put_string("rpn", std::to_string(key) + " " + bits(mean_) + " " + bits(stddev_));
    std::error_code ec;
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
    throw_if_error(ck.save(path.string()));
  }
  /// Restores a network saved with the same `key` (and so the same config); false (and why) when
  /// the file is missing, unreadable or of another key, the network then unchanged.
  bool load(const std::filesystem::path& path, std::uint64_t key, std::string& why) {
    if (!std::filesystem::exists(path)) return why = "missing", false;
    distill::nn::checkpoint ck;
    std::string meta;
    distill::status st = distill::nn::checkpoint::load(path.string(), ck);
    if (st.ok()) st = ck.get_string("rpn", meta);
    if (!st.ok()) return why = st.message(), false;
    std::istringstream in(meta);
    std::uint64_t k = 0;
    std::uint32_t mean_bits = 0, stddev_bits = 0;
    float mean = 0, stddev = 0;
    if (in >> k >> mean_bits >> stddev_bits) std::memcpy(&mean, &mean_bits, 4), std::memcpy(&stddev, &stddev_bits, 4);
    if (!in || k != key || !(stddev > 0) || !std::isfinite(mean)) return why = "made with another configuration or training set", false;
    if (st = ck.restore_parameters(net_.parameters()); !st.ok()) return why = st.message(), false;
    mean_ = mean, stddev_ = stddev;
    net_.set_training(false);
    return true;
  }

  /// Ranked proposals (at most config().max_proposals per scene) of every scene of `set`.
  proposal_set propose(const scene_set& set) {
    namespace d = distill;
    check_side(set);
    const d::cpu ctx{config_.threads};
    net_.set_training(false);
    proposal_set result;
    const d::index_t A = grid_.size();
    const float side = static_cast<float>(grid_.side());
    std::vector<float> scores(static_cast<std::size_t>(A)), deltas(static_cast<std::size_t>(A) * 4), boxes(static_cast<std::size_t>(A) * 4);
    std::vector<std::size_t> ids;
    rpn_detail::tensor x;
    for (std::size_t first = 0; first < set.size(); first += static_cast<std::size_t>(config_.batch)) {
      ids.clear();
      for (std::size_t i = first; i < std::min(set.size(), first + static_cast<std::size_t>(config_.batch)); ++i) ids.push_back(i);
      rpn_detail::write_scenes(set, ids, mean_, stddev_, x);
      throw_if_error(net_.forward(ctx, x.cview<4>()));
      const rpn_detail::tensor& out = net_.output();
      const std::size_t per_scene = static_cast<std::size_t>(out.size()) / ids.size();
      for (std::size_t i = 0; i < ids.size(); ++i) {
        const float* o = out.data() + i * per_scene;
        for (d::index_t a = 0; a < A; ++a) {
          scores[static_cast<std::size_t>(a)] = o[grid_.offset(a, 0)];
          for (int k = 1; k <= 4; ++k) deltas[static_cast<std::size_t>(a) * 4 + static_cast<std::size_t>(k) - 1] = o[grid_.offset(a, k)];
        }
        append_ranked(ctx, scores, deltas, boxes, side, result);
      }
    }
    return result;
  }

  /// Recall of the true boxes of `set` by the first K proposals of each scene, at an IoU threshold.
  static double recall(const proposal_set& p, const scene_set& set, int K, double iou) {
    namespace d = distill;
    std::vector<std::int64_t> p_images, g_images;
    std::vector<float> gt;
    for (std::size_t s = 0; s < p.scenes(); ++s) p_images.insert(p_images.end(), p.count(s), static_cast<std::int64_t>(s));
    for (std::size_t s = 0; s < set.size(); ++s) {
      const std::vector<float> b = rpn_detail::true_boxes(set.scenes[s]);
      gt.insert(gt.end(), b.begin(), b.end());
      g_images.insert(g_images.end(), b.size() / 4, static_cast<std::int64_t>(s));
    }
    const auto P = static_cast<d::index_t>(p_images.size()), G = static_cast<d::index_t>(g_images.size());
    d::proposal_recall_options o;
    o.iou_threshold = iou, o.max_per_image = K;
    double r = 0;
    throw_if_error(d::proposal_recall(d::cpu{1}, d::image_box_list<float>{d::make_view(p.boxes.data(), P, 4), d::make_view(p_images.data(), P)},
                                      d::image_box_list<float>{d::make_view(gt.data(), G, 4), d::make_view(g_images.data(), G)}, r, {}, o));
    return r;
  }

 private:
  void check_side(const scene_set& set) const {
    if (set.params.side != grid_.side()) throw std::invalid_argument("region_proposal_network: scenes of another canvas side");
  }
  void measure_pixels(const scene_set& set) {
    double s = 0, ss = 0;
    for (const std::uint8_t v : set.pixels) s += v, ss += static_cast<double>(v) * v;
    const double n = std::max<double>(1.0, static_cast<double>(set.pixels.size())) * 255.0;
    const double m = s / n;
    mean_ = static_cast<float>(m);
    stddev_ = static_cast<float>(std::sqrt(std::max(ss / (n * 255.0) - m * m, 1e-8)));
  }

  /// Decode, clip, drop tiny boxes, best pre_nms, NMS, first max_proposals: appended to `out`.
  void append_ranked(const distill::cpu& ctx, const std::vector<float>& scores, const std::vector<float>& deltas, std::vector<float>& boxes, float side,
                     proposal_set& out) const {
    namespace d = distill;
    const d::index_t A = grid_.size();
    const auto anchors = d::make_view(grid_.boxes().data(), A, 4);
    throw_if_error(d::box_decode_forward(ctx, anchors, d::make_view(deltas.data(), A, 4), d::make_view(boxes.data(), A, 4), d::box_coder_options{}));
    d::box_clip_options clip;
    clip.width = side, clip.height = side;
    throw_if_error(d::box_clip(ctx, d::make_view(static_cast<const float*>(boxes.data()), A, 4), d::make_view(boxes.data(), A, 4), clip));
    std::vector<d::index_t> order;
    for (d::index_t a = 0; a < A; ++a) {
      const float* b = &boxes[static_cast<std::size_t>(a) * 4];
      if (b[2] - b[0] >= 2.0f && b[3] - b[1] >= 2.0f) order.push_back(a);
    }
    const std::size_t top = std::min(order.size(), static_cast<std::size_t>(config_.pre_nms));
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(top), order.end(), [&](d::index_t a, d::index_t b) {
      return scores[static_cast<std::size_t>(a)] > scores[static_cast<std::size_t>(b)] || (scores[static_cast<std::size_t>(a)] == scores[static_cast<std::size_t>(b)] && a < b);
    });
    order.resize(top);
    std::vector<float> cand_boxes, cand_scores;
    for (const d::index_t a : order) {
      cand_boxes.insert(cand_boxes.end(), &boxes[static_cast<std::size_t>(a) * 4], &boxes[static_cast<std::size_t>(a) * 4 + 4]);
      cand_scores.push_back(scores[static_cast<std::size_t>(a)]);
    }
    const auto n = static_cast<d::index_t>(cand_scores.size());
    std::vector<std::int64_t> keep(static_cast<std::size_t>(n));
    d::index_t kept = 0;
    d::nms_options o;
    o.iou_threshold = config_.nms_iou, o.max_output = config_.max_proposals;
    throw_if_error(d::non_max_suppression(ctx, d::make_view(static_cast<const float*>(cand_boxes.data()), n, 4), d::make_view(static_cast<const float*>(cand_scores.data()), n),
                                          d::host_view<const std::int64_t, 1>{}, d::make_view(keep.data(), n), kept, o));
    for (d::index_t k = 0; k < kept; ++k) {
      const std::size_t c = static_cast<std::size_t>(keep[static_cast<std::size_t>(k)]);
      out.boxes.insert(out.boxes.end(), &cand_boxes[c * 4], &cand_boxes[c * 4 + 4]);
      out.scores.push_back(cand_scores[c]);
    }
    out.offsets.push_back(out.scores.size());
  }

  region_proposal_config config_;
  anchor_grid grid_;
  distill::nn::sequential<float> net_;
  float mean_ = 0, stddev_ = 1;
};

/// Baseline: K sliding windows per scene drawn at random (without replacement, seeded), or all
/// of them (K < 0), as a proposal set.
inline proposal_set random_windows(const anchor_grid& grid, std::size_t scenes, int K, std::uint64_t seed) {
  proposal_set p;
  const std::size_t A = static_cast<std::size_t>(grid.size());
  std::vector<std::size_t> order(A);
  distill::splitmix64 rng(distill::splitmix64_mix(seed ^ 0x57494E44ull));
  for (std::size_t s = 0; s < scenes; ++s) {
    std::iota(order.begin(), order.end(), std::size_t(0));
    const std::size_t k = K < 0 ? A : std::min(A, static_cast<std::size_t>(K));
    if (K >= 0)
      for (std::size_t i = 0; i < k; ++i) std::swap(order[i], order[i + static_cast<std::size_t>(rng.below(A - i))]);
    for (std::size_t i = 0; i < k; ++i) {
      p.boxes.insert(p.boxes.end(), &grid.boxes()[order[i] * 4], &grid.boxes()[order[i] * 4 + 4]);
      p.scores.push_back(0.0f);
    }
    p.offsets.push_back(p.scores.size());
  }
  return p;
}

// ---- proposal cache ----------------------------------------------------------------------------

inline constexpr std::array<char, 8> proposal_file_magic = {'R', 'P', 'N', 'P', 'R', 'O', 'P', 'S'};
inline constexpr std::uint32_t proposal_file_format_version = 1;
inline constexpr std::size_t proposal_file_header_bytes = 56;

/// What decides a trained network's proposals: every config field but `threads` (which changes
/// only the rounding of the summed gradients) and the training scenes.
inline std::uint64_t proposal_cache_key(const region_proposal_config& c, const scene_set& train) {
  std::vector<unsigned char> b;
  auto f64 = [&](double v) { std::uint64_t u; std::memcpy(&u, &v, 8); distill::append_le64(b, u); };
  for (double v : c.anchor_sizes) f64(v);
  f64(-1);
  for (double v : c.anchor_ratios) f64(v);
  f64(-1);
  for (int v : c.widths) distill::append_le32(b, static_cast<std::uint32_t>(v));
  for (int v : {c.epochs, c.batch, c.sampled_anchors, c.pre_nms, c.max_proposals}) distill::append_le32(b, static_cast<std::uint32_t>(v));
  for (double v : {c.lr, c.weight_decay, c.positive_fraction, c.positive_iou, c.negative_iou, static_cast<double>(c.nms_iou)}) f64(v);
  distill::append_le64(b, c.seed);
  distill::append_le64(b, scene_set_checksum(train));
  return distill::fnv1a64::of(b);
}

namespace rpn_detail {
inline std::uint64_t le(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
inline float le_float(const unsigned char* p) {
  const auto u = static_cast<std::uint32_t>(le(p, 4));
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace rpn_detail

/// Writes `p`, the proposals of `scenes` made as `key` says, atomically. Throws on I/O errors.
inline void write_proposals(const std::filesystem::path& path, const proposal_set& p, const scene_set& scenes, std::uint64_t key) {
  if (p.scenes() != scenes.size() || p.boxes.size() != 4 * p.scores.size() || p.offsets.back() != p.scores.size())
    throw std::invalid_argument("write_proposals: the proposal set does not match its scenes");
  std::vector<unsigned char> payload, header(proposal_file_magic.begin(), proposal_file_magic.end());
  for (std::size_t s = 0; s < p.scenes(); ++s) distill::append_le32(payload, static_cast<std::uint32_t>(p.count(s)));
  auto put = [&](float v) { std::uint32_t u; std::memcpy(&u, &v, 4); distill::append_le32(payload, u); };
  for (float v : p.boxes) put(v);
  for (float v : p.scores) put(v);
  distill::append_le32(header, proposal_file_format_version);
  distill::append_le32(header, static_cast<std::uint32_t>(p.scenes()));
  distill::append_le64(header, scene_set_checksum(scenes));
  distill::append_le64(header, key);
  distill::append_le64(header, p.scores.size());
  distill::append_le64(header, distill::fnv1a64::of(payload));
  distill::append_le64(header, distill::fnv1a64::of(header));
  distill::atomic_write_options opt;
  opt.create_parent_directories = true;
  const distill::status st = distill::write_file_atomically("write_proposals", path.string(), {header, payload}, opt);
  if (!st.ok()) throw std::runtime_error(st.message());
}

/// Reads the proposals of `scenes` stored at `path` with `key` into `out`; returns false (and
/// says why) when the file is missing, of other scenes or another key, or corrupt.
inline bool read_proposals(const std::filesystem::path& path, const scene_set& scenes, std::uint64_t key, int max_per_scene, proposal_set& out,
                           std::string& why) {
  using rpn_detail::le;
  out = proposal_set{};
  if (!std::filesystem::exists(path)) return why = "missing", false;
  std::vector<unsigned char> f;
  if (const distill::status st = distill::read_file("read_proposals", path.string(), f); !st.ok()) return why = st.message(), false;
  const std::size_t H = proposal_file_header_bytes;
  if (f.size() < H || !std::equal(proposal_file_magic.begin(), proposal_file_magic.end(), f.begin()) ||
      le(&f[48], 8) != distill::fnv1a64::of(std::span<const unsigned char>(f.data(), 48)))
    return why = "corrupt header", false;
  if (le(&f[8], 4) != proposal_file_format_version) return why = "another format version", false;
  if (le(&f[12], 4) != scenes.size() || le(&f[16], 8) != scene_set_checksum(scenes)) return why = "made for other scenes", false;
  if (le(&f[24], 8) != key) return why = "made by another network or configuration", false;
  const std::uint64_t rows = le(&f[32], 8), n = scenes.size();
  if (rows > n * static_cast<std::uint64_t>(std::max(0, max_per_scene)) || f.size() != H + 4 * n + 20 * rows) return why = "corrupt: sizes", false;
  if (le(&f[40], 8) != distill::fnv1a64::of(std::span<const unsigned char>(f.data() + H, f.size() - H))) return why = "corrupt: payload checksum", false;
  const unsigned char* q = f.data() + H;
  for (std::size_t s = 0; s < n; ++s) {
    const std::uint64_t c = le(q + 4 * s, 4);
    if (c > static_cast<std::uint64_t>(max_per_scene)) return why = "corrupt: proposal count", false;
    out.offsets.push_back(out.offsets.back() + static_cast<std::size_t>(c));
  }
  if (out.offsets.back() != rows) return why = "corrupt: proposal counts", false;
  q += 4 * n;
  const float side = static_cast<float>(scenes.params.side);
  for (std::uint64_t i = 0; i < 4 * rows; ++i) out.boxes.push_back(rpn_detail::le_float(q + 4 * i));
  for (std::uint64_t i = 0; i < rows; ++i) out.scores.push_back(rpn_detail::le_float(q + 16 * rows + 4 * i));
  for (std::uint64_t r = 0; r < rows; ++r) {
    const float* b = &out.boxes[4 * r];
    if (!(b[0] >= 0 && b[1] >= 0 && b[2] <= side && b[3] <= side && b[2] >= b[0] && b[3] >= b[1]) || !std::isfinite(out.scores[r]))
      return out = proposal_set{}, why = "corrupt: box " + std::to_string(r), false;
  }
  return true;
}

/// The cached proposals of `scenes` when the file at `path` holds them for `key`; otherwise
/// make() computes them and the file is (re)written. Says on `log` what happened.
inline proposal_set load_or_make_proposals(const std::filesystem::path& path, const scene_set& scenes, std::uint64_t key, int max_per_scene,
                                           const std::function<proposal_set()>& make, std::ostream& log = std::cerr) {
  proposal_set p;
  std::string why;
  if (read_proposals(path, scenes, key, max_per_scene, p, why)) return p;
  log << "  proposals " << path.string() << ": " << why << ", making them\n";
  p = make();
  write_proposals(path, p, scenes, key);
  return p;
}

}  // namespace examples
