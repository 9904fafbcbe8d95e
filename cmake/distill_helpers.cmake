# Helpers for distill's own targets (tests, examples, benchmarks). Not installed.

# Warnings of a project target (and the library); distill_dev_flags adds -march=DISTILL_MARCH.
add_library(distill_dev_warnings INTERFACE)
target_compile_options(distill_dev_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unknown-pragmas -Wno-maybe-uninitialized>
  # Eigen's own __host__ __device__ annotations warn under nvcc; they are not ours to fix.
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcudafe=--diag_suppress=20012,--diag_suppress=20011,--diag_suppress=20014>
  $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr>)
target_link_libraries(distill_dev_warnings INTERFACE distill::distill)

add_library(distill_dev_flags INTERFACE)
target_compile_options(distill_dev_flags INTERFACE
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${DISTILL_MARCH}>>:-march=${DISTILL_MARCH}>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${DISTILL_MARCH}>>:-Xcompiler=-march=${DISTILL_MARCH}>)
target_link_libraries(distill_dev_flags INTERFACE distill_dev_warnings)

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()

# distill_glob(<var> <dir> <patterns...>): sorted, CONFIGURE_DEPENDS glob.
function(distill_glob var dir)
  set(out)
  foreach(p IN LISTS ARGN)
    file(GLOB g CONFIGURE_DEPENDS "${dir}/${p}")
    list(APPEND out ${g})
  endforeach()
  list(SORT out)
  set(${var} ${out} PARENT_SCOPE)
endfunction()
