// SPDX-License-Identifier: MIT
// Multi-label sigmoid soft targets on CUDA: every reduction and optional input against the
// double reference (float; float16 and bfloat16 logits with their tolerances), forward /
// backward / fused agreeing, bitwise reproducible, +-1e4 logits, missing workspace refused.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "distill/losses/multilabel_soft_target.hpp"
#include "reference/multilabel_ref.hpp"
#include "support/compare.hpp"
#include "support/device_buffer.cuh"
#include "support/random.hpp"

using namespace distill;
using distill_test::device_buffer;

namespace {

constexpr reduction reductions[] = {reduction::none, reduction::sum, reduction::mean, reduction::batchmean};

template <class T>
void check_case(distill_test::rng& g, int variant, distill_test::tolerance tolerance) {
  const int N = variant % 5 == 0 ? 1 : static_cast<int>(g.integer(2, 700)), C = static_cast<int>(g.integer(1, 100));
  const bool labels = variant % 2 == 0, mask = variant % 3 == 0, weights = variant % 4 < 2;
  distill_ref::multilabel_ref_inputs in{N, C, {}, {}, {}, {}, {}, {}, {}};
  std::vector<T> s, t;
  for (int i = 0; i < N * C; ++i) {  // rounded to T first: the reference sees what the kernel reads
    s.push_back(store<T>(static_cast<float>(g.normal(0, 3)))), t.push_back(store<T>(static_cast<float>(g.normal(0, 3))));
    in.student.push_back(load<float>(s.back())), in.teacher.push_back(load<float>(t.back()));
    if (labels) in.labels.push_back(g.coin(0.3) ? 1 : 0);
    if (mask) in.mask.push_back(g.coin(0.8) ? 1 : 0);
  }
  std::vector<float> rw, cw, pw;
  if (weights) {
    rw = g.uniforms<float>(N, 0, 2), cw = g.uniforms<float>(C, 0.1, 2), pw = g.uniforms<float>(C, 0.5, 4);
    in.row_weights.assign(rw.begin(), rw.end()), in.class_weights.assign(cw.begin(), cw.end()), in.pos_weights.assign(pw.begin(), pw.end());
  }
  auto f = [&](double lo, double hi) { return static_cast<double>(static_cast<float>(g.uniform(lo, hi))); };
  const distill_ref::multilabel_ref_options o{f(0.5, 6), variant % 4 < 2, variant % 4, f(0, 2), labels ? f(0, 2) : 0.0, f(0.5, 2), variant % 6 == 1};
  multilabel_soft_target_options opt;
  opt.temperature = static_cast<float>(o.T), opt.scale_by_t_squared = o.t_squared, opt.reduction = reductions[o.reduction];
  opt.soft_weight = static_cast<float>(o.soft_weight), opt.hard_label_weight = static_cast<float>(o.hard_weight);
  opt.grad_scale = static_cast<float>(o.grad_scale), opt.subtract_teacher_entropy = o.kl;

  device_buffer<T> ds(s), dt(t), dg(s.size()), dg2(s.size());
  device_buffer<std::uint8_t> dl(in.labels), dm(in.mask);
  device_buffer<float> drw(rw), dcw(cw), dpw(pw);
  const int L = o.reduction == 0 ? N : 1;
  device_buffer<float> dloss(L), dloss2(L);
  device_buffer<std::byte> ws(multilabel_soft_target_workspace_size(cuda{}, N, C));
  multilabel_soft_target_cuda_inputs<float> inputs;
  if (labels) inputs.labels = dl.view(N, C);
  if (mask) inputs.mask = dm.view(N, C);
  if (weights) inputs.row_weights = drw.view(N), inputs.class_weights = dcw.view(C), inputs.pos_weights = dpw.view(C);
  REQUIRE(multilabel_soft_target_forward_backward(cuda{}, ds.view(N, C), dt.view(N, C), inputs, dloss.view(L), dg.view(N, C),
                                                  ws.view(ws.size()), opt)
              .ok());
  distill_test::cuda_sync();
  std::vector<double> expected_grad;
  const auto expected = distill_ref::multilabel_ref(in, o, &expected_grad);
  INFO("variant " << variant << " N " << N << " C " << C << " reduction " << o.reduction);
  CHECK_CLOSE("loss", dloss.download(), expected, tolerance);
  std::vector<double> grad;
  for (const T& x : dg.download()) grad.push_back(load<float>(x));
  CHECK_CLOSE("grad", grad, expected_grad, tolerance);
  // Separate passes give the same bits as the fused one, and a rerun the same bits again.
  REQUIRE(multilabel_soft_target_forward(cuda{}, ds.view(N, C), dt.view(N, C), inputs, dloss2.view(L), ws.view(ws.size()), opt).ok());
  REQUIRE(multilabel_soft_target_backward(cuda{}, ds.view(N, C), dt.view(N, C), inputs, dg2.view(N, C), ws.view(ws.size()), opt).ok());
  const auto a = dloss.download(), b = dloss2.download();
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  const auto ga = dg.download(), gb = dg2.download();
  CHECK(std::memcmp(ga.data(), gb.data(), ga.size() * sizeof(T)) == 0);
}

}  // namespace

TEST_CASE("cuda multilabel soft target: against the reference", "[cuda][multilabel]") {
  distill_test::rng g(61);
  for (int variant = 0; variant < 24; ++variant) check_case<float>(g, variant, distill_test::tol::f32_sum);
  // 16-bit logits are rounded before the reference sees them; the gradient is rounded when stored.
  for (int variant = 0; variant < 8; ++variant) check_case<float16>(g, variant, distill_test::tolerance{1e-3, 5e-3});
  for (int variant = 0; variant < 8; ++variant) check_case<bfloat16>(g, variant, distill_test::tolerance{1e-2, 2e-2});
}

TEST_CASE("cuda multilabel soft target: extreme logits, workspace rules", "[cuda][multilabel]") {
  const std::vector<float> s = {1e4f, -1e4f, 1e4f, -1e4f}, t = {1e4f, -1e4f, -1e4f, 1e4f};
  device_buffer<float> ds(s), dt(t), dg(4), dloss(4);
  multilabel_soft_target_options o;
  o.temperature = 2, o.scale_by_t_squared = false, o.reduction = reduction::none;
  REQUIRE(multilabel_soft_target_forward_backward(cuda{}, ds.view(4, 1), dt.view(4, 1), {}, dloss.view(4), dg.view(4, 1), {}, o).ok());
  CHECK_CLOSE("loss", dloss.download(), (std::vector<double>{0, 0, 5000, 5000}), (distill_test::tolerance{1e-6, 1e-6}));
  CHECK_CLOSE("grad", dg.download(), (std::vector<double>{0, 0, 0.5, -0.5}), (distill_test::tolerance{1e-7, 1e-6}));
  o.reduction = reduction::sum;  // a reduced loss needs the workspace
  CHECK(multilabel_soft_target_forward(cuda{}, ds.view(4, 1), dt.view(4, 1), {}, dloss.view(1), {}, o).code() == errc::invalid_argument);
  CHECK(multilabel_soft_target_backward(cuda{}, ds.view(4, 1), dt.view(4, 1), {}, dg.view(4, 1), {}, o).ok());  // a gradient does not
}
