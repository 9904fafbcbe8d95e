// SPDX-License-Identifier: MIT
// Momentum (EMA) update, CPU: hand-computed values, the exact endpoints m = 0 and m = 1, many
// buffers of different sizes (threaded) against a plain loop in double, strided buffers, bad
// arguments.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "distill/contrastive/momentum_update.hpp"
#include "support/random.hpp"

using namespace distill;

TEST_CASE("momentum_update: hand-computed values", "[contrastive][momentum]") {
  std::vector<float> k = {1.0f, 2.0f, -3.0f, 0.5f};
  const std::vector<float> q = {0.0f, 4.0f, 1.0f, 0.5f};
  REQUIRE(momentum_update(cpu{1}, make_view(k.data(), 4), make_view(q.data(), 4), 0.9).ok());
  // 0.9 * k + 0.1 * q
  CHECK(k[0] == Approx(0.9f).epsilon(1e-6));
  CHECK(k[1] == Approx(2.2f).epsilon(1e-6));
  CHECK(k[2] == Approx(-2.6f).epsilon(1e-6));
  CHECK(k[3] == 0.5f);
  std::vector<double> kd = {10.0, -1.0};
  const std::vector<double> qd = {20.0, 1.0};
  REQUIRE(momentum_update(cpu{1}, make_view(kd.data(), 2), make_view(qd.data(), 2), 0.999).ok());
  CHECK(kd[0] == Approx(10.01).epsilon(1e-14));
  CHECK(kd[1] == Approx(-0.998).epsilon(1e-14));
}

TEST_CASE("momentum_update: m = 1 keeps the key exactly, m = 0 copies the query exactly", "[contrastive][momentum]") {
  distill_test::rng g(501);
  auto k = g.normals<float>(1000, 0, 100), q = g.normals<float>(1000, 0, 100);
  const auto k0 = k;
  REQUIRE(momentum_update(cpu{2}, make_view(k.data(), 1000), make_view(q.data(), 1000), 1.0).ok());
  CHECK(k == k0);
  REQUIRE(momentum_update(cpu{2}, make_view(k.data(), 1000), make_view(q.data(), 1000), 0.0).ok());
  CHECK(k == q);
}

TEMPLATE_TEST_CASE("momentum_update: many buffers, threads and strides against a double loop", "[contrastive][momentum]", float, double) {
  distill_test::rng g(502);
  const std::array<long, 6> sizes = {1, 7, 0, 100000, 333, 65537};
  std::vector<std::vector<TestType>> keys, queries;
  std::vector<std::vector<double>> expect;
  const double m = 0.996;
  for (long n : sizes) {
    const long stride = n % 2 ? 1 : 3;  // some buffers strided
    keys.push_back(g.normals<TestType>(static_cast<std::size_t>(n * stride)));
    queries.push_back(g.normals<TestType>(static_cast<std::size_t>(n)));
    std::vector<double> e(keys.back().begin(), keys.back().end());
    for (long i = 0; i < n; ++i)
      e[static_cast<std::size_t>(i * stride)] = m * static_cast<double>(keys.back()[static_cast<std::size_t>(i * stride)]) +
                                                (1 - m) * static_cast<double>(queries.back()[static_cast<std::size_t>(i)]);
    expect.push_back(e);
  }
  std::vector<momentum_param<TestType>> params;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const long n = sizes[t], stride = n % 2 ? 1 : 3;
    params.push_back({make_strided_view(keys[t].data(), std::array<index_t, 1>{n}, std::array<index_t, 1>{stride}),
                      make_view(static_cast<const TestType*>(queries[t].data()), n)});
  }
  REQUIRE(momentum_update(cpu{3}, params, m).ok());
  const double tol = std::is_same_v<TestType, float> ? 1e-6 : 1e-15;
  for (std::size_t t = 0; t < sizes.size(); ++t)
    for (std::size_t i = 0; i < keys[t].size(); ++i) {
      const double want = expect[t][i];
      if (!(std::fabs(static_cast<double>(keys[t][i]) - want) <= tol * (1 + std::fabs(want)))) {
        FAIL_CHECK("buffer " << t << " element " << i << ": " << keys[t][i] << " vs " << want);
        break;
      }
    }
}

TEST_CASE("momentum_update: bad arguments", "[contrastive][momentum]") {
  std::vector<float> k(8, 1.0f), q(8, 2.0f);
  const auto K = make_view(k.data(), 8);
  const auto Q = make_view(static_cast<const float*>(q.data()), 8);
  for (double m : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    const auto st = momentum_update(cpu{1}, K, Q, m);
    CHECK(st.code() == errc::invalid_argument);
    CHECK(st.message().find("momentum") != std::string::npos);
  }
  CHECK(momentum_update(cpu{1}, K, make_view(static_cast<const float*>(q.data()), 7), 0.5).code() == errc::shape_mismatch);
  std::vector<momentum_param<float>> params = {{K, Q}, {K, {}}};
  const auto st = momentum_update(cpu{1}, params, 0.5);
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("params[1].query") != std::string::npos);
  CHECK(k == std::vector<float>(8, 1.0f));  // validated before anything is written
}
