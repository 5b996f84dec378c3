#include "kiln/diag/trace_session.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "kiln/base/fs.h"
#include "kiln/base/logging.h"
#include "kiln/diag/aggregate.h"
#include "kiln/diag/step_json.h"

namespace kiln::diag {
namespace {

double unix_now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

Status write_meta(const std::string& path, int rank, const TraceOptions& o) {
  nlohmann::json meta = {{"format", "kiln-trace-dir"},
                         {"version", 1},
                         {"rank", rank},
                         {"world_size", o.world_size},
                         {"host", hostname()},
                         {"pid", static_cast<int>(getpid())},
                         {"start_unix_s", unix_now_s()},
                         {"summary_every", o.summary_every},
                         {"trace_max_steps", o.trace_max_steps},
                         {"sample_interval_s", o.sample_interval_s}};
  return write_file_atomic(path, meta.dump(2) + "\n", Durability::kAtomicOnly);
}

}  // namespace

TraceSession::TraceSession(std::string dir, int rank, TraceOptions options)
    : dir_(std::move(dir)), rank_(rank), options_(std::move(options)), window_(rank) {}

Result<std::unique_ptr<TraceSession>> TraceSession::open(const std::string& dir, int rank,
                                                         TraceOptions options) {
  std::unique_ptr<TraceSession> s(new TraceSession(dir, rank, std::move(options)));
  if (!dir.empty()) {
    s->rank_dir_ = fmt::format("{}/rank-{}", dir, rank);
    std::error_code ec;
    std::filesystem::create_directories(s->rank_dir_, ec);
    if (ec) {
      return errno_status("create trace directory " + s->rank_dir_, ec.value());
    }
    KILN_RETURN_IF_ERROR(write_meta(s->rank_dir_ + "/meta.json", rank, s->options_));
    KILN_ASSIGN_OR_RETURN(s->metrics_, MetricsWriter::open(s->rank_dir_ + "/metrics.jsonl"));
    if (s->options_.trace_max_steps > 0) {
      KILN_ASSIGN_OR_RETURN(s->trace_, ChromeTraceWriter::open(s->rank_dir_ + "/trace.json", rank));
    }
    if (rank == 0) {
      KILN_ASSIGN_OR_RETURN(s->summaries_, MetricsWriter::open(dir + "/summaries.jsonl"));
    }
  }
  if (s->options_.sample_interval_s > 0) {
    SamplerOptions so = s->options_.sampler;
    so.interval_s = s->options_.sample_interval_s;
    TraceSession* self = s.get();
    s->sampler_ = std::make_unique<SystemSampler>(
        so, [self](const SystemSample& sample) { self->on_system_sample(sample); });
  }
  return s;
}

TraceSession::~TraceSession() { (void)close(); }

void TraceSession::on_system_sample(const SystemSample& s) {
  Status st;
  if (metrics_) st = metrics_->write_json(system_to_json(s));
  if (trace_ && s.interval_s > 0) {
    std::map<std::string, double> util = {{"process_cpu_cores", s.cpu_cores}};
    if (s.disk_util >= 0) util["disk_busy"] = s.disk_util;
    for (const auto& g : s.gpus) util[fmt::format("gpu{}", g.index)] = g.util;
    // A closed (full) trace refuses events: that is its cap, not an error.
    (void)trace_->add_counter("utilisation", s.t_unix_s, util);
    (void)trace_->add_counter(
        "memory_GiB", s.t_unix_s,
        {{"rss", s.rss_bytes / (1 << 30)}, {"available", s.mem_available_bytes / (1 << 30)}});
    (void)trace_->add_counter("io_MBps", s.t_unix_s,
                              {{"disk_read", s.disk_read_Bps / 1e6},
                               {"disk_write", s.disk_write_Bps / 1e6},
                               {"net_rx", s.net_rx_Bps() / 1e6},
                               {"net_tx", s.net_tx_Bps() / 1e6}});
  }
  std::lock_guard<std::mutex> lock(mu_);
  window_.add_system(s);
  latest_system_ = s;
  if (!st.is_ok() && sampler_error_.is_ok()) sampler_error_ = st;
}

Status TraceSession::record_step(const StepRecord& r) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    window_.add_step(r);
    // A failed system write surfaces on the training thread, once.
    if (!sampler_error_.is_ok()) return std::exchange(sampler_error_, Status::ok());
  }
  if (metrics_) KILN_RETURN_IF_ERROR(metrics_->write_step(r));
  if (trace_ && traced_steps_ < options_.trace_max_steps) {
    KILN_RETURN_IF_ERROR(trace_->add_step(r));
    if (++traced_steps_ == options_.trace_max_steps) {
      log()->info(
          "diag: trace {}/trace.json reached {} steps; later steps go to metrics.jsonl only",
          rank_dir_, traced_steps_);
      KILN_RETURN_IF_ERROR(trace_->close());
    }
  }
  return Status::ok();
}

Status TraceSession::record_eval(std::int64_t step, double loss, std::optional<double> accuracy) {
  if (!metrics_) return Status::ok();
  return metrics_->write_eval(step, loss, accuracy);
}

bool TraceSession::summary_due() const {
  std::lock_guard<std::mutex> lock(mu_);
  return options_.summary_every > 0 && window_.steps() >= options_.summary_every;
}

RankSummary TraceSession::take_summary() {
  RankSummary s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = window_.summary();
    window_.reset();
  }
  if (metrics_) {
    auto j = summary_to_json(s);
    j["t"] = unix_now_s();
    (void)metrics_->write_json(j);  // a lost summary line is recomputed by diagnose
  }
  if (trace_) (void)trace_->flush();
  return s;
}

Result<Verdict> TraceSession::summarize(comm::Communicator* comm,
                                        std::chrono::milliseconds timeout) {
  RankSummary mine = take_summary();
  std::vector<RankSummary> all;
  if (comm != nullptr && comm->size() > 1) {
    KILN_ASSIGN_OR_RETURN(all, gather_summaries(*comm, mine, timeout));
  } else {
    all.push_back(mine);
  }
  recent_windows_.push_back(all);
  if (recent_windows_.size() > 8) recent_windows_.pop_front();
  const std::vector<std::vector<RankSummary>> windows(recent_windows_.begin(),
                                                      recent_windows_.end());
  Verdict v = decide(all, options_.verdict, windows);
  if (rank_ == 0) KILN_RETURN_IF_ERROR(record_cluster(all, v));
  return v;
}

Status TraceSession::record_cluster(std::span<const RankSummary> ranks, const Verdict& v) {
  if (!summaries_) return Status::ok();
  nlohmann::json j = {{"type", "cluster"}, {"t", unix_now_s()}, {"verdict", verdict_to_json(v)}};
  std::int64_t last = 0;
  nlohmann::json rs = nlohmann::json::array();
  for (const auto& r : ranks) {
    rs.push_back(summary_to_json(r));
    last = std::max(last, r.last_step);
  }
  j["step"] = last;
  j["ranks"] = std::move(rs);
  return summaries_->write_json(j);
}

std::optional<SystemSample> TraceSession::latest_system() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_system_;
}

void TraceSession::set_sampling(bool on) {
  if (sampler_ != nullptr) sampler_->set_paused(!on);
}

double TraceSession::sampler_cpu_seconds() const {
  return sampler_ != nullptr ? sampler_->cpu_seconds() : 0.0;
}

Status TraceSession::close() {
  sampler_.reset();  // joins: no more concurrent writes
  Status st;
  if (trace_) st = trace_->close();
  return st;
}

}  // namespace kiln::diag
