// KILN_CHECK: for states that cannot happen unless Kiln has a bug.
// Failures from outside (network, disk, input) are Status values instead.
#pragma once

#include <string_view>

namespace kiln::internal {
[[noreturn]] void check_failed(const char* file, int line, const char* expr, std::string_view msg);
}  // namespace kiln::internal

#define KILN_CHECK(cond)                                                       \
  do {                                                                         \
    if (!(cond)) [[unlikely]]                                                  \
      ::kiln::internal::check_failed(__FILE__, __LINE__, #cond, {});           \
  } while (0)

#define KILN_CHECK_MSG(cond, msg)                                              \
  do {                                                                         \
    if (!(cond)) [[unlikely]]                                                  \
      ::kiln::internal::check_failed(__FILE__, __LINE__, #cond, (msg));        \
  } while (0)
