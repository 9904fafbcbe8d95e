// SPDX-License-Identifier: MIT
// RoI Align: hand-worked values on a linear feature map (bilinear sampling of a plane is exact),
// the library against the naive double reference over every option (aligned, adaptive and fixed
// sampling, spatial scale, rois partly or wholly outside the map, tiny rois), float and double;
// the reference backward and the library backward against central finite differences; the
// adjoint identity; bitwise determinism across thread counts; accumulate; bad input.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "detection/roi_align_cases.hpp"
#include "distill/detection/roi_align.hpp"
#include "reference/detection_ref.hpp"
#include "support/compare.hpp"
#include "support/finite_diff.hpp"
#include "support/guarded.hpp"
#include "support/random.hpp"

using namespace distill;
using roi_test::flat_rois;
using roi_test::random_case;
using roi_test::random_rois;
using roi_test::roi_case;

namespace {

template <class T>
std::vector<T> run_forward(const roi_case& c, const std::vector<T>& x, int threads = 2) {
  const auto r = flat_rois<T>(c.rois);
  const int K = static_cast<int>(c.rois.size());
  std::vector<T> out(static_cast<std::size_t>(K) * c.C * c.ph * c.pw, T(-1));
  const status st = roi_align_forward(cpu{threads}, make_view(x.data(), c.B, c.C, c.H, c.W), make_view(r.data(), K, 5),
                                      make_view(out.data(), K, c.C, c.ph, c.pw), c.opt());
  INFO(st.to_string());
  REQUIRE(st.ok());
  return out;
}

template <class T>
std::vector<T> run_backward(const roi_case& c, const std::vector<T>& grad_out, int threads = 2) {
  const auto r = flat_rois<T>(c.rois);
  const int K = static_cast<int>(c.rois.size());
  std::vector<T> grad(static_cast<std::size_t>(c.B) * c.C * c.H * c.W, T(123));
  const status st = roi_align_backward(cpu{threads}, make_view(r.data(), K, 5), make_view(grad_out.data(), K, c.C, c.ph, c.pw),
                                       make_view(grad.data(), c.B, c.C, c.H, c.W), c.opt());
  INFO(st.to_string());
  REQUIRE(st.ok());
  return grad;
}

}  // namespace

TEST_CASE("roi_align: hand-worked values on a linear map", "[detection][roi_align]") {
  // f(y, x) = 4 y + x on a 4 x 4 map. Bilinear sampling of a plane is exact and the 2 x 2 samples
  // of a bin are symmetric about its centre, so each output is f at the bin centre.
  std::vector<double> x(16);
  for (int y = 0; y < 4; ++y)
    for (int z = 0; z < 4; ++z) x[y * 4 + z] = 4.0 * y + z;
  roi_case c{1, 1, 4, 4, 2, 2, {{0, 0.5, 0.5, 2.5, 2.5}}, {1.0, 2, false}};
  CHECK(run_forward(c, x) == std::vector<double>{5, 6, 9, 10});  // bin centres (1,1) (1,2) (2,1) (2,2)
  c.ref.aligned = true;  // shifted by half a pixel: centres (0.5,0.5) (0.5,1.5) ...
  CHECK(run_forward(c, x) == std::vector<double>{2.5, 3.5, 6.5, 7.5});
  c.ref = {0.5, 2, false};  // image coordinates twice the map's: the same roi in map cells (0.25..1.25)
  c.rois = {{0, 0.5, 0.5, 2.5, 2.5}};  // not aligned, height 1 -> bins of 0.5: centres 0.5 and 1.0
  CHECK(run_forward(c, x) == std::vector<double>{2.5, 3.0, 4.5, 5.0});
  c.ref = {1.0, -1, false};
  c.rois = {{0, 10, 10, 12, 12}};  // every sample beyond W + 1: zeros
  CHECK(run_forward(c, x) == std::vector<double>{0, 0, 0, 0});
}

TEMPLATE_TEST_CASE("roi_align: forward and backward against the reference", "[detection][roi_align]", float, double) {
  using T = TestType;
  const auto tolerance = std::is_same_v<T, float> ? distill_test::tolerance{1e-5, 1e-5} : distill_test::tol::f64;
  distill_test::rng g(31);
  for (int variant = 0; variant < 36; ++variant) {
    const roi_case c = random_case(g, variant);
    INFO("variant " << variant << ": B " << c.B << " C " << c.C << " H " << c.H << " W " << c.W << " ph " << c.ph << " pw " << c.pw
                    << " K " << c.rois.size() << " scale " << c.ref.scale << " sampling " << c.ref.sampling_ratio << " aligned "
                    << c.ref.aligned);
    distill_ref::feature_map_ref x{c.B, c.C, c.H, c.W, g.normals(static_cast<std::size_t>(c.B) * c.C * c.H * c.W)};
    const auto expected = distill_ref::roi_align_forward_ref(x, c.rois, c.ph, c.pw, c.ref);
    const std::vector<T> xt(x.v.begin(), x.v.end());
    CHECK_CLOSE("forward", run_forward(c, xt), expected, tolerance);

    const auto go = g.normals(expected.size());
    const auto expected_grad = distill_ref::roi_align_backward_ref(c.B, c.C, c.H, c.W, c.rois, go, c.ph, c.pw, c.ref);
    const std::vector<T> got(go.begin(), go.end());
    CHECK_CLOSE("backward", run_backward(c, got), expected_grad.v, tolerance);
  }
}

TEST_CASE("roi_align: backward against finite differences, adjoint identity", "[detection][roi_align]") {
  distill_test::rng g(32);
  for (int variant = 0; variant < 8; ++variant) {
    const roi_case c = random_case(g, variant);
    INFO("variant " << variant);
    const std::vector<double> x = g.normals(static_cast<std::size_t>(c.B) * c.C * c.H * c.W);
    const std::vector<double> go = g.normals(c.rois.size() * c.C * c.ph * c.pw);
    auto loss_lib = [&](const std::vector<double>& v) {
      const auto y = run_forward(c, v, 1);
      double s = 0;
      for (std::size_t i = 0; i < y.size(); ++i) s += go[i] * y[i];
      return s;
    };
    auto loss_ref = [&](const std::vector<double>& v) {
      const auto y = distill_ref::roi_align_forward_ref({c.B, c.C, c.H, c.W, v}, c.rois, c.ph, c.pw, c.ref);
      double s = 0;
      for (std::size_t i = 0; i < y.size(); ++i) s += go[i] * y[i];
      return s;
    };
    const auto numeric = distill_test::numeric_gradient(loss_ref, x);
    CHECK_CLOSE("reference backward vs finite differences",
                distill_ref::roi_align_backward_ref(c.B, c.C, c.H, c.W, c.rois, go, c.ph, c.pw, c.ref).v, numeric, distill_test::tol::fd);
    const auto grad = run_backward(c, go);
    CHECK_CLOSE("library backward vs finite differences", grad, distill_test::numeric_gradient(loss_lib, x), distill_test::tol::fd);
    double adjoint = 0;
    for (std::size_t i = 0; i < x.size(); ++i) adjoint += grad[i] * x[i];
    CHECK_CLOSE_SCALAR("<dL/dx, x> = <dL/dy, y>", adjoint, loss_lib(x), distill_test::tol::f64);
  }
}

TEST_CASE("roi_align: the CUDA backward's gather form equals the reference backward", "[detection][roi_align]") {
  // The CUDA backward sums, per input cell, the samples that read it: rois filtered by
  // cells_touched, samples bounded by samples_touching, weighed by weight_of_cell. Run the same
  // scalar functions here (in float, as the kernel) so their math is tested without a GPU.
  namespace rd = roi_align_detail;
  distill_test::rng g(34);
  for (int variant = 0; variant < 24; ++variant) {
    const roi_case c = random_case(g, variant, 12, 2, 5, 12);
    INFO("variant " << variant);
    const auto go = g.normals(c.rois.size() * c.C * c.ph * c.pw);
    std::vector<double> gathered(static_cast<std::size_t>(c.B) * c.C * c.H * c.W, 0.0);
    for (int b = 0; b < c.B; ++b)
      for (int ch = 0; ch < c.C; ++ch)
        for (int y = 0; y < c.H; ++y)
          for (int x = 0; x < c.W; ++x) {
            double acc = 0;
            for (std::size_t k = 0; k < c.rois.size(); ++k) {
              float r[5];
              for (int i = 0; i < 5; ++i) r[i] = static_cast<float>(c.rois[k][i]);
              const rd::geometry<float> q = rd::geometry_of(r, c.B, static_cast<float>(c.ref.scale), c.ref.aligned, c.ph, c.pw, c.ref.sampling_ratio);
              if (q.batch != b || q.grid_h <= 0 || q.grid_w <= 0) continue;
              int r0, r1, q0, q1;
              rd::cells_touched(q.start_h, q.bin_h * static_cast<float>(c.ph), c.H, r0, r1);
              rd::cells_touched(q.start_w, q.bin_w * static_cast<float>(c.pw), c.W, q0, q1);
              if (y < r0 || y > r1 || x < q0 || x > q1) continue;  // the tile filter, at cell granularity
              int sy0, sy1, sx0, sx1;
              rd::samples_touching(q.start_h, q.bin_h, q.grid_h, c.ph, c.H, y, sy0, sy1);
              rd::samples_touching(q.start_w, q.bin_w, q.grid_w, c.pw, c.W, x, sx0, sx1);
              for (int sy = sy0; sy <= sy1; ++sy)
                for (int sx = sx0; sx <= sx1; ++sx) {
                  const int p = sy / q.grid_h, qq = sx / q.grid_w;
                  const float wy = rd::weight_of_cell(rd::sample_position(q.start_h, q.bin_h, q.grid_h, p, sy % q.grid_h), c.H, y);
                  const float wx = rd::weight_of_cell(rd::sample_position(q.start_w, q.bin_w, q.grid_w, qq, sx % q.grid_w), c.W, x);
                  acc += double(wy) * wx * q.inv_count * go[((k * c.C + ch) * c.ph + p) * c.pw + qq];
                }
            }
            gathered[((static_cast<std::size_t>(b) * c.C + ch) * c.H + y) * c.W + x] = acc;
          }
    CHECK_CLOSE("gather", gathered, distill_ref::roi_align_backward_ref(c.B, c.C, c.H, c.W, c.rois, go, c.ph, c.pw, c.ref).v,
                (distill_test::tolerance{1e-5, 1e-5}));
  }
}

TEST_CASE("roi_align: deterministic across thread counts; accumulate; strided views", "[detection][roi_align]") {
  distill_test::rng g(33);
  roi_case c{2, 5, 12, 13, 3, 4, {}, {0.5, -1, true}};
  c.rois = random_rois(g, 40, c.B, c.H, c.W, c.ref.scale);
  const std::vector<float> go = g.normals<float>(c.rois.size() * c.C * c.ph * c.pw);
  const auto one = run_backward(c, go, 1), two = run_backward(c, go, 2), three = run_backward(c, go, 3);
  CHECK(one == two);
  CHECK(one == three);

  // accumulate adds into what is there.
  const auto r = flat_rois<float>(c.rois);
  const int K = static_cast<int>(c.rois.size());
  std::vector<float> acc(one.size(), 2.0f);
  roi_align_options o = c.opt();
  o.accumulate = true;
  REQUIRE(roi_align_backward(cpu{2}, make_view(r.data(), K, 5), make_view(go.data(), K, c.C, c.ph, c.pw),
                             make_view(acc.data(), c.B, c.C, c.H, c.W), o)
              .ok());
  for (std::size_t i = 0; i < acc.size(); ++i) acc[i] -= 2.0f;
  CHECK_CLOSE("accumulate", acc, one, (distill_test::tolerance{1e-5, 1e-5}));  // each add rounds at the scale of 2

  // A strided output (channel stride padded) gets the same values and leaves the padding alone.
  const std::vector<float> x = g.normals<float>(static_cast<std::size_t>(c.B) * c.C * c.H * c.W);
  const auto dense = run_forward(c, x);
  const index_t plane = c.ph * c.pw, cs = plane + 2;
  distill_test::guarded<float> out(static_cast<std::size_t>(K) * c.C * cs);
  REQUIRE(roi_align_forward(cpu{2}, make_view(x.data(), c.B, c.C, c.H, c.W), make_view(r.data(), K, 5),
                            make_strided_view(out.data(), std::array<index_t, 4>{K, c.C, c.ph, c.pw},
                                              std::array<index_t, 4>{c.C * cs, cs, c.pw, 1}),
                            c.opt())
              .ok());
  std::vector<float> strided;
  for (int k = 0; k < K * c.C; ++k)
    for (index_t i = 0; i < plane; ++i) strided.push_back(out.data()[k * cs + i]);
  CHECK(strided == dense);
  CHECK(out.intact());
  CHECK(out.padding_intact(static_cast<std::size_t>(K) * c.C, plane, cs));
}

TEST_CASE("roi_align: bad input is refused with its error code", "[detection][roi_align][errors]") {
  std::vector<double> x(2 * 3 * 4 * 4, 1.0), out(1 * 3 * 2 * 2);
  auto fwd = [&](const std::vector<double>& r, index_t ph = 2, roi_align_options o = {}) {
    return roi_align_forward(cpu{1}, make_view(x.data(), 2, 3, 4, 4), make_view(r.data(), 1, 5), make_view(out.data(), 1, 3, ph, 2), o).code();
  };
  CHECK(fwd({0, 0, 0, 2, 2}) == errc::ok);
  CHECK(fwd({2, 0, 0, 2, 2}) == errc::invalid_argument);    // batch index out of range
  CHECK(fwd({0.5, 0, 0, 2, 2}) == errc::invalid_argument);  // not an integer
  CHECK(fwd({-1, 0, 0, 2, 2}) == errc::invalid_argument);
  CHECK(fwd({0, 3, 0, 2, 2}) == errc::invalid_argument);  // inverted
  CHECK(fwd({0, 0, std::numeric_limits<double>::infinity(), 2, 2}) == errc::non_finite);
  CHECK(fwd({0, 0, 0, 2, 2}, 1) == errc::ok);
  roi_align_options bad;
  bad.spatial_scale = 0;
  CHECK(fwd({0, 0, 0, 2, 2}, 2, bad) == errc::invalid_argument);
  const std::vector<double> r = {0, 0, 0, 2, 2};
  CHECK(roi_align_forward(cpu{1}, make_view(x.data(), 2, 3, 4, 4), make_view(r.data(), 1, 5), make_view(out.data(), 1, 2, 3, 2)).code() ==
        errc::shape_mismatch);  // wrong channel count
  CHECK(roi_align_forward(cpu{1}, make_view(x.data(), 2, 3, 4, 4), make_view(r.data(), 1, 4), make_view(out.data(), 1, 3, 2, 2)).code() ==
        errc::shape_mismatch);  // rois not [K, 5]
  CHECK(roi_align_backward(cpu{1}, make_view(r.data(), 1, 5), make_view(out.data(), 1, 3, 2, 2), make_view(x.data(), 2, 2, 6, 4)).code() ==
        errc::shape_mismatch);
  // No rois: the backward writes zeros.
  std::vector<double> grad(x.size(), 5.0);
  REQUIRE(roi_align_backward(cpu{1}, host_view<const double, 2>(nullptr, {0, 5}, {5, 1}), host_view<const double, 4>(nullptr, {0, 3, 2, 2}, {12, 4, 2, 1}),
                             make_view(grad.data(), 2, 3, 4, 4))
              .ok());
  CHECK(grad == std::vector<double>(x.size(), 0.0));
}
