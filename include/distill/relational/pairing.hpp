// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! Mask-gated relational pairing: the aggregation of a Relation Network (Santoro et al., NeurIPS
//! 2017) with a pair mask from spatial knowledge (Aditya et al., "Spatial Knowledge Distillation
//! to aid Visual Reasoning", WACV 2019; math spec §10-§11), without building the N^2 pair inputs.
//!
//! Forward, for every sample b (objects o [B, N, D], question q [B, Q], pair mask M [B, N, N]):
//!
//!   y_b = s * sum_{(i, j) in P_b} M_bij g(o_bi, o_bj, q_b)                         y [B, H]
//!
//!   g = an MLP of L layers of width H (weights [in, out], x W + b):
//!     z1 = [o_i; o_j; q] W1 + b1 = a_i + c_j + e,  a_i = o_i Wa,  c_j = o_j Wb,  e = q Wc + b1
//!          (W1 = [Wa; Wb; Wc] split by rows: the first layer costs O(N D H) per sample, not
//!          O(N^2 (2D + Q) H), and the [B N^2, 2D + Q] pair inputs never exist)
//!     h1 = relu(z1),  z_l = h_{l-1} W_l + b_l,  h_l = relu(z_l)   (l = 2..L)
//!     ReLU follows every layer, the last one included, as in Relation Networks; set
//!     `last_relu = false` for a linear last layer. g(o_i, o_j, q) = h_L.
//!   P_b = the ordered pairs (i, j) with both objects present in the object mask, i != j unless
//!   `include_self_pairs`; s = `mask_scale` (1 by default); no pair mask means M = 1.
//!
//! Backward, with upstream gradient dy [B, H] (per pair p = (b, i, j) in P_b):
//!   dz_L     = s M_bij dy_b (.) [z_L > 0]             ([.] dropped when last_relu = false)
//!   dM_bij   = s <dy_b, h_L(p)>                        (0 for pairs outside P_b)
//!   dW_l    += h_{l-1}^T dz_l,  db_l += sum_p dz_l,  dh_{l-1} = dz_l W_l^T,  dz_{l-1} = dh_{l-1} (.) [z_{l-1} > 0]
//!   first layer, with r_bi = sum_j dz1(b, i, j), s_bj = sum_i dz1(b, i, j), t_b = sum_i r_bi:
//!     dWa = sum_bi o_bi^T r_bi,  dWb = sum_bj o_bj^T s_bj,  dWc = sum_b q_b^T t_b,  db1 = sum_b t_b
//!     do_bi = r_bi Wa^T + s_bi Wb^T,  dq_b = t_b Wc^T
//!
//! Memory: the pair activations are never stored for the whole batch. Pairs are processed in
//! tiles of `tile_pairs` (128 for H = 256); the backward recomputes a tile's forward, keeps its L
//! activations and two gradient buffers, and folds the tile into the weight gradients and the
//! per-object sums r, s before the next tile. Workspace: O(B N (D + H) + threads (tile (L + 2) H
//! + L H^2 + (2D + Q) H)), from `relational_pairing_workspace_size` (CPU: `<double>` for double
//! views; one thread per contiguous range of samples, partial weight gradients reduced in range
//! order, so results are bitwise reproducible for a given thread count).
//!
//! Gating: pairs with M_bij == 0 exactly are skipped (no forward, no backward) unless the mask
//! gradient is requested (dM at a zero entry needs g there), so a mask keeping 10 % of the pairs
//! costs about 10 % of the dense time. Pairs with a padded object or excluded i = j pairs are
//! never computed and have dM = 0 (y does not depend on them).
//!
//! Bad numbers: on the CPU the pair mask must be finite and in [0, 1] (errc::non_finite /
//! errc::invalid_argument otherwise). NaN or inf in the objects, question or weights propagates
//! to y and the gradients of the samples that use them; the features of an object that no
//! computed pair uses (padded, or every pair of it gated to 0) are never read, so NaN there does
//! not propagate (unlike PyTorch's 0 * NaN = NaN).
//!
//! Layout: weights are [in, out] (x W), row-major or column-major (a PyTorch nn.Linear weight
//! [out, in] is the column-major view of shape [in, out] with strides (1, in)). On the CPU every
//! other view may have any non-negative strides; the CUDA path wants unit inner stride.
//!
//!   distill::relational_mlp<const float> g = distill::relational_mlp_view(params, D, Q, H, L);
//!   std::vector<std::byte> ws(distill::relational_pairing_workspace_size(ctx, B, N, D, Q, H, L));
//!   auto wsv = distill::make_view(ws.data(), ws.size());
//!   DISTILL_TRY(distill::relational_pairing_forward(ctx, o, q, mask, no_object_mask, g, y, wsv));
//!   ... head forward/backward gives dy ...
//!   DISTILL_TRY(distill::relational_pairing_backward(ctx, o, q, mask, no_object_mask, g, dy, grads, wsv));

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "distill/core/checks.hpp"
#include "distill/core/context.hpp"
#include "distill/core/cpu_gemm.hpp"
#include "distill/core/parallel.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill {

/// Most layers g may have (the weight/bias arrays of `relational_mlp` are this long).
inline constexpr int relational_max_layers = 8;

/// Matrix arithmetic of the CUDA tile kernel (the CPU computes in the element type).
enum class pairing_math {
  fp32,  ///< strict fp32 FMA (CUDA cores)
  tf32,  ///< TF32 tensor cores (10-bit mantissa products, fp32 accumulation)
  bf16,  ///< bf16 tensor cores: weights and pair activations rounded to bf16, fp32 accumulation
};

struct relational_pairing_options {
  bool include_self_pairs = true;  ///< include the pairs (i, i) (Relation Networks do)
  bool last_relu = true;           ///< ReLU after g's last layer (Relation Networks: yes)
  float mask_scale = 1.0f;         ///< s in y = s * sum M g (e.g. N for softmax pair weights); finite, >= 0
  bool accumulate = false;         ///< gradients add into their outputs instead of overwriting them
  pairing_math math = pairing_math::fp32;  ///< CUDA only
  int tile_pairs = 0;              ///< pairs per tile; 0 = automatic (128 for H = 256)
};

/// The caller's parameters of g (or their gradients): views, nothing owned.
///   weight[0]: [2D + Q, H], rows 0..D-1 act on o_i, D..2D-1 on o_j, 2D.. on q
///   weight[l]: [H, H] for 1 <= l < layers;  bias[l]: [H], absent = zero bias
/// As a gradient, an absent weight[l] / bias[l] is not computed.
template <class T, class Space = host_space>
struct relational_mlp {
  int layers = 0;
  tensor_view<T, 2, Space> weight[relational_max_layers];
  tensor_view<T, 1, Space> bias[relational_max_layers];
};

/// Gradients of relational pairing; every member may be absent (not computed).
template <class T, class Space = host_space>
struct relational_pairing_grads {
  tensor_view<T, 3, Space> objects;    ///< [B, N, D]
  tensor_view<T, 2, Space> question;   ///< [B, Q]
  tensor_view<T, 3, Space> pair_mask;  ///< [B, N, N]
  relational_mlp<T, Space> g;          ///< same layer count as g (or 0 = no weight gradients)
};

/// Parameter count of g in the flat layout of `relational_mlp_view`.
constexpr index_t relational_mlp_parameter_count(index_t D, index_t Q, index_t H, int L) noexcept {
  return (2 * D + Q) * H + H + static_cast<index_t>(L > 1 ? L - 1 : 0) * (H * H + H);
}

/// Views of g's parameters in one flat buffer: W1 [2D+Q, H] row-major, b1 [H], then W_l [H, H],
/// b_l [H] for l = 2..L (so an optimiser updates one buffer, and the gradient buffer has the same layout).
template <class Space = host_space, class T>
relational_mlp<T, Space> relational_mlp_view(T* flat, index_t D, index_t Q, index_t H, int L) noexcept {
  relational_mlp<T, Space> g;
  g.layers = L;
  T* p = flat;
  for (int l = 0; l < L && l < relational_max_layers; ++l) {
    const index_t in = l == 0 ? 2 * D + Q : H;
    g.weight[l] = make_view<Space>(p, in, H);
    p += in * H;
    g.bias[l] = make_view<Space>(p, H);
    p += H;
  }
  return g;
}

namespace pairing_detail {

struct dims {
  index_t B = 0, N = 0, D = 0, Q = 0, H = 0;
  int L = 0;
};

/// Pairs per tile: about 32 Ki activations per layer (128 pairs at H = 256), 16..256.
inline index_t tile_pairs_for(index_t H, int requested) noexcept {
  if (requested > 0) return requested;
  const index_t t = (index_t(32768) / std::max<index_t>(H, 1)) / 16 * 16;
  return std::clamp<index_t>(t, 16, 256);
}

template <class V>
bool row_or_column_major(const V& w) noexcept {
  return w.extent(1) <= 1 || w.stride(1) == 1 || w.extent(0) <= 1 || w.stride(0) == 1;
}

/// Optional view: absent (null, zero extents) or present with non-negative strides.
template <class V>
status check_optional(const char* fn, const char* name, const V& v) {
  if (v.empty() && v.size() != 0)
    return fail(errc::invalid_argument, fn, std::string("'") + name + "' has a null pointer but nonzero extents");
  return check_strides(fn, name, v);
}

template <class V>
status check_weight_layout(const char* fn, const std::string& name, const V& w) {
  if (!row_or_column_major(w))
    return fail(errc::unsupported_layout, fn, "'" + name + "' must be row-major or column-major (unit stride along one axis)");
  return check_strides(fn, name.c_str(), w);
}

/// Shapes of o, q, masks and g; fills `d`.
template <class Space, class TO, class TQ, class TM, class TW>
status validate_inputs(const char* fn, const tensor_view<TO, 3, Space>& o, const tensor_view<TQ, 2, Space>& q,
                       const tensor_view<TM, 3, Space>& pair_mask,
                       const tensor_view<const std::uint8_t, 2, Space>& object_mask, const relational_mlp<TW, Space>& g,
                       const relational_pairing_options& opt, dims& d) {
  DISTILL_TRY(check_present(fn, "objects", o));
  DISTILL_TRY(check_nonempty(fn, "objects", o));
  DISTILL_TRY(check_strides(fn, "objects", o));
  d.B = o.extent(0), d.N = o.extent(1), d.D = o.extent(2);
  DISTILL_TRY(check_optional(fn, "question", q));
  if (!q.empty()) {
    DISTILL_TRY(check_extent(fn, "question", q, 0, d.B, "batch size of 'objects'"));
    d.Q = q.extent(1);
  }
  DISTILL_TRY(check_optional(fn, "pair_mask", pair_mask));
  if (!pair_mask.empty()) DISTILL_TRY(check_shape(fn, "pair_mask", pair_mask, {d.B, d.N, d.N}));
  DISTILL_TRY(check_optional(fn, "object_mask", object_mask));
  if (!object_mask.empty()) DISTILL_TRY(check_shape(fn, "object_mask", object_mask, {d.B, d.N}));
  if (g.layers < 1 || g.layers > relational_max_layers)
    return fail(errc::invalid_argument, fn,
                "g.layers must be in [1, " + std::to_string(relational_max_layers) + "], got " + std::to_string(g.layers));
  d.L = g.layers;
  if (g.weight[0].empty()) return fail(errc::invalid_argument, fn, "'g.weight[0]' is required but absent");
  d.H = g.weight[0].extent(1);
  if (d.H < 1) return fail(errc::shape_mismatch, fn, "'g.weight[0]' has no columns (H must be >= 1)");
  if (g.weight[0].extent(0) != 2 * d.D + d.Q)
    return fail(errc::shape_mismatch, fn,
                "'g.weight[0]' has " + std::to_string(g.weight[0].extent(0)) + " rows, expected 2D + Q = " +
                    std::to_string(2 * d.D + d.Q) + " (D = " + std::to_string(d.D) + ", Q = " + std::to_string(d.Q) + ")");
  for (int l = 0; l < d.L; ++l) {
    const std::string wn = "g.weight[" + std::to_string(l) + "]", bn = "g.bias[" + std::to_string(l) + "]";
    if (g.weight[l].empty()) return fail(errc::invalid_argument, fn, "'" + wn + "' is required but absent");
    if (l > 0) DISTILL_TRY(check_shape(fn, wn.c_str(), g.weight[l], {d.H, d.H}));
    DISTILL_TRY(check_weight_layout(fn, wn, g.weight[l]));
    DISTILL_TRY(check_optional(fn, bn.c_str(), g.bias[l]));
    if (!g.bias[l].empty()) DISTILL_TRY(check_shape(fn, bn.c_str(), g.bias[l], {d.H}));
  }
  if (!(opt.mask_scale >= 0.0f) || !std::isfinite(opt.mask_scale))
    return fail(errc::invalid_argument, fn, "'mask_scale' must be finite and >= 0");
  if (opt.tile_pairs < 0) return fail(errc::invalid_argument, fn, "'tile_pairs' must be >= 0");
  return {};
}

/// Shapes of the gradient outputs (each optional).
template <class Space, class TG>
status validate_grads(const char* fn, const relational_pairing_grads<TG, Space>& gr, const dims& d) {
  DISTILL_TRY(check_optional(fn, "grads.objects", gr.objects));
  if (!gr.objects.empty()) DISTILL_TRY(check_shape(fn, "grads.objects", gr.objects, {d.B, d.N, d.D}));
  DISTILL_TRY(check_optional(fn, "grads.question", gr.question));
  if (!gr.question.empty()) {
    if (d.Q == 0) return fail(errc::invalid_argument, fn, "'grads.question' is given but 'question' is absent");
    DISTILL_TRY(check_shape(fn, "grads.question", gr.question, {d.B, d.Q}));
  }
  DISTILL_TRY(check_optional(fn, "grads.pair_mask", gr.pair_mask));
  if (!gr.pair_mask.empty()) DISTILL_TRY(check_shape(fn, "grads.pair_mask", gr.pair_mask, {d.B, d.N, d.N}));
  if (gr.g.layers != 0 && gr.g.layers != d.L)
    return fail(errc::shape_mismatch, fn,
                "'grads.g.layers' is " + std::to_string(gr.g.layers) + " but g has " + std::to_string(d.L) + " layers");
  for (int l = 0; l < (gr.g.layers ? d.L : 0); ++l) {
    const std::string wn = "grads.g.weight[" + std::to_string(l) + "]", bn = "grads.g.bias[" + std::to_string(l) + "]";
    DISTILL_TRY(check_optional(fn, wn.c_str(), gr.g.weight[l]));
    if (!gr.g.weight[l].empty()) {
      DISTILL_TRY(check_shape(fn, wn.c_str(), gr.g.weight[l], {l == 0 ? 2 * d.D + d.Q : d.H, d.H}));
      DISTILL_TRY(check_weight_layout(fn, wn, gr.g.weight[l]));
    }
    DISTILL_TRY(check_optional(fn, bn.c_str(), gr.g.bias[l]));
    if (!gr.g.bias[l].empty()) DISTILL_TRY(check_shape(fn, bn.c_str(), gr.g.bias[l], {d.H}));
  }
  return {};
}

template <class Space, class TY>
status validate_matrix_bh(const char* fn, const char* name, const tensor_view<TY, 2, Space>& y, const dims& d) {
  DISTILL_TRY(check_present(fn, name, y));
  DISTILL_TRY(check_strides(fn, name, y));
  return check_shape(fn, name, y, {d.B, d.H});
}

/// True when pair (i, j) of a sample is in P_b (object mask and diagonal option only).
DISTILL_HOST_DEVICE inline bool pair_in_set(bool obj_i, bool obj_j, index_t i, index_t j, bool include_self) noexcept {
  return obj_i && obj_j && (include_self || i != j);
}

// ---------------------------------------------------------------- CPU implementation

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

/// op(w) for a row- or column-major w, as an inner-contiguous view and a transpose flag for gemm.
template <class T>
struct gemm_operand {
  host_view<const T, 2> view;
  transpose t;
};
inline transpose flip(transpose t) noexcept { return t == transpose::no ? transpose::yes : transpose::no; }
template <class T>
gemm_operand<T> as_operand(host_view<const T, 2> w, transpose want) noexcept {
  if (w.inner_contiguous()) return {w, want};
  const host_view<const T, 2> wt = make_strided_view(w.data(), std::array<index_t, 2>{w.extent(1), w.extent(0)},
                                                     std::array<index_t, 2>{w.stride(1), index_t(1)});
  return {wt, flip(want)};
}

/// c = op(a) op(b) + beta c for row- or column-major a, b, c.
template <class T>
status gemm_any(const cpu& ctx, transpose ta, host_view<const T, 2> a, transpose tb, host_view<const T, 2> b, T beta,
                host_view<T, 2> c) {
  const gemm_operand<T> A = as_operand(a, ta), Bo = as_operand(b, tb);
  if (c.inner_contiguous()) return gemm(ctx, A.t, Bo.t, T(1), A.view, Bo.view, beta, c);
  // Column-major c: c^T = op(b)^T op(a)^T.
  const host_view<T, 2> ct = make_strided_view(c.data(), std::array<index_t, 2>{c.extent(1), c.extent(0)},
                                               std::array<index_t, 2>{c.stride(1), index_t(1)});
  return gemm(ctx, flip(Bo.t), flip(A.t), T(1), Bo.view, A.view, beta, ct);
}

/// Rows [r0, r0 + n) of a row- or column-major matrix.
template <class T>
host_view<T, 2> row_block(const host_view<T, 2>& w, index_t r0, index_t n) noexcept {
  return make_strided_view(w.data() + r0 * w.stride(0), std::array<index_t, 2>{n, w.extent(1)},
                           std::array<index_t, 2>{w.stride(0), w.stride(1)});
}

template <class T>
struct cpu_problem {
  dims d;
  relational_pairing_options opt;
  host_view<const T, 3> o;
  host_view<const T, 2> q;
  host_view<const T, 3> mask;
  host_view<const std::uint8_t, 2> om;
  relational_mlp<const T, host_space> g;
  host_view<T, 2> y;          // forward output (absent in the plain backward)
  host_view<const T, 2> dy;   // upstream gradient (absent in the forward)
  relational_pairing_grads<T, host_space> gr;
};

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
    if (!pair_in_set(present(b, i), present(b, j), i, j, p_.opt.include_self_pairs)) return false;
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
  static host_view<T, 2> rows(const host_view<T, 2>& m, index_t r0, index_t r1) noexcept { return row_block(m, r0, r1 - r0); }

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
    (void)gemm_any<T>(one, transpose::no, oc, transpose::no, row_block(w0, 0, d_.D), T(0), rows(a_, r0, r1));
    (void)gemm_any<T>(one, transpose::no, oc, transpose::no, row_block(w0, d_.D, d_.D), T(0), rows(c_, r0, r1));
    const host_view<T, 2> er = rows(e_, rs.s0, rs.s1);
    if (d_.Q > 0) {
      (void)gemm_any<T>(one, transpose::no, question_rows(rs.s0, rs.s1), transpose::no, row_block(w0, 2 * d_.D, d_.Q), T(0), er);
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
      (void)gemm_any<T>(one, transpose::no, xin, transpose::no, p_.g.weight[l], T(0), xout);
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
      (void)gemm_any<T>(one, transpose::no, dz, transpose::yes, p_.g.weight[l], T(0), dh);
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
      (void)gemm<const T, const T, T>(one, transpose::yes, transpose::no, T(1), oc, rv, T(0), row_block(dw0, 0, d_.D));
      (void)gemm<const T, const T, T>(one, transpose::yes, transpose::no, T(1), oc, sv, T(0), row_block(dw0, d_.D, d_.D));
      if (d_.Q > 0)
        (void)gemm<const T, const T, T>(one, transpose::yes, transpose::no, T(1), question_rows(rs.s0, rs.s1), tv, T(0),
                                        row_block(dw0, 2 * d_.D, d_.Q));
    }
    const host_view<const T, 2> w0 = p_.g.weight[0];
    if (!p_.gr.objects.empty()) {
      // do into the range's rows of the o_clean scratch (no longer needed), then copied out.
      const host_view<T, 2> tmp = rows(o_clean_, r0, r1);
      (void)gemm_any<T>(one, transpose::no, rv, transpose::yes, row_block(w0, 0, d_.D), T(0), tmp);
      (void)gemm_any<T>(one, transpose::no, sv, transpose::yes, row_block(w0, d_.D, d_.D), T(1), tmp);
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
      (void)gemm_any<T>(one, transpose::no, tv, transpose::yes, row_block(w0, 2 * d_.D, d_.Q), T(0), tmp);
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
status run_cpu(const char* fn, const cpu& ctx, const cpu_problem<T>& pb, const host_view<std::byte, 1>& workspace) {
  DISTILL_TRY(check_mask_values(fn, pb.mask));
  const cpu_layout lay = make_cpu_layout<T>(ctx, pb.d, pb.opt);
  DISTILL_TRY(check_optional(fn, "workspace", workspace));
  if (workspace.empty() || static_cast<std::size_t>(workspace.extent(0)) < lay.total)
    return fail(errc::invalid_argument, fn,
                "'workspace' has " + std::to_string(workspace.empty() ? 0 : workspace.extent(0)) + " bytes, needs " +
                    std::to_string(lay.total) + " (relational_pairing_workspace_size)");
  if (!workspace.inner_contiguous()) return fail(errc::unsupported_layout, fn, "'workspace' must be contiguous");
  auto addr = reinterpret_cast<std::uintptr_t>(workspace.data());
  std::byte* base = workspace.data() + (align_up(addr) - addr);
  cpu_engine<T> engine(ctx, pb, lay, base);
  return engine.run();
}

template <class TA, class TB>
inline constexpr bool same_value_v = std::is_same_v<std::remove_const_t<TA>, std::remove_const_t<TB>>;

}  // namespace pairing_detail

/// Bytes of workspace the CPU path needs (depends on ctx.threads); T = the element type.
template <class T = float>
std::size_t relational_pairing_workspace_size(const cpu& ctx, index_t B, index_t N, index_t D, index_t Q, index_t H,
                                              int L, const relational_pairing_options& opt = {}) {
  pairing_detail::dims d;
  d.B = std::max<index_t>(B, 1), d.N = std::max<index_t>(N, 1), d.D = std::max<index_t>(D, 0), d.Q = std::max<index_t>(Q, 0);
  d.H = std::max<index_t>(H, 1), d.L = std::clamp(L, 1, relational_max_layers);
  return pairing_detail::make_cpu_layout<T>(ctx, d, opt).total;
}

/// y [B, H] = s * sum_{(i,j)} M_bij g(o_bi, o_bj, q_b). `question`, `pair_mask` and `object_mask`
/// may be absent (no question: W1 has 2D rows; no pair mask: all ones; no object mask: all present).
template <class TO, class TQ, class TM, class TW, class TY>
[[nodiscard]] status relational_pairing_forward(const cpu& ctx, host_view<TO, 3> objects, host_view<TQ, 2> question,
                                                host_view<TM, 3> pair_mask, host_view<const std::uint8_t, 2> object_mask,
                                                const relational_mlp<TW, host_space>& g, host_view<TY, 2> out,
                                                host_view<std::byte, 1> workspace,
                                                const relational_pairing_options& opt = {}) {
  using T = std::remove_const_t<TO>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "relational pairing on the CPU takes float or double");
  static_assert(pairing_detail::same_value_v<TQ, T> && pairing_detail::same_value_v<TM, T> &&
                    pairing_detail::same_value_v<TW, T> && std::is_same_v<TY, T>,
                "relational_pairing_forward: every view must have the same element type (out non-const)");
  constexpr const char* fn = "relational_pairing_forward";
  pairing_detail::cpu_problem<T> pb;
  DISTILL_TRY(pairing_detail::validate_inputs(fn, objects, question, pair_mask, object_mask, g, opt, pb.d));
  DISTILL_TRY(pairing_detail::validate_matrix_bh(fn, "out", out, pb.d));
  pb.opt = opt, pb.o = objects, pb.q = question, pb.mask = pair_mask, pb.om = object_mask, pb.y = out;
  pb.g.layers = g.layers;
  for (int l = 0; l < g.layers; ++l) pb.g.weight[l] = g.weight[l], pb.g.bias[l] = g.bias[l];
  return pairing_detail::run_cpu(fn, ctx, pb, workspace);
}

namespace pairing_detail {
template <class T, class TO, class TQ, class TM, class TW, class TD, class TG>
status backward_common(const char* fn, const cpu& ctx, host_view<TO, 3> objects, host_view<TQ, 2> question,
                       host_view<TM, 3> pair_mask, host_view<const std::uint8_t, 2> object_mask,
                       const relational_mlp<TW, host_space>& g, host_view<TD, 2> grad_out, host_view<T, 2> out,
                       const relational_pairing_grads<TG, host_space>& grads, host_view<std::byte, 1> workspace,
                       const relational_pairing_options& opt) {
  cpu_problem<T> pb;
  DISTILL_TRY(validate_inputs(fn, objects, question, pair_mask, object_mask, g, opt, pb.d));
  DISTILL_TRY(validate_matrix_bh(fn, "grad_out", grad_out, pb.d));
  if (!out.empty() || out.size() != 0) DISTILL_TRY(validate_matrix_bh(fn, "out", out, pb.d));
  DISTILL_TRY(validate_grads(fn, grads, pb.d));
  pb.opt = opt, pb.o = objects, pb.q = question, pb.mask = pair_mask, pb.om = object_mask, pb.y = out, pb.dy = grad_out;
  pb.g.layers = g.layers;
  for (int l = 0; l < g.layers; ++l) pb.g.weight[l] = g.weight[l], pb.g.bias[l] = g.bias[l];
  pb.gr = grads;
  return run_cpu(fn, ctx, pb, workspace);
}
}  // namespace pairing_detail

/// Gradients of <grad_out, y> with respect to everything requested in `grads` (absent members
/// are skipped). Recomputes the pair activations tile by tile.
template <class TO, class TQ, class TM, class TW, class TD, class TG>
[[nodiscard]] status relational_pairing_backward(const cpu& ctx, host_view<TO, 3> objects, host_view<TQ, 2> question,
                                                 host_view<TM, 3> pair_mask, host_view<const std::uint8_t, 2> object_mask,
                                                 const relational_mlp<TW, host_space>& g, host_view<TD, 2> grad_out,
                                                 const relational_pairing_grads<TG, host_space>& grads,
                                                 host_view<std::byte, 1> workspace,
                                                 const relational_pairing_options& opt = {}) {
  using T = std::remove_const_t<TO>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "relational pairing on the CPU takes float or double");
  static_assert(pairing_detail::same_value_v<TQ, T> && pairing_detail::same_value_v<TM, T> &&
                    pairing_detail::same_value_v<TW, T> && pairing_detail::same_value_v<TD, T> && std::is_same_v<TG, T>,
                "relational_pairing_backward: every view must have the same element type (gradients non-const)");
  return pairing_detail::backward_common<T>("relational_pairing_backward", ctx, objects, question, pair_mask, object_mask,
                                            g, grad_out, host_view<T, 2>{}, grads, workspace, opt);
}

/// Forward and backward in one pass over the pairs (no recomputation), for an upstream gradient
/// known before the forward (a linear head, a sum, a fixed probe). Writes y and the gradients.
template <class TO, class TQ, class TM, class TW, class TD, class TY, class TG>
[[nodiscard]] status relational_pairing_forward_backward(
    const cpu& ctx, host_view<TO, 3> objects, host_view<TQ, 2> question, host_view<TM, 3> pair_mask,
    host_view<const std::uint8_t, 2> object_mask, const relational_mlp<TW, host_space>& g, host_view<TD, 2> grad_out,
    host_view<TY, 2> out, const relational_pairing_grads<TG, host_space>& grads, host_view<std::byte, 1> workspace,
    const relational_pairing_options& opt = {}) {
  using T = std::remove_const_t<TO>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "relational pairing on the CPU takes float or double");
  static_assert(pairing_detail::same_value_v<TQ, T> && pairing_detail::same_value_v<TM, T> &&
                    pairing_detail::same_value_v<TW, T> && pairing_detail::same_value_v<TD, T> &&
                    std::is_same_v<TY, T> && std::is_same_v<TG, T>,
                "relational_pairing_forward_backward: every view must have the same element type (outputs non-const)");
  constexpr const char* fn = "relational_pairing_forward_backward";
  if (out.empty()) return fail(errc::invalid_argument, fn, "'out' is required but absent");
  return pairing_detail::backward_common<T>(fn, ctx, objects, question, pair_mask, object_mask, g, grad_out, out, grads,
                                            workspace, opt);
}

}  // namespace distill

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/pairing.cuh"
#endif
