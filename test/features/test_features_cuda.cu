// SPDX-License-Identifier: MIT
// The features family on CUDA: the cases every backend runs (features_cases.hpp: channel and
// token statistics, statistics matching, AdaIN, the AdaIN statistics loss, embedding alignment,
// the text classifier and its cross-entropy, for float, float16 and bfloat16 against the double
// reference, every kernel variant, padded views with canaries, passes alone and accumulated),
// then what only CUDA has: __half / __nv_bfloat16 views, the AdaIN-KD helper with a head whose
// callables copy through the host (against the CPU double path), bad inputs (wrong memory space,
// layout, workspace), determinism.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <vector>

#include "support/backend_cuda.cuh"

using test_space = distill::cuda_space;

#include "features/features_cases.hpp"
#include "support/device_buffer.cuh"

using namespace distill;
using distill_test::cuda_sync;
using distill_test::device_buffer;
using features_ref::shape4;
using features_test::features;

namespace {

/// |a - e| <= rel * max|e| + rel * |e|: gradients are small numbers whose scale varies per case.
void check_scaled(const char* what, const std::vector<double>& a, const std::vector<double>& e, double rel) {
  double mx = 0;
  for (double v : e) mx = std::max(mx, std::fabs(v));
  CHECK_CLOSE(what, a, e, (distill_test::tolerance{rel * mx + 1e-30, rel}));
}

cuda_view<std::byte, 1> ws_view(device_buffer<std::byte>& b) {
  return make_view<cuda_space>(b.data(), static_cast<index_t>(b.size()));
}

}  // namespace

TEST_CASE("CUDA AdaIN statistics loss takes __half and __nv_bfloat16 views", "[features][cuda][adain_stats]") {
  distill_test::rng g(1106);
  const shape4 s{2, 3, 8, 8};
  const auto x = features_test::rounded<float16>(features(g, s, 0.0)), y = features_test::rounded<float16>(features(g, s, 0.0));
  std::vector<float16> xh(x.size()), yh(y.size());
  for (std::size_t i = 0; i < x.size(); ++i) xh[i] = float16(float(x[i])), yh[i] = float16(float(y[i]));
  device_buffer<float16> dx(xh), dy(yh), dg(x.size());
  device_buffer<float> dloss(1);
  device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, s.B, s.C));
  const auto hv = [&](device_buffer<float16>& b) { return make_view<cuda_space>(reinterpret_cast<const __half*>(b.data()), s.B, s.C, s.H, s.W); };
  REQUIRE(adain_stats_loss_forward_backward(cuda{}, hv(dx), hv(dy), dloss.view(1),
                                            make_view<cuda_space>(reinterpret_cast<__half*>(dg.data()), s.B, s.C, s.H, s.W), ws_view(ws))
              .ok());
  cuda_sync();
  double rl[1];
  std::vector<double> rg(x.size());
  REQUIRE(adain_stats_loss_forward_backward(cpu{1}, make_view(x.data(), s.B, s.C, s.H, s.W), make_view(y.data(), s.B, s.C, s.H, s.W),
                                            make_view(rl, 1), make_view(rg.data(), s.B, s.C, s.H, s.W), {})
              .ok());
  CHECK_CLOSE_SCALAR("__half loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-6, 1e-4}));
  const auto gh = dg.download();
  std::vector<double> gd(gh.size());
  for (std::size_t i = 0; i < gh.size(); ++i) gd[i] = float(gh[i]);
  check_scaled("__half grad", gd, rg, 3e-3);
  // the same memory as __nv_bfloat16 storage (different numbers, still finite and deterministic)
  device_buffer<float> dl2(1), dl3(1);
  const auto bv = make_view<cuda_space>(reinterpret_cast<const __nv_bfloat16*>(dx.data()), s.B, s.C, s.H, s.W);
  REQUIRE(adain_stats_loss_forward(cuda{}, bv, bv, dl2.view(1), ws_view(ws)).ok());
  REQUIRE(adain_stats_loss_forward(cuda{}, bv, bv, dl3.view(1), ws_view(ws)).ok());
  cuda_sync();
  CHECK(dl2.download()[0] == dl3.download()[0]);
}

TEST_CASE("CUDA AdaIN-KD loss through a callable head", "[features][cuda][adain_kd]") {
  distill_test::rng g(1107);
  const shape4 ts{2, 3, 4, 5}, ss{2, 3, 3, 3};
  const long K = 4, J = ts.C * ts.plane();
  const auto W = g.normals(K * J, 0, 0.3);
  const auto fs = features_test::rounded<float>(features(g, ss, 0.1)), ft = features_test::rounded<float>(features(g, ts, 0.1));
  // The head runs on the host (the helper only needs callables that honour the views).
  auto apply = [&](const std::vector<double>& x, std::vector<double>& o) {
    o.assign(ts.B * K, 0);
    for (long b = 0; b < ts.B; ++b)
      for (long k = 0; k < K; ++k) {
        double z = 0;
        for (long j = 0; j < J; ++j) z += W[k * J + j] * x[b * J + j];
        o[b * K + k] = std::tanh(z);
      }
  };
  auto head_forward = [&](cuda_view<const float, 4> in, cuda_view<float, 2> out) -> status {
    std::vector<float> h(static_cast<std::size_t>(in.size()));
    cudaMemcpy(h.data(), in.data(), h.size() * sizeof(float), cudaMemcpyDeviceToHost);  // workspace views are contiguous
    std::vector<double> x(h.begin(), h.end()), o;
    apply(x, o);
    std::vector<float> of(o.begin(), o.end());
    cudaMemcpy(out.data(), of.data(), of.size() * sizeof(float), cudaMemcpyHostToDevice);
    return {};
  };
  auto head_vjp = [&](cuda_view<const float, 4> in, cuda_view<const float, 2> gout, cuda_view<float, 4> gin) -> status {
    std::vector<float> h(static_cast<std::size_t>(in.size())), gh(static_cast<std::size_t>(gout.size()));
    cudaMemcpy(h.data(), in.data(), h.size() * sizeof(float), cudaMemcpyDeviceToHost);
    cudaMemcpy(gh.data(), gout.data(), gh.size() * sizeof(float), cudaMemcpyDeviceToHost);
    std::vector<double> x(h.begin(), h.end()), o;
    apply(x, o);
    std::vector<float> r(h.size());
    for (long b = 0; b < ts.B; ++b)
      for (long j = 0; j < J; ++j) {
        double s = 0;
        for (long k = 0; k < K; ++k) s += W[k * J + j] * gh[b * K + k] * (1 - o[b * K + k] * o[b * K + k]);
        r[b * J + j] = float(s);
      }
    cudaMemcpy(gin.data(), r.data(), r.size() * sizeof(float), cudaMemcpyHostToDevice);
    return {};
  };
  std::vector<float> fsh(fs.begin(), fs.end()), fth(ft.begin(), ft.end());
  device_buffer<float> dfs(fsh), dft(fth), dgs(fs.size()), mixed(ft.size()), gmixed(ft.size()), om(ts.B * K), ot(ts.B * K), go(ts.B * K), dloss(1);
  device_buffer<std::byte> scratch(adain_kd_loss_workspace_size(cuda{}, ts.B));
  adain_kd_buffers<float, cuda_space> bufs{mixed.view(ts.B, ts.C, ts.H, ts.W), gmixed.view(ts.B, ts.C, ts.H, ts.W), om.view(ts.B, K),
                                           ot.view(ts.B, K), go.view(ts.B, K)};
  adain_kd_options o;
  o.eps = 1e-3;
  REQUIRE(adain_kd_loss_forward_backward(cuda{}, as_const(dfs.view(ss.B, ss.C, ss.H, ss.W)), as_const(dft.view(ts.B, ts.C, ts.H, ts.W)),
                                         head_forward, head_vjp, dloss.view(1), dgs.view(ss.B, ss.C, ss.H, ss.W), bufs, ws_view(scratch), o)
              .ok());
  cuda_sync();
  // the same on the CPU in double
  std::vector<double> hm(ft.size()), hgm(ft.size()), hom(ts.B * K), hot(ts.B * K), hgo(ts.B * K), rg(fs.size());
  adain_kd_buffers<double, host_space> hbufs{make_view(hm.data(), ts.B, ts.C, ts.H, ts.W), make_view(hgm.data(), ts.B, ts.C, ts.H, ts.W),
                                             make_view(hom.data(), ts.B, K), make_view(hot.data(), ts.B, K), make_view(hgo.data(), ts.B, K)};
  auto hf = [&](host_view<const double, 4> in, host_view<double, 2> out) -> status {
    std::vector<double> x(in.data(), in.data() + in.size()), oo;
    apply(x, oo);
    for (long i = 0; i < ts.B * K; ++i) out.data()[i] = oo[i];
    return {};
  };
  auto hv = [&](host_view<const double, 4> in, host_view<const double, 2> gout, host_view<double, 4> gin) -> status {
    std::vector<double> x(in.data(), in.data() + in.size()), oo;
    apply(x, oo);
    for (long b = 0; b < ts.B; ++b)
      for (long j = 0; j < J; ++j) {
        double s = 0;
        for (long k = 0; k < K; ++k) s += W[k * J + j] * gout.data()[b * K + k] * (1 - oo[b * K + k] * oo[b * K + k]);
        gin.data()[b * J + j] = s;
      }
    return {};
  };
  double rl[1];
  REQUIRE(adain_kd_loss_forward_backward(cpu{1}, make_view(fs.data(), ss.B, ss.C, ss.H, ss.W), make_view(ft.data(), ts.B, ts.C, ts.H, ts.W),
                                         hf, hv, make_view(rl, 1), make_view(rg.data(), ss.B, ss.C, ss.H, ss.W), hbufs, {}, o)
              .ok());
  CHECK_CLOSE_SCALAR("AdaIN-KD loss", dloss.download()[0], rl[0], (distill_test::tolerance{1e-6, 1e-4}));
  const auto gd = dgs.download();
  check_scaled("AdaIN-KD grad", std::vector<double>(gd.begin(), gd.end()), rg, 1e-4);
}

TEST_CASE("CUDA features: bad inputs", "[features][cuda][errors]") {
  std::vector<float> host(2 * 3 * 4 * 4, 1.0f);
  device_buffer<float> a(host), b(host), gr(host.size()), loss(1);
  device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, 1, 6));
  const auto av = as_const(a.view(2, 3, 4, 4));
  // host memory passed as a device view
  const auto hv = make_view<cuda_space>(static_cast<const float*>(host.data()), 2, 3, 4, 4);
  const status st = adain_stats_loss_forward_backward(cuda{}, hv, av, loss.view(1), gr.view(2, 3, 4, 4), ws_view(ws));
  CHECK(st.code() == errc::wrong_memory_space);
  CHECK(st.message().find("'student'") != std::string::npos);
  // workspace too small / absent when a loss is wanted
  device_buffer<std::byte> small(8);
  const status st_ws = adain_stats_loss_forward_backward(cuda{}, av, av, loss.view(1), gr.view(2, 3, 4, 4), ws_view(small));
  CHECK(st_ws.code() == errc::invalid_argument);
  CHECK(st_ws.message().find("'workspace'") != std::string::npos);
  CHECK(stats_matching_forward(cuda{}, av, av, loss.view(1), cuda_view<std::byte, 1>{}).code() == errc::invalid_argument);
  // ... but not needed for the gradient alone
  CHECK(adain_stats_loss_backward(cuda{}, av, av, gr.view(2, 3, 4, 4), {}).ok());
  // non-unit inner stride
  const auto strided = make_strided_view<cuda_space>(static_cast<const float*>(a.data()), std::array<index_t, 4>{2, 3, 4, 2},
                                                     std::array<index_t, 4>{48, 16, 4, 2});
  const status st_layout = channel_stats_forward(cuda{}, strided, cuda_view<float, 2>{}, cuda_view<float, 2>{});
  CHECK(st_layout.code() == errc::unsupported_layout);
  // shape mismatch and eps
  CHECK(adain_forward(cuda{}, av, as_const(b.view(2, 2, 4, 6)), gr.view(2, 3, 4, 4)).code() == errc::shape_mismatch);
  adain_options bad;
  bad.eps = 0;
  CHECK(adain_forward(cuda{}, av, av, gr.view(2, 3, 4, 4), bad).code() == errc::invalid_argument);
  // classifier workspace
  device_buffer<std::byte> cws(16);
  device_buffer<float> z(6 * 3);
  const auto ev = as_const(a.view(6, 16));
  const auto tv = as_const(b.view(3, 16));
  CHECK(text_classifier_forward(cuda{}, ev, tv, cuda_view<const float, 1>{}, {}, z.view(6, 3), ws_view(cws)).code() == errc::invalid_argument);
  // embedding: host weights
  std::vector<float> hw(6, 1.0f);
  device_buffer<std::byte> ews(embedding_alignment_workspace_size(cuda{}, 6));
  const status st_w =
      embedding_alignment_forward(cuda{}, ev, ev, make_view<cuda_space>(static_cast<const float*>(hw.data()), 6), {}, loss.view(1), ws_view(ews));
  CHECK(st_w.code() == errc::wrong_memory_space);
  CHECK(st_w.message().find("'row_weights'") != std::string::npos);
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("CUDA features: results are deterministic", "[features][cuda]") {
  distill_test::rng g(1110);
  const shape4 s{8, 16, 32, 32};
  const auto x = features(g, s, 0.1), y = features(g, s, 0.1);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
  device_buffer<float> dx(xf), dy(yf), g1(xf.size()), g2(xf.size()), l1(1), l2(1);
  device_buffer<std::byte> ws(stats_matching_workspace_size(cuda{}, s.B, s.C));
  for (auto* out : {&l1, &l2}) {
    auto& gg = out == &l1 ? g1 : g2;
    REQUIRE(adain_stats_loss_forward_backward(cuda{}, as_const(dx.view(s.B, s.C, s.H, s.W)), as_const(dy.view(s.B, s.C, s.H, s.W)),
                                              out->view(1), gg.view(s.B, s.C, s.H, s.W), ws_view(ws))
                .ok());
  }
  cuda_sync();
  CHECK(l1.download()[0] == l2.download()[0]);
  CHECK(g1.download() == g2.download());
}
