// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! The CPU engine of relational pairing (relational/pairing.hpp has the math, the API and the
//! validation). Each thread owns a contiguous range of samples (about equal numbers of computed
//! pairs): the first-layer terms a = o Wa, c = o Wb, e = q Wc + b1 of its objects, then its pairs
//! in tiles of `tile_pairs`: gather a_i + c_j + e into the tile, the remaining layers as GEMMs
//! (distill::gemm on one thread), the masked sum into y; the backward recomputes a tile's
//! activations, runs the layers backwards and folds the tile into per-range weight-gradient
//! partials and the per-object sums r, s, which a second region reduces in range order (so the
//! results do not depend on timing). Everything lives in the caller's workspace
//! (relational_pairing_workspace_size).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/cpu_gemm.hpp"
#include "distill/core/parallel.hpp"
#include "distill/relational/pairing.hpp"

namespace distill::pairing_detail {

inline constexpr std::size_t ws_align = 64;
inline std::size_t align_up(std::size_t x) noexcept { return (x + ws_align - 1) / ws_align * ws_align; }

/// Byte offsets of the CPU workspace regions.
struct cpu_layout {
  index_t tile = 0;
  int ranges = 1;
  std::size_t o_clean = 0, q_clean = 0, a_obj = 0, c_obj = 0, e_smp = 0, r_obj = 0, s_obj = 0, t_smp = 0;
  std::size_t range_base = 0, range_stride = 0;
  // inside one range
  std::size_t act = 0, pair_b = 0, pair_i = 0, pair_j = 0, pair_m = 0, dw = 0, db = 0, dw0 = 0;
  std::size_t total = 0;
};

template <class T>
cpu_layout make_cpu_layout(const cpu& ctx, const dims& d, const relational_pairing_options& opt) {
  cpu_layout lay;
  lay.tile = tile_pairs_for(d.H, opt.tile_pairs);
  lay.ranges = static_cast<int>(std::max<index_t>(1, std::min<index_t>(std::max(1, ctx.threads), d.B)));
  const std::size_t e = sizeof(T);
  const std::size_t BN = static_cast<std::size_t>(d.B * d.N), H = static_cast<std::size_t>(d.H);
  std::size_t off = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t at = off;
    off = align_up(off + bytes);
    return at;
  };
  lay.o_clean = take(BN * static_cast<std::size_t>(d.D) * e);  // also the do scratch of the backward
  lay.q_clean = take(static_cast<std::size_t>(d.B * std::max<index_t>(d.Q, 1)) * e);  // also the dq scratch
  lay.a_obj = take(BN * H * e);
  lay.c_obj = take(BN * H * e);
  lay.e_smp = take(static_cast<std::size_t>(d.B) * H * e);
  lay.r_obj = take(BN * H * e);
  lay.s_obj = take(BN * H * e);
  lay.t_smp = take(static_cast<std::size_t>(d.B) * H * e);
  lay.range_base = off;
  std::size_t r = 0;
  auto take_r = [&](std::size_t bytes) {
    const std::size_t at = r;
    r = align_up(r + bytes);
    return at;
  };
  const std::size_t tile = static_cast<std::size_t>(lay.tile);
  lay.act = take_r(static_cast<std::size_t>(d.L + 2) * tile * H * e);
  lay.pair_b = take_r(tile * sizeof(std::int64_t));
  lay.pair_i = take_r(tile * sizeof(std::int64_t));
  lay.pair_j = take_r(tile * sizeof(std::int64_t));
  lay.pair_m = take_r(tile * e);
  lay.dw = take_r(static_cast<std::size_t>(std::max(d.L - 1, 0)) * H * H * e);
  lay.db = take_r(static_cast<std::size_t>(d.L) * H * e);
  lay.dw0 = take_r(static_cast<std::size_t>(2 * d.D + d.Q) * H * e);
  lay.range_stride = r;
  lay.total = lay.range_base + static_cast<std::size_t>(lay.ranges) * lay.range_stride + ws_align;  // + base alignment slack
  return lay;
}

template <class T>
class cpu_engine {
 public:
  cpu_engine(const cpu& ctx, const cpu_problem<T>& pb, const cpu_layout& lay, std::byte* ws)
      : ctx_(ctx), p_(pb), d_(pb.d), lay_(lay), ws_(ws) {
    backward_ = !pb.dy.empty();
    want_y_ = !pb.y.empty();
    want_dm_ = backward_ && !pb.gr.pair_mask.empty();
    scale_ = static_cast<T>(pb.opt.mask_scale);
    const auto BN = d_.B * d_.N;
    o_clean_ = make_view(ptr<T>(lay.o_clean), BN, d_.D);
    q_clean_ = make_view(ptr<T>(lay.q_clean), d_.B, std::max<index_t>(d_.Q, 1));
    a_ = make_view(ptr<T>(lay.a_obj), BN, d_.H);
    c_ = make_view(ptr<T>(lay.c_obj), BN, d_.H);
    e_ = make_view(ptr<T>(lay.e_smp), d_.B, d_.H);
    r_ = make_view(ptr<T>(lay.r_obj), BN, d_.H);
    s_ = make_view(ptr<T>(lay.s_obj), BN, d_.H);
    t_ = make_view(ptr<T>(lay.t_smp), d_.B, d_.H);
  }

  /// Everything per sample happens inside one parallel region (each thread owns a contiguous
  /// range of samples: their first-layer terms, tiles, outputs and first-layer gradient
  /// partials), so a call has two thread barriers however many GEMMs it runs; a second region
  /// reduces the per-range weight gradients in range order.
  status run() {
    scan_pairs();
    split_ranges();
    parallel_for(
        ctx_, lay_.ranges,
        [&](index_t r0, index_t r1) {
          for (index_t r = r0; r < r1; ++r) process_range(static_cast<int>(r));
        },
        1);
    if (backward_ && p_.gr.g.layers != 0) reduce_weight_gradients();
    return {};
  }

 private:
  template <class U>
  U* ptr(std::size_t off) const noexcept {
    return reinterpret_cast<U*>(ws_ + off);
  }
  bool present(index_t b, index_t i) const noexcept { return p_.om.empty() || p_.om(b, i) != 0; }

  bool pair_computed(index_t b, index_t i, index_t j) const noexcept {
    if (!relational_detail::pair_in_set(present(b, i), present(b, j), i, j, p_.opt.include_self_pairs)) return false;
    return want_dm_ || p_.mask.empty() || p_.mask(b, i, j) != T(0);
  }

  /// Computed pairs per sample (prefix sums) and which objects any computed pair uses.
  void scan_pairs() {
    prefix_.assign(static_cast<std::size_t>(d_.B) + 1, 0);
    used_.assign(static_cast<std::size_t>(d_.B * d_.N), 0);
    for (index_t b = 0; b < d_.B; ++b) {
      index_t n = 0;
      for (index_t i = 0; i < d_.N; ++i)
        for (index_t j = 0; j < d_.N; ++j)
          if (pair_computed(b, i, j)) {
            ++n;
            used_[static_cast<std::size_t>(b * d_.N + i)] = 1;
            used_[static_cast<std::size_t>(b * d_.N + j)] = 1;
          }
      prefix_[static_cast<std::size_t>(b) + 1] = prefix_[static_cast<std::size_t>(b)] + n;
    }
  }
  bool used(index_t b, index_t i) const noexcept { return used_[static_cast<std::size_t>(b * d_.N + i)] != 0; }

  /// Contiguous sample ranges, one per thread, with about equal numbers of computed pairs.
  void split_ranges() {
    const int R = lay_.ranges;
    const index_t total = prefix_.back();
    bounds_.assign(static_cast<std::size_t>(R) + 1, 0);
    bounds_[static_cast<std::size_t>(R)] = d_.B;
    for (int r = 1; r < R; ++r) {
      index_t s;
      if (total == 0) {
        s = d_.B * r / R;
      } else {
        const index_t target = total * r / R;
        s = static_cast<index_t>(std::lower_bound(prefix_.begin(), prefix_.end(), target) - prefix_.begin());
      }
      bounds_[static_cast<std::size_t>(r)] = std::clamp(s, bounds_[static_cast<std::size_t>(r) - 1], d_.B);
    }
  }

  struct range_state {
    int r = 0;
    index_t s0 = 0, s1 = 0;
    T* act;  // (L + 2) buffers of [tile, H]: h_1..h_L, then two gradient buffers
    std::int64_t *pb, *pi, *pj;
    T* pm;   // s * M of each pair
    T* dw;   // (L - 1) accumulators [H, H] for layers 2..L
    T* db;   // L accumulators [H] (slot 0: the first layer)
    T* dw0;  // [2D + Q, H] partial of the first layer's weight gradient
    index_t count = 0;
  };

  range_state state_of(int r) const {
    std::byte* base = ws_ + lay_.range_base + static_cast<std::size_t>(r) * lay_.range_stride;
    range_state rs;
    rs.r = r;
    rs.s0 = bounds_[static_cast<std::size_t>(r)], rs.s1 = bounds_[static_cast<std::size_t>(r) + 1];
    rs.act = reinterpret_cast<T*>(base + lay_.act);
    rs.pb = reinterpret_cast<std::int64_t*>(base + lay_.pair_b);
    rs.pi = reinterpret_cast<std::int64_t*>(base + lay_.pair_i);
    rs.pj = reinterpret_cast<std::int64_t*>(base + lay_.pair_j);
    rs.pm = reinterpret_cast<T*>(base + lay_.pair_m);
    rs.dw = reinterpret_cast<T*>(base + lay_.dw);
    rs.db = reinterpret_cast<T*>(base + lay_.db);
    rs.dw0 = reinterpret_cast<T*>(base + lay_.dw0);
    return rs;
  }

  host_view<T, 2> buffer(const range_state& rs, int k, index_t rows) const noexcept {
    return make_strided_view(rs.act + static_cast<std::size_t>(k) * static_cast<std::size_t>(lay_.tile * d_.H),
                             std::array<index_t, 2>{rows, d_.H}, std::array<index_t, 2>{d_.H, index_t(1)});
  }
  /// Rows [r0, r1) of a workspace matrix.
  static host_view<T, 2> rows(const host_view<T, 2>& m, index_t r0, index_t r1) noexcept { return row_slice(m, r0, r1 - r0); }

  /// The range's first-layer terms: clean copies of its objects (objects no computed pair uses
  /// are zeroed, so NaN in a padded or fully gated object cannot reach a GEMM) and question,
  /// then a = o Wa, c = o Wb per object and e = q Wc + b1 per sample.
  void prepare(const range_state& rs) {
    const cpu one{1};
    const index_t r0 = rs.s0 * d_.N, r1 = rs.s1 * d_.N;
    for (index_t b = rs.s0; b < rs.s1; ++b) {
      for (index_t i = 0; i < d_.N; ++i) {
        T* dst = o_clean_.row(b * d_.N + i);
        const bool keep = used(b, i);
        for (index_t k = 0; k < d_.D; ++k) dst[k] = keep ? p_.o(b, i, k) : T(0);
      }
      for (index_t k = 0; k < d_.Q; ++k) q_clean_(b, k) = p_.q(b, k);
    }
    const host_view<const T, 2> w0 = p_.g.weight[0];
    const host_view<const T, 2> oc = rows(o_clean_, r0, r1);
    (void)gemm<const T, const T, T>(one, transpose::no, transpose::no, T(1), oc, row_slice(w0, 0, d_.D), T(0), rows(a_, r0, r1));
    (void)gemm<const T, const T, T>(one, transpose::no, transpose::no, T(1), oc, row_slice(w0, d_.D, d_.D), T(0), rows(c_, r0, r1));
    const host_view<T, 2> er = rows(e_, rs.s0, rs.s1);
    if (d_.Q > 0) {
      (void)gemm<const T, const T, T>(one, transpose::no, transpose::no, T(1), question_rows(rs.s0, rs.s1), row_slice(w0, 2 * d_.D, d_.Q), T(0), er);
    } else {
      for (index_t b = 0; b < rs.s1 - rs.s0; ++b)
        for (index_t h = 0; h < d_.H; ++h) er(b, h) = T(0);
    }
    if (!p_.g.bias[0].empty())
      for (index_t b = 0; b < rs.s1 - rs.s0; ++b)
        for (index_t h = 0; h < d_.H; ++h) er(b, h) += p_.g.bias[0](h);
  }
  host_view<const T, 2> question_rows(index_t s0, index_t s1) const noexcept {
    return make_strided_view<host_space>(static_cast<const T*>(q_clean_.row(s0)), std::array<index_t, 2>{s1 - s0, d_.Q},
                                         std::array<index_t, 2>{q_clean_.stride(0), index_t(1)});
  }

  void process_range(int r) {
    range_state rs = state_of(r);
    const index_t H = d_.H;
    prepare(rs);
    if (backward_) {
      std::fill(rs.dw, rs.dw + static_cast<std::size_t>(std::max(d_.L - 1, 0)) * static_cast<std::size_t>(H * H), T(0));
      std::fill(rs.db, rs.db + static_cast<std::size_t>(d_.L) * static_cast<std::size_t>(H), T(0));
    }
    // Outputs owned by this range: y rows, dM rows, r and s rows of its samples.
    for (index_t b = rs.s0; b < rs.s1; ++b) {
      if (want_y_)
        for (index_t h = 0; h < H; ++h) p_.y(b, h) = T(0);
      if (want_dm_ && !p_.opt.accumulate)
        for (index_t i = 0; i < d_.N; ++i)
          for (index_t j = 0; j < d_.N; ++j) p_.gr.pair_mask(b, i, j) = T(0);
      if (backward_) {
        std::fill(r_.row(b * d_.N), r_.row(b * d_.N) + d_.N * H, T(0));
        std::fill(s_.row(b * d_.N), s_.row(b * d_.N) + d_.N * H, T(0));
      }
    }
    for (index_t b = rs.s0; b < rs.s1; ++b)
      for (index_t i = 0; i < d_.N; ++i)
        for (index_t j = 0; j < d_.N; ++j) {
          if (!pair_computed(b, i, j)) continue;
          const T m = p_.mask.empty() ? T(1) : p_.mask(b, i, j);
          rs.pb[rs.count] = b, rs.pi[rs.count] = i, rs.pj[rs.count] = j, rs.pm[rs.count] = scale_ * m;
          if (++rs.count == lay_.tile) run_tile(rs);
        }
    if (rs.count > 0) run_tile(rs);
    if (backward_) fold_first_layer(rs);
  }

  void run_tile(range_state& rs) {
    const index_t P = rs.count, H = d_.H;
    const int L = d_.L;
    const cpu one{1};
    auto act_relu = [&](int layer) { return layer < L - 1 || p_.opt.last_relu; };
    // Layer 1 from the per-object terms: h1 = act(a_i + c_j + e).
    {
      const host_view<T, 2> x = buffer(rs, 0, P);
      const bool relu = act_relu(0);
      for (index_t p = 0; p < P; ++p) {
        const T* ai = a_.row(rs.pb[p] * d_.N + rs.pi[p]);
        const T* cj = c_.row(rs.pb[p] * d_.N + rs.pj[p]);
        const T* eb = e_.row(rs.pb[p]);
        T* xr = x.row(p);
        if (relu)
          for (index_t h = 0; h < H; ++h) xr[h] = std::max(ai[h] + cj[h] + eb[h], T(0));
        else
          for (index_t h = 0; h < H; ++h) xr[h] = ai[h] + cj[h] + eb[h];
      }
    }
    for (int l = 1; l < L; ++l) {
      const host_view<T, 2> xin = buffer(rs, l - 1, P), xout = buffer(rs, l, P);
      (void)gemm<const T, const T, T>(one, transpose::no, transpose::no, T(1), xin, p_.g.weight[l], T(0), xout);
      const bool relu = act_relu(l);
      const host_view<const T, 1> bias = p_.g.bias[l];
      for (index_t p = 0; p < P; ++p) {
        T* xr = xout.row(p);
        if (!bias.empty())
          for (index_t h = 0; h < H; ++h) xr[h] += bias(h);
        if (relu)
          for (index_t h = 0; h < H; ++h) xr[h] = std::max(xr[h], T(0));
      }
    }
    const host_view<T, 2> hl = buffer(rs, L - 1, P);
    if (want_y_)
      for (index_t p = 0; p < P; ++p) {
        const T m = rs.pm[p];
        const T* xr = hl.row(p);
        const index_t b = rs.pb[p];
        for (index_t h = 0; h < H; ++h) p_.y(b, h) += m * xr[h];
      }
    if (backward_) tile_backward(rs, P);
    rs.count = 0;
  }

  void tile_backward(range_state& rs, index_t P) {
    const index_t H = d_.H;
    const int L = d_.L;
    const cpu one{1};
    const host_view<T, 2> hl = buffer(rs, L - 1, P);
    int cur = L, other = L + 1;
    {
      const host_view<T, 2> dz = buffer(rs, cur, P);
      const bool relu = p_.opt.last_relu;
      for (index_t p = 0; p < P; ++p) {
        const index_t b = rs.pb[p];
        const T m = rs.pm[p];
        const T* xr = hl.row(p);
        T* dr = dz.row(p);
        if (want_dm_) {
          T dot = T(0);
          for (index_t h = 0; h < H; ++h) dot += p_.dy(b, h) * xr[h];
          p_.gr.pair_mask(b, rs.pi[p], rs.pj[p]) += scale_ * dot;
        }
        for (index_t h = 0; h < H; ++h) {
          const T v = m * p_.dy(b, h);
          dr[h] = relu ? (xr[h] > T(0) ? v : T(0)) : v;
        }
      }
    }
    const bool want_w = p_.gr.g.layers != 0;
    for (int l = L - 1; l >= 1; --l) {
      const host_view<T, 2> dz = buffer(rs, cur, P), hin = buffer(rs, l - 1, P), dh = buffer(rs, other, P);
      if (want_w && !p_.gr.g.bias[l].empty()) {
        T* db = rs.db + static_cast<std::size_t>(l) * static_cast<std::size_t>(H);
        for (index_t p = 0; p < P; ++p) {
          const T* dr = dz.row(p);
          for (index_t h = 0; h < H; ++h) db[h] += dr[h];
        }
      }
      if (want_w && !p_.gr.g.weight[l].empty()) {
        const host_view<T, 2> dw = make_view(rs.dw + static_cast<std::size_t>(l - 1) * static_cast<std::size_t>(H * H), H, H);
        (void)gemm<const T, const T, T>(one, transpose::yes, transpose::no, T(1), hin, dz, T(1), dw);
      }
      (void)gemm<const T, const T, T>(one, transpose::no, transpose::yes, T(1), dz, p_.g.weight[l], T(0), dh);
      // Layer l-1 < L-1 always has a ReLU.
      for (index_t p = 0; p < P; ++p) {
        T* dr = dh.row(p);
        const T* xr = hin.row(p);
        for (index_t h = 0; h < H; ++h) dr[h] = xr[h] > T(0) ? dr[h] : T(0);
      }
      std::swap(cur, other);
    }
    // dz1 into the per-object sums r (over j) and s (over i).
    const host_view<T, 2> dz1 = buffer(rs, cur, P);
    for (index_t p = 0; p < P; ++p) {
      const T* dr = dz1.row(p);
      T* ri = r_.row(rs.pb[p] * d_.N + rs.pi[p]);
      T* sj = s_.row(rs.pb[p] * d_.N + rs.pj[p]);
      for (index_t h = 0; h < H; ++h) ri[h] += dr[h];
      for (index_t h = 0; h < H; ++h) sj[h] += dr[h];
    }
  }

  /// The range's share of the first layer: t_b = sum_i r_bi, partials of dW1 = [o^T r; o^T s;
  /// q^T t] and db1 = sum t, and the input gradients of its samples (do = r Wa^T + s Wb^T,
  /// dq = t Wc^T), which no other range touches.
  void fold_first_layer(const range_state& rs) {
    const cpu one{1};
    const index_t H = d_.H, r0 = rs.s0 * d_.N, r1 = rs.s1 * d_.N;
    const bool acc = p_.opt.accumulate;
    const index_t in0 = 2 * d_.D + d_.Q;
    const host_view<T, 2> dw0 = make_view(rs.dw0, in0, H);
    T* db0 = rs.db;  // slot 0
    std::fill(rs.dw0, rs.dw0 + static_cast<std::size_t>(in0 * H), T(0));
    std::fill(db0, db0 + H, T(0));
    if (rs.s1 == rs.s0) return;
    for (index_t b = rs.s0; b < rs.s1; ++b) {
      T* tb = t_.row(b);
      std::fill(tb, tb + H, T(0));
      for (index_t i = 0; i < d_.N; ++i) {
        const T* ri = r_.row(b * d_.N + i);
        for (index_t h = 0; h < H; ++h) tb[h] += ri[h];
      }
      for (index_t h = 0; h < H; ++h) db0[h] += tb[h];
    }
    const host_view<const T, 2> oc = rows(o_clean_, r0, r1), rv = rows(r_, r0, r1), sv = rows(s_, r0, r1), tv = rows(t_, rs.s0, rs.s1);
    if (p_.gr.g.layers != 0 && !p_.gr.g.weight[0].empty()) {
      (void)gemm<const T, const T, T>(one, transpose::yes, transpose::no, T(1), oc, rv, T(0), row_slice(dw0, 0, d_.D));
      (void)gemm<const T, const T, T>(one, transpose::yes, transpose::no, T(1), oc, sv, T(0), row_slice(dw0, d_.D, d_.D));
      if (d_.Q > 0)
        (void)gemm<const T, const T, T>(one, transpose::yes, transpose::no, T(1), question_rows(rs.s0, rs.s1), tv, T(0),
                                        row_slice(dw0, 2 * d_.D, d_.Q));
    }
    const host_view<const T, 2> w0 = p_.g.weight[0];
    if (!p_.gr.objects.empty()) {
      // do into the range's rows of the o_clean scratch (no longer needed), then copied out.
      const host_view<T, 2> tmp = rows(o_clean_, r0, r1);
      (void)gemm<const T, const T, T>(one, transpose::no, transpose::yes, T(1), rv, row_slice(w0, 0, d_.D), T(0), tmp);
      (void)gemm<const T, const T, T>(one, transpose::no, transpose::yes, T(1), sv, row_slice(w0, d_.D, d_.D), T(1), tmp);
      const auto& go = p_.gr.objects;
      for (index_t b = rs.s0; b < rs.s1; ++b)
        for (index_t i = 0; i < d_.N; ++i) {
          const bool keep = used(b, i);
          const T* src = o_clean_.row(b * d_.N + i);
          for (index_t k = 0; k < d_.D; ++k) {
            const T v = keep ? src[k] : T(0);
            go(b, i, k) = acc ? go(b, i, k) + v : v;
          }
        }
    }
    if (!p_.gr.question.empty()) {
      // dq into the range's rows of the q_clean scratch (after dWc used them).
      const host_view<T, 2> tmp = make_strided_view(q_clean_.row(rs.s0), std::array<index_t, 2>{rs.s1 - rs.s0, d_.Q},
                                                    std::array<index_t, 2>{q_clean_.stride(0), index_t(1)});
      (void)gemm<const T, const T, T>(one, transpose::no, transpose::yes, T(1), tv, row_slice(w0, 2 * d_.D, d_.Q), T(0), tmp);
      for (index_t b = rs.s0; b < rs.s1; ++b)
        for (index_t k = 0; k < d_.Q; ++k) {
          const T v = q_clean_(b, k);
          p_.gr.question(b, k) = acc ? p_.gr.question(b, k) + v : v;
        }
    }
  }

  /// Weight and bias gradients = the per-range partials summed in range order (deterministic),
  /// one parallel region over every requested element.
  void reduce_weight_gradients() {
    const index_t H = d_.H;
    const bool acc = p_.opt.accumulate;
    const auto& wg = p_.gr.g;
    struct segment {
      int layer;
      bool bias;
      index_t rows, begin;
    };
    segment segs[2 * relational_max_layers];
    int nseg = 0;
    index_t total = 0;
    for (int l = 0; l < d_.L; ++l) {
      if (!wg.weight[l].empty()) {
        const index_t rows = l == 0 ? 2 * d_.D + d_.Q : H;
        segs[nseg++] = {l, false, rows, total};
        total += rows * H;
      }
      if (!wg.bias[l].empty()) {
        segs[nseg++] = {l, true, 1, total};
        total += H;
      }
    }
    parallel_for(
        ctx_, total,
        [&](index_t e0, index_t e1) {
          for (int k = 0; k < nseg; ++k) {
            const segment& sg = segs[k];
            const index_t lo = std::max(e0, sg.begin), hi = std::min(e1, sg.begin + sg.rows * H);
            for (index_t e = lo; e < hi; ++e) {
              const index_t a = (e - sg.begin) / H, c = (e - sg.begin) % H;
              T s = T(0);
              for (int r = 0; r < lay_.ranges; ++r) s += partial(r, sg.layer, sg.bias)[a * H + c];
              if (sg.bias) wg.bias[sg.layer](c) = acc ? wg.bias[sg.layer](c) + s : s;
              else wg.weight[sg.layer](a, c) = acc ? wg.weight[sg.layer](a, c) + s : s;
            }
          }
        },
        4096);
  }

  /// Range r's partial of layer l's weight (or bias) gradient, row-major.
  const T* partial(int r, int l, bool bias) const noexcept {
    const std::size_t base = lay_.range_base + static_cast<std::size_t>(r) * lay_.range_stride;
    if (bias) return ptr<T>(base + lay_.db) + static_cast<std::size_t>(l) * static_cast<std::size_t>(d_.H);
    if (l == 0) return ptr<T>(base + lay_.dw0);
    return ptr<T>(base + lay_.dw) + static_cast<std::size_t>(l - 1) * static_cast<std::size_t>(d_.H * d_.H);
  }

  const cpu& ctx_;
  const cpu_problem<T>& p_;
  dims d_;
  cpu_layout lay_;
  std::byte* ws_;
  bool backward_ = false, want_y_ = false, want_dm_ = false;
  T scale_ = T(1);
  host_view<T, 2> o_clean_, q_clean_, a_, c_, e_, r_, s_, t_;
  std::vector<index_t> bounds_, prefix_;
  std::vector<std::uint8_t> used_;
};

/// Pair mask finite and in [0, 1] (CPU only: the CUDA path cannot inspect values without a sync).
template <class TM>
status check_mask_values(const char* fn, const host_view<TM, 3>& m) {
  if (m.empty()) return {};
  for (index_t b = 0; b < m.extent(0); ++b)
    for (index_t i = 0; i < m.extent(1); ++i)
      for (index_t j = 0; j < m.extent(2); ++j) {
        const double v = static_cast<double>(m(b, i, j));
        if (std::isnan(v))
          return fail(errc::non_finite, fn,
                      "'pair_mask' is NaN at [" + std::to_string(b) + ", " + std::to_string(i) + ", " + std::to_string(j) + "]");
        if (!(v >= 0.0 && v <= 1.0))
          return fail(errc::invalid_argument, fn,
                      "'pair_mask' must be in [0, 1], got " + check_detail::num(v) + " at [" + std::to_string(b) + ", " +
                          std::to_string(i) + ", " + std::to_string(j) + "]");
      }
  return {};
}

template <class T>
std::size_t cpu_workspace_bytes(const cpu& ctx, const dims& d, const relational_pairing_options& opt) {
  return make_cpu_layout<T>(ctx, d, opt).total;
}

template <class T>
status run_cpu(const char* fn, const cpu& ctx, const cpu_problem<T>& pb, const host_view<std::byte, 1>& workspace) {
  DISTILL_TRY(check_mask_values(fn, pb.mask));
  const cpu_layout lay = make_cpu_layout<T>(ctx, pb.d, pb.opt);
  DISTILL_TRY(check_workspace(fn, workspace, lay.total, "relational_pairing_workspace_size"));
  auto addr = reinterpret_cast<std::uintptr_t>(workspace.data());
  std::byte* base = workspace.data() + (align_up(addr) - addr);
  cpu_engine<T> engine(ctx, pb, lay, base);
  return engine.run();
}

}  // namespace distill::pairing_detail
