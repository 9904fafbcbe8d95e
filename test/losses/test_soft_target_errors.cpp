// SPDX-License-Identifier: MIT
// Every bad input of the dense soft-target losses gets its error code and a message naming the
// argument, and nothing is written.
#include <catch2/catch.hpp>

#include <limits>
#include <string>
#include <vector>

#include "soft_target_test_util.hpp"

using namespace distill;
using namespace st_test;

namespace {

struct fixture {
  std::size_t n = 4, c = 6;
  std::vector<float> s = std::vector<float>(24, 0.5f), t = std::vector<float>(24, 0.25f), grad = std::vector<float>(24, 7.0f);
  std::vector<float> loss = std::vector<float>(4, 7.0f);
  std::vector<std::int64_t> labels = {0, 1, -100, 5};
  auto sv() const { return make_view(s.data(), n, c); }
  auto tv() const { return make_view(t.data(), n, c); }
  auto lv(std::size_t m = 1) { return make_view(loss.data(), m); }
  auto gv() { return make_view(grad.data(), n, c); }
  bool untouched() const {
    for (float v : grad)
      if (v != 7.0f) return false;
    for (float v : loss)
      if (v != 7.0f) return false;
    return true;
  }
};

void expect(const status& st, errc code, const std::string& fragment) {
  INFO(st.to_string());
  CHECK(st.code() == code);
  CHECK(st.message().find(fragment) != std::string::npos);
}

}  // namespace

TEST_CASE("bad shapes are refused", "[soft_target][errors]") {
  fixture f;
  soft_target_options o;
  // class-count mismatch
  expect(kl_teacher_student_forward_backward(cpu{1}, f.sv(), make_view(f.t.data(), 4, 5), f.lv(), f.gv(), {}, {}, o),
         errc::shape_mismatch, "class-count mismatch: 'teacher' has 5 classes but 'student' has 6");
  // row mismatch
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), make_view(f.t.data(), 3, 6), f.lv(), {}, {}, o), errc::shape_mismatch,
         "'teacher' has 3 rows but 'student' has 4");
  // empty batch and zero classes
  expect(kl_teacher_student_forward(cpu{1}, make_view(f.s.data(), 0, 6), make_view(f.t.data(), 0, 6), f.lv(), {}, {}, o),
         errc::shape_mismatch, "every extent must be > 0");
  expect(jsd_forward(cpu{1}, make_view(f.s.data(), 4, 0), make_view(f.t.data(), 4, 0), f.lv(), {}, {}, jsd_options{}),
         errc::shape_mismatch, "every extent must be > 0");
  // gradient of the wrong shape
  expect(kl_teacher_student_backward(cpu{1}, f.sv(), f.tv(), make_view(f.grad.data(), 4, 5), {}, {}, o), errc::shape_mismatch,
         "'grad_student' has shape [4, 5] but 'student' has shape [4, 6]");
  // loss of the wrong extent
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(4), {}, {}, o), errc::shape_mismatch, "'loss'");
  o.reduction = reduction::none;
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(1), {}, {}, o), errc::shape_mismatch, "reduction none");
  // labels, weights, diagnostics of the wrong length
  soft_target_host_extras<float> ex;
  ex.labels = make_view(static_cast<const std::int64_t*>(f.labels.data()), 3);
  o.reduction = reduction::batchmean;
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, o), errc::shape_mismatch, "'labels'");
  ex = {};
  std::vector<float> w(3, 1.0f);
  ex.row_weights = make_view(static_cast<const float*>(w.data()), 3);
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, o), errc::shape_mismatch, "'row_weights'");
  ex = {};
  ex.row_kl = make_view(w.data(), 3);
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, o), errc::shape_mismatch, "'row_kl'");
  // missing required views
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), host_view<float, 1>{}, {}, {}, o), errc::invalid_argument, "'loss'");
  expect(kl_teacher_student_backward(cpu{1}, f.sv(), f.tv(), host_view<float, 2>{}, {}, {}, o), errc::invalid_argument,
         "'grad_student'");
  expect(kl_teacher_student_forward(cpu{1}, host_view<const float, 2>{}, f.tv(), f.lv(), {}, {}, o), errc::invalid_argument,
         "'student'");
  CHECK(f.untouched());
}

TEST_CASE("bad options are refused", "[soft_target][errors]") {
  fixture f;
  for (float t : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    soft_target_options o;
    o.temperature = t;
    expect(kl_teacher_student_forward_backward(cpu{1}, f.sv(), f.tv(), f.lv(), f.gv(), {}, {}, o), errc::invalid_argument,
           "'temperature' must be finite and > 0");
  }
  for (float b : {-0.1f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
    jsd_options o;
    o.beta = b;
    expect(jsd_forward_backward(cpu{1}, f.sv(), f.tv(), f.lv(), f.gv(), {}, {}, o), errc::invalid_argument, "'beta' must be in [0, 1]");
  }
  soft_target_options o;
  o.hard_label_weight = 0.5f;
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), {}, {}, o), errc::invalid_argument,
         "'hard_label_weight' is non-zero but no 'labels' were given");
  o = {};
  o.soft_weight = std::numeric_limits<float>::infinity();
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), {}, {}, o), errc::invalid_argument, "'soft_weight' must be finite");
  // a normalizer only divides mean / batchmean
  o = {};
  o.reduction = reduction::sum;
  float d = 4;
  soft_target_host_extras<float> ex;
  ex.normalizer = make_view(static_cast<const float*>(&d), 1);
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, o), errc::invalid_argument, "'normalizer'");
  o.reduction = reduction::mean;
  d = -1;
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, o), errc::invalid_argument, "'normalizer' must be finite and >= 0");
  // a learnable temperature must be positive too
  float tt = -2;
  ex = {};
  ex.temperature = make_view(static_cast<const float*>(&tt), 1);
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, soft_target_options{}), errc::invalid_argument,
         "'temperature'");
  // grad_temperature from a forward
  ex = {};
  ex.grad_temperature = make_view(&tt, 1);
  expect(kl_teacher_student_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, soft_target_options{}), errc::invalid_argument,
         "'grad_temperature'");
  // DKD needs labels and 2 classes
  expect(dkd_forward(cpu{1}, f.sv(), f.tv(), f.lv(), {}, {}, dkd_options{}), errc::invalid_argument, "'labels' are required");
  std::vector<std::int64_t> zeros(4, 0);
  ex = {};
  ex.labels = make_view(static_cast<const std::int64_t*>(zeros.data()), 4);
  expect(dkd_forward(cpu{1}, make_view(f.s.data(), 4, 1), make_view(f.t.data(), 4, 1), f.lv(), ex, {}, dkd_options{}),
         errc::shape_mismatch, "at least 2 classes");
  CHECK(f.untouched());
}

TEST_CASE("labels out of range are refused on the CPU", "[soft_target][errors]") {
  fixture f;
  for (std::int64_t bad : {std::int64_t(6), std::int64_t(-1), std::int64_t(1000)}) {
    f.labels[1] = bad;
    soft_target_host_extras<float> ex;
    ex.labels = make_view(static_cast<const std::int64_t*>(f.labels.data()), 4);
    soft_target_options o;
    o.hard_label_weight = 0.3f;
    expect(kl_teacher_student_forward_backward(cpu{1}, f.sv(), f.tv(), f.lv(), f.gv(), ex, {}, o), errc::invalid_argument,
           "label " + std::to_string(bad) + " of row 1 is outside [0, 6)");
    dkd_options d;
    expect(dkd_forward(cpu{1}, f.sv(), f.tv(), f.lv(), ex, {}, d), errc::invalid_argument, "of row 1 is outside");
  }
  CHECK(f.untouched());
}

TEST_CASE("misaligned pointers, negative strides and overlapping outputs are refused", "[soft_target][errors]") {
  fixture f;
  soft_target_options o;
  // a float view one byte off its alignment
  std::vector<unsigned char> raw(24 * sizeof(float) + 8);
  const float* off = reinterpret_cast<const float*>(raw.data() + 1);
  expect(kl_teacher_student_forward(cpu{1}, make_view(off, 4, 6), f.tv(), f.lv(), {}, {}, o), errc::misaligned, "'student' is not aligned");
  // negative stride
  auto neg = make_strided_view(f.s.data() + 18, std::array<index_t, 2>{4, 6}, std::array<index_t, 2>{-6, 1});
  expect(kl_teacher_student_forward(cpu{1}, neg, f.tv(), f.lv(), {}, {}, o), errc::unsupported_layout, "negative stride");
  // gradient overlapping the teacher, or partially overlapping the student
  expect(kl_teacher_student_backward(cpu{1}, f.sv(), f.tv(), make_view(f.t.data(), 4, 6), {}, {}, o), errc::invalid_argument,
         "'grad_student' overlaps 'teacher'");
  std::vector<float> shared(30, 0.0f);
  expect(kl_teacher_student_backward(cpu{1}, make_view(static_cast<const float*>(shared.data()), 4, 6), f.tv(),
                                     make_view(shared.data() + 6, 4, 6), {}, {}, o),
         errc::invalid_argument, "partially overlaps 'student'");
  // accumulate into the student's own memory makes no sense
  o.accumulate = true;
  std::vector<float> s2 = f.s;
  expect(kl_teacher_student_backward(cpu{1}, make_view(static_cast<const float*>(s2.data()), 4, 6), f.tv(),
                                     make_view(s2.data(), 4, 6), {}, {}, o),
         errc::invalid_argument, "'accumulate' cannot be combined with an in-place gradient");
  CHECK(f.untouched());
}
