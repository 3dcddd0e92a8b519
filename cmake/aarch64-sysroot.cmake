# Cross-compiling the whole of cpuchat for aarch64 Linux against the arm64 Debian sysroot that
# scripts/aarch64-sysroot.sh unpacks (libtorch, spdlog, fmt, httplib, sentencepiece, json, gtest).
#
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-sysroot.cmake \
#         -DCPUCHAT_AARCH64_SYSROOT=$PWD/build/aarch64-sysroot
# Test binaries (gtest discovery, ctest, the tests' own child processes) run through qemu-user.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
if(NOT CPUCHAT_AARCH64_SYSROOT)
  set(CPUCHAT_AARCH64_SYSROOT "$ENV{CPUCHAT_AARCH64_SYSROOT}")
endif()
if(NOT EXISTS "${CPUCHAT_AARCH64_SYSROOT}/usr/lib/aarch64-linux-gnu")
  message(FATAL_ERROR "CPUCHAT_AARCH64_SYSROOT='${CPUCHAT_AARCH64_SYSROOT}' is not an arm64 sysroot (scripts/aarch64-sysroot.sh makes one)")
endif()
# try_compile projects re-read this file: hand them the sysroot too.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES CPUCHAT_AARCH64_SYSROOT)

set(CMAKE_SYSROOT "${CPUCHAT_AARCH64_SYSROOT}")
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH "${CPUCHAT_AARCH64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)   # host tools (nm, pkg-config, ...) run here
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(Torch_DIR "${CPUCHAT_AARCH64_SYSROOT}/usr/lib/aarch64-linux-gnu/cmake/Torch")
# pkg-config (sentencepiece, cpp-httplib) must read the arm64 .pc files and prefix their paths.
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${CPUCHAT_AARCH64_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR} "${CPUCHAT_AARCH64_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${CPUCHAT_AARCH64_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
# The sysroot's shared libraries depend on each other; let the linker find them there.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,-rpath-link,${CPUCHAT_AARCH64_SYSROOT}/usr/lib/aarch64-linux-gnu -Wl,-rpath-link,${CPUCHAT_AARCH64_SYSROOT}/lib/aarch64-linux-gnu")
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64;-L;${CPUCHAT_AARCH64_SYSROOT}")
