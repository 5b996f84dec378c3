#include "kiln/store/prefix_store.h"

#include "kiln/base/check.h"

namespace kiln::store {

PrefixStore::PrefixStore(std::string prefix, std::shared_ptr<Store> base)
    : prefix_(std::move(prefix)), base_(std::move(base)) {
  KILN_CHECK_MSG(!prefix_.empty(), "PrefixStore needs a non-empty prefix");
  KILN_CHECK(base_ != nullptr);
  set_default_timeout(base_->default_timeout());
}

std::string PrefixStore::full_key(std::string_view key) const {
  if (key.empty()) return {};
  std::string out;
  out.reserve(prefix_.size() + 1 + key.size());
  out.append(prefix_).append("/").append(key);
  return out;
}

std::vector<std::string> PrefixStore::full_keys(std::span<const std::string> keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& k : keys) out.push_back(full_key(k));
  return out;
}

Status PrefixStore::set(std::string_view key, std::string_view value) {
  return base_->set(full_key(key), value);
}

Result<std::string> PrefixStore::get(std::string_view key, Deadline deadline) {
  return base_->get(full_key(key), deadline);
}

Result<std::int64_t> PrefixStore::add(std::string_view key, std::int64_t delta) {
  return base_->add(full_key(key), delta);
}

Result<std::string> PrefixStore::compare_set(std::string_view key, std::string_view expected,
                                             std::string_view desired) {
  return base_->compare_set(full_key(key), expected, desired);
}

Status PrefixStore::wait(std::span<const std::string> keys, Deadline deadline) {
  return base_->wait(full_keys(keys), deadline);
}

Result<bool> PrefixStore::erase(std::string_view key) { return base_->erase(full_key(key)); }

Result<bool> PrefixStore::check(std::span<const std::string> keys) {
  return base_->check(full_keys(keys));
}

}  // namespace kiln::store
