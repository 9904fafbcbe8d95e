#!/usr/bin/env bash
# Builds the CPU test binaries, the fuzz-input replay and the flagship (whose checkpoints and
# resume are under test) with AddressSanitizer + UndefinedBehaviorSanitizer (no CUDA, no
# benchmarks, no other examples: the stage must stay inside CI's time) and runs their tests: any
# memory error, leak or undefined behaviour fails the run. Called by scripts/test.sh; alone:
#   bash scripts/sanitize.sh                 build in ./build-sanitize
#   SANITIZE_BUILD_DIR=/tmp/s bash scripts/sanitize.sh
# See docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SANITIZE_BUILD_DIR:-build-sanitize}
jobs=${JOBS:-$(nproc)}
start=$SECONDS

# clang: it compiles the instrumented tests about five times faster than GCC 12 (whose ASan +
# UBSan build of the xsimd kernels alone outlasted CI's time); scripts/setup.sh installs clang-14
# for the fuzzers. SANITIZE_CXX picks another compiler (g++ works, slowly).
# -O1: the speed sanitizers are meant for (and much faster to compile than -O2); -g1: line
# numbers in reports. -fno-sanitize-recover: the first finding fails the test.
cxx=${SANITIZE_CXX:-$(command -v clang++-14 || command -v clang++ || command -v g++)}
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
cmake -S . -B "$build" -G "Unix Makefiles" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" \
  -DDISTILL_ENABLE_CUDA=OFF -DDISTILL_BUILD_BENCHMARKS=OFF -DDISTILL_INSTALL=OFF \
  -DDISTILL_TEST_SKIP_SOURCES= >/dev/null

# distill_<family>_tests for every test folder (not the CUDA ones), the fuzz replay, the flagship.
# Left out: the MPI tests (Open MPI's start-up allocations are not LeakSanitizer-clean); the
# same distributed cases run here on one process (distill_distributed_tests) and in the normal
# build on 1, 2 and 3 ranks.
mapfile -t families < <(cmake --build "$build" --target help | sed -n 's/^\.\.\. distill_\(.*\)_tests$/\1/p' | grep -v '_cuda$' | grep -vx distributed_mpi)
targets=("${families[@]/#/distill_}")
targets=("${targets[@]/%/_tests}" distill_fuzz_regressions vqa_spatial_kd)
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
built=$SECONDS

# halt_on_error: stop at the first report; detect_leaks: LeakSanitizer too, with the
# suppressions of scripts/sanitize.supp (LLVM's OpenMP runtime keeps its threads' memory to exit).
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/sanitize.supp}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The tests of those programs; crash tests kill processes on purpose and run in the normal build.
tests="^($(IFS='|'; echo "${families[*]}")|fuzz_regressions|example_vqa_spatial_kd_smoke|example_vqa_spatial_kd_resume_checks)\$"
ctest --test-dir "$build" --output-on-failure -j "$jobs" -R "$tests" --no-tests=error
echo "sanitize: ${targets[*]} ($cxx)"
echo "sanitize: clean under ASan+UBSan; build $((built - start)) s, tests $((SECONDS - built)) s"
