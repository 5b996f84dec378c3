// Where a save's bytes go (run_save's storage half): a shard file and the
// commit on a filesystem root, shard objects and the manifest on an object
// store root, and the upload of a committed step to the remote tier.
#include <fmt/format.h>

#include <string>
#include <vector>

#include "kiln/base/logging.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/commit.h"
#include "kiln/ckpt/remote.h"
#include "kiln/objstore/chunked_objects.h"

namespace kiln::ckpt {
namespace {

// A shard written as an upload: the bytes stream into the object writer, and
// close() commits the object, which makes it durable (nothing to fsync).
class UploadWriter final : public FsWriter {
 public:
  explicit UploadWriter(objstore::ObjectWriter& w) : w_(w) {}
  Status append(const void* data, std::size_t n) override { return w_.append(data, n); }
  void start_writeback(std::uint64_t, std::uint64_t) override {}
  Status sync() override { return Status::ok(); }
  Status close() override { return w_.commit(); }

 private:
  objstore::ObjectWriter& w_;
};

// A shard written as chunk objects: close() waits for the last chunk and
// keeps the list of them for the shard record.
class ChunkWriter final : public FsWriter {
 public:
  explicit ChunkWriter(objstore::ChunkedUpload& up) : up_(up) {}
  Status append(const void* data, std::size_t n) override { return up_.append(data, n); }
  void start_writeback(std::uint64_t, std::uint64_t) override {}
  Status sync() override { return Status::ok(); }
  Status close() override {
    KILN_ASSIGN_OR_RETURN(chunks_, up_.finish());
    return Status::ok();
  }
  std::vector<objstore::StoredChunk>& chunks() { return chunks_; }

 private:
  objstore::ChunkedUpload& up_;
  std::vector<objstore::StoredChunk> chunks_;
};

}  // namespace

Status Checkpointer::save_to_fs(std::int64_t step, SaveStats* times) {
  auto t0 = Clock::now();
  std::string tmp = options_.root + "/" + tmp_step_dir_name(step);
  Status mk = options_.fs->make_dir(tmp);
  Result<ShardRecord> shard =
      mk.is_ok()
          ? write_shard(*options_.fs, tmp, rank_, staged_, staged_at_,
                        ShardWriteOptions{options_.compression, options_.zstd_level}, &times->write)
          : Result<ShardRecord>(mk);
  times->write_s = seconds_since(t0);
  if (options_.after_shard_written_for_test) options_.after_shard_written_for_test(step);
  auto t1 = Clock::now();
  CommitContext ctx{options_.root,    step,       rank_, world_, options_.comm,
                    options_.timeout, options_.fs};
  Status s = commit_step(ctx, shard);
  if (s.is_ok() && rank_ == 0) {
    auto tr = Clock::now();
    auto deleted = apply_retention(options_.root, options_.retention);
    times->retention_s = seconds_since(tr);
    if (!deleted.is_ok()) {
      // The checkpoint itself is committed; a retention failure only costs
      // space.
      log()->warn("checkpoint retention under {}: {}", options_.root, deleted.status().to_string());
    }
  }
  times->commit_s = seconds_since(t1);
  return s;
}

Status Checkpointer::save_to_store(std::int64_t step, SaveStats* times) {
  auto t0 = Clock::now();
  const Deadline deadline = Deadline::after(options_.timeout);
  const ShardWriteOptions write_options{options_.compression, options_.zstd_level};
  auto upload = [&]() -> Result<ShardRecord> {
    KILN_ASSIGN_OR_RETURN(auto writer,
                          store_->open_writer(remote_key(step, shard_file_name(rank_)), deadline));
    UploadWriter out(*writer);
    auto shard = write_shard_to(out, rank_, staged_, staged_at_, write_options, &times->write);
    // A failed upload leaves no object and, on S3, no parts.
    if (!shard.is_ok()) writer->abort();
    return shard;
  };
  auto upload_chunks = [&]() -> Result<ShardRecord> {
    // Note [One attempt's chunks] (remote.h): this attempt's own names.
    const std::uint64_t attempt = new_upload_attempt();
    objstore::ChunkedUpload up(
        *store_,
        [&](std::size_t i) { return remote_key(step, shard_chunk_name(rank_, attempt, i)); },
        deadline);
    ChunkWriter out(up);
    // A failed upload removes the chunks it stored (ChunkedUpload::abort).
    KILN_ASSIGN_OR_RETURN(auto shard,
                          write_shard_to(out, rank_, staged_, staged_at_, write_options, &times->write));
    for (std::size_t i = 0; i < out.chunks().size(); ++i) {
      const auto& c = out.chunks()[i];
      shard.chunks.push_back({shard_chunk_name(rank_, attempt, i), c.bytes, c.xxh3});
    }
    return shard;
  };
  Result<ShardRecord> shard =
      options_.object_layout == ObjectLayout::kChunks ? upload_chunks() : upload();
  if (!shard.is_ok()) {
    shard = shard.status().with_context(
        fmt::format("upload of rank {}'s shard of step {} to {}", rank_, step, store_->describe()));
  }
  times->write_s = seconds_since(t0);
  if (options_.after_shard_written_for_test) options_.after_shard_written_for_test(step);
  auto t1 = Clock::now();
  CommitContext ctx{options_.root,    step,       rank_, world_, options_.comm,
                    options_.timeout, options_.fs};
  Status s = commit_step_to_store(ctx, *store_, shard);
  if (s.is_ok()) {
    std::lock_guard<std::mutex> l(mu_);
    store_committed_.push_back(step);
  }
  times->commit_s = seconds_since(t1);
  // Note [Retention after the commit].
  if (s.is_ok() && rank_ == 0) start_store_retention(step);
  return s;
}

Status Checkpointer::commit_remote(std::int64_t step, const std::string& step_dir,
                                   const std::string& shard_file) {
  Status upload = upload_step_file(*remote_, step, shard_file, step_dir + "/" + shard_file,
                                   Deadline::after(options_.timeout));
  std::string where =
      fmt::format("checkpoint step {} is committed under {} but not on the remote tier {}", step,
                  options_.root, remote_->describe());
  // Every rank learns whose upload failed, so rank 0 never publishes a
  // manifest for a step with a missing shard.
  std::int32_t mine = upload.is_ok() ? 1 : 0;
  std::vector<std::int32_t> ok(static_cast<std::size_t>(world_), mine);
  if (world_ > 1) {
    Status ex = options_.comm->allgather(&mine, ok.data(), 1, comm::DataType::kInt32)
                    ->wait(options_.timeout);
    if (!ex.is_ok()) return ex.with_context(where);
  }
  if (!upload.is_ok()) return upload.with_context(where);
  std::vector<int> failed;
  for (int r = 0; r < world_; ++r) {
    if (ok[static_cast<std::size_t>(r)] == 0) failed.push_back(r);
  }
  if (!failed.empty()) {
    return unavailable(
        fmt::format("{}: the shard upload failed on rank(s) {}", where, fmt::join(failed, ", ")));
  }
  if (rank_ != 0) return Status::ok();
  // The manifest goes last: only now is the remote step committed.
  std::string manifest = step_dir + "/" + kManifestName;
  Status up =
      upload_step_file(*remote_, step, kManifestName, manifest, Deadline::after(options_.timeout));
  if (!up.is_ok()) return up.with_context(where);
  auto deleted =
      apply_remote_retention(*remote_, options_.retention, Deadline::after(options_.timeout));
  if (!deleted.is_ok()) {
    // The step is committed remotely; a retention failure only costs space.
    log()->warn("remote checkpoint retention: {}", deleted.status().to_string());
  }
  return Status::ok();
}

}  // namespace kiln::ckpt
