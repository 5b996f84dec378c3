#include "kiln/diag/trace_dir.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

#include "kiln/diag/step_json.h"

namespace kiln::diag {
namespace {

namespace fs = std::filesystem;

// Calls `line_fn(json, line_number)` per line. The last line may be cut
// short by a crash: it is skipped, not an error.
template <typename Fn>
Status for_each_json_line(const std::string& path, Fn line_fn) {
  std::ifstream in(path);
  if (!in) return errno_status("open " + path, errno);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    auto j = nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      if (i + 1 == lines.size()) break;  // a crashed run's torn last line
      return data_loss(fmt::format("{}:{}: not a JSON line", path, i + 1));
    }
    KILN_RETURN_IF_ERROR(line_fn(j, i + 1));
  }
  return Status::ok();
}

Status read_rank(const std::string& path, RankTrace* r) {
  return for_each_json_line(path, [&](const nlohmann::json& j, size_t line) -> Status {
    std::string type = j.value("type", "");
    if (type == "step") {
      auto rec = step_from_json(j);
      if (!rec.is_ok())
        return data_loss(fmt::format("{}:{}: {}", path, line, rec.status().message()));
      r->steps.push_back(std::move(*rec));
    } else if (type == "system") {
      r->system.push_back(system_from_json(j));
    } else if (type == "eval") {
      r->eval_loss.emplace_back(j.value("step", std::int64_t{0}), j.value("eval_loss", 0.0));
    }
    return Status::ok();
  });
}

}  // namespace

Result<TraceDir> read_trace_dir(const std::string& dir) {
  TraceDir t;
  t.dir = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return not_found("trace directory " + dir + " does not exist");
  if (std::ifstream meta(dir + "/meta.json"); meta) {
    t.meta = nlohmann::json::parse(meta, nullptr, false);
    if (t.meta.is_discarded()) return data_loss(dir + "/meta.json: not JSON");
  }
  static const std::regex kRankDir("rank-([0-9]+)");
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !std::regex_match(name, m, kRankDir)) continue;
    std::string metrics = entry.path().string() + "/metrics.jsonl";
    if (!fs::exists(metrics)) continue;
    RankTrace r;
    r.rank = std::stoi(m[1].str());
    KILN_RETURN_IF_ERROR(read_rank(metrics, &r));
    t.ranks.push_back(std::move(r));
  }
  if (ec) return errno_status("list trace directory " + dir, ec.value());
  if (t.ranks.empty()) {
    return not_found(fmt::format(
        "{} holds no rank-<r>/metrics.jsonl: is it a `kiln train --trace-dir` directory?", dir));
  }
  std::sort(t.ranks.begin(), t.ranks.end(),
            [](const RankTrace& a, const RankTrace& b) { return a.rank < b.rank; });
  if (fs::exists(dir + "/summaries.jsonl")) {
    KILN_RETURN_IF_ERROR(
        for_each_json_line(dir + "/summaries.jsonl", [&](const nlohmann::json& j, size_t) {
          if (j.value("type", "") == "cluster") {
            t.clusters.push_back(j);
          }
          return Status::ok();
        }));
  }
  return t;
}

std::vector<RankSummary> summarize_trace(const TraceDir& t, std::int64_t skip) {
  std::vector<RankSummary> out;
  for (const auto& r : t.ranks) {
    WindowAccumulator acc(r.rank);
    double first_t = -1;
    for (const auto& s : r.steps) {
      if (s.step < skip) continue;
      if (first_t < 0) first_t = s.start_unix_s;
      acc.add_step(s);
    }
    for (const auto& s : r.system) {
      if (first_t >= 0 && s.t_unix_s >= first_t) acc.add_system(s);
    }
    out.push_back(acc.summary());
  }
  return out;
}

std::vector<std::vector<RankSummary>> summarize_windows(const TraceDir& t, std::int64_t skip,
                                                        std::int64_t window_steps) {
  std::int64_t last = -1;
  for (const auto& r : t.ranks) {
    for (const auto& s : r.steps) last = std::max(last, s.step);
  }
  std::vector<std::vector<RankSummary>> out;
  if (window_steps < 1 || last < skip) return out;
  for (std::int64_t begin = skip; begin <= last; begin += window_steps) {
    std::vector<RankSummary> window;
    for (const auto& r : t.ranks) {
      WindowAccumulator acc(r.rank);
      for (const auto& s : r.steps) {
        if (s.step >= begin && s.step < begin + window_steps) acc.add_step(s);
      }
      window.push_back(acc.summary());
    }
    out.push_back(std::move(window));
  }
  return out;
}

Result<Verdict> diagnose(const TraceDir& t, std::int64_t skip, const VerdictOptions& options) {
  std::vector<RankSummary> ranks = summarize_trace(t, skip);
  bool any =
      std::any_of(ranks.begin(), ranks.end(), [](const RankSummary& r) { return r.steps > 0; });
  if (!any) {
    return failed_precondition(
        fmt::format("{}: no steps numbered {} or later to diagnose (lower --skip)", t.dir, skip));
  }
  std::int64_t steps = 0;
  for (const auto& r : ranks) steps = std::max(steps, r.steps);
  auto windows = summarize_windows(t, skip, std::max<std::int64_t>(5, (steps + 7) / 8));
  return decide(ranks, options, windows);
}

}  // namespace kiln::diag
