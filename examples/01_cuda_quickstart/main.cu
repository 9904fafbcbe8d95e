// SPDX-License-Identifier: MIT
// CUDA quickstart: Hinton distillation on device memory. Teacher and student logits live on the
// GPU; one asynchronous call on a stream computes the batch loss (into a device scalar) and the
// gradient with respect to the student logits; an SGD step updates the student logits directly.
// Nothing synchronises with the host until we copy the loss back to print it.
//
//   cuda_quickstart                 run (exits 0 and says so when there is no GPU)
//   cuda_quickstart --skip-code 77  the exit code to use without a GPU (CTest: "skipped")
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "distill/losses/kl_teacher_student.hpp"

namespace {

__global__ void sgd_step(float* z, const float* grad, float lr, std::size_t n) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i < n) z[i] -= lr * grad[i];
}

#define CHECK_CUDA(expr)                                                                   \
  do {                                                                                     \
    const cudaError_t e_ = (expr);                                                         \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_));             \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

}  // namespace

int main(int argc, char** argv) {
  int no_gpu_exit = 0;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--skip-code") == 0) no_gpu_exit = std::atoi(argv[i + 1]);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("cuda_quickstart: no CUDA device on this machine; nothing to run (see 00_quickstart for the CPU version)\n");
    return no_gpu_exit;
  }

  constexpr int n = 512, c = 1000;  // rows (tokens or samples) and classes
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> h_teacher(n * c), h_student(n * c);
  for (auto& v : h_teacher) v = normal(gen);
  for (auto& v : h_student) v = normal(gen);

  float *teacher, *student, *grad, *loss;
  std::byte* workspace;
  const std::size_t ws_bytes = distill::soft_target_workspace_size(distill::cuda{}, n);  // O(rows) scratch, the caller's
  CHECK_CUDA(cudaMalloc(&teacher, sizeof(float) * n * c));
  CHECK_CUDA(cudaMalloc(&student, sizeof(float) * n * c));
  CHECK_CUDA(cudaMalloc(&grad, sizeof(float) * n * c));
  CHECK_CUDA(cudaMalloc(&loss, sizeof(float)));
  CHECK_CUDA(cudaMalloc(&workspace, ws_bytes));
  CHECK_CUDA(cudaMemcpy(teacher, h_teacher.data(), sizeof(float) * n * c, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(student, h_student.data(), sizeof(float) * n * c, cudaMemcpyHostToDevice));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));

  distill::soft_target_options opt;
  opt.temperature = 2.0f;
  opt.reduction = distill::reduction::batchmean;
  const auto ws = distill::make_view<distill::cuda_space>(workspace, static_cast<distill::index_t>(ws_bytes));

  auto evaluate = [&]() {  // loss + gradient, asynchronous on `stream`
    distill::throw_if_error(distill::kl_teacher_student_forward_backward(
        distill::cuda{stream}, distill::make_view<distill::cuda_space>(static_cast<const float*>(student), n, c),
        distill::make_view<distill::cuda_space>(static_cast<const float*>(teacher), n, c),
        distill::make_view<distill::cuda_space>(loss, 1), distill::make_view<distill::cuda_space>(grad, n, c),
        /*extras*/ {}, ws, opt));
    float h_loss = 0.0f;
    CHECK_CUDA(cudaMemcpyAsync(&h_loss, loss, sizeof(float), cudaMemcpyDeviceToHost, stream));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    return h_loss;
  };
  // batchmean divides by n, so the per-logit gradient is small: a large step size on the logits
  const float lr = 100.0f;
  const std::size_t total = static_cast<std::size_t>(n) * c;
  const float before = evaluate();
  sgd_step<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(student, grad, lr, total);
  const float after = evaluate();

  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("distill CUDA quickstart on %s: T^2 KL(teacher || student), %d rows x %d classes\n", prop.name, n, c);
  std::printf("  loss before the SGD step: %.6f\n", before);
  std::printf("  loss after one SGD step : %.6f\n", after);
  cudaFree(teacher);
  cudaFree(student);
  cudaFree(grad);
  cudaFree(loss);
  cudaFree(workspace);
  cudaStreamDestroy(stream);
  const bool ok = std::isfinite(after) && after < before;
  std::printf("%s\n", ok ? "the student moved towards the teacher" : "unexpected: the loss did not fall");
  return ok ? 0 : 1;
}
