// Byte sizes as people write them: "4K", "256M", "1G", "1024" (powers of 1024).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln {

Result<std::uint64_t> parse_bytes(std::string_view text);

// 4096 -> "4K", 268435456 -> "256M", 1000 -> "1000".
std::string format_bytes(std::uint64_t bytes);

}  // namespace kiln
