// A Chrome trace-event file (JSON array format) for one rank, readable by
// Perfetto (ui.perfetto.dev) and chrome://tracing.
//
// Each step is a complete event ("ph":"X") named "step N" on the rank's
// "train" track with its timed phases nested inside it; loss, samples/s and
// system readings are counter events ("ph":"C"). pid is the rank, so the
// files of all ranks can be loaded together and line up on the wall clock.
// The array format lets the closing "]" be missing, so a crashed run's
// trace still loads up to the last flushed event.
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "kiln/base/status.h"
#include "kiln/diag/step_timer.h"

namespace kiln::diag {

// Thread-safe: the training thread adds steps while the sampler thread adds
// counters.
class ChromeTraceWriter {
 public:
  // Creates or truncates `path` and writes the process-name metadata.
  static Result<std::unique_ptr<ChromeTraceWriter>> open(const std::string& path, int rank);
  ~ChromeTraceWriter();  // close()s, ignoring errors
  ChromeTraceWriter(const ChromeTraceWriter&) = delete;
  ChromeTraceWriter& operator=(const ChromeTraceWriter&) = delete;

  Status add_step(const StepRecord& r);
  // A counter track `name` with one or more series, at wall time t_unix_s.
  Status add_counter(const std::string& name, double t_unix_s,
                     const std::map<std::string, double>& values);
  // Pushes buffered events to the file (the session does it every summary).
  Status flush();
  // Writes the closing "]" and closes; later calls are no-ops.
  Status close();

 private:
  ChromeTraceWriter(std::string path, std::FILE* f, int rank)
      : path_(std::move(path)), f_(f), rank_(rank) {}
  Status write_event(const std::string& json);  // REQUIRES(mu_)

  const std::string path_;
  std::mutex mu_;
  std::FILE* f_;  // GUARDED_BY(mu_); null once closed
  const int rank_;
};

}  // namespace kiln::diag
