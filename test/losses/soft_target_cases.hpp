// SPDX-License-Identifier: MIT
#pragma once
// Soft-target cases written once for every backend (support/backend.hpp). The including file
// defines `test_space` first: test_soft_target_backends.cpp with host_space (the CPU binary),
// test_soft_target_cuda.cu with cuda_space. Each backend runs the dtypes it takes: double on
// the CPU, bfloat16 on CUDA, float on both.
//
// Shapes cross the CUDA launchers' boundaries: the register-resident kernel up to C = 8192
// (4096 for JSD), the streaming kernel beyond, aligned and unaligned rows, and enough rows that
// the streaming kernel's persistent grid (at most 4 blocks per SM) walks several rows per block.

#include <catch2/catch.hpp>

#include <cmath>
#include <type_traits>
#include <vector>

#include "soft_target_runner.hpp"

namespace st_cases {

using namespace st_test;
inline constexpr bool on_host = std::is_same_v<test_space, distill::host_space>;
/// The 16-bit (CUDA) or wider (CPU) dtype a backend checks besides float.
using other_t = std::conditional_t<on_host, double, distill::bfloat16>;

inline const ref::kind all_kinds[] = {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd,
                                      ref::kind::soft_cross_entropy, ref::kind::dkd};

inline ref::batch make_batch(distill_test::rng& g, std::size_t n, std::size_t c, double sd, double masked = 0.0) {
  ref::batch b;
  b.n = n, b.c = c;
  b.zs = random_logits(g, n, c, sd, masked);
  b.zt = random_logits(g, n, c, sd, masked);
  return b;
}

/// float, and the other dtype with its tolerance.
inline void run_both(ref::kind k, const ref::config& cf, const ref::batch& b, const case_options& co, const tolerances& tl,
                     std::uint64_t salt) {
  run_case<float, float, test_space>(k, cf, b, co, tl, salt);
  if constexpr (on_host) run_case<double, double, test_space>(k, cf, b, co, double_tolerances, salt + 1);
  else run_case<other_t, other_t, test_space>(k, cf, b, co, widened(tl, {2e-3, 1e-2}), salt + 1);
}

}  // namespace st_cases

TEST_CASE("soft targets on every backend: resident and streaming widths, aligned and not", "[soft_target][backend]") {
  using namespace st_cases;
  distill_test::rng g(101);
  // (n, C, pad): odd pads break the 16-byte alignment of the vector loads
  const std::size_t shapes[][3] = {{1, 3, 0}, {5, 17, 3}, {9, 64, 0}, {4, 3129, 0}, {3, 4096, 4},
                                   {2, 4097, 0}, {2, 8192, 0}, {2, 8193, 1}, {2, 32000, 0}, {1, 150000, 0}};
  for (ref::kind k : all_kinds) {
    for (auto [n, c, pad] : shapes) {
      ref::config cf;
      cf.k = k;
      cf.temperature = 2.0;
      cf.jsd_beta = 0.3;
      cf.reduction = c % 2 ? ref::reduction::batchmean : ref::reduction::sum;
      const ref::batch b = make_batch(g, n, c, 2.0);
      case_options co;
      co.pad = pad;
      run_both(k, cf, b, co, float_tolerances<test_space>(4, 4), n * c);
    }
  }
}

TEST_CASE("soft targets on every backend: the streaming kernel's persistent rows (600 x 9000), ignored rows among them",
          "[soft_target][backend]") {
  using namespace st_cases;
  distill_test::rng g(111);
  for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::jsd}) {
    ref::config cf;
    cf.k = k;
    cf.temperature = 2.0;
    cf.hard_weight = 0.3;
    cf.reduction = ref::reduction::mean;
    case_options co;
    co.labels = true;  // about a fifth of the rows ignored: the persistent loop skips them
    co.weights = true;
    const ref::batch b = make_batch(g, 600, 9000, 2.0);
    run_case<float, float, test_space>(k, cf, b, co, float_tolerances<test_space>(4, 4), 1);
  }
}

TEST_CASE("soft targets on every backend: every reduction and option, scalars in memory, dL/dT, diagnostics",
          "[soft_target][backend]") {
  using namespace st_cases;
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
        case_options co;
        co.labels = co.weights = co.diagnostics = co.grad_temperature = true;
        co.temperature_in_memory = true;
        if (red == ref::reduction::mean || red == ref::reduction::batchmean) co.normalizer = 13.0;
        const ref::batch b = make_batch(g, 7, c, 1.5);
        run_case<float, float, test_space>(k, cf, b, co, float_tolerances<test_space>(4, 7), c + static_cast<std::size_t>(red));
        co.normalizer = -1;  // mean counts its divisor (on the device on CUDA)
        co.temperature_in_memory = false;
        run_case<float, float, test_space>(k, cf, b, co, float_tolerances<test_space>(4, 7), c + 10);
      }
    }
  }
}

TEST_CASE("soft targets on every backend: in place, accumulate, an out-of-range label", "[soft_target][backend]") {
  using namespace st_cases;
  distill_test::rng g(103);
  for (ref::kind k : all_kinds) {
    for (std::size_t c : {std::size_t(100), std::size_t(10000)}) {
      ref::config cf;
      cf.k = k;
      cf.temperature = 3.0;
      cf.hard_weight = 0.2;
      const ref::batch b = make_batch(g, 6, c, 2.0);
      const tolerances tl = float_tolerances<test_space>(4, 9);
      case_options inplace;
      inplace.in_place = true;
      inplace.labels = true;
      run_both(k, cf, b, inplace, tl, 1);
      case_options acc;
      acc.accumulate = true;
      acc.labels = true;
      run_case<float, float, test_space>(k, cf, b, acc, tl, 3);
      case_options bad;  // the CPU refuses the label; CUDA cannot see it and makes the row NaN
      bad.labels = true;
      bad.bad_label = true;
      cf.reduction = ref::reduction::none;
      run_case<float, float, test_space>(k, cf, b, bad, tl, 4);
    }
  }
}

TEST_CASE("soft targets on every backend: extreme logits and -inf masks", "[soft_target][backend]") {
  using namespace st_cases;
  distill_test::rng g(105);
  for (std::size_t c : {std::size_t(29), std::size_t(12000)}) {
    ref::batch b = make_batch(g, 4, c, 3e3);
    for (std::size_t i = 0; i < b.zs.size(); i += 7) b.zs[i] = (i % 2 ? 1e4 : -1e4);
    ref::config cf;
    cf.temperature = 4.0;
    run_case<float, float, test_space>(ref::kind::kl_teacher_student, cf, b, {}, float_tolerances<test_space>(1e4 / 4, 16), 1);
    ref::batch m = make_batch(g, 5, c, 2.0, 0.3);
    for (std::size_t i = 0; i < m.zs.size(); ++i)  // shared masks: every divergence stays finite
      if (std::isinf(m.zs[i]) || std::isinf(m.zt[i])) m.zs[i] = m.zt[i] = -ref::inf;
    for (ref::kind k : {ref::kind::kl_teacher_student, ref::kind::kl_student_teacher, ref::kind::jsd, ref::kind::soft_cross_entropy}) {
      cf.k = k;
      case_options co;
      co.diagnostics = co.grad_temperature = true;
      run_case<float, float, test_space>(k, cf, m, co, float_tolerances<test_space>(2, 16), 2);
    }
  }
}
