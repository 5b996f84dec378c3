#include "kiln/ckpt/commit.h"

#include <fmt/format.h>

#include <cstring>
#include <functional>
#include <unordered_set>
#include <vector>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/remote.h"

namespace kiln::ckpt {
namespace {

using comm::DataType;

// What a rank reports: '1' + shard record JSON, or '0' + code + ':' + message.
std::string encode(const Result<ShardRecord>& r) {
  if (r.is_ok()) return "1" + to_json(*r);
  return fmt::format("0{}:{}", static_cast<int>(r.status().code()), r.status().message());
}

Status decode_failure(const std::string& s, int rank) {
  auto colon = s.find(':');
  int code = std::atoi(s.substr(1, colon).c_str());
  return Status(static_cast<Code>(code), fmt::format("rank {}: {}", rank, s.substr(colon + 1)));
}

// Every rank's report, gathered on every rank (allgather of sizes, then allgatherv).
Result<std::vector<std::string>> exchange_reports(const CommitContext& ctx,
                                                  const std::string& mine) {
  if (ctx.world_size == 1) return std::vector<std::string>{mine};
  // Length and step of every rank's report. Every rank sees the same steps,
  // so a mismatch (ranks out of step: a skipped save) fails on all of them
  // alike, without further collectives.
  std::int64_t my_head[2] = {static_cast<std::int64_t>(mine.size()), ctx.step};
  std::vector<std::int64_t> heads(2 * ctx.world_size);
  KILN_RETURN_IF_ERROR(
      ctx.comm->allgather(my_head, heads.data(), 2, DataType::kInt64)->wait(ctx.timeout));
  std::vector<std::size_t> counts;
  std::size_t total = 0;
  for (int r = 0; r < ctx.world_size; ++r) {
    if (heads[2 * r + 1] != ctx.step) {
      return failed_precondition(fmt::format(
          "rank {} is committing step {} while rank {} commits step {}: every rank must save the "
          "same steps in the same order",
          r, heads[2 * r + 1], ctx.rank, ctx.step));
    }
    counts.push_back(static_cast<std::size_t>(heads[2 * r]));
    total += counts.back();
  }
  std::string all(total, '\0');
  KILN_RETURN_IF_ERROR(
      ctx.comm->allgatherv(mine.data(), all.data(), counts, DataType::kUInt8)->wait(ctx.timeout));
  std::vector<std::string> out;
  std::size_t off = 0;
  for (auto c : counts) {
    out.push_back(all.substr(off, c));
    off += c;
  }
  return out;
}

// The manifest of a step every rank reported success for.
Result<Manifest> build_manifest(const CommitContext& ctx, const std::vector<std::string>& reports) {
  Manifest m;
  m.step = ctx.step;
  m.world_size = ctx.world_size;
  m.time = utc_now_iso8601();
  for (int r = 0; r < ctx.world_size; ++r) {
    KILN_ASSIGN_OR_RETURN(auto rec, parse_shard_record(reports[r].substr(1),
                                                       fmt::format("shard record of rank {}", r)));
    if (!rec.chunks.empty()) m.version = kChunkedFormatVersion;
    m.shards.push_back(std::move(rec));
  }
  return m;
}

// Every file (relative to the step directory) `m` names: shard files and
// chunk objects. A set, since a step of 256 ranks names ~16 K chunks and
// each listed object is looked up in it.
std::unordered_set<std::string> named_files(const Manifest& m) {
  std::unordered_set<std::string> names;
  for (const ShardRecord& s : m.shards) {
    names.insert(s.file);
    for (const ChunkRecord& c : s.chunks) names.insert(c.file);
  }
  return names;
}

// The keys under step-N/ (`objects`, as listed) that `m` does not name,
// its own manifest aside.
std::vector<std::string> unnamed_objects(const std::vector<objstore::ObjectInfo>& objects,
                                         std::int64_t step, const Manifest& m) {
  const std::string dir = step_dir_name(step) + "/";
  const auto named = named_files(m);
  std::vector<std::string> out;
  for (const auto& o : objects) {
    const std::string file = o.key.substr(dir.size());
    if (file != kManifestName && !named.contains(file)) out.push_back(o.key);
  }
  return out;
}

// The files (relative to the step) of this attempt that the ranks that
// succeeded report: their shard objects or chunk objects (a rank that
// failed removed its own).
std::vector<std::string> attempt_files(const std::vector<std::string>& reports) {
  std::vector<std::string> files;
  for (const std::string& r : reports) {
    if (r.empty() || r[0] != '1') continue;
    auto rec = parse_shard_record(r.substr(1), "shard record");
    if (!rec.is_ok()) continue;
    if (rec->chunks.empty()) files.push_back(rec->file);
    for (const ChunkRecord& c : rec->chunks) files.push_back(c.file);
  }
  return files;
}

// Rank 0's cleanup after a failed attempt at a step on an object store:
// exactly this attempt's objects go, never "everything under the step": a
// stray earlier generation may be uploading the same step beside it (Note
// [One attempt's chunks], remote.h), or another attempt may have committed
// the step meanwhile; then what its manifest names stays (a shard stored
// whole keeps its name across attempts). Objects of ranks killed mid-upload
// are left to the step's next commit or to retention.
Status discard_failed_attempt(objstore::ObjectStore& store, std::int64_t step,
                              const std::vector<std::string>& reports, Deadline deadline) {
  std::vector<std::string> files = attempt_files(reports);
  auto committed = read_remote_manifest(store, step, deadline);
  if (committed.is_ok()) {
    log()->warn("checkpoint step {} on {} was committed by another attempt; its objects stay", step,
                store.describe());
    const auto named = named_files(*committed);
    std::erase_if(files, [&](const std::string& f) { return named.contains(f); });
  } else if (committed.status().code() != Code::kNotFound) {
    return committed.status();
  }
  std::vector<std::string> keys;
  for (const std::string& f : files) keys.push_back(remote_key(step, f));
  return store.remove_many(keys, deadline);
}

// Rank 0's half on a filesystem: everything from the manifest to `latest`.
Status publish(const CommitContext& ctx, const std::vector<std::string>& reports) {
  std::string tmp = ctx.root + "/" + tmp_step_dir_name(ctx.step);
  KILN_ASSIGN_OR_RETURN(Manifest m, build_manifest(ctx, reports));
  // A crashed earlier attempt at this step (maybe with more ranks) may have
  // left files the manifest does not name; they must not become part of it.
  KILN_ASSIGN_OR_RETURN(auto names, list_dir(tmp));
  const auto named = named_files(m);
  for (const auto& n : names) {
    if (!named.contains(n)) KILN_RETURN_IF_ERROR(ctx.fs->remove_tree(tmp + "/" + n));
  }
  KILN_RETURN_IF_ERROR(write_file_synced(*ctx.fs, tmp + "/" + kManifestName, to_json(m)));
  KILN_RETURN_IF_ERROR(ctx.fs->sync_dir(tmp));
  std::string final_dir = ctx.root + "/" + step_dir_name(ctx.step);
  if (path_exists(final_dir)) {
    return already_exists(fmt::format("commit of step {}: {} exists already", ctx.step, final_dir));
  }
  KILN_RETURN_IF_ERROR(ctx.fs->rename(tmp, final_dir));
  KILN_RETURN_IF_ERROR(ctx.fs->sync_dir(ctx.root));
  return write_file_atomic(*ctx.fs, ctx.root + "/" + kLatestName, step_dir_name(ctx.step) + "\n");
}

// Rank 0's outcome to every rank: code byte, then the message (truncated).
constexpr std::size_t kOutcomeBytes = 1024;

// Note [One commit protocol]: on a filesystem and on an object store the
// ranks agree the same way (exchange of shard records, rank 0 decides,
// broadcast of its outcome); only rank 0's publishing and its cleanup differ.
Status agree_and_publish(
    const CommitContext& ctx, const Result<ShardRecord>& local,
    const std::function<Status(const std::vector<std::string>& reports)>& publish,
    const std::function<Status(const std::vector<std::string>& reports)>& cleanup) {
  std::string where = fmt::format("checkpoint commit of step {} under {}", ctx.step, ctx.root);
  auto reports = exchange_reports(ctx, encode(local));
  if (!reports.is_ok()) return reports.status().with_context(where);
  Status outcome;
  if (ctx.rank == 0) {
    for (int r = 0; r < ctx.world_size && outcome.is_ok(); ++r) {
      if ((*reports)[r].empty() || (*reports)[r][0] != '1')
        outcome = decode_failure((*reports)[r], r);
    }
    if (outcome.is_ok()) outcome = publish(*reports);
    if (!outcome.is_ok()) {
      // Free the space (a full disk is the likely cause) and leave no half step behind.
      Status rm = cleanup(*reports);
      if (!rm.is_ok()) log()->warn("{}: cleanup failed: {}", where, rm.to_string());
    }
  }
  if (ctx.world_size > 1) {
    std::vector<char> buf(kOutcomeBytes, 0);
    if (ctx.rank == 0) {
      buf[0] = static_cast<char>(outcome.code());
      std::string msg = outcome.message().substr(0, kOutcomeBytes - 2);
      std::memcpy(buf.data() + 1, msg.data(), msg.size());
    }
    Status bs = ctx.comm->broadcast(buf.data(), buf.size(), DataType::kUInt8, 0)->wait(ctx.timeout);
    if (!bs.is_ok()) return bs.with_context(where);
    if (ctx.rank != 0) outcome = Status(static_cast<Code>(buf[0]), std::string(buf.data() + 1));
  }
  if (!outcome.is_ok()) return outcome.with_context(where);
  return Status::ok();
}

}  // namespace

Status commit_step(const CommitContext& ctx, const Result<ShardRecord>& local) {
  return agree_and_publish(
      ctx, local, [&](const std::vector<std::string>& reports) { return publish(ctx, reports); },
      [&](const std::vector<std::string>&) {
        return ctx.fs->remove_tree(ctx.root + "/" + tmp_step_dir_name(ctx.step));
      });
}

Status commit_step_to_store(const CommitContext& ctx, objstore::ObjectStore& store,
                            const Result<ShardRecord>& local) {
  const Deadline deadline = Deadline::after(ctx.timeout);
  // Note [Publishing a remote step]: a step already committed (by a stray
  // earlier generation, or by an earlier run of the job, as on a
  // filesystem: publish()) is never overwritten or pruned: its chunks carry
  // another attempt's names, so "objects this manifest does not name" would
  // be all of them. Objects of crashed earlier attempts are removed after
  // the manifest is put, so a concurrent uncommitted attempt whose chunks go
  // finds the manifest at its own commit and fails (AlreadyExists) rather
  // than committing a manifest that names deleted chunks. Two attempts that
  // both pass the check cannot both commit: the manifest is put only if
  // absent (ObjectStore::put_if_absent: on S3 a conditional write, Note
  // [Conditional writes]), so the later one fails with AlreadyExists. An
  // endpoint that ignores the condition (s3rver) leaves the check alone to
  // narrow that window to the two requests.
  auto publish_manifest = [&](const std::vector<std::string>& reports) -> Status {
    KILN_ASSIGN_OR_RETURN(Manifest m, build_manifest(ctx, reports));
    const std::string key = remote_key(ctx.step, kManifestName);
    const std::string json = to_json(m);
    auto existing = read_remote_manifest(store, ctx.step, deadline);
    if (existing.is_ok()) {
      return already_exists(fmt::format("commit of step {}: {} exists already (another attempt "
                                        "committed this step; nothing of it was changed)",
                                        ctx.step, store.describe() + "/" + key));
    }
    if (existing.status().code() != Code::kNotFound) return existing.status();
    // Every shard object is complete already: each rank's upload committed
    // before it reported success. The manifest, last, commits the step.
    Status put = store.put_if_absent(key, json, deadline);
    if (!put.is_ok()) {
      // The PUT may have landed before its reply was lost (its retry then
      // finds our own manifest): then the step is ours.
      auto landed = read_remote_manifest(store, ctx.step, deadline);
      if (!landed.is_ok() || to_json(*landed) != json) {
        if (put.code() != Code::kAlreadyExists) return put;
        return already_exists(fmt::format(
            "commit of step {}: another attempt put {} between this one's check and its put; "
            "nothing of it was changed ({})",
            ctx.step, store.describe() + "/" + key, put.message()));
      }
      log()->warn("commit of step {}: the manifest PUT failed ({}) but the manifest landed", ctx.step,
                  put.to_string());
    }
    // Objects a crashed earlier attempt left under the step (a rank killed
    // mid-upload, maybe with more ranks or another layout): not part of it.
    auto objects = store.list(step_dir_name(ctx.step) + "/", deadline);
    Status strays = objects.is_ok()
                        ? store.remove_many(unnamed_objects(*objects, ctx.step, m), deadline)
                        : objects.status();
    if (!strays.is_ok()) {
      log()->warn("commit of step {}: step committed; removing objects it does not name failed "
                  "(retention or the next commit retries): {}",
                  ctx.step, strays.to_string());
    }
    return Status::ok();
  };
  return agree_and_publish(ctx, local, publish_manifest,
                           [&](const std::vector<std::string>& reports) {
                             return discard_failed_attempt(store, ctx.step, reports, deadline);
                           });
}

}  // namespace kiln::ckpt
