// SPDX-License-Identifier: MIT
#pragma once
// Double-precision references for the logic family, written for clarity, not speed:
//   - the built-in soft predicates straight from their definitions (plain exp/sigmoid);
//   - a ground hinge-loss model built by plain recursion over variable assignments from rules
//     written as C++ structs (never through distill's parser or grounder);
//   - its energy, both in Łukasiewicz form (t-norm, co-norm, implication) and linearised;
//   - two independent solvers: accelerated projected gradient for smooth (all squared) problems
//     and projected subgradient for the rest;
//   - a KKT check: is a point optimal for the convex problem over the box [0, 1]^n?

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace distill_ref {

// ---------------------------------------------------------------- soft predicates
struct ref_object {
  double x, y;
  int colour, shape;
};

inline double sigmoid(double t) { return 1.0 / (1.0 + std::exp(-t)); }
inline double dist(const ref_object& a, const ref_object& b) { return std::hypot(a.x - b.x, a.y - b.y); }

// closest_to(i, j) (sign -1) or furthest_from(i, j) (sign +1) for a finite sharpness λ:
// exp(sign λ d_ij / s) / Σ_{k≠i} exp(sign λ d_ik / s).
inline double soft_extreme(const std::vector<ref_object>& s, int i, int j, double lambda, double scale, double sign) {
  if (i == j) return 0.0;
  double den = 0.0;
  for (int k = 0; k < static_cast<int>(s.size()); ++k)
    if (k != i) den += std::exp(sign * lambda * dist(s[i], s[k]) / scale);
  return std::exp(sign * lambda * dist(s[i], s[j]) / scale) / den;
}

// ---------------------------------------------------------------- ground model
struct literal {
  std::string pred;
  bool negated = false;
  std::vector<int> vars;  // variable indices
};

struct rule {
  double weight = 1.0;
  int power = 1;  // 1, 2, or 0 for hard
  std::vector<literal> body, head;
  int variables = 0;
};

// A ground hinge: c + Σ a_k x_{atom_k}, weight, power.
struct hinge {
  double c = 0.0;
  std::vector<std::pair<int, double>> terms;
  double weight = 1.0;
  int power = 1;
  // For the Łukasiewicz form of the energy: the literals' atoms (−1 when observed) and values.
  std::vector<int> body_atoms, head_atoms;
  std::vector<double> body_observed, head_observed;
  std::vector<bool> body_neg, head_neg;
};

struct model {
  int objects = 0;
  std::vector<std::pair<std::string, int>> open;  // open predicates and arities, in atom order
  std::function<double(const std::string&, const std::vector<int>&)> observed;  // truth of observed atoms
  std::vector<rule> rules;

  int atom_offset(const std::string& pred) const {
    int off = 0;
    for (const auto& [name, arity] : open) {
      if (name == pred) return off;
      off += arity == 0 ? 1 : (arity == 1 ? objects : objects * objects);
    }
    return -1;
  }
  int atoms() const {
    int n = 0;
    for (const auto& [name, arity] : open) n += arity == 0 ? 1 : (arity == 1 ? objects : objects * objects);
    return n;
  }
  int atom(const std::string& pred, const std::vector<int>& args) const {
    const int off = atom_offset(pred);
    if (off < 0) return -1;
    int flat = 0;
    for (int a : args) flat = flat * objects + a;
    return off + flat;
  }

  // Every grounding of every rule (none dropped), by recursion over the variables.
  std::vector<hinge> ground() const {
    std::vector<hinge> out;
    for (const rule& r : rules) {
      std::vector<int> assign(static_cast<std::size_t>(r.variables), 0);
      std::function<void(int)> rec = [&](int v) {
        if (v < r.variables) {
          for (int o = 0; o < objects; ++o) {
            assign[static_cast<std::size_t>(v)] = o;
            rec(v + 1);
          }
          return;
        }
        hinge h;
        h.weight = r.weight;
        h.power = r.power;
        h.c = 1.0 - static_cast<double>(r.body.size());
        auto add = [&](const literal& l, double side, std::vector<int>& atoms, std::vector<double>& obs, std::vector<bool>& neg) {
          std::vector<int> args;
          for (int var : l.vars) args.push_back(assign[static_cast<std::size_t>(var)]);
          const int a = atom(l.pred, args);
          atoms.push_back(a);
          neg.push_back(l.negated);
          if (a < 0) {
            const double t = observed(l.pred, args);
            obs.push_back(t);
            h.c += side * (l.negated ? 1.0 - t : t);
          } else {
            obs.push_back(0.0);
            h.c += l.negated ? side : 0.0;
            h.terms.push_back({a, l.negated ? -side : side});
          }
        };
        for (const auto& l : r.body) add(l, +1.0, h.body_atoms, h.body_observed, h.body_neg);
        for (const auto& l : r.head) add(l, -1.0, h.head_atoms, h.head_observed, h.head_neg);
        out.push_back(std::move(h));
      };
      rec(0);
    }
    return out;
  }
};

inline double linear_value(const hinge& h, const std::vector<double>& x) {
  double l = h.c;
  for (const auto& [a, coef] : h.terms) l += coef * x[static_cast<std::size_t>(a)];
  return l;
}

// Distance to satisfaction from the Łukasiewicz operators themselves (no linearisation).
inline double lukasiewicz_distance(const hinge& h, const std::vector<double>& x) {
  auto val = [&](int atom, double obs, bool neg) {
    const double t = atom < 0 ? obs : x[static_cast<std::size_t>(atom)];
    return neg ? 1.0 - t : t;
  };
  double body = 1.0;  // t-norm fold: ((1 & b1) & b2) & ...
  for (std::size_t i = 0; i < h.body_atoms.size(); ++i)
    body = std::max(0.0, body + val(h.body_atoms[i], h.body_observed[i], h.body_neg[i]) - 1.0);
  double head = 0.0;  // co-norm fold
  for (std::size_t i = 0; i < h.head_atoms.size(); ++i)
    head = std::min(1.0, head + val(h.head_atoms[i], h.head_observed[i], h.head_neg[i]));
  const double implication = std::min(1.0, 1.0 - body + head);
  return 1.0 - implication;
}

// Energy Σ_soft w d^p (Łukasiewicz form) and the largest hard violation.
inline double energy(const std::vector<hinge>& hs, const std::vector<double>& x, double* hard_violation = nullptr) {
  double e = 0.0, v = 0.0;
  for (const auto& h : hs) {
    const double d = lukasiewicz_distance(h, x);
    if (h.power == 0) v = std::max(v, d);
    else e += h.weight * (h.power == 2 ? d * d : d);
  }
  if (hard_violation) *hard_violation = v;
  return e;
}

inline double clip01(double v) { return v < 0 ? 0 : (v > 1 ? 1 : v); }

// Gradient of Σ w max(0, ℓ)^p (a subgradient where p = 1 and ℓ = 0: the zero one).
inline std::vector<double> subgradient(const std::vector<hinge>& hs, const std::vector<double>& x) {
  std::vector<double> g(x.size(), 0.0);
  for (const auto& h : hs) {
    const double l = linear_value(h, x);
    if (l <= 0) continue;
    const double s = h.power == 2 ? 2.0 * h.weight * l : h.weight;
    for (const auto& [a, coef] : h.terms) g[static_cast<std::size_t>(a)] += s * coef;
  }
  return g;
}

// (Σ_k |a_k|)² ≥ |a|² also when an atom occurs in several terms of one hinge.
inline double norm1_squared(const hinge& h) {
  double s = 0.0;
  for (const auto& t : h.terms) s += std::fabs(t.second);
  return s * s;
}

// Smooth problems (every rule squared, no hard rule): FISTA with step 1/L,
// L = 2 Σ w (Σ|a|)² (an upper bound of the Hessian's largest eigenvalue).
inline std::vector<double> solve_smooth(const std::vector<hinge>& hs, int atoms, int iterations = 20000) {
  double L = 0.0;
  for (const auto& h : hs) L += 2.0 * h.weight * norm1_squared(h);
  L = std::max(L, 1e-12);
  std::vector<double> x(static_cast<std::size_t>(atoms), 0.0), y = x, prev = x;
  double t = 1.0;
  for (int it = 0; it < iterations; ++it) {
    const auto g = subgradient(hs, y);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = clip01(y[i] - g[i] / L);
    const double tn = 0.5 * (1.0 + std::sqrt(1.0 + 4.0 * t * t));
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] + (t - 1.0) / tn * (x[i] - prev[i]);
    prev = x;
    t = tn;
  }
  return x;
}

// Any soft problem: projected subgradient with steps 0.1/√k, keeping the best point.
inline std::vector<double> solve_subgradient(const std::vector<hinge>& hs, int atoms, int iterations = 200000) {
  std::vector<double> x(static_cast<std::size_t>(atoms), 0.5), best = x;
  double best_e = energy(hs, x);
  for (int it = 1; it <= iterations; ++it) {
    const auto g = subgradient(hs, x);
    const double step = 0.1 / std::sqrt(static_cast<double>(it));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = clip01(x[i] - step * g[i]);
    const double e = energy(hs, x);
    if (e < best_e) best_e = e, best = x;
  }
  return best;
}

// KKT residual of x for  min Σ_soft w max(0, ℓ)^p  s.t. hard ℓ ≤ 0, x ∈ [0, 1]^n.
// x is optimal iff there are multipliers λ_r ∈ [0, w_r] for the linear hinges at their kink
// (|ℓ| ≤ tol) and λ_r ≥ 0 for the active hard rules such that g = ∇(smooth part) + Σ λ_r a_r
// satisfies g_i = 0 inside the box, g_i ≥ 0 at x_i = 0 and g_i ≤ 0 at x_i = 1. The multipliers
// are found by projected gradient on the squared violation (a convex problem); the result is the
// root of the smallest squared violation found. Small means stationary.
inline double kkt_residual(const std::vector<hinge>& hs, const std::vector<double>& x, double tol, int iterations = 20000) {
  const std::size_t n = x.size();
  std::vector<double> fixed(n, 0.0);
  std::vector<const hinge*> free;
  std::vector<double> cap;
  for (const auto& h : hs) {
    const double l = linear_value(h, x);
    if (h.power == 2) {
      if (l > 0)
        for (const auto& [a, coef] : h.terms) fixed[static_cast<std::size_t>(a)] += 2.0 * h.weight * l * coef;
    } else if (h.power == 1) {
      if (l > tol) {
        for (const auto& [a, coef] : h.terms) fixed[static_cast<std::size_t>(a)] += h.weight * coef;
      } else if (l >= -tol) {
        free.push_back(&h);
        cap.push_back(h.weight);
      }
    } else if (l >= -tol) {
      free.push_back(&h);
      cap.push_back(1e6);
    }
  }
  auto violation = [&](const std::vector<double>& g, std::vector<double>* dv) {
    double s = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      double v = 0.0;
      if (x[i] <= tol) v = std::min(0.0, g[i]);
      else if (x[i] >= 1.0 - tol) v = std::max(0.0, g[i]);
      else v = g[i];
      if (dv) (*dv)[i] = v;
      s += v * v;
    }
    return s;
  };
  std::vector<double> lambda(free.size(), 0.0), y = lambda, prev = lambda, g(n), dv(n);
  double L = 1e-12;  // half the Lipschitz constant of the gradient 2 Aᵀv, so steps are d / L
  for (const hinge* h : free) L += norm1_squared(*h);
  auto eval = [&](const std::vector<double>& lam) {
    g = fixed;
    for (std::size_t r = 0; r < free.size(); ++r)
      for (const auto& [a, coef] : free[r]->terms) g[static_cast<std::size_t>(a)] += lam[r] * coef;
    return violation(g, &dv);
  };
  double best = eval(lambda), t = 1.0;
  for (int it = 0; it < iterations && !free.empty() && best > 0.0; ++it) {  // FISTA on λ
    eval(y);
    for (std::size_t r = 0; r < free.size(); ++r) {
      double d = 0.0;
      for (const auto& [a, coef] : free[r]->terms) d += dv[static_cast<std::size_t>(a)] * coef;
      lambda[r] = std::clamp(y[r] - d / L, 0.0, cap[r]);
    }
    best = std::min(best, eval(lambda));
    const double tn = 0.5 * (1.0 + std::sqrt(1.0 + 4.0 * t * t));
    for (std::size_t r = 0; r < free.size(); ++r) y[r] = lambda[r] + (t - 1.0) / tn * (lambda[r] - prev[r]);
    prev = lambda;
    t = tn;
  }
  return std::sqrt(best);
}

}  // namespace distill_ref
