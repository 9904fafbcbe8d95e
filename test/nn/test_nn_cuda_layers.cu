// CUDA nn layers against the CPU path (itself checked against the double references and finite
// differences in the CPU tests) and, for the forward passes, against the double references
// directly. Wrong memory spaces produce a clear status.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

#include "distill/nn/activation.hpp"
#include "distill/nn/attention.hpp"
#include "distill/nn/batch_norm.hpp"
#include "distill/nn/cast.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/dropout.hpp"
#include "distill/nn/embedding.hpp"
#include "distill/nn/layer_norm.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/pooling.hpp"
#include "distill/nn/reshape.hpp"
#include "nn_test_util.hpp"
#include "reference/nn_ref.hpp"
#include "support/device_buffer.cuh"

using namespace distill;
using nn_test::vec;
namespace ref = distill_ref::nn;
using distill_test::cuda_sync;

namespace {
/// Device tensor holding `values` (as T).
template <class T>
nn::device_tensor<T> dev(const nn::tensor_shape& s, const std::vector<T>& values) {
  nn::device_tensor<T> t(s);
  REQUIRE(t.copy_from_host(values).ok());
  return t;
}
template <class T>
nn::device_tensor<T> dev(const nn::tensor_shape& s, const vec& values) {
  return dev<T>(s, nn_test::cast<T>(values));
}
constexpr distill_test::tolerance f32_gemm{1e-4, 1e-4};  // float GEMMs: summation order differs
}  // namespace

TEST_CASE("CUDA tensors: upload, download, zero, and host memory refused as device memory", "[nn][cuda]") {
  nn::cuda_blas blas;
  const std::vector<float> h = {1, 2, 3, 4, 5, 6};
  auto t = dev<float>({2, 3}, h);
  CHECK(t.to_host() == h);
  REQUIRE(nn::fill_zero(blas, t.view<2>()).ok());
  cuda_sync();
  CHECK(t.to_host() == std::vector<float>(6, 0.0f));
  CHECK(t.resize({4, 5}).ok());  // grows
  CHECK(t.size() == 20);
  std::vector<float> x(12), w(6), y(8);
  const auto st = nn::linear_forward(blas, make_view<cuda_space>(static_cast<const float*>(x.data()), 4, 3),
                                     make_view<cuda_space>(static_cast<const float*>(w.data()), 2, 3), cuda_view<const float, 1>{},
                                     make_view<cuda_space>(y.data(), 4, 2));
  CHECK(st.code() == errc::wrong_memory_space);
  CHECK(st.message().find("'x'") != std::string::npos);
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("CUDA linear matches the CPU path and the reference in every GEMM mode", "[nn][cuda][linear]") {
  distill_test::rng g(601);
  for (auto math : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    nn::cuda_blas blas(nullptr, math);
    const distill_test::tolerance tol = math == distill::matmul_precision::fp32 ? f32_gemm
                                        : math == distill::matmul_precision::tf32  ? distill_test::tolerance{2e-2, 2e-2}
                                                                       : distill_test::tolerance{1e-1, 5e-2};
    for (int trial = 0; trial < 6; ++trial) {
      const long N = g.integer(1, 300), I = g.integer(1, 130), O = g.integer(1, 90);
      CAPTURE(distill::to_string(math), N, I, O);
      const vec x = g.normals(N * I), w = g.normals(O * I, 0, 0.3), b = g.normals(O), dy = g.normals(N * O);
      auto dx_ = dev<float>({N, I}, x), dw_ = dev<float>({O, I}, w), db_ = dev<float>({O}, b), ddy = dev<float>({N, O}, dy);
      nn::device_tensor<float> dyv({N, O}), ddx({N, I}), ddw({O, I}), ddb({O});
      REQUIRE(nn::linear_forward(blas, dx_.cview<2>(), dw_.cview<2>(), db_.cview<1>(), dyv.view<2>()).ok());
      REQUIRE(nn::linear_backward(blas, dx_.cview<2>(), dw_.cview<2>(), ddy.cview<2>(), ddx.view<2>(), ddw.view<2>(), ddb.view<1>()).ok());
      cuda_sync();
      const auto xf = nn_test::cast<float>(x), wf = nn_test::cast<float>(w), bf = nn_test::cast<float>(b), dyf = nn_test::cast<float>(dy);
      std::vector<float> y(N * O), gx(N * I), gw(O * I), gb(O);
      REQUIRE(nn::linear_forward(cpu{2}, make_view(xf.data(), N, I), make_view(wf.data(), O, I), make_view(bf.data(), O), make_view(y.data(), N, O)).ok());
      REQUIRE(nn::linear_backward(cpu{2}, make_view(xf.data(), N, I), make_view(wf.data(), O, I), make_view(dyf.data(), N, O), make_view(gx.data(), N, I),
                                  make_view(gw.data(), O, I), make_view(gb.data(), O))
                  .ok());
      CHECK_CLOSE("y vs CPU", dyv.to_host(), y, tol);
      CHECK_CLOSE("y vs reference", dyv.to_host(), ref::linear(nn_test::widen(xf), nn_test::widen(wf), nn_test::widen(bf), N, I, O), tol);
      CHECK_CLOSE("dx", ddx.to_host(), gx, tol);
      CHECK_CLOSE("dw", ddw.to_host(), gw, tol);
      CHECK_CLOSE("db", ddb.to_host(), gb, f32_gemm);  // column sums never use tensor cores
    }
  }
}

TEST_CASE("CUDA activations, dropout (bitwise the CPU masks), layer norm, token transposes", "[nn][cuda]") {
  distill_test::rng g(602);
  nn::cuda_blas blas;
  const long R = 33, C = 77;
  const vec x = g.normals(R * C, 0, 2), r = g.normals(R * C);
  const auto xf = nn_test::cast<float>(x), rf = nn_test::cast<float>(r);
  auto dxin = dev<float>({R, C}, x), dr = dev<float>({R, C}, r);
  nn::device_tensor<float> dy({R, C}), dg({R, C});
  std::vector<float> y(R * C), gx(R * C);
  for (auto a : {nn::activation::relu, nn::activation::gelu, nn::activation::gelu_tanh, nn::activation::tanh, nn::activation::sigmoid}) {
    CAPTURE(nn::to_string(a));
    REQUIRE(nn::activation_forward(blas, a, dxin.cview<2>(), dy.view<2>()).ok());
    REQUIRE(nn::activation_backward(blas, a, dxin.cview<2>(), dr.cview<2>(), dg.view<2>()).ok());
    REQUIRE(nn::activation_forward(cpu{1}, a, make_view(xf.data(), R, C), make_view(y.data(), R, C)).ok());
    REQUIRE(nn::activation_backward(cpu{1}, a, make_view(xf.data(), R, C), make_view(rf.data(), R, C), make_view(gx.data(), R, C)).ok());
    CHECK_CLOSE("y", dy.to_host(), y, distill_test::tol::f32);
    CHECK_CLOSE("dx", dg.to_host(), gx, distill_test::tol::f32);
  }
  for (double p : {0.0, 0.3, 1.0}) {
    const nn::dropout_params d{p, 42, 1000, true};
    REQUIRE(nn::dropout_forward(blas, dxin.cview<2>(), dy.view<2>(), d).ok());
    REQUIRE(nn::dropout_backward(blas, dr.cview<2>(), dg.view<2>(), d).ok());
    REQUIRE(nn::dropout_forward(cpu{2}, make_view(xf.data(), R, C), make_view(y.data(), R, C), d).ok());
    REQUIRE(nn::dropout_backward(cpu{2}, make_view(rf.data(), R, C), make_view(gx.data(), R, C), d).ok());
    CHECK(dy.to_host() == y);
    CHECK(dg.to_host() == gx);
  }
  // layer norm
  auto gamma = nn_test::cast<float>(g.normals(C)), beta = nn_test::cast<float>(g.normals(C));
  auto dgam = dev<float>({C}, gamma), dbet = dev<float>({C}, beta);
  nn::device_tensor<float> dmean({R}), drstd({R}), ddg({C}), ddb({C});
  std::vector<float> mean(R), rstd(R), hg(C), hb(C);
  REQUIRE(nn::layer_norm_forward(blas, dxin.cview<2>(), dgam.cview<1>(), dbet.cview<1>(), dy.view<2>(), dmean.view<1>(), drstd.view<1>()).ok());
  REQUIRE(nn::layer_norm_backward(blas, dxin.cview<2>(), dgam.cview<1>(), dmean.cview<1>(), drstd.cview<1>(), dr.cview<2>(), dg.view<2>(),
                                  ddg.view<1>(), ddb.view<1>())
              .ok());
  REQUIRE(nn::layer_norm_forward(cpu{2}, make_view(xf.data(), R, C), make_view(gamma.data(), C), make_view(beta.data(), C), make_view(y.data(), R, C),
                                 make_view(mean.data(), R), make_view(rstd.data(), R))
              .ok());
  REQUIRE(nn::layer_norm_backward(cpu{2}, make_view(xf.data(), R, C), make_view(gamma.data(), C), make_view(mean.data(), R),
                                  make_view(rstd.data(), R), make_view(rf.data(), R, C), make_view(gx.data(), R, C), make_view(hg.data(), C),
                                  make_view(hb.data(), C))
              .ok());
  const distill_test::tolerance ln_tol{1e-4, 1e-4};
  CHECK_CLOSE("ln y", dy.to_host(), y, ln_tol);
  CHECK_CLOSE("ln y vs reference", dy.to_host(), ref::layer_norm(x, nn_test::widen(gamma), nn_test::widen(beta), R, C, 1e-5), ln_tol);
  CHECK_CLOSE("ln dx", dg.to_host(), gx, ln_tol);
  CHECK_CLOSE("ln dgamma", ddg.to_host(), hg, ln_tol);
  CHECK_CLOSE("ln dbeta", ddb.to_host(), hb, ln_tol);
  // tokens
  const long B = 3, Ch = 24, S = 25;
  const auto maps = nn_test::cast<float>(g.normals(B * Ch * S));
  auto dmaps = dev<float>({B, Ch, S}, maps);
  nn::device_tensor<float> dtok({B, S, Ch}), dback({B, Ch, S});
  REQUIRE(nn::nchw_to_tokens(blas, dmaps.cview<3>(), dtok.view<3>()).ok());
  REQUIRE(nn::tokens_to_nchw(blas, dtok.cview<3>(), dback.view<3>()).ok());
  std::vector<float> tok(maps.size());
  REQUIRE(nn::nchw_to_tokens(cpu{1}, make_view(maps.data(), B, Ch, S), make_view(tok.data(), B, S, Ch)).ok());
  CHECK(dtok.to_host() == tok);
  CHECK(dback.to_host() == maps);
  // 16-bit storage: bitwise the CPU conversion
  nn::device_tensor<bfloat16> db16({R, C});
  nn::device_tensor<__half> dh16({R, C});
  nn::device_tensor<float> dround({R, C});
  REQUIRE(nn::cast(blas, dxin.cview<2>(), db16.view<2>()).ok());
  REQUIRE(nn::cast(blas, dxin.cview<2>(), dh16.view<2>()).ok());
  REQUIRE(nn::cast(blas, db16.cview<2>(), dround.view<2>()).ok());
  std::vector<bfloat16> cb16(R * C);
  std::vector<float16> ch16(R * C);
  REQUIRE(nn::cast(cpu{1}, make_view(xf.data(), R, C), make_view(cb16.data(), R, C)).ok());
  REQUIRE(nn::cast(cpu{1}, make_view(xf.data(), R, C), make_view(ch16.data(), R, C)).ok());
  const auto gb = db16.to_host();
  const auto gh = dh16.to_host();
  const auto gr = dround.to_host();
  long mismatches = 0;
  for (long i = 0; i < R * C; ++i) {
    mismatches += gb[i].bits != cb16[i].bits;
    std::uint16_t half_bits;
    std::memcpy(&half_bits, &gh[i], 2);
    mismatches += half_bits != ch16[i].bits;
    mismatches += gr[i] != static_cast<float>(cb16[i]);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("CUDA batch norm (training with running statistics, evaluation, backward) matches the CPU", "[nn][cuda][batch_norm]") {
  distill_test::rng g(603);
  nn::cuda_blas blas;
  for (auto [N, C, S] : {std::tuple<long, long, long>{64, 24, 38 * 38}, {5, 3, 7}, {2, 200, 1}, {300, 2, 1}}) {
    for (bool training : {true, false}) {
      CAPTURE(N, C, S, training);
      const vec x = g.normals(N * C * S, 0.5, 2), dyv = g.normals(N * C * S);
      const auto gamma = nn_test::cast<float>(g.normals(C)), beta = nn_test::cast<float>(g.normals(C));
      auto rm = nn_test::cast<float>(g.normals(C)), rv = nn_test::cast<float>(g.uniforms(C, 0.5, 2));
      auto dxd = dev<float>({N, C, S}, x), ddy = dev<float>({N, C, S}, dyv), dgam = dev<float>({C}, gamma), dbet = dev<float>({C}, beta);
      auto drm = dev<float>({C}, rm), drv = dev<float>({C}, rv);
      nn::device_tensor<float> dy({N, C, S}), dsm({C}), dsi({C}), ddx({N, C, S}), ddg({C}), ddb({C});
      const nn::batch_norm_params p{1e-5, 0.1, training};
      REQUIRE(nn::batch_norm_forward(blas, dxd.cview<3>(), dgam.cview<1>(), dbet.cview<1>(), drm.view<1>(), drv.view<1>(), dy.view<3>(), dsm.view<1>(),
                                     dsi.view<1>(), p)
                  .ok());
      REQUIRE(nn::batch_norm_backward(blas, dxd.cview<3>(), dgam.cview<1>(), dsm.cview<1>(), dsi.cview<1>(), ddy.cview<3>(), ddx.view<3>(),
                                      ddg.view<1>(), ddb.view<1>(), training)
                  .ok());
      const auto xf = nn_test::cast<float>(x), dyf = nn_test::cast<float>(dyv);
      std::vector<float> y(x.size()), sm(C), si(C), gx(x.size()), gg(C), gb(C);
      REQUIRE(nn::batch_norm_forward(cpu{2}, make_view(xf.data(), N, C, S), make_view(gamma.data(), C), make_view(beta.data(), C),
                                     make_view(rm.data(), C), make_view(rv.data(), C), make_view(y.data(), N, C, S), make_view(sm.data(), C),
                                     make_view(si.data(), C), p)
                  .ok());
      REQUIRE(nn::batch_norm_backward(cpu{2}, make_view(xf.data(), N, C, S), make_view(gamma.data(), C), make_view(sm.data(), C),
                                      make_view(si.data(), C), make_view(dyf.data(), N, C, S), make_view(gx.data(), N, C, S), make_view(gg.data(), C),
                                      make_view(gb.data(), C), training)
                  .ok());
      const distill_test::tolerance bn_tol{2e-4, 2e-4}, sum_tol{2e-3, 1e-4};  // float sums over up to 92 416 values
      CHECK_CLOSE("y", dy.to_host(), y, bn_tol);
      CHECK_CLOSE("running mean", drm.to_host(), rm, bn_tol);
      CHECK_CLOSE("running var", drv.to_host(), rv, bn_tol);
      CHECK_CLOSE("dx", ddx.to_host(), gx, bn_tol);
      CHECK_CLOSE("dgamma", ddg.to_host(), gg, sum_tol);
      CHECK_CLOSE("dbeta", ddb.to_host(), gb, sum_tol);
    }
  }
}

TEST_CASE("CUDA conv2d matches the CPU and the direct reference (Relation-Network layers, 1x1, odd shapes)", "[nn][cuda][conv2d]") {
  distill_test::rng g(604);
  nn::cuda_blas blas;
  struct c_ {
    long B, Ci, H, W, Co, k, s, p;
  };
  for (const auto& c : {c_{8, 3, 75, 75, 24, 3, 2, 1}, c_{8, 24, 38, 38, 24, 3, 2, 1}, c_{4, 24, 5, 5, 24, 3, 2, 1}, c_{3, 5, 7, 9, 4, 1, 1, 0},
                        c_{2, 2, 8, 6, 3, 5, 1, 2}, c_{2, 3, 9, 7, 2, 2, 3, 0}}) {
    CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p);
    const vec x = g.normals(c.B * c.Ci * c.H * c.W), w = g.normals(c.Co * c.Ci * c.k * c.k, 0, 0.3), b = g.normals(c.Co);
    const long Ho = nn::conv2d_output_extent(c.H, c.k, c.s, c.p), Wo = nn::conv2d_output_extent(c.W, c.k, c.s, c.p);
    const vec dyv = g.normals(c.B * c.Co * Ho * Wo);
    const nn::conv2d_params p{c.s, c.s, c.p, c.p};
    auto dx_ = dev<float>({c.B, c.Ci, c.H, c.W}, x), dw_ = dev<float>({c.Co, c.Ci, c.k, c.k}, w), db_ = dev<float>({c.Co}, b);
    auto ddy = dev<float>({c.B, c.Co, Ho, Wo}, dyv);
    nn::device_tensor<float> dy({c.B, c.Co, Ho, Wo}), ddx({c.B, c.Ci, c.H, c.W}), ddw({c.Co, c.Ci, c.k, c.k}), ddb({c.Co});
    nn::device_tensor<std::byte> ws({static_cast<index_t>(nn::conv2d_workspace_size(blas, c.B, c.Ci, c.Co, c.k, c.k, Ho, Wo))});
    REQUIRE(nn::conv2d_forward(blas, dx_.cview<4>(), dw_.cview<4>(), db_.cview<1>(), dy.view<4>(), ws.view<1>(), p).ok());
    REQUIRE(nn::conv2d_backward(blas, dx_.cview<4>(), dw_.cview<4>(), ddy.cview<4>(), ddx.view<4>(), ddw.view<4>(), ddb.view<1>(), ws.view<1>(),
                                p)
                .ok());
    const auto xf = nn_test::cast<float>(x), wf = nn_test::cast<float>(w), bf = nn_test::cast<float>(b), dyf = nn_test::cast<float>(dyv);
    std::vector<float> y(dyv.size()), gx(x.size()), gw(w.size()), gb(c.Co);
    REQUIRE(nn::conv2d_forward(cpu{2}, make_view(xf.data(), c.B, c.Ci, c.H, c.W), make_view(wf.data(), c.Co, c.Ci, c.k, c.k), make_view(bf.data(), c.Co),
                               make_view(y.data(), c.B, c.Co, Ho, Wo), {}, p)
                .ok());
    REQUIRE(nn::conv2d_backward(cpu{2}, make_view(xf.data(), c.B, c.Ci, c.H, c.W), make_view(wf.data(), c.Co, c.Ci, c.k, c.k),
                                make_view(dyf.data(), c.B, c.Co, Ho, Wo), make_view(gx.data(), c.B, c.Ci, c.H, c.W),
                                make_view(gw.data(), c.Co, c.Ci, c.k, c.k), make_view(gb.data(), c.Co), {}, p)
                .ok());
    long rh, rw;
    CHECK_CLOSE("y vs reference", dy.to_host(),
                ref::conv2d(nn_test::widen(xf), nn_test::widen(wf), nn_test::widen(bf), c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, rh, rw),
                f32_gemm);
    CHECK_CLOSE("y", dy.to_host(), y, f32_gemm);
    CHECK_CLOSE("dx", ddx.to_host(), gx, f32_gemm);
    const distill_test::tolerance big_sum{2e-3, 2e-4};  // dW and db sum over B * Ho * Wo products
    CHECK_CLOSE("dw", ddw.to_host(), gw, big_sum);
    CHECK_CLOSE("db", ddb.to_host(), gb, big_sum);
  }
  // a too-small workspace is refused
  nn::device_tensor<float> x({1, 1, 4, 4}), w({1, 1, 3, 3}), y({1, 1, 4, 4});
  nn::device_tensor<std::byte> ws({12});
  CHECK(nn::conv2d_forward(blas, x.cview<4>(), w.cview<4>(), cuda_view<const float, 1>{}, y.view<4>(), ws.view<1>(), nn::conv2d_params{1, 1, 1, 1})
            .code() == errc::invalid_argument);
}

TEST_CASE("CUDA pooling matches the CPU", "[nn][cuda][pooling]") {
  distill_test::rng g(605);
  nn::cuda_blas blas;
  const long N = 3, C = 5, H = 11, W = 9;
  const vec x = g.normals(N * C * H * W);
  const auto xf = nn_test::cast<float>(x);
  auto dxin = dev<float>({N, C, H, W}, x);
  for (auto [k, s] : {std::pair<long, long>{2, 2}, {3, 2}, {3, 1}}) {
    CAPTURE(k, s);
    const long Ho = nn::pool2d_output_extent(H, k, s), Wo = nn::pool2d_output_extent(W, k, s);
    const auto r = nn_test::cast<float>(g.normals(N * C * Ho * Wo));
    auto dr = dev<float>({N, C, Ho, Wo}, r);
    nn::device_tensor<float> dy({N, C, Ho, Wo}), dg({N, C, H, W});
    nn::device_tensor<std::int32_t> darg({N, C, Ho, Wo});
    std::vector<float> y(r.size()), gx(x.size());
    std::vector<std::int32_t> arg(r.size());
    const nn::pool2d_params p{k, s};
    REQUIRE(nn::max_pool2d_forward(blas, dxin.cview<4>(), dy.view<4>(), darg.view<4>(), p).ok());
    REQUIRE(nn::max_pool2d_backward(blas, dr.cview<4>(), darg.cview<4>(), dg.view<4>(), p).ok());
    REQUIRE(nn::max_pool2d_forward(cpu{1}, make_view(xf.data(), N, C, H, W), make_view(y.data(), N, C, Ho, Wo), make_view(arg.data(), N, C, Ho, Wo), p).ok());
    REQUIRE(nn::max_pool2d_backward(cpu{1}, make_view(r.data(), N, C, Ho, Wo), make_view(static_cast<const std::int32_t*>(arg.data()), N, C, Ho, Wo),
                                    make_view(gx.data(), N, C, H, W), p)
                .ok());
    CHECK(dy.to_host() == y);
    CHECK(darg.to_host() == arg);
    CHECK_CLOSE("max dx", dg.to_host(), gx, distill_test::tol::f32);
    REQUIRE(nn::avg_pool2d_forward(blas, dxin.cview<4>(), dy.view<4>(), p).ok());
    REQUIRE(nn::avg_pool2d_backward(blas, dr.cview<4>(), dg.view<4>(), p).ok());
    REQUIRE(nn::avg_pool2d_forward(cpu{1}, make_view(xf.data(), N, C, H, W), make_view(y.data(), N, C, Ho, Wo), p).ok());
    REQUIRE(nn::avg_pool2d_backward(cpu{1}, make_view(r.data(), N, C, Ho, Wo), make_view(gx.data(), N, C, H, W), p).ok());
    CHECK_CLOSE("avg y", dy.to_host(), y, distill_test::tol::f32);
    CHECK_CLOSE("avg dx", dg.to_host(), gx, distill_test::tol::f32);
  }
  nn::device_tensor<float> gy({N, C}), gdx({N, C, H * W});
  const auto r = nn_test::cast<float>(g.normals(N * C));
  auto dr = dev<float>({N, C}, r);
  std::vector<float> y(N * C), gx(x.size());
  REQUIRE(nn::global_avg_pool_forward(blas, dxin.cview<3>(), gy.view<2>()).ok());
  REQUIRE(nn::global_avg_pool_backward(blas, dr.cview<2>(), gdx.view<3>()).ok());
  REQUIRE(nn::global_avg_pool_forward(cpu{1}, make_view(xf.data(), N, C, H * W), make_view(y.data(), N, C)).ok());
  REQUIRE(nn::global_avg_pool_backward(cpu{1}, make_view(r.data(), N, C), make_view(gx.data(), N, C, H * W)).ok());
  CHECK_CLOSE("global y", gy.to_host(), y, distill_test::tol::f32);
  CHECK_CLOSE("global dx", gdx.to_host(), gx, distill_test::tol::f32);
}

TEST_CASE("CUDA embedding, cross-entropy and argmax match the CPU", "[nn][cuda]") {
  distill_test::rng g(606);
  nn::cuda_blas blas;
  const long V = 50, D = 33, N = 70;
  std::vector<std::int32_t> ids(N);
  for (auto& i : ids) i = static_cast<std::int32_t>(g.integer(0, V - 1));
  const auto table = nn_test::cast<float>(g.normals(V * D)), dyv = nn_test::cast<float>(g.normals(N * D));
  auto dids = dev<std::int32_t>({N}, ids);
  auto dtab = dev<float>({V, D}, table), ddy = dev<float>({N, D}, dyv);
  nn::device_tensor<float> dy({N, D}), dgt({V, D});
  REQUIRE(nn::embedding_forward<std::int32_t, float>(blas, dids.cview<1>(), dtab.cview<2>(), dy.view<2>()).ok());
  REQUIRE(nn::embedding_backward<std::int32_t, float>(blas, dids.cview<1>(), ddy.cview<2>(), dgt.view<2>()).ok());
  std::vector<float> y(N * D), gt(V * D);
  REQUIRE(nn::embedding_forward<std::int32_t, float>(cpu{1}, make_view(ids.data(), N), make_view(table.data(), V, D), make_view(y.data(), N, D)).ok());
  REQUIRE(nn::embedding_backward<std::int32_t, float>(cpu{1}, make_view(ids.data(), N), make_view(dyv.data(), N, D), make_view(gt.data(), V, D)).ok());
  CHECK(dy.to_host() == y);
  CHECK_CLOSE("dtable", dgt.to_host(), gt, distill_test::tol::f32);

  const long C = 10;
  const auto z = nn_test::cast<float>(g.normals(N * C, 0, 3));
  std::vector<std::int32_t> labels(N);
  for (auto& l : labels) l = g.coin(0.1) ? -100 : static_cast<std::int32_t>(g.integer(0, C - 1));
  auto dz = dev<float>({N, C}, z);
  auto dl = dev<std::int32_t>({N}, labels);
  for (auto red : {reduction::none, reduction::sum, reduction::mean, reduction::batchmean})
    for (double eps : {0.0, 0.2}) {
      CAPTURE(to_string(red), eps);
      const nn::cross_entropy_options o{red, -100, eps, 0.5};
      const long nl = red == reduction::none ? N : 1;
      nn::device_tensor<float> dloss({nl}), dgrad({N, C});
      std::vector<float> loss(nl), grad(N * C);
      REQUIRE(nn::softmax_cross_entropy_forward_backward(blas, dz.cview<2>(), dl.cview<1>(), dloss.view<1>(), dgrad.view<2>(), o).ok());
      REQUIRE(nn::softmax_cross_entropy_forward_backward(cpu{2}, make_view(z.data(), N, C), make_view(labels.data(), N),
                                                                              make_view(loss.data(), nl), make_view(grad.data(), N, C), o)
                  .ok());
      CHECK_CLOSE("loss", dloss.to_host(), loss, distill_test::tol::f32_sum);
      CHECK_CLOSE("grad", dgrad.to_host(), grad, distill_test::tol::f32);
    }
  nn::device_tensor<std::int32_t> didx({N});
  std::vector<std::int32_t> idx(N);
  REQUIRE(nn::argmax_rows(blas, dz.cview<2>(), didx.view<1>()).ok());
  REQUIRE(nn::argmax_rows(cpu{1}, make_view(z.data(), N, C), make_view(idx.data(), N)).ok());
  CHECK(didx.to_host() == idx);
  // an out-of-range label gives a NaN loss on the device (the host cannot see device labels)
  std::vector<std::int32_t> bad(labels);
  bad[3] = 99;
  auto dbad = dev<std::int32_t>({N}, bad);
  nn::device_tensor<float> dloss({1});
  REQUIRE(nn::softmax_cross_entropy_forward(blas, dz.cview<2>(), dbad.cview<1>(), dloss.view<1>()).ok());
  CHECK(std::isnan(dloss.to_host()[0]));
}

TEST_CASE("CUDA attention core and layer match the CPU (masks, scores, extra gradients)", "[nn][cuda][attention]") {
  distill_test::rng g(607);
  nn::cuda_blas blas;
  struct a_ {
    long B, Lq, Lk, D, H;
  };
  for (const auto& c : {a_{2, 7, 5, 8, 2}, a_{32, 64, 64, 128, 4}, a_{3, 1, 40, 12, 3}}) {
    CAPTURE(c.B, c.Lq, c.Lk, c.D, c.H);
    const auto q = nn_test::cast<float>(g.normals(c.B * c.Lq * c.D)), k = nn_test::cast<float>(g.normals(c.B * c.Lk * c.D)),
               v = nn_test::cast<float>(g.normals(c.B * c.Lk * c.D)), d_o = nn_test::cast<float>(g.normals(c.B * c.Lq * c.D));
    const long M = c.B * c.H * c.Lq * c.Lk;
    const auto gp = nn_test::cast<float>(g.normals(M)), gs = nn_test::cast<float>(g.normals(M));
    std::vector<std::uint8_t> mask(c.B * c.Lk);
    for (auto& m : mask) m = g.coin(0.8);
    for (long j = 0; j < c.Lk; ++j) mask[j] = 0;  // batch 0: nothing to attend to
    auto dq = dev<float>({c.B, c.Lq, c.D}, q), dk = dev<float>({c.B, c.Lk, c.D}, k), dv = dev<float>({c.B, c.Lk, c.D}, v);
    auto ddo = dev<float>({c.B, c.Lq, c.D}, d_o), dgp = dev<float>({c.B, c.H, c.Lq, c.Lk}, gp), dgs = dev<float>({c.B, c.H, c.Lq, c.Lk}, gs);
    auto dmask = dev<std::uint8_t>({c.B, c.Lk}, mask);
    nn::device_tensor<float> dP({c.B, c.H, c.Lq, c.Lk}), dS({c.B, c.H, c.Lq, c.Lk}), dO({c.B, c.Lq, c.D});
    nn::device_tensor<float> gq({c.B, c.Lq, c.D}), gk({c.B, c.Lk, c.D}), gv({c.B, c.Lk, c.D});
    nn::device_tensor<std::byte> ws({static_cast<index_t>(nn::attention_core_workspace_size(blas, c.B, c.H, c.Lq, c.Lk))});
    const nn::attention_params p{c.H, 0};
    REQUIRE(nn::attention_core_forward(blas, dq.cview<3>(), dk.cview<3>(), dv.cview<3>(), dmask.cview<2>(), dP.view<4>(), dS.view<4>(), dO.view<3>(), p).ok());
    REQUIRE(nn::attention_core_backward(blas, dq.cview<3>(), dk.cview<3>(), dv.cview<3>(), dmask.cview<2>(), dP.cview<4>(), ddo.cview<3>(), dgp.cview<4>(),
                                        dgs.cview<4>(), gq.view<3>(), gk.view<3>(), gv.view<3>(), ws.view<1>(), p)
                .ok());
    std::vector<float> P(M), S(M), O(q.size()), hq(q.size()), hk(k.size()), hv(v.size());
    auto mv = make_view(static_cast<const std::uint8_t*>(mask.data()), c.B, c.Lk);
    REQUIRE(nn::attention_core_forward(cpu{2}, make_view(q.data(), c.B, c.Lq, c.D), make_view(k.data(), c.B, c.Lk, c.D), make_view(v.data(), c.B, c.Lk, c.D),
                                       mv, make_view(P.data(), c.B, c.H, c.Lq, c.Lk), make_view(S.data(), c.B, c.H, c.Lq, c.Lk),
                                       make_view(O.data(), c.B, c.Lq, c.D), p)
                .ok());
    REQUIRE(nn::attention_core_backward(cpu{2}, make_view(q.data(), c.B, c.Lq, c.D), make_view(k.data(), c.B, c.Lk, c.D), make_view(v.data(), c.B, c.Lk, c.D),
                                        mv, make_view(static_cast<const float*>(P.data()), c.B, c.H, c.Lq, c.Lk), make_view(d_o.data(), c.B, c.Lq, c.D),
                                        make_view(gp.data(), c.B, c.H, c.Lq, c.Lk), make_view(gs.data(), c.B, c.H, c.Lq, c.Lk),
                                        make_view(hq.data(), c.B, c.Lq, c.D), make_view(hk.data(), c.B, c.Lk, c.D), make_view(hv.data(), c.B, c.Lk, c.D), {}, p)
                .ok());
    const distill_test::tolerance t{2e-4, 2e-4};
    CHECK_CLOSE("probs", dP.to_host(), P, t);
    CHECK_CLOSE("scores", dS.to_host(), S, t);
    CHECK_CLOSE("o", dO.to_host(), O, t);
    CHECK_CLOSE("dq", gq.to_host(), hq, t);
    CHECK_CLOSE("dk", gk.to_host(), hk, t);
    CHECK_CLOSE("dv", gv.to_host(), hv, t);
  }
  // the layer, self-attention, same seed on both backends
  const long B = 4, L = 6, D = 16, H = 4;
  nn::multi_head_attention<float, cuda_space> dm("attn", D, H, {.seed = 9});
  nn::multi_head_attention<float> hm("attn", D, H, {.seed = 9});
  CHECK(dm.q_proj.weight.value.to_host() == hm.q_proj.weight.value.to_host());  // reproducible init across backends
  const auto x = nn_test::cast<float>(g.normals(B * L * D)), r = nn_test::cast<float>(g.normals(B * L * D));
  auto dx = dev<float>({B, L, D}, x), dr = dev<float>({B, L, D}, r);
  nn::device_tensor<float> dy({B, L, D}), dgx({B, L, D});
  std::vector<float> y(x.size()), gx(x.size());
  REQUIRE(dm.forward(blas, dx.cview<3>(), dx.cview<3>(), cuda_view<const std::uint8_t, 2>{}, dy.view<3>()).ok());
  REQUIRE(dm.backward(blas, dx.cview<3>(), dx.cview<3>(), cuda_view<const std::uint8_t, 2>{}, dr.cview<3>(), dgx.view<3>(), dgx.view<3>()).ok());
  REQUIRE(hm.forward(cpu{2}, make_view(x.data(), B, L, D), make_view(x.data(), B, L, D), host_view<const std::uint8_t, 2>{}, make_view(y.data(), B, L, D)).ok());
  REQUIRE(hm.backward(cpu{2}, make_view(x.data(), B, L, D), make_view(x.data(), B, L, D), host_view<const std::uint8_t, 2>{}, make_view(r.data(), B, L, D),
                      make_view(gx.data(), B, L, D), make_view(gx.data(), B, L, D))
              .ok());
  const distill_test::tolerance t{2e-4, 2e-4};
  CHECK_CLOSE("layer y", dy.to_host(), y, t);
  CHECK_CLOSE("layer dx", dgx.to_host(), gx, t);
  CHECK_CLOSE("layer dWq", dm.q_proj.weight.grad.to_host(), hm.q_proj.weight.grad.to_host(), t);
  CHECK_CLOSE("layer probs", dm.probs.to_host(), hm.probs.to_host(), t);
}

TEST_CASE("CUDA token transposes with more than 65535 x 32 rows (gridDim.y) and a large batch", "[nn][cuda]") {
  for (auto [B, R, S] : {std::array<long, 3>{1, 2100000, 3}, std::array<long, 3>{70000, 2, 5}}) {
    CAPTURE(B, R, S);
    std::vector<float> x(static_cast<std::size_t>(B * R * S));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 9973) - 4000.0f;
    auto dx = dev<float>({B, R, S}, x);
    nn::device_tensor<float> dy({B, S, R});
    nn::cuda_blas blas;
    REQUIRE(nn::nchw_to_tokens(blas, dx.cview<3>(), dy.view<3>()).ok());
    cuda_sync();
    std::vector<float> y(x.size());
    REQUIRE(nn::nchw_to_tokens(cpu{2}, make_view(static_cast<const float*>(x.data()), B, R, S), make_view(y.data(), B, S, R)).ok());
    CHECK(dy.to_host() == y);
  }
}

TEST_CASE("cuda_blas: GEMMs captured into CUDA graphs run in the handle's own workspace, after a stream change too",
          "[nn][cuda][linear]") {
  distill_test::rng g(620);
  const long N = 96, I = 80, O = 64;
  const vec x = g.normals(N * I), w = g.normals(O * I, 0, 0.3), b = g.normals(O);
  auto dx_ = dev<float>({N, I}, x), dw_ = dev<float>({O, I}, w), db_ = dev<float>({O}, b);
  cudaStream_t s1, s2;
  REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) == cudaSuccess);
  nn::cuda_blas blas(s1);
  CHECK(blas.blas_workspace_bytes() >= (std::size_t(4) << 20));
  nn::device_tensor<float> eager({N, O}), graphed({N, O});
  REQUIRE(nn::linear_forward(blas, dx_.cview<2>(), dw_.cview<2>(), db_.cview<1>(), eager.view<2>()).ok());
  REQUIRE(cudaStreamSynchronize(s1) == cudaSuccess);
  const auto want = eager.to_host();
  for (cudaStream_t s : {s1, s2}) {
    REQUIRE(blas.set_stream(s).ok());  // cublasSetStream resets the workspace: set_stream gives it back
    for (int rep = 0; rep < 3; ++rep) {
      REQUIRE(graphed.copy_from_host(std::vector<float>(static_cast<std::size_t>(N * O), -1.0f)).ok());
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
      const status st = nn::linear_forward(blas, dx_.cview<2>(), dw_.cview<2>(), db_.cview<1>(), graphed.view<2>());
      REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
      REQUIRE(st.ok());
      REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
      REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
      CHECK(graphed.to_host() == want);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
  }
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
}
