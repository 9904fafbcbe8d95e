// What the nn layers do on the CPU only: layer objects (seeded init, parameter gradients that
// accumulate, frozen weights, the dropout layer's offset, embedding with int64 ids, buffers that
// stay non-trainable) and errors. The layers' forward and backward passes against the double
// references run on every backend from nn_cases.hpp (test_nn_backends.cpp here).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "distill/nn/attention.hpp"
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

// ---------------------------------------------------------------- dropout

TEST_CASE("dropout: p outside [0, 1] is refused; the layer advances its offset, so steps draw different masks, reproducibly",
          "[nn][dropout]") {
  // the masks themselves, backward and evaluation: nn_cases.hpp
  distill_test::rng g(120);
  const long R = 37, C = 53;
  const vec x = g.normals(R * C);
  const auto xf = nn_test::cast<float>(x);
  std::vector<float> y(R * C);
  CHECK(nn::dropout_forward(cpu{1}, make_view(xf.data(), R, C), make_view(y.data(), R, C), nn::dropout_params{1.5, 1, 0, true}).code() ==
        errc::invalid_argument);
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

// ---------------------------------------------------------------- batch norm

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

TEST_CASE("token transposes and cast refuse mismatched shapes", "[nn][reshape][cast][errors]") {
  // the transposes and conversions themselves: nn_cases.hpp
  const long B = 3, C = 37, S = 45;
  std::vector<float> x(B * C * S), t(x.size());
  CHECK(nn::nchw_to_tokens(cpu{1}, make_view(x.data(), B, C, S), make_view(t.data(), B, C, S)).code() == errc::shape_mismatch);
  std::vector<bfloat16> b(x.size());
  CHECK(nn::cast(cpu{1}, make_view(static_cast<const float*>(x.data()), 7, 19), make_view(b.data(), 19, 7)).code() == errc::shape_mismatch);
}

TEST_CASE("multi-head attention refuses inputs of the wrong width and heads that do not divide the width", "[nn][attention][errors]") {
  nn::multi_head_attention<float> bad_input("a", 8, 2);
  std::vector<float> x(2 * 3 * 6), y(2 * 3 * 8);
  CHECK(bad_input.forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 2, 3, 6), make_view(static_cast<const float*>(x.data()), 2, 3, 6),
                          host_view<const std::uint8_t, 2>{}, make_view(y.data(), 2, 3, 8))
            .code() == errc::shape_mismatch);
  CHECK_THROWS_AS(nn::multi_head_attention<float>("a", 8, 3), distill::error);
}
