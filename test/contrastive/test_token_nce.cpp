// SPDX-License-Identifier: MIT
// Token-wise InfoNCE against a sample queue, what only the CPU has: the double reference against
// finite differences, the CPU's key tiles and thread decompositions, properties in double
// (scale invariance, orthogonality, thread counts), unwritten queue rows, bad inputs. The cases
// every backend runs are in nce_backend_cases.hpp (test_contrastive_backends.cpp).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "contrastive/nce_harness.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "reference/contrastive_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using namespace distill;
using namespace nce_test;

namespace {

template <class T>
void check(const case_data& k, const nce_outputs& r) {
  check_against_reference(k, r, expected_accuracy<T>(matmul_precision::fp32, k.cfg.tau));
}

}  // namespace

TEST_CASE("token_nce reference: analytic gradients match finite differences", "[contrastive][token_nce][reference]") {
  distill_test::rng g(401);
  for (int trial = 0; trial < 24; ++trial) {
    config c = random_config(g, 6, 5, 7);
    c.grad_scale = 1;
    c.tau = g.uniform(0.2, 1.0);  // keep the FD step well inside the smooth region
    const auto k = make_case<double>(g, c);
    distill_ref::ref_queue rq(c.K, c.D);
    rq.enqueue(k.history, k.history_ids, true, 1e-12);
    std::vector<double> qk(rq.keys.begin(), rq.keys.begin() + rq.filled * c.D);
    std::vector<std::int64_t> qi;
    if (c.queue_ids) qi.assign(rq.ids.begin(), rq.ids.begin() + rq.filled);
    auto in = ref_input(k, qk, qi);
    const auto ref = distill_ref::token_nce_ref(in);
    CAPTURE(trial, c.M, c.D, c.K, c.enqueued, c.in_batch, c.use_mask, c.use_ids, c.queue_ids, static_cast<int>(c.reduction), c.tau);
    // d loss / d (the input `field` of the reference), by central differences
    const auto fd = [&](std::vector<double> distill_ref::token_nce_ref_input::*field) {
      return distill_test::numeric_gradient(
          [&](const std::vector<double>& x) {
            auto v = in;
            v.*field = x;
            return distill_ref::token_nce_ref_loss(v);
          },
          in.*field);
    };
    const auto fs = fd(&distill_ref::token_nce_ref_input::student), ft = fd(&distill_ref::token_nce_ref_input::teacher);
    CHECK_CLOSE("reference grad_student vs finite differences", ref.grad_student, fs, distill_test::tol::fd);
    CHECK_CLOSE("reference grad_teacher vs finite differences", ref.grad_teacher, ft, distill_test::tol::fd);
    for (double l : ref.per_token) CHECK(l >= 0.0);  // LSE >= the positive logit
  }
}

TEST_CASE("token_nce CPU: K not a multiple of the key tile, both thread decompositions", "[contrastive][token_nce]") {
  distill_test::rng g(404);
  const long tile = token_nce_detail::cpu_key_tile;
  for (long K : {tile - 1, tile, tile + 1, 2 * tile + 37}) {
    for (long M : {3L, 2 * token_nce_detail::cpu_row_block + 5}) {  // key split vs row split with 2 threads
      // more rows enqueued than K: the queue wraps around
      config c{.M = M, .D = 19, .K = K, .enqueued = K + 13, .batches = 2, .queue_ids = true, .in_batch = M < 10,
               .use_ids = true, .teacher_grad = true, .tau = 0.07, .threads = 2};
      const auto k = make_case<float>(g, c);
      CAPTURE(K, M);
      check<float>(k, run_library<float>(k));
    }
  }
}

TEST_CASE("token_nce CPU: properties", "[contrastive][token_nce]") {
  distill_test::rng g(406);
  config c{.M = 37, .D = 11, .K = 100, .enqueued = 150, .in_batch = true, .teacher_grad = true, .threads = 2};
  auto k = make_case<double>(g, c);
  const auto base = run_library<double>(k);
  REQUIRE(base.st.ok());
  for (double l : base.per_token) CHECK(l >= 0.0);

  SECTION("scale invariance: z -> a z leaves the loss unchanged and divides the gradient by a") {
    auto k2 = k;
    for (auto& v : k2.student) v *= 3.5;
    for (auto& v : k2.teacher) v *= 0.25;
    const auto r = run_library<double>(k2);
    REQUIRE(r.st.ok());
    CHECK_CLOSE_SCALAR("loss", r.loss[0], base.loss[0], (distill_test::tolerance{1e-12, 1e-10}));
    std::vector<double> scaled_s(base.grad_student), scaled_t(base.grad_teacher);
    for (auto& v : scaled_s) v /= 3.5;
    for (auto& v : scaled_t) v /= 0.25;
    CHECK_CLOSE("grad_student", r.grad_student, scaled_s, scaled(scaled_s, 1e-10));
    CHECK_CLOSE("grad_teacher", r.grad_teacher, scaled_t, scaled(scaled_t, 1e-10));
  }
  SECTION("the gradient is orthogonal to the token (the loss only sees its direction)") {
    for (long i = 0; i < c.M; ++i) {
      double dz = 0, dy = 0, nz = 0, ny = 0;
      for (long d = 0; d < c.D; ++d) {
        const auto x = static_cast<std::size_t>(i * c.D + d);
        dz += base.grad_student[x] * k.student[x];
        dy += base.grad_teacher[x] * k.teacher[x];
        nz += std::fabs(base.grad_student[x] * k.student[x]);
        ny += std::fabs(base.grad_teacher[x] * k.teacher[x]);
      }
      CHECK(std::fabs(dz) <= 1e-10 * (1 + nz));
      CHECK(std::fabs(dy) <= 1e-10 * (1 + ny));
    }
  }
  SECTION("thread count: same result up to rounding; one thread count is bitwise reproducible") {
    for (int t : {1, 2, 3, 5}) {
      auto k2 = k;
      k2.cfg.threads = t;
      const auto r1 = run_library<double>(k2), r2 = run_library<double>(k2);
      CHECK(r1.loss == r2.loss);
      CHECK(r1.grad_student == r2.grad_student);
      CHECK(r1.grad_teacher == r2.grad_teacher);
      CHECK_CLOSE_SCALAR("loss", r1.loss[0], base.loss[0], (distill_test::tolerance{1e-12, 1e-10}));
      CHECK_CLOSE("grad_student", r1.grad_student, base.grad_student, scaled(base.grad_student, 1e-10));
    }
  }
  SECTION("a false negative masked by id equals removing that key from the queue") {
    // Queue slot ids: slot 0 has the id of token 0; masking it by id must equal a queue
    // without that slot, for token 0, and change nothing for tokens with other ids.
    config c2{.M = 4, .D = 6, .K = 9, .enqueued = 9, .queue_ids = true, .use_ids = true, .reduction = reduction::none};
    auto k2 = make_case<double>(g, c2);
    k2.history_ids.assign(9, 100);
    k2.history_ids[0] = 7;
    k2.ids = {7, 1, 2, 3};
    // Slot 0 points along token 1's student direction, so token 1 puts real mass on it.
    for (long d = 0; d < c2.D; ++d) k2.history[static_cast<std::size_t>(d)] = k2.student[static_cast<std::size_t>(c2.D + d)];
    const auto masked = run_library<double>(k2);
    auto k3 = k2;
    k3.history.erase(k3.history.begin(), k3.history.begin() + c2.D);  // drop slot 0
    k3.history_ids.erase(k3.history_ids.begin());
    k3.cfg.K = 8;
    k3.cfg.enqueued = 8;
    k3.batch_sizes = {8};
    const auto removed = run_library<double>(k3);
    REQUIRE(masked.st.ok());
    REQUIRE(removed.st.ok());
    CHECK(masked.per_token[0] == Approx(removed.per_token[0]).epsilon(1e-12));
    CHECK(masked.per_token[1] != Approx(removed.per_token[1]).epsilon(1e-9));  // token 1 still sees slot 0
  }
}

TEST_CASE("token_nce CPU: rows of the queue that were never written are never read", "[contrastive][token_nce]") {
  distill_test::rng g(407);
  config c{.M = 6, .D = 5, .K = 40, .enqueued = 11, .threads = 2};
  const auto k = make_case<float>(g, c);
  const auto r = run_library<float>(k, {.poison_unwritten_queue_rows = true});  // NaN in slots 11..39
  check<float>(k, r);
  REQUIRE(r.queue_keys.size() == 11 * 5);
}

TEST_CASE("token_nce CPU: bad inputs give a clear status", "[contrastive][token_nce]") {
  const long M = 4, D = 3, K = 8;
  std::vector<float> z(M * D, 1.0f), y(M * D, 0.5f), gz(M * D), gy(M * D);
  std::vector<float> loss(M);
  host_sample_queue<float> hq(K, D, true), hq_wrong(K, D + 1), hq_empty(K, D);
  REQUIRE(sample_queue_init_random(cpu{1}, hq.queue(), 1).ok());
  REQUIRE(sample_queue_init_random(cpu{1}, hq_wrong.queue(), 1).ok());
  const auto Z = make_view(static_cast<const float*>(z.data()), M, D);
  const auto Y = make_view(static_cast<const float*>(y.data()), M, D);
  const auto L = make_view(loss.data(), 1);
  const auto G = make_view(gz.data(), M, D);
  // `ws` absent: a workspace of the documented size
  const auto run = [&](const sample_queue<float>& q, host_view<const float, 2> zz, host_view<const float, 2> yy,
                       host_view<const std::uint8_t, 1> mask, host_view<const std::int64_t, 1> ids, host_view<float, 1> l,
                       host_view<float, 2> gs, host_view<std::byte, 1> ws, const token_nce_options& opt) {
    workspace_for<float> own(cpu{1}, zz.extent(0), zz.extent(1), q, opt);
    return token_nce_queue_forward_backward(cpu{1}, token_nce_inputs<float>{zz, yy, mask, ids}, q,
                                            token_nce_outputs<float>{.loss = l, .grad_student = gs}, ws.empty() ? own.view() : ws,
                                            opt);
  };
  token_nce_options opt;
  CHECK(run(hq.queue(), Z, Y, {}, {}, L, G, {}, opt).ok());
  CHECK(run(hq_wrong.queue(), Z, Y, {}, {}, L, G, {}, opt).code() == errc::shape_mismatch);
  CHECK(run(hq_empty.queue(), Z, Y, {}, {}, L, G, {}, opt).code() == errc::invalid_argument);
  CHECK(run(sample_queue<float>{}, Z, Y, {}, {}, L, G, {}, opt).code() == errc::invalid_argument);
  {
    const auto st = run(hq_empty.queue(), Z, Y, {}, {}, L, G, {}, opt);
    CHECK(st.message().find("no negatives") != std::string::npos);
  }
  for (float tau : {0.0f, -0.1f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto o = opt;
    o.temperature = tau;
    const auto st = run(hq.queue(), Z, Y, {}, {}, L, G, {}, o);
    CHECK(st.code() == errc::invalid_argument);
    CHECK(st.message().find("temperature") != std::string::npos);
  }
  {
    auto o = opt;
    o.normalize_eps = 0;
    CHECK(run(hq.queue(), Z, Y, {}, {}, L, G, {}, o).code() == errc::invalid_argument);
  }
  const std::vector<std::uint8_t> none_valid(M, 0), short_mask(M - 1, 1);
  {
    const auto st = run(hq.queue(), Z, Y, make_view(none_valid.data(), M), {}, L, G, {}, opt);
    CHECK(st.code() == errc::invalid_argument);
    CHECK(st.message().find("masked") != std::string::npos);
  }
  CHECK(run(hq.queue(), Z, Y, make_view(short_mask.data(), M - 1), {}, L, G, {}, opt).code() == errc::shape_mismatch);
  const std::vector<std::int64_t> short_ids(M + 1, 0);
  CHECK(run(hq.queue(), Z, Y, {}, make_view(short_ids.data(), M + 1), L, G, {}, opt).code() == errc::shape_mismatch);
  CHECK(run(hq.queue(), Z, make_view(static_cast<const float*>(y.data()), M - 1, D), {}, {}, L, G, {}, opt).code() ==
        errc::shape_mismatch);
  CHECK(run(hq.queue(), Z, Y, {}, {}, make_view(loss.data(), M), G, {}, opt).code() == errc::shape_mismatch);  // [M] needs none
  {
    auto o = opt;
    o.reduction = reduction::none;
    CHECK(run(hq.queue(), Z, Y, {}, {}, make_view(loss.data(), M), G, {}, o).ok());
    CHECK(run(hq.queue(), Z, Y, {}, {}, L, G, {}, o).code() == errc::shape_mismatch);
  }
  CHECK(run(hq.queue(), Z, Y, {}, {}, L, make_view(gz.data(), M, D - 1), {}, opt).code() == errc::shape_mismatch);
  CHECK(run(hq.queue(), Z, Y, {}, {}, L, {}, {}, opt).code() == errc::invalid_argument);  // grad_student required
  CHECK(run(hq.queue(), Z, Y, {}, {}, {}, G, {}, opt).code() == errc::invalid_argument);  // loss required
  {
    std::vector<std::byte> small(16);
    const auto st = run(hq.queue(), Z, Y, {}, {}, L, G, make_view(small.data(), 16), opt);
    CHECK(st.code() == errc::invalid_argument);
    CHECK(st.message().find("workspace") != std::string::npos);
  }
  {
    // non-unit inner stride (a transposed view)
    const auto Zt = make_strided_view(static_cast<const float*>(z.data()), std::array<index_t, 2>{D, M}, std::array<index_t, 2>{1, D});
    host_sample_queue<float> hq4(K, M);
    REQUIRE(sample_queue_init_random(cpu{1}, hq4.queue(), 1).ok());
    const auto Yt = make_strided_view(static_cast<const float*>(y.data()), std::array<index_t, 2>{D, M}, std::array<index_t, 2>{1, D});
    std::vector<float> g2(M * D);
    CHECK(run(hq4.queue(), Zt, Yt, {}, {}, L, make_view(g2.data(), D, M), {}, opt).code() == errc::unsupported_layout);
  }
  {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    auto o = opt;
    o.grad_scale = nan;
    CHECK(run(hq.queue(), Z, Y, {}, {}, L, G, {}, o).code() == errc::invalid_argument);
  }
}
