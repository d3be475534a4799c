# cmake/cuda.cmake: the CUDA backend (included by the root CMakeLists.txt).
#
# METAFORMER_CUDA = AUTO (default) | ON | OFF
#   * CUDA compiler and cuBLAS found (AUTO or ON): every native/cuda/*.cu goes into the addon, which is
#     compiled with METAFORMER_WITH_CUDA and linked with the static CUDA runtime and cuBLAS (+ cuBLASLt).
#     The standalone checker `metaformer_cuda_check` (native/cuda/tests/check_ops.cpp: every op against
#     the reference backend, plus kernel timings) is available as a target outside ALL.
#   * CUDA compiler without cuBLAS (AUTO): the kernel files that do not include cuBLAS are compiled into
#     the OBJECT library `metaformer_cuda_kernels` as part of the default build, so kernel code is
#     compiled on every build and cannot rot; nothing is linked into the addon.
#   * No CUDA compiler: skipped with a status message (a FATAL_ERROR when METAFORMER_CUDA is ON, as is
#     ON without cuBLAS).
# CMAKE_CUDA_ARCHITECTURES defaults to 90 (H100/H200); set it to build for other GPUs.
# cuBLAS outside the toolkit (e.g. the nvidia-cublas Python wheel): -DMETAFORMER_CUBLAS_ROOT=<dir with
# include/ and lib/>, or the CUBLAS_ROOT environment variable.
# native/cuda/tests/CMakeLists.txt includes this file with MF_CUDA_STANDALONE set: then there is no addon
# target, and the checker is built by default (a build that needs neither Node nor oneDNN).

get_filename_component(MF_ROOT ${CMAKE_CURRENT_LIST_DIR} DIRECTORY)

string(TOUPPER "${METAFORMER_CUDA}" MF_CUDA_MODE)
if(NOT MF_CUDA_MODE MATCHES "^(AUTO|ON|OFF|TRUE|FALSE|1|0|YES|NO)$")
  message(FATAL_ERROR "metaformer: METAFORMER_CUDA must be AUTO, ON or OFF (received '${METAFORMER_CUDA}')")
endif()
if(MF_CUDA_MODE MATCHES "^(OFF|FALSE|0|NO)$")
  message(STATUS "metaformer: CUDA backend disabled (METAFORMER_CUDA=OFF)")
  return()
endif()
set(MF_CUDA_REQUIRED OFF)
if(MF_CUDA_MODE MATCHES "^(ON|TRUE|1|YES)$")
  set(MF_CUDA_REQUIRED ON)
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(MF_CUDA_REQUIRED)
    message(FATAL_ERROR "metaformer: METAFORMER_CUDA=ON but no CUDA compiler (nvcc) was found. Install the CUDA "
                        "toolkit, put nvcc on PATH or set CMAKE_CUDA_COMPILER, or build with METAFORMER_CUDA=OFF.")
  endif()
  message(STATUS "metaformer: no CUDA compiler found; building without the CUDA backend")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

# --- cuBLAS: the toolkit's, or one given by METAFORMER_CUBLAS_ROOT / CUBLAS_ROOT (wheels ship only
# versioned sonames such as libcublas.so.13, hence the explicit names) ---------------------------------
set(MF_CUBLAS_HINTS ${METAFORMER_CUBLAS_ROOT} $ENV{CUBLAS_ROOT})
find_path(METAFORMER_CUBLAS_INCLUDE_DIR cublas_v2.h
          HINTS ${MF_CUBLAS_HINTS} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
find_library(METAFORMER_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 libcublas.so.12
             HINTS ${MF_CUBLAS_HINTS} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
find_library(METAFORMER_CUBLASLT_LIBRARY NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12
             HINTS ${MF_CUBLAS_HINTS} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
set(MF_HAVE_CUBLAS OFF)
if(METAFORMER_CUBLAS_INCLUDE_DIR AND METAFORMER_CUBLAS_LIBRARY)
  set(MF_HAVE_CUBLAS ON)
endif()

file(GLOB MF_CUDA_SOURCES CONFIGURE_DEPENDS ${MF_ROOT}/native/cuda/*.cu)
set(MF_CUDA_FLAGS $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xcompiler=-fvisibility=hidden -Xptxas=-warn-spills>)

if(NOT MF_HAVE_CUBLAS)
  if(MF_CUDA_REQUIRED)
    message(FATAL_ERROR "metaformer: METAFORMER_CUDA=ON but cuBLAS (cublas_v2.h and libcublas) was not found. "
                        "Install it with the CUDA toolkit, or point METAFORMER_CUBLAS_ROOT at a directory with "
                        "include/cublas_v2.h and lib/libcublas.so*.")
  endif()
  # Compile-only check of every kernel file that does not need the cuBLAS headers.
  set(MF_CUDA_KERNEL_SOURCES "")
  foreach(src ${MF_CUDA_SOURCES})
    file(STRINGS ${src} uses_blas REGEX "#include[ \t]*<cublas")
    if(NOT uses_blas)
      list(APPEND MF_CUDA_KERNEL_SOURCES ${src})
    endif()
  endforeach()
  list(LENGTH MF_CUDA_KERNEL_SOURCES n_kernels)
  message(STATUS "metaformer: nvcc ${CMAKE_CUDA_COMPILER_VERSION} found but not cuBLAS: compiling ${n_kernels} "
                 "CUDA kernel files for sm_${CMAKE_CUDA_ARCHITECTURES} as a check (the addon is built without CUDA)")
  add_library(metaformer_cuda_kernels OBJECT ${MF_CUDA_KERNEL_SOURCES})
  target_compile_options(metaformer_cuda_kernels PRIVATE ${MF_CUDA_FLAGS})
  return()
endif()

message(STATUS "metaformer: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, sm_${CMAKE_CUDA_ARCHITECTURES}, "
               "cuBLAS ${METAFORMER_CUBLAS_LIBRARY})")
add_library(metaformer_cuda OBJECT ${MF_CUDA_SOURCES})
target_include_directories(metaformer_cuda PRIVATE ${METAFORMER_CUBLAS_INCLUDE_DIR})
target_compile_options(metaformer_cuda PRIVATE ${MF_CUDA_FLAGS})

set(MF_CUDA_LIBS CUDA::cudart_static ${METAFORMER_CUBLAS_LIBRARY})
if(METAFORMER_CUBLASLT_LIBRARY)
  list(APPEND MF_CUDA_LIBS ${METAFORMER_CUBLASLT_LIBRARY})
endif()
get_filename_component(MF_CUBLAS_LIBDIR ${METAFORMER_CUBLAS_LIBRARY} DIRECTORY)

if(NOT MF_CUDA_STANDALONE)
  target_sources(${PROJECT_NAME} PRIVATE $<TARGET_OBJECTS:metaformer_cuda>)
  target_compile_definitions(${PROJECT_NAME} PRIVATE METAFORMER_WITH_CUDA)
  target_link_libraries(${PROJECT_NAME} PRIVATE ${MF_CUDA_LIBS})
  set_property(TARGET ${PROJECT_NAME} APPEND PROPERTY BUILD_RPATH ${MF_CUBLAS_LIBDIR})
  set(MF_CHECK_EXCLUDE EXCLUDE_FROM_ALL)
endif()

# The standalone checker: core + reference kernels + CUDA kernels, no Node.
file(GLOB MF_CHECK_CORE CONFIGURE_DEPENDS ${MF_ROOT}/native/core/*.cpp ${MF_ROOT}/native/ref/*.cpp)
add_executable(metaformer_cuda_check ${MF_CHECK_EXCLUDE} ${MF_ROOT}/native/cuda/tests/check_ops.cpp
               ${MF_ROOT}/native/cuda/tests/run_plan.cpp ${MF_CHECK_CORE} $<TARGET_OBJECTS:metaformer_cuda>)
target_compile_definitions(metaformer_cuda_check PRIVATE METAFORMER_WITH_CUDA)
target_compile_options(metaformer_cuda_check PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-O2 -Wall -Wextra -Wno-unused-parameter>)
target_include_directories(metaformer_cuda_check PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(metaformer_cuda_check PRIVATE ${MF_CUDA_LIBS} OpenMP::OpenMP_CXX)
set_property(TARGET metaformer_cuda_check PROPERTY BUILD_RPATH ${MF_CUBLAS_LIBDIR})
