// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references of the contrastive family, written for clarity:
//   ref_queue           a FIFO ring buffer that enqueues one row at a time
//   token_nce_ref       token-wise InfoNCE (B4 per token, B2 normalisation) that materialises
//                       every token's full logit vector [positive, queue..., in-batch...]
//   token_nce_ref_loss  the reduced loss alone (what finite differences differentiate)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/core/reduction.hpp"

namespace distill_ref {

inline constexpr std::int64_t ref_no_id = -1;

/// FIFO ring buffer of K keys, written one row at a time (the definition of the queue).
struct ref_queue {
  long K = 0, D = 0;
  std::vector<double> keys;         // K x D
  std::vector<std::int64_t> ids;    // K (ref_no_id when absent)
  long pos = 0, filled = 0;

  ref_queue(long k, long d) : K(k), D(d), keys(static_cast<std::size_t>(k * d), 0.0), ids(static_cast<std::size_t>(k), ref_no_id) {}

  void enqueue_row(const double* row, std::int64_t id, bool normalize, double eps) {
    double scale = 1;
    if (normalize) {
      double ss = 0;
      for (long d = 0; d < D; ++d) ss += row[d] * row[d];
      scale = 1.0 / std::max(std::sqrt(ss), eps);
    }
    for (long d = 0; d < D; ++d) keys[static_cast<std::size_t>(pos * D + d)] = row[d] * scale;
    ids[static_cast<std::size_t>(pos)] = id;
    pos = (pos + 1) % K;
    filled = std::min(filled + 1, K);
  }
  /// rows: B x D; ids_in: B or empty.
  void enqueue(const std::vector<double>& rows, const std::vector<std::int64_t>& ids_in, bool normalize, double eps) {
    const long B = static_cast<long>(rows.size()) / D;
    for (long r = 0; r < B; ++r)
      enqueue_row(rows.data() + r * D, ids_in.empty() ? ref_no_id : ids_in[static_cast<std::size_t>(r)], normalize, eps);
  }
};

struct token_nce_ref_input {
  long M = 0, D = 0;
  std::vector<double> student, teacher;   // M x D
  std::vector<double> queue;              // n x D: the valid queue keys (slots 0..n-1)
  std::vector<std::int64_t> queue_ids;    // n, or empty (no ids)
  std::vector<std::uint8_t> mask;         // M, or empty (all tokens real)
  std::vector<std::int64_t> ids;          // M, or empty
  double tau = 0.07, eps = 1e-12, grad_scale = 1;
  distill::reduction reduction = distill::reduction::mean;
  bool in_batch = false;
};

struct token_nce_ref_output {
  std::vector<double> per_token;     // M (0 for masked tokens)
  double loss = 0;                   // the reduced loss (sum of per_token for reduction none)
  std::vector<double> grad_student;  // M x D: grad_scale * d(sum_i w_i l_i)/dz
  std::vector<double> grad_teacher;  // M x D
};

namespace detail {
inline bool is_valid(const token_nce_ref_input& in, long i) { return in.mask.empty() || in.mask[static_cast<std::size_t>(i)] != 0; }
inline std::int64_t id_of(const token_nce_ref_input& in, long i) { return in.ids.empty() ? ref_no_id : in.ids[static_cast<std::size_t>(i)]; }
inline std::vector<double> normalized(const std::vector<double>& x, long M, long D, double eps, std::vector<double>& norms) {
  std::vector<double> u(x.size());
  norms.assign(static_cast<std::size_t>(M), 0.0);
  for (long i = 0; i < M; ++i) {
    double ss = 0;
    for (long d = 0; d < D; ++d) ss += x[static_cast<std::size_t>(i * D + d)] * x[static_cast<std::size_t>(i * D + d)];
    norms[static_cast<std::size_t>(i)] = std::sqrt(ss);
    const double n = std::max(std::sqrt(ss), eps);
    for (long d = 0; d < D; ++d) u[static_cast<std::size_t>(i * D + d)] = x[static_cast<std::size_t>(i * D + d)] / n;
  }
  return u;
}
inline double dot(const double* a, const double* b, long D) {
  double s = 0;
  for (long d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}
inline double weight(const token_nce_ref_input& in, long i) {
  if (!is_valid(in, i)) return 0;
  long valid = 0;
  for (long r = 0; r < in.M; ++r) valid += is_valid(in, r) ? 1 : 0;
  switch (in.reduction) {
    case distill::reduction::mean: return 1.0 / static_cast<double>(valid);
    case distill::reduction::batchmean: return 1.0 / static_cast<double>(in.M);
    default: return 1.0;
  }
}
}  // namespace detail

/// Loss, per-token losses and both gradients, materialising every logit.
inline token_nce_ref_output token_nce_ref(const token_nce_ref_input& in) {
  using namespace detail;
  const long M = in.M, D = in.D;
  const long n = in.D > 0 ? static_cast<long>(in.queue.size()) / D : 0;
  std::vector<double> zn, yn;
  const auto q = normalized(in.student, M, D, in.eps, zn);
  const auto k = normalized(in.teacher, M, D, in.eps, yn);
  token_nce_ref_output out;
  out.per_token.assign(static_cast<std::size_t>(M), 0.0);
  std::vector<double> gq(static_cast<std::size_t>(M * D), 0.0), gk(static_cast<std::size_t>(M * D), 0.0);
  for (long i = 0; i < M; ++i) {
    if (!is_valid(in, i)) continue;
    const double* qi = q.data() + i * D;
    // The full logit vector: [0] positive, then queue keys, then in-batch keys.
    std::vector<double> logits;
    std::vector<const double*> keys;
    std::vector<long> inbatch_of;  // teacher token index for in-batch entries, -1 otherwise
    logits.push_back(dot(qi, k.data() + i * D, D) / in.tau);
    keys.push_back(k.data() + i * D);
    inbatch_of.push_back(-1);
    for (long j = 0; j < n; ++j) {
      const std::int64_t qid = in.queue_ids.empty() ? ref_no_id : in.queue_ids[static_cast<std::size_t>(j)];
      if (id_of(in, i) != ref_no_id && qid == id_of(in, i)) continue;
      logits.push_back(dot(qi, in.queue.data() + j * D, D) / in.tau);
      keys.push_back(in.queue.data() + j * D);
      inbatch_of.push_back(-1);
    }
    if (in.in_batch)
      for (long b = 0; b < M; ++b) {
        if (b == i || !is_valid(in, b)) continue;
        if (id_of(in, i) != ref_no_id && id_of(in, b) == id_of(in, i)) continue;
        logits.push_back(dot(qi, k.data() + b * D, D) / in.tau);
        keys.push_back(k.data() + b * D);
        inbatch_of.push_back(b);
      }
    double mx = -std::numeric_limits<double>::infinity();
    for (double s : logits) mx = std::max(mx, s);
    double sum = 0;
    for (double s : logits) sum += std::exp(s - mx);
    const double lse = mx + std::log(sum);
    out.per_token[static_cast<std::size_t>(i)] = lse - logits[0];
    const double c = in.grad_scale * weight(in, i) / in.tau;
    for (std::size_t j = 0; j < logits.size(); ++j) {
      const double pi = std::exp(logits[j] - lse) - (j == 0 ? 1.0 : 0.0);  // softmax - onehot(0)
      for (long d = 0; d < D; ++d) gq[static_cast<std::size_t>(i * D + d)] += c * pi * keys[j][d];
      const long b = j == 0 ? i : inbatch_of[j];
      if (b >= 0)
        for (long d = 0; d < D; ++d) gk[static_cast<std::size_t>(b * D + d)] += c * pi * qi[d];
    }
  }
  for (long i = 0; i < M; ++i) out.loss += weight(in, i) * out.per_token[static_cast<std::size_t>(i)];
  // B2 backward: dx = (g - [||x|| > eps] u <u, g>) / max(||x||, eps).
  const auto b2 = [&](const std::vector<double>& g, const std::vector<double>& u, const std::vector<double>& norms) {
    std::vector<double> dx(g.size());
    for (long i = 0; i < M; ++i) {
      const double nrm = norms[static_cast<std::size_t>(i)];
      const double ug = dot(u.data() + i * D, g.data() + i * D, D);
      for (long d = 0; d < D; ++d) {
        const std::size_t x = static_cast<std::size_t>(i * D + d);
        dx[x] = (nrm > in.eps ? g[x] - u[x] * ug : g[x]) / std::max(nrm, in.eps);
      }
    }
    return dx;
  };
  out.grad_student = b2(gq, q, zn);
  out.grad_teacher = b2(gk, k, yn);
  return out;
}

/// The reduced loss only (for finite differences of the reference's gradients).
inline double token_nce_ref_loss(const token_nce_ref_input& in) { return token_nce_ref(in).loss; }

}  // namespace distill_ref
