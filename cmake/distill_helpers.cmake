# Helpers for distill's own targets (tests, examples, benchmarks). Not installed.

# Warnings of a project target (and the library); distill_dev_flags adds -march=DISTILL_MARCH.
add_library(distill_dev_warnings INTERFACE)
target_compile_options(distill_dev_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unknown-pragmas>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wno-maybe-uninitialized>  # GCC 12's false positives
  "$<$<COMPILE_LANGUAGE:CUDA>:${DISTILL_NVCC_FLAGS}>")  # what distill::cuda gives consumers
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

# distill_add_crash_resume_test(<name> [KILLS n] [WRITE_KILLS n] [SEED n] [COMPARE file...]
#                               [IGNORE regex] COMMAND <program> <arguments, with {out} for the output folder>)
# A crash-consistency test (CTest name crash_resume_<name>): scripts/crash/crash_resume.py runs
# the command once uninterrupted, then kills it with SIGKILL at random times and in the middle of
# checkpoint writes (an LD_PRELOAD shim) and resumes it until it finishes; the COMPARE files
# (default results.json; timings left out: JSON keys and CSV columns matching IGNORE, default
# "seconds|time") must equal the uninterrupted run's. The command must
# resume from the checkpoints in {out} by itself. Linux and Python 3 only; skipped otherwise.
function(distill_add_crash_resume_test name)
  cmake_parse_arguments(arg "" "KILLS;WRITE_KILLS;SEED;IGNORE" "COMPARE;COMMAND" ${ARGN})
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(NOT Python3_Interpreter_FOUND OR NOT CMAKE_SYSTEM_NAME STREQUAL "Linux")
    message(STATUS "distill: crash test ${name} skipped (needs Python 3 and Linux)")
    return()
  endif()
  if(NOT TARGET distill_crash_shim)
    add_library(distill_crash_shim MODULE ${PROJECT_SOURCE_DIR}/scripts/crash/crash_shim.cpp)
    target_link_libraries(distill_crash_shim PRIVATE ${CMAKE_DL_LIBS})
  endif()
  foreach(default KILLS=3 WRITE_KILLS=2 SEED=1)
    string(REPLACE "=" ";" kv ${default})
    list(GET kv 0 key)
    if(NOT DEFINED arg_${key})
      list(GET kv 1 arg_${key})
    endif()
  endforeach()
  set(options --kills ${arg_KILLS} --write-kills ${arg_WRITE_KILLS} --seed ${arg_SEED})
  if(DEFINED arg_IGNORE)
    list(APPEND options --ignore ${arg_IGNORE})
  endif()
  foreach(f IN LISTS arg_COMPARE)
    list(APPEND options --compare ${f})
  endforeach()
  add_test(NAME crash_resume_${name}
    COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/crash/crash_resume.py --work ${CMAKE_CURRENT_BINARY_DIR}/crash_${name}
            --shim $<TARGET_FILE:distill_crash_shim> ${options} -- ${arg_COMMAND})
  set_tests_properties(crash_resume_${name} PROPERTIES TIMEOUT 900 ENVIRONMENT "OMP_WAIT_POLICY=passive")
endfunction()
