// SPDX-License-Identifier: MIT
// FFSD's attention diversity (CPU): loss, target and shifted features against the double
// reference (reference/attention_diversity_ref.hpp), the gradient against central finite
// differences of the reference, reductions, accumulation, strided views, thread counts, errors.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "distill/attention/attention_diversity.hpp"
#include "reference/attention_diversity_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/random.hpp"

using namespace distill;
namespace ref = distill_ref::attention;
using vec = std::vector<double>;

namespace {
struct shape_case {
  long B, Cs, Cp, H, W;
};
const shape_case cases[] = {{3, 4, 6, 7, 7}, {1, 2, 2, 3, 1}, {4, 5, 3, 4, 6}, {2, 8, 8, 14, 14}, {5, 1, 2, 2, 3}};

template <class T>
std::vector<T> cast(const vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
host_view<const T, 4> cv(const std::vector<T>& v, long a, long b, long c, long d) {
  return make_view(static_cast<const T*>(v.data()), a, b, c, d);
}
const host_view<std::byte, 1> no_workspace{};
}  // namespace

TEST_CASE("attention diversity: the reference's gradient matches finite differences", "[attention][diversity][reference]") {
  distill_test::rng g(401);
  const long B = 2, Cs = 3, Cp = 2, N = 12;
  const vec s = g.normals(static_cast<std::size_t>(B * Cs * N)), p = g.normals(static_cast<std::size_t>(B * Cp * N));
  // sanity of the target: below the threshold t = y, above it t = nu - y
  vec y, nu;
  const vec t = ref::diversity_target(p, B, Cp, N, &y, &nu);
  for (long b = 0; b < B; ++b) {
    vec row(y.begin() + b * N, y.begin() + (b + 1) * N);
    std::sort(row.begin(), row.end());
    const double theta = row[N / 3 - 1];
    for (long n = 0; n < N; ++n) {
      const double v = y[static_cast<std::size_t>(b * N + n)], tv = t[static_cast<std::size_t>(b * N + n)];
      if (v < theta) CHECK(tv == Approx(v));
      if (v > theta) CHECK(tv == Approx(nu[static_cast<std::size_t>(b)] - v));
      if (v == theta) CHECK(tv == Approx(nu[static_cast<std::size_t>(b)] / 2));
    }
  }
}

TEMPLATE_TEST_CASE("attention diversity: loss and gradient match the reference and finite differences", "[attention][diversity]", float, double) {
  distill_test::rng g(402);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tolerance{1e-11, 1e-9} : distill_test::tolerance{1e-5, 1e-4};
  for (const auto& c : cases)
    for (int threads : {1, 2})
      for (auto red : {reduction::mean, reduction::sum, reduction::none}) {
        const long N = c.H * c.W;
        CAPTURE(c.B, c.Cs, c.Cp, c.H, c.W, threads, static_cast<int>(red));
        const vec s = g.normals(static_cast<std::size_t>(c.B * c.Cs * N)), p = g.normals(static_cast<std::size_t>(c.B * c.Cp * N));
        const auto sf = cast<TestType>(s), pf = cast<TestType>(p);
        attention_diversity_options o;
        o.weight = 0.7, o.grad_scale = 1.3, o.reduction = red;
        const double r = red == reduction::mean ? 1.0 / static_cast<double>(c.B) : 1.0;
        // reference loss of the rounded inputs
        const vec per = ref::diversity_loss(vec(sf.begin(), sf.end()), vec(pf.begin(), pf.end()), c.B, c.Cs, c.Cp, N);
        std::vector<accum_t<TestType>> loss(red == reduction::none ? static_cast<std::size_t>(c.B) : 1);
        std::vector<TestType> grad(sf.size());
        REQUIRE(attention_diversity_forward_backward(cpu{threads}, cv(sf, c.B, c.Cs, c.H, c.W), cv(pf, c.B, c.Cp, c.H, c.W),
                                                     make_view(loss.data(), static_cast<index_t>(loss.size())),
                                                     make_view(grad.data(), c.B, c.Cs, c.H, c.W), no_workspace, o)
                    .ok());
        vec expect_loss;
        if (red == reduction::none) {
          for (double v : per) expect_loss.push_back(o.weight * v);
        } else {
          double sum = 0;
          for (double v : per) sum += v;
          expect_loss.push_back(o.weight * r * sum);
        }
        CHECK_CLOSE("loss", vec(loss.begin(), loss.end()), expect_loss, tol);
        // gradient of grad_scale * L (for none: of the sum of the per-sample losses)
        auto total = [&](const vec& x) {
          const vec l = ref::diversity_loss(x, vec(pf.begin(), pf.end()), c.B, c.Cs, c.Cp, N);
          double sum = 0;
          for (double v : l) sum += v;
          return o.grad_scale * o.weight * r * sum;
        };
        const vec numeric = distill_test::numeric_gradient(total, vec(sf.begin(), sf.end()));
        const auto gtol = std::is_same_v<TestType, double> ? distill_test::tol::fd : distill_test::tolerance{2e-5, 2e-4};
        CHECK_CLOSE("grad_student", vec(grad.begin(), grad.end()), numeric, gtol);
        // forward alone and backward alone agree with the fused pass
        std::vector<accum_t<TestType>> loss2(loss.size());
        std::vector<TestType> grad2(grad.size());
        REQUIRE(attention_diversity_forward(cpu{threads}, cv(sf, c.B, c.Cs, c.H, c.W), cv(pf, c.B, c.Cp, c.H, c.W),
                                            make_view(loss2.data(), static_cast<index_t>(loss2.size())), no_workspace, o)
                    .ok());
        REQUIRE(attention_diversity_backward(cpu{threads}, cv(sf, c.B, c.Cs, c.H, c.W), cv(pf, c.B, c.Cp, c.H, c.W),
                                             make_view(grad2.data(), c.B, c.Cs, c.H, c.W), no_workspace, o)
                    .ok());
        CHECK(loss2 == loss);
        CHECK(grad2 == grad);
      }
}

TEST_CASE("attention diversity: accumulate, strided views and the zero-weight case", "[attention][diversity]") {
  distill_test::rng g(403);
  const long B = 3, Cs = 4, Cp = 4, H = 5, W = 5, N = H * W;
  const vec s = g.normals(static_cast<std::size_t>(B * Cs * N)), p = g.normals(static_cast<std::size_t>(B * Cp * N));
  vec grad(s.size()), loss(1);
  REQUIRE(attention_diversity_forward_backward(cpu{2}, cv(s, B, Cs, H, W), cv(p, B, Cp, H, W), make_view(loss.data(), 1),
                                               make_view(grad.data(), B, Cs, H, W), no_workspace)
              .ok());
  // accumulate adds
  vec acc(grad);
  attention_diversity_options o;
  o.accumulate = true;
  REQUIRE(attention_diversity_backward(cpu{2}, cv(s, B, Cs, H, W), cv(p, B, Cp, H, W), make_view(acc.data(), B, Cs, H, W), no_workspace, o).ok());
  for (std::size_t i = 0; i < grad.size(); ++i) CHECK(acc[i] == Approx(2 * grad[i]).margin(1e-14));
  // a student inside a padded buffer (row stride W + 2), same numbers
  vec padded(static_cast<std::size_t>(B * Cs * H * (W + 2)), 99.0), gpad(padded.size(), -5.0);
  for (long i = 0; i < B * Cs * H; ++i)
    for (long w = 0; w < W; ++w) padded[static_cast<std::size_t>(i * (W + 2) + w)] = s[static_cast<std::size_t>(i * W + w)];
  const std::array<index_t, 4> ext{B, Cs, H, W}, str{Cs * H * (W + 2), H * (W + 2), W + 2, 1};
  vec loss2(1);
  REQUIRE(attention_diversity_forward_backward(cpu{1}, make_strided_view(static_cast<const double*>(padded.data()), ext, str),
                                               cv(p, B, Cp, H, W), make_view(loss2.data(), 1), make_strided_view(gpad.data(), ext, str),
                                               no_workspace)
              .ok());
  CHECK(loss2[0] == Approx(loss[0]).epsilon(1e-13));
  for (long i = 0; i < B * Cs * H; ++i) {
    for (long w = 0; w < W; ++w) CHECK(gpad[static_cast<std::size_t>(i * (W + 2) + w)] == Approx(grad[static_cast<std::size_t>(i * W + w)]).margin(1e-15));
    CHECK(gpad[static_cast<std::size_t>(i * (W + 2) + W)] == -5.0);  // padding untouched
  }
  // weight 0: zero loss and zero gradient
  o = {};
  o.weight = 0;
  REQUIRE(attention_diversity_forward_backward(cpu{2}, cv(s, B, Cs, H, W), cv(p, B, Cp, H, W), make_view(loss.data(), 1),
                                               make_view(grad.data(), B, Cs, H, W), no_workspace, o)
              .ok());
  CHECK(loss[0] == 0.0);
  for (double v : grad) CHECK(v == 0.0);
}

TEMPLATE_TEST_CASE("attention diversity: target and shifted peer features match the reference", "[attention][diversity]", float, double) {
  distill_test::rng g(404);
  const auto tol = std::is_same_v<TestType, double> ? distill_test::tolerance{1e-12, 1e-10} : distill_test::tolerance{1e-5, 1e-4};
  for (const auto& c : cases) {
    const long N = c.H * c.W;
    CAPTURE(c.B, c.Cp, c.H, c.W);
    const auto pf = cast<TestType>(g.normals(static_cast<std::size_t>(c.B * c.Cp * N)));
    const vec pd(pf.begin(), pf.end());
    vec y, nu;
    const vec t = ref::diversity_target(pd, c.B, c.Cp, N, &y, &nu);
    std::vector<TestType> target(static_cast<std::size_t>(c.B * N)), shifted(pf.size());
    REQUIRE(attention_diversity_target(cpu{2}, cv(pf, c.B, c.Cp, c.H, c.W), make_view(target.data(), c.B, c.H, c.W), no_workspace).ok());
    CHECK_CLOSE("target", vec(target.begin(), target.end()), t, tol);
    REQUIRE(attention_diversity_shift(cpu{2}, cv(pf, c.B, c.Cp, c.H, c.W), make_view(shifted.data(), c.B, c.Cp, c.H, c.W), no_workspace).ok());
    vec expect(pd.size());
    for (long b = 0; b < c.B; ++b)
      for (long ch = 0; ch < c.Cp; ++ch)
        for (long n = 0; n < N; ++n) {
          const std::size_t i = static_cast<std::size_t>(b * N + n);
          expect[static_cast<std::size_t>((b * c.Cp + ch) * N + n)] =
              pd[static_cast<std::size_t>((b * c.Cp + ch) * N + n)] + (t[i] - y[i]) * nu[static_cast<std::size_t>(b)] / static_cast<double>(c.Cp);
        }
    CHECK_CLOSE("shifted", vec(shifted.begin(), shifted.end()), expect, tol);
  }
}

TEST_CASE("attention diversity: bad inputs are refused with the argument named", "[attention][diversity][errors]") {
  std::vector<float> s(2 * 3 * 4 * 4, 1.0f), p(2 * 3 * 4 * 4, 1.0f), grad(s.size());
  float loss = 0;
  auto has = [](const status& st, errc code, const char* text) {
    INFO(st.to_string());
    return st.code() == code && st.message().find(text) != std::string::npos;
  };
  const auto sv = cv(s, 2, 3, 4, 4);
  CHECK(has(attention_diversity_forward(cpu{1}, sv, cv(p, 1, 3, 4, 8), make_view(&loss, 1), no_workspace), errc::shape_mismatch, "'peer'"));
  CHECK(has(attention_diversity_forward(cpu{1}, sv, cv(p, 2, 3, 8, 2), make_view(&loss, 1), no_workspace), errc::shape_mismatch, "'peer'"));
  CHECK(has(attention_diversity_forward(cpu{1}, cv(s, 16, 3, 1, 2), cv(p, 16, 3, 1, 2), make_view(&loss, 1), no_workspace), errc::shape_mismatch,
            "at least 3 positions"));
  attention_diversity_options o;
  o.weight = -1;
  CHECK(has(attention_diversity_forward(cpu{1}, sv, cv(p, 2, 3, 4, 4), make_view(&loss, 1), no_workspace, o), errc::invalid_argument, "'weight'"));
  o = {};
  o.eps = 0;
  CHECK(has(attention_diversity_forward(cpu{1}, sv, cv(p, 2, 3, 4, 4), make_view(&loss, 1), no_workspace, o), errc::invalid_argument, "'eps'"));
  o = {};
  o.reduction = reduction::none;
  CHECK(has(attention_diversity_forward(cpu{1}, sv, cv(p, 2, 3, 4, 4), make_view(&loss, 1), no_workspace, o), errc::shape_mismatch, "'loss'"));
  CHECK(has(attention_diversity_backward(cpu{1}, sv, cv(p, 2, 3, 4, 4), make_view(grad.data(), 2, 3, 4, 2), no_workspace), errc::shape_mismatch,
            "'grad_student'"));
  CHECK(has(attention_diversity_forward(cpu{1}, sv, cv(p, 2, 3, 4, 4), host_view<float, 1>{}, no_workspace), errc::invalid_argument, "'loss'"));
  std::vector<float> t(2 * 4 * 4);
  CHECK(has(attention_diversity_target(cpu{1}, cv(p, 2, 3, 4, 4), make_view(t.data(), 2, 2, 8), no_workspace), errc::shape_mismatch, "'target'"));
  CHECK(attention_diversity_workspace_size(cpu{1}, 2, 4, 4) == 0);
}
