// SPDX-License-Identifier: MIT
// Attention-distribution losses (CUDA): warp_per_row (every register width) and block_per_row
// kernels against the double reference and the CPU path, float / float16 / bfloat16, logits and
// probabilities, key and query masks (counted on the device for mean), head mappings, every
// reduction, accumulate, the pair-attention shape [B, 1, 1, N^2], determinism, bad inputs,
// canaries in padding and around the loss.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "attention/tensor4.hpp"
#include "distill/attention/attention_map.hpp"
#include "reference/attention_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using attention_test::strided4;
using distill_test::device_buffer;

namespace {

struct am_case {
  int B, Hs, Ht, Lq, Lk;
  attention_map_options opt;
  std::vector<int> heads;
  bool kl = false;
  std::vector<std::uint8_t> key_mask, query_mask;
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

am_case random_case(distill_test::rng& g, int Lk) {
  am_case c;
  c.Hs = static_cast<int>(g.integer(1, 4));
  c.Ht = c.Hs;
  c.B = static_cast<int>(g.integer(1, 3));
  c.Lq = static_cast<int>(g.integer(1, Lk > 1024 ? 2 : 6));
  c.Lk = Lk;
  c.kl = g.coin();
  c.opt.student_input = g.coin(0.7) ? attention_input::logits : attention_input::probabilities;
  c.opt.teacher_input = g.coin(0.6) ? attention_input::logits : attention_input::probabilities;
  const int map = static_cast<int>(g.integer(0, 2));
  if (map == 1) {
    c.opt.head_map = attention_head_map::index;
    c.Ht = static_cast<int>(g.integer(1, 5));
    for (int h = 0; h < c.Hs; ++h) c.heads.push_back(static_cast<int>(g.integer(0, c.Ht - 1)));
  } else if (map == 2) {
    c.opt.head_map = attention_head_map::group_mean;
    c.Ht = c.Hs * static_cast<int>(g.integer(1, 3));
  }
  const reduction reds[] = {reduction::mean, reduction::sum, reduction::none, reduction::batchmean};
  c.opt.reduction = reds[g.integer(0, 3)];
  c.opt.grad_scale = g.coin(0.3) ? 2.5 : 1.0;
  c.opt.accumulate = g.coin(0.2);
  if (g.coin(0.5)) {
    c.key_mask.resize(static_cast<std::size_t>(c.B) * c.Lk);
    for (auto& m : c.key_mask) m = g.coin(0.75) ? 1 : 0;
    if (g.coin(0.2)) std::fill(c.key_mask.begin(), c.key_mask.begin() + c.Lk, 0);
  }
  if (g.coin(0.3)) {
    c.query_mask.resize(static_cast<std::size_t>(c.B) * c.Lq);
    for (auto& m : c.query_mask) m = g.coin(0.7);
  }
  return c;
}

template <class T>
double tolerance_for() {
  return std::is_same_v<T, float> ? 1e-4 : std::is_same_v<T, float16> ? 4e-3 : 2e-2;
}

/// Device copy of a strided host image (padding included).
template <class T>
struct device_tensor {
  strided4<T>& host;
  device_buffer<T> dev;
  explicit device_tensor(strided4<T>& h) : host(h), dev(std::vector<T>(h.data(), h.data() + h.span())) {}
  cuda_view<T, 4> view() { return make_strided_view<cuda_space>(dev.data(), host.extents(), host.strides()); }
  cuda_view<const T, 4> cview() { return make_strided_view<cuda_space>(static_cast<const T*>(dev.data()), host.extents(), host.strides()); }
  void download() {
    const auto v = dev.download();
    std::copy(v.begin(), v.end(), host.data());
  }
};

/// pass 0: forward_backward, 1: forward, 2: backward.
template <class T>
void run_and_check(am_case& c, int pass, distill_test::rng& g) {
  c.opt.teacher_heads = c.heads;
  const std::size_t rows = static_cast<std::size_t>(c.B) * c.Hs * c.Lq;
  const auto s = attention_test::rounded<T>(c.opt.student_input == attention_input::probabilities
                                                ? probability_rows(g, rows, c.Lk, false, 0.7)
                                                : g.normals(rows * c.Lk, 0, 2));
  const std::size_t trows = static_cast<std::size_t>(c.B) * c.Ht * c.Lq;
  const auto t = attention_test::rounded<T>(c.opt.teacher_input == attention_input::probabilities
                                                ? probability_rows(g, trows, c.Lk, true, 1.5)
                                                : g.normals(trows * c.Lk, 0, 2));
  const auto init = attention_test::rounded<T>(g.normals(s.size()));
  auto pads = [&] {
    return g.coin(0.5) ? std::array<index_t, 3>{g.integer(0, 3), g.integer(0, 3), g.integer(0, 5)} : std::array<index_t, 3>{0, 0, 0};
  };
  strided4<T> hs({c.B, c.Hs, c.Lq, c.Lk}, pads()), ht({c.B, c.Ht, c.Lq, c.Lk}, pads()), hg({c.B, c.Hs, c.Lq, c.Lk}, pads());
  hs.set(s);
  ht.set(t);
  if (c.opt.accumulate) hg.set(init);
  device_tensor<T> ds(hs), dt(ht), dg(hg);
  // Masks with a padded row stride.
  const index_t kld = c.Lk + g.integer(0, 3), qld = c.Lq + g.integer(0, 3);
  std::vector<std::uint8_t> km(static_cast<std::size_t>(c.B * kld), 0xCD), qm(static_cast<std::size_t>(c.B * qld), 0xCD);
  for (int b = 0; b < c.B; ++b) {
    for (int j = 0; j < c.Lk && !c.key_mask.empty(); ++j) km[b * kld + j] = c.key_mask[b * c.Lk + j];
    for (int i = 0; i < c.Lq && !c.query_mask.empty(); ++i) qm[b * qld + i] = c.query_mask[b * c.Lq + i];
  }
  device_buffer<std::uint8_t> dkm(km), dqm(qm);
  attention_masks<cuda_space> masks;
  if (!c.key_mask.empty())
    masks.key = make_strided_view<cuda_space>(static_cast<const std::uint8_t*>(dkm.data()), std::array<index_t, 2>{c.B, c.Lk},
                                              std::array<index_t, 2>{kld, 1});
  if (!c.query_mask.empty())
    masks.query = make_strided_view<cuda_space>(static_cast<const std::uint8_t*>(dqm.data()), std::array<index_t, 2>{c.B, c.Lq},
                                                std::array<index_t, 2>{qld, 1});
  const std::size_t nloss = c.opt.reduction == reduction::none ? rows : 1;
  std::vector<float> lh(nloss + 2, -777.0f);
  device_buffer<float> dl(lh);
  auto lv = make_view<cuda_space>(dl.data() + 1, static_cast<index_t>(nloss));
  device_buffer<std::byte> ws(attention_map_workspace_size(distill::cuda{}));
  auto wv = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
  const distill::cuda ctx{};
  const status st = [&]() -> status {
    if (c.kl) {
      if (pass == 0) return attention_map_kl_teacher_student_forward_backward(ctx, ds.cview(), dt.cview(), masks, lv, dg.view(), wv, c.opt);
      if (pass == 1) return attention_map_kl_teacher_student_forward(ctx, ds.cview(), dt.cview(), masks, lv, wv, c.opt);
      return attention_map_kl_teacher_student_backward(ctx, ds.view(), dt.view(), masks, dg.view(), wv, c.opt);
    }
    if (pass == 0) return attention_map_mse_forward_backward(ctx, ds.cview(), dt.cview(), masks, lv, dg.view(), wv, c.opt);
    if (pass == 1) return attention_map_mse_forward(ctx, ds.cview(), dt.cview(), masks, lv, wv, c.opt);
    return attention_map_mse_backward(ctx, ds.view(), dt.view(), masks, dg.view(), wv, c.opt);
  }();
  CAPTURE(st.to_string());
  REQUIRE(st.ok());
  distill_test::cuda_sync();
  dg.download();
  const auto loss = dl.download();
  CHECK(loss.front() == -777.0f);
  CHECK(loss.back() == -777.0f);
  CHECK(hg.outside_intact());
  const auto ref = attention_ref::attention_map(s, t, c.B, c.Hs, c.Ht, c.Lq, c.Lk, c.key_mask, c.query_mask, ref_config(c));
  const double tol = tolerance_for<T>();
  if (pass != 2) {
    const std::vector<double> got(loss.begin() + 1, loss.end() - 1);
    const auto expect = c.opt.reduction == reduction::none ? ref.per_row : std::vector<double>{ref.loss};
    CHECK_CLOSE("loss vs reference", got, expect, attention_test::scaled(expect, 1e-5, 1e-3, 1e-6));
  }
  if (pass != 1) {
    auto expect = ref.grad;
    if (c.opt.accumulate)
      for (std::size_t i = 0; i < expect.size(); ++i) expect[i] += init[i];
    CHECK_CLOSE("grad vs reference", hg.logical(), expect, attention_test::scaled(expect, tol, tol, 1e-6));
  }
}

template <class T>
void random_trials(std::uint64_t salt) {
  distill_test::rng g(salt);
  for (int Lk : {1, 7, 32, 33, 64, 100, 128, 129, 256, 300, 512, 700, 1024, 1025, 3000}) {
    for (int trial = 0; trial < 6; ++trial) {
      am_case c = random_case(g, Lk);
      const int pass = static_cast<int>(g.integer(0, 2));
      CAPTURE(dtype_name<T>(), Lk, trial, pass, c.B, c.Hs, c.Ht, c.Lq, c.kl, static_cast<int>(c.opt.student_input),
              static_cast<int>(c.opt.teacher_input), static_cast<int>(c.opt.head_map), static_cast<int>(c.opt.reduction),
              c.key_mask.size(), c.query_mask.size(), c.opt.accumulate);
      run_and_check<T>(c, pass, g);
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA attention map losses match the reference for every row length", "[attention][map][cuda]", float,
                   float16, bfloat16) {
  random_trials<TestType>(601);
}

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
