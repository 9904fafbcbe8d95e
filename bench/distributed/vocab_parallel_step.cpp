// SPDX-License-Identifier: MIT
// Step time and communication of the vocab-parallel KL(teacher || student) on P MPI ranks:
//   mpirun -np P distill_vocab_parallel_bench [rows] [classes] [reps] [threads per rank]
// Each rank holds an (N, C/P) slice of student and teacher logits and runs
// vocab_parallel_kl_teacher_student_forward_backward (T = 2, batchmean) `reps` times after two
// warm-up steps, every step between barriers; a step's time is the slowest rank's. Rank 0 prints
// one table row: the median and the fastest step, collectives and payload bytes per step and
// rank (counted by counting_communicator), the median time of that collective alone, and, in the
// same run, the single-process
// kl_teacher_student_forward_backward over the full (N, C) rows (the peer; measured in P = 1
// runs only, since on a small machine the waiting ranks of a larger job would spin beside it).
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "distill/distributed/mpi_communicator.hpp"
#include "distill/distributed/vocab_parallel_soft_target.hpp"
#include "distill/losses/kl_teacher_student.hpp"

namespace {

using namespace distill;

std::vector<float> logits(std::size_t n, unsigned seed, float sd) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  {
    const index_t N = argc > 1 ? std::atol(argv[1]) : 256;
    const index_t C = argc > 2 ? std::atol(argv[2]) : 32000;
    const int reps = argc > 3 ? std::atoi(argv[3]) : 20;
    const int threads = argc > 4 ? std::atoi(argv[4]) : 1;
    mpi_communicator world;
    if (const status st = mpi_communicator::create(MPI_COMM_WORLD, world); !st.ok()) {
      std::fprintf(stderr, "%s\n", st.to_string().c_str());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const int P = world.size(), me = world.rank();
    // contiguous, nearly equal slices
    const index_t offset = C * me / P, width = C * (me + 1) / P - offset;
    const vocab_shard shard{offset, C};
    std::vector<float> zs = logits(std::size_t(N * width), 1000u + unsigned(me), 2.f);
    std::vector<float> zt = logits(std::size_t(N * width), 2000u + unsigned(me), 3.f);
    std::vector<float> grad(zs.size()), loss(1);
    std::vector<vocab_parallel_row<float>> saved(static_cast<std::size_t>(N));
    const cpu ctx{.threads = threads};
    soft_target_options opt;
    opt.temperature = 2.f;
    counting_communicator<mpi_communicator> counted(world);
    auto step = [&] {
      const status st = vocab_parallel_kl_teacher_student_forward_backward(
          ctx, counted, shard, make_view(static_cast<const float*>(zs.data()), N, width),
          make_view(static_cast<const float*>(zt.data()), N, width), make_view(loss.data(), 1),
          make_view(saved.data(), N), make_view(grad.data(), N, width), {}, {}, opt);
      if (!st.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", me, st.to_string().c_str());
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    };
    step(), step();
    counted.reset();
    std::vector<double> times;
    for (int i = 0; i < reps; ++i) {
      (void)world.barrier();
      const double t0 = MPI_Wtime();
      step();
      double dt = MPI_Wtime() - t0;
      MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      times.push_back(dt);
    }
    const double per_step_collectives = double(counted.counts().collectives) / reps;
    const double per_step_bytes = double(counted.counts().bytes) / reps;
    // the one collective alone: the merge of the N saved row states
    std::vector<double> merge_times;
    for (int i = 0; i < reps; ++i) {
      (void)world.barrier();
      const double t0 = MPI_Wtime();
      if (!world.all_reduce_merge<vocab_parallel_detail::merge_rows<float>>(make_view(saved.data(), N)).ok()) rc = 1;
      double dt = MPI_Wtime() - t0;
      MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      merge_times.push_back(dt);
    }

    double single_ms = 0;
    if (me == 0) {
      if (P == 1) {  // the peer: the single-process loss over the full rows, same N and C (alone,
                     // so that no waiting rank spins beside it)
      std::vector<float> fs = logits(std::size_t(N * C), 3000u, 2.f), ft = logits(std::size_t(N * C), 4000u, 3.f);
      std::vector<float> fg(fs.size()), fl(1);
      std::vector<double> st_times;
      for (int i = 0; i < reps + 2; ++i) {
        const double t0 = MPI_Wtime();
        const status st = kl_teacher_student_forward_backward(ctx, make_view(static_cast<const float*>(fs.data()), N, C),
                                                              make_view(static_cast<const float*>(ft.data()), N, C),
                                                              make_view(fl.data(), 1), make_view(fg.data(), N, C), {}, {}, opt);
        if (!st.ok()) rc = 1;
        if (i >= 2) st_times.push_back(MPI_Wtime() - t0);
      }
      single_ms = median(st_times) * 1e3;
      }
      std::printf("| %d | %lld x %lld | %lld | %.2f | %.2f | %.3f | %.0f | %.0f | %.2f |\n", P, (long long)N, (long long)C,
                  (long long)width, median(times) * 1e3, *std::min_element(times.begin(), times.end()) * 1e3,
                  median(merge_times) * 1e3, per_step_collectives, per_step_bytes, single_ms);
    }
  }
  MPI_Finalize();
  return rc;
}
