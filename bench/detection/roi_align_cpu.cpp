// SPDX-License-Identifier: MIT
// CPU benchmarks of RoI Align forward and backward (shapes in roi_align_shapes.hpp); peer:
// bench/peers/roi_align_peer.py (torchvision.ops.roi_align, or the same math in plain torch).
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.hpp"
#include "detection/roi_align_shapes.hpp"
#include "distill/detection/roi_align.hpp"
#include "support/random.hpp"

namespace {

using distill_bench::roi_align_shape;

distill::roi_align_options options_of(const roi_align_shape& s) {
  distill::roi_align_options o;
  o.spatial_scale = s.scale, o.sampling_ratio = 2, o.aligned = true;
  return o;
}

void roi_align_cpu(benchmark::State& state, roi_align_shape s, bool backward) {
  const int K = s.B * s.rois_per_image;
  const auto rois = distill_bench::roi_align_rois(s);
  distill_test::rng g(1);
  std::vector<float> map = g.normals<float>(static_cast<std::size_t>(s.B) * s.C * s.H * s.W);
  std::vector<float> pooled = g.normals<float>(static_cast<std::size_t>(K) * s.C * s.out * s.out);
  const distill::cpu ctx{distill_bench::cpu_threads()};
  const auto mv = distill::make_view(map.data(), s.B, s.C, s.H, s.W);
  const auto pv = distill::make_view(pooled.data(), K, s.C, s.out, s.out);
  const auto rv = distill::make_view(rois.data(), K, 5);
  distill_bench::run_cpu(state, [&] {
    return backward ? distill::roi_align_backward(ctx, rv, distill::as_const(pv), mv, options_of(s))
                    : distill::roi_align_forward(ctx, distill::as_const(mv), rv, pv, options_of(s));
  });
  distill_bench::set_bytes(state, distill_bench::roi_align_bytes(s), distill_bench::ceiling().cpu_gbps);
}

const int registered = [] {
  for (const roi_align_shape& s : distill_bench::roi_align_shapes)
    for (bool backward : {false, true})
      benchmark::RegisterBenchmark(("roi_align/cpu/" + std::string(backward ? "bwd/" : "fwd/") + distill_bench::roi_align_shape_name(s)).c_str(),
                                   roi_align_cpu, s, backward)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  return 0;
}();

}  // namespace
