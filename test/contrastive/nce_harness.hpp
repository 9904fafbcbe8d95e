// SPDX-License-Identifier: MIT
#pragma once
// Runs the token-wise InfoNCE of a case (nce_cases.hpp) on either backend (support/backend.hpp)
// and compares it with the double reference. Everything lives in the space's memory between
// canary bands: the queue's storage (enqueued batch by batch from the case's history, through
// sample_queue_enqueue, so it comes partially filled or wrapped), the tokens and gradients with
// the case's row padding (canaries in it), mask, ids, losses and the workspace (0xff-filled).
// Gradients start from canaries (each one must be overwritten) or, with accumulate, from known
// values that are subtracted again; a gradient a pass does not compute must stay as it was.
//   const auto r = run_library<T, TQ, Space>(k, {.precision = p});
//   check_against_reference(k, r, expected_accuracy<T, TQ, Space>(p, k.cfg.tau));
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "contrastive/nce_cases.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "reference/contrastive_ref.hpp"
#include "support/backend.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace nce_test {

enum class pass { forward_backward, forward, backward };

struct run_options {
  distill::matmul_precision precision = distill::matmul_precision::fp32;
  pass which = pass::forward_backward;
  bool provide_workspace = true;
  bool poison_unwritten_queue_rows = false;  // NaN in the queue slots no enqueue wrote (else 0)
};

struct nce_outputs {
  std::vector<double> loss, per_token;            // empty for the backward pass
  std::vector<double> grad_student, grad_teacher;  // empty where not computed; less the initial values with accumulate
  std::vector<double> queue_keys;                  // the queue's valid rows after the history, read back
  std::vector<std::int64_t> queue_ids;
  bool canaries_ok = true;  // bands, padding, and the outputs a pass must not write
  distill::status st;
};

/// The queue's storage in Space: K x D keys (and K ids) between canary bands.
template <class TQ, class Space>
struct queue_storage {
  distill_test::guarded_tensor<TQ, 2, Space> keys;
  distill_test::guarded_array<std::int64_t, Space> ids;
  distill::sample_queue<TQ, Space> queue;  // absent when K = 0
  queue_storage(const config& c, bool poison)
      : keys({c.K, c.K > 0 ? c.D : 0}), ids(static_cast<std::size_t>(c.queue_ids ? c.K : 0)) {
    if (c.K == 0) return;
    keys.fill(poison ? std::numeric_limits<double>::quiet_NaN() : 0.0);
    if (c.queue_ids) ids.put(std::vector<std::int64_t>(static_cast<std::size_t>(c.K), distill::no_sample_id));
    queue = distill::sample_queue<TQ, Space>(keys.view(), c.queue_ids ? ids.view() : distill::tensor_view<std::int64_t, 1, Space>{});
  }
};

/// Enqueue the case's history batch by batch, run one pass, read everything back.
template <class T, class TQ = T, class Space = distill::host_space>
nce_outputs run_library(const case_data& k, const run_options& ro = {}) {
  using namespace distill;
  using distill_test::guarded_array;
  using distill_test::guarded_tensor;
  constexpr bool on_host = std::is_same_v<Space, host_space>;
  const config& c = k.cfg;
  const index_t M = c.M, D = c.D;
  nce_outputs out;
  typename distill_test::backend<Space>::session run(c.threads);

  queue_storage<TQ, Space> qs(c, ro.poison_unwritten_queue_rows);
  auto& q = qs.queue;
  guarded_tensor<TQ, 2, Space> hist({std::max<index_t>(c.enqueued, 1), D});
  guarded_array<std::int64_t, Space> hist_ids(static_cast<std::size_t>(std::max<index_t>(c.enqueued, 1)));
  if (c.enqueued > 0) hist.set(k.history);
  if (!k.history_ids.empty()) hist_ids.put(k.history_ids);
  index_t at = 0;
  for (long n : k.batch_sizes) {
    const auto keys = make_view<Space>(static_cast<const TQ*>(hist.data() + at * D), n, D);
    tensor_view<const std::int64_t, 1, Space> ids;
    if (c.queue_ids) ids = make_view<Space>(static_cast<const std::int64_t*>(hist_ids.data() + at), n);
    REQUIRE(sample_queue_enqueue(run.ctx, q, keys, ids).ok());
    at += n;
  }
  run.sync();
  if (c.K > 0) {
    const auto keys = qs.keys.get();
    out.queue_keys.assign(keys.begin(), keys.begin() + q.size() * D);
    if (c.queue_ids)
      for (double id : qs.ids.get()) out.queue_ids.push_back(static_cast<std::int64_t>(id));
    out.queue_ids.resize(c.queue_ids ? static_cast<std::size_t>(q.size()) : 0);
  }

  const std::array<index_t, 2> pad{c.pad, 0};
  guarded_tensor<T, 2, Space> z({M, D}, pad), y({M, D}, pad), gs({M, D}, pad), gt({M, D}, pad);
  z.set(k.student);
  y.set(k.teacher);
  guarded_array<std::uint8_t, Space> mask(k.mask.empty() ? std::vector<std::uint8_t>(1) : k.mask);
  guarded_array<std::int64_t, Space> ids(k.ids.empty() ? std::vector<std::int64_t>(1) : k.ids);
  const index_t nloss = c.reduction == reduction::none ? M : 1;
  guarded_array<accum_t<T>, Space> loss(static_cast<std::size_t>(nloss)), per_token(static_cast<std::size_t>(M));
  std::vector<double> g0s, g0t;  // the gradients' values before the call, as T holds them
  if (c.accumulate) {
    distill_test::rng g(99);
    gs.set(g.normals<double>(static_cast<std::size_t>(M * D)));
    gt.set(g.normals<double>(static_cast<std::size_t>(M * D)));
  }
  g0s = gs.get();
  g0t = gt.get();

  auto opt = options_of(c);
  opt.precision = ro.precision;
  std::size_t ws_bytes = 0;
  if constexpr (on_host) ws_bytes = token_nce_queue_workspace_size<T>(run.ctx, M, D, c.K, opt);
  else ws_bytes = token_nce_queue_workspace_size(run.ctx, M, D, c.K, opt);
  distill_test::workspace<Space> ws(ws_bytes);
  const auto W = ro.provide_workspace ? ws.view() : tensor_view<std::byte, 1, Space>{};

  token_nce_inputs<T, T, Space> in{z.template view<const T>(), y.template view<const T>()};
  if (c.use_mask) in.token_mask = mask.template view<const std::uint8_t>();
  if (c.use_ids) in.token_ids = ids.template view<const std::int64_t>();
  const bool forward = ro.which != pass::backward, backward = ro.which != pass::forward;
  token_nce_outputs<T, T, Space> o;
  if (forward) o.loss = loss.view(), o.per_token_loss = per_token.view();
  if (backward) o.grad_student = gs.view();
  if (backward && c.teacher_grad) o.grad_teacher = gt.view();
  // Initialised, not assigned: nvcc warns that an assignment discards a [[nodiscard]] status&.
  const status st = ro.which == pass::forward    ? token_nce_queue_forward(run.ctx, in, q, o, W, opt)
                    : ro.which == pass::backward ? token_nce_queue_backward(run.ctx, in, q, o, W, opt)
                                                 : token_nce_queue_forward_backward(run.ctx, in, q, o, W, opt);
  out.st = st;
  run.sync();
  if (!st.ok()) return out;

  if (forward) {
    out.loss = loss.get();
    out.per_token = per_token.get();
  }
  const auto less_initial = [&](guarded_tensor<T, 2, Space>& grad, const std::vector<double>& g0) {
    auto v = grad.get();
    if (c.accumulate)
      for (std::size_t x = 0; x < v.size(); ++x) v[x] -= g0[x];
    return v;
  };
  if (backward) out.grad_student = less_initial(gs, g0s);
  if (!o.grad_teacher.empty()) out.grad_teacher = less_initial(gt, g0t);
  const bool unwritten_ok = (backward || gs.get() == g0s) && (!o.grad_teacher.empty() || gt.get() == g0t);
  out.canaries_ok = unwritten_ok && qs.keys.intact() && qs.ids.intact() && hist.intact() && hist_ids.intact() && z.intact() &&
                    y.intact() && gs.intact() && gt.intact() && mask.intact() && ids.intact() && loss.intact() &&
                    per_token.intact() && ws.intact();
  return out;
}

/// How closely a backend's result must match the double reference.
struct tolerances {
  double loss_abs, loss_rel, grad_rel;
  double store_rel = 0;  // 16-bit gradient storage rounds each element to 8 (bf16) or 11 (f16) bits
  double acc_abs = 0;    // accumulate: the gradient is recovered as (g0 + grad) - g0 with g0 ~ N(0, 1) in T
};

/// The CPU computes in T (float or double) whatever opt.precision says; the CUDA modes: strict
/// fp32, TF32 (10-bit mantissa products) and BF16 (products of bf16 numbers are exact in float,
/// only P is rounded; float inputs or queues are rounded to bf16 first, and every logit carries
/// that). tau scales every logit error by 1/tau.
template <class T, class TQ = T, class Space = distill::host_space>
tolerances expected_accuracy(distill::matmul_precision p, double tau) {
  using distill::matmul_precision;
  constexpr bool grads_16bit = sizeof(T) == 2;
  tolerances t{1, 1, 1};
  if constexpr (std::is_same_v<Space, distill::host_space>) {
    const double rel = std::is_same_v<T, double> ? double_rel : float_rel(tau);
    t = {rel, rel, rel};
    if constexpr (!grads_16bit) t.acc_abs = 8.0 * std::numeric_limits<T>::epsilon();
  } else {
    constexpr bool exact_in_bf16 = std::is_same_v<T, distill::bfloat16> && std::is_same_v<TQ, distill::bfloat16>;
    if (p == matmul_precision::fp32) t = {3 * float_rel(tau), 3 * float_rel(tau), 3 * float_rel(tau)};
    else if (p == matmul_precision::tf32) t = {4e-3 / tau, 4e-3, 8e-3 / tau};
    else t = exact_in_bf16 ? tolerances{2e-3 / tau, 2e-3, 2e-2} : tolerances{3e-2 / tau, 1e-2, 6e-2 / tau};
    t.acc_abs = 1e-6;
  }
  if constexpr (grads_16bit) t.store_rel = 8e-3, t.acc_abs = 0.05;
  return t;
}

/// The result against the double reference on the queue the loss saw.
inline void check_against_reference(const case_data& k, const nce_outputs& r, const tolerances& t) {
  const config& c = k.cfg;
  INFO(r.st.to_string());
  REQUIRE(r.st.ok());
  CHECK(r.canaries_ok);
  const auto ref = distill_ref::token_nce_ref(ref_input(k, r.queue_keys, r.queue_ids));
  const distill_test::tolerance loss_tol{t.loss_abs, t.loss_rel};
  if (!r.per_token.empty()) {
    CHECK_CLOSE("per-token loss", r.per_token, ref.per_token, loss_tol);
    if (c.reduction == distill::reduction::none) CHECK_CLOSE("loss (none)", r.loss, ref.per_token, loss_tol);
    else CHECK_CLOSE_SCALAR("loss", r.loss[0], ref.loss, loss_tol);
  }
  const double acc_abs = c.accumulate ? t.acc_abs : 0.0;
  if (!r.grad_student.empty()) {
    auto atol = row_atol(k, k.student, t.grad_rel);
    for (auto& a : atol) a += acc_abs;
    const auto cmp = compare_rows(r.grad_student, ref.grad_student, c.M, c.D, atol, t.grad_rel + t.store_rel);
    INFO("grad_student: " << cmp.message);
    CHECK(cmp.ok);
  }
  if (!r.grad_teacher.empty()) {
    // A teacher row also collects sum_i c_i pi_ib q_i from every token (pi_ib <= 1): bound it
    // by the batch's weight sum, (w + sum_i w_i) / w = 1 + valid tokens.
    auto atol = row_atol(k, k.teacher, t.grad_rel);
    if (c.in_batch)
      for (auto& a : atol) a *= 1.0 + static_cast<double>(c.M);
    for (auto& a : atol) a += acc_abs;
    const auto cmp = compare_rows(r.grad_teacher, ref.grad_teacher, c.M, c.D, atol, t.grad_rel + t.store_rel);
    INFO("grad_teacher: " << cmp.message);
    CHECK(cmp.ok);
  }
}

}  // namespace nce_test
