// SPDX-License-Identifier: MIT
#pragma once
// nn-layer cases written once for every backend (support/backend.hpp); the including file defines
// `test_space` first (test_nn_backends.cpp: host_space, float and double; test_nn_cuda_layers.cu:
// cuda_space, float). Each runs the library through nn_harness.hpp on inputs rounded to the
// storage type and compares with the double references of reference/nn_ref.hpp (and
// nn_conv_ref.hpp): forward passes with the reference's forward, backward passes with central
// finite differences of the reference or, where shapes are too big for those, with the
// reference's analytic gradients (themselves checked against finite differences here, on small
// shapes). Every buffer lies between canary bands; on the CPU rows and batches are padded.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "distill/nn/activation.hpp"
#include "distill/nn/attention.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/cast.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/conv_transpose2d.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/depthwise_conv2d.hpp"
#include "distill/nn/dropout.hpp"
#include "distill/nn/embedding.hpp"
#include "distill/nn/layer_norm.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/pooling.hpp"
#include "distill/nn/reshape.hpp"
#include "nn/nn_harness.hpp"
#include "reference/nn_conv_ref.hpp"
#include "reference/nn_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

namespace nn_cases {

using namespace distill;
using namespace nn_harness;
namespace ref = distill_ref::nn;
using S = test_space;
using distill_test::tolerance;
using distill_test::workspace;

constexpr bool host = on_host<S>;

/// The storage types each backend takes: the CPU path double and float, CUDA float.
using storage_types = std::conditional_t<host, std::tuple<double, float>, std::tuple<float>>;

/// Thread counts a CPU case runs with (one context on CUDA).
inline std::vector<int> thread_counts() { return host ? std::vector<int>{1, 2} : std::vector<int>{2}; }

/// `tf` for float storage, the double tolerance otherwise.
template <class T>
tolerance tol_for(tolerance tf, tolerance td = distill_test::tol::f64) {
  return std::is_same_v<T, double> ? td : tf;
}
/// Backend gradients against finite differences of the reference (double) or the reference's gradient.
template <class T>
tolerance grad_tol(tolerance tf) {
  return std::is_same_v<T, double> ? distill_test::tol::fd : tf;
}

/// For float storage |a - e| <= max(atol, rel max|e|) + rel |e|: gradients whose conditioning
/// varies per element (a normalisation over two values divides by their small spread), judged
/// against the scale of the whole gradient; the double tolerance otherwise.
template <class T>
tolerance scaled_tol(const vec& e, tolerance tf, tolerance td = {1e-11, 1e-10}) {
  double mx = 0;
  for (double v : e) mx = std::max(mx, std::fabs(v));
  return std::is_same_v<T, double> ? td : tolerance{std::max(tf.atol, tf.rtol * mx), tf.rtol};
}

inline double dot(const vec& a, const vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
inline vec times(vec a, double k) {
  for (double& v : a) v *= k;
  return a;
}
/// Central finite differences of f at x.
template <class F>
vec fd(F&& f, const vec& x) {
  return distill_test::numeric_gradient(f, x);
}

// ---------------------------------------------------------------- linear

/// GEMM modes of the backend: the CPU computes in the element type; CUDA float also on TF32 and
/// bf16 tensor cores, within looser bounds.
inline std::vector<matmul_precision> gemm_modes() {
  if constexpr (host) return {matmul_precision::fp32};
  else return {matmul_precision::fp32, matmul_precision::tf32, matmul_precision::bf16};
}

TEMPLATE_LIST_TEST_CASE("linear forward and backward match the reference (odd shapes, padded rows, bias or not, every GEMM mode)",
                        "[nn][linear][grad]", storage_types) {
  using T = TestType;
  distill_test::rng g(101);
  {  // the reference's analytic gradient against finite differences of its forward
    const long N = 5, I = 7, O = 4;
    const vec x = g.normals(N * I), w = g.normals(O * I), b = g.normals(O), r = g.normals(N * O);
    vec dx, dw, db;
    ref::linear_backward(x, w, r, N, I, O, dx, dw, db);
    CHECK_CLOSE("ref dx", dx, fd([&](const vec& v) { return dot(r, ref::linear(v, w, b, N, I, O)); }, x), distill_test::tol::fd);
    CHECK_CLOSE("ref dw", dw, fd([&](const vec& v) { return dot(r, ref::linear(x, v, b, N, I, O)); }, w), distill_test::tol::fd);
    CHECK_CLOSE("ref db", db, fd([&](const vec& v) { return dot(r, ref::linear(x, w, v, N, I, O)); }, b), distill_test::tol::fd);
  }
  for (auto mode : gemm_modes()) {
    const tolerance t = mode == matmul_precision::tf32   ? tolerance{2e-2, 2e-2}
                        : mode == matmul_precision::bf16 ? tolerance{1e-1, 5e-2}
                                                         : tol_for<T>({1e-4, 1e-4}, {1e-11, 1e-10});
    const tolerance sum_t = tol_for<T>({1e-4, 1e-4}, {1e-11, 1e-10});  // column sums never use tensor cores
    for (int trial = 0; trial < 8; ++trial) {
      // CUDA: up to 300 rows (several GEMM tiles); the CPU: odd sizes around its lane widths
      const long N = host ? g.integer(1, 40) : g.integer(1, 300), I = host ? g.integer(1, 70) : g.integer(1, 130),
                 O = host ? g.integer(1, 50) : g.integer(1, 90), pad = g.integer(0, 3);
      const bool bias = trial % 3 != 0;
      const int threads = static_cast<int>(g.integer(1, 2));
      CAPTURE(to_string(mode), N, I, O, pad, bias, threads);
      const vec x = rounded<T>(g.normals(N * I)), w = rounded<T>(g.normals(O * I, 0, 0.3)), b = bias ? rounded<T>(g.normals(O)) : vec{},
                dy = rounded<T>(g.normals(N * O));
      auto xt = tensor_of<T, 2, S>({N, I}, x, {pad, 0});
      auto wt = tensor_of<T, 2, S>({O, I}, w);
      auto dyt = tensor_of<T, 2, S>({N, O}, dy, {pad, 0});
      auto bt = tensor_of<T, 1, S>({std::max(O, 1L)}, bias ? b : vec(static_cast<std::size_t>(O), 0.0));
      auto yt = tensor<T, 2, S>({N, O}, {pad, 0});
      auto dxt = tensor<T, 2, S>({N, I}, {pad, 0});
      auto dwt = tensor<T, 2, S>({O, I});
      auto dbt = tensor<T, 1, S>({O});
      nn_run<S> run(threads, mode);
      const auto bv = bias ? bt.template view<const T>() : absent<T, 1, S>();
      REQUIRE(nn::linear_forward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), bv, yt.view()).ok());
      REQUIRE(nn::linear_backward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), dyt.template view<const T>(), dxt.view(),
                                  dwt.view(), dbt.view())
                  .ok());
      run.sync();
      vec rdx, rdw, rdb;
      ref::linear_backward(x, w, dy, N, I, O, rdx, rdw, rdb);
      CHECK_CLOSE("y", yt.get(), ref::linear(x, w, b, N, I, O), t);
      CHECK_CLOSE("dx", dxt.get(), rdx, t);
      CHECK_CLOSE("dw", dwt.get(), rdw, t);
      CHECK_CLOSE("db", dbt.get(), rdb, sum_t);
      // accumulate_params: a second pass without dx and db adds the same dw again
      REQUIRE(nn::linear_backward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), dyt.template view<const T>(),
                                  tensor_view<T, 2, S>{}, dwt.view(), tensor_view<T, 1, S>{}, nn::grad_options{false, true})
                  .ok());
      run.sync();
      CHECK_CLOSE("accumulated dw", dwt.get(), times(rdw, 2), t);
      CHECK(xt.intact());
      CHECK(yt.intact());
      CHECK(dxt.intact());
      CHECK(dwt.intact());
      CHECK(dbt.intact());
      CHECK(dyt.intact());
    }
  }
}

// ---------------------------------------------------------------- activations, dropout

TEMPLATE_LIST_TEST_CASE("activations: forward against the reference, backward against finite differences", "[nn][activation][grad]",
                        storage_types) {
  using T = TestType;
  distill_test::rng g(110);
  const std::pair<nn::activation, ref::act> kinds[] = {{nn::activation::relu, ref::act::relu},
                                                       {nn::activation::gelu, ref::act::gelu},
                                                       {nn::activation::gelu_tanh, ref::act::gelu_tanh},
                                                       {nn::activation::tanh, ref::act::tanh},
                                                       {nn::activation::sigmoid, ref::act::sigmoid},
                                                       {nn::activation::identity, ref::act::identity}};
  for (auto [R, C] : {std::pair<long, long>{3, 9}, {33, 77}}) {
    vec x = g.normals(R * C, 0, 2);
    for (auto& v : x)
      if (std::fabs(v) < 0.05) v += 0.2;  // keep away from the ReLU kink
    x = rounded<T>(x);
    const vec r = rounded<T>(g.normals(R * C));
    auto xt = tensor_of<T, 2, S>({R, C}, x, {2, 0});
    auto rt = tensor_of<T, 2, S>({R, C}, r, {1, 0});
    for (auto [kind, rk] : kinds) {
      CAPTURE(R, C, nn::to_string(kind));
      auto yt = tensor<T, 2, S>({R, C}, {3, 0});
      auto dxt = tensor<T, 2, S>({R, C}, {1, 0});
      nn_run<S> run;
      REQUIRE(nn::activation_forward(run.ctx, kind, xt.template view<const T>(), yt.view()).ok());
      REQUIRE(nn::activation_backward(run.ctx, kind, xt.template view<const T>(), rt.template view<const T>(), dxt.view()).ok());
      run.sync();
      vec want(x.size()), grad(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        want[i] = ref::activate(rk, x[i]);
        const double h = 1e-6 * std::max(1.0, std::fabs(x[i]));  // central difference, one element at a time
        grad[i] = r[i] * (ref::activate(rk, x[i] + h) - ref::activate(rk, x[i] - h)) / (2 * h);
      }
      CHECK_CLOSE("y", yt.get(), want, tol_for<T>({1e-5, 1e-5}));
      CHECK_CLOSE("dx", dxt.get(), grad, grad_tol<T>({1e-5, 1e-5}));
      CHECK(yt.intact());
      CHECK(dxt.intact());
    }
    CHECK(xt.intact());
    CHECK(rt.intact());
  }
  // in place: y aliases x
  const long R = 5, C = 13;
  const vec x = rounded<T>(g.normals(R * C));
  auto xt = tensor_of<T, 2, S>({R, C}, x);
  nn_run<S> run;
  REQUIRE(nn::activation_forward(run.ctx, nn::activation::relu, xt.template view<const T>(), xt.view()).ok());
  run.sync();
  const vec got = xt.get();
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(got[i] == std::max(0.0, x[i]));
}

TEMPLATE_LIST_TEST_CASE("dropout: masks follow the counter-based stream, backward reuses them, evaluation is the identity", "[nn][dropout]",
                        storage_types) {
  using T = TestType;
  distill_test::rng g(120);
  const long R = 37, C = 53;
  const vec x = rounded<T>(g.normals(R * C)), r = rounded<T>(g.normals(R * C));
  auto xt = tensor_of<T, 2, S>({R, C}, x, {2, 0});
  auto rt = tensor_of<T, 2, S>({R, C}, r);
  for (double p : {0.0, 0.1, 0.3, 0.5, 0.9, 1.0}) {
    CAPTURE(p);
    const nn::dropout_params d{p, 1234, 999, true};
    auto yt = tensor<T, 2, S>({R, C}, {1, 0});
    auto dxt = tensor<T, 2, S>({R, C}, {3, 0});
    nn_run<S> run;
    REQUIRE(nn::dropout_forward(run.ctx, xt.template view<const T>(), yt.view(), d).ok());
    REQUIRE(nn::dropout_backward(run.ctx, rt.template view<const T>(), dxt.view(), d).ok());
    run.sync();
    const vec y = yt.get(), dx = dxt.get();
    const T scale = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    long kept = 0, mismatches = 0;
    for (long i = 0; i < R * C; ++i) {
      const std::size_t k = static_cast<std::size_t>(i);
      const bool keep = p == 0 || ref::dropout_keep(1234, 999 + static_cast<std::uint64_t>(i), p);
      kept += keep;
      // bitwise: the kept value times the scale, rounded once to T
      mismatches += y[k] != (keep ? static_cast<double>(static_cast<T>(x[k]) * scale) : 0.0);
      mismatches += dx[k] != (keep ? static_cast<double>(static_cast<T>(r[k]) * scale) : 0.0);
    }
    CHECK(mismatches == 0);
    CHECK(static_cast<double>(kept) / (R * C) == Approx(1 - p).margin(0.03));
    CHECK(yt.intact());
    CHECK(dxt.intact());
  }
  // evaluation: the identity
  auto yt = tensor<T, 2, S>({R, C});
  nn_run<S> run;
  REQUIRE(nn::dropout_forward(run.ctx, xt.template view<const T>(), yt.view(), nn::dropout_params{0.5, 1, 0, false}).ok());
  run.sync();
  CHECK(yt.get() == x);
  CHECK(xt.intact());
}

// ---------------------------------------------------------------- layer norm, batch norm

TEMPLATE_LIST_TEST_CASE("layer norm forward and backward match the reference, with and without affine parameters", "[nn][layer_norm][grad]",
                        storage_types) {
  using T = TestType;
  distill_test::rng g(130);
  const double eps = 1e-5;
  {  // the reference's analytic gradient against finite differences of its forward
    const long N = 4, D = 6;
    const vec x = g.normals(N * D), gamma = g.normals(D), beta = g.normals(D), r = g.normals(N * D);
    vec dx, dg, db;
    ref::layer_norm_backward(x, gamma, r, N, D, eps, dx, dg, db);
    CHECK_CLOSE("ref dx", dx, fd([&](const vec& v) { return dot(r, ref::layer_norm(v, gamma, beta, N, D, eps)); }, x), distill_test::tol::fd);
    CHECK_CLOSE("ref dgamma", dg, fd([&](const vec& v) { return dot(r, ref::layer_norm(x, v, beta, N, D, eps)); }, gamma), distill_test::tol::fd);
    CHECK_CLOSE("ref dbeta", db, fd([&](const vec& v) { return dot(r, ref::layer_norm(x, gamma, v, N, D, eps)); }, beta), distill_test::tol::fd);
  }
  const tolerance t = tol_for<T>({1e-4, 1e-4}, {1e-11, 1e-10});
  for (auto [N, D] : {std::pair<long, long>{9, 1}, {9, 7}, {9, 64}, {9, 257}, {33, 77}}) {
    const vec x = rounded<T>(g.normals(N * D, 3, 2)), gamma = rounded<T>(g.normals(D)), beta = rounded<T>(g.normals(D)),
              r = rounded<T>(g.normals(N * D));
    auto xt = tensor_of<T, 2, S>({N, D}, x, {3, 0});
    auto rt = tensor_of<T, 2, S>({N, D}, r, {1, 0});
    auto gt = tensor_of<T, 1, S>({D}, gamma);
    auto bt = tensor_of<T, 1, S>({D}, beta);
    for (bool affine : {true, false}) {
      CAPTURE(N, D, affine);
      auto yt = tensor<T, 2, S>({N, D}, {2, 0});
      auto mt = tensor<T, 1, S>({N});
      auto st = tensor<T, 1, S>({N});
      auto dxt = tensor<T, 2, S>({N, D}, {1, 0});
      auto dgt = tensor<T, 1, S>({D});
      auto dbt = tensor<T, 1, S>({D});
      const auto gv = affine ? gt.template view<const T>() : absent<T, 1, S>();
      const auto bv = affine ? bt.template view<const T>() : absent<T, 1, S>();
      nn_run<S> run;
      REQUIRE(nn::layer_norm_forward(run.ctx, xt.template view<const T>(), gv, bv, yt.view(), mt.view(), st.view(), eps).ok());
      REQUIRE(nn::layer_norm_backward(run.ctx, xt.template view<const T>(), gv, mt.template view<const T>(), st.template view<const T>(),
                                      rt.template view<const T>(), dxt.view(), affine ? dgt.view() : tensor_view<T, 1, S>{},
                                      affine ? dbt.view() : tensor_view<T, 1, S>{})
                  .ok());
      run.sync();
      vec rm, rs, rdx, rdg, rdb;
      const vec want = ref::layer_norm(x, affine ? gamma : vec{}, affine ? beta : vec{}, N, D, eps, &rm, &rs);
      ref::layer_norm_backward(x, affine ? gamma : vec{}, r, N, D, eps, rdx, rdg, rdb);
      CHECK_CLOSE("y", yt.get(), want, t);
      CHECK_CLOSE("mean", mt.get(), rm, t);
      CHECK_CLOSE("rstd", st.get(), rs, (tolerance{t.atol, std::is_same_v<T, double> ? 1e-10 : 1e-3}));
      CHECK_CLOSE("dx", dxt.get(), rdx, scaled_tol<T>(rdx, {1e-4, 1e-4}));
      if (affine) {
        CHECK_CLOSE("dgamma", dgt.get(), rdg, t);
        CHECK_CLOSE("dbeta", dbt.get(), rdb, t);
      }
      CHECK(yt.intact());
      CHECK(dxt.intact());
      CHECK(mt.intact());
      CHECK(st.intact());
      CHECK(dgt.intact());
      CHECK(dbt.intact());
    }
    CHECK(xt.intact());
  }
}

TEMPLATE_LIST_TEST_CASE("batch norm: batch statistics, running statistics, evaluation mode, backward", "[nn][batch_norm][grad]",
                        storage_types) {
  using T = TestType;
  distill_test::rng g(140);
  const double eps = 1e-5, momentum = 0.1;
  {  // the reference's analytic gradient against finite differences of its forward, both modes
    const long N = 3, C = 2, S_ = 4;
    const vec x = g.normals(N * C * S_), gamma = g.normals(C), beta = g.normals(C), r = g.normals(N * C * S_);
    const vec rm = g.normals(C), rv = g.uniforms(C, 0.5, 2);
    for (bool training : {true, false}) {
      CAPTURE(training);
      auto f = [&](const vec& xx, const vec& gg, const vec& bb) {
        vec m = rm, v = rv;
        return dot(r, ref::batch_norm(xx, gg, bb, N, C, S_, training, eps, momentum, &m, &v));
      };
      vec dx, dg, db;
      ref::batch_norm_backward(x, gamma, r, N, C, S_, training, eps, rm, rv, dx, dg, db);
      CHECK_CLOSE("ref dx", dx, fd([&](const vec& v) { return f(v, gamma, beta); }, x), distill_test::tol::fd);
      CHECK_CLOSE("ref dgamma", dg, fd([&](const vec& v) { return f(x, v, beta); }, gamma), distill_test::tol::fd);
      CHECK_CLOSE("ref dbeta", db, fd([&](const vec& v) { return f(x, gamma, v); }, beta), distill_test::tol::fd);
    }
  }
  std::vector<std::array<long, 3>> shapes = {{2, 3, 1}, {4, 5, 7}, {5, 3, 7}, {3, 24, 25}, {16, 2, 1}, {2, 200, 1}, {300, 2, 1}};
  if constexpr (!host) shapes.push_back({64, 24, 38 * 38});  // the Relation-Network CNN's first map: long reductions
  const tolerance t = tol_for<T>({2e-4, 2e-4}, {1e-11, 1e-10}), sum_t = tol_for<T>({2e-3, 1e-4}, {1e-10, 1e-10});
  for (auto [N, C, L] : shapes) {
    for (bool training : {true, false}) {
      CAPTURE(N, C, L, training);
      const vec x = rounded<T>(g.normals(N * C * L, 1, 3)), gamma = rounded<T>(g.normals(C)), beta = rounded<T>(g.normals(C));
      const vec rm = rounded<T>(g.normals(C)), rv = rounded<T>(g.uniforms(C, 0.5, 2)), r = rounded<T>(g.normals(N * C * L));
      auto xt = tensor_of<T, 3, S>({N, C, L}, x, {2, 0, 0});
      auto rt = tensor_of<T, 3, S>({N, C, L}, r);
      auto gt = tensor_of<T, 1, S>({C}, gamma);
      auto bt = tensor_of<T, 1, S>({C}, beta);
      auto rmt = tensor_of<T, 1, S>({C}, rm);
      auto rvt = tensor_of<T, 1, S>({C}, rv);
      auto yt = tensor<T, 3, S>({N, C, L}, {1, 0, 0});
      auto smt = tensor<T, 1, S>({C});
      auto sit = tensor<T, 1, S>({C});
      auto dxt = tensor<T, 3, S>({N, C, L}, {3, 0, 0});
      auto dgt = tensor<T, 1, S>({C});
      auto dbt = tensor<T, 1, S>({C});
      nn_run<S> run;
      REQUIRE(nn::batch_norm_forward(run.ctx, xt.template view<const T>(), gt.template view<const T>(), bt.template view<const T>(), rmt.view(),
                                     rvt.view(), yt.view(), smt.view(), sit.view(), nn::batch_norm_params{eps, momentum, training})
                  .ok());
      REQUIRE(nn::batch_norm_backward(run.ctx, xt.template view<const T>(), gt.template view<const T>(), smt.template view<const T>(),
                                      sit.template view<const T>(), rt.template view<const T>(), dxt.view(), dgt.view(), dbt.view(), training)
                  .ok());
      run.sync();
      vec erm = rm, erv = rv, rdx, rdg, rdb;
      const vec want = ref::batch_norm(x, gamma, beta, N, C, L, training, eps, momentum, &erm, &erv);
      ref::batch_norm_backward(x, gamma, r, N, C, L, training, eps, rm, rv, rdx, rdg, rdb);
      CHECK_CLOSE("y", yt.get(), want, t);
      if (training) {
        CHECK_CLOSE("running mean", rmt.get(), erm, t);
        CHECK_CLOSE("running var", rvt.get(), erv, t);
      } else {  // evaluation uses the running statistics and leaves them alone
        CHECK(rmt.get() == rm);
        CHECK(rvt.get() == rv);
      }
      CHECK_CLOSE("dx", dxt.get(), rdx, scaled_tol<T>(rdx, {2e-4, 2e-4}));
      CHECK_CLOSE("dgamma", dgt.get(), rdg, sum_t);
      CHECK_CLOSE("dbeta", dbt.get(), rdb, sum_t);
      CHECK(xt.intact());
      CHECK(yt.intact());
      CHECK(dxt.intact());
      CHECK(rmt.intact());
      CHECK(rvt.intact());
      CHECK(smt.intact());
      CHECK(sit.intact());
      CHECK(dgt.intact());
      CHECK(dbt.intact());
    }
  }
}

// ---------------------------------------------------------------- convolutions

namespace conv {
struct conv_case {
  long B, Ci, H, W, Co, k, s, p;
};
}  // namespace conv

TEMPLATE_LIST_TEST_CASE("conv2d forward and backward match the direct reference (kernels, strides, padding, 1x1, batch < threads)",
                        "[nn][conv2d][grad]", storage_types) {
  using T = TestType;
  using conv::conv_case;
  distill_test::rng g(201);
  // the reference's analytic gradient against finite differences of its forward
  for (const auto& c : {conv_case{2, 2, 7, 7, 3, 3, 2, 1}, conv_case{3, 3, 5, 4, 2, 1, 1, 0}, conv_case{2, 1, 6, 5, 2, 3, 1, 0},
                        conv_case{1, 2, 5, 5, 2, 2, 2, 1}}) {
    CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p);
    const vec x = g.normals(c.B * c.Ci * c.H * c.W), w = g.normals(c.Co * c.Ci * c.k * c.k), b = g.normals(c.Co);
    long Ho, Wo;
    auto f = [&](const vec& xx, const vec& ww, const vec& bb) { return ref::conv2d(xx, ww, bb, c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, Ho, Wo); };
    const vec r = g.normals(f(x, w, b).size());
    vec dx, dw, db;
    ref::conv2d_backward(x, w, r, c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, dx, dw, db);
    CHECK_CLOSE("ref dx", dx, fd([&](const vec& v) { return dot(r, f(v, w, b)); }, x), distill_test::tol::fd);
    CHECK_CLOSE("ref dw", dw, fd([&](const vec& v) { return dot(r, f(x, v, b)); }, w), distill_test::tol::fd);
    CHECK_CLOSE("ref db", db, fd([&](const vec& v) { return dot(r, f(x, w, v)); }, b), distill_test::tol::fd);
  }
  std::vector<conv_case> cases = {{1, 3, 75, 75, 24, 3, 2, 1}, {3, 24, 19, 19, 24, 3, 2, 1}, {4, 24, 5, 5, 24, 3, 2, 1},
                                  {2, 5, 7, 9, 4, 1, 1, 0},    {4, 2, 8, 6, 3, 5, 1, 2},     {2, 3, 9, 7, 2, 2, 3, 0},
                                  {5, 1, 4, 4, 1, 4, 1, 0},    {1, 2, 3, 3, 5, 3, 1, 1}};
  if constexpr (!host) {  // the Relation-Network CNN's layers at batch 8
    cases.push_back({8, 3, 75, 75, 24, 3, 2, 1});
    cases.push_back({8, 24, 38, 38, 24, 3, 2, 1});
  }
  const tolerance t = tol_for<T>({1e-4, 1e-4}, {1e-11, 1e-10}), sum_t = tol_for<T>({2e-3, 2e-4}, {1e-10, 1e-10});  // dW, db sum B Ho Wo products
  for (const auto& c : cases)
    for (int threads : thread_counts()) {
      CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p, threads);
      const vec x = rounded<T>(g.normals(c.B * c.Ci * c.H * c.W)), w = rounded<T>(g.normals(c.Co * c.Ci * c.k * c.k, 0, 0.3)),
                b = rounded<T>(g.normals(c.Co));
      long Ho, Wo;
      const vec want = ref::conv2d(x, w, b, c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, Ho, Wo);
      const vec r = rounded<T>(g.normals(want.size()));
      // y, dy and dx with a batch stride that has a gap (the CPU): it must stay untouched
      auto xt = tensor_of<T, 4, S>({c.B, c.Ci, c.H, c.W}, x);
      auto wt = tensor_of<T, 4, S>({c.Co, c.Ci, c.k, c.k}, w);
      auto bt = tensor_of<T, 1, S>({c.Co}, b);
      auto rt = tensor_of<T, 4, S>({c.B, c.Co, Ho, Wo}, r, {4, 0, 0, 0});
      auto yt = tensor<T, 4, S>({c.B, c.Co, Ho, Wo}, {5, 0, 0, 0});
      auto dxt = tensor<T, 4, S>({c.B, c.Ci, c.H, c.W}, {3, 0, 0, 0});
      auto dwt = tensor<T, 4, S>({c.Co, c.Ci, c.k, c.k});
      auto dbt = tensor<T, 1, S>({c.Co});
      nn_run<S> run(threads);
      workspace<S> ws(nn::conv2d_workspace_size<T>(run.ctx, c.B, c.Ci, c.Co, c.k, c.k, Ho, Wo));
      const nn::conv2d_params p{c.s, c.s, c.p, c.p};
      REQUIRE(nn::conv2d_forward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), bt.template view<const T>(), yt.view(), ws.view(), p)
                  .ok());
      REQUIRE(nn::conv2d_backward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), rt.template view<const T>(), dxt.view(),
                                  dwt.view(), dbt.view(), ws.view(), p)
                  .ok());
      run.sync();
      vec rdx, rdw, rdb;
      ref::conv2d_backward(x, w, r, c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, rdx, rdw, rdb);
      CHECK_CLOSE("y", yt.get(), want, t);
      CHECK_CLOSE("dx", dxt.get(), rdx, t);
      CHECK_CLOSE("dw", dwt.get(), rdw, sum_t);
      CHECK_CLOSE("db", dbt.get(), rdb, sum_t);
      // accumulate into existing gradients
      REQUIRE(nn::conv2d_backward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), rt.template view<const T>(), dxt.view(),
                                  dwt.view(), tensor_view<T, 1, S>{}, ws.view(), p, nn::grad_options{true, true})
                  .ok());
      run.sync();
      CHECK_CLOSE("accumulated dx", dxt.get(), times(rdx, 2), t);
      CHECK_CLOSE("accumulated dw", dwt.get(), times(rdw, 2), sum_t);
      CHECK(xt.intact());
      CHECK(yt.intact());
      CHECK(rt.intact());
      CHECK(dxt.intact());
      CHECK(dwt.intact());
      CHECK(dbt.intact());
      CHECK(ws.intact());
    }
}

namespace conv {
struct dw_case {
  long B, C, H, W, k, s, p;
};
struct tr_case {
  long B, Ci, H, W, Co, k, s, p, op;
};

/// The checks shared by the convolution variants: `backward(opt)` runs the layer's backward into
/// dxt, dwt, dbt (after its forward into yt); y must match `want`, the gradients the finite
/// differences of r . f(x, w, b), a second, accumulating backward twice them; no tensor is
/// written outside its extent.
template <class T, class Run, class Y, class DX, class DW, class DB, class R, class WS, class F, class Backward>
void check_forward_backward(Run& run, Y& yt, DX& dxt, DW& dwt, DB& dbt, R& rt, WS& ws, const vec& want, const vec& r, const vec& x,
                            const vec& w, const vec& b, F f, Backward backward, tolerance t) {
  REQUIRE(backward(nn::grad_options{}).ok());
  run.sync();
  CHECK_CLOSE("y", yt.get(), want, t);
  const vec gx = fd([&](const vec& v) { return dot(r, f(v, w, b)); }, x), gw = fd([&](const vec& v) { return dot(r, f(x, v, b)); }, w),
            gb = fd([&](const vec& v) { return dot(r, f(x, w, v)); }, b);
  const tolerance tg = grad_tol<T>({1e-4, 1e-4});
  CHECK_CLOSE("dx", dxt.get(), gx, tg);
  CHECK_CLOSE("dw", dwt.get(), gw, tg);
  CHECK_CLOSE("db", dbt.get(), gb, tg);
  REQUIRE(backward(nn::grad_options{true, true}).ok());
  run.sync();
  CHECK_CLOSE("accumulated dx", dxt.get(), times(gx, 2), tg);
  CHECK_CLOSE("accumulated dw", dwt.get(), times(gw, 2), tg);
  CHECK_CLOSE("accumulated db", dbt.get(), times(gb, 2), tg);
  CHECK(yt.intact());
  CHECK(dxt.intact());
  CHECK(dwt.intact());
  CHECK(dbt.intact());
  CHECK(rt.intact());
  CHECK(ws.intact());
}
}  // namespace conv

TEMPLATE_LIST_TEST_CASE("depthwise_conv2d forward matches the direct reference, backward its finite differences, and accumulates",
                        "[nn][depthwise_conv2d][grad]", storage_types) {
  using T = TestType;
  distill_test::rng g(301);
  const tolerance t = tol_for<T>({1e-5, 1e-5});
  std::vector<conv::dw_case> cases = {{2, 3, 7, 7, 3, 1, 1}, {3, 4, 6, 5, 3, 2, 1}, {1, 2, 5, 5, 1, 1, 0}, {2, 1, 8, 6, 5, 1, 2}, {4, 3, 4, 4, 2, 2, 0}};
  if constexpr (!host) cases.push_back({3, 2, 12, 12, 3, 1, 1});  // B Ho Wo above one block of the dw / db reductions
  for (const auto& c : cases)
    for (int threads : thread_counts()) {
      CAPTURE(c.B, c.C, c.H, c.W, c.k, c.s, c.p, threads);
      const vec x = rounded<T>(g.normals(c.B * c.C * c.H * c.W)), w = rounded<T>(g.normals(c.C * c.k * c.k)), b = rounded<T>(g.normals(c.C));
      long Ho, Wo;
      auto f = [&](const vec& xx, const vec& ww, const vec& bb) {
        return ref::depthwise_conv2d(xx, ww, bb, c.B, c.C, c.H, c.W, c.k, c.k, c.s, c.s, c.p, c.p, Ho, Wo);
      };
      const vec want = f(x, w, b), r = rounded<T>(g.normals(want.size()));
      auto xt = tensor_of<T, 4, S>({c.B, c.C, c.H, c.W}, x);
      auto wt = tensor_of<T, 4, S>({c.C, 1, c.k, c.k}, w);
      auto bt = tensor_of<T, 1, S>({c.C}, b);
      auto rt = tensor_of<T, 4, S>({c.B, c.C, Ho, Wo}, r, {2, 0, 0, 0});
      auto yt = tensor<T, 4, S>({c.B, c.C, Ho, Wo}, {3, 0, 0, 0});
      auto dxt = tensor<T, 4, S>({c.B, c.C, c.H, c.W}, {1, 0, 0, 0});
      auto dwt = tensor<T, 4, S>({c.C, 1, c.k, c.k});
      auto dbt = tensor<T, 1, S>({c.C});
      nn_run<S> run(threads);
      workspace<S> ws(nn::depthwise_conv2d_workspace_size<T>(run.ctx, c.B, c.C, c.k, c.k, Ho, Wo));
      const nn::conv2d_params p{c.s, c.s, c.p, c.p};
      REQUIRE(nn::depthwise_conv2d_forward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), bt.template view<const T>(),
                                           yt.view(), ws.view(), p)
                  .ok());
      conv::check_forward_backward<T>(run, yt, dxt, dwt, dbt, rt, ws, want, r, x, w, b, f, [&](nn::grad_options opt) {
        return nn::depthwise_conv2d_backward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), rt.template view<const T>(),
                                          dxt.view(), dwt.view(), dbt.view(), ws.view(), p, opt);
      }, t);
    }
}

TEMPLATE_LIST_TEST_CASE("conv_transpose2d forward matches the scatter reference, backward its finite differences, and accumulates",
                        "[nn][conv_transpose2d][grad]", storage_types) {
  using T = TestType;
  distill_test::rng g(303);
  const tolerance t = tol_for<T>({1e-5, 1e-5});
  std::vector<conv::tr_case> cases = {{2, 4, 7, 7, 2, 3, 2, 1, 1}, {3, 3, 4, 5, 2, 3, 1, 1, 0}, {1, 2, 3, 3, 3, 2, 2, 0, 0},
                                     {2, 2, 5, 4, 3, 4, 3, 1, 2}, {4, 1, 2, 2, 1, 1, 1, 0, 0}};
  if constexpr (!host) cases.push_back({3, 2, 6, 6, 2, 3, 2, 1, 1});  // B Ho Wo above one block of the db reduction
  for (const auto& c : cases)
    for (int threads : thread_counts()) {
      CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p, c.op, threads);
      const vec x = rounded<T>(g.normals(c.B * c.Ci * c.H * c.W)), w = rounded<T>(g.normals(c.Ci * c.Co * c.k * c.k)),
                b = rounded<T>(g.normals(c.Co));
      long Ho, Wo;
      auto f = [&](const vec& xx, const vec& ww, const vec& bb) {
        return ref::conv_transpose2d(xx, ww, bb, c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, c.op, c.op, Ho, Wo);
      };
      const vec want = f(x, w, b), r = rounded<T>(g.normals(want.size()));
      auto xt = tensor_of<T, 4, S>({c.B, c.Ci, c.H, c.W}, x);
      auto wt = tensor_of<T, 4, S>({c.Ci, c.Co, c.k, c.k}, w);
      auto bt = tensor_of<T, 1, S>({c.Co}, b);
      auto rt = tensor_of<T, 4, S>({c.B, c.Co, Ho, Wo}, r, {2, 0, 0, 0});
      auto yt = tensor<T, 4, S>({c.B, c.Co, Ho, Wo}, {4, 0, 0, 0});
      auto dxt = tensor<T, 4, S>({c.B, c.Ci, c.H, c.W}, {1, 0, 0, 0});
      auto dwt = tensor<T, 4, S>({c.Ci, c.Co, c.k, c.k});
      auto dbt = tensor<T, 1, S>({c.Co});
      nn_run<S> run(threads);
      workspace<S> ws(nn::conv_transpose2d_workspace_size<T>(run.ctx, c.B, c.Ci, c.Co, c.k, c.k, c.H, c.W));
      const nn::conv_transpose2d_params p{c.s, c.s, c.p, c.p, c.op, c.op};
      REQUIRE(nn::conv_transpose2d_forward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), bt.template view<const T>(),
                                           yt.view(), ws.view(), p)
                  .ok());
      conv::check_forward_backward<T>(run, yt, dxt, dwt, dbt, rt, ws, want, r, x, w, b, f, [&](nn::grad_options opt) {
        return nn::conv_transpose2d_backward(run.ctx, xt.template view<const T>(), wt.template view<const T>(), rt.template view<const T>(),
                                          dxt.view(), dwt.view(), dbt.view(), ws.view(), p, opt);
      }, t);
    }
}

// ---------------------------------------------------------------- pooling

/// Central finite differences of <r, pool2d(x)>, one (H, W) plane at a time (planes pool
/// independently, so this is the full gradient at a fraction of the cost).
inline vec plane_fd(const vec& x, const vec& r, long planes, long H, long W, long k, long s, bool is_max) {
  const long Ho = nn::pool2d_output_extent(H, k, s), Wo = nn::pool2d_output_extent(W, k, s);
  vec grad;
  for (long p = 0; p < planes; ++p) {
    const vec xp(x.begin() + p * H * W, x.begin() + (p + 1) * H * W), rp(r.begin() + p * Ho * Wo, r.begin() + (p + 1) * Ho * Wo);
    const vec gp = fd([&](const vec& v) { return dot(rp, ref::pool2d(v, 1, 1, H, W, k, s, is_max)); }, xp);
    grad.insert(grad.end(), gp.begin(), gp.end());
  }
  return grad;
}

TEMPLATE_LIST_TEST_CASE("pooling: max/average/global against the reference, gradients against finite differences", "[nn][pooling][grad]",
                        storage_types) {
  using T = TestType;
  distill_test::rng g(210);
  const tolerance t = tol_for<T>(distill_test::tol::f32), tg = grad_tol<T>({1e-5, 1e-5});
  for (auto [N, C, H, W] : {std::array<long, 4>{2, 3, 7, 8}, std::array<long, 4>{3, 5, 11, 9}})
    for (auto [k, s] : {std::pair<long, long>{2, 2}, {3, 2}, {2, 1}, {3, 3}, {3, 1}}) {
      CAPTURE(N, C, H, W, k, s);
      const vec x = rounded<T>(g.normals(N * C * H * W));  // distinct values: no ties, max is differentiable
      const long Ho = nn::pool2d_output_extent(H, k, s), Wo = nn::pool2d_output_extent(W, k, s);
      std::vector<int> ref_arg;
      const vec ymax = ref::pool2d(x, N, C, H, W, k, s, true, &ref_arg), yavg = ref::pool2d(x, N, C, H, W, k, s, false);
      const vec r = rounded<T>(g.normals(ymax.size()));
      auto xt = tensor_of<T, 4, S>({N, C, H, W}, x, {3, 0, 0, 0});
      auto rt = tensor_of<T, 4, S>({N, C, Ho, Wo}, r, {1, 0, 0, 0});
      auto yt = tensor<T, 4, S>({N, C, Ho, Wo}, {2, 0, 0, 0});
      auto dxt = tensor<T, 4, S>({N, C, H, W}, {1, 0, 0, 0});
      auto argt = tensor<std::int32_t, 4, S>({N, C, Ho, Wo});
      const nn::pool2d_params p{k, s};
      nn_run<S> run;
      REQUIRE(nn::max_pool2d_forward(run.ctx, xt.template view<const T>(), yt.view(), argt.view(), p).ok());
      REQUIRE(nn::max_pool2d_backward(run.ctx, rt.template view<const T>(), argt.template view<const std::int32_t>(), dxt.view(), p).ok());
      run.sync();
      CHECK_CLOSE("max", yt.get(), ymax, t);
      CHECK(argt.get() == vec(ref_arg.begin(), ref_arg.end()));
      CHECK_CLOSE("max dx", dxt.get(), plane_fd(x, r, N * C, H, W, k, s, true), tg);
      REQUIRE(nn::avg_pool2d_forward(run.ctx, xt.template view<const T>(), yt.view(), p).ok());
      REQUIRE(nn::avg_pool2d_backward(run.ctx, rt.template view<const T>(), dxt.view(), p).ok());
      run.sync();
      CHECK_CLOSE("avg", yt.get(), yavg, t);
      CHECK_CLOSE("avg dx", dxt.get(), plane_fd(x, r, N * C, H, W, k, s, false), tg);
      CHECK(xt.intact());
      CHECK(yt.intact());
      CHECK(dxt.intact());
      CHECK(argt.intact());
      CHECK(rt.intact());
    }
  // global average
  for (auto [N, C, L] : {std::array<long, 3>{3, 4, 25}, std::array<long, 3>{3, 5, 99}}) {
    CAPTURE(N, C, L);
    const vec x = rounded<T>(g.normals(N * C * L)), r = rounded<T>(g.normals(N * C));
    auto gap = [&, N = N, C = C, L = L](const vec& v) {
      vec o(static_cast<std::size_t>(N * C), 0.0);
      for (long i = 0; i < N * C; ++i)
        for (long j = 0; j < L; ++j) o[static_cast<std::size_t>(i)] += v[static_cast<std::size_t>(i * L + j)] / L;
      return o;
    };
    auto xt = tensor_of<T, 3, S>({N, C, L}, x, {2, 0, 0});
    auto rt = tensor_of<T, 2, S>({N, C}, r, {1, 0});
    auto yt = tensor<T, 2, S>({N, C}, {3, 0});
    auto dxt = tensor<T, 3, S>({N, C, L}, {1, 0, 0});
    nn_run<S> run;
    REQUIRE(nn::global_avg_pool_forward(run.ctx, xt.template view<const T>(), yt.view()).ok());
    REQUIRE(nn::global_avg_pool_backward(run.ctx, rt.template view<const T>(), dxt.view()).ok());
    run.sync();
    CHECK_CLOSE("global avg", yt.get(), gap(x), t);
    CHECK_CLOSE("global avg dx", dxt.get(), fd([&](const vec& v) { return dot(r, gap(v)); }, x), tg);
    CHECK(yt.intact());
    CHECK(dxt.intact());
  }
}

// ---------------------------------------------------------------- embedding, cross-entropy, argmax

TEMPLATE_LIST_TEST_CASE("embedding gathers rows and scatters gradients (repeated ids add up)", "[nn][embedding]", storage_types) {
  using T = TestType;
  distill_test::rng g(150);
  const long V = 50, D = 33, N = 70;
  std::vector<std::int32_t> ids(N);
  for (auto& i : ids) i = static_cast<std::int32_t>(g.integer(0, V - 1));
  const vec table = rounded<T>(g.normals(V * D)), r = rounded<T>(g.normals(N * D));
  guarded_array<std::int32_t, S> idt(ids);
  auto tt = tensor_of<T, 2, S>({V, D}, table, {2, 0});
  auto rt = tensor_of<T, 2, S>({N, D}, r, {1, 0});
  auto yt = tensor<T, 2, S>({N, D}, {3, 0});
  auto dtt = tensor<T, 2, S>({V, D});
  nn_run<S> run;
  REQUIRE(nn::embedding_forward<std::int32_t, T>(run.ctx, idt.template view<const std::int32_t>(), tt.template view<const T>(), yt.view()).ok());
  REQUIRE(nn::embedding_backward<std::int32_t, T>(run.ctx, idt.template view<const std::int32_t>(), rt.template view<const T>(), dtt.view()).ok());
  run.sync();
  vec want(static_cast<std::size_t>(N * D));
  auto loss = [&](const vec& tab) {
    double s = 0;
    for (long n = 0; n < N; ++n)
      for (long d = 0; d < D; ++d) s += r[static_cast<std::size_t>(n * D + d)] * tab[static_cast<std::size_t>(ids[static_cast<std::size_t>(n)] * D + d)];
    return s;
  };
  for (long n = 0; n < N; ++n)
    for (long d = 0; d < D; ++d) want[static_cast<std::size_t>(n * D + d)] = table[static_cast<std::size_t>(ids[static_cast<std::size_t>(n)] * D + d)];
  CHECK(yt.get() == want);  // a copy, bitwise
  CHECK_CLOSE("dtable", dtt.get(), fd(loss, table), grad_tol<T>(distill_test::tol::f32));
  CHECK(yt.intact());
  CHECK(dtt.intact());
  CHECK(idt.intact());
}

/// Softmax cross-entropy with labels of type L, every reduction and label smoothing, against the
/// reference and finite differences of it; argmax against the first maximum.
template <class T, class L>
void check_cross_entropy(distill_test::rng& g) {
  const long N = 70, C = 10;
  CAPTURE(sizeof(L));
  const vec z = rounded<T>(g.normals(N * C, 0, 3));
  std::vector<L> labels(N);
  for (auto& l : labels) l = g.coin(0.1) ? L(-100) : static_cast<L>(g.integer(0, C - 1));
  labels[2] = -100;  // at least one ignored row
  const std::vector<long> lab(labels.begin(), labels.end());
  auto zt = tensor_of<T, 2, S>({N, C}, z, {2, 0});
  guarded_array<L, S> lt(labels);
  const reduction reds[] = {reduction::none, reduction::sum, reduction::mean, reduction::batchmean};
  for (int ri = 0; ri < 4; ++ri)
    for (double eps : {0.0, 0.1}) {
      CAPTURE(ri, eps);
      const double scale = 1.7;
      const nn::cross_entropy_options o{reds[ri], -100, eps, scale};
      const long nl = ri == 0 ? N : 1;
      auto losst = tensor<T, 1, S>({nl});
      auto gradt = tensor<T, 2, S>({N, C}, {1, 0});
      nn_run<S> run;
      REQUIRE(nn::softmax_cross_entropy_forward_backward(run.ctx, zt.template view<const T>(), lt.template view<const L>(), losst.view(), gradt.view(), o)
                  .ok());
      run.sync();
      CHECK_CLOSE("loss", losst.get(), ref::cross_entropy(z, lab, N, C, eps, -100, ri), tol_for<T>(distill_test::tol::f32_sum));
      const vec grad = gradt.get();
      auto f = [&](const vec& zz) {
        double s = 0;
        for (double v : ref::cross_entropy(zz, lab, N, C, eps, -100, ri)) s += v;
        return scale * s;
      };
      CHECK_CLOSE("grad", grad, fd(f, z), grad_tol<T>(distill_test::tol::f32));
      for (long c = 0; c < C; ++c) CHECK(grad[static_cast<std::size_t>(2 * C + c)] == 0.0);  // ignored row
      CHECK(losst.intact());
      CHECK(gradt.intact());
    }
  // the forward-only entry point (mean over valid rows)
  auto losst = tensor<T, 1, S>({1});
  auto idxt = tensor<std::int32_t, 1, S>({N});
  nn_run<S> run;
  REQUIRE(nn::softmax_cross_entropy_forward(run.ctx, zt.template view<const T>(), lt.template view<const L>(), losst.view()).ok());
  REQUIRE(nn::argmax_rows(run.ctx, zt.template view<const T>(), idxt.view()).ok());
  run.sync();
  CHECK_CLOSE("forward-only loss", losst.get(), ref::cross_entropy(z, lab, N, C, 0, -100, 2), tol_for<T>(distill_test::tol::f32_sum));
  vec want(static_cast<std::size_t>(N));
  for (long n = 0; n < N; ++n) {
    long best = 0;
    for (long c = 1; c < C; ++c)
      if (z[static_cast<std::size_t>(n * C + c)] > z[static_cast<std::size_t>(n * C + best)]) best = c;
    want[static_cast<std::size_t>(n)] = static_cast<double>(best);
  }
  CHECK(idxt.get() == want);
  CHECK(losst.intact());
  CHECK(idxt.intact());
  CHECK(zt.intact());
}

TEMPLATE_LIST_TEST_CASE("softmax cross-entropy: every reduction, ignore_index, label smoothing, gradient by finite differences; argmax",
                        "[nn][cross_entropy][grad]", storage_types) {
  distill_test::rng g(401);
  check_cross_entropy<TestType, std::int32_t>(g);
  if constexpr (host) check_cross_entropy<TestType, std::int64_t>(g);
}

// ---------------------------------------------------------------- attention

inline std::vector<std::uint8_t> random_mask(distill_test::rng& g, long B, long Lk, bool mask_all_of_first) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B * Lk));
  for (auto& v : m) v = g.coin(0.7) ? 1 : 0;
  for (long b = 0; b < B; ++b) m[static_cast<std::size_t>(b * Lk)] = 1;  // at least one valid key...
  if (mask_all_of_first)
    for (long j = 0; j < Lk; ++j) m[static_cast<std::size_t>(j)] = 0;  // ...except batch 0: no valid key at all
  return m;
}
/// <r, x> over finite entries of x (masked scores are -inf and carry no gradient).
inline double finite_dot(const vec& r, const vec& x) {
  double s = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (std::isfinite(x[i])) s += r[i] * x[i];
  return s;
}

TEMPLATE_LIST_TEST_CASE("attention core: output, probabilities, scores, masks and the backward with extra gradients match the reference",
                        "[nn][attention][grad]", storage_types) {
  using T = TestType;
  distill_test::rng g(302);
  {  // the reference's analytic gradient against finite differences of its forward
    const long B = 2, Lq = 3, Lk = 4, D = 6, H = 2;
    const double scale = 1 / std::sqrt(3.0);
    const vec q = g.normals(B * Lq * D), k = g.normals(B * Lk * D), v = g.normals(B * Lk * D);
    const auto mask = random_mask(g, B, Lk, false);
    const vec r = g.normals(B * Lq * D), rp = g.normals(B * H * Lq * Lk), rs = g.normals(B * H * Lq * Lk);
    auto loss = [&](const vec& qq, const vec& kk, const vec& vv) {
      vec P, Sc;
      const vec o = ref::attention_core(qq, kk, vv, mask, B, Lq, Lk, D, H, scale, &P, &Sc);
      return dot(r, o) + dot(rp, P) + finite_dot(rs, Sc);
    };
    vec dq, dk, dv;
    ref::attention_core_backward(q, k, v, mask, r, rp, rs, B, Lq, Lk, D, H, scale, dq, dk, dv);
    CHECK_CLOSE("ref dq", dq, fd([&](const vec& x) { return loss(x, k, v); }, q), distill_test::tol::fd);
    CHECK_CLOSE("ref dk", dk, fd([&](const vec& x) { return loss(q, x, v); }, k), distill_test::tol::fd);
    CHECK_CLOSE("ref dv", dv, fd([&](const vec& x) { return loss(q, k, x); }, v), distill_test::tol::fd);
  }
  struct shape_case {
    long B, Lq, Lk, D, H;
    bool masked;
  };
  std::vector<shape_case> cases = {{2, 5, 7, 8, 2, true}, {1, 1, 1, 4, 1, false}, {3, 9, 4, 12, 3, true}, {2, 16, 16, 32, 4, false},
                                   {2, 7, 5, 8, 2, true}, {3, 1, 40, 12, 3, true}};
  if constexpr (!host) cases.push_back({32, 64, 64, 128, 4, true});  // several tiles per head
  const tolerance t = tol_for<T>({2e-4, 2e-4}, {1e-11, 1e-10});
  for (const auto& c : cases)
    for (int threads : thread_counts()) {
      CAPTURE(c.B, c.Lq, c.Lk, c.D, c.H, c.masked, threads);
      const double scale = 1 / std::sqrt(static_cast<double>(c.D / c.H));
      const vec q = rounded<T>(g.normals(c.B * c.Lq * c.D)), k = rounded<T>(g.normals(c.B * c.Lk * c.D)), v = rounded<T>(g.normals(c.B * c.Lk * c.D));
      const long M = c.B * c.H * c.Lq * c.Lk;
      const vec dO = rounded<T>(g.normals(c.B * c.Lq * c.D)), gp = rounded<T>(g.normals(M)), gs = rounded<T>(g.normals(M));
      const auto mask = c.masked ? random_mask(g, c.B, c.Lk, true) : std::vector<std::uint8_t>{};
      auto qt = tensor_of<T, 3, S>({c.B, c.Lq, c.D}, q, {2, 0, 0});
      auto kt = tensor_of<T, 3, S>({c.B, c.Lk, c.D}, k);
      auto vt = tensor_of<T, 3, S>({c.B, c.Lk, c.D}, v);
      auto dOt = tensor_of<T, 3, S>({c.B, c.Lq, c.D}, dO);
      auto gpt = tensor_of<T, 4, S>({c.B, c.H, c.Lq, c.Lk}, gp);
      auto gst = tensor_of<T, 4, S>({c.B, c.H, c.Lq, c.Lk}, gs);
      auto mt = tensor<std::uint8_t, 2, S>({c.B, c.Lk});
      if (c.masked) mt.set(vec(mask.begin(), mask.end()));
      auto Pt = tensor<T, 4, S>({c.B, c.H, c.Lq, c.Lk});
      auto St = tensor<T, 4, S>({c.B, c.H, c.Lq, c.Lk});
      auto Ot = tensor<T, 3, S>({c.B, c.Lq, c.D}, {1, 0, 0});
      auto dqt = tensor<T, 3, S>({c.B, c.Lq, c.D});
      auto dkt = tensor<T, 3, S>({c.B, c.Lk, c.D});
      auto dvt = tensor<T, 3, S>({c.B, c.Lk, c.D});
      nn_run<S> run(threads);
      workspace<S> ws(nn::attention_core_workspace_size<T>(run.ctx, c.B, c.H, c.Lq, c.Lk));
      const auto mv = c.masked ? mt.template view<const std::uint8_t>() : absent<std::uint8_t, 2, S>();
      const nn::attention_params p{c.H, 0};
      REQUIRE(nn::attention_core_forward(run.ctx, qt.template view<const T>(), kt.template view<const T>(), vt.template view<const T>(), mv, Pt.view(),
                                         St.view(), Ot.view(), p)
                  .ok());
      REQUIRE(nn::attention_core_backward(run.ctx, qt.template view<const T>(), kt.template view<const T>(), vt.template view<const T>(), mv,
                                          Pt.template view<const T>(), dOt.template view<const T>(), gpt.template view<const T>(),
                                          gst.template view<const T>(), dqt.view(), dkt.view(), dvt.view(), ws.view(), p)
                  .ok());
      run.sync();
      vec rp, rs, rdq, rdk, rdv;
      const vec ro = ref::attention_core(q, k, v, mask, c.B, c.Lq, c.Lk, c.D, c.H, scale, &rp, &rs);
      ref::attention_core_backward(q, k, v, mask, dO, gp, gs, c.B, c.Lq, c.Lk, c.D, c.H, scale, rdq, rdk, rdv);
      const vec probs = Pt.get();
      CHECK_CLOSE("o", Ot.get(), ro, t);
      CHECK_CLOSE("probs", probs, rp, t);
      CHECK_CLOSE("scores", St.get(), rs, t);  // -inf at masked keys on both sides
      CHECK_CLOSE("dq", dqt.get(), rdq, t);
      CHECK_CLOSE("dk", dkt.get(), rdk, t);
      CHECK_CLOSE("dv", dvt.get(), rdv, t);
      // rows sum to 1, or to 0 when no key is valid
      for (long row = 0; row < c.B * c.H * c.Lq; ++row) {
        double s = 0;
        for (long j = 0; j < c.Lk; ++j) s += probs[static_cast<std::size_t>(row * c.Lk + j)];
        CHECK(s == Approx(c.masked && row / (c.H * c.Lq) == 0 ? 0.0 : 1.0).margin(1e-5));
      }
      CHECK(qt.intact());
      CHECK(Pt.intact());
      CHECK(St.intact());
      CHECK(Ot.intact());
      CHECK(dqt.intact());
      CHECK(dkt.intact());
      CHECK(dvt.intact());
      CHECK(ws.intact());
    }
}

TEMPLATE_LIST_TEST_CASE("multi-head attention layer: self- and cross-attention against the reference, gradients by finite differences",
                        "[nn][attention][grad]", storage_types) {
  using T = TestType;
  distill_test::rng g(303);
  const long B = 2, Lq = 3, Lk = 5, D = 4, H = 2;
  const tolerance t = tol_for<T>({2e-4, 2e-4}), tg = grad_tol<T>({2e-4, 2e-4});
  for (long kv_dim : {4L, 6L}) {
    const bool self = kv_dim == D;
    const long L2 = self ? Lq : Lk;
    CAPTURE(self);
    nn::multi_head_attention<T, S> mha("attn", D, H, {.seed = 5}, kv_dim);
    nn::multi_head_attention<T> host_twin("attn", D, H, {.seed = 5}, kv_dim);
    CHECK(mha.q_proj.weight.value.to_host() == host_twin.q_proj.weight.value.to_host());  // reproducible init across backends
    const vec xq = rounded<T>(g.normals(B * Lq * D)), xkv = self ? xq : rounded<T>(g.normals(B * L2 * kv_dim));
    const auto mask = random_mask(g, B, L2, false);
    auto wide = [](const auto& t_) { return vec(t_.begin(), t_.end()); };
    const vec wq = wide(mha.q_proj.weight.value.to_host()), bq = wide(mha.q_proj.bias.value.to_host());
    const vec wk = wide(mha.k_proj.weight.value.to_host()), bk = wide(mha.k_proj.bias.value.to_host());
    const vec wv = wide(mha.v_proj.weight.value.to_host()), bv = wide(mha.v_proj.bias.value.to_host());
    const vec wo = wide(mha.out_proj.weight.value.to_host()), bo = wide(mha.out_proj.bias.value.to_host());
    vec ref_probs;
    auto model = [&](const vec& a, const vec& c, const vec& wq_) {
      const vec q = ref::linear(a, wq_, bq, B * Lq, D, D), k = ref::linear(c, wk, bk, B * L2, kv_dim, D), v = ref::linear(c, wv, bv, B * L2, kv_dim, D);
      const vec o = ref::attention_core(q, k, v, mask, B, Lq, L2, D, H, 1 / std::sqrt(2.0), &ref_probs, nullptr);
      return ref::linear(o, wo, bo, B * Lq, D, D);
    };
    auto xqt = tensor_of<T, 3, S>({B, Lq, D}, xq);
    auto xkvt = tensor_of<T, 3, S>({B, L2, kv_dim}, xkv);
    auto mt = tensor_of<std::uint8_t, 2, S>({B, L2}, vec(mask.begin(), mask.end()));
    auto yt = tensor<T, 3, S>({B, Lq, D});
    auto rt = tensor<T, 3, S>({B, Lq, D});
    auto dxqt = tensor<T, 3, S>({B, Lq, D});
    auto dxkvt = tensor<T, 3, S>({B, L2, kv_dim});
    const vec r = rounded<T>(g.normals(B * Lq * D));
    rt.set(r);
    nn_run<S> run;
    REQUIRE(mha.forward(run.ctx, xqt.template view<const T>(), xkvt.template view<const T>(), mt.template view<const std::uint8_t>(), yt.view()).ok());
    // self-attention: the same view for dxq and dxkv, both paths summed
    auto dkv = self ? dxqt.view() : dxkvt.view();
    REQUIRE(mha.backward(run.ctx, xqt.template view<const T>(), xkvt.template view<const T>(), mt.template view<const std::uint8_t>(),
                         rt.template view<const T>(), dxqt.view(), dkv)
                .ok());
    run.sync();
    CHECK_CLOSE("y", yt.get(), model(xq, xkv, wq), t);
    CHECK(mha.attention_probs().extent(1) == H);
    CHECK_CLOSE("probs", wide(mha.probs.to_host()), ref_probs, t);
    if (self) {
      CHECK_CLOSE("dx (self)", dxqt.get(), fd([&](const vec& x) { return dot(r, model(x, x, wq)); }, xq), tg);
    } else {
      CHECK_CLOSE("dxq", dxqt.get(), fd([&](const vec& x) { return dot(r, model(x, xkv, wq)); }, xq), tg);
      CHECK_CLOSE("dxkv", dxkvt.get(), fd([&](const vec& x) { return dot(r, model(xq, x, wq)); }, xkv), tg);
    }
    CHECK_CLOSE("dWq", wide(mha.q_proj.weight.grad.to_host()), fd([&](const vec& w) { return dot(r, model(xq, xkv, w)); }, wq), tg);
    CHECK(mha.parameters().size() == 8);
    CHECK(yt.intact());
    CHECK(dxqt.intact());
    CHECK(dxkvt.intact());
  }
}

// ---------------------------------------------------------------- token layout, cast

TEMPLATE_LIST_TEST_CASE("nchw_to_tokens and tokens_to_nchw are inverse transposes", "[nn][reshape]", storage_types) {
  using T = TestType;
  distill_test::rng g(160);
  for (auto [B, C, L] : {std::array<long, 3>{3, 37, 45}, std::array<long, 3>{3, 24, 25}, std::array<long, 3>{1, 1, 7}}) {
    CAPTURE(B, C, L);
    const vec x = rounded<T>(g.normals(B * C * L));
    auto xt = tensor_of<T, 3, S>({B, C, L}, x, {3, 0, 0});
    auto tt = tensor<T, 3, S>({B, L, C}, {2, 0, 0});
    auto back = tensor<T, 3, S>({B, C, L}, {1, 0, 0});
    nn_run<S> run;
    REQUIRE(nn::nchw_to_tokens(run.ctx, xt.template view<const T>(), tt.view()).ok());
    REQUIRE(nn::tokens_to_nchw(run.ctx, tt.template view<const T>(), back.view()).ok());
    run.sync();
    const vec tok = tt.get();
    long mismatches = 0;
    for (long b = 0; b < B; ++b)
      for (long c = 0; c < C; ++c)
        for (long s = 0; s < L; ++s) mismatches += tok[static_cast<std::size_t>((b * L + s) * C + c)] != x[static_cast<std::size_t>((b * C + c) * L + s)];
    CHECK(mismatches == 0);
    CHECK(back.get() == x);
    CHECK(tt.intact());
    CHECK(back.intact());
  }
}

TEST_CASE("cast converts float to 16-bit storage with round-to-nearest-even, and back exactly", "[nn][cast]") {
  distill_test::rng g(170);
  const long R = 33, C = 77;
  vec x = g.normals(R * C, 0, 100);
  x[0] = INFINITY, x[1] = -INFINITY, x[2] = 1e-30, x[3] = 65504.0, x[4] = 70000.0;
  x = rounded<float>(x);
  auto xt = tensor_of<float, 2, S>({R, C}, x, {2, 0});
  auto bt = tensor<bfloat16, 2, S>({R, C}, {1, 0});
  auto ht = tensor<float16, 2, S>({R, C}, {3, 0});
  auto backt = tensor<float, 2, S>({R, C});
  nn_run<S> run;
  REQUIRE(nn::cast(run.ctx, xt.template view<const float>(), bt.view()).ok());
  REQUIRE(nn::cast(run.ctx, xt.template view<const float>(), ht.view()).ok());
  REQUIRE(nn::cast(run.ctx, bt.template view<const bfloat16>(), backt.view()).ok());
  run.sync();
  const vec b = bt.get(), h = ht.get(), back = backt.get();
  long mismatches = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float xf = static_cast<float>(x[i]);
    // the conversions' definitions (core/dtype.hpp), which test/core checks bit by bit
    mismatches += b[i] != static_cast<double>(static_cast<float>(bfloat16(xf)));
    mismatches += !(h[i] == static_cast<double>(static_cast<float>(float16(xf))) || (std::isnan(h[i]) && std::isnan(static_cast<float>(float16(xf)))));
    mismatches += back[i] != b[i];
  }
  CHECK(mismatches == 0);
  CHECK(std::isinf(h[4]));  // above the float16 range
  if constexpr (host) {  // and to double, exactly
    auto dt = tensor<double, 2, S>({R, C}, {1, 0});
    REQUIRE(nn::cast(run.ctx, xt.template view<const float>(), dt.view()).ok());
    CHECK(dt.get() == x);
    CHECK(dt.intact());
  }
  CHECK(bt.intact());
  CHECK(ht.intact());
  CHECK(backt.intact());
}

}  // namespace nn_cases
