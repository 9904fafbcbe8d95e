// CUDA transformer encoder (layer and stack, pre-LN and post-LN, padded keys, dropout) on
// cuda_space in float: the forward and the attention probabilities against the double reference
// of reference/transformer_ref.hpp, the backward (input, every parameter, grad_probs) against the
// double CPU path (itself checked against finite differences of that reference in the CPU tests).
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "distill/nn/transformer.hpp"
#include "nn_test_util.hpp"
#include "reference/transformer_ref.hpp"
#include "support/device_buffer.cuh"

using namespace distill;
using nn_test::vec;
namespace tref = distill_ref::transformer;
using distill_test::cuda_sync;

namespace {
template <class T>
nn::device_tensor<T> to_device(const nn::tensor_shape& s, const std::vector<T>& values) {
  nn::device_tensor<T> t(s);
  REQUIRE(t.copy_from_host(values).ok());
  return t;
}
std::vector<std::uint8_t> padding_mask(long B, long L) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B * L), 1);
  for (long b = 0; b < B; ++b)
    for (long j = std::max(1L, L - b - 1); j < L; ++j) m[static_cast<std::size_t>(b * L + j)] = 0;
  return m;
}
/// The same random values into the CUDA (float) and CPU (double) models' parameters, in order.
std::vector<vec> randomize_both(const nn::parameter_list<float, cuda_space>& dev, const nn::parameter_list<double, host_space>& host,
                                distill_test::rng& g) {
  REQUIRE(dev.size() == host.size());
  std::vector<vec> out;
  for (std::size_t i = 0; i < dev.size(); ++i) {
    REQUIRE(dev[i]->name == host[i]->name);
    const bool gain = dev[i]->name.find(".norm") != std::string::npos && dev[i]->name.ends_with(".weight");
    const auto f = nn_test::cast<float>(g.normals(static_cast<std::size_t>(dev[i]->value.size()), gain ? 1.0 : 0.0, gain ? 0.2 : 0.35));
    REQUIRE(dev[i]->value.copy_from_host(f).ok());
    REQUIRE(host[i]->value.copy_from_host(nn_test::cast<double>(nn_test::widen(f))).ok());
    out.push_back(nn_test::widen(f));
  }
  return out;
}
constexpr distill_test::tolerance f32_model{2e-4, 2e-3};  // float GEMMs and layer norms chained through a layer
}  // namespace

TEST_CASE("CUDA transformer encoder layer matches the double reference and the CPU backward", "[nn][cuda][transformer]") {
  distill_test::rng g(1611);
  nn::cuda_blas blas;
  struct shape_case {
    long B, L, D, H, F;
  };
  for (const auto& c : {shape_case{2, 5, 8, 2, 16}, shape_case{4, 33, 64, 4, 96}}) {
    for (const bool pre : {true, false}) {
      for (const double p_drop : {0.0, 0.2}) {
        CAPTURE(c.B, c.L, c.D, c.H, c.F, pre, p_drop);
        nn::transformer_options opt;
        opt.norm_first = pre;
        opt.dropout = p_drop;
        opt.dropout_seed = 9;
        nn::transformer_encoder_layer<float, cuda_space> layer("enc", c.D, c.H, c.F, opt);
        nn::transformer_encoder_layer<double> cpu_layer("enc", c.D, c.H, c.F, opt);
        const auto params = randomize_both(layer.parameters(), cpu_layer.parameters(), g);
        const long n = c.B * c.L * c.D, np = c.B * c.H * c.L * c.L;
        const auto x = nn_test::cast<float>(g.normals(n)), dy = nn_test::cast<float>(g.normals(n)),
                   gp = nn_test::cast<float>(g.normals(np));
        const auto mask = padding_mask(c.B, c.L);
        auto dx_ = to_device<float>({c.B, c.L, c.D}, x), ddy = to_device<float>({c.B, c.L, c.D}, dy),
             dgp = to_device<float>({c.B, c.H, c.L, c.L}, gp);
        auto dmask = to_device<std::uint8_t>({c.B, c.L}, mask);
        nn::device_tensor<float> dyout({c.B, c.L, c.D}), dgx({c.B, c.L, c.D});
        REQUIRE(layer.forward(blas, dx_.cview<3>(), dmask.cview<2>(), dyout.view<3>()).ok());
        auto plist = layer.parameters();
        REQUIRE(nn::zero_grad(blas, plist).ok());
        REQUIRE(layer.backward(blas, dx_.cview<3>(), dmask.cview<2>(), ddy.cview<3>(), dgx.view<3>(), dgp.cview<4>()).ok());
        cuda_sync();
        tref::layer_shape s{c.B, c.L, c.D, c.H, c.F, pre};
        s.dropout = p_drop;
        s.seed = 9;
        vec probs;
        CHECK_CLOSE("y", dyout.to_host(), tref::encoder_layer(nn_test::widen(x), mask, params, s, &probs), f32_model);
        nn::host_tensor<float> P_host({c.B, c.H, c.L, c.L});
        const auto P = layer.attention_probs();
        REQUIRE(P.extent(3) == c.L);
        REQUIRE(cudaMemcpy(P_host.data(), P.data(), sizeof(float) * np, cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK_CLOSE("attention probabilities", P_host.to_host(), probs, f32_model);

        // The CPU double layer (same parameters, same dropout masks) gives the gradients.
        const vec xd = nn_test::widen(x), dyd = nn_test::widen(dy), gpd = nn_test::widen(gp);
        vec y_cpu(xd.size()), dx_cpu(xd.size());
        const auto mv = make_view(mask.data(), c.B, c.L);
        REQUIRE(cpu_layer.forward(cpu{2}, make_view(xd.data(), c.B, c.L, c.D), mv, make_view(y_cpu.data(), c.B, c.L, c.D)).ok());
        auto cpu_params = cpu_layer.parameters();
        REQUIRE(nn::zero_grad(cpu{1}, cpu_params).ok());
        REQUIRE(cpu_layer.backward(cpu{2}, make_view(xd.data(), c.B, c.L, c.D), mv, make_view(dyd.data(), c.B, c.L, c.D),
                                   make_view(dx_cpu.data(), c.B, c.L, c.D), make_view(gpd.data(), c.B, c.H, c.L, c.L))
                    .ok());
        CHECK_CLOSE("dx", dgx.to_host(), dx_cpu, f32_model);
        for (std::size_t t = 0; t < plist.size(); ++t) {
          INFO(plist[t]->name);
          CHECK_CLOSE("parameter gradient", plist[t]->grad.to_host(), cpu_params[t]->grad.to_host(), f32_model);
        }
      }
    }
  }
}

TEST_CASE("CUDA transformer encoder stack matches the CPU with grad_probs per layer, and host memory is refused", "[nn][cuda][transformer]") {
  distill_test::rng g(1612);
  nn::cuda_blas blas;
  const long B = 3, L = 6, D = 16, H = 4, F = 24, N = 2;
  nn::transformer_options opt;
  opt.final_norm = true;
  nn::transformer_encoder<float, cuda_space> enc("student", N, D, H, F, opt);
  nn::transformer_encoder<double> cpu_enc("student", N, D, H, F, opt);
  randomize_both(enc.parameters(), cpu_enc.parameters(), g);
  const auto x = nn_test::cast<float>(g.normals(B * L * D)), dy = nn_test::cast<float>(g.normals(B * L * D)),
             gp = nn_test::cast<float>(g.normals(B * H * L * L));
  const auto mask = padding_mask(B, L);
  auto dx_ = to_device<float>({B, L, D}, x), ddy = to_device<float>({B, L, D}, dy), dgp = to_device<float>({B, H, L, L}, gp);
  auto dmask = to_device<std::uint8_t>({B, L}, mask);
  nn::device_tensor<float> y({B, L, D}), gx({B, L, D});
  REQUIRE(enc.forward(blas, dx_.cview<3>(), dmask.cview<2>(), y.view<3>()).ok());
  auto plist = enc.parameters();
  REQUIRE(nn::zero_grad(blas, plist).ok());
  const std::vector<cuda_view<const float, 4>> gps{dgp.cview<4>(), cuda_view<const float, 4>{}};
  REQUIRE(enc.backward(blas, dx_.cview<3>(), dmask.cview<2>(), ddy.cview<3>(), gx.view<3>(), gps).ok());
  cuda_sync();

  const vec xd = nn_test::widen(x), dyd = nn_test::widen(dy), gpd = nn_test::widen(gp);
  vec y_cpu(xd.size()), dx_cpu(xd.size());
  const auto mv = make_view(mask.data(), B, L);
  REQUIRE(cpu_enc.forward(cpu{2}, make_view(xd.data(), B, L, D), mv, make_view(y_cpu.data(), B, L, D)).ok());
  auto cpu_params = cpu_enc.parameters();
  REQUIRE(nn::zero_grad(cpu{1}, cpu_params).ok());
  const std::vector<host_view<const double, 4>> cpu_gps{make_view(gpd.data(), B, H, L, L), host_view<const double, 4>{}};
  REQUIRE(cpu_enc.backward(cpu{2}, make_view(xd.data(), B, L, D), mv, make_view(dyd.data(), B, L, D), make_view(dx_cpu.data(), B, L, D), cpu_gps)
              .ok());
  CHECK_CLOSE("y", y.to_host(), y_cpu, f32_model);
  CHECK_CLOSE("dx", gx.to_host(), dx_cpu, f32_model);
  for (std::size_t t = 0; t < plist.size(); ++t) {
    INFO(plist[t]->name);
    CHECK_CLOSE("parameter gradient", plist[t]->grad.to_host(), cpu_params[t]->grad.to_host(), f32_model);
  }

  // host memory passed as device memory: a status naming the argument, no crash
  std::vector<float> hx(x);
  const auto host_as_device = make_view<cuda_space>(static_cast<const float*>(hx.data()), B, L, D);
  const status st = enc.forward(blas, host_as_device, dmask.cview<2>(), y.view<3>());
  CHECK_FALSE(st.ok());
}
