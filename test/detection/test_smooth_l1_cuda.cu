// SPDX-License-Identifier: MIT
// Smooth L1 box regression loss on CUDA: against the double reference and the CPU path over
// every reduction, beta (0 = L1), with and without row weights, accumulate, forward / backward /
// forward_backward agreeing, an undersized workspace refused, and bitwise reproducible runs.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "distill/detection/smooth_l1.hpp"
#include "reference/proposal_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using distill_test::device_buffer;

TEST_CASE("cuda smooth L1: against the reference and the CPU", "[cuda][detection][smooth_l1]") {
  distill_test::rng g(61);
  for (reduction red : {reduction::none, reduction::sum, reduction::mean, reduction::batchmean})
    for (double beta : {1.0 / 9.0, 0.0})
      for (bool weighted : {false, true}) {
        CAPTURE(to_string(red), beta, weighted);
        const int N = static_cast<int>(g.integer(1, 300)), D = weighted ? 4 : static_cast<int>(g.integer(1, 70));  // D > 32: several lanes per row
        std::vector<float> pred(static_cast<std::size_t>(N * D)), target(pred.size()), w;
        for (std::size_t i = 0; i < pred.size(); ++i) target[i] = static_cast<float>(g.normal()), pred[i] = target[i] + static_cast<float>(g.normal(0, 0.3));
        if (weighted)
          for (int r = 0; r < N; ++r) w.push_back(g.coin(0.4) ? 0.0f : static_cast<float>(g.uniform(0.1, 2.0)));
        smooth_l1_options o;
        o.beta = beta, o.reduction = red, o.grad_scale = 1.3f;
        const index_t loss_n = red == reduction::none ? N : 1;
        device_buffer<float> dp(pred), dt(target), dw(weighted ? w : std::vector<float>(1, 0.0f)), dloss(static_cast<std::size_t>(loss_n)),
            dgrad(pred.size()), dgrad2(pred.size());
        device_buffer<std::byte> ws(smooth_l1_workspace_size(cuda{}, N, D));
        const cuda_view<const float, 1> wv = weighted ? cuda_view<const float, 1>(dw.view(N)) : cuda_view<const float, 1>{};
        REQUIRE(smooth_l1_forward_backward(cuda{}, dp.view(N, D), dt.view(N, D), wv, dloss.view(loss_n), dgrad.view(N, D), ws.view(ws.size()), o).ok());
        REQUIRE(smooth_l1_backward(cuda{}, dp.view(N, D), dt.view(N, D), wv, dgrad2.view(N, D), ws.view(ws.size()), o).ok());
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        const auto loss = dloss.download(), grad = dgrad.download(), grad2 = dgrad2.download();
        CHECK(grad == grad2);
        // the CPU path (float) and the double reference
        std::vector<float> cpu_loss(static_cast<std::size_t>(loss_n)), cpu_grad(pred.size());
        const host_view<const float, 1> hw = weighted ? make_view(static_cast<const float*>(w.data()), N) : host_view<const float, 1>{};
        REQUIRE(smooth_l1_forward_backward(cpu{1}, make_view(static_cast<const float*>(pred.data()), N, D), make_view(static_cast<const float*>(target.data()), N, D),
                                           hw, make_view(cpu_loss.data(), loss_n), make_view(cpu_grad.data(), N, D), {}, o)
                    .ok());
        CHECK_CLOSE("gradient vs CPU", grad, cpu_grad, distill_test::tol::f32);
        CHECK_CLOSE("loss vs CPU", loss, cpu_loss, distill_test::tol::f32_sum);
        if (red != reduction::none) {
          const std::vector<double> pd(pred.begin(), pred.end()), td(target.begin(), target.end()), wd(w.begin(), w.end());
          const int mode = red == reduction::sum ? 0 : (red == reduction::mean ? 1 : 2);
          CHECK_CLOSE_SCALAR("loss vs reference", static_cast<double>(loss[0]), distill_ref::smooth_l1_ref(pd, td, wd, N, D, beta, mode), distill_test::tol::f32_sum);
        }
        // bitwise reproducible, and accumulate adds
        device_buffer<float> dloss2(static_cast<std::size_t>(loss_n));
        REQUIRE(smooth_l1_forward(cuda{}, dp.view(N, D), dt.view(N, D), wv, dloss2.view(loss_n), ws.view(ws.size()), o).ok());
        CHECK(dloss2.download() == loss);
        smooth_l1_options acc = o;
        acc.accumulate = true;
        REQUIRE(smooth_l1_backward(cuda{}, dp.view(N, D), dt.view(N, D), wv, dgrad2.view(N, D), ws.view(ws.size()), acc).ok());
        std::vector<double> twice(grad.begin(), grad.end());
        for (auto& v : twice) v *= 2;
        CHECK_CLOSE("accumulate", dgrad2.download(), twice, distill_test::tol::f32);
      }
}

TEST_CASE("cuda smooth L1: bad input", "[cuda][detection][smooth_l1]") {
  const int N = 5, D = 4;
  device_buffer<float> dp(std::vector<float>(N * D, 1.0f)), dt(std::vector<float>(N * D, 0.0f)), dloss(1), dgrad(N * D);
  const std::size_t need = smooth_l1_workspace_size(cuda{}, N, D);
  device_buffer<std::byte> ws(need);
  smooth_l1_options mean;
  mean.reduction = reduction::mean;
  CHECK(smooth_l1_forward(cuda{}, dp.view(N, D), dt.view(N, D), {}, dloss.view(1), ws.view(need / 2), mean).code() == errc::invalid_argument);
  CHECK(smooth_l1_forward(cuda{}, dp.view(N, D), dt.view(N - 1, D), {}, dloss.view(1), ws.view(need), mean).code() == errc::shape_mismatch);
  smooth_l1_options neg;
  neg.beta = -1;
  CHECK(smooth_l1_backward(cuda{}, dp.view(N, D), dt.view(N, D), {}, dgrad.view(N, D), ws.view(need), neg).code() == errc::invalid_argument);
  // host memory is refused
  std::vector<float> host(N * D);
  CHECK_FALSE(smooth_l1_backward(cuda{}, make_view<cuda_space>(static_cast<const float*>(host.data()), N, D), dt.view(N, D), {}, dgrad.view(N, D),
                                 ws.view(need), {})
                  .ok());
}
