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
#include "distill/core/precision.hpp"
#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"
#include "distill/relational/detail/scene_checks.hpp"

namespace distill {

/// Most layers g may have (the weight/bias arrays of `relational_mlp` are this long).
inline constexpr int relational_max_layers = 8;

struct relational_pairing_options {
  bool include_self_pairs = true;  ///< include the pairs (i, i) (Relation Networks do)
  bool last_relu = true;           ///< ReLU after g's last layer (Relation Networks: yes)
  float mask_scale = 1.0f;         ///< s in y = s * sum M g (e.g. N for softmax pair weights); finite, >= 0
  bool accumulate = false;         ///< gradients add into their outputs instead of overwriting them
  matmul_precision precision = matmul_precision::fp32;  ///< products of the CUDA tile kernel (bf16: weights and pair
                                                        ///< activations rounded to bf16); the CPU computes in T
  int tile_pairs = 0;              ///< pairs per tile; 0 = automatic (128 for H = 256)
  /// CPU: refuse NaN/inf objects or question (errc::non_finite naming the input) before
  /// computing; off, they propagate to the samples that use them. CUDA: not inspected
  /// (docs/reliability.md).
  bool check_finite = false;
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

struct dims : relational_detail::scene_dims {
  index_t H = 0;
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
  DISTILL_TRY(relational_detail::check_scene(fn, o, q, object_mask, d));
  DISTILL_TRY(check_optional(fn, "pair_mask", pair_mask, {d.B, d.N, d.N}));
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
  DISTILL_TRY(relational_detail::check_scene_grads(fn, gr.objects, gr.question, d));
  DISTILL_TRY(check_optional(fn, "grads.pair_mask", gr.pair_mask, {d.B, d.N, d.N}));
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

/// The CPU engine (relational/detail/pairing_cpu.hpp).
template <class T>
status run_cpu(const char* fn, const cpu& ctx, const cpu_problem<T>& pb, const host_view<std::byte, 1>& workspace);
template <class T>
std::size_t cpu_workspace_bytes(const cpu& ctx, const dims& d, const relational_pairing_options& opt);

}  // namespace pairing_detail

/// Bytes of workspace the CPU path needs (depends on ctx.threads); T = the element type.
template <class T = float>
std::size_t relational_pairing_workspace_size(const cpu& ctx, index_t B, index_t N, index_t D, index_t Q, index_t H,
                                              int L, const relational_pairing_options& opt = {}) {
  pairing_detail::dims d;
  d.B = std::max<index_t>(B, 1), d.N = std::max<index_t>(N, 1), d.D = std::max<index_t>(D, 0), d.Q = std::max<index_t>(Q, 0);
  d.H = std::max<index_t>(H, 1), d.L = std::clamp(L, 1, relational_max_layers);
  return pairing_detail::cpu_workspace_bytes<T>(ctx, d, opt);
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
  static_assert(same_value_v<TQ, T> && same_value_v<TM, T> &&
                    same_value_v<TW, T> && std::is_same_v<TY, T>,
                "relational_pairing_forward: every view must have the same element type (out non-const)");
  constexpr const char* fn = "relational_pairing_forward";
  pairing_detail::cpu_problem<T> pb;
  DISTILL_TRY(pairing_detail::validate_inputs(fn, objects, question, pair_mask, object_mask, g, opt, pb.d));
  DISTILL_TRY(pairing_detail::validate_matrix_bh(fn, "out", out, pb.d));
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "objects", objects, "question", question));
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
  DISTILL_TRY(check_finite_if(opt.check_finite, fn, "objects", objects, "question", question, "grad_out", grad_out));
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
  static_assert(same_value_v<TQ, T> && same_value_v<TM, T> &&
                    same_value_v<TW, T> && same_value_v<TD, T> && std::is_same_v<TG, T>,
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
  static_assert(same_value_v<TQ, T> && same_value_v<TM, T> &&
                    same_value_v<TW, T> && same_value_v<TD, T> &&
                    std::is_same_v<TY, T> && std::is_same_v<TG, T>,
                "relational_pairing_forward_backward: every view must have the same element type (outputs non-const)");
  constexpr const char* fn = "relational_pairing_forward_backward";
  if (out.empty()) return fail(errc::invalid_argument, fn, "'out' is required but absent");
  return pairing_detail::backward_common<T>(fn, ctx, objects, question, pair_mask, object_mask, g, grad_out, out, grads,
                                            workspace, opt);
}

}  // namespace distill

#include "distill/relational/detail/pairing_cpu.hpp"

#if DISTILL_CUDA_COMPILER
#include "distill/cuda/pairing.cuh"
#endif
