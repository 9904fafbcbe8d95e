// Łukasiewicz operators by hand, their algebraic laws, and the linear form of the distance to
// satisfaction that grounding relies on (lukasiewicz.hpp (*)).
#include <catch2/catch.hpp>

#include <vector>

#include "distill/logic/lukasiewicz.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;

TEST_CASE("lukasiewicz operators: values by hand", "[logic][operators]") {
  // a & b = max(0, a + b - 1)
  CHECK(lukasiewicz_and(0.7, 0.6) == Approx(0.3).margin(1e-15));
  CHECK(lukasiewicz_and(0.2, 0.3) == 0.0);
  CHECK(lukasiewicz_and(1.0, 0.4) == Approx(0.4));
  CHECK(lukasiewicz_and(0.0, 1.0) == 0.0);
  CHECK(lukasiewicz_and(0.5, 0.5) == 0.0);
  // a | b = min(1, a + b)
  CHECK(lukasiewicz_or(0.7, 0.6) == 1.0);
  CHECK(lukasiewicz_or(0.2, 0.3) == Approx(0.5));
  CHECK(lukasiewicz_or(0.0, 0.0) == 0.0);
  // !a = 1 - a
  CHECK(lukasiewicz_not(0.25) == 0.75);
  CHECK(lukasiewicz_not(1.0) == 0.0);
  // a -> b = min(1, 1 - a + b)
  CHECK(lukasiewicz_implies(0.7, 0.4) == Approx(0.7));
  CHECK(lukasiewicz_implies(0.4, 0.7) == 1.0);
  CHECK(lukasiewicz_implies(1.0, 0.0) == 0.0);
  CHECK(lukasiewicz_implies(0.0, 0.0) == 1.0);
  // distance to satisfaction = max(0, body - head)
  CHECK(distance_to_satisfaction(0.7, 0.4) == Approx(0.3));
  CHECK(distance_to_satisfaction(0.4, 0.7) == 0.0);
  CHECK(distance_to_satisfaction(1.0, 0.0) == 1.0);
  // n-ary forms
  const double three[] = {0.9, 0.8, 0.7};
  CHECK(lukasiewicz_and_n(three, 3) == Approx(0.4));      // 2.4 - 2
  CHECK(lukasiewicz_or_n(three, 3) == 1.0);
  const double low[] = {0.1, 0.2, 0.3};
  CHECK(lukasiewicz_and_n(low, 3) == 0.0);
  CHECK(lukasiewicz_or_n(low, 3) == Approx(0.6));
  CHECK(lukasiewicz_and_n(three, 0) == 1.0);  // empty conjunction is true
  CHECK(lukasiewicz_or_n(three, 0) == 0.0);   // empty disjunction is false
  CHECK(lukasiewicz_and_n(three, 1) == 0.9);
  // hinge energy w · d^p
  CHECK(hinge_energy(3.0, 0.5, 1) == 1.5);
  CHECK(hinge_energy(3.0, 0.5, 2) == 0.75);
  // float works the same
  CHECK(lukasiewicz_and(0.75f, 0.5f) == 0.25f);
  CHECK(lukasiewicz_implies(0.75f, 0.5f) == 0.75f);
}

TEST_CASE("lukasiewicz operators: laws on a grid", "[logic][operators]") {
  const int k = 20;
  for (int i = 0; i <= k; ++i)
    for (int j = 0; j <= k; ++j) {
      const double a = double(i) / k, b = double(j) / k;
      INFO("a = " << a << ", b = " << b);
      // De Morgan holds exactly for Łukasiewicz.
      CHECK(lukasiewicz_not(lukasiewicz_and(a, b)) == Approx(lukasiewicz_or(lukasiewicz_not(a), lukasiewicz_not(b))).margin(1e-15));
      // a -> b = !a | b, and the distance is 1 - (a -> b).
      CHECK(lukasiewicz_implies(a, b) == Approx(lukasiewicz_or(lukasiewicz_not(a), b)).margin(1e-15));
      CHECK(distance_to_satisfaction(a, b) == Approx(1.0 - lukasiewicz_implies(a, b)).margin(1e-15));
      // commutativity, bounds, boundary behaviour of classical logic
      CHECK(lukasiewicz_and(a, b) == lukasiewicz_and(b, a));
      CHECK(lukasiewicz_and(a, b) <= std::min(a, b) + 1e-15);  // (a + b) - 1 rounds
      CHECK(lukasiewicz_or(a, b) >= std::max(a, b));
      CHECK(lukasiewicz_and(a, 1.0) == Approx(a));
      CHECK(lukasiewicz_or(a, 0.0) == a);
      // residuation: a & c <= b  iff  c <= (a -> b), tested at c on the grid
      for (int m = 0; m <= k; ++m) {
        const double c = double(m) / k;
        CHECK((lukasiewicz_and(a, c) <= b + 1e-12) == (c <= lukasiewicz_implies(a, b) + 1e-12));
      }
    }
  // The four crisp truth tables.
  for (int a = 0; a <= 1; ++a)
    for (int b = 0; b <= 1; ++b) {
      CHECK(lukasiewicz_and(double(a), double(b)) == double(a && b));
      CHECK(lukasiewicz_or(double(a), double(b)) == double(a || b));
      CHECK(lukasiewicz_implies(double(a), double(b)) == double(!a || b));
    }
}

TEST_CASE("distance to satisfaction: the linear form equals the nested operators", "[logic][operators]") {
  // d = max(0, &(body) - |(head)) = max(0, Σ body - (n - 1) - Σ head) for any sizes.
  distill_test::rng g(101);
  for (int trial = 0; trial < 2000; ++trial) {
    const int nb = static_cast<int>(g.integer(0, 4)), nh = static_cast<int>(g.integer(0, 3));
    if (nb + nh == 0) continue;
    std::vector<double> body(static_cast<std::size_t>(nb)), head(static_cast<std::size_t>(nh));
    double sb = 0, sh = 0;
    for (auto& v : body) v = g.coin(0.2) ? double(g.integer(0, 1)) : g.uniform(), sb += v;
    for (auto& v : head) v = g.coin(0.2) ? double(g.integer(0, 1)) : g.uniform(), sh += v;
    const double nested = distance_to_satisfaction(lukasiewicz_and_n(body.data(), nb), lukasiewicz_or_n(head.data(), nh));
    const double linear = std::max(0.0, sb - (nb - 1) - sh);
    INFO("body " << nb << " head " << nh);
    CHECK(nested == Approx(linear).margin(1e-12));
  }
}
