// SPDX-License-Identifier: MIT
#pragma once
// Runs relational pairing on a reference problem on either backend (support/backend.hpp): builds
// the inputs and outputs in the library's layouts (padded rows, strided biases, column-major
// weights on request) with canaries around and inside them, calls forward / backward /
// forward_backward (optionally inside a captured CUDA graph), and returns every output densely
// in double. The CPU tests call run_lib<T> (host_space), the CUDA tests run_lib<float, cuda_space>.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "distill/relational/pairing.hpp"
#include "relational/pairing_test_util.hpp"
#include "support/backend.hpp"

namespace rel_test {

enum class pass { forward, backward, fused };

struct run_config {
  int threads = 1;
  int tile = 0;           // CPU: pairs per tile (0: the default)
  bool strided = false;   // padded rows everywhere, biases with stride 2
  bool colmajor = false;  // weights (and their gradients) column-major
  bool accumulate = false;
  pass which = pass::fused;
  bool want_o = true, want_q = true, want_m = true, want_w = true;
  distill::matmul_precision precision = distill::matmul_precision::fp32;  // the CUDA products
  bool capture = false;   // the call inside a captured CUDA graph (CPU: a plain call)
};

struct lib_result {
  distill::status st;
  std::vector<double> y, o, q, m;
  std::vector<std::vector<double>> w, b;
  bool canaries_ok = true;
};

inline constexpr double accumulate_base = 0.25;  // value outputs hold before an accumulating call

template <class T, class Space>
using matrix_buf = distill_test::guarded_tensor<T, 2, Space>;

/// A [rows, cols] matrix: rows padded by `pad`, or column-major.
template <class T, class Space>
matrix_buf<T, Space> make_matrix(long rows, long cols, long pad, bool colmajor) {
  return matrix_buf<T, Space>({rows, cols}, {colmajor ? 0 : pad, 0}, 1, colmajor);
}
/// A vector [n] with stride 1 or 2 (odd elements are padding).
template <class T, class Space>
distill_test::guarded_tensor<T, 1, Space> make_vector(long n, bool strided) {
  return distill_test::guarded_tensor<T, 1, Space>({n}, {0}, strided ? 2 : 1);
}
/// A [B N, cols] matrix seen as [B, N, cols].
template <class U, class T, class Space>
distill::tensor_view<U, 3, Space> as_rank3(matrix_buf<T, Space>& m, long B, long N) {
  const distill::index_t ld = m.strides()[0];
  return distill::make_strided_view<Space>(static_cast<U*>(m.data()), std::array<distill::index_t, 3>{B, N, m.extents()[1]},
                                           std::array<distill::index_t, 3>{N * ld, ld, 1});
}

template <class T, class Space = distill::host_space>
lib_result run_lib(const distill_ref::pairing_problem_d& p, const std::vector<double>& dy, const run_config& rc) {
  using namespace distill;
  using B_ = distill_test::backend<Space>;
  constexpr bool on_host = std::is_same_v<Space, host_space>;
  const long pad = rc.strided ? (on_host ? 3 : 4) : 0;  // CUDA: keep rows 16-byte aligned
  const long B = p.B, N = p.N, D = p.D, Q = p.Q, H = p.H;
  auto o = make_matrix<T, Space>(B * N, D, pad, false), q = make_matrix<T, Space>(B, std::max(Q, 1L), pad, false);
  auto m = make_matrix<T, Space>(B * N, N, pad, false), dyb = make_matrix<T, Space>(B, H, pad, false);
  o.set(p.o);
  if (Q > 0) q.set(p.q);
  if (!p.M.empty()) m.set(p.M);
  dyb.set(dy);
  distill_test::guarded_array<std::uint8_t, Space> om(p.om.empty() ? std::vector<std::uint8_t>{1} : p.om);
  std::vector<matrix_buf<T, Space>> wb, gw;
  std::vector<distill_test::guarded_tensor<T, 1, Space>> bb, gb;
  for (int l = 0; l < p.g.L; ++l) {
    const long rows = l == 0 ? 2 * D + Q : H;
    wb.push_back(make_matrix<T, Space>(rows, H, pad, rc.colmajor));
    wb.back().set(p.g.W[static_cast<std::size_t>(l)]);
    bb.push_back(make_vector<T, Space>(H, rc.strided));
    if (!p.g.b[static_cast<std::size_t>(l)].empty()) bb.back().set(p.g.b[static_cast<std::size_t>(l)]);
    gw.push_back(make_matrix<T, Space>(rows, H, pad, rc.colmajor));
    gb.push_back(make_vector<T, Space>(H, rc.strided));
  }
  relational_mlp<const T, Space> g;
  g.layers = p.g.L;
  for (int l = 0; l < p.g.L; ++l) {
    g.weight[l] = wb[static_cast<std::size_t>(l)].template view<const T>();
    if (!p.g.b[static_cast<std::size_t>(l)].empty()) g.bias[l] = bb[static_cast<std::size_t>(l)].template view<const T>();
  }
  const tensor_view<const T, 3, Space> ov = as_rank3<const T>(o, B, N);
  const tensor_view<const T, 2, Space> qv =
      Q > 0 ? make_strided_view<Space>(static_cast<const T*>(q.data()), std::array<index_t, 2>{B, Q}, q.strides())
            : tensor_view<const T, 2, Space>{};
  const tensor_view<const T, 3, Space> mv = p.M.empty() ? tensor_view<const T, 3, Space>{} : as_rank3<const T>(m, B, N);
  const tensor_view<const std::uint8_t, 2, Space> omv =
      p.om.empty() ? tensor_view<const std::uint8_t, 2, Space>{}
                   : make_view<Space>(static_cast<const std::uint8_t*>(om.data()), static_cast<index_t>(B), static_cast<index_t>(N));

  // Outputs (plain: canaries everywhere; accumulating: the base value).
  auto y = make_matrix<T, Space>(B, H, pad, false), go = make_matrix<T, Space>(B * N, D, pad, false);
  auto gq = make_matrix<T, Space>(B, std::max(Q, 1L), pad, false), gm = make_matrix<T, Space>(B * N, N, pad, false);
  if (rc.accumulate) {
    go.fill(accumulate_base);
    if (Q > 0) gq.fill(accumulate_base);
    gm.fill(accumulate_base);
    for (int l = 0; l < p.g.L; ++l) {
      gw[static_cast<std::size_t>(l)].fill(accumulate_base);
      gb[static_cast<std::size_t>(l)].fill(accumulate_base);
    }
  }
  relational_pairing_grads<T, Space> gr;
  if (rc.want_o) gr.objects = as_rank3<T>(go, B, N);
  if (rc.want_q && Q > 0) gr.question = make_strided_view<Space>(gq.data(), std::array<index_t, 2>{B, Q}, gq.strides());
  if (rc.want_m) gr.pair_mask = as_rank3<T>(gm, B, N);
  if (rc.want_w) {
    gr.g.layers = p.g.L;
    for (int l = 0; l < p.g.L; ++l) {
      gr.g.weight[l] = gw[static_cast<std::size_t>(l)].view();
      gr.g.bias[l] = gb[static_cast<std::size_t>(l)].view();
    }
  }
  relational_pairing_options opt;
  opt.include_self_pairs = p.self;
  opt.last_relu = p.last_relu;
  opt.mask_scale = static_cast<float>(p.scale);
  opt.accumulate = rc.accumulate;
  opt.tile_pairs = rc.tile;
  opt.precision = rc.precision;
  typename B_::session run(rc.threads);
  distill_test::workspace<Space> ws(relational_pairing_workspace_size<T>(run.ctx, B, N, D, Q, H, p.g.L, opt));
  const tensor_view<const T, 2, Space> dyv = dyb.template view<const T>();

  lib_result r;
  const auto call = [&]() -> status {
    switch (rc.which) {
      case pass::forward: return relational_pairing_forward(run.ctx, ov, qv, mv, omv, g, y.view(), ws.view(), opt);
      case pass::backward: return relational_pairing_backward(run.ctx, ov, qv, mv, omv, g, dyv, gr, ws.view(), opt);
      case pass::fused: return relational_pairing_forward_backward(run.ctx, ov, qv, mv, omv, g, dyv, y.view(), gr, ws.view(), opt);
    }
    return status{};
  };
  (void)(r.st = rc.capture ? run.captured(call) : call());
  if (!r.st.ok()) return r;
  run.sync();
  if (rc.which != pass::backward) r.y = y.get();
  if (rc.which != pass::forward) {
    if (rc.want_o) r.o = go.get();
    if (rc.want_q && Q > 0) r.q = gq.get();
    if (rc.want_m) r.m = gm.get();
    if (rc.want_w)
      for (int l = 0; l < p.g.L; ++l) {
        r.w.push_back(gw[static_cast<std::size_t>(l)].get());
        r.b.push_back(gb[static_cast<std::size_t>(l)].get());
      }
  }
  r.canaries_ok = y.intact() && go.intact() && gq.intact() && gm.intact() && ws.intact();
  for (int l = 0; l < p.g.L; ++l)
    r.canaries_ok = r.canaries_ok && gw[static_cast<std::size_t>(l)].intact() && gb[static_cast<std::size_t>(l)].intact();
  return r;
}

/// Adds `accumulate_base` to every element (the expected result of an accumulating call).
inline std::vector<double> plus_base(std::vector<double> v) {
  for (double& x : v) x += accumulate_base;
  return v;
}

}  // namespace rel_test
