#include "kiln/store/memory_store.h"

#include <fmt/format.h>

#include "kiln/store/internal/keys.h"

namespace kiln::store {

using internal::quote_key;
using internal::quote_keys;

template <typename Pred>
bool MemoryStore::wait_until(std::unique_lock<std::mutex>& lock, Deadline deadline, Pred pred) {
  // A never-deadline is time_point::max, which overflows inside wait_until.
  if (deadline.is_never()) {
    changed_.wait(lock, pred);
    return true;
  }
  return changed_.wait_until(lock, deadline.at(), pred);
}

Status MemoryStore::set(std::string_view key, std::string_view value) {
  KILN_RETURN_IF_ERROR(internal::validate_key("set", key));
  {
    std::lock_guard lock(mu_);
    data_.insert_or_assign(std::string(key), std::string(value));
  }
  changed_.notify_all();
  return Status::ok();
}

Result<std::string> MemoryStore::get(std::string_view key, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_key("get", key));
  auto start = Clock::now();
  std::unique_lock lock(mu_);
  auto it = data_.end();
  bool found = wait_until(lock, deadline, [&] {
    it = data_.find(key);
    return it != data_.end();
  });
  if (!found) {
    return internal::deadline_error(Clock::now() - start)
        .with_context(fmt::format("store get {}", quote_key(key)));
  }
  return it->second;
}

Result<std::int64_t> MemoryStore::add(std::string_view key, std::int64_t delta) {
  KILN_RETURN_IF_ERROR(internal::validate_key("add", key));
  std::int64_t sum = 0;
  {
    std::lock_guard lock(mu_);
    auto it = data_.find(key);
    KILN_ASSIGN_OR_RETURN(
        sum, internal::add_to_value(key, it == data_.end() ? nullptr : &it->second, delta));
    data_.insert_or_assign(std::string(key), std::to_string(sum));
  }
  changed_.notify_all();
  return sum;
}

Result<std::string> MemoryStore::compare_set(std::string_view key, std::string_view expected,
                                             std::string_view desired) {
  KILN_RETURN_IF_ERROR(internal::validate_key("compare_set", key));
  std::string after;
  {
    std::lock_guard lock(mu_);
    auto it = data_.find(key);
    std::string_view current = it == data_.end() ? std::string_view() : it->second;
    if (current != expected) return std::string(current);
    data_.insert_or_assign(std::string(key), std::string(desired));
    after = desired;
  }
  changed_.notify_all();
  return after;
}

Status MemoryStore::wait(std::span<const std::string> keys, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("wait", keys));
  auto start = Clock::now();
  std::unique_lock lock(mu_);
  auto all_present = [&] {
    for (const auto& k : keys) {
      if (!data_.contains(k)) return false;
    }
    return true;
  };
  if (wait_until(lock, deadline, all_present)) return Status::ok();
  std::vector<std::string> missing;
  for (const auto& k : keys) {
    if (!data_.contains(k)) missing.push_back(k);
  }
  return internal::deadline_error(Clock::now() - start, missing)
      .with_context(fmt::format("store wait {}", quote_keys(keys)));
}

Result<bool> MemoryStore::erase(std::string_view key) {
  KILN_RETURN_IF_ERROR(internal::validate_key("erase", key));
  std::lock_guard lock(mu_);
  auto it = data_.find(key);
  if (it == data_.end()) return false;
  data_.erase(it);
  return true;
}

Result<bool> MemoryStore::check(std::span<const std::string> keys) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("check", keys));
  std::lock_guard lock(mu_);
  for (const auto& k : keys) {
    if (!data_.contains(k)) return false;
  }
  return true;
}

}  // namespace kiln::store
