// CUDA optimisers, clipping and checkpoints against the CPU path; a tiny MLP learns XOR and a
// tiny CNN overfits a handful of images on the GPU; sequential models agree across backends.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "distill/nn/checkpoint.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/sequential.hpp"
#include "nn_test_util.hpp"
#include "support/device_buffer.cuh"

using namespace distill;
using nn_test::vec;
using distill_test::cuda_sync;

namespace {
template <class Space>
std::vector<nn::parameter<float, Space>> make_params(distill_test::rng& g, int count) {
  std::vector<nn::parameter<float, Space>> ps;
  for (int i = 0; i < count; ++i) {
    const long n = g.integer(1, 3000);
    ps.emplace_back("p" + std::to_string(i), nn::tensor_shape{n});
  }
  return ps;
}
}  // namespace

TEST_CASE("CUDA optimisers (more than one multi-tensor launch) and clipping match the CPU step for step", "[nn][cuda][optimizer]") {
  nn::cuda_blas blas;
  for (int kind = 0; kind < 3; ++kind) {
    CAPTURE(kind);
    distill_test::rng g(701);
    auto hp = make_params<host_space>(g, 30);
    distill_test::rng g2(701);
    auto dp = make_params<cuda_space>(g2, 30);
    nn::parameter_list<float, host_space> hl;
    nn::parameter_list<float, cuda_space> dl;
    for (std::size_t i = 0; i < hp.size(); ++i) {
      const auto w = nn_test::cast<float>(g.normals(static_cast<std::size_t>(hp[i].size())));
      REQUIRE(hp[i].value.copy_from_host(w).ok());
      REQUIRE(dp[i].value.copy_from_host(w).ok());
      hl.push_back(&hp[i]);
      dl.push_back(&dp[i]);
    }
    dp[3].trainable = hp[3].trainable = false;
    auto step_both = [&](auto& hopt, auto& dopt) {
      for (int s = 0; s < 3; ++s) {
        for (std::size_t i = 0; i < hp.size(); ++i) {
          const auto gr = nn_test::cast<float>(g.normals(static_cast<std::size_t>(hp[i].size())));
          REQUIRE(hp[i].grad.copy_from_host(gr).ok());
          REQUIRE(dp[i].grad.copy_from_host(gr).ok());
        }
        REQUIRE(hopt.step(cpu{2}).ok());
        REQUIRE(dopt.step(blas).ok());
      }
      cuda_sync();
      for (std::size_t i = 0; i < hp.size(); ++i) CHECK_CLOSE(hp[i].name, dp[i].value.to_host(), hp[i].value.to_host(), distill_test::tol::f32);
    };
    if (kind == 0) {
      nn::sgd<float> h(hl, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true, .max_grad_norm = 5.0});
      nn::sgd<float, cuda_space> d(dl, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true, .max_grad_norm = 5.0});
      step_both(h, d);
      CHECK(d.last_grad_norm().size() == 1);
    } else if (kind == 1) {
      nn::adam<float> h(hl, {.lr = 0.01, .weight_decay = 0.1});
      nn::adam<float, cuda_space> d(dl, {.lr = 0.01, .weight_decay = 0.1});
      step_both(h, d);
    } else {
      nn::adamw<float> h(hl);
      nn::adamw<float, cuda_space> d(dl);
      step_both(h, d);
    }
    CHECK(hp[3].value.to_host() == dp[3].value.to_host());  // frozen: untouched on both
  }
  // clip_grad_norm alone
  distill_test::rng g(702);
  auto dp = make_params<cuda_space>(g, 5);
  nn::parameter_list<float, cuda_space> dl;
  double sum = 0;
  for (auto& p : dp) {
    const auto gr = nn_test::cast<float>(g.normals(static_cast<std::size_t>(p.size())));
    for (float v : gr) sum += static_cast<double>(v) * v;
    REQUIRE(p.grad.copy_from_host(gr).ok());
    dl.push_back(&p);
  }
  nn::device_tensor<float> scratch, norm({1});
  REQUIRE(nn::clip_grad_norm(blas, dl, 1.0, scratch, norm.view<1>()).ok());
  cuda_sync();
  CHECK(norm.to_host()[0] == Approx(std::sqrt(sum)).epsilon(1e-5));
  double after = 0;
  for (auto& p : dp)
    for (float v : p.grad.to_host()) after += static_cast<double>(v) * v;
  CHECK(std::sqrt(after) == Approx(1.0).epsilon(1e-4));
}

TEST_CASE("CUDA checkpoint round trip: device parameters and Adam state restore into a CPU model and back", "[nn][cuda][checkpoint]") {
  nn::cuda_blas blas;
  nn::linear<float, cuda_space> d("fc", 7, 5, {.seed = 3});
  auto dl = d.parameters();
  nn::adam<float, cuda_space> dopt(dl, {});
  REQUIRE(d.weight.grad.copy_from_host(std::vector<float>(35, 0.5f)).ok());
  REQUIRE(dopt.step(blas).ok());
  cuda_sync();
  nn::checkpoint ck;
  REQUIRE(ck.add_parameters(dl).ok());
  REQUIRE(ck.add_optimizer(dopt).ok());
  const auto path = (std::filesystem::temp_directory_path() / "distill_nn_cuda.ckpt").string();
  REQUIRE(ck.save(path).ok());
  nn::checkpoint in;
  REQUIRE(nn::checkpoint::load(path, in).ok());
  nn::linear<float> h("fc", 7, 5, {.seed = 99});
  auto hl = h.parameters();
  nn::adam<float> hopt(hl, {});
  REQUIRE(in.restore_parameters(hl).ok());
  REQUIRE(in.restore_optimizer(hopt).ok());
  CHECK(h.weight.value.to_host() == d.weight.value.to_host());
  CHECK(hopt.state()[0].second->to_host() == dopt.state()[0].second->to_host());
  nn::linear<float, cuda_space> d2("fc", 7, 5, {.seed = 42});
  auto dl2 = d2.parameters();
  REQUIRE(in.restore_parameters(dl2).ok());
  CHECK(d2.bias.value.to_host() == d.bias.value.to_host());
  std::filesystem::remove(path);
}

namespace {
template <class X>
float train_cuda(nn::sequential<float, cuda_space>& net, nn::cuda_blas& blas, const X& x, const nn::device_tensor<std::int32_t>& labels, long classes,
                 int steps, double lr) {
  auto params = net.parameters();
  nn::adam<float, cuda_space> opt(params, {.lr = lr});
  const long N = labels.size();
  nn::device_tensor<float> grad({N, classes}), loss({1});
  for (int s = 0; s < steps; ++s) {
    REQUIRE(nn::zero_grad(blas, params).ok());
    REQUIRE(net.forward(blas, x).ok());
    REQUIRE(nn::softmax_cross_entropy_forward_backward(blas, net.output().cview<2>(), labels.cview<1>(), loss.view<1>(),
                                                                            grad.view<2>())
                .ok());
    REQUIRE(net.backward(blas, x, grad.cview<2>()).ok());
    REQUIRE(opt.step(blas).ok());
  }
  REQUIRE(net.forward(blas, x).ok());
  REQUIRE(nn::softmax_cross_entropy_forward(blas, net.output().cview<2>(), labels.cview<1>(), loss.view<1>()).ok());
  return loss.to_host()[0];
}
int correct_cuda(nn::sequential<float, cuda_space>& net, nn::cuda_blas& blas, const std::vector<std::int32_t>& labels) {
  nn::device_tensor<std::int32_t> pred({static_cast<long>(labels.size())});
  REQUIRE(nn::argmax_rows(blas, net.output().cview<2>(), pred.view<1>()).ok());
  const auto p = pred.to_host();
  int c = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) c += p[i] == labels[i];
  return c;
}
}  // namespace

TEST_CASE("a tiny MLP learns XOR on the GPU", "[nn][cuda][training]") {
  nn::cuda_blas blas;
  const std::vector<float> x = {0, 0, 0, 1, 1, 0, 1, 1};
  const std::vector<std::int32_t> y = {0, 1, 1, 0};
  nn::device_tensor<float> dx({4, 2});
  nn::device_tensor<std::int32_t> dy({4});
  REQUIRE(dx.copy_from_host(x).ok());
  REQUIRE(dy.copy_from_host(y).ok());
  auto net = nn::make_mlp<float, cuda_space>({2, 16, 2}, {.act = nn::activation::tanh, .init = {.seed = 11}, .name = "xor"});
  const float loss = train_cuda(net, blas, dx.cview<2>(), dy, 2, 400, 0.03);
  CHECK(loss < 0.05f);
  CHECK(correct_cuda(net, blas, y) == 4);
}

TEST_CASE("a tiny CNN overfits a handful of images on the GPU, and tracks the CPU model", "[nn][cuda][training]") {
  nn::cuda_blas blas;
  distill_test::rng g(703);
  const long N = 8, H = 10, W = 10, classes = 4;
  const auto images = nn_test::cast<float>(g.normals(N * H * W));
  std::vector<std::int32_t> labels(N);
  for (long i = 0; i < N; ++i) labels[i] = static_cast<std::int32_t>(i % classes);
  auto build = [&](auto& net) {
    using Net = std::decay_t<decltype(net)>;
    using S = std::conditional_t<std::is_same_v<Net, nn::sequential<float, cuda_space>>, cuda_space, host_space>;
    const nn::init_options init{.seed = 12, .scheme = nn::init_scheme::kaiming_uniform};
    net.add(nn::conv2d<float, S>("c1", 1, 8, 3, {2, 2, 1, 1}, init))
        .add(nn::activation::relu)
        .add(nn::batch_norm<float, S>("bn1", 8))
        .add(nn::conv2d<float, S>("c2", 8, 8, 3, {2, 2, 1, 1}, init))
        .add(nn::activation::relu)
        .add(nn::batch_norm<float, S>("bn2", 8))
        .add(nn::linear<float, S>("head", 8 * 3 * 3, classes, init));
  };
  nn::sequential<float, cuda_space> dnet;
  nn::sequential<float> hnet;
  build(dnet);
  build(hnet);
  nn::device_tensor<float> dimg({N, 1, H, W});
  nn::device_tensor<std::int32_t> dlab({N});
  REQUIRE(dimg.copy_from_host(images).ok());
  REQUIRE(dlab.copy_from_host(labels).ok());
  // one forward on both backends from the same initial weights agrees
  REQUIRE(dnet.forward(blas, dimg.cview<4>()).ok());
  REQUIRE(hnet.forward(cpu{2}, make_view(images.data(), N, 1, H, W)).ok());
  const distill_test::tolerance t{2e-4, 2e-4};
  CHECK_CLOSE("initial logits", dnet.output().to_host(), hnet.output().to_host(), t);
  const float loss = train_cuda(dnet, blas, dimg.cview<4>(), dlab, classes, 150, 0.01);
  CHECK(loss < 0.05f);
  CHECK(correct_cuda(dnet, blas, labels) == N);
}
