// Downstream use of the CUDA overloads through distill::cuda (nvcc flags and CUDA libraries come
// with the target). Without a GPU it only proves that the translation unit compiles and links.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include <distill/losses/kl_teacher_student.hpp>

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("consumer_cuda: built; no CUDA device here, nothing to run\n");
    return 0;
  }
  const std::vector<float> h = {1, 2, 3, 0, 0, 0, 3, 2, 1, 0, 0, 0};  // student rows, then teacher rows
  float *d = nullptr, *grad = nullptr, *loss = nullptr, h_loss = -1;
  std::byte* ws = nullptr;
  const std::size_t ws_bytes = distill::soft_target_workspace_size(distill::cuda{}, 2);
  bool ok = cudaMalloc(&d, h.size() * sizeof(float)) == cudaSuccess && cudaMalloc(&grad, 6 * sizeof(float)) == cudaSuccess &&
            cudaMalloc(&loss, sizeof(float)) == cudaSuccess && cudaMalloc(&ws, ws_bytes + 1) == cudaSuccess &&
            cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess;
  if (ok) {
    const auto st = distill::kl_teacher_student_forward_backward(
        distill::cuda{}, distill::make_view<distill::cuda_space>(static_cast<const float*>(d), 2, 3),
        distill::make_view<distill::cuda_space>(static_cast<const float*>(d + 6), 2, 3), distill::make_view<distill::cuda_space>(loss, 1),
        distill::make_view<distill::cuda_space>(grad, 2, 3), {},
        distill::make_view<distill::cuda_space>(ws, static_cast<distill::index_t>(ws_bytes)));
    ok = st.ok() && cudaMemcpy(&h_loss, loss, sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  cudaFree(d), cudaFree(grad), cudaFree(loss), cudaFree(ws);
  // the CPU consumer's value: KL 1.15042 on row 1, 0 on row 2, batchmean
  if (!ok || !(h_loss > 0.5750f && h_loss < 0.5754f)) {
    std::printf("consumer_cuda: unexpected KL %g\n", static_cast<double>(h_loss));
    return 1;
  }
  std::printf("consumer_cuda: distill's CUDA path usable\n");
  return 0;
}
