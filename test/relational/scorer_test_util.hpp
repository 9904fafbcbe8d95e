// SPDX-License-Identifier: MIT
#pragma once
// Shared set-up of the pair scorer tests (CPU and CUDA): random problems in the reference's
// form and the conversions between the reference's enums and the library's.
#include <cmath>
#include <string>
#include <vector>

#include "distill/relational/pair_scorer.hpp"
#include "reference/relational_ref.hpp"
#include "support/random.hpp"

namespace rel_test {

inline distill::pair_normalization to_lib(distill_ref::norm_d n) {
  switch (n) {
    case distill_ref::norm_d::sigmoid: return distill::pair_normalization::sigmoid;
    case distill_ref::norm_d::softmax_all: return distill::pair_normalization::softmax_all;
    case distill_ref::norm_d::softmax_row: return distill::pair_normalization::softmax_row;
  }
  return distill::pair_normalization::sigmoid;
}
inline const char* name_of(distill_ref::norm_d n) {
  switch (n) {
    case distill_ref::norm_d::sigmoid: return "sigmoid";
    case distill_ref::norm_d::softmax_all: return "softmax_all";
    case distill_ref::norm_d::softmax_row: return "softmax_row";
  }
  return "?";
}

struct scorer_case {
  long B = 2, N = 4, D = 3, Q = 2, K = 5;
  bool self = true, padded = false;
  distill_ref::scorer_kind_d kind = distill_ref::scorer_kind_d::mlp;
};

inline std::string describe(const scorer_case& c) {
  return "B" + std::to_string(c.B) + " N" + std::to_string(c.N) + " D" + std::to_string(c.D) + " Q" + std::to_string(c.Q) +
         " K" + std::to_string(c.K) + " self " + std::to_string(c.self) + " padded " + std::to_string(c.padded) + " kind " +
         (c.kind == distill_ref::scorer_kind_d::mlp ? "mlp" : "bilinear");
}

inline distill_ref::scorer_problem_d make_scorer_problem(distill_test::rng& g, const scorer_case& c) {
  distill_ref::scorer_problem_d p;
  p.B = c.B, p.N = c.N, p.D = c.D, p.Q = c.Q, p.K = c.K, p.self = c.self, p.kind = c.kind;
  p.o = g.normals(static_cast<std::size_t>(c.B * c.N * c.D));
  p.q = g.normals(static_cast<std::size_t>(c.B * c.Q));
  if (c.padded) {
    p.om.assign(static_cast<std::size_t>(c.B * c.N), 1);
    for (long b = 0; b < c.B; ++b) p.om[static_cast<std::size_t>(b * c.N + (b % c.N))] = 0;
  }
  if (c.kind == distill_ref::scorer_kind_d::mlp) {
    const long in = 2 * c.D + c.Q;
    p.W1 = g.normals(static_cast<std::size_t>(in * c.K), 0.0, 1.0 / std::sqrt(static_cast<double>(in)));
    p.b1 = g.normals(static_cast<std::size_t>(c.K), 0.1, 0.1);
    p.W2 = g.normals(static_cast<std::size_t>(c.K), 0.0, 1.0);
    p.b2 = {0.3};
  } else {
    const long in = c.D + c.Q;
    p.W1 = g.normals(static_cast<std::size_t>(in * c.K), 0.0, 1.0 / std::sqrt(static_cast<double>(in)));
    p.W2 = g.normals(static_cast<std::size_t>(in * c.K), 0.0, 1.0 / std::sqrt(static_cast<double>(in)));
    p.b1 = g.normals(static_cast<std::size_t>(c.K), 0.0, 0.3);
    p.b2 = g.normals(static_cast<std::size_t>(c.K), 0.0, 0.3);
  }
  return p;
}

/// A logic-mask-like target: a few ones per sample (one sample left all zero when B > 2 to
/// exercise the skip), sometimes soft values.
inline std::vector<double> make_target(distill_test::rng& g, const distill_ref::scorer_problem_d& p, bool soft) {
  std::vector<double> t(static_cast<std::size_t>(p.B * p.N * p.N), 0.0);
  for (long b = 0; b < p.B; ++b) {
    if (p.B > 2 && b == 1) continue;
    for (long k = 0; k < p.N * p.N; ++k)
      if (g.coin(0.25)) t[static_cast<std::size_t>(b * p.N * p.N + k)] = soft ? g.uniform(0.2, 1.0) : 1.0;
  }
  return t;
}

}  // namespace rel_test
