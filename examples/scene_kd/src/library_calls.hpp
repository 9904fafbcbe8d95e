// SPDX-License-Identifier: MIT
#pragma once
// Every call this example makes to distill's primitives (losses, RoI Align, the WSDDN head,
// metrics, proposals), in one place, on the CPU: the networks in models.hpp use nn layer classes,
// everything else goes through these wrappers, which throw distill::status_error on failure.

#include <cstdint>
#include <span>
#include <vector>

#include "distill/detection/nms.hpp"
#include "distill/detection/roi_align.hpp"
#include "distill/detection/sliding_windows.hpp"
#include "distill/detection/wsddn.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/losses/multilabel_soft_target.hpp"
#include "distill/metrics/average_precision.hpp"
#include "distill/metrics/detection_metrics.hpp"
#include "distill/metrics/topk_accuracy.hpp"
#include "distill/nn/activation.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/embedding.hpp"

namespace skd::lib {

using distill::index_t;
using distill::throw_if_error;
template <int R>
using view = distill::host_view<float, R>;
template <int R>
using cview = distill::host_view<const float, R>;

// ---- layers between nn blocks --------------------------------------------------------------

/// RoI Align of a stride-`stride` feature map: rois (K, 5) rows (image, x1, y1, x2, y2) in
/// canvas pixels; pixel centres at half-integers (aligned), 2 x 2 samples per bin.
inline distill::roi_align_options roi_options(float stride) { return {1.0f / stride, 2, true, false}; }

inline void roi_align_forward(const distill::cpu& ctx, cview<4> map, cview<2> rois, view<4> out, float stride) {
  throw_if_error(distill::roi_align_forward(ctx, map, rois, out, roi_options(stride)));
}
/// grad_map += dL/dmap (accumulate) or = (overwrite).
inline void roi_align_backward(const distill::cpu& ctx, cview<2> rois, cview<4> grad_out, view<4> grad_map, float stride, bool accumulate) {
  auto o = roi_options(stride);
  o.accumulate = accumulate;
  throw_if_error(distill::roi_align_backward(ctx, rois, grad_out, grad_map, o));
}

inline void relu_forward(const distill::cpu& ctx, cview<2> x, view<2> y) {
  throw_if_error(distill::nn::activation_forward<float>(ctx, distill::nn::activation::relu, x, y));
}
inline void relu_backward(const distill::cpu& ctx, cview<2> x, cview<2> dy, view<2> dx) {
  throw_if_error(distill::nn::activation_backward<float>(ctx, distill::nn::activation::relu, x, dy, dx));
}

/// rows[k] = table[ids[k]] and its adjoint (dtable overwritten with the scatter-sum).
inline void gather_rows(const distill::cpu& ctx, distill::host_view<const std::int64_t, 1> ids, cview<2> table, view<2> rows) {
  throw_if_error(distill::nn::embedding_forward<std::int64_t, float>(ctx, ids, table, rows));
}
inline void gather_rows_backward(const distill::cpu& ctx, distill::host_view<const std::int64_t, 1> ids, cview<2> d_rows, view<2> d_table) {
  throw_if_error(distill::nn::embedding_backward<std::int64_t, float>(ctx, ids, d_rows, d_table));
}

// ---- losses ---------------------------------------------------------------------------------

/// Mean softmax cross-entropy over the rows and dL/dlogits scaled by `weight`; returns the loss.
inline double cross_entropy(const distill::cpu& ctx, cview<2> logits, distill::host_view<const std::int64_t, 1> labels, view<2> grad, double weight = 1.0) {
  float loss = 0;
  distill::nn::cross_entropy_options o;
  o.grad_scale = weight;
  throw_if_error(distill::nn::softmax_cross_entropy_forward_backward(ctx, logits, labels, distill::make_view(&loss, 1), grad, o));
  return loss;
}

/// Hinton KD towards the teacher's logits at temperature T, averaged over the rows with weight
/// 1 (rows with weight 0 have no teacher): w T^2 KL(p_t || p_s) / (rows with a teacher); the
/// gradient (times w) is added to `grad`. Returns the loss before w.
inline double soft_target_kd(const distill::cpu& ctx, cview<2> student, cview<2> teacher, distill::host_view<const float, 1> row_weights, double T,
                             double w, view<2> grad) {
  float loss = 0;
  distill::soft_target_options o;
  o.temperature = static_cast<float>(T);
  o.reduction = distill::reduction::mean;
  o.grad_scale = static_cast<float>(w);
  o.accumulate = true;
  distill::soft_target_host_extras<float> extras;
  extras.row_weights = row_weights;
  throw_if_error(distill::kl_teacher_student_forward_backward(ctx, student, teacher, distill::make_view(&loss, 1), grad, extras, {}, o));
  return loss;
}

/// Liu et al.'s multi-label losses on student logits (N, C): `soft_weight` SigmoidCE(z/T, p_t)
/// (p_t = sigmoid(teacher / T): pass teacher logits T logit(s_t) to match probabilities s_t) +
/// `hard_weight` SigmoidCE(z, y), no T^2, divided by N (Caffe's normaliser). Gradient into `grad`.
inline double multilabel_kd(const distill::cpu& ctx, cview<2> student, cview<2> teacher, distill::host_view<const std::uint8_t, 2> labels, double T,
                            double soft_weight, double hard_weight, view<2> grad) {
  float loss = 0;
  distill::multilabel_soft_target_options o;
  o.temperature = static_cast<float>(T);
  o.scale_by_t_squared = false;
  o.reduction = distill::reduction::batchmean;
  o.soft_weight = static_cast<float>(soft_weight);
  o.hard_label_weight = static_cast<float>(hard_weight);
  distill::multilabel_soft_target_host_inputs<float> in;
  in.labels = labels;
  const cview<2> t = soft_weight != 0 ? teacher : student;  // the teacher term is off: any logits do
  throw_if_error(distill::multilabel_soft_target_forward_backward(ctx, student, t, in, distill::make_view(&loss, 1), grad, {}, o));
  return loss;
}

/// Liu et al.'s stage 1: (w / 2N) sum_r ||f_s - f_t||^2 over N rows; gradient into `grad`.
inline double feature_regression(const distill::cpu& ctx, cview<2> student, cview<2> teacher, double w, view<2> grad) {
  float loss = 0;
  distill::embedding_alignment_options o;
  o.metric = distill::embedding_metric::squared_l2;
  o.reduction = distill::reduction::batchmean;
  o.scale = 0.5 * w;
  throw_if_error(distill::embedding_alignment_forward_backward(ctx, student, teacher, distill::host_view<const float, 1>{},
                                                               distill::host_view<const std::uint8_t, 1>{}, distill::make_view(&loss, 1), grad, {}, o));
  return loss;
}

// ---- the WSDDN head ------------------------------------------------------------------------

inline distill::wsddn_options wsddn_opts(double scale) {
  distill::wsddn_options o;
  o.class_scale = o.region_scale = static_cast<float>(scale);
  o.reduction = distill::reduction::batchmean;
  return o;
}
/// Image scores (B, C) and region scores (B, R, C) (may be absent).
inline void wsddn_scores(const distill::cpu& ctx, cview<3> cls, cview<3> det, view<2> image, view<3> region, double scale) {
  throw_if_error(distill::wsddn_forward(ctx, distill::wsddn_host_streams<const float>{cls, det}, image, region, {}, wsddn_opts(scale)));
}
/// The image-level loss against 0/1 labels and the gradients of both streams; returns the loss.
inline double wsddn_loss(const distill::cpu& ctx, cview<3> cls, cview<3> det, distill::host_view<const std::uint8_t, 2> labels, view<3> d_cls,
                         view<3> d_det, double scale) {
  float loss = 0;
  throw_if_error(distill::wsddn_forward_backward(ctx, distill::wsddn_host_streams<const float>{cls, det}, labels, view<2>{}, distill::make_view(&loss, 1),
                                                 distill::wsddn_host_streams<float>{d_cls, d_det}, {}, wsddn_opts(scale)));
  return loss;
}

// ---- proposals and metrics -----------------------------------------------------------------

/// Class-agnostic sliding windows (x1, y1, x2, y2) over a side x side canvas.
inline std::vector<float> sliding_windows(const std::vector<double>& sizes, const std::vector<double>& ratios, double stride, int side) {
  const auto s = distill::make_view(sizes.data(), static_cast<index_t>(sizes.size()));
  const auto r = distill::make_view(ratios.data(), static_cast<index_t>(ratios.size()));
  const distill::sliding_window_options o{static_cast<double>(side), static_cast<double>(side), stride};
  const index_t n = distill::sliding_window_count(s, r, o);
  std::vector<float> boxes(static_cast<std::size_t>(n) * 4);
  throw_if_error(distill::sliding_window_boxes(distill::cpu{1}, s, r, distill::make_view(boxes.data(), n, 4), o));
  return boxes;
}

/// Greedy NMS of one class's boxes (N, 4) by score: indices kept, best first, at most `max_output`.
inline std::vector<std::int64_t> nms(cview<2> boxes, distill::host_view<const float, 1> scores, float iou, int max_output) {
  std::vector<std::int64_t> keep(static_cast<std::size_t>(boxes.extent(0)));
  index_t kept = 0;
  distill::nms_options o;
  o.iou_threshold = iou;
  o.max_output = max_output;
  throw_if_error(distill::non_max_suppression(distill::cpu{1}, boxes, scores, distill::host_view<const std::int64_t, 1>{},
                                              distill::make_view(keep.data(), static_cast<index_t>(keep.size())), kept, o));
  keep.resize(static_cast<std::size_t>(kept));
  return keep;
}

/// accuracy[k - 1] = share of counted rows whose label is among the k best scores (rows labelled -100 are not counted).
inline std::vector<double> topk(cview<2> scores, std::span<const std::int64_t> labels, int K) {
  std::vector<double> acc(static_cast<std::size_t>(K));
  throw_if_error(distill::topk_accuracy(distill::cpu{1}, scores, distill::make_view(labels.data(), static_cast<index_t>(labels.size())),
                                        distill::make_view(acc.data(), K)));
  return acc;
}

/// Per-class AP (scikit-learn's step-wise AP) and their mean over classes with positives.
inline double mean_average_precision(cview<2> scores, distill::host_view<const std::uint8_t, 2> labels, std::vector<double>& per_class) {
  per_class.assign(static_cast<std::size_t>(scores.extent(1)), 0.0);
  double m = 0;
  throw_if_error(distill::multilabel_average_precision(distill::cpu{1}, scores, labels,
                                                       distill::make_view(per_class.data(), static_cast<index_t>(per_class.size())), m));
  return m;
}

/// CorLoc (top detection per present class, IoU >= 0.5) and VOC AP at IoU 0.5, per class and mean.
struct localisation {
  double corloc = 0, ap50 = 0;
  std::vector<double> corloc_per_class, ap50_per_class;
};
inline localisation localisation_metrics(const distill::detection_list<float>& det, const distill::ground_truth_list<float>& gt, int classes) {
  localisation r;
  r.corloc_per_class.assign(static_cast<std::size_t>(classes), 0.0);
  r.ap50_per_class.assign(static_cast<std::size_t>(classes), 0.0);
  throw_if_error(distill::corloc(distill::cpu{1}, det, gt, distill::make_view(r.corloc_per_class.data(), classes), r.corloc));
  throw_if_error(distill::detection_average_precision(distill::cpu{1}, det, gt, distill::make_view(r.ap50_per_class.data(), classes), r.ap50));
  return r;
}

}  // namespace skd::lib
