// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Optimisers: SGD with momentum (and Nesterov), Adam, AdamW — the update rules of torch.optim,
//! over parameter groups, with optional global gradient-norm clipping before the update.
//!
//! For each trainable parameter w with gradient g, learning rate lr = options.lr * group.lr_scale
//! and weight decay wd (the group's, else the options'):
//!   SGD:   d = g + wd w;  if momentum:  buf = d (first step) else buf = momentum buf + (1 - dampening) d;
//!                                       d = nesterov ? d + momentum buf : buf
//!          w -= lr d
//!   Adam:  g += wd w  (L2, coupled);  AdamW: w *= 1 - lr wd  (decoupled, Loshchilov & Hutter 2019)
//!          m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,   t = number of this step (1, 2, ...)
//!          w -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)          (Kingma & Ba 2015)
//! The bias corrections are computed on the host (the step count lives there), so the CUDA
//! update is one multi-tensor launch per 24 parameters and never synchronises.
//!
//! Optimiser state (momentum buffers, m, v) is owned by the optimiser, one tensor per trainable
//! parameter, named "<param>.momentum_buffer" / "<param>.exp_avg" / "<param>.exp_avg_sq", and
//! the step count; `state()` lists them for checkpoints (nn/checkpoint.hpp).
//! Set the learning rate each step from a schedule: `opt.options.lr = schedule(step)`.

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "distill/nn/common.hpp"

namespace distill::nn {

template <class T, class Space>
struct param_group {
  parameter_list<T, Space> params;
  double lr_scale = 1.0;
  std::optional<double> weight_decay;  ///< overrides the optimiser's weight_decay
};

struct sgd_options {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  double max_grad_norm = 0.0;  ///< > 0: clip the global gradient norm before each step
};

struct adam_options {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  ///< true = AdamW
  double max_grad_norm = 0.0;
};

/// Per-step scalars of one parameter's update, shared by the CPU loop and the kernel (double, so
/// double parameters update exactly; float updates convert them once per element).
struct sgd_step_scalars {
  double lr, weight_decay, momentum, dampening;
  bool nesterov, first_step;
};
struct adam_step_scalars {
  double lr, weight_decay, beta1, beta2, eps, step_size, bias_correction2_sqrt;  // step_size = lr / (1 - b1^t)
  bool decoupled;
};

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void sgd_update(Acc& w, Acc g, Acc* buf, const sgd_step_scalars& s) noexcept {
  Acc d = g + static_cast<Acc>(s.weight_decay) * w;
  if (buf) {
    const Acc mom = static_cast<Acc>(s.momentum);
    *buf = s.first_step ? d : mom * *buf + (Acc(1) - static_cast<Acc>(s.dampening)) * d;
    d = s.nesterov ? d + mom * *buf : *buf;
  }
  w -= static_cast<Acc>(s.lr) * d;
}

template <class Acc>
DISTILL_HOST_DEVICE DISTILL_FORCEINLINE void adam_update(Acc& w, Acc g, Acc& m, Acc& v, const adam_step_scalars& s) noexcept {
  using std::sqrt;
  if (s.decoupled) w *= Acc(1) - static_cast<Acc>(s.lr) * static_cast<Acc>(s.weight_decay);
  else g += static_cast<Acc>(s.weight_decay) * w;
  m = static_cast<Acc>(s.beta1) * m + (Acc(1) - static_cast<Acc>(s.beta1)) * g;
  v = static_cast<Acc>(s.beta2) * v + (Acc(1) - static_cast<Acc>(s.beta2)) * g * g;
  const Acc denom = sqrt(v) / static_cast<Acc>(s.bias_correction2_sqrt) + static_cast<Acc>(s.eps);
  w -= static_cast<Acc>(s.step_size) * m / denom;
}

namespace nn_detail {

inline status check_optimizer_scalars(const char* fn, double lr, double wd) {
  if (!(lr >= 0) || !std::isfinite(lr)) return fail(errc::invalid_argument, fn, "'lr' must be finite and >= 0");
  if (!(wd >= 0) || !std::isfinite(wd)) return fail(errc::invalid_argument, fn, "'weight_decay' must be finite and >= 0");
  return {};
}

/// What every optimiser shares: groups, one state slot per trainable parameter, the step count,
/// clipping scratch.
template <class T, class Space>
struct optimizer_core {
  struct slot {
    parameter<T, Space>* param;
    double lr_scale;
    std::optional<double> weight_decay;
    tensor<T, Space> s1, s2;  // momentum buffer | Adam m, v
  };
  std::vector<slot> slots;
  index_t step_count = 0;
  tensor<float, Space> clip_scratch, clip_norm;

  void build(const std::vector<param_group<T, Space>>& groups, int states) {
    for (const auto& g : groups)
      for (auto* p : g.params) {
        if (!p->trainable) continue;
        slot s{p, g.lr_scale, g.weight_decay, {}, {}};
        if (states >= 1) throw_if_error(s.s1.resize(p->shape()));
        if (states >= 2) throw_if_error(s.s2.resize(p->shape()));
        slots.push_back(std::move(s));
      }
    throw_if_error(clip_norm.resize({1}));
  }
  parameter_list<T, Space> params() const {
    parameter_list<T, Space> out;
    for (const auto& s : slots) out.push_back(s.param);
    return out;
  }
  void add_state(std::vector<std::pair<std::string, tensor<T, Space>*>>& out, const char* n1, const char* n2) {
    for (auto& s : slots) {
      if (n1 && s.s1.size()) out.emplace_back(s.param->name + "." + n1, &s.s1);
      if (n2 && s.s2.size()) out.emplace_back(s.param->name + "." + n2, &s.s2);
    }
  }
  template <class Ctx>
  status clip(const Ctx& ctx, double max_norm) {
    if (max_norm <= 0) return {};
    return clip_grad_norm(ctx, params(), max_norm, clip_scratch, clip_norm.template view<1>());
  }
};

/// The accessors every optimiser has, over its optimizer_core (each optimiser adds step() and
/// names its state).
template <class T, class Space>
class optimizer_base {
 public:
  index_t steps() const noexcept { return core_.step_count; }
  index_t& step_count() noexcept { return core_.step_count; }
  /// Norm measured by the last clipping (one float in the optimiser's memory space).
  tensor_view<const float, 1, Space> last_grad_norm() const { return core_.clip_norm.template view<1>(); }
  parameter_list<T, Space> params() const { return core_.params(); }

 protected:
  /// Named state tensors for checkpoints: "<param>.<n1>" and "<param>.<n2>" (a null name: none).
  std::vector<std::pair<std::string, tensor<T, Space>*>> named_state(const char* n1, const char* n2) {
    std::vector<std::pair<std::string, tensor<T, Space>*>> out;
    core_.add_state(out, n1, n2);
    return out;
  }
  optimizer_core<T, Space> core_;
};

}  // namespace nn_detail

/// SGD with momentum / Nesterov (torch.optim.SGD).
template <class T, class Space = host_space>
class sgd : public nn_detail::optimizer_base<T, Space> {
  using nn_detail::optimizer_base<T, Space>::core_;

 public:
  sgd_options options;

  sgd(const std::vector<param_group<T, Space>>& groups, const sgd_options& o) : options(o) {
    core_.build(groups, o.momentum != 0 ? 1 : 0);
  }
  sgd(const parameter_list<T, Space>& params, const sgd_options& o) : sgd(std::vector<param_group<T, Space>>{{params, 1.0, std::nullopt}}, o) {}

  /// One update of every trainable parameter from its gradient.
  template <class Ctx>
  [[nodiscard]] status step(const Ctx& ctx) {
    constexpr const char* fn = "nn::sgd::step";
    DISTILL_TRY(nn_detail::check_optimizer_scalars(fn, options.lr, options.weight_decay));
    DISTILL_TRY(check_in_range(fn, "momentum", options.momentum, 0.0, 1.0));
    DISTILL_TRY(core_.clip(ctx, options.max_grad_norm));
    std::vector<sgd_step_scalars> scalars;
    for (const auto& s : core_.slots)
      scalars.push_back({options.lr * s.lr_scale, s.weight_decay.value_or(options.weight_decay), options.momentum, options.dampening,
                         options.nesterov, core_.step_count == 0});
    DISTILL_TRY(sgd_apply<T>(ctx, core_.slots, scalars));
    ++core_.step_count;
    return {};
  }
  /// Named state tensors for checkpoints ("<param>.momentum_buffer").
  std::vector<std::pair<std::string, tensor<T, Space>*>> state() { return this->named_state("momentum_buffer", nullptr); }
};

/// Adam (Kingma & Ba 2015) / AdamW with decoupled_weight_decay (torch.optim.Adam / AdamW).
template <class T, class Space = host_space>
class adam : public nn_detail::optimizer_base<T, Space> {
  using nn_detail::optimizer_base<T, Space>::core_;

 public:
  adam_options options;

  adam(const std::vector<param_group<T, Space>>& groups, const adam_options& o) : options(o) { core_.build(groups, 2); }
  adam(const parameter_list<T, Space>& params, const adam_options& o) : adam(std::vector<param_group<T, Space>>{{params, 1.0, std::nullopt}}, o) {}

  template <class Ctx>
  [[nodiscard]] status step(const Ctx& ctx) {
    constexpr const char* fn = "nn::adam::step";
    DISTILL_TRY(nn_detail::check_optimizer_scalars(fn, options.lr, options.weight_decay));
    DISTILL_TRY(check_positive(fn, "eps", options.eps));
    DISTILL_TRY(check_in_range(fn, "beta1", options.beta1, 0.0, 1.0 - 1e-12));
    DISTILL_TRY(check_in_range(fn, "beta2", options.beta2, 0.0, 1.0 - 1e-12));
    DISTILL_TRY(core_.clip(ctx, options.max_grad_norm));
    const double t = static_cast<double>(core_.step_count + 1);
    const double bc1 = 1.0 - std::pow(options.beta1, t), bc2 = 1.0 - std::pow(options.beta2, t);
    std::vector<adam_step_scalars> scalars;
    for (const auto& s : core_.slots) {
      const double lr = options.lr * s.lr_scale;
      scalars.push_back({lr, s.weight_decay.value_or(options.weight_decay), options.beta1, options.beta2, options.eps, lr / bc1,
                         std::sqrt(bc2), options.decoupled_weight_decay});
    }
    DISTILL_TRY(adam_apply<T>(ctx, core_.slots, scalars));
    ++core_.step_count;
    return {};
  }
  /// Named state tensors for checkpoints ("<param>.exp_avg", "<param>.exp_avg_sq").
  std::vector<std::pair<std::string, tensor<T, Space>*>> state() { return this->named_state("exp_avg", "exp_avg_sq"); }
};

/// AdamW = Adam with decoupled weight decay (default weight_decay 0.01, as torch.optim.AdamW).
template <class T, class Space = host_space>
class adamw : public adam<T, Space> {
 public:
  static adam_options defaults(adam_options o) {
    o.decoupled_weight_decay = true;
    return o;
  }
  adamw(const std::vector<param_group<T, Space>>& groups, adam_options o = {0.001, 0.9, 0.999, 1e-8, 0.01, true, 0.0})
      : adam<T, Space>(groups, defaults(o)) {}
  adamw(const parameter_list<T, Space>& params, adam_options o = {0.001, 0.9, 0.999, 1e-8, 0.01, true, 0.0})
      : adam<T, Space>(params, defaults(o)) {}
};

// ---- CPU updates ----

template <class T>
[[nodiscard]] status sgd_apply(const cpu& ctx, std::vector<typename nn_detail::optimizer_core<T, host_space>::slot>& slots,
                               const std::vector<sgd_step_scalars>& scalars) {
  using Acc = accum_t<T>;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    auto& s = slots[i];
    if (!s.param->trainable) continue;  // frozen after the optimiser was built
    T* w = s.param->value.data();
    const T* g = s.param->grad.data();
    T* buf = s.s1.size() ? s.s1.data() : nullptr;
    const auto& sc = scalars[i];
    parallel_for(
        ctx, s.param->size(),
        [&](index_t b, index_t e) {
          for (index_t j = b; j < e; ++j) {
            Acc wj = static_cast<Acc>(w[j]), bj = buf ? static_cast<Acc>(buf[j]) : Acc(0);
            sgd_update<Acc>(wj, static_cast<Acc>(g[j]), buf ? &bj : nullptr, sc);
            w[j] = static_cast<T>(wj);
            if (buf) buf[j] = static_cast<T>(bj);
          }
        },
        index_t(1) << 15);
  }
  return {};
}

template <class T>
[[nodiscard]] status adam_apply(const cpu& ctx, std::vector<typename nn_detail::optimizer_core<T, host_space>::slot>& slots,
                                const std::vector<adam_step_scalars>& scalars) {
  using Acc = accum_t<T>;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    auto& s = slots[i];
    if (!s.param->trainable) continue;
    T* w = s.param->value.data();
    const T* g = s.param->grad.data();
    T* m = s.s1.data();
    T* v = s.s2.data();
    const auto& sc = scalars[i];
    parallel_for(
        ctx, s.param->size(),
        [&](index_t b, index_t e) {
          for (index_t j = b; j < e; ++j) {
            Acc wj = static_cast<Acc>(w[j]), mj = static_cast<Acc>(m[j]), vj = static_cast<Acc>(v[j]);
            adam_update<Acc>(wj, static_cast<Acc>(g[j]), mj, vj, sc);
            w[j] = static_cast<T>(wj), m[j] = static_cast<T>(mj), v[j] = static_cast<T>(vj);
          }
        },
        index_t(1) << 15);
  }
  return {};
}

}  // namespace distill::nn

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/nn_optimizer.cuh"
#endif
