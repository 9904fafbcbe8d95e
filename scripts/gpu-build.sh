#!/usr/bin/env bash
# Build distill for a lent H100/H200 into build-gpu/ (sm_90, static CUDA runtime, portable
# -march so the binaries run on the GPU host's CPU), then run there with the device tool:
#   run  command="bash build-gpu/on-device.sh"  carry=["build-gpu"]
# Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ../shared/tools/gpu-build -DDISTILL_MARCH=x86-64-v3 "$@"
