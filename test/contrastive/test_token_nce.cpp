// SPDX-License-Identifier: MIT
// Token-wise InfoNCE against a sample queue, CPU path: the double reference against finite
// differences, the library against the reference on random shapes (partially filled and
// wrapped queues, K not a multiple of the tile, ids, masks, in-batch negatives, every
// reduction, strided views, float and double), properties, bad inputs and NaN behaviour.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "nce_cases.hpp"
#include "reference/contrastive_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using namespace nce_test;

namespace {

struct cpu_result {
  std::vector<double> loss, per_token, grad_student, grad_teacher;
  std::vector<double> queue_keys;         // the queue's valid rows, read back
  std::vector<std::int64_t> queue_ids;
  bool canaries_ok = true;
  status st;
};

/// Build the queue by enqueueing the case's history, run the fused pass, read everything back.
template <class T>
cpu_result run_cpu(const case_data& k, bool forward_only = false, bool backward_only = false, bool provide_workspace = true) {
  const config& c = k.cfg;
  const long M = c.M, D = c.D, ld = D + c.pad;
  cpu_result out;
  host_sample_queue<T> owned(c.K, D, c.queue_ids);
  auto& q = owned.queue();
  const auto hist = cast<T>(k.history);
  long at = 0;
  for (long n : k.batch_sizes) {
    const auto keys = make_view(static_cast<const T*>(hist.data() + at * D), n, D);
    host_view<const std::int64_t, 1> ids;
    if (c.queue_ids) ids = make_view(k.history_ids.data() + at, n);
    REQUIRE(sample_queue_enqueue(cpu{c.threads}, q, keys, ids).ok());
    at += n;
  }
  for (long j = 0; j < q.size(); ++j) {
    for (long d = 0; d < D; ++d) out.queue_keys.push_back(static_cast<double>(q.keys()(j, d)));
    if (c.queue_ids) out.queue_ids.push_back(q.ids()(j));
  }
  const auto zs = padded(cast<T>(k.student), M, D, c.pad, T(7));
  const auto ys = padded(cast<T>(k.teacher), M, D, c.pad, T(7));
  const auto Z = make_strided_view(static_cast<const T*>(zs.data()), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  const auto Y = make_strided_view(static_cast<const T*>(ys.data()), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  host_view<const std::uint8_t, 1> mask;
  if (c.use_mask) mask = make_view(k.mask.data(), M);
  host_view<const std::int64_t, 1> ids;
  if (c.use_ids) ids = make_view(k.ids.data(), M);
  const long nloss = c.reduction == reduction::none ? M : 1;
  distill_test::guarded<T> loss(static_cast<std::size_t>(nloss)), per_token(static_cast<std::size_t>(M));
  distill_test::guarded<T> gs(static_cast<std::size_t>(M * ld)), gt(static_cast<std::size_t>(M * ld));
  // Accumulate mode starts from known values; overwrite mode from canaries (which must vanish).
  std::vector<double> g0s(static_cast<std::size_t>(M * D)), g0t(static_cast<std::size_t>(M * D));
  if (c.accumulate) {
    distill_test::rng g(99);
    for (long i = 0; i < M; ++i)
      for (long d = 0; d < D; ++d) {
        gs.data()[i * ld + d] = static_cast<T>(g0s[static_cast<std::size_t>(i * D + d)] = g.normal());
        gt.data()[i * ld + d] = static_cast<T>(g0t[static_cast<std::size_t>(i * D + d)] = g.normal());
      }
  }
  const auto GS = make_strided_view(gs.data(), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  host_view<T, 2> GT;
  if (c.teacher_grad) GT = make_strided_view(gt.data(), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  const auto opt = options_of(c);
  const cpu ctx{c.threads};
  std::vector<std::byte> ws(static_cast<std::size_t>(token_nce_queue_workspace_size<T>(ctx, M, D, c.K, opt)));
  host_view<std::byte, 1> wsv;
  if (provide_workspace) wsv = make_view(ws.data(), static_cast<index_t>(ws.size()));
  const token_nce_inputs<T> in{Z, Y, mask, ids};
  const auto L = make_view(loss.data(), nloss);
  const auto P = make_view(per_token.data(), M);
  if (forward_only)
    out.st = token_nce_queue_forward(ctx, in, q, token_nce_outputs<T>{.loss = L, .per_token_loss = P}, wsv, opt);
  else if (backward_only)
    out.st = token_nce_queue_backward(ctx, in, q, token_nce_outputs<T>{.grad_student = GS, .grad_teacher = GT}, wsv, opt);
  else
    out.st = token_nce_queue_forward_backward(ctx, in, q, token_nce_outputs<T>{L, P, GS, GT}, wsv, opt);
  if (!out.st.ok()) return out;
  if (!backward_only) {
    for (long i = 0; i < nloss; ++i) out.loss.push_back(static_cast<double>(loss.data()[i]));
    for (long i = 0; i < M; ++i) out.per_token.push_back(static_cast<double>(per_token.data()[i]));
  }
  if (!forward_only) {
    const auto a = unpadded(gs.data(), M, D, c.pad);
    for (std::size_t x = 0; x < a.size(); ++x) out.grad_student.push_back(static_cast<double>(a[x]) - (c.accumulate ? g0s[x] : 0.0));
    if (c.teacher_grad) {
      const auto b = unpadded(gt.data(), M, D, c.pad);
      for (std::size_t x = 0; x < b.size(); ++x) out.grad_teacher.push_back(static_cast<double>(b[x]) - (c.accumulate ? g0t[x] : 0.0));
    }
  }
  out.canaries_ok = loss.intact() && per_token.intact() && gs.intact() && gt.intact() &&
                    gs.padding_intact(static_cast<std::size_t>(M), static_cast<std::size_t>(D), static_cast<std::size_t>(ld)) &&
                    gt.padding_intact(static_cast<std::size_t>(M), static_cast<std::size_t>(D), static_cast<std::size_t>(ld)) &&
                    (c.teacher_grad || gt.contents() == std::vector<T>(gt.size(), distill_test::guarded<T>::canary()) || c.accumulate);
  return out;
}

template <class T>
void compare_with_reference(const case_data& k, const cpu_result& r) {
  const config& c = k.cfg;
  REQUIRE(r.st.ok());
  const auto in = ref_input(k, r.queue_keys, r.queue_ids);
  const auto ref = distill_ref::token_nce_ref(in);
  const double rel = std::is_same_v<T, double> ? double_rel : float_rel(c.tau);
  CHECK(r.canaries_ok);
  if (!r.per_token.empty()) {
    CHECK_CLOSE("per-token loss", r.per_token, ref.per_token, (distill_test::tolerance{rel, rel}));
    if (c.reduction == reduction::none) CHECK_CLOSE("loss (none)", r.loss, ref.per_token, (distill_test::tolerance{rel, rel}));
    else CHECK_CLOSE_SCALAR("loss", r.loss[0], ref.loss, (distill_test::tolerance{rel, rel}));
  }
  // accumulate mode: the gradient is recovered as (g0 + grad) - g0 with g0 ~ N(0, 1) in T
  const double acc_atol = c.accumulate ? 8.0 * std::numeric_limits<T>::epsilon() : 0.0;
  if (!r.grad_student.empty()) {
    auto atol = row_atol(k, k.student, rel);
    for (auto& a : atol) a += acc_atol;
    const auto cmp = compare_rows(r.grad_student, ref.grad_student, c.M, c.D, atol, rel);
    INFO("grad_student: " << cmp.message);
    CHECK(cmp.ok);
  }
  if (!r.grad_teacher.empty()) {
    // A teacher row also collects sum_i c_i pi_ib q_i from every token (pi_ib <= 1): bound it
    // by the batch's weight sum, (w + sum_i w_i) / w = 1 + valid tokens.
    auto atol = row_atol(k, k.teacher, rel);
    if (c.in_batch)
      for (auto& a : atol) a *= 1.0 + static_cast<double>(c.M);
    for (auto& a : atol) a += acc_atol;
    const auto cmp = compare_rows(r.grad_teacher, ref.grad_teacher, c.M, c.D, atol, rel);
    INFO("grad_teacher: " << cmp.message);
    CHECK(cmp.ok);
  }
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
    const auto fs = distill_test::numeric_gradient(
        [&](const std::vector<double>& x) {
          auto v = in;
          v.student = x;
          return distill_ref::token_nce_ref_loss(v);
        },
        in.student);
    const auto ft = distill_test::numeric_gradient(
        [&](const std::vector<double>& x) {
          auto v = in;
          v.teacher = x;
          return distill_ref::token_nce_ref_loss(v);
        },
        in.teacher);
    CHECK_CLOSE("reference grad_student vs finite differences", ref.grad_student, fs, distill_test::tol::fd);
    CHECK_CLOSE("reference grad_teacher vs finite differences", ref.grad_teacher, ft, distill_test::tol::fd);
    for (double l : ref.per_token) CHECK(l >= 0.0);  // LSE >= the positive logit
  }
}

TEMPLATE_TEST_CASE("token_nce CPU matches the reference on random cases", "[contrastive][token_nce]", float, double) {
  distill_test::rng g(std::is_same_v<TestType, float> ? 402 : 403);
  const int trials = 36;
  for (int trial = 0; trial < trials; ++trial) {
    // Every fourth case is large enough for several row blocks / key tiles per thread.
    const bool big = trial % 4 == 3;
    config c = big ? random_config(g, 300, 40, 1300) : random_config(g, 40, 24, 90);
    const auto k = make_case<TestType>(g, c);
    CAPTURE(trial, c.M, c.D, c.K, c.enqueued, c.batches, c.in_batch, c.use_mask, c.use_ids, c.queue_ids, c.teacher_grad,
            c.accumulate, static_cast<int>(c.reduction), c.tau, c.grad_scale, c.threads, c.pad);
    const auto r = run_cpu<TestType>(k);
    INFO(r.st.to_string());
    compare_with_reference<TestType>(k, r);
    // The queue the loss saw is the one the reference ring buffer holds.
    distill_ref::ref_queue rq(c.K, c.D);
    rq.enqueue(k.history, k.history_ids, true, 1e-12);
    REQUIRE(static_cast<long>(r.queue_keys.size()) == rq.filled * c.D);
    std::vector<double> ref_keys(rq.keys.begin(), rq.keys.begin() + rq.filled * c.D);
    CHECK_CLOSE("queue keys", r.queue_keys, ref_keys,
                (distill_test::tolerance{std::is_same_v<TestType, float> ? 1e-6 : 1e-14, 1e-6}));
  }
}

TEST_CASE("token_nce CPU: K not a multiple of the key tile, both thread decompositions", "[contrastive][token_nce]") {
  distill_test::rng g(404);
  const long tile = token_nce_detail::cpu_key_tile;
  for (long K : {tile - 1, tile, tile + 1, 2 * tile + 37}) {
    for (long M : {3L, 2 * token_nce_detail::cpu_row_block + 5}) {  // key split vs row split with 2 threads
      config c;
      c.M = M;
      c.D = 19;
      c.K = K;
      c.enqueued = K + 13;  // wrapped
      c.batches = 2;
      c.queue_ids = true;
      c.use_ids = true;
      c.in_batch = M < 10;
      c.teacher_grad = true;
      c.threads = 2;
      c.tau = 0.07;
      const auto k = make_case<float>(g, c);
      CAPTURE(K, M);
      compare_with_reference<float>(k, run_cpu<float>(k));
    }
  }
}

TEST_CASE("token_nce CPU: forward, backward and the fused pass agree; workspace optional", "[contrastive][token_nce]") {
  distill_test::rng g(405);
  for (int trial = 0; trial < 6; ++trial) {
    config c = random_config(g, 50, 16, 200);
    c.accumulate = false;
    const auto k = make_case<float>(g, c);
    const auto fused = run_cpu<float>(k);
    const auto fwd = run_cpu<float>(k, true, false);
    const auto bwd = run_cpu<float>(k, false, true);
    const auto no_ws = run_cpu<float>(k, false, false, false);
    REQUIRE(fused.st.ok());
    REQUIRE(fwd.st.ok());
    REQUIRE(bwd.st.ok());
    CHECK(no_ws.st.code() == errc::invalid_argument);  // the workspace is the caller's on both backends
    CHECK(fwd.loss == fused.loss);  // same code path: bitwise equal
    CHECK(fwd.per_token == fused.per_token);
    CHECK(bwd.grad_student == fused.grad_student);
    CHECK(bwd.grad_teacher == fused.grad_teacher);
  }
}

TEST_CASE("token_nce CPU: properties", "[contrastive][token_nce]") {
  distill_test::rng g(406);
  config c;
  c.M = 37;
  c.D = 11;
  c.K = 100;
  c.enqueued = 150;
  c.in_batch = true;
  c.teacher_grad = true;
  c.threads = 2;
  auto k = make_case<double>(g, c);
  const auto base = run_cpu<double>(k);
  REQUIRE(base.st.ok());
  for (double l : base.per_token) CHECK(l >= 0.0);

  SECTION("scale invariance: z -> a z leaves the loss unchanged and divides the gradient by a") {
    auto k2 = k;
    for (auto& v : k2.student) v *= 3.5;
    for (auto& v : k2.teacher) v *= 0.25;
    const auto r = run_cpu<double>(k2);
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
      const auto r1 = run_cpu<double>(k2), r2 = run_cpu<double>(k2);
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
    config c2;
    c2.M = 4;
    c2.D = 6;
    c2.K = 9;
    c2.enqueued = 9;
    c2.queue_ids = true;
    c2.use_ids = true;
    c2.reduction = reduction::none;
    auto k2 = make_case<double>(g, c2);
    k2.history_ids.assign(9, 100);
    k2.history_ids[0] = 7;
    k2.ids = {7, 1, 2, 3};
    // Slot 0 points along token 1's student direction, so token 1 puts real mass on it.
    for (long d = 0; d < c2.D; ++d) k2.history[static_cast<std::size_t>(d)] = k2.student[static_cast<std::size_t>(c2.D + d)];
    const auto masked = run_cpu<double>(k2);
    auto k3 = k2;
    k3.history.erase(k3.history.begin(), k3.history.begin() + c2.D);  // drop slot 0
    k3.history_ids.erase(k3.history_ids.begin());
    k3.cfg.K = 8;
    k3.cfg.enqueued = 8;
    k3.batch_sizes = {8};
    const auto removed = run_cpu<double>(k3);
    REQUIRE(masked.st.ok());
    REQUIRE(removed.st.ok());
    CHECK(masked.per_token[0] == Approx(removed.per_token[0]).epsilon(1e-12));
    CHECK(masked.per_token[1] != Approx(removed.per_token[1]).epsilon(1e-9));  // token 1 still sees slot 0
  }
}

TEST_CASE("token_nce CPU: edge cases", "[contrastive][token_nce]") {
  distill_test::rng g(407);
  SECTION("one token, in-batch only, no queue: only the positive, loss 0 and zero gradient") {
    config c;
    c.M = 1;
    c.D = 5;
    c.K = 3;
    c.enqueued = 0;
    c.in_batch = true;
    c.teacher_grad = true;
    const auto k = make_case<double>(g, c);
    const auto r = run_cpu<double>(k);
    REQUIRE(r.st.ok());
    CHECK(r.loss[0] == 0.0);
    for (double v : r.grad_student) CHECK(v == 0.0);
    for (double v : r.grad_teacher) CHECK(v == 0.0);
  }
  SECTION("an absent queue with in-batch negatives") {
    const long M = 9, D = 4;
    auto z = g.normals<float>(M * D), y = g.normals<float>(M * D);
    std::vector<float> gz(M * D);
    float loss = 0;
    token_nce_options opt;
    opt.in_batch_negatives = true;
    const sample_queue<float> none;
    workspace_for<float> ws(cpu{2}, M, D, none, opt);
    REQUIRE(token_nce_queue_forward_backward(cpu{2}, token_nce_inputs<float>{make_view(z.data(), M, D), make_view(y.data(), M, D)}, none,
                                             token_nce_outputs<float>{.loss = make_view(&loss, 1), .grad_student = make_view(gz.data(), M, D)},
                                             ws.view(), opt)
                .ok());
    distill_ref::token_nce_ref_input in;
    in.M = M;
    in.D = D;
    in.student.assign(z.begin(), z.end());
    in.teacher.assign(y.begin(), y.end());
    in.in_batch = true;
    const auto ref = distill_ref::token_nce_ref(in);
    CHECK_CLOSE_SCALAR("loss", loss, ref.loss, (distill_test::tolerance{1e-4, 1e-4}));
    CHECK_CLOSE("grad", gz, ref.grad_student, scaled(ref.grad_student, 1e-4));
  }
  SECTION("tiny temperature (logits up to 200): the online maximum keeps it finite") {
    config c;
    c.M = 20;
    c.D = 8;
    c.K = 700;
    c.enqueued = 700;
    c.tau = 0.005;
    c.threads = 2;
    const auto k = make_case<double>(g, c);
    compare_with_reference<double>(k, run_cpu<double>(k));
    const auto kf = make_case<float>(g, c);
    compare_with_reference<float>(kf, run_cpu<float>(kf));
  }
  SECTION("clamped norms (zero tokens) follow F.normalize: gradient g / eps") {
    const long M = 3, D = 4;
    std::vector<double> z = g.normals<double>(M * D), y = g.normals<double>(M * D);
    for (long d = 0; d < D; ++d) z[static_cast<std::size_t>(D + d)] = 0.0;  // token 1 student is zero
    for (long d = 0; d < D; ++d) y[static_cast<std::size_t>(2 * D + d)] = 1e-5;  // token 2 teacher below eps
    host_sample_queue<double> hq(5, D);
    REQUIRE(sample_queue_init_random(cpu{1}, hq.queue(), 3).ok());
    token_nce_options opt;
    opt.normalize_eps = 1e-3f;
    opt.temperature = 0.5f;
    double loss = 0;
    std::vector<double> gz(M * D), gy(M * D);
    workspace_for<double> ws(cpu{1}, M, D, hq.queue(), opt);
    REQUIRE(token_nce_queue_forward_backward(cpu{1}, token_nce_inputs<double>{make_view(z.data(), M, D), make_view(y.data(), M, D)},
                                             hq.queue(),
                                             token_nce_outputs<double>{make_view(&loss, 1), {}, make_view(gz.data(), M, D),
                                                                       make_view(gy.data(), M, D)},
                                             ws.view(), opt)
                .ok());
    distill_ref::token_nce_ref_input in;
    in.M = M;
    in.D = D;
    in.student = z;
    in.teacher = y;
    for (long j = 0; j < 5; ++j)
      for (long d = 0; d < D; ++d) in.queue.push_back(hq.queue().keys()(j, d));
    in.tau = 0.5;
    in.eps = static_cast<double>(1e-3f);
    const auto ref = distill_ref::token_nce_ref(in);
    CHECK_CLOSE_SCALAR("loss", loss, ref.loss, (distill_test::tolerance{1e-9, 1e-9}));
    CHECK_CLOSE("grad_student", gz, ref.grad_student, scaled(ref.grad_student, 1e-9));
    CHECK_CLOSE("grad_teacher", gy, ref.grad_teacher, scaled(ref.grad_teacher, 1e-9));
  }
  SECTION("rows of the queue that were never written are never read") {
    const long M = 6, D = 5, K = 40;
    host_sample_queue<float> hq(K, D);
    auto& q = hq.queue();
    for (long j = 0; j < K; ++j)
      for (long d = 0; d < D; ++d) q.keys()(j, d) = std::numeric_limits<float>::quiet_NaN();
    const auto rows = g.normals<float>(11 * D);
    REQUIRE(sample_queue_enqueue(cpu{1}, q, make_view(static_cast<const float*>(rows.data()), 11, D)).ok());
    REQUIRE(q.size() == 11);
    auto z = g.normals<float>(M * D), y = g.normals<float>(M * D);
    std::vector<float> gz(M * D);
    float loss = 0;
    workspace_for<float> ws(cpu{2}, M, D, q);
    REQUIRE(token_nce_queue_forward_backward(cpu{2}, token_nce_inputs<float>{make_view(z.data(), M, D), make_view(y.data(), M, D)}, q,
                                             token_nce_outputs<float>{.loss = make_view(&loss, 1), .grad_student = make_view(gz.data(), M, D)},
                                             ws.view())
                .ok());
    CHECK(std::isfinite(loss));
    for (float v : gz) CHECK(std::isfinite(v));
  }
}

TEST_CASE("token_nce CPU: NaN inputs propagate as documented", "[contrastive][token_nce]") {
  distill_test::rng g(408);
  config c;
  c.M = 5;
  c.D = 7;
  c.K = 600;  // more than one key tile
  c.enqueued = 600;
  c.reduction = reduction::none;
  auto k = make_case<float>(g, c);
  SECTION("NaN in one student token: that token's loss only") {
    k.student[static_cast<std::size_t>(2 * c.D + 3)] = std::numeric_limits<double>::quiet_NaN();
    const auto r = run_cpu<float>(k);
    REQUIRE(r.st.ok());
    for (long i = 0; i < c.M; ++i) CHECK(std::isnan(r.per_token[static_cast<std::size_t>(i)]) == (i == 2));
  }
  SECTION("NaN in one teacher token without in-batch negatives: that token only") {
    k.teacher[static_cast<std::size_t>(4 * c.D)] = std::numeric_limits<double>::quiet_NaN();
    const auto r = run_cpu<float>(k);
    REQUIRE(r.st.ok());
    for (long i = 0; i < c.M; ++i) CHECK(std::isnan(r.per_token[static_cast<std::size_t>(i)]) == (i == 4));
  }
  SECTION("NaN in one teacher token with in-batch negatives: every token") {
    k.cfg.in_batch = true;
    k.teacher[static_cast<std::size_t>(4 * c.D)] = std::numeric_limits<double>::quiet_NaN();
    const auto r = run_cpu<float>(k);
    REQUIRE(r.st.ok());
    for (double l : r.per_token) CHECK(std::isnan(l));
  }
  SECTION("NaN in one queue row: every token") {
    k.history[static_cast<std::size_t>(555 * c.D + 1)] = std::numeric_limits<double>::quiet_NaN();
    const auto r = run_cpu<float>(k);
    REQUIRE(r.st.ok());
    for (double l : r.per_token) CHECK(std::isnan(l));
  }
}

TEST_CASE("token_nce CPU: masked tokens get zero loss and zero gradient", "[contrastive][token_nce]") {
  distill_test::rng g(409);
  config c;
  c.M = 12;
  c.D = 6;
  c.K = 30;
  c.enqueued = 30;
  c.use_mask = true;
  c.in_batch = true;
  c.teacher_grad = true;
  auto k = make_case<float>(g, c);
  k.mask = {1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1};
  const auto r = run_cpu<float>(k);
  REQUIRE(r.st.ok());
  compare_with_reference<float>(k, r);
  for (long i = 0; i < c.M; ++i) {
    if (k.mask[static_cast<std::size_t>(i)]) continue;
    CHECK(r.per_token[static_cast<std::size_t>(i)] == 0.0);
    for (long d = 0; d < c.D; ++d) {
      CHECK(r.grad_student[static_cast<std::size_t>(i * c.D + d)] == 0.0);
      CHECK(r.grad_teacher[static_cast<std::size_t>(i * c.D + d)] == 0.0);
    }
  }
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

TEST_CASE("token_nce CPU: matches PyTorch's formula on the benchmark definition", "[contrastive][token_nce]") {
  // The peer in ../shared/perf/cpu_peers.py: normalise q and k, logits [pos, q queue^T] / tau,
  // cross-entropy with label 0, mean over tokens, tau = 0.07, gradient to q. Here on a small
  // shape through the reference, which materialises exactly those logits.
  distill_test::rng g(410);
  const long M = 16, D = 32, K = 300;
  auto z = g.normals<float>(M * D), y = g.normals<float>(M * D), qr = g.normals<float>(K * D);
  host_sample_queue<float> hq(K, D);
  REQUIRE(sample_queue_enqueue(cpu{1}, hq.queue(), make_view(static_cast<const float*>(qr.data()), K, D)).ok());
  float loss = 0;
  std::vector<float> gz(M * D);
  workspace_for<float> ws(cpu{2}, M, D, hq.queue());
  REQUIRE(token_nce_queue_forward_backward(cpu{2}, token_nce_inputs<float>{make_view(z.data(), M, D), make_view(y.data(), M, D)},
                                           hq.queue(),
                                           token_nce_outputs<float>{.loss = make_view(&loss, 1), .grad_student = make_view(gz.data(), M, D)},
                                           ws.view())
              .ok());
  distill_ref::token_nce_ref_input in;
  in.M = M;
  in.D = D;
  in.student.assign(z.begin(), z.end());
  in.teacher.assign(y.begin(), y.end());
  for (long j = 0; j < K; ++j)
    for (long d = 0; d < D; ++d) in.queue.push_back(hq.queue().keys()(j, d));
  const auto ref = distill_ref::token_nce_ref(in);
  CHECK_CLOSE_SCALAR("loss", loss, ref.loss, (distill_test::tolerance{1e-5, 1e-5}));
  CHECK_CLOSE("grad", gz, ref.grad_student, scaled(ref.grad_student, 1e-4));
  CHECK(loss > 0.0f);
}
