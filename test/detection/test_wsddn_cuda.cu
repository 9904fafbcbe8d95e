// SPDX-License-Identifier: MIT
// WSDDN head on CUDA: the cases every backend runs (wsddn_cases.hpp: scores, region scores,
// gradients and the fused loss against the naive double reference, bitwise repeatable, on a
// non-blocking stream with canaries around every buffer), then a missing workspace and host
// memory refused.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "support/backend_cuda.cuh"

using test_space = distill::cuda_space;

#include "detection/wsddn_cases.hpp"
#include "distill/detection/wsddn.hpp"
#include "support/device_buffer.cuh"

using namespace distill;
using distill_test::device_buffer;

TEST_CASE("wsddn cuda: bad input is refused", "[detection][wsddn][cuda]") {
  const int B = 2, R = 3, C = 4;
  device_buffer<float> x(static_cast<std::size_t>(B * R * C)), y(x.size()), s(static_cast<std::size_t>(B * C));
  device_buffer<std::byte> ws(wsddn_workspace_size(cuda{}, B, R, C));
  const wsddn_streams<const float, cuda_space> logits{x.view(B, R, C), y.view(B, R, C)};
  CHECK(wsddn_workspace_size(cuda{}, B, R, C) >= (2 * B * R + B) * sizeof(float));
  CHECK(wsddn_workspace_size(cpu{}, B, R, C) == 0);
  CHECK(wsddn_forward(cuda{}, logits, s.view(B, C), cuda_view<float, 3>{}, cuda_view<std::byte, 1>{}).code() == errc::invalid_argument);
  CHECK(wsddn_forward(cuda{}, logits, s.view(B, C), cuda_view<float, 3>{}, ws.view(ws.size())).ok());
  std::vector<float> host(static_cast<std::size_t>(B * R * C));
  const wsddn_streams<const float, cuda_space> on_host{make_view<cuda_space>(static_cast<const float*>(host.data()), B, R, C), y.view(B, R, C)};
  CHECK(wsddn_forward(cuda{}, on_host, s.view(B, C), cuda_view<float, 3>{}, ws.view(ws.size())).code() == errc::wrong_memory_space);
}
