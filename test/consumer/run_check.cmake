# cmake -P script run by CTest (test/CMakeLists.txt): install the build tree into a scratch
# prefix, then use it as an outside project would:
#   1. test/consumer with find_package(distill CONFIG): the CPU program, the xtensor program and,
#      with CONSUMER_CUDA_COMPILER, a CUDA program on distill::cuda (run only where a GPU is);
#   2. the CPU program again with only pkg-config (distill.pc) and the compiler, and, where the
#      compiled library was built, linked with it through distill-cpu.pc;
#   3. the license, change log and docs are installed.
# Inputs: BUILD_DIR, CONSUMER_SOURCE, WORK_DIR, CMAKE_CXX_COMPILER, optional
# CONSUMER_CUDA_COMPILER and CONSUMER_CUDA_ARCHITECTURES, PKG_CONFIG (empty: step 2 is skipped).
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "${what} failed (${rc})")
  endif()
endfunction()

run("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(f LICENSE CHANGELOG.md README.md docs/install.md)
  if(NOT EXISTS ${prefix}/share/doc/distill/${f})
    message(FATAL_ERROR "share/doc/distill/${f} is not installed")
  endif()
endforeach()

# 1. CMake
set(configure ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${prefix}
              -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
if(CONSUMER_CUDA_COMPILER)
  list(APPEND configure -DCONSUMER_CUDA=ON -DCMAKE_CUDA_COMPILER=${CONSUMER_CUDA_COMPILER}
                        -DCMAKE_CUDA_ARCHITECTURES=${CONSUMER_CUDA_ARCHITECTURES})
endif()
run("configuring the consumer project" ${configure})
run("building the consumer project" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run("the consumer program" ${WORK_DIR}/build/consumer)
run("the xtensor consumer program" ${WORK_DIR}/build/consumer_xtensor)
if(CONSUMER_CUDA_COMPILER)
  run("the CUDA consumer program" ${WORK_DIR}/build/consumer_cuda)
endif()

# 2. pkg-config
if(PKG_CONFIG)
  set(ENV{PKG_CONFIG_PATH} ${prefix}/share/pkgconfig)
  execute_process(COMMAND ${PKG_CONFIG} --cflags --libs distill OUTPUT_VARIABLE flags RESULT_VARIABLE rc
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(rc)
    message(FATAL_ERROR "pkg-config --cflags --libs distill failed (${rc})")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  run("compiling the consumer with pkg-config's flags"
      ${CMAKE_CXX_COMPILER} -std=c++20 -O2 ${CONSUMER_SOURCE}/main.cpp ${flags} -o ${WORK_DIR}/consumer_pkg_config)
  run("the pkg-config consumer program" ${WORK_DIR}/consumer_pkg_config)
  # 2b. the same program linked with the compiled library (distill-cpu.pc), where it was built
  file(GLOB_RECURSE cpu_pc ${prefix}/distill-cpu.pc)
  if(cpu_pc)
    get_filename_component(cpu_pc_dir ${cpu_pc} DIRECTORY)
    set(ENV{PKG_CONFIG_PATH} ${cpu_pc_dir}:${prefix}/share/pkgconfig)
    execute_process(COMMAND ${PKG_CONFIG} --cflags --libs distill-cpu OUTPUT_VARIABLE flags RESULT_VARIABLE rc
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    execute_process(COMMAND ${PKG_CONFIG} --variable=march distill-cpu OUTPUT_VARIABLE march
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(rc)
      message(FATAL_ERROR "pkg-config --cflags --libs distill-cpu failed (${rc})")
    endif()
    separate_arguments(flags UNIX_COMMAND "${flags}")
    if(march)
      list(PREPEND flags -march=${march})
    endif()
    run("compiling the consumer against libdistill_cpu with pkg-config's flags"
        ${CMAKE_CXX_COMPILER} -std=c++20 -O2 ${CONSUMER_SOURCE}/main.cpp ${flags} -o ${WORK_DIR}/consumer_pkg_config_cpu)
    run("the pkg-config consumer program on libdistill_cpu" ${WORK_DIR}/consumer_pkg_config_cpu)
  endif()
else()
  message(STATUS "pkg-config not found: the pkg-config consumer is not checked")
endif()
