// SPDX-License-Identifier: MIT
#pragma once
// Data-parallel runs of the examples, as their trainers see them: this rank's index, the number of
// ranks, and the collectives a trainer needs. run_replicated() is an example's main: started by
// mpirun (or srun) in a build with MPI (DISTILL_EXAMPLE_MPI, set by distill_example_mpi() in
// examples/CMakeLists.txt) it runs the program on every rank of MPI_COMM_WORLD over
// distill/distributed/data_parallel.hpp; started on its own it runs one process and needs no MPI
// run-time. Every rank trains the same models on its rows of every global batch and ends each step
// with the same parameters; rank 0 writes checkpoints and reports.

#include <cstdlib>
#include <functional>
#include <iostream>
#include <span>
#include <stdexcept>
#include <string>

#include "distill/nn/parameter.hpp"
#include "distill/nn/replica.hpp"
#if DISTILL_EXAMPLE_MPI
#include <mpi.h>

#include "distill/distributed/data_parallel.hpp"
#include "distill/distributed/mpi_communicator.hpp"
#endif

namespace examples {

struct replicas {
  using param_list = distill::nn::parameter_list<float, distill::host_space>;
  int rank = 0, size = 1;
  distill::nn::replica_sum sum;  ///< in-place sum over ranks (empty: one process)
  /// grad <- sum over ranks of weight_r grad_r (weight: this rank's share of the batch's rows)
  std::function<void(const param_list&, double weight)> combine_gradients;

  bool root() const noexcept { return rank == 0; }
  bool data_parallel() const noexcept { return size > 1; }
  /// Rows [first, first + count) of a batch of n rows that this rank takes (as even as possible).
  std::size_t first_of(std::size_t n) const noexcept { return n * static_cast<std::size_t>(rank) / static_cast<std::size_t>(size); }
  std::size_t count_of(std::size_t n) const noexcept {
    return n * static_cast<std::size_t>(rank + 1) / static_cast<std::size_t>(size) - first_of(n);
  }
  /// This rank's share of a global batch of `global_batch` rows, for nn layers; layers with
  /// batch statistics need equal shares.
  distill::nn::replica share(std::size_t global_batch) const {
    return {static_cast<distill::index_t>(first_of(global_batch)), static_cast<distill::index_t>(global_batch), sum};
  }
  /// Element-wise sums over ranks, in place.
  void total(std::span<double> v) const {
    if (sum) distill::throw_if_error(sum(v));
  }
  /// Every rank waits here until all have arrived.
  void barrier() const {
    double one = 1;
    total(std::span<double>(&one, 1));
  }
};

/// Whether a launcher (mpirun, srun) started this process as a rank of a job.
inline bool launched_as_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

/// The program `run(world)` on every rank (see the file comment); its exit code. A rank that
/// fails aborts the job, since the others would wait for it in their next collective.
inline int run_replicated(const char* program, int& argc, char**& argv, const std::function<int(const replicas&)>& run) {
  if (!launched_as_rank()) return run(replicas{});
#if DISTILL_EXAMPLE_MPI
  MPI_Init(&argc, &argv);
  int rc = 1;
  {
    distill::mpi_communicator comm;
    distill::gradient_buckets<float> buckets;
    if (const distill::status st = distill::mpi_communicator::create(MPI_COMM_WORLD, comm); !st.ok()) {
      std::cerr << program << ": " << st.to_string() << "\n";
    } else {
      replicas world;
      world.rank = comm.rank(), world.size = comm.size();
      if (world.size > 1) {
        distill::nn::replica r;
        distill::throw_if_error(distill::data_parallel_replica(comm, world.size, r));  // for its sum over ranks
        world.sum = r.sum;
        world.combine_gradients = [&comm, &buckets](const replicas::param_list& p, double weight) {
          distill::throw_if_error(distill::all_reduce_gradients(comm, p, buckets, weight));
        };
      }
      rc = run(world);
      if (rc != 0 && world.data_parallel()) MPI_Abort(MPI_COMM_WORLD, rc);
    }
  }
  MPI_Finalize();
  return rc;
#else
  (void)argc, (void)argv;
  std::cerr << program << ": started by an MPI launcher, but built without MPI (Debian: libopenmpi-dev); running as one process\n";
  return run(replicas{});
#endif
}

}  // namespace examples
