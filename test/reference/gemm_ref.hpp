// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision matrix product, the reference for distill::gemm.
#include <vector>

namespace distill_ref {

/// C (M x N) = op(A) op(B), row-major inputs with leading dimensions, in double.
inline std::vector<double> matmul(bool ta, bool tb, long M, long N, long K, const std::vector<double>& a, long lda,
                                  const std::vector<double>& b, long ldb) {
  std::vector<double> c(static_cast<std::size_t>(M * N), 0.0);
  for (long i = 0; i < M; ++i)
    for (long j = 0; j < N; ++j) {
      double s = 0;
      for (long k = 0; k < K; ++k) {
        const double x = ta ? a[static_cast<std::size_t>(k * lda + i)] : a[static_cast<std::size_t>(i * lda + k)];
        const double y = tb ? b[static_cast<std::size_t>(j * ldb + k)] : b[static_cast<std::size_t>(k * ldb + j)];
        s += x * y;
      }
      c[static_cast<std::size_t>(i * N + j)] = s;
    }
  return c;
}

}  // namespace distill_ref
