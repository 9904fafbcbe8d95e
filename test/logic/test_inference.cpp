// Grounding and ADMM MAP inference: closed-form optima, random rule sets against independent
// double solvers and the KKT conditions, hard constraints, determinism, the iteration cap,
// batches, and bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "distill/logic/inference.hpp"
#include "reference/logic_ref.hpp"
#include "support/compare.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;

namespace {

// Tight tolerances: the tests compare against closed forms and KKT conditions.
logic_options tight() {
  logic_options o;
  o.admm.epsilon_abs = 1e-11;
  o.admm.epsilon_rel = 1e-11;
  o.admm.max_iterations = 200000;
  return o;
}

std::vector<scene_object> random_scene(distill_test::rng& g, int n) {
  std::vector<scene_object> s(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    s[static_cast<std::size_t>(i)] = {static_cast<float>(g.uniform(0, 1)), static_cast<float>(g.uniform(0, 1)),
                                      static_cast<std::int32_t>(i), static_cast<std::int32_t>(g.integer(0, 1)), 0, 0};
  return s;
}

host_view<const scene_object, 1> view(const std::vector<scene_object>& s) {
  return make_view(s.data(), static_cast<index_t>(s.size()));
}
host_view<const float, 1> view(const std::vector<float>& v) { return make_view(v.data(), static_cast<index_t>(v.size())); }

std::vector<distill_ref::ref_object> ref_scene(const std::vector<scene_object>& s) {
  std::vector<distill_ref::ref_object> r;
  for (const auto& o : s) r.push_back({o.x, o.y, o.colour, o.shape});
  return r;
}

struct compiled {
  rule_set rules;
  logic_solver solver;
  compiled(const std::string& text, index_t max_objects) {
    const status st = parse_rules(text, rules);
    INFO(st.to_string() << "\n" << text);
    REQUIRE(st.ok());
    REQUIRE(solver.prepare(rules, max_objects).ok());
  }
  int id(const char* name) const { return rules.find_predicate(name); }
};

std::vector<float> read1(const logic_solver& s, int p, index_t n) {
  std::vector<float> out(static_cast<std::size_t>(n));
  REQUIRE(s.read(p, make_view(out.data(), n)).ok());
  return out;
}
std::vector<double> read2(const logic_solver& s, int p, index_t n) {
  std::vector<double> out(static_cast<std::size_t>(n * n));
  REQUIRE(s.read(p, make_view(out.data(), n, n)).ok());
  return out;
}

std::string num(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

}  // namespace

TEST_CASE("inference: one rule plus a prior reaches the closed-form optimum", "[logic][inference]") {
  // Per object i with body truth b = q_i:  E(r) = w1 · max(0, b - r)^p1 + w0 · r^p0 on [0, 1].
  //   p1 = 1, p0 = 1: slope w0 - w1 on [0, b]  → r* = b if w1 > w0, else 0
  //   p1 = 2, p0 = 2: 2 w1 (r - b) + 2 w0 r = 0 → r* = w1 b / (w1 + w0)
  //   p1 = 1, p0 = 2: -w1 + 2 w0 r = 0 on [0, b] → r* = min(b, w1 / (2 w0))
  //   p1 = 2, p0 = 1: 2 w1 (r - b) + w0 = 0     → r* = max(0, b - w0 / (2 w1))
  distill_test::rng g(301);
  const int n = 7;
  for (int p1 = 1; p1 <= 2; ++p1)
    for (int p0 = 1; p0 <= 2; ++p0)
      for (int trial = 0; trial < 6; ++trial) {
        double w1 = g.uniform(0.2, 8), w0 = g.uniform(0.2, 8);
        if (p1 == 1 && p0 == 1 && std::fabs(w1 - w0) < 0.5) w1 = w0 + (g.coin() ? 1.0 : -0.15 * w0);  // no tie
        const std::string text = "observed q/1.\nopen r/1.\n" + num(w1) + ": q(I) -> r(I) ^" + std::to_string(p1) + "\n" + num(w0) +
                                 ": !r(I) ^" + std::to_string(p0) + "\n";
        compiled c(text, n);
        std::vector<float> q(n);
        for (auto& v : q) v = static_cast<float>(g.coin(0.2) ? double(g.integer(0, 1)) : g.uniform());
        const observed_values obs[] = {{c.id("q"), view(q)}};
        const auto scene = random_scene(g, n);
        logic_report rep;
        REQUIRE(c.solver.solve(view(scene), obs, tight(), &rep).ok());
        CHECK(rep.converged);
        const auto r = read1(c.solver, c.id("r"), n);
        std::vector<double> expected(n);
        double energy = 0.0;
        for (int i = 0; i < n; ++i) {
          const double b = q[static_cast<std::size_t>(i)];
          double x;
          if (p1 == 1 && p0 == 1) x = w1 > w0 ? b : 0.0;
          else if (p1 == 2 && p0 == 2) x = w1 * b / (w1 + w0);
          else if (p1 == 1) x = std::min(b, w1 / (2 * w0));
          else x = std::max(0.0, b - w0 / (2 * w1));
          expected[static_cast<std::size_t>(i)] = x;
          energy += w1 * std::pow(std::max(0.0, b - x), p1) + w0 * std::pow(x, p0);
        }
        INFO(text);
        CHECK_CLOSE("r", r, expected, (distill_test::tolerance{2e-6, 1e-6}));
        CHECK(rep.energy == Approx(energy).epsilon(1e-6).margin(1e-9));
      }
}

TEST_CASE("inference: a relational rule with a soft body has the closed-form optimum", "[logic][inference]") {
  // 10: q(I) & closest_to(I, J) -> rel(I, J), 1: !rel(I, J) ^2: rel* = min(b, 5) = b with
  // b = max(0, q_i + closest_to(i, j) - 1).
  distill_test::rng g(302);
  compiled c("observed q/1.\nopen rel/2.\n10: q(I) & closest_to(I, J) -> rel(I, J)\n1: !rel(I, J) ^2\n", 6);
  for (int trial = 0; trial < 10; ++trial) {
    const int n = static_cast<int>(g.integer(2, 6));
    const auto scene = random_scene(g, n);
    const auto ref = ref_scene(scene);
    std::vector<float> q(static_cast<std::size_t>(n));
    for (auto& v : q) v = static_cast<float>(g.uniform(0.3, 1.0));
    logic_options opt = tight();
    opt.spatial.softmax_sharpness = g.uniform(1, 10);
    const observed_values obs[] = {{c.id("q"), view(q)}};
    REQUIRE(c.solver.solve(view(scene), obs, opt).ok());
    std::vector<double> expected;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j)
        expected.push_back(std::max(0.0, q[static_cast<std::size_t>(i)] +
                                             distill_ref::soft_extreme(ref, i, j, opt.spatial.softmax_sharpness, 1.0, -1.0) - 1.0));
    CHECK_CLOSE("rel", read2(c.solver, c.id("rel"), n), expected, (distill_test::tolerance{2e-6, 1e-6}));
  }
}

TEST_CASE("inference: hard constraints (closed forms, symmetry, a nullary atom)", "[logic][inference]") {
  distill_test::rng g(303);
  SECTION("r <= s: projection of two squared targets onto r <= s") {
    // Without the constraint r = b1 and s = b2; with it, if b1 > b2 both meet at the weighted mean.
    for (int trial = 0; trial < 8; ++trial) {
      const double w1 = g.uniform(0.5, 4), w2 = g.uniform(0.5, 4);
      compiled c("observed q1/1, q2/1.\nopen r/1, s/1.\n" + num(w1) + ": q1(I) -> r(I) ^2\n" + num(w1) + ": !q1(I) -> !r(I) ^2\n" +
                     num(w2) + ": q2(I) -> s(I) ^2\n" + num(w2) + ": !q2(I) -> !s(I) ^2\nr(I) -> s(I) .\n",
                 5);
      std::vector<float> b1(5), b2(5);
      for (int i = 0; i < 5; ++i) b1[static_cast<std::size_t>(i)] = static_cast<float>(g.uniform()), b2[static_cast<std::size_t>(i)] = static_cast<float>(g.uniform());
      const observed_values obs[] = {{c.id("q1"), view(b1)}, {c.id("q2"), view(b2)}};
      const auto scene = random_scene(g, 5);
      logic_report rep;
      REQUIRE(c.solver.solve(view(scene), obs, tight(), &rep).ok());
      CHECK(rep.max_hard_violation < 1e-8);
      const auto r = read1(c.solver, c.id("r"), 5), s = read1(c.solver, c.id("s"), 5);
      for (int i = 0; i < 5; ++i) {
        const double x1 = b1[static_cast<std::size_t>(i)], x2 = b2[static_cast<std::size_t>(i)];
        const double mean = (w1 * x1 + w2 * x2) / (w1 + w2);
        CHECK(r[static_cast<std::size_t>(i)] == Approx(x1 <= x2 ? x1 : mean).margin(2e-6));
        CHECK(s[static_cast<std::size_t>(i)] == Approx(x1 <= x2 ? x2 : mean).margin(2e-6));
      }
    }
  }
  SECTION("a symmetric mask from an asymmetric relation") {
    // rel(i, j) pulled to left_of(i, j) (squared, both ways) but forced symmetric: the optimum
    // of w(x - a)² + w(x - b)² is (a + b) / 2 = ½ for every pair (left_of(i,j) + left_of(j,i) = 1).
    compiled c("open rel/2.\n2: left_of(I, J) -> rel(I, J) ^2\n2: !left_of(I, J) & object(I) -> !rel(I, J) ^2\n"
               "rel(I, J) -> rel(J, I) .\n",
               5);
    const auto scene = random_scene(g, 5);
    logic_options opt = tight();
    opt.spatial.sigmoid_sharpness = 3.0;
    REQUIRE(c.solver.solve(view(scene), {}, opt).ok());
    const auto rel = read2(c.solver, c.id("rel"), 5);
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 5; ++j) {
        INFO(i << ", " << j);
        // The diagonal has left_of = 0, so both rules pull it to 0.
        CHECK(rel[static_cast<std::size_t>(i * 5 + j)] == Approx(i == j ? 0.0 : 0.5).margin(2e-6));
      }
  }
  SECTION("nullary open predicate") {
    // 2: q(I) -> flag ^2 and 1: !flag ^2 over one object: 2 (q - f)² + f² → f = 2q / 3.
    compiled c("observed q/1.\nopen flag/0.\n2: q(I) -> flag ^2\n1: !flag ^2\n", 1);
    const std::vector<float> q = {0.9f};
    const observed_values obs[] = {{c.id("q"), view(q)}};
    const std::vector<scene_object> one = {{0.0f, 0.0f, 0, 0, 0, 0}};
    REQUIRE(c.solver.solve(view(one), obs, tight()).ok());
    std::vector<float> f(1);
    REQUIRE(c.solver.read(c.id("flag"), make_view(f.data(), 1)).ok());
    CHECK(f[0] == Approx(2.0 * 0.9f / 3.0).margin(2e-6));
  }
}

namespace {

// A random rule set as text and as the reference's structs (the parser and the grounder never
// see the reference side).
struct random_program {
  std::string text;
  std::vector<distill_ref::rule> rules;
  bool smooth = true;  // every rule squared, no hard rule
};

random_program make_program(distill_test::rng& g, bool smooth_only) {
  struct pred {
    const char* name;
    int arity;
    bool open;
  };
  const pred body_pool[] = {{"q", 1, false},          {"s", 1, true},       {"r", 2, true},           {"closest_to", 2, false},
                            {"left_of", 2, false},    {"near", 2, false},   {"same_shape", 2, false}, {"object", 1, false}};
  const pred head_pool[] = {{"r", 2, true}, {"s", 1, true}, {"q", 1, false}};
  random_program prog;
  prog.text = "observed q/1.\nopen r/2, s/1.\n";
  const int n_rules = static_cast<int>(g.integer(2, 5));
  for (int k = 0; k < n_rules + 3; ++k) {
    distill_ref::rule r;
    const bool hard = !smooth_only && k < n_rules && g.coin(0.15);
    r.power = hard ? 0 : (smooth_only ? 2 : static_cast<int>(g.integer(1, 2)));
    r.weight = g.uniform(0.5, 5);
    std::vector<int> raw_vars;  // in 0..1 before compaction
    if (k < n_rules) {
      const int nb = static_cast<int>(g.integer(1, 2));
      for (int b = 0; b < nb; ++b) {
        const pred& p = body_pool[g.integer(0, 7)];
        distill_ref::literal l{p.name, g.coin(0.3), {}};
        for (int a = 0; a < p.arity; ++a) l.vars.push_back(static_cast<int>(g.integer(0, 1)));
        r.body.push_back(l);
      }
      std::set<int> bound;
      for (const auto& l : r.body) bound.insert(l.vars.begin(), l.vars.end());
      if (bound.empty()) {  // a nullary-free body always binds something; guard anyway
        r.body.push_back({"object", false, {0}});
        bound.insert(0);
      }
      const std::vector<int> bv(bound.begin(), bound.end());
      const int nh = static_cast<int>(g.integer(1, 2));
      for (int h = 0; h < nh; ++h) {
        const pred& p = head_pool[h == 0 ? g.integer(0, 1) : g.integer(0, 2)];  // the first head literal is open
        distill_ref::literal l{p.name, h > 0 && g.coin(0.3), {}};
        for (int a = 0; a < p.arity; ++a) l.vars.push_back(bv[static_cast<std::size_t>(g.integer(0, static_cast<int>(bv.size()) - 1))]);
        r.head.push_back(l);
      }
    } else {
      // priors keep every atom's optimum well defined: !r(I, J), !s(I), or a pull towards 1
      const bool on_r = k != n_rules + 1;
      distill_ref::literal l{on_r ? "r" : "s", k != n_rules + 2, on_r ? std::vector<int>{0, 1} : std::vector<int>{0}};
      r.head.push_back(l);
      r.power = smooth_only ? 2 : static_cast<int>(g.integer(1, 2));
      r.weight = k == n_rules + 2 ? g.uniform(0.1, 0.5) : g.uniform(0.5, 2);
      if (smooth_only) r.power = 2;
    }
    // Compact the variables in order of first appearance, as the parser numbers them.
    int map[2] = {-1, -1};
    int count = 0;
    for (auto* part : {&r.body, &r.head})
      for (auto& l : *part)
        for (auto& v : l.vars) {
          if (map[v] < 0) map[v] = count++;
          v = map[v];
        }
    r.variables = count;
    // Text.
    const char* names[] = {"I", "J"};
    auto lit = [&](const distill_ref::literal& l) {
      std::string s = (l.negated ? "!" : "") + l.pred + "(";
      for (std::size_t a = 0; a < l.vars.size(); ++a) s += (a ? ", " : "") + std::string(names[l.vars[a]]);
      return s + ")";
    };
    std::string line = r.power == 0 ? "" : num(r.weight) + ": ";
    for (std::size_t b = 0; b < r.body.size(); ++b) line += (b ? " & " : "") + lit(r.body[b]);
    if (!r.body.empty()) line += " -> ";
    for (std::size_t h = 0; h < r.head.size(); ++h) line += (h ? " | " : "") + lit(r.head[h]);
    line += r.power == 0 ? " ." : " ^" + std::to_string(r.power);
    prog.text += line + "\n";
    prog.smooth = prog.smooth && r.power == 2;
    prog.rules.push_back(std::move(r));
  }
  return prog;
}

}  // namespace

TEST_CASE("inference: random rule sets against independent solvers and the KKT conditions", "[logic][inference][kkt]") {
  distill_test::rng g(304);
  int smooth_checked = 0, kinked_checked = 0, hard_checked = 0;
  for (int trial = 0; trial < 36; ++trial) {
    const bool smooth_only = trial % 3 == 0;
    const random_program prog = make_program(g, smooth_only);
    INFO("trial " << trial << "\n" << prog.text);
    rule_set rs;
    const status parsed = parse_rules(prog.text, rs);
    INFO(parsed.to_string());
    REQUIRE(parsed.ok());
    logic_solver solver;
    REQUIRE(solver.prepare(rs, 4).ok());
    const int n = static_cast<int>(g.integer(1, 4));
    const auto scene = random_scene(g, n);
    const auto ref = ref_scene(scene);
    std::vector<float> q(static_cast<std::size_t>(n));
    for (auto& v : q) v = static_cast<float>(g.coin(0.3) ? double(g.integer(0, 1)) : g.uniform());
    logic_options opt = tight();
    opt.spatial.sigmoid_sharpness = 4.0;
    opt.spatial.softmax_sharpness = 3.0;
    opt.spatial.near_radius = 0.4;

    distill_ref::model m;
    m.objects = n;
    m.open = {{"r", 2}, {"s", 1}};
    m.rules = prog.rules;
    m.observed = [&](const std::string& p, const std::vector<int>& a) -> double {
      const auto& A = ref[static_cast<std::size_t>(a[0])];
      if (p == "q") return q[static_cast<std::size_t>(a[0])];
      if (p == "object") return 1.0;
      const auto& B = ref[static_cast<std::size_t>(a[1])];
      if (p == "same_shape") return A.shape == B.shape ? 1.0 : 0.0;
      if (a[0] == a[1]) return 0.0;
      if (p == "closest_to") return distill_ref::soft_extreme(ref, a[0], a[1], 3.0, 1.0, -1.0);
      if (p == "left_of") return distill_ref::sigmoid(4.0 * (B.x - A.x));
      if (p == "near") return distill_ref::sigmoid(4.0 * (0.4 - distill_ref::dist(A, B)));
      FAIL("unexpected predicate " << p);
      return 0.0;
    };
    const auto hinges = m.ground();

    const observed_values obs[] = {{rs.find_predicate("q"), view(q)}};
    logic_report rep;
    const status st = solver.solve(view(scene), obs, opt, &rep);
    INFO(st.to_string());
    REQUIRE(st.ok());
    CHECK(rep.converged);
    // The solver's atoms in the reference's order.
    std::vector<double> x(static_cast<std::size_t>(m.atoms()));
    const auto r = read2(solver, rs.find_predicate("r"), n);
    const auto s = read1(solver, rs.find_predicate("s"), n);
    auto slot = [&](const char* p, const std::vector<int>& args) {
      const int a = m.atom(p, args);
      REQUIRE(a >= 0);
      return static_cast<std::size_t>(a) % x.size();
    };
    for (int i = 0; i < n; ++i) {
      x[slot("s", {i})] = s[static_cast<std::size_t>(i)];
      for (int j = 0; j < n; ++j) x[slot("r", {i, j})] = r[static_cast<std::size_t>(i * n + j)];
    }
    // 1. the energy the solver reports is the reference energy (Łukasiewicz form) at its point
    double violation = 0.0;
    const double e_ref_at_x = distill_ref::energy(hinges, x, &violation);
    CHECK(rep.energy == Approx(e_ref_at_x).epsilon(1e-9).margin(1e-6));
    CHECK(violation < 1e-6);
    // 2. the point satisfies the KKT conditions of the convex problem
    const double kkt = distill_ref::kkt_residual(hinges, x, 1e-6);
    CHECK(kkt < 1e-4);
    // 3. no independent solver finds a lower energy
    bool has_hard = false;
    for (const auto& h : hinges) has_hard = has_hard || h.power == 0;
    if (prog.smooth) {
      const auto xs = distill_ref::solve_smooth(hinges, m.atoms());
      const double e_ref = distill_ref::energy(hinges, xs);
      CHECK(rep.energy <= e_ref + 1e-7);
      CHECK(e_ref <= rep.energy + 1e-6);  // FISTA converged: the two optima agree
      ++smooth_checked;
    } else if (!has_hard) {
      const auto xs = distill_ref::solve_subgradient(hinges, m.atoms(), 60000);
      CHECK(rep.energy <= distill_ref::energy(hinges, xs) + 1e-7);
      ++kinked_checked;
    } else {
      ++hard_checked;
    }
  }
  CHECK(smooth_checked >= 8);
  CHECK(kinked_checked >= 4);
  CHECK(hard_checked >= 1);
}

TEST_CASE("inference: the KKT check itself rejects non-optimal points", "[logic][inference][kkt]") {
  // Guard against a check that cannot fail: perturb an optimum and the residual grows.
  distill_ref::model m;
  m.objects = 1;
  m.open = {{"r", 1}};
  m.rules = {{3.0, 1, {{"q", false, {0}}}, {{"r", false, {0}}}, 1}, {1.0, 2, {}, {{"r", true, {0}}}, 1}};
  m.observed = [](const std::string&, const std::vector<int>&) { return 0.8; };
  const auto hs = m.ground();
  CHECK(distill_ref::kkt_residual(hs, {0.8}, 1e-6) < 1e-9);  // min(b, w1 / 2w0) = 0.8
  CHECK(distill_ref::kkt_residual(hs, {0.7}, 1e-6) > 0.1);
  CHECK(distill_ref::kkt_residual(hs, {0.9}, 1e-6) > 0.1);
}

TEST_CASE("inference: deterministic, warm start agrees, unconstrained atoms", "[logic][inference]") {
  distill_test::rng g(305);
  const std::string text = "observed q/1.\nopen rel/2, t/1.\n10: q(I) & closest_to(I, J) -> rel(I, J)\n"
                           "3: q(I) & left_of(I, J) -> rel(I, J) ^2\n1: !rel(I, J) ^2\n";
  compiled a(text, 6), b(text, 6);
  logic_options opt;
  opt.spatial.softmax_sharpness = 5.0;
  for (int trial = 0; trial < 5; ++trial) {
    const auto scene = random_scene(g, 6);
    std::vector<float> q(6);
    for (auto& v : q) v = static_cast<float>(g.uniform());
    const observed_values obs[] = {{a.id("q"), view(q)}};
    logic_report ra, ra2, rb;
    REQUIRE(a.solver.solve(view(scene), obs, opt, &ra).ok());
    const auto first = read2(a.solver, a.id("rel"), 6);
    REQUIRE(a.solver.solve(view(scene), obs, opt, &ra2).ok());
    const auto second = read2(a.solver, a.id("rel"), 6);
    REQUIRE(b.solver.solve(view(scene), obs, opt, &rb).ok());
    const auto other = read2(b.solver, b.id("rel"), 6);
    CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(first.data(), other.data(), first.size() * sizeof(double)) == 0);
    CHECK(ra.iterations == ra2.iterations);
    CHECK(ra.iterations == rb.iterations);
    // Warm start from the previous solution: the same optimum (within the tolerance).
    logic_options warm = opt;
    warm.admm.warm_start = true;
    logic_report rw;
    REQUIRE(a.solver.solve(view(scene), obs, warm, &rw).ok());
    CHECK_CLOSE("warm", read2(a.solver, a.id("rel"), 6), first, (distill_test::tolerance{5e-3, 0}));
    // t has no rule and rel(i, j) for q_i = 0 has none left after grounding: initial_value.
    logic_options init = opt;
    init.admm.initial_value = 0.25;
    std::vector<float> q0 = q;
    q0[2] = 0.0f;
    const observed_values obs0[] = {{a.id("q"), view(q0)}};
    REQUIRE(a.solver.solve(view(scene), obs0, init).ok());
    const auto t = read1(a.solver, a.id("t"), 6);
    for (float v : t) CHECK(v == 0.25f);
    const auto rel = read2(a.solver, a.id("rel"), 6);
    // Row 2 is only touched by the prior !rel(2, j) ^2: its optimum is 0, not the initial value.
    for (int j = 0; j < 6; ++j) CHECK(rel[static_cast<std::size_t>(12 + j)] == Approx(0.0).margin(1e-3));
  }
}

TEST_CASE("inference: the iteration cap returns not_converged with the values written", "[logic][inference][errors]") {
  SECTION("infeasible hard constraints never converge") {
    compiled c("observed q/1.\nopen r/1.\nq(I) -> r(I) .\nq(I) -> !r(I) .\n", 2);  // r >= 0.8 and r <= 0.2
    const std::vector<float> q = {0.8f, 0.8f};
    const observed_values obs[] = {{c.id("q"), view(q)}};
    const std::vector<scene_object> scene = {{0, 0, 0, 0, 0, 0}, {1, 1, 1, 1, 0, 0}};
    logic_options opt;
    opt.admm.max_iterations = 300;
    logic_report rep;
    const status st = c.solver.solve(view(scene), obs, opt, &rep);
    CHECK(st.code() == errc::not_converged);
    CHECK(st.message().find("max_iterations = 300") != std::string::npos);
    CHECK_FALSE(rep.converged);
    CHECK(rep.iterations == 300);
    CHECK(rep.max_hard_violation > 0.1);
    const auto r = read1(c.solver, c.id("r"), 2);
    for (float v : r) CHECK((v >= 0.0f && v <= 1.0f));
  }
  SECTION("a cap of one iteration on a feasible problem") {
    compiled c("observed q/1.\nopen rel/2.\n10: q(I) & closest_to(I, J) -> rel(I, J)\n1: !rel(I, J) ^2\n", 6);
    distill_test::rng g(306);
    const auto scene = random_scene(g, 6);
    const std::vector<float> q = {0, 0, 1, 0, 0, 0};
    const observed_values obs[] = {{c.id("q"), view(q)}};
    logic_options opt;
    opt.admm.max_iterations = 1;
    std::vector<float> mask(36, -1.0f);
    logic_report rep;
    const status st = logic_mask(cpu{1}, c.solver, view(scene), obs, c.id("rel"), make_view(mask.data(), 6, 6), opt, &rep);
    CHECK(st.code() == errc::not_converged);
    CHECK(rep.iterations == 1);
    for (float v : mask) CHECK((v >= 0.0f && v <= 1.0f));  // written
  }
}

TEST_CASE("inference: adaptive rho rescues optima a hair inside the box", "[logic][inference]") {
  // r* = q = 1 - 7.3e-6. With a fixed large ρ the consensus overshoots to the bound 1, where the
  // clip holds it while the duals drift back by |r* - 1| per iteration; residual balancing
  // rescales the duals and converges in a few dozen iterations.
  compiled c("observed q/1.\nopen r/1.\n10: q(I) -> r(I)\n1: !r(I) ^2\n", 1);
  const std::vector<float> q = {0.99999267f};
  const observed_values obs[] = {{c.id("q"), view(q)}};
  const std::vector<scene_object> one(1);
  logic_options o;
  o.admm.rho = 4.0;
  o.admm.epsilon_abs = 1e-7;
  o.admm.epsilon_rel = 1e-6;
  o.admm.max_iterations = 3000;
  logic_report rep;
  REQUIRE(c.solver.solve(view(one), obs, o, &rep).ok());
  CHECK(rep.iterations < 100);
  CHECK(read1(c.solver, c.id("r"), 1)[0] == Approx(q[0]).margin(1e-6));
  o.admm.adaptive_rho = false;
  CHECK(c.solver.solve(view(one), obs, o, &rep).code() == errc::not_converged);
  CHECK(rep.rho == 4.0);
}

TEST_CASE("inference: batches equal single solves for every thread count", "[logic][inference][batch]") {
  distill_test::rng g(307);
  const std::string text = "observed q/1.\nopen rel/2.\n10: q(I) & furthest_from(I, J) -> rel(I, J)\n1: !rel(I, J) ^2\n";
  rule_set rs;
  REQUIRE(parse_rules(text, rs).ok());
  const int B = 11, N = 5;
  std::vector<scene_object> scenes;
  std::vector<float> q(B * N, 0.0f);
  for (int b = 0; b < B; ++b) {
    const auto s = random_scene(g, N);
    scenes.insert(scenes.end(), s.begin(), s.end());
    q[static_cast<std::size_t>(b * N + g.integer(0, N - 1))] = 1.0f;
  }
  // Single solves as the expectation.
  logic_solver single;
  REQUIRE(single.prepare(rs, N).ok());
  std::vector<float> expected(B * N * N);
  for (int b = 0; b < B; ++b) {
    const observed_values obs[] = {{rs.find_predicate("q"), make_view(q.data() + b * N, N)}};
    REQUIRE(logic_mask(cpu{1}, single, make_view(scenes.data() + b * N, N), obs, rs.find_predicate("rel"),
                       make_view(expected.data() + b * N * N, N, N))
                .ok());
  }
  for (int threads : {1, 2, 3}) {
    for (std::size_t n_solvers : {std::size_t(1), std::size_t(2), std::size_t(4)}) {
      std::vector<logic_solver> solvers(n_solvers);
      for (auto& s : solvers) REQUIRE(s.prepare(rs, N).ok());
      // Masks with padding between scenes (batch stride 40 > 25) and canaries.
      distill_test::guarded<float> out(static_cast<std::size_t>(B * 40));
      const auto masks = make_strided_view(out.data(), std::array<index_t, 3>{B, N, N}, std::array<index_t, 3>{40, N, 1});
      const observed_batch obs[] = {{rs.find_predicate("q"), make_view(static_cast<const float*>(q.data()), B, N)}};
      logic_batch_report rep;
      REQUIRE(logic_mask_batch(cpu{threads}, solvers, make_view(static_cast<const scene_object*>(scenes.data()), B, N), obs,
                               rs.find_predicate("rel"), masks, {}, &rep)
                  .ok());
      CHECK(out.intact());
      CHECK(rep.solved == B);
      CHECK(rep.not_converged == 0);
      CHECK(rep.max_iterations > 0);
      for (int b = 0; b < B; ++b)
        for (int k = 0; k < N * N; ++k) {
          CHECK(out.data()[b * 40 + k] == expected[static_cast<std::size_t>(b * N * N + k)]);  // bitwise
        }
      for (int b = 0; b < B; ++b)
        for (int k = N * N; k < 40; ++k) CHECK(out.data()[b * 40 + k] == distill_test::guarded<float>::canary());
    }
  }
  // The iteration cap: every mask written, not_converged returned and counted.
  {
    std::vector<logic_solver> two(2);
    for (auto& s : two) REQUIRE(s.prepare(rs, N).ok());
    std::vector<float> capped(B * N * N, -1.0f);
    logic_options one_iteration;
    one_iteration.admm.max_iterations = 1;
    logic_batch_report rep;
    const observed_batch obs[] = {{rs.find_predicate("q"), make_view(static_cast<const float*>(q.data()), B, N)}};
    const status st = logic_mask_batch(cpu{2}, two, make_view(static_cast<const scene_object*>(scenes.data()), B, N), obs,
                                       rs.find_predicate("rel"), make_view(capped.data(), B, N, N), one_iteration, &rep);
    CHECK(st.code() == errc::not_converged);
    CHECK(st.message().find("(scene 0)") != std::string::npos);
    CHECK(rep.solved == B);
    CHECK(rep.not_converged == B);
    CHECK(rep.max_iterations == 1);
    for (float v : capped) CHECK((v >= 0.0f && v <= 1.0f));
  }
  // An error in one scene names it; the other arguments are validated first.
  std::vector<logic_solver> solvers(2);
  for (auto& s : solvers) REQUIRE(s.prepare(rs, N).ok());
  std::vector<float> masks(B * N * N);
  auto bad = scenes;
  bad[static_cast<std::size_t>(7 * N + 1)].y = std::numeric_limits<float>::quiet_NaN();
  const observed_batch obs[] = {{rs.find_predicate("q"), make_view(static_cast<const float*>(q.data()), B, N)}};
  const status st = logic_mask_batch(cpu{2}, solvers, make_view(static_cast<const scene_object*>(bad.data()), B, N), obs,
                                     rs.find_predicate("rel"), make_view(masks.data(), B, N, N));
  CHECK(st.code() == errc::non_finite);
  CHECK(st.message().find("(scene 7)") != std::string::npos);
  const observed_batch short_obs[] = {{rs.find_predicate("q"), make_view(static_cast<const float*>(q.data()), B - 1, N)}};
  CHECK(logic_mask_batch(cpu{1}, solvers, make_view(static_cast<const scene_object*>(scenes.data()), B, N), short_obs,
                         rs.find_predicate("rel"), make_view(masks.data(), B, N, N))
            .code() == errc::shape_mismatch);
  // Null observed values are refused up front (not first met by a worker past scene 0).
  const observed_batch null_obs[] = {{rs.find_predicate("q"), make_view(static_cast<const float*>(nullptr), B, N)}};
  CHECK(logic_mask_batch(cpu{2}, solvers, make_view(static_cast<const scene_object*>(scenes.data()), B, N), null_obs,
                         rs.find_predicate("rel"), make_view(masks.data(), B, N, N))
            .code() == errc::invalid_argument);
  CHECK(logic_mask_batch(cpu{1}, std::span<logic_solver>{}, make_view(static_cast<const scene_object*>(scenes.data()), B, N), obs,
                         rs.find_predicate("rel"), make_view(masks.data(), B, N, N))
            .code() == errc::invalid_argument);
  CHECK(logic_mask_batch(cpu{1}, solvers, make_view(static_cast<const scene_object*>(scenes.data()), B, N), obs,
                         rs.find_predicate("rel"), make_view(masks.data(), B, N, N - 1))
            .code() == errc::shape_mismatch);
  CHECK(logic_mask_batch(cpu{1}, solvers, make_view(static_cast<const scene_object*>(scenes.data()), B, 0), obs,
                         rs.find_predicate("rel"), make_view(masks.data(), B, 0, 0))
            .code() == errc::invalid_argument);
}

TEST_CASE("inference: bad input gives clear errors and nothing crashes", "[logic][inference][errors]") {
  compiled c("observed q/1, unused/2.\nopen rel/2, s/1.\n10: q(I) & closest_to(I, J) -> rel(I, J)\n1: !rel(I, J) ^2\n1: !s(I)\n", 4);
  distill_test::rng g(308);
  const auto scene = random_scene(g, 4);
  const std::vector<float> q = {0, 1, 0, 0};
  const observed_values good[] = {{c.id("q"), view(q)}};
  REQUIRE(c.solver.solve(view(scene), good).ok());

  auto code = [&](host_view<const scene_object, 1> s, std::span<const observed_values> obs, const logic_options& o = {}) {
    return c.solver.solve(s, obs, o).code();
  };
  // scenes
  CHECK(code(make_view(scene.data(), 0), good) == errc::invalid_argument);
  auto nan = scene;
  nan[3].x = std::numeric_limits<float>::quiet_NaN();
  CHECK(code(view(nan), good) == errc::non_finite);
  std::vector<scene_object> five(5);
  const std::vector<float> q5(5, 0.0f);
  const observed_values obs5[] = {{c.id("q"), view(q5)}};
  const status too_many = c.solver.solve(view(five), obs5);
  CHECK(too_many.code() == errc::shape_mismatch);
  CHECK(too_many.message().find("at most 4") != std::string::npos);
  // observed values
  CHECK(code(view(scene), {}) == errc::invalid_argument);  // q missing
  const std::vector<float> q3 = {0, 1, 0};
  const observed_values short_q[] = {{c.id("q"), view(q3)}};
  CHECK(code(view(scene), short_q) == errc::shape_mismatch);
  const std::vector<float> qnan = {0, std::numeric_limits<float>::quiet_NaN(), 0, 0};
  const observed_values nan_q[] = {{c.id("q"), view(qnan)}};
  CHECK(code(view(scene), nan_q) == errc::non_finite);
  const std::vector<float> qbig = {0, 1.5f, 0, 0};
  const observed_values big_q[] = {{c.id("q"), view(qbig)}};
  const status out_of_range = c.solver.solve(view(scene), big_q);
  CHECK(out_of_range.code() == errc::invalid_argument);
  CHECK(out_of_range.message().find("[0, 1]") != std::string::npos);
  const observed_values twice[] = {{c.id("q"), view(q)}, {c.id("q"), view(q)}};
  CHECK(code(view(scene), twice) == errc::invalid_argument);
  const observed_values open_given[] = {{c.id("q"), view(q)}, {c.id("s"), view(q)}};
  CHECK(code(view(scene), open_given) == errc::invalid_argument);
  const observed_values builtin_given[] = {{c.id("q"), view(q)}, {c.id("object"), view(q)}};
  CHECK(code(view(scene), builtin_given) == errc::invalid_argument);
  const observed_values out_of_table[] = {{999, view(q)}};
  CHECK(code(view(scene), out_of_table) == errc::invalid_argument);
  // A declared observed predicate that no rule uses may be given (checked) or left out.
  const std::vector<float> sixteen(16, 0.5f);
  const observed_values with_unused[] = {{c.id("q"), view(q)}, {c.id("unused"), view(sixteen)}};
  CHECK(code(view(scene), with_unused) == errc::ok);
  // options
  logic_options o;
  o.admm.rho = 0;
  CHECK(code(view(scene), good, o) == errc::invalid_argument);
  o = {};
  o.admm.epsilon_abs = -1;
  CHECK(code(view(scene), good, o) == errc::invalid_argument);
  o = {};
  o.admm.max_iterations = 0;
  CHECK(code(view(scene), good, o) == errc::invalid_argument);
  o = {};
  o.admm.initial_value = 1.5;
  CHECK(code(view(scene), good, o) == errc::invalid_argument);
  o = {};
  o.spatial.scale = 0;
  CHECK(code(view(scene), good, o) == errc::invalid_argument);
  // reading: nothing after a failed solve, then wrong predicates, ranks and shapes
  std::vector<float> m(16);
  CHECK(c.solver.read(c.id("rel"), make_view(m.data(), 4, 4)).code() == errc::invalid_argument);
  REQUIRE(c.solver.solve(view(scene), good).ok());
  CHECK(c.solver.read(c.id("rel"), make_view(m.data(), 4, 4)).ok());
  CHECK(c.solver.read(c.id("q"), make_view(m.data(), 4, 4)).code() == errc::invalid_argument);
  CHECK(c.solver.read(-1, make_view(m.data(), 4, 4)).code() == errc::invalid_argument);
  CHECK(c.solver.read(c.id("rel"), make_view(m.data(), 3, 4)).code() == errc::shape_mismatch);
  CHECK(c.solver.read(c.id("rel"), make_view(m.data(), 4)).code() == errc::shape_mismatch);
  CHECK(c.solver.read(c.id("s"), make_view(m.data(), 2, 2)).code() == errc::shape_mismatch);
  CHECK(c.solver.read(c.id("rel"), host_view<float, 2>{}).code() == errc::invalid_argument);
  // a strided output: the padding stays untouched
  distill_test::guarded<float> padded(4 * 7);
  REQUIRE(c.solver.read(c.id("rel"), make_strided_view(padded.data(), std::array<index_t, 2>{4, 4}, std::array<index_t, 2>{7, 1})).ok());
  CHECK(padded.intact());
  CHECK(padded.padding_intact(4, 4, 7));
  // an unprepared solver, and prepare's own checks
  logic_solver fresh;
  CHECK(fresh.solve(view(scene), good).code() == errc::invalid_argument);
  CHECK(fresh.prepare(c.rules, 0).code() == errc::invalid_argument);
  rule_set four_vars;
  REQUIRE(parse_rules("open r/2.\n1: near(A, B) & near(C, D) -> r(A, D)\n", four_vars).ok());
  CHECK(fresh.prepare(four_vars, 200).code() == errc::invalid_argument);  // 200^4 groundings
  CHECK(fresh.prepare(four_vars, 20).ok());
}
