// Model: what a replica serves, seen without LibTorch. The LibTorch
// implementations (torch_model.cc) load the checkpoints `kiln train` writes;
// tests use small fakes. The batcher hands run() a whole batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::serve {

enum class TaskKind { kClassify, kNextToken };

struct ModelInfo {
  TaskKind task = TaskKind::kClassify;
  std::string name;            // "cnn" or "gpt"
  int image_pixels = 28 * 28;  // classify: uint8 pixels per image, row-major
  int classes = 10;            // classify
  int vocab = 0;               // next token
  int context = 0;             // next token: tokens the model attends to (seq_len)
  std::int64_t step = -1;      // the checkpoint's step
  std::string source;          // where the weights came from
};

// One request, validated against ModelInfo by parse_request (request.h).
struct Input {
  std::vector<float> image;          // classify: pixels 0..255
  std::vector<std::int64_t> tokens;  // next token: 1.. tokens, each < vocab
  int max_new_tokens = 0;            // 0: next-token logits; N: greedy generation of N
};

struct Output {
  std::vector<float> logits;            // classify: per class; next token: per vocab entry
  std::vector<std::int64_t> generated;  // greedy generation
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelInfo& info() const = 0;
  // One forward pass (or one per generated token) for the whole batch; one
  // Result per input, in order. Called from one thread at a time.
  virtual std::vector<Result<Output>> run(std::vector<Input>& batch) = 0;
};

}  // namespace kiln::serve
