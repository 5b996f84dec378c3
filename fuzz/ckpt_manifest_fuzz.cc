// Checkpoint manifests and per-rank shard records (kiln/ckpt/format.h), as a
// resuming job reads them from disk or a remote store. A manifest that parses
// never describes an entry outside its shard file.
#include <cstdint>
#include <string>

#include "kiln/base/check.h"
#include "kiln/ckpt/format.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto check_shard = [](const kiln::ckpt::ShardRecord& s) {
    for (const auto& e : s.entries) {
      KILN_CHECK(e.offset <= s.bytes && e.stored_bytes <= s.bytes - e.offset);
    }
  };
  auto manifest = kiln::ckpt::parse_manifest(text, "fuzz/manifest.json");
  if (manifest.is_ok()) {
    for (const auto& s : manifest->shards) check_shard(s);
    KILN_CHECK(kiln::ckpt::parse_manifest(kiln::ckpt::to_json(*manifest), "again").is_ok());
  }
  auto shard = kiln::ckpt::parse_shard_record(text, "fuzz/shard.json");
  if (shard.is_ok()) check_shard(*shard);
  return 0;
}
