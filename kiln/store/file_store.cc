#include "kiln/store/file_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <filesystem>

#include "kiln/base/backoff.h"
#include "kiln/base/fd.h"
#include "kiln/base/fs.h"
#include "kiln/store/internal/keys.h"

namespace kiln::store {
namespace {

using internal::quote_key;
using internal::quote_keys;
using ::kiln::Fd;

constexpr char kLockName[] = ".lock";
// File names stay well under NAME_MAX (255) even after the "k-" and hash.
constexpr std::size_t kMaxEscapedBytes = 180;
// get/wait poll the directory; writers poll the lock.
constexpr BackoffOptions kPollBackoff{.base = std::chrono::milliseconds(1),
                                      .cap = std::chrono::milliseconds(50)};
constexpr BackoffOptions kLockBackoff{.base = std::chrono::microseconds(200),
                                      .cap = std::chrono::milliseconds(10)};

bool is_plain(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// Holds an exclusive flock on DIR/.lock; closing the descriptor releases it.
// Polls with LOCK_NB so that waiting for the lock has a deadline.
Result<Fd> lock_dir(const std::string& dir, std::string_view op, std::string_view key,
                    Deadline deadline) {
  auto context = [&] { return fmt::format("store {} {}", op, quote_key(key)); };
  std::string path = dir + "/" + kLockName;
  Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status("open " + path, errno).with_context(context());
  auto start = Clock::now();
  Backoff backoff(kLockBackoff);
  while (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) return errno_status("flock " + path, errno).with_context(context());
    if (!backoff.sleep_before_retry(deadline)) {
      return deadline_exceeded(fmt::format("{}: lock {} still held by another writer after {}",
                                           context(), path,
                                           internal::format_duration(Clock::now() - start)));
    }
  }
  return fd;
}

}  // namespace

Result<std::unique_ptr<FileStore>> FileStore::open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return errno_status(fmt::format("file store: create directory {}", dir), ec.value());
  std::string lock = dir + "/" + kLockName;
  Fd fd(::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status(fmt::format("file store: open {}", lock), errno);
  return std::unique_ptr<FileStore>(new FileStore(dir));
}

std::string FileStore::file_name(std::string_view key) {
  std::string escaped;
  for (unsigned char c : key) {
    if (is_plain(c)) {
      escaped += static_cast<char>(c);
    } else {
      escaped += fmt::format("%{:02X}", c);
    }
  }
  if (escaped.size() > kMaxEscapedBytes) {
    escaped.resize(kMaxEscapedBytes);
    escaped += fmt::format("~{:016x}", XXH64(key.data(), key.size(), 0));
  }
  return "k-" + escaped;
}

std::string FileStore::path(std::string_view key) const { return dir_ + "/" + file_name(key); }

Status FileStore::write_value(std::string_view op, std::string_view key, std::string_view value) {
  // Not fsynced (see file_store.h): atomic is what rendezvous needs.
  return write_file_atomic(*Fs::posix(), path(key), value, Durability::kAtomicOnly)
      .with_context(fmt::format("store {} {} in {}", op, quote_key(key), dir_));
}

Result<bool> FileStore::read_value(std::string_view op, std::string_view key, std::string* value) {
  std::string p = path(key);
  Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return false;
    return errno_status("open " + p, errno)
        .with_context(fmt::format("store {} {}", op, quote_key(key)));
  }
  value->clear();
  char buf[64 * 1024];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("read " + p, errno)
          .with_context(fmt::format("store {} {}", op, quote_key(key)));
    }
    if (n == 0) break;
    value->append(buf, static_cast<std::size_t>(n));
  }
  return true;
}

Status FileStore::set(std::string_view key, std::string_view value) {
  KILN_RETURN_IF_ERROR(internal::validate_key("set", key));
  KILN_ASSIGN_OR_RETURN(Fd lock, lock_dir(dir_, "set", key, Deadline::after(default_timeout())));
  return write_value("set", key, value);
}

Result<std::string> FileStore::get(std::string_view key, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_key("get", key));
  auto start = Clock::now();
  Backoff backoff(kPollBackoff);
  std::string value;
  while (true) {
    KILN_ASSIGN_OR_RETURN(bool found, read_value("get", key, &value));
    if (found) return value;
    if (!backoff.sleep_before_retry(deadline)) {
      return internal::deadline_error(Clock::now() - start)
          .with_context(fmt::format("store get {} in {}", quote_key(key), dir_));
    }
  }
}

Result<std::int64_t> FileStore::add(std::string_view key, std::int64_t delta) {
  KILN_RETURN_IF_ERROR(internal::validate_key("add", key));
  KILN_ASSIGN_OR_RETURN(Fd lock, lock_dir(dir_, "add", key, Deadline::after(default_timeout())));
  std::string current;
  KILN_ASSIGN_OR_RETURN(bool found, read_value("add", key, &current));
  KILN_ASSIGN_OR_RETURN(std::int64_t sum,
                        internal::add_to_value(key, found ? &current : nullptr, delta));
  KILN_RETURN_IF_ERROR(write_value("add", key, std::to_string(sum)));
  return sum;
}

Result<std::string> FileStore::compare_set(std::string_view key, std::string_view expected,
                                           std::string_view desired) {
  KILN_RETURN_IF_ERROR(internal::validate_key("compare_set", key));
  KILN_ASSIGN_OR_RETURN(Fd lock,
                        lock_dir(dir_, "compare_set", key, Deadline::after(default_timeout())));
  std::string current;
  KILN_ASSIGN_OR_RETURN(bool found, read_value("compare_set", key, &current));
  if (!found) current.clear();
  if (current != expected) return current;
  KILN_RETURN_IF_ERROR(write_value("compare_set", key, desired));
  return std::string(desired);
}

Status FileStore::wait(std::span<const std::string> keys, Deadline deadline) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("wait", keys));
  auto start = Clock::now();
  Backoff backoff(kPollBackoff);
  while (true) {
    std::vector<std::string> missing;
    for (const auto& k : keys) {
      if (::access(path(k).c_str(), F_OK) != 0) missing.push_back(k);
    }
    if (missing.empty()) return Status::ok();
    if (!backoff.sleep_before_retry(deadline)) {
      return internal::deadline_error(Clock::now() - start, missing)
          .with_context(fmt::format("store wait {} in {}", quote_keys(keys), dir_));
    }
  }
}

Result<bool> FileStore::erase(std::string_view key) {
  KILN_RETURN_IF_ERROR(internal::validate_key("erase", key));
  KILN_ASSIGN_OR_RETURN(Fd lock, lock_dir(dir_, "erase", key, Deadline::after(default_timeout())));
  std::string p = path(key);
  if (::unlink(p.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  return errno_status("unlink " + p, errno)
      .with_context(fmt::format("store erase {}", quote_key(key)));
}

Result<bool> FileStore::check(std::span<const std::string> keys) {
  KILN_RETURN_IF_ERROR(internal::validate_keys("check", keys));
  for (const auto& k : keys) {
    std::string p = path(k);
    if (::access(p.c_str(), F_OK) == 0) continue;
    if (errno == ENOENT) return false;
    return errno_status("access " + p, errno)
        .with_context(fmt::format("store check {}", quote_key(k)));
  }
  return true;
}

}  // namespace kiln::store
