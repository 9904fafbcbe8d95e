// SPDX-License-Identifier: MIT
// nccl_communicator on one GPU (a clique of one rank, bootstrapped by the single-process
// communicator): every collective's semantics, the merge kernel, the argument errors. Exits 77
// (skipped) without a GPU. Several ranks need one GPU each (NCCL refuses two ranks on one GPU):
// run the MPI binary's cases over NCCL on a multi-GPU machine (docs/distributed.md).
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "distill/distributed/nccl_communicator.hpp"

#include "support/device_buffer.cuh"

namespace {

struct max_and_count {
  float m;
  std::int32_t n;
};
struct merge_max_and_count {
  __host__ __device__ max_and_count operator()(const max_and_count& a, const max_and_count& b) const {
    return {a.m > b.m ? a.m : b.m, a.n + b.n};
  }
};

}  // namespace

TEST_CASE("nccl_communicator: one rank, every collective", "[distributed][nccl]") {
  using namespace distill;
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  nccl_communicator comm;
  const status made = nccl_communicator::create(single_process_communicator{}, 0, stream, comm);
  REQUIRE(made.to_string() == "ok");
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);

  const std::vector<float> host = {1.5f, -2.f, 3.f};
  distill_test::device_buffer<float> d(host);
  REQUIRE(comm.all_reduce(make_view<cuda_space>(d.data(), 3), reduce_op::sum).ok());
  REQUIRE(comm.all_reduce(make_view<cuda_space>(d.data(), 3), reduce_op::max).ok());
  distill_test::device_buffer<float> gathered(std::vector<float>(3, 0.f));
  REQUIRE(comm.all_gather(make_view<cuda_space>(static_cast<const float*>(d.data()), 3), make_view<cuda_space>(gathered.data(), 3)).ok());
  REQUIRE(comm.broadcast(make_view<cuda_space>(gathered.data(), 3), 0).ok());
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  CHECK(gathered.download() == host);

  const std::vector<max_and_count> mc = {{2.f, 1}, {-1.f, 1}};
  distill_test::device_buffer<max_and_count> dm(mc);
  const std::size_t ws_bytes = all_reduce_merge_workspace_size(comm, 2, sizeof(max_and_count));
  CHECK(ws_bytes == 2 * sizeof(max_and_count));
  distill_test::device_buffer<std::byte> ws(ws_bytes);
  REQUIRE(comm.all_reduce_merge<merge_max_and_count>(make_view<cuda_space>(dm.data(), 2), make_view<cuda_space>(ws.data(), index_t(ws_bytes))).ok());
  CHECK(comm.all_reduce_merge<merge_max_and_count>(make_view<cuda_space>(dm.data(), 2), cuda_view<std::byte, 1>{}).code() ==
        errc::invalid_argument);
  REQUIRE(comm.barrier().ok());
  const std::vector<max_and_count> back = dm.download();
  CHECK(back[0].m == 2.f);
  CHECK(back[0].n == 1);
  CHECK(back[1].m == -1.f);

  CHECK(comm.broadcast(make_view<cuda_space>(gathered.data(), 3), 1).code() == errc::invalid_argument);
  CHECK(comm.all_gather(make_view<cuda_space>(static_cast<const float*>(d.data()), 3), make_view<cuda_space>(gathered.data(), 2)).code() ==
        errc::shape_mismatch);
  comm = nccl_communicator{};
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}
