// SPDX-License-Identifier: MIT
#pragma once
// Runs attention transfer on a random case on either backend (support/backend.hpp): student,
// teacher and gradient as padded tensors with canaries in the space's memory (on the CPU also
// with a stride > 1 along W, which the CUDA kernels refuse), the loss between canary bands;
// calls forward / backward / forward_backward and returns every output densely in double. The
// CPU tests call run_library<T, TT> (host_space), the cases of every backend
// run_library<T, T, test_space>.
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "distill/attention/attention_transfer.hpp"
#include "reference/attention_ref.hpp"
#include "support/backend.hpp"
#include "support/random.hpp"

namespace at_test {

using namespace distill;

inline attention_ref::at_config ref_config(const attention_transfer_options& o, double weight = 1.0) {
  attention_ref::at_config c;
  c.p = o.p;
  c.beta = o.beta;
  c.eps = o.eps;
  c.paper = o.form == attention_transfer_form::paper_norm;
  c.reduction = o.reduction == reduction::none ? attention_ref::red::none
                : o.reduction == reduction::sum ? attention_ref::red::sum
                                                : attention_ref::red::mean;
  c.weight = weight;
  c.grad_scale = o.grad_scale;
  return c;
}

/// Feature values kept away from 0 (|x| in [0.2, 1.5]) so |x|^p is smooth for every p tested.
inline std::vector<double> features(distill_test::rng& g, std::size_t n, double scale = 1.0) {
  std::vector<double> v(n);
  for (auto& x : v) x = scale * (g.coin() ? 1 : -1) * g.uniform(0.2, 1.5);
  return v;
}

inline attention_transfer_options random_options(distill_test::rng& g) {
  attention_transfer_options o;
  const double ps[] = {2.0, 1.0, 3.0, 2.5, 0.7};
  o.p = ps[g.integer(0, 4)];
  o.beta = g.coin(0.3) ? 1e3 : g.uniform(0.5, 2.0);
  o.form = g.coin() ? attention_transfer_form::squared_mean : attention_transfer_form::paper_norm;
  const reduction reds[] = {reduction::mean, reduction::sum, reduction::none, reduction::batchmean};
  o.reduction = reds[g.integer(0, 3)];
  o.grad_scale = g.coin(0.3) ? -0.75 : 1.0;
  return o;
}

struct shape {
  int B, Cs, Ct, H, W;
};

/// A random shape: small (the CPU's many trials) or up to 40 channels and 20 x 20 maps.
inline shape random_shape(distill_test::rng& g, bool large = false) {
  shape s{static_cast<int>(g.integer(1, large ? 5 : 4)), static_cast<int>(g.integer(1, large ? 40 : 9)),
          static_cast<int>(g.integer(1, large ? 40 : 9)), static_cast<int>(g.integer(1, large ? 20 : 7)),
          static_cast<int>(g.integer(1, large ? 20 : 9))};
  if (g.coin(0.15)) s.H = s.W = 1;  // a 1x1 spatial map
  return s;
}

struct at_outputs {
  std::vector<double> loss, grad;
  bool canaries_ok = true;  // around the loss, in the gradient's and the inputs' padding, around the scratch
  status st;
};

/// pass 0: forward_backward, 1: forward, 2: backward. With `grad_init`, the gradient holds those
/// values before the call (for opt.accumulate).
template <class T, class TT = T, class Space = host_space>
at_outputs run_library(const shape& sh, const std::vector<double>& s, const std::vector<double>& t,
                       const attention_transfer_options& opt, int pass, distill_test::rng& g, int threads,
                       const std::vector<double>* grad_init = nullptr) {
  using distill_test::guarded_tensor;
  constexpr bool on_host = std::is_same_v<Space, host_space>;
  const bool pad = g.coin(0.6);
  const index_t inner = on_host && g.coin(0.2) ? 2 : 1;
  auto pads = [&] {
    return pad ? std::array<index_t, 4>{g.integer(0, 3), g.integer(0, 3), g.integer(0, 5), 0} : std::array<index_t, 4>{};
  };
  guarded_tensor<T, 4, Space> xs({sh.B, sh.Cs, sh.H, sh.W}, pads(), inner);
  guarded_tensor<TT, 4, Space> xt({sh.B, sh.Ct, sh.H, sh.W}, pads(), inner);
  guarded_tensor<T, 4, Space> gr({sh.B, sh.Cs, sh.H, sh.W}, pads(), on_host && g.coin(0.2) ? 3 : 1);
  xs.set(s);
  xt.set(t);
  if (grad_init) gr.set(*grad_init);
  using Acc = accum_t<T>;
  const std::size_t nloss = opt.reduction == reduction::none ? static_cast<std::size_t>(sh.B) : 1;
  distill_test::guarded_array<Acc, Space> loss(nloss);
  auto lv = loss.view();
  typename distill_test::backend<Space>::session run(threads);
  distill_test::workspace<Space> ws(attention_transfer_workspace_size(run.ctx, sh.B, sh.H, sh.W));
  const auto s_in = xs.template view<const T>();
  const auto t_in = xt.template view<const TT>();
  // Initialised, not assigned: nvcc warns that an assignment discards a [[nodiscard]] status&.
  const status st = [&]() -> status {
    if (pass == 0) return attention_transfer_forward_backward(run.ctx, s_in, t_in, lv, gr.view(), ws.view(), opt);
    if (pass == 1) return attention_transfer_forward(run.ctx, s_in, t_in, lv, ws.view(), opt);
    return attention_transfer_backward(run.ctx, xs.view(), xt.view(), gr.view(), ws.view(), opt);
  }();
  run.sync();
  const bool canaries_ok = loss.intact() && gr.intact() && xs.intact() && xt.intact() && ws.intact();
  return at_outputs{pass != 2 ? loss.get() : std::vector<double>{}, pass != 1 ? gr.get() : std::vector<double>{}, canaries_ok, st};
}

inline std::vector<double> reduced_loss(const attention_ref::at_result& r, reduction red) {
  return red == reduction::none ? r.per_sample : std::vector<double>{r.loss};
}

}  // namespace at_test
