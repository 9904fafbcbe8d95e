// Softmax cross-entropy edge cases (its reductions and options against the reference: nn_cases.hpp),
// optimisers against hand-computed steps, parameter
// groups, gradient clipping, schedules and initialisers.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/init.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/schedule.hpp"
#include "nn_test_util.hpp"
#include "reference/nn_ref.hpp"

using namespace distill;
using nn_test::vec;
namespace ref = distill_ref::nn;

TEST_CASE("softmax cross-entropy edge cases: all ignored, -inf logits, bad labels", "[nn][cross_entropy]") {
  std::vector<float> z = {1, 2, 3, -INFINITY, 0, 5}, grad(6);
  std::vector<std::int32_t> all_ignored = {-100, -100};
  float loss = 1;
  REQUIRE(nn::softmax_cross_entropy_forward_backward(cpu{1}, make_view(z.data(), 2, 3), make_view(all_ignored.data(), 2),
                                                                          make_view(&loss, 1), make_view(grad.data(), 2, 3))
              .ok());
  CHECK(loss == 0.0f);
  for (float v : grad) CHECK(v == 0.0f);
  std::vector<std::int32_t> lab = {2, 1};
  REQUIRE(nn::softmax_cross_entropy_forward_backward(cpu{1}, make_view(z.data(), 2, 3), make_view(lab.data(), 2),
                                                                          make_view(&loss, 1), make_view(grad.data(), 2, 3))
              .ok());
  CHECK(std::isfinite(loss));
  CHECK(grad[3] == 0.0f);  // -inf logit: zero probability, zero gradient
  std::vector<std::int32_t> bad = {3, 0};
  const auto st = nn::softmax_cross_entropy_forward_backward(cpu{1}, make_view(z.data(), 2, 3), make_view(bad.data(), 2),
                                                                                  make_view(&loss, 1), make_view(grad.data(), 2, 3));
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("label 3") != std::string::npos);
  std::vector<std::int32_t> idx(2);
  REQUIRE(nn::argmax_rows(cpu{1}, make_view(z.data(), 2, 3), make_view(idx.data(), 2)).ok());
  CHECK(idx == std::vector<std::int32_t>{2, 2});
}

namespace {
// A one-element parameter with a given value and gradient.
nn::parameter<double, host_space> scalar_param(const char* name, double w, double g) {
  nn::parameter<double, host_space> p(name, {1});
  REQUIRE(p.value.copy_from_host(std::vector<double>{w}).ok());
  REQUIRE(p.grad.copy_from_host(std::vector<double>{g}).ok());
  return p;
}
double value(const nn::parameter<double, host_space>& p) { return p.value.to_host()[0]; }
}  // namespace

TEST_CASE("SGD steps match hand-computed values (momentum, dampening, Nesterov, weight decay)", "[nn][optimizer]") {
  auto p = scalar_param("w", 1.0, 0.5);
  nn::sgd<double> plain({&p}, {.lr = 0.1});
  REQUIRE(plain.step(cpu{1}).ok());
  CHECK(value(p) == Approx(1.0 - 0.1 * 0.5));  // 0.95

  auto m = scalar_param("w", 1.0, 0.5);
  nn::sgd<double> mom({&m}, {.lr = 0.1, .momentum = 0.9});
  REQUIRE(mom.step(cpu{1}).ok());  // buf = 0.5, w = 0.95
  CHECK(value(m) == Approx(0.95));
  REQUIRE(mom.step(cpu{1}).ok());  // buf = 0.9 * 0.5 + 0.5 = 0.95, w = 0.95 - 0.095 = 0.855
  CHECK(value(m) == Approx(0.855));

  auto n = scalar_param("w", 1.0, 0.5);
  nn::sgd<double> nes({&n}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  REQUIRE(nes.step(cpu{1}).ok());  // buf = 0.5, d = 0.5 + 0.45 = 0.95, w = 0.905
  CHECK(value(n) == Approx(0.905));
  REQUIRE(nes.step(cpu{1}).ok());  // buf = 0.95, d = 0.5 + 0.855 = 1.355, w = 0.7695
  CHECK(value(n) == Approx(0.7695));

  auto d = scalar_param("w", 2.0, 0.5);
  nn::sgd<double> wd({&d}, {.lr = 0.1, .momentum = 0.5, .dampening = 0.5, .weight_decay = 0.1});
  REQUIRE(wd.step(cpu{1}).ok());  // d = 0.5 + 0.2 = 0.7; buf = 0.7; w = 2 - 0.07 = 1.93
  CHECK(value(d) == Approx(1.93));
  REQUIRE(wd.step(cpu{1}).ok());  // d = 0.5 + 0.193 = 0.693; buf = 0.35 + 0.3465 = 0.6965; w = 1.93 - 0.06965
  CHECK(value(d) == Approx(1.86035));
  CHECK(wd.steps() == 2);
}

TEST_CASE("Adam and AdamW steps match hand-computed values", "[nn][optimizer]") {
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  // step 1 with g = 0.5: m = 0.05, v = 0.00025; m/(1-b1) = 0.5, sqrt(v/(1-b2)) = 0.5 -> w -= lr * 0.5 / (0.5 + eps)
  auto a = scalar_param("w", 1.0, 0.5);
  nn::adam<double> adam({&a}, {.lr = lr});
  REQUIRE(adam.step(cpu{1}).ok());
  const double w1 = 1.0 - lr * 0.5 / (0.5 + eps);
  CHECK(value(a) == Approx(w1).epsilon(1e-12));
  // step 2 with g = -1: m = 0.9 * 0.05 - 0.1 = -0.055, v = 0.999 * 0.00025 + 0.001 = 0.00124975
  REQUIRE(a.grad.copy_from_host(std::vector<double>{-1.0}).ok());
  REQUIRE(adam.step(cpu{1}).ok());
  const double m2 = -0.055, v2 = 0.00124975;
  const double w2 = w1 - lr * (m2 / (1 - b1 * b1)) / (std::sqrt(v2 / (1 - b2 * b2)) + eps);
  CHECK(value(a) == Approx(w2).epsilon(1e-12));

  // L2 (Adam) vs decoupled (AdamW) weight decay: with g = 0 and wd = 0.1
  auto l2 = scalar_param("w", 2.0, 0.0), dec = scalar_param("w", 2.0, 0.0);
  nn::adam<double> adam_l2({&l2}, {.lr = lr, .weight_decay = 0.1});
  nn::adamw<double> adamw({&dec}, {.lr = lr, .weight_decay = 0.1});
  REQUIRE(adam_l2.step(cpu{1}).ok());
  REQUIRE(adamw.step(cpu{1}).ok());
  // Adam: g' = 0.2 -> the normalised step is lr * 0.2 / (0.2 + eps) ~ lr
  CHECK(value(l2) == Approx(2.0 - lr * 0.2 / (0.2 + eps)).epsilon(1e-12));
  // AdamW: w *= 1 - lr wd, then m = v = 0: no moment step
  CHECK(value(dec) == Approx(2.0 * (1 - lr * 0.1)).epsilon(1e-12));
  CHECK(nn::adamw<double>({&dec}).options.decoupled_weight_decay);
}

TEST_CASE("parameter groups scale the learning rate and override weight decay; frozen parameters are not touched", "[nn][optimizer]") {
  auto a = scalar_param("a", 1.0, 1.0), b = scalar_param("b", 1.0, 1.0), c = scalar_param("c", 1.0, 1.0);
  c.trainable = false;
  std::vector<nn::param_group<double, host_space>> groups = {{{&a}, 1.0, std::nullopt}, {{&b, &c}, 0.5, 0.0}};
  nn::sgd<double> opt(groups, {.lr = 0.1, .weight_decay = 1.0});
  REQUIRE(opt.step(cpu{1}).ok());
  CHECK(value(a) == Approx(1.0 - 0.1 * (1.0 + 1.0)));  // weight decay from the options
  CHECK(value(b) == Approx(1.0 - 0.05 * 1.0));         // half the lr, no weight decay
  CHECK(value(c) == 1.0);
  CHECK(opt.params().size() == 2);
  nn::sgd<double> bad({&a}, {.lr = -1});
  CHECK(bad.step(cpu{1}).code() == errc::invalid_argument);
}

TEST_CASE("gradient-norm clipping: global norm, scaling only above the threshold", "[nn][parameter]") {
  nn::parameter<float, host_space> p("p", {2, 2}), q("q", {3});
  REQUIRE(p.grad.copy_from_host(std::vector<float>{1, 2, 2, 0}).ok());
  REQUIRE(q.grad.copy_from_host(std::vector<float>{0, 4, 0}).ok());
  nn::parameter_list<float, host_space> params{&p, &q};
  CHECK(nn::grad_norm(cpu{2}, params) == Approx(5.0));
  nn::host_tensor<float> scratch;
  float norm = 0;
  REQUIRE(nn::clip_grad_norm(cpu{2}, params, 10.0, scratch, make_view(&norm, 1)).ok());
  CHECK(norm == Approx(5.0f));
  CHECK(q.grad.to_host()[1] == 4.0f);  // below the threshold: untouched
  REQUIRE(nn::clip_grad_norm(cpu{2}, params, 2.5, scratch, make_view(&norm, 1)).ok());
  CHECK(norm == Approx(5.0f));
  CHECK(nn::grad_norm(cpu{1}, params) == Approx(2.5).epsilon(1e-5));
  CHECK(q.grad.to_host()[1] == Approx(2.0f).epsilon(1e-5));
  CHECK(nn::clip_grad_norm(cpu{1}, params, -1.0, scratch, make_view(&norm, 1)).code() == errc::invalid_argument);
  // through the optimiser option
  REQUIRE(p.grad.copy_from_host(std::vector<float>{3, 0, 0, 4}).ok());
  REQUIRE(q.grad.copy_from_host(std::vector<float>{0, 0, 0}).ok());
  REQUIRE(p.value.copy_from_host(std::vector<float>{0, 0, 0, 0}).ok());
  nn::sgd<float> opt(params, {.lr = 1.0, .max_grad_norm = 1.0});
  REQUIRE(opt.step(cpu{1}).ok());
  CHECK(opt.last_grad_norm()(0) == Approx(5.0f));
  CHECK(p.value.to_host()[0] == Approx(-0.6f).epsilon(1e-5));
  CHECK(p.value.to_host()[3] == Approx(-0.8f).epsilon(1e-5));
}

TEST_CASE("learning-rate schedules: constant, step, cosine, warm-up", "[nn][schedule]") {
  const auto c = nn::lr_schedule::constant(0.1, 4);
  CHECK(c(0) == Approx(0.025));
  CHECK(c(3) == Approx(0.1));
  CHECK(c(1000) == Approx(0.1));
  const auto s = nn::lr_schedule::step(1.0, 10, 0.5);
  CHECK(s(9) == Approx(1.0));
  CHECK(s(10) == Approx(0.5));
  CHECK(s(25) == Approx(0.25));
  const auto cos = nn::lr_schedule::cosine(1.0, 110, 10, 0.1);
  CHECK(cos(0) == Approx(0.1));   // warm-up: (0 + 1) / 10
  CHECK(cos(9) == Approx(1.0));
  CHECK(cos(10) == Approx(1.0));  // start of the decay
  CHECK(cos(60) == Approx(0.55)); // half way: min + (base - min) / 2
  CHECK(cos(110) == Approx(0.1));
  CHECK(cos(500) == Approx(0.1));
}

TEST_CASE("initialisers: seeded, name-keyed streams with the documented moments", "[nn][init]") {
  const long fan_in = 400, fan_out = 300;
  struct expect_case {
    nn::init_scheme s;
    double var;
  };
  const expect_case cases[] = {{nn::init_scheme::torch_default, 1.0 / (3 * fan_in)},
                               {nn::init_scheme::kaiming_uniform, 2.0 / fan_in},
                               {nn::init_scheme::kaiming_normal, 2.0 / fan_in},
                               {nn::init_scheme::xavier_uniform, 2.0 / (fan_in + fan_out)},
                               {nn::init_scheme::xavier_normal, 2.0 / (fan_in + fan_out)}};
  for (const auto& c : cases) {
    nn::parameter<double, host_space> w("layer.weight", {fan_out, fan_in}), b("layer.bias", {fan_out});
    REQUIRE(nn::init_weight_and_bias(w, &b, fan_in, fan_out, {.seed = 3, .scheme = c.s}).ok());
    const auto v = w.value.to_host();
    double mean = 0, var = 0;
    for (double x : v) mean += x;
    mean /= static_cast<double>(v.size());
    for (double x : v) var += (x - mean) * (x - mean);
    var /= static_cast<double>(v.size());
    CAPTURE(static_cast<int>(c.s));
    CHECK(std::fabs(mean) < 4 * std::sqrt(c.var / static_cast<double>(v.size())));
    CHECK(var == Approx(c.var).epsilon(0.03));
    nn::parameter<double, host_space> w2("layer.weight", {fan_out, fan_in});
    REQUIRE(nn::init_weight_and_bias(w2, nullptr, fan_in, fan_out, {.seed = 3, .scheme = c.s}).ok());
    CHECK(w2.value.to_host() == v);
  }
}
