// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision reference of a transformer encoder layer and stack (Vaswani et al.
// 2017; pre-LN: Xiong et al. 2020), written for clarity from the definitions, on dense
// row-major std::vector<double> tensors, reusing the layer references of nn_ref.hpp:
//   pre-LN:  r1 = x + drop_a(Attn(LN1(x))),         y = r1 + drop_f(FFN(LN2(r1)))
//   post-LN: n1 = LN1(x + drop_a(Attn(x))),         y = LN2(n1 + drop_f(FFN(n1)))
//   FFN(z) = Linear2(drop_h(gelu(Linear1(z)))),     Attn = multi-head self-attention with key padding
// Dropout masks come from nn_ref.hpp's independent re-implementation of the counter RNG.

#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/nn_ref.hpp"

namespace distill_ref::transformer {

using vec = std::vector<double>;

/// The 16 parameter tensors of one layer, in the library's parameters() order.
enum layer_tensor : int { wq, bq, wk, bk, wv, bv, wo, bo, norm1_w, norm1_b, norm2_w, norm2_b, linear1_w, linear1_b, linear2_w, linear2_b };
inline constexpr int layer_tensor_count = 16;
using layer_params = std::vector<vec>;

struct layer_shape {
  long B, L, D, H, F;
  bool norm_first;
  double eps = 1e-5;
  double dropout = 0;        ///< 0: no dropout
  std::uint64_t seed = 0;    ///< drop_a uses seed, drop_h seed + 1, drop_f seed + 2 (element index = flat index)
};

/// Inverted dropout of a flat tensor with the library's mask rule (offset 0).
inline vec dropout(const vec& z, double p, std::uint64_t seed) {
  if (p == 0) return z;
  vec out(z.size());
  for (std::size_t i = 0; i < z.size(); ++i) out[i] = distill_ref::nn::dropout_keep(seed, i, p) ? z[i] / (1 - p) : 0.0;
  return out;
}

/// Self-attention layer: projections, core, output projection. probs (B, H, L, L) filled when given.
inline vec self_attention(const vec& x, const std::vector<std::uint8_t>& key_valid, const layer_params& p, const layer_shape& s,
                          vec* probs) {
  namespace r = distill_ref::nn;
  const long N = s.B * s.L;
  const vec q = r::linear(x, p[wq], p[bq], N, s.D, s.D), k = r::linear(x, p[wk], p[bk], N, s.D, s.D),
            v = r::linear(x, p[wv], p[bv], N, s.D, s.D);
  const vec o = r::attention_core(q, k, v, key_valid, s.B, s.L, s.L, s.D, s.H, 1 / std::sqrt(static_cast<double>(s.D / s.H)), probs,
                                  nullptr);
  return r::linear(o, p[wo], p[bo], N, s.D, s.D);
}

inline vec feed_forward(const vec& z, const layer_params& p, const layer_shape& s) {
  namespace r = distill_ref::nn;
  const long N = s.B * s.L;
  vec h = r::linear(z, p[linear1_w], p[linear1_b], N, s.D, s.F);
  for (double& e : h) e = r::activate(r::act::gelu, e);
  return dropout(r::linear(dropout(h, s.dropout, s.seed + 1), p[linear2_w], p[linear2_b], N, s.F, s.D), s.dropout, s.seed + 2);
}

inline vec add(const vec& a, const vec& b) {
  vec out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = a[i] + b[i];
  return out;
}

/// One encoder layer: x (B, L, D) -> y (B, L, D); key_valid (B, L) or empty; probs (B, H, L, L).
inline vec encoder_layer(const vec& x, const std::vector<std::uint8_t>& key_valid, const layer_params& p, const layer_shape& s,
                         vec* probs = nullptr) {
  namespace r = distill_ref::nn;
  const long N = s.B * s.L;
  if (s.norm_first) {
    const vec r1 = add(x, dropout(self_attention(r::layer_norm(x, p[norm1_w], p[norm1_b], N, s.D, s.eps), key_valid, p, s, probs),
                                  s.dropout, s.seed));
    return add(r1, feed_forward(r::layer_norm(r1, p[norm2_w], p[norm2_b], N, s.D, s.eps), p, s));
  }
  const vec n1 = r::layer_norm(add(x, dropout(self_attention(x, key_valid, p, s, probs), s.dropout, s.seed)), p[norm1_w], p[norm1_b], N,
                               s.D, s.eps);
  return r::layer_norm(add(n1, feed_forward(n1, p, s)), p[norm2_w], p[norm2_b], N, s.D, s.eps);
}

/// A stack: layer i (dropout seeds seed + 3 i ...), then LN_f with (final_w, final_b) when final_w is not empty.
/// probs[i] gets layer i's probabilities when probs is given.
inline vec encoder(const vec& x, const std::vector<std::uint8_t>& key_valid, const std::vector<layer_params>& layers, const vec& final_w,
                   const vec& final_b, const layer_shape& s, std::vector<vec>* probs = nullptr) {
  vec h = x;
  if (probs) probs->assign(layers.size(), vec{});
  for (std::size_t i = 0; i < layers.size(); ++i) {
    layer_shape si = s;
    si.seed = s.seed + 3 * i;
    h = encoder_layer(h, key_valid, layers[i], si, probs ? &(*probs)[i] : nullptr);
  }
  if (final_w.empty()) return h;
  return distill_ref::nn::layer_norm(h, final_w, final_b, s.B * s.L, s.D, s.eps);
}

}  // namespace distill_ref::transformer
