// SPDX-License-Identifier: MIT
// The distributed test cases on one process (single_process_communicator): what a program that
// runs alone gets. The same cases run on 2 and 3 MPI ranks in distill_distributed_mpi_tests.
#include "distill/distributed/communicator.hpp"

using test_comm_t = distill::single_process_communicator;
inline const test_comm_t& test_comm() {
  static const test_comm_t comm;
  return comm;
}

#include "distributed/distributed_cases.hpp"
#include "distributed/data_parallel_cases.hpp"
