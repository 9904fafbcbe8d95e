// Depthwise and transposed convolution on the CPU only: the adjoint identity, layer classes and
// errors. Forward and backward against reference/nn_conv_ref.hpp run from nn_cases.hpp.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <vector>

#include "distill/nn/conv_transpose2d.hpp"
#include "distill/nn/depthwise_conv2d.hpp"
#include "nn_test_util.hpp"
#include "reference/nn_conv_ref.hpp"

using namespace distill;
using nn_test::vec;
namespace ref = distill_ref::nn;

namespace {
template <class T>
host_view<const T, 4> cv4(const std::vector<T>& v, long a, long b, long c, long d) {
  return make_view(static_cast<const T*>(v.data()), a, b, c, d);
}
template <class T>
host_view<const T, 1> cv1(const std::vector<T>& v) {
  return make_view(static_cast<const T*>(v.data()), static_cast<index_t>(v.size()));
}
}  // namespace

TEST_CASE("conv_transpose2d is the adjoint of conv2d: <conv2d(y), x> = <y, conv_transpose2d(x)>", "[nn][conv_transpose2d]") {
  distill_test::rng g(305);
  // FFSD's decoder shape: 7 x 7 -> 14 x 14 with k 3, stride 2, padding 1, output padding 1.
  const long B = 2, Ci = 6, Co = 3, H = 7, W = 7, k = 3;
  const vec x = g.normals(static_cast<std::size_t>(B * Ci * H * W)), w = g.normals(static_cast<std::size_t>(Ci * Co * k * k));
  const long Ho = 14, Wo = 14;
  const vec y = g.normals(static_cast<std::size_t>(B * Co * Ho * Wo));
  vec ty(static_cast<std::size_t>(B * Co * Ho * Wo)), cx(x.size());
  REQUIRE(nn::conv_transpose2d_forward(cpu{2}, cv4(x, B, Ci, H, W), cv4(w, Ci, Co, k, k), host_view<const double, 1>{},
                                       make_view(ty.data(), B, Co, Ho, Wo), {}, nn::conv_transpose2d_params{2, 2, 1, 1, 1, 1})
              .ok());
  REQUIRE(nn::conv2d_forward(cpu{2}, cv4(y, B, Co, Ho, Wo), cv4(w, Ci, Co, k, k), host_view<const double, 1>{}, make_view(cx.data(), B, Ci, H, W),
                             {}, nn::conv2d_params{2, 2, 1, 1})
              .ok());
  CHECK(nn_test::dot(cx, x) == Approx(nn_test::dot(y, ty)).epsilon(1e-12));
}

TEST_CASE("depthwise and transposed convolution layers: shapes, gradients into parameters, errors", "[nn][conv_transpose2d][depthwise_conv2d]") {
  nn::depthwise_conv2d<float> dwc("fusion.dw", 4, 3, {1, 1, 1, 1}, {.seed = 3, .scheme = nn::init_scheme::kaiming_normal}, false);
  CHECK(dwc.output_shape(2, 7, 7) == nn::tensor_shape{2, 4, 7, 7});
  CHECK(dwc.parameters().size() == 1);
  nn::conv_transpose2d<float> up("decoder.up", 4, 2, 3, {2, 2, 1, 1, 1, 1}, {.seed = 3}, false);
  CHECK(up.output_shape(2, 7, 7) == nn::tensor_shape{2, 2, 14, 14});
  // torch's default bound 1/sqrt(fan_in) with fan_in = Co k k
  const float bound = 1 / std::sqrt(18.0f);
  for (float v : up.weight.value.to_host()) CHECK(std::fabs(v) <= bound);

  std::vector<float> x(2 * 4 * 7 * 7, 0.5f), y(2 * 2 * 14 * 14), dy(y.size(), 1.0f), dx(x.size());
  REQUIRE(up.forward(cpu{2}, cv4(x, 2, 4, 7, 7), make_view(y.data(), 2, 2, 14, 14)).ok());
  REQUIRE(up.backward(cpu{2}, cv4(x, 2, 4, 7, 7), cv4(dy, 2, 2, 14, 14), make_view(dx.data(), 2, 4, 7, 7)).ok());
  REQUIRE(up.backward(cpu{2}, cv4(x, 2, 4, 7, 7), cv4(dy, 2, 2, 14, 14), make_view(dx.data(), 2, 4, 7, 7)).ok());
  // layers accumulate their parameter gradients: two identical backward passes give twice one
  std::vector<double> once(up.weight.grad.size());
  {
    std::vector<double> dwd(once.size());
    const auto xd = nn_test::widen(x), wd = nn_test::widen(up.weight.value.to_host()), dyd = nn_test::widen(dy);
    REQUIRE(nn::conv_transpose2d_backward(cpu{1}, cv4(xd, 2, 4, 7, 7), cv4(wd, 4, 2, 3, 3), cv4(dyd, 2, 2, 14, 14), host_view<double, 4>{},
                                          make_view(dwd.data(), 4, 2, 3, 3), host_view<double, 1>{}, {}, up.params)
                .ok());
    once = dwd;
  }
  const auto acc = up.weight.grad.to_host();
  for (std::size_t i = 0; i < once.size(); ++i) CHECK(acc[i] == Approx(2 * once[i]).epsilon(1e-4).margin(1e-4));

  // errors
  CHECK(nn::conv_transpose2d_forward(cpu{1}, cv4(x, 2, 4, 7, 7), up.weight.value.view<4>(), host_view<const float, 1>{},
                                     make_view(y.data(), 2, 2, 14, 14), {}, nn::conv_transpose2d_params{2, 2, 1, 1, 2, 2})
            .code() == errc::invalid_argument);  // output padding >= stride
  CHECK(nn::conv_transpose2d_forward(cpu{1}, cv4(x, 2, 4, 7, 7), up.weight.value.view<4>(), host_view<const float, 1>{},
                                     make_view(y.data(), 2, 2, 13, 13), {}, up.params)
            .code() == errc::shape_mismatch);  // y extent
  CHECK(nn::conv_transpose2d_forward(cpu{1}, cv4(x, 4, 2, 7, 7), up.weight.value.view<4>(), host_view<const float, 1>{},
                                     make_view(y.data(), 4, 2, 7, 7), {}, up.params)
            .code() == errc::shape_mismatch);  // channels of x
  std::vector<float> yd(2 * 4 * 7 * 7);
  CHECK(nn::depthwise_conv2d_forward(cpu{1}, cv4(x, 2, 4, 7, 7), dwc.weight.value.view<4>(), host_view<const float, 1>{},
                                     make_view(yd.data(), 2, 4, 7, 7), {}, nn::conv2d_params{1, 1, 1, 1})
            .ok());
  CHECK(nn::depthwise_conv2d_forward(cpu{1}, cv4(x, 2, 4, 7, 7), dwc.weight.value.view<4>(), host_view<const float, 1>{},
                                     make_view(yd.data(), 2, 4, 7, 7), {}, nn::conv2d_params{1, 1, 0, 0})
            .code() == errc::shape_mismatch);  // y extent without padding
  std::vector<float> w2(4 * 2 * 9);
  CHECK(nn::depthwise_conv2d_forward(cpu{1}, cv4(x, 2, 4, 7, 7), cv4(w2, 4, 2, 3, 3), host_view<const float, 1>{},
                                     make_view(yd.data(), 2, 4, 7, 7), {}, nn::conv2d_params{1, 1, 1, 1})
            .code() == errc::shape_mismatch);  // not one filter per channel
  float* null = nullptr;
  CHECK(nn::depthwise_conv2d_forward(cpu{1}, cv4(x, 2, 4, 7, 7), dwc.weight.value.view<4>(), host_view<const float, 1>{},
                                     make_view(null, 2, 4, 7, 7), {}, nn::conv2d_params{1, 1, 1, 1})
            .code() == errc::invalid_argument);
}
