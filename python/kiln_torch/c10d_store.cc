#include "python/kiln_torch/c10d_store.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <exception>

namespace kiln::torch_backend {
namespace {

std::vector<std::uint8_t> bytes(std::string_view s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<std::uint8_t>& b) { return {b.begin(), b.end()}; }

// c10d stores report failures as exceptions; a timeout's message says so
// ("Socket Timeout", "Wait timeout").
Status from_exception(const std::exception& e, std::string_view what) {
  std::string msg = e.what();
  auto line = msg.find('\n');  // c10::Error appends a C++ backtrace
  if (line != std::string::npos) msg.resize(line);
  std::string lower = msg;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  std::string full = fmt::format("PyTorch store: {}: {}", what, msg);
  if (lower.find("timeout") != std::string::npos || lower.find("timed out") != std::string::npos) {
    return deadline_exceeded(std::move(full));
  }
  return unavailable(std::move(full));
}

std::chrono::milliseconds timeout_of(Deadline deadline) {
  // c10d reads 0 as "no timeout": never hand it a zero.
  constexpr std::int64_t kLongest = 24LL * 3600 * 1000;
  return std::chrono::milliseconds(std::clamp<std::int64_t>(deadline.remaining_ms(), 1, kLongest));
}

}  // namespace

C10dStore::C10dStore(c10::intrusive_ptr<c10d::Store> store) : store_(std::move(store)) {}

Status C10dStore::set(std::string_view key, std::string_view value) {
  try {
    store_->set(std::string(key), bytes(value));
    return Status::ok();
  } catch (const std::exception& e) {
    return from_exception(e, fmt::format("set {:?}", key));
  }
}

Result<std::string> C10dStore::get(std::string_view key, Deadline deadline) {
  std::string k(key);
  KILN_RETURN_IF_ERROR(wait(std::span<const std::string>(&k, 1), deadline));
  try {
    return text(store_->get(k));
  } catch (const std::exception& e) {
    return from_exception(e, fmt::format("get {:?}", key));
  }
}

Result<std::int64_t> C10dStore::add(std::string_view key, std::int64_t delta) {
  try {
    return store_->add(std::string(key), delta);
  } catch (const std::exception& e) {
    return from_exception(e, fmt::format("add {:?}", key));
  }
}

Result<std::string> C10dStore::compare_set(std::string_view key, std::string_view expected,
                                           std::string_view desired) {
  try {
    return text(store_->compareSet(std::string(key), bytes(expected), bytes(desired)));
  } catch (const std::exception& e) {
    return from_exception(e, fmt::format("compare_set {:?}", key));
  }
}

Status C10dStore::wait(std::span<const std::string> keys, Deadline deadline) {
  std::vector<std::string> k(keys.begin(), keys.end());
  try {
    store_->wait(k, timeout_of(deadline));
    return Status::ok();
  } catch (const std::exception& e) {
    return from_exception(e, fmt::format("waiting for {}", k));
  }
}

Result<bool> C10dStore::erase(std::string_view key) {
  try {
    return store_->deleteKey(std::string(key));
  } catch (const std::exception& e) {
    return from_exception(e, fmt::format("delete {:?}", key));
  }
}

Result<bool> C10dStore::check(std::span<const std::string> keys) {
  try {
    return store_->check(std::vector<std::string>(keys.begin(), keys.end()));
  } catch (const std::exception& e) {
    return from_exception(e, "check");
  }
}

}  // namespace kiln::torch_backend
