#!/usr/bin/env bash
# Cross-compiles CPU tests for AArch64 (NEON, 4 floats a SIMD batch) with Debian's
# g++-aarch64-linux-gnu and runs them under qemu-aarch64 (qemu-user). Not part of the test
# command: a check to run when the SIMD layer (include/distill/core/simd.hpp) changes.
#   bash scripts/check_neon.sh                       the default test files
#   bash scripts/check_neon.sh test/attention/*.cpp  others
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" > /dev/null || { echo "check_neon: $tool missing (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)"; exit 1; }
done
files=("$@")
((${#files[@]})) || files=(test/losses/test_topk_teacher.cpp test/losses/test_fast_math.cpp)
out=${NEON_BUILD_DIR:-build-neon}
mkdir -p "$out"
flags=(-std=c++20 -O2 -fopenmp -Iinclude -Ikernels -Itest -idirafter /usr/include -idirafter /usr/include/eigen3)
objs=()
for f in test/support/catch_main.cpp "${files[@]}"; do
  o="$out/$(basename "${f%.*}").o"
  echo "check_neon: compiling $f"
  aarch64-linux-gnu-g++ "${flags[@]}" -c "$f" -o "$o"
  objs+=("$o")
done
aarch64-linux-gnu-g++ -fopenmp "${objs[@]}" -o "$out/tests_neon"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/tests_neon"
