// SPDX-License-Identifier: MIT
// The code snippets of docs/integration.md, compiled and checked: raw host pointers with padded
// rows, Eigen matrices (row- and column-major), xtensor arrays. Each computes the same loss and
// gradient as a plain contiguous call, which the test compares against (and which the dense tests
// compare against the double reference).
#include <catch2/catch.hpp>

#include <Eigen/Core>
#include <cstdint>
#include <vector>
#include <xtensor/xtensor.hpp>

#include "distill/interop/eigen.hpp"
#include "distill/interop/xtensor.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace {

constexpr distill::index_t N = 6, C = 11;

struct baseline {
  std::vector<float> s, t, grad;
  float loss = 0;
};

baseline make_baseline() {
  distill_test::rng g(77);
  baseline b{g.normals<float>(N * C), g.normals<float>(N * C), std::vector<float>(N * C), 0};
  distill::soft_target_options opt;
  opt.temperature = 2.0f;
  distill::throw_if_error(distill::kl_teacher_student_forward_backward(
      distill::cpu{1}, distill::make_view(static_cast<const float*>(b.s.data()), N, C),
      distill::make_view(static_cast<const float*>(b.t.data()), N, C), distill::make_view(&b.loss, 1),
      distill::make_view(b.grad.data(), N, C), {}, {}, opt));
  return b;
}

}  // namespace

TEST_CASE("integration snippet: raw host pointers with padded rows", "[soft_target][integration]") {
  const baseline b = make_baseline();
  const distill::index_t ld = C + 5;  // the engine pads its rows
  std::vector<float> engine_student(N * ld), engine_teacher(N * ld), engine_grad(N * ld);
  for (distill::index_t r = 0; r < N; ++r)
    for (distill::index_t k = 0; k < C; ++k)
      engine_student[r * ld + k] = b.s[r * C + k], engine_teacher[r * ld + k] = b.t[r * C + k];
  const float* student = engine_student.data();
  const float* teacher = engine_teacher.data();
  float* dlogits = engine_grad.data();

  // --- docs/integration.md: raw host pointers ---
  auto s = distill::make_strided_view(student, std::array<distill::index_t, 2>{N, C}, std::array<distill::index_t, 2>{ld, 1});
  auto t = distill::make_strided_view(teacher, std::array<distill::index_t, 2>{N, C}, std::array<distill::index_t, 2>{ld, 1});
  auto g = distill::make_strided_view(dlogits, std::array<distill::index_t, 2>{N, C}, std::array<distill::index_t, 2>{ld, 1});
  float loss = 0.0f;
  distill::soft_target_options opt;
  opt.temperature = 2.0f;
  const distill::status st = distill::kl_teacher_student_forward_backward(distill::cpu{2}, s, t, distill::make_view(&loss, 1), g, {}, {}, opt);
  if (!st.ok()) std::fprintf(stderr, "%s\n", st.to_string().c_str());
  // --- end ---

  REQUIRE(st.ok());
  CHECK(loss == b.loss);
  for (distill::index_t r = 0; r < N; ++r)
    for (distill::index_t k = 0; k < C; ++k) CHECK(engine_grad[r * ld + k] == b.grad[r * C + k]);
}

TEST_CASE("integration snippet: Eigen matrices", "[soft_target][integration]") {
  const baseline b = make_baseline();
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMajor student = Eigen::Map<const RowMajor>(b.s.data(), N, C);
  RowMajor teacher = Eigen::Map<const RowMajor>(b.t.data(), N, C);

  // --- docs/integration.md: Eigen ---
  RowMajor grad(student.rows(), student.cols());
  float loss = 0.0f;
  distill::soft_target_options opt;
  opt.temperature = 2.0f;
  distill::throw_if_error(distill::kl_teacher_student_forward_backward(
      distill::cpu{2}, distill::from_eigen(std::as_const(student)), distill::from_eigen(std::as_const(teacher)),
      distill::make_view(&loss, 1), distill::from_eigen(grad), {}, {}, opt));
  // --- end ---

  CHECK(loss == b.loss);
  CHECK_CLOSE("Eigen row-major gradient", std::vector<float>(grad.data(), grad.data() + N * C), b.grad,
              (distill_test::tolerance{0, 0}));
  // column-major storage is a strided view (unit stride down the rows): correct, just slower
  Eigen::MatrixXf cs = student, ct = teacher, cg(N, C);
  float loss_cm = 0.0f;
  distill::throw_if_error(distill::kl_teacher_student_forward_backward(
      distill::cpu{2}, distill::from_eigen(std::as_const(cs)), distill::from_eigen(std::as_const(ct)),
      distill::make_view(&loss_cm, 1), distill::from_eigen(cg), {}, {}, opt));
  // (short row-major rows run "rows in lanes", strided ones row by row: same values up to rounding)
  CHECK(loss_cm == Approx(b.loss).epsilon(1e-6));
  RowMajor cg_rows = cg;
  CHECK_CLOSE("Eigen column-major gradient", std::vector<float>(cg_rows.data(), cg_rows.data() + N * C), b.grad,
              (distill_test::tolerance{1e-8, 1e-5}));
}

TEST_CASE("integration snippet: xtensor arrays", "[soft_target][integration]") {
  const baseline b = make_baseline();
  xt::xtensor<float, 2> student = xt::zeros<float>({N, C}), teacher = xt::zeros<float>({N, C});
  std::copy(b.s.begin(), b.s.end(), student.begin());
  std::copy(b.t.begin(), b.t.end(), teacher.begin());

  // --- docs/integration.md: xtensor ---
  xt::xtensor<float, 2> grad = xt::zeros<float>({N, C});
  xt::xtensor<float, 1> loss = xt::zeros<float>({1});
  distill::soft_target_options opt;
  opt.temperature = 2.0f;
  distill::throw_if_error(distill::kl_teacher_student_forward_backward(
      distill::cpu{2}, distill::from_xtensor(std::as_const(student)), distill::from_xtensor(std::as_const(teacher)),
      distill::from_xtensor(loss), distill::from_xtensor(grad), {}, {}, opt));
  // --- end ---

  CHECK(loss(0) == b.loss);
  CHECK_CLOSE("xtensor gradient", std::vector<float>(grad.begin(), grad.end()), b.grad, (distill_test::tolerance{0, 0}));
}
