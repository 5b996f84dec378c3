#include "kiln/serve/response_reader.h"

#include <fmt/format.h>
#include <strings.h>

#include <charconv>

namespace kiln::serve {
namespace {

constexpr std::size_t kMaxHeaderBytes = 64 * 1024;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

std::string excerpt(std::string_view s) { return std::string(s.substr(0, 80)); }

}  // namespace

Result<std::optional<HttpResponse>> ResponseReader::next() {
  const std::string_view in = std::string_view(buffer_).substr(consumed_);
  const std::size_t head_end = in.find("\r\n\r\n");
  if (head_end == std::string_view::npos) {
    if (in.size() > kMaxHeaderBytes) {
      return invalid_argument(
          fmt::format("HTTP response: no end of headers in {} bytes", in.size()));
    }
    return std::optional<HttpResponse>();
  }
  const std::string_view head = in.substr(0, head_end);
  std::size_t line_end = head.find("\r\n");
  const std::string_view status_line = head.substr(0, line_end);
  HttpResponse r;
  // "HTTP/1.1 200 OK"
  if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ' ||
      std::from_chars(status_line.data() + 9, status_line.data() + 12, r.status).ec !=
          std::errc() ||
      r.status < 100 || r.status > 999) {
    return invalid_argument(
        fmt::format("HTTP response: bad status line '{}'", excerpt(status_line)));
  }
  std::optional<std::size_t> length;
  while (line_end != std::string_view::npos) {
    const std::size_t start = line_end + 2;
    line_end = head.find("\r\n", start);
    const std::string_view line = head.substr(start, line_end - start);
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      return invalid_argument(fmt::format("HTTP response: header without ':' '{}'", excerpt(line)));
    }
    const std::string_view name = trim(line.substr(0, colon));
    const std::string_view value = trim(line.substr(colon + 1));
    if (iequals(name, "Content-Length")) {
      std::size_t n = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc() || end != value.data() + value.size()) {
        return invalid_argument(
            fmt::format("HTTP response: bad Content-Length '{}'", excerpt(value)));
      }
      length = n;
    } else if (iequals(name, "Transfer-Encoding")) {
      return invalid_argument(
          fmt::format("HTTP response: Transfer-Encoding '{}' not supported", excerpt(value)));
    } else if (iequals(name, "Connection") && iequals(value, "close")) {
      r.close = true;
    }
  }
  if (!length) return invalid_argument("HTTP response: no Content-Length");
  const std::size_t body_start = head_end + 4;
  if (in.size() < body_start + *length) return std::optional<HttpResponse>();
  r.body.assign(in.substr(body_start, *length));
  consumed_ += body_start + *length;
  // Keep the buffer from growing without bound on a long keep-alive run.
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  } else if (consumed_ > 64 * 1024) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  return std::optional<HttpResponse>(std::move(r));
}

}  // namespace kiln::serve
