// SPDX-License-Identifier: MIT
// Detection primitives on CUDA: box IoU / match / clip / coder against the double reference and the CPU
// path; RoI Align forward and backward against the double reference over every option (float;
// float16 and bfloat16 feature maps with their tolerances), the backward bitwise reproducible
// run to run, accumulate, a roi with an out-of-range batch index, host memory refused.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "detection/roi_align_cases.hpp"
#include "distill/detection/boxes.hpp"
#include "distill/detection/roi_align.hpp"
#include "reference/detection_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using distill_test::device_buffer;

namespace {

std::vector<float> random_box_list(distill_test::rng& g, int n) {
  std::vector<float> v;
  for (int i = 0; i < n; ++i) {
    const double x = g.uniform(-5, 40), y = g.uniform(-5, 40), w = g.uniform(0.5, 20), h = g.uniform(0.5, 20);
    for (double c : {x, y, x + w, y + h}) v.push_back(static_cast<float>(c));
  }
  return v;
}

distill_ref::box box_at(const std::vector<float>& v, int i) {
  return {v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]};
}

}  // namespace

TEST_CASE("cuda boxes: IoU, clip and coder against the reference and the CPU", "[cuda][detection][boxes]") {
  distill_test::rng g(51);
  const int N = 300, M = 77;  // several row blocks and column tiles
  const auto a = random_box_list(g, N), b = random_box_list(g, M);
  device_buffer<float> da(a), db(b), diou(static_cast<std::size_t>(N) * M);
  REQUIRE(box_iou(cuda{}, da.view(N, 4), db.view(M, 4), diou.view(N, M)).ok());
  const auto iou = diou.download();
  std::vector<double> expected;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < M; ++j) expected.push_back(distill_ref::iou_ref(box_at(a, i), box_at(b, j)));
  CHECK_CLOSE("iou", iou, expected, distill_test::tol::f32);

  // box_match: each box of `a` against the M boxes of `b`, compared with the CPU.
  device_buffer<std::int64_t> dmatched(N);
  device_buffer<float> dbest(N);
  REQUIRE(box_match(cuda{}, da.view(N, 4), db.view(M, 4), dmatched.view(N), dbest.view(N)).ok());
  std::vector<std::int64_t> matched_cpu(N);
  std::vector<float> best_cpu(N);
  REQUIRE(box_match(cpu{1}, make_view(a.data(), N, 4), make_view(b.data(), M, 4), make_view(matched_cpu.data(), N), make_view(best_cpu.data(), N)).ok());
  CHECK(dmatched.download() == matched_cpu);
  CHECK_CLOSE("match iou", dbest.download(), best_cpu, distill_test::tol::f32);

  const int K = M;
  const auto t = random_box_list(g, K);
  device_buffer<float> dp(b), dt(t), dd(4 * K), dbox(4 * K), dgrad(4 * K), dclip(4 * K);
  box_coder_options opt;
  opt.weight_x = 10, opt.weight_y = 10, opt.weight_w = 5, opt.weight_h = 5;
  REQUIRE(box_encode(cuda{}, dp.view(K, 4), dt.view(K, 4), dd.view(K, 4), opt).ok());
  REQUIRE(box_decode_forward(cuda{}, dp.view(K, 4), dd.view(K, 4), dbox.view(K, 4), opt).ok());
  const std::vector<float> upstream = g.normals<float>(4 * K);
  device_buffer<float> dup(upstream);
  REQUIRE(box_decode_backward(cuda{}, dp.view(K, 4), dd.view(K, 4), dup.view(K, 4), dgrad.view(K, 4), opt).ok());
  REQUIRE(box_clip(cuda{}, dbox.view(K, 4), dclip.view(K, 4), box_clip_options{30, 25}).ok());
  const auto deltas = dd.download();
  std::vector<float> deltas_cpu(4 * K), boxes_cpu(4 * K), grad_cpu(4 * K), clip_cpu(4 * K);
  REQUIRE(box_encode(cpu{1}, make_view(b.data(), K, 4), make_view(t.data(), K, 4), make_view(deltas_cpu.data(), K, 4), opt).ok());
  REQUIRE(box_decode_forward(cpu{1}, make_view(b.data(), K, 4), make_view(deltas.data(), K, 4), make_view(boxes_cpu.data(), K, 4), opt).ok());
  REQUIRE(box_decode_backward(cpu{1}, make_view(b.data(), K, 4), make_view(deltas.data(), K, 4), make_view(upstream.data(), K, 4),
                              make_view(grad_cpu.data(), K, 4), opt)
              .ok());
  REQUIRE(box_clip(cpu{1}, make_view(boxes_cpu.data(), K, 4), make_view(clip_cpu.data(), K, 4), box_clip_options{30, 25}).ok());
  const distill_test::tolerance coords{1e-4, 1e-5};
  CHECK_CLOSE("encode", deltas, deltas_cpu, coords);
  CHECK_CLOSE("decode", dbox.download(), boxes_cpu, coords);
  CHECK_CLOSE("decode backward", dgrad.download(), grad_cpu, coords);
  CHECK_CLOSE("clip", dclip.download(), clip_cpu, coords);
}

namespace {

template <class T>
std::vector<T> to(const std::vector<double>& v) {
  std::vector<T> out;
  for (double x : v) out.push_back(store<T>(static_cast<float>(x)));
  return out;
}
template <class T>
std::vector<double> from(const std::vector<T>& v) {
  std::vector<double> out;
  for (const T& x : v) out.push_back(static_cast<double>(load<float>(x)));
  return out;
}

template <class T>
void check_roi_align_case(const roi_test::roi_case& c, distill_test::rng& g, distill_test::tolerance tolerance) {
  const int K = static_cast<int>(c.rois.size());
  // Round the inputs to T first so the reference computes on exactly what the kernel reads.
  const std::vector<T> x_t = to<T>(g.normals(static_cast<std::size_t>(c.B) * c.C * c.H * c.W));
  const std::vector<T> go_t = to<T>(g.normals(static_cast<std::size_t>(K) * c.C * c.ph * c.pw));
  const distill_ref::feature_map_ref x{c.B, c.C, c.H, c.W, from(x_t)};
  const std::vector<float> r = roi_test::flat_rois<float>(c.rois);
  device_buffer<T> dx(x_t), dgo(go_t), dy(go_t.size()), dgx(x_t.size());
  device_buffer<float> dr(r);
  REQUIRE(roi_align_forward(cuda{}, dx.view(c.B, c.C, c.H, c.W), dr.view(K, 5), dy.view(K, c.C, c.ph, c.pw), c.opt()).ok());
  REQUIRE(roi_align_backward(cuda{}, dr.view(K, 5), dgo.view(K, c.C, c.ph, c.pw), dgx.view(c.B, c.C, c.H, c.W), c.opt()).ok());
  distill_test::cuda_sync();
  CHECK_CLOSE("forward", from(dy.download()), distill_ref::roi_align_forward_ref(x, c.rois, c.ph, c.pw, c.ref), tolerance);
  const auto first = dgx.download();
  CHECK_CLOSE("backward", from(first), distill_ref::roi_align_backward_ref(c.B, c.C, c.H, c.W, c.rois, from(go_t), c.ph, c.pw, c.ref).v,
              tolerance);
  // Bitwise reproducible.
  REQUIRE(roi_align_backward(cuda{}, dr.view(K, 5), dgo.view(K, c.C, c.ph, c.pw), dgx.view(c.B, c.C, c.H, c.W), c.opt()).ok());
  const auto second = dgx.download();
  CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(T)) == 0);
}

}  // namespace

TEST_CASE("cuda roi_align: float against the reference, every option", "[cuda][detection][roi_align]") {
  distill_test::rng g(52);
  for (int variant = 0; variant < 24; ++variant) {
    // Up to 70 x 40 maps (several tiles) and 600 rois (more than one 256-roi chunk).
    const roi_test::roi_case c = roi_test::random_case(g, variant, 40, 9, 7, variant % 4 == 3 ? 600 : 40);
    INFO("variant " << variant << " K " << c.rois.size() << " H " << c.H << " W " << c.W);
    // The sums of a backward element can be long (many rois): float accumulation error.
    check_roi_align_case<float>(c, g, distill_test::tolerance{2e-5, 1e-4});
  }
}

TEST_CASE("cuda roi_align: float16 and bfloat16 feature maps", "[cuda][detection][roi_align]") {
  distill_test::rng g(53);
  for (int variant = 0; variant < 6; ++variant) {
    const roi_test::roi_case c = roi_test::random_case(g, variant, 40, 9, 7, 40);
    // The reference sees the rounded inputs; the outputs are rounded once when stored.
    check_roi_align_case<float16>(c, g, distill_test::tolerance{2e-3, 2e-3});
    check_roi_align_case<bfloat16>(c, g, distill_test::tolerance{2e-2, 1e-2});
  }
}

TEST_CASE("cuda roi_align: accumulate, invalid batch index, host memory refused", "[cuda][detection][roi_align]") {
  const int B = 1, C = 2, H = 5, W = 6, ph = 2, pw = 2;
  std::vector<float> x(B * C * H * W, 1.0f), go(2 * C * ph * pw, 1.0f);
  const std::vector<float> r = {0, 0, 0, 4, 4, /* batch 3 of 1: pools zeros, no gradient */ 3, 0, 0, 4, 4};
  device_buffer<float> dx(x), dr(r), dy(go.size()), dgo(go), dgx(x.size());
  REQUIRE(roi_align_forward(cuda{}, dx.view(B, C, H, W), dr.view(2, 5), dy.view(2, C, ph, pw)).ok());
  const auto y = dy.download();
  for (int i = 0; i < C * ph * pw; ++i) CHECK(y[i] == 1.0f);  // the mean of a constant map
  for (int i = C * ph * pw; i < 2 * C * ph * pw; ++i) CHECK(y[i] == 0.0f);
  REQUIRE(roi_align_backward(cuda{}, dr.view(1, 5), dgo.view(1, C, ph, pw), dgx.view(B, C, H, W)).ok());
  const auto once = dgx.download();
  roi_align_options acc;
  acc.accumulate = true;
  REQUIRE(roi_align_backward(cuda{}, dr.view(2, 5), dgo.view(2, C, ph, pw), dgx.view(B, C, H, W), acc).ok());
  const auto twice = dgx.download();
  for (std::size_t i = 0; i < once.size(); ++i) CHECK(twice[i] == 2.0f * once[i]);
  double total = 0;
  for (float v : once) total += v;
  CHECK(total == Approx(C * ph * pw));  // every sample's weights sum to 1 inside the map
  CHECK(roi_align_forward(cuda{}, make_view<cuda_space>(x.data(), B, C, H, W), dr.view(2, 5), dy.view(2, C, ph, pw)).code() ==
        errc::wrong_memory_space);
}
