#include "kiln/serve/http_head.h"

#include <strings.h>

#include <charconv>

namespace kiln::serve::http {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

bool lists(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const std::size_t comma = value.find(',');
    if (iequals(trim(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

std::string excerpt(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  return out;
}

std::optional<std::size_t> parse_content_length(std::string_view value) {
  std::size_t n = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
    return std::nullopt;
  }
  return n;
}

HeadLines::HeadLines(std::string_view head) : head_(head), line_end_(head.find("\r\n")) {
  start_line_ = head.substr(0, line_end_);
}

bool HeadLines::next(std::string_view* line) {
  if (line_end_ == std::string_view::npos) return false;
  const std::size_t start = line_end_ + 2;
  line_end_ = head_.find("\r\n", start);
  *line = head_.substr(start, line_end_ - start);
  return true;
}

std::optional<HeaderField> split_field(std::string_view line) {
  const std::size_t colon = line.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  return HeaderField{line.substr(0, colon), trim(line.substr(colon + 1))};
}

void MessageBuffer::consume(std::size_t n) {
  consumed_ += n;
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  } else if (consumed_ > 64 * 1024) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
}

}  // namespace kiln::serve::http
