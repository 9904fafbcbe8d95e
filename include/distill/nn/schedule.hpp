// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Learning-rate schedules, evaluated on the host per optimisation step (0-based):
//!
//!   warm-up (all kinds, w = warmup_steps > 0):  lr(t) = base (t + 1) / w          for t < w
//!   constant:  lr(t) = base
//!   step:      lr(t) = base gamma^floor((t - w) / step_size)                  (torch StepLR)
//!   cosine:    lr(t) = min + (base - min) (1 + cos(pi (t - w) / (total - w))) / 2,  t clamped to total
//!                                                                              (Loshchilov & Hutter 2017)
//!
//!   auto sched = nn::lr_schedule::cosine(1e-3, total_steps, warmup_steps);
//!   opt.options.lr = sched(step);

#include <algorithm>
#include <cmath>

#include "distill/core/config.hpp"

namespace distill::nn {

struct lr_schedule {
  enum class kind { constant, step, cosine };
  kind type = kind::constant;
  double base_lr = 1e-3;
  index_t warmup_steps = 0;
  index_t step_size = 1;   ///< step: steps between decays
  double gamma = 0.1;      ///< step: decay factor
  index_t total_steps = 1; ///< cosine: length of warm-up + decay
  double min_lr = 0.0;     ///< cosine: floor

  static lr_schedule constant(double lr, index_t warmup = 0) { return {kind::constant, lr, warmup, 1, 1.0, 1, 0.0}; }
  static lr_schedule step(double lr, index_t step_size, double gamma, index_t warmup = 0) {
    return {kind::step, lr, warmup, step_size, gamma, 1, 0.0};
  }
  static lr_schedule cosine(double lr, index_t total_steps, index_t warmup = 0, double min_lr = 0.0) {
    return {kind::cosine, lr, warmup, 1, 1.0, total_steps, min_lr};
  }

  /// Learning rate at step t (0-based).
  double operator()(index_t t) const {
    if (t < 0) t = 0;
    if (warmup_steps > 0 && t < warmup_steps) return base_lr * static_cast<double>(t + 1) / static_cast<double>(warmup_steps);
    const index_t u = t - warmup_steps;
    switch (type) {
      case kind::step: return base_lr * std::pow(gamma, static_cast<double>(u / std::max<index_t>(1, step_size)));
      case kind::cosine: {
        const index_t span = std::max<index_t>(1, total_steps - warmup_steps);
        const double x = static_cast<double>(std::min(u, span)) / static_cast<double>(span);
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(3.14159265358979323846 * x));
      }
      default: return base_lr;
    }
  }
};

}  // namespace distill::nn
