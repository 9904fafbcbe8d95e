// SPDX-License-Identifier: MIT
// Attention transfer (CPU): the double reference against finite differences, the library against
// the reference (float, double, 16-bit inputs; odd and 1x1 maps, padded and strided views, every
// option), the multi-layer form, properties, bad inputs, NaN, canaries.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/attention_transfer_harness.hpp"
#include "attention/attention_test_util.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "reference/attention_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using namespace at_test;

TEST_CASE("attention transfer reference: gradient matches central finite differences", "[attention][at][reference]") {
  distill_test::rng g(301);
  for (int trial = 0; trial < 40; ++trial) {
    shape sh = random_shape(g);
    sh.B = std::min(sh.B, 2);
    auto opt = random_options(g);
    const auto s = features(g, static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W);
    const auto t = features(g, static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W);
    const auto cfg = ref_config(opt, 0.8);
    const auto ref = attention_ref::attention_transfer(s, sh.B, sh.Cs, t, sh.Ct, sh.H, sh.W, cfg);
    auto f = [&](const std::vector<double>& x) {
      return attention_ref::attention_transfer(x, sh.B, sh.Cs, t, sh.Ct, sh.H, sh.W, cfg).loss;
    };
    auto num = distill_test::numeric_gradient(f, s);
    for (auto& v : num) v *= cfg.grad_scale;
    CAPTURE(trial, sh.B, sh.Cs, sh.Ct, sh.H, sh.W, opt.p, static_cast<int>(opt.form), static_cast<int>(opt.reduction));
    CHECK_CLOSE("reference gradient vs finite differences", ref.grad, num, attention_test::scaled(num, 1e-6, 1e-5, 1e-9));
  }
}

TEMPLATE_TEST_CASE("attention transfer matches the double reference", "[attention][at]", float, double) {
  distill_test::rng g(302);
  const bool f64 = std::is_same_v<TestType, double>;
  for (int trial = 0; trial < 120; ++trial) {
    const shape sh = random_shape(g);
    auto opt = random_options(g);
    opt.accumulate = g.coin(0.2);
    const int pass = static_cast<int>(g.integer(0, 2));
    const int threads = static_cast<int>(g.integer(1, 3));
    const auto s = attention_test::rounded<TestType>(features(g, static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W));
    const auto t = attention_test::rounded<TestType>(features(g, static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W));
    const auto init = attention_test::rounded<TestType>(g.normals(s.size()));
    const auto ref = attention_ref::attention_transfer(s, sh.B, sh.Cs, t, sh.Ct, sh.H, sh.W, ref_config(opt));
    auto out = run_library<TestType>(sh, s, t, opt, pass, g, threads, opt.accumulate ? &init : nullptr);
    CAPTURE(trial, pass, threads, sh.B, sh.Cs, sh.Ct, sh.H, sh.W, opt.p, static_cast<int>(opt.form),
            static_cast<int>(opt.reduction), opt.accumulate);
    REQUIRE(out.st.ok());
    if (pass != 2) {
      const auto expect = reduced_loss(ref, opt.reduction);
      CHECK_CLOSE("loss", out.loss, expect, f64 ? attention_test::tol(1e-13, 1e-10) : attention_test::scaled(expect, 2e-6, 2e-4, 1e-7 * opt.beta));
    }
    if (pass != 1) {
      auto expect = ref.grad;
      if (opt.accumulate)
        for (std::size_t i = 0; i < expect.size(); ++i) expect[i] += init[i];
      CHECK_CLOSE("grad_student", out.grad, expect,
                  f64 ? attention_test::scaled(expect, 1e-12, 1e-10) : attention_test::scaled(expect, 1e-5, 1e-3));
    }
    CHECK(out.canaries_ok);
  }
}

TEST_CASE("attention transfer backward matches finite differences of its own forward", "[attention][at]") {
  distill_test::rng g(303);
  for (int trial = 0; trial < 12; ++trial) {
    shape sh = random_shape(g);
    sh.B = std::min(sh.B, 2);
    auto opt = random_options(g);
    if (opt.reduction == reduction::none) opt.reduction = reduction::sum;
    const auto s = features(g, static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W);
    const auto t = features(g, static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W);
    auto forward = [&](const std::vector<double>& x) {
      double l = 0;
      auto st = attention_transfer_forward(cpu{1}, make_view(x.data(), sh.B, sh.Cs, sh.H, sh.W),
                                           make_view(t.data(), sh.B, sh.Ct, sh.H, sh.W), make_view(&l, 1), {}, opt);
      REQUIRE(st.ok());
      return l;
    };
    auto num = distill_test::numeric_gradient(forward, s);
    for (auto& v : num) v *= opt.grad_scale;
    std::vector<double> grad(s.size());
    REQUIRE(attention_transfer_backward(cpu{2}, make_view(s.data(), sh.B, sh.Cs, sh.H, sh.W),
                                        make_view(t.data(), sh.B, sh.Ct, sh.H, sh.W),
                                        make_view(grad.data(), sh.B, sh.Cs, sh.H, sh.W), {}, opt)
                .ok());
    CAPTURE(trial, opt.p, static_cast<int>(opt.form));
    CHECK_CLOSE("backward vs finite differences of forward", grad, num, attention_test::scaled(num, 1e-6, 1e-5, 1e-9));
  }
}

TEST_CASE("attention transfer: 16-bit CPU inputs accumulate in float", "[attention][at][dtype]") {
  distill_test::rng g(304);
  for (int trial = 0; trial < 10; ++trial) {
    const shape sh = random_shape(g);
    auto opt = random_options(g);
    const auto s = attention_test::rounded<bfloat16>(features(g, static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W));
    const auto t = attention_test::rounded<float16>(features(g, static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W));
    const auto ref = attention_ref::attention_transfer(s, sh.B, sh.Cs, t, sh.Ct, sh.H, sh.W, ref_config(opt));
    auto out = run_library<bfloat16, float16>(sh, s, t, opt, 0, g, 2);
    REQUIRE(out.st.ok());
    const auto expect = reduced_loss(ref, opt.reduction);
    CAPTURE(trial);
    CHECK_CLOSE("loss", out.loss, expect, attention_test::scaled(expect, 1e-5, 1e-4, 1e-7 * opt.beta));
    // The gradient is stored in bfloat16: 8 bits of mantissa.
    CHECK_CLOSE("grad_student", out.grad, ref.grad, attention_test::scaled(ref.grad, 1e-2, 1e-2, 1e-6 * opt.beta));
  }
}

TEST_CASE("attention transfer: several layer pairs in one call", "[attention][at][layers]") {
  distill_test::rng g(305);
  const shape shapes[] = {{3, 4, 6, 5, 7}, {3, 2, 3, 1, 1}, {3, 5, 5, 4, 4}};
  const double weights[] = {0.5, 2.0, 1.0};
  for (reduction red : {reduction::mean, reduction::none, reduction::sum}) {
    attention_transfer_options opt;
    opt.reduction = red;
    opt.beta = 1e3;
    std::vector<std::vector<double>> s(3), t(3), grads(3);
    std::vector<attention_transfer_layer<double, double>> layers;
    for (int j = 0; j < 3; ++j) {
      const shape& sh = shapes[j];
      s[j] = features(g, static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W);
      t[j] = features(g, static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W);
      grads[j].assign(s[j].size(), 7.0);
      layers.push_back({make_view(static_cast<const double*>(s[j].data()), sh.B, sh.Cs, sh.H, sh.W),
                        make_view(static_cast<const double*>(t[j].data()), sh.B, sh.Ct, sh.H, sh.W),
                        make_view(grads[j].data(), sh.B, sh.Cs, sh.H, sh.W), weights[j]});
    }
    const std::size_t nloss = red == reduction::none ? 3 : 1;
    std::vector<double> loss(nloss, 99.0);
    REQUIRE(attention_transfer_forward_backward(cpu{2}, layers, make_view(loss.data(), static_cast<index_t>(nloss)), {}, opt).ok());
    std::vector<double> expect(nloss, 0.0);
    for (int j = 0; j < 3; ++j) {
      const shape& sh = shapes[j];
      const auto ref = attention_ref::attention_transfer(s[j], sh.B, sh.Cs, t[j], sh.Ct, sh.H, sh.W, ref_config(opt, weights[j]));
      const auto l = reduced_loss(ref, red);
      for (std::size_t k = 0; k < nloss; ++k) expect[k] += l[k];
      CHECK_CLOSE("grad of layer " << j, grads[j], ref.grad, attention_test::scaled(ref.grad, 1e-12, 1e-10));
    }
    CHECK_CLOSE("summed loss", loss, expect, distill_test::tol::f64);
    // forward alone, through a std::span of const layers, agrees.
    std::vector<double> loss2(nloss);
    REQUIRE(attention_transfer_forward(cpu{1}, std::span<const attention_transfer_layer<double, double>>(layers),
                                       make_view(loss2.data(), static_cast<index_t>(nloss)), {}, opt)
                .ok());
    CHECK_CLOSE("forward-only summed loss", loss2, expect, distill_test::tol::f64);
    // backward alone overwrites (accumulate = false) with the same gradients.
    for (auto& gj : grads) std::fill(gj.begin(), gj.end(), -3.0);
    REQUIRE(attention_transfer_backward(cpu{2}, layers, {}, opt).ok());
    for (int j = 0; j < 3; ++j) {
      const shape& sh = shapes[j];
      const auto ref = attention_ref::attention_transfer(s[j], sh.B, sh.Cs, t[j], sh.Ct, sh.H, sh.W, ref_config(opt, weights[j]));
      CHECK_CLOSE("backward-only grad of layer " << j, grads[j], ref.grad, attention_test::scaled(ref.grad, 1e-12, 1e-10));
    }
  }
}

TEST_CASE("attention transfer properties: zero at equality, invariant to positive scaling", "[attention][at][properties]") {
  distill_test::rng g(306);
  for (int trial = 0; trial < 20; ++trial) {
    shape sh = random_shape(g);
    sh.Ct = sh.Cs;
    auto opt = random_options(g);
    if (opt.reduction == reduction::none) opt.reduction = reduction::mean;
    const std::size_t n = static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W;
    const auto s = features(g, n);
    std::vector<float> sf(s.begin(), s.end()), gf(n);
    float loss = -1;
    auto sv = make_view(static_cast<const float*>(sf.data()), sh.B, sh.Cs, sh.H, sh.W);
    REQUIRE(attention_transfer_forward_backward(cpu{2}, sv, sv, make_view(&loss, 1), make_view(gf.data(), sh.B, sh.Cs, sh.H, sh.W), {}, opt).ok());
    CAPTURE(trial, opt.p, static_cast<int>(opt.form));
    CHECK(loss == 0.0f);  // the student's and teacher's maps are computed identically
    double gmax = 0;
    for (float v : gf) gmax = std::max(gmax, std::fabs(static_cast<double>(v)));
    CHECK(gmax <= 1e-6 * opt.beta);

    // Teacher with every channel duplicated has the same channel mean: loss ~ 0.
    std::vector<double> t2(static_cast<std::size_t>(sh.B) * 2 * sh.Cs * sh.H * sh.W);
    const std::size_t plane = static_cast<std::size_t>(sh.H) * sh.W;
    for (int b = 0; b < sh.B; ++b)
      for (int c = 0; c < 2 * sh.Cs; ++c)
        for (std::size_t k = 0; k < plane; ++k)
          t2[(static_cast<std::size_t>(b) * 2 * sh.Cs + c) * plane + k] = s[(static_cast<std::size_t>(b) * sh.Cs + c % sh.Cs) * plane + k];
    double l2 = -1;
    REQUIRE(attention_transfer_forward(cpu{1}, make_view(s.data(), sh.B, sh.Cs, sh.H, sh.W),
                                       make_view(t2.data(), sh.B, 2 * sh.Cs, sh.H, sh.W), make_view(&l2, 1), {}, opt)
                .ok());
    CHECK(std::fabs(l2) <= 1e-12 * opt.beta);

    // Positive scaling of either input leaves the loss unchanged; the gradient scales by 1/k.
    const auto t = features(g, n);
    const double k = g.uniform(0.1, 10.0), kt = g.uniform(0.1, 10.0);
    std::vector<double> sk(s), tk(t), g1(n), g2(n);
    for (auto& v : sk) v *= k;
    for (auto& v : tk) v *= kt;
    double la = 0, lb = 0;
    REQUIRE(attention_transfer_forward_backward(cpu{1}, make_view(s.data(), sh.B, sh.Cs, sh.H, sh.W),
                                                make_view(t.data(), sh.B, sh.Cs, sh.H, sh.W), make_view(&la, 1),
                                                make_view(g1.data(), sh.B, sh.Cs, sh.H, sh.W), {}, opt)
                .ok());
    REQUIRE(attention_transfer_forward_backward(cpu{1}, make_view(sk.data(), sh.B, sh.Cs, sh.H, sh.W),
                                                make_view(tk.data(), sh.B, sh.Cs, sh.H, sh.W), make_view(&lb, 1),
                                                make_view(g2.data(), sh.B, sh.Cs, sh.H, sh.W), {}, opt)
                .ok());
    CHECK(la >= 0);
    CHECK_CLOSE_SCALAR("loss under scaling", lb, la, attention_test::tol(1e-14, 1e-10));
    for (auto& v : g2) v *= k;
    CHECK_CLOSE("gradient under scaling (times k)", g2, g1, attention_test::scaled(g1, 1e-11, 1e-9));
  }
}

TEST_CASE("attention transfer: the gradient may overwrite the student in place", "[attention][at][inplace]") {
  distill_test::rng g(310);
  const int B = 3, Cs = 5, Ct = 7, H = 6, W = 5;
  const auto s = features(g, B * Cs * H * W), t = features(g, B * Ct * H * W);
  for (double p : {2.0, 1.0, 2.5}) {
    attention_transfer_options opt;
    opt.p = p;
    std::vector<double> grad(s.size()), inplace(s);
    double l1 = 0, l2 = 0;
    auto tv = make_view(t.data(), B, Ct, H, W);
    REQUIRE(attention_transfer_forward_backward(cpu{2}, make_view(s.data(), B, Cs, H, W), tv, make_view(&l1, 1),
                                                make_view(grad.data(), B, Cs, H, W), {}, opt)
                .ok());
    REQUIRE(attention_transfer_forward_backward(cpu{2}, make_view(static_cast<const double*>(inplace.data()), B, Cs, H, W), tv,
                                                make_view(&l2, 1), make_view(inplace.data(), B, Cs, H, W), {}, opt)
                .ok());
    CHECK(l1 == l2);
    CHECK(inplace == grad);
  }
}

TEST_CASE("attention transfer: 1x1 maps give zero loss and zero gradient", "[attention][at]") {
  distill_test::rng g(307);
  const int B = 3, Cs = 5, Ct = 2;
  const auto s = features(g, B * Cs), t = features(g, B * Ct);
  std::vector<float> sf(s.begin(), s.end()), tf(t.begin(), t.end()), gf(B * Cs, 5.0f);
  float loss = -1;
  attention_transfer_options opt;
  opt.beta = 1e3;
  REQUIRE(attention_transfer_forward_backward(cpu{1}, make_view(static_cast<const float*>(sf.data()), B, Cs, 1, 1),
                                              make_view(static_cast<const float*>(tf.data()), B, Ct, 1, 1),
                                              make_view(&loss, 1), make_view(gf.data(), B, Cs, 1, 1), {}, opt)
              .ok());
  CHECK(loss == 0.0f);  // u = 1 for both
  for (float v : gf) CHECK(std::fabs(v) < 1e-6f);
}

TEST_CASE("attention transfer: norm clamp follows F.normalize (zero and tiny student maps)", "[attention][at]") {
  distill_test::rng g(308);
  const int B = 2, Cs = 3, Ct = 4, H = 3, W = 5;
  for (double scale : {0.0, 1e-7}) {
    for (auto form : {attention_transfer_form::squared_mean, attention_transfer_form::paper_norm}) {
      auto s = features(g, B * Cs * H * W, scale);
      const auto t = features(g, B * Ct * H * W);
      attention_transfer_options opt;
      opt.form = form;
      opt.reduction = reduction::none;
      const auto ref = attention_ref::attention_transfer(s, B, Cs, t, Ct, H, W, ref_config(opt));
      std::vector<double> loss(B), grad(s.size());
      REQUIRE(attention_transfer_forward_backward(cpu{1}, make_view(s.data(), B, Cs, H, W), make_view(t.data(), B, Ct, H, W),
                                                  make_view(loss.data(), B), make_view(grad.data(), B, Cs, H, W), {}, opt)
                  .ok());
      CAPTURE(scale, static_cast<int>(form));
      CHECK_CLOSE("loss", loss, ref.per_sample, attention_test::tol(1e-13, 1e-9));
      CHECK_CLOSE("grad", grad, ref.grad, attention_test::scaled(ref.grad, 1e-9, 1e-8));
    }
  }
}

TEST_CASE("attention transfer: NaN in one sample stays in that sample", "[attention][at][nan]") {
  const int B = 3, C = 2, H = 2, W = 3;
  distill_test::rng g(309);
  auto s = features(g, B * C * H * W);
  const auto t = features(g, B * C * H * W);
  s[1 * C * H * W + 4] = std::numeric_limits<double>::quiet_NaN();
  std::vector<float> sf(s.begin(), s.end()), tf(t.begin(), t.end()), gf(s.size());
  std::vector<float> loss(B);
  attention_transfer_options opt;
  opt.reduction = reduction::none;
  REQUIRE(attention_transfer_forward_backward(cpu{2}, make_view(static_cast<const float*>(sf.data()), B, C, H, W),
                                              make_view(static_cast<const float*>(tf.data()), B, C, H, W),
                                              make_view(loss.data(), B), make_view(gf.data(), B, C, H, W), {}, opt)
              .ok());
  CHECK(std::isfinite(loss[0]));
  CHECK(std::isnan(loss[1]));
  CHECK(std::isfinite(loss[2]));
  for (int i = 0; i < B * C * H * W; ++i) {
    CAPTURE(i);
    CHECK(std::isnan(gf[i]) == (i / (C * H * W) == 1));
  }
  opt.reduction = reduction::mean;
  float total = 0;
  REQUIRE(attention_transfer_forward(cpu{1}, make_view(static_cast<const float*>(sf.data()), B, C, H, W),
                                     make_view(static_cast<const float*>(tf.data()), B, C, H, W), make_view(&total, 1), {}, opt)
              .ok());
  CHECK(std::isnan(total));
}

TEST_CASE("attention transfer: bad inputs give a status naming the argument", "[attention][at][errors]") {
  std::vector<float> a(2 * 3 * 4 * 5, 1.0f), b(2 * 6 * 4 * 5, 1.0f), c(2 * 6 * 4 * 4, 1.0f), gbuf(a.size());
  std::vector<float> loss(2);
  auto s = make_view(static_cast<const float*>(a.data()), 2, 3, 4, 5);
  auto t = make_view(static_cast<const float*>(b.data()), 2, 6, 4, 5);
  auto grad = make_view(gbuf.data(), 2, 3, 4, 5);
  auto l1 = make_view(loss.data(), 1);
  const cpu ctx{1};
  auto expect = [](const status& st, errc code, const std::string& needle) {
    CAPTURE(st.to_string());
    CHECK(st.code() == code);
    CHECK(st.message().find(needle) != std::string::npos);
  };
  // Spatial sizes differ.
  expect(attention_transfer_forward(ctx, s, make_view(static_cast<const float*>(c.data()), 2, 6, 4, 4), l1, {}),
         errc::shape_mismatch, "equal spatial sizes");
  // Batch sizes differ.
  expect(attention_transfer_forward(ctx, s, make_view(static_cast<const float*>(b.data()), 1, 6, 4, 5), l1, {}),
         errc::shape_mismatch, "'teacher' has batch size 1");
  // p <= 0, p NaN, beta < 0, eps <= 0, grad_scale inf.
  for (double p : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    attention_transfer_options o;
    o.p = p;
    expect(attention_transfer_forward(ctx, s, t, l1, {}, o), errc::invalid_argument, "'p'");
  }
  {
    attention_transfer_options o;
    o.beta = -1;
    expect(attention_transfer_forward(ctx, s, t, l1, {}, o), errc::invalid_argument, "'beta'");
    o = {};
    o.eps = 0;
    expect(attention_transfer_forward(ctx, s, t, l1, {}, o), errc::invalid_argument, "'eps'");
    o = {};
    o.grad_scale = std::numeric_limits<double>::infinity();
    expect(attention_transfer_backward(ctx, s, t, grad, {}, o), errc::invalid_argument, "'grad_scale'");
  }
  // Gradient of the wrong shape; loss of the wrong extent for each reduction.
  expect(attention_transfer_backward(ctx, s, t, make_view(gbuf.data(), 2, 3, 5, 4), {}), errc::shape_mismatch, "'grad_student'");
  expect(attention_transfer_forward(ctx, s, t, make_view(loss.data(), 2), {}), errc::shape_mismatch, "'loss'");
  {
    attention_transfer_options o;
    o.reduction = reduction::none;
    expect(attention_transfer_forward(ctx, s, t, l1, {}, o), errc::shape_mismatch, "one loss per sample");
  }
  // Absent inputs and outputs.
  expect(attention_transfer_forward(ctx, host_view<const float, 4>{}, t, l1, {}), errc::invalid_argument, "'student'");
  expect(attention_transfer_forward(ctx, s, t, host_view<float, 1>{}, {}), errc::invalid_argument, "'loss'");
  expect(attention_transfer_backward(ctx, s, t, host_view<float, 4>{}, {}), errc::invalid_argument, "'grad_student'");
  // Empty batch, negative stride.
  expect(attention_transfer_forward(ctx, make_view(static_cast<const float*>(a.data()), 0, 3, 4, 5), t, l1, {}),
         errc::shape_mismatch, "'student'");
  {
    auto neg = make_strided_view(static_cast<const float*>(a.data() + 59), std::array<index_t, 4>{1, 3, 4, 5},
                                 std::array<index_t, 4>{60, 20, 5, -1});
    expect(attention_transfer_forward(ctx, neg, make_view(static_cast<const float*>(b.data()), 1, 6, 4, 5), l1, {}),
           errc::unsupported_layout, "'student'");
  }
  // Multi-layer: empty list, batch mismatch between layers, bad weight; messages carry the index.
  std::vector<attention_transfer_layer<float, float>> layers;
  expect(attention_transfer_forward(ctx, layers, l1, {}), errc::invalid_argument, "'layers' is empty");
  layers.push_back({s, t, grad, 1.0});
  layers.push_back({make_view(static_cast<const float*>(a.data()), 1, 3, 4, 5), make_view(static_cast<const float*>(b.data()), 1, 6, 4, 5), {}, 1.0});
  expect(attention_transfer_forward(ctx, layers, l1, {}), errc::shape_mismatch, "layers[1].student");
  layers.pop_back();
  layers.push_back({s, make_view(static_cast<const float*>(c.data()), 2, 6, 4, 4), {}, 1.0});
  expect(attention_transfer_forward(ctx, layers, l1, {}), errc::shape_mismatch, "layers[1].teacher");
  layers.back() = {s, t, {}, std::numeric_limits<double>::quiet_NaN()};
  expect(attention_transfer_forward(ctx, layers, l1, {}), errc::invalid_argument, "layers[1].weight");
  expect(attention_transfer_backward(ctx, layers, {}), errc::invalid_argument, "layers[1].grad_student");
  // Nothing was written by any failing call.
  for (float v : loss) CHECK(v == 0.0f);
  for (float v : gbuf) CHECK(v == 0.0f);
}
