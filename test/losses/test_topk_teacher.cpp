// SPDX-License-Identifier: MIT
// Sparse top-k teacher (spec §2.4 variants A and C) on the CPU: the reference's gradient against
// finite differences, the library against the reference (reductions, labels, weights, hard term,
// diagnostics, dL/dT, in place, padding slots), and the refused inputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "distill/losses/topk_teacher.hpp"
#include "reference/soft_target_ref.hpp"
#include "soft_target_test_util.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"

using namespace distill;
namespace ref = soft_target_ref;

namespace {

struct topk_case {
  std::size_t n, c, k;
  std::vector<double> zs;               // (n, c)
  std::vector<std::int64_t> idx;        // (n, k), -1 = unused slot
  std::vector<double> lv;               // (n, k) teacher log-probabilities (full vocabulary)
  std::vector<std::int64_t> labels;     // empty: none
  std::vector<double> weights;          // empty: 1
};

/// A random row set: the teacher is a full softmax whose top-k (some slots unused) is kept.
topk_case make_case(distill_test::rng& g, std::size_t n, std::size_t c, std::size_t k, double t, bool unused_slots) {
  topk_case tc{n, c, k, {}, {}, {}, {}, {}};
  tc.zs = st_test::random_logits(g, n, c, 2.0);
  const auto zt = st_test::random_logits(g, n, c, 3.0);
  for (std::size_t r = 0; r < n; ++r) {
    const auto lp = ref::log_softmax(std::vector<double>(zt.begin() + r * c, zt.begin() + (r + 1) * c), t);
    std::vector<std::size_t> order(c);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return lp[a] > lp[b]; });
    for (std::size_t j = 0; j < k; ++j) {
      const bool unused = unused_slots && j % 3 == 2;
      tc.idx.push_back(unused ? -1 : static_cast<std::int64_t>(order[j]));
      tc.lv.push_back(unused ? 123.0 : lp[order[j]]);  // a value in an unused slot is ignored
    }
  }
  return tc;
}

struct expected {
  std::vector<double> loss, grad, kl, entropy, top1;
};

/// Entropy of the sparse teacher (A: of p~; C: of (p, rest mass)), straight from its definition.
double topk_entropy(ref::topk_variant v, const std::vector<std::int64_t>& idx, const std::vector<double>& lv) {
  std::vector<double> li;
  for (std::size_t j = 0; j < idx.size(); ++j)
    if (idx[j] >= 0) li.push_back(lv[j]);
  const double shift = v == ref::topk_variant::renormalized ? ref::logsumexp(li) : 0.0;
  double h = 0, mass = 0;
  for (double l : li) {
    const double p = std::exp(l - shift);
    if (p != 0) h -= p * (l - shift);
    mass += p;
  }
  const double r = v == ref::topk_variant::renormalized ? 0.0 : std::max(0.0, 1.0 - mass);
  if (r > 0) h -= r * std::log(r);
  return h;
}

/// 1 when the student's first argmax is the class of the largest teacher value (ties: lowest class).
double topk_top1(const std::vector<double>& zs, const std::vector<std::int64_t>& idx, const std::vector<double>& lv) {
  std::int64_t best = -1;
  double best_v = 0;
  for (std::size_t j = 0; j < idx.size(); ++j)
    if (idx[j] >= 0 && (best < 0 || lv[j] > best_v || (lv[j] == best_v && idx[j] < best))) best = idx[j], best_v = lv[j];
  const auto student = std::max_element(zs.begin(), zs.end()) - zs.begin();
  return best >= 0 && student == best ? 1.0 : 0.0;
}

expected evaluate(const topk_case& tc, ref::topk_variant v, const ref::config& cf) {
  expected e;
  const double t = cf.temperature, ct = cf.t_squared ? t * t : 1;
  auto ignored = [&](std::size_t r) { return !tc.labels.empty() && tc.labels[r] == cf.ignore_index; };
  auto w = [&](std::size_t r) { return tc.weights.empty() ? 1.0 : tc.weights[r]; };
  double d = 1;
  if (cf.reduction == ref::reduction::batchmean) d = static_cast<double>(tc.n);
  if (cf.reduction == ref::reduction::mean) {
    d = 0;
    for (std::size_t r = 0; r < tc.n; ++r)
      if (!ignored(r)) d += w(r);
  }
  std::vector<double> rl(tc.n, 0.0);
  e.grad.assign(tc.n * tc.c, 0.0);
  e.kl.assign(tc.n, 0.0);
  e.entropy.assign(tc.n, 0.0);
  e.top1.assign(tc.n, 0.0);
  for (std::size_t r = 0; r < tc.n; ++r) {
    if (ignored(r)) continue;
    const std::vector<double> zs(tc.zs.begin() + r * tc.c, tc.zs.begin() + (r + 1) * tc.c);
    const std::vector<std::int64_t> idx(tc.idx.begin() + r * tc.k, tc.idx.begin() + (r + 1) * tc.k);
    const std::vector<double> lv(tc.lv.begin() + r * tc.k, tc.lv.begin() + (r + 1) * tc.k);
    const double f = ref::topk_row_divergence(v, t, zs, idx, lv);
    const auto gy = ref::topk_row_grad_y(v, t, zs, idx, lv);
    const auto lq1 = ref::log_softmax(zs, 1.0);
    const std::int64_t label = tc.labels.empty() ? -1 : tc.labels[r];
    const double hard = label >= 0 ? -lq1[static_cast<std::size_t>(label)] : 0.0;
    rl[r] = w(r) * (cf.soft_weight * ct * f + cf.hard_weight * hard);
    e.kl[r] = f;
    e.entropy[r] = topk_entropy(v, idx, lv);
    e.top1[r] = topk_top1(zs, idx, lv);
    for (std::size_t k = 0; k < tc.c; ++k) {
      double gk = cf.soft_weight * ct / t * gy[k];
      if (cf.hard_weight != 0) gk += cf.hard_weight * (std::exp(lq1[k]) - (static_cast<std::int64_t>(k) == label));
      e.grad[r * tc.c + k] = cf.grad_scale * w(r) / d * gk;
    }
  }
  if (cf.reduction == ref::reduction::none) e.loss = rl;
  else e.loss = {std::accumulate(rl.begin(), rl.end(), 0.0) / d};
  return e;
}

soft_target_host_extras<float> labels_and_weights(const soft_target_host_extras<float>& ex) {
  soft_target_host_extras<float> out;
  out.labels = ex.labels;
  out.row_weights = ex.row_weights;
  return out;
}

topk_teacher_options lib_options(const ref::config& cf, ref::topk_variant v) {
  topk_teacher_options o;
  o.temperature = static_cast<float>(cf.temperature);
  o.scale_by_t_squared = cf.t_squared;
  o.reduction = st_test::to_lib(cf.reduction);
  o.soft_weight = static_cast<float>(cf.soft_weight);
  o.hard_label_weight = static_cast<float>(cf.hard_weight);
  o.grad_scale = static_cast<float>(cf.grad_scale);
  o.variant = v == ref::topk_variant::renormalized ? topk_variant::renormalized : topk_variant::rest_bucket;
  return o;
}

}  // namespace

TEST_CASE("top-k reference gradients match finite differences", "[soft_target][topk][reference]") {
  distill_test::rng g(31);
  for (auto v : {ref::topk_variant::renormalized, ref::topk_variant::rest_bucket}) {
    for (double t : {1.0, 2.0}) {
      const topk_case tc = make_case(g, 1, 12, 5, t, true);
      const std::vector<std::int64_t> idx(tc.idx.begin(), tc.idx.begin() + 5);
      const std::vector<double> lv(tc.lv.begin(), tc.lv.begin() + 5);
      const auto want = ref::topk_row_grad_y(v, t, tc.zs, idx, lv);
      // d/dy = T d/dz
      auto fd = distill_test::numeric_gradient([&](const std::vector<double>& zs) { return ref::topk_row_divergence(v, t, zs, idx, lv); }, tc.zs);
      for (auto& x : fd) x *= t;
      CHECK_CLOSE("top-k reference gradient", want, fd, distill_test::tol::fd);
    }
  }
}

TEST_CASE("top-k KL matches the reference", "[soft_target][topk]") {
  distill_test::rng g(32);
  for (auto v : {ref::topk_variant::renormalized, ref::topk_variant::rest_bucket}) {
    for (auto red : {ref::reduction::none, ref::reduction::sum, ref::reduction::mean, ref::reduction::batchmean}) {
      for (int variant = 0; variant < 4; ++variant) {
        ref::config cf;
        cf.temperature = variant == 1 ? 1.0 : 2.0;
        cf.t_squared = variant != 2;
        cf.reduction = red;
        cf.hard_weight = variant >= 1 ? 0.3 : 0.0;
        cf.soft_weight = 0.75;
        cf.grad_scale = variant == 3 ? 2.0 : 1.0;
        const std::size_t n = 6, c = variant == 3 ? 1001 : 40, k = variant == 3 ? 32 : 7;
        topk_case tc = make_case(g, n, c, k, cf.temperature, variant >= 2);
        // the library sees float values
        for (auto& x : tc.zs) x = static_cast<float>(x);
        for (auto& x : tc.lv) x = static_cast<float>(x);
        if (variant >= 1) {
          tc.labels = {1, -100, 5, 0, 39, 7};
          tc.weights = {0.5, 1.0, 2.0, 1.5, 0.25, 1.0};
        }
        const expected want = evaluate(tc, v, cf);
        const auto zs = st_test::cast_vec<float>(tc.zs);
        const auto lv = st_test::cast_vec<float>(tc.lv);
        std::vector<float> w(tc.weights.begin(), tc.weights.end());
        soft_target_host_extras<float> ex;
        if (!tc.labels.empty()) ex.labels = make_view(static_cast<const std::int64_t*>(tc.labels.data()), n);
        if (!w.empty()) ex.row_weights = make_view(static_cast<const float*>(w.data()), n);
        distill_test::guarded<float> kl(n), ent(n), top1(n), dt(1);
        ex.row_kl = make_view(kl.data(), n);
        ex.row_teacher_entropy = make_view(ent.data(), n);
        ex.row_top1_agreement = make_view(top1.data(), n);
        const std::size_t ln = red == ref::reduction::none ? n : 1;
        distill_test::guarded<float> loss(ln), grad(n * c);
        ex.grad_temperature = make_view(dt.data(), 1);
        const auto opt = lib_options(cf, v);
        const status st = kl_topk_teacher_student_forward_backward(
            cpu{2}, make_view(zs.data(), n, c), make_view(tc.idx.data(), n, k), make_view(lv.data(), n, k),
            make_view(loss.data(), ln), make_view(grad.data(), n, c), ex, {}, opt);
        INFO("variant " << static_cast<int>(v) << " red " << static_cast<int>(red) << " case " << variant << ": " << st.to_string());
        REQUIRE(st.ok());
        const double ct = cf.t_squared ? cf.temperature * cf.temperature : 1.0;
        CHECK_CLOSE("loss", loss.contents(), want.loss, (distill_test::tolerance{2e-6 * ct, 3e-5}));
        CHECK_CLOSE("grad", grad.contents(), want.grad, (distill_test::tolerance{2e-7 * ct, 1e-4}));
        std::vector<double> kl_want = want.kl;
        CHECK_CLOSE("row_kl", kl.contents(), kl_want, (distill_test::tolerance{2e-6, 3e-5}));
        CHECK_CLOSE("row_teacher_entropy", ent.contents(), want.entropy, (distill_test::tolerance{2e-6, 3e-5}));
        CHECK(top1.contents() == std::vector<float>(want.top1.begin(), want.top1.end()));
        CHECK((loss.intact() && grad.intact() && kl.intact() && ent.intact() && top1.intact() && dt.intact()));
        // dL/dT: central differences of the reference in T (teacher values fixed)
        const double fd = distill_test::numeric_gradient(
                              [&](const std::vector<double>& tt) {
                                ref::config c2 = cf;
                                c2.temperature = tt[0];
                                const auto e = evaluate(tc, v, c2);
                                return std::accumulate(e.loss.begin(), e.loss.end(), 0.0);
                              },
                              std::vector<double>{cf.temperature}, 1e-5)[0] * cf.grad_scale;
        CHECK_CLOSE_SCALAR("grad_temperature", dt.data()[0], fd, (distill_test::tolerance{1e-5 * ct, 2e-4}));
        // forward and backward alone agree with the fused pass; in place equals out of place
        distill_test::guarded<float> loss2(ln), grad2(n * c);
        REQUIRE(kl_topk_teacher_student_forward(cpu{1}, make_view(zs.data(), n, c), make_view(tc.idx.data(), n, k),
                                                make_view(lv.data(), n, k), make_view(loss2.data(), ln),
                                                labels_and_weights(ex), {}, opt)
                    .ok());
        CHECK(loss2.contents() == loss.contents());
        REQUIRE(kl_topk_teacher_student_backward(cpu{1}, make_view(zs.data(), n, c), make_view(tc.idx.data(), n, k),
                                                 make_view(lv.data(), n, k), make_view(grad2.data(), n, c),
                                                 labels_and_weights(ex), {}, opt)
                    .ok());
        CHECK(grad2.contents() == grad.contents());
        std::vector<float> inplace = zs;
        REQUIRE(kl_topk_teacher_student_backward(cpu{2}, make_view(static_cast<const float*>(inplace.data()), n, c),
                                                 make_view(tc.idx.data(), n, k), make_view(lv.data(), n, k),
                                                 make_view(inplace.data(), n, c),
                                                 labels_and_weights(ex), {}, opt)
                    .ok());
        CHECK(inplace == grad.contents());
      }
    }
  }
}

TEST_CASE("top-k with every slot the full vocabulary equals forward KL", "[soft_target][topk]") {
  distill_test::rng g(33);
  const std::size_t n = 3, c = 9;
  const auto zs = st_test::cast_vec<float>(st_test::random_logits(g, n, c, 2.0));
  const auto zt = st_test::cast_vec<float>(st_test::random_logits(g, n, c, 2.0));
  std::vector<std::int64_t> idx(n * c);
  std::vector<float> lv(n * c);
  for (std::size_t r = 0; r < n; ++r) {
    const auto lp = ref::log_softmax(st_test::as_double(std::vector<float>(zt.begin() + r * c, zt.begin() + (r + 1) * c)), 1.5);
    for (std::size_t j = 0; j < c; ++j) idx[r * c + j] = static_cast<std::int64_t>((j * 4) % c), lv[r * c + j] = static_cast<float>(lp[(j * 4) % c]);
  }
  soft_target_options o;
  o.temperature = 1.5f;
  float kd = 0, a = 0, b = 0;
  std::vector<float> gkd(n * c), ga(n * c), gb(n * c);
  REQUIRE(kl_teacher_student_forward_backward(cpu{1}, make_view(zs.data(), n, c), make_view(zt.data(), n, c),
                                              make_view(&kd, 1), make_view(gkd.data(), n, c), {}, {}, o).ok());
  topk_teacher_options to;
  to.temperature = 1.5f;
  REQUIRE(kl_topk_teacher_student_forward_backward(cpu{1}, make_view(zs.data(), n, c), make_view(idx.data(), n, c),
                                                   make_view(lv.data(), n, c), make_view(&a, 1), make_view(ga.data(), n, c), {}, {}, to).ok());
  to.variant = topk_variant::rest_bucket;
  REQUIRE(kl_topk_teacher_student_forward_backward(cpu{1}, make_view(zs.data(), n, c), make_view(idx.data(), n, c),
                                                   make_view(lv.data(), n, c), make_view(&b, 1), make_view(gb.data(), n, c), {}, {}, to).ok());
  CHECK(a == Approx(kd).epsilon(1e-5));
  CHECK(b == Approx(kd).epsilon(1e-5));
  CHECK_CLOSE("A gradient", ga, gkd, (distill_test::tolerance{1e-6, 1e-4}));
  CHECK_CLOSE("C gradient", gb, gkd, (distill_test::tolerance{1e-6, 1e-4}));
}

TEST_CASE("top-k refuses bad indices and reports empty rows", "[soft_target][topk][errors]") {
  const std::size_t n = 2, c = 5, k = 3;
  std::vector<float> zs(n * c, 0.5f), lv(n * k, -1.5f), grad(n * c);
  float loss = 0;
  auto run = [&](std::vector<std::int64_t> idx, topk_variant v = topk_variant::renormalized) {
    topk_teacher_options o;
    o.variant = v;
    return kl_topk_teacher_student_forward_backward(cpu{1}, make_view(zs.data(), n, c), make_view(idx.data(), n, k),
                                                    make_view(lv.data(), n, k), make_view(&loss, 1),
                                                    make_view(grad.data(), n, c), {}, {}, o);
  };
  CHECK(run({0, 1, 2, 3, 4, 0}).ok());
  CHECK(run({0, 1, -1, 3, -7, 0}).ok());  // negative = unused slot
  status st = run({0, 1, 5, 3, 4, 0});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("outside [0, 5)") != std::string::npos);
  st = run({0, 1, 2, 3, 4, 3});
  CHECK(st.code() == errc::invalid_argument);
  CHECK(st.message().find("appears twice in row 1") != std::string::npos);
  // variant A with no valid slot has no teacher distribution; C puts all mass in the rest bucket
  st = run({-1, -1, -1, 3, 4, 0});
  CHECK(st.code() == errc::non_finite);
  CHECK(run({-1, -1, -1, 3, 4, 0}, topk_variant::rest_bucket).ok());
  // k > C
  std::vector<std::int64_t> wide(n * 6, -1);
  std::vector<float> lv6(n * 6, -1.0f);
  st = kl_topk_teacher_student_forward(cpu{1}, make_view(zs.data(), n, c), make_view(wide.data(), n, 6),
                                       make_view(lv6.data(), n, 6), make_view(&loss, 1), {}, {});
  CHECK(st.code() == errc::shape_mismatch);
  // shape mismatch between indices and values
  std::vector<std::int64_t> idx4(n * 4, 0);
  st = kl_topk_teacher_student_forward(cpu{1}, make_view(zs.data(), n, c), make_view(idx4.data(), n, 4),
                                       make_view(lv.data(), n, k), make_view(&loss, 1), {}, {});
  CHECK(st.code() == errc::shape_mismatch);
}
