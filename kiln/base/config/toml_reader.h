// TomlReader: typed fields out of a parsed TOML document for Kiln's config
// files (`kiln plan`, `kiln train`). It remembers the first error and every
// key it consumed, so that leftovers can be reported as unknown: a typo must
// not silently fall back to a default. Errors name the file, the field
// ("optim.lr") and the line.
#pragma once

#include <toml++/toml.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::config {

// Parses a file (or, with is_path false, `text` named `source`).
// InvalidArgument with the parser's line and column for malformed TOML.
Result<toml::table> parse_toml(const std::string& source, bool is_path, const std::string& text = "");

class TomlReader {
 public:
  TomlReader(const toml::table& root, std::string source) : root_(root), source_(std::move(source)) {}

  bool has(const std::string& section, const std::string& key) const {
    return static_cast<bool>(root_[section][key]);
  }

  std::int64_t get_int(const std::string& section, const std::string& key, bool required,
                       std::int64_t fallback, std::int64_t min_value = 1);
  // A positive finite number (integers accepted).
  double get_double(const std::string& section, const std::string& key, bool required,
                    double fallback);
  // A finite number >= 0 (weight decay, a minimum learning rate, a fraction).
  double get_nonnegative(const std::string& section, const std::string& key, double fallback);
  bool get_bool(const std::string& section, const std::string& key, bool fallback);
  std::string get_string(const std::string& section, const std::string& key, bool required,
                         std::string fallback);
  std::vector<std::string> get_strings(const std::string& section, const std::string& key,
                                       std::vector<std::string> fallback);
  // An array of positive finite numbers (integers accepted).
  std::vector<double> get_positives(const std::string& section, const std::string& key,
                                    std::vector<double> fallback);
  std::vector<std::int64_t> get_ints(const std::string& section, const std::string& key,
                                     std::vector<std::int64_t> fallback, std::int64_t min_value = 1);

  // Records an error about `section.key` (e.g. an enum value checked later).
  void fail_field(const std::string& section, const std::string& key, const std::string& why);

  // Unknown sections and keys become an error. `sections` lists the known
  // ones for the message ("[model], [data] or [train]"); `doc` is where the
  // schema is documented.
  void check_unknown(const std::string& sections, const std::string& doc);

  const Status& status() const { return status_; }
  const std::string& source() const { return source_; }

 private:
  toml::node_view<const toml::node> take(const std::string& section, const std::string& key,
                                         bool required);
  void fail(const std::string& section, const std::string& key, const std::string& why,
            toml::node_view<const toml::node> node);

  const toml::table& root_;
  std::string source_;
  std::set<std::string> consumed_;
  Status status_;
};

}  // namespace kiln::config
