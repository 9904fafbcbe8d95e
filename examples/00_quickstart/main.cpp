// SPDX-License-Identifier: MIT
// Quickstart: distil a fixed "teacher" into a tiny linear student on the CPU.
//
//   teacher logits z_t (N x C), student logits z_s = X W (X: N x D, W: D x C)
//   L = soft_weight * T^2 KL(softmax(z_t/T) || softmax(z_s/T)) + hard_weight * CE(z_s, y)
//
// distill gives L and dL/dz_s in one pass; the chain rule to W is a small matrix product here.
// It prints the loss before training, after one SGD step and after 200 steps.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "distill/losses/kl_teacher_student.hpp"

int main() {
  constexpr int n = 256, d = 16, c = 10;  // samples, input features, classes
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  // data, a teacher (a fixed random linear map, a bit sharper than the student can start) and labels
  std::vector<float> x(n * d), w_teacher(d * c), w(d * c, 0.0f), z_t(n * c), z_s(n * c), grad(n * c);
  std::vector<std::int64_t> labels(n);
  for (auto& v : x) v = normal(gen);
  for (auto& v : w_teacher) v = 1.5f * normal(gen);
  auto matmul = [&](const std::vector<float>& weights, std::vector<float>& out) {  // out = X weights
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < c; ++k) {
        float s = 0.0f;
        for (int j = 0; j < d; ++j) s += x[i * d + j] * weights[j * c + k];
        out[i * c + k] = s;
      }
  };
  matmul(w_teacher, z_t);
  for (int i = 0; i < n; ++i) {  // hard labels: the teacher's argmax
    int best = 0;
    for (int k = 1; k < c; ++k) best = z_t[i * c + k] > z_t[i * c + best] ? k : best;
    labels[i] = best;
  }

  distill::soft_target_options opt;
  opt.temperature = 2.0f;
  opt.soft_weight = 0.9f;        // alpha in alpha * KD + (1 - alpha) * CE
  opt.hard_label_weight = 0.1f;
  opt.reduction = distill::reduction::batchmean;
  distill::soft_target_host_extras<float> extras;
  extras.labels = distill::make_view(static_cast<const std::int64_t*>(labels.data()), n);
  const distill::cpu ctx{2};

  auto step = [&](float lr) {  // one loss + gradient evaluation, then (lr > 0) an SGD step on W
    matmul(w, z_s);
    float loss = 0.0f;
    distill::throw_if_error(distill::kl_teacher_student_forward_backward(
        ctx, distill::make_view(static_cast<const float*>(z_s.data()), n, c),
        distill::make_view(static_cast<const float*>(z_t.data()), n, c), distill::make_view(&loss, 1),
        distill::make_view(grad.data(), n, c), extras, {}, opt));
    for (int j = 0; j < d && lr > 0; ++j)  // dL/dW = X^T dL/dz_s
      for (int k = 0; k < c; ++k) {
        float g = 0.0f;
        for (int i = 0; i < n; ++i) g += x[i * d + j] * grad[i * c + k];
        w[j * c + k] -= lr * g;
      }
    return loss;
  };

  const float lr = 0.5f;
  const float before = step(lr);
  const float after_one = step(0.0f);
  for (int it = 0; it < 200; ++it) step(lr);
  const float after_many = step(0.0f);
  std::printf("distill quickstart: T^2 KL(teacher || student) + CE, %d samples, %d classes\n", n, c);
  std::printf("  loss before training : %.6f\n", before);
  std::printf("  after one SGD step   : %.6f\n", after_one);
  std::printf("  after 201 SGD steps  : %.6f\n", after_many);
  const bool ok = std::isfinite(after_many) && after_one < before && after_many < 0.2f * before;
  std::printf("%s\n", ok ? "the student is learning the teacher" : "unexpected: the loss did not fall");
  return ok ? 0 : 1;
}
