// `kiln bench codec`: how fast one core byte-plane codes float32 payloads
// (Note [Byte-plane coding of float32 payloads]) and how small they get. The
// input is a file of raw float32 values (bench/grad_compressibility.py
// --dump writes a model's gradients), else normally distributed floats.
// Prints one JSON line: coded_fraction (wire bytes over raw), and encode and
// decode throughput in raw MB/s, each the median of --runs passes, with the
// high plane through zstd; then the same with nibble_ in front for the
// nibble code (Note [A high plane coded in nibbles]). The coder must beat
// the link it codes for by a wide margin (docs/perf.md).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "cli/command.h"
#include "kiln/comm/transport/tcp/plane_codec.h"

namespace kiln::cli {
namespace {

using comm::transport::tcp::CodedChunkHeader;
using comm::transport::tcp::HighPlane;
using comm::transport::tcp::PlaneCodec;

struct CodecArgs {
  std::string file;
  int runs = 5;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Status bench_codec(const CodecArgs& a) {
  std::vector<char> raw;
  if (!a.file.empty()) {
    std::ifstream f(a.file, std::ios::binary);
    if (!f) return not_found(fmt::format("bench codec: cannot read {}", a.file));
    raw.assign(std::istreambuf_iterator<char>(f), {});
  } else {
    std::vector<float> v(20 << 20);
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0.0f, 1e-3f);
    for (auto& x : v) x = d(rng);
    raw.assign(reinterpret_cast<char*>(v.data()), reinterpret_cast<char*>(v.data() + v.size()));
  }
  const std::size_t words = raw.size() / 4;
  if (words == 0) return invalid_argument("bench codec: no float32 values in the input");
  PlaneCodec codec;
  std::vector<char> coded(words / PlaneCodec::kChunkWords *
                              PlaneCodec::bound(PlaneCodec::kChunkWords) +
                          PlaneCodec::bound(PlaneCodec::kChunkWords));
  std::vector<char> back(words * 4);
  nlohmann::json doc{{"bytes", words * 4}, {"runs", std::max(1, a.runs)}};
  for (HighPlane coder : {HighPlane::kZstd, HighPlane::kNibble}) {
    const std::string key = coder == HighPlane::kZstd ? "" : "nibble_";
    std::vector<double> enc, dec;
    std::size_t total = 0;
    for (int run = 0; run < std::max(1, a.runs); ++run) {
      auto t0 = std::chrono::steady_clock::now();
      total = 0;
      for (std::size_t w = 0; w < words; w += PlaneCodec::kChunkWords) {
        std::size_t n = std::min(PlaneCodec::kChunkWords, words - w);
        total += codec.encode(raw.data() + 4 * w, n, coded.data() + total, coder);
      }
      auto t1 = std::chrono::steady_clock::now();
      std::size_t at = 0;
      for (std::size_t w = 0; w < words; w += PlaneCodec::kChunkWords) {
        CodedChunkHeader h;
        std::memcpy(&h, coded.data() + at, sizeof(h));
        KILN_RETURN_IF_ERROR(
            codec.decode(h, coded.data() + at + sizeof(h), back.data() + 4 * w, "bench"));
        at += sizeof(h) + 3 * std::size_t{h.words} + h.high_len;
      }
      auto t2 = std::chrono::steady_clock::now();
      if (std::memcmp(back.data(), raw.data(), words * 4) != 0)
        return internal_error("bench codec: decoding did not restore the input");
      enc.push_back(words * 4 / std::chrono::duration<double>(t1 - t0).count() / 1e6);
      dec.push_back(words * 4 / std::chrono::duration<double>(t2 - t1).count() / 1e6);
    }
    doc[key + "coded_fraction"] = static_cast<double>(total) / (words * 4);
    doc[key + "encode_mbps"] = median(enc);
    doc[key + "decode_mbps"] = median(dec);
  }
  std::printf("%s\n", doc.dump().c_str());
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<CodecArgs>();
  auto* cmd = parent.add_subcommand(
      "codec", "Throughput and size of the tcp transport's byte-plane coding of float32 payloads");
  cmd->add_option("--file", a->file, "raw float32 values (default: normally distributed floats)");
  cmd->add_option("--runs", a->runs, "passes; the median is printed")->capture_default_str();
  cmd->callback(run_status([a] { return bench_codec(*a); }));
});

}  // namespace
}  // namespace kiln::cli
