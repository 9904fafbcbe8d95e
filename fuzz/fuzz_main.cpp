// SPDX-License-Identifier: MIT
// The libFuzzer binary (clang, -fsanitize=fuzzer,address,undefined): one binary for every
// target of targets.hpp, chosen by the environment variable DISTILL_FUZZ_TARGET
// (DISTILL_FUZZ_TARGET=list prints the names). scripts/fuzz.sh builds and runs it.
#include <cstdio>
#include <cstdlib>

#include "targets.hpp"

namespace {
const distill_fuzz::fuzz_target* target = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("DISTILL_FUZZ_TARGET");
  if (name && std::string_view(name) == "list") {
    for (const auto& t : distill_fuzz::fuzz_targets) std::printf("%s\n", t.name);
    std::exit(0);
  }
  target = name ? distill_fuzz::find_target(name) : nullptr;
  if (!target) {
    std::fprintf(stderr, "distill_fuzz: set DISTILL_FUZZ_TARGET to one of:");
    for (const auto& t : distill_fuzz::fuzz_targets) std::fprintf(stderr, " %s", t.name);
    std::fprintf(stderr, "\n");
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  target->run({data, size});
  return 0;
}
