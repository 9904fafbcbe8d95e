// SPDX-License-Identifier: MIT
// The soft-target losses on CUDA: every primitive against the double reference and against the
// CPU path, in f32, f16, bf16 and mixed dtypes, over shapes that take the register-resident
// kernel (C <= 8192) and the streaming kernel (C > 8192), aligned and unaligned rows, every
// reduction and option (labels, ignore_index, weights, device normalizer, device temperature,
// dL/dT, diagnostics, accumulate, in place, hard-label term), canaries around and inside every
// output, NaN rows for masked rows and bad labels, determinism, the top-k teacher, and the
// refused inputs. Exits 77 (skipped) without a GPU.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "distill/losses/topk_teacher.hpp"
#include "soft_target_test_util.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/finite_diff.hpp"

using namespace distill;
using namespace st_test;
using distill_test::device_buffer;
using distill_test::tolerance;

namespace {

/// A device matrix (rows x cols, row stride ld) with canary bands and canary row padding.
template <class T>
struct device_matrix {
  static constexpr std::size_t band = 64;
  std::size_t n, c, ld;
  device_buffer<T> buf;
  static T canary() { return store<T>(-12345.0f); }
  device_matrix(const std::vector<double>& v, std::size_t n_, std::size_t c_, std::size_t ld_)
      : n(n_), c(c_), ld(ld_), buf(n_ * ld_ + 2 * band) {
    std::vector<T> h(n * ld + 2 * band, canary());
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t k = 0; k < c; ++k) h[band + r * ld + k] = v.empty() ? store<T>(0.0f) : store<T>(v[r * c + k]);
    buf.upload(h);
  }
  T* data() const { return buf.data() + band; }
  template <class U = T>
  cuda_view<U, 2> view() const {
    return make_strided_view<cuda_space>(static_cast<U*>(data()), std::array<index_t, 2>{index_t(n), index_t(c)},
                                         std::array<index_t, 2>{index_t(ld), 1});
  }
  std::vector<double> values() const {
    const auto h = buf.download();
    std::vector<double> out(n * c);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t k = 0; k < c; ++k) out[r * c + k] = load<float>(h[band + r * ld + k]);
    return out;
  }
  bool canaries_intact() const {
    const auto h = buf.download();
    const T cn = canary();
    auto same = [&](const T& x) { return std::memcmp(&x, &cn, sizeof(T)) == 0; };
    for (std::size_t i = 0; i < band; ++i)
      if (!same(h[i]) || !same(h[band + n * ld + i])) return false;
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t k = c; k < ld; ++k)
        if (!same(h[band + r * ld + k])) return false;
    return true;
  }
};

/// A device vector of floats with canaries.
struct device_floats {
  static constexpr std::size_t band = 16;
  std::size_t n;
  device_buffer<float> buf;
  explicit device_floats(std::size_t n_, float fill = -777.0f) : n(n_), buf(std::vector<float>(n_ + 2 * band, fill)) {}
  float* data() const { return buf.data() + band; }
  cuda_view<float, 1> view() const { return make_view<cuda_space>(data(), n); }
  std::vector<double> values() const {
    const auto h = buf.download();
    return std::vector<double>(h.begin() + band, h.begin() + band + static_cast<long>(n));
  }
  bool intact() const {
    const auto h = buf.download();
    for (std::size_t i = 0; i < band; ++i)
      if (h[i] != -777.0f || h[band + n + i] != -777.0f) return false;
    return true;
  }
};

struct cuda_case {
  std::size_t pad = 0;          // row padding (odd values break 16-byte alignment)
  bool labels = false, weights = false, diagnostics = false, grad_temperature = false;
  bool device_normalizer = false, device_temperature = false;
  bool in_place = false, accumulate = false;
  bool bad_label = false;       // one label == C: that row must come out NaN
};

tolerances gpu_tol(double max_logit_over_t, double c_t) {
  const double s = 1 + max_logit_over_t;
  return {{1e-5 * s * c_t, 1e-4}, {3e-6 * s * c_t, 3e-4}, {1e-5 * s, 1e-4}, {2e-4 * s * c_t, 1e-3}};
}
tolerances widen_for(tolerances t, double atol_grad, double rtol_grad) {
  t.grad = {std::max(t.grad.atol, atol_grad), std::max(t.grad.rtol, rtol_grad)};
  return t;
}

template <class TS, class TT>
void run_cuda_case(ref::kind k, const ref::config& cf_in, ref::batch b, const cuda_case& co, const tolerances& tl,
                   std::uint64_t salt) {
  distill_test::rng g(salt + 5151);
  ref::config cf = cf_in;
  auto as_float = [](double v) {
    volatile float f = static_cast<float>(v);
    return static_cast<double>(f);
  };
  cf.temperature = as_float(cf.temperature);
  cf.soft_weight = as_float(cf.soft_weight);
  cf.hard_weight = as_float(cf.hard_weight);
  cf.grad_scale = as_float(cf.grad_scale);
  cf.jsd_beta = as_float(cf.jsd_beta);
  cf.dkd_alpha = as_float(cf.dkd_alpha);
  cf.dkd_beta = as_float(cf.dkd_beta);
  const std::size_t n = b.n, c = b.c, ld = c + co.pad;
  // inputs as the device will see them
  for (auto& x : b.zs) x = load<float>(store<TS>(x));
  for (auto& x : b.zt) x = load<float>(store<TT>(x));
  if (co.labels || k == ref::kind::dkd) {
    b.labels.resize(n);
    for (std::size_t r = 0; r < n; ++r)
      b.labels[r] = (co.labels && n > 1 && g.coin(0.2)) ? cf.ignore_index : g.integer(0, static_cast<std::int64_t>(c) - 1);
  }
  std::size_t bad_row = n;
  if (co.bad_label) {
    bad_row = n / 2;
    b.labels[bad_row] = static_cast<std::int64_t>(c);  // out of range: the row must be NaN
  }
  if (co.weights) {
    b.weights.resize(n);
    for (auto& w : b.weights) w = static_cast<float>(g.uniform(0.1, 2.0));
  }
  if (co.device_normalizer) b.normalizer = 13.0;
  // the reference (with the bad row treated as ignored, then checked separately)
  ref::batch rb = b;
  if (co.bad_label) rb.labels[bad_row] = cf.ignore_index;
  const ref::result want = ref::evaluate(cf, rb);

  const device_matrix<TT> t(b.zt, n, c, ld);
  device_buffer<std::int64_t> labels(b.labels.empty() ? std::vector<std::int64_t>{0} : b.labels);
  std::vector<float> wf(b.weights.begin(), b.weights.end());
  device_buffer<float> weights(wf.empty() ? std::vector<float>{0} : wf);
  device_buffer<float> normalizer(std::vector<float>{13.0f}), temperature(std::vector<float>{static_cast<float>(cf.temperature)});
  device_floats d_kl(n), d_ent(n), d_top(n), d_hard(n), d_t(1);
  device_buffer<std::byte> ws(soft_target_workspace_size(cuda{}, static_cast<index_t>(n)));
  soft_target_cuda_extras<float> ex;
  if (!b.labels.empty()) ex.labels = labels.view(n);
  if (co.weights) ex.row_weights = make_view<cuda_space>(static_cast<const float*>(weights.data()), n);
  if (co.device_normalizer) ex.normalizer = make_view<cuda_space>(static_cast<const float*>(normalizer.data()), 1);
  if (co.device_temperature) ex.temperature = make_view<cuda_space>(static_cast<const float*>(temperature.data()), 1);
  if (co.diagnostics) {
    ex.row_kl = d_kl.view();
    ex.row_teacher_entropy = d_ent.view();
    ex.row_top1_agreement = d_top.view();
    if (!b.labels.empty()) ex.row_hard_loss = d_hard.view();
  }
  const std::size_t loss_n = cf.reduction == ref::reduction::none ? n : 1;
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  ref::config cf_call = cf;
  if (co.device_temperature) cf_call.temperature = 1234.5;  // must be ignored in favour of the device value

  std::vector<double> grad_first;
  for (pass p : {pass::forward, pass::backward, pass::forward_backward}) {
    INFO(name_of(k) << " " << name_of(p) << " n=" << n << " c=" << c << " pad=" << co.pad << " T=" << cf.temperature
                    << " red=" << static_cast<int>(cf.reduction) << " " << dtype_name<TS>() << "/" << dtype_name<TT>());
    device_matrix<TS> s(b.zs, n, c, ld);
    const double acc0 = 0.125;
    device_matrix<TS> grad(co.accumulate ? std::vector<double>(n * c, acc0) : std::vector<double>{}, n, c, ld);
    device_floats loss(loss_n);
    auto ex_p = ex;
    if (co.grad_temperature && p != pass::forward) ex_p.grad_temperature = d_t.view();
    auto gv = co.in_place ? s.template view<TS>() : grad.template view<TS>();
    const status st = call(k, p, cuda{stream}, s.template view<const TS>(), t.template view<const TT>(), loss.view(), gv,
                           cf_call, ex_p, co.accumulate, ws.view(ws.size()));
    INFO(st.to_string());
    REQUIRE(st.ok());
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    CHECK(loss.intact());
    if (p != pass::backward) {
      auto got = loss.values();
      if (co.bad_label) {
        if (cf.reduction == ref::reduction::none) {
          CHECK(std::isnan(got[bad_row]));
          got[bad_row] = want.loss[bad_row];
        } else {
          CHECK(std::isnan(got[0]));
          got[0] = want.loss[0];
        }
      }
      if (!(co.bad_label && cf.reduction != ref::reduction::none)) CHECK_CLOSE("loss", got, want.loss, tl.loss);
    }
    if (p != pass::forward) {
      const device_matrix<TS>& gm = co.in_place ? s : grad;
      CHECK(gm.canaries_intact());
      auto gd = gm.values();
      if (co.accumulate && !co.in_place)
        for (auto& x : gd) x -= load<float>(store<TS>(acc0));
      if (co.bad_label) {
        for (std::size_t j = 0; j < c; ++j) {
          CHECK(std::isnan(gd[bad_row * c + j]));
          gd[bad_row * c + j] = want.grad[bad_row * c + j];
        }
      }
      CHECK_CLOSE("grad_student", gd, want.grad, tl.grad);
      if (grad_first.empty()) grad_first = gd;
      else CHECK(gd == grad_first);  // backward and fused write the same gradient
    }
    if (co.diagnostics && !co.bad_label) {
      CHECK_CLOSE("row_kl", d_kl.values(), want.row_kl, tl.diag);
      CHECK_CLOSE("row_teacher_entropy", d_ent.values(), want.row_entropy, tl.diag);
      CHECK(d_top.values() == want.row_top1);
      if (!b.labels.empty()) CHECK_CLOSE("row_hard_loss", d_hard.values(), want.row_hard, tl.diag);
      CHECK((d_kl.intact() && d_ent.intact() && d_top.intact() && d_hard.intact()));
    }
    if (co.grad_temperature && p != pass::forward && !co.bad_label) {
      auto f = [&](const std::vector<double>& tt) {
        ref::config c2 = cf;
        c2.temperature = tt[0];
        return ref::total_loss(c2, rb);
      };
      const double fd = distill_test::numeric_gradient(f, std::vector<double>{cf.temperature}, 1e-5)[0] * cf.grad_scale;
      CHECK_CLOSE_SCALAR("grad_temperature", d_t.values()[0], fd, tl.dt);
      CHECK(d_t.intact());
    }
  }
  cudaStreamDestroy(stream);
}

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

const ref::kind all_kinds[] = {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd,
                               ref::kind::soft_cross_entropy, ref::kind::dkd};

ref::batch make_batch(distill_test::rng& g, std::size_t n, std::size_t c, double sd, double masked = 0.0) {
  ref::batch b;
  b.n = n, b.c = c;
  b.zs = random_logits(g, n, c, sd, masked);
  b.zt = random_logits(g, n, c, sd, masked);
  return b;
}

}  // namespace

TEST_CASE("CUDA dense losses match the reference: resident and streaming kernels, aligned and not", "[soft_target][cuda]") {
  distill_test::rng g(101);
  // (n, C, pad): resident kernel up to C = 8192, streaming beyond; odd pads break alignment
  const std::size_t shapes[][3] = {{1, 3, 0}, {5, 17, 3}, {9, 64, 0}, {4, 3129, 0}, {3, 4096, 4},
                                   {2, 8192, 0}, {2, 8193, 1}, {2, 32000, 0}, {1, 150000, 0}};
  for (ref::kind k : all_kinds) {
    for (auto [n, c, pad] : shapes) {
      ref::config cf;
      cf.k = k;
      cf.temperature = 2.0;
      cf.jsd_beta = 0.3;
      cf.reduction = c % 2 ? ref::reduction::batchmean : ref::reduction::sum;
      const ref::batch b = make_batch(g, n, c, 2.0);
      cuda_case co;
      co.pad = pad;
      run_cuda_case<float, float>(k, cf, b, co, gpu_tol(4, 4), n * c);
      run_cuda_case<bfloat16, bfloat16>(k, cf, b, co, widen_for(gpu_tol(4, 4), 2e-3, 1e-2), n * c + 1);
    }
  }
}

TEST_CASE("CUDA: every reduction and option, device normalizer and temperature, dL/dT, diagnostics", "[soft_target][cuda]") {
  distill_test::rng g(102);
  for (ref::kind k : all_kinds) {
    for (ref::reduction red : {ref::reduction::none, ref::reduction::sum, ref::reduction::mean, ref::reduction::batchmean}) {
      for (std::size_t c : {std::size_t(37), std::size_t(9000)}) {  // resident, streaming
        ref::config cf;
        cf.k = k;
        cf.reduction = red;
        cf.temperature = c == 37 ? 1.0 : 2.5;
        cf.soft_weight = 0.6;
        cf.hard_weight = 0.4;
        cf.grad_scale = 1.5;
        cf.jsd_beta = 0.7;
        cf.dkd_alpha = 0.8, cf.dkd_beta = 4.0;
        cuda_case co;
        co.labels = co.weights = co.diagnostics = co.grad_temperature = true;
        co.device_temperature = true;
        co.device_normalizer = red == ref::reduction::mean || red == ref::reduction::batchmean;
        const ref::batch b = make_batch(g, 7, c, 1.5);
        run_cuda_case<float, float>(k, cf, b, co, gpu_tol(4, 7), c + static_cast<std::size_t>(red));
        co.device_normalizer = false;  // mean counts its divisor on the device
        co.device_temperature = false;
        run_cuda_case<float, float>(k, cf, b, co, gpu_tol(4, 7), c + 10);
      }
    }
  }
}

TEST_CASE("CUDA: in place, accumulate, out-of-range labels give NaN rows", "[soft_target][cuda]") {
  distill_test::rng g(103);
  for (ref::kind k : all_kinds) {
    for (std::size_t c : {std::size_t(100), std::size_t(10000)}) {
      ref::config cf;
      cf.k = k;
      cf.temperature = 3.0;
      cf.hard_weight = 0.2;
      const ref::batch b = make_batch(g, 6, c, 2.0);
      cuda_case inplace;
      inplace.in_place = true;
      inplace.labels = true;
      run_cuda_case<float, float>(k, cf, b, inplace, gpu_tol(4, 9), 1);
      run_cuda_case<bfloat16, bfloat16>(k, cf, b, inplace, widen_for(gpu_tol(4, 9), 2e-3, 1e-2), 2);
      cuda_case acc;
      acc.accumulate = true;
      acc.labels = true;
      run_cuda_case<float, float>(k, cf, b, acc, gpu_tol(4, 9), 3);
      cuda_case bad;
      bad.labels = true;
      bad.bad_label = true;
      cf.reduction = ref::reduction::none;
      run_cuda_case<float, float>(k, cf, b, bad, gpu_tol(4, 9), 4);
    }
  }
}

TEST_CASE("CUDA: f16, bf16 and mixed dtypes", "[soft_target][cuda][dtype]") {
  distill_test::rng g(104);
  for (std::size_t c : {std::size_t(300), std::size_t(20000)}) {
    const ref::batch b = make_batch(g, 4, c, 2.0);
    ref::config cf;
    cf.temperature = 2.0;
    const auto tl = gpu_tol(4, 4);
    run_cuda_case<float, bfloat16>(ref::kind::kl_teacher_student, cf, b, {}, tl, 1);  // bf16 teacher, f32 student
    run_cuda_case<float, float16>(ref::kind::kl_teacher_student, cf, b, {}, tl, 2);
    run_cuda_case<float16, float16>(ref::kind::kl_teacher_student, cf, b, {}, widen_for(tl, 5e-4, 5e-3), 3);
    run_cuda_case<bfloat16, bfloat16>(ref::kind::kl_teacher_student, cf, b, {}, widen_for(tl, 2e-3, 1e-2), 4);
    cf.k = ref::kind::jsd;
    run_cuda_case<float, bfloat16>(ref::kind::jsd, cf, b, {}, tl, 5);
    // against the CPU path on the same inputs
    for (ref::kind k : all_kinds) {
      cf.k = k;
      compare_with_cpu<float, float>(k, cf, b, {1e-5, 1e-5}, {1e-7, 1e-4});
      compare_with_cpu<bfloat16, bfloat16>(k, cf, b, {1e-5, 1e-5}, {1e-5, 1e-2});
    }
    compare_with_cpu<float16, float16>(ref::kind::kl_teacher_student, cf, b, {1e-5, 1e-5}, {1e-6, 5e-3});
    compare_with_cpu<float, bfloat16>(ref::kind::kl_teacher_student, cf, b, {1e-5, 1e-5}, {1e-7, 1e-4});
  }
}

TEST_CASE("CUDA: extreme logits, -inf masks and fully masked rows", "[soft_target][cuda]") {
  distill_test::rng g(105);
  for (std::size_t c : {std::size_t(29), std::size_t(12000)}) {
    ref::batch b = make_batch(g, 4, c, 3e3);
    for (std::size_t i = 0; i < b.zs.size(); i += 7) b.zs[i] = (i % 2 ? 1e4 : -1e4);
    ref::config cf;
    cf.temperature = 4.0;
    run_cuda_case<float, float>(ref::kind::kl_teacher_student, cf, b, {}, gpu_tol(1e4 / 4, 16), 1);
    ref::batch m = make_batch(g, 5, c, 2.0, 0.3);
    for (std::size_t i = 0; i < m.zs.size(); ++i)
      if (std::isinf(m.zs[i]) || std::isinf(m.zt[i])) m.zs[i] = m.zt[i] = -ref::inf;
    for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd, ref::kind::soft_cross_entropy}) {
      cf.k = k;
      cuda_case co;
      co.diagnostics = co.grad_temperature = true;
      run_cuda_case<float, float>(k, cf, m, co, gpu_tol(2, 16), 2);
    }
    // a teacher row that is -inf everywhere: that row NaN, the others exact, status ok (no sync)
    std::vector<float> s = cast_vec<float>(b.zs), t = cast_vec<float>(make_batch(g, 4, c, 2.0).zt);
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
