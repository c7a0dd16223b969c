# compress_assert_torch_free(TARGET...): fails the configure step when one of
# the targets links LibTorch, directly or through any dependency, and names
# the chain that brings it in. The store, jobs and client layers stay
# torch-free this way (DESIGN.md §2): an edge like store -> engine fails here
# instead of slowing every build and test that links the store.
# tests/link/ checks the same on the built binaries with ldd.

# True when a link item is LibTorch or our engine (which links it).
function(_compress_is_torch item out)
  set(hit FALSE)
  if(item MATCHES "^(torch|torch_library|torch_cpu|torch_cuda|c10|c10_cuda|caffe2::.*|compress_engine)$"
     OR item MATCHES "lib(torch|torch_cpu|torch_cuda|c10)[^/]*\\.so")
    set(hit TRUE)
  endif()
  set(${out} ${hit} PARENT_SCOPE)
endfunction()

function(compress_assert_torch_free)
  foreach(root IN LISTS ARGN)
    if(NOT TARGET ${root})
      message(FATAL_ERROR "compress_assert_torch_free: no target ${root}")
    endif()
    set(todo ${root})
    set(seen "")
    set(path_${root} ${root})
    while(todo)
      list(POP_FRONT todo t)
      if(t IN_LIST seen)
        continue()
      endif()
      list(APPEND seen ${t})
      set(deps "")
      get_target_property(type ${t} TYPE)
      if(NOT type STREQUAL "INTERFACE_LIBRARY")
        get_target_property(direct ${t} LINK_LIBRARIES)
        if(direct)
          list(APPEND deps ${direct})
        endif()
      endif()
      get_target_property(iface ${t} INTERFACE_LINK_LIBRARIES)
      if(iface)
        list(APPEND deps ${iface})
      endif()
      foreach(dep IN LISTS deps)
        # $<LINK_ONLY:x> (a static library's private deps) still links x.
        string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" dep "${dep}")
        if(dep MATCHES "^\\$<" OR dep STREQUAL "")
          continue()
        endif()
        _compress_is_torch("${dep}" torch)
        if(torch)
          message(FATAL_ERROR
            "link check: ${root} must not link LibTorch, but links it via "
            "${path_${t}} -> ${dep}")
        endif()
        if(TARGET ${dep} AND NOT DEFINED path_${dep})
          set(path_${dep} "${path_${t}} -> ${dep}")
          list(APPEND todo ${dep})
        endif()
      endforeach()
    endwhile()
  endforeach()
  list(JOIN ARGN ", " names)
  message(STATUS "link check: ${names} do not link LibTorch")
endfunction()
