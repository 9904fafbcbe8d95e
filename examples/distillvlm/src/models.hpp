// SPDX-License-Identifier: MIT
#pragma once
// The VQA transformer of distillvlm (teacher and student are this class with other sizes,
// config.hpp), built from distill's nn blocks. Canvas side 96.
//
//   backbone   scene (S, 1, 96, 96) -> conv 3x3 -> batch norm -> ReLU stages (c0 stride 2, c1
//              stride 2, c2 stride 1) = map F at stride 4 (24 x 24)
//   regions    RoI Align r x r of F on each region box (S K, c2, r, r) -> linear -> width,
//              + linear(box geometry: x1, y1, x2, y2, width, height over the side) -> width
//   tokens     [CLS] | K region tokens | 8 word tokens, each token = word embedding (the [CLS]
//              and region tokens have a word of their own) + position embedding (0 for [CLS] and
//              regions, 1 + t for word t) (+ the region's features for a region token)
//   encoder    nn::transformer_encoder (pre-LN, GELU, final layer norm), key mask: padded
//              regions and padding words are never attended to
//   head       linear(the [CLS] output) -> 19 answer logits
// A batch holds S scenes and B = S x questions-per-scene questions: the CNN runs once per scene
// and each question's region tokens gather its scene's rows (their gradients scatter back).
// Initialisation: Kaiming normal for convolutions, PyTorch's default for linear layers, N(0, 1)
// embeddings, from the run's seed (nn/init.hpp: a stream per (seed, parameter name)).

#include <algorithm>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "data.hpp"
#include "distill/detection/roi_align.hpp"
#include "distill/nn/embedding.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/sequential.hpp"
#include "distill/nn/transformer.hpp"

namespace dvlm {

namespace nn = distill::nn;
using distill::throw_if_error;
using param_list = nn::parameter_list<float, distill::host_space>;
template <int R>
using view = distill::host_view<float, R>;
template <int R>
using cview = distill::host_view<const float, R>;
inline constexpr float map_stride = 4.0f;  ///< stride of the map RoI Align reads

inline void resize(tensor& t, const nn::tensor_shape& s) { throw_if_error(t.resize(s)); }

/// Number of learnt values (batch-norm running statistics excluded).
inline index_t count_learnt(const param_list& params) {
  index_t n = 0;
  for (const auto* p : params)
    if (!p->buffer) n += p->size();
  return n;
}

inline distill::roi_align_options roi_options() { return {1.0f / map_stride, 2, true, false}; }

inline distill::host_view<const std::int64_t, 1> ids_view(const std::vector<std::int64_t>& v) {
  return distill::make_view(v.data(), static_cast<index_t>(v.size()));
}

class vqa_transformer {
 public:
  vqa_transformer(const std::string& name, const vlm_config& c, std::uint64_t seed) : c_(c) {
    const nn::init_options conv_init{seed, nn::init_scheme::kaiming_normal, 0}, lin_init{seed, nn::init_scheme::torch_default, 0};
    const int widths[3] = {c.channels0, c.channels1, c.channels2}, strides[3] = {2, 2, 1};
    int in = 1;
    for (int k = 0; k < 3; ++k) {
      const std::string s = name + ".backbone.stage" + std::to_string(k);
      backbone_.add(nn::conv2d<float>(s + ".conv", in, widths[k], 3, {strides[k], strides[k], 1, 1}, conv_init, false));
      backbone_.add(nn::batch_norm<float>(s + ".bn", widths[k]));
      backbone_.add(nn::activation::relu);
      in = widths[k];
    }
    region_fc_ = nn::linear<float>(name + ".region_fc", static_cast<index_t>(c.channels2) * c.roi_side * c.roi_side, c.width, lin_init);
    geometry_fc_ = nn::linear<float>(name + ".geometry_fc", 6, c.width, lin_init, false);
    words_ = nn::embedding<float>(name + ".words", vocabulary, c.width, seed);
    positions_ = nn::embedding<float>(name + ".positions", 1 + ex::question_max_tokens, c.width, seed);
    nn::transformer_options o;
    o.norm_first = true, o.final_norm = true, o.init = lin_init;
    encoder_ = nn::transformer_encoder<float>(name + ".encoder", c.layers, c.width, c.heads, c.ffn, o);
    head_ = nn::linear<float>(name + ".head", c.width, ex::answer_count, lin_init);
  }

  const vlm_config& config() const { return c_; }
  index_t heads() const { return c_.heads; }

  /// Answer logits (B, 19) of the questions of `b`.
  void forward(const distill::cpu& ctx, const vqa_batch& b) {
    b_ = &b;
    const index_t R = b.rois.extent(0), K = b.K, B = b.questions, L = b.L, W = c_.width, C = c_.channels2, r = c_.roi_side;
    throw_if_error(backbone_.forward(ctx, b.pixels.cview<4>()));
    const tensor& F = backbone_.output();
    resize(pooled_, {R, C, r, r});
    throw_if_error(distill::roi_align_forward(ctx, F.cview<4>(), b.rois.cview<2>(), pooled_.view<4>(), roi_options()));
    zero_masked_rows(b, pooled_);
    resize(region_, {R, W});
    resize(tmp_region_, {R, W});
    throw_if_error(region_fc_.forward(ctx, pooled_rows(), region_.view<2>()));
    throw_if_error(geometry_fc_.forward(ctx, b.geometry.cview<2>(), tmp_region_.view<2>()));
    add_into(region_.data(), tmp_region_.data(), R * W);
    resize(tokens_, {B, L, W});
    resize(tmp_tokens_, {B * L, W});
    throw_if_error(words_.forward(ctx, ids_view(b.word_ids), tokens_.rows_view()));
    throw_if_error(positions_.forward(ctx, ids_view(b.position_ids), tmp_tokens_.view<2>()));
    add_into(tokens_.data(), tmp_tokens_.data(), B * L * W);
    for (index_t q = 0; q < B; ++q)
      for (index_t k = 0; k < K; ++k)
        add_into(tokens_.data() + (q * L + 1 + k) * W, region_.data() + b.region_row[static_cast<std::size_t>(q * K + k)] * W, W);
    resize(hidden_, {B, L, W});
    throw_if_error(encoder_.forward(ctx, tokens_.cview<3>(), key_valid(), hidden_.view<3>()));
    resize(cls_, {B, W});
    for (index_t q = 0; q < B; ++q) std::copy_n(hidden_.data() + q * L * W, W, cls_.data() + q * W);
    resize(logits_, {B, ex::answer_count});
    throw_if_error(head_.forward(ctx, cls_.cview<2>(), logits_.view<2>()));
  }
  const tensor& logits() const { return logits_; }
  /// The last layer's attention probabilities (B, H, L, L) of the last forward.
  cview<4> last_attention() const { return encoder_.attention_probs(encoder_.num_layers() - 1); }
  /// The key mask (B, L) of the last forward's batch.
  distill::host_view<const std::uint8_t, 2> key_valid() const { return distill::make_view(b_->key_valid.data(), b_->questions, b_->L); }

  /// The encoder's output tokens (B L, width) of the last forward.
  cview<2> hidden_rows() const { return hidden_.rows_view(); }

  /// From dL/dlogits (B, 19) of the last forward (empty: the answer head is not trained, as in
  /// pre-training) and, when given, an extra gradient (B, H, L, L)
  /// into the last layer's attention probabilities and an extra gradient (B L, width) into the
  /// encoder's output tokens (token-wise losses). Parameter gradients accumulate.
  void backward(const distill::cpu& ctx, cview<2> dlogits, cview<4> grad_last_attention = {}, cview<2> grad_hidden = {}) {
    const vqa_batch& b = *b_;
    const index_t R = b.rois.extent(0), K = b.K, B = b.questions, L = b.L, W = c_.width;
    resize(d_cls_, {B, W});
    if (dlogits.empty()) std::fill_n(d_cls_.data(), d_cls_.size(), 0.0f);
    else throw_if_error(head_.backward(ctx, cls_.cview<2>(), dlogits, d_cls_.view<2>()));
    resize(d_hidden_, {B, L, W});
    if (grad_hidden.empty()) std::fill_n(d_hidden_.data(), d_hidden_.size(), 0.0f);
    else std::copy_n(grad_hidden.data(), d_hidden_.size(), d_hidden_.data());
    for (index_t q = 0; q < B; ++q) add_into(d_hidden_.data() + q * L * W, d_cls_.data() + q * W, W);
    resize(d_tokens_, {B, L, W});
    std::vector<cview<4>> gp;
    if (!grad_last_attention.empty()) {
      gp.assign(static_cast<std::size_t>(encoder_.num_layers()), cview<4>{});
      gp.back() = grad_last_attention;
    }
    throw_if_error(encoder_.backward(ctx, tokens_.cview<3>(), key_valid(), d_hidden_.cview<3>(), d_tokens_.view<3>(), gp));
    const tensor& dt = d_tokens_;
    throw_if_error(words_.backward(ctx, ids_view(b.word_ids), dt.rows_view()));
    throw_if_error(positions_.backward(ctx, ids_view(b.position_ids), dt.rows_view()));
    resize(d_region_, {R, W});
    std::fill_n(d_region_.data(), d_region_.size(), 0.0f);
    for (index_t q = 0; q < B; ++q)
      for (index_t k = 0; k < K; ++k)
        add_into(d_region_.data() + b.region_row[static_cast<std::size_t>(q * K + k)] * W, d_tokens_.data() + (q * L + 1 + k) * W, W);
    throw_if_error(geometry_fc_.backward(ctx, b.geometry.cview<2>(), d_region_.cview<2>(), view<2>{}));
    resize(d_pooled_, pooled_.shape());
    throw_if_error(region_fc_.backward(ctx, pooled_rows(), d_region_.cview<2>(),
                                       distill::make_view(d_pooled_.data(), d_pooled_.extent(0), d_pooled_.size() / d_pooled_.extent(0))));
    zero_masked_rows(b, d_pooled_);  // a masked region's features are a constant: no gradient reaches the map
    resize(d_map_, backbone_.output().shape());
    throw_if_error(distill::roi_align_backward(ctx, b.rois.cview<2>(), d_pooled_.cview<4>(), d_map_.view<4>(), roi_options()));
    throw_if_error(backbone_.backward(ctx, b.pixels.cview<4>(), d_map_.cview<4>()));
  }

  param_list parameters() {
    param_list body = body_parameters();
    return nn::collect_parameters(body, head_);
  }
  /// Everything but the answer head: what pre-training trains and fine-tuning starts from.
  param_list body_parameters() { return nn::collect_parameters(backbone_, region_fc_, geometry_fc_, words_, positions_, encoder_); }
  /// The body's values (and buffers) in one vector, and back: a pre-trained body for several students.
  std::vector<float> body_weights() {
    std::vector<float> v;
    for (const auto* p : body_parameters()) v.insert(v.end(), p->value.data(), p->value.data() + p->value.size());
    return v;
  }
  void set_body_weights(const std::vector<float>& v) {
    std::size_t at = 0;
    for (auto* p : body_parameters()) {
      if (at + static_cast<std::size_t>(p->value.size()) > v.size()) throw std::invalid_argument("set_body_weights: too few values for " + p->name);
      std::copy_n(v.data() + at, p->value.size(), p->value.data()), at += static_cast<std::size_t>(p->value.size());
    }
    if (at != v.size()) throw std::invalid_argument("set_body_weights: " + std::to_string(v.size()) + " values for a body of " + std::to_string(at));
  }
  void set_training(bool t) {
    backbone_.set_training(t);
    encoder_.set_training(t);
  }

 private:
  cview<2> pooled_rows() const { return distill::make_view(static_cast<const float*>(pooled_.data()), pooled_.extent(0), pooled_.size() / pooled_.extent(0)); }
  /// Zeroes the rows (R, ...) of the batch's masked region rows.
  static void zero_masked_rows(const vqa_batch& b, tensor& t) {
    if (b.masked_regions.empty()) return;
    const index_t row = t.size() / t.extent(0);
    for (std::size_t i = 0; i < b.masked_regions.size(); ++i)
      if (b.masked_regions[i]) std::fill_n(t.data() + static_cast<index_t>(i) * row, row, 0.0f);
  }
  static void add_into(float* dst, const float* src, index_t n) {
    for (index_t i = 0; i < n; ++i) dst[i] += src[i];
  }

  vlm_config c_;
  nn::sequential<float> backbone_;
  nn::linear<float> region_fc_, geometry_fc_, head_;
  nn::embedding<float> words_, positions_;
  nn::transformer_encoder<float> encoder_;
  tensor pooled_, region_, tmp_region_, tokens_, tmp_tokens_, hidden_, cls_, logits_;
  tensor d_cls_, d_hidden_, d_tokens_, d_region_, d_pooled_, d_map_;
  const vqa_batch* b_ = nullptr;
};

}  // namespace dvlm
