#include "kiln/data/dataset_verify.h"

#include <fmt/format.h>
#include <unistd.h>

#include "kiln/base/file.h"
#include "kiln/data/checksum.h"

namespace kiln::data {
namespace {

ShardVerdict judge(const ShardInfo& shard, const FileDigest& got) {
  ShardVerdict v{shard.file, false, ""};
  if (got.bytes != shard.bytes) {
    v.problem = fmt::format("{} bytes, index says {}", got.bytes, shard.bytes);
  } else if (got.xxh3 != shard.xxh3) {
    v.problem =
        fmt::format("xxh3 {}, index says {}", checksum_hex(got.xxh3), checksum_hex(shard.xxh3));
  } else {
    v.ok = true;
  }
  return v;
}

}  // namespace

Result<std::vector<ShardVerdict>> verify_dataset(objstore::ObjectStore* store,
                                                 const DatasetIndex& index,
                                                 const VerifyOptions& options, Deadline deadline) {
  std::vector<ShardVerdict> out;
  if (options.local_dir.empty()) KILN_RETURN_IF_ERROR(make_dirs(options.scratch_dir));
  for (const ShardInfo& shard : index.shards) {
    std::string path;
    if (!options.local_dir.empty()) {
      path = options.local_dir + "/" + shard.file;
      if (::access(path.c_str(), F_OK) != 0) {
        out.push_back({shard.file, false, "missing"});
        continue;
      }
    } else {
      path = fmt::format("{}/verify.{}.{}", options.scratch_dir, ::getpid(), shard.file);
      Status got = store->get_to_file(shard.file, path, deadline);
      if (got.code() == Code::kNotFound) {
        ::unlink(path.c_str());
        out.push_back({shard.file, false, "missing"});
        continue;
      }
      if (!got.is_ok()) {
        ::unlink(path.c_str());
        return got.with_context("verify " + store->describe());
      }
    }
    auto digest = hash_file(path);
    if (options.local_dir.empty()) ::unlink(path.c_str());
    if (!digest) return digest.status().with_context("verify " + store->describe());
    out.push_back(judge(shard, *digest));
  }
  return out;
}

}  // namespace kiln::data
