// SPDX-License-Identifier: MIT
// Token NCE's device plan (kernels/distill/cuda/detail/token_nce_plan.cuh): host arithmetic, but
// nvcc-only like the kernels it plans for. Without gradients nothing is accumulated per column, so
// the key pass must not split D across blocks (each such block recomputed the whole logit GEMM:
// 2x the work at D = 512, 4x at D = 1024); with gradients each 256-column block owns its columns.
#include <catch2/catch.hpp>

#include <algorithm>

#include "distill/core/workspace.hpp"
#include "distill/cuda/detail/token_nce_plan.cuh"

using namespace distill;
namespace nce = distill::cuda_detail::nce;

TEST_CASE("token NCE plan: forward only walks D in one block per (row tile, key split)", "[contrastive][token_nce][cuda]") {
  for (index_t D : {index_t(256), index_t(512), index_t(1024), index_t(1000)}) {
    for (bool in_batch : {false, true}) {
      CAPTURE(D, in_batch);
      const nce::plan fwd = nce::make_plan(300, D, 4096, in_batch, false, 132);
      const nce::plan grad = nce::make_plan(300, D, 4096, in_batch, true, 132);
      CHECK(fwd.nchunks == (D + 255) / 256);
      CHECK(fwd.dsplits == 1);
      CHECK(grad.dsplits == grad.nchunks);
      CHECK(fwd.row_tiles == grad.row_tiles);
      // the forward plan needs no accumulators: its scratch is no larger than the gradient plan's
      CHECK(workspace_carver::size_of<nce::scratch>(fwd) <= workspace_carver::size_of<nce::scratch>(grad));
      CHECK(nce::workspace_bytes(300, D, 4096, in_batch, 132) ==
            std::max(workspace_carver::size_of<nce::scratch>(fwd), workspace_carver::size_of<nce::scratch>(grad)));
    }
  }
}
