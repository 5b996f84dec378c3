// parse_request and response_json: the image fast path (Note [The image fast
// path]) changes no answer. Whatever it accepts, the full JSON parser reads
// the same way; what it declines still parses, or gets the 400 naming the
// problem; the written answers read back as the DOM's would.
#include "kiln/serve/request.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "kiln/serve/image_fast_path.h"

namespace kiln::serve {
namespace {

using nlohmann::json;

constexpr int kPixels = 28 * 28;

ModelInfo cnn() {
  ModelInfo info;
  info.name = "cnn";
  info.step = 7;
  return info;
}

std::vector<int> random_image(std::mt19937& g) {
  std::vector<int> px(kPixels);
  for (auto& p : px) p = static_cast<int>(g() % 256);
  return px;
}

// The body as a client might space it: `sep` after each comma and around
// the brackets and the colon.
std::string spaced_body(const std::vector<int>& px, const std::string& sep) {
  std::string b = sep + "{" + sep + "\"image\"" + sep + ":" + sep + "[" + sep;
  for (std::size_t i = 0; i < px.size(); ++i) {
    if (i > 0) b += sep + "," + sep;
    b += std::to_string(px[i]);
  }
  return b + sep + "]" + sep + "}" + sep;
}

// What the full JSON parser makes of `body` (the reference): the pixels if
// it is an object whose "image" is kPixels numbers in 0..255.
std::optional<std::vector<float>> reference(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("image")) return std::nullopt;
  const json& a = j["image"];
  if (!a.is_array() || a.size() != static_cast<std::size_t>(kPixels)) return std::nullopt;
  std::vector<float> out;
  for (const json& v : a) {
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 255) return std::nullopt;
    out.push_back(v.get<float>());
  }
  return out;
}

TEST(ImageFastPath, ReadsTheCanonicalBodyAsTheFullParserDoes) {
  std::mt19937 g(1);
  for (const std::string sep : {"", " ", "\n", " \t\r\n "}) {
    const auto px = random_image(g);
    const std::string body = spaced_body(px, sep);
    auto fast = parse_image_fast(body, kPixels);
    ASSERT_TRUE(fast.has_value()) << "separator '" << sep << "'";
    EXPECT_EQ(*fast, *reference(body));
    auto parsed = parse_request(body, cnn());
    ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
    EXPECT_EQ(parsed->image, *fast);
  }
  // The extremes of the range and of the digits.
  std::vector<int> edge(kPixels, 0);
  edge[1] = 255;
  edge[2] = 9;
  edge[3] = 10;
  edge[4] = 99;
  edge[5] = 100;
  auto fast = parse_image_fast(json{{"image", edge}}.dump(), kPixels);
  ASSERT_TRUE(fast.has_value());
  EXPECT_EQ(*fast, std::vector<float>(edge.begin(), edge.end()));
}

// Each body is declined by the fast path; `ok` says whether the full parser
// accepts it, and `error` is what its 400 must name otherwise.
struct Declined {
  std::string what;
  std::string body;
  bool ok;
  std::string error;
};

std::string with_pixel(const std::string& spelling) {
  std::string b = "{\"image\": [" + spelling;
  for (int i = 1; i < kPixels; ++i) b += ",0";
  return b + "]}";
}

std::string with_count(int n) {
  std::string b = "{\"image\": [";
  for (int i = 0; i < n; ++i) b += i ? ",1" : "1";
  return b + "]}";
}

TEST(ImageFastPath, DeclinesWhatItDoesNotCheckAndTheFullParserAnswersIt) {
  const std::string canonical = with_pixel("0");
  const std::vector<Declined> cases = {
      {"a fraction", with_pixel("12.5"), true, ""},
      {"an exponent", with_pixel("1e2"), true, ""},
      {"another field", "{\"id\": 3, " + canonical.substr(1), true, ""},
      {"a leading zero", with_pixel("07"), false, "not valid JSON"},
      {"a negative pixel", with_pixel("-1"), false, "'image'[0] must be a number in 0..255; got -1"},
      {"256", with_pixel("256"), false, "'image'[0] must be a number in 0..255; got 256"},
      {"a long number", with_pixel("1000000"), false, "got 1000000"},
      {"a string pixel", with_pixel("\"5\""), false, "'image'[0] must be a number in 0..255"},
      {"783 pixels", with_count(kPixels - 1), false, "784 pixels; got 783 values"},
      {"785 pixels", with_count(kPixels + 1), false, "784 pixels; got 785 values"},
      {"a trailing comma", canonical.substr(0, canonical.size() - 2) + ",]}", false,
       "not valid JSON"},
      {"no closing brace", canonical.substr(0, canonical.size() - 1), false, "not valid JSON"},
      {"text after the object", canonical + "x", false, "not valid JSON"},
      {"a second object", canonical + canonical, false, "not valid JSON"},
      {"another key", "{\"Image\": [0]}", false, "field 'image' is missing"},
      {"not an object", "[0, 1]", false, "must be a JSON object"},
      {"empty", "", false, "not valid JSON"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_FALSE(parse_image_fast(c.body, kPixels).has_value());
    auto parsed = parse_request(c.body, cnn());
    EXPECT_EQ(parsed.is_ok(), c.ok) << parsed.status().to_string();
    if (c.ok) {
      EXPECT_EQ(parsed->image, *reference(c.body));
    } else {
      EXPECT_EQ(parsed.status().code(), Code::kInvalidArgument);
      EXPECT_NE(parsed.status().message().find(c.error), std::string::npos)
          << parsed.status().message();
    }
  }
}

// Random edits of a canonical body (a byte changed, dropped or inserted):
// whatever the fast path accepts, the full parser accepts with the same
// pixels, and parse_request accepts exactly what the full parser does.
TEST(ImageFastPath, AgreesWithTheFullParserOnMutatedBodies) {
  std::mt19937 g(2);
  const std::string alphabet = "0123456789,[]{}:\" .-+eE\n\tx";
  int accepted_fast = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string body = spaced_body(random_image(g), trial % 2 ? " " : "");
    const auto at = g() % body.size();
    const char c = alphabet[g() % alphabet.size()];
    switch (g() % 3) {
      case 0: body[at] = c; break;
      case 1: body.erase(at, 1); break;
      default: body.insert(at, 1, c); break;
    }
    const auto ref = reference(body);
    const auto fast = parse_image_fast(body, kPixels);
    if (fast) {
      ++accepted_fast;
      ASSERT_TRUE(ref.has_value()) << body;
      ASSERT_EQ(*fast, *ref) << body;
    }
    auto parsed = parse_request(body, cnn());
    ASSERT_EQ(parsed.is_ok(), ref.has_value()) << body << "\n" << parsed.status().to_string();
    if (ref) {
      ASSERT_EQ(parsed->image, *ref) << body;
    }
  }
  EXPECT_GT(accepted_fast, 100);  // edits that keep it canonical (a digit for a digit, spaces)
}

TEST(ResponseJson, ClassifyReadsBackAsTheLogitsTheModelGave) {
  Output out;
  out.logits = {0.1f, -3.25f, 1e-7f, 12345.678f, -0.0f, 7.5f, 1e30f, -1e-30f, 2.0f, 3.0f};
  const std::string text = response_json(Input{}, out, cnn());
  json j = json::parse(text, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << text;
  EXPECT_EQ(j["class"].get<int>(), 6);  // 1e30
  EXPECT_EQ(j["step"].get<int>(), 7);
  ASSERT_EQ(j["logits"].size(), out.logits.size());
  for (std::size_t i = 0; i < out.logits.size(); ++i) {
    // The exact double the float widens to, as the DOM would have written.
    EXPECT_EQ(j["logits"][i].get<double>(), static_cast<double>(out.logits[i])) << i;
  }
  EXPECT_EQ(text.find(' '), std::string::npos) << text;
}

TEST(ResponseJson, NonFiniteLogitsAreNullAsTheDomWritesThem) {
  Output out;
  out.logits = {1.0f, std::numeric_limits<float>::quiet_NaN(),
                std::numeric_limits<float>::infinity()};
  const std::string text = response_json(Input{}, out, cnn());
  json j = json::parse(text, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << text;
  EXPECT_TRUE(j["logits"][1].is_null());
  EXPECT_TRUE(j["logits"][2].is_null());
  EXPECT_EQ(j["logits"][0].get<double>(), 1.0);
}

TEST(ResponseJson, NextTokenLogitsAndGeneration) {
  ModelInfo gpt;
  gpt.task = TaskKind::kNextToken;
  gpt.vocab = 256;
  gpt.step = 3;
  Output out;
  out.logits = {0.5f, 2.5f, -1.0f};
  json j = json::parse(response_json(Input{}, out, gpt));
  EXPECT_EQ(j["next_token"].get<int>(), 1);
  EXPECT_EQ(j["logits"][1].get<double>(), 2.5);
  EXPECT_EQ(j["step"].get<int>(), 3);
  EXPECT_FALSE(j.contains("class"));

  Input gen;
  gen.max_new_tokens = 2;
  Output tokens;
  tokens.generated = {104, 105};
  json k = json::parse(response_json(gen, tokens, gpt));
  EXPECT_EQ(k["text"].get<std::string>(), "hi");
  EXPECT_EQ(k["tokens"].size(), 2u);
}

}  // namespace
}  // namespace kiln::serve
