#include "kiln/ckpt/internal/snapshot_records.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "kiln/base/file.h"
#include "kiln/ckpt/fs.h"

namespace kiln::ckpt::internal {

std::string record_name(int rank) { return fmt::format("shard-{:05d}.json", rank); }

std::string record_json(std::int64_t step, int world, const ShardRecord& rec) {
  nlohmann::json j;
  j["step"] = step;
  j["world_size"] = world;
  j["shard"] = nlohmann::json::parse(to_json(rec));
  return j.dump();
}

Result<ShardRecord> parse_record(const std::string& text, std::int64_t step, int world,
                                 const std::string& where) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("shard") || j.value("step", -1LL) != step ||
      j.value("world_size", -1) != world) {
    return data_loss(
        fmt::format("{}: snapshot record missing, malformed, or not of step {} at {} "
                    "ranks",
                    where, step, world));
  }
  return parse_shard_record(j["shard"].dump(), where);
}

std::optional<ShardRecord> read_snapshot(const std::string& step_dir, std::int64_t step, int rank,
                                         int world) {
  auto text = read_file(step_dir + "/" + record_name(rank));
  if (!text.is_ok()) return std::nullopt;
  auto rec = parse_record(*text, step, world, step_dir);
  if (!rec.is_ok() || rec->rank != rank) return std::nullopt;
  auto size = file_size(step_dir + "/" + rec->file);
  if (!size.is_ok() || *size != rec->bytes) return std::nullopt;
  return *rec;
}

std::vector<std::int64_t> snapshot_steps(const std::string& rank_dir) {
  std::vector<std::int64_t> steps;
  auto names = list_dir(rank_dir);
  if (!names.is_ok()) return steps;
  for (const auto& n : *names) {
    if (auto s = parse_step_dir_name(n)) steps.push_back(*s);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

}  // namespace kiln::ckpt::internal
