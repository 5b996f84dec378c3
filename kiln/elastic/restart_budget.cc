#include "kiln/elastic/restart_budget.h"

#include <fmt/format.h>

#include <charconv>
#include <string>

namespace kiln::elastic {
namespace {

constexpr std::string_view kFailuresKey = "failures";

std::string round_key(std::int64_t generation, std::string_view what) {
  return fmt::format("g{}/{}", generation, what);
}

Result<int> parse_count(std::string_view text, std::string_view key) {
  int v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size() || v < 0) {
    return data_loss(fmt::format("restart count key {:?} holds {:?}, not a count", key, text));
  }
  return v;
}

}  // namespace

Result<int> RestartBudget::read_failures() {
  // add(0) reads the counter, missing as 0, in one call.
  KILN_ASSIGN_OR_RETURN(std::int64_t n, store_->add(kFailuresKey, 0));
  return static_cast<int>(n);
}

Result<int> RestartBudget::restarts_before(std::int64_t generation) {
  const std::string key = round_key(generation, "restarts");
  KILN_ASSIGN_OR_RETURN(int now, read_failures());
  // The first member fixes the round's count; the others read it back.
  KILN_ASSIGN_OR_RETURN(std::string fixed, store_->compare_set(key, "", std::to_string(now)));
  return parse_count(fixed, key);
}

Result<bool> RestartBudget::record_failure(std::int64_t generation, std::string_view node) {
  KILN_ASSIGN_OR_RETURN(std::string claimed,
                        store_->compare_set(round_key(generation, "failed"), "", node));
  if (claimed != node) return false;  // another agent counted this round
  KILN_RETURN_IF_ERROR(store_->add(kFailuresKey, 1).status());
  return true;
}

}  // namespace kiln::elastic
