#!/usr/bin/env bash
# Installs distill's build dependencies from Debian packages. Idempotent: packages already
# present are not touched, and apt-get runs only when something is missing.
# The CUDA toolkit (nvcc, CUB/Thrust, cuBLAS) is used when present and never installed here.
set -euo pipefail

packages=(
  cmake g++ make                 # build
  libeigen3-dev                  # CPU GEMMs, interop
  libxsimd-dev                   # portable SIMD of the CPU paths (core/simd.hpp), header-only
  xtensor-dev                    # interop (tests)
  catch2                         # tests (Catch2 2.x)
  libbenchmark-dev               # distill_bench
  libcli11-dev nlohmann-json3-dev  # examples: command line; the library: safetensors JSON
  libstb-dev                     # examples: PNG output
  gnuplot-nox                    # examples: accuracy plots
  zlib1g-dev                     # examples/common: reads the gzipped IDX files
  dataset-fashion-mnist          # Fashion-MNIST images (/usr/share/datasets/fashion-mnist)
  libdlpack-dev                  # interop/dlpack.hpp
  python3-torch libtorch-dev     # PyTorch bindings (bindings/torch): Python and C++ PyTorch 1.13 (CPU)
  python3-pytest python3-torchvision  # their tests (torchvision: the reference RoI Align)
  clang-14 libclang-rt-14-dev libomp-14-dev  # fuzzing (libFuzzer) and the sanitizer build (scripts/fuzz.sh, sanitize.sh)
  python3                        # crash-consistency tests (scripts/crash/crash_resume.py)
  openmpi-bin libopenmpi-dev     # distributed/: MPI communicator and its tests under mpirun (NCCL comes with CUDA)
)

missing=()
for p in "${packages[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all dependencies present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
