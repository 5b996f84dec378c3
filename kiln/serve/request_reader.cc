#include "kiln/serve/request_reader.h"

#include <fmt/format.h>
#include <strings.h>

#include <charconv>

namespace kiln::serve {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// Whether the comma-separated header value lists `token` (any case).
bool lists(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const std::size_t comma = value.find(',');
    if (iequals(trim(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

// What a log line or an error may quote of the peer's bytes: printable, short.
std::string excerpt(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  return out;
}

bool is_token_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '!' || c == '#' || c == '$' || c == '%' || c == '&' ||
         c == '\'' || c == '*' || c == '+' || c == '^' || c == '`' || c == '|' || c == '~';
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!is_token_char(c)) return false;
  }
  return true;
}

}  // namespace

bool RequestReader::fail(int status, std::string message) {
  error_ = RequestError{status, std::move(message)};
  return false;
}

bool RequestReader::next(HttpRequest* out) {
  if (error_) return false;
  // RFC 9112 2.2: a server ignores empty lines before a request line.
  while (buffer_.size() - consumed_ >= 2 && buffer_.compare(consumed_, 2, "\r\n") == 0) {
    consumed_ += 2;
  }
  const std::string_view in = std::string_view(buffer_).substr(consumed_);
  const std::size_t head_end = in.find("\r\n\r\n");
  if (head_end == std::string_view::npos) {
    if (in.size() > limits_.max_header_bytes) {
      return fail(431, fmt::format("request headers: no end of headers ('\\r\\n\\r\\n') within {} "
                                   "bytes (the bound)",
                                   limits_.max_header_bytes));
    }
    return false;
  }
  if (head_end > limits_.max_header_bytes) {
    return fail(431, fmt::format("request headers: {} bytes, over the bound of {}", head_end,
                                 limits_.max_header_bytes));
  }
  const std::string_view head = in.substr(0, head_end);
  std::size_t line_end = head.find("\r\n");
  const std::string_view request_line = head.substr(0, line_end);
  // "POST /v1/predict HTTP/1.1"
  const std::size_t sp1 = request_line.find(' ');
  const std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : request_line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || request_line.find(' ', sp2 + 1) != std::string_view::npos) {
    return fail(400, fmt::format("bad request line '{}': expected 'METHOD TARGET HTTP/1.1'",
                                 excerpt(request_line)));
  }
  const std::string_view method = request_line.substr(0, sp1);
  const std::string_view target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = request_line.substr(sp2 + 1);
  if (!is_token(method)) {
    return fail(400, fmt::format("bad request line '{}': the method is not a token",
                                 excerpt(request_line)));
  }
  if (target.empty() || (target[0] != '/' && target != "*")) {
    return fail(400, fmt::format("bad request line '{}': the target must be a path ('/...')",
                                 excerpt(request_line)));
  }
  if (version.size() != 8 || version.substr(0, 7) != "HTTP/1." ||
      (version[7] != '0' && version[7] != '1')) {
    return fail(version.starts_with("HTTP/") ? 505 : 400,
                fmt::format("bad request line '{}': this server speaks HTTP/1.0 and HTTP/1.1",
                            excerpt(request_line)));
  }
  const bool http10 = version[7] == '0';
  HttpRequest r;
  r.keep_alive = !http10;
  std::optional<std::size_t> length;
  bool expect_continue = false;
  while (line_end != std::string_view::npos) {
    const std::size_t start = line_end + 2;
    line_end = head.find("\r\n", start);
    const std::string_view line = head.substr(start, line_end - start);
    if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) {
      return fail(400, fmt::format("request header '{}': folded header lines are not allowed",
                                   excerpt(line)));
    }
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) {
      return fail(400, fmt::format("request header '{}': expected 'Name: value'", excerpt(line)));
    }
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = trim(line.substr(colon + 1));
    if (iequals(name, "Content-Length")) {
      std::size_t n = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
        return fail(400, fmt::format("request header Content-Length '{}': not a byte count",
                                     excerpt(value)));
      }
      if (length && *length != n) {
        return fail(400,
                    fmt::format("request headers: two Content-Lengths ({} and {})", *length, n));
      }
      length = n;
    } else if (iequals(name, "Transfer-Encoding")) {
      return fail(501, fmt::format("request header Transfer-Encoding '{}': not supported; send "
                                   "the body with a Content-Length",
                                   excerpt(value)));
    } else if (iequals(name, "Expect")) {
      if (!iequals(value, "100-continue")) {
        return fail(417, fmt::format("request header Expect '{}': only 100-continue is supported",
                                     excerpt(value)));
      }
      expect_continue = true;
    } else if (iequals(name, "Connection")) {
      if (lists(value, "close")) r.keep_alive = false;
      if (http10 && lists(value, "keep-alive")) r.keep_alive = true;
    }
  }
  const std::size_t body_length = length.value_or(0);
  if (body_length > limits_.max_body_bytes) {
    return fail(413, fmt::format("request body: Content-Length {} is over the bound of {} bytes",
                                 body_length, limits_.max_body_bytes));
  }
  const std::size_t body_start = head_end + 4;
  if (in.size() < body_start + body_length) {
    if (expect_continue && !continue_offered_) continue_due_ = continue_offered_ = true;
    return false;
  }
  r.method.assign(method);
  r.target.assign(target);
  r.body.assign(in.substr(body_start, body_length));
  consumed_ += body_start + body_length;
  continue_offered_ = false;
  // Keep the buffer from growing without bound on a long keep-alive run.
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  } else if (consumed_ > 64 * 1024) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  *out = std::move(r);
  return true;
}

}  // namespace kiln::serve
