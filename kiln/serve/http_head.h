// What the two HTTP/1.x readers of kiln serve share: RequestReader (the
// fronts read requests) and ResponseReader (the router's upstream loop and
// the load generator read answers). Both take bytes in whatever pieces
// recv() returns, find a message head, walk its header lines and read a
// body of Content-Length bytes; they differ only in the start line and in
// which headers they act on.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace kiln::serve::http {

// Optional whitespace (RFC 9110 5.6.3) removed from both ends.
std::string_view trim(std::string_view s);
// ASCII case-insensitive equality (header names and tokens).
bool iequals(std::string_view a, std::string_view b);
// Whether the comma-separated header value lists `token` (any case).
bool lists(std::string_view value, std::string_view token);
// What an error or a log line may quote of the peer's bytes: the first 80,
// non-printable ones as '?'.
std::string excerpt(std::string_view s);
// A Content-Length value: digits only; nullopt otherwise (empty, a sign,
// trailing bytes, or more than a size_t holds).
std::optional<std::size_t> parse_content_length(std::string_view value);

// One "Name: value" line of a head (value trimmed; the name as sent).
struct HeaderField {
  std::string_view name;
  std::string_view value;
};

// The lines of a message head (its text up to, not including, the
// "\r\n\r\n" that ends it): the start line, then each header line.
class HeadLines {
 public:
  explicit HeadLines(std::string_view head);
  std::string_view start_line() const { return start_line_; }
  // The next header line into *line; false after the last.
  bool next(std::string_view* line);

 private:
  std::string_view head_;
  std::string_view start_line_;
  std::size_t line_end_;  // of the line returned last (npos: none left)
};

// A header line split at its first ':'; nullopt without one.
std::optional<HeaderField> split_field(std::string_view line);

// The bytes received on one connection and not yet returned as a message.
class MessageBuffer {
 public:
  void feed(std::string_view bytes) { buffer_.append(bytes); }
  // The bytes not yet consumed.
  std::string_view pending() const { return std::string_view(buffer_).substr(consumed_); }
  std::size_t size() const { return buffer_.size() - consumed_; }
  // Marks the first n pending bytes returned. Compacts, so that a long
  // keep-alive run does not grow the buffer without bound.
  void consume(std::size_t n);

 private:
  std::string buffer_;
  std::size_t consumed_ = 0;  // bytes of buffer_ already returned
};

}  // namespace kiln::serve::http
