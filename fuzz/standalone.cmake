# The libFuzzer build of fuzz/ on its own (fuzz/CMakeLists.txt): clang, every
# translation unit with ASan+UBSan and the fuzzer's coverage instrumentation,
# and only the parsers under test with the few files of kiln/base they call.
# A cold build is ~30 translation units, not Kiln's ~300.
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "the libFuzzer build needs clang: CXX=clang++ cmake -S fuzz ...")
endif()
set(KILN_FUZZ_STANDALONE ON)
set(KILN_ROOT ${CMAKE_CURRENT_SOURCE_DIR}/..)
cmake_path(NORMAL_PATH KILN_ROOT)

set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_EXPORT_COMPILE_COMMANDS ON)
find_program(KILN_CCACHE ccache)
if(KILN_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${KILN_CCACHE})
endif()
# -O1 as libFuzzer's documentation suggests: fast to build, fast enough to
# run; line tables so a sanitizer report names file and line.
set(CMAKE_BUILD_TYPE RelWithDebInfo CACHE STRING "" FORCE)
set(CMAKE_CXX_FLAGS_RELWITHDEBINFO "-O1 -gline-tables-only")
add_compile_options(-Wall -Wextra -Wno-missing-field-initializers
  -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
add_link_options(-fsanitize=address,undefined)

find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(LibXml2 REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)

enable_testing()
include_directories(${KILN_ROOT})

# The parsers the targets read bytes with, and what they call. A static
# library: each target links only the objects it needs.
set(KILN_FUZZ_PARSER_SOURCES
  kiln/base/status.cc
  kiln/base/check.cc
  kiln/base/markup.cc
  kiln/base/auth/handshake.cc
  kiln/base/config/toml_reader.cc
  kiln/store/tcp/protocol.cc
  kiln/data/checksum.cc
  kiln/data/schema.cc
  kiln/data/index.cc
  kiln/data/shard.cc
  kiln/data/verified_shards.cc
  kiln/comm/types.cc
  kiln/ckpt/state.cc
  kiln/ckpt/format.cc
  kiln/base/xxh3.cc
  kiln/base/xxh3_baseline.cc
  kiln/train/train_config.cc
  kiln/plan/gpu_catalog.cc
  kiln/plan/stages.cc
  kiln/plan/config.cc
  kiln/plan/host_profile.cc
  kiln/objstore/s3/s3_xml.cc
)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  # XXH3 compiled for AVX2 too, as kiln_base builds it (kiln/base/xxh3.h).
  list(APPEND KILN_FUZZ_PARSER_SOURCES kiln/base/xxh3_avx2.cc)
  set_source_files_properties(${KILN_ROOT}/kiln/base/xxh3_avx2.cc
                              PROPERTIES COMPILE_OPTIONS -mavx2)
endif()
list(TRANSFORM KILN_FUZZ_PARSER_SOURCES PREPEND ${KILN_ROOT}/)
add_library(kiln_fuzz_parsers STATIC ${KILN_FUZZ_PARSER_SOURCES})
target_link_libraries(kiln_fuzz_parsers PUBLIC
  fmt::fmt spdlog::spdlog Threads::Threads OpenSSL::Crypto tomlplusplus::tomlplusplus
  LibXml2::LibXml2 PkgConfig::XXHASH nlohmann_json::nlohmann_json)
