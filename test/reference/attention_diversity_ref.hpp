// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision reference of FFSD's attention diversity (attention/attention_diversity.hpp),
// written as SJLeo/FFSD's `diversity_loss` / `diversity_target` compute it: full sort for the
// threshold, plain loops.

#include <algorithm>
#include <cmath>
#include <vector>

namespace distill_ref::attention {

/// Per sample b of features F [B, C, H, W]: the spatial map m[n] = mean_c F^2.
inline std::vector<double> channel_energy_map(const std::vector<double>& f, long B, long C, long N) {
  std::vector<double> m(static_cast<std::size_t>(B * N), 0.0);
  for (long b = 0; b < B; ++b)
    for (long c = 0; c < C; ++c)
      for (long n = 0; n < N; ++n) {
        const double v = f[static_cast<std::size_t>((b * C + c) * N + n)];
        m[static_cast<std::size_t>(b * N + n)] += v * v / static_cast<double>(C);
      }
  return m;
}

/// Diversity target t [B, N], and y = normalised peer map [B, N], nu [B].
inline std::vector<double> diversity_target(const std::vector<double>& peer, long B, long C, long N, std::vector<double>* y_out = nullptr,
                                            std::vector<double>* nu_out = nullptr, double eps = 1e-12) {
  const auto m = channel_energy_map(peer, B, C, N);
  std::vector<double> t(m.size()), y(m.size()), nu(static_cast<std::size_t>(B));
  for (long b = 0; b < B; ++b) {
    double ss = 0;
    for (long n = 0; n < N; ++n) ss += m[static_cast<std::size_t>(b * N + n)] * m[static_cast<std::size_t>(b * N + n)];
    const double norm = std::sqrt(ss);
    nu[static_cast<std::size_t>(b)] = norm;
    std::vector<double> row(static_cast<std::size_t>(N));
    for (long n = 0; n < N; ++n) row[static_cast<std::size_t>(n)] = y[static_cast<std::size_t>(b * N + n)] = m[static_cast<std::size_t>(b * N + n)] / std::max(norm, eps);
    std::sort(row.begin(), row.end());
    const double theta = row[static_cast<std::size_t>(N / 3 - 1)];
    for (long n = 0; n < N; ++n) {
      const double v = y[static_cast<std::size_t>(b * N + n)];
      const double s = v > theta ? 1.0 : v < theta ? -1.0 : 0.0;
      t[static_cast<std::size_t>(b * N + n)] = (norm / 2 - v) * s + norm / 2;
    }
  }
  if (y_out) *y_out = y;
  if (nu_out) *nu_out = nu;
  return t;
}

/// Per-sample losses l_b = mean_n (normalize(mean_c A^2)[n] - t[n])^2 (unweighted).
inline std::vector<double> diversity_loss(const std::vector<double>& student, const std::vector<double>& peer, long B, long Cs, long Cp, long N,
                                          double eps = 1e-12) {
  const auto t = diversity_target(peer, B, Cp, N, nullptr, nullptr, eps);
  const auto q = channel_energy_map(student, B, Cs, N);
  std::vector<double> l(static_cast<std::size_t>(B), 0.0);
  for (long b = 0; b < B; ++b) {
    double ss = 0;
    for (long n = 0; n < N; ++n) ss += q[static_cast<std::size_t>(b * N + n)] * q[static_cast<std::size_t>(b * N + n)];
    const double norm = std::max(std::sqrt(ss), eps);
    for (long n = 0; n < N; ++n) {
      const double d = q[static_cast<std::size_t>(b * N + n)] / norm - t[static_cast<std::size_t>(b * N + n)];
      l[static_cast<std::size_t>(b)] += d * d / static_cast<double>(N);
    }
  }
  return l;
}

}  // namespace distill_ref::attention
