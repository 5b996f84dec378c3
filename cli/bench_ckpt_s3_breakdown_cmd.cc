// Note [Where an upload's time goes] (bench_ckpt_s3_breakdown.h). Compiled
// with the subcommands (a *_cmd.cc file) but registers none of its own.
#include <algorithm>

#include "cli/bench_ckpt_s3_breakdown.h"

namespace kiln::cli {
namespace {

using objstore::s3::S3RequestKind;
using objstore::s3::S3RequestRecord;

double seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Requests of one kind: how many, how long each took, how many were in
// flight at once, over what span.
struct Concurrency {
  int count = 0;
  double median_s = 0, max_s = 0, sum_s = 0;
  double span_s = 0;  // first start to last end
  int most_in_flight = 0;
  double mean_in_flight = 0;  // sum of durations over the span
  Clock::time_point first_start, last_end;
};

Concurrency concurrency_of(const std::vector<S3RequestRecord>& log, S3RequestKind kind) {
  Concurrency c;
  std::vector<double> each;
  std::vector<std::pair<Clock::time_point, int>> edges;  // +1 at a start, -1 at an end
  for (const auto& r : log) {
    if (r.kind != kind) continue;
    each.push_back(seconds(r.start, r.end));
    edges.emplace_back(r.start, 1);
    edges.emplace_back(r.end, -1);
    if (c.count == 0 || r.start < c.first_start) c.first_start = r.start;
    if (c.count == 0 || r.end > c.last_end) c.last_end = r.end;
    ++c.count;
  }
  if (c.count == 0) return c;
  // Ends before starts at the same instant: touching requests do not overlap.
  std::sort(edges.begin(), edges.end());
  int now = 0;
  for (const auto& [t, d] : edges) c.most_in_flight = std::max(c.most_in_flight, now += d);
  for (double s : each) c.sum_s += s;
  c.median_s = median_of(each);
  c.max_s = *std::max_element(each.begin(), each.end());
  c.span_s = seconds(c.first_start, c.last_end);
  c.mean_in_flight = c.span_s > 0 ? c.sum_s / c.span_s : 0;
  return c;
}

double body_bytes(const std::vector<S3RequestRecord>& log, S3RequestKind kind) {
  double b = 0;
  for (const auto& r : log) b += r.kind == kind ? static_cast<double>(r.body_bytes) : 0;
  return b;
}

}  // namespace

S3Breakdown raw_put_breakdown(const std::vector<S3RequestRecord>& log, Clock::time_point start) {
  Concurrency p = concurrency_of(log, S3RequestKind::kPut);
  return {{"bytes", body_bytes(log, S3RequestKind::kPut)},
          {"puts", p.count},
          {"put_median_s", p.median_s},
          {"put_max_s", p.max_s},
          {"most_in_flight", p.most_in_flight},
          {"mean_in_flight", p.mean_in_flight},
          {"first_put_at_s", p.count > 0 ? seconds(start, p.first_start) : 0},
          {"span_s", p.span_s}};
}

S3Breakdown checkpoint_breakdown(const std::vector<S3RequestRecord>& requests,
                                 Clock::time_point start, const ckpt::SaveStats& stats) {
  // Shards stored as chunk objects (no multipart upload begun): the chunk
  // PUTs, those begun while the shard was written, stand where the parts
  // would; the PUT after them is the manifest's.
  std::vector<S3RequestRecord> log = requests;
  const bool chunked = std::none_of(log.begin(), log.end(), [](const S3RequestRecord& r) {
    return r.kind == S3RequestKind::kInitiate;
  });
  if (chunked) {
    const auto written = start + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(stats.write_s));
    for (auto& r : log) {
      if (r.kind == S3RequestKind::kPut && r.start < written) r.kind = S3RequestKind::kPart;
    }
  }
  Concurrency parts = concurrency_of(log, S3RequestKind::kPart);
  Concurrency init = concurrency_of(log, S3RequestKind::kInitiate);
  Concurrency done = concurrency_of(log, S3RequestKind::kComplete);
  // Shard and manifest PUTs alike: the shard is one PUT when it is not multipart.
  Concurrency puts = concurrency_of(log, S3RequestKind::kPut);
  int other = 0;
  double other_s = 0;
  for (auto kind :
       {S3RequestKind::kGet, S3RequestKind::kHead, S3RequestKind::kDelete, S3RequestKind::kList,
        S3RequestKind::kListUploads, S3RequestKind::kAbort, S3RequestKind::kDeleteMany}) {
    Concurrency c = concurrency_of(log, kind);
    other += c.count;
    other_s += c.sum_s;
  }
  auto at = [&](const Concurrency& c, Clock::time_point t) {
    return c.count > 0 ? seconds(start, t) : 0.0;
  };
  // One PUT (neither layout split it): the shard is the largest PUT.
  double one_put = 0;
  for (const auto& r : log) {
    if (r.kind == S3RequestKind::kPut)
      one_put = std::max(one_put, static_cast<double>(r.body_bytes));
  }
  return {{"shard_bytes", parts.count > 0 ? body_bytes(log, S3RequestKind::kPart) : one_put},
          {"multipart", init.count > 0 ? 1 : 0},
          {"chunks", chunked ? parts.count : 0},
          {"parts", parts.count},
          {"snapshot_s", stats.stall_s},
          {"checksum_s", stats.write.checksum_s},
          {"append_s", stats.write.append_s},
          {"close_s", stats.write.close_s},
          {"write_s", stats.write_s},
          {"initiate_s", init.sum_s},
          {"part_median_s", parts.median_s},
          {"part_max_s", parts.max_s},
          {"parts_most_in_flight", parts.most_in_flight},
          {"parts_mean_in_flight", parts.mean_in_flight},
          {"first_part_at_s", at(parts, parts.first_start)},
          {"last_part_end_at_s", at(parts, parts.last_end)},
          {"complete_at_s", at(done, done.first_start)},
          {"complete_s", done.sum_s},
          {"puts", puts.count},
          {"put_s", puts.sum_s},
          {"commit_s", stats.commit_s},
          {"retention_s", stats.retention_s},
          {"other_requests", other},
          {"other_requests_s", other_s}};
}

Result<nlohmann::json> every_ranks_breakdown(comm::Communicator& c, const S3Breakdown& mine) {
  std::vector<double> values;
  for (const auto& [key, v] : mine) values.push_back(v);
  std::vector<double> all(values.size() * static_cast<std::size_t>(c.size()));
  KILN_RETURN_IF_ERROR(
      c.allgather(values.data(), all.data(), values.size(), comm::DataType::kFloat64)->wait());
  nlohmann::json out = nlohmann::json::array();
  for (int rank = 0; rank < c.size(); ++rank) {
    const double* q = all.data() + static_cast<std::size_t>(rank) * values.size();
    nlohmann::json one = nlohmann::json::object();
    for (std::size_t i = 0; i < mine.size(); ++i) one[mine[i].first] = q[i];
    out.push_back(std::move(one));
  }
  return out;
}

}  // namespace kiln::cli
