// Downstream use of the installed package: wrap caller-owned memory and call the library. Built
// with CMake (find_package) and with pkg-config (run_check.cmake).
#include <distill/distill.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main() {
  std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {1, 0, 0, 1, 1, 1}, c(4);
  auto st = distill::gemm(distill::cpu{1}, distill::transpose::no, distill::transpose::no, 1.0f,
                          distill::make_view(a.data(), 2, 3), distill::make_view(b.data(), 3, 2), 0.0f,
                          distill::make_view(c.data(), 2, 2));
  if (!st.ok() || c[0] != 4 || c[3] != 11) {
    std::printf("consumer: unexpected result (%s)\n", st.to_string().c_str());
    return 1;
  }
  // the SIMD soft-target path, built with this project's flags (no -march: SSE2 on x86-64)
  std::vector<float> s = {1, 2, 3, 0, 0, 0}, t = {3, 2, 1, 0, 0, 0}, g(6);
  float kl = -1;
  st = distill::kl_teacher_student_forward_backward(distill::cpu{1}, distill::make_view(s.data(), 2, 3),
                                                    distill::make_view(t.data(), 2, 3), distill::make_view(&kl, 1),
                                                    distill::make_view(g.data(), 2, 3), {}, {});
  // row 1: KL(softmax(3,2,1) || softmax(1,2,3)) = 1.15042 at T = 1, row 2: 0; batchmean halves it
  if (!st.ok() || !(kl > 0.5750f && kl < 0.5754f)) {
    std::printf("consumer: unexpected KL %g (%s)\n", static_cast<double>(kl), st.to_string().c_str());
    return 1;
  }
#ifdef CONSUMER_EXPECTED_VERSION
  // version.hpp and the CMake package (and so the project version) agree
  const std::string expected = CONSUMER_EXPECTED_VERSION;
  if (expected != distill::version_string ||
      expected != std::to_string(DISTILL_VERSION_MAJOR) + "." + std::to_string(DISTILL_VERSION_MINOR) + "." +
                      std::to_string(DISTILL_VERSION_PATCH)) {
    std::printf("consumer: the package says version %s, version.hpp %s\n", expected.c_str(), distill::version_string);
    return 1;
  }
#endif
  // the default context: every hardware thread
  if (distill::cpu{}.threads < 1) return 1;
  std::printf("consumer: distill %s found and usable (CPU paths: %s)\n", distill::version_string,
              distill::simd::instruction_set());
  return 0;
}
