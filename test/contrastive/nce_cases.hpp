// SPDX-License-Identifier: MIT
#pragma once
// Random test cases of the token-wise InfoNCE shared by the CPU and CUDA tests: token batches,
// a queue history (batches enqueued one after another, so queues come partially filled or
// wrapped around), masks, ids and options, plus the reference input built from them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "distill/contrastive/token_nce.hpp"
#include "reference/contrastive_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace nce_test {

/// Tolerances of this family (in addition to support/compare.hpp's table): logits are
/// <q, k> / tau, so a float rounding error of the dot products grows by 1/tau; gradients are
/// compared with an absolute floor relative to their largest element (many are near zero).
inline double float_rel(double tau) { return std::max(1e-4, 4e-6 / tau); }
inline constexpr double double_rel = 1e-9;

/// `floor` covers all-zero gradients (D = 1: every gradient is orthogonal to its token).
inline distill_test::tolerance scaled(const std::vector<double>& expected, double rel, double floor = 1e-30) {
  double mx = 0;
  for (double e : expected)
    if (std::isfinite(e)) mx = std::max(mx, std::fabs(e));
  return {rel * std::max(mx, floor), rel};
}

/// Round every element through storage type T (so the reference sees exactly what the path sees).
template <class T>
void round_through(std::vector<double>& x) {
  for (auto& v : x) v = static_cast<double>(distill::load<double>(distill::store<T>(v)));
}

struct config {
  long M = 1, D = 1, K = 1;     // tokens, dimension, queue capacity
  long enqueued = 0;            // rows enqueued so far, in `batches` batches
  int batches = 1;
  bool queue_ids = false, in_batch = false, use_mask = false, use_ids = false, teacher_grad = false, accumulate = false;
  distill::reduction reduction = distill::reduction::mean;
  double tau = 0.07, grad_scale = 1;
  float normalize_eps = 1e-12f;
  int threads = 1;
  long pad = 0;  // row padding of student/teacher/gradients
  long id_range = 4;
};

struct case_data {
  config cfg;
  std::vector<double> student, teacher;          // M x D (rounded through the storage type)
  std::vector<double> history;                   // enqueued rows, enqueued x D
  std::vector<std::int64_t> history_ids;         // enqueued (when queue_ids)
  std::vector<long> batch_sizes;                 // how `history` is split into enqueue calls
  std::vector<std::uint8_t> mask;                // M (when use_mask)
  std::vector<std::int64_t> ids;                 // M (when use_ids)
};

/// Random configuration; `max_m`, `max_d`, `max_k` bound the sizes.
inline config random_config(distill_test::rng& g, long max_m, long max_d, long max_k) {
  config c;
  c.M = g.integer(1, max_m);
  c.D = g.integer(1, max_d);
  c.K = g.integer(1, max_k);
  c.in_batch = g.coin(0.4);
  // 0 (empty; needs in-batch), partial, exactly full, or wrapped several times
  const int fill = static_cast<int>(g.integer(0, 3));
  c.enqueued = fill == 0 ? 0 : fill == 1 ? g.integer(1, c.K) : fill == 2 ? c.K : g.integer(c.K + 1, 3 * c.K + 5);
  if (c.enqueued == 0) c.in_batch = true;
  c.batches = static_cast<int>(g.integer(1, 4));
  c.queue_ids = g.coin(0.5);
  c.use_mask = g.coin(0.4);
  c.use_ids = g.coin(0.5);
  c.teacher_grad = g.coin(0.5);
  c.accumulate = g.coin(0.25);
  c.reduction = static_cast<distill::reduction>(g.integer(0, 3));
  // tau and grad_scale travel as float options: keep them float-representable
  c.tau = static_cast<float>(g.coin(0.2) ? g.uniform(0.01, 0.05) : g.uniform(0.05, 1.0));
  c.grad_scale = g.coin(0.5) ? 1.0 : static_cast<float>(g.uniform(-2, 2));
  c.threads = static_cast<int>(g.integer(1, 3));
  c.pad = g.coin(0.5) ? 0 : g.integer(1, 5);
  c.id_range = g.integer(1, 6);
  return c;
}

/// Data for a configuration, rounded through storage type T.
template <class T>
case_data make_case(distill_test::rng& g, const config& c) {
  case_data k;
  k.cfg = c;
  const auto md = static_cast<std::size_t>(c.M * c.D);
  k.student = g.normals<double>(md);
  k.teacher = g.normals<double>(md);
  // Make the positives informative: the teacher leans towards the student.
  for (std::size_t x = 0; x < md; ++x) k.teacher[x] = 0.6 * k.student[x] + 0.8 * k.teacher[x];
  round_through<T>(k.student);
  round_through<T>(k.teacher);
  k.history = g.normals<double>(static_cast<std::size_t>(c.enqueued * c.D));
  round_through<T>(k.history);
  if (c.queue_ids)
    for (long r = 0; r < c.enqueued; ++r) k.history_ids.push_back(g.integer(0, c.id_range - 1));
  long left = c.enqueued;
  for (int b = 0; b < c.batches && left > 0; ++b) {
    const long n = b + 1 == c.batches ? left : g.integer(0, left);
    k.batch_sizes.push_back(n);
    left -= n;
  }
  if (left > 0) k.batch_sizes.push_back(left);
  if (c.use_mask) {
    k.mask.resize(static_cast<std::size_t>(c.M));
    for (auto& m : k.mask) m = g.coin(0.75) ? 1 : 0;
    k.mask[static_cast<std::size_t>(g.integer(0, c.M - 1))] = 1;  // at least one real token
  }
  if (c.use_ids)
    for (long i = 0; i < c.M; ++i) k.ids.push_back(g.coin(0.2) ? distill::no_sample_id : g.integer(0, c.id_range - 1));
  return k;
}

/// The reference input for a case whose queue, after the history was enqueued, holds
/// `queue_keys` (n x D, read back from the queue under test) and `queue_ids`.
inline distill_ref::token_nce_ref_input ref_input(const case_data& k, const std::vector<double>& queue_keys,
                                                  const std::vector<std::int64_t>& queue_ids) {
  distill_ref::token_nce_ref_input in;
  in.M = k.cfg.M;
  in.D = k.cfg.D;
  in.student = k.student;
  in.teacher = k.teacher;
  in.queue = queue_keys;
  in.queue_ids = queue_ids;
  in.mask = k.mask;
  in.ids = k.ids;
  in.tau = static_cast<float>(k.cfg.tau);  // what the float option carries
  in.grad_scale = static_cast<float>(k.cfg.grad_scale);
  in.eps = k.cfg.normalize_eps;
  in.reduction = k.cfg.reduction;
  in.in_batch = k.cfg.in_batch;
  return in;
}

/// Gradient tolerance per token row: float rounding of g_q (|g_q| <= 2 c_i, c_i = |g| w_i / tau)
/// survives B2's projection, whose cancellation can leave a row's gradient far smaller than
/// g_q; the absolute error is then about eps * |g_q| / max(||token||, normalize_eps), not
/// eps * |gradient|.
inline std::vector<double> row_atol(const case_data& k, const std::vector<double>& tokens, double rel) {
  const config& c = k.cfg;
  long valid = 0;
  for (long i = 0; i < c.M; ++i) valid += (k.mask.empty() || k.mask[static_cast<std::size_t>(i)]) ? 1 : 0;
  const double w = c.reduction == distill::reduction::mean ? 1.0 / static_cast<double>(std::max(valid, 1L))
                   : c.reduction == distill::reduction::batchmean ? 1.0 / static_cast<double>(c.M)
                                                            : 1.0;
  std::vector<double> atol(static_cast<std::size_t>(c.M));
  for (long i = 0; i < c.M; ++i) {
    double ss = 0;
    for (long d = 0; d < c.D; ++d) ss += tokens[static_cast<std::size_t>(i * c.D + d)] * tokens[static_cast<std::size_t>(i * c.D + d)];
    atol[static_cast<std::size_t>(i)] = rel * 4.0 * std::fabs(c.grad_scale) * w / c.tau / std::max(std::sqrt(ss), static_cast<double>(c.normalize_eps));
  }
  return atol;
}

/// Compare an [M, D] gradient with per-row absolute tolerances and a relative tolerance.
inline distill_test::compare_result compare_rows(const std::vector<double>& actual, const std::vector<double>& expected, long M, long D,
                                                 const std::vector<double>& atol, double rel) {
  distill_test::compare_result r;
  if (actual.size() != expected.size()) return {false, "size mismatch"};
  long bad = 0, worst = -1;
  double worst_excess = -1;
  for (long i = 0; i < M; ++i)
    for (long d = 0; d < D; ++d) {
      const auto x = static_cast<std::size_t>(i * D + d);
      const double lim = atol[static_cast<std::size_t>(i)] + rel * std::fabs(expected[x]);
      const double diff = std::fabs(actual[x] - expected[x]);
      if (std::isnan(actual[x]) && std::isnan(expected[x])) continue;
      if (!(diff <= lim)) {
        ++bad;
        const double ex = std::isnan(diff) ? 1e300 : diff - lim;
        if (ex > worst_excess) worst_excess = ex, worst = static_cast<long>(x);
      }
    }
  if (bad) {
    r.ok = false;
    r.message = std::to_string(bad) + " elements differ; worst at " + std::to_string(worst) + ": " +
                std::to_string(actual[static_cast<std::size_t>(worst)]) + " vs " + std::to_string(expected[static_cast<std::size_t>(worst)]) +
                " (row atol " + std::to_string(atol[static_cast<std::size_t>(worst / D)]) + ")";
  }
  return r;
}

inline distill::token_nce_options options_of(const config& c) {
  distill::token_nce_options o;
  o.temperature = static_cast<float>(c.tau);
  o.reduction = c.reduction;
  o.in_batch_negatives = c.in_batch;
  o.grad_scale = static_cast<float>(c.grad_scale);
  o.accumulate = c.accumulate;
  o.normalize_eps = c.normalize_eps;
  return o;
}

/// A host workspace of token_nce_queue_workspace_size bytes for M x D tokens against `queue`.
template <class T>
struct workspace_for {
  std::vector<std::byte> bytes;
  template <class Q>
  workspace_for(const distill::cpu& ctx, long M, long D, const Q& queue, const distill::token_nce_options& opt = {})
      : bytes(distill::token_nce_queue_workspace_size<T>(ctx, M, D, queue.capacity(), opt)) {}
  distill::host_view<std::byte, 1> view() { return distill::make_view(bytes.data(), static_cast<distill::index_t>(bytes.size())); }
};

}  // namespace nce_test
