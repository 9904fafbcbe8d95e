// Multi-head attention: the core against the double reference (probabilities, scores, masks,
// fully masked rows), its backward (including extra gradients into the returned maps) against
// finite differences, and the layer (self- and cross-attention) end to end.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "distill/nn/attention.hpp"
#include "nn_test_util.hpp"
#include "reference/nn_ref.hpp"

using namespace distill;
using nn_test::vec;
namespace ref = distill_ref::nn;

namespace {
std::vector<std::uint8_t> random_mask(distill_test::rng& g, long B, long Lk, bool mask_all_of_first) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B * Lk));
  for (auto& v : m) v = g.coin(0.7) ? 1 : 0;
  for (long b = 0; b < B; ++b) m[static_cast<std::size_t>(b * Lk)] = 1;  // at least one valid key...
  if (mask_all_of_first)
    for (long j = 0; j < Lk; ++j) m[static_cast<std::size_t>(j)] = 0;  // ...except batch 0: no valid key at all
  return m;
}
/// <r, x> over finite entries of x (masked scores are -inf and carry no gradient).
double finite_dot(const vec& r, const vec& x) {
  double s = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (std::isfinite(x[i])) s += r[i] * x[i];
  return s;
}
}  // namespace

TEMPLATE_TEST_CASE("attention core forward: output, probabilities, scores and masks match the reference", "[nn][attention]", float, double) {
  distill_test::rng g(301);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tol::f64 : distill_test::tolerance{2e-5, 2e-4};
  struct shape_case {
    long B, Lq, Lk, D, H;
    bool masked;
  };
  for (const auto& c : {shape_case{2, 5, 7, 8, 2, true}, shape_case{1, 1, 1, 4, 1, false}, shape_case{3, 9, 4, 12, 3, true},
                        shape_case{2, 16, 16, 32, 4, false}}) {
    for (int threads : {1, 2}) {
      CAPTURE(c.B, c.Lq, c.Lk, c.D, c.H, c.masked, threads);
      const vec q = g.normals(c.B * c.Lq * c.D), k = g.normals(c.B * c.Lk * c.D), v = g.normals(c.B * c.Lk * c.D);
      const auto mask = c.masked ? random_mask(g, c.B, c.Lk, true) : std::vector<std::uint8_t>{};
      auto qf = nn_test::cast<TestType>(q), kf = nn_test::cast<TestType>(k), vf = nn_test::cast<TestType>(v);
      std::vector<TestType> o(q.size()), probs(static_cast<std::size_t>(c.B * c.H * c.Lq * c.Lk)), scores(probs.size());
      const nn::attention_params p{c.H, 0};
      REQUIRE(nn::attention_core_forward(cpu{threads}, make_view(static_cast<const TestType*>(qf.data()), c.B, c.Lq, c.D),
                                         make_view(static_cast<const TestType*>(kf.data()), c.B, c.Lk, c.D),
                                         make_view(static_cast<const TestType*>(vf.data()), c.B, c.Lk, c.D),
                                         c.masked ? make_view(mask.data(), c.B, c.Lk) : host_view<const std::uint8_t, 2>{},
                                         make_view(probs.data(), c.B, c.H, c.Lq, c.Lk), make_view(scores.data(), c.B, c.H, c.Lq, c.Lk),
                                         make_view(o.data(), c.B, c.Lq, c.D), p)
                  .ok());
      vec rp, rs;
      const vec ro = ref::attention_core(nn_test::widen(qf), nn_test::widen(kf), nn_test::widen(vf), mask, c.B, c.Lq, c.Lk, c.D, c.H,
                                         1 / std::sqrt(static_cast<double>(c.D / c.H)), &rp, &rs);
      CHECK_CLOSE("o", o, ro, tol);
      CHECK_CLOSE("probs", probs, rp, tol);
      CHECK_CLOSE("scores", scores, rs, tol);  // -inf at masked keys on both sides
      // rows sum to 1, or to 0 when no key is valid
      for (long row = 0; row < c.B * c.H * c.Lq; ++row) {
        double s = 0;
        for (long j = 0; j < c.Lk; ++j) s += static_cast<double>(probs[static_cast<std::size_t>(row * c.Lk + j)]);
        const long b = row / (c.H * c.Lq);
        CHECK(s == Approx(c.masked && b == 0 ? 0.0 : 1.0).margin(1e-5));
      }
    }
  }
}

TEST_CASE("attention core backward (with extra gradients into probabilities and scores) matches finite differences",
          "[nn][attention][grad]") {
  distill_test::rng g(302);
  const long B = 2, Lq = 3, Lk = 4, D = 6, H = 2;
  const double scale = 1 / std::sqrt(3.0);
  const vec q = g.normals(B * Lq * D), k = g.normals(B * Lk * D), v = g.normals(B * Lk * D);
  const auto mask = random_mask(g, B, Lk, false);
  const vec r = g.normals(B * Lq * D), rp = g.normals(B * H * Lq * Lk), rs = g.normals(B * H * Lq * Lk);
  auto loss = [&](const vec& qq, const vec& kk, const vec& vv) {
    vec P, S;
    const vec o = ref::attention_core(qq, kk, vv, mask, B, Lq, Lk, D, H, scale, &P, &S);
    return nn_test::dot(r, o) + nn_test::dot(rp, P) + finite_dot(rs, S);
  };
  vec o(q.size()), P(rp.size()), dq(q.size()), dk(k.size()), dv(v.size());
  const nn::attention_params p{H, 0};
  auto mv = make_view(mask.data(), B, Lk);
  REQUIRE(nn::attention_core_forward(cpu{2}, make_view(q.data(), B, Lq, D), make_view(k.data(), B, Lk, D), make_view(v.data(), B, Lk, D), mv,
                                     make_view(P.data(), B, H, Lq, Lk), host_view<double, 4>{}, make_view(o.data(), B, Lq, D), p)
              .ok());
  for (int threads : {1, 2}) {
    REQUIRE(nn::attention_core_backward(cpu{threads}, make_view(q.data(), B, Lq, D), make_view(k.data(), B, Lk, D), make_view(v.data(), B, Lk, D),
                                        mv, make_view(static_cast<const double*>(P.data()), B, H, Lq, Lk), make_view(r.data(), B, Lq, D),
                                        make_view(rp.data(), B, H, Lq, Lk), make_view(rs.data(), B, H, Lq, Lk), make_view(dq.data(), B, Lq, D),
                                        make_view(dk.data(), B, Lk, D), make_view(dv.data(), B, Lk, D), {}, p)
                .ok());
    nn_test::check_gradient("dq", [&](const vec& x) { return loss(x, k, v); }, q, dq);
    nn_test::check_gradient("dk", [&](const vec& x) { return loss(q, x, v); }, k, dk);
    nn_test::check_gradient("dv", [&](const vec& x) { return loss(q, k, x); }, v, dv);
  }
}

TEST_CASE("multi-head attention layer: self- and cross-attention against the reference, gradients by finite differences",
          "[nn][attention][grad]") {
  distill_test::rng g(303);
  const long B = 2, Lq = 3, Lk = 5, D = 4, H = 2;
  for (long kv_dim : {4L, 6L}) {
    const bool self = kv_dim == D;
    const long L2 = self ? Lq : Lk;
    CAPTURE(self);
    nn::multi_head_attention<double> mha("attn", D, H, {.seed = 5}, kv_dim);
    const vec xq = g.normals(B * Lq * D), xkv = self ? xq : g.normals(B * L2 * kv_dim);
    const auto mask = random_mask(g, B, L2, false);
    auto wq = mha.q_proj.weight.value.to_host(), bq = mha.q_proj.bias.value.to_host();
    auto wk = mha.k_proj.weight.value.to_host(), bk = mha.k_proj.bias.value.to_host();
    auto wv = mha.v_proj.weight.value.to_host(), bv = mha.v_proj.bias.value.to_host();
    auto wo = mha.out_proj.weight.value.to_host(), bo = mha.out_proj.bias.value.to_host();
    auto model = [&](const vec& a, const vec& c, const vec& wq_) {
      const vec q = ref::linear(a, wq_, bq, B * Lq, D, D), k = ref::linear(c, wk, bk, B * L2, kv_dim, D),
                v = ref::linear(c, wv, bv, B * L2, kv_dim, D);
      const vec o = ref::attention_core(q, k, v, mask, B, Lq, L2, D, H, 1 / std::sqrt(2.0), nullptr, nullptr);
      return ref::linear(o, wo, bo, B * Lq, D, D);
    };
    std::vector<double> y(B * Lq * D);
    auto xqv = make_view(xq.data(), B, Lq, D);
    auto xkvv = make_view(xkv.data(), B, L2, kv_dim);
    REQUIRE(mha.forward(cpu{2}, xqv, xkvv, make_view(mask.data(), B, L2), make_view(y.data(), B, Lq, D)).ok());
    CHECK_CLOSE("y", y, model(xq, xkv, wq), distill_test::tol::f64);
    CHECK(mha.attention_probs().extent(1) == H);
    const vec r = g.normals(y.size());
    vec dxq(xq.size()), dxkv(xkv.size());
    if (self) {
      // the same view for dxq and dxkv: both paths are summed
      REQUIRE(mha.backward(cpu{2}, xqv, xkvv, make_view(mask.data(), B, L2), make_view(r.data(), B, Lq, D), make_view(dxq.data(), B, Lq, D),
                           make_view(dxq.data(), B, L2, kv_dim))
                  .ok());
      nn_test::check_gradient("dx (self)", [&](const vec& x) { return nn_test::dot(r, model(x, x, wq)); }, xq, dxq);
    } else {
      REQUIRE(mha.backward(cpu{2}, xqv, xkvv, make_view(mask.data(), B, L2), make_view(r.data(), B, Lq, D), make_view(dxq.data(), B, Lq, D),
                           make_view(dxkv.data(), B, L2, kv_dim))
                  .ok());
      nn_test::check_gradient("dxq", [&](const vec& x) { return nn_test::dot(r, model(x, xkv, wq)); }, xq, dxq);
      nn_test::check_gradient("dxkv", [&](const vec& x) { return nn_test::dot(r, model(xq, x, wq)); }, xkv, dxkv);
    }
    nn_test::check_gradient("dWq", [&](const vec& w) { return nn_test::dot(r, model(xq, xkv, w)); }, wq, mha.q_proj.weight.grad.to_host());
    CHECK(mha.parameters().size() == 8);
  }
  nn::multi_head_attention<float> bad_input("a", 8, 2);
  std::vector<float> x(2 * 3 * 6), y(2 * 3 * 8);
  CHECK(bad_input.forward(cpu{1}, make_view(static_cast<const float*>(x.data()), 2, 3, 6), make_view(static_cast<const float*>(x.data()), 2, 3, 6),
                          host_view<const std::uint8_t, 2>{}, make_view(y.data(), 2, 3, 8))
            .code() == errc::shape_mismatch);
  CHECK_THROWS_AS(nn::multi_head_attention<float>("a", 8, 3), distill::error);
}
