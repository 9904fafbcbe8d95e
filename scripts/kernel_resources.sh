#!/usr/bin/env bash
# Registers, spills and stack of every kernel a CUDA source instantiates, per architecture,
# from ptxas (device code only: no host compilation, so it is quick).
#   scripts/kernel_resources.sh [-a "80 90"] file.cu...     one line per (arch, kernel):
#   sm_90  regs 128  spill_st 0  spill_ld 0  stack 0  smem 1234  <demangled kernel name>
# (spill_st / spill_ld: bytes of spill stores / loads per thread; stack: the stack frame; a line
# "func" is a __noinline__ device function, whose registers count in its caller.)
set -euo pipefail
archs="80 90"
if [[ "${1:-}" == "-a" ]]; then archs="$2"; shift 2; fi
root="$(cd "$(dirname "$0")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
incs=(-I"$root/include" -I"$root/kernels" -I"$root/test" -I"$root/bench" -isystem /usr/include/eigen3)
for f in "$@"; do
  for a in $archs; do
    "$nvcc" -std=c++20 --expt-relaxed-constexpr -O3 -DNDEBUG -Xcudafe=--diag_suppress=20012,--diag_suppress=20011,--diag_suppress=20014 \
      "${incs[@]}" -arch=sm_"$a" -cubin -o /dev/null -Xptxas -v "$f" 2>&1 |
      awk -v arch="sm_$a" '
        /error|warning/ { print "  " $0 > "/dev/stderr" }
        /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); entry = substr($0, RSTART + 1, RLENGTH - 2) }
        /Function properties for/ { fname = $NF }
        /bytes stack frame/ {
          # a __noinline__ device function gets its own line (regs are counted in its caller)
          if (fname != entry) printf "%s  func      spill_st %4d  spill_ld %4d  stack %4d  %12s %s\n", arch, $5, $9, $1, "", fname
          else { stack = $1; spst = $5; spld = $9 } }
        /Used [0-9]+ registers/ { regs = $5; smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11) + 0;
                                  printf "%s  regs %3d  spill_st %4d  spill_ld %4d  stack %4d  smem %6d  %s\n", arch, regs, spst, spld, stack, smem, entry }' |
      while read -r line; do
        mangled="${line##* }"; echo "${line% *} $(echo "$mangled" | c++filt)"; done
  done
done
