// SPDX-License-Identifier: MIT
#pragma once
// System B, multi-label classification by distilling a weakly-supervised detector (Liu et al.,
// ACM MM 2018), on scenes whose only labels are the classes present:
//   1. teacher: WSDDN over class-agnostic sliding windows (not the true boxes); test: image-level
//      mAP, CorLoc (the top proposal of each present class overlaps a true box of that class with
//      IoU >= 0.5), and detection AP at IoU 0.5 after per-class NMS;
//   2. student: a plain CNN with sigmoid outputs, trained four ways from the same initialisation
//      on the same batches: alone (BCE with the labels), + stage 1 (its map RoI-aligned on the
//      teacher's top proposals regresses the teacher's RoI features, Euclidean loss), + stage 2
//      (SigmoidCE(z/T, s_teacher) + SigmoidCE(z, y), T = 5), + both; test: mAP.

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
  double teacher_map = 0, teacher_corloc = 0, teacher_ap50 = 0, teacher_validation = 0;
  std::vector<double> teacher_ap_per_class, teacher_corloc_per_class;
  run_log teacher_log;
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
  const index_t P = static_cast<index_t>(proposals.size() / 4);

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
    json fp = base_fingerprint;
    fp["run"] = "wsddn_teacher", fp["seed"] = seed;
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

  // test: mAP from image scores; CorLoc and AP50 from region scores
  {
    std::vector<float> scores(test_ids.size() * classes), det_boxes, det_scores;
    std::vector<std::int64_t> det_labels, det_images;
    std::vector<float> top_boxes, top_scores;
    std::vector<std::int64_t> top_labels, top_images;
    std::vector<float> cls_boxes(static_cast<std::size_t>(P) * 4), cls_scores(static_cast<std::size_t>(P));
    std::vector<index_t> order(static_cast<std::size_t>(P));
    std::size_t at = 0;
    teacher_pass(ctx, teacher, w, w.test, test_ids, [&](auto part, const tensor& image, const tensor& region, const tensor&) {
      for (std::size_t i = 0; i < part.size(); ++i, ++at) {
        std::copy_n(image.data() + i * classes, classes, scores.data() + at * classes);
        scene_detections pic;
        pic.scene = part[i];
        for (int k = 0; k < classes; ++k) {
          const float* rho = region.data() + static_cast<index_t>(i) * P * classes + k;
          // the top proposal (CorLoc reads only it)
          index_t best = 0;
          for (index_t p = 1; p < P; ++p)
            if (rho[p * classes] > rho[best * classes]) best = p;
          for (int q = 0; q < 4; ++q) top_boxes.push_back(proposals[static_cast<std::size_t>(best * 4 + q)]);
          top_scores.push_back(rho[best * classes]), top_labels.push_back(k), top_images.push_back(part[i]);
          pic.image_score[static_cast<std::size_t>(k)] = image.data()[i * classes + static_cast<std::size_t>(k)];
          for (int q = 0; q < 4; ++q) pic.top_box[static_cast<std::size_t>(k)][static_cast<std::size_t>(q)] = proposals[static_cast<std::size_t>(best * 4 + q)];
          // detections: the 50 best proposals of the class, NMS at IoU 0.4, at most 5 kept
          std::iota(order.begin(), order.end(), index_t(0));
          const index_t m = std::min<index_t>(50, P);
          std::partial_sort(order.begin(), order.begin() + m, order.end(), [&](index_t u, index_t v) { return rho[u * classes] > rho[v * classes]; });
          for (index_t j = 0; j < m; ++j) {
            for (int q = 0; q < 4; ++q) cls_boxes[static_cast<std::size_t>(j * 4 + q)] = proposals[static_cast<std::size_t>(order[static_cast<std::size_t>(j)] * 4 + q)];
            cls_scores[static_cast<std::size_t>(j)] = rho[order[static_cast<std::size_t>(j)] * classes];
          }
          for (std::int64_t kept : lib::nms(distill::make_view(static_cast<const float*>(cls_boxes.data()), m, index_t(4)),
                                            distill::make_view(static_cast<const float*>(cls_scores.data()), m), 0.4f, 5)) {
            for (int q = 0; q < 4; ++q) det_boxes.push_back(cls_boxes[static_cast<std::size_t>(kept * 4 + q)]);
            det_scores.push_back(cls_scores[static_cast<std::size_t>(kept)]), det_labels.push_back(k), det_images.push_back(part[i]);
          }
        }
        if (res.pictures.size() < pictures) res.pictures.push_back(pic);
      }
    });
    res.teacher_map = map_of(scores, test_labels, res.teacher_ap_per_class);
    std::vector<float> gt_boxes;
    std::vector<std::int64_t> gt_labels, gt_images;
    for (std::uint32_t id : test_ids)
      for (const auto& it : w.test.scenes[id].items) {
        gt_boxes.insert(gt_boxes.end(), {float(it.box.x1), float(it.box.y1), float(it.box.x2), float(it.box.y2)});
        gt_labels.push_back(it.cls), gt_images.push_back(id);
      }
    auto cv2 = [](const std::vector<float>& v) { return distill::make_view(v.data(), static_cast<index_t>(v.size() / 4), index_t(4)); };
    auto cv1 = [](const auto& v) { return distill::make_view(v.data(), static_cast<index_t>(v.size())); };
    const distill::ground_truth_list<float> gt{cv2(gt_boxes), cv1(gt_labels), cv1(gt_images)};
    const auto top = lib::localisation_metrics({cv2(top_boxes), cv1(top_scores), cv1(top_labels), cv1(top_images)}, gt, classes);
    const auto det = lib::localisation_metrics({cv2(det_boxes), cv1(det_scores), cv1(det_labels), cv1(det_images)}, gt, classes);
    res.teacher_corloc = top.corloc, res.teacher_corloc_per_class = top.corloc_per_class;
    res.teacher_ap50 = det.ap50;
  }

  // ---- 2. what the students learn from: the teacher on the training scenes -----------------------
  const int K = b.stage1_proposals;
  std::vector<float> teacher_logits(train_ids.size() * classes), teacher_features(train_ids.size() * static_cast<std::size_t>(K) * wsddn_teacher::feature_width);
  std::vector<float> teacher_rois(train_ids.size() * static_cast<std::size_t>(K) * 4);
  {
    const double T = b.stage2_temperature;
    std::size_t at = 0;
    std::vector<index_t> order(static_cast<std::size_t>(P));
    std::vector<float> best(static_cast<std::size_t>(P));
    teacher_pass(ctx, teacher, w, w.train, train_ids, [&](auto part, const tensor& image, const tensor& region, const tensor& features) {
      for (std::size_t i = 0; i < part.size(); ++i, ++at) {
        for (int k = 0; k < classes; ++k) {  // logits T logit(s): the loss's sigmoid(z_t / T) is then s exactly
          const double s = image.data()[i * classes + static_cast<std::size_t>(k)];
          teacher_logits[at * classes + static_cast<std::size_t>(k)] = static_cast<float>(T * (std::log(s) - std::log1p(-s)));
        }
        for (index_t p = 0; p < P; ++p) {
          const float* rho = region.data() + (static_cast<index_t>(i) * P + p) * classes;
          best[static_cast<std::size_t>(p)] = *std::max_element(rho, rho + classes);
        }
        std::iota(order.begin(), order.end(), index_t(0));
        std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](index_t u, index_t v) { return best[static_cast<std::size_t>(u)] > best[static_cast<std::size_t>(v)]; });
        for (int j = 0; j < K; ++j) {
          const index_t p = order[static_cast<std::size_t>(j)];
          std::copy_n(&proposals[static_cast<std::size_t>(p * 4)], 4, &teacher_rois[(at * static_cast<std::size_t>(K) + static_cast<std::size_t>(j)) * 4]);
          std::copy_n(features.data() + (static_cast<index_t>(i) * P + p) * wsddn_teacher::feature_width, wsddn_teacher::feature_width,
                      &teacher_features[(at * static_cast<std::size_t>(K) + static_cast<std::size_t>(j)) * wsddn_teacher::feature_width]);
        }
      }
    });
  }

  // ---- 3. the students ---------------------------------------------------------------------------
  for (std::size_t arm = 0; arm < student_arms.size(); ++arm) {
    const bool stage1 = arm == 1 || arm == 3, stage2 = arm == 2 || arm == 3;
    multilabel_student student(seed, wsddn_teacher::feature_width);  // the same initialisation for every arm
    const index_t steps = static_cast<index_t>(b.train_scenes / static_cast<std::uint32_t>(b.student_opt.batch));
    json fp = base_fingerprint;
    fp["run"] = std::string("student_") + student_arms[arm], fp["seed"] = seed;
    const std::string name = std::string("student-") + student_arms[arm] + "-seed" + std::to_string(seed);
    training_run run(name, "mAP", checkpoints / (name + ".ckpt"), fp, stage1 ? student.parameters() : student.deployed_parameters(), b.student_opt, steps);
    if (resume) run.try_resume();
    const std::size_t B = static_cast<std::size_t>(b.student_opt.batch);
    std::vector<std::uint32_t> ids(B);
    std::vector<std::uint8_t> y;
    tensor x, grad, t_logits, rois, t_feat, d_feat;
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
          for (std::size_t i = 0; i < B; ++i) std::copy_n(&teacher_logits[ids[i] * classes], classes, t_logits.data() + i * classes);
          double loss = lib::multilabel_kd(ctx, student.logits().cview<2>(), t_logits.cview<2>(),
                                           distill::make_view(static_cast<const std::uint8_t*>(y.data()), static_cast<index_t>(B), index_t(classes)),
                                           b.stage2_temperature, stage2 ? b.stage2_soft_weight : 0.0, b.stage2_hard_weight, grad.view<2>());
          if (!stage1) {
            student.backward(ctx, grad.cview<2>());
            return loss;
          }
          const index_t R = static_cast<index_t>(B) * K;
          resize(rois, {R, 5});
          resize(t_feat, {R, wsddn_teacher::feature_width});
          for (std::size_t i = 0; i < B; ++i)
            for (int j = 0; j < K; ++j) {
              const std::size_t src = static_cast<std::size_t>(ids[i]) * static_cast<std::size_t>(K) + static_cast<std::size_t>(j), dst = i * static_cast<std::size_t>(K) + static_cast<std::size_t>(j);
              rois.data()[dst * 5] = static_cast<float>(i);
              std::copy_n(&teacher_rois[src * 4], 4, rois.data() + dst * 5 + 1);
              std::copy_n(&teacher_features[src * wsddn_teacher::feature_width], wsddn_teacher::feature_width, t_feat.data() + dst * wsddn_teacher::feature_width);
            }
          const tensor& f = student.roi_features(ctx, rois);
          resize(d_feat, f.shape());
          loss += lib::feature_regression(ctx, f.cview<2>(), t_feat.cview<2>(), b.stage1_weight, d_feat.view<2>());
          student.backward(ctx, grad.cview<2>(), &d_feat);
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
