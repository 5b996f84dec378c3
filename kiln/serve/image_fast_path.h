// The fast path of POST /v1/predict for the CNN: a body that is exactly
// {"image": [784 integers 0..255]} (any JSON whitespace) is read in one pass
// without building a JSON document.
//
// Note [The image fast path]: a DOM parse of 784 numbers (nlohmann::json:
// one heap node per number, then a copy into floats) took ~13% of a batched
// replica's CPU at saturation, more than the forward pass's dispatch; batching
// amortises the forward pass, not per-request costs like this one. The fast
// path accepts only a subset of valid JSON that it checks completely (the
// grammar below, the count, the range), and answers "not mine" for anything
// else: the caller then parses the body with the full JSON parser, which
// accepts every other valid spelling (floats, extra fields) and names what is
// wrong with a malformed one. So the fast path changes no answer, only what
// the common one costs.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace kiln::serve {

// The pixels of `body` if it is
//   ws '{' ws "image" ws ':' ws '[' ws INT (ws ',' ws INT)* ws ']' ws '}' ws
// with INT a JSON integer without sign, fraction or exponent ('0' or
// [1-9][0-9]*) in 0..255 and exactly `pixels` of them; nullopt otherwise (the
// body may still be valid: parse it in full). Pure; never throws.
std::optional<std::vector<float>> parse_image_fast(std::string_view body, int pixels);

}  // namespace kiln::serve
