// SPDX-License-Identifier: MIT
#pragma once
// The boundary between the program (data, logic masks, reports: host code) and the models
// (model.hpp: written once for host and device memory). The program hands host batches to a
// `model_runner`; a CPU runner uses them in place, a CUDA runner uploads them.
//
// The five models of the example and what each trains on:
//   baseline            RN over all pairs, cross-entropy
//   teacher_logic       RN gated by the logic mask (train and test: privileged knowledge)
//   teacher_predicted   RN gated by its own pair attention (softmax over pairs), the attention
//                       supervised by the logic mask during training only
//   student_logits  (a) baseline architecture, CE + soft-target KL from teacher_logic
//   student_attention (b) own pair attention, CE + soft-target KL from teacher_logic's logits +
//                       attention-map KL from teacher_logic's pair mask
// With pixels, students are also tied to the teacher's CNN by attention transfer and AdaIN
// statistics on the feature maps and by the token-wise contrastive loss on the object tokens.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "distill/core/status.hpp"
#include "distill/nn/parameter.hpp"

namespace vqa {

enum class mask_source { none, logic, predicted };

/// What a model is: its architecture and the losses it trains with.
struct model_spec {
  std::string name;                 ///< "baseline", "teacher_logic", ...
  std::string title;                ///< for tables and plots
  mask_source mask = mask_source::none;
  bool supervise_pairs = false;     ///< pair-scorer cross-entropy against the logic mask
  bool distill_logits = false;      ///< soft-target KL from the teacher's logits
  bool distill_pairs = false;       ///< attention-map KL from the teacher's pair mask
  bool distill_features = false;    ///< pixels: AT + AdaIN statistics + token NCE vs the teacher's CNN
  bool is_teacher = false;          ///< students of this run learn from it
  int g_hidden = 128, g_layers = 3; ///< g of the Relation Network
  std::vector<int> f_hidden{128};   ///< hidden widths of f (then a linear layer to the answers)
  int scorer_hidden = 128;          ///< hidden width of the pair scorer (attention models)
};

/// Training hyper-parameters shared by the models of one run.
struct train_config {
  bool pixels = false;
  int cnn_channels = 24;            ///< pixels: 4 conv layers of this width (kimhc6028)
  int batch = 64;
  double lr = 1e-3;
  double f_dropout = 0.0;           ///< dropout before f's last layer
  double alpha = 0.7;               ///< students: weight of the soft-target KL (1 - alpha on CE)
  double temperature = 2.0;         ///< soft-target temperature
  double pair_weight = 1.0;         ///< teacher_predicted: weight of the pair supervision
  double attention_weight = 1.0;    ///< student (b): weight of the pair-attention distillation
  double at_weight = 1000.0;        ///< pixels: attention transfer beta (squared-mean form)
  double adain_weight = 1.0;        ///< pixels: AdaIN statistics loss weight
  double nce_weight = 0.1;          ///< pixels: token-wise contrastive loss weight
  double nce_temperature = 0.07;
  int queue_size = 4096;
  int threads = 2;
  std::uint64_t seed = 1;
};

/// One batch in host memory, row-major and contiguous. N is 6 (state) or 25 (pixels).
struct host_batch {
  int size = 0;
  int objects = 6;                          ///< N
  const float* state = nullptr;             ///< [B, 6, 10] object features (state descriptions)
  const float* images = nullptr;            ///< [B, 3, 75, 75] (pixels)
  const float* questions = nullptr;         ///< [B, 11]
  const std::int64_t* answers = nullptr;    ///< [B] (training)
  const float* logic_mask = nullptr;        ///< [B, N, N]
  int first_row = 0;                        ///< data-parallel: this rank's first row in the global batch
  int global_size = 0;                      ///< data-parallel: rows of the global batch (0: this batch is all)
};

/// Data-parallel training (CPU): after each step's gradients, before the optimiser step, they are
/// handed to this with the rank's share of the batch's rows (examples/common/replicas.hpp).
using gradient_combiner = std::function<void(const distill::nn::parameter_list<float, distill::host_space>&, double share)>;

class model_runner {
 public:
  virtual ~model_runner() = default;
  /// One optimiser step on the batch; `teacher` (same backend) for the students. `loss` gets the
  /// total training loss of the batch.
  [[nodiscard]] virtual distill::status train_step(const host_batch& b, model_runner* teacher, double lr, double& loss) = 0;
  /// Answers (argmax of the logits) in evaluation mode; `pair_weights` [B, N, N] (optional)
  /// gets the pair weights the model used (its mask, or ones).
  [[nodiscard]] virtual distill::status predict(const host_batch& b, std::int32_t* answers, float* pair_weights) = 0;
  [[nodiscard]] virtual distill::status save(const std::string& path, int epoch, const std::string& meta) = 0;
  [[nodiscard]] virtual distill::status load(const std::string& path, int& epoch, std::string& meta) = 0;
  /// Data-parallel training; refused by the CUDA runner (the NCCL path is not wired here).
  [[nodiscard]] virtual distill::status set_gradient_combiner(gradient_combiner combine) = 0;
  virtual std::int64_t parameter_count() const = 0;
  virtual const model_spec& spec() const = 0;
};

std::unique_ptr<model_runner> make_cpu_runner(const model_spec& spec, const train_config& cfg);
#if defined(DISTILL_VQA_WITH_CUDA)
std::unique_ptr<model_runner> make_cuda_runner(const model_spec& spec, const train_config& cfg);
/// Name of the first CUDA device, or empty when none can be used.
std::string cuda_device_name();
#endif

}  // namespace vqa
