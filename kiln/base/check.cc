#include "kiln/base/check.h"

#include <cstdio>
#include <cstdlib>

namespace kiln::internal {

void check_failed(const char* file, int line, const char* expr, std::string_view msg) {
  std::fprintf(stderr, "kiln: CHECK failed at %s:%d: %s %.*s\n", file, line, expr,
               static_cast<int>(msg.size()), msg.data());
  std::fflush(stderr);
  std::abort();
}

}  // namespace kiln::internal
