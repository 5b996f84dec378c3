#include "kiln/plan/host_profile_merge.h"

#include <toml++/toml.h>

#include <sstream>

#include "kiln/base/config/toml_reader.h"
#include "kiln/plan/calibration_fit.h"

namespace kiln::plan {
namespace {

std::optional<double> number(const toml::node& n) {
  if (n.is_floating_point()) return *n.value_exact<double>();
  if (n.is_integer()) return static_cast<double>(*n.value_exact<std::int64_t>());
  return std::nullopt;
}

}  // namespace

Result<HostProfile> merge_host_profiles(const std::vector<std::string>& texts,
                                        const std::vector<std::string>& sources) {
  if (texts.empty() || texts.size() != sources.size()) {
    return invalid_argument("merging host profiles: need one or more, each with a name");
  }
  std::vector<toml::table> roots;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    auto root = config::parse_toml(sources[i], false, texts[i]);
    if (!root.is_ok()) return root.status().with_context("merging host profiles");
    roots.push_back(std::move(*root));
  }
  auto where = [&](std::size_t i, const std::string& key) {
    return "merging host profiles: " + sources[i] + ": " + key;
  };
  // Another host first: its every rate would differ, but this is the reason.
  for (std::size_t i = 1; i < roots.size(); ++i) {
    if (roots[i]["host"]["cores"].value<std::int64_t>() !=
        roots[0]["host"]["cores"].value<std::int64_t>()) {
      return invalid_argument(where(i, "host.cores") + " differs from " + sources[0] +
                              "'s (profiles of different hosts)");
    }
  }
  toml::table merged = roots.front();
  // Replacements, applied after the walk (a node cannot change its type in place).
  struct Replacement {
    toml::table* section;
    std::string key;
    std::vector<double> values;  // one: a number; else an array
    bool array;
  };
  std::vector<Replacement> replacements;
  for (auto& [section_key, section_node] : merged) {
    toml::table* section = section_node.as_table();
    if (!section) continue;
    const std::string section_name(section_key.str());
    for (auto& [key, node] : *section) {
      const std::string name = section_name + "." + std::string(key.str());
      std::vector<const toml::node*> others;
      for (std::size_t i = 1; i < roots.size(); ++i) {
        const toml::node* other = roots[i].at_path(name).node();
        if (!other) return invalid_argument(where(i, name) + " is missing (the first has it)");
        others.push_back(other);
      }
      if (name == "host.cores" || name == "profile.version" ||
          (name.rfind("compute_", 0) == 0 && key.str() == "threads")) {
        // Counts, not measurements: they must agree.
        for (std::size_t i = 1; i < roots.size(); ++i) {
          if (number(*others[i - 1]) != number(node)) {
            return invalid_argument(where(i, name) + " differs from " + sources[0] +
                                    "'s (profiles of different hosts or versions)");
          }
        }
        continue;
      }
      if (name == "host.measured_at" && others.size() > 0) {
        const auto last = others.back()->value<std::string>();
        const auto first = node.value<std::string>();
        if (first && last) node.as_string()->get() = *first + " .. " + *last;
        continue;
      }
      if (auto v = number(node)) {
        std::vector<double> values{*v};
        for (std::size_t i = 1; i < roots.size(); ++i) {
          const auto o = number(*others[i - 1]);
          if (!o) return invalid_argument(where(i, name) + " is not a number");
          values.push_back(*o);
        }
        replacements.push_back({section, std::string(key.str()), {median_of(values)}, false});
      } else if (toml::array* array = node.as_array()) {
        Replacement r{section, std::string(key.str()), {}, true};
        for (std::size_t e = 0; e < array->size(); ++e) {
          std::vector<double> values;
          for (std::size_t i = 0; i < roots.size(); ++i) {
            const toml::array* a = i == 0 ? array : others[i - 1]->as_array();
            if (!a || a->size() != array->size()) {
              return invalid_argument(where(i, name) + " must be an array of " +
                                      std::to_string(array->size()) + " numbers, as in " +
                                      sources[0]);
            }
            const auto o = number(*a->get(e));
            if (!o) return invalid_argument(where(i, name) + " holds a value that is not a number");
            values.push_back(*o);
          }
          r.values.push_back(median_of(values));
        }
        replacements.push_back(std::move(r));
      }
    }
  }
  // A key only a later profile has would be silently dropped: refuse it.
  for (std::size_t i = 1; i < roots.size(); ++i) {
    for (auto& [section_key, section_node] : roots[i]) {
      const toml::table* section = section_node.as_table();
      if (!section) continue;
      for (auto& [key, node] : *section) {
        (void)node;
        const std::string name = std::string(section_key.str()) + "." + std::string(key.str());
        if (!merged.at_path(name).node()) {
          return invalid_argument(where(i, name) + " is not in " + sources[0]);
        }
      }
    }
  }
  for (const Replacement& r : replacements) {
    if (r.array) {
      toml::array a;
      for (const double v : r.values) a.push_back(v);
      r.section->insert_or_assign(r.key, std::move(a));
    } else {
      r.section->insert_or_assign(r.key, r.values.front());
    }
  }
  std::ostringstream out;
  out << merged;
  return parse_host_profile(out.str(), "median of " + std::to_string(texts.size()) + " profiles");
}

}  // namespace kiln::plan
