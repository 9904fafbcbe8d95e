// SPDX-License-Identifier: MIT
// Compile-time probe (docs/performance.md): one translation unit that uses four families, as a
// training step would: a soft-target loss, attention transfer, token NCE with a queue and an
// nn::sequential CNN + MLP, each forward and backward in float.
#include <cstdio>
#include <vector>

#include <distill/distill.hpp>

int main() {
  using distill::index_t;
  namespace nn = distill::nn;
  const distill::cpu ctx{};
  const index_t n = 8, c = 10, C = 4, H = 8, W = 8, D = 16, K = 32;
  std::vector<float> s(n * c, 0.1f), t(n * c, 0.2f), g(n * c);
  float loss = 0;
  distill::status st = distill::kl_teacher_student_forward_backward(ctx, distill::make_view(s.data(), n, c),
                                                                     distill::make_view(t.data(), n, c), distill::make_view(&loss, 1),
                                                                     distill::make_view(g.data(), n, c), {}, {}, {});
  std::vector<float> fs(n * C * H * W, 0.5f), ft(n * C * H * W, 0.25f), fg(n * C * H * W);
  if (st.ok())
    st = distill::attention_transfer_forward_backward(ctx, distill::make_view(fs.data(), n, C, H, W), distill::make_view(ft.data(), n, C, H, W),
                                                      distill::make_view(&loss, 1), distill::make_view(fg.data(), n, C, H, W), {}, {});
  distill::host_sample_queue<float> q(K, D);
  std::vector<float> z(n * D, 0.3f), y(n * D, 0.7f), zg(n * D);
  const distill::token_nce_options opt;
  std::vector<std::byte> ws(distill::token_nce_queue_workspace_size(ctx, n, D, K, opt));
  if (st.ok()) st = distill::sample_queue_init_random(ctx, q.queue(), 7);
  if (st.ok())
    st = distill::token_nce_queue_forward_backward(
        ctx, distill::token_nce_inputs<float>{distill::make_view(z.data(), n, D), distill::make_view(y.data(), n, D)}, q.queue(),
        distill::token_nce_outputs<float>{.loss = distill::make_view(&loss, 1), .grad_student = distill::make_view(zg.data(), n, D)},
        distill::make_view(ws.data(), static_cast<index_t>(ws.size())), opt);
  nn::init_options init;
  nn::sequential<float> net;
  net.add(nn::conv2d<float>("conv", C, 8, 3, {1, 1, 1, 1}, init));
  net.add(nn::activation::relu);
  net.add(nn::batch_norm<float>("bn", 8));
  net.add(nn::max_pool2d_stage{{2, 2}});
  net.add(nn::flatten_stage{});
  net.add(nn::linear<float>("fc", 8 * 4 * 4, c, init));
  nn::tensor<float, distill::host_space> dy({n, c});
  if (st.ok()) st = net.forward(ctx, distill::make_view(static_cast<const float*>(fs.data()), n, C, H, W));
  if (st.ok()) st = net.backward(ctx, distill::make_view(static_cast<const float*>(fs.data()), n, C, H, W), dy.view<2>());
  std::printf("%s %g\n", st.to_string().c_str(), static_cast<double>(loss));
  return st.ok() ? 0 : 1;
}
