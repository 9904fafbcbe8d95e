// SPDX-License-Identifier: MIT
// The models on a GPU: rn_model<cuda_space> driven by an nn::cuda_blas (compiled by nvcc, so
// every distill header exposes its CUDA overloads here).
#include <cuda_runtime.h>

#include "model.hpp"

namespace vqa {
std::unique_ptr<model_runner> make_cuda_runner(const model_spec& spec, const train_config& cfg) {
  return std::make_unique<rn_model<distill::cuda_space>>(spec, cfg);
}

std::string cuda_device_name() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return {};
  }
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return {};
  return p.name;
}
}  // namespace vqa
