#!/usr/bin/env bash
# Fuzzes the rule parser and every file loader (fuzz/targets.hpp) with libFuzzer under
# AddressSanitizer + UndefinedBehaviorSanitizer, each for a bounded time, starting from the seed
# corpus in fuzz/corpus/<target>/. Called by scripts/test.sh; alone:
#   bash scripts/fuzz.sh                  every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh rules checkpoint     longer, chosen targets
# A crashing input (or one that breaks a target's round-trip property) is copied to
# fuzz/regressions/<target>/ and the script fails: commit that file with the fix, and the test
# fuzz_regressions replays it in every build from then on. Needs clang with libFuzzer (Debian:
# clang-14, libclang-rt-14-dev; scripts/setup.sh installs them) and fails without them, so that a
# CI run cannot pass without fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
build=${FUZZ_BUILD_DIR:-build-fuzz}
start=$SECONDS

cxx=${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}
if [[ -z "$cxx" ]]; then
  echo "fuzz: no clang++ (scripts/setup.sh installs clang-14 and libclang-rt-14-dev)" >&2
  exit 1
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$probe/p.cpp"
if ! "$cxx" -fsanitize=fuzzer "$probe/p.cpp" -o "$probe/p" 2>/dev/null; then
  echo "fuzz: $cxx cannot link libFuzzer (install libclang-rt-14-dev; scripts/setup.sh does)" >&2
  exit 1
fi

cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" \
  -DDISTILL_BUILD_FUZZERS=ON -DDISTILL_BUILD_TESTS=OFF -DDISTILL_BUILD_EXAMPLES=OFF -DDISTILL_BUILD_BENCHMARKS=OFF \
  -DDISTILL_INSTALL=OFF -DDISTILL_ENABLE_CUDA=OFF >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target distill_fuzz
bin=$build/fuzz/distill_fuzz
built=$SECONDS

if (($#)); then targets=("$@"); else mapfile -t targets < <(DISTILL_FUZZ_TARGET=list "$bin"); fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
failed=()
summary=()
for t in "${targets[@]}"; do
  work="$probe/$t" artifacts="$probe/artifacts-$t"
  mkdir -p "$work" "$artifacts"
  dict=()
  [[ -f fuzz/$t.dict ]] && dict=(-dict="fuzz/$t.dict")
  # New inputs go to the scratch folder (first); the seed corpus in the repository is only read.
  set +e
  DISTILL_FUZZ_TARGET=$t "$bin" "$work" "fuzz/corpus/$t" "${dict[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/" >"$probe/$t.log" 2>&1
  rc=$?
  set -e
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$probe/$t.log" | grep -oE '[0-9]+$' || echo "?")
  coverage=$(grep -oE 'cov: [0-9]+' "$probe/$t.log" | tail -1 | grep -oE '[0-9]+' || echo "?")
  if ((rc != 0)); then
    mkdir -p "fuzz/regressions/$t"
    cp "$artifacts"/* "fuzz/regressions/$t/" 2>/dev/null || true
    tail -40 "$probe/$t.log"
    echo "fuzz: $t FAILED (exit $rc); the input is kept in fuzz/regressions/$t/: fix the fault and commit it"
    failed+=("$t")
  fi
  summary+=("$(printf '%-22s %10s executions in %s s, %s coverage points%s' "$t" "$execs" "$seconds" "$coverage" "$( ((rc)) && echo ', FAILED')")")
done
printf 'fuzz: %s\n' "${summary[@]}"
echo "fuzz: build $((built - start)) s, fuzzing $((SECONDS - built)) s"
if ((${#failed[@]})); then exit 1; fi
