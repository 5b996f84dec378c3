// A dataset's index.json (kiln/data/index.h) as read from a directory or an
// object store: any text gets a DatasetIndex or an error, and an index that
// parses is consistent (its shards tile its samples).
#include <cstdint>
#include <string>

#include "kiln/base/check.h"
#include "kiln/data/index.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto index = kiln::data::parse_index(text, "fuzz/index.json");
  if (!index.is_ok()) return 0;
  std::uint64_t next = 0;
  for (const auto& s : index->shards) {
    KILN_CHECK(s.first_sample == next);
    next += s.num_samples;
  }
  KILN_CHECK(next == index->num_samples);
  if (index->num_samples > 0) {
    KILN_CHECK(index->shard_of(index->num_samples - 1) < index->shards.size());
  }
  // What parses serializes and parses back.
  KILN_CHECK(kiln::data::parse_index(kiln::data::index_to_json(*index), "again").is_ok());
  return 0;
}
