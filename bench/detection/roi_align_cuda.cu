// SPDX-License-Identifier: MIT
// CUDA benchmarks of RoI Align forward and backward (deterministic gather backward), shapes in
// roi_align_shapes.hpp; peer: bench/peers/roi_align_peer.py --cuda (torchvision's atomic scatter).
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.hpp"
#include "bench_cuda.cuh"
#include "detection/roi_align_shapes.hpp"
#include "distill/detection/roi_align.hpp"
#include "support/random.hpp"

namespace {

using distill_bench::roi_align_shape;

void roi_align_cuda(benchmark::State& state, roi_align_shape s, bool backward) {
  if (distill_bench::skip_without_device(state)) return;
  const int K = s.B * s.rois_per_image;
  distill_test::rng g(1);
  const std::vector<float> map = g.normals<float>(static_cast<std::size_t>(s.B) * s.C * s.H * s.W);
  const std::vector<float> pooled = g.normals<float>(static_cast<std::size_t>(K) * s.C * s.out * s.out);
  distill_test::device_buffer<float> dmap(map), dpooled(pooled), drois(distill_bench::roi_align_rois(s));
  distill::roi_align_options o;
  o.spatial_scale = s.scale, o.sampling_ratio = 2, o.aligned = true;
  const auto mv = dmap.view(s.B, s.C, s.H, s.W);
  const auto pv = dpooled.view(K, s.C, s.out, s.out);
  const auto rv = drois.view(K, 5);
  distill_bench::run_cuda(state, [&](cudaStream_t stream) {
    return backward ? distill::roi_align_backward(distill::cuda{stream}, rv, distill::as_const(pv), mv, o)
                    : distill::roi_align_forward(distill::cuda{stream}, distill::as_const(mv), rv, pv, o);
  });
  distill_bench::set_bytes(state, distill_bench::roi_align_bytes(s), distill_bench::ceiling().gpu_gbps);
}

const int registered = [] {
  for (const roi_align_shape& s : distill_bench::roi_align_shapes)
    for (bool backward : {false, true})
      benchmark::RegisterBenchmark(("roi_align/cuda/" + std::string(backward ? "bwd/" : "fwd/") + distill_bench::roi_align_shape_name(s)).c_str(),
                                   roi_align_cuda, s, backward)
          ->Unit(benchmark::kMillisecond)
          ->UseManualTime();
  return 0;
}();

}  // namespace
