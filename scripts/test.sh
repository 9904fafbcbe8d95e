#!/usr/bin/env bash
# Installs the dependencies, builds everything (CUDA targets too when nvcc is present) and runs
# every test. CUDA tests report "skipped" on a machine without a GPU. The CPU tests run at the
# native instruction set and, on x86-64, the SIMD families (losses, attention, relational) again
# as AVX2 (x86-64-v3) and SSE2 (x86-64) builds: ctest names <family>@<level>
# (DISTILL_TEST_ISA_LEVELS and DISTILL_TEST_ISA_FAMILIES in CMakeLists.txt).
#   bash scripts/test.sh              build in ./build
#   BUILD_DIR=/tmp/b bash scripts/test.sh
#   CMAKE_ARGS=-DDISTILL_TEST_ISA_LEVELS= bash scripts/test.sh    native level only
#   CMAKE_ARGS=-DDISTILL_TEST_ISA_FAMILIES=all bash scripts/test.sh  every CPU family at every level
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
