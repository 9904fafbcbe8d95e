// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references for the soft-target losses, written for clarity: each
// divergence straight from its definition over explicit log-softmax vectors, one row at a time.
// Nothing here is shared with the library. Gradients are the analytic ones of the spec
// (shared/spec/math.md §2), themselves checked against finite differences in the tests.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace soft_target_ref {

using vec = std::vector<double>;
constexpr double inf = std::numeric_limits<double>::infinity();

enum class kind { kl_teacher_student, kl_student_teacher, jsd, soft_cross_entropy, dkd };
enum class reduction { none, sum, mean, batchmean };

struct config {
  kind k = kind::kl_teacher_student;
  double temperature = 1.0;
  bool t_squared = true;
  soft_target_ref::reduction reduction = soft_target_ref::reduction::batchmean;
  double soft_weight = 1.0, hard_weight = 0.0, grad_scale = 1.0;
  std::int64_t ignore_index = -100;
  double jsd_beta = 0.5;
  bool jsd_trl = false;
  double dkd_alpha = 1.0, dkd_beta = 8.0;
};

inline double logsumexp(const vec& v) {
  double m = -inf;
  for (double x : v) m = std::max(m, x);
  if (m == -inf) return -inf;
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}

/// log softmax(z / T)
inline vec log_softmax(const vec& z, double t) {
  vec x(z.size());
  for (std::size_t i = 0; i < z.size(); ++i) x[i] = z[i] / t;
  const double l = logsumexp(x);
  for (auto& v : x) v -= l;
  return x;
}

inline vec exp_of(const vec& l) {
  vec p(l.size());
  for (std::size_t i = 0; i < l.size(); ++i) p[i] = std::exp(l[i]);
  return p;
}

/// sum_k a_k (la_k - lb_k) with 0 log 0 = 0
inline double kl(const vec& la, const vec& lb) {
  double s = 0;
  for (std::size_t i = 0; i < la.size(); ++i) {
    const double a = std::exp(la[i]);
    if (a == 0) continue;
    s += a * (la[i] - lb[i]);
  }
  return s;
}

/// log of the mixture beta p + (1 - beta) q, per class
inline vec log_mixture(const vec& lp, const vec& lq, double beta) {
  vec lm(lp.size());
  for (std::size_t i = 0; i < lp.size(); ++i) {
    const double a = beta > 0 ? std::log(beta) + lp[i] : -inf;
    const double b = beta < 1 ? std::log(1 - beta) + lq[i] : -inf;
    const double m = std::max(a, b);
    lm[i] = m == -inf ? -inf : m + std::log(std::exp(a - m) + std::exp(b - m));
  }
  return lm;
}

/// Non-target log-softmax: log softmax over k != t of z / T (entry t set to -inf).
inline vec log_softmax_without(const vec& z, double t, std::size_t target) {
  vec x(z.size());
  for (std::size_t i = 0; i < z.size(); ++i) x[i] = i == target ? -inf : z[i] / t;
  const double l = logsumexp(x);
  for (auto& v : x) v -= l;
  return x;
}

/// f_r: the divergence of one row (no T^2, no weights).
inline double row_divergence(const config& c, const vec& zs, const vec& zt, std::int64_t label) {
  const vec lq = log_softmax(zs, c.temperature), lp = log_softmax(zt, c.temperature);
  switch (c.k) {
    case kind::kl_teacher_student: return kl(lp, lq);
    case kind::kl_student_teacher: return kl(lq, lp);
    case kind::soft_cross_entropy: {
      double s = 0;
      for (std::size_t i = 0; i < lp.size(); ++i)
        if (std::exp(lp[i]) != 0) s -= std::exp(lp[i]) * lq[i];
      return s;
    }
    case kind::jsd: {
      const double b = c.jsd_beta;
      if (b == 0) return kl(lp, lq);
      if (b == 1) return kl(lq, lp);
      const vec lm = log_mixture(lp, lq, b);
      const double raw = b * kl(lp, lm) + (1 - b) * kl(lq, lm);
      return c.jsd_trl ? raw : raw / (b * (1 - b));
    }
    case kind::dkd: {
      const std::size_t t = static_cast<std::size_t>(label);
      const double pt = std::exp(lp[t]);
      // binary KL with log(1 - p_t) from the non-target log-sum-exp
      vec xt(zt.size()), ys(zs.size());
      for (std::size_t i = 0; i < zt.size(); ++i) xt[i] = i == t ? -inf : zt[i] / c.temperature;
      for (std::size_t i = 0; i < zs.size(); ++i) ys[i] = i == t ? -inf : zs[i] / c.temperature;
      const double l1mp = logsumexp(xt) - logsumexp([&] { vec v(zt); for (auto& e : v) e /= c.temperature; return v; }());
      const double l1mq = logsumexp(ys) - logsumexp([&] { vec v(zs); for (auto& e : v) e /= c.temperature; return v; }());
      const double omp = std::exp(l1mp);
      double tckd = 0;
      if (pt != 0) tckd += pt * (lp[t] - lq[t]);
      if (omp != 0) tckd += omp * (l1mp - l1mq);
      double nckd = 0;
      if (logsumexp(xt) != -inf) nckd = kl(log_softmax_without(zt, c.temperature, t), log_softmax_without(zs, c.temperature, t));
      return c.dkd_alpha * tckd + (logsumexp(xt) != -inf ? c.dkd_beta : 0.0) * nckd;
    }
  }
  return 0;
}

/// df_r / dy_k with y = z^s / T (analytic, from the spec).
inline vec row_grad_y(const config& c, const vec& zs, const vec& zt, std::int64_t label) {
  const vec lq = log_softmax(zs, c.temperature), lp = log_softmax(zt, c.temperature);
  const vec q = exp_of(lq), p = exp_of(lp);
  const std::size_t n = zs.size();
  vec g(n, 0.0);
  switch (c.k) {
    case kind::kl_teacher_student:
    case kind::soft_cross_entropy:
      for (std::size_t i = 0; i < n; ++i) g[i] = q[i] - p[i];
      break;
    case kind::kl_student_teacher: {
      const double f = kl(lq, lp);
      for (std::size_t i = 0; i < n; ++i) g[i] = q[i] == 0 ? 0 : q[i] * ((lq[i] - lp[i]) - f);
      break;
    }
    case kind::jsd: {
      const double b = c.jsd_beta;
      if (b == 0) {
        for (std::size_t i = 0; i < n; ++i) g[i] = q[i] - p[i];
      } else if (b == 1) {
        const double f = kl(lq, lp);
        for (std::size_t i = 0; i < n; ++i) g[i] = q[i] == 0 ? 0 : q[i] * ((lq[i] - lp[i]) - f);
      } else {
        // raw: d/dy JSD = (1 - b) q (l - <q, l>), l = log q - log M
        const vec lm = log_mixture(lp, lq, b);
        double mean = 0;
        for (std::size_t i = 0; i < n; ++i)
          if (q[i] != 0) mean += q[i] * (lq[i] - lm[i]);
        const double scale = c.jsd_trl ? (1 - b) : 1 / b;
        for (std::size_t i = 0; i < n; ++i) g[i] = q[i] == 0 ? 0 : scale * q[i] * ((lq[i] - lm[i]) - mean);
      }
      break;
    }
    case kind::dkd: {
      const std::size_t t = static_cast<std::size_t>(label);
      const double pt = p[t], qt = q[t];
      const vec lph = log_softmax_without(zt, c.temperature, t), lqh = log_softmax_without(zs, c.temperature, t);
      const bool has_nt = std::any_of(lph.begin(), lph.end(), [](double v) { return std::isfinite(v); });
      const double beta = has_nt ? c.dkd_beta : 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        if (i == t) {
          g[i] = c.dkd_alpha * (qt - pt);
        } else {
          const double qh = std::exp(lqh[i]), ph = has_nt ? std::exp(lph[i]) : 0.0;
          g[i] = c.dkd_alpha * qh * (pt - qt) + beta * (qh - ph);
        }
      }
      break;
    }
  }
  return g;
}

/// Everything a call produces, in double.
struct result {
  vec loss;        // (1) or (N) with reduction none
  vec grad;        // (N * C)
  vec row_kl, row_entropy, row_top1, row_hard;
};

struct batch {
  std::size_t n = 0, c = 0;
  vec zs, zt;                        // row-major (n, c)
  std::vector<std::int64_t> labels;  // empty: none
  vec weights;                       // empty: all 1
  double normalizer = -1;            // < 0: none
};

inline vec row_of(const vec& m, std::size_t r, std::size_t c) { return vec(m.begin() + r * c, m.begin() + (r + 1) * c); }

inline result evaluate(const config& cf, const batch& b) {
  result out;
  const double t = cf.temperature, cT = cf.t_squared ? t * t : 1.0;
  auto ignored = [&](std::size_t r) { return !b.labels.empty() && b.labels[r] == cf.ignore_index; };
  auto weight = [&](std::size_t r) { return b.weights.empty() ? 1.0 : b.weights[r]; };
  double divisor = 1;
  if (b.normalizer >= 0) {
    divisor = b.normalizer;
  } else if (cf.reduction == reduction::batchmean) {
    divisor = static_cast<double>(b.n);
  } else if (cf.reduction == reduction::mean) {
    divisor = 0;
    for (std::size_t r = 0; r < b.n; ++r)
      if (!ignored(r)) divisor += weight(r);
  }
  const double inv_d = divisor == 0 ? 0 : 1 / divisor;
  vec row_loss(b.n, 0.0);
  out.grad.assign(b.n * b.c, 0.0);
  out.row_kl.assign(b.n, 0.0);
  out.row_entropy.assign(b.n, 0.0);
  out.row_top1.assign(b.n, 0.0);
  out.row_hard.assign(b.n, 0.0);
  for (std::size_t r = 0; r < b.n; ++r) {
    if (ignored(r)) continue;
    const vec zs = row_of(b.zs, r, b.c), zt = row_of(b.zt, r, b.c);
    const std::int64_t label = b.labels.empty() ? -1 : b.labels[r];
    const double f = row_divergence(cf, zs, zt, label);
    const vec lq1 = log_softmax(zs, 1.0);
    const double hard = label >= 0 ? -lq1[static_cast<std::size_t>(label)] : 0.0;
    const double w = weight(r);
    row_loss[r] = w * (cf.soft_weight * cT * f + (cf.hard_weight != 0 ? cf.hard_weight * hard : 0.0));
    const vec gy = row_grad_y(cf, zs, zt, label);
    const vec q1 = exp_of(lq1);
    for (std::size_t k = 0; k < b.c; ++k) {
      double g = cf.soft_weight * cT / t * gy[k];
      if (cf.hard_weight != 0) g += cf.hard_weight * (q1[k] - (static_cast<std::int64_t>(k) == label ? 1.0 : 0.0));
      out.grad[r * b.c + k] = cf.grad_scale * w * inv_d * g;
    }
    const vec lp = log_softmax(zt, t), lq = log_softmax(zs, t);
    out.row_kl[r] = kl(lp, lq);
    double h = 0;
    for (double v : lp)
      if (std::exp(v) != 0) h -= std::exp(v) * v;
    out.row_entropy[r] = h;
    const auto at = std::max_element(zt.begin(), zt.end()) - zt.begin();
    const auto as = std::max_element(zs.begin(), zs.end()) - zs.begin();
    out.row_top1[r] = at == as ? 1.0 : 0.0;
    out.row_hard[r] = hard;
  }
  if (cf.reduction == reduction::none) {
    out.loss = row_loss;
  } else {
    double s = 0;
    for (double v : row_loss) s += v;
    out.loss = {s * inv_d};
  }
  return out;
}

/// The reduced loss (or sum of per-row losses for none) as a function of everything, for
/// finite differences in the student logits and in T.
inline double total_loss(const config& cf, const batch& b) {
  const result r = evaluate(cf, b);
  double s = 0;
  for (double v : r.loss) s += v;
  return s;
}

// ---- top-k sparse teacher (spec §2.4 variants A and C) ----
enum class topk_variant { renormalized, rest_bucket };

/// One row: student logits zs (C), teacher indices (K, negative = unused) and log-probabilities.
inline double topk_row_divergence(topk_variant v, double t, const vec& zs, const std::vector<std::int64_t>& idx,
                                  const vec& lv) {
  const vec lq = log_softmax(zs, t);
  vec li;
  std::vector<std::size_t> cls;
  for (std::size_t j = 0; j < idx.size(); ++j)
    if (idx[j] >= 0) li.push_back(lv[j]), cls.push_back(static_cast<std::size_t>(idx[j]));
  if (v == topk_variant::renormalized) {
    const double l = logsumexp(li);
    double s = 0;
    for (std::size_t j = 0; j < li.size(); ++j) {
      const double lpj = li[j] - l;
      if (std::exp(lpj) != 0) s += std::exp(lpj) * (lpj - lq[cls[j]]);
    }
    return s;
  }
  double s = 0, mass = 0;
  for (std::size_t j = 0; j < li.size(); ++j) {
    if (std::exp(li[j]) != 0) s += std::exp(li[j]) * (li[j] - lq[cls[j]]);
    mass += std::exp(li[j]);
  }
  // rest bucket: residual teacher mass r against the student mass outside the top-k, s_rest
  vec rest;
  for (std::size_t k = 0; k < zs.size(); ++k)
    if (std::find(cls.begin(), cls.end(), k) == cls.end()) rest.push_back(zs[k] / t);
  vec all(zs.size());
  for (std::size_t k = 0; k < zs.size(); ++k) all[k] = zs[k] / t;
  const double log_s = rest.empty() ? -inf : logsumexp(rest) - logsumexp(all);
  const double r = std::max(0.0, 1.0 - mass);
  if (r > 0) s += r * (std::log(r) - log_s);
  return s;
}

/// d/dy of the top-k divergence (spec §2.4: q - p~ for A; q - p^ for C).
inline vec topk_row_grad_y(topk_variant v, double t, const vec& zs, const std::vector<std::int64_t>& idx, const vec& lv) {
  const vec lq = log_softmax(zs, t), q = exp_of(lq);
  vec g = q;
  vec li;
  std::vector<std::size_t> cls;
  for (std::size_t j = 0; j < idx.size(); ++j)
    if (idx[j] >= 0) li.push_back(lv[j]), cls.push_back(static_cast<std::size_t>(idx[j]));
  if (v == topk_variant::renormalized) {
    const double l = logsumexp(li);
    for (std::size_t j = 0; j < li.size(); ++j) g[cls[j]] -= std::exp(li[j] - l);
    return g;
  }
  double mass = 0, in_mass = 0;
  for (std::size_t j = 0; j < li.size(); ++j) mass += std::exp(li[j]), in_mass += q[cls[j]];
  const double r = std::max(0.0, 1.0 - mass);
  const double s = 1.0 - in_mass;  // fine in double for the moderate test rows
  for (std::size_t k = 0; k < zs.size(); ++k) {
    const bool in = std::find(cls.begin(), cls.end(), k) != cls.end();
    if (!in) g[k] = s > 0 ? q[k] - r * q[k] / s : q[k];
  }
  for (std::size_t j = 0; j < li.size(); ++j) g[cls[j]] = q[cls[j]] - std::exp(li[j]);
  return g;
}

}  // namespace soft_target_ref
