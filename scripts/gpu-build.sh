#!/usr/bin/env bash
# Builds distill for a GPU host into build-gpu/ on a machine that has nvcc but maybe no GPU:
# sm_90 (H100/H200) by default, the CUDA runtime linked statically and a portable -march, so the
# folder can be copied to the GPU host and run there with build-gpu/run-on-gpu.sh (every test
# binary, the CUDA tests under compute-sanitizer where the host has it, then distill_bench's CUDA
# benchmarks into bench.json). Extra arguments go to cmake,
# e.g. -DCMAKE_CUDA_ARCHITECTURES=80 for an A100.
set -euo pipefail
cd "$(dirname "$0")/.."
b=build-gpu
cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=Release -DDISTILL_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_CUDA_RUNTIME_LIBRARY=Static -DDISTILL_MARCH=x86-64-v3 \
  -DCMAKE_BUILD_RPATH='$ORIGIN/lib;$ORIGIN/../lib;$ORIGIN/../../lib' "$@"
cmake --build "$b" -j "${JOBS:-$(nproc)}"
# Google Benchmark is the one shared library the binaries need that a bare GPU host may lack.
mkdir -p "$b/lib"
cp -L /usr/lib/x86_64-linux-gnu/libbenchmark.so.1* "$b/lib/" 2>/dev/null || true
cat > "$b/run-on-gpu.sh" <<'RUN'
#!/usr/bin/env bash
# On the GPU host, from the copied build-gpu/: every test binary, then the CUDA benchmarks.
# Logs and bench.json go to $OUT (default /tmp/distill-gpu). CTest is not used: its files hold
# the build machine's paths.
cd "$(dirname "$0")"; out=${OUT:-/tmp/distill-gpu}; mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
fail=0
for t in $(find . -path ./CMakeFiles -prune -o -type f -perm -u+x -name '*test*' ! -name '*.so*' ! -name '*.sh' -print | sort); do
  echo "== $t"
  timeout 300 "$t" >"$out/$(basename "$t").log" 2>&1; rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then fail=1; echo "FAILED ($rc): $t"; fi
  tail -n 2 "$out/$(basename "$t").log"
done
# The CUDA tests again under compute-sanitizer (memcheck, racecheck, synccheck) where the GPU host
# has it (PATH or a CUDA toolkit in /usr/local/cuda); SANITIZE=0 leaves this out.
cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1 || true)
if [ "${SANITIZE:-1}" != 0 ] && [ -n "$cs" ]; then
  for t in $(find . -path ./CMakeFiles -prune -o -type f -perm -u+x -name '*cuda*test*' ! -name '*.so*' -print | sort); do
    for tool in memcheck racecheck synccheck; do
      log="$out/$(basename "$t").$tool.log"
      timeout 600 "$cs" --tool "$tool" --error-exitcode 99 "$t" >"$log" 2>&1; rc=$?
      if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then fail=1; echo "FAILED under $tool ($rc): $t"; fi
      tail -n 1 "$log"
    done
  done
elif [ "${SANITIZE:-1}" != 0 ]; then
  echo "compute-sanitizer not found on this host: the sanitizer pass did not run"
fi
bench=$(find . -type f -perm -u+x -name distill_bench | head -n 1)
[ -n "$bench" ] && timeout 300 "$bench" --benchmark_filter="${BENCH_FILTER:-cuda}" \
  --benchmark_out="$out/bench.json" --benchmark_out_format=json | tail -n 40
exit $fail
RUN
chmod +x "$b/run-on-gpu.sh"
echo "built $b ($(du -sh "$b" | cut -f1)); on the GPU host: bash $b/run-on-gpu.sh"
