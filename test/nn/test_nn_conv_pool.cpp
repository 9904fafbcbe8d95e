// conv2d and pooling on the CPU only: the conv2d layer (Relation-Network shapes, init bounds),
// layouts and errors. Their passes against the references run from nn_cases.hpp.
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

TEST_CASE("pooling refuses a window larger than the input", "[nn][pooling][errors]") {
  // max/average/global pooling against the reference: nn_cases.hpp
  std::vector<double> x(4), y(1);
  std::vector<std::int32_t> arg(1);
  CHECK(nn::max_pool2d_forward(cpu{1}, make_view(static_cast<const double*>(x.data()), 1, 1, 2, 2), make_view(y.data(), 1, 1, 1, 1),
                               make_view(arg.data(), 1, 1, 1, 1), nn::pool2d_params{3, 1})
            .code() == errc::shape_mismatch);
}
