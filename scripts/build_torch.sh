#!/usr/bin/env bash
# Builds the PyTorch bindings: the operator library and the Python package distill_torch, in
# <build>/python (docs/torch.md). Installs the dependencies first (scripts/setup.sh).
#   bash scripts/build_torch.sh                 build in ./build
#   BUILD_DIR=/tmp/b bash scripts/build_torch.sh
# Then: PYTHONPATH=<build>/python /usr/bin/python3 -c "import distill_torch"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_TORCH=ON ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs" --target distill_torch
echo "distill_torch is in $(cd "$build" && pwd)/python: export PYTHONPATH=$(cd "$build" && pwd)/python"
