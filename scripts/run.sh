#!/usr/bin/env bash
# Installs the dependencies, builds the examples and runs the main job: for now the CPU
# quickstart (teacher/student logits -> distillation loss and gradient -> one SGD step).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target quickstart
"$build/examples/00_quickstart/quickstart" "$@"
