// SPDX-License-Identifier: MIT
#pragma once
// System B, multi-label classification by distilling a weakly-supervised detector (Liu et al.,
// ACM MM 2018), on scenes whose only labels are the classes present:
//   1. teacher: WSDDN over class-agnostic sliding windows (not the true boxes); test: image-level
//      mAP, CorLoc (the top proposal of each present class overlaps a true box of that class with
//      IoU >= 0.5), and detection AP at IoU 0.5 after per-class NMS;
//   2. student: a plain CNN with sigmoid outputs. As in Liu et al.'s code, stage 1 is a training
//      stage of its own: the student's map, RoI-aligned on the teacher's top proposals, regresses
//      the teacher's RoI features (Euclidean loss, no labels). Then the classification phase,
//      four ways from the same initialisation on the same batches: alone (BCE with the labels),
//      + stage 1 (starting from the stage-1 weights), + stage 2 (SigmoidCE(z/T, s_teacher) +
//      SigmoidCE(z, y), T = 5), + both; test: mAP.

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "data.hpp"
#include "training.hpp"

namespace skd {

inline constexpr int top_box_kinds = 6;
inline constexpr std::array<const char*, top_box_kinds> top_box_kind_names = {
    "correct (IoU >= 0.5)", "inside the item (a part)", "around the item (too large)", "overlapping it (0.1 <= IoU < 0.5)", "on an item of another class",
    "elsewhere"};

inline constexpr std::array<const char*, 4> student_arms = {"alone", "stage1", "stage2", "both"};
inline std::string arm_title(std::size_t a) {
  static const char* t[] = {"student alone (BCE)", "+ stage 1 (RoI features)", "+ stage 2 (soft targets)", "+ stage 1 + stage 2"};
  return t[a];
}

struct student_result {
  double map = 0, validation = 0;
  std::vector<double> ap_per_class;
  run_log log;
};

/// The teacher's top box per class of a test scene (for pictures).
struct scene_detections {
  std::uint32_t scene = 0;
  std::array<float, classes> image_score{};
  std::array<std::array<float, 4>, classes> top_box{};
};

struct wsd_seed_result {
  std::uint64_t seed = 0;
  double teacher_map = 0, teacher_corloc = 0, teacher_ap50 = 0, teacher_validation = 0, teacher_validation_corloc = 0, teacher_train_map = 0;
  std::vector<double> teacher_ap_per_class, teacher_corloc_per_class;
  std::array<double, top_box_kinds> teacher_top_boxes{};  ///< where its top box of each present test class lies
  run_log teacher_log, stage1_log;
  std::array<student_result, 4> students;
  std::vector<scene_detections> pictures;                  ///< the first test scenes
  std::array<std::vector<float>, 4> student_probabilities;  ///< of those scenes
};

/// Share of the test items that some proposal overlaps with IoU >= 0.5: the highest CorLoc possible.
inline double proposal_recall(const std::vector<float>& proposals, const ex::scene_set& set) {
  std::size_t hit = 0, total = 0;
  for (const auto& sc : set.scenes)
    for (const auto& it : sc.items) {
      float best = 0;
      for (std::size_t p = 0; p + 3 < proposals.size(); p += 4) {
        const float ix = std::max(0.0f, std::min(proposals[p + 2], float(it.box.x2)) - std::max(proposals[p], float(it.box.x1)));
        const float iy = std::max(0.0f, std::min(proposals[p + 3], float(it.box.y2)) - std::max(proposals[p + 1], float(it.box.y1)));
        const float inter = ix * iy, uni = (proposals[p + 2] - proposals[p]) * (proposals[p + 3] - proposals[p + 1]) + float(it.box.area()) - inter;
        best = std::max(best, uni > 0 ? inter / uni : 0.0f);
      }
      hit += best >= 0.5f, ++total;
    }
  return total ? static_cast<double>(hit) / static_cast<double>(total) : 0.0;
}

namespace wsd_detail {

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

/// The teacher's image scores (N, 10) and region scores of a set of scenes, batch by batch;
/// `each` sees every batch (ids, image scores, region scores, features).
template <class Each>
void teacher_pass(const distill::cpu& ctx, wsddn_teacher& t, const world& w, const ex::scene_set& set, const std::vector<std::uint32_t>& ids, Each&& each,
                  int batch = 16) {
  tensor x, image, region;
  t.set_training(false);
  for (std::size_t f = 0; f < ids.size(); f += static_cast<std::size_t>(batch)) {
    const auto part = std::span<const std::uint32_t>(ids).subspan(f, std::min<std::size_t>(static_cast<std::size_t>(batch), ids.size() - f));
    fill_scenes(w, set, part, x);
    t.forward(ctx, x.cview<4>());
    t.scores(ctx, image, region);
    each(part, image, region, t.features());
  }
}

inline double map_of(const std::vector<float>& scores, const std::vector<std::uint8_t>& labels, std::vector<double>& per_class) {
  const index_t N = static_cast<index_t>(labels.size() / classes);
  return lib::mean_average_precision(distill::make_view(scores.data(), N, index_t(classes)), distill::make_view(labels.data(), N, index_t(classes)), per_class);
}

/// Student probabilities (N, 10) on scenes.
inline std::vector<float> student_scores(const distill::cpu& ctx, multilabel_student& s, const world& w, const ex::scene_set& set,
                                         const std::vector<std::uint32_t>& ids) {
  std::vector<float> out(ids.size() * classes);
  tensor x;
  s.set_training(false);
  for (std::size_t f = 0; f < ids.size(); f += 64) {
    const auto part = std::span<const std::uint32_t>(ids).subspan(f, std::min<std::size_t>(64, ids.size() - f));
    fill_scenes(w, set, part, x);
    s.forward(ctx, x.cview<4>());
    for (std::size_t i = 0; i < part.size() * classes; ++i) out[f * classes + i] = static_cast<float>(sigmoid(s.logits().data()[i]));
  }
  return out;
}

/// The teacher's image-level mAP, CorLoc (its top proposal per class) and AP50 (the 50 best
/// proposals of each class, NMS at IoU 0.4, at most 5 kept) on scenes; the first `pictures`
/// scenes' top boxes.
struct teacher_evaluation {
  double map = 0, ap50 = 0;
  std::vector<double> ap_per_class;
  lib::localisation where;
  std::array<double, top_box_kinds> top_boxes{};  ///< where the top box of each present class lies (shares)
  std::vector<scene_detections> pictures;
};

/// Where a class's top box lies relative to the scene's items (the first that applies).
inline int top_box_kind(const std::array<float, 4>& b, const ex::scene& sc, int k) {
  const float area = (b[2] - b[0]) * (b[3] - b[1]);
  auto inter = [&](const ex::pixel_box& q) {
    const float w = std::min(b[2], float(q.x2)) - std::max(b[0], float(q.x1)), h = std::min(b[3], float(q.y2)) - std::max(b[1], float(q.y1));
    return w > 0 && h > 0 ? w * h : 0.0f;
  };
  float best_iou = 0, in_item = 0, covers_item = 0, on_other = 0;
  for (const auto& it : sc.items) {
    const float i = inter(it.box), a = float(it.box.area());
    if (it.cls == k) {
      best_iou = std::max(best_iou, i / (area + a - i));
      in_item = std::max(in_item, i / area);
      covers_item = std::max(covers_item, i / a);
    } else {
      on_other = std::max(on_other, i / area);
    }
  }
  if (best_iou >= 0.5f) return 0;     // correct
  if (in_item >= 0.7f) return 1;      // on a part of an item of the class
  if (covers_item >= 0.7f) return 2;  // around an item of the class (too large: e.g. both shoes of a pair)
  if (best_iou >= 0.1f) return 3;     // shifted: overlapping an item of the class
  if (on_other >= 0.5f) return 4;     // mostly on an item of another class (a co-occurring one)
  return 5;                           // elsewhere
}

inline teacher_evaluation evaluate_teacher(const distill::cpu& ctx, wsddn_teacher& teacher, const world& w, const ex::scene_set& set,
                                           const std::vector<std::uint32_t>& ids, std::size_t pictures) {
  const index_t P = teacher.proposals();
  const auto& proposals = teacher.proposal_boxes();
  teacher_evaluation e;
  std::vector<float> scores(ids.size() * classes), det_boxes, det_scores, top_boxes, top_scores;
  std::vector<std::int64_t> det_labels, det_images, top_labels, top_images;
  std::vector<float> cls_boxes(static_cast<std::size_t>(P) * 4), cls_scores(static_cast<std::size_t>(P));
  std::vector<index_t> order(static_cast<std::size_t>(P));
  auto box = [&](index_t p, int q) { return proposals[static_cast<std::size_t>(p * 4 + q)]; };
  std::size_t at = 0;
  teacher_pass(ctx, teacher, w, set, ids, [&](auto part, const tensor& image, const tensor& region, const tensor&) {
    for (std::size_t i = 0; i < part.size(); ++i, ++at) {
      std::copy_n(image.data() + i * classes, classes, scores.data() + at * classes);
      scene_detections pic;
      pic.scene = part[i];
      for (int k = 0; k < classes; ++k) {
        const float* rho = region.data() + static_cast<index_t>(i) * P * classes + k;  // rho[p * classes]: proposal p
        index_t best = 0;
        for (index_t p = 1; p < P; ++p)
          if (rho[p * classes] > rho[best * classes]) best = p;
        for (int q = 0; q < 4; ++q) top_boxes.push_back(box(best, q)), pic.top_box[static_cast<std::size_t>(k)][static_cast<std::size_t>(q)] = box(best, q);
        top_scores.push_back(rho[best * classes]), top_labels.push_back(k), top_images.push_back(part[i]);
        pic.image_score[static_cast<std::size_t>(k)] = image.data()[i * classes + static_cast<std::size_t>(k)];
        std::iota(order.begin(), order.end(), index_t(0));
        const index_t m = std::min<index_t>(50, P);
        std::partial_sort(order.begin(), order.begin() + m, order.end(), [&](index_t u, index_t v) { return rho[u * classes] > rho[v * classes]; });
        for (index_t j = 0; j < m; ++j) {
          for (int q = 0; q < 4; ++q) cls_boxes[static_cast<std::size_t>(j * 4 + q)] = box(order[static_cast<std::size_t>(j)], q);
          cls_scores[static_cast<std::size_t>(j)] = rho[order[static_cast<std::size_t>(j)] * classes];
        }
        for (std::int64_t kept : lib::nms(distill::make_view(static_cast<const float*>(cls_boxes.data()), m, index_t(4)),
                                          distill::make_view(static_cast<const float*>(cls_scores.data()), m), 0.4f, 5)) {
          for (int q = 0; q < 4; ++q) det_boxes.push_back(cls_boxes[static_cast<std::size_t>(kept * 4 + q)]);
          det_scores.push_back(cls_scores[static_cast<std::size_t>(kept)]), det_labels.push_back(k), det_images.push_back(part[i]);
        }
      }
      for (int k = 0; k < classes; ++k)
        if (std::any_of(set.scenes[part[i]].items.begin(), set.scenes[part[i]].items.end(), [k](const auto& it) { return it.cls == k; }))
          e.top_boxes[static_cast<std::size_t>(top_box_kind(pic.top_box[static_cast<std::size_t>(k)], set.scenes[part[i]], k))] += 1;
      if (e.pictures.size() < pictures) e.pictures.push_back(pic);
    }
  });
  double total = 0;
  for (double v : e.top_boxes) total += v;
  for (double& v : e.top_boxes) v /= std::max(total, 1.0);
  e.map = map_of(scores, present_classes(set, ids), e.ap_per_class);
  std::vector<float> gt_boxes;
  std::vector<std::int64_t> gt_labels, gt_images;
  for (std::uint32_t id : ids)
    for (const auto& it : set.scenes[id].items) {
      gt_boxes.insert(gt_boxes.end(), {float(it.box.x1), float(it.box.y1), float(it.box.x2), float(it.box.y2)});
      gt_labels.push_back(it.cls), gt_images.push_back(id);
    }
  auto v2 = [](const std::vector<float>& v) { return distill::make_view(v.data(), static_cast<index_t>(v.size() / 4), index_t(4)); };
  auto v1 = [](const auto& v) { return distill::make_view(v.data(), static_cast<index_t>(v.size())); };
  const distill::ground_truth_list<float> gt{v2(gt_boxes), v1(gt_labels), v1(gt_images)};
  e.where = lib::localisation_metrics({v2(top_boxes), v1(top_scores), v1(top_labels), v1(top_images)}, gt, classes);
  e.ap50 = lib::localisation_metrics({v2(det_boxes), v1(det_scores), v1(det_labels), v1(det_images)}, gt, classes).ap50;
  return e;
}

/// What the students learn from, per scene: the teacher's image scores as logits T logit(s)
/// (stage 2: sigmoid(z / T) = s exactly; s = 0 or 1 give -inf or +inf, which the loss treats as
/// certainties) and its K best proposals (by the best class's region score) with their RoI
/// features (stage 1).
struct teacher_targets {
  int K = 0;
  std::vector<float> logits, boxes, features;  // (N, 10), (N, K, 4), (N, K, width)
  double map = 0;                              // the teacher's mAP on these scenes
  /// rois (B K, 5) and teacher features (B K, width) of the scenes ids (indices into this set).
  void gather(std::span<const std::uint32_t> ids, tensor& rois, tensor& feats) const {
    const index_t R = static_cast<index_t>(ids.size()) * K, D = wsddn_teacher::feature_width;
    resize(rois, {R, 5});
    resize(feats, {R, D});
    for (std::size_t i = 0; i < ids.size(); ++i)
      for (int j = 0; j < K; ++j) {
        const std::size_t src = static_cast<std::size_t>(ids[i]) * static_cast<std::size_t>(K) + static_cast<std::size_t>(j),
                          dst = i * static_cast<std::size_t>(K) + static_cast<std::size_t>(j);
        rois.data()[dst * 5] = static_cast<float>(i);
        std::copy_n(&boxes[src * 4], 4, rois.data() + dst * 5 + 1);
        std::copy_n(&features[src * static_cast<std::size_t>(D)], D, feats.data() + dst * static_cast<std::size_t>(D));
      }
  }
};

inline teacher_targets teacher_targets_on(const distill::cpu& ctx, wsddn_teacher& teacher, const world& w, const ex::scene_set& set,
                                          const std::vector<std::uint32_t>& ids, int K, double T) {
  const index_t P = teacher.proposals(), D = wsddn_teacher::feature_width;
  const auto& proposals = teacher.proposal_boxes();
  teacher_targets t;
  t.K = K;
  t.logits.resize(ids.size() * classes);
  t.boxes.resize(ids.size() * static_cast<std::size_t>(K) * 4);
  t.features.resize(ids.size() * static_cast<std::size_t>(K) * static_cast<std::size_t>(D));
  std::size_t at = 0;
  std::vector<index_t> order(static_cast<std::size_t>(P));
  std::vector<float> best(static_cast<std::size_t>(P)), scores(ids.size() * classes);
  teacher_pass(ctx, teacher, w, set, ids, [&](auto part, const tensor& image, const tensor& region, const tensor& features) {
    std::copy_n(image.data(), part.size() * classes, scores.data() + at * classes);
    for (std::size_t i = 0; i < part.size(); ++i, ++at) {
      for (int k = 0; k < classes; ++k) {
        const double s = std::clamp(static_cast<double>(image.data()[i * classes + static_cast<std::size_t>(k)]), 0.0, 1.0);  // s <= 1 up to rounding
        t.logits[at * classes + static_cast<std::size_t>(k)] = static_cast<float>(T * (std::log(s) - std::log1p(-s)));
      }
      for (index_t p = 0; p < P; ++p) {
        const float* rho = region.data() + (static_cast<index_t>(i) * P + p) * classes;
        best[static_cast<std::size_t>(p)] = *std::max_element(rho, rho + classes);
      }
      std::iota(order.begin(), order.end(), index_t(0));
      std::partial_sort(order.begin(), order.begin() + K, order.end(),
                        [&](index_t u, index_t v) { return best[static_cast<std::size_t>(u)] > best[static_cast<std::size_t>(v)]; });
      for (int j = 0; j < K; ++j) {
        const index_t p = order[static_cast<std::size_t>(j)];
        const std::size_t dst = at * static_cast<std::size_t>(K) + static_cast<std::size_t>(j);
        std::copy_n(&proposals[static_cast<std::size_t>(p * 4)], 4, &t.boxes[dst * 4]);
        std::copy_n(features.data() + (static_cast<index_t>(i) * P + p) * D, D, &t.features[dst * static_cast<std::size_t>(D)]);
      }
    }
  });
  std::vector<double> per_class;
  t.map = map_of(scores, present_classes(set, ids), per_class);
  return t;
}

}  // namespace wsd_detail

inline wsd_seed_result run_wsd_seed(const distill::cpu& ctx, const run_config& c, const world& w, const std::vector<float>& proposals, std::uint64_t seed,
                                    const std::filesystem::path& checkpoints, bool resume, const json& base_fingerprint, std::size_t pictures = 6) {
  using namespace wsd_detail;
  const wsd_config& b = c.wsd;
  wsd_seed_result res;
  res.seed = seed;
  const auto train_ids = range_ids(0, b.train_scenes), val_ids = range_ids(0, static_cast<std::uint32_t>(w.validation.size())),
             test_ids = range_ids(0, static_cast<std::uint32_t>(w.test.size()));
  const auto train_labels = present_classes(w.train, train_ids), val_labels = present_classes(w.validation, val_ids),
             test_labels = present_classes(w.test, test_ids);

  // What decides each run (a checkpoint is resumed only when it matches): students that learn
  // from the teacher depend on everything that made the teacher.
  const json data_fp = {{"world", base_fingerprint.at("world")}, {"train_scenes", b.train_scenes}, {"seed", seed}};
  json teacher_fp = data_fp;
  teacher_fp["teacher"] = {{"proposals", proposals}, {"optimiser", to_json(b.teacher_opt)}, {"scale", b.teacher_scale}};
  json stage1_fp = teacher_fp;
  stage1_fp["stage1"] = {{"epochs", b.stage1_epochs}, {"proposals", b.stage1_proposals}, {"weight", b.stage1_weight}, {"optimiser", to_json(b.student_opt)}};
  const json stage2_fp = {{"temperature", b.stage2_temperature}, {"soft_weight", b.stage2_soft_weight}};

  // ---- 1. the weakly-supervised teacher ------------------------------------------------------
  wsddn_teacher teacher(seed, proposals, b.teacher_scale);
  const auto teacher_scores_on = [&](const ex::scene_set& set, const std::vector<std::uint32_t>& ids) {
    std::vector<float> s(ids.size() * classes);
    std::size_t at = 0;
    wsd_detail::teacher_pass(ctx, teacher, w, set, ids, [&](auto part, const tensor& image, const tensor&, const tensor&) {
      std::copy_n(image.data(), part.size() * classes, s.data() + at * classes);
      at += part.size();
    });
    return s;
  };
  {
    const index_t steps = static_cast<index_t>(b.train_scenes / static_cast<std::uint32_t>(b.teacher_opt.batch));
    json fp = teacher_fp;
    fp["run"] = "wsddn_teacher";
    const std::string name = "wsddn-teacher-seed" + std::to_string(seed);
    training_run run(name, "mAP", checkpoints / (name + ".ckpt"), fp, teacher.parameters(), b.teacher_opt, steps);
    if (resume) run.try_resume();
    tensor x;
    std::vector<std::uint32_t> ids(static_cast<std::size_t>(b.teacher_opt.batch));
    std::vector<std::uint8_t> y;
    run.run(
        ctx,
        [&](int epoch, index_t s) {
          const auto order = ex::shuffled_order(b.train_scenes, seed ^ 0x57534444ull /* "WSDD" */, static_cast<std::uint64_t>(epoch));
          for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = order[static_cast<std::size_t>(s) * ids.size() + i];
          fill_scenes(w, w.train, ids, x);
          y = present_classes(w.train, ids);
          teacher.forward(ctx, x.cview<4>());
          return teacher.loss_backward(ctx, distill::make_view(static_cast<const std::uint8_t*>(y.data()), static_cast<index_t>(ids.size()), index_t(classes)));
        },
        [&] {
          std::vector<double> per_class;
          return map_of(teacher_scores_on(w.validation, val_ids), val_labels, per_class);
        },
        [&](bool t) { teacher.set_training(t); });
    res.teacher_log = run.log();
    res.teacher_validation = run.log().curve.empty() ? std::nan("") : run.log().curve.back().validation;
  }

  // validation and test: mAP from image scores, CorLoc and AP50 from region scores
  const teacher_evaluation val_eval = evaluate_teacher(ctx, teacher, w, w.validation, val_ids, 0);
  const teacher_evaluation test_eval = evaluate_teacher(ctx, teacher, w, w.test, test_ids, pictures);
  res.teacher_map = test_eval.map, res.teacher_ap_per_class = test_eval.ap_per_class;
  res.teacher_corloc = test_eval.where.corloc, res.teacher_corloc_per_class = test_eval.where.corloc_per_class, res.teacher_ap50 = test_eval.ap50;
  res.teacher_validation_corloc = val_eval.where.corloc;
  res.teacher_top_boxes = test_eval.top_boxes;
  res.pictures = test_eval.pictures;

  // ---- 2. what the students learn from: the teacher on the training (and validation) scenes ----
  const int K = b.stage1_proposals;
  const teacher_targets train_t = teacher_targets_on(ctx, teacher, w, w.train, train_ids, K, b.stage2_temperature);
  const teacher_targets val_t = teacher_targets_on(ctx, teacher, w, w.validation, val_ids, K, b.stage2_temperature);
  res.teacher_train_map = train_t.map;

  // ---- 3. stage 1 (Liu et al.'s first training stage, its only loss): the student's trunk and an
  //         adapter regress the teacher's RoI features on the teacher's top proposals -----------
  const std::size_t B = static_cast<std::size_t>(b.student_opt.batch);
  const index_t steps = static_cast<index_t>(b.train_scenes / static_cast<std::uint32_t>(B));
  multilabel_student pretrained(seed, wsddn_teacher::feature_width);
  {
    optimiser_config o = b.student_opt;
    o.epochs = b.stage1_epochs;
    json fp = stage1_fp;
    fp["run"] = "student_stage1";
    const std::string name = "student-stage1-pretraining-seed" + std::to_string(seed);
    training_run run(name, "feature loss", checkpoints / (name + ".ckpt"), fp, pretrained.stage1_parameters(), o, steps, false);
    if (resume) run.try_resume();
    std::vector<std::uint32_t> ids(B);
    tensor x, rois, t_feat, d_feat;
    const auto regression = [&](const ex::scene_set& set, std::span<const std::uint32_t> part, const teacher_targets& t, bool train) {
      fill_scenes(w, set, part, x);
      t.gather(part, rois, t_feat);
      const tensor& f = pretrained.roi_features(ctx, x.cview<4>(), rois);
      resize(d_feat, f.shape());
      const double loss = lib::feature_regression(ctx, f.cview<2>(), t_feat.cview<2>(), b.stage1_weight, d_feat.view<2>());
      if (train) pretrained.roi_backward(ctx, d_feat);
      return loss;
    };
    run.run(
        ctx,
        [&](int epoch, index_t s) {
          const auto order = ex::shuffled_order(b.train_scenes, seed ^ 0x53545547ull /* "STUG" */, static_cast<std::uint64_t>(epoch));
          for (std::size_t i = 0; i < B; ++i) ids[i] = order[static_cast<std::size_t>(s) * B + i];
          return regression(w.train, ids, train_t, true);
        },
        [&] {
          double total = 0;
          std::size_t n = 0;
          for (std::size_t f = 0; f < val_ids.size(); f += 64, ++n)
            total += regression(w.validation, std::span<const std::uint32_t>(val_ids).subspan(f, std::min<std::size_t>(64, val_ids.size() - f)), val_t, false);
          return n ? total / static_cast<double>(n) : 0.0;
        },
        [&](bool t) { pretrained.set_training(t); });
    res.stage1_log = run.log();
  }

  // ---- 4. the classification phase of each student: from its initialisation (alone, + stage 2)
  //         or from stage 1 (+ stage 1, both), BCE with the labels, + the teacher's soft targets
  //         (stage 2) ---------------------------------------------------------------------------
  for (std::size_t arm = 0; arm < student_arms.size(); ++arm) {
    const bool stage1 = arm == 1 || arm == 3, stage2 = arm == 2 || arm == 3;
    multilabel_student student(seed, wsddn_teacher::feature_width);  // the same initialisation for every arm
    if (stage1) copy_parameters(pretrained.parameters(), student.parameters());
    json fp = stage1 ? stage1_fp : stage2 ? teacher_fp : data_fp;
    if (stage2) fp["stage2"] = stage2_fp;
    fp["hard_weight"] = b.stage2_hard_weight, fp["optimiser"] = to_json(b.student_opt), fp["run"] = std::string("student_") + student_arms[arm];
    const std::string name = std::string("student-") + student_arms[arm] + "-seed" + std::to_string(seed);
    training_run run(name, "mAP", checkpoints / (name + ".ckpt"), fp, student.classifier_parameters(), b.student_opt, steps);
    if (resume) run.try_resume();
    std::vector<std::uint32_t> ids(B);
    std::vector<std::uint8_t> y;
    tensor x, grad, t_logits;
    run.run(
        ctx,
        [&](int epoch, index_t s) {
          const auto order = ex::shuffled_order(b.train_scenes, seed ^ 0x53545544ull /* "STUD" */, static_cast<std::uint64_t>(epoch));
          for (std::size_t i = 0; i < B; ++i) ids[i] = order[static_cast<std::size_t>(s) * B + i];
          fill_scenes(w, w.train, ids, x);
          y = present_classes(w.train, ids);
          student.forward(ctx, x.cview<4>());
          resize(grad, student.logits().shape());
          resize(t_logits, {static_cast<index_t>(B), classes});
          for (std::size_t i = 0; i < B; ++i) std::copy_n(&train_t.logits[ids[i] * classes], classes, t_logits.data() + i * classes);
          const double loss = lib::multilabel_kd(ctx, student.logits().cview<2>(), t_logits.cview<2>(),
                                                 distill::make_view(static_cast<const std::uint8_t*>(y.data()), static_cast<index_t>(B), index_t(classes)),
                                                 b.stage2_temperature, stage2 ? b.stage2_soft_weight : 0.0, b.stage2_hard_weight, grad.view<2>());
          student.backward(ctx, grad.cview<2>());
          return loss;
        },
        [&] {
          std::vector<double> per_class;
          return map_of(student_scores(ctx, student, w, w.validation, val_ids), val_labels, per_class);
        },
        [&](bool t) { student.set_training(t); });
    student_result& r = res.students[arm];
    r.log = run.log();
    r.validation = run.log().curve.empty() ? std::nan("") : run.log().curve.back().validation;
    const auto scores = student_scores(ctx, student, w, w.test, test_ids);
    r.map = map_of(scores, test_labels, r.ap_per_class);
    res.student_probabilities[arm].assign(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(std::min(pictures, test_ids.size()) * classes));
  }
  return res;
}

}  // namespace skd
