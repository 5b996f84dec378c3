#include "kiln/serve/request.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <nlohmann/json.hpp>

#include "kiln/serve/image_fast_path.h"

namespace kiln::serve {
namespace {

using nlohmann::json;

Result<Input> parse_image(const json& j, const ModelInfo& info) {
  if (!j.contains("image")) {
    return invalid_argument(
        fmt::format("field 'image' is missing: this model ({}) classifies {} uint8 pixels, e.g. "
                    "{{\"image\": [0, 12, ...]}}",
                    info.name, info.image_pixels));
  }
  const json& image = j["image"];
  if (!image.is_array() || image.size() != static_cast<std::size_t>(info.image_pixels)) {
    return invalid_argument(fmt::format("field 'image' must be an array of {} pixels; got {}",
                                        info.image_pixels,
                                        image.is_array() ? fmt::format("{} values", image.size())
                                                         : std::string(image.type_name())));
  }
  Input in;
  in.image.reserve(image.size());
  for (std::size_t i = 0; i < image.size(); ++i) {
    const json& v = image[i];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 255) {
      return invalid_argument(
          fmt::format("field 'image'[{}] must be a number in 0..255; got {}", i, v.dump()));
    }
    in.image.push_back(v.get<float>());
  }
  return in;
}

Result<Input> parse_tokens(const json& j, const ModelInfo& info) {
  Input in;
  if (j.contains("tokens")) {
    const json& t = j["tokens"];
    if (!t.is_array()) return invalid_argument("field 'tokens' must be an array of integers");
    for (std::size_t i = 0; i < t.size(); ++i) {
      if (!t[i].is_number_integer() || t[i].get<std::int64_t>() < 0 ||
          t[i].get<std::int64_t>() >= info.vocab) {
        return invalid_argument(
            fmt::format("field 'tokens'[{}] must be an integer in 0..{}; got {}", i, info.vocab - 1,
                        t[i].dump()));
      }
      in.tokens.push_back(t[i].get<std::int64_t>());
    }
  } else if (j.contains("text")) {
    if (!j["text"].is_string()) return invalid_argument("field 'text' must be a string");
    if (info.vocab < 256) {
      return invalid_argument(fmt::format(
          "field 'text' needs a byte-level model (vocab 256); this one has vocab {}: send 'tokens'",
          info.vocab));
    }
    for (unsigned char c : j["text"].get<std::string>()) in.tokens.push_back(c);
  } else {
    return invalid_argument(
        "field 'tokens' (or 'text') is missing: this model (gpt) continues a token sequence");
  }
  if (in.tokens.empty()) return invalid_argument("the prompt is empty: send at least one token");
  if (j.contains("max_new_tokens")) {
    const json& n = j["max_new_tokens"];
    if (!n.is_number_integer() || n.get<std::int64_t>() < 0 ||
        n.get<std::int64_t>() > kMaxNewTokens) {
      return invalid_argument(fmt::format(
          "field 'max_new_tokens' must be an integer in 0..{}; got {}", kMaxNewTokens, n.dump()));
    }
    in.max_new_tokens = n.get<int>();
  }
  return in;
}

std::size_t argmax(const std::vector<float>& v) {
  return static_cast<std::size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// {"<key>":K,"logits":[...],"step":S}, the keys in the order nlohmann's
// object (a std::map) dumps them. Each logit is written as the double the
// DOM held (the float widened) in the shortest form that reads back as that
// double; a non-finite one as null, as the DOM writes it.
std::string logits_json(const char* key, std::size_t k, const std::vector<float>& logits,
                        std::int64_t step) {
  std::string out;
  out.reserve(32 + logits.size() * 24);
  auto it = std::back_inserter(out);
  fmt::format_to(it, "{{\"{}\":{},\"logits\":[", key, k);
  for (std::size_t i = 0; i < logits.size(); ++i) {
    if (i > 0) out.push_back(',');
    const double v = logits[i];
    if (std::isfinite(v)) {
      fmt::format_to(it, "{}", v);
    } else {
      out += "null";
    }
  }
  fmt::format_to(it, "],\"step\":{}}}", step);
  return out;
}

}  // namespace

Result<Input> parse_request(const std::string& body, const ModelInfo& info) {
  if (info.task == TaskKind::kClassify) {
    // Note [The image fast path] (image_fast_path.h).
    if (auto image = parse_image_fast(body, info.image_pixels)) {
      Input in;
      in.image = std::move(*image);
      return in;
    }
  }
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument("the body is not valid JSON");
  if (!j.is_object()) return invalid_argument("the body must be a JSON object");
  if (info.task == TaskKind::kClassify) return parse_image(j, info);
  return parse_tokens(j, info);
}

std::string response_json(const Input& input, const Output& output, const ModelInfo& info) {
  // The per-request answers are written directly (Note [The image fast path]:
  // the same per-request cost); generation's text goes through the DOM for
  // its UTF-8 replacement.
  if (info.task == TaskKind::kClassify) {
    return logits_json("class", argmax(output.logits), output.logits, info.step);
  }
  if (input.max_new_tokens == 0) {
    return logits_json("next_token", argmax(output.logits), output.logits, info.step);
  }
  json j;
  j["step"] = info.step;
  j["tokens"] = output.generated;
  if (info.vocab == 256) {
    std::string text;
    for (auto t : output.generated) text.push_back(static_cast<char>(t));
    j["text"] = text;
  }
  // Generated bytes need not be UTF-8: replace what is not, rather than throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string error_json(const std::string& message) {
  return json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace kiln::serve
