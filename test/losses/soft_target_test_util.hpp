// SPDX-License-Identifier: MIT
#pragma once
// Helpers for the soft-target tests: call any dense primitive by `kind` with options built from a
// reference config, random logits with the features the tests want (-inf masks, extremes).

#include <cstdint>
#include <string>
#include <vector>

#include "distill/losses/dkd.hpp"
#include "distill/losses/jsd.hpp"
#include "distill/losses/kl_student_teacher.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "distill/losses/soft_cross_entropy.hpp"
#include "reference/soft_target_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace st_test {

namespace ref = soft_target_ref;

enum class pass { forward, backward, forward_backward };

/// Tolerances of one comparison against the reference: loss, gradient, diagnostics, dL/dT.
struct tolerances {
  distill_test::tolerance loss, grad, diag, dt;
};

inline const char* name_of(ref::kind k) {
  switch (k) {
    case ref::kind::kl_teacher_student: return "kl_teacher_student";
    case ref::kind::kl_student_teacher: return "kl_student_teacher";
    case ref::kind::jsd: return "jsd";
    case ref::kind::soft_cross_entropy: return "soft_cross_entropy";
    case ref::kind::dkd: return "dkd";
  }
  return "?";
}
inline const char* name_of(pass p) {
  return p == pass::forward ? "forward" : p == pass::backward ? "backward" : "forward_backward";
}

inline distill::reduction to_lib(ref::reduction r) {
  switch (r) {
    case ref::reduction::none: return distill::reduction::none;
    case ref::reduction::sum: return distill::reduction::sum;
    case ref::reduction::mean: return distill::reduction::mean;
    case ref::reduction::batchmean: return distill::reduction::batchmean;
  }
  return distill::reduction::none;
}

template <class O>
O options_from(const ref::config& c) {
  O o;
  o.temperature = static_cast<float>(c.temperature);
  o.scale_by_t_squared = c.t_squared;
  o.reduction = to_lib(c.reduction);
  o.soft_weight = static_cast<float>(c.soft_weight);
  o.hard_label_weight = static_cast<float>(c.hard_weight);
  o.grad_scale = static_cast<float>(c.grad_scale);
  o.ignore_index = c.ignore_index;
  if constexpr (std::is_same_v<O, distill::jsd_options>) {
    o.beta = static_cast<float>(c.jsd_beta);
    o.scaling = c.jsd_trl ? distill::jsd_scaling::trl : distill::jsd_scaling::continuous;
  }
  if constexpr (std::is_same_v<O, distill::dkd_options>) {
    o.alpha = static_cast<float>(c.dkd_alpha);
    o.beta = static_cast<float>(c.dkd_beta);
  }
  return o;
}

/// Call the chosen primitive and pass on any context (distill::cpu or distill::cuda) and views.
/// `accumulate` is applied on top of the config's options; `ws` is the workspace (CUDA).
template <class Ctx, class VS, class VT, class VL, class VG, class Ex>
distill::status call(ref::kind k, pass p, const Ctx& ctx, VS s, VT t, VL loss, VG grad, const ref::config& c,
                     const Ex& ex, bool accumulate = false,
                     distill::tensor_view<std::byte, 1, typename Ctx::memory_space> ws = {}) {
  using namespace distill;
  auto go = [&](auto opt, auto fwd, auto bwd, auto both) {
    opt.accumulate = accumulate;
    switch (p) {
      case pass::forward: return fwd(ctx, s, t, loss, ex, ws, opt);
      case pass::backward: return bwd(ctx, s, t, grad, ex, ws, opt);
      default: return both(ctx, s, t, loss, grad, ex, ws, opt);
    }
  };
#define ST_TEST_LAMBDAS(prim)                                                                       \
  [](auto&&... a) { return prim##_forward(a...); }, [](auto&&... a) { return prim##_backward(a...); }, \
      [](auto&&... a) { return prim##_forward_backward(a...); }
  switch (k) {
    case ref::kind::kl_teacher_student:
      return go(options_from<soft_target_options>(c), ST_TEST_LAMBDAS(kl_teacher_student));
    case ref::kind::kl_student_teacher:
      return go(options_from<soft_target_options>(c), ST_TEST_LAMBDAS(kl_student_teacher));
    case ref::kind::soft_cross_entropy:
      return go(options_from<soft_target_options>(c), ST_TEST_LAMBDAS(soft_cross_entropy));
    case ref::kind::jsd: return go(options_from<jsd_options>(c), ST_TEST_LAMBDAS(jsd));
    case ref::kind::dkd: return go(options_from<dkd_options>(c), ST_TEST_LAMBDAS(dkd));
  }
#undef ST_TEST_LAMBDAS
  return status(errc::invalid_argument, "unknown kind");
}

/// Random logits: normal(0, sd), with a fraction of -inf entries (never a whole row).
inline std::vector<double> random_logits(distill_test::rng& g, std::size_t n, std::size_t c, double sd,
                                         double masked_fraction = 0.0) {
  std::vector<double> v(n * c);
  for (auto& x : v) x = g.normal(0, sd);
  if (masked_fraction > 0)
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t k = 0; k < c; ++k)
        if (k != r % c && g.coin(masked_fraction)) v[r * c + k] = -ref::inf;  // keep one class finite
  return v;
}

template <class T>
std::vector<T> cast_vec(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = distill::store<T>(v[i]);
  return out;
}
/// The values a T-typed copy really holds, back in double (the reference sees what the library sees).
template <class T>
std::vector<double> as_double(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<double>(distill::load<float>(v[i]));
  return out;
}
template <>
inline std::vector<double> as_double<double>(const std::vector<double>& v) {
  return v;
}

}  // namespace st_test
