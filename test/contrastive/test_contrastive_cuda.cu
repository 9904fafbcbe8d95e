// SPDX-License-Identifier: MIT
// Contrastive family on CUDA: the sample queue (enqueue, init, save/load through the host)
// against the CPU queue, the momentum update against hand values, and the token-wise InfoNCE
// against the double reference and the CPU path, in strict fp32, TF32 and BF16 modes, float,
// bfloat16 and half inputs, every option, D on both sides of the 256-column chunk, bad inputs.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <unistd.h>
#include <vector>

#include "distill/contrastive/momentum_update.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/contrastive/token_nce.hpp"
#include "distill/cuda/token_nce.cuh"
#include "nce_cases.hpp"
#include "reference/contrastive_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using namespace nce_test;
using distill_test::device_buffer;

namespace {

template <class T>
std::vector<double> device_rows(const sample_queue<T, cuda_space>& q) {
  std::vector<T> h(static_cast<std::size_t>(q.capacity() * q.dim()));
  REQUIRE(cudaMemcpy2D(h.data(), static_cast<std::size_t>(q.dim()) * sizeof(T), q.keys().data(),
                       static_cast<std::size_t>(q.keys().stride(0)) * sizeof(T), static_cast<std::size_t>(q.dim()) * sizeof(T),
                       static_cast<std::size_t>(q.capacity()), cudaMemcpyDeviceToHost) == cudaSuccess);
  return to_double(h);
}
template <class T>
std::vector<double> host_rows(const sample_queue<T, host_space>& q) {
  std::vector<double> v;
  for (index_t j = 0; j < q.capacity(); ++j)
    for (index_t d = 0; d < q.dim(); ++d) v.push_back(static_cast<double>(load<float>(q.keys()(j, d))));
  return v;
}

struct tolerances {
  double loss_abs, loss_rel, grad_rel;
};

/// Expected accuracy of each mode (tau scales every logit error by 1/tau).
tolerances mode_tolerance(distill::matmul_precision p, bool inputs_16bit, double tau) {
  switch (p) {
    case distill::matmul_precision::fp32: return {3 * float_rel(tau), 3 * float_rel(tau), 3 * float_rel(tau)};
    case distill::matmul_precision::tf32: return {4e-3 / tau, 4e-3, 8e-3 / tau};  // 10-bit mantissa products
    case distill::matmul_precision::bf16:
      // bf16 storage: products of bf16 numbers are exact in float, only P is rounded; float
      // inputs are rounded to bf16 first (8-bit mantissa) and every logit carries that.
      return inputs_16bit ? tolerances{2e-3 / tau, 2e-3, 2e-2} : tolerances{3e-2 / tau, 1e-2, 6e-2 / tau};
  }
  return {1, 1, 1};
}

struct cuda_result {
  std::vector<double> loss, per_token, grad_student, grad_teacher, queue_keys;
  std::vector<std::int64_t> queue_ids;
  status st;
};

/// Build the device queue from the case's history (device enqueue), run the fused pass (or
/// forward / backward only), read everything back. T: token storage type; TQ: queue storage.
template <class T, class TQ = T>
cuda_result run_cuda(const case_data& k, distill::matmul_precision precision, int mode = 0 /* 0 fused, 1 forward, 2 backward */) {
  const config& c = k.cfg;
  const long M = c.M, D = c.D, ld = D + c.pad;
  cuda_result out;
  cuda_sample_queue<TQ> dq;
  REQUIRE(cuda_sample_queue<TQ>::create(c.K, D, c.queue_ids, dq).ok());
  auto& q = dq.queue();
  const auto hist = cast<TQ>(k.history);
  device_buffer<TQ> dhist(hist.empty() ? std::vector<TQ>(1) : hist);
  device_buffer<std::int64_t> dhid(k.history_ids.empty() ? std::vector<std::int64_t>(1) : k.history_ids);
  long at = 0;
  for (long n : k.batch_sizes) {
    const auto keys = make_view<cuda_space>(static_cast<const TQ*>(dhist.data() + at * D), n, D);
    cuda_view<const std::int64_t, 1> ids;
    if (c.queue_ids) ids = make_view<cuda_space>(static_cast<const std::int64_t*>(dhid.data() + at), n);
    REQUIRE(sample_queue_enqueue(cuda{}, q, keys, ids).ok());
    at += n;
  }
  {
    const auto all = device_rows(q);
    out.queue_keys.assign(all.begin(), all.begin() + q.size() * D);
    if (c.queue_ids) {
      std::vector<std::int64_t> h(static_cast<std::size_t>(c.K));
      REQUIRE(cudaMemcpy(h.data(), q.ids().data(), h.size() * 8, cudaMemcpyDeviceToHost) == cudaSuccess);
      out.queue_ids.assign(h.begin(), h.begin() + q.size());
    }
  }
  device_buffer<T> dz(padded(cast<T>(k.student), M, D, c.pad, T(7.0f))), dy(padded(cast<T>(k.teacher), M, D, c.pad, T(7.0f)));
  const auto Z = make_strided_view<cuda_space>(static_cast<const T*>(dz.data()), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  const auto Y = make_strided_view<cuda_space>(static_cast<const T*>(dy.data()), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  device_buffer<std::uint8_t> dmask(k.mask.empty() ? std::vector<std::uint8_t>(1) : k.mask);
  device_buffer<std::int64_t> dids(k.ids.empty() ? std::vector<std::int64_t>(1) : k.ids);
  cuda_view<const std::uint8_t, 1> mask;
  if (c.use_mask) mask = make_view<cuda_space>(static_cast<const std::uint8_t*>(dmask.data()), M);
  cuda_view<const std::int64_t, 1> ids;
  if (c.use_ids) ids = make_view<cuda_space>(static_cast<const std::int64_t*>(dids.data()), M);
  const long nloss = c.reduction == reduction::none ? M : 1;
  device_buffer<float> dloss(static_cast<std::size_t>(nloss)), dper(static_cast<std::size_t>(M));
  std::vector<double> g0s(static_cast<std::size_t>(M * D), 0.0), g0t(static_cast<std::size_t>(M * D), 0.0);
  std::vector<T> init_s(static_cast<std::size_t>(M * ld), T(-3.0f)), init_t(static_cast<std::size_t>(M * ld), T(-3.0f));
  if (c.accumulate) {
    distill_test::rng g(99);
    for (long i = 0; i < M; ++i)
      for (long d = 0; d < D; ++d) {
        init_s[static_cast<std::size_t>(i * ld + d)] = store<T>(g.normal());
        init_t[static_cast<std::size_t>(i * ld + d)] = store<T>(g.normal());
        g0s[static_cast<std::size_t>(i * D + d)] = load<float>(init_s[static_cast<std::size_t>(i * ld + d)]);
        g0t[static_cast<std::size_t>(i * D + d)] = load<float>(init_t[static_cast<std::size_t>(i * ld + d)]);
      }
  }
  device_buffer<T> dgs(init_s), dgt(init_t);
  const auto GS = make_strided_view<cuda_space>(dgs.data(), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  cuda_view<T, 2> GT;
  if (c.teacher_grad) GT = make_strided_view<cuda_space>(dgt.data(), std::array<index_t, 2>{M, D}, std::array<index_t, 2>{ld, 1});
  auto opt = options_of(c);
  opt.precision = precision;
  device_buffer<std::byte> ws(token_nce_queue_workspace_size(cuda{}, M, D, c.K, opt));
  const auto W = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
  const auto L = make_view<cuda_space>(dloss.data(), nloss);
  const auto P = make_view<cuda_space>(dper.data(), M);
  const token_nce_inputs<T, T, cuda_space> in{Z, Y, mask, ids};
  const status st =
      mode == 1   ? token_nce_queue_forward(cuda{}, in, q, token_nce_outputs<T, T, cuda_space>{.loss = L, .per_token_loss = P}, W, opt)
      : mode == 2 ? token_nce_queue_backward(cuda{}, in, q, token_nce_outputs<T, T, cuda_space>{.grad_student = GS, .grad_teacher = GT}, W, opt)
                  : token_nce_queue_forward_backward(cuda{}, in, q, token_nce_outputs<T, T, cuda_space>{L, P, GS, GT}, W, opt);
  out.st = st;  // (nvcc warns on assigning a [[nodiscard]] call's result directly)
  if (!out.st.ok()) return out;
  distill_test::cuda_sync();
  if (mode != 2) {
    for (float v : dloss.download()) out.loss.push_back(v);
    for (float v : dper.download()) out.per_token.push_back(v);
  }
  if (mode != 1) {
    const auto gs = dgs.download();
    const auto a = unpadded(gs.data(), M, D, c.pad);
    for (std::size_t x = 0; x < a.size(); ++x) out.grad_student.push_back(load<float>(a[x]) - g0s[x]);
    // padding untouched
    for (long i = 0; i < M; ++i)
      for (long d = D; d < ld; ++d) CHECK(load<float>(gs[static_cast<std::size_t>(i * ld + d)]) == load<float>(init_s[static_cast<std::size_t>(i * ld + d)]));
    const auto gt = dgt.download();
    if (c.teacher_grad) {
      const auto b = unpadded(gt.data(), M, D, c.pad);
      for (std::size_t x = 0; x < b.size(); ++x) out.grad_teacher.push_back(load<float>(b[x]) - g0t[x]);
    } else {
      CHECK(to_double(gt) == to_double(init_t));  // stop-gradient: the buffer is never written
    }
  }
  return out;
}

void compare(const case_data& k, const cuda_result& r, const tolerances& t, bool grads_16bit_storage) {
  const config& c = k.cfg;
  REQUIRE(r.st.ok());
  const auto ref = distill_ref::token_nce_ref(ref_input(k, r.queue_keys, r.queue_ids));
  if (!r.per_token.empty()) {
    CHECK_CLOSE("per-token loss", r.per_token, ref.per_token, (distill_test::tolerance{t.loss_abs, t.loss_rel}));
    if (c.reduction == reduction::none) CHECK_CLOSE("loss (none)", r.loss, ref.per_token, (distill_test::tolerance{t.loss_abs, t.loss_rel}));
    else CHECK_CLOSE_SCALAR("loss", r.loss[0], ref.loss, (distill_test::tolerance{t.loss_abs, t.loss_rel}));
  }
  // 16-bit gradient storage rounds every element to 8 (bf16) or 11 (f16) bits.
  const double store_rel = grads_16bit_storage ? 8e-3 : 0.0;
  const double acc_abs = c.accumulate ? (grads_16bit_storage ? 0.05 : 1e-6) : 0.0;
  if (!r.grad_student.empty()) {
    auto atol = row_atol(k, k.student, t.grad_rel);
    for (auto& a : atol) a += acc_abs;
    const auto cmp = compare_rows(r.grad_student, ref.grad_student, c.M, c.D, atol, t.grad_rel + store_rel);
    INFO("grad_student: " << cmp.message);
    CHECK(cmp.ok);
  }
  if (!r.grad_teacher.empty()) {
    auto atol = row_atol(k, k.teacher, t.grad_rel);
    if (c.in_batch)
      for (auto& a : atol) a *= 1.0 + static_cast<double>(c.M);
    for (auto& a : atol) a += acc_abs;
    const auto cmp = compare_rows(r.grad_teacher, ref.grad_teacher, c.M, c.D, atol, t.grad_rel + store_rel);
    INFO("grad_teacher: " << cmp.message);
    CHECK(cmp.ok);
  }
}

const char* name(distill::matmul_precision p) { return distill::to_string(p); }

struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    path = std::filesystem::temp_directory_path() / ("distill_cuda_queue_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& n) const { return (path / n).string(); }
};

}  // namespace

// ------------------------------------------------------------------------------------------
// Queue
// ------------------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("CUDA sample_queue: enqueue matches the CPU queue", "[contrastive][queue][cuda]", float, bfloat16, float16) {
  distill_test::rng g(601);
  for (int trial = 0; trial < 12; ++trial) {
    const long K = g.integer(1, 300), D = g.integer(1, 70);
    const bool with_ids = g.coin();
    cuda_sample_queue<TestType> dq;
    REQUIRE(cuda_sample_queue<TestType>::create(K, D, with_ids, dq).ok());
    host_sample_queue<TestType> hq(K, D, with_ids);
    for (int step = 0; step < 5; ++step) {
      const long B = g.coin(0.2) ? g.integer(K, 3 * K) : g.integer(0, K);
      const auto rows = g.normals<float>(static_cast<std::size_t>(std::max(B * D, 1L)));
      std::vector<std::int64_t> ids(static_cast<std::size_t>(std::max(B, 1L)));
      for (auto& v : ids) v = g.integer(0, 50);
      device_buffer<float> drows(rows);
      device_buffer<std::int64_t> dids(ids);
      enqueue_options opt;
      opt.normalize = g.coin(0.8);
      const bool pass_ids = with_ids && g.coin(0.7);
      REQUIRE(sample_queue_enqueue(cuda{}, dq.queue(), make_view<cuda_space>(static_cast<const float*>(drows.data()), B, D),
                                   pass_ids ? make_view<cuda_space>(static_cast<const std::int64_t*>(dids.data()), B)
                                            : cuda_view<const std::int64_t, 1>{},
                                   opt)
                  .ok());
      REQUIRE(sample_queue_enqueue(cpu{1}, hq.queue(), make_view(rows.data(), B, D),
                                   pass_ids ? make_view(static_cast<const std::int64_t*>(ids.data()), B) : host_view<const std::int64_t, 1>{}, opt)
                  .ok());
      CHECK(dq.queue().size() == hq.queue().size());
      CHECK(dq.queue().write_position() == hq.queue().write_position());
      const double tol = std::is_same_v<TestType, float> ? 1e-6 : 8e-3;
      CHECK_CLOSE("keys", device_rows(dq.queue()), host_rows(hq.queue()), (distill_test::tolerance{tol, tol}));
      if (with_ids) {
        std::vector<std::int64_t> h(static_cast<std::size_t>(K));
        REQUIRE(cudaMemcpy(h.data(), dq.queue().ids().data(), h.size() * 8, cudaMemcpyDeviceToHost) == cudaSuccess);
        std::vector<std::int64_t> e(hq.queue().ids().data(), hq.queue().ids().data() + K);
        CHECK(h == e);
      }
    }
  }
}

TEST_CASE("CUDA sample_queue: random init equals the CPU init; save/load through files", "[contrastive][queue][cuda]") {
  const long K = 333, D = 40;
  cuda_sample_queue<float> dq;
  REQUIRE(cuda_sample_queue<float>::create(K, D, true, dq).ok());
  host_sample_queue<float> hq(K, D, true);
  REQUIRE(sample_queue_init_random(cuda{}, dq.queue(), 99).ok());
  REQUIRE(sample_queue_init_random(cpu{2}, hq.queue(), 99).ok());
  CHECK(dq.queue().full());
  CHECK_CLOSE("init", device_rows(dq.queue()), host_rows(hq.queue()), (distill_test::tolerance{1e-6, 1e-6}));

  temp_dir dir;
  // device -> file -> host, and host -> file -> device, bit-exact
  distill_test::rng g(602);
  const auto rows = g.normals<float>(50 * D);
  device_buffer<float> drows(rows);
  REQUIRE(sample_queue_enqueue(cuda{}, dq.queue(), make_view<cuda_space>(static_cast<const float*>(drows.data()), 50, D)).ok());
  REQUIRE(sample_queue_save(cuda{}, dq.queue(), dir.file("d.bin")).ok());
  host_sample_queue<float> back(K, D, true);
  REQUIRE(sample_queue_load(cpu{1}, back.queue(), dir.file("d.bin")).ok());
  CHECK(host_rows(back.queue()) == device_rows(dq.queue()));
  CHECK(back.queue().write_position() == dq.queue().write_position());
  REQUIRE(sample_queue_save(cpu{1}, hq.queue(), dir.file("h.bin")).ok());
  cuda_sample_queue<float> dq2;
  REQUIRE(cuda_sample_queue<float>::create(K, D, true, dq2).ok());
  REQUIRE(sample_queue_load(cuda{}, dq2.queue(), dir.file("h.bin")).ok());
  CHECK(device_rows(dq2.queue()) == host_rows(hq.queue()));
  // in memory: the device image is the CPU image of the same queue, byte for byte, and restores it
  std::vector<unsigned char> device_image, host_image;
  REQUIRE(sample_queue_serialize(cuda{}, dq.queue(), device_image).ok());
  REQUIRE(sample_queue_serialize(cpu{1}, back.queue(), host_image).ok());
  CHECK(device_image == host_image);
  cuda_sample_queue<float> dq3;
  REQUIRE(cuda_sample_queue<float>::create(K, D, true, dq3).ok());
  REQUIRE(sample_queue_deserialize(cuda{}, dq3.queue(), host_image).ok());
  CHECK(device_rows(dq3.queue()) == host_rows(back.queue()));
  CHECK(dq3.queue().write_position() == back.queue().write_position());
  CHECK(dq3.queue().size() == back.queue().size());
  host_image[100] ^= 1;  // a flipped payload bit fails the checksum; the device queue is unchanged
  CHECK(sample_queue_deserialize(cuda{}, dq3.queue(), host_image).code() == errc::corrupt_data);
  CHECK(device_rows(dq3.queue()) == host_rows(back.queue()));
  // a mismatched file is refused and leaves the device queue unchanged
  cuda_sample_queue<float> other;
  REQUIRE(cuda_sample_queue<float>::create(K, D + 1, true, other).ok());
  const auto before = device_rows(other.queue());
  CHECK(sample_queue_load(cuda{}, other.queue(), dir.file("h.bin")).code() == errc::corrupt_data);
  CHECK(device_rows(other.queue()) == before);
  CHECK(other.queue().size() == 0);
  // host memory passed as a device queue
  std::vector<float> host_keys(K * D);
  sample_queue<float, cuda_space> fake(make_view<cuda_space>(host_keys.data(), K, D));
  CHECK(sample_queue_init_random(cuda{}, fake, 1).code() == errc::wrong_memory_space);
}

// ------------------------------------------------------------------------------------------
// Momentum update
// ------------------------------------------------------------------------------------------
TEST_CASE("CUDA momentum_update: hand values, many buffers, bf16", "[contrastive][momentum][cuda]") {
  device_buffer<float> k(std::vector<float>{1.0f, 2.0f, -3.0f, 0.5f}), q(std::vector<float>{0.0f, 4.0f, 1.0f, 0.5f});
  REQUIRE(momentum_update(cuda{}, make_view<cuda_space>(k.data(), 4), make_view<cuda_space>(static_cast<const float*>(q.data()), 4), 0.9).ok());
  const auto kh = k.download();
  CHECK(kh[0] == Approx(0.9f).epsilon(1e-6));
  CHECK(kh[1] == Approx(2.2f).epsilon(1e-6));
  CHECK(kh[2] == Approx(-2.6f).epsilon(1e-6));
  CHECK(kh[3] == 0.5f);

  // 150 buffers (three launches of at most 64), sizes 0 .. 5000, against a double loop
  distill_test::rng g(603);
  std::vector<device_buffer<float>> keys, queries;
  std::vector<std::vector<float>> k0, q0;
  std::vector<momentum_param<float, cuda_space>> params;
  for (int t = 0; t < 150; ++t) {
    const long n = t % 17 == 0 ? 0 : g.integer(1, 5000);
    k0.push_back(g.normals<float>(static_cast<std::size_t>(n)));
    q0.push_back(g.normals<float>(static_cast<std::size_t>(n)));
    keys.emplace_back(k0.back().empty() ? std::vector<float>(1) : k0.back());
    queries.emplace_back(q0.back().empty() ? std::vector<float>(1) : q0.back());
  }
  for (int t = 0; t < 150; ++t)
    params.push_back({make_view<cuda_space>(keys[t].data(), static_cast<index_t>(k0[t].size())),
                      make_view<cuda_space>(static_cast<const float*>(queries[t].data()), static_cast<index_t>(q0[t].size()))});
  REQUIRE(momentum_update(cuda{}, params, 0.99).ok());
  for (int t = 0; t < 150; ++t) {
    const auto got = keys[t].download();
    for (std::size_t i = 0; i < k0[t].size(); ++i) {
      const double want = 0.99 * k0[t][i] + 0.01 * q0[t][i];
      if (!(std::fabs(got[i] - want) <= 1e-6 * (1 + std::fabs(want)))) {
        FAIL_CHECK("buffer " << t << " element " << i << ": " << got[i] << " vs " << want);
        break;
      }
    }
  }
  // bf16 parameters, arithmetic in float
  device_buffer<bfloat16> kb(std::vector<bfloat16>{bfloat16(1.0f), bfloat16(-2.0f)}), qb(std::vector<bfloat16>{bfloat16(3.0f), bfloat16(2.0f)});
  REQUIRE(momentum_update(cuda{}, make_view<cuda_space>(kb.data(), 2), make_view<cuda_space>(static_cast<const bfloat16*>(qb.data()), 2), 0.5).ok());
  const auto kbh = kb.download();
  CHECK(static_cast<float>(kbh[0]) == 2.0f);
  CHECK(static_cast<float>(kbh[1]) == 0.0f);
  // host memory passed as device memory
  std::vector<float> hk(4), hq(4);
  CHECK(momentum_update(cuda{}, make_view<cuda_space>(hk.data(), 4), make_view<cuda_space>(static_cast<const float*>(hq.data()), 4), 0.5).code() ==
        errc::wrong_memory_space);
}

// ------------------------------------------------------------------------------------------
// Token-wise InfoNCE
// ------------------------------------------------------------------------------------------
TEST_CASE("CUDA token_nce: every mode against the reference on random cases", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(604);
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    for (int trial = 0; trial < 16; ++trial) {
      // D around the 256-column chunk and the mma k-steps; K around the 64-key tile.
      config c = random_config(g, trial % 4 == 3 ? 200 : 70, 40, 300);
      if (trial % 5 == 1) c.D = 256;
      if (trial % 5 == 2) c.D = g.integer(257, 560);
      if (p != distill::matmul_precision::fp32) c.tau = std::max(c.tau, 0.1);
      CAPTURE(name(p), trial, c.M, c.D, c.K, c.enqueued, c.in_batch, c.use_mask, c.use_ids, c.queue_ids, c.teacher_grad, c.accumulate,
              static_cast<int>(c.reduction), c.tau, c.grad_scale, c.pad);
      const auto k = make_case<float>(g, c);
      const auto r = run_cuda<float>(k, p);
      INFO(r.st.to_string());
      compare(k, r, mode_tolerance(p, false, c.tau), false);
    }
  }
}

TEMPLATE_TEST_CASE("CUDA token_nce: 16-bit inputs (tokens, queue and gradients)", "[contrastive][token_nce][cuda]", bfloat16, float16) {
  distill_test::rng g(605);
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::bf16}) {
    for (int trial = 0; trial < 8; ++trial) {
      config c = random_config(g, 90, 300, 200);
      c.tau = std::max(c.tau, 0.1);
      c.pad = (trial % 2) * 8;  // rows stay 16-byte aligned: the cp.async path
      CAPTURE(name(p), trial, c.M, c.D, c.K, c.enqueued, c.in_batch, c.teacher_grad, static_cast<int>(c.reduction), c.tau);
      const auto k = make_case<TestType>(g, c);
      const auto r = run_cuda<TestType>(k, p);
      INFO(r.st.to_string());
      const bool bf16_exact = std::is_same_v<TestType, bfloat16>;
      compare(k, r, p == distill::matmul_precision::fp32 ? mode_tolerance(p, true, c.tau) : mode_tolerance(p, bf16_exact, c.tau), true);
    }
  }
}

TEST_CASE("CUDA token_nce: bf16 tokens against a float queue (converting loader for in-batch keys)", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(609);
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    config c;
    c.M = 150;
    c.D = 96;
    c.K = 200;
    c.enqueued = 260;
    c.in_batch = true;
    c.teacher_grad = true;
    c.tau = 0.2;
    const auto k = make_case<bfloat16>(g, c);
    CAPTURE(name(p));
    // the float queue holds the bf16-rounded history (make_case rounds through bf16) exactly
    compare(k, run_cuda<bfloat16, float>(k, p), p == distill::matmul_precision::bf16 ? mode_tolerance(p, false, c.tau) : mode_tolerance(p, true, c.tau),
            true);
  }
}

TEST_CASE("CUDA token_nce: agrees with the CPU path on a larger case; forward/backward/fused agree", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(606);
  config c;
  c.M = 700;
  c.D = 256;
  c.K = 5000;
  c.enqueued = 6100;  // wrapped
  c.batches = 3;
  c.queue_ids = true;
  c.use_ids = true;
  c.use_mask = true;
  c.in_batch = true;
  c.teacher_grad = true;
  c.tau = 0.07;
  c.id_range = 50;
  const auto k = make_case<float>(g, c);
  // CPU result (float) on the same stored queue
  const auto fused = run_cuda<float>(k, distill::matmul_precision::fp32);
  REQUIRE(fused.st.ok());
  host_sample_queue<float> hq(c.K, c.D, true);
  REQUIRE(hq.queue().restore_state(static_cast<index_t>(c.enqueued % c.K), c.K).ok());
  for (long j = 0; j < c.K; ++j) {
    for (long d = 0; d < c.D; ++d) hq.queue().keys()(j, d) = static_cast<float>(fused.queue_keys[static_cast<std::size_t>(j * c.D + d)]);
    hq.queue().ids()(j) = fused.queue_ids[static_cast<std::size_t>(j)];
  }
  const auto z = cast<float>(k.student), y = cast<float>(k.teacher);
  std::vector<float> gz(z.size()), gy(y.size()), per(static_cast<std::size_t>(c.M));
  float loss = 0;
  auto opt = options_of(c);
  workspace_for<float> hws(cpu{2}, c.M, c.D, hq.queue(), opt);
  REQUIRE(token_nce_queue_forward_backward(
              cpu{2},
              token_nce_inputs<float>{make_view(z.data(), c.M, c.D), make_view(y.data(), c.M, c.D), make_view(k.mask.data(), c.M),
                                      make_view(k.ids.data(), c.M)},
              hq.queue(),
              token_nce_outputs<float>{make_view(&loss, 1), make_view(per.data(), c.M), make_view(gz.data(), c.M, c.D),
                                       make_view(gy.data(), c.M, c.D)},
              hws.view(), opt)
              .ok());
  CHECK_CLOSE_SCALAR("loss vs CPU", fused.loss[0], loss, (distill_test::tolerance{1e-4, 1e-4}));
  CHECK_CLOSE("per-token vs CPU", fused.per_token, per, (distill_test::tolerance{1e-4, 1e-4}));
  const std::vector<double> gzd(gz.begin(), gz.end()), gyd(gy.begin(), gy.end());
  CHECK_CLOSE("grad_student vs CPU", fused.grad_student, gzd, scaled(gzd, 1e-3));
  CHECK_CLOSE("grad_teacher vs CPU", fused.grad_teacher, gyd, scaled(gyd, 1e-3));
  // backward only gives the fused pass's numbers (same kernels, same plan); forward only runs
  // one block per (tokens, key split) instead of one per 256 columns, so its key splits (and
  // their merge order) may differ
  const auto fwd = run_cuda<float>(k, distill::matmul_precision::fp32, 1);
  const auto bwd = run_cuda<float>(k, distill::matmul_precision::fp32, 2);
  REQUIRE(fwd.st.ok());
  REQUIRE(bwd.st.ok());
  CHECK_CLOSE("forward-only loss", fwd.loss, fused.loss, (distill_test::tolerance{1e-6, 1e-6}));
  CHECK_CLOSE("forward-only per-token loss", fwd.per_token, fused.per_token, (distill_test::tolerance{1e-6, 1e-6}));
  CHECK(bwd.grad_student == fused.grad_student);
  CHECK(bwd.grad_teacher == fused.grad_teacher);
  // deterministic: the same call twice gives bit-identical results
  const auto again = run_cuda<float>(k, distill::matmul_precision::fp32);
  CHECK(again.loss == fused.loss);
  CHECK(again.grad_student == fused.grad_student);
  CHECK(again.grad_teacher == fused.grad_teacher);
  // the tensor-core modes on the same case
  for (distill::matmul_precision p : {distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    const auto r = run_cuda<float>(k, p);
    CAPTURE(name(p));
    compare(k, r, mode_tolerance(p, false, c.tau), false);
  }
}

TEST_CASE("CUDA token_nce: unaligned rows take the element-wise loader", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(607);
  for (long pad : {1L, 3L}) {
    config c;
    c.M = 77;
    c.D = 45;
    c.K = 130;
    c.enqueued = 200;
    c.pad = pad;  // row stride D + pad floats: not a multiple of 16 bytes
    c.in_batch = true;
    c.teacher_grad = true;
    const auto k = make_case<float>(g, c);
    for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32}) {
      CAPTURE(pad, name(p));
      compare(k, run_cuda<float>(k, p), mode_tolerance(p, false, c.tau), false);
    }
  }
}

TEST_CASE("CUDA token_nce: NaN propagation, all-masked batch, bad inputs", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(608);
  config c;
  c.M = 9;
  c.D = 33;
  c.K = 100;
  c.enqueued = 100;
  c.reduction = reduction::none;
  SECTION("NaN in one student token: that token only") {
    auto k = make_case<float>(g, c);
    k.student[static_cast<std::size_t>(3 * c.D + 5)] = std::numeric_limits<double>::quiet_NaN();
    const auto r = run_cuda<float>(k, distill::matmul_precision::fp32);
    REQUIRE(r.st.ok());
    for (long i = 0; i < c.M; ++i) CHECK(std::isnan(r.per_token[static_cast<std::size_t>(i)]) == (i == 3));
  }
  SECTION("NaN in a queue row: every token") {
    auto k = make_case<float>(g, c);
    k.history[static_cast<std::size_t>(77 * c.D)] = std::numeric_limits<double>::quiet_NaN();
    for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32}) {
      const auto r = run_cuda<float>(k, p);
      REQUIRE(r.st.ok());
      for (double l : r.per_token) CHECK(std::isnan(l));
    }
  }
  SECTION("every token masked: loss 0, zero gradients (documented; the device mask is not read on the host)") {
    auto c2 = c;
    c2.use_mask = true;
    c2.reduction = reduction::mean;
    auto k = make_case<float>(g, c2);
    std::fill(k.mask.begin(), k.mask.end(), std::uint8_t(0));
    const auto r = run_cuda<float>(k, distill::matmul_precision::fp32);
    REQUIRE(r.st.ok());
    CHECK(r.loss[0] == 0.0);
    for (double v : r.grad_student) CHECK(v == 0.0);
  }
  SECTION("bad inputs") {
    const long M = 4, D = 8, K = 16;
    device_buffer<float> z(std::vector<float>(M * D, 1.0f)), y(std::vector<float>(M * D, 0.5f)), gz(M * D), loss(1);
    cuda_sample_queue<float> dq, wrong, empty;
    REQUIRE(cuda_sample_queue<float>::create(K, D, false, dq).ok());
    REQUIRE(cuda_sample_queue<float>::create(K, D + 1, false, wrong).ok());
    REQUIRE(cuda_sample_queue<float>::create(K, D, false, empty).ok());
    REQUIRE(sample_queue_init_random(cuda{}, dq.queue(), 1).ok());
    REQUIRE(sample_queue_init_random(cuda{}, wrong.queue(), 1).ok());
    token_nce_options opt;
    device_buffer<std::byte> ws(token_nce_queue_workspace_size(cuda{}, M, D, K, opt));
    const auto Z = make_view<cuda_space>(static_cast<const float*>(z.data()), M, D);
    const auto Y = make_view<cuda_space>(static_cast<const float*>(y.data()), M, D);
    const auto L = make_view<cuda_space>(loss.data(), 1);
    const auto G = make_view<cuda_space>(gz.data(), M, D);
    const auto W = make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size()));
    const auto run = [&](const sample_queue<float, cuda_space>& q, cuda_view<const float, 2> zz, cuda_view<std::byte, 1> w,
                         const token_nce_options& o) {
      return token_nce_queue_forward_backward(cuda{}, token_nce_inputs<float, float, cuda_space>{zz, Y}, q,
                                              token_nce_outputs<float, float, cuda_space>{.loss = L, .grad_student = G}, w, o);
    };
    CHECK(run(dq.queue(), Z, W, opt).ok());
    CHECK(run(wrong.queue(), Z, W, opt).code() == errc::shape_mismatch);
    CHECK(run(empty.queue(), Z, W, opt).code() == errc::invalid_argument);
    auto o = opt;
    o.temperature = 0;
    CHECK(run(dq.queue(), Z, W, o).code() == errc::invalid_argument);
    CHECK(run(dq.queue(), Z, make_view<cuda_space>(ws.data(), 64), opt).code() == errc::invalid_argument);
    CHECK(run(dq.queue(), Z, {}, opt).code() == errc::invalid_argument);
    std::vector<float> host_z(M * D, 1.0f);
    const auto st = run(dq.queue(), make_view<cuda_space>(static_cast<const float*>(host_z.data()), M, D), W, opt);
    CHECK(st.code() == errc::wrong_memory_space);
    CHECK(st.message().find("student") != std::string::npos);
    distill_test::cuda_sync();
  }
}

TEST_CASE("CUDA token_nce: a bf16 queue with fp32 in-batch teacher keys keeps strict fp32", "[contrastive][token_nce][cuda]") {
  // The in-batch keys are staged in the teacher's type, not the queue's: in strict fp32 the
  // teacher rows are never rounded to bf16 (the CPU keeps them in float too), so the result
  // meets the fp32 tolerance although the queue is bf16.
  distill_test::rng g(610);
  config c;
  c.M = 130;
  c.D = 300;  // two 256-column chunks
  c.K = 150;
  c.enqueued = 180;
  c.in_batch = true;
  c.teacher_grad = true;
  c.tau = 0.1;
  const auto k = make_case<float>(g, c);
  const auto r = run_cuda<float, bfloat16>(k, distill::matmul_precision::fp32);
  INFO(r.st.to_string());
  compare(k, r, mode_tolerance(distill::matmul_precision::fp32, false, c.tau), false);
}

TEST_CASE("CUDA token_nce: forward only over several 256-column chunks; the in-batch teacher gradient in every mode",
          "[contrastive][token_nce][cuda]") {
  distill_test::rng g(611);
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    config c;
    c.M = 200;
    c.D = 600;  // three chunks: forward only walks them in one block, the gradient in three
    c.K = 320;
    c.enqueued = 400;
    c.in_batch = true;
    c.teacher_grad = true;
    c.use_mask = true;
    c.use_ids = true;
    c.tau = 0.15;
    const auto k = make_case<float>(g, c);
    CAPTURE(name(p));
    const auto fwd = run_cuda<float>(k, p, 1);
    compare(k, fwd, mode_tolerance(p, false, c.tau), false);
    const auto fused = run_cuda<float>(k, p);
    compare(k, fused, mode_tolerance(p, false, c.tau), false);
  }
}

TEST_CASE("CUDA token_nce: the single-buffered key tiles give the double-buffered results", "[contrastive][token_nce][cuda]") {
  // What a device with too little shared memory for two key buffers runs (an A100 with fp32
  // tokens, for instance), forced here on any device through the internal entry point.
  distill_test::rng g(612);
  config c;
  c.M = 150;
  c.D = 400;
  c.K = 260;
  c.enqueued = 300;
  c.in_batch = true;
  c.teacher_grad = true;
  const auto k = make_case<float>(g, c);
  cuda_sample_queue<float> dq;
  REQUIRE(cuda_sample_queue<float>::create(c.K, c.D, false, dq).ok());
  device_buffer<float> dhist(cast<float>(k.history));
  REQUIRE(sample_queue_enqueue(cuda{}, dq.queue(), make_view<cuda_space>(static_cast<const float*>(dhist.data()), c.enqueued, c.D)).ok());
  device_buffer<float> dz(cast<float>(k.student)), dy(cast<float>(k.teacher));
  const auto Z = make_view<cuda_space>(static_cast<const float*>(dz.data()), c.M, c.D);
  const auto Y = make_view<cuda_space>(static_cast<const float*>(dy.data()), c.M, c.D);
  auto opt = options_of(c);
  device_buffer<std::byte> ws(token_nce_queue_workspace_size(cuda{}, c.M, c.D, c.K, opt));
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32}) {
    opt.precision = p;
    std::vector<float> results[2];
    for (int stages : {2, 1}) {
      device_buffer<float> loss(1), per(static_cast<std::size_t>(c.M)), gs(static_cast<std::size_t>(c.M * c.D)),
          gt(static_cast<std::size_t>(c.M * c.D));
      const status st = cuda_detail::nce::run<float, float, float>(
          "token_nce_queue_forward_backward", cuda{}, Z, Y, dq.queue(), {}, {}, loss.view(1), per.view(c.M), gs.view(c.M, c.D),
          gt.view(c.M, c.D), make_view<cuda_space>(ws.data(), static_cast<index_t>(ws.size())), opt, stages);
      INFO(st.to_string());
      REQUIRE(st.ok());
      distill_test::cuda_sync();
      auto& out = results[stages - 1];
      for (const auto* b : {&loss, &per, &gs, &gt})
        for (float v : b->download()) out.push_back(v);
    }
    CAPTURE(name(p));
    CHECK(results[0] == results[1]);  // the same arithmetic in the same order: bit-identical
  }
}

TEST_CASE("CUDA sample_queue: create, then enqueue on a non-blocking stream", "[contrastive][queue][cuda]") {
  // create() zeroes on the default stream, which a non-blocking stream does not wait for: it
  // must finish before returning, or the zeroing could land over the first enqueue.
  const long K = 1 << 18, D = 64, B = K / 2;  // 64 MiB of keys: the zeroing takes a while
  cudaStream_t s;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  distill_test::rng g(613);
  const auto rows = g.normals<float>(static_cast<std::size_t>(B * D), 0, 1);
  device_buffer<float> drows(rows);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(B));
  for (long i = 0; i < B; ++i) ids[static_cast<std::size_t>(i)] = i;
  device_buffer<std::int64_t> dids(ids);
  for (int trial = 0; trial < 3; ++trial) {
    cuda_sample_queue<float> dq;
    REQUIRE(cuda_sample_queue<float>::create(K, D, true, dq).ok());
    enqueue_options o;
    o.normalize = false;
    REQUIRE(sample_queue_enqueue(cuda{s}, dq.queue(), make_view<cuda_space>(static_cast<const float*>(drows.data()), B, D),
                                 make_view<cuda_space>(static_cast<const std::int64_t*>(dids.data()), B), o)
                .ok());
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    const auto keys = device_rows(dq.queue());
    std::vector<std::int64_t> qids(static_cast<std::size_t>(K));
    REQUIRE(cudaMemcpy(qids.data(), dq.queue().ids().data(), qids.size() * 8, cudaMemcpyDeviceToHost) == cudaSuccess);
    std::size_t wrong = 0;
    for (long j = 0; j < K; ++j) {
      for (long d = 0; d < D; ++d) {
        const double want = j < B ? static_cast<double>(rows[static_cast<std::size_t>(j * D + d)]) : 0.0;
        wrong += keys[static_cast<std::size_t>(j * D + d)] != want;
      }
      wrong += qids[static_cast<std::size_t>(j)] != (j < B ? j : no_sample_id);
    }
    CHECK(wrong == 0);
  }
  cudaStreamDestroy(s);
}
