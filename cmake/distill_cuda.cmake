# Decide whether distill's own CUDA targets are built (DISTILL_CUDA) and enable the language.
# AUTO: when nvcc is found, with or without a GPU (without one the CUDA tests are compiled, which
# checks the kernels, and report skipped; docs/install.md). Default architectures: sm_80 (A100)
# and sm_90 (H100/H200); override with -DCMAKE_CUDA_ARCHITECTURES=...
include(CheckLanguage)
if(DISTILL_ENABLE_CUDA STREQUAL "AUTO" OR DISTILL_ENABLE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc AND NOT DEFINED ENV{CUDACXX})
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(DISTILL_CUDA ON)
  elseif(DISTILL_ENABLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "DISTILL_ENABLE_CUDA=ON but no CUDA compiler was found")
  endif()
endif()

if(DISTILL_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  # CMake 3.25 does not know nvcc 13's C++20 flag, so it is passed directly (distill_dev_flags).
  message(STATUS "distill: CUDA targets ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
  if(DISTILL_ENABLE_CUDA STREQUAL "AUTO" AND CMAKE_SYSTEM_NAME STREQUAL "Linux" AND NOT EXISTS /dev/nvidiactl)
    message(STATUS "distill: no NVIDIA GPU visible (/dev/nvidiactl): the CUDA tests are compiled only and will "
                   "report skipped; -DDISTILL_ENABLE_CUDA=OFF leaves them out of the build")
  endif()
else()
  message(STATUS "distill: CUDA targets OFF (no nvcc, or DISTILL_ENABLE_CUDA=OFF); everything but the kernels is built")
endif()
