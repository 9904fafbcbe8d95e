// SPDX-License-Identifier: MIT
// The soft-target losses on CUDA. The cases every backend runs (every primitive against the double
// reference on resident and streaming widths, aligned and not, every reduction and option, scalars
// in device memory, dL/dT, diagnostics, accumulate, in place, NaN rows for bad labels, extreme
// logits, the persistent rows of the streaming kernel) come from soft_target_cases.hpp through
// the shared runner; here: f16, bf16 and mixed dtypes against the CPU path, JSD's endpoints,
// determinism, the top-k teacher (near the 48 KiB shared-memory boundary too), the refused
// inputs and NaN for bad device scalars. Exits 77 (skipped) without a GPU.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "distill/losses/topk_teacher.hpp"
#include "support/backend_cuda.cuh"

using test_space = distill::cuda_space;

#include "soft_target_cases.hpp"

using namespace distill;
using namespace st_test;
using distill_test::device_buffer;
using distill_test::tolerance;
using st_cases::all_kinds;
using st_cases::make_batch;

namespace {

/// The CUDA path against the CPU path on identical inputs (float accumulation on both).
template <class TS, class TT>
void compare_with_cpu(ref::kind k, const ref::config& cf, const ref::batch& b, tolerance tl_loss, tolerance tl_grad) {
  const std::size_t n = b.n, c = b.c;
  const auto hs = cast_vec<TS>(b.zs);
  const auto ht = cast_vec<TT>(b.zt);
  std::vector<std::int64_t> labels(n);
  for (std::size_t r = 0; r < n; ++r) labels[r] = static_cast<std::int64_t>((r * 7) % c);
  soft_target_host_extras<float> hex;
  hex.labels = make_view(static_cast<const std::int64_t*>(labels.data()), n);
  float cpu_loss = 0;
  std::vector<TS> cpu_grad(n * c);
  REQUIRE(call(k, pass::forward_backward, cpu{2}, make_view(hs.data(), n, c), make_view(ht.data(), n, c),
               make_view(&cpu_loss, 1), make_view(cpu_grad.data(), n, c), cf, hex)
              .ok());
  device_buffer<TS> ds(hs), dg(n * c);
  device_buffer<TT> dt(ht);
  device_buffer<std::int64_t> dl(labels);
  device_buffer<float> dloss(1);
  device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, static_cast<index_t>(n)));
  soft_target_cuda_extras<float> dex;
  dex.labels = dl.view(n);
  REQUIRE(call(k, pass::forward_backward, cuda{}, make_view<cuda_space>(static_cast<const TS*>(ds.data()), n, c),
               make_view<cuda_space>(static_cast<const TT*>(dt.data()), n, c), dloss.view(1), dg.view(n, c), cf, dex, false,
               ws.view(ws.size()))
              .ok());
  distill_test::cuda_sync();
  INFO(name_of(k) << " n=" << n << " c=" << c << " " << dtype_name<TS>() << "/" << dtype_name<TT>());
  CHECK_CLOSE_SCALAR("loss (CUDA vs CPU)", dloss.download()[0], cpu_loss, tl_loss);
  CHECK_CLOSE("gradient (CUDA vs CPU)", as_double(dg.download()), as_double(cpu_grad), tl_grad);
}

}  // namespace

TEST_CASE("CUDA: f16, bf16 and mixed dtypes, and against the CPU path", "[soft_target][cuda][dtype]") {
  distill_test::rng g(104);
  for (std::size_t c : {std::size_t(300), std::size_t(20000)}) {
    const ref::batch b = make_batch(g, 4, c, 2.0);
    ref::config cf;
    cf.temperature = 2.0;
    const auto tl = float_tolerances<cuda_space>(4, 4);
    const case_options none;
    run_case<float, bfloat16, cuda_space>(ref::kind::kl_teacher_student, cf, b, none, tl, 1);  // bf16 teacher, f32 student
    run_case<float, float16, cuda_space>(ref::kind::kl_teacher_student, cf, b, none, tl, 2);
    run_case<float16, float16, cuda_space>(ref::kind::kl_teacher_student, cf, b, none, widened(tl, {5e-4, 5e-3}), 3);
    run_case<bfloat16, bfloat16, cuda_space>(ref::kind::kl_teacher_student, cf, b, none, widened(tl, {2e-3, 1e-2}), 4);
    cf.k = ref::kind::jsd;
    run_case<float, bfloat16, cuda_space>(ref::kind::jsd, cf, b, none, tl, 5);
    for (ref::kind k : all_kinds) {
      cf.k = k;
      compare_with_cpu<float, float>(k, cf, b, {1e-5, 1e-5}, {1e-7, 1e-4});
      compare_with_cpu<bfloat16, bfloat16>(k, cf, b, {1e-5, 1e-5}, {1e-5, 1e-2});
    }
    compare_with_cpu<float16, float16>(ref::kind::kl_teacher_student, cf, b, {1e-5, 1e-5}, {1e-6, 5e-3});
    compare_with_cpu<float, bfloat16>(ref::kind::kl_teacher_student, cf, b, {1e-5, 1e-5}, {1e-7, 1e-4});
  }
}

TEST_CASE("CUDA: a teacher row that is -inf everywhere is NaN, the others exact, without a synchronisation",
          "[soft_target][cuda]") {
  distill_test::rng g(105);
  for (std::size_t c : {std::size_t(29), std::size_t(12000)}) {
    std::vector<float> s = cast_vec<float>(make_batch(g, 4, c, 2.0).zs), t = cast_vec<float>(make_batch(g, 4, c, 2.0).zt);
    for (std::size_t j = 0; j < c; ++j) t[c + j] = -std::numeric_limits<float>::infinity();
    device_buffer<float> ds(s), dt(t), dg(4 * c), dloss(4);
    soft_target_options o;
    o.reduction = reduction::none;
    REQUIRE(kl_teacher_student_forward_backward(cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), 4, c),
                                                make_view<cuda_space>(static_cast<const float*>(dt.data()), 4, c),
                                                dloss.view(4), dg.view(4, c), {}, {}, o)
                .ok());
    distill_test::cuda_sync();
    const auto l = dloss.download();
    const auto gr = dg.download();
    CHECK(std::isnan(l[1]));
    CHECK(std::isfinite(l[0]));
    CHECK(std::isfinite(l[2]));
    for (std::size_t j = 0; j < c; j += 97) CHECK(std::isnan(gr[c + j]));
  }
}

TEST_CASE("CUDA: JSD endpoints and continuity, DKD identity", "[soft_target][cuda][properties]") {
  distill_test::rng g(106);
  const std::size_t n = 3;
  for (std::size_t c : {std::size_t(50), std::size_t(9001)}) {
    const auto b = make_batch(g, n, c, 1.0);
    const auto s = cast_vec<float>(b.zs), t = cast_vec<float>(b.zt);
    device_buffer<float> ds(s), dt(t), dl(n), dg(n * c);
    auto loss_of = [&](ref::kind k, double beta) {
      ref::config cf;
      cf.k = k;
      cf.jsd_beta = beta;
      cf.reduction = ref::reduction::none;
      REQUIRE(call(k, pass::forward_backward, cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c),
                   make_view<cuda_space>(static_cast<const float*>(dt.data()), n, c), dl.view(n), dg.view(n, c), cf,
                   soft_target_cuda_extras<float>{})
                  .ok());
      distill_test::cuda_sync();
      return dl.download();
    };
    CHECK_CLOSE("JSD(0) = KL(p||q)", loss_of(ref::kind::jsd, 0.0), loss_of(ref::kind::kl_teacher_student, 0.5), (tolerance{1e-6, 1e-5}));
    CHECK_CLOSE("JSD(1) = KL(q||p)", loss_of(ref::kind::jsd, 1.0), loss_of(ref::kind::kl_student_teacher, 0.5), (tolerance{1e-6, 1e-5}));
    CHECK_CLOSE("JSD(1e-6) ~ JSD(0)", loss_of(ref::kind::jsd, 1e-6), loss_of(ref::kind::jsd, 0.0), (tolerance{1e-4, 0}));
    CHECK_CLOSE("JSD(1 - 1e-6) ~ JSD(1)", loss_of(ref::kind::jsd, 1 - 1e-6), loss_of(ref::kind::jsd, 1.0), (tolerance{1e-4, 0}));
  }
}

TEST_CASE("CUDA results are deterministic", "[soft_target][cuda]") {
  distill_test::rng g(107);
  const std::size_t n = 64, c = 20000;
  const auto b = make_batch(g, n, c, 2.0);
  const auto s = cast_vec<float>(b.zs), t = cast_vec<float>(b.zt);
  device_buffer<float> ds(s), dt(t), dl(1), dg(n * c);
  device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, n));
  soft_target_cuda_extras<float> ex;
  std::vector<float> first_g;
  float first_l = 0;
  for (int rep = 0; rep < 3; ++rep) {
    REQUIRE(kl_teacher_student_forward_backward(cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c),
                                                make_view<cuda_space>(static_cast<const float*>(dt.data()), n, c),
                                                dl.view(1), dg.view(n, c), ex, ws.view(ws.size()), soft_target_options{})
                .ok());
    distill_test::cuda_sync();
    if (rep == 0) {
      first_g = dg.download();
      first_l = dl.download()[0];
    } else {
      CHECK(dg.download() == first_g);
      CHECK(dl.download()[0] == first_l);
    }
  }
}

TEST_CASE("CUDA top-k teacher matches the CPU path; bad indices give NaN rows", "[soft_target][cuda][topk]") {
  distill_test::rng g(108);
  for (auto v : {topk_variant::renormalized, topk_variant::rest_bucket}) {
    for (std::size_t c : {std::size_t(40), std::size_t(30000)}) {
      const std::size_t n = 5, k = 16;
      const auto s = cast_vec<float>(random_logits(g, n, c, 2.0));
      std::vector<std::int64_t> idx(n * k);
      std::vector<float> lv(n * k);
      for (std::size_t r = 0; r < n; ++r)
        for (std::size_t j = 0; j < k; ++j) {
          idx[r * k + j] = j % 5 == 4 ? -1 : static_cast<std::int64_t>((r * 13 + j * 7) % c);
          lv[r * k + j] = static_cast<float>(-3.0 - 0.25 * j);
        }
      std::vector<std::int64_t> labels = {0, 3, -100, 7, 1};
      std::vector<float> weights = {1.0f, 0.5f, 2.0f, 1.5f, 0.75f};
      topk_teacher_options o;
      o.variant = v;
      o.temperature = 2.0f;
      o.hard_label_weight = 0.3f;
      o.reduction = reduction::mean;
      // CPU
      float cpu_loss = 0, cpu_dt = 0;
      std::vector<float> cpu_grad(n * c);
      soft_target_host_extras<float> hex;
      hex.labels = make_view(static_cast<const std::int64_t*>(labels.data()), n);
      hex.row_weights = make_view(static_cast<const float*>(weights.data()), n);
      hex.grad_temperature = make_view(&cpu_dt, 1);
      REQUIRE(kl_topk_teacher_student_forward_backward(cpu{2}, make_view(s.data(), n, c), make_view(idx.data(), n, k),
                                                       make_view(lv.data(), n, k), make_view(&cpu_loss, 1),
                                                       make_view(cpu_grad.data(), n, c), hex, {}, o)
                  .ok());
      // CUDA
      device_buffer<float> ds(s), dlv(lv), dw(weights), dloss(1), dgrad(n * c), ddt(1);
      device_buffer<std::int64_t> didx(idx), dlab(labels);
      device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, n));
      soft_target_cuda_extras<float> dex;
      dex.labels = dlab.view(n);
      dex.row_weights = make_view<cuda_space>(static_cast<const float*>(dw.data()), n);
      dex.grad_temperature = ddt.view(1);
      REQUIRE(kl_topk_teacher_student_forward_backward(
                  cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c),
                  make_view<cuda_space>(static_cast<const std::int64_t*>(didx.data()), n, k),
                  make_view<cuda_space>(static_cast<const float*>(dlv.data()), n, k), dloss.view(1), dgrad.view(n, c), dex,
                  ws.view(ws.size()), o)
                  .ok());
      distill_test::cuda_sync();
      INFO("variant " << static_cast<int>(v) << " c=" << c);
      CHECK_CLOSE_SCALAR("loss", dloss.download()[0], cpu_loss, (tolerance{1e-5, 1e-4}));
      CHECK_CLOSE_SCALAR("grad_temperature", ddt.download()[0], cpu_dt, (tolerance{1e-5, 1e-3}));
      CHECK_CLOSE("gradient", dgrad.download(), cpu_grad, (tolerance{1e-7, 1e-4}));
      // a repeated index makes its row NaN (device indices cannot be reported)
      idx[2 * k + 1] = idx[2 * k + 0] = 5;
      labels[2] = 1;
      didx.upload(idx);
      dlab.upload(labels);
      o.reduction = reduction::none;
      device_buffer<float> dl5(n);
      soft_target_cuda_extras<float> labels_only;
      labels_only.labels = dex.labels;
      REQUIRE(kl_topk_teacher_student_forward_backward(
                  cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c),
                  make_view<cuda_space>(static_cast<const std::int64_t*>(didx.data()), n, k),
                  make_view<cuda_space>(static_cast<const float*>(dlv.data()), n, k), dl5.view(n), dgrad.view(n, c),
                  labels_only, {}, o)
                  .ok());
      distill_test::cuda_sync();
      const auto l5 = dl5.download();
      CHECK(std::isnan(l5[2]));
      CHECK(std::isfinite(l5[0]));
    }
  }
}

TEST_CASE("CUDA refuses host memory, bad layouts and a missing workspace", "[soft_target][cuda][errors]") {
  const std::size_t n = 4, c = 8;
  std::vector<float> host(n * c, 0.5f);
  device_buffer<float> ds(host), dt(host), dg(n * c), dl(1);
  const auto sv = make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c);
  const auto tv = make_view<cuda_space>(static_cast<const float*>(dt.data()), n, c);
  soft_target_options o;
  o.reduction = reduction::sum;
  device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, n));
  soft_target_cuda_extras<float> ex;
  CHECK(kl_teacher_student_forward(cuda{}, sv, tv, dl.view(1), ex, ws.view(ws.size()), o).ok());
  // host memory passed as device memory
  auto hv = make_view<cuda_space>(static_cast<const float*>(host.data()), n, c);
  CHECK(kl_teacher_student_forward(cuda{}, hv, tv, dl.view(1), ex, ws.view(ws.size()), o).code() == errc::wrong_memory_space);
  // non-unit inner stride
  auto strided = make_strided_view<cuda_space>(static_cast<const float*>(ds.data()), std::array<index_t, 2>{n, c / 2},
                                               std::array<index_t, 2>{index_t(c), 2});
  auto tv2 = make_view<cuda_space>(static_cast<const float*>(dt.data()), n, c / 2);
  CHECK(kl_teacher_student_forward(cuda{}, strided, tv2, dl.view(1), ex, ws.view(ws.size()), o).code() == errc::unsupported_layout);
  // reduced loss without a workspace, or with one byte too few
  const status st = kl_teacher_student_forward(cuda{}, sv, tv, dl.view(1), {}, {}, o);
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("workspace") != std::string::npos);
  CHECK(kl_teacher_student_forward(cuda{}, sv, tv, dl.view(1), ex, ws.view(ws.size() - 1), o).code() == errc::invalid_argument);
  // class-count mismatch, empty batch, bad options
  CHECK(kl_teacher_student_forward(cuda{}, sv, make_view<cuda_space>(static_cast<const float*>(dt.data()), n, c - 1),
                                   dl.view(1), ex, ws.view(ws.size()), o)
            .code() == errc::shape_mismatch);
  CHECK(kl_teacher_student_forward(cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), 0, c),
                                   make_view<cuda_space>(static_cast<const float*>(dt.data()), 0, c), dl.view(1), ex,
                                   ws.view(ws.size()), o)
            .code() == errc::shape_mismatch);
  jsd_options jo;
  jo.beta = 2.0f;
  CHECK(jsd_forward(cuda{}, sv, tv, dl.view(1), ex, ws.view(ws.size()), jo).code() == errc::invalid_argument);
  o.temperature = 0.0f;
  CHECK(kl_teacher_student_forward(cuda{}, sv, tv, dl.view(1), ex, ws.view(ws.size()), o).code() == errc::invalid_argument);
  // misaligned device pointer
  const float* off = reinterpret_cast<const float*>(reinterpret_cast<const char*>(ds.data()) + 2);
  CHECK(kl_teacher_student_forward(cuda{}, make_view<cuda_space>(off, 2, 4), make_view<cuda_space>(static_cast<const float*>(dt.data()), 2, 4),
                                   dl.view(1), ex, ws.view(ws.size()), soft_target_options{})
            .code() == errc::misaligned);
}

TEST_CASE("CUDA: a bad device temperature or normaliser makes the call's results NaN (the CPU refuses it)",
          "[soft_target][cuda][errors]") {
  const std::size_t n = 3, c = 7;
  distill_test::rng g(109);
  const auto s = cast_vec<float>(random_logits(g, n, c, 1.0)), t = cast_vec<float>(random_logits(g, n, c, 1.0));
  device_buffer<float> ds(s), dt(t), dl(1), dg(n * c), scalar(1);
  device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, n));
  const auto sv = make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c);
  const auto tv = make_view<cuda_space>(static_cast<const float*>(dt.data()), n, c);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const bool temperature : {true, false}) {
    for (const float bad : temperature ? std::vector<float>{0.0f, -1.0f, nan} : std::vector<float>{-1.0f, nan}) {
      INFO((temperature ? "temperature " : "normalizer ") << bad);
      scalar.upload(std::vector<float>{bad});
      soft_target_cuda_extras<float> ex;
      if (temperature) ex.temperature = make_view<cuda_space>(static_cast<const float*>(scalar.data()), 1);
      else ex.normalizer = make_view<cuda_space>(static_cast<const float*>(scalar.data()), 1);
      REQUIRE(kl_teacher_student_forward_backward(cuda{}, sv, tv, dl.view(1), dg.view(n, c), ex, ws.view(ws.size())).ok());
      distill_test::cuda_sync();
      CHECK(std::isnan(dl.download()[0]));
      if (temperature)
        for (float x : dg.download()) CHECK(std::isnan(x));
      // the CPU refuses the same value
      float cpu_loss = 0, host_scalar = bad;
      std::vector<float> cpu_grad(n * c);
      soft_target_host_extras<float> hex;
      if (temperature) hex.temperature = make_view(static_cast<const float*>(&host_scalar), 1);
      else hex.normalizer = make_view(static_cast<const float*>(&host_scalar), 1);
      CHECK(kl_teacher_student_forward_backward(cpu{1}, make_view(s.data(), n, c), make_view(t.data(), n, c),
                                                make_view(&cpu_loss, 1), make_view(cpu_grad.data(), n, c), hex, {})
                .code() == errc::invalid_argument);
    }
  }
}

TEST_CASE("CUDA: int32 labels give the int64 results", "[soft_target][cuda]") {
  const std::size_t n = 6, c = 9;
  distill_test::rng g(110);
  const auto s = cast_vec<float>(random_logits(g, n, c, 1.5)), t = cast_vec<float>(random_logits(g, n, c, 1.5));
  std::vector<std::int64_t> y64 = {0, 8, -100, 3, 4, 1};
  std::vector<std::int32_t> y32(y64.begin(), y64.end());
  device_buffer<float> ds(s), dt(t), dl(1), dg(n * c);
  device_buffer<std::int64_t> d64(y64);
  device_buffer<std::int32_t> d32(y32);
  device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, n));
  soft_target_options o;
  o.hard_label_weight = 0.4f;
  auto run = [&](label_view<cuda_space> labels) {
    soft_target_cuda_extras<float> ex;
    ex.labels = labels;
    REQUIRE(kl_teacher_student_forward_backward(cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c),
                                                make_view<cuda_space>(static_cast<const float*>(dt.data()), n, c), dl.view(1),
                                                dg.view(n, c), ex, ws.view(ws.size()), o)
                .ok());
    distill_test::cuda_sync();
    std::vector<float> out = dg.download();
    out.push_back(dl.download()[0]);
    return out;
  };
  CHECK(run(d32.view(n)) == run(d64.view(n)));
}

TEST_CASE("CUDA top-k teacher near the 48 KiB shared-memory boundary (the kernel's static memory counts)",
          "[soft_target][cuda][topk]") {
  // Dynamic shared memory C / 8 + 12 k bytes: just under 48 KiB, where static + dynamic passes
  // 48 KiB without the opt-in attribute (such launches used to fail), and just over.
  distill_test::rng g(112);
  const std::size_t n = 2, k = 4;
  for (std::size_t c : {std::size_t(392032), std::size_t(393216)}) {
    INFO("c=" << c << ", dynamic shared memory " << (c / 32) * 4 + 12 * k << " bytes");
    const auto s = cast_vec<float>(random_logits(g, n, c, 2.0));
    std::vector<std::int64_t> idx(n * k);
    std::vector<float> lv(n * k);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < k; ++j) {
        idx[r * k + j] = static_cast<std::int64_t>((r * 104729 + j * 7919) % c);
        lv[r * k + j] = static_cast<float>(-1.0 - 0.5 * j);
      }
    topk_teacher_options o;
    o.temperature = 2.0f;
    float cpu_loss = 0;
    std::vector<float> cpu_grad(n * c);
    REQUIRE(kl_topk_teacher_student_forward_backward(cpu{2}, make_view(s.data(), n, c), make_view(idx.data(), n, k),
                                                     make_view(lv.data(), n, k), make_view(&cpu_loss, 1),
                                                     make_view(cpu_grad.data(), n, c), soft_target_host_extras<float>{}, {}, o)
                .ok());
    device_buffer<float> ds(s), dlv(lv), dloss(1), dgrad(n * c);
    device_buffer<std::int64_t> didx(idx);
    device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, n));
    const status st = kl_topk_teacher_student_forward_backward(
        cuda{}, make_view<cuda_space>(static_cast<const float*>(ds.data()), n, c),
        make_view<cuda_space>(static_cast<const std::int64_t*>(didx.data()), n, k),
        make_view<cuda_space>(static_cast<const float*>(dlv.data()), n, k), dloss.view(1), dgrad.view(n, c),
        soft_target_cuda_extras<float>{}, ws.view(ws.size()), o);
    INFO(st.to_string());
    REQUIRE(st.ok());
    distill_test::cuda_sync();
    CHECK_CLOSE_SCALAR("loss", dloss.download()[0], cpu_loss, (tolerance{1e-5, 1e-4}));
    CHECK_CLOSE("gradient", dgrad.download(), cpu_grad, (tolerance{1e-8, 1e-4}));
  }
}
