// SPDX-License-Identifier: MIT
// CUDA benchmarks of the attention family, with the same math as the PyTorch peer in
// bench/peers/compare.py:
//   attention_transfer: q = F.normalize(f.pow(2).mean(1).flatten(1)), (q_s - q_t).pow(2).mean(),
//                       gradient to the student features (p = 2, squared_mean, beta = 1, mean)
//   attention_map_mse:  F.mse_loss(softmax(s), softmax(t)), gradient to the student logits
// Bytes: student and teacher read once, gradient written once. No input rotation: every
// iteration moves more than a 50 MB L2 holds (student + teacher + gradient: 384 / 192 MiB for fp32 /
// bf16 attention transfer, 144 / 72 MiB for the fp32 / bf16 64x12x128x128 maps), except the
// 64x1x1x625 pair-attention case (about 0.5 MB in all), which stays L2-resident between
// iterations, so its GB/s is not a DRAM figure. Inputs are filled on the device
// (distill_bench::device_normals).
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "bench_common.hpp"
#include "bench_cuda.cuh"
#include "distill/attention/attention_map.hpp"
#include "distill/attention/attention_transfer.hpp"

namespace {

using distill_test::device_buffer;

template <class T>
void attention_transfer_fwd_bwd(benchmark::State& state, int B, int C, int H, int W,
                                distill::attention_transfer_cuda_algorithm algo) {
  if (distill_bench::skip_without_device(state)) return;
  const std::size_t n = static_cast<std::size_t>(B) * C * H * W;
  const auto s = distill_bench::device_normals<T>(n, 11), t = distill_bench::device_normals<T>(n, 12);
  device_buffer<T> g(n);
  device_buffer<float> loss(1);
  device_buffer<std::byte> ws(distill::attention_transfer_workspace_size(distill::cuda{}, B, H, W));
  distill::attention_transfer_options opt;  // p = 2, squared_mean, beta = 1, mean
  opt.cuda_algorithm = algo;
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    return distill::attention_transfer_forward_backward(distill::cuda{stream}, distill::as_const(s.view(B, C, H, W)),
                                                        distill::as_const(t.view(B, C, H, W)), loss.view(1), g.view(B, C, H, W),
                                                        ws.view(ws.size()), opt);
  });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(T), distill_bench::ceiling().gpu_gbps);
}

template <class T>
void attention_map_fwd_bwd(benchmark::State& state, bool kl, int B, int H, int Lq, int Lk, distill::attention_input teacher) {
  if (distill_bench::skip_without_device(state)) return;
  const std::size_t n = static_cast<std::size_t>(B) * H * Lq * Lk;
  const auto s = distill_bench::device_normals<T>(n, 21), t = distill_bench::device_normals<T>(n, 22);
  device_buffer<T> g(n);
  device_buffer<float> loss(1);
  device_buffer<std::byte> ws(distill::attention_map_workspace_size(distill::cuda{}));
  distill::attention_map_options opt;  // logits, one_to_one, mean
  opt.teacher_input = teacher;         // probabilities here are not normalised: the timing is the same
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    const distill::cuda ctx{stream};
    const auto sv = distill::as_const(s.view(B, H, Lq, Lk)), tv = distill::as_const(t.view(B, H, Lq, Lk));
    return kl ? distill::attention_map_kl_teacher_student_forward_backward(ctx, sv, tv, {}, loss.view(1), g.view(B, H, Lq, Lk), ws.view(ws.size()), opt)
              : distill::attention_map_mse_forward_backward(ctx, sv, tv, {}, loss.view(1), g.view(B, H, Lq, Lk), ws.view(ws.size()), opt);
  });
  distill_bench::set_bytes(state, 3.0 * n * sizeof(T), distill_bench::ceiling().gpu_gbps);
}

const int registered = [] {
  using algo = distill::attention_transfer_cuda_algorithm;
  using distill::attention_input;
  benchmark::RegisterBenchmark("attention_transfer/cuda/fwd_bwd/128x256x32x32", attention_transfer_fwd_bwd<float>, 128, 256,
                               32, 32, algo::automatic)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_transfer/cuda/fwd_bwd/128x256x32x32/bf16", attention_transfer_fwd_bwd<__nv_bfloat16>,
                               128, 256, 32, 32, algo::automatic)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  // The two decompositions side by side (automatic picks fused_cluster on sm_90).
  benchmark::RegisterBenchmark("attention_transfer_two_pass/cuda/fwd_bwd/128x256x32x32", attention_transfer_fwd_bwd<float>, 128,
                               256, 32, 32, algo::two_pass)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_transfer_fused_cluster/cuda/fwd_bwd/128x256x32x32", attention_transfer_fwd_bwd<float>,
                               128, 256, 32, 32, algo::fused_cluster)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_map_mse/cuda/fwd_bwd/64x12x128x128", attention_map_fwd_bwd<float>, false, 64, 12, 128,
                               128, attention_input::logits)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_map_mse/cuda/fwd_bwd/64x12x128x128/bf16", attention_map_fwd_bwd<__nv_bfloat16>, false,
                               64, 12, 128, 128, attention_input::logits)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("attention_map_kl_teacher_student/cuda/fwd_bwd/64x12x128x128", attention_map_fwd_bwd<float>, true,
                               64, 12, 128, 128, attention_input::logits)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  // The flagship's pair attention: [B, 1, 1, N^2] student logits vs a teacher distribution.
  benchmark::RegisterBenchmark("attention_map_mse/cuda/fwd_bwd/64x1x1x625", attention_map_fwd_bwd<float>, false, 64, 1, 1, 625,
                               attention_input::probabilities)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace
