// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references for the attention family, written for clarity (plain loops
// straight from the formulas of distill/attention/*.hpp, no shared code with the library):
//   attention_transfer(...)  Zagoruyko & Komodakis AT, code and paper forms, loss and gradient
//   attention_map(...)       attention-distribution MSE / KL(teacher || student) with masks and
//                            head mappings, loss and gradient
// Tensors are contiguous row-major std::vector<double>. Each gradient here is checked against
// central finite differences of the matching loss function in the tests.

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace attention_ref {

// ---------------------------------------------------------------------------------------------
// Attention transfer
// ---------------------------------------------------------------------------------------------

enum class red { none, sum, mean };

struct at_config {
  double p = 2.0;
  double beta = 1.0;
  double eps = 1e-12;
  bool paper = false;  // false: beta * mean_n (u_s - u_t)^2; true: beta / 2 * ||u_s - u_t||_2
  red reduction = red::mean;
  double weight = 1.0;
  double grad_scale = 1.0;
};

struct at_result {
  std::vector<double> per_sample;  // weight * r * l_b (what reduction none returns)
  double loss = 0;                 // the reduced loss (sum of per_sample)
  std::vector<double> grad;        // dL/dA_s, [B, Cs, H, W]
};

/// Normalised attention map of sample b: u = Q / max(||Q||, eps), Q = mean_c |A|^p. Also
/// returns Q and the unclamped norm.
inline std::vector<double> at_map(const std::vector<double>& a, int b, int C, int N, double p, double eps,
                                  std::vector<double>* q_out = nullptr, double* norm_out = nullptr) {
  std::vector<double> q(N, 0.0);
  for (int c = 0; c < C; ++c)
    for (int n = 0; n < N; ++n) q[n] += std::pow(std::fabs(a[(static_cast<std::size_t>(b) * C + c) * N + n]), p) / C;
  double norm = 0;
  for (double v : q) norm += v * v;
  norm = std::sqrt(norm);
  std::vector<double> u(N);
  for (int n = 0; n < N; ++n) u[n] = q[n] / std::max(norm, eps);
  if (q_out) *q_out = q;
  if (norm_out) *norm_out = norm;
  return u;
}

inline at_result attention_transfer(const std::vector<double>& s, int B, int Cs, const std::vector<double>& t, int Ct, int H,
                                    int W, const at_config& cfg) {
  const int N = H * W;
  const double r = cfg.reduction == red::mean ? 1.0 / B : 1.0;
  at_result out;
  out.per_sample.assign(B, 0.0);
  out.grad.assign(static_cast<std::size_t>(B) * Cs * N, 0.0);
  for (int b = 0; b < B; ++b) {
    std::vector<double> qs;
    double ns_raw = 0;
    const std::vector<double> us = at_map(s, b, Cs, N, cfg.p, cfg.eps, &qs, &ns_raw);
    const std::vector<double> ut = at_map(t, b, Ct, N, cfg.p, cfg.eps);
    double d2 = 0;
    for (int n = 0; n < N; ++n) d2 += (us[n] - ut[n]) * (us[n] - ut[n]);
    const double d = std::sqrt(d2);
    const double l = cfg.paper ? cfg.beta / 2 * d : cfg.beta * d2 / N;
    out.per_sample[b] = cfg.weight * r * l;
    out.loss += out.per_sample[b];
    // Chain rule, step by step: dL/du, then through the normalisation, then through |A|^p.
    const double up = cfg.grad_scale * cfg.weight * r;
    std::vector<double> gu(N);
    for (int n = 0; n < N; ++n) {
      if (cfg.paper) gu[n] = d == 0 ? 0.0 : up * cfg.beta / 2 * (us[n] - ut[n]) / std::max(d, cfg.eps);
      else gu[n] = up * cfg.beta * 2 * (us[n] - ut[n]) / N;
    }
    std::vector<double> gq(N);
    if (ns_raw > cfg.eps) {
      double dot = 0;
      for (int n = 0; n < N; ++n) dot += us[n] * gu[n];
      for (int n = 0; n < N; ++n) gq[n] = (gu[n] - us[n] * dot) / ns_raw;
    } else {
      for (int n = 0; n < N; ++n) gq[n] = gu[n] / cfg.eps;
    }
    for (int c = 0; c < Cs; ++c)
      for (int n = 0; n < N; ++n) {
        const double a = s[(static_cast<std::size_t>(b) * Cs + c) * N + n];
        const double da = a == 0 ? 0.0 : cfg.p * std::pow(std::fabs(a), cfg.p - 1) * (a > 0 ? 1.0 : -1.0);
        out.grad[(static_cast<std::size_t>(b) * Cs + c) * N + n] = gq[n] * da / Cs;
      }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Attention-distribution losses
// ---------------------------------------------------------------------------------------------

enum class heads { one_to_one, index, group_mean };

struct am_config {
  bool kl = false;          // false: mse; true: KL(teacher || student) per row
  bool student_logits = true;
  bool teacher_logits = true;
  heads map = heads::one_to_one;
  std::vector<int> teacher_heads;  // heads::index
  int reduction = 2;        // 0 none, 1 sum, 2 mean, 3 batchmean
  double grad_scale = 1.0;
};

struct am_result {
  std::vector<double> per_row;  // l_r, [B * Hs * Lq]
  double loss = 0;              // reduced
  std::vector<double> grad;     // [B, Hs, Lq, Lk]
};

/// Softmax over the valid keys of one row (zero at invalid keys; all zero when nothing has mass).
inline std::vector<double> masked_softmax(const double* x, const std::vector<bool>& valid) {
  const std::size_t n = valid.size();
  double m = -std::numeric_limits<double>::infinity();
  for (std::size_t j = 0; j < n; ++j)
    if (valid[j] && x[j] > m) m = x[j];
  std::vector<double> p(n, 0.0);
  if (m == -std::numeric_limits<double>::infinity()) return p;
  double z = 0;
  for (std::size_t j = 0; j < n; ++j)
    if (valid[j]) z += std::exp(x[j] - m);
  for (std::size_t j = 0; j < n; ++j)
    if (valid[j]) p[j] = std::exp(x[j] - m) / z;
  return p;
}

/// key_mask [B, Lk] and query_mask [B, Lq] may be empty (all valid).
inline am_result attention_map(const std::vector<double>& s, const std::vector<double>& t, int B, int Hs, int Ht, int Lq,
                               int Lk, const std::vector<std::uint8_t>& key_mask,
                               const std::vector<std::uint8_t>& query_mask, const am_config& cfg) {
  am_result out;
  out.per_row.assign(static_cast<std::size_t>(B) * Hs * Lq, 0.0);
  out.grad.assign(static_cast<std::size_t>(B) * Hs * Lq * Lk, 0.0);
  // Divisor of the reduction.
  double valid_count = 0;
  for (int b = 0; b < B; ++b) {
    int nk = 0, nq = 0;
    for (int j = 0; j < Lk; ++j) nk += key_mask.empty() || key_mask[static_cast<std::size_t>(b) * Lk + j];
    for (int i = 0; i < Lq; ++i) nq += query_mask.empty() || query_mask[static_cast<std::size_t>(b) * Lq + i];
    valid_count += cfg.kl ? (nk > 0 ? nq : 0) : static_cast<double>(nq) * nk;
  }
  valid_count *= Hs;
  double divisor = 1;
  if (cfg.reduction == 2) divisor = valid_count;
  if (cfg.reduction == 3) divisor = B;
  const double c = divisor == 0 ? 0.0 : cfg.grad_scale / divisor;
  const int G = Ht / Hs;

  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hs; ++h)
      for (int i = 0; i < Lq; ++i) {
        const std::size_t row = (static_cast<std::size_t>(b) * Hs + h) * Lq + i;
        if (!query_mask.empty() && !query_mask[static_cast<std::size_t>(b) * Lq + i]) continue;
        std::vector<bool> valid(Lk);
        for (int j = 0; j < Lk; ++j) valid[j] = key_mask.empty() || key_mask[static_cast<std::size_t>(b) * Lk + j];
        const double* srow = &s[row * Lk];
        std::vector<double> ps(Lk, 0.0);
        if (cfg.student_logits) ps = masked_softmax(srow, valid);
        else
          for (int j = 0; j < Lk; ++j) ps[j] = valid[j] ? srow[j] : 0.0;
        std::vector<int> th;
        if (cfg.map == heads::one_to_one) th = {h};
        if (cfg.map == heads::index) th = {cfg.teacher_heads[h]};
        if (cfg.map == heads::group_mean)
          for (int g = 0; g < G; ++g) th.push_back(h * G + g);
        std::vector<double> pt(Lk, 0.0);
        for (int head : th) {
          const double* trow = &t[((static_cast<std::size_t>(b) * Ht + head) * Lq + i) * Lk];
          std::vector<double> p(Lk, 0.0);
          if (cfg.teacher_logits) p = masked_softmax(trow, valid);
          else
            for (int j = 0; j < Lk; ++j) p[j] = valid[j] ? trow[j] : 0.0;
          for (int j = 0; j < Lk; ++j) pt[j] += p[j] / static_cast<double>(th.size());
        }
        double l = 0;
        for (int j = 0; j < Lk; ++j) {
          if (!valid[j]) continue;
          if (!cfg.kl) l += (ps[j] - pt[j]) * (ps[j] - pt[j]);
          else if (pt[j] > 0) l += pt[j] * (std::log(pt[j]) - std::log(ps[j]));
        }
        out.per_row[row] = l;
        // Gradient with respect to the student's stored values.
        double* g = &out.grad[row * Lk];
        if (!cfg.kl) {
          std::vector<double> dp(Lk, 0.0);
          for (int j = 0; j < Lk; ++j)
            if (valid[j]) dp[j] = 2 * c * (ps[j] - pt[j]);
          if (cfg.student_logits) {
            double dot = 0;
            for (int j = 0; j < Lk; ++j) dot += ps[j] * dp[j];
            for (int j = 0; j < Lk; ++j) g[j] = valid[j] ? ps[j] * (dp[j] - dot) : 0.0;
          } else {
            for (int j = 0; j < Lk; ++j) g[j] = dp[j];
          }
        } else {
          double mass = 0;
          for (int j = 0; j < Lk; ++j) mass += pt[j];
          for (int j = 0; j < Lk; ++j) {
            if (!valid[j]) continue;
            if (cfg.student_logits) g[j] = c * (ps[j] * mass - pt[j]);
            else g[j] = pt[j] > 0 ? -c * pt[j] / ps[j] : 0.0;
          }
        }
      }
  double total = 0;
  for (double v : out.per_row) total += v;
  out.loss = divisor == 0 ? 0.0 : total / divisor;
  return out;
}

}  // namespace attention_ref
