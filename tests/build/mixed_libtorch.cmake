# The configure step refuses a mixed LibTorch. A build directory whose cache holds a libc10
# from another LibTorch (as one configured against Debian's 1.13 did) must fail with a
# message naming that library; the same configure without the stray path must pass the check.
# usage: cmake -DSOURCE=<repo> -DTORCH_ROOT=<root> -DWORK=<scratch dir> -P mixed_libtorch.cmake
foreach(v SOURCE TORCH_ROOT WORK)
  if(NOT ${v})
    message(FATAL_ERROR "mixed_libtorch.cmake: -D${v}= is required")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/other-libtorch/lib")
set(stray "${WORK}/other-libtorch/lib/libc10.so")
file(WRITE "${stray}" "")

function(configure name out_rc out_log)
  execute_process(
    COMMAND ${CMAKE_COMMAND} -S "${SOURCE}" -B "${WORK}/${name}" -DCONDENSA_BUILD_TESTS=OFF
            -DCONDENSA_WITH_CUDA=OFF "-DCONDENSA_TORCH_DIR=${TORCH_ROOT}" ${ARGN}
    RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
  set(${out_rc} "${rc}" PARENT_SCOPE)
  set(${out_log} "${log}" PARENT_SCOPE)
endfunction()

configure(mixed rc log "-Dc10_LIBRARY=${stray}")
string(REGEX REPLACE "[ \n]+" " " flat "${log}")
if(rc EQUAL 0 OR NOT flat MATCHES "mixed LibTorch: ${stray} is not under the chosen LibTorch")
  message(FATAL_ERROR "a libc10 outside ${TORCH_ROOT} was accepted (rc ${rc}):\n${log}")
endif()

configure(clean rc log)
if(NOT log MATCHES "condensa: LibTorch [0-9.]+ at ${TORCH_ROOT}" OR log MATCHES "mixed LibTorch")
  message(FATAL_ERROR "the unmixed LibTorch ${TORCH_ROOT} was refused (rc ${rc}):\n${log}")
endif()
file(REMOVE_RECURSE "${WORK}")
message(STATUS "mixed LibTorch refused; ${TORCH_ROOT} alone accepted")
