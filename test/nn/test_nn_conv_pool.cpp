// conv2d and pooling: forward against the direct double reference, backward against central
// finite differences of it, layouts, thread counts, errors.
#include <catch2/catch.hpp>

#include <cstdint>
#include <tuple>
#include <vector>

#include "distill/nn/cast.hpp"
#include "distill/nn/conv2d.hpp"
#include "distill/nn/embedding.hpp"
#include "distill/nn/pooling.hpp"
#include "nn_test_util.hpp"
#include "reference/nn_ref.hpp"

using namespace distill;
using nn_test::vec;
namespace ref = distill_ref::nn;

namespace {
struct conv_case {
  long B, Ci, H, W, Co, k, s, p;
};
}  // namespace

TEMPLATE_TEST_CASE("conv2d forward matches the direct reference (kernels, strides, padding, 1x1, batch < threads)", "[nn][conv2d]",
                   float, double) {
  distill_test::rng g(201);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{1e-4, 1e-4};
  const conv_case cases[] = {{1, 3, 75, 75, 24, 3, 2, 1}, {3, 24, 19, 19, 24, 3, 2, 1}, {2, 5, 7, 9, 4, 1, 1, 0}, {4, 2, 8, 6, 3, 5, 1, 2},
                             {2, 3, 9, 7, 2, 2, 3, 0},    {5, 1, 4, 4, 1, 4, 1, 0},     {1, 2, 3, 3, 5, 3, 1, 1}};
  for (const auto& c : cases) {
    for (int threads : {1, 2}) {
      CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p, threads);
      vec x = g.normals(static_cast<std::size_t>(c.B * c.Ci * c.H * c.W)), w = g.normals(static_cast<std::size_t>(c.Co * c.Ci * c.k * c.k)),
          b = g.normals(static_cast<std::size_t>(c.Co));
      auto xf = nn_test::cast<TestType>(x), wf = nn_test::cast<TestType>(w), bf = nn_test::cast<TestType>(b);
      long Ho, Wo;
      const vec expect = ref::conv2d(nn_test::widen(xf), nn_test::widen(wf), nn_test::widen(bf), c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s,
                                     c.p, c.p, Ho, Wo);
      // y inside a larger buffer: a batch stride with a gap that must stay untouched
      nn_test::gapped_images<TestType> y(c.B, c.Co, Ho, Wo, 5);
      REQUIRE(nn::conv2d_forward(cpu{threads}, make_view(static_cast<const TestType*>(xf.data()), c.B, c.Ci, c.H, c.W),
                                 make_view(static_cast<const TestType*>(wf.data()), c.Co, c.Ci, c.k, c.k),
                                 make_view(static_cast<const TestType*>(bf.data()), c.Co), y.view(), {}, nn::conv2d_params{c.s, c.s, c.p, c.p})
                  .ok());
      CHECK_CLOSE("y", y.images(), expect, tol);
      CHECK(y.gaps_intact());
    }
  }
}

TEST_CASE("conv2d backward matches finite differences of the direct reference", "[nn][conv2d][grad]") {
  distill_test::rng g(202);
  const conv_case cases[] = {{2, 2, 7, 7, 3, 3, 2, 1}, {3, 3, 5, 4, 2, 1, 1, 0}, {2, 1, 6, 5, 2, 3, 1, 0}, {1, 2, 5, 5, 2, 2, 2, 1}};
  for (const auto& c : cases) {
    for (int threads : {1, 2}) {
      CAPTURE(c.B, c.Ci, c.H, c.W, c.Co, c.k, c.s, c.p, threads);
      vec x = g.normals(static_cast<std::size_t>(c.B * c.Ci * c.H * c.W)), w = g.normals(static_cast<std::size_t>(c.Co * c.Ci * c.k * c.k)),
          b = g.normals(static_cast<std::size_t>(c.Co));
      long Ho, Wo;
      auto fwd = [&](const vec& xx, const vec& ww, const vec& bb) {
        return ref::conv2d(xx, ww, bb, c.B, c.Ci, c.H, c.W, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, Ho, Wo);
      };
      const vec y = fwd(x, w, b);
      const vec r = g.normals(y.size());
      vec dx(x.size()), dw(w.size()), db(b.size());
      REQUIRE(nn::conv2d_backward(cpu{threads}, make_view(static_cast<const double*>(x.data()), c.B, c.Ci, c.H, c.W),
                                  make_view(static_cast<const double*>(w.data()), c.Co, c.Ci, c.k, c.k),
                                  make_view(static_cast<const double*>(r.data()), c.B, c.Co, Ho, Wo), make_view(dx.data(), c.B, c.Ci, c.H, c.W),
                                  make_view(dw.data(), c.Co, c.Ci, c.k, c.k), make_view(db.data(), c.Co), {}, nn::conv2d_params{c.s, c.s, c.p, c.p})
                  .ok());
      nn_test::check_gradient("dx", [&](const vec& v) { return nn_test::dot(r, fwd(v, w, b)); }, x, dx);
      nn_test::check_gradient("dw", [&](const vec& v) { return nn_test::dot(r, fwd(x, v, b)); }, w, dw);
      nn_test::check_gradient("db", [&](const vec& v) { return nn_test::dot(r, fwd(x, w, v)); }, b, db);
      // accumulate into existing gradients
      vec dx2 = dx, dw2 = dw;
      REQUIRE(nn::conv2d_backward(cpu{threads}, make_view(static_cast<const double*>(x.data()), c.B, c.Ci, c.H, c.W),
                                  make_view(static_cast<const double*>(w.data()), c.Co, c.Ci, c.k, c.k),
                                  make_view(static_cast<const double*>(r.data()), c.B, c.Co, Ho, Wo), make_view(dx2.data(), c.B, c.Ci, c.H, c.W),
                                  make_view(dw2.data(), c.Co, c.Ci, c.k, c.k), host_view<double, 1>{}, {}, nn::conv2d_params{c.s, c.s, c.p, c.p},
                                  nn::grad_options{true, true})
                  .ok());
      nn_test::require_doubled(dx2, dx);
      nn_test::require_doubled(dw2, dw);
    }
  }
}

TEST_CASE("conv2d layer: Relation-Network stack shapes, init bounds, errors", "[nn][conv2d]") {
  nn::conv2d<float> c1("cnn.conv1", 3, 24, 3, {2, 2, 1, 1}, {.seed = 1});
  CHECK(c1.output_shape(64, 75, 75) == nn::tensor_shape{64, 24, 38, 38});
  nn::conv2d<float> c2("cnn.conv2", 24, 24, 3, {2, 2, 1, 1}, {.seed = 1});
  CHECK(c2.output_shape(64, 38, 38) == nn::tensor_shape{64, 24, 19, 19});
  CHECK(c2.output_shape(64, 19, 19) == nn::tensor_shape{64, 24, 10, 10});
  CHECK(c2.output_shape(64, 10, 10) == nn::tensor_shape{64, 24, 5, 5});
  const float bound = 1 / std::sqrt(27.0f);
  for (float v : c1.weight.value.to_host()) CHECK(std::fabs(v) <= bound);
  std::vector<float> x(2 * 3 * 4 * 4), y(2 * 24 * 2 * 2), w(24 * 2 * 9);
  auto st = nn::conv2d_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 2, 3, 4, 4),
                               make_view(static_cast<const float*>(w.data()), 24, 2, 3, 3), host_view<const float, 1>{},
                               make_view(y.data(), 2, 24, 2, 2), {}, nn::conv2d_params{2, 2, 1, 1});
  CHECK(st.code() == errc::shape_mismatch);  // channels
  st = c1.forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 2, 3, 4, 4), make_view(y.data(), 2, 24, 3, 3));
  CHECK(st.code() == errc::shape_mismatch);  // y extent
  st = c1.forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 2, 3, 4, 4), make_view(y.data(), 2, 24, 2, 2));
  CHECK(st.ok());
  auto strided_x = make_strided_view(static_cast<const float*>(x.data()), std::array<index_t, 4>{2, 3, 4, 2}, std::array<index_t, 4>{48, 16, 4, 2});
  CHECK(nn::conv2d_forward(cpu{1}, strided_x, c1.weight.value.view<4>(), host_view<const float, 1>{}, make_view(y.data(), 2, 24, 2, 1), {},
                           nn::conv2d_params{2, 2, 1, 1})
            .code() == errc::unsupported_layout);
  CHECK(nn::conv2d_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 2, 3, 4, 4), c1.weight.value.view<4>(),
                           host_view<const float, 1>{}, make_view(y.data(), 2, 24, 2, 2), {}, nn::conv2d_params{0, 2, 1, 1})
            .code() == errc::invalid_argument);
}

TEST_CASE("a null output or upstream-gradient view with a valid shape is refused, not written", "[nn][errors]") {
  std::vector<float> x(2 * 3 * 4 * 4, 1.0f), w(4 * 3 * 3 * 3, 1.0f), dx(x.size());
  const auto xv = make_view(static_cast<const float*>(x.data()), 2, 3, 4, 4);
  const auto wv = make_view(static_cast<const float*>(w.data()), 4, 3, 3, 3);
  float* null = nullptr;
  auto is_null_error = [](const status& st, const char* name) {
    INFO(st.message());
    return st.code() == errc::invalid_argument && st.message().find(std::string("'") + name + "' is a null pointer") != std::string::npos;
  };
  CHECK(is_null_error(nn::conv2d_forward(cpu{1}, xv, wv, host_view<const float, 1>{}, make_view(null, 2, 4, 2, 2), {}, nn::conv2d_params{2, 2, 1, 1}), "y"));
  CHECK(is_null_error(nn::conv2d_backward(cpu{1}, xv, wv, make_view(static_cast<const float*>(null), 2, 4, 2, 2), make_view(dx.data(), 2, 3, 4, 4),
                                          host_view<float, 4>{}, host_view<float, 1>{}, {}, nn::conv2d_params{2, 2, 1, 1}),
                      "dy"));
  const nn::pool2d_params pool{2, 2};
  CHECK(is_null_error(nn::avg_pool2d_forward(cpu{1}, xv, make_view(null, 2, 3, 2, 2), pool), "y"));
  CHECK(is_null_error(nn::avg_pool2d_backward(cpu{1}, make_view(static_cast<const float*>(null), 2, 3, 2, 2), make_view(dx.data(), 2, 3, 4, 4), pool), "dy"));
  CHECK(is_null_error(nn::global_avg_pool_forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 2, 3, 16), make_view(null, 2, 3)), "y"));
  CHECK(is_null_error(nn::cast(cpu{1}, make_view(static_cast<const float*>(x.data()), 6, 16), make_view(static_cast<double*>(nullptr), 6, 16)), "out"));
  const std::vector<std::int64_t> ids{0, 2};
  std::vector<float> table(3 * 5);
  CHECK(is_null_error(nn::embedding_backward<std::int64_t, float>(cpu{1}, make_view(ids.data(), 2), make_view(static_cast<const float*>(null), 2, 5), make_view(table.data(), 3, 5)),
                      "dy"));
}

TEST_CASE("pooling: max/average/global against the reference, gradients against finite differences", "[nn][pooling][grad]") {
  distill_test::rng g(210);
  for (auto [k, s] : {std::pair<long, long>{2, 2}, {3, 2}, {2, 1}, {3, 3}}) {
    const long N = 2, C = 3, H = 7, W = 8;
    CAPTURE(k, s);
    vec x = g.normals(N * C * H * W);  // distinct values: no ties, max is differentiable
    const long Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    std::vector<int> ref_arg;
    const vec ymax = ref::pool2d(x, N, C, H, W, k, s, true, &ref_arg), yavg = ref::pool2d(x, N, C, H, W, k, s, false);
    vec y(ymax.size());
    std::vector<std::int32_t> arg(ymax.size());
    REQUIRE(nn::max_pool2d_forward(cpu{2}, make_view(static_cast<const double*>(x.data()), N, C, H, W), make_view(y.data(), N, C, Ho, Wo),
                                   make_view(arg.data(), N, C, Ho, Wo), nn::pool2d_params{k, s})
                .ok());
    CHECK_CLOSE("max", y, ymax, distill_test::tol::f64);
    for (std::size_t i = 0; i < arg.size(); ++i) REQUIRE(arg[i] == ref_arg[i]);
    REQUIRE(nn::avg_pool2d_forward(cpu{2}, make_view(static_cast<const double*>(x.data()), N, C, H, W), make_view(y.data(), N, C, Ho, Wo),
                                   nn::pool2d_params{k, s})
                .ok());
    CHECK_CLOSE("avg", y, yavg, distill_test::tol::f64);
    const vec r = g.normals(y.size());
    vec dx(x.size());
    REQUIRE(nn::max_pool2d_backward(cpu{2}, make_view(static_cast<const double*>(r.data()), N, C, Ho, Wo),
                                    make_view(static_cast<const std::int32_t*>(arg.data()), N, C, Ho, Wo), make_view(dx.data(), N, C, H, W),
                                    nn::pool2d_params{k, s})
                .ok());
    nn_test::check_gradient("max dx", [&, k = k, s = s](const vec& v) { return nn_test::dot(r, ref::pool2d(v, N, C, H, W, k, s, true)); }, x, dx);
    REQUIRE(nn::avg_pool2d_backward(cpu{1}, make_view(static_cast<const double*>(r.data()), N, C, Ho, Wo), make_view(dx.data(), N, C, H, W),
                                    nn::pool2d_params{k, s})
                .ok());
    nn_test::check_gradient("avg dx", [&, k = k, s = s](const vec& v) { return nn_test::dot(r, ref::pool2d(v, N, C, H, W, k, s, false)); }, x, dx);
  }
  // global average
  const long N = 3, C = 4, S = 25;
  vec x = g.normals(N * C * S), y(N * C), r = g.normals(N * C), dx(N * C * S);
  REQUIRE(nn::global_avg_pool_forward(cpu{2}, make_view(static_cast<const double*>(x.data()), N, C, S), make_view(y.data(), N, C)).ok());
  auto gap = [&](const vec& v) {
    vec o(N * C, 0.0);
    for (long i = 0; i < N * C; ++i)
      for (long k = 0; k < S; ++k) o[static_cast<std::size_t>(i)] += v[static_cast<std::size_t>(i * S + k)] / S;
    return o;
  };
  CHECK_CLOSE("global avg", y, gap(x), distill_test::tol::f64);
  REQUIRE(nn::global_avg_pool_backward(cpu{2}, make_view(static_cast<const double*>(r.data()), N, C), make_view(dx.data(), N, C, S)).ok());
  nn_test::check_gradient("global avg dx", [&](const vec& v) { return nn_test::dot(r, gap(v)); }, x, dx);
  // a window larger than the input is refused
  CHECK(nn::max_pool2d_forward(cpu{1}, make_view(static_cast<const double*>(x.data()), 1, 1, 2, 2), make_view(y.data(), 1, 1, 1, 1),
                               make_view(reinterpret_cast<std::int32_t*>(dx.data()), 1, 1, 1, 1), nn::pool2d_params{3, 1})
            .code() == errc::shape_mismatch);
}
