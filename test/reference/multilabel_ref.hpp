// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision reference of the multi-label soft-target loss (sigmoid outputs with
// temperature, Liu et al. 2018), written from the textbook form -p log q - (1-p) log(1-q) with
// explicit probabilities: fine for moderate logits (|z / T| < ~30), which is what it is used with.

#include <cmath>
#include <cstdint>
#include <vector>

namespace distill_ref {

struct multilabel_ref_options {
  double T = 1;
  bool t_squared = true;
  int reduction = 3;  // 0 none, 1 sum, 2 mean, 3 batchmean
  double soft_weight = 1, hard_weight = 0, grad_scale = 1;
  bool kl = false;
};

/// Inputs (N, C) row-major; empty optional vectors mean "absent".
struct multilabel_ref_inputs {
  int N, C;
  std::vector<double> student, teacher;
  std::vector<std::uint8_t> labels, mask;
  std::vector<double> row_weights, class_weights, pos_weights;
};

inline double sigmoid_ref(double v) { return 1.0 / (1.0 + std::exp(-v)); }

inline double bce_ref(double target, double prob) {
  double s = 0;
  if (target > 0) s -= target * std::log(prob);
  if (target < 1) s -= (1 - target) * std::log(1 - prob);
  return s;
}

/// Per-row losses (reduction none) or the reduced loss in out[0]; grad = dL/dz^s.
inline std::vector<double> multilabel_ref(const multilabel_ref_inputs& in, const multilabel_ref_options& o, std::vector<double>* grad) {
  const int N = in.N, C = in.C;
  const double c = o.t_squared ? o.T * o.T : 1.0;
  std::vector<double> rows(N, 0.0), g(static_cast<std::size_t>(N) * C, 0.0);
  double counted = 0;
  for (int r = 0; r < N; ++r)
    for (int k = 0; k < C; ++k) {
      const int i = r * C + k;
      const double w = in.row_weights.empty() ? 1.0 : in.row_weights[r];
      const bool on = in.mask.empty() || in.mask[i] != 0;
      if (!on) continue;
      counted += w;
      const double e = w * (in.class_weights.empty() ? 1.0 : in.class_weights[k]);
      const double p = sigmoid_ref(in.teacher[i] / o.T), q = sigmoid_ref(in.student[i] / o.T);
      double soft = bce_ref(p, q);
      if (o.kl) soft -= bce_ref(p, p);
      double hard = 0, hard_grad = 0;
      if (o.hard_weight != 0) {
        const double l = in.labels[i], a = in.pos_weights.empty() ? 1.0 : in.pos_weights[k];
        const double s = sigmoid_ref(in.student[i]);
        hard = -(a * l * std::log(s) + (1 - l) * std::log(1 - s));
        hard_grad = -a * l * (1 - s) + (1 - l) * s;
      }
      rows[r] += e * (o.soft_weight * c * soft + o.hard_weight * hard);
      g[i] = e * (o.soft_weight * c / o.T * (q - p) + o.hard_weight * hard_grad);
    }
  double D = 1;
  if (o.reduction == 2) D = counted;
  if (o.reduction == 3) D = N;
  const double inv = D == 0 ? 0.0 : 1.0 / D;
  if (grad) {
    *grad = g;
    for (double& x : *grad) x *= o.grad_scale * inv;
  }
  if (o.reduction == 0) return rows;
  double total = 0;
  for (double x : rows) total += x;
  return {total * inv};
}

}  // namespace distill_ref
