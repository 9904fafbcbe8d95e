// SPDX-License-Identifier: MIT
// The scene world's region proposal network (examples/common/region_proposals.hpp) on synthetic
// "Fashion-MNIST" scenes: the anchor grid (every sliding window on its own map cell, the cell of
// its centre), training targets (positives decode back onto their true box), anchor sampling,
// the random-window baseline, and the smoke training setting: its proposals must recall the
// true boxes far better than the untrained network and than as many random windows.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../../examples/common/region_proposals.hpp"
#include "reference/detection_ref.hpp"
#include "scene_world_support.hpp"

using namespace examples;
using namespace scene_world_test;

TEST_CASE("region proposals: the anchor grid", "[scene_world][region_proposals]") {
  const region_proposal_config c;
  const anchor_grid g(c, 96);
  REQUIRE(g.types() == 15);
  REQUIRE(g.cells() == 12);
  // every sliding window, each inside the canvas, of one of the 15 shapes, and no two anchors
  // reading the same value of the head
  std::set<std::size_t> offsets;
  for (distill::index_t a = 0; a < g.size(); ++a) {
    const float* b = &g.boxes()[static_cast<std::size_t>(a) * 4];
    CHECK(b[0] >= 0);
    CHECK(b[1] >= 0);
    CHECK(b[2] <= 96);
    CHECK(b[3] <= 96);
    const std::size_t o = g.offset(a, 0);
    CHECK(offsets.insert(o).second);
    // the cell is the one holding the centre (clamped to the map)
    const std::size_t cell = o % 144, type = o / 144 / 5;
    CHECK(o / 144 % 5 == 0);
    CHECK(static_cast<int>(cell % 12) == std::min(11, static_cast<int>(std::floor(0.5 * (b[0] + b[2]) / 8))));
    CHECK(static_cast<int>(cell / 12) == std::min(11, static_cast<int>(std::floor(0.5 * (b[1] + b[3]) / 8))));
    const double size = c.anchor_sizes[type / 3], ratio = c.anchor_ratios[type % 3];
    CHECK(b[2] - b[0] == Approx(size / std::sqrt(ratio)).epsilon(1e-5));
    CHECK(b[3] - b[1] == Approx(size * std::sqrt(ratio)).epsilon(1e-5));
    for (int k = 1; k <= 4; ++k) CHECK(g.offset(a, k) == o + static_cast<std::size_t>(k) * 144);
  }
  CHECK(offsets.size() == static_cast<std::size_t>(g.size()));
}

TEST_CASE("region proposals: targets, sampling and the random baseline", "[scene_world][region_proposals]") {
  const auto data = synthetic_fashion(40, 12, 11);
  const auto p = small_params(scene_split::train, 30);
  const scene_set s = generate_scenes(scene_sources(data, p), p);
  const region_proposal_config c;
  const anchor_grid g(c, 96);
  distill::splitmix64 rng(5);
  for (const scene& sc : s.scenes) {
    const anchor_targets t = make_anchor_targets(g, sc, c);
    // every item has a positive anchor; a positive's deltas decode onto a true box (IoU ~1) that
    // the anchor overlaps best; a negative overlaps every box below 0.3
    std::vector<bool> item_has_positive(sc.items.size(), false);
    for (distill::index_t a = 0; a < g.size(); ++a) {
      const float* b = &g.boxes()[static_cast<std::size_t>(a) * 4];
      const distill_ref::box anchor{b[0], b[1], b[2], b[3]};
      double best = 0;
      std::size_t best_item = 0;
      for (std::size_t i = 0; i < sc.items.size(); ++i) {
        const auto& ib = sc.items[i].box;
        const double v = distill_ref::iou_ref(anchor, {double(ib.x1), double(ib.y1), double(ib.x2), double(ib.y2)});
        if (v > best) best = v, best_item = i;
      }
      const std::int32_t label = t.labels[static_cast<std::size_t>(a)];
      if (label == distill::anchor_negative) CHECK(best < c.negative_iou);
      if (label == distill::anchor_ignored) CHECK((best >= c.negative_iou && best < c.positive_iou));
      if (label != distill::anchor_positive) continue;
      item_has_positive[best_item] = true;
      const float* d = &t.deltas[static_cast<std::size_t>(a) * 4];
      const distill_ref::box decoded = distill_ref::decode_ref(anchor, {d[0], d[1], d[2], d[3]}, distill_ref::coder_ref{});
      const auto& ib = sc.items[best_item].box;
      CHECK(distill_ref::iou_ref(decoded, {double(ib.x1), double(ib.y1), double(ib.x2), double(ib.y2)}) > 0.999);
    }
    CHECK(std::count(item_has_positive.begin(), item_has_positive.end(), true) == static_cast<std::ptrdiff_t>(sc.items.size()));
    // sampling: distinct anchors, no ignored ones, at most half positive, 64 in all
    const auto picked = sample_anchors(t, 64, 0.5, rng);
    CHECK(picked.size() == 64);
    CHECK(std::set<distill::index_t>(picked.begin(), picked.end()).size() == picked.size());
    int positives = 0;
    for (const distill::index_t a : picked) {
      CHECK(t.labels[static_cast<std::size_t>(a)] != distill::anchor_ignored);
      positives += t.labels[static_cast<std::size_t>(a)] == distill::anchor_positive;
    }
    const auto all_pos = std::count(t.labels.begin(), t.labels.end(), distill::anchor_positive);
    CHECK(positives == std::min<long>(32, static_cast<long>(all_pos)));
  }
  const proposal_set r = random_windows(g, 3, 10, 1);
  REQUIRE(r.scenes() == 3);
  for (std::size_t i = 0; i < 3; ++i) CHECK(r.count(i) == 10);
  const proposal_set all = random_windows(g, 2, -1, 1);
  CHECK(all.count(1) == static_cast<std::size_t>(g.size()));
}

TEST_CASE("region proposals: the smoke training beats the untrained network and random windows", "[scene_world][region_proposals]") {
  const auto data = synthetic_fashion(60, 20, 12);
  auto p = small_params(scene_split::train, 320);
  const scene_set train = generate_scenes(scene_sources(data, p), p);
  auto pv = small_params(scene_split::validation, 60);
  const scene_set val = generate_scenes(scene_sources(data, pv), pv);
  const region_proposal_config c = region_proposal_config::smoke();
  region_proposal_network untrained(c, 96), net(c, 96);
  const rpn_training_log log = net.train(train);
  REQUIRE(log.epoch_loss.size() == static_cast<std::size_t>(c.epochs));
  CHECK(log.epoch_loss.back() < log.epoch_loss.front());
  const proposal_set ours = net.propose(val), before = untrained.propose(val);
  REQUIRE(ours.scenes() == val.size());
  for (std::size_t i = 0; i < ours.scenes(); ++i) {
    CHECK(ours.count(i) <= static_cast<std::size_t>(c.max_proposals));
    for (std::size_t k = ours.offsets[i] + 1; k < ours.offsets[i + 1]; ++k) CHECK(ours.scores[k] <= ours.scores[k - 1]);  // ranked
  }
  const proposal_set random10 = random_windows(net.anchors(), val.size(), 10, 3);
  const double trained = region_proposal_network::recall(ours, val, 10, 0.5);
  const double untrained_recall = region_proposal_network::recall(before, val, 10, 0.5);
  const double random_recall = region_proposal_network::recall(random10, val, 10, 0.5);
  INFO("recall@10 (IoU 0.5): trained " << trained << ", untrained " << untrained_recall << ", random windows " << random_recall << "; training "
                                        << log.seconds << " s");
  CHECK(trained > untrained_recall + 0.15);
  CHECK(trained > random_recall + 0.15);
  CHECK(region_proposal_network::recall(ours, val, 20, 0.5) >= trained);
  // a saved network proposes the same boxes after loading; another key is refused
  const fs::path dir = temp_dir("rpn_checkpoint"), file = dir / "rpn.ckpt";
  const std::uint64_t key = proposal_cache_key(c, train);
  net.save(file, key);
  region_proposal_network restored(c, 96);
  std::string why;
  CHECK_FALSE(restored.load(file, key + 1, why));
  CHECK_FALSE(restored.load(dir / "missing.ckpt", key, why));
  REQUIRE(restored.load(file, key, why));
  const proposal_set again = restored.propose(val);
  CHECK(again.boxes == ours.boxes);
  CHECK(again.offsets == ours.offsets);
  fs::remove_all(dir);
}

TEST_CASE("region proposals: the proposal cache round-trips and refuses other or corrupt files", "[scene_world][region_proposals]") {
  const auto data = synthetic_fashion(40, 12, 13);
  const auto p = small_params(scene_split::test, 12);
  const scene_set s = generate_scenes(scene_sources(data, p), p);
  auto p2 = p;
  p2.seed = 99;
  const scene_set other = generate_scenes(scene_sources(data, p2), p2);
  const region_proposal_config c = region_proposal_config::smoke();
  region_proposal_network net(c, 96);  // untrained: any ranked proposals will do here
  const proposal_set made = net.propose(s);
  const fs::path dir = temp_dir("proposals"), file = dir / "test.rpn";
  const std::uint64_t key = proposal_cache_key(c, s);
  int calls = 0;
  auto make = [&] { ++calls; return made; };
  std::ostringstream log;
  const proposal_set first = load_or_make_proposals(file, s, key, c.max_proposals, make, log);
  CHECK(calls == 1);
  const proposal_set second = load_or_make_proposals(file, s, key, c.max_proposals, make, log);
  CHECK(calls == 1);  // read from the file
  CHECK(second.boxes == made.boxes);
  CHECK(second.scores == made.scores);
  CHECK(second.offsets == made.offsets);
  // the documented layout: magic, scene count, rows, first count and first box
  const auto bytes = read_bytes(file);
  REQUIRE(bytes.size() == 56 + 4 * s.size() + 20 * made.scores.size());
  CHECK(std::string(bytes.begin(), bytes.begin() + 8) == "RPNPROPS");
  CHECK(le(&bytes[12], 4) == s.size());
  CHECK(le(&bytes[32], 8) == made.scores.size());
  CHECK(le(&bytes[56], 4) == made.count(0));
  // another key, other scenes, a flipped payload byte: not used
  proposal_set out;
  std::string why;
  CHECK_FALSE(read_proposals(file, s, key + 1, c.max_proposals, out, why));
  CHECK(why.find("another") != std::string::npos);
  CHECK_FALSE(read_proposals(file, other, key, c.max_proposals, out, why));
  CHECK(why.find("other scenes") != std::string::npos);
  CHECK(proposal_cache_key(c, s) != proposal_cache_key(region_proposal_config{}, s));
  auto bad = bytes;
  bad[bad.size() - 3] ^= 0x40;
  write_bytes(file, bad);
  CHECK_FALSE(read_proposals(file, s, key, c.max_proposals, out, why));
  CHECK(why.find("corrupt") != std::string::npos);
  load_or_make_proposals(file, s, key, c.max_proposals, make, log);
  CHECK(calls == 2);  // made again and rewritten
  CHECK(read_proposals(file, s, key, c.max_proposals, out, why));
  fs::remove_all(dir);
}
