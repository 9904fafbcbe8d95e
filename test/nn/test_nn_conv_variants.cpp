// Depthwise and transposed convolution: forward against the direct double references
// (reference/nn_conv_ref.hpp), backward against central finite differences of them, strided
// batches, thread counts, accumulation, layer classes and errors.
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
struct dw_case {
  long B, C, H, W, k, s, p;
};
struct tr_case {
  long B, Ci, H, W, Co, k, s, p, op;
};
const dw_case dw_cases[] = {{2, 3, 7, 7, 3, 1, 1}, {3, 4, 6, 5, 3, 2, 1}, {1, 2, 5, 5, 1, 1, 0}, {2, 1, 8, 6, 5, 1, 2}, {4, 3, 4, 4, 2, 2, 0}};
const tr_case tr_cases[] = {{2, 4, 7, 7, 2, 3, 2, 1, 1}, {3, 3, 4, 5, 2, 3, 1, 1, 0}, {1, 2, 3, 3, 3, 2, 2, 0, 0},
                            {2, 2, 5, 4, 3, 4, 3, 1, 2}, {4, 1, 2, 2, 1, 1, 1, 0, 0}};

template <class T>
host_view<const T, 4> cv4(const std::vector<T>& v, long a, long b, long c, long d) {
  return make_view(static_cast<const T*>(v.data()), a, b, c, d);
}
template <class T>
host_view<const T, 1> cv1(const std::vector<T>& v) {
  return make_view(static_cast<const T*>(v.data()), static_cast<index_t>(v.size()));
}
}  // namespace

TEMPLATE_TEST_CASE("depthwise_conv2d forward matches the direct reference", "[nn][depthwise_conv2d]", float, double) {
  distill_test::rng g(301);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{1e-5, 1e-5};
  for (const auto& c : dw_cases)
    for (int threads : {1, 2}) {
      CAPTURE(c.B, c.C, c.H, c.W, c.k, c.s, c.p, threads);
      const auto x = nn_test::cast<TestType>(g.normals(static_cast<std::size_t>(c.B * c.C * c.H * c.W)));
      const auto w = nn_test::cast<TestType>(g.normals(static_cast<std::size_t>(c.C * c.k * c.k)));
      const auto b = nn_test::cast<TestType>(g.normals(static_cast<std::size_t>(c.C)));
      long Ho, Wo;
      const vec expect = ref::depthwise_conv2d(nn_test::widen(x), nn_test::widen(w), nn_test::widen(b), c.B, c.C, c.H, c.W, c.k, c.k, c.s, c.s,
                                               c.p, c.p, Ho, Wo);
      // y inside a larger buffer: a batch stride with a gap that must stay untouched
      nn_test::gapped_images<TestType> y(c.B, c.C, Ho, Wo, 3);
      REQUIRE(nn::depthwise_conv2d_forward(cpu{threads}, cv4(x, c.B, c.C, c.H, c.W), cv4(w, c.C, 1, c.k, c.k), cv1(b), y.view(),
                                           {}, nn::conv2d_params{c.s, c.s, c.p, c.p})
                  .ok());
      CHECK_CLOSE("y", y.images(), expect, tol);
      CHECK(y.gaps_intact());
    }
}

TEST_CASE("depthwise_conv2d backward matches finite differences of the reference, and accumulates", "[nn][depthwise_conv2d][grad]") {
  distill_test::rng g(302);
  for (const auto& c : dw_cases)
    for (int threads : {1, 2}) {
      CAPTURE(c.B, c.C, c.H, c.W, c.k, c.s, c.p, threads);
      const vec x = g.normals(static_cast<std::size_t>(c.B * c.C * c.H * c.W)), w = g.normals(static_cast<std::size_t>(c.C * c.k * c.k)),
                b = g.normals(static_cast<std::size_t>(c.C));
      long Ho, Wo;
      auto fwd = [&](const vec& xx, const vec& ww, const vec& bb) {
        return ref::depthwise_conv2d(xx, ww, bb, c.B, c.C, c.H, c.W, c.k, c.k, c.s, c.s, c.p, c.p, Ho, Wo);
      };
      const vec r = g.normals(fwd(x, w, b).size());
      vec dx(x.size()), dw(w.size()), db(b.size());
      const nn::conv2d_params p{c.s, c.s, c.p, c.p};
      REQUIRE(nn::depthwise_conv2d_backward(cpu{threads}, cv4(x, c.B, c.C, c.H, c.W), cv4(w, c.C, 1, c.k, c.k), cv4(r, c.B, c.C, Ho, Wo),
                                            make_view(dx.data(), c.B, c.C, c.H, c.W), make_view(dw.data(), c.C, 1, c.k, c.k),
                                            make_view(db.data(), c.C), {}, p)
                  .ok());
      nn_test::check_gradient("dx", [&](const vec& v) { return nn_test::dot(r, fwd(v, w, b)); }, x, dx);
      nn_test::check_gradient("dw", [&](const vec& v) { return nn_test::dot(r, fwd(x, v, b)); }, w, dw);
      nn_test::check_gradient("db", [&](const vec& v) { return nn_test::dot(r, fwd(x, w, v)); }, b, db);
      vec dx2 = dx, dw2 = dw, db2 = db;
      REQUIRE(nn::depthwise_conv2d_backward(cpu{threads}, cv4(x, c.B, c.C, c.H, c.W), cv4(w, c.C, 1, c.k, c.k), cv4(r, c.B, c.C, Ho, Wo),
                                            make_view(dx2.data(), c.B, c.C, c.H, c.W), make_view(dw2.data(), c.C, 1, c.k, c.k),
                                            make_view(db2.data(), c.C), {}, p, nn::grad_options{true, true})
                  .ok());
      nn_test::require_doubled(dx2, dx);
      nn_test::require_doubled(dw2, dw);
      nn_test::require_doubled(db2, db);
    }
}

TEMPLATE_TEST_CASE("conv_transpose2d forward matches the scatter reference", "[nn][conv_transpose2d]", float, double) {
  distill_test::rng g(303);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{1e-5, 1e-5};
  for (const auto& c : tr_cases)
    for (int threads : {1, 2}) {
      CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p, c.op, threads);
      const auto x = nn_test::cast<TestType>(g.normals(static_cast<std::size_t>(c.B * c.Ci * c.H * c.W)));
      const auto w = nn_test::cast<TestType>(g.normals(static_cast<std::size_t>(c.Ci * c.Co * c.k * c.k)));
      const auto b = nn_test::cast<TestType>(g.normals(static_cast<std::size_t>(c.Co)));
      long Ho, Wo;
      const vec expect = ref::conv_transpose2d(nn_test::widen(x), nn_test::widen(w), nn_test::widen(b), c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s,
                                               c.s, c.p, c.p, c.op, c.op, Ho, Wo);
      // y inside a larger buffer: a batch stride with a gap that must stay untouched
      nn_test::gapped_images<TestType> y(c.B, c.Co, Ho, Wo, 4);
      REQUIRE(nn::conv_transpose2d_forward(cpu{threads}, cv4(x, c.B, c.Ci, c.H, c.W), cv4(w, c.Ci, c.Co, c.k, c.k), cv1(b), y.view(),
                                           {}, nn::conv_transpose2d_params{c.s, c.s, c.p, c.p, c.op, c.op})
                  .ok());
      CHECK_CLOSE("y", y.images(), expect, tol);
      CHECK(y.gaps_intact());
    }
}

TEST_CASE("conv_transpose2d backward matches finite differences of the reference, and accumulates", "[nn][conv_transpose2d][grad]") {
  distill_test::rng g(304);
  for (const auto& c : tr_cases)
    for (int threads : {1, 2}) {
      CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p, c.op, threads);
      const vec x = g.normals(static_cast<std::size_t>(c.B * c.Ci * c.H * c.W)), w = g.normals(static_cast<std::size_t>(c.Ci * c.Co * c.k * c.k)),
                b = g.normals(static_cast<std::size_t>(c.Co));
      long Ho, Wo;
      auto fwd = [&](const vec& xx, const vec& ww, const vec& bb) {
        return ref::conv_transpose2d(xx, ww, bb, c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, c.op, c.op, Ho, Wo);
      };
      const vec r = g.normals(fwd(x, w, b).size());
      vec dx(x.size()), dw(w.size()), db(b.size());
      const nn::conv_transpose2d_params p{c.s, c.s, c.p, c.p, c.op, c.op};
      REQUIRE(nn::conv_transpose2d_backward(cpu{threads}, cv4(x, c.B, c.Ci, c.H, c.W), cv4(w, c.Ci, c.Co, c.k, c.k), cv4(r, c.B, c.Co, Ho, Wo),
                                            make_view(dx.data(), c.B, c.Ci, c.H, c.W), make_view(dw.data(), c.Ci, c.Co, c.k, c.k),
                                            make_view(db.data(), c.Co), {}, p)
                  .ok());
      nn_test::check_gradient("dx", [&](const vec& v) { return nn_test::dot(r, fwd(v, w, b)); }, x, dx);
      nn_test::check_gradient("dw", [&](const vec& v) { return nn_test::dot(r, fwd(x, v, b)); }, w, dw);
      nn_test::check_gradient("db", [&](const vec& v) { return nn_test::dot(r, fwd(x, w, v)); }, b, db);
      vec dx2 = dx, dw2 = dw, db2 = db;
      REQUIRE(nn::conv_transpose2d_backward(cpu{threads}, cv4(x, c.B, c.Ci, c.H, c.W), cv4(w, c.Ci, c.Co, c.k, c.k), cv4(r, c.B, c.Co, Ho, Wo),
                                            make_view(dx2.data(), c.B, c.Ci, c.H, c.W), make_view(dw2.data(), c.Ci, c.Co, c.k, c.k),
                                            make_view(db2.data(), c.Co), {}, p, nn::grad_options{true, true})
                  .ok());
      nn_test::require_doubled(dx2, dx);
      nn_test::require_doubled(dw2, dw);
      nn_test::require_doubled(db2, db);
    }
}

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
