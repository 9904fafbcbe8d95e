// SPDX-License-Identifier: MIT
// The torch layer: operator schemas (TORCH_LIBRARY), tensors described as DLPack without a copy,
// output and scratch allocation, the execution context (CPU threads, or the CUDA device and its
// current stream) and distill's status turned into a Python-visible exception. Everything
// distill-specific happens in the call layer (calls.hpp), which this file only declares.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#ifdef DISTILL_TORCH_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstring>
#include <deque>
#include <initializer_list>
#include <string>
#include <utility>

#include "calls.hpp"
#include "distill_torch/ops.hpp"

namespace distill_torch {
namespace {

// ---- tensors as DLPack, without a copy ----

DLDataType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return {kDLFloat, 32, 1};
    case at::kDouble: return {kDLFloat, 64, 1};
    case at::kHalf: return {kDLFloat, 16, 1};
    case at::kBFloat16: return {kDLBfloat, 16, 1};
    case at::kInt: return {kDLInt, 32, 1};
    case at::kLong: return {kDLInt, 64, 1};
    case at::kByte: return {kDLUInt, 8, 1};
    case at::kBool: return {kDLUInt, 8, 1};  // one byte, 0 or 1: what distill's uint8 masks read (nonzero = set)
    case at::kChar: return {kDLInt, 8, 1};
    case at::kShort: return {kDLInt, 16, 1};
    default: return {kDLOpaqueHandle, static_cast<uint8_t>(t.element_size() * 8), 1};
  }
}

/// DLPack descriptions of the tensors of one call; they point into the tensors' own sizes and
/// strides, so they live no longer than the call.
class described {
 public:
  tensor operator()(const at::Tensor& t) {
    if (!t.defined()) return nullptr;
    DLTensor& d = store_.emplace_back();
    d.data = t.data_ptr();
    if (t.is_cuda()) {
      // a view carries no device index: the call runs on the first CUDA tensor's device
      if (cuda_device_ < 0) cuda_device_ = t.get_device();
      TORCH_CHECK_VALUE(t.get_device() == cuda_device_, "distill: the tensors of one call must be on one CUDA device, got cuda:",
                        cuda_device_, " and cuda:", t.get_device());
      d.device = {kDLCUDA, static_cast<int>(t.get_device())};
    } else if (t.is_cpu()) {
      d.device = {kDLCPU, 0};
    } else {
      TORCH_CHECK_VALUE(false, "distill runs on CPU and CUDA tensors, not on ", t.device());
    }
    d.ndim = static_cast<int>(t.dim());
    d.dtype = dtype_of(t);
    d.shape = const_cast<int64_t*>(t.sizes().data());
    d.strides = const_cast<int64_t*>(t.strides().data());
    d.byte_offset = 0;
    return &d;
  }
  tensor operator()(const opt_tensor& t) { return t ? (*this)(*t) : nullptr; }

 private:
  std::deque<DLTensor> store_;  // stable addresses
  int64_t cuda_device_ = -1;
};

// ---- options ----

template <class E>
E choose(c10::string_view value, const char* option, std::initializer_list<std::pair<const char*, E>> choices) {
  std::string names;
  for (const auto& [name, e] : choices) {
    if (value == name) return e;
    names += names.empty() ? name : std::string(", ") + name;
  }
  TORCH_CHECK_VALUE(false, "distill: ", option, " '", std::string(value), "' is not one of ", names);
}

pass pass_of(c10::string_view v) {
  return choose<pass>(v, "pass", {{"forward", pass::forward}, {"backward", pass::backward},
                                  {"forward_backward", pass::forward_backward}});
}
distill::reduction reduction_of(c10::string_view v) {
  using distill::reduction;
  return choose<reduction>(v, "reduction", {{"none", reduction::none}, {"sum", reduction::sum}, {"mean", reduction::mean},
                                            {"batchmean", reduction::batchmean}});
}
distill::matmul_precision precision_of(c10::string_view v) {
  using distill::matmul_precision;
  return choose<matmul_precision>(v, "precision", {{"fp32", matmul_precision::fp32}, {"tf32", matmul_precision::tf32},
                                                   {"bf16", matmul_precision::bf16}});
}

// ---- outputs ----

bool has_loss(pass p) { return p != pass::backward; }
bool has_grad(pass p) { return p != pass::forward; }

/// Extent 0 of `t` (rows, samples, tokens), 0 for a 0-dim tensor (distill reports its rank).
int64_t rows_of(const at::Tensor& t) { return t.dim() > 0 ? t.size(0) : 0; }

/// Loss (or statistics) dtype: float64 for float64 inputs, float32 otherwise (distill accumulates
/// in float for float32 and 16-bit inputs).
at::TensorOptions accum_options(const at::Tensor& like) {
  return like.options().dtype(like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}
/// A new contiguous tensor of the shape, dtype and device of `like` (gradients, outputs).
at::Tensor empty_contiguous(const at::Tensor& like) {
  return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}
at::Tensor loss_output(pass p, const at::Tensor& like, int64_t rows, distill::reduction r) {
  if (!has_loss(p)) return {};
  return at::empty({r == distill::reduction::none ? rows : 1}, accum_options(like));
}
at::Tensor grad_output(pass p, const at::Tensor& like) { return has_grad(p) ? empty_contiguous(like) : at::Tensor(); }
/// A reduced loss as a 0-dim tensor (a view of the (1) output distill wrote).
at::Tensor scalar_if_reduced(const at::Tensor& loss, distill::reduction r) {
  return loss.defined() && r != distill::reduction::none ? loss.squeeze(0) : loss;
}

// ---- running a call ----

[[noreturn]] void raise(const distill::status& st) {
  using distill::errc;
  const std::string msg = st.to_string();
  switch (st.code()) {
    case errc::unsupported_dtype: C10_THROW_ERROR(TypeError, msg);
    case errc::invalid_argument:
    case errc::shape_mismatch:
    case errc::unsupported_layout:
    case errc::wrong_memory_space:
    case errc::misaligned:
    case errc::non_finite: C10_THROW_ERROR(ValueError, msg);
    default: C10_THROW_ERROR(Error, msg);
  }
}

/// Calls `go(ctx)` with the context of `like`'s device (the CPU with PyTorch's thread count, or
/// CUDA on the tensor's device and current stream) and raises the status it returns.
template <class Go>
void on_device_of(const at::Tensor& like, Go&& go) {
  distill::status st;
  if (like.is_cuda()) {
#ifdef DISTILL_TORCH_WITH_CUDA
    const c10::cuda::CUDAGuard guard(like.device());
    st = go(distill::cuda{c10::cuda::getCurrentCUDAStream(like.get_device()).stream()});
#else
    TORCH_CHECK(false, "distill_torch was built without CUDA (against a CPU-only PyTorch); rebuild it against a CUDA-enabled one");
#endif
  } else {
    TORCH_CHECK_VALUE(like.is_cpu(), "distill runs on CPU and CUDA tensors, not on ", like.device());
    st = go(distill::cpu{at::get_num_threads()});
  }
  if (!st.ok()) raise(st);
}

/// Runs `call` on the device of `like`, with scratch from the tensors' allocator.
template <class Call>
void execute(const at::Tensor& like, const Call& call) {
  on_device_of(like, [&](const auto& ctx) {
    const std::size_t bytes = workspace_size(ctx, call);
    at::Tensor scratch;
    described dl;
    if (bytes > 0) scratch = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
    return run(ctx, call, dl(scratch));
  });
}

/// A loss operator: describes the student and teacher into `c`, then the call's other inputs
/// (`more(dl)`), allocates the loss (`rows` values for reduction "none", else one) and the
/// student's gradient as pass `c.which` asks, runs `c` on the student's device and returns
/// (loss, grad_student), the loss 0-dim when reduced.
template <class Call, class More>
std::tuple<at::Tensor, at::Tensor> loss_op(Call& c, const at::Tensor& student, const at::Tensor& teacher, int64_t rows,
                                           More&& more) {
  const distill::reduction r = c.options.reduction;
  const at::Tensor loss = loss_output(c.which, student, rows, r);
  const at::Tensor grad = grad_output(c.which, student);
  described dl;
  c.student = dl(student);
  c.teacher = dl(teacher);
  more(dl);
  c.loss = dl(loss);
  c.grad_student = dl(grad);
  execute(student, c);
  return {scalar_if_reduced(loss, r), grad};
}
template <class Call>
std::tuple<at::Tensor, at::Tensor> loss_op(Call& c, const at::Tensor& student, const at::Tensor& teacher, int64_t rows) {
  return loss_op(c, student, teacher, rows, [](described&) {});
}

distill::attention_input attention_input_of(c10::string_view v, const char* option) {
  using distill::attention_input;
  return choose<attention_input>(v, option,
                                 {{"logits", attention_input::logits}, {"probabilities", attention_input::probabilities}});
}

/// The options the dense and the multi-label soft targets share.
template <class Options>
void set_soft_target_options(Options& o, double temperature, bool scale_by_t_squared, c10::string_view reduction,
                             double soft_weight, double hard_label_weight, double grad_scale) {
  o.temperature = static_cast<float>(temperature);
  o.scale_by_t_squared = scale_by_t_squared;
  o.reduction = reduction_of(reduction);
  o.soft_weight = static_cast<float>(soft_weight);
  o.hard_label_weight = static_cast<float>(hard_label_weight);
  o.grad_scale = static_cast<float>(grad_scale);
}

/// A call of a primitive on feature statistics (feature_stats, AdaIN, the statistics losses)
/// with their options eps and unbiased.
template <class Call>
Call stats_call(double eps, bool unbiased) {
  Call c;
  c.options.eps = eps;
  c.options.unbiased = unbiased;
  return c;
}

/// The options of the statistics losses after eps and unbiased.
template <class Options>
void set_stats_loss_options(Options& o, double mean_weight, double std_weight, c10::string_view reduction,
                            double grad_scale) {
  o.mean_weight = mean_weight;
  o.std_weight = std_weight;
  o.reduction = reduction_of(reduction);
  o.grad_scale = grad_scale;
}

}  // namespace

// =============================================================================================
// Operators
// =============================================================================================

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target(
    c10::string_view loss, c10::string_view pass_name, const at::Tensor& student, const at::Tensor& teacher,
    const opt_tensor& teacher_indices, const opt_tensor& labels, const opt_tensor& row_weights,
    const opt_tensor& temperature_tensor, double temperature, bool scale_by_t_squared, c10::string_view reduction,
    double soft_weight, double hard_label_weight, int64_t ignore_index, double grad_scale, double jsd_beta,
    c10::string_view jsd_scaling, double dkd_alpha, double dkd_beta, c10::string_view topk_variant) {
  using kind = soft_target_call::loss_kind;
  soft_target_call c;
  c.kind = choose<kind>(loss, "loss", {{"kl_teacher_student", kind::kl_teacher_student},
                                       {"kl_student_teacher", kind::kl_student_teacher},
                                       {"jsd", kind::jsd},
                                       {"soft_cross_entropy", kind::soft_cross_entropy},
                                       {"dkd", kind::dkd},
                                       {"kl_topk_teacher_student", kind::kl_topk_teacher_student}});
  c.which = pass_of(pass_name);
  set_soft_target_options(c.options, temperature, scale_by_t_squared, reduction, soft_weight, hard_label_weight,
                          grad_scale);
  c.options.ignore_index = ignore_index;
  c.jsd_beta = static_cast<float>(jsd_beta);
  c.jsd_scaling = choose<distill::jsd_scaling>(jsd_scaling, "jsd_scaling", {{"continuous", distill::jsd_scaling::continuous},
                                                                            {"trl", distill::jsd_scaling::trl}});
  c.dkd_alpha = static_cast<float>(dkd_alpha);
  c.dkd_beta = static_cast<float>(dkd_beta);
  c.topk_variant = choose<distill::topk_variant>(topk_variant, "topk_variant",
                                                 {{"renormalized", distill::topk_variant::renormalized},
                                                  {"rest_bucket", distill::topk_variant::rest_bucket}});
  const at::Tensor grad_t =
      temperature_tensor && has_grad(c.which) ? at::empty({1}, accum_options(student)) : at::Tensor();
  auto [loss_out, grad] = loss_op(c, student, teacher, rows_of(student), [&](described& dl) {
    c.teacher_indices = dl(teacher_indices);
    c.labels = dl(labels);
    c.row_weights = dl(row_weights);
    c.temperature = dl(temperature_tensor);
    c.grad_temperature = dl(grad_t);
  });
  return {loss_out, grad, grad_t};
}

std::tuple<at::Tensor, at::Tensor> multilabel_soft_target(
    c10::string_view pass_name, const at::Tensor& student, const at::Tensor& teacher, const opt_tensor& labels,
    const opt_tensor& mask, const opt_tensor& row_weights, const opt_tensor& class_weights, const opt_tensor& pos_weights,
    double temperature, bool scale_by_t_squared, c10::string_view reduction, double soft_weight, double hard_label_weight,
    bool subtract_teacher_entropy, double grad_scale) {
  multilabel_soft_target_call c;
  c.which = pass_of(pass_name);
  set_soft_target_options(c.options, temperature, scale_by_t_squared, reduction, soft_weight, hard_label_weight,
                          grad_scale);
  c.options.subtract_teacher_entropy = subtract_teacher_entropy;
  return loss_op(c, student, teacher, rows_of(student), [&](described& dl) {
    c.labels = dl(labels);
    c.mask = dl(mask);
    c.row_weights = dl(row_weights);
    c.class_weights = dl(class_weights);
    c.pos_weights = dl(pos_weights);
  });
}

std::tuple<at::Tensor, at::Tensor> attention_transfer(c10::string_view pass_name, const at::Tensor& student,
                                                      const at::Tensor& teacher, double p, double beta,
                                                      c10::string_view form, c10::string_view reduction, double eps,
                                                      double grad_scale) {
  attention_transfer_call c;
  c.which = pass_of(pass_name);
  auto& o = c.options;
  o.p = p;
  o.beta = beta;
  o.form = choose<distill::attention_transfer_form>(form, "form", {{"squared_mean", distill::attention_transfer_form::squared_mean},
                                                                   {"paper_norm", distill::attention_transfer_form::paper_norm}});
  o.reduction = reduction_of(reduction);
  o.eps = eps;
  o.grad_scale = grad_scale;
  return loss_op(c, student, teacher, rows_of(student));
}

std::tuple<at::Tensor, at::Tensor> attention_map(c10::string_view divergence, c10::string_view pass_name,
                                                 const at::Tensor& student, const at::Tensor& teacher,
                                                 const opt_tensor& key_mask, const opt_tensor& query_mask,
                                                 c10::string_view student_input, c10::string_view teacher_input,
                                                 c10::string_view head_map, at::IntArrayRef teacher_heads,
                                                 c10::string_view reduction, double grad_scale) {
  attention_map_call c;
  c.kl = choose<bool>(divergence, "divergence", {{"mse", false}, {"kl_teacher_student", true}});
  c.which = pass_of(pass_name);
  auto& o = c.options;
  o.student_input = attention_input_of(student_input, "student_input");
  o.teacher_input = attention_input_of(teacher_input, "teacher_input");
  using distill::attention_head_map;
  o.head_map = choose<attention_head_map>(head_map, "head_map", {{"one_to_one", attention_head_map::one_to_one},
                                                                 {"index", attention_head_map::index},
                                                                 {"group_mean", attention_head_map::group_mean}});
  c.teacher_heads.assign(teacher_heads.begin(), teacher_heads.end());
  o.reduction = reduction_of(reduction);
  o.grad_scale = grad_scale;
  const int64_t rows = student.dim() == 4 ? student.size(0) * student.size(1) * student.size(2) : 0;
  return loss_op(c, student, teacher, rows, [&](described& dl) {
    c.key_mask = dl(key_mask);
    c.query_mask = dl(query_mask);
  });
}

std::tuple<at::Tensor, at::Tensor> feature_stats(const at::Tensor& x, const opt_tensor& token_mask, double eps,
                                                 bool unbiased) {
  const int64_t features = x.dim() == 3 ? x.size(2) : x.dim() == 4 ? x.size(1) : 0;
  const at::Tensor mean = at::empty({rows_of(x), features}, accum_options(x));
  const at::Tensor std_dev = at::empty_like(mean);
  described dl;
  auto c = stats_call<feature_stats_call>(eps, unbiased);
  c.x = dl(x);
  c.token_mask = dl(token_mask);
  c.mean = dl(mean);
  c.std_dev = dl(std_dev);
  execute(x, c);
  return {mean, std_dev};
}

at::Tensor feature_stats_backward(const at::Tensor& x, const at::Tensor& grad_mean, const at::Tensor& grad_std,
                                  const opt_tensor& token_mask, double eps, bool unbiased) {
  const at::Tensor grad_x = empty_contiguous(x);
  described dl;
  auto c = stats_call<feature_stats_call>(eps, unbiased);
  c.backward = true;
  c.x = dl(x);
  c.token_mask = dl(token_mask);
  c.grad_mean = dl(grad_mean);
  c.grad_std = dl(grad_std);
  c.grad_x = dl(grad_x);
  execute(x, c);
  return grad_x;
}

std::tuple<at::Tensor, at::Tensor> stats_matching(c10::string_view pass_name, const at::Tensor& student,
                                                  const at::Tensor& teacher, const opt_tensor& student_mask,
                                                  const opt_tensor& teacher_mask, double eps, bool unbiased,
                                                  double mean_weight, double std_weight, c10::string_view reduction,
                                                  double grad_scale) {
  auto c = stats_call<stats_matching_call>(eps, unbiased);
  c.which = pass_of(pass_name);
  set_stats_loss_options(c.options, mean_weight, std_weight, reduction, grad_scale);
  return loss_op(c, student, teacher, 1, [&](described& dl) {
    c.student_mask = dl(student_mask);
    c.teacher_mask = dl(teacher_mask);
  });
}

at::Tensor adain(const at::Tensor& content, const at::Tensor& style, double eps, bool unbiased) {
  const at::Tensor out = empty_contiguous(content);
  described dl;
  auto c = stats_call<adain_call>(eps, unbiased);
  c.content = dl(content);
  c.style = dl(style);
  c.out = dl(out);
  execute(content, c);
  return out;
}

std::tuple<at::Tensor, at::Tensor> adain_backward(const at::Tensor& content, const at::Tensor& style,
                                                  const at::Tensor& grad_out, bool content_grad, double eps,
                                                  bool unbiased) {
  const at::Tensor grad_content = content_grad ? empty_contiguous(content) : at::Tensor();
  const at::Tensor grad_style = empty_contiguous(style);
  described dl;
  auto c = stats_call<adain_call>(eps, unbiased);
  c.backward = true;
  c.content = dl(content);
  c.style = dl(style);
  c.grad_out = dl(grad_out);
  c.grad_content = dl(grad_content);
  c.grad_style = dl(grad_style);
  execute(content, c);
  return {grad_content, grad_style};
}

std::tuple<at::Tensor, at::Tensor> adain_stats_loss(c10::string_view pass_name, const at::Tensor& student,
                                                    const at::Tensor& teacher, double eps, bool unbiased,
                                                    double adain_weight, double mean_weight, double std_weight,
                                                    c10::string_view reduction, double grad_scale) {
  auto c = stats_call<adain_stats_loss_call>(eps, unbiased);
  c.which = pass_of(pass_name);
  set_stats_loss_options(c.options, mean_weight, std_weight, reduction, grad_scale);
  c.options.adain_weight = adain_weight;
  return loss_op(c, student, teacher, 1);
}

std::tuple<at::Tensor, at::Tensor> embedding_alignment(c10::string_view pass_name, const at::Tensor& student,
                                                       const at::Tensor& teacher, const opt_tensor& row_weights,
                                                       const opt_tensor& row_mask, c10::string_view metric,
                                                       c10::string_view normalize, double norm_eps, double scale,
                                                       c10::string_view reduction, double grad_scale) {
  embedding_alignment_call c;
  c.which = pass_of(pass_name);
  auto& o = c.options;
  using distill::embedding_metric;
  o.metric = choose<embedding_metric>(metric, "metric", {{"mse", embedding_metric::mse}, {"squared_l2", embedding_metric::squared_l2},
                                                         {"l1", embedding_metric::l1}, {"cosine", embedding_metric::cosine}});
  using distill::l2_normalization;
  o.normalize = choose<l2_normalization>(normalize, "normalize", {{"none", l2_normalization::none},
                                                                  {"clamp", l2_normalization::clamp},
                                                                  {"zero_below_eps", l2_normalization::zero_below_eps}});
  o.norm_eps = norm_eps;
  o.scale = scale;
  o.reduction = reduction_of(reduction);
  o.grad_scale = grad_scale;
  return loss_op(c, student, teacher, rows_of(student), [&](described& dl) {
    c.row_weights = dl(row_weights);
    c.row_mask = dl(row_mask);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_nce(
    c10::string_view pass_name, const at::Tensor& student, const at::Tensor& teacher, const opt_tensor& queue_keys,
    const opt_tensor& queue_ids, int64_t queue_write_position, int64_t queue_size, const opt_tensor& token_mask,
    const opt_tensor& token_ids, bool teacher_grad, bool per_token, double temperature, c10::string_view reduction,
    bool in_batch_negatives, double normalize_eps, double grad_scale, c10::string_view precision) {
  token_nce_call c;
  c.which = pass_of(pass_name);
  auto& o = c.options;
  o.temperature = static_cast<float>(temperature);
  o.reduction = reduction_of(reduction);
  o.in_batch_negatives = in_batch_negatives;
  o.normalize_eps = static_cast<float>(normalize_eps);
  o.grad_scale = static_cast<float>(grad_scale);
  o.precision = precision_of(precision);
  const int64_t tokens = rows_of(student);
  const at::Tensor per_token_loss = per_token && has_loss(c.which) ? at::empty({tokens}, accum_options(student)) : at::Tensor();
  const at::Tensor grad_t = teacher_grad ? grad_output(c.which, teacher) : at::Tensor();
  auto [loss_out, grad] = loss_op(c, student, teacher, tokens, [&](described& dl) {
    c.token_mask = dl(token_mask);
    c.token_ids = dl(token_ids);
    c.queue = {dl(queue_keys), dl(queue_ids), queue_write_position, queue_size};
    c.per_token_loss = dl(per_token_loss);
    c.grad_teacher = dl(grad_t);
  });
  return {loss_out, per_token_loss, grad, grad_t};
}

namespace {
/// Runs `what` on the caller's queue (keys, ids, write_position, size), with the action's own
/// arguments from `more(c, dl)`, and returns the new (write_position, size).
template <class More>
std::vector<int64_t> queue_action(sample_queue_call::action what, const at::Tensor& keys, const opt_tensor& ids,
                                  int64_t write_position, int64_t size, More&& more) {
  sample_queue_call c;
  described dl;
  c.what = what;
  c.queue = {dl(keys), dl(ids), write_position, size};
  more(c, dl);
  on_device_of(keys, [&](const auto& ctx) { return run(ctx, c); });
  return {c.queue.write_position, c.queue.size};
}
}  // namespace

std::vector<int64_t> sample_queue_enqueue(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position,
                                          int64_t size, const at::Tensor& new_keys, const opt_tensor& new_ids,
                                          bool normalize, double normalize_eps) {
  return queue_action(sample_queue_call::action::enqueue, keys, ids, write_position, size,
                      [&](sample_queue_call& c, described& dl) {
                        c.keys = dl(new_keys);
                        c.ids = dl(new_ids);
                        c.enqueue.normalize = normalize;
                        c.enqueue.normalize_eps = static_cast<float>(normalize_eps);
                      });
}

std::vector<int64_t> sample_queue_init_random(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position,
                                              int64_t size, int64_t seed) {
  return queue_action(sample_queue_call::action::init_random, keys, ids, write_position, size,
                      [&](sample_queue_call& c, described&) { c.seed = static_cast<std::uint64_t>(seed); });
}

void sample_queue_save(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position, int64_t size,
                       c10::string_view path) {
  queue_action(sample_queue_call::action::save, keys, ids, write_position, size,
               [&](sample_queue_call& c, described&) { c.path = std::string(path); });
}

std::vector<int64_t> sample_queue_load(const at::Tensor& keys, const opt_tensor& ids, int64_t write_position,
                                       int64_t size, c10::string_view path) {
  return queue_action(sample_queue_call::action::load, keys, ids, write_position, size,
                      [&](sample_queue_call& c, described&) { c.path = std::string(path); });
}

namespace {
relational_pairing_call pairing_call(described& dl, const at::Tensor& objects, const at::Tensor& question,
                                     const opt_tensor& pair_mask, const opt_tensor& object_mask, at::TensorList weights,
                                     const c10::List<c10::optional<at::Tensor>>& biases, bool include_self_pairs,
                                     bool last_relu, double mask_scale, c10::string_view precision, int64_t tile_pairs) {
  relational_pairing_call c;
  c.objects = dl(objects);
  c.question = dl(question);
  c.pair_mask = dl(pair_mask);
  c.object_mask = dl(object_mask);
  for (const at::Tensor& w : weights) c.weights.push_back(dl(w));
  for (const c10::optional<at::Tensor>& b : biases) c.biases.push_back(dl(b));
  auto& o = c.options;
  o.include_self_pairs = include_self_pairs;
  o.last_relu = last_relu;
  o.mask_scale = static_cast<float>(mask_scale);
  o.precision = precision_of(precision);
  o.tile_pairs = static_cast<int>(tile_pairs);
  return c;
}
}  // namespace

at::Tensor relational_pairing(const at::Tensor& objects, const at::Tensor& question, const opt_tensor& pair_mask,
                              const opt_tensor& object_mask, at::TensorList weights,
                              const c10::List<c10::optional<at::Tensor>>& biases, bool include_self_pairs,
                              bool last_relu, double mask_scale, c10::string_view precision, int64_t tile_pairs) {
  described dl;
  relational_pairing_call c = pairing_call(dl, objects, question, pair_mask, object_mask, weights, biases,
                                           include_self_pairs, last_relu, mask_scale, precision, tile_pairs);
  const int64_t hidden = weights.empty() ? 0 : weights.back().size(-1);
  const at::Tensor out = at::empty({rows_of(objects), hidden}, objects.options());
  c.out = dl(out);
  execute(objects, c);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> relational_pairing_backward(
    const at::Tensor& objects, const at::Tensor& question, const opt_tensor& pair_mask, const opt_tensor& object_mask,
    at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases, const at::Tensor& grad_out,
    at::IntArrayRef needs, bool include_self_pairs, bool last_relu, double mask_scale, c10::string_view precision,
    int64_t tile_pairs) {
  TORCH_CHECK_VALUE(needs.size() == 4, "relational_pairing_backward: 'needs' has 4 flags (objects, question, pair_mask, g)");
  described dl;
  relational_pairing_call c = pairing_call(dl, objects, question, pair_mask, object_mask, weights, biases,
                                           include_self_pairs, last_relu, mask_scale, precision, tile_pairs);
  c.backward = true;
  const at::Tensor grad_objects = needs[0] ? empty_contiguous(objects) : at::Tensor();
  const at::Tensor grad_question = needs[1] ? empty_contiguous(question) : at::Tensor();
  const at::Tensor grad_pair_mask = needs[2] && pair_mask ? empty_contiguous(*pair_mask) : at::Tensor();
  std::vector<at::Tensor> grad_weights, grad_biases;
  if (needs[3]) {
    for (const at::Tensor& w : weights) grad_weights.push_back(empty_contiguous(w));
    for (const c10::optional<at::Tensor>& b : biases) grad_biases.push_back(b ? empty_contiguous(*b) : at::Tensor());
  }
  c.grad_out = dl(grad_out);
  c.grad_objects = dl(grad_objects);
  c.grad_question = dl(grad_question);
  c.grad_pair_mask = dl(grad_pair_mask);
  for (const at::Tensor& g : grad_weights) c.grad_weights.push_back(dl(g));
  for (const at::Tensor& g : grad_biases) c.grad_biases.push_back(dl(g));
  execute(objects, c);
  return {grad_objects, grad_question, grad_pair_mask, grad_weights, grad_biases};
}

namespace {
roi_align_call roi_call(bool backward, double spatial_scale, int64_t sampling_ratio, bool aligned) {
  roi_align_call c;
  c.backward = backward;
  c.options.spatial_scale = static_cast<float>(spatial_scale);
  c.options.sampling_ratio = static_cast<int>(sampling_ratio);
  c.options.aligned = aligned;
  return c;
}
}  // namespace

at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width,
                     double spatial_scale, int64_t sampling_ratio, bool aligned) {
  roi_align_call c = roi_call(false, spatial_scale, sampling_ratio, aligned);
  TORCH_CHECK_VALUE(pooled_height > 0 && pooled_width > 0, "roi_align: the output size must be positive");
  const at::Tensor out =
      at::empty({rows_of(rois), input.dim() > 1 ? input.size(1) : 0, pooled_height, pooled_width}, input.options());
  described dl;
  c.input = dl(input);
  c.rois = dl(rois);
  c.output = dl(out);
  execute(input, c);
  return out;
}

at::Tensor roi_align_backward(const at::Tensor& rois, const at::Tensor& grad_output, at::IntArrayRef input_shape,
                              double spatial_scale, int64_t sampling_ratio, bool aligned) {
  roi_align_call c = roi_call(true, spatial_scale, sampling_ratio, aligned);
  const at::Tensor grad_input = at::empty(input_shape, grad_output.options());
  described dl;
  c.rois = dl(rois);
  c.grad_output = dl(grad_output);
  c.grad_input = dl(grad_input);
  execute(grad_output, c);
  return grad_input;
}

}  // namespace distill_torch

// =============================================================================================
// Registration: every operator once, its schema (names and defaults as in distill's options
// structs) with its kernel; the schemas go to TORCH_LIBRARY, the kernels to the CPU key, and the
// CUDA key when built against a CUDA-enabled PyTorch.
// =============================================================================================

namespace {
/// Defines each operator's schema (`define`) or registers its kernel with `m`'s dispatch key.
void each_op(torch::Library& m, bool define) {
  using namespace distill_torch;
  const auto op = [&](const char* schema, auto* kernel) {
    if (define) {
      m.def(schema);
    } else {
      const std::string name(schema, std::strchr(schema, '('));
      m.impl(name.c_str(), kernel);
    }
  };
  op("soft_target(str loss, str pass_, Tensor student, Tensor teacher, Tensor? teacher_indices=None, Tensor? labels=None, "
      "Tensor? row_weights=None, Tensor? temperature_tensor=None, float temperature=1.0, bool scale_by_t_squared=True, "
      "str reduction='batchmean', float soft_weight=1.0, float hard_label_weight=0.0, int ignore_index=-100, "
      "float grad_scale=1.0, float jsd_beta=0.5, str jsd_scaling='continuous', float dkd_alpha=1.0, float dkd_beta=8.0, "
      "str topk_variant='renormalized') -> (Tensor, Tensor, Tensor)",
     &soft_target);
  op("multilabel_soft_target(str pass_, Tensor student, Tensor teacher, Tensor? labels=None, Tensor? mask=None, "
      "Tensor? row_weights=None, Tensor? class_weights=None, Tensor? pos_weights=None, float temperature=1.0, "
      "bool scale_by_t_squared=True, str reduction='batchmean', float soft_weight=1.0, float hard_label_weight=0.0, "
      "bool subtract_teacher_entropy=False, float grad_scale=1.0) -> (Tensor, Tensor)",
     &multilabel_soft_target);
  op("attention_transfer(str pass_, Tensor student, Tensor teacher, float p=2.0, float beta=1.0, str form='squared_mean', "
      "str reduction='mean', float eps=1e-12, float grad_scale=1.0) -> (Tensor, Tensor)",
     &attention_transfer);
  op("attention_map(str divergence, str pass_, Tensor student, Tensor teacher, Tensor? key_mask=None, "
      "Tensor? query_mask=None, str student_input='logits', str teacher_input='logits', str head_map='one_to_one', "
      "int[] teacher_heads=[], str reduction='mean', float grad_scale=1.0) -> (Tensor, Tensor)",
     &attention_map);
  op("feature_stats(Tensor x, Tensor? token_mask=None, float eps=1e-5, bool unbiased=False) -> (Tensor, Tensor)",
     &feature_stats);
  op("feature_stats_backward(Tensor x, Tensor grad_mean, Tensor grad_std, Tensor? token_mask=None, float eps=1e-5, "
      "bool unbiased=False) -> Tensor",
     &feature_stats_backward);
  op("stats_matching(str pass_, Tensor student, Tensor teacher, Tensor? student_mask=None, Tensor? teacher_mask=None, "
      "float eps=1e-5, bool unbiased=False, float mean_weight=1.0, float std_weight=1.0, str reduction='mean', "
      "float grad_scale=1.0) -> (Tensor, Tensor)",
     &stats_matching);
  op("adain(Tensor content, Tensor style, float eps=1e-5, bool unbiased=False) -> Tensor",
     &adain);
  op("adain_backward(Tensor content, Tensor style, Tensor grad_out, bool content_grad=True, float eps=1e-5, "
      "bool unbiased=False) -> (Tensor, Tensor)",
     &adain_backward);
  op("adain_stats_loss(str pass_, Tensor student, Tensor teacher, float eps=1e-5, bool unbiased=False, "
      "float adain_weight=1.0, float mean_weight=1.0, float std_weight=1.0, str reduction='mean', float grad_scale=1.0) "
      "-> (Tensor, Tensor)",
     &adain_stats_loss);
  op("embedding_alignment(str pass_, Tensor student, Tensor teacher, Tensor? row_weights=None, Tensor? row_mask=None, "
      "str metric='mse', str normalize='none', float norm_eps=1e-12, float scale=1.0, str reduction='mean', "
      "float grad_scale=1.0) -> (Tensor, Tensor)",
     &embedding_alignment);
  op("token_nce(str pass_, Tensor student, Tensor teacher, Tensor? queue_keys, Tensor? queue_ids, int queue_write_position, "
      "int queue_size, Tensor? token_mask=None, Tensor? token_ids=None, bool teacher_grad=False, bool per_token=False, "
      "float temperature=0.07, str reduction='mean', bool in_batch_negatives=False, float normalize_eps=1e-12, "
      "float grad_scale=1.0, str precision='fp32') -> (Tensor, Tensor, Tensor, Tensor)",
     &token_nce);
  op("sample_queue_enqueue(Tensor(a!) keys, Tensor(b!)? ids, int write_position, int size, Tensor new_keys, "
      "Tensor? new_ids=None, bool normalize=True, float normalize_eps=1e-12) -> int[]",
     &sample_queue_enqueue);
  op("sample_queue_init_random(Tensor(a!) keys, Tensor(b!)? ids, int write_position, int size, int seed) -> int[]",
     &sample_queue_init_random);
  op("sample_queue_save(Tensor keys, Tensor? ids, int write_position, int size, str path) -> ()",
     &sample_queue_save);
  op("sample_queue_load(Tensor(a!) keys, Tensor(b!)? ids, int write_position, int size, str path) -> int[]",
     &sample_queue_load);
  op("relational_pairing(Tensor objects, Tensor question, Tensor? pair_mask, Tensor? object_mask, Tensor[] weights, "
      "Tensor?[] biases, bool include_self_pairs=True, bool last_relu=True, float mask_scale=1.0, str precision='fp32', "
      "int tile_pairs=0) -> Tensor",
     &relational_pairing);
  op("relational_pairing_backward(Tensor objects, Tensor question, Tensor? pair_mask, Tensor? object_mask, "
      "Tensor[] weights, Tensor?[] biases, Tensor grad_out, int[] needs, bool include_self_pairs=True, "
      "bool last_relu=True, float mask_scale=1.0, str precision='fp32', int tile_pairs=0) "
      "-> (Tensor, Tensor, Tensor, Tensor[], Tensor[])",
     &relational_pairing_backward);
  op("roi_align(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale=1.0, "
      "int sampling_ratio=-1, bool aligned=False) -> Tensor",
     &roi_align);
  op("roi_align_backward(Tensor rois, Tensor grad_output, int[] input_shape, float spatial_scale=1.0, "
      "int sampling_ratio=-1, bool aligned=False) -> Tensor",
     &roi_align_backward);
}
}  // namespace

TORCH_LIBRARY(distill, m) { each_op(m, true); }
TORCH_LIBRARY_IMPL(distill, CPU, m) { each_op(m, false); }
#ifdef DISTILL_TORCH_WITH_CUDA
TORCH_LIBRARY_IMPL(distill, CUDA, m) { each_op(m, false); }
#endif
