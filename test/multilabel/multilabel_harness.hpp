// SPDX-License-Identifier: MIT
#pragma once
// Runs the multi-label sigmoid soft targets on the reference's inputs on either backend
// (support/backend.hpp): logits and gradients with row stride C + pad and canaries in the padding,
// the optional inputs and the loss in the space's memory; the fused pass, then forward and
// backward alone, which must agree with it (the gradient bitwise; the loss bitwise on CUDA, to
// float rounding on the CPU, whose threads split rows differently). The CPU tests call
// run_library<T> (host_space), the cases of every backend run_library<T, test_space>.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "distill/losses/multilabel_soft_target.hpp"
#include "reference/multilabel_ref.hpp"
#include "support/backend.hpp"

namespace ml_test {

using namespace distill;
using distill_ref::multilabel_ref_inputs;
using distill_ref::multilabel_ref_options;

inline constexpr reduction reductions[] = {reduction::none, reduction::sum, reduction::mean, reduction::batchmean};

inline multilabel_soft_target_options options_of(const multilabel_ref_options& o) {
  multilabel_soft_target_options m;
  m.temperature = static_cast<float>(o.T);
  m.scale_by_t_squared = o.t_squared;
  m.reduction = reductions[o.reduction];
  m.soft_weight = static_cast<float>(o.soft_weight);
  m.hard_label_weight = static_cast<float>(o.hard_weight);
  m.grad_scale = static_cast<float>(o.grad_scale);
  m.subtract_teacher_entropy = o.kl;
  return m;
}

struct ml_outputs {
  std::vector<double> loss, grad;  // of the fused pass
  bool canaries_ok = true;
  bool passes_agree = true;  // forward alone and backward alone against the fused pass
  status st;
};

template <class T, class Space = host_space>
ml_outputs run_library(const multilabel_ref_inputs& in, const multilabel_ref_options& o, int pad = 3, int threads = 2) {
  using distill_test::guarded_array;
  using distill_test::guarded_tensor;
  using Acc = accum_t<T>;
  const index_t N = in.N, C = in.C;
  guarded_tensor<T, 2, Space> s({N, C}, {pad, 0}), t({N, C}, {pad, 0}), g({N, C}, {pad, 0}), g_alone({N, C}, {pad, 0});
  s.set(in.student);
  t.set(in.teacher);
  auto bytes = [](const std::vector<std::uint8_t>& v) { return std::vector<double>(v.begin(), v.end()); };
  guarded_tensor<std::uint8_t, 2, Space> labels({N, C}), mask({N, C});
  if (!in.labels.empty()) labels.set(bytes(in.labels));
  if (!in.mask.empty()) mask.set(bytes(in.mask));
  auto acc = [](const std::vector<double>& v) { return std::vector<Acc>(v.begin(), v.end()); };
  guarded_array<Acc, Space> rw(acc(in.row_weights)), cw(acc(in.class_weights)), pw(acc(in.pos_weights));
  multilabel_soft_target_inputs<Acc, Space> inputs;
  if (!in.labels.empty()) inputs.labels = labels.template view<const std::uint8_t>();
  if (!in.mask.empty()) inputs.mask = mask.template view<const std::uint8_t>();
  if (!in.row_weights.empty()) inputs.row_weights = rw.template view<const Acc>();
  if (!in.class_weights.empty()) inputs.class_weights = cw.template view<const Acc>();
  if (!in.pos_weights.empty()) inputs.pos_weights = pw.template view<const Acc>();
  const std::size_t L = o.reduction == 0 ? static_cast<std::size_t>(N) : 1;
  guarded_array<Acc, Space> loss(L), loss_alone(L);
  typename distill_test::backend<Space>::session run(threads);
  distill_test::workspace<Space> ws(multilabel_soft_target_workspace_size(run.ctx, N, C));
  const auto sv = s.template view<const T>();
  const auto tv = t.template view<const T>();
  const auto opt = options_of(o);
  const status st = multilabel_soft_target_forward_backward(run.ctx, sv, tv, inputs, loss.view(), g.view(), ws.view(), opt);
  run.sync();
  ml_outputs out{loss.get(), g.get(), true, true, st};
  if (!st.ok()) return out;
  const status st_f = multilabel_soft_target_forward(run.ctx, sv, tv, inputs, loss_alone.view(), ws.view(), opt);
  const status st_b = multilabel_soft_target_backward(run.ctx, sv, tv, inputs, g_alone.view(), ws.view(), opt);
  run.sync();
  const auto l_alone = loss_alone.get();
  out.passes_agree = st_f.ok() && st_b.ok() && g_alone.get() == out.grad;
  for (std::size_t i = 0; i < L && out.passes_agree; ++i) {
    if constexpr (std::is_same_v<Space, host_space>)
      out.passes_agree = std::abs(l_alone[i] - out.loss[i]) <= 1e-6 + 1e-5 * std::abs(out.loss[i]);
    else
      out.passes_agree = l_alone[i] == out.loss[i];
  }
  out.canaries_ok = s.intact() && t.intact() && g.intact() && g_alone.intact() && labels.intact() && mask.intact() &&
                    rw.intact() && cw.intact() && pw.intact() && loss.intact() && loss_alone.intact() && ws.intact();
  return out;
}

}  // namespace ml_test
