// SPDX-License-Identifier: MIT
#pragma once
// A random top-k teacher as a user would store one: the k most likely classes of a full softmax
// at temperature T and their log-probabilities (the rest of the mass is the rest bucket), one
// slot of row 1 unused (index -1, value -inf). The same on every rank for the same salt.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "distill/core/config.hpp"
#include "support/random.hpp"

namespace topk_teacher_data {

struct teacher {
  std::vector<std::int64_t> indices;  // (N, k)
  std::vector<float> values;          // (N, k)
};

inline teacher random_teacher(distill::index_t N, distill::index_t C, distill::index_t k, double T, std::uint64_t salt) {
  distill_test::rng g(salt);
  teacher t;
  for (distill::index_t r = 0; r < N; ++r) {
    const std::vector<double> z = g.normals(std::size_t(C), 0.0, 3.0);
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (const double v : z) m = std::max(m, v / T);
    for (const double v : z) s += std::exp(v / T - m);
    std::vector<std::int64_t> order(static_cast<std::size_t>(C));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), g.engine());  // slots not sorted by class
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return z[std::size_t(a)] > z[std::size_t(b)]; });
    for (distill::index_t j = 0; j < k; ++j) {
      const bool unused = r == 1 && j == k - 1;
      const std::int64_t c = order[std::size_t(j)];
      t.indices.push_back(unused ? -1 : c);
      t.values.push_back(unused ? -std::numeric_limits<float>::infinity() : float(z[std::size_t(c)] / T - m - std::log(s)));
    }
  }
  return t;
}

/// A fresh folder under the system's temporary one, unique to this run (`id`: the pid of the
/// process, or of rank 0), removed by the caller.
inline std::filesystem::path temp_folder(const std::string& tag, long long id) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("distill_" + tag + "_" + std::to_string(distill_test::test_seed()) + "_" + std::to_string(id));
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace topk_teacher_data
