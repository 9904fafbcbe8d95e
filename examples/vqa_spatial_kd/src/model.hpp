// SPDX-License-Identifier: MIT
#pragma once
// A model of the example: a network (network.hpp, the Relation Network), what it is trained
// with (objective.hpp) and its optimiser, written once for both memory spaces: rn_model<host_space>
// runs on distill::cpu, rn_model<cuda_space> on an nn::cuda_blas (backend_cuda.cu instantiates it).
//
// A student finds its teacher through teacher_signals<Space> (signals.hpp) and reads nothing
// else of it, so any model that exposes those signals can teach, and the objective works for
// any network that hands it its logits and calls the gradient hooks in its backward pass.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/nn/blas.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/parameter.hpp"
#include "distill/nn/tensor.hpp"
#include "network.hpp"
#include "objective.hpp"
#include "runner.hpp"
#include "signals.hpp"

namespace vqa {

template <class Space>
class rn_model final : public model_runner, public teacher_signals<Space> {
  using T = float;
  using ctx_t = distill::nn::exec_t<Space>;
  using tensor = distill::nn::tensor<T, Space>;
  template <int R>
  using cview = distill::tensor_view<const T, R, Space>;

 public:
  rn_model(const model_spec& spec, const train_config& cfg)
      : spec_(spec),
        ctx_(distill::nn::make_exec<Space>({.threads = cfg.threads, .precision = distill::matmul_precision::tf32})),
        net_(spec, cfg, ctx_),
        objective_(spec, cfg, ctx_),
        opt_(net_.parameters(), distill::nn::adam_options{cfg.lr}) {}

  const model_spec& spec() const override { return spec_; }

  distill::status set_gradient_combiner(gradient_combiner combine) override {
    if constexpr (!std::is_same_v<Space, distill::host_space>)
      if (combine) return distill::fail(distill::errc::invalid_argument, "rn_model", "data-parallel training runs on the CPU (--device cpu)");
    combine_ = std::move(combine);
    return {};
  }

  std::int64_t parameter_count() const override {
    std::int64_t n = 0;
    for (const auto* p : net_.parameters())
      if (!p->buffer) n += p->value.size();
    return n;
  }

  distill::status train_step(const host_batch& b, model_runner* teacher, double lr, double& loss_out) override {
    if (b.global_size > 0) net_.dropout().set_replica({b.first_row, b.global_size, {}});  // the global rows' masks
    DISTILL_TRY(compute_gradients(b, teacher, loss_out));
    if constexpr (std::is_same_v<Space, distill::host_space>)
      if (combine_) combine_(net_.parameters(), b.global_size > 0 ? static_cast<double>(b.size) / b.global_size : 1.0);
    opt_.options.lr = lr;
    DISTILL_TRY(opt_.step(ctx_));
    return objective_.end_step();
  }

  /// The training loss of the batch (every term times its weight: the objective the gradients
  /// belong to) and the gradients of all parameters, without an optimiser step.
  distill::status compute_gradients(const host_batch& b, model_runner* teacher_base, double& loss_out) {
    using namespace distill;
    teacher_signals<Space>* teacher = nullptr;
    if (objective_.needs_teacher()) {
      teacher = dynamic_cast<teacher_signals<Space>*>(teacher_base);
      if (!teacher)
        return fail(errc::invalid_argument, "rn_model::train_step", "'" + spec_.name + "' needs a teacher on the same device");
      DISTILL_TRY(teacher->observe(b));
    }
    DISTILL_TRY(net_.forward(b, true));
    DISTILL_TRY(nn::zero_grad(ctx_, net_.parameters()));
    DISTILL_TRY(objective_.begin(b, teacher));
    DISTILL_TRY(d_logits_.resize({b.size, rn_network<Space>::answers}));
    DISTILL_TRY(objective_.logits(net_.logits(), d_logits_.template view<2>()));
    DISTILL_TRY(net_.backward(d_logits_.template cview<2>(), objective_));
    return objective_.total(loss_out);
  }

  /// Every trainable parameter and buffer (values and gradients), e.g. for gradient checks.
  const distill::nn::parameter_list<T, Space>& parameters() const { return net_.parameters(); }

  distill::status predict(const host_batch& b, std::int32_t* out, float* pair_weights) override {
    using namespace distill;
    DISTILL_TRY(net_.forward(b, false));
    const index_t B = b.size, N = net_.objects_per_scene();
    const std::vector<float> logits = net_.logits_to_host();
    const index_t answers = rn_network<Space>::answers;
    for (index_t i = 0; i < B; ++i) {
      const float* row = logits.data() + i * answers;
      out[i] = static_cast<std::int32_t>(std::max_element(row, row + answers) - row);
    }
    if (pair_weights) {
      const std::size_t n = static_cast<std::size_t>(B * N * N);
      if (spec_.mask == mask_source::none) std::fill(pair_weights, pair_weights + n, 1.0f);
      else if (spec_.mask == mask_source::logic) std::copy(b.logic_mask, b.logic_mask + n, pair_weights);
      else {
        const auto w = net_.predicted_pair_weights().to_host();
        std::copy(w.begin(), w.end(), pair_weights);
      }
    }
    return {};
  }

  distill::status save(const std::string& path, int epoch, const std::string& meta) override {
    using namespace distill;
    nn::checkpoint ck;
    DISTILL_TRY(ck.add_parameters(net_.parameters()));
    DISTILL_TRY(ck.add_optimizer(opt_));
    ck.put_int("epoch", epoch);
    ck.put_int("dropout_offset", static_cast<std::int64_t>(net_.dropout().offset));
    ck.put_string("meta", meta);
    ck.put_string("model", spec_.name);
    DISTILL_TRY(objective_.save_state(ck));
    return ck.save(path);
  }

  distill::status load(const std::string& path, int& epoch, std::string& meta) override {
    using namespace distill;
    nn::checkpoint ck;
    DISTILL_TRY(nn::checkpoint::load(path, ck));
    std::string name;
    DISTILL_TRY(ck.get_string("model", name));
    if (name != spec_.name)
      return fail(errc::corrupt_data, "rn_model::load", "'" + path + "' holds model '" + name + "', not '" + spec_.name + "'");
    DISTILL_TRY(ck.restore_parameters(net_.parameters()));
    DISTILL_TRY(ck.restore_optimizer(opt_));
    std::int64_t e = 0, offset = 0;
    DISTILL_TRY(ck.get_int("epoch", e));
    DISTILL_TRY(ck.get_int("dropout_offset", offset));
    DISTILL_TRY(ck.get_string("meta", meta));
    DISTILL_TRY(objective_.load_state(ck, path));
    epoch = static_cast<int>(e);
    net_.dropout().offset = static_cast<std::uint64_t>(offset);
    return {};
  }

  // ---- teacher_signals: the network's
  distill::status observe(const host_batch& b) override { return net_.observe(b); }
  cview<2> logits() const override { return net_.logits(); }
  cview<4> pair_distribution() const override { return net_.pair_distribution(); }
  cview<4> feature_map(int block) const override { return net_.feature_map(block); }
  cview<2> tokens() const override { return net_.tokens(); }

 private:
  model_spec spec_;
  ctx_t ctx_;
  rn_network<Space> net_;
  kd_objective<Space> objective_;
  distill::nn::adam<T, Space> opt_;
  tensor d_logits_;
  gradient_combiner combine_;
};

}  // namespace vqa
