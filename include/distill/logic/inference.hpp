// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Grounding and MAP inference for a `rule_set` (rules.hpp) on one scene and one question:
//! the hinge-loss MRF of PSL (Bach et al., JMLR 2017, §4–5) solved by consensus ADMM.
//!
//! Grounding. Each rule is instantiated for every assignment of objects to its variables. With
//! the observed atoms (built-ins and the caller's observed predicates) folded into a constant,
//! a ground rule's distance to satisfaction is a hinge over the open atoms x ∈ [0, 1]^n:
//!     ℓ_r(x) = c_r + a_r · x,          d_r = max(0, ℓ_r(x))               (lukasiewicz.hpp (*))
//! with c_r = 1 - n_body + Σ (observed body values) - Σ (observed head values), a literal !x
//! counting as 1 - x, coefficients a_r = +1 for open body atoms and -1 for open head atoms
//! (signs flip under '!'; repeated atoms add up). Ground rules with c_r + Σ max(a_rk, 0) ≤ 0 are
//! satisfied whatever x is and are dropped, as PSL does.
//!
//! MAP inference:  minimise  E(x) = Σ_soft w_r max(0, ℓ_r(x))^p_r   over x ∈ [0, 1]^n,
//!                 subject to ℓ_r(x) ≤ 0 for the hard rules.
//! E is convex, so this is a convex program. Consensus ADMM (Boyd et al. 2011, §7; PSL's
//! reasoner): every ground rule r keeps a local copy x_r of its atoms and a scaled dual u_r;
//! with step ρ, iterate
//!   1. x_r ← argmin_x  w_r h_r(x) + ρ/2 |x - v|²,  v = z[atoms of r] - u_r       (closed form:)
//!        ℓ(v) ≤ 0                → x = v
//!        p = 1:  x = v - (w/ρ) a   if ℓ(v) - (w/ρ)|a|² ≥ 0, else x = v - (ℓ(v)/|a|²) a
//!        p = 2:  x = v - (2wℓ(v) / (ρ + 2w|a|²)) a
//!        hard:   x = v - (ℓ(v)/|a|²) a                  (projection onto ℓ = 0)
//!   2. z_i ← clip( mean over the copies of atom i of (x_r,i + u_r,i), 0, 1 )  (the box [0, 1])
//!   3. u_r ← u_r + x_r - z[atoms of r]
//! until the primal residual |x - z| ≤ ε_abs √m + ε_rel max(|x|, |z|) and the dual residual
//! ρ |z - z_prev| ≤ ε_abs √m + ε_rel ρ |u| (m = number of local copies, norms over copies).
//! With `adaptive_rho` (default), ρ is doubled when the primal residual exceeds 10× the dual
//! one and halved in the opposite case, u rescaled by the inverse (residual balancing, Boyd et
//! al. §3.4.1), during the first 1000 iterations only. Without it, an optimum a hair inside the
//! box (a mask value of 1 - 1e-5) can leave z clipped at 1 for thousands of iterations while the
//! duals drift back.
//! All local copies are computed in double.
//! The iteration is sequential and in a fixed order: the same input gives bitwise the same
//! output. Open atoms that no ground rule mentions do not affect E; they are reported as
//! `initial_value`.
//!
//! Iteration cap: when `max_iterations` is reached first, the values of the last iterate are
//! written all the same and the call returns `errc::not_converged`; `logic_report` gives
//! the iterations, residuals and energy either way.
//!
//! Cost: `logic_solver::prepare` sizes every array for `max_objects`; `solve` then grounds into
//! them and iterates without allocating. A six-object Sort-of-CLEVR mask takes a few µs.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/logic/rules.hpp"
#include "distill/logic/scene.hpp"

namespace distill {

/// ADMM settings (defaults are PSL's reasoner defaults, with a lower iteration cap).
struct logic_admm_options {
  double rho = 1.0;            ///< ADMM step (augmented-Lagrangian penalty), > 0
  double epsilon_abs = 1e-5;   ///< absolute tolerance of the residuals, >= 0
  double epsilon_rel = 1e-3;   ///< relative tolerance of the residuals, >= 0
  int max_iterations = 10000;  ///< cap; reaching it returns errc::not_converged (values still written)
  double initial_value = 0.0;  ///< starting value of the open atoms (and the value of atoms no rule mentions)
  bool warm_start = false;     ///< start from the previous solve's values when it had as many objects
  bool adaptive_rho = true;    ///< residual balancing during the first 1000 iterations (see the file comment)
};

struct logic_options {
  spatial_predicate_options spatial;
  logic_admm_options admm;
};

/// What a solve did. Residuals are those of the last iteration.
struct logic_report {
  int iterations = 0;
  bool converged = false;
  double primal_residual = 0.0;
  double dual_residual = 0.0;
  double rho = 0.0;                  ///< the ADMM step at the end (differs from the option with adaptive_rho)
  double energy = 0.0;               ///< Σ_soft w · max(0, ℓ(x))^p at the returned values
  double max_hard_violation = 0.0;   ///< max over hard ground rules of max(0, ℓ(x))
  index_t ground_rules = 0;          ///< kept after dropping the trivially satisfied ones
  index_t local_copies = 0;          ///< Σ over ground rules of their open atoms
  index_t atoms = 0;                 ///< open atoms (N^arity per open predicate)
};

/// Values of one caller-observed predicate for one solve: N^arity truth values in [0, 1],
/// row-major (p(i, j) at i·N + j); one value for arity 0.
struct observed_values {
  int predicate = -1;                 ///< rule_set::find_predicate("queried")
  host_view<const float, 1> values;
};

/// Workspace and state for one rule set: prepare once, then solve scene after scene.
/// Not thread-safe; use one solver per thread (logic_mask_batch takes a span of them).
class logic_solver {
 public:
  /// Compiles `rules` for scenes of up to `max_objects` objects and allocates every array.
  [[nodiscard]] status prepare(const rule_set& rules, index_t max_objects) {
    constexpr const char* fn = "logic_solver::prepare";
    if (max_objects < 1 || max_objects > 4096)
      return fail(errc::invalid_argument, fn, "'max_objects' must be in [1, 4096], got " + std::to_string(max_objects));
    rules_ = rules;
    max_n_ = max_objects;
    prepared_ = false;
    const auto& preds = rules_.predicates();
    const std::size_t np = preds.size();
    table_offset_.assign(np, -1);
    pred_used_.assign(np, 0);
    lits_.clear();
    crules_.clear();
    for (const auto& r : rules_.rules())
      for (const auto& l : r.literals) pred_used_[static_cast<std::size_t>(l.predicate)] = 1;

    const auto power_of = [&](int arity) {
      index_t v = 1;
      for (int a = 0; a < arity; ++a) v *= max_n_;
      return v;
    };
    index_t table_size = 0, atom_cap = 0;
    for (std::size_t p = 0; p < np; ++p) {
      if (preds[p].kind == predicate_kind::open) {
        atom_cap += power_of(preds[p].arity);
      } else if (pred_used_[p]) {
        table_offset_[p] = table_size;
        table_size += power_of(preds[p].arity);
      }
    }
    // Compile each rule: observed literals first (they decide whether a grounding is dropped),
    // then open ones; fold every literal's constant part into the rule's constant.
    double ground_cap = 0.0, term_cap = 0.0;
    for (const auto& r : rules_.rules()) {
      compiled_rule cr;
      cr.lit_begin = static_cast<std::int32_t>(lits_.size());
      cr.variables = static_cast<std::int32_t>(r.variables.size());
      cr.weight = r.weight;
      cr.power = r.power;
      double constant = 1.0 - r.body_size();
      int n_open = 0;
      for (int pass = 0; pass < 2; ++pass) {
        for (const auto& l : r.literals) {
          const bool open = preds[static_cast<std::size_t>(l.predicate)].kind == predicate_kind::open;
          if (open != (pass == 1)) continue;
          // A literal contributes s · (negated ? 1 - t : t), s = +1 in the body, -1 in the head.
          const double s = l.in_head ? -1.0 : 1.0;
          compiled_literal cl;
          cl.predicate = l.predicate;
          cl.open = open ? 1 : 0;
          cl.arity = static_cast<std::uint8_t>(preds[static_cast<std::size_t>(l.predicate)].arity);
          cl.v0 = static_cast<std::uint8_t>(std::max(0, l.variables[0]));
          cl.v1 = static_cast<std::uint8_t>(std::max(0, l.variables[1]));
          cl.mult = l.negated ? -s : s;
          constant += l.negated ? s : 0.0;
          if (open) {
            ++n_open;
            cr.open_positive += cl.mult > 0 ? cl.mult : 0.0;
          }
          lits_.push_back(cl);
        }
        if (pass == 0) cr.n_observed = static_cast<std::int32_t>(lits_.size()) - cr.lit_begin;
      }
      cr.lit_end = static_cast<std::int32_t>(lits_.size());
      cr.constant = constant;
      const double groundings = std::pow(static_cast<double>(max_n_), static_cast<double>(cr.variables));
      ground_cap += groundings;
      term_cap += groundings * n_open;
      crules_.push_back(cr);
    }
    if (term_cap > 1e8 || ground_cap > 1e8)
      return fail(errc::invalid_argument, fn,
                  "the rule set grounds to too many rules for " + std::to_string(max_objects) +
                      " objects (more than 1e8); use fewer variables per rule or fewer objects");
    tables_.assign(static_cast<std::size_t>(table_size), 0.0);
    observed_given_.assign(np, 0);
    atom_offset_.assign(np, 0);
    g_begin_.assign(static_cast<std::size_t>(ground_cap) + 1, 0);
    g_constant_.assign(static_cast<std::size_t>(ground_cap), 0.0);
    g_weight_.assign(static_cast<std::size_t>(ground_cap), 0.0);
    g_norm2_.assign(static_cast<std::size_t>(ground_cap), 0.0);
    g_power_.assign(static_cast<std::size_t>(ground_cap), 0);
    t_atom_.assign(static_cast<std::size_t>(term_cap), 0);
    t_coef_.assign(static_cast<std::size_t>(term_cap), 0.0);
    t_x_.assign(static_cast<std::size_t>(term_cap), 0.0);
    t_u_.assign(static_cast<std::size_t>(term_cap), 0.0);
    z_.assign(static_cast<std::size_t>(atom_cap), 0.0);
    z_sum_.assign(static_cast<std::size_t>(atom_cap), 0.0);
    a_count_.assign(static_cast<std::size_t>(atom_cap), 0);
    a_inv_count_.assign(static_cast<std::size_t>(atom_cap), 0.0);
    n_ = 0;
    prev_n_ = 0;
    prepared_ = true;
    return {};
  }

  /// Grounds the rules on `scene` (N ≤ max_objects objects) with the given observed values and
  /// runs ADMM. Every observed predicate that a rule mentions must be given. On success (and on
  /// errc::not_converged) the open atoms can be read with `read`.
  [[nodiscard]] status solve(host_view<const scene_object, 1> scene, std::span<const observed_values> observed,
                             const logic_options& opt = {}, logic_report* report = nullptr) {
    constexpr const char* fn = "logic_solver::solve";
    if (report) *report = logic_report{};
    solved_ = false;
    if (!prepared_) return fail(errc::invalid_argument, fn, "the solver is not prepared (call prepare(rules, max_objects) first)");
    DISTILL_TRY(check_scene(fn, "scene", scene));
    if (scene.extent(0) > max_n_)
      return fail(errc::shape_mismatch, fn,
                  "'scene' has " + std::to_string(scene.extent(0)) + " objects but the solver was prepared for at most " +
                      std::to_string(max_n_));
    DISTILL_TRY(check_spatial_options(fn, opt.spatial));
    DISTILL_TRY(check_admm_options(fn, opt.admm));
    const index_t n = scene.extent(0);
    DISTILL_TRY(load_observed(fn, n, observed));
    const bool warm = opt.admm.warm_start && prev_n_ == n;
    n_ = n;
    const auto& preds = rules_.predicates();
    for (std::size_t p = 0; p < builtin_predicate_count; ++p)
      if (pred_used_[p])
        builtin_truth_values(static_cast<builtin_predicate>(p), scene, opt.spatial,
                             tables_.data() + table_offset_[p]);
    n_atoms_ = 0;
    for (std::size_t p = 0; p < preds.size(); ++p) {
      if (preds[p].kind != predicate_kind::open) continue;
      atom_offset_[p] = n_atoms_;
      n_atoms_ += preds[p].arity == 0 ? 1 : (preds[p].arity == 1 ? n : n * n);
    }
    ground();
    logic_report rep;
    admm(opt.admm, warm, rep);
    finish_report(rep);
    prev_n_ = n;
    solved_ = true;
    if (report) *report = rep;
    if (!rep.converged) {
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "ADMM reached max_iterations = %d before converging (primal residual %.3g, dual residual %.3g); "
                    "the values of the last iterate are written",
                    opt.admm.max_iterations, rep.primal_residual, rep.dual_residual);
      return fail(errc::not_converged, fn, buf);
    }
    return {};
  }

  /// Copies the values of a binary open predicate into `out` [N, N] (out(i, j) = p(i, j)).
  template <class T>
  [[nodiscard]] status read(int predicate, host_view<T, 2> out) const {
    constexpr const char* fn = "logic_solver::read";
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "read: output must be float or double");
    DISTILL_TRY(check_readable(fn, predicate, 2));
    DISTILL_TRY(check_present(fn, "out", out));
    DISTILL_TRY(check_shape(fn, "out", out, {n_, n_}));
    DISTILL_TRY(check_strides(fn, "out", out));
    const double* z = z_.data() + atom_offset_[static_cast<std::size_t>(predicate)];
    for (index_t i = 0; i < n_; ++i)
      for (index_t j = 0; j < n_; ++j) out(i, j) = static_cast<T>(z[i * n_ + j]);
    return {};
  }

  /// Copies the values of a unary open predicate into `out` [N], or of a nullary one into [1].
  template <class T>
  [[nodiscard]] status read(int predicate, host_view<T, 1> out) const {
    constexpr const char* fn = "logic_solver::read";
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "read: output must be float or double");
    const int arity = (predicate >= 0 && static_cast<std::size_t>(predicate) < rules_.predicates().size())
                          ? rules_.predicates()[static_cast<std::size_t>(predicate)].arity
                          : 1;
    DISTILL_TRY(check_readable(fn, predicate, arity == 0 ? 0 : 1));
    DISTILL_TRY(check_present(fn, "out", out));
    DISTILL_TRY(check_shape(fn, "out", out, {arity == 0 ? index_t(1) : n_}));
    DISTILL_TRY(check_strides(fn, "out", out));
    const double* z = z_.data() + atom_offset_[static_cast<std::size_t>(predicate)];
    for (index_t i = 0; i < out.extent(0); ++i) out(i) = static_cast<T>(z[i]);
    return {};
  }

  bool prepared() const noexcept { return prepared_; }
  const rule_set& rules() const noexcept { return rules_; }
  index_t max_objects() const noexcept { return max_n_; }
  /// Objects of the last solve.
  index_t objects() const noexcept { return n_; }

 private:
  static constexpr int adaptive_rho_iterations = 1000;

  struct compiled_literal {
    std::int32_t predicate = 0;
    std::uint8_t open = 0;
    std::uint8_t arity = 0;
    std::uint8_t v0 = 0, v1 = 0;
    double mult = 1.0;  // ±1: coefficient of the atom's value in ℓ
  };
  struct compiled_rule {
    std::int32_t lit_begin = 0, lit_end = 0, n_observed = 0, variables = 0;
    double constant = 0.0;       // 1 - n_body + Σ over negated literals of ±1
    double weight = 1.0;
    int power = 1;               // 0 = hard
    double open_positive = 0.0;  // upper bound of the open literals' contribution
  };

  static status check_admm_options(const char* fn, const logic_admm_options& o) {
    DISTILL_TRY(check_positive(fn, "admm.rho", o.rho));
    if (!(o.epsilon_abs >= 0.0) || !std::isfinite(o.epsilon_abs) || !(o.epsilon_rel >= 0.0) || !std::isfinite(o.epsilon_rel))
      return fail(errc::invalid_argument, fn, "'admm.epsilon_abs' and 'admm.epsilon_rel' must be finite and >= 0");
    if (o.max_iterations < 1)
      return fail(errc::invalid_argument, fn, "'admm.max_iterations' must be >= 1, got " + std::to_string(o.max_iterations));
    DISTILL_TRY(check_in_range(fn, "admm.initial_value", o.initial_value, 0.0, 1.0));
    return {};
  }

  status check_readable(const char* fn, int predicate, int rank) const {
    if (!solved_) return fail(errc::invalid_argument, fn, "nothing to read: the last solve failed or there was none");
    const auto& preds = rules_.predicates();
    if (predicate < 0 || static_cast<std::size_t>(predicate) >= preds.size())
      return fail(errc::invalid_argument, fn, "predicate index " + std::to_string(predicate) + " is out of range");
    const logic_predicate& p = preds[static_cast<std::size_t>(predicate)];
    if (p.kind != predicate_kind::open)
      return fail(errc::invalid_argument, fn, "'" + p.name + "' is not an open predicate: only open predicates are inferred");
    const int want_rank = p.arity == 2 ? 2 : 1;
    if (rank != 0 && want_rank != rank)
      return fail(errc::shape_mismatch, fn,
                  "'" + p.name + "' has arity " + std::to_string(p.arity) + ": read it into a rank-" + std::to_string(want_rank) + " view");
    if (rank == 0 && p.arity != 0) return fail(errc::shape_mismatch, fn, "'" + p.name + "' is not nullary");
    return {};
  }

  status load_observed(const char* fn, index_t n, std::span<const observed_values> observed) {
    const auto& preds = rules_.predicates();
    std::fill(observed_given_.begin(), observed_given_.end(), 0);
    for (std::size_t k = 0; k < observed.size(); ++k) {
      const int p = observed[k].predicate;
      if (p < 0 || static_cast<std::size_t>(p) >= preds.size())
        return fail(errc::invalid_argument, fn, "observed[" + std::to_string(k) + "] names predicate index " + std::to_string(p) +
                                                    ", which is out of range");
      const logic_predicate& pred = preds[static_cast<std::size_t>(p)];
      if (pred.kind != predicate_kind::observed)
        return fail(errc::invalid_argument, fn,
                    "observed[" + std::to_string(k) + "]: '" + pred.name + "' is " +
                        (pred.kind == predicate_kind::open ? "open (inferred), not observed" : "built-in (computed from the scene)"));
      if (observed_given_[static_cast<std::size_t>(p)])
        return fail(errc::invalid_argument, fn, "observed[" + std::to_string(k) + "]: '" + pred.name + "' is given twice");
      const index_t count = pred.arity == 0 ? 1 : (pred.arity == 1 ? n : n * n);
      const auto& v = observed[k].values;
      if (v.extent(0) != count)
        return fail(errc::shape_mismatch, fn,
                    "observed values of '" + pred.name + "' have " + std::to_string(v.extent(0)) + " entries, expected " +
                        std::to_string(count) + " (objects^" + std::to_string(pred.arity) + ")");
      if (v.empty()) return fail(errc::invalid_argument, fn, "observed values of '" + pred.name + "' are a null pointer");
      DISTILL_TRY(check_strides(fn, "observed values", v));
      observed_given_[static_cast<std::size_t>(p)] = 1;
      if (table_offset_[static_cast<std::size_t>(p)] < 0) continue;  // declared but no rule uses it
      double* t = tables_.data() + table_offset_[static_cast<std::size_t>(p)];
      for (index_t i = 0; i < count; ++i) {
        const float x = v(i);
        if (std::isnan(x))
          return fail(errc::non_finite, fn, "observed value " + std::to_string(i) + " of '" + pred.name + "' is NaN");
        if (!(x >= 0.0f && x <= 1.0f))
          return fail(errc::invalid_argument, fn,
                      "observed value " + std::to_string(i) + " of '" + pred.name + "' is " + check_detail::num(static_cast<double>(x)) +
                          ": truth values lie in [0, 1]");
        t[i] = static_cast<double>(x);
      }
    }
    for (std::size_t p = 0; p < preds.size(); ++p)
      if (preds[p].kind == predicate_kind::observed && pred_used_[p] && !observed_given_[p])
        return fail(errc::invalid_argument, fn, "no values were given for the observed predicate '" + preds[p].name + "'");
    return {};
  }

  // Instantiates every rule for every assignment of objects to its variables (an odometer over
  // N^variables), keeping the ground rules that some value of the open atoms can violate.
  void ground() {
    const index_t n = n_;
    n_ground_ = 0;
    n_terms_ = 0;
    g_begin_[0] = 0;
    const double* tables = tables_.data();
    for (const compiled_rule& cr : crules_) {
      index_t total = 1;
      for (int v = 0; v < cr.variables; ++v) total *= n;
      int assign[max_rule_variables] = {0, 0, 0, 0};
      const compiled_literal* lb = lits_.data() + cr.lit_begin;
      const compiled_literal* lo = lb + cr.n_observed;  // first open literal
      const compiled_literal* le = lits_.data() + cr.lit_end;
      for (index_t g = 0; g < total; ++g) {
        if (g > 0) {  // next assignment (last variable fastest)
          for (int v = cr.variables - 1; v >= 0; --v) {
            if (++assign[v] < n) break;
            assign[v] = 0;
          }
        }
        double c = cr.constant;
        for (const compiled_literal* l = lb; l != lo; ++l)
          c += l->mult * tables[table_offset_[static_cast<std::size_t>(l->predicate)] + flat(*l, assign, n)];
        if (c + cr.open_positive <= 0.0) continue;  // satisfied for every x in [0, 1]^n
        const index_t tb = n_terms_;
        index_t te = tb;
        for (const compiled_literal* l = lo; l != le; ++l) {
          const std::int32_t atom = static_cast<std::int32_t>(atom_offset_[static_cast<std::size_t>(l->predicate)] + flat(*l, assign, n));
          index_t k = tb;
          while (k < te && t_atom_[static_cast<std::size_t>(k)] != atom) ++k;
          if (k == te) {
            t_atom_[static_cast<std::size_t>(te)] = atom;
            t_coef_[static_cast<std::size_t>(te)] = 0.0;
            ++te;
          }
          t_coef_[static_cast<std::size_t>(k)] += l->mult;
        }
        // Drop atoms whose coefficients cancelled (r(I,J) -> r(J,I) with I = J).
        index_t w = tb;
        double upper = c, norm2 = 0.0;
        for (index_t k = tb; k < te; ++k) {
          const double a = t_coef_[static_cast<std::size_t>(k)];
          if (a == 0.0) continue;
          t_atom_[static_cast<std::size_t>(w)] = t_atom_[static_cast<std::size_t>(k)];
          t_coef_[static_cast<std::size_t>(w)] = a;
          ++w;
          upper += a > 0 ? a : 0.0;
          norm2 += a * a;
        }
        // upper <= 0: satisfied whatever x is. A ground rule with at least one open atom can always be
        // satisfied on its own (set that atom to 1 in the head or 0 in the body), and one whose atoms
        // all cancelled has c <= 0 up to rounding, so nothing else needs to be caught here;
        // conflicts between hard rules show up as ADMM not converging.
        if (upper <= 0.0 || w == tb) continue;
        const std::size_t gi = static_cast<std::size_t>(n_ground_);
        g_constant_[gi] = c;
        g_weight_[gi] = cr.weight;
        g_power_[gi] = static_cast<std::int8_t>(cr.power);
        g_norm2_[gi] = norm2;
        n_terms_ = w;
        ++n_ground_;
        g_begin_[gi + 1] = static_cast<std::int32_t>(w);
      }
    }
  }

  static index_t flat(const compiled_literal& l, const int* assign, index_t n) noexcept {
    return l.arity == 0 ? 0 : (l.arity == 1 ? assign[l.v0] : assign[l.v0] * n + assign[l.v1]);
  }

  void admm(const logic_admm_options& o, bool warm, logic_report& rep) {
    const index_t na = n_atoms_, m = n_terms_, ng = n_ground_;
    double* z = z_.data();
    double* zsum = z_sum_.data();
    std::int32_t* cnt = a_count_.data();
    double* inv = a_inv_count_.data();
    const std::int32_t* atom = t_atom_.data();
    const double* coef = t_coef_.data();
    double* x = t_x_.data();
    double* u = t_u_.data();
    std::fill(cnt, cnt + na, 0);
    for (index_t k = 0; k < m; ++k) ++cnt[atom[k]];
    for (index_t i = 0; i < na; ++i) {
      inv[i] = cnt[i] > 0 ? 1.0 / cnt[i] : 0.0;
      if (!warm || cnt[i] == 0) z[i] = o.initial_value;
    }
    for (index_t k = 0; k < m; ++k) u[k] = 0.0;
    rep.ground_rules = ng;
    rep.local_copies = m;
    rep.atoms = na;
    if (m == 0) {
      rep.converged = true;
      return;
    }
    double rho = o.rho;
    rep.rho = rho;
    const double sqrt_m = std::sqrt(static_cast<double>(m));
    const std::int32_t* gb = g_begin_.data();
    const double* gc = g_constant_.data();
    const double* gw = g_weight_.data();
    const double* gn2 = g_norm2_.data();
    const std::int8_t* gp = g_power_.data();
    for (int it = 1; it <= o.max_iterations; ++it) {
      // 1. local steps (closed-form proximal operators), accumulating x + u per atom
      std::fill(zsum, zsum + na, 0.0);
      for (index_t g = 0; g < ng; ++g) {
        const std::int32_t b = gb[g], e = gb[g + 1];
        double l = gc[g];
        for (std::int32_t k = b; k < e; ++k) {
          x[k] = z[atom[k]] - u[k];
          l += coef[k] * x[k];
        }
        if (l > 0.0) {
          double step;
          if (gp[g] == 2) {
            step = 2.0 * gw[g] * l / (rho + 2.0 * gw[g] * gn2[g]);
          } else if (gp[g] == 1) {
            step = gw[g] / rho;
            if (l - step * gn2[g] < 0.0) step = l / gn2[g];
          } else {
            step = l / gn2[g];
          }
          for (std::int32_t k = b; k < e; ++k) x[k] -= step * coef[k];
        }
        for (std::int32_t k = b; k < e; ++k) zsum[atom[k]] += x[k] + u[k];
      }
      // 2. consensus, projected onto the box [0, 1]
      double dz2 = 0.0;
      for (index_t i = 0; i < na; ++i) {
        if (cnt[i] == 0) continue;
        double v = zsum[i] * inv[i];
        v = v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v);
        const double d = v - z[i];
        dz2 += cnt[i] * d * d;
        z[i] = v;
      }
      // 3. dual ascent and residuals
      double r2 = 0.0, x2 = 0.0, z2 = 0.0, u2 = 0.0;
      for (index_t k = 0; k < m; ++k) {
        const double zk = z[atom[k]];
        const double r = x[k] - zk;
        u[k] += r;
        r2 += r * r;
        x2 += x[k] * x[k];
        z2 += zk * zk;
        u2 += u[k] * u[k];
      }
      rep.iterations = it;
      rep.primal_residual = std::sqrt(r2);
      rep.dual_residual = rho * std::sqrt(dz2);
      const double eps_primal = o.epsilon_abs * sqrt_m + o.epsilon_rel * std::sqrt(std::max(x2, z2));
      const double eps_dual = o.epsilon_abs * sqrt_m + o.epsilon_rel * rho * std::sqrt(u2);
      if (rep.primal_residual <= eps_primal && rep.dual_residual <= eps_dual) {
        rep.converged = true;
        return;
      }
      // Residual balancing (Boyd et al. 2011, §3.4.1): keep the residuals within a factor 10 of
      // each other by doubling or halving ρ, rescaling the scaled duals u = y/ρ to match. Fixed ρ
      // after `adaptive_rho_iterations`, so the usual convergence guarantee applies from there.
      if (o.adaptive_rho && it <= adaptive_rho_iterations) {
        double scale = 1.0;
        if (rep.primal_residual > 10.0 * rep.dual_residual) scale = 2.0;
        else if (rep.dual_residual > 10.0 * rep.primal_residual) scale = 0.5;
        if (scale != 1.0) {
          rho *= scale;
          rep.rho = rho;
          for (index_t k = 0; k < m; ++k) u[k] /= scale;
        }
      }
    }
  }

  void finish_report(logic_report& rep) const {
    double energy = 0.0, violation = 0.0;
    for (index_t g = 0; g < n_ground_; ++g) {
      double l = g_constant_[static_cast<std::size_t>(g)];
      for (std::int32_t k = g_begin_[static_cast<std::size_t>(g)]; k < g_begin_[static_cast<std::size_t>(g) + 1]; ++k)
        l += t_coef_[static_cast<std::size_t>(k)] * z_[static_cast<std::size_t>(t_atom_[static_cast<std::size_t>(k)])];
      const double d = l > 0.0 ? l : 0.0;
      const int p = g_power_[static_cast<std::size_t>(g)];
      if (p == 0) violation = std::max(violation, d);
      else energy += g_weight_[static_cast<std::size_t>(g)] * (p == 2 ? d * d : d);
    }
    rep.energy = energy;
    rep.max_hard_violation = violation;
  }

  rule_set rules_;
  index_t max_n_ = 0, n_ = 0, prev_n_ = 0;
  bool prepared_ = false, solved_ = false;
  std::vector<compiled_literal> lits_;
  std::vector<compiled_rule> crules_;
  std::vector<std::uint8_t> pred_used_, observed_given_;
  std::vector<index_t> table_offset_, atom_offset_;
  std::vector<double> tables_;
  // ground problem: ground rules [0, n_ground_), terms (local copies) [0, n_terms_), atoms [0, n_atoms_)
  index_t n_ground_ = 0, n_terms_ = 0, n_atoms_ = 0;
  std::vector<std::int32_t> g_begin_;
  std::vector<double> g_constant_, g_weight_, g_norm2_;
  std::vector<std::int8_t> g_power_;
  std::vector<std::int32_t> t_atom_;
  std::vector<double> t_coef_, t_x_, t_u_;
  std::vector<double> z_, z_sum_, a_inv_count_;
  std::vector<std::int32_t> a_count_;
};

/// One mask: solve, then read the binary open predicate `open_predicate` into `mask` [N, N].
/// Returns errc::not_converged (mask written) when ADMM hit its iteration cap.
[[nodiscard]] inline status logic_mask(const cpu& /*ctx: one scene runs on the calling thread*/, logic_solver& solver,
                                       host_view<const scene_object, 1> scene, std::span<const observed_values> observed,
                                       int open_predicate, host_view<float, 2> mask, const logic_options& opt = {},
                                       logic_report* report = nullptr) {
  const status st = solver.solve(scene, observed, opt, report);
  if (!st.ok() && st.code() != errc::not_converged) return st;
  DISTILL_TRY(solver.read(open_predicate, mask));
  return st;
}

/// Values of one caller-observed predicate for a batch: [B, N^arity] (row b = one scene).
struct observed_batch {
  int predicate = -1;
  host_view<const float, 2> values;
};

struct logic_batch_report {
  index_t solved = 0;          ///< scenes solved (B on success)
  index_t not_converged = 0;   ///< scenes that hit the iteration cap (masks written)
  int max_iterations = 0;      ///< most iterations any scene took
  double max_primal_residual = 0.0;
  double max_dual_residual = 0.0;
};

namespace logic_detail {

// Runs item(worker, b, report) for every b in [0, B): contiguous chunks of scenes, one per
// thread, chunk c on worker c (at most ctx.threads and `workers` chunks). Each scene's result is
// independent of the split. Returns the first error in scene order, else the first
// not_converged, else ok; the report sums the chunks in chunk order.
// A status held as plain data: assigning distill::status (a [[nodiscard]] class) warns under nvcc.
struct batch_error {
  errc code = errc::ok;
  std::string message;
};

template <class Item>
status run_batch(const cpu& ctx, index_t workers, index_t B, Item&& item, logic_batch_report* report) {
  const index_t chunks = std::min<index_t>({static_cast<index_t>(parallel_threads(ctx, B)), workers, B});
  std::vector<batch_error> chunk_error(static_cast<std::size_t>(chunks)), chunk_not_converged(static_cast<std::size_t>(chunks));
  std::vector<logic_batch_report> chunk_report(static_cast<std::size_t>(chunks));
  parallel_for(cpu{static_cast<int>(chunks)}, chunks, [&](index_t cb, index_t ce) {
    for (index_t c = cb; c < ce; ++c) {
      logic_batch_report& cr = chunk_report[static_cast<std::size_t>(c)];
      batch_error& error = chunk_error[static_cast<std::size_t>(c)];
      batch_error& not_converged = chunk_not_converged[static_cast<std::size_t>(c)];
      for (index_t b = B * c / chunks; b < B * (c + 1) / chunks; ++b) {
        logic_report rep;
        const status st = item(c, b, rep);
        if (!st.ok() && st.code() != errc::not_converged) {
          error = {st.code(), st.message() + " (scene " + std::to_string(b) + ")"};
          break;
        }
        if (!st.ok()) {
          ++cr.not_converged;
          if (not_converged.code == errc::ok) not_converged = {st.code(), st.message() + " (scene " + std::to_string(b) + ")"};
        }
        ++cr.solved;
        cr.max_iterations = std::max(cr.max_iterations, rep.iterations);
        cr.max_primal_residual = std::max(cr.max_primal_residual, rep.primal_residual);
        cr.max_dual_residual = std::max(cr.max_dual_residual, rep.dual_residual);
      }
    }
  });
  logic_batch_report total;
  const batch_error* first_error = nullptr;
  const batch_error* first_not_converged = nullptr;
  for (index_t c = 0; c < chunks; ++c) {
    const auto& cr = chunk_report[static_cast<std::size_t>(c)];
    total.solved += cr.solved;
    total.not_converged += cr.not_converged;
    total.max_iterations = std::max(total.max_iterations, cr.max_iterations);
    total.max_primal_residual = std::max(total.max_primal_residual, cr.max_primal_residual);
    total.max_dual_residual = std::max(total.max_dual_residual, cr.max_dual_residual);
    if (!first_error && chunk_error[static_cast<std::size_t>(c)].code != errc::ok) first_error = &chunk_error[static_cast<std::size_t>(c)];
    if (!first_not_converged && chunk_not_converged[static_cast<std::size_t>(c)].code != errc::ok)
      first_not_converged = &chunk_not_converged[static_cast<std::size_t>(c)];
  }
  if (report) *report = total;
  if (first_error) return status(first_error->code, first_error->message);
  if (first_not_converged) return status(first_not_converged->code, first_not_converged->message);
  return {};
}

// The scenes [B, N] and masks [B, N, N] of a batch call, validated the same way by every batch entry point.
inline status check_batch_scenes_and_masks(const char* fn, host_view<const scene_object, 2> scenes, host_view<float, 3> masks) {
  if (scenes.extent(0) > 0 && scenes.extent(1) <= 0)
    return fail(errc::invalid_argument, fn, "'scenes' are empty: a scene needs at least one object");
  DISTILL_TRY(check_nonempty(fn, "scenes", scenes));
  DISTILL_TRY(check_present(fn, "scenes", scenes));
  DISTILL_TRY(check_strides(fn, "scenes", scenes));
  const index_t B = scenes.extent(0), N = scenes.extent(1);
  DISTILL_TRY(check_present(fn, "masks", masks));
  DISTILL_TRY(check_shape(fn, "masks", masks, {B, N, N}));
  return check_strides(fn, "masks", masks);
}

// Scene b [N] and mask b [N, N] of a batch, as views with the batch's strides.
inline host_view<const scene_object, 1> batch_scene(host_view<const scene_object, 2> scenes, index_t b) {
  return make_strided_view(scenes.row(b), std::array<index_t, 1>{scenes.extent(1)}, std::array<index_t, 1>{scenes.stride(1)});
}
inline host_view<float, 2> batch_mask(host_view<float, 3> masks, index_t b) {
  return make_strided_view(masks.row(b), std::array<index_t, 2>{masks.extent(1), masks.extent(2)},
                           std::array<index_t, 2>{masks.stride(1), masks.stride(2)});
}

}  // namespace logic_detail

/// Masks for a batch of scenes with the same number of objects: scenes [B, N], masks [B, N, N],
/// observed values [B, N^arity] per observed predicate. Scenes are split into contiguous
/// chunks, one per thread (at most ctx.threads and solvers.size() chunks), chunk c using
/// solvers[c]; the output does not depend on the thread count. Returns the first error in
/// scene order; errc::not_converged (every mask written) when some scene hit the cap.
[[nodiscard]] inline status logic_mask_batch(const cpu& ctx, std::span<logic_solver> solvers, host_view<const scene_object, 2> scenes,
                                             std::span<const observed_batch> observed, int open_predicate, host_view<float, 3> masks,
                                             const logic_options& opt = {}, logic_batch_report* report = nullptr) {
  constexpr const char* fn = "logic_mask_batch";
  if (report) *report = logic_batch_report{};
  if (solvers.empty()) return fail(errc::invalid_argument, fn, "'solvers' is empty: pass at least one prepared solver");
  DISTILL_TRY(logic_detail::check_batch_scenes_and_masks(fn, scenes, masks));
  const index_t B = scenes.extent(0);
  for (std::size_t k = 0; k < observed.size(); ++k) {
    DISTILL_TRY(check_present(fn, "observed values", observed[k].values));
    DISTILL_TRY(check_extent(fn, "observed values", observed[k].values, 0, B, "one row per scene"));
    DISTILL_TRY(check_strides(fn, "observed values", observed[k].values));
  }
  // Per-worker rows of observed_values, allocated once per call (not per scene).
  const std::size_t no = observed.size();
  std::vector<observed_values> rows(solvers.size() * no);
  return logic_detail::run_batch(
      ctx, static_cast<index_t>(solvers.size()), B,
      [&](index_t worker, index_t b, logic_report& rep) {
        observed_values* row = rows.data() + static_cast<std::size_t>(worker) * no;
        for (std::size_t k = 0; k < no; ++k) {
          const auto& v = observed[k].values;
          row[k].predicate = observed[k].predicate;
          row[k].values = make_strided_view(v.row(b), std::array<index_t, 1>{v.extent(1)}, std::array<index_t, 1>{v.stride(1)});
        }
        return logic_mask(cpu{1}, solvers[static_cast<std::size_t>(worker)], logic_detail::batch_scene(scenes, b),
                          std::span<const observed_values>(row, no), open_predicate, logic_detail::batch_mask(masks, b), opt, &rep);
      },
      report);
}

}  // namespace distill
