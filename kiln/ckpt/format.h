// The on-disk checkpoint format (docs/formats.md, "Checkpoint format"):
// names of the files and directories, the manifest and its JSON form, and
// the checksum. Pure functions; no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/state.h"

namespace kiln::ckpt {

// A manifest whose shards are each one file or object; version 2 adds
// shards stored as chunk objects (ShardRecord::chunks). A manifest is
// written as version 1 when it has no chunked shard, so builds that read
// only version 1 still load it. This build reads both.
inline constexpr int kFormatVersion = 1;
inline constexpr int kChunkedFormatVersion = 2;
// A manifest is ~200 bytes per entry; past this one is refused before parsing.
inline constexpr std::size_t kMaxManifestBytes = std::size_t{64} << 20;
inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kLatestName = "latest";

enum class Compression : std::uint8_t { kNone, kZstd };

// One entry's bytes inside a shard file.
struct EntryRecord {
  std::string name;
  bool is_tensor = false;
  TensorSpec spec;           // tensors only
  std::uint64_t offset = 0;  // in the shard file
  std::uint64_t stored_bytes = 0;
  std::uint64_t raw_bytes = 0;  // after decompression
  Compression compression = Compression::kNone;
  std::uint64_t xxh3 = 0;  // XXH3-64 (seed 0) of the stored bytes
};

// A piece of a shard stored as its own object on an object store (Note
// [Shards as chunk objects], remote.h): the shard's bytes from the sum of
// the earlier chunks' sizes on.
struct ChunkRecord {
  std::string file;  // relative to the step directory
  std::uint64_t bytes = 0;
  std::uint64_t xxh3 = 0;  // XXH3-64 (seed 0) of the chunk's bytes
};

// One rank's shard file; also what each rank sends rank 0 at commit.
struct ShardRecord {
  int rank = 0;
  std::string file;         // relative to the step directory (a loader's local copy)
  std::uint64_t bytes = 0;  // file size
  std::vector<EntryRecord> entries;
  // Empty: the shard is stored whole as `file`. Otherwise it is stored as
  // these objects, in order, whose sizes add up to `bytes`.
  std::vector<ChunkRecord> chunks;
};

// How a checkpoint on an object store keeps each shard (Note [Shards as
// chunk objects], remote.h): as part-sized chunk objects, each a plain PUT
// (the default), or as one object uploaded by parts (a multipart upload
// that the server completes). Loads read both.
enum class ObjectLayout : std::uint8_t { kChunks, kMultipart };
// "chunks" / "multipart"; InvalidArgument naming the choices otherwise.
Result<ObjectLayout> parse_object_layout(const std::string& name);
const char* object_layout_name(ObjectLayout layout);

struct Manifest {
  int version = kFormatVersion;
  std::int64_t step = 0;
  int world_size = 0;
  std::string time;                 // UTC, ISO 8601, when rank 0 committed
  std::vector<ShardRecord> shards;  // indexed by rank
};

std::string to_json(const ShardRecord& shard);
std::string to_json(const Manifest& manifest);
// DataLoss names `where` and what is malformed.
Result<ShardRecord> parse_shard_record(const std::string& text, const std::string& where);
Result<Manifest> parse_manifest(const std::string& text, const std::string& where);

std::string step_dir_name(std::int64_t step);      // "step-42"
std::string tmp_step_dir_name(std::int64_t step);  // "step-42.tmp"
std::string shard_file_name(int rank);             // "shard-00003.bin"
// The object of chunk `index` of a chunked shard uploaded by the attempt
// tagged `attempt` ("shard-00003.9f86d081884c7d65.chunk-00012"): each
// attempt at a shard stores objects of its own (Note [One attempt's
// chunks], remote.h), and the manifest names the committed attempt's.
std::string shard_chunk_name(int rank, std::uint64_t attempt, std::size_t index);
// A fresh attempt tag for shard_chunk_name: 64 random bits.
std::uint64_t new_upload_attempt();
// The step of a committed directory name ("step-42" → 42); nullopt otherwise.
std::optional<std::int64_t> parse_step_dir_name(const std::string& name);
// The step of an uncommitted one ("step-42.tmp" → 42).
std::optional<std::int64_t> parse_tmp_step_dir_name(const std::string& name);

std::uint64_t checksum(const void* data, std::size_t n);
std::string checksum_hex(std::uint64_t c);  // 16 lowercase hex digits

std::string utc_now_iso8601();

}  // namespace kiln::ckpt
