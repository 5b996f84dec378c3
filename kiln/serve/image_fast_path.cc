#include "kiln/serve/image_fast_path.h"

namespace kiln::serve {
namespace {

// A cursor over the body; every step either advances past what it expects
// or reports that the body is not of the fast path's shape.
class Scanner {
 public:
  explicit Scanner(std::string_view s) : p_(s.data()), end_(s.data() + s.size()) {}

  void skip_ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool eat(char c) {
    skip_ws();
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }
  bool eat_literal(std::string_view lit) {
    skip_ws();
    if (static_cast<std::size_t>(end_ - p_) < lit.size() || std::string_view(p_, lit.size()) != lit)
      return false;
    p_ += lit.size();
    return true;
  }
  // A JSON integer 0..255 without sign, fraction or exponent.
  bool eat_pixel(float* out) {
    skip_ws();
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
    int v = *p_++ - '0';
    if (v != 0) {
      for (int digits = 1; p_ < end_ && *p_ >= '0' && *p_ <= '9'; ++digits) {
        if (digits == 3) return false;  // > 255 (or a longer number): the full parser says which
        v = v * 10 + (*p_++ - '0');
      }
      if (v > 255) return false;
    }
    // "0" followed by a digit is a leading zero, and '.', 'e' or 'E' a
    // fraction or exponent: not JSON integers of this grammar.
    if (p_ < end_ && ((*p_ >= '0' && *p_ <= '9') || *p_ == '.' || *p_ == 'e' || *p_ == 'E'))
      return false;
    *out = static_cast<float>(v);
    return true;
  }
  bool at_end() {
    skip_ws();
    return p_ == end_;
  }

 private:
  const char* p_;
  const char* end_;
};

}  // namespace

std::optional<std::vector<float>> parse_image_fast(std::string_view body, int pixels) {
  Scanner s(body);
  if (pixels <= 0 || !s.eat('{') || !s.eat_literal("\"image\"") || !s.eat(':') || !s.eat('['))
    return std::nullopt;
  std::vector<float> image(static_cast<std::size_t>(pixels));
  for (int i = 0; i < pixels; ++i) {
    if (i > 0 && !s.eat(',')) return std::nullopt;
    if (!s.eat_pixel(&image[static_cast<std::size_t>(i)])) return std::nullopt;
  }
  if (!s.eat(']') || !s.eat('}') || !s.at_end()) return std::nullopt;
  return image;
}

}  // namespace kiln::serve
