// SPDX-License-Identifier: MIT
#pragma once
// Features-family cases written once for every backend (support/backend.hpp); the including file
// defines `test_space` first (test_features_backends.cpp: host_space; test_features_cuda.cu:
// cuda_space). Each runs the library through features_harness.hpp on inputs rounded to the
// storage type and compares with the double references of reference/features_ref.hpp (whose
// analytic gradients test_features_reference.cpp checks against central finite differences) or,
// for embedding alignment, with central differences of the reference directly. Spatial sizes
// reach every CUDA kernel variant (planes <= 64, <= 256, <= 1024, <= 4096, streaming) and the
// CPU's lane steps and tails.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "features/features_harness.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"

namespace ft_cases {

using namespace ft_test;
using features_test::features;
using features_test::rounded;

/// The storage types each backend takes: the CPU path float and double, CUDA float and 16 bits.
using storage_types = std::conditional_t<std::is_same_v<test_space, host_space>, std::tuple<double, float>,
                                         std::tuple<float, distill::float16, distill::bfloat16>>;

/// Relative accuracy of outputs stored as T (accumulation in accum_t<T>, rounding when stored).
template <class T>
double rel() {
  if constexpr (std::is_same_v<T, double>) return 1e-9;
  else if constexpr (std::is_same_v<T, float>) return 3e-5;
  else if constexpr (std::is_same_v<T, distill::float16>) return 3e-3;
  else return 2e-2;
}

/// |a - e| <= r (max|e| + |e|), r = factor * rel<T>(): gradients are small numbers whose scale
/// varies per case.
template <class T>
distill_test::tolerance scaled(const std::vector<double>& e, double factor = 1) {
  double mx = 0;
  for (double v : e) mx = std::max(mx, std::fabs(v));
  const double r = factor * rel<T>();
  return {r * mx + 1e-30, r};
}

/// Loss values, accumulated in accum_t<T>.
template <class T>
distill_test::tolerance loss_tol() {
  return std::is_same_v<T, double> ? distill_test::tolerance{1e-12, 1e-9} : distill_test::tol::f32_sum;
}

/// The forward pass alone against the fused one: on CUDA the same kernels in the same order
/// (bitwise), on the CPU to the last bits (threads split the work differently).
inline distill_test::tolerance same_pass_tol() {
  return std::is_same_v<test_space, host_space> ? distill_test::tolerance{1e-14, 1e-6} : distill_test::tolerance{0, 0};
}

inline std::vector<double> plus(std::vector<double> a, const std::vector<double>& b, double kb = 1) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += kb * b[i];
  return a;
}
inline std::vector<double> times(std::vector<double> a, double k) {
  for (double& v : a) v *= k;
  return a;
}

inline features_ref::red ref_reduction(reduction r) {
  return r == reduction::sum ? features_ref::red::sum : r == reduction::batchmean ? features_ref::red::batchmean : features_ref::red::mean;
}

/// Even trials: spatial sizes selecting every CUDA kernel variant; odd trials: the CPU's small
/// maps (1x1, up to 9x9, several SIMD lane steps and a tail).
inline shape4 random_shape(distill_test::rng& g, int trial) {
  static const long hw[][2] = {{1, 1}, {5, 7}, {8, 8}, {13, 17}, {16, 16}, {20, 30}, {32, 32}, {50, 60}, {64, 64}, {70, 71}};
  const long B = g.integer(1, 3), C = g.integer(1, 4);
  if (trial % 2 == 0) return {B, C, hw[(trial / 2) % 10][0], hw[(trial / 2) % 10][1]};
  const long pick = g.integer(0, 3);
  if (pick == 0) return {B, C, 1, 1};
  if (pick == 1) return {B, C, g.integer(9, 14), g.integer(9, 14)};
  return {B, C, g.integer(1, 9), g.integer(1, 9)};
}

/// Another spatial size for the same batch and channels.
inline shape4 other_spatial(distill_test::rng& g, const shape4& s, int trial) {
  shape4 r = random_shape(g, trial);
  r.B = s.B, r.C = s.C;
  return r;
}

/// Statistics [B, C] or [B, D] in accum_t<T> and the gradient to the input against the reference.
template <class T>
void check_stats(const stats_outputs& out, const std::vector<double>& mean, const std::vector<double>& std_dev,
                 const std::vector<double>& grad) {
  INFO(out.st.to_string());
  REQUIRE(out.st.ok());
  CHECK(out.canaries_ok);
  CHECK_CLOSE("mean", out.mean, mean, scaled<accum_t<T>>(mean, 0.1));
  CHECK_CLOSE("std", out.std_dev, std_dev, scaled<accum_t<T>>(std_dev));
  CHECK_CLOSE("grad_x", out.grad, grad, scaled<T>(grad));
}

/// A loss over features against the reference: the fused loss and gradient, the forward alone,
/// the backward alone accumulated onto `init`.
template <class T>
void check_loss(const loss_outputs& out, double loss, const std::vector<double>& grad, const std::vector<double>& init) {
  INFO(out.st.to_string());
  REQUIRE(out.st.ok());
  CHECK(out.canaries_ok);
  CHECK_CLOSE("loss", out.loss, std::vector<double>{loss}, loss_tol<T>());
  CHECK_CLOSE("grad", out.grad, grad, scaled<T>(grad));
  CHECK_CLOSE("forward alone", out.loss_alone, out.loss, same_pass_tol());
  const auto added = plus(init, grad);
  CHECK_CLOSE("backward alone, accumulated", out.grad_added, added, scaled<T>(added));
}

}  // namespace ft_cases

TEMPLATE_LIST_TEST_CASE("features: channel and token statistics and their backward, on every backend", "[features][stats][backend]",
                        ft_cases::storage_types) {
  using namespace ft_cases;
  using T = TestType;
  using Acc = accum_t<T>;
  distill_test::rng g(1101);
  for (int trial = 0; trial < 20; ++trial) {
    const shape4 s = random_shape(g, trial);
    feature_stats_options o;
    o.unbiased = s.plane() > 1 && trial % 3 == 1;
    o.eps = trial % 2 ? 1e-5 : 1e-2;
    const auto x = rounded<T>(features(g, s, 0.2));
    const bool use_mean = trial % 3 != 1, use_std = trial % 3 != 2;
    const auto gm = use_mean ? rounded<Acc>(g.normals(s.B * s.C)) : std::vector<double>{};
    const auto gs = use_std ? rounded<Acc>(g.normals(s.B * s.C)) : std::vector<double>{};
    CAPTURE(trial, s.B, s.C, s.H, s.W, o.unbiased, o.eps, use_mean, use_std);
    std::vector<double> rm, rs;
    features_ref::channel_stats(x, s, o.unbiased, o.eps, rm, rs);
    check_stats<T>(run_channel_stats<T, test_space>(x, s, o, gm, gs, g), rm, rs,
                   features_ref::channel_stats_grad(x, s, o.unbiased, o.eps, gm, gs));
  }
  for (int trial = 0; trial < 14; ++trial) {  // over the tokens of [B, L, D] with a mask
    // D = 70: several warps; 300: two CPU feature blocks.
    const long B = g.integer(1, 3), L = trial == 0 ? 1 : g.integer(1, 40), D = trial == 3 ? 300 : trial % 4 == 1 ? 70 : g.integer(1, 33);
    const auto mask = features_test::token_mask(g, B, L, trial % 3 ? 0.0 : 1.0, 0.7);
    long fewest_valid = L;
    for (long b = 0; b < B && !mask.empty(); ++b) fewest_valid = std::min<long>(fewest_valid, std::count(&mask[b * L], &mask[b * L] + L, 1));
    feature_stats_options o;
    o.unbiased = fewest_valid > 1 && trial % 2;
    o.eps = 1e-4;
    const auto x = rounded<T>(g.normals(B * L * D, 0.5, 2));
    const auto gm = rounded<Acc>(g.normals(B * D)), gs = rounded<Acc>(g.normals(B * D));
    CAPTURE(trial, B, L, D, mask.empty(), o.unbiased);
    std::vector<double> rm, rs;
    features_ref::token_stats(x, B, L, D, mask, o.unbiased, o.eps, rm, rs);
    check_stats<T>(run_token_stats<T, test_space>(x, B, L, D, mask, o, gm, gs, g), rm, rs,
                   features_ref::token_stats_grad(x, B, L, D, mask, o.unbiased, o.eps, gm, gs));  // masked tokens: 0
  }
}

TEMPLATE_LIST_TEST_CASE("features: statistics matching and the AdaIN statistics loss (the peer's composite), every option, "
                        "on every backend", "[features][stats_matching][adain_stats][tokens][backend]", ft_cases::storage_types) {
  using namespace ft_cases;
  using T = TestType;
  distill_test::rng g(1103);
  for (int trial = 0; trial < 24; ++trial) {
    const shape4 ss = random_shape(g, trial);
    const shape4 ts = trial % 3 == 2 ? other_spatial(g, ss, trial + 3) : ss;
    const bool unbiased = ss.plane() > 1 && ts.plane() > 1 && trial % 4 == 1;
    const double eps = trial % 2 ? 1e-5 : 1e-2;
    const reduction red = trial % 3 == 0 ? reduction::mean : trial % 3 == 1 ? reduction::batchmean : reduction::sum;
    const auto s = rounded<T>(features(g, ss, 0.25)), t = rounded<T>(features(g, ts, 0.25)), init = rounded<T>(g.normals(ss.size()));
    stats_matching_options sm;
    sm.unbiased = unbiased, sm.eps = eps, sm.reduction = red;
    sm.mean_weight = trial % 4 == 3 ? 0.0 : g.uniform(0.2, 2);
    sm.std_weight = trial % 4 == 2 ? 0.0 : g.uniform(0.2, 2);  // 0: the mean-only statm_loss
    sm.grad_scale = trial % 2 ? 1.0 : 0.5;
    adain_stats_loss_options as;
    as.unbiased = unbiased, as.eps = eps, as.reduction = red;
    if (trial % 6 == 5) as.adain_weight = g.uniform(0, 2), as.mean_weight = g.uniform(0, 2), as.std_weight = g.uniform(0, 2);
    if (trial % 7 == 6) as.std_weight = 0;
    as.grad_scale = trial % 2 ? 0.75 : 1.0;
    CAPTURE(trial, ss.B, ss.C, ss.H, ss.W, ts.H, ts.W, unbiased, eps, to_string(red), sm.mean_weight, sm.std_weight);
    const features_ref::stats_matching_opts rm{eps, unbiased, sm.mean_weight, sm.std_weight, ref_reduction(red)};
    check_loss<T>(run_feature_loss<T, test_space>(s, ss, t, ts, sm, init, g), features_ref::stats_matching(s, ss, t, ts, rm),
                  times(features_ref::stats_matching_grad(s, ss, t, ts, rm), sm.grad_scale), init);
    const features_ref::adain_stats_opts ra{eps, unbiased, as.adain_weight, as.mean_weight, as.std_weight, ref_reduction(red)};
    check_loss<T>(run_feature_loss<T, test_space>(s, ss, t, ts, as, init, g), features_ref::adain_stats_loss(s, ss, t, ts, ra),
                  times(features_ref::adain_stats_loss_grad(s, ss, t, ts, ra), as.grad_scale), init);
  }
  for (int trial = 0; trial < 12; ++trial) {  // statistics matching over the tokens of [B, L, D] with masks
    const long B = g.integer(1, 3), Ls = g.integer(1, 30), Lt = g.integer(1, 30), D = trial % 3 == 0 ? g.integer(1, 6) : g.integer(1, 70);
    const auto sm = features_test::token_mask(g, B, Ls, 0.3, 0.7), tm = features_test::token_mask(g, B, Lt, 0.3, 0.7);
    const auto s = rounded<T>(g.normals(B * Ls * D)), t = rounded<T>(g.normals(B * Lt * D, 1, 2));
    stats_matching_options o;
    o.eps = 1e-3;
    o.reduction = trial % 2 ? reduction::sum : reduction::mean;
    o.std_weight = trial % 4 == 3 ? 0.0 : 0.7;
    const loss_outputs out = run_token_stats_matching<T, test_space>(s, B, Ls, D, sm, t, Lt, tm, o, g);
    CAPTURE(trial, B, Ls, Lt, D, sm.empty(), tm.empty(), out.st.to_string());
    REQUIRE(out.st.ok());
    CHECK(out.canaries_ok);
    const features_ref::stats_matching_opts ro{o.eps, o.unbiased, o.mean_weight, o.std_weight, ref_reduction(o.reduction)};
    const std::vector<double> loss{features_ref::token_stats_matching(s, B, Ls, D, sm, t, Lt, tm, ro)};
    const auto grad = features_ref::token_stats_matching_grad(s, B, Ls, D, sm, t, Lt, tm, ro);
    CHECK_CLOSE("token loss", out.loss, loss, loss_tol<T>());
    CHECK_CLOSE("token grad", out.grad, grad, scaled<T>(grad));
    for (long i = 0; i < B * Ls && !sm.empty(); ++i)
      for (long d = 0; d < D && !sm[i]; ++d) CHECK(out.grad[i * D + d] == 0.0);  // masked tokens: exactly 0
  }
}

TEMPLATE_LIST_TEST_CASE("features: AdaIN forward and backward, on every backend", "[features][adain][backend]", ft_cases::storage_types) {
  using namespace ft_cases;
  using T = TestType;
  distill_test::rng g(1105);
  for (int trial = 0; trial < 14; ++trial) {
    const shape4 xs = random_shape(g, trial);
    const shape4 ys = trial % 2 ? other_spatial(g, xs, trial + 5) : xs;
    adain_options o;
    o.unbiased = xs.plane() > 1 && ys.plane() > 1 && trial % 4 == 3;
    o.eps = trial % 3 == 0 ? 1e-5 : trial % 3 == 1 ? 1e-3 : 1e-2;
    const bool with_content = trial % 3 != 0;
    const auto x = rounded<T>(features(g, xs, 0.2)), y = rounded<T>(features(g, ys, 0.2));
    const auto up = rounded<T>(g.normals(xs.size())), init = rounded<T>(g.normals(ys.size()));
    const adain_outputs out = run_adain<T, test_space>(x, xs, y, ys, up, init, o, with_content, g);
    CAPTURE(trial, xs.B, xs.C, xs.H, xs.W, ys.H, ys.W, o.unbiased, o.eps, with_content, out.st.to_string());
    REQUIRE(out.st.ok());
    CHECK(out.canaries_ok);
    const auto want = features_ref::adain(x, xs, y, ys, o.eps, o.unbiased);
    CHECK_CLOSE("adain out", out.out, want, scaled<T>(want));
    std::vector<double> gy, gx;
    features_ref::adain_grads(x, xs, y, ys, up, o.eps, o.unbiased, gy, gx);
    CHECK_CLOSE("adain grad style", out.grad_style, gy, scaled<T>(gy, 4));
    // The content gradient sigma_y / sigma_x (g - mean g - x^ mean(g x^)) cancels (to 0 for a 1x1
    // map): its rounding is relative to sigma_y / sigma_x |g|.
    std::vector<double> mx, sx, my, sy;
    features_ref::channel_stats(x, xs, o.unbiased, o.eps, mx, sx);
    features_ref::channel_stats(y, ys, o.unbiased, o.eps, my, sy);
    double gain = 0;
    for (std::size_t i = 0; i < sx.size(); ++i) gain = std::max(gain, sy[i] / sx[i]);
    auto content_tol = scaled<T>(gx, 4);
    double up_max = 0;
    for (double v : up) up_max = std::max(up_max, std::fabs(v));
    content_tol.atol += 4 * rel<T>() * gain * up_max;
    if (with_content) CHECK_CLOSE("adain grad content", out.grad_content, gx, content_tol);
    const auto added = plus(init, gy);
    CHECK_CLOSE("adain grad style, accumulated", out.style_added, added, scaled<T>(added, 4));
  }
}

TEMPLATE_LIST_TEST_CASE("features: statistics losses vanish when student = teacher, on every backend",
                        "[features][stats_matching][adain_stats][property][backend]", ft_cases::storage_types) {
  using namespace ft_cases;
  using T = TestType;
  distill_test::rng g(1107);
  // Identical statistics on both sides: 0 up to the rounding of AdaIN(x; x) - x.
  const distill_test::tolerance zero_loss = std::is_same_v<T, double> ? distill_test::tolerance{1e-28, 0} : distill_test::tolerance{1e-10, 0};
  const distill_test::tolerance zero_grad = std::is_same_v<T, double> ? distill_test::tolerance{1e-14, 0} : distill_test::tolerance{1e-9, 0};
  for (int trial = 0; trial < 6; ++trial) {
    const shape4 s = trial == 0 ? shape4{4, 8, 32, 32} : random_shape(g, trial);
    const auto x = rounded<T>(features(g, s, 0.2));
    const std::vector<double> zeros(x.size(), 0.0);
    CAPTURE(trial, s.B, s.C, s.H, s.W);
    const loss_outputs sm = run_feature_loss<T, test_space>(x, s, x, s, stats_matching_options{}, zeros, g);
    const loss_outputs as = run_feature_loss<T, test_space>(x, s, x, s, adain_stats_loss_options{}, zeros, g);
    REQUIRE(sm.st.ok());
    REQUIRE(as.st.ok());
    CHECK_CLOSE("statistics matching loss", sm.loss, std::vector<double>{0.0}, zero_loss);
    CHECK_CLOSE("statistics matching grad", sm.grad, zeros, zero_grad);
    CHECK_CLOSE("AdaIN statistics loss", as.loss, std::vector<double>{0.0}, zero_loss);
    CHECK_CLOSE("AdaIN statistics grad", as.grad, zeros, zero_grad);
  }
}

TEMPLATE_LIST_TEST_CASE("features: embedding alignment, every metric, normalisation and reduction, on every backend",
                        "[features][embedding][backend]", ft_cases::storage_types) {
  using namespace ft_cases;
  using T = TestType;
  using Acc = accum_t<T>;
  distill_test::rng g(1108);
  const embedding_metric metrics[] = {embedding_metric::mse, embedding_metric::squared_l2, embedding_metric::l1, embedding_metric::cosine};
  const l2_normalization norms[] = {l2_normalization::none, l2_normalization::clamp, l2_normalization::zero_below_eps};
  const reduction reds[] = {reduction::mean, reduction::batchmean, reduction::sum, reduction::none};
  int trial = 0;
  for (auto m : metrics)
    for (auto n : norms)
      for (auto r : reds) {
        ++trial;
        // D = 700: a CUDA row over several warps (few rows: the expected gradient is central differences).
        embedding_case c;
        c.D = trial % 5 == 0 ? 700 : g.coin(0.2) ? 1 : g.integer(1, 100);
        c.N = g.coin(0.2) ? 1 : g.integer(1, c.D > 100 ? 3 : 16);
        c.s = rounded<T>(g.normals(c.N * c.D));
        c.t = g.normals(c.N * c.D, 0.3, 1.2);
        if (m == embedding_metric::l1 && n == l2_normalization::none)  // keep |s - t| off its kink at 0
          for (std::size_t i = 0; i < c.t.size(); ++i) c.t[i] = c.s[i] + (g.coin() ? 1 : -1) * (0.1 + std::fabs(c.t[i]));
        c.t = rounded<T>(c.t);
        if (trial % 2) c.w = rounded<Acc>(g.uniforms(c.N, 0.1, 2.0));
        if (trial % 3 == 1) {
          c.m.assign(c.N, 1);
          for (auto& v : c.m) v = g.coin(0.7);
        }
        embedding_alignment_options o;
        o.metric = m;
        o.normalize = n;
        o.reduction = r;
        o.norm_eps = n == l2_normalization::zero_below_eps ? 1e-8 : 1e-12;
        o.scale = trial % 2 ? 1.0 : 0.5;
        o.grad_scale = trial % 3 ? 1.0 : 2.0;
        const auto init = rounded<T>(g.normals(c.N * c.D));
        const loss_outputs out = run_embedding_alignment<T, test_space>(c, o, init, g);
        CAPTURE(trial, to_string(m), int(n), to_string(r), c.N, c.D, c.w.empty(), c.m.empty(), out.st.to_string());
        REQUIRE(out.st.ok());
        CHECK(out.canaries_ok);
        features_ref::embedding_opts ro;
        ro.m = m == embedding_metric::mse ? features_ref::metric::mse : m == embedding_metric::squared_l2 ? features_ref::metric::squared_l2
               : m == embedding_metric::l1 ? features_ref::metric::l1 : features_ref::metric::cosine;
        ro.n = n == l2_normalization::none ? features_ref::norm::none : n == l2_normalization::clamp ? features_ref::norm::clamp
                                                                                                     : features_ref::norm::zero_below_eps;
        ro.eps = o.norm_eps;
        ro.r = ref_reduction(r);
        ro.none_reduction = r == reduction::none;
        ro.scale = o.scale;
        const auto loss = features_ref::embedding_loss(c.s, c.t, c.N, c.D, c.w, c.m, ro);
        auto total = [&](const std::vector<double>& v) {
          const auto l = features_ref::embedding_loss(v, c.t, c.N, c.D, c.w, c.m, ro);
          double sum = 0;
          for (double x : l) sum += x;
          return sum;
        };
        const auto grad = times(distill_test::numeric_gradient(total, c.s), o.grad_scale);
        CHECK_CLOSE("loss", out.loss, loss, loss_tol<T>());
        CHECK_CLOSE("forward alone", out.loss_alone, loss, loss_tol<T>());
        // Through the normalisation the rounding of u is amplified by 1/||s_r|| (with D = 1 the
        // exact gradient cancels to 0 and only that residue is left).
        double max_inv = 0;
        if (n != l2_normalization::none || m == embedding_metric::cosine)
          for (long row = 0; row < c.N; ++row) {
            double q = 0;
            for (long d = 0; d < c.D; ++d) q += c.s[row * c.D + d] * c.s[row * c.D + d];
            max_inv = std::max(max_inv, 1 / std::sqrt(q));
          }
        auto grad_tol = [&](const std::vector<double>& e) {
          if (std::is_same_v<T, double>) return distill_test::tol::fd;  // against central differences
          auto t = scaled<T>(e);
          t.atol += 1e-2 * rel<T>() * max_inv;
          return t;
        };
        CHECK_CLOSE("grad", out.grad, grad, grad_tol(grad));
        const auto added = plus(init, grad);
        CHECK_CLOSE("backward alone, accumulated", out.grad_added, added, grad_tol(added));
      }
}

TEMPLATE_LIST_TEST_CASE("features: text classifier, its backward and cross-entropy, on every backend", "[features][classifier][backend]",
                        ft_cases::storage_types) {
  using namespace ft_cases;
  using T = TestType;
  distill_test::rng g(1109);
  for (int trial = 0; trial < 12; ++trial) {
    classifier_case c;
    c.N = trial == 0 ? 1 : g.integer(1, 150);  // > 64: several row blocks
    c.C = trial == 1 ? 1 : g.integer(1, 90);
    c.D = g.integer(1, 70);
    c.e = rounded<T>(g.normals(c.N * c.D));
    c.t = rounded<T>(g.normals(c.C * c.D));
    if (trial % 3 != 0) c.bg = rounded<T>(g.normals(c.D, 0, 0.5));
    if (trial % 2) {
      c.mask.assign(c.C, 1);
      for (auto& v : c.mask) v = g.coin(0.75);
    }
    text_classifier_cross_entropy_options o;
    o.temperature = trial % 4 == 0 ? 0.01 : g.uniform(0.2, 2.0);
    o.normalize = trial % 5 == 1 ? l2_normalization::clamp : trial % 5 == 2 ? l2_normalization::none : l2_normalization::zero_below_eps;
    o.norm_eps = o.normalize == l2_normalization::clamp ? 1e-12 : 1e-8;
    o.reduction = trial % 3 == 0 ? reduction::sum : trial % 3 == 1 ? reduction::mean : reduction::batchmean;
    o.grad_scale = trial % 2 ? 1.0 : 0.3;
    c.G = rounded<accum_t<T>>(g.normals(c.N * c.K()));
    c.labels.resize(c.N);
    for (auto& y : c.labels) y = g.coin(0.1) ? o.ignore_index : g.integer(0, c.K() - 1);
    if (trial % 4 == 3) c.row_weights = rounded<accum_t<T>>(g.uniforms(c.N, 0.2, 2));
    const bool want_classes = trial % 2 == 0;
    const classifier_outputs out = run_classifier<T, test_space>(c, o, want_classes, g);
    CAPTURE(trial, c.N, c.C, c.D, c.bg.empty(), c.mask.empty(), o.temperature, int(o.normalize), to_string(o.reduction), want_classes);
    CAPTURE(out.st.to_string());
    REQUIRE(out.st.ok());
    CHECK(out.canaries_ok);
    features_ref::classifier_opts ro;
    ro.temperature = o.temperature;
    ro.n = o.normalize == l2_normalization::none ? features_ref::norm::none : o.normalize == l2_normalization::clamp ? features_ref::norm::clamp
                                                                                                                 : features_ref::norm::zero_below_eps;
    ro.eps = o.norm_eps;
    const auto z = features_ref::classifier_logits(c.e, c.N, c.D, c.t, c.C, c.bg, c.mask, ro);
    // Logits are accum_t<T>, up to 1 / temperature.
    const distill_test::tolerance logit_tol =
        std::is_same_v<T, double> ? distill_test::tolerance{1e-12 / o.temperature, 1e-11} : distill_test::tolerance{2e-6 / o.temperature, 1e-5};
    CHECK_CLOSE("logits", out.logits, z, logit_tol);
    const long off = c.bg.empty() ? 0 : 1;
    for (long k = 0; k < c.C && !c.mask.empty(); ++k)
      for (long r = 0; r < c.N && !c.mask[k]; ++r) CHECK(out.logits[r * c.K() + off + k] == 0.0);  // exactly 0, not -inf

    std::vector<double> ge, gbg, gt;
    features_ref::classifier_grads(c.e, c.N, c.D, c.t, c.C, c.bg, c.mask, ro, c.G, ge, gbg, gt);
    CHECK_CLOSE("grad regions", out.grad_regions, ge, scaled<T>(ge));
    if (!c.bg.empty()) CHECK_CLOSE("grad background", out.grad_background, gbg, scaled<T>(gbg));
    if (want_classes) CHECK_CLOSE("grad classes", out.grad_classes, gt, scaled<T>(gt));
    const auto twice = times(ge, 2), twice_classes = times(gt, 2);
    CHECK_CLOSE("grad regions, accumulated", out.regions_added, twice, scaled<T>(twice));
    if (want_classes) CHECK_CLOSE("grad classes, accumulated", out.classes_added, twice_classes, scaled<T>(twice_classes));

    const auto rr = ref_reduction(o.reduction);
    const std::vector<double> loss{features_ref::cross_entropy(z, c.N, c.K(), c.labels, c.row_weights, o.ignore_index, rr)};
    const auto dz = times(features_ref::cross_entropy_grad(z, c.N, c.K(), c.labels, c.row_weights, o.ignore_index, rr), o.grad_scale);
    CHECK_CLOSE("CE loss", out.ce_loss, loss, loss_tol<T>());
    CHECK_CLOSE("CE forward alone", out.ce_loss_alone, loss, loss_tol<T>());
    CHECK_CLOSE("dL/dz", out.ce_dz, dz, scaled<accum_t<T>>(dz, 1.0 / 3));
    features_ref::classifier_grads(c.e, c.N, c.D, c.t, c.C, c.bg, c.mask, ro, dz, ge, gbg, gt);
    CHECK_CLOSE("CE grad regions", out.ce_regions, ge, scaled<T>(ge));
    CHECK_CLOSE("CE grad classes", out.ce_classes, gt, scaled<T>(gt));
    if (!c.bg.empty()) CHECK_CLOSE("CE grad background", out.ce_background, gbg, scaled<T>(gbg));
  }
}
