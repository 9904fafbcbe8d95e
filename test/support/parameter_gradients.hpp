// SPDX-License-Identifier: MIT
#pragma once
// The gradient check of a whole model: for every trainable parameter tensor p, the slope of the
// loss along a direction v in p's values, by central differences, against the analytic
// gradient . v.
//   const int checked = distill_test::check_parameter_gradients(model.parameters(), [&] { return loss(); }, rng, "model");
//   CHECK(checked >= 6);
// `loss()` computes the loss at the parameters' current values and fills every p->grad. The
// direction is half along the sign of the analytic gradient (a large, well measurable slope) and
// half random (so components wrongly computed as zero are probed too). The step: float rounding
// of the loss (about 1e-7 of it) grows as 1/h, the error from the ReLU and max-pool kinks crossed
// grows with h, and where it sets in depends on the tensor (measured over 1e-6 .. 1e-1: pixel
// models need 1e-4 and below). So a tensor passes when one of a few steps agrees within 2 % plus
// its rounding floor; a wrong weight or factor fails at all of them.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "support/random.hpp"

namespace distill_test {

/// Checks every trainable, non-buffer tensor of `params` (pointers to nn parameters) and returns
/// how many it checked; the values are restored afterwards.
template <class Params, class Loss>
int check_parameter_gradients(const Params& params, Loss&& loss, rng& r, const std::string& what) {
  const double loss0 = loss();
  REQUIRE(std::isfinite(loss0));
  std::vector<std::vector<float>> grads;
  for (const auto* p : params) grads.emplace_back(p->grad.data(), p->grad.data() + (p->buffer ? 0 : p->grad.size()));
  const double scale = std::max(1.0, std::abs(loss0));
  int checked = 0;
  for (std::size_t t = 0; t < params.size(); ++t) {
    auto* p = params[t];
    if (p->buffer || !p->trainable) continue;
    const auto n = static_cast<std::size_t>(p->value.size());
    std::vector<float> v = r.uniforms<float>(n, -0.5, 0.5), saved(p->value.data(), p->value.data() + n);
    for (std::size_t i = 0; i < n; ++i) v[i] += grads[t][i] > 0 ? 0.5f : grads[t][i] < 0 ? -0.5f : 0.0f;
    double analytic = 0;
    for (std::size_t i = 0; i < n; ++i) analytic += static_cast<double>(grads[t][i]) * v[i];
    auto at = [&](double s) {
      for (std::size_t i = 0; i < n; ++i) p->value.data()[i] = static_cast<float>(saved[i] + s * v[i]);
      return loss();
    };
    bool agrees = false;
    std::string tried;
    for (const double h : {1e-3, 3e-4, 1e-4, 3e-5}) {
      const double numeric = (at(h) - at(-h)) / (2 * h);
      const double tol = 2e-2 * std::max(std::abs(analytic), std::abs(numeric)) + 5e-7 * scale / h;
      tried += " h " + std::to_string(h) + ": " + std::to_string(numeric) + " (tolerance " + std::to_string(tol) + ");";
      if (std::abs(analytic - numeric) <= tol) {
        agrees = true;
        break;
      }
    }
    for (std::size_t i = 0; i < n; ++i) p->value.data()[i] = saved[i];
    INFO(what << ": " << p->name << " (" << n << " values): analytic " << analytic << ", finite differences" << tried);
    CHECK(agrees);
    ++checked;
  }
  return checked;
}

}  // namespace distill_test
