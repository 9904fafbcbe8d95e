// SPDX-License-Identifier: MIT
// A C++ program that links libtorch and distill's operator library: a linear student learns a
// teacher's soft targets on random inputs, with the KD loss and its gradient from distill's fused
// pass fed into libtorch's autograd (logits.backward(grad)). It checks the fused loss and
// gradient against the same formula written with ATen, and that training lowers the loss.
// Exit code 0 on success.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>

#include "distill_torch/ops.hpp"

namespace {

/// (loss, dloss/dlogits) of Hinton KD at temperature T through distill's fused pass.
std::tuple<at::Tensor, at::Tensor> distill_kd(const at::Tensor& logits, const at::Tensor& teacher, double T) {
  const auto out = distill_torch::soft_target(
      "kl_teacher_student", "forward_backward", logits, teacher, /*teacher_indices*/ {}, /*labels*/ {},
      /*row_weights*/ {}, /*temperature_tensor*/ {}, T, /*scale_by_t_squared*/ true, "batchmean", /*soft_weight*/ 1.0,
      /*hard_label_weight*/ 0.0, /*ignore_index*/ -100, /*grad_scale*/ 1.0, /*jsd_beta*/ 0.5, "continuous",
      /*dkd_alpha*/ 1.0, /*dkd_beta*/ 8.0, "renormalized");
  return {std::get<0>(out), std::get<1>(out)};
}

/// The same loss with ATen: T^2 KL(softmax(t/T) || softmax(s/T)), batch mean.
at::Tensor aten_kd(const at::Tensor& logits, const at::Tensor& teacher, double T) {
  const at::Tensor lp = at::log_softmax(teacher / T, 1), lq = at::log_softmax(logits / T, 1);
  return (lp.exp() * (lp - lq)).sum() / logits.size(0) * T * T;
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t n = 256, in = 32, classes = 10;
  const double T = 4.0;
  const at::Tensor x = at::randn({n, in});
  const at::Tensor teacher = at::matmul(x, at::randn({in, classes})) * 2.0;
  at::Tensor w = at::zeros({in, classes}).set_requires_grad(true);

  // 1. distill's loss and gradient against ATen's autograd of the same formula
  {
    const at::Tensor logits = at::matmul(x, at::randn({in, classes})).set_requires_grad(true);
    auto [loss, grad] = distill_kd(logits.detach(), teacher, T);
    const at::Tensor ref = aten_kd(logits, teacher, T);
    ref.backward();
    const double dl = std::abs(loss.item<double>() - ref.item<double>());
    const double dg = (grad - logits.grad()).abs().max().item<double>();
    std::printf("distill vs ATen: |loss difference| %.2e, max |gradient difference| %.2e\n", dl, dg);
    if (!(dl < 1e-5 * (1 + std::abs(ref.item<double>())) && dg < 1e-6)) return 1;
  }

  // 2. train the student with SGD through libtorch's autograd
  double first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    const at::Tensor logits = at::matmul(x, w);
    auto [loss, grad] = distill_kd(logits.detach(), teacher, T);
    logits.backward(grad);  // distill's gradient enters the graph at the logits
    {
      at::NoGradGuard no_grad;
      w.sub_(w.grad() * 0.5);
      w.grad().zero_();
    }
    (step == 0 ? first : last) = loss.item<double>();
  }
  std::printf("KD loss: %.4f at step 0, %.4f after 200 steps\n", first, last);
  return last < 0.5 * first ? 0 : 1;
}
