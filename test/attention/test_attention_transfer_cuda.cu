// SPDX-License-Identifier: MIT
// Attention transfer (CUDA): the cases every backend runs (attention_transfer_cases.hpp: two_pass
// against the double reference, float / float16 / bfloat16, padded views, every option and pass,
// canaries), the same for fused_cluster, large slices and multi-block clusters, CUDA's own
// __half / __nv_bfloat16 views, several layer pairs, determinism, in place, bad inputs (wrong
// memory space, layout, workspace).
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "attention/attention_test_util.hpp"
#include "distill/attention/attention_transfer.hpp"
#include "reference/attention_ref.hpp"
#include "support/backend_cuda.cuh"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using test_space = distill::cuda_space;

#include "attention/attention_transfer_cases.hpp"

using namespace distill;
using namespace at_test;
using distill_test::device_buffer;

namespace {

using algo = attention_transfer_cuda_algorithm;

bool fused_available() {
  // Probe with a tiny problem: fused_cluster is refused with invalid_argument where unavailable.
  device_buffer<float> s(4), t(4), l(1);
  device_buffer<std::byte> ws(attention_transfer_workspace_size(distill::cuda{}, 1, 2, 2));
  attention_transfer_options o;
  o.cuda_algorithm = algo::fused_cluster;
  const auto st = attention_transfer_forward(distill::cuda{}, s.view(1, 1, 2, 2), t.view(1, 1, 2, 2), l.view(1),
                                             make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size())), o);
  distill_test::cuda_sync();
  if (!st.ok()) WARN("fused_cluster unavailable on this device: " << st.message());
  return st.ok();
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA attention transfer (fused_cluster) matches the reference", "[attention][at][cuda]", float, float16,
                   bfloat16) {
  if (!fused_available()) return;
  at_cases::random_trials<TestType>(algo::fused_cluster, 40, 502);
}

TEST_CASE("CUDA attention transfer: large slices, multi-block clusters, non-portable clusters, fallback",
          "[attention][at][cuda]") {
  distill_test::rng g(503);
  const bool fused = fused_available();
  // 4 x 256 x 32 x 32: 1 MiB per sample (an 11-block cluster); 2 x 1024 x 16 x 16 fp32:
  // 4 KiB per column (a cluster above 8 blocks); 2 x 600 x 30 x 30: too big for a cluster, so
  // automatic falls back to two_pass and a forced fused_cluster is refused.
  const shape shapes[] = {{4, 256, 64, 32, 32}, {2, 1024, 16, 16, 16}, {2, 600, 8, 30, 30}};
  for (const shape& sh : shapes) {
    for (algo a : {algo::two_pass, algo::automatic, algo::fused_cluster}) {
      attention_transfer_options opt;
      opt.cuda_algorithm = a;
      opt.beta = 1e3;
      CAPTURE(sh.Cs, sh.H, static_cast<int>(a));
      if (a == algo::fused_cluster && (!fused || sh.Cs == 600)) {
        device_buffer<float> s(static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W), t(static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W), l(1);
        device_buffer<std::byte> ws(attention_transfer_workspace_size(distill::cuda{}, sh.B, sh.H, sh.W));
        const auto st = attention_transfer_forward(distill::cuda{}, s.view(sh.B, sh.Cs, sh.H, sh.W), t.view(sh.B, sh.Ct, sh.H, sh.W),
                                                   l.view(1), make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size())), opt);
        CHECK(st.code() == errc::invalid_argument);
        CHECK(st.message().find("fused_cluster") != std::string::npos);
        continue;
      }
      at_cases::check_case<float>(sh, opt, 0, g);
    }
  }
}

TEST_CASE("CUDA attention transfer: CUDA's own 16-bit types and mixed student/teacher types", "[attention][at][cuda][dtype]") {
  distill_test::rng g(504);
  const int B = 3, Cs = 8, Ct = 5, H = 7, W = 9;
  const auto s = attention_test::rounded<float16>(features(g, B * Cs * H * W));
  const auto t = attention_test::rounded<bfloat16>(features(g, B * Ct * H * W));
  std::vector<float16> hs(s.size());
  std::vector<bfloat16> ht(t.size());
  for (std::size_t i = 0; i < s.size(); ++i) hs[i] = float16(static_cast<float>(s[i]));
  for (std::size_t i = 0; i < t.size(); ++i) ht[i] = bfloat16(static_cast<float>(t[i]));
  device_buffer<float16> ds(hs), dg(hs.size());
  device_buffer<bfloat16> dt(ht);
  device_buffer<float> dl(1);
  device_buffer<std::byte> ws(attention_transfer_workspace_size(distill::cuda{}, B, H, W));
  auto sv = make_view<cuda_space>(reinterpret_cast<const __half*>(ds.data()), B, Cs, H, W);
  auto tv = make_view<cuda_space>(reinterpret_cast<const __nv_bfloat16*>(dt.data()), B, Ct, H, W);
  auto gv = make_view<cuda_space>(reinterpret_cast<__half*>(dg.data()), B, Cs, H, W);
  attention_transfer_options opt;
  REQUIRE(attention_transfer_forward_backward(distill::cuda{}, sv, tv, dl.view(1), gv,
                                              make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size())), opt)
              .ok());
  distill_test::cuda_sync();
  const auto ref = attention_ref::attention_transfer(s, B, Cs, t, Ct, H, W, ref_config(opt));
  const auto gl = dl.download();
  const auto gg = dg.download();
  std::vector<double> got(gg.size());
  for (std::size_t i = 0; i < gg.size(); ++i) got[i] = static_cast<float>(gg[i]);
  CHECK_CLOSE_SCALAR("loss", gl[0], ref.loss, attention_test::tol(1e-8, 1e-4));
  CHECK_CLOSE("grad", got, ref.grad, attention_test::scaled(ref.grad, 1e-3, 4e-3, 1e-7));
}

TEST_CASE("CUDA attention transfer: several layer pairs, deterministic results", "[attention][at][cuda][layers]") {
  distill_test::rng g(505);
  const shape shapes[] = {{3, 4, 6, 5, 7}, {3, 2, 3, 1, 1}, {3, 64, 32, 16, 16}};
  const double weights[] = {0.5, 2.0, 1.0};
  for (reduction red : {reduction::mean, reduction::none}) {
    for (algo a : {algo::two_pass, algo::automatic}) {
      attention_transfer_options opt;
      opt.reduction = red;
      opt.beta = 1e3;
      opt.cuda_algorithm = a;
      std::vector<std::vector<double>> s(3), t(3);
      std::vector<device_buffer<float>> ds, dt, dg;
      std::vector<attention_transfer_layer<float, float, cuda_space>> layers;
      std::size_t ws_bytes = 0;
      for (int j = 0; j < 3; ++j) {
        const shape& sh = shapes[j];
        s[j] = attention_test::rounded<float>(features(g, static_cast<std::size_t>(sh.B) * sh.Cs * sh.H * sh.W));
        t[j] = attention_test::rounded<float>(features(g, static_cast<std::size_t>(sh.B) * sh.Ct * sh.H * sh.W));
        ds.emplace_back(std::vector<float>(s[j].begin(), s[j].end()));
        dt.emplace_back(std::vector<float>(t[j].begin(), t[j].end()));
        dg.emplace_back(s[j].size());
        ws_bytes = std::max(ws_bytes, attention_transfer_workspace_size(distill::cuda{}, sh.B, sh.H, sh.W));
      }
      for (int j = 0; j < 3; ++j) {
        const shape& sh = shapes[j];
        layers.push_back({make_view<cuda_space>(static_cast<const float*>(ds[j].data()), sh.B, sh.Cs, sh.H, sh.W),
                          make_view<cuda_space>(static_cast<const float*>(dt[j].data()), sh.B, sh.Ct, sh.H, sh.W),
                          dg[j].view(sh.B, sh.Cs, sh.H, sh.W), weights[j]});
      }
      const std::size_t nloss = red == reduction::none ? 3 : 1;
      device_buffer<float> dl(nloss);
      device_buffer<std::byte> ws(ws_bytes);
      auto wv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
      REQUIRE(attention_transfer_forward_backward(distill::cuda{}, layers, dl.view(static_cast<index_t>(nloss)), wv, opt).ok());
      distill_test::cuda_sync();
      const auto loss1 = dl.download();
      std::vector<std::vector<float>> grads1;
      for (auto& d : dg) grads1.push_back(d.download());
      // Bitwise the same on a second run.
      REQUIRE(attention_transfer_forward_backward(distill::cuda{}, layers, dl.view(static_cast<index_t>(nloss)), wv, opt).ok());
      distill_test::cuda_sync();
      CHECK(dl.download() == loss1);
      for (int j = 0; j < 3; ++j) CHECK(dg[j].download() == grads1[j]);
      std::vector<double> expect(nloss, 0.0);
      for (int j = 0; j < 3; ++j) {
        const shape& sh = shapes[j];
        const auto ref = attention_ref::attention_transfer(s[j], sh.B, sh.Cs, t[j], sh.Ct, sh.H, sh.W, ref_config(opt, weights[j]));
        const auto l = red == reduction::none ? ref.per_sample : std::vector<double>{ref.loss};
        for (std::size_t k = 0; k < nloss; ++k) expect[k] += l[k];
        CAPTURE(j, static_cast<int>(a));
        CHECK_CLOSE("layer grad", grads1[j], ref.grad, attention_test::scaled(ref.grad, 1e-4, 1e-3, 1e-7 * opt.beta));
      }
      CHECK_CLOSE("summed loss", loss1, expect, attention_test::scaled(expect, 1e-5, 5e-4));
    }
  }
}

TEST_CASE("CUDA attention transfer: the gradient may overwrite the student in place", "[attention][at][cuda][inplace]") {
  distill_test::rng g(506);
  const int B = 4, Cs = 64, Ct = 32, H = 16, W = 16;
  const auto s = features(g, static_cast<std::size_t>(B) * Cs * H * W), t = features(g, static_cast<std::size_t>(B) * Ct * H * W);
  const std::vector<float> sf(s.begin(), s.end()), tf(t.begin(), t.end());
  for (algo a : {algo::two_pass, algo::automatic}) {
    attention_transfer_options opt;
    opt.cuda_algorithm = a;
    device_buffer<float> ds(sf), dt(tf), dg(sf.size()), dl(1);
    device_buffer<std::byte> ws(attention_transfer_workspace_size(distill::cuda{}, B, H, W));
    auto wv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
    auto sv = make_view<cuda_space>(static_cast<const float*>(ds.data()), B, Cs, H, W);
    auto tv = make_view<cuda_space>(static_cast<const float*>(dt.data()), B, Ct, H, W);
    REQUIRE(attention_transfer_forward_backward(distill::cuda{}, sv, tv, dl.view(1), dg.view(B, Cs, H, W), wv, opt).ok());
    REQUIRE(attention_transfer_forward_backward(distill::cuda{}, sv, tv, dl.view(1), ds.view(B, Cs, H, W), wv, opt).ok());
    distill_test::cuda_sync();
    CAPTURE(static_cast<int>(a));
    CHECK(ds.download() == dg.download());
  }
}

TEST_CASE("CUDA attention transfer: bad inputs give a status naming the argument", "[attention][at][cuda][errors]") {
  const int B = 2, C = 3, H = 4, W = 5;
  device_buffer<float> s(B * C * H * W), t(B * C * H * W), gr(B * C * H * W), l(1);
  device_buffer<std::byte> ws(attention_transfer_workspace_size(distill::cuda{}, B, H, W));
  auto wv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
  const distill::cuda ctx{};
  auto expect = [](const status& st, errc code, const std::string& needle) {
    CAPTURE(st.to_string());
    CHECK(st.code() == code);
    CHECK(st.message().find(needle) != std::string::npos);
  };
  std::vector<float> host(B * C * H * W);
  expect(attention_transfer_forward(ctx, make_view<cuda_space>(static_cast<const float*>(host.data()), B, C, H, W), t.view(B, C, H, W),
                                    l.view(1), wv),
         errc::wrong_memory_space, "'student'");
  expect(attention_transfer_backward(ctx, s.view(B, C, H, W), t.view(B, C, H, W), make_view<cuda_space>(host.data(), B, C, H, W), wv),
         errc::wrong_memory_space, "'grad_student'");
  expect(attention_transfer_forward(ctx, s.view(B, C, H, W), t.view(B, C, H, W), l.view(1),
                                    make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size() - 256))),
         errc::invalid_argument, "'workspace' has");
  expect(attention_transfer_forward(ctx, s.view(B, C, H, W), t.view(B, C, H, W), l.view(1), cuda_view<std::byte, 1>{}),
         errc::invalid_argument, "'workspace'");
  auto strided = make_strided_view<cuda_space>(static_cast<const float*>(s.data()), std::array<index_t, 4>{1, C, H, 2},
                                               std::array<index_t, 4>{C * H * W, H * W, W, 2});
  expect(attention_transfer_forward(ctx, strided, make_view<cuda_space>(static_cast<const float*>(t.data()), 1, C, H, 2), l.view(1), wv),
         errc::unsupported_layout, "unit stride");
  expect(attention_transfer_forward(ctx, s.view(B, C, H, W), t.view(B, C, W, H), l.view(1), wv), errc::shape_mismatch,
         "equal spatial sizes");
  attention_transfer_options o;
  o.p = 0;
  expect(attention_transfer_forward(ctx, s.view(B, C, H, W), t.view(B, C, H, W), l.view(1), wv, o), errc::invalid_argument, "'p'");
  CHECK(cudaGetLastError() == cudaSuccess);
}
