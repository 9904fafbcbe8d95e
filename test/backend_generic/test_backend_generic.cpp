// SPDX-License-Identifier: MIT
// The backend-generic program (generic_program.hpp) built as CPU code and run on distill::cpu:
// every entry point of every family is called through code written once for both contexts.
#include <catch2/catch.hpp>

#include <cmath>

#include "generic_program.hpp"

TEST_CASE("one program, written for any context, runs every family on the CPU", "[backend_generic]") {
  const generic_test::results r = generic_test::run_program(distill::cpu{2});
  for (const auto& f : r.failures) FAIL_CHECK(f);
  CHECK(r.values.size() >= 50);
  for (const auto& [name, v] : r.values) {
    INFO(name);
    CHECK(!v.empty());
    bool written = true;  // outputs start as NaN: every element must have been written, and finite
    for (double x : v) written = written && std::isfinite(x);
    CHECK(written);
  }
  // the passes of a primitive agree: the forward's loss is the fused pass's, the backward's
  // gradient is the fused pass's
  CHECK(r.values.at("kl_teacher_student/forward") == r.values.at("kl_teacher_student/loss"));
  CHECK(r.values.at("kl_teacher_student/backward") == r.values.at("kl_teacher_student/grad"));
}
