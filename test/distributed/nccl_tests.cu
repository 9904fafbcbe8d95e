// SPDX-License-Identifier: MIT
// nccl_communicator on one GPU (a clique of one rank, bootstrapped by the single-process
// communicator): every collective's semantics, the merge kernel, the argument errors; and the
// CUDA path of the vocab-parallel soft-target losses, over NCCL (one rank: the whole vocabulary)
// and over 2 and 3 ranks simulated in turn on the one GPU (lockstep_communicator below), against
// the double reference and the CPU single-process losses in double. Exits 77 (skipped) without a
// GPU. Several NCCL ranks need one GPU each (NCCL refuses two ranks on one GPU): run the MPI
// binary's cases over NCCL on a multi-GPU machine (docs/distributed.md).
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "distill/distributed/nccl_communicator.hpp"
#include "distill/distributed/vocab_parallel_soft_target.hpp"

#include "reference/soft_target_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

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

// Named (not anonymous): the lockstep communicator's unused collectives would warn there.
namespace vocab_parallel_cuda_test {

using namespace distill;
namespace ref = soft_target_ref;

/// The shared record of a lockstep clique: each collective call's latest contribution per rank.
struct lockstep_clique {
  int ranks = 1;
  std::vector<std::vector<std::vector<unsigned char>>> calls;  // [call][rank]: bytes (empty: none yet)
};

/// Rank `rank` of P ranks that one process runs in turn on one GPU (a test stand-in for NCCL with
/// P GPUs). Each collective copies this rank's contribution to the host and, once every rank has
/// made that call, writes their reduction in rank order (else leaves `data`: not final yet).
/// Running every rank's call sequence K + 1 times over makes every result of a sequence of K
/// collectives exact: round k's contributions depend only on round k - 1's results.
/// Synchronises with the host: a test device, not a communicator for use.
class lockstep_communicator {
 public:
  using memory_space = cuda_space;
  static constexpr bool merge_needs_workspace = false;

  lockstep_communicator(lockstep_clique& clique, int rank, cudaStream_t stream) : clique_(&clique), rank_(rank), stream_(stream) {}
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return clique_->ranks; }
  cudaStream_t stream() const noexcept { return stream_; }
  void restart() noexcept { call_ = 0; }

  template <class T>
  status all_reduce(cuda_view<T, 1> data, reduce_op op) const {
    return collective(data, [op](T& acc, const T& x) { acc = op == reduce_op::sum ? acc + x : (x > acc ? x : acc); });
  }
  template <class Merge, class T>
  status all_reduce_merge(cuda_view<T, 1> data, cuda_view<std::byte, 1> /*workspace*/) const {
    return collective(data, [](T& acc, const T& x) { acc = Merge{}(acc, x); });
  }
  template <class T>
  status all_gather(in_view<T, 1, cuda_space>, cuda_view<T, 1>) const {
    return fail(errc::invalid_argument, "lockstep_communicator::all_gather", "not simulated");
  }
  template <class T>
  status broadcast(cuda_view<T, 1>, int) const {
    return fail(errc::invalid_argument, "lockstep_communicator::broadcast", "not simulated");
  }
  status barrier() const { return distributed_detail::cuda_status("lockstep_communicator::barrier", cudaStreamSynchronize(stream_)); }

 private:
  template <class T, class Op>
  status collective(cuda_view<T, 1> data, Op op) const {
    const std::size_t n = static_cast<std::size_t>(data.extent(0)), bytes = n * sizeof(T);
    auto& calls = clique_->calls;
    if (calls.size() <= call_) calls.resize(call_ + 1, std::vector<std::vector<unsigned char>>(std::size_t(size())));
    auto& slots = calls[call_++];
    slots[std::size_t(rank_)].resize(bytes);
    DISTILL_TRY(distributed_detail::cuda_status("lockstep", cudaMemcpyAsync(slots[std::size_t(rank_)].data(), data.data(), bytes,
                                                                            cudaMemcpyDeviceToHost, stream_)));
    DISTILL_TRY(distributed_detail::cuda_status("lockstep", cudaStreamSynchronize(stream_)));
    for (const auto& s : slots)
      if (s.size() != bytes) return {};
    std::vector<T> acc(n), x(n);
    std::memcpy(acc.data(), slots[0].data(), bytes);
    for (std::size_t r = 1; r < slots.size(); ++r) {
      std::memcpy(x.data(), slots[r].data(), bytes);
      for (std::size_t i = 0; i < n; ++i) op(acc[i], x[i]);
    }
    DISTILL_TRY(distributed_detail::cuda_status(
        "lockstep", cudaMemcpyAsync(data.data(), acc.data(), bytes, cudaMemcpyHostToDevice, stream_)));
    return distributed_detail::cuda_status("lockstep", cudaStreamSynchronize(stream_));
  }
  lockstep_clique* clique_;
  int rank_;
  cudaStream_t stream_;
  mutable std::size_t call_ = 0;
};
static_assert(communicator<lockstep_communicator>);

enum class which { kl, reverse_kl, jsd };
constexpr double jsd_beta = 0.3;

/// Columns of rank r of P over C classes: uneven (rank r's share grows with r), as the MPI cases.
vocab_shard shard_of(int r, int P, index_t C, index_t& width) {
  const index_t total = index_t(P) * (P + 1) / 2;
  index_t offset = 0;
  for (int i = 0; i < r; ++i) offset += C * (i + 1) / total;
  width = r == P - 1 ? C - offset : C * (r + 1) / total;
  return {offset, C};
}

template <class Comm, class TS>
status vp_forward(which w, const cuda& ctx, const Comm& comm, const vocab_shard& shard, cuda_view<TS, 2> s, cuda_view<TS, 2> t,
                  cuda_view<float, 1> loss, cuda_view<vocab_parallel_row<float>, 1> saved, const soft_target_cuda_extras<float>& ex,
                  cuda_view<std::byte, 1> ws, const jsd_options& o) {
  const soft_target_options& base = o;
  if (w == which::kl) return vocab_parallel_kl_teacher_student_forward(ctx, comm, shard, s, t, loss, saved, ex, ws, base);
  if (w == which::reverse_kl) return vocab_parallel_kl_student_teacher_forward(ctx, comm, shard, s, t, loss, saved, ex, ws, base);
  return vocab_parallel_jsd_forward(ctx, comm, shard, s, t, loss, saved, ex, ws, o);
}
template <class TS>
status vp_backward(which w, const cuda& ctx, const vocab_shard& shard, cuda_view<TS, 2> s, cuda_view<TS, 2> t,
                   in_view<vocab_parallel_row<float>, 1, cuda_space> saved, cuda_view<TS, 2> g,
                   const soft_target_cuda_extras<float>& ex, cuda_view<std::byte, 1> ws, const jsd_options& o) {
  const soft_target_options& base = o;
  if (w == which::kl) return vocab_parallel_kl_teacher_student_backward(ctx, shard, s, t, saved, g, ex, ws, base);
  if (w == which::reverse_kl) return vocab_parallel_kl_student_teacher_backward(ctx, shard, s, t, saved, g, ex, ws, base);
  return vocab_parallel_jsd_backward(ctx, shard, s, t, saved, g, ex, ws, o);
}

/// One problem (N, C) with its double reference and the CPU single-process result in double.
struct problem {
  ref::batch b;
  ref::result want;
  std::vector<double> cpu_loss, cpu_grad;
  std::vector<std::int64_t> labels;
  std::vector<float> weights;
};

/// The logits are rounded to storage type T first: the references see exactly the kernels' inputs.
template <class T>
problem make_problem(which w, index_t N, index_t C, const jsd_options& o, bool labels, bool weights, std::uint64_t salt) {
  problem p;
  distill_test::rng g(salt);
  ref::batch& b = p.b;
  b.n = std::size_t(N), b.c = std::size_t(C);
  b.zs = g.normals(std::size_t(N * C), 0.0, 2.0);
  b.zt = g.normals(std::size_t(N * C), 0.5, 2.5);
  if (w != which::reverse_kl)  // -inf teacher logits in row 0 (reverse KL would be +inf there)
    for (index_t k = 0; k < C; k += 7) b.zt[std::size_t(k)] = -ref::inf;
  for (std::vector<double>* z : {&b.zs, &b.zt})
    for (double& v : *z) v = double(load<float>(store<T>(float(v))));
  if (labels) {
    for (index_t r = 0; r < N; ++r) p.labels.push_back(g.integer(0, C - 1));
    p.labels[std::size_t(N / 2)] = o.ignore_index;  // an ignored row
    b.labels = p.labels;
  }
  if (weights) {
    for (index_t r = 0; r < N; ++r) p.weights.push_back(float(g.uniform(0.2, 1.5)));
    b.weights.assign(p.weights.begin(), p.weights.end());
  }
  ref::config cf;
  cf.k = w == which::kl ? ref::kind::kl_teacher_student : w == which::reverse_kl ? ref::kind::kl_student_teacher : ref::kind::jsd;
  cf.temperature = o.temperature;
  cf.t_squared = o.scale_by_t_squared;
  cf.reduction = o.reduction == reduction::none  ? ref::reduction::none
                 : o.reduction == reduction::sum ? ref::reduction::sum
                 : o.reduction == reduction::mean ? ref::reduction::mean
                                                  : ref::reduction::batchmean;
  cf.soft_weight = o.soft_weight;
  cf.hard_weight = o.hard_label_weight;
  cf.grad_scale = o.grad_scale;
  cf.ignore_index = o.ignore_index;
  cf.jsd_beta = jsd_beta;
  p.want = ref::evaluate(cf, b);

  // the CPU single-process library call over the full rows, in double
  const index_t loss_n = o.reduction == reduction::none ? N : 1;
  p.cpu_loss.assign(std::size_t(loss_n), 0.0);
  p.cpu_grad.assign(std::size_t(N * C), 0.0);
  std::vector<double> dw(p.weights.begin(), p.weights.end());
  soft_target_host_extras<double> fx;
  if (labels) fx.labels = make_view(p.labels.data(), N);
  if (weights) fx.row_weights = make_view(static_cast<const double*>(dw.data()), N);
  const auto sv = make_view(static_cast<const double*>(b.zs.data()), N, C), tv = make_view(static_cast<const double*>(b.zt.data()), N, C);
  const auto lv = make_view(p.cpu_loss.data(), loss_n);
  const auto gv = make_view(p.cpu_grad.data(), N, C);
  const cpu ctx{};
  const soft_target_options& base = o;
  auto run = [&]() -> status {
    if (w == which::kl) return kl_teacher_student_forward_backward(ctx, sv, tv, lv, gv, fx, {}, base);
    if (w == which::reverse_kl) return kl_student_teacher_forward_backward(ctx, sv, tv, lv, gv, fx, {}, base);
    return jsd_forward_backward(ctx, sv, tv, lv, gv, fx, {}, o);
  };
  REQUIRE(run().to_string() == "ok");
  return p;
}

/// One rank's device buffers: its slice of the logits (storage type T), saved rows, loss,
/// gradient, diagnostics.
template <class T>
struct rank_buffers {
  index_t width;
  vocab_shard shard;
  distill_test::device_buffer<T> s, t, g;
  distill_test::device_buffer<float> loss, row_kl, row_top1, row_hard, w;
  distill_test::device_buffer<std::int64_t> labels;
  distill_test::device_buffer<vocab_parallel_row<float>> saved;
  distill_test::device_buffer<std::byte> ws;
  soft_target_cuda_extras<float> ex;

  rank_buffers(const problem& p, int r, int P, index_t loss_n, std::size_t ws_bytes) {
    const index_t N = index_t(p.b.n), C = index_t(p.b.c);
    shard = shard_of(r, P, C, width);
    std::vector<T> hs(std::size_t(N * width)), ht(std::size_t(N * width));
    for (index_t i = 0; i < N; ++i)
      for (index_t k = 0; k < width; ++k) {
        hs[std::size_t(i * width + k)] = store<T>(float(p.b.zs[std::size_t(i * C + shard.offset + k)]));
        ht[std::size_t(i * width + k)] = store<T>(float(p.b.zt[std::size_t(i * C + shard.offset + k)]));
      }
    s = distill_test::device_buffer<T>(hs);
    t = distill_test::device_buffer<T>(ht);
    g = distill_test::device_buffer<T>(std::vector<T>(hs.size(), store<T>(-7.f)));
    loss = distill_test::device_buffer<float>(std::vector<float>(std::size_t(loss_n), -1.f));
    row_kl = distill_test::device_buffer<float>(std::vector<float>(std::size_t(N), -1.f));
    row_top1 = distill_test::device_buffer<float>(std::vector<float>(std::size_t(N), -1.f));
    row_hard = distill_test::device_buffer<float>(std::vector<float>(std::size_t(N), -1.f));
    saved = distill_test::device_buffer<vocab_parallel_row<float>>(std::size_t(N));
    ws = distill_test::device_buffer<std::byte>(ws_bytes);
    ex.row_kl = make_view<cuda_space>(row_kl.data(), N);
    ex.row_top1_agreement = make_view<cuda_space>(row_top1.data(), N);
    if (!p.labels.empty()) {
      labels = distill_test::device_buffer<std::int64_t>(p.labels);
      ex.labels = make_view<cuda_space>(labels.data(), N);
      ex.row_hard_loss = make_view<cuda_space>(row_hard.data(), N);
    }
    if (!p.weights.empty()) {
      w = distill_test::device_buffer<float>(p.weights);
      ex.row_weights = make_view<cuda_space>(static_cast<const float*>(w.data()), N);
    }
  }
  cuda_view<T, 2> student() const { return make_view<cuda_space>(s.data(), index_t(s.size()) / width, width); }
  cuda_view<T, 2> teacher() const { return make_view<cuda_space>(t.data(), index_t(t.size()) / width, width); }
  cuda_view<T, 2> grad() const { return make_view<cuda_space>(g.data(), index_t(g.size()) / width, width); }
  std::vector<float> grad_values() const {
    std::vector<float> out;
    for (const T& v : g.download()) out.push_back(load<float>(v));
    return out;
  }
  cuda_view<std::byte, 1> workspace() const { return make_view<cuda_space>(ws.data(), index_t(ws.size())); }
};

/// The vocabulary in P uneven slices, one lockstep rank each: every rank's loss and diagnostics
/// (the same bits on every rank) and the assembled gradient against the references.
/// T: the logits' storage type (16-bit: the gradient is rounded to it, hence its tolerance).
template <class T>
void check_slices(which w, index_t N, index_t C, int P, const jsd_options& o, bool labels, bool weights, std::uint64_t salt,
                  distill_test::tolerance grad_tol = distill_test::tol::f32_sum) {
  INFO("loss " << int(w) << ", N " << N << ", C " << C << ", P " << P << ", labels " << labels << ", bytes " << sizeof(T));
  const problem p = make_problem<T>(w, N, C, o, labels, weights, salt);
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  const cuda ctx{stream};
  lockstep_clique clique;
  clique.ranks = P;
  std::vector<lockstep_communicator> comms;
  for (int r = 0; r < P; ++r) comms.emplace_back(clique, r, stream);
  const index_t loss_n = o.reduction == reduction::none ? N : 1;
  const std::size_t ws_bytes = vocab_parallel_workspace_size(ctx, comms[0], N);
  CHECK(ws_bytes >= soft_target_workspace_size(ctx, N));
  std::vector<rank_buffers<T>> ranks;
  for (int r = 0; r < P; ++r) ranks.emplace_back(p, r, P, loss_n, ws_bytes);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the uploads (default stream) before `stream` reads them

  for (int round = 0; round < 3; ++round)  // JSD's two collectives need 3 rounds (the clique's comment)
    for (int r = 0; r < P; ++r) {
      rank_buffers<T>& b = ranks[std::size_t(r)];
      comms[std::size_t(r)].restart();
      const status st = vp_forward(w, ctx, comms[std::size_t(r)], b.shard, b.student(), b.teacher(),
                                   make_view<cuda_space>(b.loss.data(), loss_n), make_view<cuda_space>(b.saved.data(), N), b.ex,
                                   b.workspace(), o);
      REQUIRE(st.to_string() == "ok");
    }
  CHECK(clique.calls.size() == (w == which::jsd ? 2u : 1u));
  for (int r = 0; r < P; ++r) {
    rank_buffers<T>& b = ranks[std::size_t(r)];
    const in_view<vocab_parallel_row<float>, 1, cuda_space> saved = make_view<cuda_space>(b.saved.data(), N);
    REQUIRE(vp_backward(w, ctx, b.shard, b.student(), b.teacher(), saved, b.grad(), b.ex, b.workspace(), o).to_string() == "ok");
  }
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);

  const std::vector<float> loss0 = ranks[0].loss.download();
  const distill_test::tolerance tl = distill_test::tol::f32_sum;
  CHECK_CLOSE("loss vs reference", loss0, p.want.loss, tl);
  CHECK_CLOSE("loss vs CPU single process", loss0, p.cpu_loss, tl);
  CHECK_CLOSE("row KL", ranks[0].row_kl.download(), p.want.row_kl, tl);
  const std::vector<float> top1 = ranks[0].row_top1.download();
  CHECK(std::vector<double>(top1.begin(), top1.end()) == p.want.row_top1);
  if (labels) CHECK_CLOSE("row hard CE", ranks[0].row_hard.download(), p.want.row_hard, tl);
  for (int r = 1; r < P; ++r) {  // the same bits on every rank
    CHECK(std::memcmp(ranks[std::size_t(r)].loss.download().data(), loss0.data(), loss0.size() * sizeof(float)) == 0);
    CHECK(ranks[std::size_t(r)].row_kl.download() == ranks[0].row_kl.download());
  }

  std::vector<float> grad(std::size_t(N * C), 0.f);
  for (const rank_buffers<T>& b : ranks) {
    const std::vector<float> slice = b.grad_values();
    for (index_t i = 0; i < N; ++i)
      for (index_t k = 0; k < b.width; ++k) grad[std::size_t(i * C + b.shard.offset + k)] = slice[std::size_t(i * b.width + k)];
  }
  CHECK_CLOSE("gradient vs reference", grad, p.want.grad, grad_tol);
  CHECK_CLOSE("gradient vs CPU single process", grad, p.cpu_grad, grad_tol);
  ranks.clear();
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

jsd_options options(float temperature, reduction red, float hard_weight) {
  jsd_options o;
  o.temperature = temperature;
  o.reduction = red;
  o.hard_label_weight = hard_weight;
  o.beta = float(jsd_beta);
  return o;
}

}  // namespace vocab_parallel_cuda_test

using namespace vocab_parallel_cuda_test;

TEST_CASE("CUDA vocab-parallel losses: 2 and 3 uneven slices (lockstep ranks) match the full rows", "[distributed][vocab_parallel][cuda]") {
  for (which w : {which::kl, which::reverse_kl, which::jsd}) {
    const std::uint64_t salt = 100 * std::uint64_t(w);
    check_slices<float>(w, 9, 61, 2, options(1.f, reduction::batchmean, 0.f), false, false, salt + 1);
    check_slices<float>(w, 7, 300, 3, options(2.f, reduction::mean, 0.f), true, true, salt + 2);     // ignore_index, weights, T != 1
    check_slices<float>(w, 6, 37, 3, options(1.f, reduction::sum, 0.5f), true, false, salt + 3);     // the hard-label mix
    check_slices<float>(w, 5, 1000, 2, options(1.5f, reduction::none, 0.3f), true, true, salt + 4);  // per-row losses
    check_slices<bfloat16>(w, 4, 130, 3, options(1.f, reduction::batchmean, 0.2f), true, false, salt + 5, distill_test::tol::bf16_in);
    check_slices<float16>(w, 4, 77, 2, options(2.f, reduction::sum, 0.f), true, true, salt + 6, distill_test::tol::f16_in);
  }
}

TEST_CASE("CUDA vocab-parallel losses over NCCL: one rank holding the whole vocabulary", "[distributed][vocab_parallel][nccl]") {
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  nccl_communicator comm;
  REQUIRE(nccl_communicator::create(single_process_communicator{}, 0, stream, comm).to_string() == "ok");
  const cuda ctx{stream};
  const index_t N = 6, C = 203;
  for (which w : {which::kl, which::reverse_kl, which::jsd}) {
    INFO("loss " << int(w));
    const jsd_options o = options(2.f, reduction::mean, 0.4f);
    const problem p = make_problem<float>(w, N, C, o, true, true, 500 + std::uint64_t(w));
    const std::size_t ws_bytes = vocab_parallel_workspace_size(ctx, comm, N);
    CHECK(ws_bytes >= soft_target_workspace_size(ctx, N) + N * sizeof(vocab_parallel_row<float>));  // + the all-gather
    rank_buffers<float> b(p, 0, 1, 1, ws_bytes);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const cuda_view<vocab_parallel_row<float>, 1> saved = make_view<cuda_space>(b.saved.data(), N);
    const cuda_view<float, 1> loss = make_view<cuda_space>(b.loss.data(), 1);
    const soft_target_options& base = o;
    auto run = [&]() -> status {  // forward_backward with the gradient written over the student
      const auto s = b.student(), t = b.teacher();
      if (w == which::kl)
        return vocab_parallel_kl_teacher_student_forward_backward(ctx, comm, b.shard, s, t, loss, saved, s, b.ex, b.workspace(), base);
      if (w == which::reverse_kl)
        return vocab_parallel_kl_student_teacher_forward_backward(ctx, comm, b.shard, s, t, loss, saved, s, b.ex, b.workspace(), base);
      return vocab_parallel_jsd_forward_backward(ctx, comm, b.shard, s, t, loss, saved, s, b.ex, b.workspace(), o);
    };
    REQUIRE(run().to_string() == "ok");
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const distill_test::tolerance tl = distill_test::tol::f32_sum;
    CHECK_CLOSE("loss vs reference", b.loss.download(), p.want.loss, tl);
    CHECK_CLOSE("loss vs CPU single process", b.loss.download(), p.cpu_loss, tl);
    CHECK_CLOSE("gradient vs reference", b.s.download(), p.want.grad, tl);
    CHECK_CLOSE("gradient vs CPU single process", b.s.download(), p.cpu_grad, tl);
    CHECK_CLOSE("row hard CE", b.row_hard.download(), p.want.row_hard, tl);
  }
  comm = nccl_communicator{};
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("CUDA vocab-parallel losses: argument errors before anything is enqueued", "[distributed][vocab_parallel][cuda]") {
  cudaStream_t stream, other;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking) == cudaSuccess);
  const cuda ctx{stream};
  lockstep_clique clique;
  clique.ranks = 2;
  const lockstep_communicator comm(clique, 0, stream), elsewhere(clique, 0, other);
  const index_t N = 4, C = 10;
  const jsd_options o = options(1.f, reduction::batchmean, 0.f);
  const problem p = make_problem<float>(which::kl, N, C, o, false, false, 7);
  rank_buffers<float> b(p, 0, 2, 1, vocab_parallel_workspace_size(ctx, comm, N));
  const cuda_view<float, 1> loss = make_view<cuda_space>(b.loss.data(), 1);
  const cuda_view<vocab_parallel_row<float>, 1> saved = make_view<cuda_space>(b.saved.data(), N);
  auto forward = [&](const lockstep_communicator& c, vocab_shard shard, cuda_view<vocab_parallel_row<float>, 1> sv,
                     const soft_target_cuda_extras<float>& ex, cuda_view<std::byte, 1> ws) {
    return vocab_parallel_kl_teacher_student_forward(ctx, c, shard, b.student(), b.teacher(), loss, sv, ex, ws, o);
  };
  CHECK(forward(comm, {C - b.width + 1, C}, saved, b.ex, b.workspace()).code() == errc::invalid_argument);  // past C
  CHECK(forward(comm, {-1, C}, saved, b.ex, b.workspace()).code() == errc::invalid_argument);
  CHECK(forward(comm, {0, 0}, saved, b.ex, b.workspace()).code() == errc::invalid_argument);
  CHECK(forward(comm, b.shard, make_view<cuda_space>(b.saved.data(), N - 1), b.ex, b.workspace()).code() == errc::shape_mismatch);
  CHECK(forward(comm, b.shard, saved, b.ex, cuda_view<std::byte, 1>{}).code() == errc::invalid_argument);
  CHECK(forward(elsewhere, b.shard, saved, b.ex, b.workspace()).code() == errc::invalid_argument);  // another stream
  distill_test::device_buffer<float> dt(std::size_t(1));
  soft_target_cuda_extras<float> with_dt = b.ex;
  with_dt.grad_temperature = make_view<cuda_space>(dt.data(), 1);
  CHECK(forward(comm, b.shard, saved, with_dt, b.workspace()).code() == errc::invalid_argument);
  CHECK(vocab_parallel_kl_teacher_student_backward(ctx, {C - 1, C}, b.student(), b.teacher(),
                                                   in_view<vocab_parallel_row<float>, 1, cuda_space>(saved), b.grad(), b.ex,
                                                   b.workspace(), o)
            .code() == errc::invalid_argument);
  CHECK(clique.calls.empty());  // no collective was reached
  REQUIRE(cudaStreamDestroy(other) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}
