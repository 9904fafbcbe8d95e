// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The CPU frame every soft-target loss shares (the dense losses in soft_target_cpu.hpp, the
//! sparse top-k teacher in topk_teacher.hpp); a loss adds only its per-row computation:
//!   cpu_call     the per-call settings read from the options and extras (temperature, weights,
//!                the hard-label term, which outputs are wanted, the divisor of the reduction)
//!   row_result   what one row produces (weighted loss, temperature term, diagnostics)
//!   row_sink     where row results go: the per-row outputs, ignored rows (zero gradient),
//!                rows without a distribution (NaN loss and gradient), then the reduced loss
//!                and dL/dT, summed in row order (bitwise reproducible for any thread count)
//!   gather_row / scatter_row   contiguous copies of rows that are not unit-stride
//!   min_rows_per_thread        how many rows a thread must get before a loop goes parallel

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "distill/core/reduction.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/losses/soft_target_common.hpp"

namespace distill::soft_target_detail {

/// Smallest chunk of rows worth a thread of its own: about 16 K classes, tens of microseconds of
/// work, the order of what starting an OpenMP team costs on a busy machine. Tiny batches (a
/// training step's 64 x 10 logits) then run on the calling thread alone.
inline index_t min_rows_per_thread(index_t cols) noexcept {
  constexpr index_t min_classes = index_t(1) << 14;
  return std::max<index_t>(1, min_classes / std::max<index_t>(1, cols));
}

/// Per-call settings of a CPU soft-target loss.
template <class Acc>
struct cpu_call {
  call_scalars<Acc> sc;
  Acc soft_weight, hard_weight, grad_scale, inv_divisor;
  bool want_grad, want_dt, want_diag, accumulate;
  bool hard;  // the hard-label term (or its diagnostic) needs the raw student log-sum-exp
  label_view<host_space> labels;
  host_view<const Acc, 1> row_weights;
  std::int64_t ignore_index;

  Acc weight(index_t r) const noexcept { return row_weights.empty() ? Acc(1) : row_weights(r); }
  /// The row's label, -1 when there are no labels.
  std::int64_t label(index_t r) const noexcept { return labels.empty() ? std::int64_t(-1) : labels(r); }
  bool ignored(index_t r) const noexcept { return !labels.empty() && labels(r) == ignore_index; }
};

/// The settings of one call over `rows` rows (validation is done by the caller).
template <class Acc>
cpu_call<Acc> make_cpu_call(const soft_target_options& opt, const soft_target_extras<Acc, host_space>& ex, index_t rows,
                            bool want_grad) {
  cpu_call<Acc> c;
  c.sc.t_squared = opt.scale_by_t_squared;
  c.sc.set_temperature(ex.temperature.empty() ? static_cast<Acc>(opt.temperature) : ex.temperature(0));
  c.soft_weight = opt.soft_weight;
  c.hard_weight = opt.hard_label_weight;
  c.grad_scale = opt.grad_scale;
  c.want_grad = want_grad;
  c.want_dt = want_grad && !ex.grad_temperature.empty();
  c.want_diag = !ex.row_kl.empty() || !ex.row_teacher_entropy.empty() || !ex.row_top1_agreement.empty();
  c.accumulate = opt.accumulate;
  c.hard = !ex.labels.empty() && (opt.hard_label_weight != 0.0f || !ex.row_hard_loss.empty());
  c.labels = ex.labels;
  c.row_weights = ex.row_weights;
  c.ignore_index = opt.ignore_index;
  // divisor D of the reduction, known before any gradient is written
  Acc divisor = Acc(1);
  if (!ex.normalizer.empty()) {
    divisor = ex.normalizer(0);
  } else if (opt.reduction == reduction::mean) {
    divisor = Acc(0);
    for (index_t r = 0; r < rows; ++r)
      if (!c.ignored(r)) divisor += c.weight(r);
  } else {
    divisor = reduction_divisor(opt.reduction, static_cast<Acc>(rows), Acc(0));
  }
  c.inv_divisor = safe_inverse(divisor);
  return c;
}

/// What one row produces.
template <class Acc>
struct row_result {
  Acc loss = 0;                         // w_r (soft_weight c(T) f_r + hard_label_weight CE_r)
  Acc dt = 0;                           // the row's term of dL/dT (before grad_scale / D)
  row_diagnostics<Acc> diag{0, 0, 0};   // KL, teacher entropy, top-1 agreement
  Acc hard_ce = 0;                      // CE_r
  bool masked = false;                  // no distribution: everything of the row becomes NaN
};

/// Collects the row results of one call; each row is put once, from any thread.
template <class Acc, class G>
class row_sink {
 public:
  row_sink(const cpu_call<Acc>& call, const soft_target_extras<Acc, host_space>& ex, const host_view<G, 2>& grad,
           index_t rows, index_t cols)
      : call_(call), ex_(ex), grad_(grad), cols_(cols), loss_(static_cast<std::size_t>(rows)),
        dt_(call.want_dt ? static_cast<std::size_t>(rows) : 0), masked_(static_cast<std::size_t>(rows), 0) {}

  void put(index_t r, row_result<Acc> o) {
    if (o.masked) {
      const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
      masked_[static_cast<std::size_t>(r)] = 1;
      o.loss = o.dt = o.hard_ce = nan;
      o.diag = {nan, nan, nan};
      if (call_.want_grad)
        for (index_t k = 0; k < cols_; ++k) grad_(r, k) = store<G>(nan);
    }
    loss_[static_cast<std::size_t>(r)] = o.loss;
    if (call_.want_dt) dt_[static_cast<std::size_t>(r)] = o.dt;
    if (!ex_.row_kl.empty()) ex_.row_kl(r) = o.diag.kl;
    if (!ex_.row_teacher_entropy.empty()) ex_.row_teacher_entropy(r) = o.diag.entropy;
    if (!ex_.row_top1_agreement.empty()) ex_.row_top1_agreement(r) = o.diag.top1;
    if (!ex_.row_hard_loss.empty()) ex_.row_hard_loss(r) = o.hard_ce;
  }

  /// A row with `ignore_index`: no loss, a zero gradient (left alone when accumulating).
  void put_ignored(index_t r) {
    if (call_.want_grad && !call_.accumulate)
      for (index_t k = 0; k < cols_; ++k) grad_(r, k) = store<G>(Acc(0));
    put(r, row_result<Acc>{});
  }

  /// Writes the loss (per row, or reduced in row order) and dL/dT; returns the first row
  /// without a distribution, or -1.
  index_t finish(const host_view<Acc, 1>& loss, reduction red) const {
    const auto n = static_cast<index_t>(loss_.size());
    if (!loss.empty()) {
      if (red == reduction::none) {
        for (index_t r = 0; r < n; ++r) loss(r) = loss_[static_cast<std::size_t>(r)];
      } else {
        Acc total = Acc(0);
        for (index_t r = 0; r < n; ++r) total += loss_[static_cast<std::size_t>(r)];
        loss(0) = total * call_.inv_divisor;
      }
    }
    if (call_.want_dt) {
      Acc total = Acc(0);
      for (index_t r = 0; r < n; ++r) total += dt_[static_cast<std::size_t>(r)];
      ex_.grad_temperature(0) = call_.grad_scale * total * call_.inv_divisor;
    }
    for (index_t r = 0; r < n; ++r)
      if (masked_[static_cast<std::size_t>(r)]) return r;
    return -1;
  }

 private:
  const cpu_call<Acc>& call_;
  const soft_target_extras<Acc, host_space>& ex_;
  const host_view<G, 2>& grad_;
  index_t cols_;
  std::vector<Acc> loss_, dt_;
  std::vector<unsigned char> masked_;
};

/// Row `r` of a (rows, cols) view of any strides into contiguous `dst`.
template <class Acc, class V>
void gather_row(const V& view, index_t r, Acc* dst) {
  for (index_t k = 0; k < view.extent(1); ++k) dst[k] = load<Acc>(view(r, k));
}
/// Contiguous `src` into row `r` of a view of any strides.
template <class G, class Acc>
void scatter_row(const host_view<G, 2>& view, index_t r, const Acc* src) {
  for (index_t k = 0; k < view.extent(1); ++k) view(r, k) = store<G>(src[k]);
}

}  // namespace distill::soft_target_detail
