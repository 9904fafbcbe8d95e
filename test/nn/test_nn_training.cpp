// Composition and training: nn::sequential against a chain of references (forward and input /
// parameter gradients by finite differences), a tiny MLP that learns XOR, a tiny CNN that
// overfits a handful of images.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/sequential.hpp"
#include "nn_test_util.hpp"
#include "reference/nn_ref.hpp"

using namespace distill;
using nn_test::vec;
namespace ref = distill_ref::nn;

TEST_CASE("sequential chain matches the composed references, forward and backward", "[nn][sequential][grad]") {
  distill_test::rng g(501);
  const long B = 2, Ci = 2, H = 6, W = 6, Co = 3;
  nn::sequential<double> net;
  net.add(nn::conv2d<double>("c", Ci, Co, 3, {1, 1, 1, 1}, {.seed = 4}))
      .add(nn::activation::tanh)
      .add(nn::batch_norm<double>("bn", Co))
      .add(nn::max_pool2d_stage{{2, 2}})
      .add(nn::flatten_stage{})
      .add(nn::linear<double>("fc", Co * 3 * 3, 4, {.seed = 4}));
  auto& conv = *net.layer_if<nn::conv2d<double>>(0);
  auto& fc = *net.layer_if<nn::linear<double>>(5);
  REQUIRE(net.layer_if<nn::linear<double>>(0) == nullptr);
  const vec cw = conv.weight.value.to_host(), cb = conv.bias.value.to_host(), fw = fc.weight.value.to_host(), fb = fc.bias.value.to_host();
  auto model = [&](const vec& x, const vec& conv_w) {
    long Ho, Wo;
    vec a = ref::conv2d(x, conv_w, cb, B, Ci, H, W, Co, 3, 3, 1, 1, 1, 1, Ho, Wo);
    for (auto& v : a) v = std::tanh(v);
    a = ref::batch_norm(a, vec(Co, 1.0), vec(Co, 0.0), B, Co, Ho * Wo, true, 1e-5, 0.1, nullptr, nullptr);
    a = ref::pool2d(a, B, Co, Ho, Wo, 2, 2, true);
    return ref::linear(a, fw, fb, B, Co * 9, 4);
  };
  const vec x = g.normals(B * Ci * H * W);
  REQUIRE(net.forward(cpu{2}, make_view(x.data(), B, Ci, H, W)).ok());
  CHECK(net.output().shape() == nn::tensor_shape{B, 4});
  const distill_test::tolerance t_chain{1e-10, 1e-8};
  CHECK_CLOSE("y", net.output().to_host(), model(x, cw), t_chain);
  const vec r = g.normals(B * 4);
  vec dx(x.size());
  REQUIRE(net.backward(cpu{2}, make_view(x.data(), B, Ci, H, W), make_view(r.data(), B, 4), make_view(dx.data(), B, Ci, H, W)).ok());
  nn_test::check_gradient("dx", [&](const vec& xx) { return nn_test::dot(r, model(xx, cw)); }, x, dx);
  nn_test::check_gradient("dW conv", [&](const vec& w) { return nn_test::dot(r, model(x, w)); }, cw, conv.weight.grad.to_host());
  CHECK(net.parameters().size() == 8);  // conv w, b; bn gamma, beta, running mean, var; fc w, b
  // a mismatched chain is refused with the stage named
  nn::sequential<double> bad;
  bad.add(nn::linear<double>("a", 7, 3));
  const auto st = bad.forward(cpu{1}, make_view(x.data(), B, Ci, H, W));
  CHECK(st.code() == errc::shape_mismatch);
  CHECK(st.message().find("stage 0") != std::string::npos);
}

namespace {
/// Train `net` with Adam on (x, labels) for `steps` full-batch steps; returns the final loss.
template <class X>
float train(nn::sequential<float>& net, const X& x, const std::vector<std::int32_t>& labels, long classes, int steps, double lr) {
  auto params = net.parameters();
  nn::adam<float> opt(params, {.lr = lr});
  const long N = static_cast<long>(labels.size());
  nn::host_tensor<float> grad({N, classes});
  float loss = 0;
  for (int s = 0; s < steps; ++s) {
    REQUIRE(nn::zero_grad(cpu{2}, params).ok());
    REQUIRE(net.forward(cpu{2}, x).ok());
    REQUIRE(nn::softmax_cross_entropy_forward_backward(cpu{2}, net.output().cview<2>(), make_view(labels.data(), N),
                                                                            make_view(&loss, 1), grad.view<2>())
                .ok());
    REQUIRE(net.backward(cpu{2}, x, grad.view<2>()).ok());
    REQUIRE(opt.step(cpu{2}).ok());
  }
  REQUIRE(net.forward(cpu{2}, x).ok());
  REQUIRE(nn::softmax_cross_entropy_forward(cpu{2}, net.output().cview<2>(), make_view(labels.data(), N), make_view(&loss, 1))
              .ok());
  return loss;
}
int correct(const nn::sequential<float>& net, const std::vector<std::int32_t>& labels) {
  std::vector<std::int32_t> pred(labels.size());
  REQUIRE(nn::argmax_rows(cpu{1}, net.output().cview<2>(), make_view(pred.data(), static_cast<long>(pred.size()))).ok());
  int c = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) c += pred[i] == labels[i];
  return c;
}
}  // namespace

TEST_CASE("a tiny MLP learns XOR on the CPU", "[nn][training]") {
  const std::vector<float> x = {0, 0, 0, 1, 1, 0, 1, 1};
  const std::vector<std::int32_t> y = {0, 1, 1, 0};
  auto net = nn::make_mlp<float>({2, 16, 2}, {.act = nn::activation::tanh, .init = {.seed = 11}, .name = "xor"});
  const float loss = train(net, make_view(x.data(), 4, 2), y, 2, 400, 0.03);
  CHECK(loss < 0.05f);
  CHECK(correct(net, y) == 4);
}

TEST_CASE("a tiny CNN overfits a handful of images on the CPU", "[nn][training]") {
  distill_test::rng g(502);
  const long N = 8, H = 10, W = 10, classes = 4;
  const auto images = nn_test::cast<float>(g.normals(N * H * W));
  std::vector<std::int32_t> labels(N);
  for (long i = 0; i < N; ++i) labels[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % classes);
  nn::sequential<float> cnn;
  const nn::init_options init{.seed = 12, .scheme = nn::init_scheme::kaiming_uniform};
  cnn.add(nn::conv2d<float>("c1", 1, 8, 3, {2, 2, 1, 1}, init))
      .add(nn::activation::relu)
      .add(nn::batch_norm<float>("bn1", 8))
      .add(nn::conv2d<float>("c2", 8, 8, 3, {2, 2, 1, 1}, init))
      .add(nn::activation::relu)
      .add(nn::batch_norm<float>("bn2", 8))
      .add(nn::linear<float>("head", 8 * 3 * 3, classes, init));
  const auto xv = make_view(images.data(), N, 1, H, W);
  const float loss = train(cnn, xv, labels, classes, 150, 0.01);
  CHECK(loss < 0.05f);
  CHECK(correct(cnn, labels) == N);
  // evaluation mode uses the running statistics: still a deterministic, finite forward
  cnn.set_training(false);
  REQUIRE(cnn.forward(cpu{2}, xv).ok());
  for (float v : cnn.output().to_host()) CHECK(std::isfinite(v));
}
