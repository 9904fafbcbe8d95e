// SPDX-License-Identifier: MIT
#pragma once
// Runs the CPU relational pairing on a reference problem: builds host buffers in the library's
// layouts (padded rows, strided biases, column-major weights on request) inside canary guards,
// calls forward / backward / forward_backward, and returns every output densely in double.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "distill/relational/pairing.hpp"
#include "relational/pairing_test_util.hpp"
#include "support/guarded.hpp"

namespace rel_test {

enum class pass { forward, backward, fused };

struct run_config {
  int threads = 1;
  int tile = 0;
  bool strided = false;   // padded rows everywhere, biases with stride 2
  bool colmajor = false;  // weights (and their gradients) column-major
  bool accumulate = false;
  pass which = pass::fused;
  bool want_o = true, want_q = true, want_m = true, want_w = true;
};

struct lib_result {
  distill::status st;
  std::vector<double> y, o, q, m;
  std::vector<std::vector<double>> w, b;
  bool canaries_ok = true;
};

inline constexpr double accumulate_base = 0.25;  // value outputs hold before an accumulating call

/// A matrix [rows, cols] stored with padded rows (ld = cols + pad) or column-major.
template <class T>
struct matrix_buf {
  distill_test::guarded<T> buf;
  long rows, cols, ld;
  bool colmajor;
  matrix_buf(long r, long c, long pad, bool cm)
      : buf(static_cast<std::size_t>(cm ? c * r : r * (c + pad))), rows(r), cols(c), ld(cm ? r : c + pad), colmajor(cm) {}
  std::size_t at(long r, long c) const {
    return colmajor ? static_cast<std::size_t>(c * ld + r) : static_cast<std::size_t>(r * ld + c);
  }
  void fill(const std::vector<double>& v) {
    for (long r = 0; r < rows; ++r)
      for (long c = 0; c < cols; ++c) buf.data()[at(r, c)] = static_cast<T>(v[static_cast<std::size_t>(r * cols + c)]);
  }
  std::vector<double> read() const {
    std::vector<double> v(static_cast<std::size_t>(rows * cols));
    for (long r = 0; r < rows; ++r)
      for (long c = 0; c < cols; ++c) v[static_cast<std::size_t>(r * cols + c)] = static_cast<double>(buf.data()[at(r, c)]);
    return v;
  }
  distill::host_view<T, 2> view() {
    return colmajor ? distill::make_strided_view(buf.data(), std::array<distill::index_t, 2>{rows, cols},
                                                 std::array<distill::index_t, 2>{1, ld})
                    : distill::make_strided_view(buf.data(), std::array<distill::index_t, 2>{rows, cols},
                                                 std::array<distill::index_t, 2>{ld, 1});
  }
  bool intact() const { return buf.intact() && (colmajor || buf.padding_intact(static_cast<std::size_t>(rows), static_cast<std::size_t>(cols), static_cast<std::size_t>(ld))); }
};

/// A vector [n] with stride 1 or 2 (odd elements are padding).
template <class T>
struct vector_buf {
  distill_test::guarded<T> buf;
  long n, stride;
  vector_buf(long n_, bool strided) : buf(static_cast<std::size_t>(n_ * (strided ? 2 : 1))), n(n_), stride(strided ? 2 : 1) {}
  void fill(const std::vector<double>& v) {
    for (long i = 0; i < n; ++i) buf.data()[i * stride] = static_cast<T>(v[static_cast<std::size_t>(i)]);
  }
  std::vector<double> read() const {
    std::vector<double> v(static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(buf.data()[i * stride]);
    return v;
  }
  distill::host_view<T, 1> view() {
    return distill::make_strided_view(buf.data(), std::array<distill::index_t, 1>{n}, std::array<distill::index_t, 1>{stride});
  }
  bool intact() const { return buf.intact() && (stride == 1 || buf.padding_intact(static_cast<std::size_t>(n), 1, 2)); }
};

template <class T>
distill::host_view<T, 3> as_rank3(matrix_buf<T>& m, long b, long n) {
  return distill::make_strided_view(m.buf.data(), std::array<distill::index_t, 3>{b, n, m.cols},
                                    std::array<distill::index_t, 3>{n * m.ld, m.ld, 1});
}

template <class T>
lib_result run_lib(const distill_ref::pairing_problem_d& p, const std::vector<double>& dy, const run_config& rc) {
  using namespace distill;
  const long pad = rc.strided ? 3 : 0;
  const long B = p.B, N = p.N, D = p.D, Q = p.Q, H = p.H;
  matrix_buf<T> o(B * N, D, pad, false), q(B, std::max(Q, 1L), pad, false), m(B * N, N, pad, false), dyb(B, H, pad, false);
  o.fill(p.o);
  if (Q > 0) q.fill(p.q);
  if (!p.M.empty()) m.fill(p.M);
  dyb.fill(dy);
  std::vector<std::uint8_t> om = p.om;
  std::vector<matrix_buf<T>> wb;
  std::vector<vector_buf<T>> bb;
  for (int l = 0; l < p.g.L; ++l) {
    wb.emplace_back(l == 0 ? 2 * D + Q : H, H, pad, rc.colmajor);
    wb.back().fill(p.g.W[static_cast<std::size_t>(l)]);
    bb.emplace_back(H, rc.strided);
    if (!p.g.b[static_cast<std::size_t>(l)].empty()) bb.back().fill(p.g.b[static_cast<std::size_t>(l)]);
  }
  relational_mlp<const T> g;
  g.layers = p.g.L;
  for (int l = 0; l < p.g.L; ++l) {
    g.weight[l] = wb[static_cast<std::size_t>(l)].view();
    if (!p.g.b[static_cast<std::size_t>(l)].empty()) g.bias[l] = bb[static_cast<std::size_t>(l)].view();
  }
  const host_view<const T, 3> ov = as_rank3(o, B, N);
  const host_view<const T, 2> qv = Q > 0 ? host_view<const T, 2>(make_strided_view(q.buf.data(), std::array<index_t, 2>{B, Q}, std::array<index_t, 2>{q.ld, 1}))
                                         : host_view<const T, 2>{};
  const host_view<const T, 3> mv = p.M.empty() ? host_view<const T, 3>{} : host_view<const T, 3>(as_rank3(m, B, N));
  const host_view<const std::uint8_t, 2> omv = om.empty() ? host_view<const std::uint8_t, 2>{} : make_view(static_cast<const std::uint8_t*>(om.data()), B, N);

  // Outputs.
  matrix_buf<T> y(B, H, pad, false), go(B * N, D, pad, false), gq(B, std::max(Q, 1L), pad, false), gm(B * N, N, pad, false);
  std::vector<matrix_buf<T>> gw;
  std::vector<vector_buf<T>> gb;
  for (int l = 0; l < p.g.L; ++l) {
    gw.emplace_back(l == 0 ? 2 * D + Q : H, H, pad, rc.colmajor);
    gb.emplace_back(H, rc.strided);
  }
  if (rc.accumulate) {
    auto base = [](long n) { return std::vector<double>(static_cast<std::size_t>(n), accumulate_base); };
    go.fill(base(B * N * D));
    if (Q > 0) gq.fill(base(B * Q));
    gm.fill(base(B * N * N));
    for (int l = 0; l < p.g.L; ++l) {
      gw[static_cast<std::size_t>(l)].fill(base(gw[static_cast<std::size_t>(l)].rows * H));
      gb[static_cast<std::size_t>(l)].fill(base(H));
    }
  }
  relational_pairing_grads<T> gr;
  if (rc.want_o) gr.objects = as_rank3(go, B, N);
  if (rc.want_q && Q > 0) gr.question = make_strided_view(gq.buf.data(), std::array<index_t, 2>{B, Q}, std::array<index_t, 2>{gq.ld, 1});
  if (rc.want_m) gr.pair_mask = as_rank3(gm, B, N);
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
  const cpu ctx{rc.threads};
  std::vector<std::byte> ws(relational_pairing_workspace_size<T>(ctx, B, N, D, Q, H, p.g.L, opt));
  const host_view<std::byte, 1> wsv = make_view(ws.data(), static_cast<index_t>(ws.size()));
  const host_view<const T, 2> dyv = dyb.view();

  lib_result r;
  switch (rc.which) {
    case pass::forward: (void)(r.st = relational_pairing_forward(ctx, ov, qv, mv, omv, g, y.view(), wsv, opt)); break;
    case pass::backward: (void)(r.st = relational_pairing_backward(ctx, ov, qv, mv, omv, g, dyv, gr, wsv, opt)); break;
    case pass::fused: (void)(r.st = relational_pairing_forward_backward(ctx, ov, qv, mv, omv, g, dyv, y.view(), gr, wsv, opt)); break;
  }
  if (!r.st.ok()) return r;
  if (rc.which != pass::backward) r.y = y.read();
  if (rc.which != pass::forward) {
    if (rc.want_o) r.o = go.read();
    if (rc.want_q && Q > 0) r.q = gq.read();
    if (rc.want_m) r.m = gm.read();
    if (rc.want_w)
      for (int l = 0; l < p.g.L; ++l) {
        r.w.push_back(gw[static_cast<std::size_t>(l)].read());
        r.b.push_back(gb[static_cast<std::size_t>(l)].read());
      }
  }
  r.canaries_ok = y.intact() && go.intact() && gq.intact() && gm.intact();
  for (int l = 0; l < p.g.L; ++l) r.canaries_ok = r.canaries_ok && gw[static_cast<std::size_t>(l)].intact() && gb[static_cast<std::size_t>(l)].intact();
  return r;
}

/// Adds `accumulate_base` to every element (the expected result of an accumulating call).
inline std::vector<double> plus_base(std::vector<double> v) {
  for (double& x : v) x += accumulate_base;
  return v;
}

}  // namespace rel_test
