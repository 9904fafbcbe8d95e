// SPDX-License-Identifier: MIT
#pragma once
// The networks, built from distill's nn blocks through the public API:
//   staged_net   teacher and students: stages (conv 3x3 -> batch norm -> ReLU [-> max-pool 2x2])
//                whose outputs the distillation losses read and write gradients into, then a
//                head of linear layers; with no stages it is an MLP on the pixels
//   connector    1x1 conv -> batch norm -> ReLU from the student's channels to the teacher's
//                (the feature-statistics methods; SRRL's connector)
// Initialisation: Kaiming normal (fan_in, gain sqrt 2) for every convolution, PyTorch's default
// (uniform +-1/sqrt(fan_in)) for linear layers, batch norm gamma 1 and beta 0, as the PyTorch
// peer (bench/peers/fashion_kd_peer.py) does.

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "config.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/sequential.hpp"

namespace fkd {

namespace nn = distill::nn;
using distill::index_t;
using tensor = nn::host_tensor<float>;
using param_list = nn::parameter_list<float, distill::host_space>;
template <int R>
using view = distill::host_view<float, R>;
template <int R>
using cview = distill::host_view<const float, R>;
inline constexpr int classes = 10;

inline nn::init_options conv_init(std::uint64_t seed) { return {seed, nn::init_scheme::kaiming_normal, 0}; }
inline nn::init_options linear_init(std::uint64_t seed) { return {seed, nn::init_scheme::torch_default, 0}; }

/// Number of learnt values (buffers such as batch-norm running statistics excluded).
inline index_t count_learnt(const param_list& params) {
  index_t n = 0;
  for (const auto* p : params)
    if (!p->buffer) n += p->size();
  return n;
}

/// conv 3x3 (padding 1, no bias) -> batch norm -> ReLU.
inline void add_conv_bn_relu(nn::sequential<float>& s, const std::string& name, int in, int out, std::uint64_t seed, int kernel = 3) {
  s.add(nn::conv2d<float>(name + ".conv", in, out, kernel, {1, 1, kernel / 2, kernel / 2}, conv_init(seed), false));
  s.add(nn::batch_norm<float>(name + ".bn", out));
  s.add(nn::activation::relu);
}

/// Linear layers features -> hidden... -> 10 with ReLU between them and, when dropout > 0, a
/// dropout before each (own stream per position); layers named "<name>.fc<k>".
inline nn::sequential<float> make_head(const std::string& name, index_t features, const std::vector<int>& hidden, double dropout,
                                       std::uint64_t seed) {
  nn::sequential<float> head;
  for (std::size_t k = 0; k <= hidden.size(); ++k) {
    if (dropout > 0) head.add(nn::dropout<float>(dropout, nn::stream_key(seed, nn::name_hash(name + ".dropout" + std::to_string(k)))));
    const index_t out = k < hidden.size() ? hidden[k] : classes;
    head.add(nn::linear<float>(name + ".fc" + std::to_string(k), features, out, linear_init(seed)));
    if (k < hidden.size()) head.add(nn::activation::relu);
    features = out;
  }
  return head;
}

/// The side of a stage-k output of a 28 x 28 input (each of the first pooled_stages halves it).
inline int stage_side(const net_spec& spec, std::size_t k) {
  int side = 28;
  for (std::size_t j = 0; j <= k && static_cast<int>(j) < spec.pooled_stages; ++j) side /= 2;
  return side;
}

class staged_net {
 public:
  staged_net(const std::string& name, const net_spec& spec, std::uint64_t seed) : spec_(spec) {
    int in = 1, side = 28;
    for (std::size_t k = 0; k < spec.channels.size(); ++k) {
      nn::sequential<float> s;
      add_conv_bn_relu(s, name + ".stage" + std::to_string(k), in, spec.channels[k], seed);
      if (static_cast<int>(k) < spec.pooled_stages) s.add(nn::max_pool2d_stage{{2, 2}}), side /= 2;
      stages_.push_back(std::move(s));
      in = spec.channels[k];
    }
    head_ = make_head(name, spec.channels.empty() ? 784 : static_cast<index_t>(in) * side * side, spec.head, spec.dropout, seed);
    stage_grads_.resize(stages_.size());
  }

  std::size_t stage_count() const { return stages_.size(); }
  const net_spec& spec() const { return spec_; }
  /// Output of stage k in the last forward, (B, C_k, H_k, W_k).
  const tensor& stage_output(std::size_t k) const { return stages_[k].output(); }
  /// Logits of the last forward, (B, 10).
  const tensor& logits() const { return head_.output(); }
  nn::sequential<float>& head() { return head_; }

  param_list parameters() {
    param_list p;
    for (auto& s : stages_) append(p, s.parameters());
    append(p, head_.parameters());
    return p;
  }
  void set_training(bool t) {
    for (auto& s : stages_) s.set_training(t);
    head_.set_training(t);
  }
  /// Data-parallel share of the batch for batch norm and dropout (trainer.hpp).
  void set_replica(const nn::replica& r) {
    for (auto& s : stages_) s.set_replica(r);
    head_.set_replica(r);
  }
  /// The dropout layers' mask counters: state a checkpoint must keep for an exact resume.
  std::vector<std::uint64_t*> dropout_offsets() {
    std::vector<std::uint64_t*> v;
    for (std::size_t i = 0; i < head_.size(); ++i)
      if (auto* d = head_.layer_if<nn::dropout<float>>(i)) v.push_back(&d->offset);
    return v;
  }
  void save_state(nn::checkpoint& ck, const std::string& prefix) {
    const auto offsets = dropout_offsets();
    for (std::size_t k = 0; k < offsets.size(); ++k) ck.put_int(prefix + "dropout" + std::to_string(k) + ".offset", static_cast<std::int64_t>(*offsets[k]));
  }
  void load_state(const nn::checkpoint& ck, const std::string& prefix) {
    const auto offsets = dropout_offsets();
    for (std::size_t k = 0; k < offsets.size(); ++k) {
      std::int64_t v = 0;
      distill::throw_if_error(ck.get_int(prefix + "dropout" + std::to_string(k) + ".offset", v));
      *offsets[k] = static_cast<std::uint64_t>(v);
    }
  }

  [[nodiscard]] distill::status forward(const distill::cpu& ctx, cview<4> x) {
    x_ = x;
    if (stages_.empty()) return head_.forward(ctx, x);
    DISTILL_TRY(stages_[0].forward(ctx, x));
    for (std::size_t k = 1; k < stages_.size(); ++k) DISTILL_TRY(stages_[k].forward(ctx, stages_[k - 1].output().cview<4>()));
    return head_.forward(ctx, stages_.back().output().cview<4>());
  }

  /// Backward of the last forward from dL/dlogits, adding `extra[k]` (when present and non-empty)
  /// to dL/d(stage k output): the gradients of the distillation losses on the features.
  /// Parameter gradients accumulate (zero them before the step).
  [[nodiscard]] distill::status backward(const distill::cpu& ctx, cview<2> dlogits, std::span<const tensor* const> extra = {}) {
    if (stages_.empty()) return head_.backward(ctx, x_, dlogits);
    const std::size_t last = stages_.size() - 1;
    DISTILL_TRY(stage_grads_[last].resize(stages_[last].output().shape()));
    DISTILL_TRY(head_.backward(ctx, stages_[last].output().cview<4>(), dlogits, stage_grads_[last].view<1>()));
    for (std::size_t k = stages_.size(); k-- > 0;) {
      if (k < extra.size() && extra[k] && !extra[k]->empty()) add_into(stage_grads_[k], *extra[k]);
      const cview<4> in = k == 0 ? x_ : stages_[k - 1].output().cview<4>();
      if (k == 0) {
        DISTILL_TRY(stages_[0].backward(ctx, in, stage_grads_[0].cview<4>()));
      } else {
        DISTILL_TRY(stage_grads_[k - 1].resize(stages_[k - 1].output().shape()));
        DISTILL_TRY(stages_[k].backward(ctx, in, stage_grads_[k].cview<4>(), stage_grads_[k - 1].view<1>()));
      }
    }
    return {};
  }

 private:
  static void append(param_list& to, const param_list& from) { to.insert(to.end(), from.begin(), from.end()); }
  static void add_into(tensor& dst, const tensor& src) {
    float* d = dst.data();
    const float* s = src.data();
    for (index_t i = 0; i < dst.size(); ++i) d[i] += s[i];
  }

  net_spec spec_;
  std::vector<nn::sequential<float>> stages_;
  nn::sequential<float> head_;
  std::vector<tensor> stage_grads_;
  cview<4> x_;
};

/// 1x1 conv (no bias) -> batch norm -> ReLU: maps student features to the teacher's channels.
inline nn::sequential<float> make_connector(const std::string& name, int in, int out, std::uint64_t seed) {
  nn::sequential<float> s;
  add_conv_bn_relu(s, name, in, out, seed, 1);
  return s;
}

/// The stage of `teacher` whose output a student stage of spatial size `side` is compared with:
/// the last stage of that size (AT pairs stages of equal resolution).
inline std::size_t matching_teacher_stage(const staged_net& teacher, index_t side) {
  std::size_t best = teacher.stage_count();
  for (std::size_t k = 0; k < teacher.stage_count(); ++k)
    if (teacher.stage_output(k).extent(2) == side) best = k;
  if (best == teacher.stage_count()) throw std::runtime_error("no teacher stage has a " + std::to_string(side) + " x " + std::to_string(side) + " output");
  return best;
}

}  // namespace fkd
