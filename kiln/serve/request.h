// The HTTP/JSON request and response bodies of POST /v1/predict
// (docs/serve.md). Pure functions.
//
//   classify:   {"image": [784 pixels 0..255]}      -> {"class": k, "logits": [...], "step": s}
//   next token: {"tokens": [...]} or {"text": "..."} -> {"next_token": t, "logits": [...], "step":
//   s}
//               plus "max_new_tokens": N            -> {"tokens": [...], "text": "...", "step": s}
#pragma once

#include <string>

#include "kiln/base/status.h"
#include "kiln/serve/model.h"

namespace kiln::serve {

inline constexpr int kMaxNewTokens = 1024;

// InvalidArgument naming the field and what is wrong with it.
Result<Input> parse_request(const std::string& body, const ModelInfo& info);

std::string response_json(const Input& input, const Output& output, const ModelInfo& info);

// {"error": message}
std::string error_json(const std::string& message);

}  // namespace kiln::serve
