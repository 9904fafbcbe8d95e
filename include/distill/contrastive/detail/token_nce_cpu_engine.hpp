// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The CPU engine of token NCE: the stages listed in token_nce_cpu.hpp, which declares
//! run_cpu_engine. Header-only use includes this file from there; with the compiled distill_cpu
//! library (DISTILL_CPU_LIBRARY) only src/token_nce_cpu.cpp does (float and double), so users'
//! translation units compile neither the engine nor Eigen.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "distill/contrastive/detail/token_nce_cpu.hpp"

namespace distill::token_nce_detail {

/// Rows of a key set: the queue's valid keys or the in-batch teacher tokens.
template <class Acc>
struct key_set {
  const Acc* data = nullptr;  ///< row j at data + j * ld
  index_t ld = 0;
  index_t count = 0;           ///< rows in the set
  const std::int64_t* ids = nullptr;  ///< per-row ids (queue slots or tokens) or nullptr
  index_t ids_stride = 0;
  bool in_batch = false;       ///< teacher rows: scale by inv norm, exclude self/padding
};

/// One call of the engine. Acc = float or double; every view's element type is Acc.
template <class Acc>
class cpu_engine {
 public:
  using row_array = Eigen::Map<Eigen::Array<Acc, 1, Eigen::Dynamic>>;
  using const_row_array = Eigen::Map<const Eigen::Array<Acc, 1, Eigen::Dynamic>>;

  cpu_engine(const cpu& ctx, host_view<const Acc, 2> Z, host_view<const Acc, 2> Y, const sample_queue<Acc, host_space>& queue,
             host_view<const std::uint8_t, 1> mask, host_view<const std::int64_t, 1> ids, host_view<Acc, 1> loss,
             host_view<Acc, 1> per_token, host_view<Acc, 2> grad_student, host_view<Acc, 2> grad_teacher,
             host_view<std::byte, 1> workspace, const token_nce_options& opt)
      : ctx_(ctx), Z_(Z), Y_(Y), queue_(queue), mask_(mask), ids_(ids), loss_(loss), per_token_(per_token),
        grad_student_(grad_student), grad_teacher_(grad_teacher), opt_(opt), M_(Z.extent(0)), D_(Z.extent(1)),
        plan_(make_cpu_plan<Acc>(ctx.threads, M_, D_, opt.in_batch_negatives)) {
    auto addr = reinterpret_cast<std::uintptr_t>(workspace.data());
    ws_ = reinterpret_cast<Acc*>((addr + 63) & ~std::uintptr_t(63));
    want_grad_ = !grad_student.empty() || !grad_teacher.empty();
    want_teacher_ = !grad_teacher.empty();
    inv_tau_ = Acc(1) / static_cast<Acc>(opt.temperature);
    eps_ = static_cast<Acc>(opt.normalize_eps);
    g_ = static_cast<Acc>(opt.grad_scale);
  }

  status run(const char* fn) {
    index_t valid_count = 0;
    for (index_t i = 0; i < M_; ++i) valid_count += valid(i) ? 1 : 0;
    if (valid_count == 0) return fail(errc::invalid_argument, fn, "every token is masked: the loss is undefined");
    norms(valid_count);
    key_pass();
    tokens();
    if (want_teacher_ && opt_.in_batch_negatives) inbatch_teacher_gradient();
    write_losses();
    return {};
  }

 private:
  Acc* at(std::size_t offset) const noexcept { return ws_ + offset; }
  bool valid(index_t i) const { return mask_.empty() || mask_(i) != 0; }
  std::int64_t row_id(index_t i) const { return ids_.empty() ? no_sample_id : ids_(i); }
  /// This worker's slice of the packing panels, as the workspace of a one-thread gemm.
  host_view<std::byte, 1> packing(index_t w) const noexcept {
    return make_view(reinterpret_cast<std::byte*>(at(plan_.packs + static_cast<std::size_t>(w) * plan_.packing)),
                     static_cast<index_t>(plan_.packing * sizeof(Acc)));
  }
  static host_view<const Acc, 2> rows(const Acc* p, index_t n, index_t cols, index_t ld) noexcept {
    return make_strided_view(p, std::array<index_t, 2>{n, cols}, std::array<index_t, 2>{ld, index_t(1)});
  }
  static host_view<Acc, 2> rows(Acc* p, index_t n, index_t cols, index_t ld) noexcept {
    return make_strided_view(p, std::array<index_t, 2>{n, cols}, std::array<index_t, 2>{ld, index_t(1)});
  }

  // ---- 1. per-token norms and positive logits (B2 forward, s_i0) ----
  void norms(index_t valid_count) {
    Acc *invq = at(plan_.invq), *invk = at(plan_.invk), *s0 = at(plan_.s0), *projq = at(plan_.projq), *projk = at(plan_.projk),
        *weight = at(plan_.weight);
    parallel_for(
        ctx_, M_,
        [&](index_t b, index_t e) {
          for (index_t i = b; i < e; ++i) {
            const Acc* z = Z_.row(i);
            const Acc* y = Y_.row(i);
            Acc zz = 0, yy = 0, zy = 0;
            for (index_t d = 0; d < D_; ++d) {
              zz += z[d] * z[d];
              yy += y[d] * y[d];
              zy += z[d] * y[d];
            }
            invq[i] = contrastive_detail::inverse_norm(zz, eps_);
            invk[i] = contrastive_detail::inverse_norm(yy, eps_);
            projq[i] = contrastive_detail::norm_unclamped(zz, eps_) ? Acc(1) : Acc(0);
            projk[i] = contrastive_detail::norm_unclamped(yy, eps_) ? Acc(1) : Acc(0);
            s0[i] = zy * invq[i] * invk[i] * inv_tau_;
            weight[i] = token_weight(valid(i), opt_.reduction, static_cast<Acc>(valid_count), static_cast<Acc>(M_));
          }
        },
        256);
  }

  // ---- 2. one tiled pass over the keys: online LSE and sum_j e^{s_j - m} key_j ----
  /// Key `key` of set `ks` is not a negative of query row i (id rid): a false negative, or for
  /// in-batch keys the row itself or padding.
  bool excluded(const key_set<Acc>& ks, index_t i, std::int64_t rid, index_t key) const {
    const std::int64_t kid = ks.ids ? ks.ids[key * ks.ids_stride] : no_sample_id;
    return ks.in_batch ? inbatch_excluded(i, key, valid(key), rid, kid) : same_sample(rid, kid);
  }

  /// Rows [r0, r1) against keys [k0, k1) of set `ks`, into split `s`'s state; worker w's buffers.
  void tile_pass(index_t r0, index_t r1, const key_set<Acc>& ks, index_t k0, index_t k1, int s, index_t w) {
    const index_t R = r1 - r0;
    const cpu one{1};
    Acc* tile = at(plan_.tiles) + static_cast<std::size_t>(w) * cpu_row_block * cpu_key_tile;
    const Acc* invq = at(plan_.invq);
    const Acc* invk = at(plan_.invk);
    Acc* pm = at(plan_.part_m) + static_cast<std::size_t>(s) * M_;
    Acc* pl = at(plan_.part_l) + static_cast<std::size_t>(s) * M_;
    Acc* pacc = at(plan_.acc) + static_cast<std::size_t>(s) * M_ * D_;
    const auto zrows = rows(Z_.data() + r0 * Z_.stride(0), R, D_, Z_.stride(0));
    for (index_t t0 = k0; t0 < k1; t0 += cpu_key_tile) {
      const index_t n = std::min(cpu_key_tile, k1 - t0);
      const auto krows = rows(ks.data + t0 * ks.ld, n, D_, ks.ld);
      const auto logits = rows(tile, R, n, n);
      (void)gemm(one, transpose::no, transpose::yes, Acc(1), zrows, krows, Acc(0), logits, packing(w));  // S = Z K^T
      for (index_t rr = 0; rr < R; ++rr) {
        const index_t i = r0 + rr;
        row_array srow(tile + rr * n, n);
        if (!valid(i)) {
          srow.setZero();
          continue;
        }
        const bool nan_row = std::isnan(srow.sum());  // Eigen's vectorised exp/max do not propagate NaN
        if (ks.in_batch) srow *= const_row_array(invk + t0, n);
        const std::int64_t rid = row_id(i);
        const bool check_ids = ks.ids != nullptr && rid != no_sample_id;
        bool any_excluded = false;
        if (ks.in_batch || check_ids) {
          for (index_t j = 0; j < n; ++j) {
            if (excluded(ks, i, rid, t0 + j)) {
              srow[j] = neg_infinity<Acc>();
              any_excluded = true;
            }
          }
        }
        const Acc scale = invq[i] * inv_tau_;
        const Acc tile_max = srow.maxCoeff() * scale;
        const Acc m_old = pm[i];
        const Acc m_new = tile_max > m_old ? tile_max : m_old;
        Acc alpha = Acc(1);
        if (m_new == neg_infinity<Acc>()) {
          srow.setZero();
        } else {
          alpha = std::exp(m_old - m_new);
          srow = (srow * scale - m_new).exp();
          if (any_excluded) {
            for (index_t j = 0; j < n; ++j)
              if (excluded(ks, i, rid, t0 + j)) srow[j] = Acc(0);
          }
          pl[i] = pl[i] * alpha + srow.sum();
          pm[i] = m_new;
        }
        if (nan_row) pl[i] = std::numeric_limits<Acc>::quiet_NaN();
        if (want_grad_) {
          if (alpha != Acc(1)) row_array(pacc + i * D_, D_) *= alpha;
          if (ks.in_batch) srow *= const_row_array(invk + t0, n);  // P_ib / ||y_b||: the GEMM uses raw y
        }
      }
      if (want_grad_)  // acc += P K
        (void)gemm(one, transpose::no, transpose::no, Acc(1), rows(static_cast<const Acc*>(tile), R, n, n), krows, Acc(1),
                   rows(pacc + r0 * D_, R, D_, D_), packing(w));
    }
  }

  void key_pass() {
    key_set<Acc> sets[2];
    int nsets = 0;
    if (queue_.size() > 0) {
      sets[nsets].data = queue_.keys().data();
      sets[nsets].ld = queue_.keys().stride(0);
      sets[nsets].count = queue_.size();
      sets[nsets].ids = queue_.has_ids() ? queue_.ids().data() : nullptr;
      sets[nsets].ids_stride = queue_.has_ids() ? queue_.ids().stride(0) : 0;
      sets[nsets].in_batch = false;
      ++nsets;
    }
    if (opt_.in_batch_negatives) {
      sets[nsets].data = Y_.data();
      sets[nsets].ld = Y_.stride(0);
      sets[nsets].count = M_;
      sets[nsets].ids = ids_.empty() ? nullptr : ids_.data();
      sets[nsets].ids_stride = ids_.empty() ? 0 : ids_.stride(0);
      sets[nsets].in_batch = true;
      ++nsets;
    }
    const int S = plan_.splits;
    Acc *part_m = at(plan_.part_m), *part_l = at(plan_.part_l);
    for (index_t x = 0; x < M_ * S; ++x) {
      part_m[x] = neg_infinity<Acc>();
      part_l[x] = Acc(0);
    }
    if (want_grad_) std::fill(at(plan_.acc), at(plan_.acc) + static_cast<std::size_t>(M_ * D_ * S), Acc(0));

    const index_t row_blocks = (M_ + cpu_row_block - 1) / cpu_row_block;
    const int W = S > 1 ? S : static_cast<int>(std::min<index_t>(plan_.workers, row_blocks));
    parallel_for(ctx_, W, [&](index_t wb, index_t we) {
      for (index_t w = wb; w < we; ++w) {
        const index_t rb0 = S > 1 ? 0 : row_blocks * w / W, rb1 = S > 1 ? row_blocks : row_blocks * (w + 1) / W;
        const int s = S > 1 ? static_cast<int>(w) : 0;
        for (index_t rb = rb0; rb < rb1; ++rb) {
          const index_t r0 = rb * cpu_row_block, r1 = std::min(M_, r0 + cpu_row_block);
          for (int k = 0; k < nsets; ++k) {
            const index_t n = sets[k].count;
            const index_t k0 = S > 1 ? n * s / S : 0, k1 = S > 1 ? n * (s + 1) / S : n;
            tile_pass(r0, r1, sets[k], k0, k1, s, w);
          }
        }
      }
    });
  }

  // ---- 3. per token: merge the splits, loss, gradient to the student (and the teacher's
  //         positive term) through the B2 backward ----
  void tokens() {
    const int S = plan_.splits;
    const Acc *invq = at(plan_.invq), *invk = at(plan_.invk), *s0 = at(plan_.s0), *projq = at(plan_.projq),
              *projk = at(plan_.projk), *weight = at(plan_.weight), *part_m = at(plan_.part_m), *part_l = at(plan_.part_l);
    Acc *lse = at(plan_.lse), *tok_loss = at(plan_.loss), *acc = at(plan_.acc), *gk = at(plan_.gk);
    parallel_for(
        ctx_, M_,
        [&](index_t b, index_t e) {
          for (index_t i = b; i < e; ++i) {
            if (!valid(i)) {
              tok_loss[i] = Acc(0);
              lse[i] = Acc(0);
              if (!grad_student_.empty() && !opt_.accumulate)
                for (index_t d = 0; d < D_; ++d) grad_student_(i, d) = Acc(0);
              if (want_teacher_) {
                if (opt_.in_batch_negatives) std::fill(gk + i * D_, gk + (i + 1) * D_, Acc(0));
                else if (!opt_.accumulate)
                  for (index_t d = 0; d < D_; ++d) grad_teacher_(i, d) = Acc(0);
              }
              continue;
            }
            const merged_row<Acc> r = merge_row(s0[i], part_m + i, part_l + i, S, M_);
            tok_loss[i] = r.loss;
            lse[i] = r.lse;
            if (!want_grad_) continue;
            const Acc c = g_ * weight[i] * inv_tau_;
            const Acc* z = Z_.row(i);
            const Acc* y = Y_.row(i);
            if (!grad_student_.empty()) {
              Acc* gq = acc + i * D_;  // split 0's accumulator row becomes g_q
              Acc wsplit[64];
              const int ns = std::min(S, 64);
              for (int s = 0; s < ns; ++s) wsplit[s] = part_weight(part_m[static_cast<std::size_t>(s) * M_ + i], r);
              Acc dot = 0;
              for (index_t d = 0; d < D_; ++d) {
                Acc neg = 0;
                for (int s = 0; s < ns; ++s) neg += wsplit[s] * acc[static_cast<std::size_t>(s) * M_ * D_ + i * D_ + d];
                gq[d] = c * ((r.pi0 - Acc(1)) * y[d] * invk[i] + neg);
                dot += z[d] * invq[i] * gq[d];
              }
              const bool unclamped = projq[i] != Acc(0);
              for (index_t d = 0; d < D_; ++d)
                write_grad(grad_student_(i, d), normalize_backward(gq[d], z[d] * invq[i], dot, invq[i], unclamped),
                           opt_.accumulate);
            }
            if (want_teacher_) {
              const Acc cp = c * (r.pi0 - Acc(1));
              if (opt_.in_batch_negatives) {
                for (index_t d = 0; d < D_; ++d) gk[i * D_ + d] = cp * z[d] * invq[i];
              } else {
                Acc dot = 0;
                for (index_t d = 0; d < D_; ++d) dot += y[d] * invk[i] * cp * z[d] * invq[i];
                const bool unclamped = projk[i] != Acc(0);
                for (index_t d = 0; d < D_; ++d)
                  write_grad(grad_teacher_(i, d), normalize_backward(cp * z[d] * invq[i], y[d] * invk[i], dot, invk[i], unclamped),
                             opt_.accumulate);
              }
            }
          }
        },
        16);
  }

  // ---- 4. teacher gradient through the in-batch negatives: dL/dk_b += sum_i c_i pi_ib q_i ----
  void inbatch_teacher_gradient() {
    const Acc *invq = at(plan_.invq), *invk = at(plan_.invk), *projk = at(plan_.projk), *weight = at(plan_.weight),
              *lse = at(plan_.lse);
    Acc* gk = at(plan_.gk);
    const cpu one{1};
    const index_t key_tiles = (M_ + cpu_key_tile - 1) / cpu_key_tile;
    const int WT = static_cast<int>(std::min<index_t>(plan_.workers, key_tiles));
    parallel_for(ctx_, WT, [&](index_t wb, index_t we) {
      for (index_t w = wb; w < we; ++w) {
        Acc* tile = at(plan_.tiles) + static_cast<std::size_t>(w) * cpu_row_block * cpu_key_tile;
        for (index_t bt = key_tiles * w / WT; bt < key_tiles * (w + 1) / WT; ++bt) {
          const index_t b0 = bt * cpu_key_tile, n = std::min(cpu_key_tile, M_ - b0);
          const auto yrows = rows(Y_.data() + b0 * Y_.stride(0), n, D_, Y_.stride(0));
          for (index_t r0 = 0; r0 < M_; r0 += cpu_row_block) {
            const index_t R = std::min(cpu_row_block, M_ - r0);
            const auto zrows = rows(Z_.data() + r0 * Z_.stride(0), R, D_, Z_.stride(0));
            (void)gemm(one, transpose::no, transpose::yes, Acc(1), zrows, yrows, Acc(0), rows(tile, R, n, n), packing(w));
            for (index_t rr = 0; rr < R; ++rr) {
              const index_t i = r0 + rr;
              Acc* srow = tile + rr * n;
              const Acc ci = g_ * weight[i] * inv_tau_;
              if (!valid(i) || ci == Acc(0)) {
                std::fill(srow, srow + n, Acc(0));
                continue;
              }
              const std::int64_t rid = row_id(i);
              for (index_t j = 0; j < n; ++j) {
                const index_t key = b0 + j;
                if (inbatch_excluded(i, key, valid(key), rid, row_id(key))) {
                  srow[j] = Acc(0);
                } else {
                  const Acc sij = srow[j] * invq[i] * invk[key] * inv_tau_;
                  srow[j] = std::exp(sij - lse[i]) * ci * invq[i];  // c_i pi_ib / ||z_i||: the GEMM uses raw z
                }
              }
            }
            // gk += W^T Z
            (void)gemm(one, transpose::yes, transpose::no, Acc(1), rows(static_cast<const Acc*>(tile), R, n, n), zrows, Acc(1),
                       rows(gk + b0 * D_, n, D_, D_), packing(w));
          }
        }
      }
    });
    parallel_for(
        ctx_, M_,
        [&](index_t b, index_t e) {
          for (index_t i = b; i < e; ++i) {
            const Acc* y = Y_.row(i);
            const Acc* gki = gk + i * D_;
            Acc dot = 0;
            for (index_t d = 0; d < D_; ++d) dot += y[d] * invk[i] * gki[d];
            const bool unclamped = projk[i] != Acc(0);
            for (index_t d = 0; d < D_; ++d)
              write_grad(grad_teacher_(i, d), normalize_backward(gki[d], y[d] * invk[i], dot, invk[i], unclamped), opt_.accumulate);
          }
        },
        16);
  }

  // ---- 5. losses (summed in token order: reproducible for any thread count) ----
  void write_losses() {
    const Acc *tok_loss = at(plan_.loss), *weight = at(plan_.weight);
    if (!per_token_.empty())
      for (index_t i = 0; i < M_; ++i) per_token_(i) = tok_loss[i];
    if (loss_.empty()) return;
    if (opt_.reduction == reduction::none) {
      for (index_t i = 0; i < M_; ++i) loss_(i) = tok_loss[i];
    } else {
      Acc total = 0;
      for (index_t i = 0; i < M_; ++i)
        if (valid(i)) total += weight[i] * tok_loss[i];
      loss_(0) = total;
    }
  }

  const cpu& ctx_;
  host_view<const Acc, 2> Z_, Y_;
  const sample_queue<Acc, host_space>& queue_;
  host_view<const std::uint8_t, 1> mask_;
  host_view<const std::int64_t, 1> ids_;
  host_view<Acc, 1> loss_, per_token_;
  host_view<Acc, 2> grad_student_, grad_teacher_;
  const token_nce_options& opt_;
  index_t M_, D_;
  cpu_plan plan_;
  Acc* ws_ = nullptr;
  bool want_grad_ = false, want_teacher_ = false;
  Acc inv_tau_ = 1, eps_ = 0, g_ = 1;
};

template <class Acc>
status run_cpu_engine(const char* fn, const cpu& ctx, host_view<const Acc, 2> Z, host_view<const Acc, 2> Y,
                      const sample_queue<Acc, host_space>& queue, host_view<const std::uint8_t, 1> mask,
                      host_view<const std::int64_t, 1> ids, host_view<Acc, 1> loss, host_view<Acc, 1> per_token,
                      host_view<Acc, 2> grad_student, host_view<Acc, 2> grad_teacher, host_view<std::byte, 1> workspace,
                      const token_nce_options& opt) {
  cpu_engine<Acc> engine(ctx, Z, Y, queue, mask, ids, loss, per_token, grad_student, grad_teacher, workspace, opt);
  return engine.run(fn);
}

}  // namespace distill::token_nce_detail
