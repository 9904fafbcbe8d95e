// SPDX-License-Identifier: MIT
#pragma once
// Runs the features family (channel and token statistics, statistics matching, AdaIN, the AdaIN
// statistics loss, embedding alignment, the text-embedding classifier) on given inputs on either
// backend (support/backend.hpp): every tensor padded with canaries in the space's memory (on the
// CPU sometimes with a non-unit inner stride, which the CUDA kernels refuse), the optional inputs
// and losses between canary bands, scratch from a 0xff-filled workspace. Each run_* calls the
// fused pass and the passes alone and returns every output densely in double, with whether all
// canaries survived. Inputs are doubles already rounded to T (the reference sees what the
// library reads). The cases of every backend (features_cases.hpp) call run_*<T, test_space>.
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "distill/features/adain.hpp"
#include "distill/features/embedding_alignment.hpp"
#include "distill/features/feature_stats.hpp"
#include "distill/features/text_embedding_classifier.hpp"
#include "features/features_test_util.hpp"
#include "reference/features_ref.hpp"
#include "support/backend.hpp"
#include "support/random.hpp"

namespace ft_test {

using namespace distill;
using distill_test::guarded_array;
using distill_test::guarded_tensor;
using features_ref::shape4;
using features_test::ext;

template <class Space>
using session = typename distill_test::backend<Space>::session;

/// A tensor with random padding on every axis and, on the CPU only, sometimes inner stride `inner`.
template <class T, int R, class Space>
guarded_tensor<T, R, Space> padded_tensor(distill_test::rng& g, const std::array<index_t, R>& extents, index_t inner = 1) {
  std::array<index_t, R> pad{};
  for (auto& p : pad) p = features_test::random_pad(g);
  return guarded_tensor<T, R, Space>(extents, pad, std::is_same_v<Space, host_space> && g.coin(0.25) ? inner : 1);
}

/// An optional input: the view of `t` when `present`, else the empty view.
template <class U, int R, class Space, class T>
tensor_view<const U, R, Space> optional_view(guarded_tensor<T, R, Space>& t, bool present) {
  return present ? t.template view<const U>() : tensor_view<const U, R, Space>{};
}

/// A 1-D input in the space's memory; when absent (empty) one unused element, whose canary bands are still checked.
template <class T, class Space>
guarded_array<T, Space> optional_array(const std::vector<double>& v) {
  guarded_array<T, Space> a(v.empty() ? 1 : v.size());
  if (!v.empty()) a.set(v);
  return a;
}

inline std::vector<double> bytes(const std::vector<std::uint8_t>& m) { return std::vector<double>(m.begin(), m.end()); }

// ---- channel and token statistics -----------------------------------------------------------

struct stats_outputs {
  std::vector<double> mean, std_dev, grad;
  bool canaries_ok = true;
  status st;
};

/// channel_stats_forward, then channel_stats_backward from dL/dmean, dL/dstd (empty: absent).
template <class T, class Space>
stats_outputs run_channel_stats(const std::vector<double>& x, const shape4& s, const feature_stats_options& o,
                                const std::vector<double>& gmean, const std::vector<double>& gstd, distill_test::rng& g) {
  using Acc = accum_t<T>;
  auto xt = padded_tensor<T, 4, Space>(g, ext(s), 2), gx = padded_tensor<T, 4, Space>(g, ext(s), 3);
  auto mean = padded_tensor<Acc, 2, Space>(g, {s.B, s.C}), sd = padded_tensor<Acc, 2, Space>(g, {s.B, s.C});
  auto gm = padded_tensor<Acc, 2, Space>(g, {s.B, s.C}), gs = padded_tensor<Acc, 2, Space>(g, {s.B, s.C});
  xt.set(x);
  if (!gmean.empty()) gm.set(gmean);
  if (!gstd.empty()) gs.set(gstd);
  session<Space> run;
  const auto xv = xt.template view<const T>();
  const status st_f = channel_stats_forward(run.ctx, xv, mean.view(), sd.view(), o);
  const status st = st_f.ok() ? channel_stats_backward(run.ctx, xv, optional_view<Acc>(gm, !gmean.empty()),
                                                        optional_view<Acc>(gs, !gstd.empty()), gx.view(), o)
                              : st_f;
  run.sync();
  return {mean.get(), sd.get(), gx.get(), xt.intact() && gx.intact() && mean.intact() && sd.intact() && gm.intact() && gs.intact(), st};
}

/// token_stats_forward, then token_stats_backward into a gradient pre-filled with 3 (masked
/// tokens must be overwritten with 0).
template <class T, class Space>
stats_outputs run_token_stats(const std::vector<double>& x, long B, long L, long D, const std::vector<std::uint8_t>& mask,
                              const feature_stats_options& o, const std::vector<double>& gmean, const std::vector<double>& gstd,
                              distill_test::rng& g) {
  using Acc = accum_t<T>;
  auto xt = padded_tensor<T, 3, Space>(g, {B, L, D}, 2), gx = padded_tensor<T, 3, Space>(g, {B, L, D});
  auto mk = padded_tensor<std::uint8_t, 2, Space>(g, {B, L});
  auto mean = padded_tensor<Acc, 2, Space>(g, {B, D}), sd = padded_tensor<Acc, 2, Space>(g, {B, D});
  auto gm = padded_tensor<Acc, 2, Space>(g, {B, D}), gs = padded_tensor<Acc, 2, Space>(g, {B, D});
  xt.set(x);
  gx.fill(3.0);
  if (!mask.empty()) mk.set(bytes(mask));
  gm.set(gmean);
  gs.set(gstd);
  session<Space> run;
  const auto xv = xt.template view<const T>();
  const auto mv = optional_view<std::uint8_t>(mk, !mask.empty());
  const status st_f = token_stats_forward(run.ctx, xv, mv, mean.view(), sd.view(), o);
  const status st = st_f.ok() ? token_stats_backward(run.ctx, xv, mv, gm.template view<const Acc>(), gs.template view<const Acc>(), gx.view(), o)
                              : st_f;
  run.sync();
  return {mean.get(), sd.get(), gx.get(),
          xt.intact() && gx.intact() && mk.intact() && mean.intact() && sd.intact() && gm.intact() && gs.intact(), st};
}

// ---- losses with a scalar value: statistics matching, AdaIN statistics loss ------------------

struct loss_outputs {
  std::vector<double> loss, grad;  // of the fused pass
  std::vector<double> loss_alone;  // of the forward pass alone
  std::vector<double> grad_added;  // of the backward pass alone with accumulate, onto `init`
  bool canaries_ok = true;
  status st;
};

/// One pass (0 fused, 1 forward, 2 backward) of statistics matching or the AdaIN statistics loss.
template <class Ctx, class SV, class TV, class LV, class GV, class WV>
status feature_loss_pass(int pass, const Ctx& ctx, SV s, TV t, LV l, GV g, WV w, const stats_matching_options& o) {
  if (pass == 0) return stats_matching_forward_backward(ctx, s, t, l, g, w, o);
  return pass == 1 ? stats_matching_forward(ctx, s, t, l, w, o) : stats_matching_backward(ctx, s, t, g, w, o);
}
template <class Ctx, class SV, class TV, class LV, class GV, class WV>
status feature_loss_pass(int pass, const Ctx& ctx, SV s, TV t, LV l, GV g, WV w, const adain_stats_loss_options& o) {
  if (pass == 0) return adain_stats_loss_forward_backward(ctx, s, t, l, g, w, o);
  return pass == 1 ? adain_stats_loss_forward(ctx, s, t, l, w, o) : adain_stats_loss_backward(ctx, s, t, g, w, o);
}

/// Statistics matching (stats_matching_options) or the AdaIN statistics loss
/// (adain_stats_loss_options) over [B, C, H, W] features: the fused pass, the forward alone and
/// the backward alone with accumulate, onto `init`.
template <class T, class Space, class Options>
loss_outputs run_feature_loss(const std::vector<double>& s, const shape4& ss, const std::vector<double>& t, const shape4& ts,
                              Options o, const std::vector<double>& init, distill_test::rng& g) {
  using Acc = accum_t<T>;
  auto st_ = padded_tensor<T, 4, Space>(g, ext(ss), 2), tt = padded_tensor<T, 4, Space>(g, ext(ts), 2);
  auto gr = padded_tensor<T, 4, Space>(g, ext(ss), 3), added = padded_tensor<T, 4, Space>(g, ext(ss));
  st_.set(s);
  tt.set(t);
  added.set(init);
  guarded_array<Acc, Space> loss(1), loss_alone(1);
  session<Space> run;
  constexpr bool matching = std::is_same_v<Options, stats_matching_options>;
  distill_test::workspace<Space> ws(matching ? stats_matching_workspace_size<T>(run.ctx, ss.B, ss.C)
                                             : adain_stats_loss_workspace_size<T>(run.ctx, ss.B, ss.C));
  const auto sv = st_.template view<const T>();
  const auto tv = tt.template view<const T>();
  const status st = feature_loss_pass(0, run.ctx, sv, tv, loss.view(), gr.view(), ws.view(), o);
  const status st_f = st.ok() ? feature_loss_pass(1, run.ctx, sv, tv, loss_alone.view(), gr.view(), ws.view(), o) : st;
  o.accumulate = true;
  const status st_b = st_f.ok() ? feature_loss_pass(2, run.ctx, sv, tv, loss.view(), added.view(), ws.view(), o) : st_f;
  run.sync();
  return {loss.get(), gr.get(), loss_alone.get(), added.get(),
          st_.intact() && tt.intact() && gr.intact() && added.intact() && loss.intact() && loss_alone.intact() && ws.intact(), st_b};
}

/// Statistics matching over tokens [B, L, D] with masks (empty: absent), the fused pass.
template <class T, class Space>
loss_outputs run_token_stats_matching(const std::vector<double>& s, long B, long Ls, long D, const std::vector<std::uint8_t>& sm,
                                      const std::vector<double>& t, long Lt, const std::vector<std::uint8_t>& tm,
                                      const stats_matching_options& o, distill_test::rng& g) {
  auto st_ = padded_tensor<T, 3, Space>(g, {B, Ls, D}, 2), tt = padded_tensor<T, 3, Space>(g, {B, Lt, D}),
       gr = padded_tensor<T, 3, Space>(g, {B, Ls, D}, 2);
  auto smk = padded_tensor<std::uint8_t, 2, Space>(g, {B, Ls}), tmk = padded_tensor<std::uint8_t, 2, Space>(g, {B, Lt});
  st_.set(s);
  tt.set(t);
  if (!sm.empty()) smk.set(bytes(sm));
  if (!tm.empty()) tmk.set(bytes(tm));
  guarded_array<accum_t<T>, Space> loss(1);
  session<Space> run;
  distill_test::workspace<Space> ws(stats_matching_workspace_size<T>(run.ctx, B, D));
  const status st = stats_matching_forward_backward(run.ctx, st_.template view<const T>(), optional_view<std::uint8_t>(smk, !sm.empty()),
                                                    tt.template view<const T>(), optional_view<std::uint8_t>(tmk, !tm.empty()),
                                                    loss.view(), gr.view(), ws.view(), o);
  run.sync();
  return {loss.get(), gr.get(), {}, {}, st_.intact() && tt.intact() && gr.intact() && smk.intact() && tmk.intact() && loss.intact() && ws.intact(), st};
}

// ---- AdaIN --------------------------------------------------------------------------------------

struct adain_outputs {
  std::vector<double> out, grad_style, grad_content;
  std::vector<double> style_added;  // the backward again with accumulate and no content gradient, onto `init`
  bool canaries_ok = true;
  status st;
};

template <class T, class Space>
adain_outputs run_adain(const std::vector<double>& x, const shape4& xs, const std::vector<double>& y, const shape4& ys,
                        const std::vector<double>& up, const std::vector<double>& init, adain_options o, bool with_content,
                        distill_test::rng& g) {
  auto xt = padded_tensor<T, 4, Space>(g, ext(xs), 2), yt = padded_tensor<T, 4, Space>(g, ext(ys)),
       ut = padded_tensor<T, 4, Space>(g, ext(xs)), out = padded_tensor<T, 4, Space>(g, ext(xs), 3),
       gy = padded_tensor<T, 4, Space>(g, ext(ys)), gx = padded_tensor<T, 4, Space>(g, ext(xs)),
       added = padded_tensor<T, 4, Space>(g, ext(ys), 2);
  xt.set(x);
  yt.set(y);
  ut.set(up);
  added.set(init);
  session<Space> run;
  const auto xv = xt.template view<const T>();
  const auto yv = yt.template view<const T>();
  const auto uv = ut.template view<const T>();
  const status st_f = adain_forward(run.ctx, xv, yv, out.view(), o);
  const status st_b = st_f.ok() ? adain_backward(run.ctx, xv, yv, uv, gy.view(), with_content ? gx.view() : tensor_view<T, 4, Space>{}, o) : st_f;
  o.accumulate = true;
  const status st = st_b.ok() ? adain_backward(run.ctx, xv, yv, uv, added.view(), tensor_view<T, 4, Space>{}, o) : st_b;
  run.sync();
  return {out.get(), gy.get(), with_content ? gx.get() : std::vector<double>{}, added.get(),
          xt.intact() && yt.intact() && ut.intact() && out.intact() && gy.intact() && gx.intact() && added.intact(), st};
}

// ---- embedding alignment ------------------------------------------------------------------------

struct embedding_case {
  long N, D;
  std::vector<double> s, t, w;  // w: row weights (empty: absent)
  std::vector<std::uint8_t> m;  // row mask (empty: absent)
};

/// The fused pass, the forward alone, the backward alone with accumulate onto `init`.
template <class T, class Space>
loss_outputs run_embedding_alignment(const embedding_case& c, embedding_alignment_options o, const std::vector<double>& init,
                                     distill_test::rng& g) {
  using Acc = accum_t<T>;
  auto st_ = padded_tensor<T, 2, Space>(g, {c.N, c.D}, 2), tt = padded_tensor<T, 2, Space>(g, {c.N, c.D}),
       gr = padded_tensor<T, 2, Space>(g, {c.N, c.D}, 2), added = padded_tensor<T, 2, Space>(g, {c.N, c.D});
  st_.set(c.s);
  tt.set(c.t);
  added.set(init);
  auto w = optional_array<Acc, Space>(c.w);
  auto m = optional_array<std::uint8_t, Space>(bytes(c.m));
  const std::size_t nloss = o.reduction == reduction::none ? static_cast<std::size_t>(c.N) : 1;
  guarded_array<Acc, Space> loss(nloss), loss_alone(nloss);
  session<Space> run;
  distill_test::workspace<Space> ws(embedding_alignment_workspace_size<T>(run.ctx, c.N));
  const auto sv = st_.template view<const T>();
  const auto tv = tt.template view<const T>();
  const auto wv = optional_view<Acc>(w, !c.w.empty());
  const auto mv = optional_view<std::uint8_t>(m, !c.m.empty());
  const status st = embedding_alignment_forward_backward(run.ctx, sv, tv, wv, mv, loss.view(), gr.view(), ws.view(), o);
  const status st_f = st.ok() ? embedding_alignment_forward(run.ctx, sv, tv, wv, mv, loss_alone.view(), ws.view(), o) : st;
  o.accumulate = true;
  const status st_b = st_f.ok() ? embedding_alignment_backward(run.ctx, sv, tv, wv, mv, added.view(), ws.view(), o) : st_f;
  run.sync();
  return {loss.get(), gr.get(), loss_alone.get(), added.get(),
          st_.intact() && tt.intact() && gr.intact() && added.intact() && w.intact() && m.intact() && loss.intact() &&
              loss_alone.intact() && ws.intact(),
          st_b};
}

// ---- text-embedding classifier ------------------------------------------------------------------

struct classifier_case {
  long N, C, D;
  std::vector<double> e, t, bg;     // regions [N, D], classes [C, D], background [D] (empty: none)
  std::vector<std::uint8_t> mask;   // class mask [C] (empty: absent)
  std::vector<double> G;            // dL/dz [N, K] for the backward
  std::vector<std::int64_t> labels; // [N] for the cross-entropy
  std::vector<double> row_weights;  // [N] (empty: absent)
  long K() const { return C + (bg.empty() ? 0 : 1); }
};

struct classifier_outputs {
  std::vector<double> logits;
  std::vector<double> grad_regions, grad_background, grad_classes;  // backward from G (classes: when asked)
  std::vector<double> regions_added, classes_added;                  // the backward again with accumulate: twice
  std::vector<double> ce_loss, ce_loss_alone, ce_regions, ce_background, ce_classes, ce_dz;
  bool canaries_ok = true;
  status st;
};

/// Forward; backward from G (twice, the second with accumulate and no background gradient); the
/// fused cross-entropy and its forward alone.
template <class T, class Space>
classifier_outputs run_classifier(const classifier_case& c, const text_classifier_cross_entropy_options& o, bool want_classes,
                                  distill_test::rng& g) {
  using Acc = accum_t<T>;
  const bool bg = !c.bg.empty();
  auto e = padded_tensor<T, 2, Space>(g, {c.N, c.D}, 2), t = padded_tensor<T, 2, Space>(g, {c.C, c.D});
  auto w = padded_tensor<T, 1, Space>(g, {bg ? c.D : 1}, 3);
  auto z = padded_tensor<Acc, 2, Space>(g, {c.N, c.K()}), gz = padded_tensor<Acc, 2, Space>(g, {c.N, c.K()}),
       dz = padded_tensor<Acc, 2, Space>(g, {c.N, c.K()}), z_alone = padded_tensor<Acc, 2, Space>(g, {c.N, c.K()});
  auto ge = padded_tensor<T, 2, Space>(g, {c.N, c.D}, 2), gt = padded_tensor<T, 2, Space>(g, {c.C, c.D}),
       cge = padded_tensor<T, 2, Space>(g, {c.N, c.D}), cgt = padded_tensor<T, 2, Space>(g, {c.C, c.D}, 2);
  auto gw = padded_tensor<T, 1, Space>(g, {bg ? c.D : 1}, 2), cgw = padded_tensor<T, 1, Space>(g, {bg ? c.D : 1});
  e.set(c.e);
  t.set(c.t);
  if (bg) w.set(c.bg);
  gz.set(c.G);
  auto mk = optional_array<std::uint8_t, Space>(bytes(c.mask));
  auto rw = optional_array<Acc, Space>(c.row_weights);
  guarded_array<std::int64_t, Space> labels(c.labels);
  guarded_array<Acc, Space> loss(1), loss_alone(1);
  session<Space> run;
  distill_test::workspace<Space> ws(text_classifier_workspace_size<T>(run.ctx, c.N, c.C, c.D));
  const auto ev = e.template view<const T>();
  const auto tv = t.template view<const T>();
  const auto wv = optional_view<T>(w, bg);
  const auto mv = optional_view<std::uint8_t>(mk, !c.mask.empty());
  const auto rwv = optional_view<Acc>(rw, !c.row_weights.empty());
  const auto yv = labels.template view<const std::int64_t>();
  const tensor_view<T, 1, Space> gw_out = bg ? gw.view() : tensor_view<T, 1, Space>{};
  const tensor_view<T, 2, Space> gt_out = want_classes ? gt.view() : tensor_view<T, 2, Space>{};
  text_classifier_options acc = o;
  acc.accumulate = true;
  std::vector<double> regions_once, classes_once;
  const status st = [&]() -> status {
    DISTILL_TRY(text_classifier_forward(run.ctx, ev, tv, wv, mv, z.view(), ws.view(), o));
    DISTILL_TRY(text_classifier_backward(run.ctx, ev, tv, wv, mv, gz.template view<const Acc>(), ge.view(), gw_out, gt_out, ws.view(), o));
    run.sync();
    regions_once = ge.get();
    if (want_classes) classes_once = gt.get();
    DISTILL_TRY(text_classifier_backward(run.ctx, ev, tv, wv, mv, gz.template view<const Acc>(), ge.view(), tensor_view<T, 1, Space>{},
                                         gt_out, ws.view(), acc));
    DISTILL_TRY(text_classifier_cross_entropy_forward_backward(run.ctx, ev, tv, wv, mv, yv, rwv, loss.view(), cge.view(),
                                                               bg ? cgw.view() : tensor_view<T, 1, Space>{}, cgt.view(), dz.view(),
                                                               ws.view(), o));
    return text_classifier_cross_entropy_forward(run.ctx, ev, tv, wv, mv, yv, rwv, loss_alone.view(), z_alone.view(), ws.view(), o);
  }();
  run.sync();
  if (!st.ok()) return {{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, false, st};
  const bool canaries_ok = e.intact() && t.intact() && w.intact() && z.intact() && z_alone.intact() && gz.intact() && dz.intact() &&
                           ge.intact() && gt.intact() && cge.intact() && cgt.intact() && gw.intact() && cgw.intact() && mk.intact() &&
                           rw.intact() && labels.intact() && loss.intact() && loss_alone.intact() && ws.intact();
  const std::vector<double> none;
  return {z.get(),    regions_once, bg ? gw.get() : none, classes_once, ge.get(), want_classes ? gt.get() : none, loss.get(),
          loss_alone.get(), cge.get(), bg ? cgw.get() : none, cgt.get(), dz.get(), canaries_ok, st};
}

}  // namespace ft_test
