// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The rule language: text → `rule_set` (parse once, resolve every name, then ground per scene
//! with `logic_solver`, inference.hpp). PSL-style syntax (Bach et al., JMLR 2017, §6):
//!
//!   # Relational "closest to c": the pair (c, nearest neighbour of c) is relevant.
//!   observed queried/1.          # set by the caller for each question
//!   open relevant/2.             # inferred: the pair mask
//!   10: queried(I) & closest_to(I, J) -> relevant(I, J)
//!   1: !relevant(I, J) ^2        # prior: pairs are irrelevant unless a rule says otherwise
//!   relevant(I, J) -> relevant(J, I) .     # a hard constraint (no weight, final '.')
//!
//! Grammar (EBNF; whitespace and comments — '#' or '//' to the end of the line — separate tokens):
//!   program     = { statement } ;
//!   statement   = declaration | weighted | hard ;
//!   declaration = ( "open" | "observed" ) signature { "," signature } "." ;
//!   signature   = name "/" digit ;                            (* arity 0, 1 or 2 *)
//!   weighted    = number ":" rule [ "^" ( "1" | "2" ) ] ;     (* ends its line *)
//!   hard        = rule "." ;
//!   rule        = [ body "->" ] head ;
//!   body        = literal { "&" literal } ;                   (* Łukasiewicz conjunction *)
//!   head        = literal { "|" literal } ;                   (* Łukasiewicz disjunction *)
//!   literal     = [ "!" | "~" ] name [ "(" [ variable { "," variable } ] ")" ] ;
//!   name        = lower-case letter { letter | digit | "_" } ;
//!   variable    = ( upper-case letter | "_" ) { letter | digit | "_" } ;
//!   number      = digits [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ] ;
//!
//! Meaning: a weighted rule adds w · max(0, distance to satisfaction)^p to the energy (p = 1 when
//! "^" is absent), a hard rule must be fully satisfied; a rule without a body says its head
//! disjunction should be true (`1: !relevant(I, J) ^2` pushes every relevant atom to 0).
//! Every variable ranges over the scene's objects; a variable of the head must occur in the body
//! (bind it with `object(J)` if nothing else mentions it). At most 4 variables per rule.
//!
//! Errors (`errc::parse_error`, message "parse_rules: <source>:<line>:<column>: <what>", and the
//! same pieces in the optional `rule_error`): bad syntax, unknown predicates (with the nearest
//! known name), wrong arity, unbound head variables, bad weights or exponents, re-declarations,
//! rules without any open predicate, an empty program. Lines and columns count from 1 (bytes).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "distill/core/file_io.hpp"
#include "distill/core/status.hpp"
#include "distill/logic/scene.hpp"

namespace distill {

namespace logic_detail {
class rule_set_builder;
}

/// Where a predicate's truth values come from.
enum class predicate_kind : std::uint8_t {
  builtin,   ///< computed from the scene (scene.hpp)
  observed,  ///< given by the caller for each solve (question constants such as queried(I))
  open,      ///< inferred by MAP inference (the mask)
};

struct logic_predicate {
  std::string name;
  int arity = 0;
  predicate_kind kind = predicate_kind::builtin;
  int line = 0;    ///< where it was declared (0 for built-ins)
  int column = 0;
};

struct rule_literal {
  int predicate = -1;               ///< index into rule_set::predicates()
  bool negated = false;
  bool in_head = false;
  std::array<int, 2> variables{-1, -1};  ///< indices into logic_rule::variables (first `arity` used)
  int line = 0;
  int column = 0;
};

/// Most variables one rule may have: grounding enumerates N^variables assignments.
inline constexpr int max_rule_variables = 4;

struct logic_rule {
  double weight = 1.0;                ///< > 0; unused for hard rules
  int power = 1;                      ///< 1 or 2; 0 marks a hard constraint
  std::vector<rule_literal> literals; ///< body literals first, then head literals
  std::vector<std::string> variables; ///< in order of first appearance
  int line = 0;
  int column = 0;
  bool hard() const noexcept { return power == 0; }
  int body_size() const noexcept {
    int n = 0;
    for (const auto& l : literals) n += l.in_head ? 0 : 1;
    return n;
  }
};

/// Location and text of the first error `parse_rules` found.
struct rule_error {
  std::string source;
  int line = 0;
  int column = 0;
  std::string message;  ///< without the location prefix
};

/// A parsed and resolved rule set. Predicates 0 .. builtin_predicate_count-1 are the built-ins
/// in `builtin_predicate` order; declared predicates follow in declaration order.
class rule_set {
 public:
  rule_set() {
    for (const auto& b : builtin_predicates)
      predicates_.push_back({std::string(b.name), b.arity, predicate_kind::builtin, 0, 0});
  }
  const std::vector<logic_predicate>& predicates() const noexcept { return predicates_; }
  const std::vector<logic_rule>& rules() const noexcept { return rules_; }
  const std::string& source_name() const noexcept { return source_; }
  /// Index of a predicate by name, or -1.
  int find_predicate(std::string_view name) const noexcept {
    for (std::size_t i = 0; i < predicates_.size(); ++i)
      if (predicates_[i].name == name) return static_cast<int>(i);
    return -1;
  }
  /// One rule in canonical syntax, e.g. "10: queried(I) & closest_to(I, J) -> relevant(I, J) ^1".
  std::string rule_to_string(std::size_t r) const {
    const logic_rule& rule = rules_[r];
    std::string s;
    if (!rule.hard()) {
      char w[40];  // shortest form that reads back as the same double
      std::snprintf(w, sizeof w, "%.15g", rule.weight);
      if (std::strtod(w, nullptr) != rule.weight) std::snprintf(w, sizeof w, "%.17g", rule.weight);
      s += std::string(w) + ": ";
    }
    const int nb = rule.body_size();
    for (std::size_t i = 0; i < rule.literals.size(); ++i) {
      const rule_literal& l = rule.literals[i];
      if (i > 0) s += static_cast<int>(i) == nb ? " -> " : (l.in_head ? " | " : " & ");
      if (l.negated) s += "!";
      const logic_predicate& p = predicates_[static_cast<std::size_t>(l.predicate)];
      s += p.name + "(";
      for (int a = 0; a < p.arity; ++a)
        s += (a ? ", " : "") + rule.variables[static_cast<std::size_t>(l.variables[static_cast<std::size_t>(a)])];
      s += ")";
    }
    s += rule.hard() ? " ." : " ^" + std::to_string(rule.power);
    return s;
  }
  /// The whole rule set in canonical syntax (declarations, then one rule per line); parsing it
  /// gives an equivalent rule set.
  std::string to_string() const {
    std::string s;
    for (const auto& p : predicates_) {
      if (p.kind == predicate_kind::builtin) continue;
      s += (p.kind == predicate_kind::open ? "open " : "observed ") + p.name + "/" + std::to_string(p.arity) + ".\n";
    }
    for (std::size_t r = 0; r < rules_.size(); ++r) s += rule_to_string(r) + "\n";
    return s;
  }

 private:
  friend class logic_detail::rule_set_builder;
  std::vector<logic_predicate> predicates_;
  std::vector<logic_rule> rules_;
  std::string source_;
};

namespace logic_detail {

enum class token_kind : std::uint8_t {
  end, identifier, number, colon, lparen, rparen, comma, conj, disj, neg, arrow, caret, dot, slash, invalid
};

struct token {
  token_kind kind = token_kind::end;
  std::string_view text;
  int line = 1;
  int column = 1;
};

inline bool is_alpha(char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
inline bool is_upper_start(std::string_view s) noexcept { return !s.empty() && ((s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'); }

class lexer {
 public:
  explicit lexer(std::string_view s) noexcept : s_(s) {}

  token next() noexcept {
    skip_blanks();
    token t;
    t.line = line_;
    t.column = col_;
    if (pos_ >= s_.size()) return t;
    const std::size_t start = pos_;
    const char c = s_[pos_];
    if (is_alpha(c)) {
      while (pos_ < s_.size() && (is_alpha(s_[pos_]) || is_digit(s_[pos_]))) advance();
      t.kind = token_kind::identifier;
    } else if (is_digit(c) || (c == '.' && pos_ + 1 < s_.size() && is_digit(s_[pos_ + 1]))) {
      while (pos_ < s_.size() && is_digit(s_[pos_])) advance();
      if (pos_ + 1 < s_.size() && s_[pos_] == '.' && is_digit(s_[pos_ + 1])) {
        advance();
        while (pos_ < s_.size() && is_digit(s_[pos_])) advance();
      }
      if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
        std::size_t k = pos_ + 1;
        if (k < s_.size() && (s_[k] == '+' || s_[k] == '-')) ++k;
        if (k < s_.size() && is_digit(s_[k])) {
          while (pos_ < k) advance();
          while (pos_ < s_.size() && is_digit(s_[pos_])) advance();
        }
      }
      t.kind = token_kind::number;
    } else if (c == '-' && pos_ + 1 < s_.size() && s_[pos_ + 1] == '>') {
      advance();
      advance();
      t.kind = token_kind::arrow;
    } else {
      advance();
      switch (c) {
        case ':': t.kind = token_kind::colon; break;
        case '(': t.kind = token_kind::lparen; break;
        case ')': t.kind = token_kind::rparen; break;
        case ',': t.kind = token_kind::comma; break;
        case '&': t.kind = token_kind::conj; break;
        case '|': t.kind = token_kind::disj; break;
        case '!': case '~': t.kind = token_kind::neg; break;
        case '^': t.kind = token_kind::caret; break;
        case '.': t.kind = token_kind::dot; break;
        case '/': t.kind = token_kind::slash; break;
        default:
          // Keep a whole UTF-8 sequence together so the message shows the character.
          while (pos_ < s_.size() && (static_cast<unsigned char>(s_[pos_]) & 0xC0u) == 0x80u) advance();
          t.kind = token_kind::invalid;
      }
    }
    t.text = s_.substr(start, pos_ - start);
    return t;
  }

 private:
  void advance() noexcept {
    if (s_[pos_] == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
    ++pos_;
  }
  void skip_blanks() noexcept {
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v') {
        advance();
      } else if (c == '#' || (c == '/' && pos_ + 1 < s_.size() && s_[pos_ + 1] == '/')) {
        while (pos_ < s_.size() && s_[pos_] != '\n') advance();
      } else {
        break;
      }
    }
  }

  std::string_view s_;
  std::size_t pos_ = 0;
  int line_ = 1;
  int col_ = 1;
};

inline std::string describe(const token& t) {
  switch (t.kind) {
    case token_kind::end: return "the end of the input";
    case token_kind::invalid: return "the character '" + std::string(t.text) + "'";
    default: return "'" + std::string(t.text) + "'";
  }
}

struct ast_argument {
  std::string_view name;
  int line, column;
};
struct ast_literal {
  std::string_view name;
  bool negated = false;
  std::vector<ast_argument> arguments;
  int line = 0, column = 0;
};
struct ast_rule {
  double weight = 1.0;
  int power = 1;  // 0 = hard
  std::vector<ast_literal> body, head;
  int line = 0, column = 0;
};
struct ast_declaration {
  predicate_kind kind;
  std::string_view name;
  int arity;
  int line, column;
};

inline bool is_keyword(std::string_view s) noexcept { return s == "open" || s == "observed"; }

// Levenshtein distance of a and b when it is below `limit`, otherwise `limit` ("did you mean"
// suggestions only want close names). Distances below the limit lie in the diagonal band
// |i - j| < limit (Ukkonen 1985), so the cost is O(min(|a|, |b|) * limit), however long the
// names of a hostile rule file are (the full table made an 80 KB file take seconds).
inline std::size_t edit_distance_below(std::string_view a, std::string_view b, std::size_t limit) {
  if (a.size() > b.size()) std::swap(a, b);
  if (limit == 0 || b.size() - a.size() >= limit) return limit;
  std::vector<std::size_t> row(b.size() + 1, limit);  // row i-1 of the table, capped at limit
  for (std::size_t j = 0; j < std::min(b.size() + 1, limit); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    const std::size_t lo = i >= limit ? i - limit + 1 : 1, hi = std::min(b.size(), i + limit - 1);
    std::size_t diag = row[lo - 1];
    row[lo - 1] = std::min(lo == 1 ? i : limit, limit);  // column 0, or the cell just left of the band
    std::size_t smallest = row[lo - 1];
    for (std::size_t j = lo; j <= hi; ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({up + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1), limit});
      diag = up;
      smallest = std::min(smallest, row[j]);
    }
    if (smallest >= limit) return limit;  // every continuation only grows
  }
  return row[b.size()];
}

// Recursive-descent parser producing the AST; stops at the first error.
class parser {
 public:
  explicit parser(std::string_view text) : lex_(text) { cur_ = lex_.next(); }

  bool parse(std::vector<ast_declaration>& decls, std::vector<ast_rule>& rules) {
    while (cur_.kind != token_kind::end) {
      if (cur_.kind == token_kind::identifier && is_keyword(cur_.text)) {
        if (!declaration(decls)) return false;
      } else if (cur_.kind == token_kind::number) {
        if (!weighted(rules)) return false;
      } else if (cur_.kind == token_kind::identifier || cur_.kind == token_kind::neg) {
        if (!hard(rules)) return false;
      } else {
        return fail(cur_, "expected a rule ('w: body -> head'), a hard rule ('body -> head .') or a declaration "
                          "('open name/arity.'), found " + describe(cur_));
      }
    }
    return true;
  }

  int error_line = 0, error_column = 0;
  std::string error_message;

  bool fail(int line, int column, std::string message) {
    error_line = line;
    error_column = column;
    error_message = std::move(message);
    return false;
  }
  bool fail(const token& t, std::string message) { return fail(t.line, t.column, std::move(message)); }

 private:
  void advance() {
    prev_line_ = cur_.line;
    cur_ = lex_.next();
  }
  bool accept(token_kind k) {
    if (cur_.kind != k) return false;
    advance();
    return true;
  }

  bool declaration(std::vector<ast_declaration>& decls) {
    const predicate_kind kind = cur_.text == "open" ? predicate_kind::open : predicate_kind::observed;
    const std::string keyword(cur_.text);
    advance();
    for (;;) {
      if (cur_.kind != token_kind::identifier)
        return fail(cur_, "expected a predicate name after '" + keyword + "', found " + describe(cur_));
      const token name = cur_;
      if (is_keyword(name.text)) return fail(name, "'" + std::string(name.text) + "' is a keyword, not a predicate name");
      if (is_upper_start(name.text))
        return fail(name, "predicate names start with a lower-case letter ('" + std::string(name.text) + "' looks like a variable)");
      advance();
      if (!accept(token_kind::slash))
        return fail(cur_, "expected '/' and the arity after '" + std::string(name.text) + "' (e.g. '" + std::string(name.text) +
                              "/2'), found " + describe(cur_));
      if (cur_.kind != token_kind::number || cur_.text.size() != 1 || cur_.text[0] > '2')
        return fail(cur_, "the arity of '" + std::string(name.text) + "' must be 0, 1 or 2, found " + describe(cur_));
      decls.push_back({kind, name.text, cur_.text[0] - '0', name.line, name.column});
      advance();
      if (accept(token_kind::comma)) continue;
      if (accept(token_kind::dot)) return true;
      return fail(cur_, "expected ',' or '.' after the declaration of '" + std::string(name.text) + "', found " + describe(cur_));
    }
  }

  bool weighted(std::vector<ast_rule>& rules) {
    ast_rule r;
    r.line = cur_.line;
    r.column = cur_.column;
    const token w = cur_;
    r.weight = std::strtod(std::string(w.text).c_str(), nullptr);
    if (!(r.weight > 0.0) || !std::isfinite(r.weight))
      return fail(w, "the weight must be a positive finite number, found " + describe(w));
    advance();
    if (!accept(token_kind::colon)) return fail(cur_, "expected ':' after the weight " + std::string(w.text) + ", found " + describe(cur_));
    if (!rule(r)) return false;
    r.power = 1;
    if (cur_.kind == token_kind::caret) {
      advance();
      if (cur_.kind != token_kind::number || (cur_.text != "1" && cur_.text != "2"))
        return fail(cur_, "the exponent after '^' must be 1 (linear hinge) or 2 (squared hinge), found " + describe(cur_));
      r.power = cur_.text[0] - '0';
      advance();
    }
    if (cur_.kind == token_kind::dot)
      return fail(cur_, "a weighted rule does not end with '.': a final '.' marks a hard constraint, which has no weight");
    if (cur_.kind != token_kind::end && cur_.line == prev_line_)
      return fail(cur_, "found " + describe(cur_) + " after the end of the rule (expected '&', '|', '->', '^' or a new line)");
    rules.push_back(std::move(r));
    return true;
  }

  bool hard(std::vector<ast_rule>& rules) {
    ast_rule r;
    r.line = cur_.line;
    r.column = cur_.column;
    r.power = 0;
    if (!rule(r)) return false;
    if (cur_.kind == token_kind::caret)
      return fail(cur_, "a hard constraint has no exponent: it must hold exactly (give the rule a weight 'w:' to make it soft)");
    if (!accept(token_kind::dot))
      return fail(cur_, "expected '.' at the end of the hard constraint (or a weight 'w:' before the rule to make it soft), found " +
                            describe(cur_));
    rules.push_back(std::move(r));
    return true;
  }

  // rule = [ body "->" ] head
  bool rule(ast_rule& r) {
    std::vector<ast_literal> first;
    token op_and{}, op_or{};
    if (!literal_list(first, op_and, op_or)) return false;
    if (cur_.kind == token_kind::arrow) {
      if (op_or.kind != token_kind::end)
        return fail(op_or, "the body of a rule is a conjunction: use '&' between its literals, not '|'");
      advance();
      token head_and{}, head_or{};
      if (!literal_list(r.head, head_and, head_or)) return false;
      if (head_and.kind != token_kind::end)
        return fail(head_and, "the head of a rule is a disjunction: use '|' between its literals, not '&'");
      r.body = std::move(first);
    } else {
      if (op_and.kind != token_kind::end)
        return fail(op_and, "a rule without '->' is a disjunction: use '|' between its literals (or write 'body -> head')");
      r.head = std::move(first);
    }
    return true;
  }

  bool literal_list(std::vector<ast_literal>& out, token& op_and, token& op_or) {
    for (;;) {
      ast_literal l;
      if (!literal(l)) return false;
      out.push_back(std::move(l));
      if (cur_.kind == token_kind::conj || cur_.kind == token_kind::disj) {
        token& seen = cur_.kind == token_kind::conj ? op_and : op_or;
        const token& other = cur_.kind == token_kind::conj ? op_or : op_and;
        if (other.kind != token_kind::end)
          return fail(cur_, "cannot mix '&' and '|' in one list of literals: a body joins with '&', a head with '|'");
        if (seen.kind == token_kind::end) seen = cur_;
        advance();
        continue;
      }
      return true;
    }
  }

  bool literal(ast_literal& l) {
    if (cur_.kind == token_kind::neg) {
      l.negated = true;
      advance();
      if (cur_.kind == token_kind::neg) return fail(cur_, "double negation is not supported: drop both '!'");
    }
    if (cur_.kind != token_kind::identifier) return fail(cur_, "expected a predicate name, found " + describe(cur_));
    if (is_keyword(cur_.text)) return fail(cur_, "'" + std::string(cur_.text) + "' is a keyword, not a predicate name");
    if (is_upper_start(cur_.text))
      return fail(cur_, "expected a predicate name, found the variable '" + std::string(cur_.text) +
                            "' (predicate names start with a lower-case letter)");
    l.name = cur_.text;
    l.line = cur_.line;  // literals are located by their predicate name (after any '!')
    l.column = cur_.column;
    advance();
    if (!accept(token_kind::lparen)) return true;  // nullary without parentheses
    if (accept(token_kind::rparen)) return true;   // nullary with "()"
    for (;;) {
      if (cur_.kind == token_kind::number)
        return fail(cur_, "constants are not supported as arguments: use a variable (upper-case name) and an observed predicate");
      if (cur_.kind != token_kind::identifier)
        return fail(cur_, "expected a variable in the arguments of '" + std::string(l.name) + "', found " + describe(cur_));
      if (!is_upper_start(cur_.text))
        return fail(cur_, "'" + std::string(cur_.text) + "' is not a variable: variables start with an upper-case letter or '_'");
      l.arguments.push_back({cur_.text, cur_.line, cur_.column});
      advance();
      if (accept(token_kind::comma)) continue;
      if (accept(token_kind::rparen)) return true;
      return fail(cur_, "expected ',' or ')' in the arguments of '" + std::string(l.name) + "', found " + describe(cur_));
    }
  }

  lexer lex_;
  token cur_;
  int prev_line_ = 1;
};

}  // namespace logic_detail

namespace logic_detail {

// Builds a rule_set from the AST (name resolution and the semantic checks).
class rule_set_builder {
 public:
  static bool build(const std::vector<ast_declaration>& decls, const std::vector<ast_rule>& rules, rule_set& out, parser& err) {
    // Names -> predicate index in a hash map: a file with many declarations resolves in linear
    // time (rule_set::find_predicate's scan would make it quadratic).
    std::unordered_map<std::string, int> index;
    const auto find = [&](std::string_view name) {
      const auto it = index.find(std::string(name));
      return it == index.end() ? -1 : it->second;
    };
    for (std::size_t i = 0; i < out.predicates_.size(); ++i) index.emplace(out.predicates_[i].name, static_cast<int>(i));
    for (const auto& d : decls) {
      const int existing = find(d.name);
      if (existing >= 0) {
        const logic_predicate& e = out.predicates_[static_cast<std::size_t>(existing)];
        if (e.kind == predicate_kind::builtin)
          return err.fail(d.line, d.column, "'" + std::string(d.name) + "' is a built-in predicate and cannot be declared");
        return err.fail(d.line, d.column, "'" + std::string(d.name) + "' is already declared at line " + std::to_string(e.line));
      }
      index.emplace(std::string(d.name), static_cast<int>(out.predicates_.size()));
      out.predicates_.push_back({std::string(d.name), d.arity, d.kind, d.line, d.column});
    }
    for (const auto& ar : rules) {
      logic_rule r;
      r.weight = ar.weight;
      r.power = ar.power;
      r.line = ar.line;
      r.column = ar.column;
      bool any_open = false;
      for (int part = 0; part < 2; ++part) {
        for (const auto& al : part == 0 ? ar.body : ar.head) {
          const int p = find(al.name);
          if (p < 0) return err.fail(al.line, al.column, unknown_message(out, al.name));
          const logic_predicate& pred = out.predicates_[static_cast<std::size_t>(p)];
          if (static_cast<int>(al.arguments.size()) != pred.arity)
            return err.fail(al.line, al.column,
                            "'" + pred.name + "' takes " + std::to_string(pred.arity) + " argument" + (pred.arity == 1 ? "" : "s") +
                                ", got " + std::to_string(al.arguments.size()));
          rule_literal lit;
          lit.predicate = p;
          lit.negated = al.negated;
          lit.in_head = part == 1;
          lit.line = al.line;
          lit.column = al.column;
          for (std::size_t a = 0; a < al.arguments.size(); ++a) {
            const auto& arg = al.arguments[a];
            auto it = std::find(r.variables.begin(), r.variables.end(), arg.name);
            if (it == r.variables.end()) {
              if (part == 1 && !ar.body.empty())
                return err.fail(arg.line, arg.column,
                                "variable '" + std::string(arg.name) + "' appears in the head but not in the body (unbound); bind it in "
                                "the body, e.g. with 'object(" + std::string(arg.name) + ")'");
              if (static_cast<int>(r.variables.size()) == max_rule_variables)
                return err.fail(arg.line, arg.column,
                                "too many variables: a rule may use at most " + std::to_string(max_rule_variables) +
                                    " (grounding enumerates objects^variables assignments)");
              r.variables.emplace_back(arg.name);
              it = r.variables.end() - 1;
            }
            lit.variables[a] = static_cast<int>(it - r.variables.begin());
          }
          any_open = any_open || pred.kind == predicate_kind::open;
          r.literals.push_back(lit);
        }
      }
      if (!any_open)
        return err.fail(ar.line, ar.column,
                        "this rule mentions no open predicate: its truth is fixed by the scene and cannot change the result");
      out.rules_.push_back(std::move(r));
    }
    if (out.rules_.empty()) return err.fail(1, 1, "no rules: a rule set needs at least one rule");
    return true;
  }

  static std::string unknown_message(const rule_set& rs, std::string_view name) {
    std::string msg = "unknown predicate '" + std::string(name) + "'";
    std::size_t best = 3;  // suggest names fewer than 3 edits away, or that `name` (4+ characters) begins
    std::string_view suggestion;
    for (const auto& p : rs.predicates_) {
      const std::size_t d = edit_distance_below(name, p.name, best);
      const bool prefix = p.name.size() > name.size() && name.size() >= 4 && p.name.compare(0, name.size(), name) == 0;
      if (d < best || (prefix && suggestion.empty())) {
        best = std::min(best, d);
        suggestion = p.name;
      }
    }
    if (!suggestion.empty()) msg += " (did you mean '" + std::string(suggestion) + "'?)";
    msg += "; declare it with 'open " + std::string(name) + "/arity.' or 'observed " + std::string(name) + "/arity.'";
    return msg;
  }

  static void set_source(rule_set& rs, std::string_view source) { rs.source_ = std::string(source); }
};

}  // namespace logic_detail

/// Parses and resolves a rule set. On error, `out` is left unchanged and `error` (if given) gets
/// the location and message.
[[nodiscard]] inline status parse_rules(std::string_view text, rule_set& out, std::string_view source_name = "<rules>",
                                        rule_error* error = nullptr) {
  if (text.size() >= static_cast<std::size_t>(std::numeric_limits<int>::max()))  // lines and columns are ints
    return status(errc::invalid_argument, "parse_rules: " + std::string(source_name) + ": the text is 2 GiB or longer");
  std::vector<logic_detail::ast_declaration> decls;
  std::vector<logic_detail::ast_rule> rules;
  logic_detail::parser p(text);
  rule_set built;
  const bool ok = p.parse(decls, rules) && logic_detail::rule_set_builder::build(decls, rules, built, p);
  if (!ok) {
    if (error) *error = rule_error{std::string(source_name), p.error_line, p.error_column, p.error_message};
    return status(errc::parse_error, "parse_rules: " + std::string(source_name) + ":" + std::to_string(p.error_line) + ":" +
                                         std::to_string(p.error_column) + ": " + p.error_message);
  }
  logic_detail::rule_set_builder::set_source(built, source_name);
  out = std::move(built);
  if (error) *error = rule_error{};
  return {};
}

/// Largest rule file load_rules reads. Rule files are a few kilobytes; the cap keeps hostile
/// input within what the parser's int line and column counters can count.
inline constexpr std::uint64_t max_rule_file_bytes = std::uint64_t{64} << 20;

/// Reads a rule file (a regular file of at most max_rule_file_bytes) and parses it: io_error
/// when it cannot be read or is a FIFO or device, corrupt_data when it is larger.
[[nodiscard]] inline status load_rules(const std::string& path, rule_set& out, rule_error* error = nullptr) {
  std::vector<unsigned char> text;
  DISTILL_TRY(read_file("load_rules", path, text, max_rule_file_bytes));
  return parse_rules(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()), out, path, error);
}

}  // namespace distill
