// index.json: a dataset's format version, schema, sample count and shards
// (file, sample range, byte size, xxh3-64). See docs/formats.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/data/schema.h"

namespace kiln::data {

inline constexpr int kDatasetFormatVersion = 1;
inline constexpr char kIndexFile[] = "index.json";
// A real index is ~100 bytes per shard; past this one is refused before
// parsing (a hostile or corrupt file must not make us allocate without bound).
inline constexpr std::size_t kMaxIndexBytes = std::size_t{64} << 20;

struct ShardInfo {
  std::string file;  // relative to the dataset root
  std::uint64_t first_sample = 0;
  std::uint64_t num_samples = 0;
  std::uint64_t bytes = 0;
  std::uint64_t xxh3 = 0;
};

struct DatasetIndex {
  int version = kDatasetFormatVersion;
  Schema schema;
  std::uint64_t num_samples = 0;
  std::vector<ShardInfo> shards;

  // The shard holding global sample `sample` (binary search). CHECKs range.
  std::size_t shard_of(std::uint64_t sample) const;
};

std::string index_to_json(const DatasetIndex& index);

// Parses and validates index.json text. InvalidArgument naming the field
// (e.g. "shards[3].xxh3") for a missing, mistyped or inconsistent field;
// FailedPrecondition for an unsupported version. `where` names the source.
Result<DatasetIndex> parse_index(const std::string& text, const std::string& where);

}  // namespace kiln::data
