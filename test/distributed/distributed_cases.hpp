// SPDX-License-Identifier: MIT
#pragma once
// Test cases of the distributed pieces, written once over a host communicator. The including
// file defines `test_comm_t` and `const test_comm_t& test_comm()`: the single-process binary
// (distill_distributed_tests) runs them on one rank, the MPI binary (distill_distributed_mpi_tests,
// run by ctest under mpirun -np 2 and -np 3) on every rank, each rank checking its own slice
// against the double-precision reference of the full problem (every rank draws the same data).

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/distributed/communicator.hpp"
#include "distill/distributed/sample_queue_all_ranks.hpp"
#include "distill/distributed/vocab_parallel_soft_target.hpp"
#include "distill/losses/jsd.hpp"
#include "distill/losses/kl_student_teacher.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/losses/topk_teacher_file.hpp"

#include "reference/soft_target_ref.hpp"
#include "distributed/topk_teacher_data.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace distributed_cases {

using namespace distill;
using distill_test::rng;
namespace ref = soft_target_ref;

/// Columns [offset, offset + width) of rank r of P over C classes: uneven on purpose (rank r
/// gets a share proportional to r + 1), so no test relies on an even split.
inline vocab_shard shard_of(int r, int P, index_t C, index_t& width) {
  const index_t total = index_t(P) * (P + 1) / 2;
  index_t offset = 0;
  for (int i = 0; i < r; ++i) offset += C * (i + 1) / total;
  width = r == P - 1 ? C - offset : C * (r + 1) / total;
  return {offset, C};
}

/// A merge that is associative but not commutative: it records whether the ranks came in order.
struct rank_span {
  std::int32_t first, last, in_order;
};
struct merge_spans {
  rank_span operator()(const rank_span& lower, const rank_span& higher) const noexcept {
    return {lower.first, higher.last, lower.in_order && higher.in_order && lower.last + 1 == higher.first};
  }
};

}  // namespace distributed_cases

TEST_CASE("communicator: all_reduce sum and max, ordered merge, all_gather, broadcast, barrier", "[distributed][communicator]") {
  using namespace distributed_cases;
  const test_comm_t& comm = test_comm();
  const int P = comm.size(), me = comm.rank();
  REQUIRE(P >= 1);
  REQUIRE(me >= 0);
  REQUIRE(me < P);

  std::vector<float> f = {float(me + 1), -float(me), 0.5f};
  REQUIRE(comm.all_reduce(make_view(f.data(), 3), reduce_op::sum).ok());
  CHECK(f[0] == float(P * (P + 1) / 2));
  CHECK(f[1] == -float(P * (P - 1) / 2));
  CHECK(f[2] == 0.5f * float(P));
  std::vector<std::int64_t> m = {std::int64_t(me), std::int64_t(-me)};
  REQUIRE(comm.all_reduce(make_view(m.data(), 2), reduce_op::max).ok());
  CHECK(m[0] == P - 1);
  CHECK(m[1] == 0);
  std::vector<double> d = {double(me) * 0.25};
  REQUIRE(comm.all_reduce(make_view(d.data(), 1), reduce_op::max).ok());
  CHECK(d[0] == double(P - 1) * 0.25);

  // merged in rank order: [0, P-1] and in order, on every rank, for every element
  std::vector<rank_span> spans(5, rank_span{me, me, 1});
  REQUIRE(comm.template all_reduce_merge<merge_spans>(make_view(spans.data(), 5)).ok());
  for (const rank_span& s : spans) {
    CHECK(s.first == 0);
    CHECK(s.last == P - 1);
    CHECK(s.in_order == 1);
  }

  std::vector<std::int32_t> send = {me * 10, me * 10 + 1}, recv(std::size_t(2 * P), -1);
  REQUIRE(comm.all_gather(make_view(static_cast<const std::int32_t*>(send.data()), 2), make_view(recv.data(), 2 * P)).ok());
  for (int r = 0; r < P; ++r) {
    CHECK(recv[std::size_t(2 * r)] == r * 10);
    CHECK(recv[std::size_t(2 * r + 1)] == r * 10 + 1);
  }

  std::vector<double> b = {double(me) + 0.5, 7.0};
  REQUIRE(comm.broadcast(make_view(b.data(), 2), P - 1).ok());
  CHECK(b[0] == double(P - 1) + 0.5);
  CHECK(b[1] == 7.0);
  REQUIRE(comm.barrier().ok());

  // argument errors are found before any message is sent (on every rank alike)
  std::vector<std::int32_t> small(std::size_t(2 * P + 1));
  CHECK(comm.all_gather(make_view(static_cast<const std::int32_t*>(send.data()), 2), make_view(small.data(), 2 * P + 1)).code() ==
        errc::shape_mismatch);
  CHECK(comm.broadcast(make_view(b.data(), 2), P).code() == errc::invalid_argument);
  CHECK(comm.broadcast(make_view(b.data(), 2), -1).code() == errc::invalid_argument);
  const index_t ext[1] = {2}, str[1] = {2};
  CHECK(comm.all_reduce(host_view<double, 1>(b.data(), ext, str), reduce_op::sum).code() == errc::unsupported_layout);

  // the counting wrapper counts what passes through it, and forwards it
  counting_communicator<test_comm_t> counted(comm);
  REQUIRE(counted.all_reduce(make_view(f.data(), 3), reduce_op::sum).ok());
  REQUIRE(counted.barrier().ok());
  CHECK(counted.counts().collectives == 2);
  CHECK(counted.counts().all_reduces == 1);
  CHECK(counted.counts().barriers == 1);
  CHECK(counted.counts().bytes == 12);
}

namespace distributed_cases {

enum class which { kl, reverse_kl, jsd };

/// One vocab-parallel case: every rank draws the same (N, C) problem, takes its slice, and
/// checks loss (every rank), gradient slice and diagnostics against the double reference, the
/// loss also against the single-process library call, and the number of collectives.
template <class Acc>
void check_vocab_parallel(which w, index_t N, index_t C, const soft_target_options& base, bool labels, bool weights,
                          bool padded, bool in_place, std::uint64_t salt, bool zero_teacher_mass = true) {
  const test_comm_t& comm = test_comm();
  const int P = comm.size(), me = comm.rank();
  index_t width = 0;
  const vocab_shard shard = shard_of(me, P, C, width);
  rng g(salt);

  ref::batch b;
  b.n = std::size_t(N), b.c = std::size_t(C);
  b.zs = g.normals(std::size_t(N * C), 0.0, 2.0);
  b.zt = g.normals(std::size_t(N * C), 0.5, 2.5);
  if (zero_teacher_mass)  // -inf teacher logits in row 0 (reverse KL would be +inf there)
    for (index_t k = 0; k < C; k += 7) b.zt[std::size_t(k)] = -ref::inf;
  std::vector<std::int64_t> lab;
  if (labels) {
    for (index_t r = 0; r < N; ++r) lab.push_back(g.integer(0, C - 1));
    lab[std::size_t(N / 2)] = base.ignore_index;  // an ignored row
    b.labels = lab;
  }
  std::vector<Acc> wts;
  if (weights) {
    for (index_t r = 0; r < N; ++r) wts.push_back(Acc(g.uniform(0.2, 1.5)));
    b.weights.assign(wts.begin(), wts.end());
  }

  ref::config cf;
  cf.k = w == which::kl ? ref::kind::kl_teacher_student : w == which::reverse_kl ? ref::kind::kl_student_teacher : ref::kind::jsd;
  cf.temperature = base.temperature;
  cf.t_squared = base.scale_by_t_squared;
  cf.reduction = base.reduction == reduction::none ? ref::reduction::none
                 : base.reduction == reduction::sum ? ref::reduction::sum
                 : base.reduction == reduction::mean ? ref::reduction::mean : ref::reduction::batchmean;
  cf.soft_weight = base.soft_weight;
  cf.hard_weight = base.hard_label_weight;
  cf.grad_scale = base.grad_scale;
  cf.ignore_index = base.ignore_index;
  cf.jsd_beta = 0.3;
  const ref::result want = ref::evaluate(cf, b);

  // this rank's slice, in a padded layout when asked (row stride > width)
  const index_t ld = padded ? width + 3 : width;
  std::vector<Acc> zs(std::size_t(N * ld), Acc(99)), zt(std::size_t(N * ld), Acc(99));
  for (index_t r = 0; r < N; ++r)
    for (index_t k = 0; k < width; ++k) {
      zs[std::size_t(r * ld + k)] = Acc(b.zs[std::size_t(r * C + shard.offset + k)]);
      zt[std::size_t(r * ld + k)] = Acc(b.zt[std::size_t(r * C + shard.offset + k)]);
    }
  const index_t ext[2] = {N, width}, str[2] = {ld, 1};
  host_view<Acc, 2> s_view(zs.data(), ext, str), t_view(zt.data(), ext, str);
  std::vector<Acc> grad_buf(std::size_t(N * ld), Acc(-7));
  host_view<Acc, 2> g_view = in_place ? s_view : host_view<Acc, 2>(grad_buf.data(), ext, str);
  std::vector<Acc> row_kl(static_cast<std::size_t>(N)), row_top1(static_cast<std::size_t>(N)), row_hard(static_cast<std::size_t>(N));
  soft_target_host_extras<Acc> ex;
  if (labels) ex.labels = make_view(lab.data(), N);
  if (weights) ex.row_weights = make_view(static_cast<const Acc*>(wts.data()), N);
  ex.row_kl = make_view(row_kl.data(), N);
  ex.row_top1_agreement = make_view(row_top1.data(), N);
  if (labels) ex.row_hard_loss = make_view(row_hard.data(), N);

  const index_t loss_n = base.reduction == reduction::none ? N : 1;
  std::vector<Acc> loss(std::size_t(loss_n), Acc(-1));
  std::vector<vocab_parallel_row<Acc>> saved(static_cast<std::size_t>(N));
  counting_communicator<test_comm_t> counted(comm);
  const cpu ctx{.threads = 2};
  jsd_options jo;
  static_cast<soft_target_options&>(jo) = base;
  jo.beta = 0.3f;
  const auto lv = make_view(loss.data(), loss_n);
  const auto sv = make_view(saved.data(), N);
  const std::size_t ws = vocab_parallel_workspace_size<Acc>(ctx, comm, N);
  REQUIRE(ws == 0);
  status st;
  if (w == which::kl) st = vocab_parallel_kl_teacher_student_forward(ctx, counted, shard, s_view, t_view, lv, sv, ex, {}, base);
  if (w == which::reverse_kl) st = vocab_parallel_kl_student_teacher_forward(ctx, counted, shard, s_view, t_view, lv, sv, ex, {}, base);
  if (w == which::jsd) st = vocab_parallel_jsd_forward(ctx, counted, shard, s_view, t_view, lv, sv, ex, {}, jo);
  REQUIRE(st.to_string() == "ok");
  // one collective in the forward (JSD: its mixture sums need a second, plain sum)
  CHECK(counted.counts().collectives == (w == which::jsd ? 2 : 1));
  CHECK(counted.counts().merges == 1);
  const std::int64_t forward_collectives = counted.counts().collectives;

  // double: the single-process double tests allow ~1e-9 relative (the CPU paths' fast exp/log);
  // the per-slice sums merged across ranks round differently again
  const distill_test::tolerance tl = std::is_same_v<Acc, double> ? distill_test::tolerance{1e-9, 1e-8} : distill_test::tol::f32_sum;
  CHECK_CLOSE("vocab-parallel loss vs reference", loss, want.loss, tl);
  CHECK_CLOSE("row KL diagnostic", row_kl, want.row_kl, tl);
  std::vector<double> top1(row_top1.begin(), row_top1.end());
  CHECK(top1 == want.row_top1);
  if (labels) CHECK_CLOSE("row hard CE", row_hard, want.row_hard, tl);

  // the single-process library loss over the full rows, float rounding apart
  {
    std::vector<Acc> fs(b.zs.begin(), b.zs.end()), ft(b.zt.begin(), b.zt.end()), one(static_cast<std::size_t>(loss_n));
    soft_target_host_extras<Acc> fx;
    fx.labels = ex.labels, fx.row_weights = ex.row_weights;
    const auto fsv = make_view(static_cast<const Acc*>(fs.data()), N, C), ftv = make_view(static_cast<const Acc*>(ft.data()), N, C);
    status s1;
    if (w == which::kl) s1 = kl_teacher_student_forward(ctx, fsv, ftv, make_view(one.data(), loss_n), fx, {}, base);
    if (w == which::reverse_kl) s1 = kl_student_teacher_forward(ctx, fsv, ftv, make_view(one.data(), loss_n), fx, {}, base);
    if (w == which::jsd) s1 = jsd_forward(ctx, fsv, ftv, make_view(one.data(), loss_n), fx, {}, jo);
    REQUIRE(s1.ok());
    CHECK_CLOSE("vocab-parallel loss vs single process", loss, one, tl);
  }

  // every rank holds the same loss bits
  {
    std::vector<Acc> all(std::size_t(loss_n * P));
    REQUIRE(comm.all_gather(make_view(static_cast<const Acc*>(loss.data()), loss_n), make_view(all.data(), loss_n * P)).ok());
    for (int r = 0; r < P; ++r)
      for (index_t i = 0; i < loss_n; ++i) CHECK(all[std::size_t(r * loss_n + i)] == loss[std::size_t(i)]);
  }

  // backward: no communicator argument, so no collective can happen; the count stays put
  const host_view<const vocab_parallel_row<Acc>, 1> csv = sv;
  if (w == which::kl) st = vocab_parallel_kl_teacher_student_backward(ctx, shard, s_view, t_view, csv, g_view, ex, {}, base);
  if (w == which::reverse_kl) st = vocab_parallel_kl_student_teacher_backward(ctx, shard, s_view, t_view, csv, g_view, ex, {}, base);
  if (w == which::jsd) st = vocab_parallel_jsd_backward(ctx, shard, s_view, t_view, csv, g_view, ex, {}, jo);
  REQUIRE(st.ok());
  CHECK(counted.counts().collectives == forward_collectives);
  std::vector<Acc> got, expect;
  for (index_t r = 0; r < N; ++r)
    for (index_t k = 0; k < width; ++k) {
      got.push_back(g_view(r, k));
      expect.push_back(Acc(want.grad[std::size_t(r * C + shard.offset + k)]));
    }
  CHECK_CLOSE("vocab-parallel gradient slice vs reference", got, expect, tl);
  if (padded)  // row padding untouched
    for (index_t r = 0; r < N; ++r) CHECK(g_view.data()[r * ld + width] == (in_place ? Acc(99) : Acc(-7)));
}

}  // namespace distributed_cases

TEST_CASE("vocab-parallel KL(teacher||student): loss, gradient and diagnostics match the full rows", "[distributed][vocab_parallel]") {
  using namespace distributed_cases;
  soft_target_options o;
  o.temperature = 2.0f;
  check_vocab_parallel<float>(which::kl, 9, 61, o, false, false, false, false, 1);
  o.hard_label_weight = 0.3f;
  o.soft_weight = 0.7f;
  o.reduction = reduction::mean;
  check_vocab_parallel<float>(which::kl, 7, 300, o, true, true, false, false, 2);
  o.reduction = reduction::none;
  o.grad_scale = 0.5f;
  check_vocab_parallel<double>(which::kl, 5, 40, o, true, false, true, true, 3);
  o.temperature = 1.0f;  // the hard term's softmax is q itself
  o.reduction = reduction::sum;
  check_vocab_parallel<float>(which::kl, 6, 33, o, true, true, true, false, 4);
}

TEST_CASE("vocab-parallel reverse KL(student||teacher) matches the full rows", "[distributed][vocab_parallel]") {
  using namespace distributed_cases;
  soft_target_options o;
  o.temperature = 1.5f;
  check_vocab_parallel<float>(which::reverse_kl, 8, 77, o, false, false, false, false, 11, false);
  o.hard_label_weight = 0.2f;
  o.reduction = reduction::mean;
  check_vocab_parallel<float>(which::reverse_kl, 7, 129, o, true, true, true, false, 12, false);
  o.reduction = reduction::none;
  check_vocab_parallel<double>(which::reverse_kl, 4, 31, o, true, false, false, true, 13, false);
}

TEST_CASE("vocab-parallel JSD(beta) matches the full rows (two collectives: merge, then the mixture sums)", "[distributed][vocab_parallel]") {
  using namespace distributed_cases;
  soft_target_options o;
  o.temperature = 2.0f;
  o.scale_by_t_squared = false;
  check_vocab_parallel<float>(which::jsd, 8, 90, o, false, false, false, false, 21);
  o.hard_label_weight = 0.4f;
  o.reduction = reduction::mean;
  check_vocab_parallel<double>(which::jsd, 6, 45, o, true, true, true, false, 22);
  o.reduction = reduction::sum;
  check_vocab_parallel<float>(which::jsd, 5, 200, o, true, false, false, true, 23);
}

TEST_CASE("vocab-parallel losses refuse what they cannot do", "[distributed][vocab_parallel][errors]") {
  using namespace distributed_cases;
  const test_comm_t& comm = test_comm();
  const cpu ctx{};
  std::vector<float> zs(4 * 5, 0.f), zt(4 * 5, 0.f), g(4 * 5), loss(1), dt(1);
  std::vector<vocab_parallel_row<float>> saved(4);
  const auto s = make_view(zs.data(), 4, 5), t = make_view(zt.data(), 4, 5);
  soft_target_host_extras<float> ex;
  // a shard that cannot hold this rank's 5 columns
  CHECK(vocab_parallel_kl_teacher_student_forward(ctx, comm, vocab_shard{2, 6}, s, t, make_view(loss.data(), 1),
                                                  make_view(saved.data(), 4), ex, {}).code() == errc::invalid_argument);
  CHECK(vocab_parallel_kl_teacher_student_backward(ctx, vocab_shard{0, 0}, s, t, make_view(static_cast<const vocab_parallel_row<float>*>(saved.data()), 4),
                                                   make_view(g.data(), 4, 5), ex, {}).code() == errc::invalid_argument);
  // saved must have one element per row
  CHECK(vocab_parallel_kl_teacher_student_forward(ctx, comm, vocab_shard{0, 5}, s, t, make_view(loss.data(), 1),
                                                  make_view(saved.data(), 3), ex, {}).code() == errc::shape_mismatch);
  // dL/dT would need a collective in the backward
  ex.grad_temperature = make_view(dt.data(), 1);
  CHECK(vocab_parallel_kl_teacher_student_backward(ctx, vocab_shard{0, 5}, s, t, make_view(static_cast<const vocab_parallel_row<float>*>(saved.data()), 4),
                                                   make_view(g.data(), 4, 5), ex, {}).code() == errc::invalid_argument);
  // a label outside the full vocabulary
  ex = {};
  std::vector<std::int64_t> lab = {0, 1, 9, 2};
  ex.labels = make_view(lab.data(), 4);
  soft_target_options o;
  o.hard_label_weight = 1.0f;
  CHECK(vocab_parallel_kl_teacher_student_forward(ctx, comm, vocab_shard{0, 8}, s, t, make_view(loss.data(), 1),
                                                  make_view(saved.data(), 4), ex, {}, o).code() == errc::invalid_argument);

  // row 1's teacher is -inf in every class of every rank: no distribution, NaN, non_finite on all
  for (int k = 0; k < 5; ++k) zt[std::size_t(5 + k)] = -std::numeric_limits<float>::infinity();
  const vocab_shard all{5 * index_t(comm.rank()), 5 * index_t(comm.size())};
  CHECK(vocab_parallel_kl_teacher_student_forward(ctx, comm, all, s, t, make_view(loss.data(), 1), make_view(saved.data(), 4),
                                                  {}, {}).code() == errc::non_finite);
  CHECK(std::isnan(loss[0]));
  CHECK(vocab_parallel_kl_teacher_student_backward(ctx, all, s, t, make_view(static_cast<const vocab_parallel_row<float>*>(saved.data()), 4),
                                                   make_view(g.data(), 4, 5), {}, {}).code() == errc::non_finite);
  CHECK(std::isnan(g[5]));
  CHECK(std::isfinite(g[0]));
}

namespace distributed_cases {

/// Rank r's keys of step `step`: a pure function, so every rank knows every rank's keys.
inline std::vector<float> keys_of(int r, int step, index_t B, index_t D) {
  std::vector<float> k(std::size_t(B * D));
  for (index_t i = 0; i < B * D; ++i) k[std::size_t(i)] = std::sin(0.37f * float(i + 1) + 1.3f * float(r) + 0.11f * float(step)) + 0.1f;
  return k;
}

}  // namespace distributed_cases

TEST_CASE("sample queue across ranks: all-gathered enqueue, rank-0 save, load on any number of ranks", "[distributed][queue]") {
  using namespace distributed_cases;
  const test_comm_t& comm = test_comm();
  const int P = comm.size(), me = comm.rank();
  const cpu ctx{};
  const index_t K = 11, D = 6, B = 3;  // K not a multiple of P * B: the ring wraps mid-batch
  host_sample_queue<float> mine(K, D, true), expect(K, D, true);
  std::vector<std::byte> ws(sample_queue_all_ranks_workspace_size<float>(ctx, comm, B, D, true) + 16);
  auto* base = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(ws.data()) + 15) & ~std::uintptr_t(15));
  const auto wsv = make_view(base, index_t(ws.size() - 16));
  for (int step = 0; step < 4; ++step) {
    const std::vector<float> k = keys_of(me, step, B, D);
    std::vector<std::int64_t> ids = {1000 * step + 10 * me, 1000 * step + 10 * me + 1, 1000 * step + 10 * me + 2};
    REQUIRE(sample_queue_enqueue_all_ranks(ctx, comm, mine.queue(), make_view(static_cast<const float*>(k.data()), B, D),
                                           make_view(static_cast<const std::int64_t*>(ids.data()), B), wsv).ok());
    // the same rows, enqueued by one process in rank order
    for (int r = 0; r < P; ++r) {
      const std::vector<float> kr = keys_of(r, step, B, D);
      std::vector<std::int64_t> ir = {1000 * step + 10 * r, 1000 * step + 10 * r + 1, 1000 * step + 10 * r + 2};
      REQUIRE(sample_queue_enqueue(ctx, expect.queue(), make_view(static_cast<const float*>(kr.data()), B, D),
                                   make_view(static_cast<const std::int64_t*>(ir.data()), B)).ok());
    }
  }
  auto same = [&](const sample_queue<float, host_space>& a, const sample_queue<float, host_space>& b) {
    REQUIRE(a.size() == b.size());
    REQUIRE(a.write_position() == b.write_position());
    for (index_t j = 0; j < K; ++j) {
      CHECK(a.ids()(j) == b.ids()(j));
      for (index_t d = 0; d < D; ++d) CHECK(a.keys()(j, d) == b.keys()(j, d));
    }
  };
  same(mine.queue(), expect.queue());

  // every rank the same queue: rank 0 saves, every rank reloads it into an empty queue
  const std::string path = "distributed_queue_test_" + std::to_string(P) + ".bin";
  REQUIRE(sample_queue_save_rank0(ctx, comm, mine.queue(), path).ok());
  host_sample_queue<float> back(K, D, true);
  REQUIRE(sample_queue_load_all_ranks(ctx, comm, back.queue(), path).ok());
  same(back.queue(), expect.queue());
  // ... and on one rank alone (the file is the one-process format)
  host_sample_queue<float> alone(K, D, true);
  REQUIRE(sample_queue_load_all_ranks(ctx, single_process_communicator{}, alone.queue(), path).ok());
  same(alone.queue(), expect.queue());
  REQUIRE(comm.barrier().ok());
  if (me == 0) std::remove(path.c_str());

  // a missing file: every rank gets rank 0's error, the queue unchanged
  host_sample_queue<float> none(K, D, true);
  CHECK(sample_queue_load_all_ranks(ctx, comm, none.queue(), path + ".missing").code() == errc::io_error);
  CHECK(none.queue().size() == 0);
}

TEST_CASE("top-k teacher from sharded files: each rank reads its rows, loss and gradients equal one process over one file", "[distributed][topk_file]") {
  using namespace distributed_cases;
  const test_comm_t& comm = test_comm();
  const int P = comm.size(), me = comm.rank();
  const index_t N = 13, C = 29, k = 5, S = 2;
  const float T = 2.0f;
  // one folder for the job: rank 0's pid names it
  std::int64_t id = me == 0 ? std::int64_t(::getpid()) : 0;
  REQUIRE(comm.broadcast(make_view(&id, 1), 0).ok());
  const std::filesystem::path dir = topk_teacher_data::temp_folder("topk_shards_np" + std::to_string(P), id);
  const index_t begin = row_split_begin(N, P, me), end = row_split_begin(N, P, me + 1), rows = end - begin;
  const cpu ctx{};

  for (const topk_variant v : {topk_variant::renormalized, topk_variant::rest_bucket}) {
    const auto t = topk_teacher_data::random_teacher(N, C, k, T, v == topk_variant::rest_bucket ? 402 : 401);
    const std::vector<float> zs = rng(403).normals<float>(std::size_t(N * C), 0.0, 2.0);
    const topk_teacher_file_info sharded{.total_rows = N, .shards = S, .classes = C, .k = k, .variant = v, .temperature = T};
    topk_teacher_file_info whole = sharded;
    whole.shards = 1;
    const std::string prefix = (dir / (v == topk_variant::rest_bucket ? "rest_bucket" : "renormalized")).string();
    const std::string whole_prefix = prefix + "_whole";
    if (me == 0) {
      REQUIRE(topk_teacher_write(prefix, sharded, make_view(t.indices.data(), N, k), make_view(t.values.data(), N, k)).ok());
      REQUIRE(topk_teacher_write(whole_prefix, whole, make_view(t.indices.data(), N, k), make_view(t.values.data(), N, k)).ok());
    }
    REQUIRE(comm.barrier().ok());

    // this rank's rows from the shards (3 ranks over 2 shards: rank 1 reads both), bit for bit
    std::vector<std::int64_t> idx(std::size_t(rows * k));
    std::vector<float> val(idx.size());
    REQUIRE(topk_teacher_read(prefix, sharded, begin, end, make_view(idx.data(), rows, k), make_view(val.data(), rows, k)).to_string() == "ok");
    CHECK(std::equal(idx.begin(), idx.end(), t.indices.begin() + begin * k));
    CHECK(std::memcmp(val.data(), t.values.data() + begin * k, val.size() * 4) == 0);

    // the data-parallel step: sum over my rows, all-reduced, scaled by 1/N (gradient too)
    topk_teacher_options o;
    o.temperature = T;
    o.variant = v;
    o.reduction = reduction::sum;
    o.grad_scale = 1.0f / float(N);
    float loss = 0;
    std::vector<float> grad(std::size_t(rows * C));
    REQUIRE(kl_topk_teacher_student_forward_backward(ctx, make_view(zs.data() + begin * C, rows, C), make_view(idx.data(), rows, k),
                                                     make_view(val.data(), rows, k), make_view(&loss, 1), make_view(grad.data(), rows, C),
                                                     {}, {}, o).ok());
    REQUIRE(comm.all_reduce(make_view(&loss, 1), reduce_op::sum).ok());
    loss /= float(N);

    // one process: every row from the one unsharded file, batchmean
    std::vector<std::int64_t> all_idx(std::size_t(N * k));
    std::vector<float> all_val(all_idx.size()), all_grad(std::size_t(N * C));
    REQUIRE(topk_teacher_read(whole_prefix, whole, 0, N, make_view(all_idx.data(), N, k), make_view(all_val.data(), N, k)).ok());
    o.reduction = reduction::batchmean;
    o.grad_scale = 1.0f;
    float want = 0;
    REQUIRE(kl_topk_teacher_student_forward_backward(ctx, make_view(zs.data(), N, C), make_view(all_idx.data(), N, k),
                                                     make_view(all_val.data(), N, k), make_view(&want, 1), make_view(all_grad.data(), N, C),
                                                     {}, {}, o).ok());
    INFO("variant " << (v == topk_variant::rest_bucket ? "rest_bucket" : "renormalized") << ", rank " << me << " of " << P);
    CHECK_CLOSE("all-reduced loss vs one process", std::vector<float>{loss}, std::vector<float>{want}, distill_test::tol::f32_sum);
    CHECK_CLOSE("my gradient rows vs one process", grad, std::vector<float>(all_grad.begin() + begin * C, all_grad.begin() + end * C),
                distill_test::tol::f32);
  }
  REQUIRE(comm.barrier().ok());
  if (me == 0) std::filesystem::remove_all(dir);
}
