// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references for the nn/ building blocks, written for clarity: plain
// loops over the definitions, dense row-major std::vector<double> tensors, no cleverness. The
// tests compare the library's forward passes against these and its backward passes against
// central finite differences of these or, where shapes are too big for finite differences, against
// the analytic gradients below (each checked against finite differences of its forward in
// test/nn/nn_cases.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace distill_ref::nn {

using vec = std::vector<double>;

/// y (N, O) = x (N, I) W^T (O, I) + b (O, may be empty)
inline vec linear(const vec& x, const vec& w, const vec& b, long N, long I, long O) {
  vec y(static_cast<std::size_t>(N * O));
  for (long n = 0; n < N; ++n)
    for (long o = 0; o < O; ++o) {
      double s = b.empty() ? 0.0 : b[static_cast<std::size_t>(o)];
      for (long i = 0; i < I; ++i) s += x[static_cast<std::size_t>(n * I + i)] * w[static_cast<std::size_t>(o * I + i)];
      y[static_cast<std::size_t>(n * O + o)] = s;
    }
  return y;
}

enum class act { relu, gelu, gelu_tanh, tanh, sigmoid, identity };

inline double activate(act a, double x) {
  switch (a) {
    case act::relu: return x > 0 ? x : 0;
    case act::gelu: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case act::gelu_tanh: return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case act::tanh: return std::tanh(x);
    case act::sigmoid: return 1 / (1 + std::exp(-x));
    default: return x;
  }
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis of (N, D); also mean, rstd.
inline vec layer_norm(const vec& x, const vec& gamma, const vec& beta, long N, long D, double eps, vec* mean = nullptr,
                      vec* rstd = nullptr) {
  vec y(x.size());
  if (mean) mean->assign(static_cast<std::size_t>(N), 0);
  if (rstd) rstd->assign(static_cast<std::size_t>(N), 0);
  for (long n = 0; n < N; ++n) {
    double mu = 0, var = 0;
    for (long d = 0; d < D; ++d) mu += x[static_cast<std::size_t>(n * D + d)];
    mu /= D;
    for (long d = 0; d < D; ++d) var += (x[static_cast<std::size_t>(n * D + d)] - mu) * (x[static_cast<std::size_t>(n * D + d)] - mu);
    var /= D;
    const double rs = 1 / std::sqrt(var + eps);
    if (mean) (*mean)[static_cast<std::size_t>(n)] = mu;
    if (rstd) (*rstd)[static_cast<std::size_t>(n)] = rs;
    for (long d = 0; d < D; ++d) {
      double v = (x[static_cast<std::size_t>(n * D + d)] - mu) * rs;
      if (!gamma.empty()) v *= gamma[static_cast<std::size_t>(d)];
      if (!beta.empty()) v += beta[static_cast<std::size_t>(d)];
      y[static_cast<std::size_t>(n * D + d)] = v;
    }
  }
  return y;
}

/// Batch norm over (N, C, S). Training: batch statistics (biased variance), and the running
/// statistics updated with the unbiased variance; evaluation: the running statistics.
inline vec batch_norm(const vec& x, const vec& gamma, const vec& beta, long N, long C, long S, bool training, double eps,
                      double momentum, vec* running_mean, vec* running_var) {
  vec y(x.size());
  for (long c = 0; c < C; ++c) {
    double mu, var;
    if (training) {
      double s = 0;
      for (long n = 0; n < N; ++n)
        for (long k = 0; k < S; ++k) s += x[static_cast<std::size_t>((n * C + c) * S + k)];
      mu = s / (N * S);
      double v = 0;
      for (long n = 0; n < N; ++n)
        for (long k = 0; k < S; ++k) v += std::pow(x[static_cast<std::size_t>((n * C + c) * S + k)] - mu, 2);
      var = v / (N * S);
      if (running_mean) {
        auto& rm = (*running_mean)[static_cast<std::size_t>(c)];
        auto& rv = (*running_var)[static_cast<std::size_t>(c)];
        rm = (1 - momentum) * rm + momentum * mu;
        rv = (1 - momentum) * rv + momentum * var * (N * S) / (N * S - 1.0);
      }
    } else {
      mu = (*running_mean)[static_cast<std::size_t>(c)];
      var = (*running_var)[static_cast<std::size_t>(c)];
    }
    for (long n = 0; n < N; ++n)
      for (long k = 0; k < S; ++k) {
        const std::size_t i = static_cast<std::size_t>((n * C + c) * S + k);
        double v = (x[i] - mu) / std::sqrt(var + eps);
        if (!gamma.empty()) v *= gamma[static_cast<std::size_t>(c)];
        if (!beta.empty()) v += beta[static_cast<std::size_t>(c)];
        y[i] = v;
      }
  }
  return y;
}

/// Direct convolution: x (B, Ci, H, W), w (Co, Ci, kh, kw), b (Co, may be empty) -> (B, Co, Ho, Wo).
inline vec conv2d(const vec& x, const vec& w, const vec& b, long B, long Ci, long H, long W, long Co, long kh, long kw, long sh,
                  long sw, long ph, long pw, long& Ho, long& Wo) {
  Ho = (H + 2 * ph - kh) / sh + 1;
  Wo = (W + 2 * pw - kw) / sw + 1;
  vec y(static_cast<std::size_t>(B * Co * Ho * Wo));
  for (long n = 0; n < B; ++n)
    for (long co = 0; co < Co; ++co)
      for (long oy = 0; oy < Ho; ++oy)
        for (long ox = 0; ox < Wo; ++ox) {
          double s = b.empty() ? 0.0 : b[static_cast<std::size_t>(co)];
          for (long ci = 0; ci < Ci; ++ci)
            for (long ky = 0; ky < kh; ++ky)
              for (long kx = 0; kx < kw; ++kx) {
                const long iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += x[static_cast<std::size_t>(((n * Ci + ci) * H + iy) * W + ix)] *
                     w[static_cast<std::size_t>(((co * Ci + ci) * kh + ky) * kw + kx)];
              }
          y[static_cast<std::size_t>(((n * Co + co) * Ho + oy) * Wo + ox)] = s;
        }
  return y;
}

/// Max (first maximum) or average pooling, k x k windows, stride s, no padding.
inline vec pool2d(const vec& x, long N, long C, long H, long W, long k, long s, bool is_max, std::vector<int>* argmax = nullptr) {
  const long Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
  vec y(static_cast<std::size_t>(N * C * Ho * Wo));
  if (argmax) argmax->assign(y.size(), -1);
  for (long n = 0; n < N; ++n)
    for (long c = 0; c < C; ++c)
      for (long oy = 0; oy < Ho; ++oy)
        for (long ox = 0; ox < Wo; ++ox) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0;
          int at = -1;
          for (long ky = 0; ky < k; ++ky)
            for (long kx = 0; kx < k; ++kx) {
              const long iy = oy * s + ky, ix = ox * s + kx;
              const double v = x[static_cast<std::size_t>(((n * C + c) * H + iy) * W + ix)];
              sum += v;
              if (at < 0 || v > best) best = v, at = static_cast<int>(iy * W + ix);
            }
          const std::size_t o = static_cast<std::size_t>(((n * C + c) * Ho + oy) * Wo + ox);
          y[o] = is_max ? best : sum / static_cast<double>(k * k);
          if (argmax) (*argmax)[o] = at;
        }
  return y;
}

/// Softmax cross-entropy with labels, label smoothing eps, ignore_index; reduction: 0 none,
/// 1 sum, 2 mean (over valid rows), 3 batchmean (over all rows).
inline vec cross_entropy(const vec& z, const std::vector<long>& y, long N, long C, double eps, long ignore, int red) {
  vec rows(static_cast<std::size_t>(N), 0.0);
  double total = 0, valid = 0;
  for (long n = 0; n < N; ++n) {
    if (y[static_cast<std::size_t>(n)] == ignore) continue;
    double mx = -INFINITY;
    for (long c = 0; c < C; ++c) mx = std::max(mx, z[static_cast<std::size_t>(n * C + c)]);
    double s = 0;
    for (long c = 0; c < C; ++c) s += std::exp(z[static_cast<std::size_t>(n * C + c)] - mx);
    const double lse = mx + std::log(s);
    double l = 0;
    for (long c = 0; c < C; ++c) {
      const double target = (c == y[static_cast<std::size_t>(n)] ? 1 - eps : 0.0) + eps / C;
      l += target * (lse - z[static_cast<std::size_t>(n * C + c)]);
    }
    rows[static_cast<std::size_t>(n)] = l;
    total += l;
    valid += 1;
  }
  if (red == 0) return rows;
  if (red == 1) return {total};
  if (red == 2) return {valid > 0 ? total / valid : 0.0};
  return {total / N};
}

/// Multi-head attention core: q (B, Lq, D), k, v (B, Lk, D), H heads, key_valid (B, Lk) or empty.
/// Returns o (B, Lq, D); fills probs and scores (B, H, Lq, Lk).
inline vec attention_core(const vec& q, const vec& k, const vec& v, const std::vector<std::uint8_t>& key_valid, long B, long Lq,
                          long Lk, long D, long H, double scale, vec* probs, vec* scores) {
  const long dh = D / H;
  vec o(static_cast<std::size_t>(B * Lq * D), 0.0);
  if (probs) probs->assign(static_cast<std::size_t>(B * H * Lq * Lk), 0.0);
  if (scores) scores->assign(static_cast<std::size_t>(B * H * Lq * Lk), 0.0);
  for (long b = 0; b < B; ++b)
    for (long h = 0; h < H; ++h)
      for (long i = 0; i < Lq; ++i) {
        vec s(static_cast<std::size_t>(Lk));
        double mx = -INFINITY;
        for (long j = 0; j < Lk; ++j) {
          double d = 0;
          for (long e = 0; e < dh; ++e)
            d += q[static_cast<std::size_t>((b * Lq + i) * D + h * dh + e)] * k[static_cast<std::size_t>((b * Lk + j) * D + h * dh + e)];
          s[static_cast<std::size_t>(j)] = (!key_valid.empty() && key_valid[static_cast<std::size_t>(b * Lk + j)] == 0) ? -INFINITY : scale * d;
          mx = std::max(mx, s[static_cast<std::size_t>(j)]);
        }
        vec p(static_cast<std::size_t>(Lk), 0.0);
        if (mx != -INFINITY) {
          double z = 0;
          for (long j = 0; j < Lk; ++j) z += std::exp(s[static_cast<std::size_t>(j)] - mx);
          for (long j = 0; j < Lk; ++j) p[static_cast<std::size_t>(j)] = std::exp(s[static_cast<std::size_t>(j)] - mx) / z;
        }
        for (long j = 0; j < Lk; ++j) {
          const std::size_t m = static_cast<std::size_t>(((b * H + h) * Lq + i) * Lk + j);
          if (probs) (*probs)[m] = p[static_cast<std::size_t>(j)];
          if (scores) (*scores)[m] = s[static_cast<std::size_t>(j)];
        }
        for (long e = 0; e < dh; ++e) {
          double acc = 0;
          for (long j = 0; j < Lk; ++j) acc += p[static_cast<std::size_t>(j)] * v[static_cast<std::size_t>((b * Lk + j) * D + h * dh + e)];
          o[static_cast<std::size_t>((b * Lq + i) * D + h * dh + e)] = acc;
        }
      }
  return o;
}

// ---- analytic gradients of L = <dy, f(...)> (dy the upstream gradient) ----

/// dx (N, I) = dy W, dw (O, I) = dy^T x, db (O) = column sums of dy.
inline void linear_backward(const vec& x, const vec& w, const vec& dy, long N, long I, long O, vec& dx, vec& dw, vec& db) {
  dx.assign(static_cast<std::size_t>(N * I), 0.0);
  dw.assign(static_cast<std::size_t>(O * I), 0.0);
  db.assign(static_cast<std::size_t>(O), 0.0);
  for (long n = 0; n < N; ++n)
    for (long o = 0; o < O; ++o) {
      const double g = dy[static_cast<std::size_t>(n * O + o)];
      db[static_cast<std::size_t>(o)] += g;
      for (long i = 0; i < I; ++i) {
        dx[static_cast<std::size_t>(n * I + i)] += g * w[static_cast<std::size_t>(o * I + i)];
        dw[static_cast<std::size_t>(o * I + i)] += g * x[static_cast<std::size_t>(n * I + i)];
      }
    }
}

/// Layer norm over the last axis of (N, D): with xhat = (x - mean) rstd and g = dy gamma,
/// dx = rstd (g - mean(g) - xhat mean(g xhat)), dgamma = sum_n dy xhat, dbeta = sum_n dy.
inline void layer_norm_backward(const vec& x, const vec& gamma, const vec& dy, long N, long D, double eps, vec& dx, vec& dgamma,
                                vec& dbeta) {
  vec mean, rstd;
  layer_norm(x, {}, {}, N, D, eps, &mean, &rstd);
  dx.assign(x.size(), 0.0);
  dgamma.assign(static_cast<std::size_t>(D), 0.0);
  dbeta.assign(static_cast<std::size_t>(D), 0.0);
  for (long n = 0; n < N; ++n) {
    double mg = 0, mgx = 0;
    for (long d = 0; d < D; ++d) {
      const std::size_t i = static_cast<std::size_t>(n * D + d);
      const double xh = (x[i] - mean[static_cast<std::size_t>(n)]) * rstd[static_cast<std::size_t>(n)];
      const double g = dy[i] * (gamma.empty() ? 1.0 : gamma[static_cast<std::size_t>(d)]);
      mg += g / D;
      mgx += g * xh / D;
      dgamma[static_cast<std::size_t>(d)] += dy[i] * xh;
      dbeta[static_cast<std::size_t>(d)] += dy[i];
    }
    for (long d = 0; d < D; ++d) {
      const std::size_t i = static_cast<std::size_t>(n * D + d);
      const double xh = (x[i] - mean[static_cast<std::size_t>(n)]) * rstd[static_cast<std::size_t>(n)];
      const double g = dy[i] * (gamma.empty() ? 1.0 : gamma[static_cast<std::size_t>(d)]);
      dx[i] = rstd[static_cast<std::size_t>(n)] * (g - mg - xh * mgx);
    }
  }
}

/// Batch norm over (N, C, S), M = N S values per channel. Training (batch statistics):
/// dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)); evaluation (running statistics):
/// dx = gamma dy / sqrt(running_var + eps). dgamma = sum dy xhat, dbeta = sum dy.
inline void batch_norm_backward(const vec& x, const vec& gamma, const vec& dy, long N, long C, long S, bool training, double eps,
                                const vec& running_mean, const vec& running_var, vec& dx, vec& dgamma, vec& dbeta) {
  dx.assign(x.size(), 0.0);
  dgamma.assign(static_cast<std::size_t>(C), 0.0);
  dbeta.assign(static_cast<std::size_t>(C), 0.0);
  const double M = static_cast<double>(N * S);
  for (long c = 0; c < C; ++c) {
    double mu = 0, var = 0;
    if (training) {
      for (long n = 0; n < N; ++n)
        for (long k = 0; k < S; ++k) mu += x[static_cast<std::size_t>((n * C + c) * S + k)] / M;
      for (long n = 0; n < N; ++n)
        for (long k = 0; k < S; ++k) var += std::pow(x[static_cast<std::size_t>((n * C + c) * S + k)] - mu, 2) / M;
    } else {
      mu = running_mean[static_cast<std::size_t>(c)];
      var = running_var[static_cast<std::size_t>(c)];
    }
    const double rs = 1 / std::sqrt(var + eps), gm = gamma.empty() ? 1.0 : gamma[static_cast<std::size_t>(c)];
    double sdy = 0, sdyx = 0;
    for (long n = 0; n < N; ++n)
      for (long k = 0; k < S; ++k) {
        const std::size_t i = static_cast<std::size_t>((n * C + c) * S + k);
        sdy += dy[i];
        sdyx += dy[i] * (x[i] - mu) * rs;
      }
    dgamma[static_cast<std::size_t>(c)] = sdyx;
    dbeta[static_cast<std::size_t>(c)] = sdy;
    for (long n = 0; n < N; ++n)
      for (long k = 0; k < S; ++k) {
        const std::size_t i = static_cast<std::size_t>((n * C + c) * S + k);
        dx[i] = training ? gm * rs * (dy[i] - sdy / M - (x[i] - mu) * rs * sdyx / M) : gm * rs * dy[i];
      }
  }
}

/// Direct convolution's gradients (the same loops as conv2d, scattering instead of gathering).
inline void conv2d_backward(const vec& x, const vec& w, const vec& dy, long B, long Ci, long H, long W, long Co, long kh, long kw, long sh,
                            long sw, long ph, long pw, vec& dx, vec& dw, vec& db) {
  const long Ho = (H + 2 * ph - kh) / sh + 1, Wo = (W + 2 * pw - kw) / sw + 1;
  dx.assign(x.size(), 0.0);
  dw.assign(w.size(), 0.0);
  db.assign(static_cast<std::size_t>(Co), 0.0);
  for (long n = 0; n < B; ++n)
    for (long co = 0; co < Co; ++co)
      for (long oy = 0; oy < Ho; ++oy)
        for (long ox = 0; ox < Wo; ++ox) {
          const double g = dy[static_cast<std::size_t>(((n * Co + co) * Ho + oy) * Wo + ox)];
          db[static_cast<std::size_t>(co)] += g;
          for (long ci = 0; ci < Ci; ++ci)
            for (long ky = 0; ky < kh; ++ky)
              for (long kx = 0; kx < kw; ++kx) {
                const long iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                const std::size_t xi = static_cast<std::size_t>(((n * Ci + ci) * H + iy) * W + ix);
                const std::size_t wi = static_cast<std::size_t>(((co * Ci + ci) * kh + ky) * kw + kx);
                dx[xi] += g * w[wi];
                dw[wi] += g * x[xi];
              }
        }
}

/// Attention core's gradients for L = <dO, o> + <gP, probs> + <gS, scores> (gP, gS may be
/// empty; masked scores are constant -inf and take no gradient). Per head, with P = softmax(S):
/// dV = P^T dO, dP = dO V^T + gP, dS = P (dP - rowsum(dP P)) + gS, dq = scale dS K, dk = scale dS^T Q.
inline void attention_core_backward(const vec& q, const vec& k, const vec& v, const std::vector<std::uint8_t>& key_valid, const vec& dO,
                                    const vec& gP, const vec& gS, long B, long Lq, long Lk, long D, long H, double scale, vec& dq, vec& dk,
                                    vec& dv) {
  const long dh = D / H;
  vec P, S;
  attention_core(q, k, v, key_valid, B, Lq, Lk, D, H, scale, &P, &S);
  dq.assign(q.size(), 0.0);
  dk.assign(k.size(), 0.0);
  dv.assign(v.size(), 0.0);
  for (long b = 0; b < B; ++b)
    for (long h = 0; h < H; ++h)
      for (long i = 0; i < Lq; ++i) {
        const std::size_t row = static_cast<std::size_t>(((b * H + h) * Lq + i) * Lk);
        vec dP(static_cast<std::size_t>(Lk), 0.0);
        double dot = 0;
        for (long j = 0; j < Lk; ++j) {
          double s = gP.empty() ? 0.0 : gP[row + static_cast<std::size_t>(j)];
          for (long e = 0; e < dh; ++e) {
            const double go = dO[static_cast<std::size_t>((b * Lq + i) * D + h * dh + e)];
            s += go * v[static_cast<std::size_t>((b * Lk + j) * D + h * dh + e)];
            dv[static_cast<std::size_t>((b * Lk + j) * D + h * dh + e)] += P[row + static_cast<std::size_t>(j)] * go;
          }
          dP[static_cast<std::size_t>(j)] = s;
          dot += s * P[row + static_cast<std::size_t>(j)];
        }
        for (long j = 0; j < Lk; ++j) {
          if (!std::isfinite(S[row + static_cast<std::size_t>(j)])) continue;
          const double ds = P[row + static_cast<std::size_t>(j)] * (dP[static_cast<std::size_t>(j)] - dot) +
                            (gS.empty() ? 0.0 : gS[row + static_cast<std::size_t>(j)]);
          for (long e = 0; e < dh; ++e) {
            dq[static_cast<std::size_t>((b * Lq + i) * D + h * dh + e)] += scale * ds * k[static_cast<std::size_t>((b * Lk + j) * D + h * dh + e)];
            dk[static_cast<std::size_t>((b * Lk + j) * D + h * dh + e)] += scale * ds * q[static_cast<std::size_t>((b * Lq + i) * D + h * dh + e)];
          }
        }
      }
}

/// SplitMix64-based counter RNG, re-implemented from its definition (Steele, Lea & Flood 2014)
/// to check the dropout masks independently.
inline std::uint64_t splitmix_mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline bool dropout_keep(std::uint64_t seed, std::uint64_t index, double p) {
  const std::uint64_t key = splitmix_mix(seed + 0x9E3779B97F4A7C15ull) ^
                            splitmix_mix(0x64726f70ull * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull);
  const std::uint64_t bits = splitmix_mix(key + (index + 1) * 0x9E3779B97F4A7C15ull);
  return static_cast<double>(bits >> 40) >= std::nearbyint(p * 16777216.0);
}

}  // namespace distill_ref::nn
