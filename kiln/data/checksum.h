// xxh3-64 checksums of shards and records, and their hex form in index.json.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "kiln/base/status.h"
#include "kiln/base/xxh3.h"  // kiln::xxh3, the records' and tables' checksum

namespace kiln::data {

// 16 lowercase hex digits.
std::string checksum_hex(std::uint64_t h);
Result<std::uint64_t> parse_checksum_hex(std::string_view hex);

struct FileDigest {
  std::uint64_t bytes = 0;
  std::uint64_t xxh3 = 0;
};

// Streams the file at `path` through xxh3. NotFound / errno codes name the path.
Result<FileDigest> hash_file(const std::string& path);

}  // namespace kiln::data
