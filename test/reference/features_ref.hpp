// SPDX-License-Identifier: MIT
#pragma once
// Double-precision references of the features family (feature statistics, AdaIN, embedding
// alignment, text-embedding classifier), written for clarity: plain loops, two-pass statistics,
// the peer's AdaIN composite evaluated element by element. Tensors are dense row-major
// std::vector<double> with their shape next to them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace features_ref {

struct shape4 {
  long B, C, H, W;
  long size() const { return B * C * H * W; }
  long at(long b, long c, long h, long w) const { return ((b * C + c) * H + h) * W + w; }
  long plane() const { return H * W; }
};

enum class red { mean, batchmean, sum };

inline double divisor(red r, long batch, long channels) {
  return r == red::mean ? double(batch) * double(channels) : r == red::batchmean ? double(batch) : 1.0;
}

// ---- statistics (B3), two passes ----------------------------------------------------------
struct moments {
  double mean, var, n;  // var uses the requested N'
};
inline moments moments_of(const std::vector<double>& v, bool unbiased) {
  const double n = double(v.size());
  // A constant channel has variance exactly 0 (sum / n need not give back the value exactly, and
  // the gradient's (x - mu) / sigma would then be a ratio of rounding errors).
  if (std::all_of(v.begin(), v.end(), [&](double x) { return x == v[0]; })) return {v.empty() ? 0.0 : v[0], 0.0, n};
  double s = 0;
  for (double x : v) s += x;
  const double mu = s / n;
  double q = 0;
  for (double x : v) q += (x - mu) * (x - mu);
  const double dof = unbiased ? n - 1 : n;
  return {mu, dof > 0 ? q / dof : 0.0, n};
}
inline std::vector<double> channel(const std::vector<double>& x, const shape4& s, long b, long c) {
  std::vector<double> v;
  for (long h = 0; h < s.H; ++h)
    for (long w = 0; w < s.W; ++w) v.push_back(x[s.at(b, c, h, w)]);
  return v;
}
/// Per-channel mean and std = sqrt(v + eps), [B*C] each.
inline void channel_stats(const std::vector<double>& x, const shape4& s, bool unbiased, double eps, std::vector<double>& mean,
                          std::vector<double>& sd) {
  mean.assign(s.B * s.C, 0);
  sd.assign(s.B * s.C, 0);
  for (long b = 0; b < s.B; ++b)
    for (long c = 0; c < s.C; ++c) {
      const moments m = moments_of(channel(x, s, b, c), unbiased);
      mean[b * s.C + c] = m.mean;
      sd[b * s.C + c] = std::sqrt(m.var + eps);
    }
}

/// [B, L, D] with mask [B, L] (empty = all valid): per (b, d) over valid tokens.
inline void token_stats(const std::vector<double>& x, long B, long L, long D, const std::vector<std::uint8_t>& mask,
                        bool unbiased, double eps, std::vector<double>& mean, std::vector<double>& sd) {
  mean.assign(B * D, 0);
  sd.assign(B * D, 0);
  for (long b = 0; b < B; ++b)
    for (long d = 0; d < D; ++d) {
      std::vector<double> v;
      for (long l = 0; l < L; ++l)
        if (mask.empty() || mask[b * L + l]) v.push_back(x[(b * L + l) * D + d]);
      const moments m = moments_of(v, unbiased);
      mean[b * D + d] = m.mean;
      sd[b * D + d] = std::sqrt(m.var + eps);
    }
}

/// The backward of the statistics: dL/dx = g_mu / n + g_sigma (x - mu) / (N' sigma) per channel,
/// from dL/dmean and dL/dstd [B*C] (either empty: absent). sigma = 0 (eps = 0, a constant
/// channel) contributes nothing: x - mu is 0 there.
inline std::vector<double> channel_stats_grad(const std::vector<double>& x, const shape4& s, bool unbiased, double eps,
                                              const std::vector<double>& gmean, const std::vector<double>& gstd) {
  std::vector<double> mean, sd, g(x.size(), 0.0);
  channel_stats(x, s, unbiased, eps, mean, sd);
  const double n = double(s.plane()), dof = unbiased ? n - 1 : n;
  for (long e = 0; e < s.size(); ++e) {
    const long i = e / s.plane();  // channel b * C + c of the row-major [B, C, H, W] element e
    if (!gmean.empty()) g[e] += gmean[i] / n;
    if (!gstd.empty() && sd[i] > 0) g[e] += gstd[i] * (x[e] - mean[i]) / (dof * sd[i]);
  }
  return g;
}
/// The same over the valid tokens of [B, L, D]; masked tokens get 0.
inline std::vector<double> token_stats_grad(const std::vector<double>& x, long B, long L, long D,
                                            const std::vector<std::uint8_t>& mask, bool unbiased, double eps,
                                            const std::vector<double>& gmean, const std::vector<double>& gstd) {
  std::vector<double> mean, sd, g(x.size(), 0.0);
  token_stats(x, B, L, D, mask, unbiased, eps, mean, sd);
  for (long b = 0; b < B; ++b) {
    double n = 0;
    for (long l = 0; l < L; ++l) n += mask.empty() || mask[b * L + l];
    const double dof = unbiased ? n - 1 : n;
    for (long l = 0; l < L; ++l)
      for (long d = 0; d < D && (mask.empty() || mask[b * L + l]); ++d) {
        const long i = b * D + d, e = (b * L + l) * D + d;
        if (!gmean.empty()) g[e] += gmean[i] / n;
        if (!gstd.empty() && sd[i] > 0) g[e] += gstd[i] * (x[e] - mean[i]) / (dof * sd[i]);
      }
  }
  return g;
}

// ---- statistics matching (§4.1) --------------------------------------------------------------
struct stats_matching_opts {
  double eps = 1e-5;
  bool unbiased = false;
  double mean_weight = 1, std_weight = 1;
  red r = red::mean;
};
inline double stats_matching_from_stats(const std::vector<double>& ms, const std::vector<double>& ss,
                                        const std::vector<double>& mt, const std::vector<double>& st, long batch,
                                        long channels, const stats_matching_opts& o) {
  double l = 0;
  for (std::size_t i = 0; i < ms.size(); ++i)
    l += o.mean_weight * (ms[i] - mt[i]) * (ms[i] - mt[i]) + o.std_weight * (ss[i] - st[i]) * (ss[i] - st[i]);
  return l / divisor(o.r, batch, channels);
}
inline double stats_matching(const std::vector<double>& s, const shape4& ss, const std::vector<double>& t, const shape4& ts,
                             const stats_matching_opts& o) {
  std::vector<double> ms, sds, mt, sdt;
  channel_stats(s, ss, o.unbiased, o.eps, ms, sds);
  channel_stats(t, ts, o.unbiased, o.eps, mt, sdt);
  return stats_matching_from_stats(ms, sds, mt, sdt, ss.B, ss.C, o);
}
/// The analytic gradient of §4.1 (B3), written out as in the spec.
inline std::vector<double> stats_matching_grad(const std::vector<double>& s, const shape4& ss, const std::vector<double>& t,
                                               const shape4& ts, const stats_matching_opts& o) {
  std::vector<double> ms, sds, mt, sdt;
  channel_stats(s, ss, o.unbiased, o.eps, ms, sds);
  channel_stats(t, ts, o.unbiased, o.eps, mt, sdt);
  std::vector<double> g(s.size());
  const double k = 1.0 / divisor(o.r, ss.B, ss.C), n = double(ss.plane()), dof = o.unbiased ? n - 1 : n;
  for (long b = 0; b < ss.B; ++b)
    for (long c = 0; c < ss.C; ++c) {
      const long i = b * ss.C + c;
      for (long h = 0; h < ss.H; ++h)
        for (long w = 0; w < ss.W; ++w) {
          const long e = ss.at(b, c, h, w);
          g[e] = k * (2 * o.mean_weight * (ms[i] - mt[i]) / n +
                      2 * o.std_weight * (sds[i] - sdt[i]) * (s[e] - ms[i]) / (dof * sds[i]));
        }
    }
  return g;
}
inline double token_stats_matching(const std::vector<double>& s, long B, long Ls, long D, const std::vector<std::uint8_t>& sm,
                                   const std::vector<double>& t, long Lt, const std::vector<std::uint8_t>& tm,
                                   const stats_matching_opts& o) {
  std::vector<double> ms, sds, mt, sdt;
  token_stats(s, B, Ls, D, sm, o.unbiased, o.eps, ms, sds);
  token_stats(t, B, Lt, D, tm, o.unbiased, o.eps, mt, sdt);
  return stats_matching_from_stats(ms, sds, mt, sdt, B, D, o);
}

/// Its gradient through token_stats_grad: dL/dmu = 2 w_mu (mu_s - mu_t) / div, likewise sigma.
inline std::vector<double> token_stats_matching_grad(const std::vector<double>& s, long B, long Ls, long D,
                                                     const std::vector<std::uint8_t>& sm, const std::vector<double>& t, long Lt,
                                                     const std::vector<std::uint8_t>& tm, const stats_matching_opts& o) {
  std::vector<double> ms, sds, mt, sdt;
  token_stats(s, B, Ls, D, sm, o.unbiased, o.eps, ms, sds);
  token_stats(t, B, Lt, D, tm, o.unbiased, o.eps, mt, sdt);
  const double k = 2 / divisor(o.r, B, D);
  std::vector<double> gm(ms.size()), gs(ms.size());
  for (std::size_t i = 0; i < ms.size(); ++i) gm[i] = k * o.mean_weight * (ms[i] - mt[i]), gs[i] = k * o.std_weight * (sds[i] - sdt[i]);
  return token_stats_grad(s, B, Ls, D, sm, o.unbiased, o.eps, gm, gs);
}

// ---- AdaIN (§4.2) ------------------------------------------------------------------------------
/// AdaIN(x; y), content shape.
inline std::vector<double> adain(const std::vector<double>& x, const shape4& xs, const std::vector<double>& y,
                                 const shape4& ys, double eps, bool unbiased) {
  std::vector<double> mx, sx, my, sy, out(x.size());
  channel_stats(x, xs, unbiased, eps, mx, sx);
  channel_stats(y, ys, unbiased, eps, my, sy);
  for (long b = 0; b < xs.B; ++b)
    for (long c = 0; c < xs.C; ++c)
      for (long h = 0; h < xs.H; ++h)
        for (long w = 0; w < xs.W; ++w) {
          const long i = b * xs.C + c, e = xs.at(b, c, h, w);
          out[e] = sy[i] * (x[e] - mx[i]) / sx[i] + my[i];
        }
  return out;
}
/// §4.2 gradients, written out as in the spec: to the style y and to the content x.
inline void adain_grads(const std::vector<double>& x, const shape4& xs, const std::vector<double>& y, const shape4& ys,
                        const std::vector<double>& g, double eps, bool unbiased, std::vector<double>& gy,
                        std::vector<double>& gx) {
  std::vector<double> mx, sx, my, sy;
  channel_stats(x, xs, unbiased, eps, mx, sx);
  channel_stats(y, ys, unbiased, eps, my, sy);
  gy.assign(y.size(), 0);
  gx.assign(x.size(), 0);
  const double nx = double(xs.plane()), ny = double(ys.plane());
  const double dx = unbiased ? nx - 1 : nx, dy = unbiased ? ny - 1 : ny;
  for (long b = 0; b < xs.B; ++b)
    for (long c = 0; c < xs.C; ++c) {
      const long i = b * xs.C + c;
      double dmu = 0, dsig = 0;
      for (long h = 0; h < xs.H; ++h)
        for (long w = 0; w < xs.W; ++w) {
          const long e = xs.at(b, c, h, w);
          dmu += g[e];
          dsig += g[e] * (x[e] - mx[i]) / sx[i];
        }
      for (long h = 0; h < ys.H; ++h)
        for (long w = 0; w < ys.W; ++w) {
          const long e = ys.at(b, c, h, w);
          gy[e] = dmu / ny + dsig * (y[e] - my[i]) / (dy * sy[i]);
        }
      for (long h = 0; h < xs.H; ++h)
        for (long w = 0; w < xs.W; ++w) {
          const long e = xs.at(b, c, h, w);
          const double xh = (x[e] - mx[i]) / sx[i];
          gx[e] = sy[i] / sx[i] * (g[e] - dmu / nx - xh * dsig / dx);
        }
    }
}

/// The peer's composite, literally: mse(AdaIN(ft; fs), ft) + mse(mu_s, mu_t) + mse(sqrt(v_s), sqrt(v_t)).
struct adain_stats_opts {
  double eps = 1e-5;
  bool unbiased = false;
  double adain_weight = 1, mean_weight = 1, std_weight = 1;
  red r = red::mean;
};
inline double adain_stats_loss(const std::vector<double>& fs, const shape4& ss, const std::vector<double>& ft,
                               const shape4& ts, const adain_stats_opts& o) {
  const std::vector<double> out = adain(ft, ts, fs, ss, o.eps, o.unbiased);
  std::vector<double> ms, sds, mt, sdt;
  channel_stats(fs, ss, o.unbiased, 0.0, ms, sds);  // sqrt(v) without eps
  channel_stats(ft, ts, o.unbiased, 0.0, mt, sdt);
  double term_out = 0;
  for (std::size_t e = 0; e < ft.size(); ++e) term_out += (out[e] - ft[e]) * (out[e] - ft[e]);
  term_out /= double(ts.plane());  // mean over the spatial positions; the channel divisor below
  double term_mu = 0, term_sd = 0;
  for (std::size_t i = 0; i < ms.size(); ++i) {
    term_mu += (ms[i] - mt[i]) * (ms[i] - mt[i]);
    term_sd += (sds[i] - sdt[i]) * (sds[i] - sdt[i]);
  }
  return (o.adain_weight * term_out + o.mean_weight * term_mu + o.std_weight * term_sd) / divisor(o.r, ss.B, ss.C);
}

/// Its gradient to the student: the AdaIN term through adain_grads (the student is the style),
/// the mean and std terms through channel_stats_grad (std without eps).
inline std::vector<double> adain_stats_loss_grad(const std::vector<double>& fs, const shape4& ss, const std::vector<double>& ft,
                                                 const shape4& ts, const adain_stats_opts& o) {
  const double k = 2 / divisor(o.r, ss.B, ss.C);
  const std::vector<double> out = adain(ft, ts, fs, ss, o.eps, o.unbiased);
  std::vector<double> up(out.size()), g_style, g_content;
  for (std::size_t e = 0; e < out.size(); ++e) up[e] = k * o.adain_weight * (out[e] - ft[e]) / double(ts.plane());
  adain_grads(ft, ts, fs, ss, up, o.eps, o.unbiased, g_style, g_content);
  std::vector<double> ms, sds, mt, sdt;
  channel_stats(fs, ss, o.unbiased, 0.0, ms, sds);
  channel_stats(ft, ts, o.unbiased, 0.0, mt, sdt);
  std::vector<double> gm(ms.size()), gsd(ms.size());
  for (std::size_t i = 0; i < ms.size(); ++i) gm[i] = k * o.mean_weight * (ms[i] - mt[i]), gsd[i] = k * o.std_weight * (sds[i] - sdt[i]);
  const auto g_stats = channel_stats_grad(fs, ss, o.unbiased, 0.0, gm, gsd);
  for (std::size_t e = 0; e < g_style.size(); ++e) g_style[e] += g_stats[e];
  return g_style;
}

// ---- embedding alignment ------------------------------------------------------------------------
enum class metric { mse, squared_l2, l1, cosine };
enum class norm { none, clamp, zero_below_eps };
struct embedding_opts {
  metric m = metric::mse;
  norm n = norm::none;
  double eps = 1e-12;
  red r = red::mean;  // mean = weighted mean over rows here
  bool none_reduction = false;
  double scale = 1;
};
inline std::vector<double> normalized(const double* x, long D, norm n, double eps) {
  std::vector<double> u(x, x + D);
  if (n == norm::none) return u;
  double q = 0;
  for (double v : u) q += v * v;
  const double nr = std::sqrt(q);
  const double inv = nr > eps ? 1 / nr : (n == norm::clamp ? 1 / eps : 0.0);
  for (double& v : u) v *= inv;
  return u;
}
inline double embedding_row(const double* s, const double* t, long D, const embedding_opts& o) {
  const norm n = (o.m == metric::cosine && o.n == norm::none) ? norm::clamp : o.n;
  const auto u = normalized(s, D, n, o.eps), v = normalized(t, D, n, o.eps);
  double l = 0;
  if (o.m == metric::cosine) {
    for (long d = 0; d < D; ++d) l += u[d] * v[d];
    return 1 - l;
  }
  for (long d = 0; d < D; ++d) {
    const double e = u[d] - v[d];
    l += o.m == metric::l1 ? std::fabs(e) : e * e;
  }
  return o.m == metric::mse ? l / double(D) : l;
}
/// Per-row values (none) or the reduced loss in element 0.
inline std::vector<double> embedding_loss(const std::vector<double>& s, const std::vector<double>& t, long N, long D,
                                          const std::vector<double>& weights, const std::vector<std::uint8_t>& mask,
                                          const embedding_opts& o) {
  std::vector<double> rows(N, 0.0);
  double total = 0, wsum = 0;
  for (long r = 0; r < N; ++r) {
    double w = weights.empty() ? 1.0 : weights[r];
    if (!mask.empty() && !mask[r]) w = 0;
    wsum += w;
    if (w == 0) continue;
    const double l = embedding_row(&s[r * D], &t[r * D], D, o);
    rows[r] = o.scale * w * l;
    total += w * l;
  }
  if (o.none_reduction) return rows;
  const double div = o.r == red::mean ? wsum : o.r == red::batchmean ? double(N) : 1.0;
  return {div == 0 ? 0.0 : o.scale * total / div};
}

// ---- text-embedding classifier (§7) -------------------------------------------------------------
struct classifier_opts {
  double temperature = 0.01;
  norm n = norm::zero_below_eps;
  double eps = 1e-8;
};
/// logits [N, K], K = C + has_bg, column 0 = background.
inline std::vector<double> classifier_logits(const std::vector<double>& e, long N, long D, const std::vector<double>& t, long C,
                                             const std::vector<double>& bg, const std::vector<std::uint8_t>& mask,
                                             const classifier_opts& o) {
  const long off = bg.empty() ? 0 : 1, K = C + off;
  std::vector<double> z(N * K, 0.0);
  std::vector<double> wh;
  if (off) wh = normalized(bg.data(), D, o.n, o.eps);
  for (long r = 0; r < N; ++r) {
    const auto eh = normalized(&e[r * D], D, o.n, o.eps);
    if (off) {
      double dot = 0;
      for (long d = 0; d < D; ++d) dot += eh[d] * wh[d];
      z[r * K] = dot / o.temperature;
    }
    for (long c = 0; c < C; ++c) {
      const auto th = normalized(&t[c * D], D, o.n, o.eps);
      double dot = 0;
      for (long d = 0; d < D; ++d) dot += eh[d] * th[d];
      z[r * K + off + c] = (mask.empty() || mask[c]) ? dot / o.temperature : 0.0;
    }
  }
  return z;
}
/// Hard-label CE over logits rows; reduction mean / batchmean / sum with row weights.
inline double cross_entropy(const std::vector<double>& z, long N, long K, const std::vector<std::int64_t>& y,
                            const std::vector<double>& weights, std::int64_t ignore, red r) {
  double total = 0, wsum = 0;
  for (long i = 0; i < N; ++i) {
    if (y[i] == ignore) continue;
    const double w = weights.empty() ? 1.0 : weights[i];
    double m = -INFINITY;
    for (long k = 0; k < K; ++k) m = std::max(m, z[i * K + k]);
    double s = 0;
    for (long k = 0; k < K; ++k) s += std::exp(z[i * K + k] - m);
    total += w * (m + std::log(s) - z[i * K + y[i]]);
    wsum += w;
  }
  const double div = r == red::mean ? wsum : r == red::batchmean ? double(N) : 1.0;
  return div == 0 ? 0.0 : total / div;
}

/// The backward of normalized(): g_x from g_u (u = x / ||x||: (g - u (u.g)) / ||x||; below eps
/// x / eps for clamp, 0 for zero_below_eps; none: g).
inline std::vector<double> normalized_vjp(const double* x, long D, norm n, double eps, const std::vector<double>& gu) {
  double q = 0;
  for (long d = 0; d < D; ++d) q += x[d] * x[d];
  const double nr = std::sqrt(q);
  const bool projected = n != norm::none && nr > eps;  // u = x / ||x||
  const double inv = n == norm::none ? 1.0 : projected ? 1 / nr : n == norm::clamp ? 1 / eps : 0.0;
  double ug = 0;
  for (long d = 0; d < D && projected; ++d) ug += x[d] * inv * gu[d];
  std::vector<double> gx(D);
  for (long d = 0; d < D; ++d) gx[d] = inv * (gu[d] - (projected ? x[d] * inv * ug : 0.0));
  return gx;
}
/// The classifier's backward from G = dL/dz [N, K]: gradients to regions [N, D], background [D]
/// (when present) and classes [C, D].
inline void classifier_grads(const std::vector<double>& e, long N, long D, const std::vector<double>& t, long C,
                             const std::vector<double>& bg, const std::vector<std::uint8_t>& mask, const classifier_opts& o,
                             const std::vector<double>& G, std::vector<double>& ge, std::vector<double>& gbg, std::vector<double>& gt) {
  const long off = bg.empty() ? 0 : 1, K = C + off;
  auto column = [&](long k) { return k < off ? bg.data() : &t[(k - off) * D]; };  // of the logits: background, classes
  std::vector<std::vector<double>> eh(N), ch(K), gch(K, std::vector<double>(D, 0.0));
  for (long r = 0; r < N; ++r) eh[r] = normalized(&e[r * D], D, o.n, o.eps);
  for (long k = 0; k < K; ++k) ch[k] = normalized(column(k), D, o.n, o.eps);
  ge.assign(N * D, 0.0);
  for (long r = 0; r < N; ++r) {
    std::vector<double> geh(D, 0.0);
    for (long k = 0; k < K; ++k) {
      if (k >= off && !(mask.empty() || mask[k - off])) continue;  // masked classes are constant 0
      const double gz = G[r * K + k] / o.temperature;
      for (long d = 0; d < D; ++d) geh[d] += gz * ch[k][d], gch[k][d] += gz * eh[r][d];
    }
    const auto gx = normalized_vjp(&e[r * D], D, o.n, o.eps, geh);
    std::copy(gx.begin(), gx.end(), ge.begin() + r * D);
  }
  gt.assign(C * D, 0.0);
  gbg.clear();
  for (long k = 0; k < K; ++k) {
    const auto gx = normalized_vjp(column(k), D, o.n, o.eps, gch[k]);
    if (k < off) gbg = gx;
    else std::copy(gx.begin(), gx.end(), gt.begin() + (k - off) * D);
  }
}
/// dL/dz of cross_entropy: w_i / div (softmax(z_i) - onehot(y_i)), 0 on ignored rows.
inline std::vector<double> cross_entropy_grad(const std::vector<double>& z, long N, long K, const std::vector<std::int64_t>& y,
                                              const std::vector<double>& weights, std::int64_t ignore, red r) {
  double wsum = 0;
  for (long i = 0; i < N; ++i)
    if (y[i] != ignore) wsum += weights.empty() ? 1.0 : weights[i];
  const double div = r == red::mean ? wsum : r == red::batchmean ? double(N) : 1.0;
  std::vector<double> g(N * K, 0.0);
  for (long i = 0; i < N && div != 0; ++i) {
    if (y[i] == ignore) continue;
    const double w = (weights.empty() ? 1.0 : weights[i]) / div;
    double m = -INFINITY;
    for (long k = 0; k < K; ++k) m = std::max(m, z[i * K + k]);
    double s = 0;
    for (long k = 0; k < K; ++k) s += std::exp(z[i * K + k] - m);
    for (long k = 0; k < K; ++k) g[i * K + k] = w * (std::exp(z[i * K + k] - m) / s - (k == y[i] ? 1.0 : 0.0));
  }
  return g;
}

}  // namespace features_ref
