// Built-in predicates: values by hand on a 3-4-5 scene, crisp limits, a double reference on
// random scenes, and bad scenes / options.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "distill/logic/scene.hpp"
#include "reference/logic_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;

namespace {

std::vector<double> table(builtin_predicate p, const std::vector<scene_object>& s, const spatial_predicate_options& opt) {
  const int arity = builtin_predicates[static_cast<std::size_t>(p)].arity;
  std::vector<double> out(arity == 1 ? s.size() : s.size() * s.size(), -1.0);
  builtin_truth_values(p, make_view(s.data(), static_cast<index_t>(s.size())), opt, out.data());
  return out;
}

// Objects at (0, 0), (3, 4), (6, 0): d01 = 5, d02 = 6, d12 = 5.
std::vector<scene_object> triangle() {
  return {{0.0f, 0.0f, 0, 0, 0, 0}, {3.0f, 4.0f, 1, 1, 0, 1}, {6.0f, 0.0f, 0, 0, 1, 1}};
}

constexpr double inf = std::numeric_limits<double>::infinity();

}  // namespace

TEST_CASE("built-in predicates: values by hand", "[logic][predicates]") {
  const auto s = triangle();
  spatial_predicate_options opt;
  opt.scale = 1.0;
  opt.sigmoid_sharpness = 1.0;
  opt.softmax_sharpness = 1.0;
  opt.near_radius = 5.5;
  const double s3 = 0.9525741268224334, s4 = 0.9820137900379085, s6 = 0.9975273768433653;  // σ(3), σ(4), σ(6)
  const double sh = 0.6224593312018546;                                                       // σ(0.5)
  const double p73 = 0.7310585786300049, p27 = 0.2689414213699951;                             // 1/(1+e^-1), e^-1/(1+e^-1)

  // left_of(I, J) = σ(x_J - x_I): rows i, columns j.
  CHECK_CLOSE("left_of", table(builtin_predicate::left_of, s, opt),
              (std::vector<double>{0, s3, s6, 1 - s3, 0, s3, 1 - s6, 1 - s3, 0}), distill_test::tol::f64);
  CHECK_CLOSE("right_of", table(builtin_predicate::right_of, s, opt),
              (std::vector<double>{0, 1 - s3, 1 - s6, s3, 0, 1 - s3, s6, s3, 0}), distill_test::tol::f64);
  // above(I, J) = σ(y_J - y_I) (y grows downwards); objects 0 and 2 share y, so ½.
  CHECK_CLOSE("above", table(builtin_predicate::above, s, opt),
              (std::vector<double>{0, s4, 0.5, 1 - s4, 0, 1 - s4, 0.5, s4, 0}), distill_test::tol::f64);
  CHECK_CLOSE("below", table(builtin_predicate::below, s, opt),
              (std::vector<double>{0, 1 - s4, 0.5, s4, 0, s4, 0.5, 1 - s4, 0}), distill_test::tol::f64);
  // near = σ(5.5 - d), far = σ(d - 5.5); d = 5, 6, 5.
  CHECK_CLOSE("near", table(builtin_predicate::near, s, opt),
              (std::vector<double>{0, sh, 1 - sh, sh, 0, sh, 1 - sh, sh, 0}), distill_test::tol::f64);
  CHECK_CLOSE("far", table(builtin_predicate::far, s, opt),
              (std::vector<double>{0, 1 - sh, sh, 1 - sh, 0, 1 - sh, sh, 1 - sh, 0}), distill_test::tol::f64);
  // closest_to: row 0 softmax of (-5, -6); row 1 a tie (5, 5); row 2 softmax of (-6, -5).
  CHECK_CLOSE("closest_to", table(builtin_predicate::closest_to, s, opt),
              (std::vector<double>{0, p73, p27, 0.5, 0, 0.5, p27, p73, 0}), distill_test::tol::f64);
  CHECK_CLOSE("furthest_from", table(builtin_predicate::furthest_from, s, opt),
              (std::vector<double>{0, p27, p73, 0.5, 0, 0.5, p73, p27, 0}), distill_test::tol::f64);
  // categorical: colours 0 1 0, shapes 0 1 0, sizes 0 0 1, materials 0 1 1
  CHECK_CLOSE("same_colour", table(builtin_predicate::same_colour, s, opt),
              (std::vector<double>{1, 0, 1, 0, 1, 0, 1, 0, 1}), distill_test::tol::f64);
  CHECK_CLOSE("same_shape", table(builtin_predicate::same_shape, s, opt),
              (std::vector<double>{1, 0, 1, 0, 1, 0, 1, 0, 1}), distill_test::tol::f64);
  CHECK_CLOSE("same_size", table(builtin_predicate::same_size, s, opt),
              (std::vector<double>{1, 1, 0, 1, 1, 0, 0, 0, 1}), distill_test::tol::f64);
  CHECK_CLOSE("same_material", table(builtin_predicate::same_material, s, opt),
              (std::vector<double>{1, 0, 0, 0, 1, 1, 0, 1, 1}), distill_test::tol::f64);
  CHECK_CLOSE("same_object", table(builtin_predicate::same_object, s, opt),
              (std::vector<double>{1, 0, 0, 0, 1, 0, 0, 0, 1}), distill_test::tol::f64);
  CHECK_CLOSE("object", table(builtin_predicate::object, s, opt), (std::vector<double>{1, 1, 1}), distill_test::tol::f64);

  // scale divides every length: the same scene in units of 10 with sharpness 10 is identical.
  auto s10 = s;
  for (auto& o : s10) o.x *= 10, o.y *= 10;
  spatial_predicate_options opt10 = opt;
  opt10.scale = 10.0;
  for (int p = 0; p < builtin_predicate_count; ++p) {
    INFO(builtin_predicates[static_cast<std::size_t>(p)].name);
    CHECK_CLOSE("scaled", table(builtin_predicate(p), s10, opt10), table(builtin_predicate(p), s, opt), distill_test::tol::f64);
  }
}

TEST_CASE("built-in predicates: crisp limits", "[logic][predicates]") {
  const auto s = triangle();
  spatial_predicate_options crisp;
  crisp.sigmoid_sharpness = inf;
  crisp.softmax_sharpness = inf;
  crisp.near_radius = 5.5;
  // κ = +inf: the crisp relations, with ½ at exact ties.
  CHECK(table(builtin_predicate::left_of, s, crisp) == std::vector<double>{0, 1, 1, 0, 0, 1, 0, 0, 0});
  CHECK(table(builtin_predicate::above, s, crisp) == std::vector<double>{0, 1, 0.5, 0, 0, 0, 0.5, 1, 0});
  CHECK(table(builtin_predicate::near, s, crisp) == std::vector<double>{0, 1, 0, 1, 0, 1, 0, 1, 0});
  CHECK(table(builtin_predicate::far, s, crisp) == std::vector<double>{0, 0, 1, 0, 0, 0, 1, 0, 0});
  CHECK(table(builtin_predicate::closest_to, s, crisp) == std::vector<double>{0, 1, 0, 0.5, 0, 0.5, 0, 1, 0});
  CHECK(table(builtin_predicate::furthest_from, s, crisp) == std::vector<double>{0, 0, 1, 0.5, 0, 0.5, 1, 0, 0});

  // As the sharpness grows the soft values approach the crisp ones monotonically (ties stay ½).
  for (builtin_predicate p : {builtin_predicate::left_of, builtin_predicate::right_of, builtin_predicate::above,
                              builtin_predicate::below, builtin_predicate::near, builtin_predicate::far,
                              builtin_predicate::closest_to, builtin_predicate::furthest_from}) {
    INFO(builtin_predicates[static_cast<std::size_t>(p)].name);
    const auto limit = table(p, s, crisp);
    double previous_gap = inf;
    for (double k : {0.5, 2.0, 8.0, 32.0, 128.0, 1e3, 1e6, 1e300}) {
      spatial_predicate_options o = crisp;
      o.sigmoid_sharpness = k;
      o.softmax_sharpness = k;
      const auto v = table(p, s, o);
      double gap = 0.0;
      for (std::size_t i = 0; i < v.size(); ++i) {
        REQUIRE(std::isfinite(v[i]));  // no overflow into NaN, even at 1e300
        CHECK(v[i] >= 0.0);
        CHECK(v[i] <= 1.0);
        gap = std::max(gap, std::fabs(v[i] - limit[i]));
      }
      CHECK(gap <= previous_gap);
      previous_gap = gap;
    }
    CHECK(previous_gap < 1e-12);
  }
}

TEST_CASE("built-in predicates: against the double reference on random scenes", "[logic][predicates]") {
  distill_test::rng g(202);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = static_cast<int>(g.integer(1, 9));
    std::vector<scene_object> s(static_cast<std::size_t>(n));
    std::vector<distill_ref::ref_object> r(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      s[static_cast<std::size_t>(i)] = {static_cast<float>(g.uniform(0, 75)), static_cast<float>(g.uniform(0, 75)),
                                        static_cast<std::int32_t>(g.integer(0, 2)), static_cast<std::int32_t>(g.integer(0, 1)), 0, 0};
      const auto& o = s[static_cast<std::size_t>(i)];
      r[static_cast<std::size_t>(i)] = {o.x, o.y, o.colour, o.shape};
    }
    spatial_predicate_options opt;
    opt.scale = 75.0;
    opt.sigmoid_sharpness = g.uniform(1, 50);
    opt.softmax_sharpness = g.uniform(1, 50);
    opt.near_radius = g.uniform(0, 0.6);
    std::vector<double> left, near, far, closest, furthest, same_shape, same_colour;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        const auto& a = r[static_cast<std::size_t>(i)];
        const auto& b = r[static_cast<std::size_t>(j)];
        const double d = distill_ref::dist(a, b) / opt.scale;
        left.push_back(i == j ? 0.0 : distill_ref::sigmoid(opt.sigmoid_sharpness * (b.x - a.x) / opt.scale));
        near.push_back(i == j ? 0.0 : distill_ref::sigmoid(opt.sigmoid_sharpness * (opt.near_radius - d)));
        far.push_back(i == j ? 0.0 : distill_ref::sigmoid(opt.sigmoid_sharpness * (d - opt.near_radius)));
        closest.push_back(distill_ref::soft_extreme(r, i, j, opt.softmax_sharpness, opt.scale, -1.0));
        furthest.push_back(distill_ref::soft_extreme(r, i, j, opt.softmax_sharpness, opt.scale, +1.0));
        same_shape.push_back(a.shape == b.shape ? 1.0 : 0.0);
        same_colour.push_back(a.colour == b.colour ? 1.0 : 0.0);
      }
    INFO("trial " << trial << ", " << n << " objects");
    const distill_test::tolerance t{1e-12, 1e-9};
    CHECK_CLOSE("left_of", table(builtin_predicate::left_of, s, opt), left, t);
    CHECK_CLOSE("near", table(builtin_predicate::near, s, opt), near, t);
    CHECK_CLOSE("far", table(builtin_predicate::far, s, opt), far, t);
    CHECK_CLOSE("closest_to", table(builtin_predicate::closest_to, s, opt), closest, t);
    CHECK_CLOSE("furthest_from", table(builtin_predicate::furthest_from, s, opt), furthest, t);
    CHECK_CLOSE("same_shape", table(builtin_predicate::same_shape, s, opt), same_shape, t);
    CHECK_CLOSE("same_colour", table(builtin_predicate::same_colour, s, opt), same_colour, t);
    // Rows of closest_to and furthest_from are distributions over the other objects.
    const auto cl = table(builtin_predicate::closest_to, s, opt);
    for (int i = 0; i < n; ++i) {
      double row = 0.0;
      for (int j = 0; j < n; ++j) row += cl[static_cast<std::size_t>(i * n + j)];
      CHECK(row == Approx(n == 1 ? 0.0 : 1.0).margin(1e-12));
    }
  }
}

TEST_CASE("scenes and spatial options: bad input gives clear errors", "[logic][predicates][errors]") {
  constexpr const char* fn = "test";
  std::vector<scene_object> s = triangle();
  CHECK(check_scene(fn, "scene", make_view(static_cast<const scene_object*>(s.data()), 3)).ok());

  const status empty = check_scene(fn, "scene", make_view(static_cast<const scene_object*>(s.data()), 0));
  CHECK(empty.code() == errc::invalid_argument);
  CHECK(empty.message().find("empty scene") != std::string::npos);
  CHECK(check_scene(fn, "scene", host_view<const scene_object, 1>{}).code() == errc::invalid_argument);

  s[2].x = std::numeric_limits<float>::quiet_NaN();
  const status nan = check_scene(fn, "scene", make_view(static_cast<const scene_object*>(s.data()), 3));
  CHECK(nan.code() == errc::non_finite);
  CHECK(nan.message().find("object 2") != std::string::npos);
  s[2].x = 1.0f;
  s[1].y = std::numeric_limits<float>::infinity();
  CHECK(check_scene(fn, "scene", make_view(static_cast<const scene_object*>(s.data()), 3)).code() == errc::non_finite);

  spatial_predicate_options ok;
  CHECK(check_spatial_options(fn, ok).ok());
  ok.sigmoid_sharpness = inf;
  ok.softmax_sharpness = inf;
  CHECK(check_spatial_options(fn, ok).ok());
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), inf}) {
    spatial_predicate_options o;
    o.scale = bad;
    CHECK(check_spatial_options(fn, o).code() == errc::invalid_argument);
  }
  for (double bad : {0.0, -2.0, std::numeric_limits<double>::quiet_NaN(), -inf}) {
    spatial_predicate_options a, b;
    a.sigmoid_sharpness = bad;
    b.softmax_sharpness = bad;
    CHECK(check_spatial_options(fn, a).code() == errc::invalid_argument);
    CHECK(check_spatial_options(fn, b).code() == errc::invalid_argument);
  }
  for (double bad : {-0.1, std::numeric_limits<double>::quiet_NaN(), inf}) {
    spatial_predicate_options o;
    o.near_radius = bad;
    CHECK(check_spatial_options(fn, o).code() == errc::invalid_argument);
  }
}
