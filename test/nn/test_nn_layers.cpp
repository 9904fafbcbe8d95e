// nn layers without spatial structure: linear, activations, dropout, layer norm, batch norm,
// embedding, token transposes. Forward against the double references of reference/nn_ref.hpp,
// backward against central finite differences of those references, plus properties and errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "distill/nn/activation.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/cast.hpp"
#include "distill/nn/dropout.hpp"
#include "distill/nn/embedding.hpp"
#include "distill/nn/layer_norm.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/reshape.hpp"
#include "nn_test_util.hpp"
#include "reference/nn_ref.hpp"
#include "support/guarded.hpp"

using namespace distill;
using nn_test::vec;
namespace ref = distill_ref::nn;

// ---------------------------------------------------------------- linear

TEMPLATE_TEST_CASE("linear forward matches the reference (odd shapes, padded rows, bias or not)", "[nn][linear]", float, double) {
  distill_test::rng g(101);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{1e-5, 1e-4};
  for (int trial = 0; trial < 12; ++trial) {
    const long N = g.integer(1, 40), I = g.integer(1, 70), O = g.integer(1, 50), pad = g.integer(0, 3);
    const bool bias = trial % 3 != 0;
    const int threads = static_cast<int>(g.integer(1, 2));
    CAPTURE(N, I, O, pad, bias, threads);
    vec x = g.normals(static_cast<std::size_t>(N * (I + pad))), w = g.normals(static_cast<std::size_t>(O * I));
    vec b = bias ? g.normals(static_cast<std::size_t>(O)) : vec{};
    auto xf = nn_test::cast<TestType>(x), wf = nn_test::cast<TestType>(w), bf = nn_test::cast<TestType>(b);
    distill_test::guarded<TestType> y(static_cast<std::size_t>(N * (O + pad)));
    auto xv = make_strided_view(static_cast<const TestType*>(xf.data()), std::array<index_t, 2>{N, I}, std::array<index_t, 2>{I + pad, 1});
    auto yv = make_strided_view(y.data(), std::array<index_t, 2>{N, O}, std::array<index_t, 2>{O + pad, 1});
    host_view<const TestType, 1> bv = bias ? make_view(static_cast<const TestType*>(bf.data()), O) : host_view<const TestType, 1>{};
    REQUIRE(nn::linear_forward(cpu{threads}, xv, make_view(static_cast<const TestType*>(wf.data()), O, I), bv, yv).ok());
    vec xd(static_cast<std::size_t>(N * I));
    for (long n = 0; n < N; ++n)
      for (long i = 0; i < I; ++i) xd[static_cast<std::size_t>(n * I + i)] = static_cast<double>(xf[static_cast<std::size_t>(n * (I + pad) + i)]);
    const vec expect = ref::linear(xd, nn_test::widen(wf), nn_test::widen(bf), N, I, O);
    vec got;
    for (long n = 0; n < N; ++n)
      for (long o = 0; o < O; ++o) got.push_back(static_cast<double>(yv(n, o)));
    CHECK_CLOSE("y", got, expect, tol);
    CHECK(y.intact());
    CHECK(y.padding_intact(static_cast<std::size_t>(N), static_cast<std::size_t>(O), static_cast<std::size_t>(O + pad)));
  }
}

TEST_CASE("linear backward matches finite differences of the reference", "[nn][linear][grad]") {
  distill_test::rng g(102);
  const long N = 5, I = 7, O = 4;
  vec x = g.normals(N * I), w = g.normals(O * I), b = g.normals(O), r = g.normals(N * O);
  vec dx(N * I), dw(O * I), db(O);
  REQUIRE(nn::linear_backward(cpu{2}, make_view(static_cast<const double*>(x.data()), N, I), make_view(static_cast<const double*>(w.data()), O, I),
                              make_view(static_cast<const double*>(r.data()), N, O), make_view(dx.data(), N, I),
                              make_view(dw.data(), O, I), make_view(db.data(), O))
              .ok());
  nn_test::check_gradient("dx", [&](const vec& xx) { return nn_test::dot(r, ref::linear(xx, w, b, N, I, O)); }, x, dx);
  nn_test::check_gradient("dw", [&](const vec& ww) { return nn_test::dot(r, ref::linear(x, ww, b, N, I, O)); }, w, dw);
  nn_test::check_gradient("db", [&](const vec& bb) { return nn_test::dot(r, ref::linear(x, w, bb, N, I, O)); }, b, db);

  // accumulate: a second pass with accumulate_params adds the same gradient again
  vec dw2 = dw;
  REQUIRE(nn::linear_backward(cpu{1}, make_view(static_cast<const double*>(x.data()), N, I), make_view(static_cast<const double*>(w.data()), O, I),
                              make_view(static_cast<const double*>(r.data()), N, O), host_view<double, 2>{}, make_view(dw2.data(), O, I),
                              host_view<double, 1>{}, nn::grad_options{false, true})
              .ok());
  vec twice(dw.size());
  for (std::size_t i = 0; i < dw.size(); ++i) twice[i] = 2 * dw[i];
  CHECK_CLOSE("accumulated dw", dw2, twice, distill_test::tol::f64);
}

TEST_CASE("linear layer: init is seeded and reproducible, parameters accumulate, frozen weights get no gradient", "[nn][linear]") {
  nn::linear<float> a("fc", 6, 3, {.seed = 7}), b("fc", 6, 3, {.seed = 7}), c("fc", 6, 3, {.seed = 8}), d("other", 6, 3, {.seed = 7});
  CHECK(a.weight.value.to_host() == b.weight.value.to_host());
  CHECK(a.bias.value.to_host() == b.bias.value.to_host());
  CHECK(a.weight.value.to_host() != c.weight.value.to_host());
  CHECK(a.weight.value.to_host() != d.weight.value.to_host());  // the name keys the stream
  for (float v : a.weight.value.to_host()) CHECK(std::fabs(v) <= 1 / std::sqrt(6.0f));

  distill_test::rng g(103);
  auto x = nn_test::make_tensor<float>({4, 6}, g.normals(24));
  auto dy = nn_test::make_tensor<float>({4, 3}, g.normals(12));
  nn::host_tensor<float> y({4, 3}), dx({4, 6});
  REQUIRE(a.forward(cpu{1}, x.view<2>(), y.view<2>()).ok());
  REQUIRE(a.backward(cpu{1}, x.view<2>(), dy.view<2>(), dx.view<2>()).ok());
  const auto g1 = a.weight.grad.to_host();
  REQUIRE(a.backward(cpu{1}, x.view<2>(), dy.view<2>(), dx.view<2>()).ok());
  const auto g2 = a.weight.grad.to_host();
  for (std::size_t i = 0; i < g1.size(); ++i) CHECK(g2[i] == Approx(2 * g1[i]).margin(1e-6));
  auto params = a.parameters();
  REQUIRE(nn::zero_grad(cpu{1}, params).ok());
  a.weight.trainable = false;
  REQUIRE(a.backward(cpu{1}, x.view<2>(), dy.view<2>(), dx.view<2>()).ok());
  for (float v : a.weight.grad.to_host()) CHECK(v == 0.0f);
  for (float v : a.bias.grad.to_host()) CHECK(v != 0.0f);
}

TEST_CASE("linear refuses wrong shapes with a clear status", "[nn][linear][errors]") {
  std::vector<float> x(12), w(6), y(8);
  auto st = nn::linear_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 4, 3),
                               make_view(static_cast<const float*>(w.data()), 3, 2), host_view<const float, 1>{}, make_view(y.data(), 4, 2));
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'w'") != std::string::npos);
  st = nn::linear_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 4, 3), make_view(static_cast<const float*>(w.data()), 2, 3),
                          host_view<const float, 1>{}, make_view(y.data(), 2, 4));
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'y'") != std::string::npos);
  st = nn::linear_forward(cpu{1}, host_view<const float, 2>{}, make_view(static_cast<const float*>(w.data()), 2, 3),
                          host_view<const float, 1>{}, make_view(y.data(), 4, 2));
  CHECK(st.code() == errc::invalid_argument);
}

// ---------------------------------------------------------------- activations

TEST_CASE("activations: forward against the reference, backward against finite differences", "[nn][activation][grad]") {
  distill_test::rng g(110);
  const std::pair<nn::activation, ref::act> kinds[] = {{nn::activation::relu, ref::act::relu},
                                                       {nn::activation::gelu, ref::act::gelu},
                                                       {nn::activation::gelu_tanh, ref::act::gelu_tanh},
                                                       {nn::activation::tanh, ref::act::tanh},
                                                       {nn::activation::sigmoid, ref::act::sigmoid},
                                                       {nn::activation::identity, ref::act::identity}};
  const long R = 3, C = 9;
  vec x = g.normals(R * C, 0, 2);
  for (auto& v : x)
    if (std::fabs(v) < 0.05) v += 0.2;  // keep away from the ReLU kink
  const vec r = g.normals(R * C);
  for (auto [kind, rk] : kinds) {
    CAPTURE(nn::to_string(kind));
    vec y(R * C), dx(R * C);
    REQUIRE(nn::activation_forward(cpu{2}, kind, make_view(static_cast<const double*>(x.data()), R, C), make_view(y.data(), R, C)).ok());
    vec expect(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) expect[i] = ref::activate(rk, x[i]);
    CHECK_CLOSE("y", y, expect, distill_test::tol::f64);
    REQUIRE(nn::activation_backward(cpu{2}, kind, make_view(static_cast<const double*>(x.data()), R, C),
                                    make_view(static_cast<const double*>(r.data()), R, C), make_view(dx.data(), R, C))
                .ok());
    nn_test::check_gradient("dx", [&, rk = rk](const vec& xx) {  // a structured binding is named in a capture (clang < 16)
      double s = 0;
      for (std::size_t i = 0; i < xx.size(); ++i) s += r[i] * ref::activate(rk, xx[i]);
      return s;
    }, x, dx);
    // float path agrees with the double reference
    auto xf = nn_test::cast<float>(x);
    std::vector<float> yf(x.size());
    REQUIRE(nn::activation_forward(cpu{1}, kind, make_view(static_cast<const float*>(xf.data()), R, C), make_view(yf.data(), R, C)).ok());
    const distill_test::tolerance tf{1e-5, 1e-5};
    CHECK_CLOSE("y float", yf, expect, tf);
  }
  // in place: y aliases x
  vec inplace = x;
  REQUIRE(nn::activation_forward(cpu{1}, nn::activation::relu, make_view(static_cast<const double*>(inplace.data()), R, C),
                                 make_view(inplace.data(), R, C))
              .ok());
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(inplace[i] == std::max(0.0, x[i]));
}

// ---------------------------------------------------------------- dropout

TEST_CASE("dropout: masks follow the counter-based stream, backward reuses them, evaluation is the identity", "[nn][dropout]") {
  distill_test::rng g(120);
  const long R = 37, C = 53;
  const vec x = g.normals(R * C);
  const auto xf = nn_test::cast<float>(x);
  for (double p : {0.0, 0.1, 0.5, 0.9, 1.0}) {
    CAPTURE(p);
    nn::dropout_params d{p, 1234, 999, true};
    std::vector<float> y(R * C), dx(R * C);
    REQUIRE(nn::dropout_forward(cpu{2}, make_view(xf.data(), R, C), make_view(y.data(), R, C), d).ok());
    REQUIRE(nn::dropout_backward(cpu{2}, make_view(xf.data(), R, C), make_view(dx.data(), R, C), d).ok());
    long kept = 0, mismatches = 0;
    const float scale = p < 1 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f;
    for (long i = 0; i < R * C; ++i) {
      const bool keep = p == 0 || ref::dropout_keep(1234, 999 + static_cast<std::uint64_t>(i), p);
      kept += keep;
      const float want = keep ? xf[static_cast<std::size_t>(i)] * scale : 0.0f;
      if (y[static_cast<std::size_t>(i)] != want || dx[static_cast<std::size_t>(i)] != want) ++mismatches;
    }
    CHECK(mismatches == 0);
    const double frac = static_cast<double>(kept) / (R * C);
    CHECK(frac == Approx(1 - p).margin(0.03));
  }
  // evaluation: identity forward and backward
  std::vector<float> y(R * C);
  REQUIRE(nn::dropout_forward(cpu{1}, make_view(xf.data(), R, C), make_view(y.data(), R, C), nn::dropout_params{0.5, 1, 0, false}).ok());
  CHECK(y == xf);
  CHECK(nn::dropout_forward(cpu{1}, make_view(xf.data(), R, C), make_view(y.data(), R, C), nn::dropout_params{1.5, 1, 0, true}).code() ==
        errc::invalid_argument);

  // the layer advances its offset, so consecutive steps draw different masks, reproducibly
  nn::dropout<float> a(0.5, 77), b(0.5, 77);
  auto xt = nn_test::make_tensor<float>({R, C}, x);
  nn::host_tensor<float> y1({R, C}), y2({R, C}), z1({R, C});
  REQUIRE(a.forward(cpu{1}, xt.view<2>(), y1.view<2>()).ok());
  REQUIRE(a.forward(cpu{1}, xt.view<2>(), y2.view<2>()).ok());
  REQUIRE(b.forward(cpu{2}, xt.view<2>(), z1.view<2>()).ok());
  CHECK(y1.to_host() != y2.to_host());
  CHECK(y1.to_host() == z1.to_host());
  CHECK(a.offset == static_cast<std::uint64_t>(2 * R * C));
}

// ---------------------------------------------------------------- layer norm

TEMPLATE_TEST_CASE("layer norm forward matches the reference, with and without affine parameters", "[nn][layer_norm]", float, double) {
  distill_test::rng g(130);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{2e-5, 1e-4};
  for (long D : {1L, 7L, 64L, 257L}) {
    const long N = 9;
    vec x = g.normals(N * D, 3, 2), gamma = g.normals(D), beta = g.normals(D);
    auto xf = nn_test::cast<TestType>(x), gf = nn_test::cast<TestType>(gamma), bf = nn_test::cast<TestType>(beta);
    for (bool affine : {true, false}) {
      std::vector<TestType> y(N * D), mean(N), rstd(N);
      auto gv = affine ? make_view(static_cast<const TestType*>(gf.data()), D) : host_view<const TestType, 1>{};
      auto bv = affine ? make_view(static_cast<const TestType*>(bf.data()), D) : host_view<const TestType, 1>{};
      REQUIRE(nn::layer_norm_forward(cpu{2}, make_view(static_cast<const TestType*>(xf.data()), N, D), gv, bv, make_view(y.data(), N, D),
                                     make_view(mean.data(), N), make_view(rstd.data(), N), 1e-5)
                  .ok());
      vec rm, rr;
      const vec expect = ref::layer_norm(nn_test::widen(xf), affine ? nn_test::widen(gf) : vec{}, affine ? nn_test::widen(bf) : vec{}, N, D,
                                         1e-5, &rm, &rr);
      CAPTURE(D, affine);
      CHECK_CLOSE("y", y, expect, tol);
      CHECK_CLOSE("mean", mean, rm, tol);
      const distill_test::tolerance tr{tol.atol, 1e-3};
      CHECK_CLOSE("rstd", rstd, rr, tr);
    }
  }
}

TEST_CASE("layer norm backward matches finite differences of the reference", "[nn][layer_norm][grad]") {
  distill_test::rng g(131);
  const long N = 4, D = 6;
  const double eps = 1e-5;
  vec x = g.normals(N * D), gamma = g.normals(D), beta = g.normals(D), r = g.normals(N * D);
  vec y(N * D), mean(N), rstd(N), dx(N * D), dgamma(D), dbeta(D);
  REQUIRE(nn::layer_norm_forward(cpu{1}, make_view(static_cast<const double*>(x.data()), N, D), make_view(static_cast<const double*>(gamma.data()), D),
                                 make_view(static_cast<const double*>(beta.data()), D), make_view(y.data(), N, D), make_view(mean.data(), N),
                                 make_view(rstd.data(), N), eps)
              .ok());
  REQUIRE(nn::layer_norm_backward(cpu{2}, make_view(static_cast<const double*>(x.data()), N, D),
                                  make_view(static_cast<const double*>(gamma.data()), D), make_view(static_cast<const double*>(mean.data()), N),
                                  make_view(static_cast<const double*>(rstd.data()), N), make_view(static_cast<const double*>(r.data()), N, D),
                                  make_view(dx.data(), N, D), make_view(dgamma.data(), D), make_view(dbeta.data(), D))
              .ok());
  nn_test::check_gradient("dx", [&](const vec& xx) { return nn_test::dot(r, ref::layer_norm(xx, gamma, beta, N, D, eps)); }, x, dx);
  nn_test::check_gradient("dgamma", [&](const vec& gg) { return nn_test::dot(r, ref::layer_norm(x, gg, beta, N, D, eps)); }, gamma, dgamma);
  nn_test::check_gradient("dbeta", [&](const vec& bb) { return nn_test::dot(r, ref::layer_norm(x, gamma, bb, N, D, eps)); }, beta, dbeta);
}

// ---------------------------------------------------------------- batch norm

TEMPLATE_TEST_CASE("batch norm forward: batch statistics, running statistics, evaluation mode", "[nn][batch_norm]", float, double) {
  distill_test::rng g(140);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{5e-5, 2e-4};
  for (auto [N, C, S] : {std::tuple<long, long, long>{2, 3, 1}, {4, 5, 7}, {3, 24, 25}, {16, 2, 1}}) {
    CAPTURE(N, C, S);
    vec x = g.normals(N * C * S, 1, 3), gamma = g.normals(C), beta = g.normals(C);
    vec rm = g.normals(C), rv = g.uniforms(C, 0.5, 2);
    auto xf = nn_test::cast<TestType>(x), gf = nn_test::cast<TestType>(gamma), bf = nn_test::cast<TestType>(beta);
    auto rmf = nn_test::cast<TestType>(rm), rvf = nn_test::cast<TestType>(rv);
    std::vector<TestType> y(x.size()), sm(C), si(C);
    const nn::batch_norm_params p{1e-5, 0.1, true};
    REQUIRE(nn::batch_norm_forward(cpu{2}, make_view(static_cast<const TestType*>(xf.data()), N, C, S), make_view(static_cast<const TestType*>(gf.data()), C),
                                   make_view(static_cast<const TestType*>(bf.data()), C), make_view(rmf.data(), C), make_view(rvf.data(), C),
                                   make_view(y.data(), N, C, S), make_view(sm.data(), C), make_view(si.data(), C), p)
                .ok());
    vec erm = nn_test::widen(nn_test::cast<TestType>(rm)), erv = nn_test::widen(nn_test::cast<TestType>(rv));
    const vec expect = ref::batch_norm(nn_test::widen(xf), nn_test::widen(gf), nn_test::widen(bf), N, C, S, true, 1e-5, 0.1, &erm, &erv);
    CHECK_CLOSE("y (training)", y, expect, tol);
    CHECK_CLOSE("running mean", rmf, erm, tol);
    CHECK_CLOSE("running var", rvf, erv, tol);
    // evaluation uses the running statistics and leaves them alone
    const auto rm_before = rmf, rv_before = rvf;
    REQUIRE(nn::batch_norm_forward(cpu{1}, make_view(static_cast<const TestType*>(xf.data()), N, C, S), make_view(static_cast<const TestType*>(gf.data()), C),
                                   make_view(static_cast<const TestType*>(bf.data()), C), make_view(rmf.data(), C), make_view(rvf.data(), C),
                                   make_view(y.data(), N, C, S), make_view(sm.data(), C), make_view(si.data(), C), nn::batch_norm_params{1e-5, 0.1, false})
                .ok());
    const vec expect_eval = ref::batch_norm(nn_test::widen(xf), nn_test::widen(gf), nn_test::widen(bf), N, C, S, false, 1e-5, 0.1, &erm, &erv);
    CHECK_CLOSE("y (evaluation)", y, expect_eval, tol);
    CHECK(rmf == rm_before);
    CHECK(rvf == rv_before);
  }
}

TEST_CASE("batch norm backward (training and evaluation) matches finite differences", "[nn][batch_norm][grad]") {
  distill_test::rng g(141);
  const long N = 3, C = 2, S = 4;
  const double eps = 1e-5;
  vec x = g.normals(N * C * S), gamma = g.normals(C), beta = g.normals(C), r = g.normals(N * C * S);
  vec rm = g.normals(C), rv = g.uniforms(C, 0.5, 2);
  for (bool training : {true, false}) {
    CAPTURE(training);
    vec y(x.size()), sm(C), si(C), dx(x.size()), dgamma(C), dbeta(C), rm2 = rm, rv2 = rv;
    REQUIRE(nn::batch_norm_forward(cpu{1}, make_view(static_cast<const double*>(x.data()), N, C, S), make_view(static_cast<const double*>(gamma.data()), C),
                                   make_view(static_cast<const double*>(beta.data()), C), make_view(rm2.data(), C), make_view(rv2.data(), C),
                                   make_view(y.data(), N, C, S), make_view(sm.data(), C), make_view(si.data(), C),
                                   nn::batch_norm_params{eps, 0.1, training})
                .ok());
    REQUIRE(nn::batch_norm_backward(cpu{2}, make_view(static_cast<const double*>(x.data()), N, C, S),
                                    make_view(static_cast<const double*>(gamma.data()), C), make_view(static_cast<const double*>(sm.data()), C),
                                    make_view(static_cast<const double*>(si.data()), C), make_view(static_cast<const double*>(r.data()), N, C, S),
                                    make_view(dx.data(), N, C, S), make_view(dgamma.data(), C), make_view(dbeta.data(), C), training)
                .ok());
    auto f = [&](const vec& xx, const vec& gg, const vec& bb) {
      vec m = rm, v = rv;
      return nn_test::dot(r, ref::batch_norm(xx, gg, bb, N, C, S, training, eps, 0.1, &m, &v));
    };
    nn_test::check_gradient("dx", [&](const vec& xx) { return f(xx, gamma, beta); }, x, dx);
    nn_test::check_gradient("dgamma", [&](const vec& gg) { return f(x, gg, beta); }, gamma, dgamma);
    nn_test::check_gradient("dbeta", [&](const vec& bb) { return f(x, gamma, bb); }, beta, dbeta);
  }
}

TEST_CASE("batch norm refuses a single value per channel in training and missing running statistics in evaluation",
          "[nn][batch_norm][errors]") {
  std::vector<float> x(3), y(3), s1(3), s2(3);
  auto st = nn::batch_norm_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 1, 3, 1), host_view<const float, 1>{},
                                   host_view<const float, 1>{}, host_view<float, 1>{}, host_view<float, 1>{}, make_view(y.data(), 1, 3, 1),
                                   make_view(s1.data(), 3), make_view(s2.data(), 3), nn::batch_norm_params{});
  CHECK(st.code() == errc::shape_mismatch);
  st = nn::batch_norm_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 1, 3, 1), host_view<const float, 1>{},
                              host_view<const float, 1>{}, host_view<float, 1>{}, host_view<float, 1>{}, make_view(y.data(), 1, 3, 1),
                              make_view(s1.data(), 3), make_view(s2.data(), 3), nn::batch_norm_params{1e-5, 0.1, false});
  CHECK(st.code() == errc::invalid_argument);
  nn::batch_norm<float> bn("bn", 3);
  CHECK(bn.running_mean.buffer);
  CHECK_FALSE(bn.running_mean.trainable);
  auto params = bn.parameters();
  nn::set_trainable(params, true);
  CHECK_FALSE(bn.running_var.trainable);  // buffers stay non-trainable
}

// ---------------------------------------------------------------- embedding, token layout

TEST_CASE("embedding gathers rows, scatters gradients (repeated ids add up) and refuses bad ids", "[nn][embedding]") {
  distill_test::rng g(150);
  const long V = 11, D = 5, N = 9;
  nn::embedding<double> emb("emb", V, D, 3);
  const std::vector<std::int64_t> ids = {3, 0, 10, 3, 3, 7, 0, 1, 9};
  std::vector<double> y(N * D);
  REQUIRE(emb.forward(cpu{2}, make_view(ids.data(), N), make_view(y.data(), N, D)).ok());
  const auto table = emb.weight.value.to_host();
  for (long n = 0; n < N; ++n)
    for (long d = 0; d < D; ++d) CHECK(y[static_cast<std::size_t>(n * D + d)] == table[static_cast<std::size_t>(ids[static_cast<std::size_t>(n)] * D + d)]);
  const vec r = g.normals(N * D);
  REQUIRE(emb.backward(cpu{2}, make_view(ids.data(), N), make_view(static_cast<const double*>(r.data()), N, D)).ok());
  auto f = [&](const vec& t) {
    double s = 0;
    for (long n = 0; n < N; ++n)
      for (long d = 0; d < D; ++d) s += r[static_cast<std::size_t>(n * D + d)] * t[static_cast<std::size_t>(ids[static_cast<std::size_t>(n)] * D + d)];
    return s;
  };
  nn_test::check_gradient("dtable", f, table, emb.weight.grad.to_host());
  const std::vector<std::int32_t> bad = {1, 11};
  std::vector<double> y2(2 * D);
  const auto st = nn::embedding_forward<std::int32_t, double>(cpu{1}, make_view(bad.data(), 2), emb.weight.value.view<2>(), make_view(y2.data(), 2, D));
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("11") != std::string::npos);
}

TEST_CASE("nchw_to_tokens and tokens_to_nchw are inverse transposes", "[nn][reshape]") {
  distill_test::rng g(160);
  const long B = 3, C = 37, S = 45;
  const auto x = nn_test::cast<float>(g.normals(B * C * S));
  std::vector<float> t(x.size()), back(x.size());
  REQUIRE(nn::nchw_to_tokens(cpu{2}, make_view(x.data(), B, C, S), make_view(t.data(), B, S, C)).ok());
  for (long b = 0; b < B; ++b)
    for (long c = 0; c < C; ++c)
      for (long s = 0; s < S; ++s) REQUIRE(t[static_cast<std::size_t>((b * S + s) * C + c)] == x[static_cast<std::size_t>((b * C + c) * S + s)]);
  REQUIRE(nn::tokens_to_nchw(cpu{1}, make_view(static_cast<const float*>(t.data()), B, S, C), make_view(back.data(), B, C, S)).ok());
  CHECK(back == x);
  CHECK(nn::nchw_to_tokens(cpu{1}, make_view(x.data(), B, C, S), make_view(t.data(), B, C, S)).code() == errc::shape_mismatch);
}

TEST_CASE("cast converts between float, double and 16-bit storage with round-to-nearest-even", "[nn][cast]") {
  distill_test::rng g(170);
  const long R = 7, C = 19;
  auto x = nn_test::cast<float>(g.normals(R * C, 0, 100));
  x[0] = INFINITY, x[1] = -INFINITY, x[2] = 1e-30f, x[3] = 65504.0f, x[4] = 70000.0f;
  std::vector<bfloat16> b(x.size());
  std::vector<float16> h(x.size());
  std::vector<double> d(x.size());
  std::vector<float> back(x.size());
  REQUIRE(nn::cast(cpu{2}, make_view(static_cast<const float*>(x.data()), R, C), make_view(b.data(), R, C)).ok());
  REQUIRE(nn::cast(cpu{2}, make_view(static_cast<const float*>(x.data()), R, C), make_view(h.data(), R, C)).ok());
  REQUIRE(nn::cast(cpu{1}, make_view(static_cast<const float*>(x.data()), R, C), make_view(d.data(), R, C)).ok());
  for (std::size_t i = 0; i < x.size(); ++i) {
    CHECK(b[i].bits == bfloat16(x[i]).bits);
    CHECK(h[i].bits == float16(x[i]).bits);
    CHECK(d[i] == static_cast<double>(x[i]));
  }
  REQUIRE(nn::cast(cpu{1}, make_view(static_cast<const bfloat16*>(b.data()), R, C), make_view(back.data(), R, C)).ok());
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(back[i] == static_cast<float>(b[i]));
  CHECK(std::isinf(static_cast<float>(h[4])));  // above the float16 range
  CHECK(nn::cast(cpu{1}, make_view(static_cast<const float*>(x.data()), R, C), make_view(b.data(), C, R)).code() == errc::shape_mismatch);
}
