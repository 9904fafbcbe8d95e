// SPDX-License-Identifier: MIT
#pragma once
// Naive double-precision references for the convolution variants of nn/: depthwise and
// transposed convolution, written as their definitions (plain loops; the transposed convolution
// as a scatter from every input element, independent of the library's im2col/col2im route).

#include <vector>

namespace distill_ref::nn {

/// Depthwise convolution: x (B, C, H, W), w (C, 1, kh, kw), b (C, may be empty) -> (B, C, Ho, Wo).
inline std::vector<double> depthwise_conv2d(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& b, long B,
                                            long C, long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long& Ho, long& Wo) {
  Ho = (H + 2 * ph - kh) / sh + 1;
  Wo = (W + 2 * pw - kw) / sw + 1;
  std::vector<double> y(static_cast<std::size_t>(B * C * Ho * Wo));
  for (long n = 0; n < B; ++n)
    for (long c = 0; c < C; ++c)
      for (long oy = 0; oy < Ho; ++oy)
        for (long ox = 0; ox < Wo; ++ox) {
          double s = b.empty() ? 0.0 : b[static_cast<std::size_t>(c)];
          for (long ky = 0; ky < kh; ++ky)
            for (long kx = 0; kx < kw; ++kx) {
              const long iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;
              if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
              s += x[static_cast<std::size_t>(((n * C + c) * H + iy) * W + ix)] * w[static_cast<std::size_t>((c * kh + ky) * kw + kx)];
            }
          y[static_cast<std::size_t>(((n * C + c) * Ho + oy) * Wo + ox)] = s;
        }
  return y;
}

/// Transposed convolution (torch.nn.ConvTranspose2d): x (B, Ci, H, W), w (Ci, Co, kh, kw),
/// b (Co, may be empty) -> (B, Co, Ho, Wo), Ho = (H - 1) sh - 2 ph + kh + oph. Every input element
/// adds w[ci, co, ky, kx] x[b, ci, iy, ix] at (iy sh - ph + ky, ix sw - pw + kx) when inside.
inline std::vector<double> conv_transpose2d(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& b, long B,
                                            long Ci, long H, long W, long Co, long kh, long kw, long sh, long sw, long ph, long pw, long oph,
                                            long opw, long& Ho, long& Wo) {
  Ho = (H - 1) * sh - 2 * ph + kh + oph;
  Wo = (W - 1) * sw - 2 * pw + kw + opw;
  std::vector<double> y(static_cast<std::size_t>(B * Co * Ho * Wo));
  for (long n = 0; n < B; ++n)
    for (long co = 0; co < Co; ++co)
      for (long i = 0; i < Ho * Wo; ++i) y[static_cast<std::size_t>((n * Co + co) * Ho * Wo + i)] = b.empty() ? 0.0 : b[static_cast<std::size_t>(co)];
  for (long n = 0; n < B; ++n)
    for (long ci = 0; ci < Ci; ++ci)
      for (long iy = 0; iy < H; ++iy)
        for (long ix = 0; ix < W; ++ix)
          for (long co = 0; co < Co; ++co)
            for (long ky = 0; ky < kh; ++ky)
              for (long kx = 0; kx < kw; ++kx) {
                const long oy = iy * sh - ph + ky, ox = ix * sw - pw + kx;
                if (oy < 0 || oy >= Ho || ox < 0 || ox >= Wo) continue;
                y[static_cast<std::size_t>(((n * Co + co) * Ho + oy) * Wo + ox)] +=
                    x[static_cast<std::size_t>(((n * Ci + ci) * H + iy) * W + ix)] * w[static_cast<std::size_t>(((ci * Co + co) * kh + ky) * kw + kx)];
              }
  return y;
}

}  // namespace distill_ref::nn
