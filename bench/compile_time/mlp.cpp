// SPDX-License-Identifier: MIT
// Compile-time probe (docs/performance.md): a translation unit that trains nothing but an MLP
// through nn::sequential (linear, ReLU, dropout), forward and backward in float.
#include <cstdio>

#include <distill/nn/sequential.hpp>

int main() {
  namespace nn = distill::nn;
  const distill::cpu ctx{};
  auto mlp = nn::make_mlp<float>({16, 32, 4}, {.dropout = 0.5, .name = "f"});
  nn::tensor<float, distill::host_space> x({8, 16}), dy({8, 4});
  distill::status st = mlp.forward(ctx, x.cview<2>());
  if (st.ok()) st = mlp.backward(ctx, x.cview<2>(), dy.cview<2>());
  std::printf("%s\n", st.to_string().c_str());
  return st.ok() ? 0 : 1;
}
