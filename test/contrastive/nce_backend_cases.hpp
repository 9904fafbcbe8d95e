// SPDX-License-Identifier: MIT
#pragma once
// Token-wise InfoNCE cases written once for every backend (support/backend.hpp); the including
// file defines `test_space` first (test_contrastive_backends.cpp: host_space;
// test_contrastive_cuda.cu: cuda_space). The harness (nce_harness.hpp) and the double reference
// are the same on both; what differs is what a backend offers: the CPU computes float and double
// in their own precision, CUDA takes float, bfloat16 and half tokens in its three matmul modes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "contrastive/nce_harness.hpp"
#include "reference/contrastive_ref.hpp"
#include "support/compare.hpp"

namespace nce_cases {

using distill::matmul_precision;
inline constexpr bool on_host = std::is_same_v<test_space, distill::host_space>;
using token_types = std::conditional_t<on_host, std::tuple<float, double>, std::tuple<float, distill::bfloat16, distill::float16>>;
/// The float-token type of each backend's cases that need more than float on the CPU.
using wide = std::conditional_t<on_host, double, float>;

/// The matmul modes a backend runs for tokens of type T (the CPU has one: T's own precision).
template <class T>
std::vector<matmul_precision> precisions() {
  if constexpr (on_host) return {matmul_precision::fp32};
  else if constexpr (sizeof(T) == 2) return {matmul_precision::fp32, matmul_precision::bf16};
  else return {matmul_precision::fp32, matmul_precision::tf32, matmul_precision::bf16};
}

template <class T>
void check(const nce_test::case_data& k, const nce_test::nce_outputs& r, matmul_precision p = matmul_precision::fp32) {
  nce_test::check_against_reference(k, r, nce_test::expected_accuracy<T, T, test_space>(p, k.cfg.tau));
}

}  // namespace nce_cases

TEMPLATE_LIST_TEST_CASE("token_nce matches the double reference on random cases, on every backend", "[contrastive][token_nce][backend]",
                        nce_cases::token_types) {
  using namespace nce_test;
  using T = TestType;
  constexpr bool narrow = sizeof(T) == 2;
  const std::string backend = distill_test::backend<test_space>::name;
  distill_test::rng g(std::is_same_v<T, float> ? 402 : std::is_same_v<T, double> ? 403 : 605);
  const int trials = nce_cases::on_host ? 36 : narrow ? 8 : 16;
  for (distill::matmul_precision p : nce_cases::precisions<T>()) {
    for (int trial = 0; trial < trials; ++trial) {
      // Every fourth case is large enough for several CPU row blocks / key tiles per thread; D
      // around the CUDA 256-column chunk and the mma k-steps, K around the 64-key tile.
      const bool big = trial % 4 == 3;
      config c = narrow ? random_config(g, 90, 300, 200) : big ? random_config(g, 300, 40, 1300) : random_config(g, 70, 40, 300);
      if (!narrow && trial % 5 == 1) c.D = 256;
      if (!narrow && trial % 5 == 2) c.D = g.integer(257, 560);
      if (narrow) c.pad = (trial % 2) * 8;  // 16-bit rows stay 16-byte aligned: the cp.async path
      if (narrow || p != distill::matmul_precision::fp32) c.tau = std::max(c.tau, 0.1);
      const auto k = make_case<T>(g, c);
      CAPTURE(backend, distill::to_string(p), trial, c.M, c.D, c.K, c.enqueued, c.batches, c.in_batch, c.use_mask, c.use_ids,
              c.queue_ids, c.teacher_grad, c.accumulate, static_cast<int>(c.reduction), c.tau, c.grad_scale, c.threads, c.pad);
      const auto r = run_library<T, T, test_space>(k, {.precision = p});
      nce_cases::check<T>(k, r, p);
      // The queue the loss saw is the one the reference ring buffer holds.
      distill_ref::ref_queue rq(c.K, c.D);
      rq.enqueue(k.history, k.history_ids, true, 1e-12);
      REQUIRE(static_cast<long>(r.queue_keys.size()) == rq.filled * c.D);
      const std::vector<double> ref_keys(rq.keys.begin(), rq.keys.begin() + rq.filled * c.D);
      const double tol = std::is_same_v<T, double> ? 1e-14 : narrow ? 8e-3 : 1e-6;
      CHECK_CLOSE("queue keys", r.queue_keys, ref_keys, (distill_test::tolerance{tol, 1e-6}));
      if (c.queue_ids) CHECK(r.queue_ids == std::vector<std::int64_t>(rq.ids.begin(), rq.ids.begin() + rq.filled));
    }
  }
}

TEST_CASE("token_nce: forward, backward and the fused pass agree, calls repeat bitwise, the workspace is required; on every backend",
          "[contrastive][token_nce][backend]") {
  using namespace nce_test;
  distill_test::rng g(405);
  for (int trial = 0; trial < 6; ++trial) {
    config c = random_config(g, 50, 16, 200);
    c.accumulate = false;
    const auto k = make_case<float>(g, c);
    CAPTURE(trial, c.M, c.D, c.K, c.enqueued, c.in_batch, c.teacher_grad);
    const auto fused = run_library<float, float, test_space>(k);
    const auto again = run_library<float, float, test_space>(k);
    const auto fwd = run_library<float, float, test_space>(k, {.which = pass::forward});
    const auto bwd = run_library<float, float, test_space>(k, {.which = pass::backward});
    const auto no_ws = run_library<float, float, test_space>(k, {.provide_workspace = false});
    nce_cases::check<float>(k, fused);
    REQUIRE(fwd.st.ok());
    REQUIRE(bwd.st.ok());
    CHECK(fwd.canaries_ok);
    CHECK(bwd.canaries_ok);
    CHECK(no_ws.st.code() == distill::errc::invalid_argument);  // the workspace is the caller's on both backends
    CHECK(again.loss == fused.loss);
    CHECK(again.grad_student == fused.grad_student);
    CHECK(again.grad_teacher == fused.grad_teacher);
    // The backward pass gives the fused pass's numbers (same code, same plan). The CPU forward
    // pass does too; the CUDA one runs one block per (tokens, key split) instead of one per
    // 256 columns, so its key splits (and their merge order) may differ.
    const distill_test::tolerance fwd_tol = nce_cases::on_host ? distill_test::tolerance{0, 0} : distill_test::tolerance{1e-6, 1e-6};
    CHECK_CLOSE("forward-only loss", fwd.loss, fused.loss, fwd_tol);
    CHECK_CLOSE("forward-only per-token loss", fwd.per_token, fused.per_token, fwd_tol);
    CHECK(bwd.grad_student == fused.grad_student);
    CHECK(bwd.grad_teacher == fused.grad_teacher);
  }
}

TEST_CASE("token_nce: NaN inputs propagate as documented, on every backend", "[contrastive][token_nce][backend]") {
  using namespace nce_test;
  distill_test::rng g(408);
  // D over one 32-column step, K over one key tile
  config c{.M = 9, .D = 33, .K = 600, .enqueued = 600, .reduction = distill::reduction::none};
  auto k = make_case<float>(g, c);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto nan_tokens = [](const nce_outputs& r) {
    REQUIRE(r.st.ok());
    std::vector<bool> v;
    for (double l : r.per_token) v.push_back(std::isnan(l));
    return v;
  };
  const auto only = [&](long i) {
    std::vector<bool> v(static_cast<std::size_t>(c.M), false);
    if (i >= 0) v[static_cast<std::size_t>(i)] = true;
    else v.assign(v.size(), true);
    return v;
  };
  SECTION("NaN in one student token: that token's loss only") {
    k.student[static_cast<std::size_t>(2 * c.D + 3)] = nan;
    CHECK(nan_tokens(run_library<float, float, test_space>(k)) == only(2));
  }
  SECTION("NaN in one teacher token without in-batch negatives: that token only") {
    k.teacher[static_cast<std::size_t>(4 * c.D)] = nan;
    CHECK(nan_tokens(run_library<float, float, test_space>(k)) == only(4));
  }
  SECTION("NaN in one teacher token with in-batch negatives: every token") {
    k.cfg.in_batch = true;
    k.teacher[static_cast<std::size_t>(4 * c.D)] = nan;
    CHECK(nan_tokens(run_library<float, float, test_space>(k)) == only(-1));
  }
  SECTION("NaN in one queue row: every token, in every mode but bf16") {
    k.history[static_cast<std::size_t>(555 * c.D + 1)] = nan;
    for (auto p : nce_cases::precisions<float>()) {
      if (p == distill::matmul_precision::bf16) continue;
      CAPTURE(distill::to_string(p));
      CHECK(nan_tokens(run_library<float, float, test_space>(k, {.precision = p})) == only(-1));
    }
  }
}

TEST_CASE("token_nce: masked tokens get zero loss and zero gradient, on every backend", "[contrastive][token_nce][backend]") {
  using namespace nce_test;
  distill_test::rng g(409);
  config c{.M = 12, .D = 6, .K = 30, .enqueued = 30, .in_batch = true, .use_mask = true, .teacher_grad = true};
  auto k = make_case<float>(g, c);
  k.mask = {1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1};
  const auto r = run_library<float, float, test_space>(k);
  nce_cases::check<float>(k, r);
  for (long i = 0; i < c.M; ++i) {
    if (k.mask[static_cast<std::size_t>(i)]) continue;
    CHECK(r.per_token[static_cast<std::size_t>(i)] == 0.0);
    for (long d = 0; d < c.D; ++d) {
      CHECK(r.grad_student[static_cast<std::size_t>(i * c.D + d)] == 0.0);
      CHECK(r.grad_teacher[static_cast<std::size_t>(i * c.D + d)] == 0.0);
    }
  }
}

TEST_CASE("token_nce: edge cases, on every backend", "[contrastive][token_nce][backend]") {
  using namespace nce_test;
  using W = nce_cases::wide;
  distill_test::rng g(407);
  SECTION("one token, in-batch only, an empty queue: only the positive, loss 0 and zero gradient") {
    config c{.M = 1, .D = 5, .K = 3, .enqueued = 0, .in_batch = true, .teacher_grad = true};
    const auto k = make_case<W>(g, c);
    const auto r = run_library<W, W, test_space>(k);
    REQUIRE(r.st.ok());
    CHECK(r.canaries_ok);
    CHECK(r.loss[0] == 0.0);
    for (double v : r.grad_student) CHECK(v == 0.0);
    for (double v : r.grad_teacher) CHECK(v == 0.0);
  }
  SECTION("an absent queue with in-batch negatives") {
    config c{.M = 9, .D = 4, .K = 0, .enqueued = 0, .in_batch = true};
    const auto k = make_case<float>(g, c);
    nce_cases::check<float>(k, run_library<float, float, test_space>(k));
  }
  SECTION("tiny temperature (logits up to 200): the online maximum keeps it finite") {
    config c{.M = 20, .D = 8, .K = 700, .enqueued = 700, .tau = 0.005, .threads = 2};
    if constexpr (nce_cases::on_host) {
      const auto k = make_case<double>(g, c);
      nce_cases::check<double>(k, run_library<double, double, test_space>(k));
    }
    const auto kf = make_case<float>(g, c);
    nce_cases::check<float>(kf, run_library<float, float, test_space>(kf));
  }
  SECTION("clamped norms (zero tokens) follow F.normalize: gradient g / eps") {
    config c{.M = 3, .D = 4, .K = 5, .enqueued = 5, .teacher_grad = true, .tau = 0.5, .normalize_eps = 1e-3f};
    auto k = make_case<W>(g, c);
    for (long d = 0; d < c.D; ++d) k.student[static_cast<std::size_t>(c.D + d)] = 0.0;      // token 1's student is zero
    for (long d = 0; d < c.D; ++d) k.teacher[static_cast<std::size_t>(2 * c.D + d)] = 1e-5;  // token 2's teacher is below eps
    nce_cases::check<W>(k, run_library<W, W, test_space>(k));
  }
}

TEST_CASE("token_nce: matches PyTorch's formula on the benchmark definition, on every backend", "[contrastive][token_nce][backend]") {
  // The PyTorch peer (bench/peers/compare.py): normalise q and k, logits [pos, q queue^T] / tau,
  // cross-entropy with label 0, mean over tokens, tau = 0.07, gradient to q. Here on a small
  // shape through the reference, which materialises exactly those logits.
  using namespace nce_test;
  distill_test::rng g(410);
  config c{.M = 16, .D = 32, .K = 300, .enqueued = 300, .threads = 2};
  const auto k = make_case<float>(g, c);
  const auto r = run_library<float, float, test_space>(k);
  auto t = expected_accuracy<float, float, test_space>(distill::matmul_precision::fp32, c.tau);
  if (nce_cases::on_host) t.loss_abs = t.loss_rel = 1e-5;
  check_against_reference(k, r, t);
  CHECK(r.loss[0] > 0.0);
}
