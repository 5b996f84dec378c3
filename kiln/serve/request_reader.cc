#include "kiln/serve/request_reader.h"

#include <fmt/format.h>

#include "kiln/serve/http_head.h"

namespace kiln::serve {
namespace {

using http::excerpt;
using http::iequals;
using http::lists;

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
  while (buffer_.pending().starts_with("\r\n")) buffer_.consume(2);
  const std::string_view in = buffer_.pending();
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
  http::HeadLines lines(in.substr(0, head_end));
  const std::string_view request_line = lines.start_line();
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
  std::string_view line;
  while (lines.next(&line)) {
    if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) {
      return fail(400, fmt::format("request header '{}': folded header lines are not allowed",
                                   excerpt(line)));
    }
    const auto field = http::split_field(line);
    if (!field || !is_token(field->name)) {
      return fail(400, fmt::format("request header '{}': expected 'Name: value'", excerpt(line)));
    }
    const auto [name, value] = *field;
    if (iequals(name, "Content-Length")) {
      const std::optional<std::size_t> n = http::parse_content_length(value);
      if (!n) {
        return fail(400, fmt::format("request header Content-Length '{}': not a byte count",
                                     excerpt(value)));
      }
      if (length && *length != *n) {
        return fail(400,
                    fmt::format("request headers: two Content-Lengths ({} and {})", *length, *n));
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
  buffer_.consume(body_start + body_length);
  continue_offered_ = false;
  *out = std::move(r);
  return true;
}

}  // namespace kiln::serve
