// SPDX-License-Identifier: MIT
#pragma once
// Runs the WSDDN head on either backend (support/backend.hpp): both logit streams, their
// gradients and the region scores with row stride C + pad and canaries in the padding; labels,
// upstream gradient, image scores and loss in the space's memory; scratch filled with 0xff. One
// call runs forward, backward from a given upstream gradient, the fused loss pass twice (which
// must agree bitwise) and once more with accumulate, and returns every output densely in double.
// The cases of every backend (wsddn_cases.hpp) call run_library<T, test_space>.
#include <array>
#include <cstdint>
#include <vector>

#include "distill/detection/wsddn.hpp"
#include "reference/wsddn_ref.hpp"
#include "support/backend.hpp"
#include "support/random.hpp"

namespace wsddn_test {

using namespace distill;
using distill_ref::wsddn_ref_case;

/// Random logits of spread `spread`, rounded to T (the reference sees what the library reads),
/// and half the time class and region scales other than 1 (representable in the float options).
template <class T>
wsddn_ref_case random_case(distill_test::rng& g, int B, int R, int C, double spread = 2.0) {
  wsddn_ref_case c{B, R, C, {}, {}};
  for (std::size_t i = 0; i < distill_ref::x_size(c); ++i) {
    c.x.push_back(static_cast<double>(static_cast<T>(g.normal(0, spread))));
    c.y.push_back(static_cast<double>(static_cast<T>(g.normal(0, spread))));
  }
  c.class_scale = g.coin() ? 1.0 : static_cast<float>(g.uniform(0.5, 2.5));
  c.region_scale = g.coin() ? 1.0 : static_cast<float>(g.uniform(0.5, 2.5));
  return c;
}

inline wsddn_options options_of(const wsddn_ref_case& c) {
  wsddn_options o;
  o.class_scale = static_cast<float>(c.class_scale);
  o.region_scale = static_cast<float>(c.region_scale);
  return o;
}

struct wsddn_outputs {
  explicit wsddn_outputs(status failed = {}) : st(failed) {}
  status st;                                                   // the first call that failed, or ok
  std::vector<double> scores, region_scores;                   // forward
  std::vector<double> dx, dy;                                  // backward from the upstream gradient
  std::vector<double> fused_scores, loss, fused_dx, fused_dy;  // forward_backward
  std::vector<double> accumulated_dx;                          // forward_backward again, accumulating
  bool repeatable = true;                                      // the fused pass twice: bitwise the same
  bool canaries_ok = true;
};

/// `o`'s loss options (reduction, eps, grad_scale) apply to the fused pass; o.accumulate is set
/// here.
template <class T, class Space = host_space>
wsddn_outputs run_library(const wsddn_ref_case& c, const std::vector<double>& upstream, const std::vector<std::uint8_t>& labels,
                          wsddn_options o, int pad, int threads = 2) {
  using distill_test::guarded_array;
  using distill_test::guarded_tensor;
  const index_t B = c.B, R = c.R, C = c.C;
  const std::array<index_t, 3> extents{B, R, C}, padding{0, pad, 0};
  guarded_tensor<T, 3, Space> x(extents, padding), y(extents, padding), dx(extents, padding), dy(extents, padding),
      rho(extents, padding);
  guarded_tensor<T, 2, Space> s({B, C}, {pad, 0}), up({B, C}, {pad, 0});
  guarded_tensor<std::uint8_t, 2, Space> lab({B, C});
  x.set(c.x);
  y.set(c.y);
  up.set(upstream);
  lab.set(std::vector<double>(labels.begin(), labels.end()));
  guarded_array<accum_t<T>, Space> loss(o.reduction == reduction::none ? static_cast<std::size_t>(B) : 1);
  typename distill_test::backend<Space>::session run(threads);
  distill_test::workspace<Space> ws(wsddn_workspace_size(run.ctx, B, R, C));
  const wsddn_streams<const T, Space> logits{x.template view<const T>(), y.template view<const T>()};
  const wsddn_streams<T, Space> grads{dx.view(), dy.view()};

  wsddn_outputs out;
  const status forward = wsddn_forward(run.ctx, logits, s.view(), rho.view(), ws.view(), o);
  if (!forward.ok()) return wsddn_outputs(forward);
  out.scores = s.get(), out.region_scores = rho.get();
  const status backward = wsddn_backward(run.ctx, logits, up.template view<const T>(), grads, ws.view(), o);
  if (!backward.ok()) return wsddn_outputs(backward);
  out.dx = dx.get(), out.dy = dy.get();
  const auto fused = [&](bool accumulate) {
    o.accumulate = accumulate;
    return wsddn_forward_backward(run.ctx, logits, lab.template view<const std::uint8_t>(), s.view(), loss.view(), grads, ws.view(), o);
  };
  const status first = fused(false);
  if (!first.ok()) return wsddn_outputs(first);
  out.fused_scores = s.get(), out.loss = loss.get(), out.fused_dx = dx.get(), out.fused_dy = dy.get();
  const status again = fused(false);
  if (!again.ok()) return wsddn_outputs(again);
  out.repeatable = s.get() == out.fused_scores && loss.get() == out.loss && dx.get() == out.fused_dx && dy.get() == out.fused_dy;
  const status accumulated = fused(true);
  if (!accumulated.ok()) return wsddn_outputs(accumulated);
  out.accumulated_dx = dx.get();
  out.canaries_ok = x.intact() && y.intact() && dx.intact() && dy.intact() && rho.intact() && s.intact() && up.intact() &&
                    lab.intact() && loss.intact() && ws.intact();
  return out;
}

}  // namespace wsddn_test
