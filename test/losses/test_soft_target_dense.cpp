// SPDX-License-Identifier: MIT
// Dense soft-target losses on the CPU (forward KL, reverse KL, JSD, soft CE, DKD): the reference's
// gradients against finite differences, then the library against the reference over shapes,
// dtypes, layouts, temperatures, reductions and every option.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "soft_target_runner.hpp"

using namespace st_test;
using distill_test::tolerance;

namespace {

const ref::kind all_kinds[] = {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd,
                               ref::kind::soft_cross_entropy, ref::kind::dkd};

ref::batch make_batch(distill_test::rng& g, std::size_t n, std::size_t c, double sd, double masked = 0.0) {
  ref::batch b;
  b.n = n, b.c = c;
  b.zs = random_logits(g, n, c, sd, masked);
  b.zt = random_logits(g, n, c, sd, masked);
  return b;
}

// float path vs double reference (soft_target_runner.hpp)
tolerances float_tol(double max_logit_over_t, double c_t) { return float_tolerances(max_logit_over_t, c_t); }
const tolerances& double_tol = double_tolerances;

}  // namespace

TEST_CASE("reference gradients match central finite differences", "[soft_target][reference]") {
  distill_test::rng g(1);
  for (ref::kind k : all_kinds) {
    for (double t : {1.0, 2.5}) {
      for (double beta : {0.0, 1e-3, 0.3, 0.5, 1.0}) {
        if (k != ref::kind::jsd && beta != 0.5) continue;
        for (bool trl : {false, true}) {
          if (k != ref::kind::jsd && trl) continue;
          ref::config cf;
          cf.k = k;
          cf.temperature = t;
          cf.jsd_beta = beta;
          cf.jsd_trl = trl;
          cf.dkd_alpha = 1.3, cf.dkd_beta = 2.0;
          cf.hard_weight = 0.4;
          cf.reduction = ref::reduction::mean;
          ref::batch b = make_batch(g, 3, 6, 1.5);
          b.labels = {2, 0, 5};
          b.weights = {0.5, 1.0, 2.0};
          const auto want = ref::evaluate(cf, b).grad;
          const auto fd = distill_test::numeric_gradient(
              [&](const std::vector<double>& zs) {
                ref::batch b2 = b;
                b2.zs = zs;
                return ref::total_loss(cf, b2);
              },
              b.zs);
          INFO(name_of(k) << " T=" << t << " beta=" << beta << " trl=" << trl);
          CHECK_CLOSE("reference gradient", want, fd, distill_test::tol::fd);
        }
      }
    }
  }
}

TEST_CASE("dense losses match the reference on random shapes, float and double", "[soft_target][cpu]") {
  distill_test::rng g(2);
  const std::size_t shapes[][2] = {{1, 3}, {3, 5}, {7, 17}, {4, 100}, {2, 1000}, {2, 4099}};
  for (ref::kind k : all_kinds) {
    for (auto [n, c] : shapes) {
      for (double t : {1.0, 2.0, 0.5}) {
        ref::config cf;
        cf.k = k;
        cf.temperature = t;
        cf.t_squared = t != 0.5;
        cf.jsd_beta = 0.3;
        cf.dkd_alpha = 1.0, cf.dkd_beta = 8.0;
        cf.reduction = c % 2 ? ref::reduction::batchmean : ref::reduction::sum;
        const ref::batch b = make_batch(g, n, c, 2.0);
        const double ct = cf.t_squared ? t * t : 1.0;
        run_case<float, float>(k, cf, b, {}, float_tol(8 / t, ct), n * c);
        run_case<double, double>(k, cf, b, {}, double_tol, n * c + 1);
      }
    }
  }
}

TEST_CASE("a 150000-class row", "[soft_target][cpu][wide]") {
  distill_test::rng g(3);
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::jsd, ref::kind::dkd}) {
    ref::config cf;
    cf.k = k;
    cf.temperature = 2.0;
    const ref::batch b = make_batch(g, 2, 150000, 3.0);
    run_case<float, float>(k, cf, b, {}, float_tol(12 / 2.0, 4.0), 5);
  }
}

TEST_CASE("every reduction, labels with ignore_index, weights, normalizer, hard-label term", "[soft_target][cpu]") {
  distill_test::rng g(4);
  for (ref::kind k : all_kinds) {
    for (ref::reduction red : {ref::reduction::none, ref::reduction::sum, ref::reduction::mean, ref::reduction::batchmean}) {
      for (int variant = 0; variant < 3; ++variant) {
        ref::config cf;
        cf.k = k;
        cf.reduction = red;
        cf.temperature = variant == 1 ? 1.0 : 3.0;  // T == 1 takes the hard term from q itself
        cf.soft_weight = 0.7;
        cf.hard_weight = variant == 0 ? 0.0 : 0.3;
        cf.grad_scale = variant == 2 ? 2.5 : 1.0;
        cf.jsd_beta = 0.8;
        case_options co;
        co.labels = true;
        co.weights = variant != 1;
        if (variant == 2 && (red == ref::reduction::mean || red == ref::reduction::batchmean)) co.normalizer = 17.0;
        for (std::size_t c : {std::size_t(23), std::size_t(9)}) {  // 9: the rows-in-lanes path (C <= 16)
          const ref::batch b = make_batch(g, 19, c, 2.0);
          run_case<float, float>(k, cf, b, co, float_tol(3, cf.temperature * cf.temperature), 40 + variant);
          run_case<double, double>(k, cf, b, co, double_tol, 50 + variant);
        }
      }
    }
  }
}

TEST_CASE("diagnostics and the temperature gradient from the same pass", "[soft_target][cpu]") {
  distill_test::rng g(5);
  for (ref::kind k : all_kinds) {
    for (bool t2 : {true, false}) {
      ref::config cf;
      cf.k = k;
      cf.temperature = 1.7;
      cf.t_squared = t2;
      cf.hard_weight = 0.5;
      cf.grad_scale = 1.5;
      cf.reduction = ref::reduction::mean;
      cf.jsd_beta = 0.4;
      cf.dkd_alpha = 0.7, cf.dkd_beta = 3.0;
      case_options co;
      co.labels = true;
      co.weights = true;
      co.diagnostics = true;
      co.grad_temperature = true;
      for (std::size_t c : {std::size_t(31), std::size_t(7)}) {
        const ref::batch b = make_batch(g, 21, c, 1.5);
        run_case<float, float>(k, cf, b, co, float_tol(4, 3), 60);
        run_case<double, double>(k, cf, b, co, double_tol, 61);
      }
    }
  }
}

TEST_CASE("strided rows with padding, column-major views and the gradient in place", "[soft_target][cpu]") {
  distill_test::rng g(6);
  for (ref::kind k : all_kinds) {
    ref::config cf;
    cf.k = k;
    cf.temperature = 2.0;
    cf.hard_weight = 0.25;
    for (std::size_t c : {std::size_t(37), std::size_t(12), std::size_t(2051)}) {  // 2051: streaming stores
    const ref::batch b = make_batch(g, c > 1000 ? 3 : 18, c, 2.0);
    case_options padded;
    padded.pad = 11;
    padded.labels = true;
    run_case<float, float>(k, cf, b, padded, float_tol(4, 4), 70);
    case_options colmajor;
    colmajor.column_major = true;
    colmajor.pad = 3;
    colmajor.labels = true;
    run_case<float, float>(k, cf, b, colmajor, float_tol(4, 4), 71);
    case_options inplace;
    inplace.in_place = true;
    inplace.labels = true;
    inplace.diagnostics = true;
    inplace.grad_temperature = true;
    run_case<float, float>(k, cf, b, inplace, float_tol(4, 4), 72);
    inplace.pad = 5;
    run_case<double, double>(k, cf, b, inplace, double_tol, 73);
    inplace.column_major = true;
    run_case<float, float>(k, cf, b, inplace, float_tol(4, 4), 74);
    }
  }
}

TEST_CASE("mixed and 16-bit dtypes accumulate in float", "[soft_target][cpu][dtype]") {
  using distill::bfloat16;
  using distill::float16;
  distill_test::rng g(7);
  for (ref::kind k : all_kinds) {
    ref::config cf;
    cf.k = k;
    cf.temperature = 2.0;
    for (std::size_t c : {std::size_t(300), std::size_t(11)}) {
    const ref::batch b = make_batch(g, 20, c, 2.0);
    const auto tl = float_tol(4, 4);
    case_options co;
    co.labels = true;
    run_case<float, bfloat16>(k, cf, b, co, tl, 80);  // bf16 teacher, fp32 student
    run_case<float, float16>(k, cf, b, co, tl, 81);
    run_case<float, double>(k, cf, b, co, tl, 82);
    // 16-bit students: the gradient is stored in the student's type
    const tolerances tl16{tl.loss, {2e-3, 1e-2}, tl.diag, tl.dt};
    run_case<bfloat16, bfloat16>(k, cf, b, co, tolerances{tl.loss, {1e-4, 1e-2}, tl.diag, tl.dt}, 83);
    run_case<float16, float16>(k, cf, b, co, tl16, 84);
    run_case<double, float>(k, cf, b, co, double_tol, 85);
    }
  }
}

TEST_CASE("extreme logits (+-1e4) and -inf masks", "[soft_target][cpu]") {
  distill_test::rng g(8);
  for (ref::kind k : all_kinds) {
    for (double t : {1.0, 4.0}) {
      ref::config cf;
      cf.k = k;
      cf.temperature = t;
      cf.jsd_beta = 0.5;
      // huge logits: spreads of 1e4 make most classes underflow; the LSEs are ~1e4 / T
      ref::batch b = make_batch(g, 4, 29, 3e3);
      for (std::size_t i = 0; i < b.zs.size(); i += 7) b.zs[i] = (i % 2 ? 1e4 : -1e4);
      for (std::size_t i = 3; i < b.zt.size(); i += 5) b.zt[i] = (i % 2 ? -1e4 : 1e4);
      // reverse KL and JSD at such spreads are infinite or tiny differences of huge numbers;
      // the reference in double and the float path agree up to eps * |LSE|
      run_case<double, double>(k, cf, b, {}, tolerances{{1e-8, 1e-9}, {1e-10, 1e-8}, {1e-8, 1e-9}, {1e-6, 1e-6}}, 90);
      run_case<float, float>(k, cf, b, {}, float_tol(1e4 / t, t * t), 91);
      // -inf masks in both (never a whole row)
      ref::batch m = make_batch(g, 6, 40, 2.0, 0.3);
      // make teacher and student share the masked classes, so every divergence stays finite
      for (std::size_t i = 0; i < m.zs.size(); ++i)
        if (std::isinf(m.zs[i]) || std::isinf(m.zt[i])) m.zs[i] = m.zt[i] = -ref::inf;
      case_options co;
      co.diagnostics = true;
      co.grad_temperature = true;
      co.labels = k == ref::kind::dkd;
      if (k == ref::kind::dkd) continue;  // DKD's labels may land on a masked class: its own test below
      run_case<float, float>(k, cf, m, co, float_tol(2, t * t), 92);
      run_case<double, double>(k, cf, m, co, double_tol, 93);
    }
  }
}
