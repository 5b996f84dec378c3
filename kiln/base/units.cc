#include "kiln/base/units.h"

#include <cctype>
#include <charconv>

#include <fmt/format.h>

namespace kiln {

Result<std::uint64_t> parse_bytes(std::string_view text) {
  std::uint64_t value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || p == text.data()) {
    return invalid_argument(fmt::format("size {:?}: expected a number like 4K, 256M or 1G", text));
  }
  std::string_view suffix(p, text.data() + text.size() - p);
  if (!suffix.empty() && (suffix.back() == 'B' || suffix.back() == 'b')) suffix.remove_suffix(1);
  if (!suffix.empty() && (suffix.back() == 'i')) suffix.remove_suffix(1);
  int shift = 0;
  if (suffix.size() == 1) {
    switch (std::toupper(static_cast<unsigned char>(suffix[0]))) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default:
        return invalid_argument(fmt::format("size {:?}: unknown suffix {:?}", text, suffix));
    }
  } else if (!suffix.empty()) {
    return invalid_argument(fmt::format("size {:?}: unknown suffix {:?}", text, suffix));
  }
  if (shift > 0 && value > (UINT64_MAX >> shift)) {
    return invalid_argument(fmt::format("size {:?} overflows 64 bits", text));
  }
  return value << shift;
}

std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* kSuffix[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (i < 4 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++i;
  }
  return fmt::format("{}{}", bytes, kSuffix[i]);
}

}  // namespace kiln
