// SPDX-License-Identifier: MIT
#pragma once
// Shared set-up of the relational pairing tests (CPU and CUDA): random problems in double (the
// reference's form), host buffers in the library's layout (optionally padded rows and
// column-major weights), and tolerances for this family.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "reference/relational_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace rel_test {

enum class mask_kind { absent, ones, zeros, sparse, soft, tenth };

inline const char* to_string(mask_kind m) {
  switch (m) {
    case mask_kind::absent: return "absent";
    case mask_kind::ones: return "ones";
    case mask_kind::zeros: return "zeros";
    case mask_kind::sparse: return "sparse";
    case mask_kind::soft: return "soft";
    case mask_kind::tenth: return "tenth";
  }
  return "?";
}

struct pairing_case {
  long B = 2, N = 3, D = 2, Q = 2, H = 4;
  int L = 3;
  bool self = true, last_relu = true, padded = false, biases = true;
  double scale = 1.0;
  mask_kind mask = mask_kind::soft;
};

inline std::string describe(const pairing_case& c) {
  return "B" + std::to_string(c.B) + " N" + std::to_string(c.N) + " D" + std::to_string(c.D) + " Q" + std::to_string(c.Q) +
         " H" + std::to_string(c.H) + " L" + std::to_string(c.L) + " self " + std::to_string(c.self) + " last_relu " +
         std::to_string(c.last_relu) + " padded " + std::to_string(c.padded) + " biases " + std::to_string(c.biases) +
         " scale " + std::to_string(c.scale) + " mask " + to_string(c.mask);
}

/// A random problem: weights ~ N(0, 1/in) and biases ~ N(0.1, 0.1) keep activations O(1) and
/// pre-activations away from the ReLU kink (finite differences stay valid).
inline distill_ref::pairing_problem_d make_problem(distill_test::rng& g, const pairing_case& c) {
  distill_ref::pairing_problem_d p;
  p.B = c.B, p.N = c.N, p.D = c.D, p.Q = c.Q, p.H = c.H;
  p.self = c.self, p.last_relu = c.last_relu, p.scale = c.scale;
  p.o = g.normals(static_cast<std::size_t>(c.B * c.N * c.D));
  p.q = g.normals(static_cast<std::size_t>(c.B * c.Q));
  const std::size_t nm = static_cast<std::size_t>(c.B * c.N * c.N);
  switch (c.mask) {
    case mask_kind::absent: break;
    case mask_kind::ones: p.M.assign(nm, 1.0); break;
    case mask_kind::zeros: p.M.assign(nm, 0.0); break;
    case mask_kind::sparse:
      p.M.resize(nm);
      for (auto& m : p.M) m = g.coin(0.3) ? 1.0 : 0.0;
      break;
    case mask_kind::tenth:
      p.M.resize(nm);
      for (auto& m : p.M) m = g.coin(0.1) ? 1.0 : 0.0;
      break;
    case mask_kind::soft:
      p.M.resize(nm);
      for (auto& m : p.M) m = g.coin(0.2) ? 0.0 : g.uniform(0.1, 0.9);
      break;
  }
  if (c.padded) {
    p.om.assign(static_cast<std::size_t>(c.B * c.N), 1);
    for (long b = 0; b < c.B; ++b)  // the last object of every sample, and a random other one
      for (long i = 0; i < c.N; ++i)
        if (c.N > 1 && (i == c.N - 1 || g.coin(0.2))) p.om[static_cast<std::size_t>(b * c.N + i)] = 0;
  }
  p.g.L = c.L;
  for (int l = 0; l < c.L; ++l) {
    const long in = l == 0 ? 2 * c.D + c.Q : c.H;
    p.g.W.push_back(g.normals(static_cast<std::size_t>(in * c.H), 0.0, 1.0 / std::sqrt(static_cast<double>(in))));
    p.g.b.push_back(c.biases ? g.normals(static_cast<std::size_t>(c.H), 0.1, 0.1) : std::vector<double>{});
  }
  return p;
}

/// Largest finite |x| of a vector (scale for absolute tolerances; -inf scores of invalid pairs
/// must not make a tolerance infinite).
inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v)
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

/// Tolerances of this family. Pairing sums N^2 pair outputs of an L-layer MLP, so errors are
/// relative to the size of the summands rather than to each (possibly cancelling) result:
/// atol scales with the largest reference value.
inline distill_test::tolerance scaled(const std::vector<double>& ref, double rel) {
  return {rel * std::max(1.0, max_abs(ref)), rel};
}
inline constexpr double rel_f64 = 1e-11;   // double library vs double reference
inline constexpr double rel_f32 = 3e-5;    // float library (float accumulation over K <= 2D+Q, H)
inline constexpr double rel_tf32 = 4e-3;   // CUDA TF32 tensor cores (10-bit mantissa products)
inline constexpr double rel_bf16 = 3e-2;   // CUDA bf16 tensor cores (weights and activations rounded to bf16)

/// A dy with entries ~ N(0, 1).
inline std::vector<double> make_dy(distill_test::rng& g, const pairing_case& c) {
  return g.normals(static_cast<std::size_t>(c.B * c.H));
}

}  // namespace rel_test
