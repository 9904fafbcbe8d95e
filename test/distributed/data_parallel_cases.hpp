// SPDX-License-Identifier: MIT
#pragma once
// Data-parallel training cases (distill/distributed/data_parallel.hpp), included after
// distributed_cases.hpp by the single-process and the MPI binaries: every rank trains a small
// conv -> batch norm -> ReLU -> dropout -> linear network on its rows of a global batch and
// compares with the same network trained by one process on the whole batch, which every rank
// computes on its own as the reference.

#include "distill/distributed/data_parallel.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/sequential.hpp"

namespace data_parallel_cases {

using namespace distill;

inline nn::sequential<float> small_net() {
  nn::sequential<float> s;
  s.add(nn::conv2d<float>("conv", 2, 3, 3, {1, 1, 1, 1}, {7, nn::init_scheme::kaiming_normal, 0}, false));
  s.add(nn::batch_norm<float>("bn", 3));
  s.add(nn::activation::relu);
  s.add(nn::flatten_stage{});
  s.add(nn::dropout<float>(0.25, 11));
  s.add(nn::linear<float>("fc", 3 * 4 * 4, 5, {9, nn::init_scheme::torch_default, 0}));
  return s;
}

/// Loss of rows [first, first + n) of `width` outputs: (1/n) sum_i w_i . y_i with fixed weights w
/// per global row, so dL/dy_i = w_i / n.
inline void loss_grad(const std::vector<float>& w, index_t first, index_t n, std::vector<float>& dy, index_t width = 5) {
  dy.assign(static_cast<std::size_t>(n * width), 0.0f);
  for (index_t i = 0; i < n * width; ++i) dy[static_cast<std::size_t>(i)] = w[static_cast<std::size_t>(first * width + i)] / static_cast<float>(n);
}

}  // namespace data_parallel_cases

TEST_CASE("data-parallel steps equal one process on the global batch (sync batch norm, dropout rows, averaged gradients)",
          "[distributed][data_parallel]") {
  using namespace data_parallel_cases;
  const test_comm_t& world = test_comm();
  counting_communicator<test_comm_t> comm(world);
  const index_t B = 12, steps = 3;  // 12: a multiple of 1, 2 and 3 ranks
  distill_test::rng r(404);
  std::vector<std::vector<float>> xs, ws;
  for (index_t s = 0; s < steps; ++s) xs.push_back(r.normals<float>(static_cast<std::size_t>(B * 2 * 16), 0.5, 1.0)),
                                      ws.push_back(r.normals<float>(static_cast<std::size_t>(B * 5)));
  const cpu ctx{1};

  nn::sequential<float> whole = small_net(), part = small_net();
  nn::replica rep;
  REQUIRE(data_parallel_replica(comm, B, rep).ok());
  const index_t n = local_batch(comm, B), first = rep.first_row;
  CHECK(first == comm.rank() * n);
  part.set_replica(rep);
  REQUIRE(broadcast_parameters(comm, part.parameters()).ok());
  nn::sgd<float> opt_whole(whole.parameters(), nn::sgd_options{0.1, 0.9, 0.0, 1e-3, true, 0.0});
  nn::sgd<float> opt_part(part.parameters(), nn::sgd_options{0.1, 0.9, 0.0, 1e-3, true, 0.0});
  gradient_buckets<float> buckets;
  buckets.bucket_bytes = 64 * sizeof(float);  // several buckets, and the conv weight (54) alone in one

  std::vector<float> dy;
  for (index_t s = 0; s < steps; ++s) {
    const auto& x = xs[static_cast<std::size_t>(s)];
    REQUIRE(nn::zero_grad(ctx, whole.parameters()).ok());
    REQUIRE(whole.forward(ctx, make_view(x.data(), B, index_t(2), index_t(4), index_t(4))).ok());
    loss_grad(ws[static_cast<std::size_t>(s)], 0, B, dy);
    REQUIRE(whole.backward(ctx, make_view(x.data(), B, index_t(2), index_t(4), index_t(4)), make_view(static_cast<const float*>(dy.data()), B, index_t(5))).ok());

    comm.reset();
    const float* xl = x.data() + first * 32;
    REQUIRE(nn::zero_grad(ctx, part.parameters()).ok());
    REQUIRE(part.forward(ctx, make_view(xl, n, index_t(2), index_t(4), index_t(4))).ok());
    const auto forward_collectives = comm.counts().all_reduces;
    loss_grad(ws[static_cast<std::size_t>(s)], first, n, dy);
    REQUIRE(part.backward(ctx, make_view(xl, n, index_t(2), index_t(4), index_t(4)), make_view(static_cast<const float*>(dy.data()), n, index_t(5))).ok());
    const auto backward_collectives = comm.counts().all_reduces - forward_collectives;
    REQUIRE(all_reduce_gradients(comm, part.parameters(), buckets).ok());
    const auto gradient_collectives = comm.counts().all_reduces - forward_collectives - backward_collectives;
    if (comm.size() > 1) {
      CHECK(forward_collectives == 2);   // batch norm: sums and count, then squared deviations
      CHECK(backward_collectives == 1);  // batch norm: sum dy, sum dy xhat
      // buckets of 64 floats: fc.weight (240) on its own, then [conv 54, bn 3 + 3] and [fc.bias 5]
      CHECK(gradient_collectives == 3);
    } else {
      CHECK(comm.counts().collectives == 0);
    }

    // this rank's outputs are the global rows [first, first + n) of the one-process forward
    for (index_t i = 0; i < n * 5; ++i)
      CHECK(part.output().data()[i] == Approx(whole.output().data()[first * 5 + i]).epsilon(1e-5).margin(1e-6));
    const auto pw = whole.parameters(), pp = part.parameters();
    REQUIRE(pw.size() == pp.size());
    for (std::size_t k = 0; k < pw.size(); ++k) {
      INFO(pw[k]->name << " step " << s);
      const auto& a = pw[k]->buffer ? pw[k]->value : pw[k]->grad;
      const auto& b = pp[k]->buffer ? pp[k]->value : pp[k]->grad;
      REQUIRE(a.size() == b.size());
      for (index_t i = 0; i < a.size(); ++i) CHECK(b.data()[i] == Approx(a.data()[i]).epsilon(1e-5).margin(1e-6));
    }
    REQUIRE(opt_whole.step(ctx).ok());
    REQUIRE(opt_part.step(ctx).ok());
  }
  const auto pw = whole.parameters(), pp = part.parameters();
  for (std::size_t k = 0; k < pw.size(); ++k)
    for (index_t i = 0; i < pw[k]->value.size(); ++i) CHECK(pp[k]->value.data()[i] == Approx(pw[k]->value.data()[i]).epsilon(1e-5).margin(1e-6));
}

TEST_CASE("data-parallel pieces refuse what they cannot do", "[distributed][data_parallel][errors]") {
  const test_comm_t& comm = test_comm();
  distill::nn::replica rep;
  CHECK(distill::data_parallel_replica(comm, 0, rep).code() == distill::errc::invalid_argument);
  if (comm.size() > 1) CHECK(distill::data_parallel_replica(comm, comm.size() + 1, rep).code() == distill::errc::invalid_argument);
  // a dropout replica whose rows leave the global batch
  distill::nn::dropout<float> d(0.5, 1);
  d.set_replica({4, 6, {}});
  std::vector<float> x(3 * 2, 1.0f), y(6);
  CHECK(d.forward(distill::cpu{1}, distill::make_view(static_cast<const float*>(x.data()), 3, 2), distill::make_view(y.data(), 3, 2)).code() ==
        distill::errc::shape_mismatch);
}

TEST_CASE("data-parallel gradients with unequal shares (a short last batch) equal one process", "[distributed][data_parallel]") {
  using namespace distill;
  const test_comm_t& comm = test_comm();
  const index_t B = 7, D = 6;  // 7 rows over 2 or 3 ranks: shares 3/4, 2/2/3
  const index_t P = comm.size(), first = B * comm.rank() / P, n = B * (comm.rank() + 1) / P - first;
  distill_test::rng r(405);
  const auto x = r.normals<float>(static_cast<std::size_t>(B * D));
  const auto w = r.normals<float>(static_cast<std::size_t>(B * 3));
  const auto net = [] {
    nn::sequential<float> s;
    s.add(nn::linear<float>("fc0", 6, 8, {3, nn::init_scheme::torch_default, 0}));
    s.add(nn::activation::relu);
    s.add(nn::dropout<float>(0.3, 5));
    s.add(nn::linear<float>("fc1", 8, 3, {4, nn::init_scheme::torch_default, 0}));
    return s;
  };
  const cpu ctx{1};
  nn::sequential<float> whole = net(), part = net();
  part.set_replica({first, B, {}});
  std::vector<float> dy;
  REQUIRE(whole.forward(ctx, make_view(x.data(), B, D)).ok());
  data_parallel_cases::loss_grad(w, 0, B, dy, 3);
  REQUIRE(whole.backward(ctx, make_view(x.data(), B, D), make_view(static_cast<const float*>(dy.data()), B, index_t(3))).ok());
  REQUIRE(part.forward(ctx, make_view(x.data() + first * D, n, D)).ok());
  data_parallel_cases::loss_grad(w, first, n, dy, 3);
  REQUIRE(part.backward(ctx, make_view(x.data() + first * D, n, D), make_view(static_cast<const float*>(dy.data()), n, index_t(3))).ok());
  gradient_buckets<float> buckets;
  REQUIRE(all_reduce_gradients(comm, part.parameters(), buckets, static_cast<double>(n) / static_cast<double>(B)).ok());
  const auto pw = whole.parameters(), pp = part.parameters();
  for (std::size_t k = 0; k < pw.size(); ++k) {
    INFO(pw[k]->name);
    for (index_t i = 0; i < pw[k]->grad.size(); ++i) CHECK(pp[k]->grad.data()[i] == Approx(pw[k]->grad.data()[i]).epsilon(1e-5).margin(1e-6));
  }
  CHECK(all_reduce_gradients(comm, part.parameters(), buckets, 1.5).code() == errc::invalid_argument);
}
