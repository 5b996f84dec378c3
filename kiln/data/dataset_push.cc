#include "kiln/data/dataset_push.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include "kiln/base/file.h"

namespace kiln::data {

Result<PushStats> push_dataset(const std::string& dir, objstore::ObjectStore* dst,
                               Deadline deadline) {
  const std::string index_path = dir + "/" + kIndexFile;
  KILN_ASSIGN_OR_RETURN(std::string text, read_file(index_path));
  KILN_ASSIGN_OR_RETURN(DatasetIndex index, parse_index(text, index_path));
  PushStats stats;
  for (const ShardInfo& shard : index.shards) {
    const std::string path = dir + "/" + shard.file;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return errno_status("push: stat shard " + path, errno);
    if (static_cast<std::uint64_t>(st.st_size) != shard.bytes) {
      return data_loss(
          fmt::format("push: shard {} is {} bytes but {} says {}: not pushing a "
                      "dataset that does not match its index",
                      path, st.st_size, index_path, shard.bytes));
    }
    KILN_RETURN_IF_ERROR(dst->put_file(shard.file, path, deadline).with_context("push " + dir));
    ++stats.shards;
    stats.bytes += shard.bytes;
  }
  // Last, so a reader never finds an index whose shards are not all there.
  KILN_RETURN_IF_ERROR(dst->put_file(kIndexFile, index_path, deadline).with_context("push " + dir));
  return stats;
}

Result<DatasetIndex> read_index(objstore::ObjectStore* store, Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(std::string text, store->get(kIndexFile, deadline));
  return parse_index(text, store->describe() + "/" + kIndexFile);
}

}  // namespace kiln::data
