// The rule language: what parses and into what, canonical printing, and every error kind with
// its line and column.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "distill/logic/rules.hpp"
#include "support/random.hpp"

using namespace distill;

namespace {

struct parsed {
  status st;
  rule_error where;
  rule_set rules;
};

parsed parse(const std::string& text) {
  parsed p;
  p.st = parse_rules(text, p.rules, "test.rules", &p.where);
  return p;
}

// The text must fail with parse_error at (line, column) and a message containing `what`.
void expect_error(const std::string& text, int line, int column, const std::string& what) {
  INFO("rules:\n" << text);
  const parsed p = parse(text);
  INFO("status: " << p.st.to_string());
  REQUIRE(p.st.code() == errc::parse_error);
  CHECK(p.where.source == "test.rules");
  CHECK(p.where.line == line);
  CHECK(p.where.column == column);
  CHECK(p.where.message.find(what) != std::string::npos);
  // The status message carries the same location: "parse_rules: test.rules:<line>:<column>: ...".
  const std::string prefix = "parse_rules: test.rules:" + std::to_string(line) + ":" + std::to_string(column) + ": ";
  CHECK(p.st.message().rfind(prefix, 0) == 0);
  CHECK(p.st.message().find(what) != std::string::npos);
}

}  // namespace

TEST_CASE("rules: a program parses into the expected rules", "[logic][parser]") {
  const std::string text =
      "# Spatial knowledge for 'closest to c'\n"
      "observed queried/1, flag/0.   // question constants\n"
      "open relevant/2, seen/1.\n"
      "\n"
      "10: queried(I) & closest_to(I, J)\n"
      "      -> relevant(I, J)            # continues after '->'\n"
      "0.5: ~relevant(I, J) ^2\n"
      "2.5e-1: flag & object(I) -> seen(I) | !relevant(I, I) ^1\n"
      "relevant(I, J) -> relevant(J, I) .\n"
      ".5: flag() -> seen(K)\n";
  // The last rule's head variable K is unbound: fix it first, then parse the good program.
  const std::string good = text.substr(0, text.rfind(".5:")) + ".5: flag() & object(K) -> seen(K)\n";
  const parsed p = parse(good);
  REQUIRE(p.st.ok());
  const rule_set& rs = p.rules;
  CHECK(rs.source_name() == "test.rules");
  REQUIRE(rs.predicates().size() == static_cast<std::size_t>(builtin_predicate_count) + 4);
  const int queried = rs.find_predicate("queried"), flag = rs.find_predicate("flag");
  const int relevant = rs.find_predicate("relevant"), seen = rs.find_predicate("seen");
  CHECK(queried == builtin_predicate_count);
  CHECK(rs.predicates()[static_cast<std::size_t>(flag)].arity == 0);
  CHECK(rs.predicates()[static_cast<std::size_t>(relevant)].kind == predicate_kind::open);
  CHECK(rs.predicates()[static_cast<std::size_t>(queried)].kind == predicate_kind::observed);
  CHECK(rs.find_predicate("closest_to") == static_cast<int>(builtin_predicate::closest_to));
  CHECK(rs.find_predicate("nothing") == -1);

  REQUIRE(rs.rules().size() == 5);
  const logic_rule& r0 = rs.rules()[0];
  CHECK(r0.weight == 10.0);
  CHECK(r0.power == 1);
  CHECK(r0.line == 5);
  CHECK(r0.column == 1);
  CHECK(r0.variables == std::vector<std::string>{"I", "J"});
  REQUIRE(r0.literals.size() == 3);
  CHECK(r0.body_size() == 2);
  CHECK(r0.literals[0].predicate == queried);
  CHECK(r0.literals[1].predicate == static_cast<int>(builtin_predicate::closest_to));
  CHECK(r0.literals[1].variables == std::array<int, 2>{0, 1});
  CHECK(r0.literals[2].predicate == relevant);
  CHECK(r0.literals[2].in_head);
  CHECK(r0.literals[2].line == 6);
  CHECK(r0.literals[2].column == 10);

  const logic_rule& r1 = rs.rules()[1];
  CHECK(r1.weight == 0.5);
  CHECK(r1.power == 2);
  CHECK(r1.body_size() == 0);
  CHECK(r1.literals[0].negated);
  CHECK(r1.literals[0].in_head);

  const logic_rule& r2 = rs.rules()[2];
  CHECK(r2.weight == 0.25);
  CHECK(r2.power == 1);
  CHECK(r2.body_size() == 2);
  CHECK(r2.literals[0].predicate == flag);
  CHECK(r2.literals[2].predicate == seen);
  CHECK(r2.literals[3].negated);
  CHECK(r2.literals[3].variables == std::array<int, 2>{0, 0});

  const logic_rule& r3 = rs.rules()[3];
  CHECK(r3.hard());
  CHECK(r3.literals[1].variables == std::array<int, 2>{1, 0});

  CHECK(rs.rules()[4].weight == 0.5);

  // Canonical text, and it parses back to the same rule set.
  CHECK(rs.rule_to_string(0) == "10: queried(I) & closest_to(I, J) -> relevant(I, J) ^1");
  CHECK(rs.rule_to_string(1) == "0.5: !relevant(I, J) ^2");
  CHECK(rs.rule_to_string(3) == "relevant(I, J) -> relevant(J, I) .");
  rule_set again;
  REQUIRE(parse_rules(rs.to_string(), again).ok());
  CHECK(again.to_string() == rs.to_string());
}

TEST_CASE("rules: every error kind reports its line and column", "[logic][parser][errors]") {
  const std::string decl = "open r/1, rel/2.\nobserved a/1, b/1.\n";  // lines 1-2; rules start on line 3

  SECTION("syntax") {
    expect_error(decl + "10 r(I)\n", 3, 4, "expected ':' after the weight 10");
    expect_error(decl + "10: a(I -> r(I)\n", 3, 9, "expected ',' or ')'");
    expect_error(decl + "10: a(I) -> r(I) @\n", 3, 18, "the character '@'");
    expect_error(decl + "10: a(I) \xE2\x88\xA7 b(I) -> r(I)\n", 3, 10, "the character '\xE2\x88\xA7'");
    expect_error(decl + ") 10: a(I) -> r(I)\n", 3, 1, "expected a rule");
    expect_error(decl + "10: a(I) -> \n", 4, 1, "expected a predicate name, found the end of the input");
    expect_error(decl + "10: A(I) -> r(I)\n", 3, 5, "found the variable 'A'");
    expect_error(decl + "10: a(I) -> r(i)\n", 3, 15, "'i' is not a variable");
    expect_error(decl + "10: a(1) -> r(I)\n", 3, 7, "constants are not supported");
    expect_error(decl + "10: !!a(I) -> r(I)\n", 3, 6, "double negation");
    expect_error(decl + "10: a(I) -> open(I)\n", 3, 13, "keyword");
    expect_error(decl + "10: a(I) | b(I) -> r(I)\n", 3, 10, "the body of a rule is a conjunction");
    expect_error(decl + "10: a(I) -> r(I) & r(I)\n", 3, 18, "the head of a rule is a disjunction");
    expect_error(decl + "10: !r(I) & !rel(I, I)\n", 3, 11, "a rule without '->' is a disjunction");
    expect_error(decl + "10: a(I) & b(I) | r(I)\n", 3, 17, "cannot mix '&' and '|'");
    expect_error(decl + "10: a(I) -> r(I)  r(I) -> r(I) .\n", 3, 19, "after the end of the rule");
  }
  SECTION("weights, exponents and terminators") {
    expect_error(decl + "0: a(I) -> r(I)\n", 3, 1, "positive finite");
    expect_error(decl + "1e999: a(I) -> r(I)\n", 3, 1, "positive finite");
    expect_error(decl + "-1: a(I) -> r(I)\n", 3, 1, "the character '-'");
    expect_error(decl + "10: a(I) -> r(I) ^3\n", 3, 19, "exponent after '^' must be 1");
    expect_error(decl + "10: a(I) -> r(I) ^\n", 4, 1, "exponent after '^' must be 1");
    expect_error(decl + "10: a(I) -> r(I) .\n", 3, 18, "a weighted rule does not end with '.'");
    expect_error(decl + "a(I) -> r(I)\n", 4, 1, "expected '.' at the end of the hard constraint");
    expect_error(decl + "a(I) -> r(I) ^2 .\n", 3, 14, "a hard constraint has no exponent");
  }
  SECTION("unknown predicates") {
    expect_error(decl + "10: a(I) & closest(I, J) -> rel(I, J)\n", 3, 12, "unknown predicate 'closest' (did you mean 'closest_to'?)");
    expect_error(decl + "10: a(I) -> rell(I, I)\n", 3, 13, "(did you mean 'rel'?)");
    expect_error(decl + "10: queried(I) -> r(I)\n", 3, 5, "unknown predicate 'queried'");
    expect_error(decl + "10: a(I) & !same_color(I, J) -> rel(I, J)\n", 3, 13, "did you mean 'same_colour'?");
  }
  SECTION("arity") {
    expect_error(decl + "10: a(I) & closest_to(I) -> rel(I, I)\n", 3, 12, "'closest_to' takes 2 arguments, got 1");
    expect_error(decl + "10: a(I, J) -> rel(I, J)\n", 3, 5, "'a' takes 1 argument, got 2");
    expect_error(decl + "10: a(I) -> rel\n", 3, 13, "'rel' takes 2 arguments, got 0");
  }
  SECTION("unbound variables") {
    expect_error(decl + "10: a(I) -> rel(I, J)\n", 3, 20, "variable 'J' appears in the head but not in the body");
    expect_error(decl + "10: a(I) & b(J)\n  -> r(K)\n", 4, 8, "variable 'K' appears in the head but not in the body");
    expect_error(decl + "a(I) -> r(I) | rel(I, Z) .\n", 3, 23, "variable 'Z'");
  }
  SECTION("declarations and whole-program checks") {
    expect_error("open r/1.\nobserved r/1.\n1: r(I)\n", 2, 10, "'r' is already declared at line 1");
    expect_error("open near/2.\n", 1, 6, "built-in predicate");
    expect_error("open r/3.\n", 1, 8, "must be 0, 1 or 2");
    expect_error("open r.\n", 1, 7, "expected '/'");
    expect_error("open R/1.\n", 1, 6, "lower-case");
    expect_error("open r/1 s/1.\n", 1, 10, "expected ',' or '.'");
    expect_error(decl + "1: a(I) -> near(I, I)\n", 3, 1, "mentions no open predicate");
    expect_error("# only a comment\nopen r/1.\n", 1, 1, "no rules");
    expect_error("", 1, 1, "no rules");
    expect_error("open rel/2.\n1: near(A, B) & near(C, D) & near(E, A) -> rel(A, B)\n", 2, 35, "at most 4");
  }
}

TEST_CASE("rules: a failed parse leaves the output untouched; load_rules reports io errors", "[logic][parser][errors]") {
  rule_set rs;
  REQUIRE(parse_rules("open r/1.\n1: !r(I)\n", rs).ok());
  const std::string before = rs.to_string();
  rule_error where;
  CHECK(parse_rules("open r/1.\n1: !q(I)\n", rs, "x", &where).code() == errc::parse_error);
  CHECK(where.line == 2);
  CHECK(rs.to_string() == before);
  // Success clears a previous error description.
  CHECK(parse_rules("open r/1.\n1: !r(I)\n", rs, "x", &where).ok());
  CHECK(where.message.empty());

  const status missing = load_rules("/nonexistent/dir/none.rules", rs);
  CHECK(missing.code() == errc::io_error);
  CHECK(missing.message().find("none.rules") != std::string::npos);
  CHECK(rs.to_string() == before);
  // A FIFO would block and /dev/zero never ends: refused at once, not read.
  const std::string fifo = (std::filesystem::temp_directory_path() / ("distill_rules_fifo_" + std::to_string(distill_test::test_seed()))).string();
  std::filesystem::remove(fifo);
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(load_rules(fifo, rs).code() == errc::io_error);
  std::filesystem::remove(fifo);
  CHECK(load_rules("/dev/zero", rs).code() == errc::io_error);
  CHECK(rs.to_string() == before);
}

namespace {
// Plain Levenshtein distance over the whole table, written for clarity (the reference).
std::size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<std::vector<std::size_t>> t(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) t[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) t[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j)
      t[i][j] = std::min({t[i - 1][j] + 1, t[i][j - 1] + 1, t[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
  return t[a.size()][b.size()];
}
}  // namespace

TEST_CASE("rules: the bounded edit distance equals min(Levenshtein, limit)", "[logic][parser]") {
  distill_test::rng g(77);
  for (int trial = 0; trial < 3000; ++trial) {
    const auto word = [&] {
      std::string w(static_cast<std::size_t>(g.integer(0, 9)), 'a');
      for (char& c : w) c = static_cast<char>('a' + g.integer(0, 2));  // a small alphabet: many near misses
      return w;
    };
    const std::string a = word(), b = word();
    const std::size_t limit = static_cast<std::size_t>(g.integer(0, 6));
    CAPTURE(a, b, limit);
    REQUIRE(logic_detail::edit_distance_below(a, b, limit) == std::min(levenshtein(a, b), limit));
  }
}

TEST_CASE("rules: large hostile rule files parse in linear time", "[logic][parser]") {
  // Before: the suggestion compared whole names (1 MB x 1 MB cells here: hours) and every name
  // lookup scanned all declarations (150 000 of them: about a minute).
  const auto seconds = [](const std::string& text, status& st) {
    rule_set rs;
    const auto t0 = std::chrono::steady_clock::now();
    st = parse_rules(text, rs);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  status st;
  const std::string long_name(1000000, 'a');
  const double near_miss = seconds("open " + long_name + "/1.\n1: " + long_name.substr(1) + "b(X)\n", st);
  CHECK(st.code() == errc::parse_error);
  CHECK(st.message().find("did you mean") != std::string::npos);  // one edit away: still suggested
  std::string many;
  for (int i = 0; i < 150000; ++i) many += "open p" + std::to_string(i) + "/1.\n";
  for (int i = 0; i < 150000; i += 2) many += "1: p" + std::to_string(i) + "(X) -> p" + std::to_string(i + 1) + "(X)\n";
  const double declarations = seconds(many, st);
  CHECK(st.ok());
  const double unknown = seconds(many + "1: p7x(X)\n", st);
  CHECK(st.message().find("did you mean 'p7'") != std::string::npos);
  INFO("2 MB long-name file " << near_miss << " s, " << many.size() << "-byte declaration file " << declarations << " s, with an unknown name "
                              << unknown << " s");
  // A fixed bound far above the linear cost (tenths of a second, also under sanitizers) and far
  // below the quadratic one.
  CHECK(near_miss < 10);
  CHECK(declarations < 10);
  CHECK(unknown < 10);
}
