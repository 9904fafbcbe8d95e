// SPDX-License-Identifier: MIT
// Multi-label sigmoid soft targets: a hand-worked element, the reference's gradient against
// finite differences, the library against the reference over every option, reduction and
// optional input (float and double, strided rows with padding canaries, in place, accumulate,
// forward / backward / fused agreeing), properties (binary KL zero at student = teacher, Liu et
// al.'s gradient formula), +-1e4 and +-inf logits, bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/losses/multilabel_soft_target.hpp"
#include "multilabel/multilabel_harness.hpp"
#include "reference/multilabel_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using distill_ref::multilabel_ref_inputs;
using distill_ref::multilabel_ref_options;

namespace {


/// The library's fused pass (and forward and backward alone, which must agree with it) on the
/// reference's inputs with row stride C + pad; returns the loss values and fills `grad`
/// (canaries checked).
template <class T>
std::vector<double> run(const multilabel_ref_inputs& in, const multilabel_ref_options& o, std::vector<double>& grad, int pad = 3) {
  const ml_test::ml_outputs out = ml_test::run_library<T>(in, o, pad);
  INFO(out.st.to_string());
  REQUIRE(out.st.ok());
  CHECK(out.canaries_ok);
  CHECK(out.passes_agree);
  grad = out.grad;
  return out.loss;
}

multilabel_ref_inputs random_inputs(distill_test::rng& g, int N, int C, bool labels, bool mask, bool weights) {
  multilabel_ref_inputs in{N, C, g.normals(static_cast<std::size_t>(N) * C, 0, 3), g.normals(static_cast<std::size_t>(N) * C, 0, 3), {}, {}, {}, {}, {}};
  if (labels)
    for (int i = 0; i < N * C; ++i) in.labels.push_back(g.coin(0.3) ? 1 : 0);
  if (mask)
    for (int i = 0; i < N * C; ++i) in.mask.push_back(g.coin(0.8) ? 1 : 0);
  if (weights) {
    in.row_weights = g.uniforms(N, 0, 2);
    in.class_weights = g.uniforms(C, 0.1, 2);
    in.pos_weights = g.uniforms(C, 0.5, 4);
  }
  return in;
}

}  // namespace

TEST_CASE("multilabel soft target: hand-worked element", "[multilabel]") {
  // One element, z^t = 0 (p = 1/2), z^s = 2 log 3 at T = 2 (q = sigmoid(log 3) = 3/4), label 1:
  //   soft = -(1/2) log(3/4) - (1/2) log(1/4) = log 4 - (1/2) log 3, times T^2 = 4;
  //   hard = -log sigmoid(2 log 3) = log(1 + 1/9) = log(10/9);
  //   dL/dz^s = T (q - p) + (sigmoid(z^s) - 1) = 2 (1/4) + (9/10 - 1) = 0.4.
  const double zs = 2 * std::log(3.0), zt = 0;
  const std::uint8_t label = 1;
  double loss = 0, grad = 0;
  multilabel_soft_target_options o;
  o.temperature = 2;
  o.hard_label_weight = 1;
  multilabel_soft_target_host_inputs<double> in;
  in.labels = make_view(&label, 1, 1);
  REQUIRE(multilabel_soft_target_forward_backward(cpu{1}, make_view(&zs, 1, 1), make_view(&zt, 1, 1), in, make_view(&loss, 1),
                                                  make_view(&grad, 1, 1), {}, o)
              .ok());
  CHECK_CLOSE_SCALAR("loss", loss, 4 * (std::log(4.0) - 0.5 * std::log(3.0)) + std::log(10.0 / 9.0), distill_test::tol::f64);
  CHECK_CLOSE_SCALAR("grad", grad, 0.4, distill_test::tol::f64);
}

TEST_CASE("multilabel soft target: the reference's gradient against finite differences", "[multilabel]") {
  distill_test::rng g(41);
  for (int variant = 0; variant < 8; ++variant) {
    auto in = random_inputs(g, 3, 5, true, variant % 2 == 1, variant % 4 >= 2);
    multilabel_ref_options o{g.uniform(0.5, 4), variant % 3 == 0, variant % 4, g.uniform(0.2, 2), g.uniform(0, 2), g.uniform(0.5, 2),
                             variant % 5 == 0};
    if (o.reduction == 0) o.reduction = 1;  // a scalar to differentiate
    std::vector<double> grad;
    distill_ref::multilabel_ref(in, o, &grad);
    auto f = [&](const std::vector<double>& zs) {
      auto x = in;
      x.student = zs;
      return distill_ref::multilabel_ref(x, o, nullptr)[0] * o.grad_scale;
    };
    CHECK_CLOSE("reference gradient", grad, distill_test::numeric_gradient(f, in.student), distill_test::tol::fd);
  }
}

TEMPLATE_TEST_CASE("multilabel soft target: against the reference over every option", "[multilabel]", float, double) {
  using T = TestType;
  const auto tolerance = std::is_same_v<T, float> ? distill_test::tol::f32_sum : distill_test::tol::f64;
  distill_test::rng g(42);
  for (int variant = 0; variant < 48; ++variant) {
    const int N = variant % 7 == 0 ? 1 : static_cast<int>(g.integer(2, 33)), C = static_cast<int>(g.integer(1, 90));
    const bool labels = variant % 2 == 0, mask = variant % 3 == 0, weights = variant % 5 < 2;
    const auto in = random_inputs(g, N, C, labels, mask, weights);
    // Option values representable in float (the options struct holds floats).
    auto f = [&](double lo, double hi) { return static_cast<double>(static_cast<float>(g.uniform(lo, hi))); };
    const multilabel_ref_options o{f(0.5, 6), variant % 4 < 2, variant % 4, f(0, 2), labels ? f(0, 2) : 0.0, f(0.5, 2), variant % 6 == 1};
    INFO("variant " << variant << " N " << N << " C " << C << " reduction " << o.reduction << " T " << o.T);
    std::vector<double> expected_grad, grad;
    const auto expected = distill_ref::multilabel_ref(in, o, &expected_grad);
    CHECK_CLOSE("loss", run<T>(in, o, grad), expected, tolerance);
    CHECK_CLOSE("grad", grad, expected_grad, tolerance);
  }
}

TEST_CASE("multilabel soft target: in place, accumulate, all masked", "[multilabel]") {
  distill_test::rng g(43);
  const int N = 5, C = 7;
  auto in = random_inputs(g, N, C, true, false, false);
  std::vector<float> s(in.student.begin(), in.student.end()), t(in.teacher.begin(), in.teacher.end());
  multilabel_soft_target_options o;
  o.temperature = 3;
  o.hard_label_weight = 0.5f;
  multilabel_soft_target_host_inputs<float> inputs;
  inputs.labels = make_view(in.labels.data(), N, C);
  std::vector<float> grad(N * C), loss(1);
  REQUIRE(multilabel_soft_target_backward(cpu{1}, make_view(static_cast<const float*>(s.data()), N, C), make_view(t.data(), N, C), inputs,
                                          make_view(grad.data(), N, C), {}, o)
              .ok());
  std::vector<float> in_place = s;
  REQUIRE(multilabel_soft_target_backward(cpu{1}, make_view(static_cast<const float*>(in_place.data()), N, C), make_view(t.data(), N, C),
                                          inputs, make_view(in_place.data(), N, C), {}, o)
              .ok());
  CHECK(in_place == grad);
  std::vector<float> acc(N * C, 1.0f);
  o.accumulate = true;
  REQUIRE(multilabel_soft_target_backward(cpu{1}, make_view(s.data(), N, C), make_view(t.data(), N, C), inputs, make_view(acc.data(), N, C), {}, o).ok());
  for (int i = 0; i < N * C; ++i) CHECK_CLOSE_SCALAR("accumulate", acc[i] - 1.0f, grad[i], (distill_test::tolerance{1e-6, 1e-5}));
  // Every element masked with reduction mean: divisor 0 gives loss 0 and gradient 0, not NaN,
  // and masked elements are not evaluated (NaN logits there change nothing).
  std::vector<std::uint8_t> none(N * C, 0);
  inputs.mask = make_view(none.data(), N, C);
  o.accumulate = false;
  o.reduction = reduction::mean;
  s[3] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE(multilabel_soft_target_forward_backward(cpu{1}, make_view(s.data(), N, C), make_view(t.data(), N, C), inputs, make_view(loss.data(), 1),
                                                  make_view(grad.data(), N, C), {}, o)
              .ok());
  CHECK(loss[0] == 0.0f);
  CHECK(grad == std::vector<float>(N * C, 0.0f));
}

TEST_CASE("multilabel soft target: properties", "[multilabel]") {
  distill_test::rng g(44);
  const int N = 4, C = 6;
  auto in = random_inputs(g, N, C, true, false, false);
  SECTION("binary KL is 0 with zero gradient when the student equals the teacher") {
    in.student = in.teacher;
    std::vector<double> grad;
    const auto loss = run<double>(in, {2.5, true, 1, 1, 0, 1, true}, grad);
    CHECK(std::fabs(loss[0]) < 1e-12);
    for (double x : grad) CHECK(std::fabs(x) < 1e-15);
    // BCE form: the same gradient, loss = the teacher's entropy summed (> 0).
    const auto bce = run<double>(in, {2.5, true, 1, 1, 0, 1, false}, grad);
    CHECK(bce[0] > 0.1);
    for (double x : grad) CHECK(std::fabs(x) < 1e-15);
  }
  SECTION("Liu et al. stage 2: gradient ((sigmoid(z/5) - p) / 5 + (sigmoid(z) - y)) / N") {
    std::vector<double> grad;
    run<double>(in, {5, false, 3, 1, 1, 1, false}, grad);
    for (int i = 0; i < N * C; ++i) {
      const double expected = ((distill_ref::sigmoid_ref(in.student[i] / 5) - distill_ref::sigmoid_ref(in.teacher[i] / 5)) / 5 +
                               (distill_ref::sigmoid_ref(in.student[i]) - in.labels[i])) /
                              N;
      CHECK_CLOSE_SCALAR("grad", grad[i], expected, distill_test::tol::f64);
    }
  }
}

TEST_CASE("multilabel soft target: a teacher given as probabilities, through T logit(s)", "[multilabel]") {
  // Liu et al. use WSDDN's image scores s in [0, 1] as targets: z_t = T log(s / (1 - s)) makes
  // sigmoid(z_t / T) = s, and s = 0 or 1 become -inf / +inf logits without NaN.
  const double T = 5;
  const std::vector<double> s_t = {0.0, 0.25, 0.9, 1.0}, zs = {-1.0, 0.5, 2.0, -3.0};
  std::vector<double> zt;
  for (double s : s_t) zt.push_back(T * std::log(s / (1 - s)));
  multilabel_soft_target_options o;
  o.temperature = static_cast<float>(T);
  o.scale_by_t_squared = false;
  o.reduction = reduction::sum;
  double loss = 0;
  std::vector<double> grad(4);
  REQUIRE(multilabel_soft_target_forward_backward(cpu{1}, make_view(zs.data(), 1, 4), make_view(zt.data(), 1, 4), {}, make_view(&loss, 1),
                                                  make_view(grad.data(), 1, 4), {}, o)
              .ok());
  double expected = 0;
  for (int k = 0; k < 4; ++k) {
    const double q = distill_ref::sigmoid_ref(zs[k] / T);
    expected += distill_ref::bce_ref(s_t[k], q);
    CHECK_CLOSE_SCALAR("grad", grad[k], (q - s_t[k]) / T, distill_test::tol::f64);
  }
  CHECK_CLOSE_SCALAR("loss", loss, expected, distill_test::tol::f64);
}

TEMPLATE_TEST_CASE("multilabel soft target: +-1e4 and +-inf logits stay finite where the math is", "[multilabel]", float, double) {
  using T = TestType;
  const T big = T(1e4), inf = std::numeric_limits<T>::infinity();
  // (student, teacher): confident agreement, confident disagreement, one side certain.
  const std::vector<T> s = {big, -big, big, -big, -inf, T(0)};
  const std::vector<T> t = {big, -big, -big, big, -inf, inf};
  multilabel_soft_target_options o;
  o.temperature = 2;
  o.reduction = reduction::none;
  o.scale_by_t_squared = false;
  std::vector<accum_t<T>> loss(6);
  std::vector<T> grad(6);
  REQUIRE(multilabel_soft_target_forward_backward(cpu{1}, make_view(s.data(), 6, 1), make_view(t.data(), 6, 1), {}, make_view(loss.data(), 6),
                                                  make_view(grad.data(), 6, 1), {}, o)
              .ok());
  // Agreement: 0; disagreement: |z^s| / T = 5000; -inf vs -inf: 0; z^s = 0 vs certain p = 1: log 2.
  const std::vector<double> expected_loss = {0, 0, 5000, 5000, 0, std::log(2.0)};
  const std::vector<double> expected_grad = {0, 0, 0.5, -0.5, 0, -0.25};  // (q - p) / T
  CHECK_CLOSE("loss", loss, expected_loss, (distill_test::tolerance{1e-6, 1e-6}));
  CHECK_CLOSE("grad", grad, expected_grad, (distill_test::tolerance{1e-7, 1e-6}));
}

TEST_CASE("multilabel soft target: bad input is refused with its error code", "[multilabel][errors]") {
  const std::vector<float> s(6, 0.5f), t(6, -0.5f);
  std::vector<float> loss(2), grad(6);
  std::vector<std::uint8_t> labels = {0, 1, 0, 1, 1, 2};
  auto call = [&](const multilabel_soft_target_host_inputs<float>& in, multilabel_soft_target_options o, index_t loss_n = 1) {
    return multilabel_soft_target_forward_backward(cpu{1}, make_view(s.data(), 2, 3), make_view(t.data(), 2, 3), in, make_view(loss.data(), loss_n),
                                                   make_view(grad.data(), 2, 3), {}, o)
        .code();
  };
  multilabel_soft_target_options o;
  CHECK(call({}, o) == errc::ok);
  o.hard_label_weight = 1;
  CHECK(call({}, o) == errc::invalid_argument);  // labels missing
  multilabel_soft_target_host_inputs<float> in;
  in.labels = make_view(labels.data(), 2, 3);
  CHECK(call(in, o) == errc::invalid_argument);  // a label of 2
  labels[5] = 1;
  CHECK(call(in, o) == errc::ok);
  const std::vector<float> negative = {1.0f, -1.0f};
  in.row_weights = make_view(negative.data(), 2);
  CHECK(call(in, o) == errc::invalid_argument);
  in.row_weights = make_view(negative.data(), 1);
  CHECK(call(in, o) == errc::shape_mismatch);
  in.row_weights = {};
  o.temperature = 0;
  CHECK(call(in, o) == errc::invalid_argument);
  o.temperature = 1;
  CHECK(call(in, o, 2) == errc::shape_mismatch);  // two losses with a reducing reduction
  o.reduction = reduction::none;
  CHECK(call(in, o, 2) == errc::ok);
  CHECK(multilabel_soft_target_forward(cpu{1}, make_view(s.data(), 2, 3), make_view(t.data(), 3, 2), {}, make_view(loss.data(), 1), {}).code() ==
        errc::shape_mismatch);
}
