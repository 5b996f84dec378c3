// Writes the seed inputs of the fuzz targets whose real inputs are binary
// (the rest are real files copied into corpus/): the bytes a real client
// sends the store, real authentication messages, real shard files. Run once
// to refresh fuzz/corpus after a format change:
//   build/fuzz/fuzz_make_seeds fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kiln/base/auth/handshake.h"
#include "kiln/base/check.h"
#include "kiln/data/shard.h"
#include "kiln/store/tcp/protocol.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

void write(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

void store_protocol(const fs::path& dir) {
  using namespace store::tcp;
  std::string stream = encode_hello();
  std::vector<Request> requests = {
      {.id = 1, .op = Op::kSet, .keys = {"rdzv/default/g1/node/a"}, .value = "{\"addr\":\"x\"}"},
      {.id = 2, .op = Op::kGet, .keys = {"comm/world/peer/0"}, .timeout_ms = 30000},
      {.id = 3, .op = Op::kAdd, .keys = {"barrier/1"}, .delta = 1},
      {.id = 4, .op = Op::kCompareSet, .keys = {"leader"}, .value = "b", .expected = "a"},
      {.id = 5, .op = Op::kWait, .keys = {"k1", "k2", "k3"}, .timeout_ms = kNoTimeout},
      {.id = 6, .op = Op::kErase, .keys = {"k1"}},
      {.id = 7, .op = Op::kCheck, .keys = {"k1", "k2"}},
  };
  for (const auto& r : requests) {
    std::string one;
    append_request(r, &one);
    write(dir / ("request-" + std::string(op_name(r.op))), one);
    stream += one;
  }
  write(dir / "client-stream", stream);
  std::string replies;
  append_response(Op::kGet, {.id = 2, .value = "10.0.0.1:4000"}, &replies);
  append_response(Op::kAdd, {.id = 3, .number = 2}, &replies);
  append_response(Op::kCheck, {.id = 7, .flag = true}, &replies);
  append_response(Op::kGet, {.id = 8, .status = deadline_exceeded("no key 'x'")}, &replies);
  write(dir / "server-replies", replies);
}

void auth_handshake(const fs::path& dir) {
  const std::string token = "0123456789abcdef0123456789abcdef";
  auth::Acceptor acceptor(token, "fuzz");
  auth::Initiator initiator(token, "fuzz");
  auto challenge = acceptor.challenge();
  KILN_CHECK(challenge.is_ok());
  auto proof = initiator.answer(*challenge);
  KILN_CHECK(proof.is_ok());
  KILN_CHECK(acceptor.check_proof(*proof).is_ok());
  // First byte: bit 0 = the target holds a token, bit 1 = initiator role.
  write(dir / "initiator-challenge-verdict",
        std::string(1, '\3') + *challenge + acceptor.verdict(true));
  write(dir / "acceptor-proof", std::string(1, '\1') + *proof);
  write(dir / "open-initiator", std::string(1, '\2') + std::string(auth::kChallengeBytes, '\0') +
                                    std::string(1, '\1') + std::string(auth::kMacBytes, '\0'));
}

void shards(const fs::path& dir) {
  fs::create_directories(dir);
  auto one = [&](const std::string& name, const std::vector<std::string>& records) {
    auto w = data::ShardWriter::create((dir / name).string());
    KILN_CHECK(w.is_ok());
    for (const auto& r : records) {
      KILN_CHECK(w->append({reinterpret_cast<const std::uint8_t*>(r.data()), r.size()}).is_ok());
    }
    KILN_CHECK(w->finish().is_ok());
  };
  one("empty.shard", {});
  one("three.shard", {"alpha", "", std::string(100, 'x')});
  std::vector<std::string> many;
  for (int i = 0; i < 40; ++i) many.push_back(std::string(static_cast<std::size_t>(i), 'a' + i % 26));
  one("forty.shard", many);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  fs::path root(argv[1]);
  store_protocol(root / "store_protocol");
  auth_handshake(root / "auth_handshake");
  shards(root / "shard");
  return 0;
}
