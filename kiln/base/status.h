// Status and Result<T>: expected failures as values.
//
// A Status carries a Code that tells the caller what to do about it (see
// docs/errors.md) and a message that says what failed and where. Code that
// receives input from outside (network, disk, config) returns Status or
// Result<T>; impossible states are KILN_CHECK failures instead.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kiln {

enum class Code : std::uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller passed something malformed: fix the call
  kNotFound,            // a key, file or object does not exist
  kAlreadyExists,       // create-only target exists
  kFailedPrecondition,  // state does not allow the call: stop until fixed
  kAborted,             // a peer or the group failed: re-form the group
  kUnavailable,         // transient (connection refused, reset): retry with backoff
  kDeadlineExceeded,    // a blocking call ran out of time
  kDataLoss,            // corrupt or truncated data
  kResourceExhausted,   // disk full, out of memory, limit hit
  kCancelled,           // the caller or abort() cancelled it
  kInternal,            // a bug in Kiln
};

std::string_view code_name(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }

  bool is_ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // "DeadlineExceeded: allreduce ... " — the form used in logs and CLI errors.
  std::string to_string() const;

  // Returns a copy whose message is prefixed with `context: `.
  Status with_context(std::string_view context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {Code::kNotFound, std::move(m)}; }
inline Status already_exists(std::string m) { return {Code::kAlreadyExists, std::move(m)}; }
inline Status failed_precondition(std::string m) {
  return {Code::kFailedPrecondition, std::move(m)};
}
inline Status aborted(std::string m) { return {Code::kAborted, std::move(m)}; }
inline Status unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
inline Status deadline_exceeded(std::string m) { return {Code::kDeadlineExceeded, std::move(m)}; }
inline Status data_loss(std::string m) { return {Code::kDataLoss, std::move(m)}; }
inline Status resource_exhausted(std::string m) {
  return {Code::kResourceExhausted, std::move(m)};
}
inline Status cancelled(std::string m) { return {Code::kCancelled, std::move(m)}; }
inline Status internal_error(std::string m) { return {Code::kInternal, std::move(m)}; }

// Status from errno, e.g. errno_status("connect to 10.0.0.2:29500", errno).
// ECONNREFUSED/ECONNRESET/EPIPE map to Unavailable, ENOSPC/EDQUOT to
// ResourceExhausted, ENOENT to NotFound, ETIMEDOUT to DeadlineExceeded.
Status errno_status(std::string_view what, int err);

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).is_ok()) v_ = Status(Code::kInternal, "Result built from ok Status");
  }

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }

  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

namespace internal {
inline Status to_status(Status s) { return s; }
template <typename T>
Status to_status(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

}  // namespace kiln

#define KILN_CONCAT_INNER(a, b) a##b
#define KILN_CONCAT(a, b) KILN_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function if it is not ok.
#define KILN_RETURN_IF_ERROR(expr)                                         \
  do {                                                                     \
    ::kiln::Status kiln_status_ = ::kiln::internal::to_status((expr));     \
    if (!kiln_status_.is_ok()) return kiln_status_;                        \
  } while (0)

// `KILN_ASSIGN_OR_RETURN(auto x, make_x());`
#define KILN_ASSIGN_OR_RETURN(lhs, expr) \
  KILN_ASSIGN_OR_RETURN_IMPL(KILN_CONCAT(kiln_result_, __LINE__), lhs, expr)
#define KILN_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.is_ok()) return tmp.status();           \
  lhs = std::move(tmp).value()
