// SPDX-License-Identifier: MIT
#pragma once
// One CPU test case of a dense soft-target primitive: run forward, backward and forward_backward
// on (possibly strided, possibly mixed-dtype) views with canaries around every output, and compare
// each result with the double reference.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "soft_target_test_util.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"

namespace st_test {

struct case_options {
  bool labels = false;         // random labels, some ignore_index
  bool weights = false;        // random row weights
  double normalizer = -1;      // >= 0: pass it
  bool diagnostics = false;
  bool grad_temperature = false;
  std::size_t pad = 0;         // row padding (ld = C + pad)
  bool column_major = false;   // non-unit inner stride
  bool in_place = false;       // gradient over the student's memory
  int threads = 2;
};

/// Builds a strided (or column-major) copy of a row-major (n, c) matrix of doubles as T.
template <class T>
struct strided_matrix {
  distill_test::guarded<T> buf;
  std::size_t n, c, ld;
  bool col_major;
  strided_matrix(const std::vector<double>& v, std::size_t n_, std::size_t c_, std::size_t pad, bool cm)
      : buf((cm ? c_ * (n_ + pad) : n_ * (c_ + pad))), n(n_), c(c_), ld(cm ? n_ + pad : c_ + pad), col_major(cm) {
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t k = 0; k < c; ++k) at(r, k) = distill::store<T>(v.empty() ? 0.0 : v[r * c + k]);
  }
  T& at(std::size_t r, std::size_t k) { return col_major ? buf.data()[k * ld + r] : buf.data()[r * ld + k]; }
  template <class U = T>
  distill::host_view<U, 2> view() {
    using I = distill::index_t;
    return distill::make_strided_view(static_cast<U*>(buf.data()), std::array<I, 2>{I(n), I(c)},
                                      col_major ? std::array<I, 2>{1, I(ld)} : std::array<I, 2>{I(ld), 1});
  }
  std::vector<double> values() {
    std::vector<double> out(n * c);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t k = 0; k < c; ++k) out[r * c + k] = static_cast<double>(distill::load<double>(at(r, k)));
    return out;
  }
  bool canaries_intact() const {
    if (!buf.intact()) return false;
    return col_major ? buf.padding_intact(c, n, ld) : buf.padding_intact(n, c, ld);
  }
};

/// Runs one case: TS student, TT teacher. `b` holds the logits in double (rounded to TS/TT here).
template <class TS, class TT>
void run_case(ref::kind k, const ref::config& cf_in, ref::batch b, const case_options& co, const tolerances& tl,
              std::uint64_t salt = 0) {
  using namespace distill;
  using Acc = accum_t<TS>;
  distill_test::rng g(salt + 977);
  // the options are floats: the reference sees the values the library sees
  ref::config cf = cf_in;
  // (through a volatile: GCC 12's SLP vectoriser at -O2/-O3 drops the double -> float -> double
  // round trip of these adjacent fields, leaving 0.7 instead of 0.699999988)
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
  const std::size_t n = b.n, c = b.c;
  strided_matrix<TS> s(b.zs, n, c, co.pad, co.column_major);
  strided_matrix<TT> t(b.zt, n, c, co.pad, co.column_major);
  b.zs = s.values();  // what the library sees
  b.zt = t.values();
  if (co.labels || k == ref::kind::dkd) {
    b.labels.resize(n);
    for (std::size_t r = 0; r < n; ++r)
      b.labels[r] = (co.labels && n > 1 && g.coin(0.2)) ? cf.ignore_index : g.integer(0, static_cast<std::int64_t>(c) - 1);
  }
  if (co.weights) {
    b.weights.resize(n);
    for (auto& w : b.weights) w = static_cast<double>(static_cast<Acc>(g.uniform(0.1, 2.0)));
  }
  b.normalizer = co.normalizer;
  const ref::result want = ref::evaluate(cf, b);

  std::vector<Acc> weights(b.weights.begin(), b.weights.end());
  Acc normalizer = static_cast<Acc>(co.normalizer);
  soft_target_host_extras<Acc> ex;
  if (!b.labels.empty()) ex.labels = make_view(static_cast<const std::int64_t*>(b.labels.data()), n);
  if (co.weights) ex.row_weights = make_view(static_cast<const Acc*>(weights.data()), n);
  if (co.normalizer >= 0) ex.normalizer = make_view(static_cast<const Acc*>(&normalizer), 1);
  distill_test::guarded<Acc> d_kl(n), d_ent(n), d_top(n), d_hard(n), d_t(1);
  if (co.diagnostics) {
    ex.row_kl = make_view(d_kl.data(), n);
    ex.row_teacher_entropy = make_view(d_ent.data(), n);
    ex.row_top1_agreement = make_view(d_top.data(), n);
    if (!b.labels.empty()) ex.row_hard_loss = make_view(d_hard.data(), n);
  }
  const std::size_t loss_n = cf.reduction == ref::reduction::none ? n : 1;
  const cpu ctx{co.threads};

  std::vector<double> loss_fwd, grad_bwd;
  for (pass p : {pass::forward, pass::backward, pass::forward_backward}) {
    INFO(name_of(k) << " " << name_of(p) << " n=" << n << " c=" << c << " T=" << cf.temperature << " red="
                    << static_cast<int>(cf.reduction) << " " << dtype_name<TS>() << "/" << dtype_name<TT>());
    distill_test::guarded<Acc> loss(loss_n);
    strided_matrix<TS> grad_own(std::vector<double>{}, n, c, co.pad, co.column_major);
    strided_matrix<TS> s_copy(b.zs, n, c, co.pad, co.column_major);  // in place: fresh student each pass
    auto ex_p = ex;
    if (co.grad_temperature && p != pass::forward) ex_p.grad_temperature = make_view(d_t.data(), 1);
    auto lv = make_view(loss.data(), loss_n);
    auto gv = co.in_place ? s_copy.template view<std::remove_const_t<TS>>() : grad_own.template view<std::remove_const_t<TS>>();
    auto sv = co.in_place ? s_copy.template view<const TS>() : s.template view<const TS>();
    const status st = call(k, p, ctx, sv, t.template view<const TT>(), lv, gv, cf, ex_p);
    INFO(st.to_string());
    REQUIRE(st.ok());
    CHECK(loss.intact());
    CHECK(t.canaries_intact());
    if (p != pass::backward) {
      const auto got = loss.contents();
      CHECK_CLOSE("loss", got, want.loss, tl.loss);
      std::vector<double> gd(got.begin(), got.end());
      if (p == pass::forward) loss_fwd = gd;
      else CHECK(gd == loss_fwd);  // the fused pass computes the loss exactly as the forward
    }
    if (p != pass::forward) {
      strided_matrix<TS>& gm = co.in_place ? s_copy : grad_own;
      CHECK(gm.canaries_intact());
      const std::vector<double> gd = gm.values();
      CHECK_CLOSE("grad_student", gd, want.grad, tl.grad);
      if (p == pass::backward) grad_bwd = gd;
      else CHECK(gd == grad_bwd);
      if (!co.in_place) CHECK(s.canaries_intact());
    }
    if (co.diagnostics) {
      CHECK_CLOSE("row_kl", d_kl.contents(), want.row_kl, tl.diag);
      CHECK_CLOSE("row_teacher_entropy", d_ent.contents(), want.row_entropy, tl.diag);
      CHECK(d_top.contents() == std::vector<Acc>(want.row_top1.begin(), want.row_top1.end()));
      if (!b.labels.empty()) CHECK_CLOSE("row_hard_loss", d_hard.contents(), want.row_hard, tl.diag);
      CHECK((d_kl.intact() && d_ent.intact() && d_top.intact() && d_hard.intact()));
    }
    if (co.grad_temperature && p != pass::forward) {
      // dL/dT against central differences of the reference loss in T (the reference is in double)
      auto f = [&](const std::vector<double>& tt) {
        ref::config c2 = cf;
        c2.temperature = tt[0];
        return ref::total_loss(c2, b);
      };
      const double fd = distill_test::numeric_gradient(f, std::vector<double>{cf.temperature}, 1e-5)[0] * cf.grad_scale;
      CHECK_CLOSE_SCALAR("grad_temperature", d_t.data()[0], fd, tl.dt);
      CHECK(d_t.intact());
    }
  }
}

}  // namespace st_test
