#include "kiln/diag/chrome_trace.h"

#include <cerrno>
#include <nlohmann/json.hpp>

namespace kiln::diag {
namespace {
constexpr int kTrainTid = 1;
constexpr double kUs = 1e6;
}  // namespace

Result<std::unique_ptr<ChromeTraceWriter>> ChromeTraceWriter::open(const std::string& path,
                                                                   int rank) {
  std::FILE* f = std::fopen(path.c_str(), "we");
  if (f == nullptr) return errno_status("open trace file " + path, errno);
  std::unique_ptr<ChromeTraceWriter> w(new ChromeTraceWriter(path, f, rank));
  nlohmann::json pname = {{"name", "process_name"},
                          {"ph", "M"},
                          {"pid", rank},
                          {"args", {{"name", "rank " + std::to_string(rank)}}}};
  nlohmann::json psort = {
      {"name", "process_sort_index"}, {"ph", "M"}, {"pid", rank}, {"args", {{"sort_index", rank}}}};
  nlohmann::json tname = {{"name", "thread_name"},
                          {"ph", "M"},
                          {"pid", rank},
                          {"tid", kTrainTid},
                          {"args", {{"name", "train"}}}};
  std::lock_guard<std::mutex> lock(w->mu_);
  if (std::fputs("[\n", f) == EOF) return errno_status("write trace file " + path, errno);
  KILN_RETURN_IF_ERROR(w->write_event(pname.dump()));
  KILN_RETURN_IF_ERROR(w->write_event(psort.dump()));
  KILN_RETURN_IF_ERROR(w->write_event(tname.dump()));
  return w;
}

ChromeTraceWriter::~ChromeTraceWriter() { (void)close(); }

Status ChromeTraceWriter::write_event(const std::string& json) {
  if (f_ == nullptr) return failed_precondition("trace file " + path_ + " is closed");
  // Each event ends with ",\n"; the array format tolerates the trailing comma.
  if (std::fwrite(json.data(), 1, json.size(), f_) != json.size() || std::fputs(",\n", f_) == EOF) {
    return errno_status("write trace file " + path_, errno);
  }
  return Status::ok();
}

Status ChromeTraceWriter::add_step(const StepRecord& r) {
  const double t0 = r.start_unix_s * kUs;
  std::string out;
  nlohmann::json step = {{"name", "step " + std::to_string(r.step)},
                         {"cat", "step"},
                         {"ph", "X"},
                         {"pid", rank_},
                         {"tid", kTrainTid},
                         {"ts", t0},
                         {"dur", r.step_s * kUs},
                         {"args", {{"loss", r.loss}, {"samples", r.samples}}}};
  if (r.comm_bytes > 0) step["args"]["comm_bytes"] = r.comm_bytes;
  if (r.cache_hit_rate >= 0) step["args"]["cache_hit_rate"] = r.cache_hit_rate;
  std::lock_guard<std::mutex> lock(mu_);
  KILN_RETURN_IF_ERROR(write_event(step.dump()));
  for (const auto& s : r.spans) {
    nlohmann::json e = {{"name", phase_name(s.phase)},
                        {"cat", "phase"},
                        {"ph", "X"},
                        {"pid", rank_},
                        {"tid", kTrainTid},
                        {"ts", t0 + s.begin_s * kUs},
                        {"dur", s.dur_s * kUs}};
    KILN_RETURN_IF_ERROR(write_event(e.dump()));
  }
  nlohmann::json loss = {{"name", "loss"},
                         {"ph", "C"},
                         {"pid", rank_},
                         {"ts", t0 + r.step_s * kUs},
                         {"args", {{"loss", r.loss}}}};
  return write_event(loss.dump());
}

Status ChromeTraceWriter::add_counter(const std::string& name, double t_unix_s,
                                      const std::map<std::string, double>& values) {
  nlohmann::json e = {
      {"name", name}, {"ph", "C"}, {"pid", rank_}, {"ts", t_unix_s * kUs}, {"args", values}};
  std::lock_guard<std::mutex> lock(mu_);
  return write_event(e.dump());
}

Status ChromeTraceWriter::flush() {
  std::lock_guard<std::mutex> lock(mu_);
  if (f_ != nullptr && std::fflush(f_) != 0) return errno_status("flush trace " + path_, errno);
  return Status::ok();
}

Status ChromeTraceWriter::close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (f_ == nullptr) return Status::ok();
  // A last metadata event carries no trailing comma before the "]".
  nlohmann::json end = {
      {"name", "trace_complete"}, {"ph", "M"}, {"pid", rank_}, {"args", {{"complete", true}}}};
  std::string tail = end.dump() + "\n]\n";
  bool ok = std::fwrite(tail.data(), 1, tail.size(), f_) == tail.size();
  int err = errno;
  ok = std::fclose(f_) == 0 && ok;
  f_ = nullptr;
  if (!ok) return errno_status("close trace file " + path_, err);
  return Status::ok();
}

}  // namespace kiln::diag
