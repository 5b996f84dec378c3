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

// Note [A high plane coded in nibbles]: zstd's level 1 spends most of its
// time looking for matches the high plane hardly has (~0.9 GB/s of raw
// input on a core, the order-0 entropy coding being a small part). Where the
// coder's CPU comes out of compute (DDP's backward on a host whose cores it
// fills), a plain dictionary code is the better trade: the chunk's 15
// commonest high bytes get a 4-bit code each, the rest code 15 and follow in
// order as they are. A gradient's high plane has ~3 bits of entropy and
// nearly all of it sits in 15 values (bench/grad_compressibility.py's
// gradients: 0.17% escapes), so the chunk travels at 0.875 of its bytes
// against zstd's 0.847, and both directions run at several GB/s.
// Layout: the 15 code bytes, then ceil(words / 2) bytes of codes (word 2k in
// the low nibble of byte k), then the escaped bytes.
constexpr std::size_t kNibbleCodes = 15;
constexpr std::uint8_t kEscape = 15;

// Note [Chunks of words as they are]: splitting a chunk into planes is a
// pass over its bytes, and the merge at the receiver another. Where the high
// plane then travels stored (no core is spare for zstd: DDP's backward on a
// host whose cores it fills), both passes buy nothing, and they run just
// when the cores are busiest. Such a chunk goes as kWords instead: its
// header, then its words as they are, so the sender hands the caller's
// memory to the socket and the receiver reads straight into the
// destination or reduces straight from what it read, exactly as an uncoded
// message does; the message stays coded, so the next chunk can take zstd
// the moment a core is spare.
std::size_t nibble_bytes(std::size_t words) { return kNibbleCodes + (words + 1) / 2; }

// The nibble-coded plane of `hi` into `out`, given its byte histogram.
// Returns its length, or 0 where it would not be smaller than `words`.
std::size_t encode_nibbles(const std::uint8_t* hi, std::size_t words,
                           const std::uint32_t (&histogram)[256], std::uint8_t* out) {
  std::uint8_t by_count[256];
  for (int b = 0; b < 256; ++b) by_count[b] = static_cast<std::uint8_t>(b);
  std::partial_sort(by_count, by_count + kNibbleCodes, by_count + 256,
                    [&](std::uint8_t a, std::uint8_t b) { return histogram[a] > histogram[b]; });
  std::size_t covered = 0;
  std::uint8_t code[256];
  std::memset(code, kEscape, sizeof(code));
  for (std::size_t k = 0; k < kNibbleCodes; ++k) {
    covered += histogram[by_count[k]];
    code[by_count[k]] = static_cast<std::uint8_t>(k);
    out[k] = by_count[k];
  }
  const std::size_t len = nibble_bytes(words) + (words - covered);
  if (len >= words) return 0;
  std::uint8_t* packed = out + kNibbleCodes;
  std::uint8_t* escaped = packed + (words + 1) / 2;
  std::size_t i = 0;
  for (; i + 1 < words; i += 2) {
    const std::uint8_t c0 = code[hi[i]], c1 = code[hi[i + 1]];
    packed[i / 2] = static_cast<std::uint8_t>(c0 | (c1 << 4));
    if (c0 == kEscape) *escaped++ = hi[i];
    if (c1 == kEscape) *escaped++ = hi[i + 1];
  }
  if (i < words) {
    const std::uint8_t c0 = code[hi[i]];
    packed[i / 2] = c0;
    if (c0 == kEscape) *escaped++ = hi[i];
  }
  return len;
}

// False if the codes ask for more escaped bytes than `len` holds, or leave
// some unused.
bool decode_nibbles(const std::uint8_t* in, std::size_t len, std::size_t words, std::uint8_t* hi) {
  const std::uint8_t* table = in;
  const std::uint8_t* packed = in + kNibbleCodes;
  const std::uint8_t* escaped = packed + (words + 1) / 2;
  const std::uint8_t* end = in + len;
  for (std::size_t i = 0; i < words; ++i) {
    const std::uint8_t c = (packed[i / 2] >> ((i & 1) * 4)) & 0xf;
    if (c != kEscape) {
      hi[i] = table[c];
    } else {
      if (escaped == end) return false;
      hi[i] = *escaped++;
    }
  }
  return escaped == end;
}

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

CodedChunkHeader PlaneCodec::words_header(std::size_t words) {
  return {static_cast<std::uint32_t>(words), 0, HighPlane::kWords};
}

std::size_t PlaneCodec::encode(const char* src, std::size_t words, char* dst, HighPlane coder) {
  if (coder == HighPlane::kWords) {  // Note [Chunks of words as they are]
    CodedChunkHeader h = words_header(words);
    std::memcpy(dst, &h, sizeof(h));
    std::memcpy(dst + sizeof(h), src, 4 * words);
    return sizeof(h) + 4 * words;
  }
  auto* u = reinterpret_cast<const std::uint8_t*>(src);
  auto* p0 = reinterpret_cast<std::uint8_t*>(dst + sizeof(CodedChunkHeader));
  std::uint8_t* p1 = p0 + words;
  std::uint8_t* p2 = p1 + words;
  std::uint8_t* hi = high_.data();
  std::uint32_t histogram[256] = {};
  if (coder == HighPlane::kNibble) {
    for (std::size_t i = 0; i < words; ++i) {
      p0[i] = u[4 * i];
      p1[i] = u[4 * i + 1];
      p2[i] = u[4 * i + 2];
      hi[i] = u[4 * i + 3];
      ++histogram[hi[i]];
    }
  } else {
    for (std::size_t i = 0; i < words; ++i) {
      p0[i] = u[4 * i];
      p1[i] = u[4 * i + 1];
      p2[i] = u[4 * i + 2];
      hi[i] = u[4 * i + 3];
    }
  }
  auto* out = p2 + words;
  CodedChunkHeader h{static_cast<std::uint32_t>(words), static_cast<std::uint32_t>(words),
                     HighPlane::kStored};
  std::size_t coded = 0;
  if (coder == HighPlane::kNibble) {
    coded = encode_nibbles(hi, words, histogram, out);
  } else if (coder == HighPlane::kZstd) {
    coded = ZSTD_compress2(z_->c, out, ZSTD_compressBound(words), hi, words);
    if (ZSTD_isError(coded)) coded = 0;
  }
  if (coded > 0 && coded < words) {
    h.high_len = static_cast<std::uint32_t>(coded);
    h.high = coder;
  } else {
    std::memcpy(out, hi, words);
  }
  std::memcpy(dst, &h, sizeof(h));
  return sizeof(h) + 3 * words + h.high_len;
}

Status PlaneCodec::decode(const CodedChunkHeader& header, const char* body, char* dst,
                          const std::string& where) {
  const std::size_t words = header.words;
  if (header.high == HighPlane::kWords && header.high_len == 0) {
    std::memcpy(dst, body, 4 * words);
    return Status::ok();
  }
  auto* p0 = reinterpret_cast<const std::uint8_t*>(body);
  const std::uint8_t* p1 = p0 + words;
  const std::uint8_t* p2 = p1 + words;
  const std::uint8_t* hi = p2 + words;
  if (header.high == HighPlane::kNibble) {
    if (header.high_len < nibble_bytes(words) ||
        !decode_nibbles(hi, header.high_len, words, high_.data())) {
      return data_loss(fmt::format(
          "coded frame: the nibble-coded high byte plane of {} does not decode ({} bytes for {} "
          "words: its escaped bytes and its codes disagree)",
          where, header.high_len, words));
    }
    hi = high_.data();
  } else if (header.high == HighPlane::kZstd) {
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
  } else if (header.high != HighPlane::kStored || header.high_len != words) {
    return data_loss(fmt::format(
        "coded frame: impossible header for {} (high plane coding {}, {} bytes for {} words)",
        where, static_cast<std::uint32_t>(header.high), header.high_len, words));
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
  bool possible = false;
  switch (header.high) {
    case HighPlane::kStored: possible = header.high_len == header.words; break;
    case HighPlane::kZstd: possible = header.high_len > 0 && header.high_len < header.words; break;
    case HighPlane::kNibble:
      possible = header.high_len >= nibble_bytes(header.words) && header.high_len < header.words;
      break;
    case HighPlane::kWords: possible = header.high_len == 0; break;
  }
  if (header.words != expected || !possible) {
    return data_loss(fmt::format(
        "coded frame: impossible header for {} ({} words with a {}-byte high plane coded {} where "
        "{} words were due)",
        where, header.words, header.high_len, static_cast<std::uint32_t>(header.high), expected));
  }
  if (header.high == HighPlane::kWords) return 4 * static_cast<std::size_t>(header.words);
  return 3 * static_cast<std::size_t>(header.words) + header.high_len;
}

}  // namespace kiln::comm::transport::tcp
