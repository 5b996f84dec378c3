#include "kiln/ckpt/verify.h"

#include <fmt/format.h>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/shard_writer.h"

namespace kiln::ckpt {

Result<Manifest> read_manifest(const std::string& step_dir) {
  std::string path = step_dir + "/" + kManifestName;
  KILN_ASSIGN_OR_RETURN(auto text, read_file(path));
  return parse_manifest(text, path);
}

Result<std::string> read_latest(const std::string& root) {
  KILN_ASSIGN_OR_RETURN(auto text, read_file(root + "/" + kLatestName));
  return text.substr(0, text.find('\n'));
}

Result<std::vector<std::byte>> read_entry(const std::string& step_dir, const ShardRecord& shard,
                                          const EntryRecord& rec) {
  std::string path = step_dir + "/" + shard.file;
  std::vector<std::byte> stored(rec.stored_bytes);
  KILN_RETURN_IF_ERROR(read_at(path, rec.offset, stored.data(), stored.size()));
  return decode_entry(rec, std::move(stored), path);
}

namespace {

Status check_shard(const std::string& step_dir, const ShardRecord& shard) {
  std::string path = step_dir + "/" + shard.file;
  KILN_ASSIGN_OR_RETURN(auto size, file_size(path));
  if (size != shard.bytes) {
    return data_loss(fmt::format("{} is {} bytes, manifest says {}{}", path, size, shard.bytes,
                                 size < shard.bytes ? " (truncated)" : ""));
  }
  for (const auto& e : shard.entries) {
    auto r = read_entry(step_dir, shard, e);
    if (!r.is_ok()) return r.status();
  }
  return Status::ok();
}

}  // namespace

Result<std::pair<Manifest, std::vector<ShardProblem>>> verify_step(const std::string& step_dir) {
  KILN_ASSIGN_OR_RETURN(auto m, read_manifest(step_dir));
  std::vector<ShardProblem> problems;
  for (const auto& s : m.shards) {
    Status st = check_shard(step_dir, s);
    if (!st.is_ok()) problems.push_back({s.rank, s.file, st});
  }
  return std::make_pair(std::move(m), std::move(problems));
}

Status verify_step_status(const std::string& step_dir) {
  KILN_ASSIGN_OR_RETURN(auto v, verify_step(step_dir));
  if (v.second.empty()) return Status::ok();
  std::string msg = fmt::format("{}: {} bad shard(s):", step_dir, v.second.size());
  for (const auto& p : v.second)
    msg += fmt::format(" [rank {} {}: {}]", p.rank, p.file, p.why.message());
  return data_loss(msg);
}

}  // namespace kiln::ckpt
