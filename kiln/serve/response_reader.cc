#include "kiln/serve/response_reader.h"

#include <fmt/format.h>

#include <charconv>

namespace kiln::serve {
namespace {

constexpr std::size_t kMaxHeaderBytes = 64 * 1024;

}  // namespace

Result<std::optional<HttpResponse>> ResponseReader::next() {
  using http::excerpt;
  using http::iequals;
  const std::string_view in = buffer_.pending();
  const std::size_t head_end = in.find("\r\n\r\n");
  if (head_end == std::string_view::npos) {
    if (in.size() > kMaxHeaderBytes) {
      return invalid_argument(
          fmt::format("HTTP response: no end of headers in {} bytes", in.size()));
    }
    return std::optional<HttpResponse>();
  }
  http::HeadLines lines(in.substr(0, head_end));
  const std::string_view status_line = lines.start_line();
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
  std::string_view line;
  while (lines.next(&line)) {
    const auto field = http::split_field(line);
    if (!field) {
      return invalid_argument(fmt::format("HTTP response: header without ':' '{}'", excerpt(line)));
    }
    const std::string_view name = http::trim(field->name);
    const std::string_view value = field->value;
    if (iequals(name, "Content-Length")) {
      length = http::parse_content_length(value);
      if (!length) {
        return invalid_argument(
            fmt::format("HTTP response: bad Content-Length '{}'", excerpt(value)));
      }
    } else if (iequals(name, "Transfer-Encoding")) {
      return invalid_argument(
          fmt::format("HTTP response: Transfer-Encoding '{}' not supported", excerpt(value)));
    } else if (iequals(name, "Connection") && http::lists(value, "close")) {
      r.close = true;
    }
  }
  if (!length) return invalid_argument("HTTP response: no Content-Length");
  const std::size_t body_start = head_end + 4;
  if (in.size() < body_start + *length) return std::optional<HttpResponse>();
  r.body.assign(in.substr(body_start, *length));
  buffer_.consume(body_start + *length);
  return std::optional<HttpResponse>(std::move(r));
}

}  // namespace kiln::serve
