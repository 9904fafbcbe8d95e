// SPDX-License-Identifier: MIT
#pragma once
// Runs the attention-map losses (MSE, KL(teacher || student)) on a random case on either backend
// (support/backend.hpp): student, teacher and gradient as padded tensors with canaries in the
// space's memory (on the CPU also with a key stride > 1, which the CUDA kernels refuse), masks
// with a padded row stride, the loss between canary bands; calls forward / backward /
// forward_backward and returns every output densely in double. The CPU tests call
// run_library<T, TT> (host_space), the cases of every backend run_library<T, T, test_space>.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "distill/attention/attention_map.hpp"
#include "reference/attention_ref.hpp"
#include "support/backend.hpp"
#include "support/random.hpp"

namespace am_test {

using namespace distill;

struct am_shape {
  int B, Hs, Ht, Lq, Lk;
};

struct am_case {
  am_shape sh;
  attention_map_options opt;
  std::vector<int> heads;  // storage behind opt.teacher_heads
  bool kl = false;
  std::vector<std::uint8_t> key_mask, query_mask;  // empty: absent
};

inline attention_ref::am_config ref_config(const am_case& c) {
  attention_ref::am_config r;
  r.kl = c.kl;
  r.student_logits = c.opt.student_input == attention_input::logits;
  r.teacher_logits = c.opt.teacher_input == attention_input::logits;
  r.map = c.opt.head_map == attention_head_map::one_to_one ? attention_ref::heads::one_to_one
          : c.opt.head_map == attention_head_map::index    ? attention_ref::heads::index
                                                           : attention_ref::heads::group_mean;
  r.teacher_heads = c.heads;
  r.reduction = c.opt.reduction == reduction::none ? 0 : c.opt.reduction == reduction::sum ? 1 : c.opt.reduction == reduction::mean ? 2 : 3;
  r.grad_scale = c.opt.grad_scale;
  return r;
}

/// Rows of probabilities over all keys (softmax of normals with deviation sd), some entries
/// exactly 0 when `zeros`. Student rows use a small sd: KL's gradient -p_t/p_s is steep at tiny
/// p_s, where central differences lose accuracy.
inline std::vector<double> probability_rows(distill_test::rng& g, std::size_t rows, int Lk, bool zeros, double sd) {
  std::vector<double> v(rows * Lk);
  for (std::size_t r = 0; r < rows; ++r) {
    double z = 0;
    for (int j = 0; j < Lk; ++j) z += v[r * Lk + j] = (zeros && g.coin(0.2)) ? 0.0 : std::exp(g.normal(0, sd));
    if (z == 0) v[r * Lk] = z = 1.0;
    for (int j = 0; j < Lk; ++j) v[r * Lk + j] /= z;
  }
  return v;
}

/// A random case: every input kind, head mapping, reduction and mask combination. `Lk` > 0 fixes
/// the row length (long rows get fewer queries); otherwise it is drawn (up to 9 when `small`,
/// else 70, a quarter of the cases whole SIMD batches: the CPU's rows-in-registers form).
inline am_case random_case(distill_test::rng& g, bool small = false, int Lk = 0) {
  am_case c;
  const int Hs = static_cast<int>(g.integer(1, small ? 2 : 4));
  c.sh = {static_cast<int>(g.integer(1, small ? 2 : 3)), Hs, Hs, static_cast<int>(g.integer(1, small ? 3 : Lk > 1024 ? 2 : 5)),
          Lk > 0 ? Lk : static_cast<int>(g.integer(1, small ? 9 : 70))};
  if (Lk == 0 && g.coin(0.1)) c.sh.Lk = 1;
  if (Lk == 0 && g.coin(0.25)) c.sh.Lk = small ? 8 : 64;
  c.kl = g.coin();
  c.opt.student_input = g.coin(0.7) ? attention_input::logits : attention_input::probabilities;
  c.opt.teacher_input = g.coin(0.6) ? attention_input::logits : attention_input::probabilities;
  const int map = static_cast<int>(g.integer(0, 2));
  if (map == 1) {
    c.opt.head_map = attention_head_map::index;
    c.sh.Ht = static_cast<int>(g.integer(1, 5));
    for (int h = 0; h < Hs; ++h) c.heads.push_back(static_cast<int>(g.integer(0, c.sh.Ht - 1)));
  } else if (map == 2) {
    c.opt.head_map = attention_head_map::group_mean;
    c.sh.Ht = Hs * static_cast<int>(g.integer(1, 3));
  }
  const reduction reds[] = {reduction::mean, reduction::sum, reduction::none, reduction::batchmean};
  c.opt.reduction = reds[g.integer(0, 3)];
  c.opt.grad_scale = g.coin(0.3) ? 2.5 : 1.0;
  if (g.coin(0.5)) {
    c.key_mask.resize(static_cast<std::size_t>(c.sh.B) * c.sh.Lk);
    for (auto& m : c.key_mask) m = g.coin(0.75) ? static_cast<std::uint8_t>(g.integer(1, 255)) : 0;
    if (g.coin(0.2)) std::fill(c.key_mask.begin(), c.key_mask.begin() + c.sh.Lk, 0);  // a fully masked sample
  }
  if (g.coin(0.3)) {
    c.query_mask.resize(static_cast<std::size_t>(c.sh.B) * c.sh.Lq);
    for (auto& m : c.query_mask) m = g.coin(0.7);
  }
  return c;
}

inline std::vector<double> student_values(distill_test::rng& g, const am_case& c) {
  const std::size_t rows = static_cast<std::size_t>(c.sh.B) * c.sh.Hs * c.sh.Lq;
  if (c.opt.student_input == attention_input::probabilities) return probability_rows(g, rows, c.sh.Lk, false, 0.7);
  return g.normals(rows * c.sh.Lk, 0, 2);
}
inline std::vector<double> teacher_values(distill_test::rng& g, const am_case& c) {
  const std::size_t rows = static_cast<std::size_t>(c.sh.B) * c.sh.Ht * c.sh.Lq;
  if (c.opt.teacher_input == attention_input::probabilities) return probability_rows(g, rows, c.sh.Lk, true, 1.5);
  return g.normals(rows * c.sh.Lk, 0, 2);
}

struct am_outputs {
  std::vector<double> loss, grad;
  bool canaries_ok = true;  // around the loss, in the gradient's padding, in the inputs' padding
  status st;
};

/// pass 0: forward_backward, 1: forward, 2: backward. With `grad_init`, the gradient holds those
/// values before the call (for opt.accumulate).
template <class T, class TT = T, class Space = host_space>
am_outputs run_library(am_case& c, const std::vector<double>& s, const std::vector<double>& t, int pass, distill_test::rng& g,
                       int threads, const std::vector<double>* grad_init = nullptr) {
  using distill_test::guarded_tensor;
  constexpr bool on_host = std::is_same_v<Space, host_space>;
  c.opt.teacher_heads = c.heads;
  const auto& sh = c.sh;
  auto pads = [&] {
    return g.coin(0.6) ? std::array<index_t, 4>{g.integer(0, 3), g.integer(0, 3), g.integer(0, 5), 0} : std::array<index_t, 4>{};
  };
  auto key_stride = [&](double p, index_t k) { return on_host && g.coin(p) ? k : index_t{1}; };
  guarded_tensor<T, 4, Space> xs({sh.B, sh.Hs, sh.Lq, sh.Lk}, pads(), key_stride(0.2, 2));
  guarded_tensor<TT, 4, Space> xt({sh.B, sh.Ht, sh.Lq, sh.Lk}, pads(), key_stride(0.2, 2));
  guarded_tensor<T, 4, Space> gr({sh.B, sh.Hs, sh.Lq, sh.Lk}, pads(), key_stride(0.2, 3));
  xs.set(s);
  xt.set(t);
  if (grad_init) gr.set(*grad_init);
  auto mask = [&](const std::vector<std::uint8_t>& m, int cols) {
    guarded_tensor<std::uint8_t, 2, Space> out(m.empty() ? std::array<index_t, 2>{1, 1} : std::array<index_t, 2>{sh.B, cols},
                                               {g.integer(0, 3), 0}, key_stride(0.3, 2));
    if (!m.empty()) out.set(std::vector<double>(m.begin(), m.end()));
    return out;
  };
  auto km = mask(c.key_mask, sh.Lk), qm = mask(c.query_mask, sh.Lq);
  attention_masks<Space> masks;
  if (!c.key_mask.empty()) masks.key = km.template view<const std::uint8_t>();
  if (!c.query_mask.empty()) masks.query = qm.template view<const std::uint8_t>();
  using Acc = accum_t<T>;
  const index_t nloss = c.opt.reduction == reduction::none ? index_t{sh.B} * sh.Hs * sh.Lq : 1;
  distill_test::guarded_array<Acc, Space> loss(static_cast<std::size_t>(nloss));
  auto lv = loss.view();
  typename distill_test::backend<Space>::session run(threads);
  distill_test::workspace<Space> ws(attention_map_workspace_size(run.ctx));
  const auto s_in = xs.template view<const T>();
  const auto t_in = xt.template view<const TT>();
  // Initialised, not assigned: nvcc warns that an assignment discards a [[nodiscard]] status&.
  const status st = [&]() -> status {
    if (c.kl) {
      if (pass == 0) return attention_map_kl_teacher_student_forward_backward(run.ctx, s_in, t_in, masks, lv, gr.view(), ws.view(), c.opt);
      if (pass == 1) return attention_map_kl_teacher_student_forward(run.ctx, s_in, t_in, masks, lv, ws.view(), c.opt);
      return attention_map_kl_teacher_student_backward(run.ctx, xs.view(), xt.view(), masks, gr.view(), ws.view(), c.opt);
    }
    if (pass == 0) return attention_map_mse_forward_backward(run.ctx, s_in, t_in, masks, lv, gr.view(), ws.view(), c.opt);
    if (pass == 1) return attention_map_mse_forward(run.ctx, s_in, t_in, masks, lv, ws.view(), c.opt);
    return attention_map_mse_backward(run.ctx, xs.view(), xt.view(), masks, gr.view(), ws.view(), c.opt);
  }();
  run.sync();
  const bool canaries_ok = loss.intact() && gr.intact() && xs.intact() && xt.intact() && km.intact() && qm.intact() && ws.intact();
  return am_outputs{pass != 2 ? loss.get() : std::vector<double>{}, pass != 1 ? gr.get() : std::vector<double>{}, canaries_ok, st};
}

inline std::vector<double> expected_loss(const attention_ref::am_result& r, reduction red) {
  return red == reduction::none ? r.per_row : std::vector<double>{r.loss};
}

inline attention_ref::am_result reference(const am_case& c, const std::vector<double>& s, const std::vector<double>& t) {
  return attention_ref::attention_map(s, t, c.sh.B, c.sh.Hs, c.sh.Ht, c.sh.Lq, c.sh.Lk, c.key_mask, c.query_mask, ref_config(c));
}

}  // namespace am_test
