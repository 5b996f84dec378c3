#include "kiln/store/internal/keys.h"

#include <fmt/format.h>

#include <charconv>
#include <chrono>

namespace kiln::store::internal {

Status validate_key(std::string_view op, std::string_view key) {
  if (key.empty()) return invalid_argument(fmt::format("store {}: empty key", op));
  return Status::ok();
}

Status validate_keys(std::string_view op, std::span<const std::string> keys) {
  for (const auto& key : keys) KILN_RETURN_IF_ERROR(validate_key(op, key));
  return Status::ok();
}

std::string quote_key(std::string_view key) {
  std::string out = "'";
  for (unsigned char c : key) {
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  out += '\'';
  return out;
}

std::string quote_keys(std::span<const std::string> keys) {
  std::string out = "[";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i > 0) out += ", ";
    out += quote_key(keys[i]);
  }
  out += ']';
  return out;
}

std::string format_duration(Clock::duration d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  if (ms < 1000) return fmt::format("{}ms", ms);
  return fmt::format("{:.3g}s", static_cast<double>(ms) / 1000.0);
}

Result<std::int64_t> add_to_value(std::string_view key, const std::string* current,
                                  std::int64_t delta) {
  std::int64_t value = 0;
  if (current != nullptr) {
    const char* first = current->data();
    const char* last = first + current->size();
    auto [end, ec] = std::from_chars(first, last, value);
    if (ec != std::errc() || end != last || current->empty()) {
      return invalid_argument(fmt::format("store add {}: value {} is not a decimal integer",
                                          quote_key(key), quote_key(*current)));
    }
  }
  std::int64_t sum = 0;
  if (__builtin_add_overflow(value, delta, &sum)) {
    return invalid_argument(
        fmt::format("store add {}: {} + {} overflows int64", quote_key(key), value, delta));
  }
  return sum;
}

Status deadline_error(Clock::duration waited, std::span<const std::string> missing) {
  std::string msg = fmt::format("deadline exceeded after {}", format_duration(waited));
  if (!missing.empty()) msg += fmt::format(", still missing {}", quote_keys(missing));
  return deadline_exceeded(std::move(msg));
}

}  // namespace kiln::store::internal
