// SPDX-License-Identifier: MIT
// The distributed test cases on every rank of an MPI job (ctest runs this binary under
// mpirun -np 2 and -np 3 --oversubscribe). Every rank runs every case in the same order, so the
// collectives match; each rank checks its own results, and the job fails if any rank fails.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <mpi.h>

#include <cstdio>

#include "distill/distributed/mpi_communicator.hpp"

using test_comm_t = distill::mpi_communicator;
static test_comm_t world;
inline const test_comm_t& test_comm() { return world; }

#include "distributed/distributed_cases.hpp"
#include "distributed/data_parallel_cases.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int failed = 1;
  if (const distill::status st = distill::mpi_communicator::create(MPI_COMM_WORLD, world); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());
  } else {
    if (world.rank() == 0)
      std::printf("distill MPI tests: %d ranks, DISTILL_TEST_SEED=%llu\n", world.size(),
                  static_cast<unsigned long long>(distill_test::test_seed()));
    const int mine = Catch::Session().run(argc, argv);
    // the job's verdict: failed anywhere is failed everywhere
    MPI_Allreduce(&mine, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  }
  world = test_comm_t{};  // free the duplicate communicator before MPI_Finalize
  MPI_Finalize();
  return failed != 0 ? 1 : 0;
}
