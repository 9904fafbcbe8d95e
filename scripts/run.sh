#!/usr/bin/env bash
# Installs the dependencies, builds the flagship example and runs the main job: Spatial
# Knowledge Distillation on Sort-of-CLEVR with the cpu-small preset (3 seeds, every model, on the
# CPU; on CUDA when built with nvcc and a GPU is present). Results land in ./vqa_out.
#   bash scripts/run.sh                                  the README's main job
#   bash scripts/run.sh --preset paper --pixels          extra arguments go to vqa_spatial_kd
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target vqa_spatial_kd
# OpenMP threads sleep instead of spinning between the many small parallel regions of a
# training step: much faster when the cores are shared with anything else.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
exec "$build/examples/vqa_spatial_kd/vqa_spatial_kd" --preset cpu-small --out vqa_out "$@"
