// SPDX-License-Identifier: MIT
// The nn layers on CUDA: the cases every backend runs (nn_cases.hpp: linear in every GEMM mode,
// activations, dropout masks, layer and batch norm, conv2d, pooling, embedding, cross-entropy and
// argmax, the attention core and layer, token transposes, 16-bit casts; float against the double
// references, padded views between canary bands on a non-blocking stream), then what only CUDA
// has: host memory refused as device memory, __half views, a too-small conv2d workspace, the NaN
// loss of an out-of-range device label, token transposes past gridDim.y, cuBLAS in graphs.
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
