// SPDX-License-Identifier: MIT
// Embedding alignment, CPU-only checks: the paper recipes (F.mse_loss, multi-label KD's Euclidean
// loss, ViLD's L1) written out; zero rows under each normalisation; properties; bad inputs. Every
// metric x normalisation x reduction against the reference and central finite differences, on
// every backend: features_cases.hpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "distill/features/embedding_alignment.hpp"
#include "reference/features_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using namespace distill;

TEST_CASE("features: embedding alignment recipes", "[features][embedding][recipes]") {
  distill_test::rng g(302);
  const long N = 5, D = 7;
  const auto s = g.normals(N * D), t = g.normals(N * D);
  std::vector<double> grad(N * D);
  double loss[1];
  const auto sv = make_view(s.data(), N, D), tv = make_view(t.data(), N, D);
  // torch F.mse_loss(s, t): mean over every element
  embedding_alignment_options mse;
  mse.metric = embedding_metric::mse;
  mse.reduction = reduction::batchmean;
  REQUIRE(embedding_alignment_forward_backward(cpu{1}, sv, tv, {}, {}, make_view(loss, 1), make_view(grad.data(), N, D), {}, mse).ok());
  double expect = 0;
  for (long i = 0; i < N * D; ++i) expect += (s[i] - t[i]) * (s[i] - t[i]);
  CHECK(loss[0] == Approx(expect / double(N * D)).epsilon(1e-13));
  for (long i = 0; i < N * D; ++i) CHECK(grad[i] == Approx(2 * (s[i] - t[i]) / double(N * D)).epsilon(1e-12));
  // multi-label KD stage 1: 1/(2N) sum ||f_s - f_t||^2, gradient (f_s - f_t) / N
  embedding_alignment_options euclid;
  euclid.metric = embedding_metric::squared_l2;
  euclid.reduction = reduction::batchmean;
  euclid.scale = 0.5;
  REQUIRE(embedding_alignment_forward_backward(cpu{1}, sv, tv, {}, {}, make_view(loss, 1), make_view(grad.data(), N, D), {}, euclid).ok());
  CHECK(loss[0] == Approx(expect / (2.0 * N)).epsilon(1e-13));
  for (long i = 0; i < N * D; ++i) CHECK(grad[i] == Approx((s[i] - t[i]) / double(N)).epsilon(1e-12));
  // ViLD L_img: mean over valid proposals of the L1 norm of normalised differences, weight w
  std::vector<std::uint8_t> valid = {1, 0, 1, 1, 0};
  embedding_alignment_options vild;
  vild.metric = embedding_metric::l1;
  vild.normalize = l2_normalization::zero_below_eps;
  vild.norm_eps = 1e-8;
  vild.reduction = reduction::mean;
  vild.grad_scale = 0.5;
  REQUIRE(embedding_alignment_forward_backward(cpu{1}, sv, tv, {}, make_view(static_cast<const std::uint8_t*>(valid.data()), N),
                                               make_view(loss, 1), make_view(grad.data(), N, D), {}, vild)
              .ok());
  double l1 = 0;
  for (long r = 0; r < N; ++r) {
    if (!valid[r]) continue;
    double ns = 0, nt = 0;
    for (long d = 0; d < D; ++d) ns += s[r * D + d] * s[r * D + d], nt += t[r * D + d] * t[r * D + d];
    for (long d = 0; d < D; ++d) l1 += std::fabs(s[r * D + d] / std::sqrt(ns) - t[r * D + d] / std::sqrt(nt));
  }
  CHECK(loss[0] == Approx(l1 / 3.0).epsilon(1e-13));
  for (long d = 0; d < D; ++d) CHECK(grad[1 * D + d] == 0.0);  // invalid proposals get no gradient
}

TEST_CASE("features: embedding alignment zero rows under each normalisation", "[features][embedding]") {
  const long D = 4;
  std::vector<double> s = {0, 0, 0, 0, 0.1, -0.2, 0.05, 0.0}, t = {1, 2, 3, 4, 1, 0, 0, 0}, grad(8);
  double loss[1];
  embedding_alignment_options o;
  o.metric = embedding_metric::squared_l2;
  o.reduction = reduction::sum;
  // zero_below_eps: the zero row normalises to 0 and gets exactly zero gradient
  o.normalize = l2_normalization::zero_below_eps;
  o.norm_eps = 1e-8;
  REQUIRE(embedding_alignment_forward_backward(cpu{1}, make_view(s.data(), 2, D), make_view(t.data(), 2, D), {}, {},
                                               make_view(loss, 1), make_view(grad.data(), 2, D), {}, o)
              .ok());
  for (int d = 0; d < D; ++d) CHECK(grad[d] == 0.0);
  CHECK(std::isfinite(loss[0]));
  // clamp with a large eps: the second row (norm ~0.23 < 1) is x / eps, gradient g / eps (no projection)
  o.normalize = l2_normalization::clamp;
  o.norm_eps = 1.0;
  REQUIRE(embedding_alignment_forward_backward(cpu{1}, make_view(s.data(), 2, D), make_view(t.data(), 2, D), {}, {},
                                               make_view(loss, 1), make_view(grad.data(), 2, D), {}, o)
              .ok());
  auto f = [&](const std::vector<double>& v) {
    features_ref::embedding_opts r;
    r.m = features_ref::metric::squared_l2;
    r.n = features_ref::norm::clamp;
    r.eps = 1.0;
    r.r = features_ref::red::sum;
    return features_ref::embedding_loss(v, t, 2, D, {}, {}, r)[0];
  };
  CHECK_CLOSE("clamped rows vs FD", grad, distill_test::numeric_gradient(f, s), distill_test::tol::fd);
}

TEST_CASE("features: embedding alignment properties", "[features][embedding][property]") {
  distill_test::rng g(303);
  const long N = 6, D = 9;
  const auto s = g.normals(N * D);
  std::vector<double> grad(N * D);
  double loss[1];
  for (auto m : {embedding_metric::mse, embedding_metric::squared_l2, embedding_metric::l1, embedding_metric::cosine}) {
    embedding_alignment_options o;
    o.metric = m;
    REQUIRE(embedding_alignment_forward_backward(cpu{1}, make_view(s.data(), N, D), make_view(s.data(), N, D), {}, {},
                                                 make_view(loss, 1), make_view(grad.data(), N, D), {}, o)
                .ok());
    CHECK(std::fabs(loss[0]) < 1e-15);
    for (double v : grad) CHECK(std::fabs(v) < 1e-15);
  }
  // cosine is invariant to positive scaling of the student
  const auto t = g.normals(N * D);
  std::vector<double> s3(s);
  for (double& v : s3) v *= 3.7;
  embedding_alignment_options o;
  o.metric = embedding_metric::cosine;
  double l1[1], l2[1];
  REQUIRE(embedding_alignment_forward(cpu{1}, make_view(s.data(), N, D), make_view(t.data(), N, D), {}, {}, make_view(l1, 1), {}, o).ok());
  REQUIRE(embedding_alignment_forward(cpu{1}, make_view(s3.data(), N, D), make_view(t.data(), N, D), {}, {}, make_view(l2, 1), {}, o).ok());
  CHECK(l1[0] == Approx(l2[0]).epsilon(1e-14));
}

TEST_CASE("features: embedding alignment with every row masked gives zero", "[features][embedding]") {
  std::vector<float> s(12, 1.0f), t(12, 2.0f), grad(12, 5.0f);
  std::vector<std::uint8_t> m(3, 0);
  float loss[1] = {-1};
  REQUIRE(embedding_alignment_forward_backward(cpu{1}, make_view(static_cast<const float*>(s.data()), 3, 4),
                                               make_view(static_cast<const float*>(t.data()), 3, 4), {},
                                               make_view(static_cast<const std::uint8_t*>(m.data()), 3), make_view(loss, 1),
                                               make_view(grad.data(), 3, 4), {})
              .ok());
  CHECK(loss[0] == 0.0f);
  for (float v : grad) CHECK(v == 0.0f);
}

TEST_CASE("features: embedding alignment bad inputs", "[features][embedding][errors]") {
  std::vector<float> s(12, 1.0f), t(15, 2.0f), grad(12), w = {1.0f, -1.0f, 1.0f};
  float loss[3];
  const auto sv = make_view(static_cast<const float*>(s.data()), 3, 4);
  status st = embedding_alignment_forward(cpu{1}, sv, make_view(static_cast<const float*>(t.data()), 3, 5), {}, {}, make_view(loss, 1), {});
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'teacher'") != std::string::npos);
  st = embedding_alignment_forward(cpu{1}, sv, sv, make_view(static_cast<const float*>(w.data()), 3), {}, make_view(loss, 1), {});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("'row_weights'") != std::string::npos);
  w[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK(embedding_alignment_forward(cpu{1}, sv, sv, make_view(static_cast<const float*>(w.data()), 3), {}, make_view(loss, 1), {}).code() ==
        errc::non_finite);
  CHECK(embedding_alignment_forward(cpu{1}, sv, sv, make_view(static_cast<const float*>(w.data()), 2), {}, make_view(loss, 1), {}).code() ==
        errc::shape_mismatch);
  embedding_alignment_options o;
  o.reduction = reduction::none;
  st = embedding_alignment_forward(cpu{1}, sv, sv, {}, {}, make_view(loss, 1), {}, o);  // none needs N entries
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("'loss'") != std::string::npos);
  o = {};
  o.normalize = l2_normalization::clamp;
  o.norm_eps = 0;
  CHECK(embedding_alignment_forward(cpu{1}, sv, sv, {}, {}, make_view(loss, 1), {}, o).code() == errc::invalid_argument);
  o = {};
  o.scale = std::numeric_limits<double>::infinity();
  CHECK(embedding_alignment_forward(cpu{1}, sv, sv, {}, {}, make_view(loss, 1), {}, o).code() == errc::invalid_argument);
  CHECK(embedding_alignment_backward(cpu{1}, sv, sv, {}, {}, make_view(grad.data(), 4, 3), {}).code() == errc::shape_mismatch);
  s[6] = std::numeric_limits<float>::infinity();
  st = embedding_alignment_forward_backward(cpu{1}, sv, sv, {}, {}, make_view(loss, 1), make_view(grad.data(), 3, 4), {});
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("'student'") != std::string::npos);
  CHECK(std::isfinite(grad[0]));  // row 0 is unaffected
}
