// Downstream use of the installed package: wrap caller-owned memory and call the library.
#include <distill/distill.hpp>

#include <cstdio>
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
  std::printf("consumer: distill %s found and usable\n", distill::version_string);
  return 0;
}
