// SPDX-License-Identifier: MIT
#pragma once
// One test case of a dense soft-target primitive on either backend (support/backend.hpp): run
// forward, backward and forward_backward on (possibly padded, column-major or mixed-dtype) views
// with canaries around every output and in its padding, and compare each result with the double
// reference. The CPU tests instantiate it with host_space (the default), the CUDA tests with
// cuda_space; soft_target_cases.hpp holds the cases both run.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "soft_target_test_util.hpp"
#include "support/backend.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"

namespace st_test {

struct case_options {
  bool labels = false;               // random labels, some ignore_index
  bool weights = false;              // random row weights
  double normalizer = -1;            // >= 0: pass it in memory (extras.normalizer)
  bool temperature_in_memory = false;  // extras.temperature holds T (the options' value must be ignored)
  bool diagnostics = false;
  bool grad_temperature = false;
  std::size_t pad = 0;               // row padding (ld = C + pad; odd pads break 16-byte alignment)
  bool column_major = false;         // non-unit inner stride (CPU only: CUDA needs unit inner stride)
  bool in_place = false;             // gradient over the student's memory
  bool accumulate = false;           // gradient adds into 0.125
  bool bad_label = false;            // one label = C: the CPU refuses it, CUDA makes that row NaN
  int threads = 2;
};

/// Tolerances of a float path against the double reference. Errors scale with the size of the
/// logits over T (the log-sum-exps) and with the loss scale c_T. The CUDA kernels use the
/// device's exp/log (a few ulp) and reduce in another order: 5x the CPU's.
template <class Space = distill::host_space>
tolerances float_tolerances(double max_logit_over_t, double c_t) {
  const double s = 1 + max_logit_over_t;
  if constexpr (std::is_same_v<Space, distill::host_space>)
    return {{2e-6 * s * c_t, 2e-5}, {1e-6 * s * c_t, 1e-4}, {2e-6 * s, 2e-5}, {5e-5 * s * c_t, 2e-4}};
  else
    return {{1e-5 * s * c_t, 1e-4}, {3e-6 * s * c_t, 3e-4}, {1e-5 * s, 1e-4}, {2e-4 * s * c_t, 1e-3}};
}
inline const tolerances double_tolerances{{1e-11, 1e-9}, {1e-12, 1e-9}, {1e-11, 1e-9}, {1e-7, 1e-6}};
/// 16-bit storage: the gradient's tolerance widened to the storage precision.
inline tolerances widened(tolerances t, distill_test::tolerance grad) {
  t.grad = {std::max(t.grad.atol, grad.atol), std::max(t.grad.rtol, grad.rtol)};
  return t;
}

/// The reference config with its options rounded to float, as the library sees them (through a
/// volatile: GCC 12's SLP vectoriser at -O2/-O3 drops the double -> float -> double round trip of
/// these adjacent fields, leaving 0.7 instead of 0.699999988).
inline ref::config as_float_options(ref::config cf) {
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
  return cf;
}

/// Runs one case: TS student, TT teacher, on Space. `b` holds the logits in double (rounded to
/// TS/TT here, and the reference sees the rounded values).
template <class TS, class TT, class Space = distill::host_space>
void run_case(ref::kind k, const ref::config& cf_in, ref::batch b, const case_options& co, const tolerances& tl,
              std::uint64_t salt = 0) {
  using namespace distill;
  using distill_test::guarded_array;
  using distill_test::guarded_tensor;
  using Acc = accum_t<TS>;
  using B = distill_test::backend<Space>;
  constexpr bool on_host = std::is_same_v<Space, host_space>;
  distill_test::rng g(salt + 977);
  const ref::config cf = as_float_options(cf_in);
  const std::size_t n = b.n, c = b.c;
  const std::array<index_t, 2> shape{index_t(n), index_t(c)}, pad{index_t(co.pad), 0};
  guarded_tensor<TS, 2, Space> s(shape, pad, 1, co.column_major);
  guarded_tensor<TT, 2, Space> t(shape, pad, 1, co.column_major);
  s.set(b.zs);
  t.set(b.zt);
  b.zs = s.get();  // what the library sees
  b.zt = t.get();
  if (co.labels || co.bad_label || k == ref::kind::dkd) {
    b.labels.resize(n);
    for (std::size_t r = 0; r < n; ++r)
      b.labels[r] = (co.labels && n > 1 && g.coin(0.2)) ? cf.ignore_index : g.integer(0, static_cast<std::int64_t>(c) - 1);
  }
  const std::size_t bad_row = co.bad_label ? n / 2 : n;
  if (co.bad_label) b.labels[bad_row] = static_cast<std::int64_t>(c);
  if (co.weights) {
    b.weights.resize(n);
    for (auto& w : b.weights) w = static_cast<double>(static_cast<Acc>(g.uniform(0.1, 2.0)));
  }
  b.normalizer = co.normalizer;
  ref::batch rb = b;  // the reference: the bad row counted as ignored, checked separately
  if (co.bad_label) rb.labels[bad_row] = cf.ignore_index;
  const ref::result want = ref::evaluate(cf, rb);

  typename B::session run(co.threads);
  guarded_array<std::int64_t, Space> labels(b.labels.empty() ? std::vector<std::int64_t>{0} : b.labels);
  guarded_array<Acc, Space> weights(std::vector<Acc>(b.weights.begin(), b.weights.end()));
  guarded_array<Acc, Space> normalizer(std::vector<Acc>{static_cast<Acc>(co.normalizer)});
  guarded_array<Acc, Space> temperature(std::vector<Acc>{static_cast<Acc>(cf.temperature)});
  guarded_array<Acc, Space> d_kl(n), d_ent(n), d_top(n), d_hard(n), d_t(1);
  soft_target_extras<Acc, Space> ex;
  if (!b.labels.empty()) ex.labels = labels.template view<const std::int64_t>();
  if (co.weights) ex.row_weights = weights.template view<const Acc>();
  if (co.normalizer >= 0) ex.normalizer = normalizer.template view<const Acc>();
  if (co.temperature_in_memory) ex.temperature = temperature.template view<const Acc>();
  if (co.diagnostics) {
    ex.row_kl = d_kl.view();
    ex.row_teacher_entropy = d_ent.view();
    ex.row_top1_agreement = d_top.view();
    if (!b.labels.empty()) ex.row_hard_loss = d_hard.view();
  }
  const std::size_t loss_n = cf.reduction == ref::reduction::none ? n : 1;
  distill_test::workspace<Space> ws(soft_target_workspace_size(run.ctx, static_cast<index_t>(n)));
  ref::config cf_call = cf;
  if (co.temperature_in_memory) cf_call.temperature = 1234.5;  // must be ignored in favour of the value in memory
  constexpr double acc0 = 0.125;

  std::vector<double> loss_fwd, grad_bwd;
  for (pass p : {pass::forward, pass::backward, pass::forward_backward}) {
    INFO(B::name << " " << name_of(k) << " " << name_of(p) << " n=" << n << " c=" << c << " pad=" << co.pad << " T="
                 << cf.temperature << " red=" << static_cast<int>(cf.reduction) << " " << dtype_name<TS>() << "/" << dtype_name<TT>());
    guarded_tensor<Acc, 1, Space> loss({index_t(loss_n)});
    guarded_tensor<TS, 2, Space> s_copy(shape, pad, 1, co.column_major);  // in place: a fresh student each pass
    guarded_tensor<TS, 2, Space> grad_own(shape, pad, 1, co.column_major);
    s_copy.set(b.zs);
    grad_own.fill(co.accumulate ? acc0 : 0.0);
    auto ex_p = ex;
    if (co.grad_temperature && p != pass::forward) ex_p.grad_temperature = d_t.view();
    auto gv = co.in_place ? s_copy.template view<std::remove_const_t<TS>>() : grad_own.template view<std::remove_const_t<TS>>();
    auto sv = co.in_place ? s_copy.template view<const TS>() : s.template view<const TS>();
    const status st = call(k, p, run.ctx, sv, t.template view<const TT>(), loss.view(), gv, cf_call, ex_p, co.accumulate, ws.view());
    INFO(st.to_string());
    if (co.bad_label && on_host) {  // the CPU sees the label and refuses it
      CHECK(st.code() == errc::invalid_argument);
      continue;
    }
    REQUIRE(st.ok());
    run.sync();
    CHECK(loss.intact());
    CHECK(t.intact());
    CHECK(ws.intact());
    if (p != pass::backward) {
      auto got = loss.get();
      if (co.bad_label) {  // CUDA: the bad row is NaN, and so is any reduction over it
        const std::size_t at = cf.reduction == ref::reduction::none ? bad_row : 0;
        CHECK(std::isnan(got[at]));
        got[at] = want.loss[at];
      }
      if (!(co.bad_label && cf.reduction != ref::reduction::none)) CHECK_CLOSE("loss", got, want.loss, tl.loss);
      if (p == pass::forward) loss_fwd = got;
      else CHECK(got == loss_fwd);  // the fused pass computes the loss exactly as the forward
    }
    if (p != pass::forward) {
      guarded_tensor<TS, 2, Space>& gm = co.in_place ? s_copy : grad_own;
      CHECK(gm.intact());
      std::vector<double> gd = gm.get();
      if (co.accumulate && !co.in_place)
        for (auto& x : gd) x -= guarded_tensor<TS, 2, Space>::as_double(store<TS>(acc0));
      if (co.bad_label)
        for (std::size_t j = 0; j < c; ++j) {
          CHECK(std::isnan(gd[bad_row * c + j]));
          gd[bad_row * c + j] = want.grad[bad_row * c + j];
        }
      CHECK_CLOSE("grad_student", gd, want.grad, tl.grad);
      if (p == pass::backward) grad_bwd = gd;
      else CHECK(gd == grad_bwd);  // backward and fused write the same gradient
      if (!co.in_place) CHECK(s.intact());
    }
    if (co.diagnostics && !co.bad_label) {
      CHECK_CLOSE("row_kl", d_kl.get(), want.row_kl, tl.diag);
      CHECK_CLOSE("row_teacher_entropy", d_ent.get(), want.row_entropy, tl.diag);
      CHECK(d_top.get() == want.row_top1);
      if (!b.labels.empty()) CHECK_CLOSE("row_hard_loss", d_hard.get(), want.row_hard, tl.diag);
      CHECK((d_kl.intact() && d_ent.intact() && d_top.intact() && d_hard.intact()));
    }
    if (co.grad_temperature && p != pass::forward && !co.bad_label) {
      // dL/dT against central differences of the reference loss in T (the reference is in double)
      auto f = [&](const std::vector<double>& tt) {
        ref::config c2 = cf;
        c2.temperature = tt[0];
        return ref::total_loss(c2, rb);
      };
      const double fd = distill_test::numeric_gradient(f, std::vector<double>{cf.temperature}, 1e-5)[0] * cf.grad_scale;
      CHECK_CLOSE_SCALAR("grad_temperature", d_t.get()[0], fd, tl.dt);
      CHECK(d_t.intact());
    }
  }
}

}  // namespace st_test
