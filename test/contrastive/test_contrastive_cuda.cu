// SPDX-License-Identifier: MIT
// Contrastive family on CUDA: the token-wise InfoNCE cases every backend runs
// (nce_backend_cases.hpp: the double reference on random cases in strict fp32, TF32 and BF16
// modes with float, bfloat16 and half tokens, pass agreement, NaN, masks, edge cases), then what
// only CUDA has: the sample queue (enqueue, init, save/load through the host) against the CPU
// queue, the momentum update against hand values, mixed token and queue types, a large case
// against the CPU path, the element-wise and single-buffered loaders, D over several 256-column
// chunks, an all-masked batch, bad inputs.
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
#include "support/backend_cuda.cuh"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using test_space = distill::cuda_space;

#include "contrastive/nce_backend_cases.hpp"
#include "contrastive/queue_cases.hpp"

using namespace distill;
using namespace nce_test;
using distill_test::device_buffer;

namespace {

/// A float queue's K x D keys (every slot), in double.
std::vector<double> device_rows(const sample_queue<float, cuda_space>& q) {
  std::vector<float> h(static_cast<std::size_t>(q.capacity() * q.dim()));
  REQUIRE(cudaMemcpy2D(h.data(), static_cast<std::size_t>(q.dim()) * sizeof(float), q.keys().data(),
                       static_cast<std::size_t>(q.keys().stride(0)) * sizeof(float), static_cast<std::size_t>(q.dim()) * sizeof(float),
                       static_cast<std::size_t>(q.capacity()), cudaMemcpyDeviceToHost) == cudaSuccess);
  return std::vector<double>(h.begin(), h.end());
}
std::vector<double> host_rows(const sample_queue<float, host_space>& q) {
  const auto k = q.keys();
  return std::vector<double>(k.data(), k.data() + q.capacity() * q.dim());  // host_sample_queue: dense rows
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
TEST_CASE("CUDA token_nce: bf16 tokens against a float queue (converting loader for in-batch keys)", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(609);
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    config c{.M = 150, .D = 96, .K = 200, .enqueued = 260, .in_batch = true, .teacher_grad = true, .tau = 0.2};
    const auto k = make_case<bfloat16>(g, c);
    CAPTURE(name(p));
    // the float queue holds the bf16-rounded history (make_case rounds through bf16) exactly
    check_against_reference(k, run_library<bfloat16, float, cuda_space>(k, {.precision = p}),
                            expected_accuracy<bfloat16, float, cuda_space>(p, c.tau));
  }
}

TEST_CASE("CUDA token_nce: agrees with the CPU path on a larger case; forward/backward/fused agree", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(606);
  // more rows enqueued than K: the queue wraps around
  config c{.M = 700, .D = 256, .K = 5000, .enqueued = 6100, .batches = 3, .queue_ids = true, .in_batch = true,
           .use_mask = true, .use_ids = true, .teacher_grad = true, .tau = 0.07, .threads = 2, .id_range = 50};
  const auto k = make_case<float>(g, c);
  const auto fused = run_library<float, float, cuda_space>(k);
  const auto host = run_library<float, float, host_space>(k);
  REQUIRE(fused.st.ok());
  REQUIRE(host.st.ok());
  CHECK(fused.canaries_ok);
  CHECK_CLOSE("queue vs CPU", fused.queue_keys, host.queue_keys, (distill_test::tolerance{1e-6, 1e-6}));
  CHECK(fused.queue_ids == host.queue_ids);
  CHECK_CLOSE_SCALAR("loss vs CPU", fused.loss[0], host.loss[0], (distill_test::tolerance{1e-4, 1e-4}));
  CHECK_CLOSE("per-token vs CPU", fused.per_token, host.per_token, (distill_test::tolerance{1e-4, 1e-4}));
  CHECK_CLOSE("grad_student vs CPU", fused.grad_student, host.grad_student, scaled(host.grad_student, 1e-3));
  CHECK_CLOSE("grad_teacher vs CPU", fused.grad_teacher, host.grad_teacher, scaled(host.grad_teacher, 1e-3));
  // backward only gives the fused pass's numbers (same kernels, same plan); forward only runs
  // one block per (tokens, key split) instead of one per 256 columns, so its key splits (and
  // their merge order) may differ
  const auto fwd = run_library<float, float, cuda_space>(k, {.which = pass::forward});
  const auto bwd = run_library<float, float, cuda_space>(k, {.which = pass::backward});
  REQUIRE(fwd.st.ok());
  REQUIRE(bwd.st.ok());
  CHECK_CLOSE("forward-only loss", fwd.loss, fused.loss, (distill_test::tolerance{1e-6, 1e-6}));
  CHECK_CLOSE("forward-only per-token loss", fwd.per_token, fused.per_token, (distill_test::tolerance{1e-6, 1e-6}));
  CHECK(bwd.grad_student == fused.grad_student);
  CHECK(bwd.grad_teacher == fused.grad_teacher);
  // deterministic: the same call twice gives bit-identical results
  const auto again = run_library<float, float, cuda_space>(k);
  CHECK(again.loss == fused.loss);
  CHECK(again.grad_student == fused.grad_student);
  CHECK(again.grad_teacher == fused.grad_teacher);
  // the tensor-core modes on the same case
  for (distill::matmul_precision p : {distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    CAPTURE(name(p));
    nce_cases::check<float>(k, run_library<float, float, cuda_space>(k, {.precision = p}), p);
  }
}

TEST_CASE("CUDA token_nce: unaligned rows take the element-wise loader", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(607);
  for (long pad : {1L, 3L}) {
    // row stride D + pad floats: not a multiple of 16 bytes
    config c{.M = 77, .D = 45, .K = 130, .enqueued = 200, .in_batch = true, .teacher_grad = true, .pad = pad};
    const auto k = make_case<float>(g, c);
    for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32}) {
      CAPTURE(pad, name(p));
      nce_cases::check<float>(k, run_library<float, float, cuda_space>(k, {.precision = p}), p);
    }
  }
}

TEST_CASE("CUDA token_nce: all-masked batch, bad inputs", "[contrastive][token_nce][cuda]") {
  distill_test::rng g(608);
  config c{.M = 9, .D = 33, .K = 100, .enqueued = 100, .reduction = reduction::none};
  SECTION("every token masked: loss 0, zero gradients (documented; the device mask is not read on the host)") {
    auto c2 = c;
    c2.use_mask = true;
    c2.reduction = reduction::mean;
    auto k = make_case<float>(g, c2);
    std::fill(k.mask.begin(), k.mask.end(), std::uint8_t(0));
    const auto r = run_library<float, float, cuda_space>(k);
    REQUIRE(r.st.ok());
    CHECK(r.canaries_ok);
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
  // D = 300: two 256-column chunks
  config c{.M = 130, .D = 300, .K = 150, .enqueued = 180, .in_batch = true, .teacher_grad = true, .tau = 0.1};
  const auto k = make_case<float>(g, c);
  check_against_reference(k, run_library<float, bfloat16, cuda_space>(k),
                          expected_accuracy<float, bfloat16, cuda_space>(distill::matmul_precision::fp32, c.tau));
}

TEST_CASE("CUDA token_nce: forward only over several 256-column chunks; the in-batch teacher gradient in every mode",
          "[contrastive][token_nce][cuda]") {
  distill_test::rng g(611);
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32, distill::matmul_precision::bf16}) {
    // D = 600, three chunks: forward only walks them in one block, the gradient in three
    config c{.M = 200, .D = 600, .K = 320, .enqueued = 400, .in_batch = true, .use_mask = true, .use_ids = true,
             .teacher_grad = true, .tau = 0.15};
    const auto k = make_case<float>(g, c);
    CAPTURE(name(p));
    nce_cases::check<float>(k, run_library<float, float, cuda_space>(k, {.precision = p, .which = pass::forward}), p);
    nce_cases::check<float>(k, run_library<float, float, cuda_space>(k, {.precision = p}), p);
  }
}

TEST_CASE("CUDA token_nce: the single-buffered key tiles give the double-buffered results", "[contrastive][token_nce][cuda]") {
  // What a device with too little shared memory for two key buffers runs (an A100 with fp32
  // tokens, for instance), forced here on any device through the internal entry point.
  distill_test::rng g(612);
  config c{.M = 150, .D = 400, .K = 260, .enqueued = 300, .in_batch = true, .teacher_grad = true};
  const auto k = make_case<float>(g, c);
  distill_test::backend<cuda_space>::session run;
  queue_storage<float, cuda_space> qs(c, false);
  distill_test::guarded_tensor<float, 2, cuda_space> hist({c.enqueued, c.D}), z({c.M, c.D}), y({c.M, c.D});
  hist.set(k.history);
  z.set(k.student);
  y.set(k.teacher);
  REQUIRE(sample_queue_enqueue(run.ctx, qs.queue, hist.view<const float>()).ok());
  auto opt = options_of(c);
  distill_test::workspace<cuda_space> ws(token_nce_queue_workspace_size(run.ctx, c.M, c.D, c.K, opt));
  for (distill::matmul_precision p : {distill::matmul_precision::fp32, distill::matmul_precision::tf32}) {
    opt.precision = p;
    std::vector<double> results[2];
    for (int stages : {2, 1}) {
      distill_test::guarded_array<float, cuda_space> loss(1), per(static_cast<std::size_t>(c.M));
      distill_test::guarded_tensor<float, 2, cuda_space> gs({c.M, c.D}), gt({c.M, c.D});
      const status st = cuda_detail::nce::run<float, float, float>("token_nce_queue_forward_backward", run.ctx, z.view<const float>(),
                                                                   y.view<const float>(), qs.queue, {}, {}, loss.view(), per.view(),
                                                                   gs.view(), gt.view(), ws.view(), opt, stages);
      INFO(st.to_string());
      REQUIRE(st.ok());
      run.sync();
      auto& out = results[stages - 1];
      for (const auto& v : {loss.get(), per.get(), gs.get(), gt.get()}) out.insert(out.end(), v.begin(), v.end());
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
