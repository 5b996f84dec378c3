#include "kiln/base/knobs.h"

#include <charconv>
#include <cstdlib>
#include <mutex>

#include <fmt/format.h>

#include "kiln/base/logging.h"

namespace kiln {
namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<KnobInfo>& registry() {
  static std::vector<KnobInfo> knobs;  // guarded by registry_mutex()
  return knobs;
}

void warn_malformed(std::string_view name, std::string_view text, std::string_view want) {
  log()->warn("ignoring {}={:?}: expected {}; using the default", name, text, want);
}

}  // namespace

const char* getenv_or_null(const char* name) { return std::getenv(name); }

std::vector<KnobInfo> registered_knobs() {
  std::lock_guard lock(registry_mutex());
  return registry();
}

namespace internal {

void register_knob(KnobInfo info) {
  std::lock_guard lock(registry_mutex());
  for (const auto& k : registry()) {
    if (k.name == info.name) return;  // same knob seen from two translation units
  }
  registry().push_back(std::move(info));
}

std::string knob_default_string(const std::string& v) { return v; }
std::string knob_default_string(std::int64_t v) { return std::to_string(v); }
std::string knob_default_string(double v) { return fmt::format("{}", v); }
std::string knob_default_string(bool v) { return v ? "1" : "0"; }

bool parse_knob(std::string_view, std::string_view text, std::string* out) {
  *out = std::string(text);
  return true;
}

bool parse_knob(std::string_view name, std::string_view text, std::int64_t* out) {
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  if (ec != std::errc() || p != text.data() + text.size()) {
    warn_malformed(name, text, "an integer");
    return false;
  }
  return true;
}

bool parse_knob(std::string_view name, std::string_view text, double* out) {
  std::string s(text);
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0') {
    warn_malformed(name, text, "a number");
    return false;
  }
  return true;
}

bool parse_knob(std::string_view name, std::string_view text, bool* out) {
  if (text == "1" || text == "true" || text == "yes" || text == "on") {
    *out = true;
    return true;
  }
  if (text == "0" || text == "false" || text == "no" || text == "off") {
    *out = false;
    return true;
  }
  warn_malformed(name, text, "0/1/true/false");
  return false;
}

}  // namespace internal
}  // namespace kiln
