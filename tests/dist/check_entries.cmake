# Fails when a multi-rank test matches none of the CTest entries' filters (it would never run).
# Usage: cmake -DBINARY=condensa_dist_tests -DFILTERS=a.*:b.* -P check_entries.cmake
execute_process(COMMAND ${BINARY} --gtest_list_tests OUTPUT_VARIABLE all RESULT_VARIABLE rc1)
execute_process(COMMAND ${BINARY} --gtest_list_tests --gtest_filter=${FILTERS}
                OUTPUT_VARIABLE covered RESULT_VARIABLE rc2)
if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0)
  message(FATAL_ERROR "listing the tests of ${BINARY} failed (${rc1}, ${rc2})")
endif()
string(REGEX MATCHALL "\n  [^\n]+" all_cases "${all}")
string(REGEX MATCHALL "\n  [^\n]+" covered_cases "${covered}")
list(LENGTH all_cases n_all)
list(LENGTH covered_cases n_covered)
if(n_all EQUAL 0 OR NOT n_all EQUAL n_covered)
  message(FATAL_ERROR "${n_covered} of ${n_all} multi-rank tests have a CTest entry: add the "
                      "missing suite to CONDENSA_DIST_SUITES in CMakeLists.txt\n${all}")
endif()
message(STATUS "all ${n_all} multi-rank tests have a CTest entry")
