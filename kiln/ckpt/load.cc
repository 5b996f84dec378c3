#include "kiln/ckpt/load.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/verify.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {
namespace {

constexpr int kMaxRelists = 100;

struct Source {
  const ShardRecord* shard;
  const EntryRecord* rec;
};

// Rows `want` of tensor `name`, copied from the saved slices that cover them.
Result<LoadedEntry> assemble_tensor(const std::string& dir, const std::string& name,
                                    std::vector<Source> sources, int rank, int world) {
  const TensorSpec& first = sources.front().rec->spec;
  for (const auto& s : sources) {
    if (s.rec->spec.shape != first.shape || s.rec->spec.dtype != first.dtype) {
      return data_loss(fmt::format(
          "{}: tensor '{}' has different shapes/dtypes in different shards", dir, name));
    }
  }
  std::sort(sources.begin(), sources.end(), [](const Source& a, const Source& b) {
    return a.rec->spec.row_offset < b.rec->spec.row_offset;
  });
  RowRange want = even_rows(first.shape[0], rank, world);
  LoadedEntry out;
  out.name = name;
  out.is_tensor = true;
  out.spec = TensorSpec{first.dtype, first.shape, want.offset, want.count};
  const std::size_t row = first.row_bytes();
  out.data.resize(static_cast<std::size_t>(want.count) * row);
  std::int64_t next = want.offset, end = want.offset + want.count;
  for (const auto& s : sources) {
    if (next >= end) break;
    std::int64_t lo = s.rec->spec.row_offset, hi = lo + s.rec->spec.rows;
    if (lo > next || hi <= next) continue;
    KILN_ASSIGN_OR_RETURN(auto bytes, read_entry(dir, *s.shard, *s.rec));
    std::int64_t take_end = std::min(hi, end);
    std::memcpy(out.data.data() + (next - want.offset) * row, bytes.data() + (next - lo) * row,
                static_cast<std::size_t>(take_end - next) * row);
    next = take_end;
  }
  if (next < end) {
    return data_loss(
        fmt::format("{}: rows [{}, {}) of tensor '{}' are in no shard", dir, next, end, name));
  }
  return out;
}

}  // namespace

Result<LoadedState> load_step(const std::string& step_dir, int rank, int world_size,
                              const EntryFilter& keep) {
  KILN_ASSIGN_OR_RETURN(auto lock, StepReadLock::acquire(step_dir));
  KILN_ASSIGN_OR_RETURN(auto m, read_manifest(step_dir));
  LoadedState st;
  st.step = m.step;
  st.dir = step_dir;
  st.saved_world_size = m.world_size;
  // Tensors by name, in first-seen order.
  std::vector<std::string> order;
  std::map<std::string, std::vector<Source>> tensors;
  for (const auto& s : m.shards) {
    for (const auto& e : s.entries) {
      if (!e.is_tensor || (keep && !keep(e.name))) continue;
      auto& v = tensors[e.name];
      if (v.empty()) order.push_back(e.name);
      v.push_back({&s, &e});
    }
  }
  for (const auto& name : order) {
    KILN_ASSIGN_OR_RETURN(auto e, assemble_tensor(step_dir, name, tensors[name], rank, world_size));
    st.entries.push_back(std::move(e));
  }
  const ShardRecord& blob_shard = m.shards[rank % m.world_size];
  for (const auto& e : blob_shard.entries) {
    if (e.is_tensor || (keep && !keep(e.name))) continue;
    KILN_ASSIGN_OR_RETURN(auto bytes, read_entry(step_dir, blob_shard, e));
    st.entries.push_back(LoadedEntry{e.name, false, {}, std::move(bytes)});
  }
  return st;
}

Result<LoadedState> load_latest(const std::string& root, const LoadOptions& o) {
  if (o.world_size > 1 && o.comm == nullptr) {
    return invalid_argument(
        "load_latest: world_size > 1 needs a communicator to agree on the step");
  }
  if (objstore::is_object_store_url(root)) {
    // The shards stream through a cache of this process, dropped once loaded.
    const char* tmp = std::getenv("TMPDIR");
    const std::string cache =
        fmt::format("{}/kiln-ckpt-load-{}-rank-{}", tmp != nullptr && *tmp != '\0' ? tmp : "/tmp",
                    ::getpid(), o.rank);
    auto loaded = load_latest_remote(root, cache, o);
    (void)Fs::posix()->remove_tree(cache);
    return loaded;
  }
  KILN_ASSIGN_OR_RETURN(auto steps, list_committed_steps(root));
  int relists = 0;
  for (std::size_t i = 0;; ++i) {
    // Rank 0's listing decides the candidates, so every rank tries the same step.
    std::int64_t step = i < steps.size() ? steps[i] : -1;
    if (o.world_size > 1) {
      KILN_RETURN_IF_ERROR(o.comm->broadcast(&step, 1, comm::DataType::kInt64, 0)->wait(o.timeout));
    }
    if (step < 0) return not_found(fmt::format("no loadable checkpoint under {}", root));
    std::string dir = root + "/" + step_dir_name(step);
    auto r = load_step(dir, o.rank, o.world_size);
    std::int32_t ok = r.is_ok() ? 1 : 0;
    if (o.world_size > 1) {
      KILN_RETURN_IF_ERROR(
          o.comm->allreduce(&ok, 1, comm::DataType::kInt32, comm::ReduceOp::kMin)->wait(o.timeout));
    }
    if (ok == 1) return r;
    if (!r.is_ok() && r.status().code() == Code::kNotFound && !path_exists(dir) &&
        relists < kMaxRelists) {
      // Retention removed it after a newer commit (saves run concurrently):
      // the listing is stale, so take a fresh one (used on rank 0).
      ++relists;
      KILN_ASSIGN_OR_RETURN(steps, list_committed_steps(root));
      i = static_cast<std::size_t>(-1);
      continue;
    }
    if (!r.is_ok()) {
      log()->warn("checkpoint {} skipped: {}", dir, r.status().to_string());
    } else {
      log()->warn("checkpoint {} skipped: another rank could not load it", dir);
    }
  }
}

}  // namespace kiln::ckpt
