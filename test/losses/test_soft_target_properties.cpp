// SPDX-License-Identifier: MIT
// Properties the mathematics gives, checked on the CPU path against itself only where the
// property *is* the reference: non-negativity, zero at student == teacher, JSD symmetry at 1/2,
// JSD endpoints equal to the two KLs, continuity of JSD (loss and gradient) at the endpoints,
// the DKD identity KD = TCKD + (1 - p_t) NCKD, soft CE = KL + H(p); plus masked and NaN rows,
// determinism across thread counts and in-place gradients.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "soft_target_test_util.hpp"
#include "support/compare.hpp"

using namespace distill;
using namespace st_test;

namespace {

struct rows {
  std::size_t n, c;
  std::vector<float> s, t;
};

rows random_rows(distill_test::rng& g, std::size_t n, std::size_t c, double sd = 2.0) {
  rows r{n, c, cast_vec<float>(random_logits(g, n, c, sd)), cast_vec<float>(random_logits(g, n, c, sd))};
  return r;
}

/// Per-row losses (reduction none) and the gradient of one primitive.
struct out {
  std::vector<float> loss, grad;
  status st;
};
template <class O = soft_target_options>
out run(ref::kind k, const std::vector<float>& s, const std::vector<float>& t, std::size_t n, std::size_t c, ref::config cf,
        const soft_target_host_extras<float>& ex = {}, int threads = 2) {
  cf.reduction = ref::reduction::none;
  out o;
  o.loss.assign(n, -1.0f);
  o.grad.assign(n * c, -1.0f);
  o.st = call(k, pass::forward_backward, cpu{threads}, make_view(s.data(), n, c), make_view(t.data(), n, c),
              make_view(o.loss.data(), n), make_view(o.grad.data(), n, c), cf, ex);
  return o;
}

}  // namespace

TEST_CASE("divergences are >= 0 and vanish when the student equals the teacher", "[soft_target][properties]") {
  distill_test::rng g(11);
  const rows r = random_rows(g, 16, 57);
  std::vector<std::int64_t> labels(16);
  for (std::size_t i = 0; i < 16; ++i) labels[i] = static_cast<std::int64_t>(i * 3 % 57);
  soft_target_host_extras<float> ex;
  ex.labels = make_view(static_cast<const std::int64_t*>(labels.data()), 16);
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd, ref::kind::dkd}) {
    for (double beta : {0.0, 0.2, 0.5, 1.0}) {
      ref::config cf;
      cf.k = k;
      cf.temperature = 1.5;
      cf.jsd_beta = beta;
      cf.dkd_alpha = 1, cf.dkd_beta = 2;
      INFO(name_of(k) << " beta " << beta);
      const out o = run(k, r.s, r.t, r.n, r.c, cf, ex);
      REQUIRE(o.st.ok());
      for (float v : o.loss) CHECK(v >= -1e-6f);
      // zero up to float rounding (GCC contracts a * b - c into an FMA on one side of a symmetric
      // expression and not the other, so exact cancellation is not guaranteed)
      const out same = run(k, r.s, r.s, r.n, r.c, cf, ex);
      REQUIRE(same.st.ok());
      for (float v : same.loss) CHECK(std::fabs(v) <= 1e-5f);
      for (float v : same.grad) CHECK(std::fabs(v) <= 1e-6f);
    }
  }
}

TEST_CASE("soft cross-entropy = KL + teacher entropy, with the same gradient", "[soft_target][properties]") {
  distill_test::rng g(12);
  const rows r = random_rows(g, 8, 40);
  std::vector<float> ent(8);
  soft_target_host_extras<float> ex;
  ex.row_teacher_entropy = make_view(ent.data(), 8);
  ref::config cf;
  cf.temperature = 2.0;
  const out kl = run(ref::kind::kl_teacher_student, r.s, r.t, r.n, r.c, cf, ex);
  const out ce = run(ref::kind::soft_cross_entropy, r.s, r.t, r.n, r.c, cf);
  REQUIRE((kl.st.ok() && ce.st.ok()));
  for (std::size_t i = 0; i < 8; ++i) CHECK(ce.loss[i] == Approx(kl.loss[i] + 4.0f * ent[i]).epsilon(1e-5));
  CHECK_CLOSE("gradient", ce.grad, kl.grad, (distill_test::tolerance{1e-7, 1e-5}));
}

TEST_CASE("JSD(1/2) is symmetric; its endpoints are forward and reverse KL", "[soft_target][properties][jsd]") {
  distill_test::rng g(13);
  const rows r = random_rows(g, 6, 33);
  ref::config cf;
  cf.k = ref::kind::jsd;
  cf.temperature = 1.3;
  cf.jsd_beta = 0.5;
  const out ab = run(ref::kind::jsd, r.s, r.t, r.n, r.c, cf);
  const out ba = run(ref::kind::jsd, r.t, r.s, r.n, r.c, cf);
  CHECK_CLOSE("JSD(1/2) swapped", ba.loss, ab.loss, (distill_test::tolerance{1e-7, 1e-5}));
  for (bool trl : {false, true}) {
    cf.jsd_trl = trl;
    cf.jsd_beta = 0.0;
    const out j0 = run(ref::kind::jsd, r.s, r.t, r.n, r.c, cf);
    const out fkl = run(ref::kind::kl_teacher_student, r.s, r.t, r.n, r.c, cf);
    CHECK_CLOSE("JSD(0) = KL(p||q)", j0.loss, fkl.loss, (distill_test::tolerance{1e-6, 1e-5}));
    CHECK_CLOSE("JSD(0) gradient", j0.grad, fkl.grad, (distill_test::tolerance{1e-7, 1e-5}));
    cf.jsd_beta = 1.0;
    const out j1 = run(ref::kind::jsd, r.s, r.t, r.n, r.c, cf);
    const out rkl = run(ref::kind::kl_student_teacher, r.s, r.t, r.n, r.c, cf);
    CHECK_CLOSE("JSD(1) = KL(q||p)", j1.loss, rkl.loss, (distill_test::tolerance{1e-6, 1e-5}));
    CHECK_CLOSE("JSD(1) gradient", j1.grad, rkl.grad, (distill_test::tolerance{1e-7, 1e-5}));
  }
  // TRL scaling: 1/4 of the continuous value at beta = 1/2
  cf.jsd_trl = true;
  cf.jsd_beta = 0.5;
  const out trl = run(ref::kind::jsd, r.s, r.t, r.n, r.c, cf);
  for (std::size_t i = 0; i < r.n; ++i) CHECK(4 * trl.loss[i] == Approx(ab.loss[i]).epsilon(1e-5));
}

TEST_CASE("JSD loss and gradient are continuous at beta = 0 and beta = 1", "[soft_target][properties][jsd]") {
  // Near an endpoint the continuous JSD differs from the KL by the next term of its expansion,
  // O(eps) with a constant that grows with the spread of p/q (chi^2-like), so: moderate logits
  // and |difference| <= 50 eps; then wide logits, where the differences must still shrink to 0
  // (no jump, no 1/eps amplification of rounding).
  distill_test::rng g(14);
  ref::config cf;
  cf.k = ref::kind::jsd;
  cf.temperature = 1.0;
  const rows r = random_rows(g, 5, 48, 1.0);
  for (double end : {0.0, 1.0}) {
    cf.jsd_beta = end;
    const out at = run(ref::kind::jsd, r.s, r.t, r.n, r.c, cf);
    for (double eps : {1e-2, 1e-4, 1e-6}) {
      cf.jsd_beta = end == 0 ? eps : 1 - eps;
      const out near = run(ref::kind::jsd, r.s, r.t, r.n, r.c, cf);
      INFO("endpoint " << end << " eps " << eps);
      const double tol = 50 * eps + 2e-6;
      CHECK_CLOSE("loss", near.loss, at.loss, (distill_test::tolerance{tol, 0}));
      CHECK_CLOSE("gradient", near.grad, at.grad, (distill_test::tolerance{tol, 0}));
    }
  }
  const rows w = random_rows(g, 5, 48, 3.0);
  for (double end : {0.0, 1.0}) {
    cf.jsd_beta = end;
    const out at = run(ref::kind::jsd, w.s, w.t, w.n, w.c, cf);
    double previous = 1e30;
    for (double eps : {1e-2, 1e-4, 1e-6, 1e-7}) {
      cf.jsd_beta = end == 0 ? eps : 1 - eps;
      if (cf.jsd_beta == 1.0) break;  // 1 - 1e-7 rounds to 1 in float
      const out near = run(ref::kind::jsd, w.s, w.t, w.n, w.c, cf);
      double worst = 0;
      for (std::size_t i = 0; i < w.n; ++i) worst = std::max(worst, std::fabs(double(near.loss[i]) - at.loss[i]) / (1 + at.loss[i]));
      INFO("wide logits, endpoint " << end << " eps " << eps << " worst relative difference " << worst);
      CHECK(worst < previous);
      previous = worst;
    }
    CHECK(previous < 2e-2);
  }
}

TEST_CASE("DKD: KD = TCKD + (1 - p_t) NCKD", "[soft_target][properties][dkd]") {
  distill_test::rng g(15);
  const rows r = random_rows(g, 7, 21);
  std::vector<std::int64_t> labels = {0, 5, 20, 3, 3, 11, 7};
  soft_target_host_extras<float> ex;
  ex.labels = make_view(static_cast<const std::int64_t*>(labels.data()), 7);
  ref::config cf;
  cf.temperature = 2.0;
  cf.t_squared = false;
  cf.dkd_alpha = 1, cf.dkd_beta = 0;
  const out tckd = run(ref::kind::dkd, r.s, r.t, r.n, r.c, cf, ex);
  cf.dkd_alpha = 0, cf.dkd_beta = 1;
  const out nckd = run(ref::kind::dkd, r.s, r.t, r.n, r.c, cf, ex);
  const out kd = run(ref::kind::kl_teacher_student, r.s, r.t, r.n, r.c, cf);
  for (std::size_t i = 0; i < r.n; ++i) {
    const auto row_t = ref::log_softmax(as_double(std::vector<float>(r.t.begin() + i * r.c, r.t.begin() + (i + 1) * r.c)), 2.0);
    const double pt = std::exp(row_t[static_cast<std::size_t>(labels[i])]);
    CHECK(kd.loss[i] == Approx(tckd.loss[i] + (1 - pt) * nckd.loss[i]).epsilon(2e-5));
  }
}

TEST_CASE("a row with every class masked is NaN and reported; partially masked rows are fine", "[soft_target][properties]") {
  const std::size_t n = 3, c = 4;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> s = {0.1f, 0.2f, 0.3f, 0.4f, 1, 2, 3, 4, 0, 0, 0, 0};
  std::vector<float> t = {ninf, 1.0f, ninf, 2.0f, ninf, ninf, ninf, ninf, 0, 1, 2, 3};
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd, ref::kind::soft_cross_entropy}) {
    ref::config cf;
    cf.k = k;
    const out o = run(k, s, t, n, c, cf);
    INFO(name_of(k) << ": " << o.st.to_string());
    CHECK(o.st.code() == errc::non_finite);
    CHECK(o.st.message().find("row 1 of 'teacher'") != std::string::npos);
    CHECK(std::isnan(o.loss[1]));
    for (std::size_t j = 0; j < c; ++j) CHECK(std::isnan(o.grad[c + j]));
    CHECK(std::isfinite(o.loss[2]));
    if (k != ref::kind::kl_student_teacher) CHECK(std::isfinite(o.loss[0]));  // reverse KL: q > 0 where p = 0 is +inf
    // the batch-reduced loss is NaN, not silently finite
    float total = 0;
    std::vector<float> g(n * c);
    cf.reduction = ref::reduction::batchmean;
    const status st = call(k, pass::forward_backward, cpu{1}, make_view(s.data(), n, c), make_view(t.data(), n, c),
                           make_view(&total, 1), make_view(g.data(), n, c), cf, soft_target_host_extras<float>{});
    CHECK(st.code() == errc::non_finite);
    CHECK(std::isnan(total));
  }
  // a student row that is all -inf
  std::vector<float> s2 = s;
  for (std::size_t j = 0; j < c; ++j) s2[2 * c + j] = ninf;
  ref::config cf;
  const out o = run(ref::kind::kl_teacher_student, s2, s, n, c, cf);
  CHECK(o.st.code() == errc::non_finite);
  CHECK(o.st.message().find("row 2 of 'student'") != std::string::npos);
}

TEST_CASE("NaN in a row makes that row NaN and leaves the others alone", "[soft_target][properties]") {
  distill_test::rng g(16);
  rows r = random_rows(g, 4, 19);
  const rows clean = r;
  r.s[1 * 19 + 4] = std::numeric_limits<float>::quiet_NaN();
  r.t[3 * 19 + 0] = std::numeric_limits<float>::quiet_NaN();
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd, ref::kind::soft_cross_entropy}) {
    ref::config cf;
    cf.k = k;
    const out o = run(k, r.s, r.t, r.n, r.c, cf);
    const out base = run(k, clean.s, clean.t, r.n, r.c, cf);
    INFO(name_of(k));
    CHECK(o.st.ok());
    CHECK(std::isnan(o.loss[1]));
    CHECK(std::isnan(o.loss[3]));
    CHECK(o.loss[0] == base.loss[0]);
    CHECK(o.loss[2] == base.loss[2]);
  }
}

TEST_CASE("results do not depend on the number of threads", "[soft_target][properties]") {
  distill_test::rng g(17);
  const rows r = random_rows(g, 37, 301);
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::jsd}) {
    ref::config cf;
    cf.k = k;
    cf.temperature = 2;
    float l1 = 0, l2 = 0;
    std::vector<float> g1(r.n * r.c), g2(r.n * r.c);
    cf.reduction = ref::reduction::batchmean;
    REQUIRE(call(k, pass::forward_backward, cpu{1}, make_view(r.s.data(), r.n, r.c), make_view(r.t.data(), r.n, r.c),
                 make_view(&l1, 1), make_view(g1.data(), r.n, r.c), cf, soft_target_host_extras<float>{})
                .ok());
    REQUIRE(call(k, pass::forward_backward, cpu{3}, make_view(r.s.data(), r.n, r.c), make_view(r.t.data(), r.n, r.c),
                 make_view(&l2, 1), make_view(g2.data(), r.n, r.c), cf, soft_target_host_extras<float>{})
                .ok());
    CHECK(l1 == l2);
    CHECK(g1 == g2);
  }
}

TEST_CASE("accumulate adds to the gradient; in place equals out of place", "[soft_target][properties]") {
  distill_test::rng g(18);
  const rows r = random_rows(g, 5, 70);
  ref::config cf;
  cf.temperature = 3;
  cf.hard_weight = 0.5;
  std::vector<std::int64_t> labels = {1, 2, 3, 4, -100};
  soft_target_host_extras<float> ex;
  ex.labels = make_view(static_cast<const std::int64_t*>(labels.data()), 5);
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::dkd, ref::kind::jsd}) {
    cf.k = k;
    float loss = 0;
    std::vector<float> fresh(r.n * r.c), acc(r.n * r.c, 0.25f);
    REQUIRE(call(k, pass::backward, cpu{2}, make_view(r.s.data(), r.n, r.c), make_view(r.t.data(), r.n, r.c),
                 make_view(&loss, 1), make_view(fresh.data(), r.n, r.c), cf, ex)
                .ok());
    REQUIRE(call(k, pass::backward, cpu{2}, make_view(r.s.data(), r.n, r.c), make_view(r.t.data(), r.n, r.c),
                 make_view(&loss, 1), make_view(acc.data(), r.n, r.c), cf, ex, /*accumulate=*/true)
                .ok());
    for (std::size_t i = 0; i < fresh.size(); ++i) CHECK(acc[i] == Approx(fresh[i] + 0.25f).margin(1e-7));
    std::vector<float> inplace = r.s;
    float l2 = 0;
    REQUIRE(call(k, pass::forward_backward, cpu{2}, make_view(static_cast<const float*>(inplace.data()), r.n, r.c),
                 make_view(r.t.data(), r.n, r.c), make_view(&l2, 1), make_view(inplace.data(), r.n, r.c), cf, ex)
                .ok());
    CHECK(inplace == fresh);
  }
}

TEST_CASE("int32 and int64 labels give the same results", "[soft_target][labels]") {
  distill_test::rng g(17);
  const rows r = random_rows(g, 12, 9);
  std::vector<std::int64_t> l64(12);
  std::vector<std::int32_t> l32(12);
  for (std::size_t i = 0; i < 12; ++i) l32[i] = static_cast<std::int32_t>(l64[i] = i == 5 ? -100 : static_cast<std::int64_t>(i * 5 % 9));
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::dkd}) {
    ref::config cf;
    cf.k = k;
    cf.hard_weight = 0.5;
    soft_target_host_extras<float> e64, e32;
    e64.labels = make_view(static_cast<const std::int64_t*>(l64.data()), 12);
    e32.labels = make_view(l32.data(), 12);
    const out a = run(k, r.s, r.t, r.n, r.c, cf, e64), b = run(k, r.s, r.t, r.n, r.c, cf, e32);
    REQUIRE(a.st.ok());
    REQUIRE(b.st.ok());
    CHECK(a.loss == b.loss);
    CHECK(a.grad == b.grad);
    CHECK(a.loss[5] == 0.0f);  // ignore_index works for int32 storage too
  }
  // an out-of-range int32 label is refused like an int64 one
  l32[3] = 9;
  soft_target_host_extras<float> bad;
  bad.labels = make_view(l32.data(), 12);
  ref::config cf;
  cf.hard_weight = 0.5;
  const out o = run(ref::kind::kl_teacher_student, r.s, r.t, r.n, r.c, cf, bad);
  CHECK(o.st.code() == errc::invalid_argument);
  CHECK_THAT(o.st.message(), Catch::Contains("label 9 of row 3"));
}
