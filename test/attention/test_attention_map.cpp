// SPDX-License-Identifier: MIT
// Attention-distribution MSE and KL(teacher || student) (CPU): the double reference against finite
// differences, the library against the reference (float, double, 16-bit inputs; logits and
// probabilities, key and query masks, every head mapping and reduction, padded and strided
// views, the pair-attention shape [B, 1, 1, N^2]), properties, masked rows, NaN, bad inputs,
// canaries.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "attention/attention_map_harness.hpp"
#include "attention/attention_test_util.hpp"
#include "distill/attention/attention_map.hpp"
#include "reference/attention_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using namespace am_test;

TEST_CASE("attention map reference: gradient matches central finite differences", "[attention][map][reference]") {
  distill_test::rng g(401);
  for (int trial = 0; trial < 60; ++trial) {
    am_case c = random_case(g, true);
    const auto s = student_values(g, c);
    const auto t = teacher_values(g, c);
    const auto ref = reference(c, s, t);
    auto f = [&](const std::vector<double>& x) {
      const auto r = reference(c, x, t);
      return c.opt.reduction == reduction::none ? std::accumulate(r.per_row.begin(), r.per_row.end(), 0.0) : r.loss;
    };
    auto num = distill_test::numeric_gradient(f, s);
    for (auto& v : num) v *= c.opt.grad_scale;
    CAPTURE(trial, c.kl, static_cast<int>(c.opt.student_input), static_cast<int>(c.opt.teacher_input),
            static_cast<int>(c.opt.head_map), static_cast<int>(c.opt.reduction), c.key_mask.size(), c.query_mask.size());
    CHECK_CLOSE("reference gradient vs finite differences", ref.grad, num, attention_test::scaled(num, 1e-6, 1e-4, 1e-9));
  }
}

TEMPLATE_TEST_CASE("attention map losses match the double reference", "[attention][map]", float, double) {
  distill_test::rng g(402);
  const bool f64 = std::is_same_v<TestType, double>;
  for (int trial = 0; trial < 200; ++trial) {
    am_case c = random_case(g);
    c.opt.accumulate = g.coin(0.2);
    const int pass = static_cast<int>(g.integer(0, 2));
    const int threads = static_cast<int>(g.integer(1, 3));
    const auto s = attention_test::rounded<TestType>(student_values(g, c));
    const auto t = attention_test::rounded<TestType>(teacher_values(g, c));
    const auto init = attention_test::rounded<TestType>(g.normals(s.size()));
    const auto ref = reference(c, s, t);
    auto out = run_library<TestType>(c, s, t, pass, g, threads, c.opt.accumulate ? &init : nullptr);
    CAPTURE(trial, pass, threads, c.sh.B, c.sh.Hs, c.sh.Ht, c.sh.Lq, c.sh.Lk, c.kl, static_cast<int>(c.opt.student_input),
            static_cast<int>(c.opt.teacher_input), static_cast<int>(c.opt.head_map), static_cast<int>(c.opt.reduction),
            c.key_mask.size(), c.query_mask.size(), c.opt.accumulate);
    REQUIRE(out.st.ok());
    if (pass != 2) {
      const auto expect = expected_loss(ref, c.opt.reduction);
      CHECK_CLOSE("loss", out.loss, expect, f64 ? attention_test::scaled(expect, 1e-12, 1e-10, 1e-15) : attention_test::scaled(expect, 1e-5, 1e-4, 1e-7));
    }
    if (pass != 1) {
      auto expect = ref.grad;
      if (c.opt.accumulate)
        for (std::size_t i = 0; i < expect.size(); ++i) expect[i] += init[i];
      CHECK_CLOSE("grad_student", out.grad, expect,
                  f64 ? attention_test::scaled(expect, 1e-12, 1e-10, 1e-15) : attention_test::scaled(expect, 1e-5, 1e-4, 1e-7));
    }
    CHECK(out.canaries_ok);
  }
}

TEST_CASE("attention map backward matches finite differences of its own forward", "[attention][map]") {
  distill_test::rng g(403);
  for (int trial = 0; trial < 16; ++trial) {
    am_case c = random_case(g, true);
    if (c.opt.reduction == reduction::none) c.opt.reduction = reduction::sum;
    c.opt.teacher_heads = c.heads;
    const auto s = student_values(g, c);
    const auto t = teacher_values(g, c);
    const auto& sh = c.sh;
    const attention_masks<host_space> masks{
        c.key_mask.empty() ? host_view<const std::uint8_t, 2>{} : make_view(static_cast<const std::uint8_t*>(c.key_mask.data()), sh.B, sh.Lk),
        c.query_mask.empty() ? host_view<const std::uint8_t, 2>{} : make_view(static_cast<const std::uint8_t*>(c.query_mask.data()), sh.B, sh.Lq)};
    auto tv = make_view(t.data(), sh.B, sh.Ht, sh.Lq, sh.Lk);
    auto forward = [&](const std::vector<double>& x) {
      double l = 0;
      auto sv = make_view(x.data(), sh.B, sh.Hs, sh.Lq, sh.Lk);
      auto st = c.kl ? attention_map_kl_teacher_student_forward(cpu{1}, sv, tv, masks, make_view(&l, 1), {}, c.opt)
                     : attention_map_mse_forward(cpu{1}, sv, tv, masks, make_view(&l, 1), {}, c.opt);
      REQUIRE(st.ok());
      return l;
    };
    auto num = distill_test::numeric_gradient(forward, s);
    for (auto& v : num) v *= c.opt.grad_scale;
    std::vector<double> grad(s.size());
    auto sv = make_view(s.data(), sh.B, sh.Hs, sh.Lq, sh.Lk);
    auto gv = make_view(grad.data(), sh.B, sh.Hs, sh.Lq, sh.Lk);
    REQUIRE((c.kl ? attention_map_kl_teacher_student_backward(cpu{2}, sv, tv, masks, gv, {}, c.opt)
                  : attention_map_mse_backward(cpu{2}, sv, tv, masks, gv, {}, c.opt))
                .ok());
    CAPTURE(trial, c.kl);
    CHECK_CLOSE("backward vs finite differences of forward", grad, num, attention_test::scaled(num, 1e-6, 1e-4, 1e-9));
  }
}

TEST_CASE("attention map: pair attention [B, 1, 1, N^2], student logits vs teacher distribution", "[attention][map][pairs]") {
  distill_test::rng g(404);
  for (int n : {6, 25, 37}) {
    for (bool kl : {false, true}) {
      am_case c;
      c.sh = {5, 1, 1, 1, n * n};
      c.kl = kl;
      c.opt.teacher_input = attention_input::probabilities;  // a normalised logic mask over pairs
      c.opt.reduction = reduction::mean;
      auto s = g.normals(static_cast<std::size_t>(c.sh.B) * c.sh.Lk, 0, 3);
      std::vector<double> t(s.size(), 0.0);
      for (int b = 0; b < c.sh.B; ++b) {
        int on = 0;
        for (int j = 0; j < c.sh.Lk; ++j) on += (t[b * c.sh.Lk + j] = g.coin(0.1) || j == b ? 1.0 : 0.0) > 0;
        for (int j = 0; j < c.sh.Lk; ++j) t[b * c.sh.Lk + j] /= on;
      }
      const auto sf = attention_test::rounded<float>(s), tf = attention_test::rounded<float>(t);
      const auto ref = reference(c, sf, tf);
      auto out = run_library<float>(c, sf, tf, 0, g, 2);
      REQUIRE(out.st.ok());
      CAPTURE(n, kl);
      CHECK_CLOSE("loss", out.loss, std::vector<double>{ref.loss}, attention_test::tol(1e-6, 1e-4));
      CHECK_CLOSE("grad", out.grad, ref.grad, attention_test::scaled(ref.grad, 1e-5, 1e-4));
    }
  }
}

TEST_CASE("attention map: 16-bit CPU inputs accumulate in float", "[attention][map][dtype]") {
  distill_test::rng g(405);
  for (int trial = 0; trial < 10; ++trial) {
    am_case c = random_case(g);
    const auto s = attention_test::rounded<bfloat16>(student_values(g, c));
    const auto t = attention_test::rounded<float16>(teacher_values(g, c));
    const auto ref = reference(c, s, t);
    auto out = run_library<bfloat16, float16>(c, s, t, 0, g, 2);
    REQUIRE(out.st.ok());
    const auto expect = expected_loss(ref, c.opt.reduction);
    CAPTURE(trial);
    CHECK_CLOSE("loss", out.loss, expect, attention_test::scaled(expect, 1e-5, 1e-4, 1e-7));
    CHECK_CLOSE("grad_student (bfloat16)", out.grad, ref.grad, attention_test::scaled(ref.grad, 1e-2, 1e-2, 1e-6));
  }
}

TEST_CASE("attention map properties", "[attention][map][properties]") {
  distill_test::rng g(406);
  const int B = 2, H = 3, Lq = 4, Lk = 11;
  const std::size_t n = static_cast<std::size_t>(B) * H * Lq * Lk;
  const auto z = g.normals(n, 0, 2);
  auto zv = make_view(z.data(), B, H, Lq, Lk);
  std::vector<double> grad(n);
  auto gv = make_view(grad.data(), B, H, Lq, Lk);

  SECTION("zero loss and zero gradient when student = teacher") {
    for (bool kl : {false, true}) {
      double l = -1;
      auto st = kl ? attention_map_kl_teacher_student_forward_backward(cpu{2}, zv, zv, {}, make_view(&l, 1), gv, {})
                   : attention_map_mse_forward_backward(cpu{2}, zv, zv, {}, make_view(&l, 1), gv, {});
      REQUIRE(st.ok());
      CHECK(std::fabs(l) < 1e-15);
      for (double v : grad) CHECK(std::fabs(v) < 1e-15);
    }
  }
  SECTION("group_mean over identical teacher heads equals one_to_one; index equals a permuted teacher") {
    const int G = 3;
    const auto t = g.normals(n, 0, 2);
    std::vector<double> tg(n * G), tp(n);
    const std::size_t row = static_cast<std::size_t>(Lq) * Lk;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        for (int k = 0; k < G; ++k)
          std::copy_n(&t[(b * H + h) * row], row, &tg[((b * H * G) + h * G + k) * row]);
        std::copy_n(&t[(b * H + h) * row], row, &tp[(b * H + (H - 1 - h)) * row]);  // reversed heads
      }
    for (bool kl : {false, true}) {
      double l1 = 0, l2 = 0, l3 = 0;
      std::vector<double> g1(n), g2(n), g3(n);
      attention_map_options o1, o2, o3;
      o2.head_map = attention_head_map::group_mean;
      const std::vector<int> reversed = {2, 1, 0};
      o3.head_map = attention_head_map::index;
      o3.teacher_heads = reversed;
      auto tv = make_view(t.data(), B, H, Lq, Lk);
      auto tgv = make_view(tg.data(), B, H * G, Lq, Lk);
      auto tpv = make_view(tp.data(), B, H, Lq, Lk);
      auto call = [&](auto teacher, double& l, std::vector<double>& gg, const attention_map_options& o) {
        auto gvv = make_view(gg.data(), B, H, Lq, Lk);
        return kl ? attention_map_kl_teacher_student_forward_backward(cpu{1}, zv, teacher, {}, make_view(&l, 1), gvv, {}, o)
                  : attention_map_mse_forward_backward(cpu{1}, zv, teacher, {}, make_view(&l, 1), gvv, {}, o);
      };
      REQUIRE(call(tv, l1, g1, o1).ok());
      REQUIRE(call(tgv, l2, g2, o2).ok());
      REQUIRE(call(tpv, l3, g3, o3).ok());
      CAPTURE(kl);
      CHECK(l1 > 0);
      CHECK_CLOSE_SCALAR("group_mean loss", l2, l1, distill_test::tol::f64);
      CHECK_CLOSE_SCALAR("index loss", l3, l1, distill_test::tol::f64);
      CHECK_CLOSE("group_mean grad", g2, g1, attention_test::scaled(g1, 1e-13, 1e-10));
      CHECK_CLOSE("index grad", g3, g1, attention_test::scaled(g1, 1e-13, 1e-10));
    }
  }
  SECTION("-inf logits are the same as masked keys") {
    std::vector<std::uint8_t> km(static_cast<std::size_t>(B) * Lk, 1);
    km[3] = km[7] = km[Lk + 0] = 0;
    auto s2 = z, t = g.normals(n, 0, 2), t2 = t;
    for (std::size_t r = 0; r < n / Lk; ++r) {
      const int b = static_cast<int>(r / (H * Lq));
      for (int j = 0; j < Lk; ++j)
        if (!km[b * Lk + j]) s2[r * Lk + j] = t2[r * Lk + j] = -std::numeric_limits<double>::infinity();
    }
    for (bool kl : {false, true}) {
      double la = 0, lb = 0;
      std::vector<double> ga(n), gb(n);
      attention_map_options o;
      o.reduction = reduction::sum;
      const attention_masks<host_space> masks{make_view(static_cast<const std::uint8_t*>(km.data()), B, Lk), {}};
      auto run = [&](const std::vector<double>& sv, const std::vector<double>& tv, const attention_masks<host_space>& m, double& l,
                     std::vector<double>& gg) {
        auto a = make_view(sv.data(), B, H, Lq, Lk);
        auto b = make_view(tv.data(), B, H, Lq, Lk);
        auto gg_v = make_view(gg.data(), B, H, Lq, Lk);
        return kl ? attention_map_kl_teacher_student_forward_backward(cpu{1}, a, b, m, make_view(&l, 1), gg_v, {}, o)
                  : attention_map_mse_forward_backward(cpu{1}, a, b, m, make_view(&l, 1), gg_v, {}, o);
      };
      REQUIRE(run(z, t, masks, la, ga).ok());
      REQUIRE(run(s2, t2, {}, lb, gb).ok());
      CAPTURE(kl);
      CHECK_CLOSE_SCALAR("loss", lb, la, distill_test::tol::f64);
      CHECK_CLOSE("grad", gb, ga, attention_test::scaled(ga, 1e-13, 1e-10));
      CHECK(la >= 0);
    }
  }
}

TEST_CASE("attention map: fully masked and masked-query rows contribute nothing", "[attention][map][masks]") {
  distill_test::rng g(407);
  const int B = 3, H = 2, Lq = 3, Lk = 9;
  const std::size_t n = static_cast<std::size_t>(B) * H * Lq * Lk;
  const auto s = g.normals(n, 0, 2), t = g.normals(n, 0, 2);
  std::vector<std::uint8_t> km(static_cast<std::size_t>(B) * Lk, 1), qm(static_cast<std::size_t>(B) * Lq, 1);
  std::fill(km.begin() + Lk, km.begin() + 2 * Lk, 0);  // sample 1: no valid key
  qm[2 * Lq + 1] = 0;                                   // sample 2, query 1 masked
  const attention_masks<host_space> masks{make_view(static_cast<const std::uint8_t*>(km.data()), B, Lk),
                                          make_view(static_cast<const std::uint8_t*>(qm.data()), B, Lq)};
  for (bool kl : {false, true}) {
    std::vector<double> rows(static_cast<std::size_t>(B) * H * Lq, -1.0), grad(n, 42.0);
    attention_map_options o;
    o.reduction = reduction::none;
    auto sv = make_view(s.data(), B, H, Lq, Lk), tv = make_view(t.data(), B, H, Lq, Lk);
    auto gv = make_view(grad.data(), B, H, Lq, Lk);
    auto rv = make_view(rows.data(), static_cast<index_t>(rows.size()));
    REQUIRE((kl ? attention_map_kl_teacher_student_forward_backward(cpu{2}, sv, tv, masks, rv, gv, {}, o)
                : attention_map_mse_forward_backward(cpu{2}, sv, tv, masks, rv, gv, {}, o))
                .ok());
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < Lq; ++i) {
        CHECK(rows[(1 * H + h) * Lq + i] == 0.0);
        for (int j = 0; j < Lk; ++j) CHECK(grad[((1 * H + h) * Lq + i) * Lk + j] == 0.0);
      }
    for (int h = 0; h < H; ++h) {
      CHECK(rows[(2 * H + h) * Lq + 1] == 0.0);
      for (int j = 0; j < Lk; ++j) CHECK(grad[((2 * H + h) * Lq + 1) * Lk + j] == 0.0);
    }
    // mean divides by the valid elements (mse) or rows (kl) only.
    double mean = 0;
    o.reduction = reduction::mean;
    REQUIRE((kl ? attention_map_kl_teacher_student_forward(cpu{1}, sv, tv, masks, make_view(&mean, 1), {}, o)
                : attention_map_mse_forward(cpu{1}, sv, tv, masks, make_view(&mean, 1), {}, o))
                .ok());
    const double total = std::accumulate(rows.begin(), rows.end(), 0.0);
    const double valid_rows = H * (Lq + 0 + (Lq - 1));  // samples 0 and 2; sample 1 has no keys
    CHECK_CLOSE_SCALAR("mean", mean, total / (kl ? valid_rows : valid_rows * Lk), distill_test::tol::f64);
  }
  // Everything masked: loss 0 and gradient 0, not NaN.
  std::vector<std::uint8_t> none(static_cast<std::size_t>(B) * Lk, 0);
  double l = -1;
  std::vector<double> grad(n, 1.0);
  REQUIRE(attention_map_mse_forward_backward(cpu{1}, make_view(s.data(), B, H, Lq, Lk), make_view(t.data(), B, H, Lq, Lk),
                                             {make_view(static_cast<const std::uint8_t*>(none.data()), B, Lk), {}},
                                             make_view(&l, 1), make_view(grad.data(), B, H, Lq, Lk), {})
              .ok());
  CHECK(l == 0.0);
  for (double v : grad) CHECK(v == 0.0);
}

TEST_CASE("attention map: NaN in a row stays in that row", "[attention][map][nan]") {
  distill_test::rng g(408);
  const int B = 2, H = 1, Lq = 3, Lk = 5;
  const std::size_t n = static_cast<std::size_t>(B) * H * Lq * Lk;
  auto s = g.normals<float>(n, 0, 1);
  const auto t = g.normals<float>(n, 0, 1);
  s[1 * Lk + 2] = std::numeric_limits<float>::quiet_NaN();  // row 1
  s[4 * Lk + 0] = s[4 * Lk + 1] = s[4 * Lk + 2] = s[4 * Lk + 3] = s[4 * Lk + 4] = std::numeric_limits<float>::quiet_NaN();
  for (bool kl : {false, true}) {
    std::vector<float> rows(static_cast<std::size_t>(B) * H * Lq), grad(n);
    attention_map_options o;
    o.reduction = reduction::none;
    auto sv = make_view(static_cast<const float*>(s.data()), B, H, Lq, Lk);
    auto tv = make_view(static_cast<const float*>(t.data()), B, H, Lq, Lk);
    auto gv = make_view(grad.data(), B, H, Lq, Lk);
    auto rv = make_view(rows.data(), static_cast<index_t>(rows.size()));
    REQUIRE((kl ? attention_map_kl_teacher_student_forward_backward(cpu{1}, sv, tv, {}, rv, gv, {}, o)
                : attention_map_mse_forward_backward(cpu{1}, sv, tv, {}, rv, gv, {}, o))
                .ok());
    for (int r = 0; r < B * H * Lq; ++r) {
      CAPTURE(kl, r);
      const bool bad = r == 1 || r == 4;
      CHECK(std::isnan(rows[r]) == bad);
      for (int j = 0; j < Lk; ++j) CHECK(std::isnan(grad[r * Lk + j]) == bad);
    }
  }
}

TEST_CASE("attention map: the gradient may overwrite the student in place", "[attention][map][inplace]") {
  distill_test::rng g(410);
  const int B = 2, H = 3, Lq = 4, Lk = 37;
  const std::size_t n = static_cast<std::size_t>(B) * H * Lq * Lk;
  const auto s = g.normals<float>(n, 0, 2), t = g.normals<float>(n, 0, 2);
  for (bool kl : {false, true}) {
    std::vector<float> grad(n), inplace(s);
    float l1 = 0, l2 = 0;
    auto tv = make_view(t.data(), B, H, Lq, Lk);
    auto run = [&](host_view<const float, 4> sv, std::vector<float>& out, float& l) {
      auto gv = make_view(out.data(), B, H, Lq, Lk);
      return kl ? attention_map_kl_teacher_student_forward_backward(cpu{2}, sv, tv, {}, make_view(&l, 1), gv, {})
                : attention_map_mse_forward_backward(cpu{2}, sv, tv, {}, make_view(&l, 1), gv, {});
    };
    REQUIRE(run(make_view(s.data(), B, H, Lq, Lk), grad, l1).ok());
    REQUIRE(run(make_view(static_cast<const float*>(inplace.data()), B, H, Lq, Lk), inplace, l2).ok());
    CHECK(l1 == l2);
    CHECK(inplace == grad);
  }
}

TEST_CASE("attention map: bad inputs give a status naming the argument", "[attention][map][errors]") {
  std::vector<float> a(2 * 4 * 3 * 5, 0.1f), b(2 * 12 * 3 * 5, 0.1f), gb(a.size()), lossb(2 * 4 * 3);
  std::vector<std::uint8_t> mk(2 * 5, 1);
  auto s = make_view(static_cast<const float*>(a.data()), 2, 4, 3, 5);
  auto t12 = make_view(static_cast<const float*>(b.data()), 2, 12, 3, 5);
  auto t4 = make_view(static_cast<const float*>(b.data()), 2, 4, 3, 5);
  auto grad = make_view(gb.data(), 2, 4, 3, 5);
  auto l1 = make_view(lossb.data(), 1);
  const cpu ctx{1};
  auto expect = [](const status& st, errc code, const std::string& needle) {
    CAPTURE(st.to_string());
    CHECK(st.code() == code);
    CHECK(st.message().find(needle) != std::string::npos);
  };
  expect(attention_map_mse_forward(ctx, s, t12, {}, l1, {}), errc::shape_mismatch, "'teacher' has 12 heads but 'student' has 4");
  attention_map_options o;
  o.head_map = attention_head_map::group_mean;
  CHECK(attention_map_mse_forward(ctx, s, t12, {}, l1, {}, o).ok());
  expect(attention_map_mse_forward(ctx, s, make_view(static_cast<const float*>(b.data()), 2, 10, 3, 5), {}, l1, {}, o),
         errc::shape_mismatch, "not a multiple");
  o.head_map = attention_head_map::index;
  const std::vector<int> three = {0, 1, 2}, bad = {0, 1, 12, 3}, good = {11, 0, 5, 5};
  o.teacher_heads = three;
  expect(attention_map_mse_forward(ctx, s, t12, {}, l1, {}, o), errc::invalid_argument, "'teacher_heads' has 3 entries");
  o.teacher_heads = bad;
  expect(attention_map_mse_forward(ctx, s, t12, {}, l1, {}, o), errc::invalid_argument, "'teacher_heads[2]' is 12");
  o.teacher_heads = good;
  CHECK(attention_map_kl_teacher_student_forward(ctx, s, t12, {}, l1, {}, o).ok());
  o.head_map = attention_head_map::one_to_one;
  expect(attention_map_mse_forward(ctx, s, t4, {}, l1, {}, o), errc::invalid_argument, "'teacher_heads' is given");
  o = {};
  // Batch / query / key lengths.
  expect(attention_map_mse_forward(ctx, s, make_view(static_cast<const float*>(b.data()), 2, 4, 3, 4), {}, l1, {}),
         errc::shape_mismatch, "'teacher' has shape [2, 4, 3, 4]");
  expect(attention_map_mse_forward(ctx, s, make_view(static_cast<const float*>(b.data()), 1, 4, 3, 5), {}, l1, {}),
         errc::shape_mismatch, "'teacher'");
  // Masks of the wrong shape.
  expect(attention_map_mse_forward(ctx, s, t4, {make_view(static_cast<const std::uint8_t*>(mk.data()), 2, 4), {}}, l1, {}),
         errc::shape_mismatch, "'key_mask'");
  expect(attention_map_mse_forward(ctx, s, t4, {{}, make_view(static_cast<const std::uint8_t*>(mk.data()), 2, 5)}, l1, {}),
         errc::shape_mismatch, "'query_mask'");
  // Outputs.
  expect(attention_map_mse_forward(ctx, s, t4, {}, make_view(lossb.data(), 2), {}), errc::shape_mismatch, "'loss'");
  o.reduction = reduction::none;
  expect(attention_map_mse_forward(ctx, s, t4, {}, l1, {}, o), errc::shape_mismatch, "one loss per row");
  CHECK(attention_map_mse_forward(ctx, s, t4, {}, make_view(lossb.data(), 24), {}, o).ok());
  o = {};
  expect(attention_map_mse_backward(ctx, s, t4, {}, make_view(gb.data(), 2, 4, 5, 3), {}), errc::shape_mismatch, "'grad_student'");
  expect(attention_map_mse_backward(ctx, s, t4, {}, host_view<float, 4>{}, {}), errc::invalid_argument, "'grad_student'");
  expect(attention_map_mse_forward(ctx, host_view<const float, 4>{}, t4, {}, l1, {}), errc::invalid_argument, "'student'");
  o.grad_scale = std::numeric_limits<double>::quiet_NaN();
  expect(attention_map_mse_backward(ctx, s, t4, {}, grad, {}, o), errc::invalid_argument, "'grad_scale'");
  o = {};
  o.reduction = static_cast<reduction>(17);
  expect(attention_map_mse_forward(ctx, s, t4, {}, l1, {}, o), errc::invalid_argument, "'reduction'");
  for (float v : gb) CHECK(v == 0.0f);
}
