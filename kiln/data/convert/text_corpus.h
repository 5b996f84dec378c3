// Plain text as a next-token-prediction dataset: the files' bytes are
// concatenated in the order given, tokenized, and cut into fixed-length
// windows of seq_len + 1 tokens (inputs are tokens[0..L), targets
// tokens[1..L]). Consecutive windows share one token, so every token of the
// corpus is a target exactly once. The last `eval_fraction` of the windows
// becomes OUT/test and the rest OUT/train: a contiguous tail, so no test
// text also appears in training.
//
// Sample: tokens: tensor int32 [seq_len + 1]
//
// Tokenizer: "bytes" (the vocabulary is the 256 byte values). int32 storage
// leaves room for a subword tokenizer without a format change.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/data/convert/fashion_mnist.h"  // ConvertedSplits

namespace kiln::data::convert {

struct TextOptions {
  std::uint32_t seq_len = 128;
  double eval_fraction = 0.05;
  std::string tokenizer = "bytes";
  std::uint64_t shard_bytes = 64ull << 20;
};

inline constexpr std::uint32_t kByteVocab = 256;

// InvalidArgument for an unknown tokenizer, seq_len 0, an eval fraction
// outside [0, 1) or a corpus too short for one training window; errors
// reading a file name it.
Result<ConvertedSplits> convert_text(const std::string& out_dir,
                                     const std::vector<std::string>& files,
                                     const TextOptions& options = {});

}  // namespace kiln::data::convert
