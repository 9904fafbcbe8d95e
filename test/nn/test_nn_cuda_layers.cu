// SPDX-License-Identifier: MIT
// The nn layers on CUDA: the cases every backend runs (nn_cases.hpp: linear in every GEMM mode,
// activations, dropout masks, layer and batch norm, conv2d, depthwise and transposed convolutions,
// pooling, embedding, cross-entropy and argmax, the attention core and layer, token transposes,
// 16-bit casts; float against the double references, padded views between canary bands on a
// non-blocking stream), then what only CUDA has: host memory refused as device memory, __half
// views, a too-small conv2d workspace, the NaN loss of an out-of-range device label, token
// transposes past gridDim.y, cuBLAS in graphs.
#include <catch2/catch.hpp>

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "support/backend_cuda.cuh"

using test_space = distill::cuda_space;

#include "nn/nn_cases.hpp"
#include "nn_test_util.hpp"
#include "support/device_buffer.cuh"

using namespace distill;
using nn_test::vec;
using distill_test::cuda_sync;

namespace {
/// Device tensor holding `values` (as T).
template <class T>
nn::device_tensor<T> dev(const nn::tensor_shape& s, const std::vector<T>& values) {
  nn::device_tensor<T> t(s);
  REQUIRE(t.copy_from_host(values).ok());
  return t;
}
template <class T>
nn::device_tensor<T> dev(const nn::tensor_shape& s, const vec& values) {
  return dev<T>(s, nn_test::cast<T>(values));
}
}  // namespace

TEST_CASE("CUDA tensors: upload, download, zero, and host memory refused as device memory", "[nn][cuda]") {
  nn::cuda_blas blas;
  const std::vector<float> h = {1, 2, 3, 4, 5, 6};
  auto t = dev<float>({2, 3}, h);
  CHECK(t.to_host() == h);
  REQUIRE(nn::fill_zero(blas, t.view<2>()).ok());
  cuda_sync();
  CHECK(t.to_host() == std::vector<float>(6, 0.0f));
  CHECK(t.resize({4, 5}).ok());  // grows
  CHECK(t.size() == 20);
  std::vector<float> x(12), w(6), y(8);
  const auto st = nn::linear_forward(blas, make_view<cuda_space>(static_cast<const float*>(x.data()), 4, 3),
                                     make_view<cuda_space>(static_cast<const float*>(w.data()), 2, 3), cuda_view<const float, 1>{},
                                     make_view<cuda_space>(y.data(), 4, 2));
  CHECK(st.code() == errc::wrong_memory_space);
  CHECK(st.message().find("'x'") != std::string::npos);
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("CUDA cast writes __half views bit for bit as float16", "[nn][cuda][cast]") {
  distill_test::rng g(602);
  const long R = 33, C = 77;
  const auto xf = nn_test::cast<float>(g.normals(R * C, 0, 100));
  nn::cuda_blas blas;
  auto dx = dev<float>({R, C}, xf);
  nn::device_tensor<__half> dh16({R, C});
  REQUIRE(nn::cast(blas, dx.cview<2>(), dh16.view<2>()).ok());
  cuda_sync();
  const auto gh = dh16.to_host();
  long mismatches = 0;
  for (long i = 0; i < R * C; ++i) {
    std::uint16_t half_bits;
    std::memcpy(&half_bits, &gh[static_cast<std::size_t>(i)], 2);
    mismatches += half_bits != float16(xf[static_cast<std::size_t>(i)]).bits;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("CUDA conv2d refuses a too-small workspace", "[nn][cuda][conv2d][errors]") {
  nn::cuda_blas blas;
  nn::device_tensor<float> x({1, 1, 4, 4}), w({1, 1, 3, 3}), y({1, 1, 4, 4});
  nn::device_tensor<std::byte> ws({12});
  CHECK(nn::conv2d_forward(blas, x.cview<4>(), w.cview<4>(), cuda_view<const float, 1>{}, y.view<4>(), ws.view<1>(), nn::conv2d_params{1, 1, 1, 1})
            .code() == errc::invalid_argument);
}

TEST_CASE("CUDA cross-entropy gives a NaN loss for an out-of-range label (the host cannot see device labels)", "[nn][cuda][cross_entropy]") {
  distill_test::rng g(606);
  nn::cuda_blas blas;
  const long N = 70, C = 10;
  std::vector<std::int32_t> labels(N);
  for (auto& l : labels) l = static_cast<std::int32_t>(g.integer(0, C - 1));
  labels[3] = 99;
  auto dz = dev<float>({N, C}, g.normals(N * C, 0, 3));
  auto dl = dev<std::int32_t>({N}, labels);
  nn::device_tensor<float> dloss({1});
  REQUIRE(nn::softmax_cross_entropy_forward(blas, dz.cview<2>(), dl.cview<1>(), dloss.view<1>()).ok());
  CHECK(std::isnan(dloss.to_host()[0]));
}

TEST_CASE("CUDA token transposes with more than 65535 x 32 rows (gridDim.y) and a large batch", "[nn][cuda]") {
  for (auto [B, R, S] : {std::array<long, 3>{1, 2100000, 3}, std::array<long, 3>{70000, 2, 5}}) {
    CAPTURE(B, R, S);
    std::vector<float> x(static_cast<std::size_t>(B * R * S));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 9973) - 4000.0f;
    auto dx = dev<float>({B, R, S}, x);
    nn::device_tensor<float> dy({B, S, R});
    nn::cuda_blas blas;
    REQUIRE(nn::nchw_to_tokens(blas, dx.cview<3>(), dy.view<3>()).ok());
    cuda_sync();
    std::vector<float> y(x.size());
    REQUIRE(nn::nchw_to_tokens(cpu{2}, make_view(static_cast<const float*>(x.data()), B, R, S), make_view(y.data(), B, S, R)).ok());
    CHECK(dy.to_host() == y);
  }
}

TEST_CASE("cuda_blas: GEMMs captured into CUDA graphs run in the handle's own workspace, after a stream change too",
          "[nn][cuda][linear]") {
  distill_test::rng g(620);
  const long N = 96, I = 80, O = 64;
  const vec x = g.normals(N * I), w = g.normals(O * I, 0, 0.3), b = g.normals(O);
  auto dx_ = dev<float>({N, I}, x), dw_ = dev<float>({O, I}, w), db_ = dev<float>({O}, b);
  cudaStream_t s1, s2;
  REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) == cudaSuccess);
  nn::cuda_blas blas(s1);
  CHECK(blas.blas_workspace_bytes() >= (std::size_t(4) << 20));
  nn::device_tensor<float> eager({N, O}), graphed({N, O});
  REQUIRE(nn::linear_forward(blas, dx_.cview<2>(), dw_.cview<2>(), db_.cview<1>(), eager.view<2>()).ok());
  REQUIRE(cudaStreamSynchronize(s1) == cudaSuccess);
  const auto want = eager.to_host();
  for (cudaStream_t s : {s1, s2}) {
    REQUIRE(blas.set_stream(s).ok());  // cublasSetStream resets the workspace: set_stream gives it back
    for (int rep = 0; rep < 3; ++rep) {
      REQUIRE(graphed.copy_from_host(std::vector<float>(static_cast<std::size_t>(N * O), -1.0f)).ok());
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
      const status st = nn::linear_forward(blas, dx_.cview<2>(), dw_.cview<2>(), db_.cview<1>(), graphed.view<2>());
      REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
      REQUIRE(st.ok());
      REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
      REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
      CHECK(graphed.to_host() == want);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
  }
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
}

TEST_CASE("CUDA depthwise and transposed convolution layers track their CPU layers", "[nn][cuda][conv2d][layers]") {
  nn::cuda_blas blas;
  distill_test::rng g(604);
  const long B = 3, C = 4, H = 9, W = 7;
  const auto x = nn_test::cast<float>(g.normals(B * C * H * W));
  const nn::init_options init{.seed = 5, .scheme = nn::init_scheme::kaiming_normal};
  // FFSD's shapes: a 3x3 depthwise filter, then a stride-2 upsampling to half the channels
  nn::depthwise_conv2d<float, cuda_space> ddw("dw", C, 3, {1, 1, 1, 1}, init);
  nn::depthwise_conv2d<float> hdw("dw", C, 3, {1, 1, 1, 1}, init);
  nn::conv_transpose2d<float, cuda_space> dup("up", C, C / 2, 3, {2, 2, 1, 1, 1, 1}, init);
  nn::conv_transpose2d<float> hup("up", C, C / 2, 3, {2, 2, 1, 1, 1, 1}, init);
  REQUIRE(ddw.weight.value.to_host() == hdw.weight.value.to_host());
  REQUIRE(dup.weight.value.to_host() == hup.weight.value.to_host());
  const auto ys = hup.output_shape(B, H, W);
  const auto dy = nn_test::cast<float>(g.normals(ys[0] * ys[1] * ys[2] * ys[3]));
  // host
  std::vector<float> hmid(static_cast<std::size_t>(B * C * H * W)), hy(dy.size()), hdmid(hmid.size()), hdx(hmid.size());
  REQUIRE(hdw.forward(cpu{2}, make_view(x.data(), B, C, H, W), make_view(hmid.data(), B, C, H, W)).ok());
  REQUIRE(hup.forward(cpu{2}, make_view(static_cast<const float*>(hmid.data()), B, C, H, W), make_view(hy.data(), ys[0], ys[1], ys[2], ys[3])).ok());
  REQUIRE(hup.backward(cpu{2}, make_view(static_cast<const float*>(hmid.data()), B, C, H, W),
                       make_view(dy.data(), ys[0], ys[1], ys[2], ys[3]), make_view(hdmid.data(), B, C, H, W))
              .ok());
  REQUIRE(hdw.backward(cpu{2}, make_view(x.data(), B, C, H, W), make_view(static_cast<const float*>(hdmid.data()), B, C, H, W),
                       make_view(hdx.data(), B, C, H, W))
              .ok());
  // device
  auto dx_in = dev<float>({B, C, H, W}, x), ddy = dev<float>(ys, dy);
  nn::device_tensor<float> dmid({B, C, H, W}), dy_out(ys), ddmid({B, C, H, W}), ddx({B, C, H, W});
  REQUIRE(ddw.forward(blas, dx_in.cview<4>(), dmid.view<4>()).ok());
  REQUIRE(dup.forward(blas, dmid.cview<4>(), dy_out.view<4>()).ok());
  REQUIRE(dup.backward(blas, dmid.cview<4>(), ddy.cview<4>(), ddmid.view<4>()).ok());
  REQUIRE(ddw.backward(blas, dx_in.cview<4>(), ddmid.cview<4>(), ddx.view<4>()).ok());
  cuda_sync();
  const distill_test::tolerance t{1e-5, 1e-4};
  CHECK_CLOSE("depthwise y", dmid.to_host(), hmid, t);
  CHECK_CLOSE("transposed y", dy_out.to_host(), hy, t);
  CHECK_CLOSE("transposed dx", ddmid.to_host(), hdmid, t);
  CHECK_CLOSE("depthwise dx", ddx.to_host(), hdx, t);
  CHECK_CLOSE("transposed dW", dup.weight.grad.to_host(), hup.weight.grad.to_host(), t);
  CHECK_CLOSE("transposed db", dup.bias.grad.to_host(), hup.bias.grad.to_host(), t);
  CHECK_CLOSE("depthwise dW", ddw.weight.grad.to_host(), hdw.weight.grad.to_host(), t);
  CHECK_CLOSE("depthwise db", ddw.bias.grad.to_host(), hdw.bias.grad.to_host(), t);
}
