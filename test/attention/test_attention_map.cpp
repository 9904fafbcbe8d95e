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

#include "attention/tensor4.hpp"
#include "distill/attention/attention_map.hpp"
#include "reference/attention_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using attention_test::strided4;

namespace {

struct am_shape {
  int B, Hs, Ht, Lq, Lk;
};

struct am_case {
  am_shape sh;
  attention_map_options opt;
  std::vector<int> heads;  // storage behind opt.teacher_heads
  bool kl = false;
  std::vector<std::uint8_t> key_mask, query_mask;  // empty: absent
};

attention_ref::am_config ref_config(const am_case& c) {
  attention_ref::am_config r;
  r.kl = c.kl;
  r.student_logits = c.opt.student_input == attention_input::logits;
  r.teacher_logits = c.opt.teacher_input == attention_input::logits;
  r.map = c.opt.head_map == attention_head_map::one_to_one ? attention_ref::heads::one_to_one
          : c.opt.head_map == attention_head_map::index    ? attention_ref::heads::index
                                                           : attention_ref::heads::group_mean;
  r.teacher_heads = c.heads;
  r.reduction = c.opt.reduction == reduction::none ? 0 : c.opt.reduction == reduction::sum ? 1 : c.opt.reduction == reduction::mean ? 2 : 3;
  r.grad_scale = c.opt.grad_scale;
  return r;
}

/// Rows of probabilities over all keys (softmax of normals with deviation sd), some entries
/// exactly 0 when `zeros`. Student rows use a small sd: KL's gradient -p_t/p_s is steep at tiny
/// p_s, where central differences lose accuracy.
std::vector<double> probability_rows(distill_test::rng& g, std::size_t rows, int Lk, bool zeros, double sd) {
  std::vector<double> v(rows * Lk);
  for (std::size_t r = 0; r < rows; ++r) {
    double z = 0;
    for (int j = 0; j < Lk; ++j) z += v[r * Lk + j] = (zeros && g.coin(0.2)) ? 0.0 : std::exp(g.normal(0, sd));
    if (z == 0) v[r * Lk] = z = 1.0;
    for (int j = 0; j < Lk; ++j) v[r * Lk + j] /= z;
  }
  return v;
}

am_case random_case(distill_test::rng& g, bool small = false) {
  am_case c;
  const int Hs = static_cast<int>(g.integer(1, small ? 2 : 4));
  c.sh = {static_cast<int>(g.integer(1, small ? 2 : 3)), Hs, Hs, static_cast<int>(g.integer(1, small ? 3 : 5)),
          static_cast<int>(g.integer(1, small ? 9 : 70))};
  if (g.coin(0.1)) c.sh.Lk = 1;
  if (g.coin(0.25)) c.sh.Lk = small ? 8 : 64;  // whole SIMD batches: the CPU path's rows-in-registers form
  c.kl = g.coin();
  c.opt.student_input = g.coin(0.7) ? attention_input::logits : attention_input::probabilities;
  c.opt.teacher_input = g.coin(0.6) ? attention_input::logits : attention_input::probabilities;
  const int map = static_cast<int>(g.integer(0, 2));
  if (map == 1) {
    c.opt.head_map = attention_head_map::index;
    c.sh.Ht = static_cast<int>(g.integer(1, 5));
    for (int h = 0; h < Hs; ++h) c.heads.push_back(static_cast<int>(g.integer(0, c.sh.Ht - 1)));
  } else if (map == 2) {
    c.opt.head_map = attention_head_map::group_mean;
    c.sh.Ht = Hs * static_cast<int>(g.integer(1, 3));
  }
  const reduction reds[] = {reduction::mean, reduction::sum, reduction::none, reduction::batchmean};
  c.opt.reduction = reds[g.integer(0, 3)];
  c.opt.grad_scale = g.coin(0.3) ? 2.5 : 1.0;
  if (g.coin(0.5)) {
    c.key_mask.resize(static_cast<std::size_t>(c.sh.B) * c.sh.Lk);
    for (auto& m : c.key_mask) m = g.coin(0.75) ? static_cast<std::uint8_t>(g.integer(1, 255)) : 0;
    if (g.coin(0.2)) std::fill(c.key_mask.begin(), c.key_mask.begin() + c.sh.Lk, 0);  // a fully masked sample
  }
  if (g.coin(0.3)) {
    c.query_mask.resize(static_cast<std::size_t>(c.sh.B) * c.sh.Lq);
    for (auto& m : c.query_mask) m = g.coin(0.7);
  }
  return c;
}

std::vector<double> student_values(distill_test::rng& g, const am_case& c) {
  const std::size_t rows = static_cast<std::size_t>(c.sh.B) * c.sh.Hs * c.sh.Lq;
  if (c.opt.student_input == attention_input::probabilities) return probability_rows(g, rows, c.sh.Lk, false, 0.7);
  return g.normals(rows * c.sh.Lk, 0, 2);
}
std::vector<double> teacher_values(distill_test::rng& g, const am_case& c) {
  const std::size_t rows = static_cast<std::size_t>(c.sh.B) * c.sh.Ht * c.sh.Lq;
  if (c.opt.teacher_input == attention_input::probabilities) return probability_rows(g, rows, c.sh.Lk, true, 1.5);
  return g.normals(rows * c.sh.Lk, 0, 2);
}

struct am_outputs {
  std::vector<double> loss, grad;
  bool grad_outside_intact = true, loss_intact = true;
  status st;
};

/// Masks in padded storage (row stride Lk + pad, and sometimes stride 2 along keys).
struct mask_storage {
  std::vector<std::uint8_t> buf;
  host_view<const std::uint8_t, 2> view;
  mask_storage(const std::vector<std::uint8_t>& m, int rows, int cols, distill_test::rng& g) {
    if (m.empty()) return;
    const index_t inner = g.coin(0.3) ? 2 : 1, ld = (cols - 1) * inner + 1 + g.integer(0, 3);
    buf.assign(static_cast<std::size_t>(rows * ld), 0xAB);
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < cols; ++j) buf[static_cast<std::size_t>(r * ld + j * inner)] = m[static_cast<std::size_t>(r) * cols + j];
    view = make_strided_view(static_cast<const std::uint8_t*>(buf.data()), std::array<index_t, 2>{rows, cols},
                             std::array<index_t, 2>{ld, inner});
  }
};

/// pass 0: forward_backward, 1: forward, 2: backward.
template <class T, class TT = T>
am_outputs run_library(am_case& c, const std::vector<double>& s, const std::vector<double>& t, int pass,
                       distill_test::rng& g, int threads, const std::vector<double>* grad_init = nullptr) {
  c.opt.teacher_heads = c.heads;
  const auto& sh = c.sh;
  auto pads = [&] {
    return g.coin(0.6) ? std::array<index_t, 3>{g.integer(0, 3), g.integer(0, 3), g.integer(0, 3)} : std::array<index_t, 3>{0, 0, 0};
  };
  strided4<T> xs({sh.B, sh.Hs, sh.Lq, sh.Lk}, pads(), g.coin(0.2) ? 2 : 1);
  strided4<TT> xt({sh.B, sh.Ht, sh.Lq, sh.Lk}, pads(), g.coin(0.2) ? 2 : 1);
  strided4<T> gr({sh.B, sh.Hs, sh.Lq, sh.Lk}, pads(), g.coin(0.2) ? 3 : 1);
  xs.set(s);
  xt.set(t);
  if (grad_init) gr.set(*grad_init);
  mask_storage km(c.key_mask, sh.B, sh.Lk, g), qm(c.query_mask, sh.B, sh.Lq, g);
  const attention_masks<host_space> masks{km.view, qm.view};
  using Acc = accum_t<T>;
  const std::size_t nloss = c.opt.reduction == reduction::none ? static_cast<std::size_t>(sh.B) * sh.Hs * sh.Lq : 1;
  distill_test::guarded<Acc> loss(nloss);
  auto lv = make_view(loss.data(), static_cast<index_t>(nloss));
  const cpu ctx{threads};
  am_outputs out;
  if (c.kl) {
    if (pass == 0) out.st = attention_map_kl_teacher_student_forward_backward(ctx, xs.cview(), xt.cview(), masks, lv, gr.view(), {}, c.opt);
    if (pass == 1) out.st = attention_map_kl_teacher_student_forward(ctx, xs.cview(), xt.cview(), masks, lv, {}, c.opt);
    if (pass == 2) out.st = attention_map_kl_teacher_student_backward(ctx, xs.view(), xt.view(), masks, gr.view(), {}, c.opt);
  } else {
    if (pass == 0) out.st = attention_map_mse_forward_backward(ctx, xs.cview(), xt.cview(), masks, lv, gr.view(), {}, c.opt);
    if (pass == 1) out.st = attention_map_mse_forward(ctx, xs.cview(), xt.cview(), masks, lv, {}, c.opt);
    if (pass == 2) out.st = attention_map_mse_backward(ctx, xs.view(), xt.view(), masks, gr.view(), {}, c.opt);
  }
  if (pass != 2) out.loss.assign(loss.data(), loss.data() + nloss);
  if (pass != 1) out.grad = gr.logical();
  out.grad_outside_intact = gr.outside_intact();
  out.loss_intact = loss.intact();
  return out;
}

std::vector<double> expected_loss(const attention_ref::am_result& r, reduction red) {
  return red == reduction::none ? r.per_row : std::vector<double>{r.loss};
}

attention_ref::am_result reference(const am_case& c, const std::vector<double>& s, const std::vector<double>& t) {
  return attention_ref::attention_map(s, t, c.sh.B, c.sh.Hs, c.sh.Ht, c.sh.Lq, c.sh.Lk, c.key_mask, c.query_mask, ref_config(c));
}

}  // namespace

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
    CHECK(out.grad_outside_intact);
    CHECK(out.loss_intact);
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
