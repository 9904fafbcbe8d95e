#!/usr/bin/env bash
# Installs the dependencies, builds everything (CUDA targets too when nvcc is present) and runs
# every test; then the reliability stage (sanitizers, fuzzing). CUDA tests report "skipped" on a
# machine without a GPU. The CPU tests run at the native instruction set and, on x86-64, again as
# an AVX2 (x86-64-v3) build, the SIMD families (losses, attention, relational) also as an SSE2
# (x86-64) one: ctest names <family>@<level> (DISTILL_TEST_ISA_LEVELS, DISTILL_TEST_ISA_FULL_LEVELS
# and DISTILL_TEST_ISA_FAMILIES in CMakeLists.txt).
#   bash scripts/test.sh              build in ./build
#   BUILD_DIR=/tmp/b bash scripts/test.sh
#   CMAKE_ARGS=-DDISTILL_TEST_ISA_LEVELS= bash scripts/test.sh    native level only
#   CMAKE_ARGS=-DDISTILL_TEST_ISA_FAMILIES=all bash scripts/test.sh  every CPU family at every level
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
# The compiled distill_cpu library is built too: the nn tests then run its instances.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_CPU_LIBRARY=ON -DDISTILL_CPU_MARCH=native ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"

# ---- reliability stage (docs/reliability.md) --------------------------------------------------
# The CPU tests again under AddressSanitizer + UndefinedBehaviorSanitizer (scripts/sanitize.sh,
# its own build folder, no CUDA), then libFuzzer over the rule parser and every file loader,
# FUZZ_SECONDS each (scripts/fuzz.sh; it fails where clang with libFuzzer is absent).
# DISTILL_SKIP_RELIABILITY=1 leaves the stage out (e.g. for a quick local run).
if [[ "${DISTILL_SKIP_RELIABILITY:-0}" != 1 ]]; then
  SANITIZE_BUILD_DIR=${SANITIZE_BUILD_DIR:-$build-sanitize} bash scripts/sanitize.sh
  FUZZ_BUILD_DIR=${FUZZ_BUILD_DIR:-$build-fuzz} bash scripts/fuzz.sh
fi
# ---- end of the reliability stage ---------------------------------------------------------------
