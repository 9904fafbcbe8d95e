// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references for the relational family, written for clarity:
//   * relational pairing: builds every pair input [o_i; o_j; q] explicitly (no first-layer split,
//     no tiling), runs g on it, stores every activation, backpropagates pair by pair;
//   * pair scorer: MLP / bilinear score of every pair, sigmoid / softmax normalisation, the
//     supervision losses and their gradients;
//   * box features: the RVL-BERT coordinate features by their defining formulas.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace distill_ref {

// ------------------------------------------------------------------ relational pairing

struct mlp_d {
  int L = 0;
  std::vector<std::vector<double>> W;  // W[l] row-major [in, H]
  std::vector<std::vector<double>> b;  // b[l] [H], or empty = no bias
};

struct pairing_problem_d {
  long B = 0, N = 0, D = 0, Q = 0, H = 0;
  std::vector<double> o;          // [B, N, D]
  std::vector<double> q;          // [B, Q]
  std::vector<double> M;          // [B, N, N], empty = all ones
  std::vector<std::uint8_t> om;   // [B, N], empty = all present
  bool self = true, last_relu = true;
  double scale = 1.0;
  mlp_d g;

  bool present(long b, long i) const { return om.empty() || om[static_cast<std::size_t>(b * N + i)] != 0; }
  bool in_set(long b, long i, long j) const { return present(b, i) && present(b, j) && (self || i != j); }
  double mask(long b, long i, long j) const { return M.empty() ? 1.0 : M[static_cast<std::size_t>((b * N + i) * N + j)]; }
};

/// Activations of g for one pair: x (the concatenated input), then h[0..L-1] (post-activation).
struct pair_trace {
  std::vector<double> x;
  std::vector<std::vector<double>> h;
};

inline pair_trace pair_forward(const pairing_problem_d& p, long b, long i, long j) {
  pair_trace t;
  for (long k = 0; k < p.D; ++k) t.x.push_back(p.o[static_cast<std::size_t>((b * p.N + i) * p.D + k)]);
  for (long k = 0; k < p.D; ++k) t.x.push_back(p.o[static_cast<std::size_t>((b * p.N + j) * p.D + k)]);
  for (long k = 0; k < p.Q; ++k) t.x.push_back(p.q[static_cast<std::size_t>(b * p.Q + k)]);
  const std::vector<double>* in = &t.x;
  for (int l = 0; l < p.g.L; ++l) {
    const long nin = static_cast<long>(in->size());
    std::vector<double> z(static_cast<std::size_t>(p.H), 0.0);
    for (long c = 0; c < p.H; ++c) {
      double s = p.g.b[static_cast<std::size_t>(l)].empty() ? 0.0 : p.g.b[static_cast<std::size_t>(l)][static_cast<std::size_t>(c)];
      for (long r = 0; r < nin; ++r) s += (*in)[static_cast<std::size_t>(r)] * p.g.W[static_cast<std::size_t>(l)][static_cast<std::size_t>(r * p.H + c)];
      const bool relu = l < p.g.L - 1 || p.last_relu;
      z[static_cast<std::size_t>(c)] = relu ? std::max(s, 0.0) : s;
    }
    t.h.push_back(z);
    in = &t.h.back();
  }
  return t;
}

inline std::vector<double> pairing_forward(const pairing_problem_d& p) {
  std::vector<double> y(static_cast<std::size_t>(p.B * p.H), 0.0);
  for (long b = 0; b < p.B; ++b)
    for (long i = 0; i < p.N; ++i)
      for (long j = 0; j < p.N; ++j) {
        if (!p.in_set(b, i, j)) continue;
        const double m = p.mask(b, i, j);
        if (m == 0.0) continue;  // also keeps NaN features of such pairs out, as documented
        const pair_trace t = pair_forward(p, b, i, j);
        for (long c = 0; c < p.H; ++c) y[static_cast<std::size_t>(b * p.H + c)] += p.scale * m * t.h.back()[static_cast<std::size_t>(c)];
      }
  return y;
}

struct pairing_grads_d {
  std::vector<double> o, q, M;
  std::vector<std::vector<double>> W, b;
};

/// Gradient of sum(dy * y) with respect to everything, pair by pair.
inline pairing_grads_d pairing_backward(const pairing_problem_d& p, const std::vector<double>& dy) {
  pairing_grads_d gr;
  gr.o.assign(p.o.size(), 0.0);
  gr.q.assign(p.q.size(), 0.0);
  gr.M.assign(static_cast<std::size_t>(p.B * p.N * p.N), 0.0);
  for (int l = 0; l < p.g.L; ++l) {
    gr.W.emplace_back(p.g.W[static_cast<std::size_t>(l)].size(), 0.0);
    gr.b.emplace_back(static_cast<std::size_t>(p.H), 0.0);
  }
  for (long b = 0; b < p.B; ++b)
    for (long i = 0; i < p.N; ++i)
      for (long j = 0; j < p.N; ++j) {
        if (!p.in_set(b, i, j)) continue;
        const pair_trace t = pair_forward(p, b, i, j);
        const double m = p.mask(b, i, j);
        double dm = 0;
        for (long c = 0; c < p.H; ++c) dm += dy[static_cast<std::size_t>(b * p.H + c)] * t.h.back()[static_cast<std::size_t>(c)];
        gr.M[static_cast<std::size_t>((b * p.N + i) * p.N + j)] = p.scale * dm;
        // dh_L = s m dy, then through the layers.
        std::vector<double> dh(static_cast<std::size_t>(p.H));
        for (long c = 0; c < p.H; ++c) dh[static_cast<std::size_t>(c)] = p.scale * m * dy[static_cast<std::size_t>(b * p.H + c)];
        for (int l = p.g.L - 1; l >= 0; --l) {
          const bool relu = l < p.g.L - 1 || p.last_relu;
          std::vector<double> dz(static_cast<std::size_t>(p.H));
          for (long c = 0; c < p.H; ++c)
            dz[static_cast<std::size_t>(c)] = relu && !(t.h[static_cast<std::size_t>(l)][static_cast<std::size_t>(c)] > 0) ? 0.0 : dh[static_cast<std::size_t>(c)];
          const std::vector<double>& in = l == 0 ? t.x : t.h[static_cast<std::size_t>(l - 1)];
          const long nin = static_cast<long>(in.size());
          std::vector<double> din(static_cast<std::size_t>(nin), 0.0);
          for (long r = 0; r < nin; ++r)
            for (long c = 0; c < p.H; ++c) {
              gr.W[static_cast<std::size_t>(l)][static_cast<std::size_t>(r * p.H + c)] += in[static_cast<std::size_t>(r)] * dz[static_cast<std::size_t>(c)];
              din[static_cast<std::size_t>(r)] += p.g.W[static_cast<std::size_t>(l)][static_cast<std::size_t>(r * p.H + c)] * dz[static_cast<std::size_t>(c)];
            }
          for (long c = 0; c < p.H; ++c) gr.b[static_cast<std::size_t>(l)][static_cast<std::size_t>(c)] += dz[static_cast<std::size_t>(c)];
          dh = din;
        }
        for (long k = 0; k < p.D; ++k) {
          gr.o[static_cast<std::size_t>((b * p.N + i) * p.D + k)] += dh[static_cast<std::size_t>(k)];
          gr.o[static_cast<std::size_t>((b * p.N + j) * p.D + k)] += dh[static_cast<std::size_t>(p.D + k)];
        }
        for (long k = 0; k < p.Q; ++k) gr.q[static_cast<std::size_t>(b * p.Q + k)] += dh[static_cast<std::size_t>(2 * p.D + k)];
      }
  return gr;
}

// ------------------------------------------------------------------ pair scorer

enum class norm_d { sigmoid, softmax_all, softmax_row };
enum class scorer_kind_d { mlp, bilinear };

struct scorer_problem_d {
  long B = 0, N = 0, D = 0, Q = 0, K = 0;
  std::vector<double> o, q;      // [B, N, D], [B, Q]
  std::vector<std::uint8_t> om;  // [B, N] or empty
  bool self = true;
  scorer_kind_d kind = scorer_kind_d::mlp;
  // mlp:      W1 [2D+Q, K], b1 [K], W2 [K, 1], b2 [1]
  // bilinear: W1 [D+Q, K], b1 [K], W2 [D+Q, K], b2 [K]
  std::vector<double> W1, b1, W2, b2;

  bool present(long b, long i) const { return om.empty() || om[static_cast<std::size_t>(b * N + i)] != 0; }
  bool in_set(long b, long i, long j) const { return present(b, i) && present(b, j) && (self || i != j); }
  double ob(long b, long i, long k) const { return o[static_cast<std::size_t>((b * N + i) * D + k)]; }
  double qb(long b, long k) const { return q[static_cast<std::size_t>(b * Q + k)]; }
};

/// Score of one pair, from the explicit concatenated inputs.
inline double pair_score(const scorer_problem_d& p, long b, long i, long j) {
  if (p.kind == scorer_kind_d::mlp) {
    std::vector<double> x;
    for (long k = 0; k < p.D; ++k) x.push_back(p.ob(b, i, k));
    for (long k = 0; k < p.D; ++k) x.push_back(p.ob(b, j, k));
    for (long k = 0; k < p.Q; ++k) x.push_back(p.qb(b, k));
    double s = p.b2[0];
    for (long c = 0; c < p.K; ++c) {
      double z = p.b1[static_cast<std::size_t>(c)];
      for (std::size_t r = 0; r < x.size(); ++r) z += x[r] * p.W1[r * static_cast<std::size_t>(p.K) + static_cast<std::size_t>(c)];
      s += std::max(z, 0.0) * p.W2[static_cast<std::size_t>(c)];
    }
    return s;
  }
  std::vector<double> xl, xr;
  for (long k = 0; k < p.D; ++k) xl.push_back(p.ob(b, i, k)), xr.push_back(p.ob(b, j, k));
  for (long k = 0; k < p.Q; ++k) xl.push_back(p.qb(b, k)), xr.push_back(p.qb(b, k));
  double s = 0;
  for (long c = 0; c < p.K; ++c) {
    double l = p.b1[static_cast<std::size_t>(c)], r = p.b2[static_cast<std::size_t>(c)];
    for (std::size_t t = 0; t < xl.size(); ++t) {
      l += xl[t] * p.W1[t * static_cast<std::size_t>(p.K) + static_cast<std::size_t>(c)];
      r += xr[t] * p.W2[t * static_cast<std::size_t>(p.K) + static_cast<std::size_t>(c)];
    }
    s += l * r;
  }
  return s;
}

/// Scores [B, N, N] (-inf outside the pair set).
inline std::vector<double> scorer_scores(const scorer_problem_d& p) {
  std::vector<double> s(static_cast<std::size_t>(p.B * p.N * p.N), -std::numeric_limits<double>::infinity());
  for (long b = 0; b < p.B; ++b)
    for (long i = 0; i < p.N; ++i)
      for (long j = 0; j < p.N; ++j)
        if (p.in_set(b, i, j)) s[static_cast<std::size_t>((b * p.N + i) * p.N + j)] = pair_score(p, b, i, j);
  return s;
}

/// Normalised pair weights from scores; 0 outside the pair set and in empty groups.
inline std::vector<double> normalise(const scorer_problem_d& p, norm_d n, const std::vector<double>& s) {
  std::vector<double> m(s.size(), 0.0);
  auto idx = [&](long b, long i, long j) { return static_cast<std::size_t>((b * p.N + i) * p.N + j); };
  for (long b = 0; b < p.B; ++b) {
    if (n == norm_d::sigmoid) {
      for (long i = 0; i < p.N; ++i)
        for (long j = 0; j < p.N; ++j)
          if (p.in_set(b, i, j)) m[idx(b, i, j)] = 1.0 / (1.0 + std::exp(-s[idx(b, i, j)]));
      continue;
    }
    const long groups = n == norm_d::softmax_all ? 1 : p.N;
    for (long gi = 0; gi < groups; ++gi) {
      const long i0 = n == norm_d::softmax_all ? 0 : gi, i1 = n == norm_d::softmax_all ? p.N : gi + 1;
      double mx = -std::numeric_limits<double>::infinity();
      for (long i = i0; i < i1; ++i)
        for (long j = 0; j < p.N; ++j)
          if (p.in_set(b, i, j)) mx = std::max(mx, s[idx(b, i, j)]);
      if (mx == -std::numeric_limits<double>::infinity()) continue;
      double z = 0;
      for (long i = i0; i < i1; ++i)
        for (long j = 0; j < p.N; ++j)
          if (p.in_set(b, i, j)) z += std::exp(s[idx(b, i, j)] - mx);
      for (long i = i0; i < i1; ++i)
        for (long j = 0; j < p.N; ++j)
          if (p.in_set(b, i, j)) m[idx(b, i, j)] = std::exp(s[idx(b, i, j)] - mx) / z;
    }
  }
  return m;
}

/// Per-sample supervision loss and the number of units it counts (valid pairs for BCE,
/// non-skipped groups for the softmax cross-entropy).
struct scorer_loss_d {
  std::vector<double> per_sample;
  double units = 0;
};

inline scorer_loss_d scorer_loss(const scorer_problem_d& p, norm_d n, const std::vector<double>& s,
                                 const std::vector<double>& t) {
  scorer_loss_d out;
  out.per_sample.assign(static_cast<std::size_t>(p.B), 0.0);
  auto idx = [&](long b, long i, long j) { return static_cast<std::size_t>((b * p.N + i) * p.N + j); };
  for (long b = 0; b < p.B; ++b) {
    if (n == norm_d::sigmoid) {
      for (long i = 0; i < p.N; ++i)
        for (long j = 0; j < p.N; ++j) {
          if (!p.in_set(b, i, j)) continue;
          const double x = s[idx(b, i, j)], y = t[idx(b, i, j)];
          // -(y log sigma(x) + (1 - y) log(1 - sigma(x))), with log sigma(x) = -softplus(-x) and
          // log(1 - sigma(x)) = -softplus(x) so large |x| keep their precision.
          auto softplus = [](double v) { return std::max(v, 0.0) + std::log1p(std::exp(-std::fabs(v))); };
          out.per_sample[static_cast<std::size_t>(b)] += y * softplus(-x) + (1 - y) * softplus(x);
          out.units += 1;
        }
      continue;
    }
    const std::vector<double> m = normalise(p, n, s);
    const long groups = n == norm_d::softmax_all ? 1 : p.N;
    for (long gi = 0; gi < groups; ++gi) {
      const long i0 = n == norm_d::softmax_all ? 0 : gi, i1 = n == norm_d::softmax_all ? p.N : gi + 1;
      double z = 0;
      for (long i = i0; i < i1; ++i)
        for (long j = 0; j < p.N; ++j)
          if (p.in_set(b, i, j)) z += t[idx(b, i, j)];
      if (z == 0) continue;
      for (long i = i0; i < i1; ++i)
        for (long j = 0; j < p.N; ++j)
          if (p.in_set(b, i, j) && t[idx(b, i, j)] != 0)
            out.per_sample[static_cast<std::size_t>(b)] += -(t[idx(b, i, j)] / z) * std::log(m[idx(b, i, j)]);
      out.units += 1;
    }
  }
  return out;
}

// ------------------------------------------------------------------ box features

/// RVL-BERT coordinate features of a subject box s and an object box o, both [x1, y1, x2, y2]
/// in image-normalised coordinates, in the order of distill::box_pair_features.
inline std::vector<double> box_features(const double s[4], const double o[4]) {
  const double ws = s[2] - s[0], hs = s[3] - s[1], wo = o[2] - o[0], ho = o[3] - o[1];
  const double ux1 = std::min(s[0], o[0]), uy1 = std::min(s[1], o[1]), ux2 = std::max(s[2], o[2]), uy2 = std::max(s[3], o[3]);
  const double iw = std::max(0.0, std::min(s[2], o[2]) - std::max(s[0], o[0]));
  const double ih = std::max(0.0, std::min(s[3], o[3]) - std::max(s[1], o[1]));
  const double inter = iw * ih;
  return {s[0], s[1], s[2], s[3], ws * hs,
          (s[0] - o[0]) / wo, (s[1] - o[1]) / ho, std::log(ws / wo), std::log(hs / ho),
          (o[0] - s[0]) / ws, (o[1] - s[1]) / hs, std::log(wo / ws), std::log(ho / hs),
          (ux2 - ux1) * (uy2 - uy1),
          o[0], o[1], o[2], o[3], wo * ho,
          inter / (ws * hs + wo * ho - inter)};
}

}  // namespace distill_ref
