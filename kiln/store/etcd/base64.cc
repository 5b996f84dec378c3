#include "kiln/store/etcd/base64.h"

#include <fmt/format.h>
#include <openssl/evp.h>

namespace kiln::store::etcd {

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  // EVP_EncodeBlock NUL-terminates, so it needs one byte past the text.
  out.push_back('\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

Result<std::string> base64_decode(std::string_view text, std::string_view what) {
  auto bad = [&](std::string_view why) {
    return data_loss(fmt::format("{}: not base64 ({}): '{:.40}'", what, why, text));
  };
  if (text.size() % 4 != 0) return bad("length not a multiple of 4");
  // EVP_DecodeBlock skips leading and trailing whitespace and returns the
  // padding as zero bytes; accept only the exact alphabet and strip the
  // padding ourselves.
  std::size_t pad = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '+' || c == '/';
    if (c == '=' && i + 2 >= text.size()) {
      ++pad;
    } else if (!alpha || pad > 0) {
      return bad("unexpected character");
    }
  }
  std::string out(3 * (text.size() / 4), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return bad("rejected by the decoder");
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

}  // namespace kiln::store::etcd
