// SPDX-License-Identifier: MIT
// Multi-label sigmoid soft targets on CUDA: the cases every backend runs (multilabel_cases.hpp:
// every reduction and optional input against the double reference, float, float16 and bfloat16
// logits, forward / backward / fused agreeing bitwise, canaries), +-1e4 logits, missing
// workspace refused.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "distill/losses/multilabel_soft_target.hpp"
#include "reference/multilabel_ref.hpp"
#include "support/backend_cuda.cuh"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using test_space = distill::cuda_space;

#include "multilabel/multilabel_cases.hpp"

using namespace distill;
using distill_test::device_buffer;

TEST_CASE("cuda multilabel soft target: extreme logits, workspace rules", "[cuda][multilabel]") {
  const std::vector<float> s = {1e4f, -1e4f, 1e4f, -1e4f}, t = {1e4f, -1e4f, -1e4f, 1e4f};
  device_buffer<float> ds(s), dt(t), dg(4), dloss(4);
  multilabel_soft_target_options o;
  o.temperature = 2, o.scale_by_t_squared = false, o.reduction = reduction::none;
  REQUIRE(multilabel_soft_target_forward_backward(cuda{}, ds.view(4, 1), dt.view(4, 1), {}, dloss.view(4), dg.view(4, 1), {}, o).ok());
  CHECK_CLOSE("loss", dloss.download(), (std::vector<double>{0, 0, 5000, 5000}), (distill_test::tolerance{1e-6, 1e-6}));
  CHECK_CLOSE("grad", dg.download(), (std::vector<double>{0, 0, 0.5, -0.5}), (distill_test::tolerance{1e-7, 1e-6}));
  o.reduction = reduction::sum;  // a reduced loss needs the workspace
  CHECK(multilabel_soft_target_forward(cuda{}, ds.view(4, 1), dt.view(4, 1), {}, dloss.view(1), {}, o).code() == errc::invalid_argument);
  CHECK(multilabel_soft_target_backward(cuda{}, ds.view(4, 1), dt.view(4, 1), {}, dg.view(4, 1), {}, o).ok());  // a gradient does not
}
