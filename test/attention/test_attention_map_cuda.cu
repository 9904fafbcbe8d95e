// SPDX-License-Identifier: MIT
// Attention-distribution losses (CUDA): the cases every backend runs (attention_map_cases.hpp:
// warp_per_row at every register width and block_per_row against the double reference, float /
// float16 / bfloat16, logits and probabilities, key and query masks, head mappings, every
// reduction, accumulate, canaries), then the pair-attention shape [B, 1, 1, N^2] and a
// benchmark-sized problem against the CPU path, determinism, bad inputs.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "attention/attention_test_util.hpp"
#include "distill/attention/attention_map.hpp"
#include "reference/attention_ref.hpp"
#include "support/backend_cuda.cuh"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using test_space = distill::cuda_space;

#include "attention/attention_map_cases.hpp"

using namespace distill;
using distill_test::device_buffer;

TEST_CASE("CUDA attention map: pair attention [B, 1, 1, N^2] against the CPU path", "[attention][map][cuda][pairs]") {
  distill_test::rng g(602);
  for (int n : {6, 25, 64}) {
    for (bool kl : {false, true}) {
      const int B = 16, Lk = n * n;
      auto s = g.normals<float>(static_cast<std::size_t>(B) * Lk, 0, 3);
      std::vector<float> t(s.size(), 0.0f);
      for (int b = 0; b < B; ++b) {
        float on = 0;
        for (int j = 0; j < Lk; ++j) on += t[b * Lk + j] = g.coin(0.1) || j == b ? 1.0f : 0.0f;
        for (int j = 0; j < Lk; ++j) t[b * Lk + j] /= on;
      }
      attention_map_options opt;
      opt.teacher_input = attention_input::probabilities;
      float cpu_loss = 0;
      std::vector<float> cpu_grad(s.size());
      auto sv = make_view(static_cast<const float*>(s.data()), B, 1, 1, Lk);
      auto tv = make_view(static_cast<const float*>(t.data()), B, 1, 1, Lk);
      REQUIRE((kl ? attention_map_kl_teacher_student_forward_backward(cpu{2}, sv, tv, {}, make_view(&cpu_loss, 1),
                                                                      make_view(cpu_grad.data(), B, 1, 1, Lk), {}, opt)
                  : attention_map_mse_forward_backward(cpu{2}, sv, tv, {}, make_view(&cpu_loss, 1),
                                                       make_view(cpu_grad.data(), B, 1, 1, Lk), {}, opt))
                  .ok());
      device_buffer<float> ds(s), dt(t), dg(s.size()), dl(1);
      device_buffer<std::byte> ws(attention_map_workspace_size(distill::cuda{}));
      auto wv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
      auto dsv = make_view<cuda_space>(static_cast<const float*>(ds.data()), B, 1, 1, Lk);
      auto dtv = make_view<cuda_space>(static_cast<const float*>(dt.data()), B, 1, 1, Lk);
      REQUIRE((kl ? attention_map_kl_teacher_student_forward_backward(distill::cuda{}, dsv, dtv, {}, dl.view(1), dg.view(B, 1, 1, Lk), wv, opt)
                  : attention_map_mse_forward_backward(distill::cuda{}, dsv, dtv, {}, dl.view(1), dg.view(B, 1, 1, Lk), wv, opt))
                  .ok());
      distill_test::cuda_sync();
      CAPTURE(n, kl);
      CHECK_CLOSE_SCALAR("loss", dl.download()[0], cpu_loss, attention_test::tol(1e-7, 1e-4));
      CHECK_CLOSE("grad", dg.download(), cpu_grad, attention_test::scaled(cpu_grad, 1e-4, 1e-3, 1e-8));
    }
  }
}

TEST_CASE("CUDA attention map: benchmark-sized problem equals the CPU path and is deterministic", "[attention][map][cuda]") {
  distill_test::rng g(603);
  const int B = 64, H = 12, L = 128;
  const std::size_t n = static_cast<std::size_t>(B) * H * L * L;
  const auto s = g.normals<float>(n, 0, 2), t = g.normals<float>(n, 0, 2);
  float cpu_loss = 0;
  std::vector<float> cpu_grad(n);
  REQUIRE(attention_map_mse_forward_backward(cpu{2}, make_view(s.data(), B, H, L, L), make_view(t.data(), B, H, L, L), {},
                                             make_view(&cpu_loss, 1), make_view(cpu_grad.data(), B, H, L, L), {})
              .ok());
  device_buffer<float> ds(s), dt(t), dg(n), dl(1);
  device_buffer<std::byte> ws(attention_map_workspace_size(distill::cuda{}));
  auto wv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
  auto run = [&] {
    REQUIRE(attention_map_mse_forward_backward(distill::cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), B, H, L, L),
                                               make_view<cuda_space>(static_cast<const float*>(dt.data()), B, H, L, L), {},
                                               dl.view(1), dg.view(B, H, L, L), wv)
                .ok());
    distill_test::cuda_sync();
    return std::make_pair(dl.download(), dg.download());
  };
  const auto first = run();
  const auto second = run();
  CHECK(first.first == second.first);
  CHECK(first.second == second.second);
  // In place: the gradient overwrites the student logits.
  REQUIRE(attention_map_mse_forward_backward(distill::cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), B, H, L, L),
                                             make_view<cuda_space>(static_cast<const float*>(dt.data()), B, H, L, L), {},
                                             dl.view(1), ds.view(B, H, L, L), wv)
              .ok());
  distill_test::cuda_sync();
  CHECK(ds.download() == first.second);
  CHECK_CLOSE_SCALAR("loss", first.first[0], cpu_loss, attention_test::tol(1e-9, 1e-4));
  CHECK_CLOSE("grad", first.second, cpu_grad, attention_test::scaled(cpu_grad, 1e-4, 1e-3, 1e-10));
}

TEST_CASE("CUDA attention map: bad inputs give a status naming the argument", "[attention][map][cuda][errors]") {
  const int B = 2, H = 4, Lq = 3, Lk = 5;
  device_buffer<float> s(B * H * Lq * Lk), t(B * 12 * Lq * Lk), gr(B * H * Lq * Lk), l(1);
  device_buffer<std::uint8_t> km(B * Lk);
  device_buffer<std::byte> ws(attention_map_workspace_size(distill::cuda{}));
  auto wv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
  const distill::cuda ctx{};
  auto expect = [](const status& st, errc code, const std::string& needle) {
    CAPTURE(st.to_string());
    CHECK(st.code() == code);
    CHECK(st.message().find(needle) != std::string::npos);
  };
  auto sv = s.view(B, H, Lq, Lk);
  auto tv = t.view(B, H, Lq, Lk);
  std::vector<float> host(B * H * Lq * Lk);
  std::vector<std::uint8_t> host_mask(B * Lk, 1);
  expect(attention_map_mse_forward(ctx, make_view<cuda_space>(static_cast<const float*>(host.data()), B, H, Lq, Lk), tv, {}, l.view(1), wv),
         errc::wrong_memory_space, "'student'");
  expect(attention_map_mse_forward(ctx, sv, tv, {make_view<cuda_space>(static_cast<const std::uint8_t*>(host_mask.data()), B, Lk), {}},
                                   l.view(1), wv),
         errc::wrong_memory_space, "'key_mask'");
  expect(attention_map_mse_forward(ctx, sv, t.view(B, 12, Lq, Lk), {}, l.view(1), wv), errc::shape_mismatch, "12 heads");
  expect(attention_map_mse_forward(ctx, sv, tv, {}, l.view(1), make_view<cuda_space>(ws.data(), 64)), errc::invalid_argument,
         "'workspace' has");
  auto strided = make_strided_view<cuda_space>(static_cast<const float*>(s.data()), std::array<index_t, 4>{1, H, Lq, 2},
                                               std::array<index_t, 4>{H * Lq * Lk, Lq * Lk, Lk, 2});
  expect(attention_map_mse_forward(ctx, strided, make_view<cuda_space>(static_cast<const float*>(t.data()), 1, H, Lq, 2), {}, l.view(1), wv),
         errc::unsupported_layout, "unit stride");
  attention_map_options o;
  o.head_map = attention_head_map::index;
  std::vector<int> many(200, 0);
  device_buffer<float> s200(static_cast<std::size_t>(1) * 200 * 1 * 4), t1(4);
  o.teacher_heads = many;
  expect(attention_map_mse_forward(ctx, s200.view(1, 200, 1, 4), t1.view(1, 1, 1, 4), {}, l.view(1), wv, o), errc::invalid_argument,
         "at most 128");
  o = {};
  o.head_map = attention_head_map::group_mean;
  device_buffer<float> t300(static_cast<std::size_t>(300) * 4);
  expect(attention_map_mse_forward(ctx, t1.view(1, 1, 1, 4), t300.view(1, 300, 1, 4), {}, l.view(1), wv, o),
         errc::invalid_argument, "at most 256");
  expect(attention_map_mse_backward(ctx, sv, tv, {}, make_view<cuda_space>(host.data(), B, H, Lq, Lk), wv),
         errc::wrong_memory_space, "'grad_student'");
  CHECK(cudaGetLastError() == cudaSuccess);
}
