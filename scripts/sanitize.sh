#!/usr/bin/env bash
# Builds the CPU test binaries, the fuzz-input regression runner and the flagship with
# AddressSanitizer + UndefinedBehaviorSanitizer (no CUDA targets, no benchmarks) and runs them:
# any memory error, leak or undefined behaviour fails the run. Called by scripts/test.sh; alone:
#   bash scripts/sanitize.sh                 build in ./build-sanitize
#   SANITIZE_BUILD_DIR=/tmp/s bash scripts/sanitize.sh
# See docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SANITIZE_BUILD_DIR:-build-sanitize}
jobs=${JOBS:-$(nproc)}
start=$SECONDS

# -O1: the speed sanitizers are meant for (and much faster to compile than -O2); -g1: line
# numbers in reports. -fno-sanitize-recover: the first finding fails the test.
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
cmake -S . -B "$build" -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" \
  -DDISTILL_ENABLE_CUDA=OFF -DDISTILL_BUILD_BENCHMARKS=OFF -DDISTILL_INSTALL=OFF >/dev/null

# Every program a test runs (the test binaries, the examples, the fuzz-input replay): every
# target but the header check (compile-only), helper libraries and on-demand tools.
mapfile -t targets < <(cmake --build "$build" --target help | sed -n 's/^\.\.\. \([^ ]*\).*/\1/p' | grep -vE '[./]' |
  grep -vE '^(all|clean|depend|edit_cache|rebuild_cache|test|install|list_install_components|distill_header_check|distill_test_main|distill_crash_shim|distill_fuzz_seed_corpus)$')
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
built=$SECONDS

# halt_on_error: stop at the first report; detect_leaks: LeakSanitizer too. OpenMP's runtime is
# not instrumented; its threads are joined at exit, so no suppressions are needed.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The consumer check installs the package (nothing to sanitize); crash tests kill processes on
# purpose and run in the normal build.
ctest --test-dir "$build" --output-on-failure -j "$jobs" -E '^(consumer_find_package|crash_resume_.*)$'
echo "sanitize: ${targets[*]}"
echo "sanitize: clean under ASan+UBSan; build $((built - start)) s, tests $((SECONDS - built)) s"
