#include "kiln/base/config/toml_reader.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>

namespace kiln::config {
namespace {

std::string where(const toml::source_region& src) {
  if (src.begin.line == 0) return "";
  return " at line " + std::to_string(src.begin.line);
}

}  // namespace

Result<toml::table> parse_toml(const std::string& source, bool is_path, const std::string& text) {
  // A config is a few KiB; a larger one is a mistake (or hostile), refused
  // before toml++ reads it all into memory.
  constexpr std::uintmax_t kMaxConfigBytes = 4u << 20;
  std::error_code ec;
  std::uintmax_t size = is_path ? std::filesystem::file_size(source, ec) : text.size();
  if (!ec && size > kMaxConfigBytes) {
    return invalid_argument("config " + source + ": " + std::to_string(size) +
                            " bytes is over the " + std::to_string(kMaxConfigBytes) +
                            "-byte limit of a config file");
  }
  try {
    return is_path ? toml::parse_file(source) : toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    std::string msg(e.description());
    if (is_path && msg.find("File could not be opened") != std::string::npos) {
      return not_found("config " + source + ": cannot open file");
    }
    return invalid_argument("config " + source + ":" + std::to_string(at.line) + ":" +
                            std::to_string(at.column) + ": TOML parse error: " + msg);
  }
}

std::int64_t TomlReader::get_int(const std::string& section, const std::string& key,
                                 bool required, std::int64_t fallback, std::int64_t min_value) {
  auto node = take(section, key, required);
  if (!node) return fallback;
  auto v = node.value_exact<std::int64_t>();
  if (!v) {
    fail(section, key, "must be an integer", node);
    return fallback;
  }
  if (*v < min_value) {
    fail(section, key, "must be >= " + std::to_string(min_value), node);
    return fallback;
  }
  return *v;
}

double TomlReader::get_double(const std::string& section, const std::string& key, bool required,
                              double fallback) {
  auto node = take(section, key, required);
  if (!node) return fallback;
  std::optional<double> v;
  if (node.is_floating_point()) v = node.value_exact<double>();
  if (node.is_integer()) v = static_cast<double>(*node.value_exact<std::int64_t>());
  if (!v || !std::isfinite(*v) || *v <= 0) {
    fail(section, key, "must be a positive number", node);
    return fallback;
  }
  return *v;
}

double TomlReader::get_nonnegative(const std::string& section, const std::string& key,
                                   double fallback) {
  auto node = take(section, key, false);
  if (!node) return fallback;
  std::optional<double> v;
  if (node.is_floating_point()) v = node.value_exact<double>();
  if (node.is_integer()) v = static_cast<double>(*node.value_exact<std::int64_t>());
  if (!v || !std::isfinite(*v) || *v < 0) {
    fail(section, key, "must be a number >= 0", node);
    return fallback;
  }
  return *v;
}

bool TomlReader::get_bool(const std::string& section, const std::string& key, bool fallback) {
  auto node = take(section, key, false);
  if (!node) return fallback;
  auto v = node.value_exact<bool>();
  if (!v) {
    fail(section, key, "must be true or false", node);
    return fallback;
  }
  return *v;
}

std::string TomlReader::get_string(const std::string& section, const std::string& key,
                                   bool required, std::string fallback) {
  auto node = take(section, key, required);
  if (!node) return fallback;
  auto v = node.value_exact<std::string>();
  if (!v) {
    fail(section, key, "must be a string", node);
    return fallback;
  }
  return *v;
}

std::vector<std::string> TomlReader::get_strings(const std::string& section,
                                                 const std::string& key,
                                                 std::vector<std::string> fallback) {
  auto node = take(section, key, false);
  if (!node) return fallback;
  const toml::array* array = node.as_array();
  std::vector<std::string> out;
  if (array) {
    for (const toml::node& item : *array) {
      auto s = item.value_exact<std::string>();
      if (!s) {
        array = nullptr;
        break;
      }
      out.push_back(*s);
    }
  }
  if (!array) {
    fail(section, key, "must be an array of strings", node);
    return fallback;
  }
  return out;
}

std::vector<double> TomlReader::get_positives(const std::string& section, const std::string& key,
                                              std::vector<double> fallback) {
  auto node = take(section, key, false);
  if (!node) return fallback;
  const toml::array* array = node.as_array();
  std::vector<double> out;
  if (array) {
    for (const toml::node& item : *array) {
      std::optional<double> v;
      if (item.is_floating_point()) v = item.value_exact<double>();
      if (item.is_integer()) v = static_cast<double>(*item.value_exact<std::int64_t>());
      if (!v || !std::isfinite(*v) || *v <= 0) {
        array = nullptr;
        break;
      }
      out.push_back(*v);
    }
  }
  if (!array) {
    fail(section, key, "must be an array of positive numbers", node);
    return fallback;
  }
  return out;
}

std::vector<std::int64_t> TomlReader::get_ints(const std::string& section, const std::string& key,
                                               std::vector<std::int64_t> fallback,
                                               std::int64_t min_value) {
  auto node = take(section, key, false);
  if (!node) return fallback;
  const toml::array* array = node.as_array();
  std::vector<std::int64_t> out;
  if (array) {
    for (const toml::node& item : *array) {
      auto v = item.value_exact<std::int64_t>();
      if (!v || *v < min_value) {
        array = nullptr;
        break;
      }
      out.push_back(*v);
    }
  }
  if (!array) {
    fail(section, key, fmt::format("must be an array of integers >= {}", min_value), node);
    return fallback;
  }
  return out;
}

void TomlReader::fail_field(const std::string& section, const std::string& key,
                            const std::string& why) {
  if (status_.is_ok()) {
    status_ = invalid_argument("config " + source_ + ": field '" + section + "." + key + "' " + why);
  }
}

void TomlReader::check_unknown(const std::string& sections, const std::string& doc) {
  for (auto&& [section, node] : root_) {
    const std::string s(section.str());
    const auto* table = node.as_table();
    if (!table) {
      if (status_.is_ok()) {
        status_ = invalid_argument("config " + source_ + ": '" + s +
                                   "' is not a section; expected " + sections);
      }
      continue;
    }
    for (auto&& [key, value] : *table) {
      const std::string k(key.str());
      if (!consumed_.count(s + "." + k) && status_.is_ok()) {
        status_ = invalid_argument("config " + source_ + ": unknown field '" + s + "." + k + "'" +
                                   where(value.source()) + " (see " + doc + " for the schema)");
      }
    }
  }
}

toml::node_view<const toml::node> TomlReader::take(const std::string& section,
                                                   const std::string& key, bool required) {
  consumed_.insert(section + "." + key);
  auto node = root_[section][key];
  if (!node && required) fail_field(section, key, "is required but missing");
  return node;
}

void TomlReader::fail(const std::string& section, const std::string& key, const std::string& why,
                      toml::node_view<const toml::node> node) {
  std::ostringstream got;
  got << node;
  fail_field(section, key, why + " (got " + got.str() + ")" + where(node.node()->source()));
}

}  // namespace kiln::config
