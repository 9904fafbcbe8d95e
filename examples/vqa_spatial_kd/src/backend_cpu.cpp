// SPDX-License-Identifier: MIT
// The models on the CPU: rn_model<host_space> driven by distill::cpu.
#include "model.hpp"

namespace vqa {
std::unique_ptr<model_runner> make_cpu_runner(const model_spec& spec, const train_config& cfg) {
  return std::make_unique<rn_model<distill::host_space>>(spec, cfg);
}
}  // namespace vqa
