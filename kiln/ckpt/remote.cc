#include "kiln/ckpt/remote.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"

namespace kiln::ckpt {
namespace {

struct RemoteStep {
  bool committed = false;         // its manifest exists
  std::vector<std::string> keys;  // every object of the step
  std::uint64_t bytes = 0;
};

// The remote objects grouped by step ("step-N/..."); other keys are ignored.
Result<std::map<std::int64_t, RemoteStep>> list_remote_steps(objstore::ObjectStore& store,
                                                             Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(auto objects, store.list("step-", deadline));
  std::map<std::int64_t, RemoteStep> steps;
  for (const auto& o : objects) {
    auto slash = o.key.find('/');
    if (slash == std::string::npos) continue;
    auto step = parse_step_dir_name(o.key.substr(0, slash));
    if (!step) continue;
    RemoteStep& s = steps[*step];
    s.keys.push_back(o.key);
    s.bytes += o.bytes;
    if (o.key.substr(slash + 1) == kManifestName) s.committed = true;
  }
  return steps;
}

// Manifest first: from then on the step no longer counts as committed.
Status delete_remote_step(objstore::ObjectStore& store, std::int64_t step, const RemoteStep& s,
                          Deadline deadline) {
  std::string manifest = remote_key(step, kManifestName);
  if (s.committed) KILN_RETURN_IF_ERROR(store.remove(manifest, deadline));
  // The rest in parallel: a step of chunk objects has dozens per rank.
  std::vector<std::string> rest;
  for (const auto& k : s.keys) {
    if (k != manifest) rest.push_back(k);
  }
  return store.remove_many(rest, deadline);
}

}  // namespace

std::string remote_key(std::int64_t step, const std::string& file) {
  return step_dir_name(step) + "/" + file;
}

Status upload_step_file(objstore::ObjectStore& store, std::int64_t step, const std::string& file,
                        const std::string& local_path, Deadline deadline) {
  return store.put_file(remote_key(step, file), local_path, deadline)
      .with_context(fmt::format("upload of checkpoint step {} to {}", step, store.describe()));
}

Result<std::vector<RemoteStepSummary>> summarize_remote_steps(objstore::ObjectStore& store,
                                                              Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(auto steps, list_remote_steps(store, deadline));
  std::vector<RemoteStepSummary> out;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    out.push_back({it->first, it->second.committed, it->second.keys.size(), it->second.bytes});
  }
  return out;
}

Result<Manifest> read_remote_manifest(objstore::ObjectStore& store, std::int64_t step,
                                      Deadline deadline) {
  const std::string key = remote_key(step, kManifestName);
  KILN_ASSIGN_OR_RETURN(std::string text, store.get(key, deadline));
  return parse_manifest(text, store.describe() + "/" + key);
}

Result<std::vector<std::int64_t>> list_remote_committed_steps(objstore::ObjectStore& store,
                                                              Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(auto steps, list_remote_steps(store, deadline));
  std::vector<std::int64_t> out;
  for (const auto& [step, s] : steps) {
    if (s.committed) out.push_back(step);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

Result<std::vector<std::string>> apply_remote_retention(objstore::ObjectStore& store,
                                                        const RetentionPolicy& policy,
                                                        Deadline deadline,
                                                        std::int64_t committed_step,
                                                        const std::atomic<bool>* stop) {
  auto stopped = [stop] { return stop != nullptr && stop->load(); };
  KILN_ASSIGN_OR_RETURN(auto steps, list_remote_steps(store, deadline));
  std::vector<std::int64_t> committed;
  for (const auto& [step, s] : steps) {
    if (s.committed) committed.push_back(step);
  }
  std::sort(committed.rbegin(), committed.rend());
  std::vector<std::string> deleted;
  if (committed.empty()) return deleted;
  const std::size_t keep = static_cast<std::size_t>(std::max(policy.keep_last, 1));
  // Interrupted uploads are those below both the newest commit and the step
  // this retention follows: a job resumed below a newer committed step (its
  // newest failed to load) uploads steps under that one, beside retention.
  const std::int64_t interrupted_below = std::min(committed.front(), committed_step);
  for (const auto& [step, s] : steps) {
    bool drop;
    if (s.committed) {
      auto rank = std::find(committed.begin(), committed.end(), step) - committed.begin();
      bool kept_forever = policy.keep_every > 0 && step % policy.keep_every == 0;
      drop = static_cast<std::size_t>(rank) >= keep && !kept_forever;
    } else {
      // An upload a crash or failure interrupted; a newer one is in flight
      // only for steps above the newest commit.
      drop = step < interrupted_below;
    }
    if (!drop) continue;
    if (stopped()) return deleted;
    KILN_RETURN_IF_ERROR(
        delete_remote_step(store, step, s, deadline)
            .with_context(fmt::format("remote checkpoint retention on {}", store.describe())));
    deleted.push_back(step_dir_name(step));
  }
  if (stopped()) return deleted;
  KILN_ASSIGN_OR_RETURN(int aborted, abort_abandoned_uploads(store, interrupted_below, deadline));
  if (aborted > 0) {
    log()->info("checkpoint retention on {}: aborted {} abandoned upload(s) at or below step {}",
                store.describe(), aborted, interrupted_below);
  }
  return deleted;
}

// Note [Abandoned uploads]: a rank killed mid-upload (or a server that died
// before the client saw its initiate reply) leaves a multipart upload whose
// parts S3 keeps, and bills, until it is aborted (file://: a temp file).
// Once step N is committed no writer is at work on any step <= N: every
// rank's shard was published before rank 0 wrote the manifest, and the next
// save writes a later step. So such uploads are abandoned; uploads of later
// steps may be a save in flight and wait for a later commit. A bucket
// lifecycle rule (AbortIncompleteMultipartUpload) still covers a job that
// never commits again.
Result<int> abort_abandoned_uploads(objstore::ObjectStore& store, std::int64_t newest_committed,
                                    Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(auto pending, store.list_pending_uploads("step-", deadline));
  int aborted = 0;
  for (const auto& u : pending) {
    auto slash = u.key.find('/');
    if (slash == std::string::npos) continue;
    auto step = parse_step_dir_name(u.key.substr(0, slash));
    if (!step || *step > newest_committed) continue;
    KILN_RETURN_IF_ERROR(store.abort_pending_upload(u, deadline)
                             .with_context(fmt::format("abort the abandoned upload of {}/{}",
                                                       store.describe(), u.key)));
    ++aborted;
  }
  return aborted;
}

}  // namespace kiln::ckpt
