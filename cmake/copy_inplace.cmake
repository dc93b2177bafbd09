# cmake -DSRC=<built module> -DDST=<dir> -P copy_inplace.cmake
# Best-effort copy (a read-only source tree is fine). Written to a temporary name and renamed, so a
# process that has the old module loaded keeps its (unlinked) file instead of seeing it rewritten.
get_filename_component(name "${SRC}" NAME)
set(tmp "${DST}/.${name}.tmp")
execute_process(COMMAND "${CMAKE_COMMAND}" -E copy "${SRC}" "${tmp}" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)
  file(RENAME "${tmp}" "${DST}/${name}" RESULT rc)
endif()
if(NOT rc EQUAL 0)
  file(REMOVE "${tmp}")
  message(STATUS "dreamer_ext: could not copy ${SRC} into ${DST} (in-place copy skipped)")
endif()
