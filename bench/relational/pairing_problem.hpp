// SPDX-License-Identifier: MIT
#pragma once
// Random inputs of a relational-pairing benchmark, the same on the CPU and on CUDA: objects and
// questions ~ N(0, 1), parameters ~ N(0, 0.06^2), and a pair mask that keeps a fraction `keep` of
// the pairs (all of them at keep >= 1), with the count of the pairs it keeps.
#include <random>
#include <vector>

#include "distill/relational/pairing.hpp"

namespace distill_bench {

struct pairing_problem {
  std::vector<float> objects, questions, params, mask;
  long computed = 0;

  pairing_problem(long B, long N, long D, long Q, long H, int L, double keep, unsigned seed)
      : objects(static_cast<std::size_t>(B * N * D)), questions(static_cast<std::size_t>(B * Q)),
        params(static_cast<std::size_t>(distill::relational_mlp_parameter_count(D, Q, H, L))), mask(static_cast<std::size_t>(B * N * N)) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<float> ud(0.0f, 1.0f);
    for (auto& x : objects) x = nd(gen);
    for (auto& x : questions) x = nd(gen);
    for (auto& x : params) x = nd(gen) * 0.06f;
    for (auto& m : mask) {
      m = keep >= 1.0 ? 1.0f : (ud(gen) < keep ? 1.0f : 0.0f);
      computed += m != 0.0f;
    }
  }
};

}  // namespace distill_bench
