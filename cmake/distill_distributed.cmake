# Optional engines of distill/distributed/ (for distill's own tests, benchmarks and examples;
# consumers link MPI::MPI_CXX or NCCL themselves when they include those headers):
#   DISTILL_MPI   ON when MPI (C++ bindings of the C API) is found: MPI::MPI_CXX
#   DISTILL_NCCL  ON when CUDA is on and NCCL's header and library are found: distill_nccl
# Without them the library and everything else builds as before; only the tests and tools that
# need an engine are left out (configure prints which).
set(DISTILL_MPI OFF)
find_package(MPI COMPONENTS CXX QUIET)
if(MPI_CXX_FOUND AND MPIEXEC_EXECUTABLE)
  set(DISTILL_MPI ON)
  # Open MPI refuses more ranks than cores unless told (CI machines have 2 cores)
  set(DISTILL_MPIEXEC_OVERSUBSCRIBE "")
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE distill_mpiexec_version ERROR_QUIET)
  if(distill_mpiexec_version MATCHES "Open MPI|OpenRTE")
    set(DISTILL_MPIEXEC_OVERSUBSCRIBE --oversubscribe)
  endif()
  message(STATUS "distill: MPI found (${MPIEXEC_EXECUTABLE}); distributed tests run under it")
else()
  message(STATUS "distill: MPI not found (Debian: openmpi-bin libopenmpi-dev); MPI tests and tools are not built")
endif()

set(DISTILL_NCCL OFF)
if(DISTILL_CUDA)
  find_path(DISTILL_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}/include)
  find_library(DISTILL_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib
                                             ${CUDAToolkit_LIBRARY_ROOT}/lib64)
  if(DISTILL_NCCL_INCLUDE_DIR AND DISTILL_NCCL_LIBRARY)
    set(DISTILL_NCCL ON)
    add_library(distill_nccl INTERFACE IMPORTED)
    target_include_directories(distill_nccl INTERFACE ${DISTILL_NCCL_INCLUDE_DIR})
    target_link_libraries(distill_nccl INTERFACE ${DISTILL_NCCL_LIBRARY} CUDA::cudart)
    message(STATUS "distill: NCCL found (${DISTILL_NCCL_LIBRARY})")
  else()
    message(STATUS "distill: NCCL not found; NCCL tests are not built")
  endif()
endif()
