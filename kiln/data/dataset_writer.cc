#include "kiln/data/dataset_writer.h"

#include <fmt/format.h>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/data/checksum.h"

namespace kiln::data {

Result<DatasetWriter> DatasetWriter::create(std::string dir, Schema schema,
                                            DatasetWriterOptions options) {
  if (schema.empty()) return invalid_argument("dataset writer: empty schema for " + dir);
  KILN_RETURN_IF_ERROR(make_dirs(dir));
  return DatasetWriter(std::move(dir), std::move(schema), options);
}

Status DatasetWriter::add(const Sample& sample) {
  scratch_.clear();
  KILN_RETURN_IF_ERROR(encode_sample(index_.schema, sample, &scratch_)
                           .with_context(fmt::format("sample {}", index_.num_samples)));
  if (!shard_) {
    ShardInfo info;
    info.file = fmt::format("shard-{:05d}.kds", index_.shards.size());
    info.first_sample = index_.num_samples;
    KILN_ASSIGN_OR_RETURN(auto w, ShardWriter::create(dir_ + "/" + info.file));
    shard_.emplace(std::move(w));
    index_.shards.push_back(info);
  }
  KILN_RETURN_IF_ERROR(shard_->append(scratch_));
  ++index_.num_samples;
  if (shard_->bytes_written() >= options_.shard_bytes) return close_shard();
  return Status::ok();
}

Status DatasetWriter::close_shard() {
  ShardInfo& info = index_.shards.back();
  info.num_samples = shard_->records();
  KILN_RETURN_IF_ERROR(shard_->finish());
  shard_.reset();
  // Re-read what reached the disk rather than trusting the write path.
  KILN_ASSIGN_OR_RETURN(FileDigest d, hash_file(dir_ + "/" + info.file));
  info.bytes = d.bytes;
  info.xxh3 = d.xxh3;
  return Status::ok();
}

Result<DatasetIndex> DatasetWriter::finish() {
  if (shard_) KILN_RETURN_IF_ERROR(close_shard());
  KILN_RETURN_IF_ERROR(Fs::posix()->sync_dir(dir_));
  KILN_RETURN_IF_ERROR(write_file_atomic(dir_ + "/" + kIndexFile, index_to_json(index_)));
  return index_;
}

}  // namespace kiln::data
