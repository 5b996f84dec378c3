#include "kiln/comm/transport/tcp/plane_codec.h"

#include <fmt/format.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "kiln/base/logging.h"

namespace kiln::comm::transport::tcp {
namespace {

// Note [Byte-plane coding of float32 payloads]: gradients' float32 bytes are
// random but for the high one (sign and 7 exponent bits), whose order-0
// entropy is about 3 bits (bench/grad_compressibility.py: the four planes
// code to 0.840 of the bytes, zstd -1 to 0.847). So only that plane goes
// through zstd, and the low three leave as they are: coding costs one pass
// to split the planes and zstd over a quarter of the bytes. zstd's level 1
// is where the high plane still gets its Huffman coding at the lowest cost
// (`kiln bench codec` measures the levels; docs/perf.md, issue 24).
constexpr int kZstdLevel = 1;

}  // namespace

struct PlaneCodec::Contexts {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~Contexts() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};

PlaneCodec::PlaneCodec() : z_(new Contexts), high_(kChunkWords) {
  ZSTD_CCtx_setParameter(z_->c, ZSTD_c_compressionLevel, kZstdLevel);
  // Each chunk is one frame; its size and checksum are in CodedChunkHeader
  // and TCP, so the frame header carries neither.
  ZSTD_CCtx_setParameter(z_->c, ZSTD_c_contentSizeFlag, 1);
  ZSTD_CCtx_setParameter(z_->c, ZSTD_c_checksumFlag, 0);
}

PlaneCodec::~PlaneCodec() { delete z_; }

std::size_t PlaneCodec::bound(std::size_t words) {
  return sizeof(CodedChunkHeader) + 3 * words + std::max(words, ZSTD_compressBound(words));
}

std::size_t PlaneCodec::encode(const char* src, std::size_t words, char* dst) {
  auto* u = reinterpret_cast<const std::uint8_t*>(src);
  auto* p0 = reinterpret_cast<std::uint8_t*>(dst + sizeof(CodedChunkHeader));
  std::uint8_t* p1 = p0 + words;
  std::uint8_t* p2 = p1 + words;
  std::uint8_t* hi = high_.data();
  for (std::size_t i = 0; i < words; ++i) {
    p0[i] = u[4 * i];
    p1[i] = u[4 * i + 1];
    p2[i] = u[4 * i + 2];
    hi[i] = u[4 * i + 3];
  }
  char* out = reinterpret_cast<char*>(p2 + words);
  std::size_t coded = ZSTD_compress2(z_->c, out, ZSTD_compressBound(words), hi, words);
  CodedChunkHeader h{static_cast<std::uint32_t>(words), static_cast<std::uint32_t>(words)};
  if (!ZSTD_isError(coded) && coded < words) {
    h.high_len = static_cast<std::uint32_t>(coded);
  } else {
    std::memcpy(out, hi, words);
  }
  std::memcpy(dst, &h, sizeof(h));
  return sizeof(h) + 3 * words + h.high_len;
}

Status PlaneCodec::decode(const CodedChunkHeader& header, const char* body, char* dst,
                          const std::string& where) {
  const std::size_t words = header.words;
  auto* p0 = reinterpret_cast<const std::uint8_t*>(body);
  const std::uint8_t* p1 = p0 + words;
  const std::uint8_t* p2 = p1 + words;
  const std::uint8_t* hi = p2 + words;
  if (header.high_len != words) {
    std::size_t got = ZSTD_decompressDCtx(z_->d, high_.data(), words, hi, header.high_len);
    if (ZSTD_isError(got)) {
      return data_loss(fmt::format("coded frame: the high byte plane of {} does not decode ({})",
                                   where, ZSTD_getErrorName(got)));
    }
    if (got != words) {
      return data_loss(fmt::format(
          "coded frame: the high byte plane of {} decodes to {} bytes where its header says {}",
          where, got, words));
    }
    hi = high_.data();
  }
  auto* u = reinterpret_cast<std::uint8_t*>(dst);
  for (std::size_t i = 0; i < words; ++i) {
    u[4 * i] = p0[i];
    u[4 * i + 1] = p1[i];
    u[4 * i + 2] = p2[i];
    u[4 * i + 3] = hi[i];
  }
  return Status::ok();
}

Result<std::size_t> coded_body_bytes(const CodedChunkHeader& header, std::size_t words_left,
                                     const std::string& where) {
  // Every chunk but the last is whole, so chunks stay aligned to any element
  // size a reduction folds them in at.
  const std::size_t expected = std::min(PlaneCodec::kChunkWords, words_left);
  if (header.words != expected || header.high_len == 0 || header.high_len > header.words) {
    return data_loss(fmt::format(
        "coded frame: impossible header for {} ({} words with a {}-byte high plane where {} "
        "words were due)",
        where, header.words, header.high_len, expected));
  }
  return 3 * static_cast<std::size_t>(header.words) + header.high_len;
}

}  // namespace kiln::comm::transport::tcp
