// Downstream use of interop/xtensor.hpp through distill::xtensor: xtensor arrays in, no copy.
#include <distill/interop/xtensor.hpp>
#include <distill/losses/kl_teacher_student.hpp>

#include <cstdio>
#include <utility>

#include <xtensor/xtensor.hpp>

int main() {
  const xt::xtensor<float, 2> student = {{1, 2, 3}, {0, 0, 0}}, teacher = {{3, 2, 1}, {0, 0, 0}};
  xt::xtensor<float, 2> grad = xt::zeros<float>({2, 3});
  xt::xtensor<float, 1> loss = xt::zeros<float>({1});
  const auto st = distill::kl_teacher_student_forward_backward(
      distill::cpu{1}, distill::from_xtensor(student), distill::from_xtensor(teacher), distill::from_xtensor(loss),
      distill::from_xtensor(grad), {}, {});
  // KL(softmax(3,2,1) || softmax(1,2,3)) = 1.15042 on row 1, 0 on row 2; batchmean halves it
  if (!st.ok() || !(loss(0) > 0.5750f && loss(0) < 0.5754f)) {
    std::printf("consumer_xtensor: unexpected KL %g (%s)\n", static_cast<double>(loss(0)), st.to_string().c_str());
    return 1;
  }
  std::printf("consumer_xtensor: interop/xtensor.hpp usable\n");
  return 0;
}
