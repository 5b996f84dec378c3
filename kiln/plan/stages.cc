#include "kiln/plan/stages.h"

#include <algorithm>
#include <charconv>
#include <numeric>

namespace kiln::plan {

std::vector<std::int64_t> balanced_stage_layers(std::int64_t layers, std::int64_t pp) {
  pp = std::max<std::int64_t>(1, pp);
  const std::int64_t per = (layers + pp - 1) / pp;
  std::vector<std::int64_t> out(static_cast<size_t>(pp), per);
  // Take the deficit from the ends inwards: last, first, last-but-one, ...
  std::int64_t deficit = per * pp - layers;
  for (std::int64_t k = 0; deficit > 0; ++k, --deficit) {
    const std::int64_t from_end = k / 2;
    const size_t i =
        k % 2 == 0 ? static_cast<size_t>(pp - 1 - from_end) : static_cast<size_t>(from_end);
    --out[i];
  }
  return out;
}

std::vector<std::int64_t> stage_layers(const PlanConfig& c) {
  if (!c.layout.stage_layers.empty()) return c.layout.stage_layers;
  return balanced_stage_layers(c.model.layers, c.layout.pp);
}

bool stages_are_uneven(const std::vector<std::int64_t>& s) {
  return !s.empty() &&
         *std::max_element(s.begin(), s.end()) != *std::min_element(s.begin(), s.end());
}

Status check_stage_layers(const PlanConfig& c, const std::string& where) {
  const auto& l = c.layout;
  const std::int64_t layers = c.model.layers;
  if (l.stage_layers.empty()) {
    if (layers < l.pp * l.vpp) {
      return invalid_argument(where + "model.layers (" + std::to_string(layers) +
                              ") is fewer than layout.pp*vpp (" + std::to_string(l.pp * l.vpp) +
                              "): every model chunk needs a layer");
    }
    return Status::ok();
  }
  const auto& s = l.stage_layers;
  if (static_cast<std::int64_t>(s.size()) != l.pp) {
    return invalid_argument(where + "layout.stage_layers has " + std::to_string(s.size()) +
                            " entries but layout.pp is " + std::to_string(l.pp));
  }
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] < l.vpp) {
      return invalid_argument(where + "layout.stage_layers[" + std::to_string(i) +
                              "] = " + std::to_string(s[i]) + " is below layout.vpp (" +
                              std::to_string(l.vpp) + "): every model chunk needs a layer");
    }
  }
  const std::int64_t sum = std::accumulate(s.begin(), s.end(), std::int64_t{0});
  if (sum != layers) {
    return invalid_argument(where + "layout.stage_layers sum to " + std::to_string(sum) +
                            " but model.layers is " + std::to_string(layers));
  }
  return Status::ok();
}

Result<std::vector<std::int64_t>> parse_stage_layers(const std::string& text) {
  std::vector<std::int64_t> out;
  size_t i = 0;
  auto is_sep = [](char ch) { return ch == ' ' || ch == ',' || ch == ';' || ch == '\t'; };
  while (i < text.size()) {
    while (i < text.size() && is_sep(text[i])) ++i;
    if (i == text.size()) break;
    size_t j = i;
    while (j < text.size() && !is_sep(text[j])) ++j;
    std::int64_t v = 0;
    auto [ptr, ec] = std::from_chars(text.data() + i, text.data() + j, v);
    if (ec != std::errc() || ptr != text.data() + j || v < 1) {
      return invalid_argument("stage layers '" + text + "': '" + text.substr(i, j - i) +
                              "' is not a positive integer (expected e.g. \"7 8 8 7\")");
    }
    out.push_back(v);
    i = j;
  }
  if (out.empty()) return invalid_argument("stage layers '" + text + "': no layer counts");
  return out;
}

std::string format_stage_layers(const std::vector<std::int64_t>& stages) {
  std::string out;
  for (auto n : stages) out += (out.empty() ? "" : " ") + std::to_string(n);
  return out;
}

}  // namespace kiln::plan
