// SPDX-License-Identifier: MIT
#pragma once
// The four networks of scene_kd, built from distill's nn blocks (conv 3x3 -> batch norm -> ReLU
// stages, linear layers), with the glue between them in library_calls.hpp. Canvas side S = 96.
//
//   context_net        masked scene (B, 2, S, S): grey pixels with the mask set to 0 (the mean)
//                      and the mask indicator -> 4 stages of stride 2 (16, 32, 64, 64 channels,
//                      S/16 = 6) -> flatten -> 128 -> 10 class logits of the masked item. The
//                      flatten keeps "where": the mask's place decides which slot is missing.
//   item_recogniser    scene (B, 1, S, S) + item boxes -> backbone of 3 stages (16 s2, 32 s2, 32)
//                      = map F at stride 4; appearance = RoI Align 4x4 of F on the box -> 128;
//                      scene code = 2 more stages of stride 2 on F -> flatten -> 64 (shared by the
//                      scene's items); box = (x1, y1, x2, y2) / S; hidden = ReLU(A app + B code +
//                      G box + b) (96) -> 10. It sees the item, the whole scene and where the item
//                      is, so it can learn context; whether it does is what the teacher changes.
//   wsddn_teacher      scene -> backbone (16 s2, 32 s2, 32) = F at stride 4 -> RoI Align 3x3 of
//                      every sliding-window proposal -> 64 (ReLU: the RoI features stage 1
//                      regresses) -> classification and detection logits (10 each) -> WSDDN head.
//   multilabel_student scene -> trunk (8 s2, 16 s2, 32) = map at stride 4 -> one stage 48 s2 ->
//                      global average pool -> 10 sigmoid logits. Stage 1 trains the trunk with an
//                      adapter used only then: RoI Align 3x3 of the trunk's map on teacher
//                      proposals -> linear -> the teacher's RoI feature width.
// Initialisation: Kaiming normal for convolutions, PyTorch's default for linear layers, from the
// run's seed (nn/init.hpp: a stream per (seed, parameter name)).

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "distill/nn/checkpoint.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/sequential.hpp"
#include "library_calls.hpp"

namespace skd {

namespace nn = distill::nn;
using distill::index_t;
using distill::throw_if_error;
using tensor = nn::host_tensor<float>;
using param_list = nn::parameter_list<float, distill::host_space>;
template <int R>
using view = distill::host_view<float, R>;
template <int R>
using cview = distill::host_view<const float, R>;
inline constexpr int classes = 10;
inline constexpr float map_stride = 4.0f;  ///< stride of the maps RoI Align reads

inline nn::init_options conv_init(std::uint64_t seed) { return {seed, nn::init_scheme::kaiming_normal, 0}; }
inline nn::init_options linear_init(std::uint64_t seed) { return {seed, nn::init_scheme::torch_default, 0}; }

inline void add_stage(nn::sequential<float>& s, const std::string& name, int in, int out, int stride, std::uint64_t seed) {
  s.add(nn::conv2d<float>(name + ".conv", in, out, 3, {stride, stride, 1, 1}, conv_init(seed), false));
  s.add(nn::batch_norm<float>(name + ".bn", out));
  s.add(nn::activation::relu);
}


/// Number of learnt values (batch-norm running statistics excluded).
inline index_t count_learnt(const param_list& params) {
  index_t n = 0;
  for (const auto* p : params)
    if (!p->buffer) n += p->size();
  return n;
}

inline void resize(tensor& t, const nn::tensor_shape& s) { throw_if_error(t.resize(s)); }

/// Copies the values of `from` into `to`: the same network built twice (names and shapes in the same order).
inline void copy_parameters(const param_list& from, const param_list& to) {
  if (from.size() != to.size()) throw std::logic_error("copy_parameters: different networks");
  for (std::size_t i = 0; i < from.size(); ++i) {
    if (from[i]->name != to[i]->name || from[i]->size() != to[i]->size()) throw std::logic_error("copy_parameters: " + from[i]->name + " differs");
    std::copy_n(from[i]->value.data(), from[i]->size(), to[i]->value.data());
  }
}

// ---- the context model --------------------------------------------------------------------

class context_net {
 public:
  context_net(std::uint64_t seed, int side) {
    const int widths[] = {16, 32, 64, 64};
    int in = 2, s = side;
    for (int k = 0; k < 4; ++k) add_stage(net_, "context.stage" + std::to_string(k), in, widths[k], 2, seed), in = widths[k], s = (s + 1) / 2;
    net_.add(nn::linear<float>("context.fc0", static_cast<index_t>(in) * s * s, 128, linear_init(seed)));
    net_.add(nn::activation::relu);
    net_.add(nn::linear<float>("context.fc1", 128, classes, linear_init(seed)));
  }
  void forward(const distill::cpu& ctx, cview<4> x) { throw_if_error(net_.forward(ctx, x)); }
  const tensor& logits() const { return net_.output(); }
  /// From dL/dlogits; parameter gradients accumulate.
  void backward(const distill::cpu& ctx, cview<4> x, cview<2> dlogits) { throw_if_error(net_.backward(ctx, x, dlogits)); }
  param_list parameters() { return net_.parameters(); }
  void set_training(bool t) { net_.set_training(t); }

 private:
  nn::sequential<float> net_;
};

// ---- the item recogniser ------------------------------------------------------------------

/// The items of a batch of scenes: rois (K, 5) = (scene in batch, x1, y1, x2, y2), the scene of
/// each item (K) and the box features (K, 4).
struct item_batch {
  tensor rois, boxes;
  std::vector<std::int64_t> scene_of;
  index_t size() const { return static_cast<index_t>(scene_of.size()); }
};

class item_recogniser {
 public:
  static constexpr int roi_side = 4, map_channels = 32, appearance_width = 128, scene_width = 64, hidden_width = 96;

  item_recogniser(std::uint64_t seed, int side) {
    add_stage(backbone_, "recogniser.stage0", 1, 16, 2, seed);
    add_stage(backbone_, "recogniser.stage1", 16, 32, 2, seed);
    add_stage(backbone_, "recogniser.stage2", 32, map_channels, 1, seed);
    add_stage(scene_, "recogniser.scene0", map_channels, 32, 2, seed);
    add_stage(scene_, "recogniser.scene1", 32, 32, 2, seed);
    const int s = ((side / 4 + 1) / 2 + 1) / 2;
    scene_.add(nn::linear<float>("recogniser.scene_fc", 32 * s * s, scene_width, linear_init(seed)));
    scene_.add(nn::activation::relu);
    appearance_.add(nn::linear<float>("recogniser.appearance_fc", map_channels * roi_side * roi_side, appearance_width, linear_init(seed)));
    appearance_.add(nn::activation::relu);
    from_appearance_ = nn::linear<float>("recogniser.hidden_from_appearance", appearance_width, hidden_width, linear_init(seed));
    from_scene_ = nn::linear<float>("recogniser.hidden_from_scene", scene_width, hidden_width, linear_init(seed), false);
    from_box_ = nn::linear<float>("recogniser.hidden_from_box", 4, hidden_width, linear_init(seed), false);
    classifier_ = nn::linear<float>("recogniser.classifier", hidden_width, classes, linear_init(seed));
  }

  /// Logits (K, 10) of the items of `items` in the scenes `x` (B, 1, S, S).
  void forward(const distill::cpu& ctx, cview<4> x, const item_batch& items) {
    x_ = x, items_ = &items;
    const index_t K = items.size();
    throw_if_error(backbone_.forward(ctx, x));
    const tensor& F = backbone_.output();
    throw_if_error(scene_.forward(ctx, F.cview<4>()));
    resize(pooled_, {K, map_channels, roi_side, roi_side});
    lib::roi_align_forward(ctx, F.cview<4>(), items.rois.cview<2>(), pooled_.view<4>(), map_stride);
    throw_if_error(appearance_.forward(ctx, pooled_.cview<4>()));
    resize(code_, {K, scene_width});
    lib::gather_rows(ctx, ids(), scene_.output().cview<2>(), code_.view<2>());
    resize(pre_, {K, hidden_width});
    resize(tmp_, {K, hidden_width});
    resize(hidden_, {K, hidden_width});
    resize(logits_, {K, classes});
    throw_if_error(from_appearance_.forward(ctx, appearance_.output().cview<2>(), pre_.view<2>()));
    throw_if_error(from_scene_.forward(ctx, code_.cview<2>(), tmp_.view<2>()));
    add_into(pre_, tmp_);
    throw_if_error(from_box_.forward(ctx, items.boxes.cview<2>(), tmp_.view<2>()));
    add_into(pre_, tmp_);
    lib::relu_forward(ctx, pre_.cview<2>(), hidden_.view<2>());
    throw_if_error(classifier_.forward(ctx, hidden_.cview<2>(), logits_.view<2>()));
  }
  const tensor& logits() const { return logits_; }

  /// From dL/dlogits (K, 10) of the last forward; parameter gradients accumulate.
  void backward(const distill::cpu& ctx, cview<2> dlogits) {
    const index_t K = items_->size();
    resize(d_hidden_, {K, hidden_width});
    resize(d_pre_, {K, hidden_width});
    resize(d_app_, {K, appearance_width});
    resize(d_code_, {K, scene_width});
    throw_if_error(classifier_.backward(ctx, hidden_.cview<2>(), dlogits, d_hidden_.view<2>()));
    lib::relu_backward(ctx, pre_.cview<2>(), d_hidden_.cview<2>(), d_pre_.view<2>());
    throw_if_error(from_appearance_.backward(ctx, appearance_.output().cview<2>(), d_pre_.cview<2>(), d_app_.view<2>()));
    throw_if_error(from_scene_.backward(ctx, code_.cview<2>(), d_pre_.cview<2>(), d_code_.view<2>()));
    throw_if_error(from_box_.backward(ctx, items_->boxes.cview<2>(), d_pre_.cview<2>(), view<2>{}));
    const tensor& F = backbone_.output();
    resize(d_scene_, scene_.output().shape());
    lib::gather_rows_backward(ctx, ids(), d_code_.cview<2>(), d_scene_.view<2>());
    resize(d_pooled_, pooled_.shape());
    throw_if_error(appearance_.backward(ctx, pooled_.cview<4>(), d_app_.cview<2>(), d_pooled_.view<1>()));
    resize(d_map_, F.shape());
    throw_if_error(scene_.backward(ctx, F.cview<4>(), d_scene_.cview<2>(), d_map_.view<1>()));
    lib::roi_align_backward(ctx, items_->rois.cview<2>(), d_pooled_.cview<4>(), d_map_.view<4>(), map_stride, true);
    throw_if_error(backbone_.backward(ctx, x_, d_map_.cview<4>()));
  }

  param_list parameters() {
    return nn::collect_parameters(backbone_, scene_, appearance_, from_appearance_, from_scene_, from_box_, classifier_);
  }
  void set_training(bool t) {
    backbone_.set_training(t);
    scene_.set_training(t);
    appearance_.set_training(t);
  }

 private:
  distill::host_view<const std::int64_t, 1> ids() const { return distill::make_view(items_->scene_of.data(), items_->size()); }
  static void add_into(tensor& dst, const tensor& src) {
    float* d = dst.data();
    const float* s = src.data();
    for (index_t i = 0; i < dst.size(); ++i) d[i] += s[i];
  }

  nn::sequential<float> backbone_, scene_, appearance_;
  nn::linear<float> from_appearance_, from_scene_, from_box_, classifier_;
  tensor pooled_, code_, pre_, tmp_, hidden_, logits_;
  tensor d_hidden_, d_pre_, d_app_, d_code_, d_scene_, d_pooled_, d_map_;
  cview<4> x_;
  const item_batch* items_ = nullptr;
};

// ---- the weakly-supervised detector -------------------------------------------------------

class wsddn_teacher {
 public:
  static constexpr int roi_side = 3, map_channels = 32, feature_width = 64;

  /// proposals: (P, 4) boxes, the same for every scene.
  wsddn_teacher(std::uint64_t seed, const std::vector<float>& proposals, double scale) : proposals_(proposals), scale_(scale) {
    add_stage(backbone_, "teacher.stage0", 1, 16, 2, seed);
    add_stage(backbone_, "teacher.stage1", 16, 32, 2, seed);
    add_stage(backbone_, "teacher.stage2", 32, map_channels, 1, seed);
    head_.add(nn::linear<float>("teacher.fc6", map_channels * roi_side * roi_side, feature_width, linear_init(seed)));
    head_.add(nn::activation::relu);
    cls_ = nn::linear<float>("teacher.classification", feature_width, classes, linear_init(seed));
    det_ = nn::linear<float>("teacher.detection", feature_width, classes, linear_init(seed));
  }
  index_t proposals() const { return static_cast<index_t>(proposals_.size() / 4); }
  const std::vector<float>& proposal_boxes() const { return proposals_; }

  /// Features (B P, 128) and both streams' logits (B, P, 10) of the scenes x (B, 1, S, S).
  void forward(const distill::cpu& ctx, cview<4> x) {
    x_ = x;
    const index_t B = x.extent(0), P = proposals();
    set_rois(B);
    throw_if_error(backbone_.forward(ctx, x));
    resize(pooled_, {B * P, map_channels, roi_side, roi_side});
    lib::roi_align_forward(ctx, backbone_.output().cview<4>(), rois_.cview<2>(), pooled_.view<4>(), map_stride);
    throw_if_error(head_.forward(ctx, pooled_.cview<4>()));
    resize(cls_logits_, {B, P, classes});
    resize(det_logits_, {B, P, classes});
    throw_if_error(cls_.forward(ctx, head_.output().cview<2>(), cls_logits_.rows_view()));  // (B P, 10)
    throw_if_error(det_.forward(ctx, head_.output().cview<2>(), det_logits_.rows_view()));
  }
  /// RoI features of the last forward, (B P, 128), row b P + p.
  const tensor& features() const { return head_.output(); }

  /// Image scores (B, 10) and region scores (B, P, 10) of the last forward.
  void scores(const distill::cpu& ctx, tensor& image, tensor& region) {
    const index_t B = cls_logits_.extent(0), P = proposals();
    resize(image, {B, classes});
    resize(region, {B, P, classes});
    lib::wsddn_scores(ctx, cls_logits_.cview<3>(), det_logits_.cview<3>(), image.view<2>(), region.view<3>(), scale_);
  }

  /// The image-level loss of the last forward against 0/1 labels (B, 10) and its backward.
  double loss_backward(const distill::cpu& ctx, distill::host_view<const std::uint8_t, 2> labels) {
    resize(d_cls_, cls_logits_.shape());
    resize(d_det_, det_logits_.shape());
    const double loss = lib::wsddn_loss(ctx, cls_logits_.cview<3>(), det_logits_.cview<3>(), labels, d_cls_.view<3>(), d_det_.view<3>(), scale_);
    resize(d_features_, head_.output().shape());
    resize(tmp_, head_.output().shape());
    const tensor& d_cls = d_cls_, &d_det = d_det_;
    throw_if_error(cls_.backward(ctx, head_.output().cview<2>(), d_cls.rows_view(), d_features_.view<2>()));
    throw_if_error(det_.backward(ctx, head_.output().cview<2>(), d_det.rows_view(), tmp_.view<2>()));
    float* d = d_features_.data();
    const float* t = tmp_.data();
    for (index_t i = 0; i < d_features_.size(); ++i) d[i] += t[i];
    resize(d_pooled_, pooled_.shape());
    throw_if_error(head_.backward(ctx, pooled_.cview<4>(), d_features_.cview<2>(), d_pooled_.view<1>()));
    resize(d_map_, backbone_.output().shape());
    lib::roi_align_backward(ctx, rois_.cview<2>(), d_pooled_.cview<4>(), d_map_.view<4>(), map_stride, false);
    throw_if_error(backbone_.backward(ctx, x_, d_map_.cview<4>()));
    return loss;
  }

  param_list parameters() {
    return nn::collect_parameters(backbone_, head_, cls_, det_);
  }
  void set_training(bool t) {
    backbone_.set_training(t);
    head_.set_training(t);
  }

 private:
  void set_rois(index_t B) {
    const index_t P = proposals();
    if (rois_.size() == B * P * 5) return;
    resize(rois_, {B * P, 5});
    float* r = rois_.data();
    for (index_t b = 0; b < B; ++b)
      for (index_t p = 0; p < P; ++p, r += 5) {
        r[0] = static_cast<float>(b);
        for (int c = 0; c < 4; ++c) r[1 + c] = proposals_[static_cast<std::size_t>(p * 4 + c)];
      }
  }

  std::vector<float> proposals_;
  double scale_;
  nn::sequential<float> backbone_, head_;
  nn::linear<float> cls_, det_;
  tensor rois_, pooled_, cls_logits_, det_logits_, d_cls_, d_det_, d_features_, tmp_, d_pooled_, d_map_;
  cview<4> x_;
};

// ---- the multi-label student --------------------------------------------------------------

class multilabel_student {
 public:
  static constexpr int roi_side = 3, map_channels = 32;

  multilabel_student(std::uint64_t seed, int feature_width) {
    add_stage(trunk_, "student.stage0", 1, 8, 2, seed);
    add_stage(trunk_, "student.stage1", 8, 16, 2, seed);
    add_stage(trunk_, "student.stage2", 16, map_channels, 1, seed);
    add_stage(top_, "student.stage3", map_channels, 48, 2, seed);
    top_.add(nn::global_avg_pool_stage{});
    top_.add(nn::linear<float>("student.classifier", 48, classes, linear_init(seed)));
    adapter_.add(nn::linear<float>("student.adapter", map_channels * roi_side * roi_side, feature_width, linear_init(seed)));
  }

  /// Logits (B, 10) of the scenes x (B, 1, S, S).
  void forward(const distill::cpu& ctx, cview<4> x) {
    x_ = x;
    throw_if_error(trunk_.forward(ctx, x));
    throw_if_error(top_.forward(ctx, trunk_.output().cview<4>()));
  }
  const tensor& logits() const { return top_.output(); }

  /// From dL/dlogits of the last forward. Parameter gradients accumulate.
  void backward(const distill::cpu& ctx, cview<2> dlogits) {
    const tensor& map = trunk_.output();
    resize(d_map_, map.shape());
    throw_if_error(top_.backward(ctx, map.cview<4>(), dlogits, d_map_.view<1>()));
    throw_if_error(trunk_.backward(ctx, x_, d_map_.cview<4>()));
  }

  /// Stage 1: the adapter's features (K, width) of rois (K, 5) on the trunk's map of x (B, 1, S, S).
  const tensor& roi_features(const distill::cpu& ctx, cview<4> x, const tensor& rois) {
    x_ = x, rois_ = &rois;
    throw_if_error(trunk_.forward(ctx, x));
    resize(pooled_, {rois.extent(0), map_channels, roi_side, roi_side});
    lib::roi_align_forward(ctx, trunk_.output().cview<4>(), rois.cview<2>(), pooled_.view<4>(), map_stride);
    throw_if_error(adapter_.forward(ctx, pooled_.cview<4>()));
    return adapter_.output();
  }
  /// From dL/d(roi features) of the last roi_features. Parameter gradients accumulate.
  void roi_backward(const distill::cpu& ctx, const tensor& d_roi_features) {
    resize(d_pooled_, pooled_.shape());
    throw_if_error(adapter_.backward(ctx, pooled_.cview<4>(), d_roi_features.cview<2>(), d_pooled_.view<1>()));
    resize(d_map_, trunk_.output().shape());
    lib::roi_align_backward(ctx, rois_->cview<2>(), d_pooled_.cview<4>(), d_map_.view<4>(), map_stride, false);
    throw_if_error(trunk_.backward(ctx, x_, d_map_.cview<4>()));
  }

  /// The classifier (trunk and top): what is deployed and what the classification phase trains.
  param_list classifier_parameters() {
    return nn::collect_parameters(trunk_, top_);
  }
  /// What stage 1 trains: the trunk and the adapter (the adapter exists only for it).
  param_list stage1_parameters() {
    return nn::collect_parameters(trunk_, adapter_);
  }
  /// Every parameter (to copy a pretrained student).
  param_list parameters() {
    param_list p = classifier_parameters();
    return nn::collect_parameters(p, adapter_);
  }
  void set_training(bool t) {
    trunk_.set_training(t);
    top_.set_training(t);
  }

 private:
  nn::sequential<float> trunk_, top_, adapter_;
  tensor pooled_, d_map_, d_pooled_;
  const tensor* rois_ = nullptr;
  cview<4> x_;
};

}  // namespace skd
