// SPDX-License-Identifier: MIT
// A custom student trained with knowledge distillation, on the CPU, in a few seconds.
//
//   1. a synthetic 10-class task: 16-d inputs from 4 Gaussian clusters per class, 10 % of the
//      training labels flipped (a clean test set measures generalisation);
//   2. a teacher MLP 16 -> 128 -> 128 -> 10, trained with cross-entropy on 3000 examples;
//   3. two students 16 -> 32 -> 10 from the same seed, trained on only 320 of those examples:
//      one with cross-entropy, one with cross-entropy plus soft targets from the teacher
//      (Hinton et al. 2015), L = (1 - a) CE(student, labels) + a T^2 KL(p_teacher,T || p_student,T),
//      from distill/losses/kl_teacher_student.hpp (its hard-label term is the same CE, one pass);
//   4. test accuracies of all three.
//
// Building blocks: nn::make_mlp (linear + ReLU chains), nn::softmax_cross_entropy, nn::adam,
// nn::argmax_rows; everything else is plain views.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "distill/losses/kl_teacher_student.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "distill/nn/optimizer.hpp"
#include "distill/nn/sequential.hpp"

using namespace distill;

namespace {

constexpr long dim = 16, classes = 10, n_train = 3000, n_test = 3000, batch = 64;

struct dataset {
  std::vector<float> x;               // (n, dim)
  std::vector<std::int64_t> labels;   // (n)
};

/// A mixture: each class owns `modes` Gaussian clusters (centres fixed by one seed, shared by
/// the training and test sets); x = centre + N(0, I). Several clusters per class make the class
/// regions non-convex: easy for a wide network, hard for a narrow one.
dataset make_data(long n, std::uint64_t seed, double flip) {
  const double spread = 1.3;
  const int modes = 4;
  std::mt19937_64 centre_gen(2024);
  std::normal_distribution<double> nd;
  std::vector<double> centres(static_cast<std::size_t>(classes * modes * dim));
  for (auto& v : centres) v = spread * nd(centre_gen);
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u;
  dataset d{std::vector<float>(static_cast<std::size_t>(n * dim)), std::vector<std::int64_t>(static_cast<std::size_t>(n))};
  for (long i = 0; i < n; ++i) {
    const long c = static_cast<long>(u(gen) * classes), m = static_cast<long>(u(gen) * modes);
    for (long k = 0; k < dim; ++k)
      d.x[static_cast<std::size_t>(i * dim + k)] = static_cast<float>(centres[static_cast<std::size_t>((c * modes + m) * dim + k)] + nd(gen));
    d.labels[static_cast<std::size_t>(i)] = u(gen) < flip ? static_cast<std::int64_t>(u(gen) * classes) : c;
  }
  return d;
}

double accuracy(nn::sequential<float>& net, const dataset& d) {
  const long n = static_cast<long>(d.labels.size());
  net.set_training(false);
  throw_if_error(net.forward(cpu{2}, make_view(d.x.data(), n, dim)));
  std::vector<std::int32_t> pred(static_cast<std::size_t>(n));
  throw_if_error(nn::argmax_rows(cpu{2}, net.output().cview<2>(), make_view(pred.data(), n)));
  long correct = 0;
  for (long i = 0; i < n; ++i) correct += pred[static_cast<std::size_t>(i)] == d.labels[static_cast<std::size_t>(i)];
  net.set_training(true);
  return 100.0 * static_cast<double>(correct) / static_cast<double>(n);
}

/// Mini-batch training. With a teacher, the loss is the soft-target KL plus the hard-label CE.
void train(nn::sequential<float>& student, nn::sequential<float>* teacher, const dataset& d, long n_use, int epochs, double lr,
           float alpha, float temperature) {
  const cpu ctx{2};
  auto params = student.parameters();
  nn::adam<float> opt(params, {.lr = lr});
  nn::host_tensor<float> grad({batch, classes});
  std::vector<long> order(static_cast<std::size_t>(n_use));
  for (long i = 0; i < n_use; ++i) order[static_cast<std::size_t>(i)] = i;
  std::mt19937_64 shuffle(7);
  std::vector<float> xb(static_cast<std::size_t>(batch * dim));
  std::vector<std::int64_t> yb(batch);
  for (int e = 0; e < epochs; ++e) {
    std::shuffle(order.begin(), order.end(), shuffle);
    for (long b0 = 0; b0 + batch <= n_use; b0 += batch) {
      for (long i = 0; i < batch; ++i) {
        const long src = order[static_cast<std::size_t>(b0 + i)];
        std::copy_n(d.x.begin() + src * dim, dim, xb.begin() + i * dim);
        yb[static_cast<std::size_t>(i)] = d.labels[static_cast<std::size_t>(src)];
      }
      const auto x = make_view(static_cast<const float*>(xb.data()), batch, dim);
      throw_if_error(nn::zero_grad(ctx, params));
      throw_if_error(student.forward(ctx, x));
      float loss = 0;
      if (teacher) {
        throw_if_error(teacher->forward(ctx, x));  // frozen teacher, evaluation mode
        soft_target_options o;
        o.temperature = temperature;
        o.soft_weight = alpha;
        o.hard_label_weight = 1 - alpha;
        soft_target_host_extras<float> extras;
        extras.labels = make_view(yb.data(), batch);
        throw_if_error(kl_teacher_student_forward_backward(ctx, student.output().cview<2>(), teacher->output().cview<2>(),
                                                           make_view(&loss, 1), grad.view<2>(), extras, {}, o));
      } else {
        throw_if_error(nn::softmax_cross_entropy_forward_backward(ctx, student.output().cview<2>(), make_view(yb.data(), batch),
                                                                  make_view(&loss, 1), grad.view<2>()));
      }
      throw_if_error(student.backward(ctx, x, grad.cview<2>()));
      throw_if_error(opt.step(ctx));
    }
  }
}

}  // namespace

int main() {
  // The teacher learns from 3000 examples (10 % of their labels flipped); the students see only
  // the first 320 of them (with the same noisy labels), the setting where the teacher's soft
  // targets carry the most information (Hinton et al. 2015, section 3).
  const long student_examples = 320;
  const dataset train_set = make_data(n_train, 1, 0.10), test_set = make_data(n_test, 2, 0.0);

  auto teacher = nn::make_mlp<float>({dim, 128, 128, classes}, {.init = {.seed = 1}, .name = "teacher"});
  train(teacher, nullptr, train_set, n_train, 20, 2e-3, 0, 1);
  teacher.set_training(false);
  auto teacher_params = teacher.parameters();
  nn::set_trainable(teacher_params, false);

  auto student_ce = nn::make_mlp<float>({dim, 32, classes}, {.init = {.seed = 2}, .name = "student"});
  auto student_kd = nn::make_mlp<float>({dim, 32, classes}, {.init = {.seed = 2}, .name = "student"});  // same start
  train(student_ce, nullptr, train_set, student_examples, 60, 5e-3, 0, 1);
  train(student_kd, &teacher, train_set, student_examples, 60, 5e-3, 0.9f, 4.0f);

  std::printf("synthetic 10-class task (4 Gaussian clusters per class in 16-d), clean test set of %ld\n", n_test);
  std::printf("  teacher  16-128-128-10, CE on %ld examples:                          test accuracy %.1f %%\n", n_train,
              accuracy(teacher, test_set));
  std::printf("  student  16-32-10,      CE on %ld examples:                           test accuracy %.1f %%\n", student_examples,
              accuracy(student_ce, test_set));
  std::printf("  student  16-32-10,      0.1 CE + 0.9 T^2 KL(teacher||student), T = 4: test accuracy %.1f %%\n",
              accuracy(student_kd, test_set));
  return 0;
}
