// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision reference of the WSDDN two-stream head (Bilen & Vedaldi 2016), written
// from the definitions with explicit softmaxes; its gradient goes through the full softmax
// Jacobians (da_j/dx_k = a_j (δ_jk - a_k)), not the closed forms the library uses.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace distill_ref {

/// Logits x (classification) and y (detection), each (B, R, C) row-major.
struct wsddn_ref_case {
  int B, R, C;
  std::vector<double> x, y;
  double class_scale = 1, region_scale = 1;
};

inline std::size_t x_size(const wsddn_ref_case& c) { return static_cast<std::size_t>(c.B) * c.R * c.C; }

struct wsddn_ref_streams {
  std::vector<double> a, d;  // (B, R, C)
};

inline wsddn_ref_streams wsddn_ref_softmaxes(const wsddn_ref_case& c) {
  const int B = c.B, R = c.R, C = c.C;
  wsddn_ref_streams s{std::vector<double>(x_size(c)), std::vector<double>(x_size(c))};
  auto at = [&](int b, int r, int k) { return (static_cast<std::size_t>(b) * R + r) * C + k; };
  for (int b = 0; b < B; ++b) {
    for (int r = 0; r < R; ++r) {
      double m = -INFINITY, z = 0;
      for (int k = 0; k < C; ++k) m = std::max(m, c.class_scale * c.x[at(b, r, k)]);
      for (int k = 0; k < C; ++k) z += std::exp(c.class_scale * c.x[at(b, r, k)] - m);
      for (int k = 0; k < C; ++k) s.a[at(b, r, k)] = std::exp(c.class_scale * c.x[at(b, r, k)] - m) / z;
    }
    for (int k = 0; k < C; ++k) {
      double m = -INFINITY, z = 0;
      for (int r = 0; r < R; ++r) m = std::max(m, c.region_scale * c.y[at(b, r, k)]);
      for (int r = 0; r < R; ++r) z += std::exp(c.region_scale * c.y[at(b, r, k)] - m);
      for (int r = 0; r < R; ++r) s.d[at(b, r, k)] = std::exp(c.region_scale * c.y[at(b, r, k)] - m) / z;
    }
  }
  return s;
}

/// Image scores (B, C) and region scores (B, R, C).
inline std::vector<double> wsddn_ref_scores(const wsddn_ref_case& c, std::vector<double>* region = nullptr) {
  const auto st = wsddn_ref_softmaxes(c);
  std::vector<double> s(static_cast<std::size_t>(c.B) * c.C, 0.0);
  if (region) region->assign(x_size(c), 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int r = 0; r < c.R; ++r)
      for (int k = 0; k < c.C; ++k) {
        const std::size_t i = (static_cast<std::size_t>(b) * c.R + r) * c.C + k;
        s[static_cast<std::size_t>(b) * c.C + k] += st.a[i] * st.d[i];
        if (region) (*region)[i] = st.a[i] * st.d[i];
      }
  return s;
}

/// dL/dx and dL/dy for L = sum_bk g_bk s_bk, through the softmax Jacobians.
inline void wsddn_ref_backward(const wsddn_ref_case& c, const std::vector<double>& g, std::vector<double>& dx, std::vector<double>& dy) {
  const auto st = wsddn_ref_softmaxes(c);
  const int R = c.R, C = c.C;
  auto at = [&](int b, int r, int k) { return (static_cast<std::size_t>(b) * R + r) * C + k; };
  dx.assign(x_size(c), 0.0);
  dy.assign(x_size(c), 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < C; ++k) {
        // dL/da_rj = g_j d_rj; da_rj/dx_rk = κc a_rj (δ_jk - a_rk)
        for (int j = 0; j < C; ++j)
          dx[at(b, r, k)] += g[static_cast<std::size_t>(b) * C + j] * st.d[at(b, r, j)] * c.class_scale * st.a[at(b, r, j)] *
                             ((j == k ? 1.0 : 0.0) - st.a[at(b, r, k)]);
        // dL/dd_qk = g_k a_qk; dd_qk/dy_rk = κr d_qk (δ_qr - d_rk)
        for (int q = 0; q < R; ++q)
          dy[at(b, r, k)] += g[static_cast<std::size_t>(b) * C + k] * st.a[at(b, q, k)] * c.region_scale * st.d[at(b, q, k)] *
                             ((q == r ? 1.0 : 0.0) - st.d[at(b, r, k)]);
      }
}

/// Image-level loss: BCE on clamp(s, 0, 1) smoothed by eps, per image (reduction 0) or reduced
/// (1 sum, 2 mean over B C, 3 batchmean over B) in out[0]; g = dL/ds (times grad_scale).
inline std::vector<double> wsddn_ref_loss(const wsddn_ref_case& c, const std::vector<std::uint8_t>& labels, double eps, int reduction, double grad_scale,
                                          std::vector<double>* g) {
  const auto s = wsddn_ref_scores(c);
  std::vector<double> per_image(static_cast<std::size_t>(c.B), 0.0);
  const double D = reduction == 2 ? double(c.B) * c.C : reduction == 3 ? double(c.B) : 1.0;
  if (g) g->assign(s.size(), 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int k = 0; k < c.C; ++k) {
      const std::size_t i = static_cast<std::size_t>(b) * c.C + k;
      const double p = std::min(std::max(s[i], 0.0), 1.0);
      const bool pos = labels[i] != 0;
      per_image[static_cast<std::size_t>(b)] += pos ? -std::log(p + eps) : -std::log(1 - p + eps);
      if (g) (*g)[i] = grad_scale / D * (pos ? -1 / (p + eps) : 1 / (1 - p + eps));
    }
  if (reduction == 0) return per_image;
  double total = 0;
  for (double l : per_image) total += l;
  return {total / D};
}

}  // namespace distill_ref
