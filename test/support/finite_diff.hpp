// SPDX-License-Identifier: MIT
#pragma once
// Central finite differences in double, the independent check of every analytic gradient.
//   auto g = numeric_gradient([&](const std::vector<double>& x) { return loss(x); }, x0);
// Step h = eps * max(1, |x_i|). For kinks (ReLU, |x|, top-k) keep test points away from them.

#include <algorithm>
#include <cmath>
#include <vector>

namespace distill_test {

template <class F>
std::vector<double> numeric_gradient(F&& f, std::vector<double> x, double eps = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    const double h = eps * std::max(1.0, std::fabs(x0));
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

/// Directional derivative along `dir` (cheap check for large inputs): (f(x+h d) - f(x-h d)) / 2h.
template <class F>
double directional_derivative(F&& f, const std::vector<double>& x, const std::vector<double>& dir, double h = 1e-6) {
  std::vector<double> xp(x), xm(x);
  for (std::size_t i = 0; i < x.size(); ++i) xp[i] += h * dir[i], xm[i] -= h * dir[i];
  return (f(xp) - f(xm)) / (2 * h);
}

}  // namespace distill_test
