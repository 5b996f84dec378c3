// Lossless byte-plane coding of 4-byte words, for links slower than a core
// (Note [Byte-plane coding of float32 payloads]).
//
// A chunk of n words codes to: planes 0, 1 and 2 (the low bytes of each word,
// n bytes each, as they are) followed by plane 3 (the high byte: a float32's
// sign and 7 exponent bits) compressed with zstd or with a 4-bit dictionary
// code (Note [A high plane coded in nibbles]), or as it is when that does not
// make it smaller; or, where no core is spare for even the split, as the words
// they are (Note [Chunks of words as they are]). Decoding restores every bit;
// the reduction that follows sees exactly the bytes that were sent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::comm::transport::tcp {

// How a chunk's high plane travels.
enum class HighPlane : std::uint32_t {
  kStored = 0,  // as it is (high_len == words)
  kZstd = 1,    // one zstd frame: the smallest, ~0.9 GB/s of raw input on a core
  kNibble = 2,  // 4-bit codes of its 15 commonest bytes: ~0.03 more bytes, several GB/s
  kWords = 3,   // no planes: the chunk's words as they are (high_len 0, body 4 × words)
};

// In front of each coded chunk on the wire.
struct CodedChunkHeader {
  std::uint32_t words;     // 4-byte words in the chunk
  std::uint32_t high_len;  // bytes of the coded high plane
  HighPlane high = HighPlane::kStored;
};
static_assert(sizeof(CodedChunkHeader) == 12);

class PlaneCodec {
 public:
  // Words per chunk: the high plane (64 KiB) fits one zstd block, and a chunk
  // (256 KiB) is a few milliseconds of a 1 Gbit/s link, so coding the next
  // one never lets the socket's buffer run dry.
  static constexpr std::size_t kChunkWords = 64 << 10;

  PlaneCodec();
  ~PlaneCodec();
  PlaneCodec(const PlaneCodec&) = delete;
  PlaneCodec& operator=(const PlaneCodec&) = delete;

  // Most bytes a chunk of `words` words (≤ kChunkWords) codes to, header included.
  static std::size_t bound(std::size_t words);

  // Codes `words` words from `src` into `dst` (room for bound(words)):
  // header, low planes, high plane (`coder`: kZstd or kNibble; stored when
  // that would not be smaller), or with kWords the header and the words as
  // they are (a sender that can write from `src` itself needs only
  // words_header()). Returns the bytes written.
  std::size_t encode(const char* src, std::size_t words, char* dst,
                     HighPlane coder = HighPlane::kZstd);

  // The header of a chunk of `words` words sent as they are (HighPlane::kWords).
  static CodedChunkHeader words_header(std::size_t words);

  // Decodes one chunk's body (what follows its header) into `words` words at
  // `dst`. A body that does not decode to exactly that many words is an
  // error; `where` names the chunk for it ("chunk at byte 262144 of 1048576
  // from rank 1 (host, pid 42)").
  Status decode(const CodedChunkHeader& header, const char* body, char* dst,
                const std::string& where);

 private:
  struct Contexts;
  Contexts* z_;
  std::vector<std::uint8_t> high_;  // the high plane between split and compress
};

// The bytes of a chunk's body after its header (low planes + high plane);
// an error if the header is impossible: a chunk other than
// min(kChunkWords, words_left) words, an unknown coding, or a high plane
// whose size that coding cannot have.
Result<std::size_t> coded_body_bytes(const CodedChunkHeader& header, std::size_t words_left,
                                     const std::string& where);

}  // namespace kiln::comm::transport::tcp
