# CTest helper: an object compiled with ISA flags (-mavx512f, +dotprod, ...) must define no
# symbol but its own kernel entry point. A weak/COMDAT copy of an inline function (a std::
# template, a header helper) could otherwise be picked by the linker for baseline code and
# execute AVX-512 / sdot instructions on a CPU without them. Data symbols (a header's inline
# constexpr table that an -O1 sanitizer build does not fold away) carry no instructions.
#   cmake -DNM=<nm> -DOBJECTS="a.o;b.o" -P check_isa_objects.cmake
set(bad "")
foreach(obj IN LISTS OBJECTS)
  get_filename_component(name "${obj}" NAME)
  if(NOT name MATCHES "(avx2|avx512|amx|neon)")
    continue()
  endif()
  string(REGEX REPLACE "\\.cpp\\.o(bj)?$" "" kernel "${name}")
  execute_process(COMMAND ${NM} --defined-only --extern-only -C "${obj}" OUTPUT_VARIABLE syms RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nm failed on ${obj}")
  endif()
  string(REPLACE "\n" ";" lines "${syms}")
  foreach(line IN LISTS lines)
    if(line STREQUAL "" OR line MATCHES "DW\\.ref\\.__gxx_personality_v0" OR line MATCHES "::${kernel}\\("
       OR line MATCHES "^[0-9a-fA-F]+ [BDGRSuVv] ")
      continue()
    endif()
    list(APPEND bad "${name}: ${line}")
  endforeach()
endforeach()
if(bad)
  string(REPLACE ";" "\n  " bad "${bad}")
  message(FATAL_ERROR "ISA-specific objects export unexpected symbols:\n  ${bad}")
endif()
message(STATUS "ISA-specific objects export only their kernels")
