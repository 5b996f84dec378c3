#include "kiln/ckpt/remote_load.h"

#include <fmt/format.h>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/verify.h"
#include "kiln/objstore/chunked_objects.h"

namespace kiln::ckpt {

Status fetch_remote_shard(objstore::ObjectStore& store, std::int64_t step,
                          const ShardRecord& shard, const std::string& local,
                          Deadline deadline) {
  if (shard.chunks.empty()) {
    KILN_RETURN_IF_ERROR(store.get_to_file(remote_key(step, shard.file), local, deadline));
  } else {
    // Chunks in parallel, each checked against its checksum, into the
    // one local shard file the loader reads.
    std::vector<objstore::StoredChunk> chunks;
    for (const auto& c : shard.chunks) chunks.push_back({remote_key(step, c.file), c.bytes, c.xxh3});
    KILN_RETURN_IF_ERROR(objstore::get_chunks_to_file(store, chunks, local, deadline)
                             .with_context(fmt::format("shard of rank {} of remote step {}",
                                                       shard.rank, step)));
  }
  KILN_ASSIGN_OR_RETURN(auto bytes, file_size(local));
  if (bytes != shard.bytes) {
    return data_loss(fmt::format("{} of remote step {} has {} bytes, its manifest says {}",
                                 shard.file, step, bytes, shard.bytes));
  }
  return Status::ok();
}

Result<std::string> download_remote_step(objstore::ObjectStore& store, std::int64_t step,
                                         const std::string& cache_dir, Deadline deadline) {
  std::string dir = cache_dir + "/" + step_dir_name(step);
  std::string partial = dir + ".partial";
  KILN_RETURN_IF_ERROR(make_dirs(cache_dir));
  KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(partial));
  KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(dir));
  KILN_RETURN_IF_ERROR(Fs::posix()->make_dir(partial));
  std::string manifest_path = partial + "/" + kManifestName;
  KILN_RETURN_IF_ERROR(store.get_to_file(remote_key(step, kManifestName), manifest_path, deadline));
  KILN_ASSIGN_OR_RETURN(auto m, read_manifest(partial));
  for (const auto& shard : m.shards) {
    KILN_RETURN_IF_ERROR(fetch_remote_shard(store, step, shard, partial + "/" + shard.file, deadline));
  }
  KILN_RETURN_IF_ERROR(Fs::posix()->rename(partial, dir));
  return dir;
}

namespace {

Result<LoadedState> fetch_and_load(objstore::ObjectStore& store, std::int64_t step,
                                   const std::string& cache_dir, const LoadOptions& o) {
  std::string cached = cache_dir + "/" + step_dir_name(step);
  if (read_manifest(cached).is_ok()) {
    auto r = load_step(cached, o.rank, o.world_size);
    if (r.is_ok()) return r;
    log()->warn("cached copy {} of remote step {} does not load ({}); downloading it again", cached,
                step, r.status().to_string());
  }
  KILN_ASSIGN_OR_RETURN(auto dir,
                        download_remote_step(store, step, cache_dir, Deadline::after(o.timeout)));
  return load_step(dir, o.rank, o.world_size);
}

}  // namespace

Result<LoadedState> load_latest_remote(objstore::ObjectStore& store, const std::string& cache_dir,
                                       const LoadOptions& o) {
  if (o.world_size > 1 && o.comm == nullptr) {
    return invalid_argument(
        "load_latest_remote: world_size > 1 needs a communicator to agree on the step");
  }
  KILN_RETURN_IF_ERROR(Fs::posix()->make_dir(cache_dir));
  std::vector<std::int64_t> steps;
  Status listed;
  if (o.rank == 0) {
    // A failed listing still reaches the broadcast below (as "no step"), so
    // the other ranks do not wait out the timeout.
    auto r = list_remote_committed_steps(store, Deadline::after(o.timeout));
    if (r.is_ok())
      steps = std::move(r).value();
    else
      listed = r.status();
  }
  for (std::size_t i = 0;; ++i) {
    // Rank 0's listing decides the candidates, so every rank tries the same step.
    std::int64_t step = i < steps.size() ? steps[i] : -1;
    if (o.world_size > 1) {
      KILN_RETURN_IF_ERROR(o.comm->broadcast(&step, 1, comm::DataType::kInt64, 0)->wait(o.timeout));
    }
    if (step < 0) {
      if (!listed.is_ok()) return listed;
      return not_found(fmt::format("no loadable checkpoint on {}", store.describe()));
    }
    auto r = fetch_and_load(store, step, cache_dir, o);
    std::int32_t ok = r.is_ok() ? 1 : 0;
    if (o.world_size > 1) {
      KILN_RETURN_IF_ERROR(
          o.comm->allreduce(&ok, 1, comm::DataType::kInt32, comm::ReduceOp::kMin)->wait(o.timeout));
    }
    if (ok == 1) return r;
    if (!r.is_ok()) {
      log()->warn("remote checkpoint step {} on {} skipped: {}", step, store.describe(),
                  r.status().to_string());
    } else {
      log()->warn("remote checkpoint step {} on {} skipped: another rank could not load it", step,
                  store.describe());
    }
  }
}

Result<LoadedState> load_latest_remote(const std::string& url, const std::string& cache_dir,
                                       const LoadOptions& o) {
  KILN_ASSIGN_OR_RETURN(auto store, objstore::open_object_store(url));
  return load_latest_remote(*store, cache_dir, o);
}

}  // namespace kiln::ckpt
