# cmake -DSRC=<built module> -DDST=<dir> -P copy_inplace.cmake : best-effort copy (a read-only source tree is fine).
execute_process(COMMAND "${CMAKE_COMMAND}" -E copy "${SRC}" "${DST}" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(NOT rc EQUAL 0)
  message(STATUS "dreamer_ext: could not copy ${SRC} into ${DST} (in-place copy skipped)")
endif()
