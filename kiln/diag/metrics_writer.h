// metrics.jsonl: one JSON object per line, one line per step, eval or
// summary (docs/diag.md). Lines are flushed as written so `tail -f` and a
// crashed run both see every completed step.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "kiln/base/status.h"
#include "kiln/diag/step_timer.h"

namespace kiln::diag {

// Thread-safe: any thread may write; lines never interleave.
class MetricsWriter {
 public:
  // Creates or truncates `path`. NotFound/PermissionDenied-style errno
  // statuses name the path.
  static Result<std::unique_ptr<MetricsWriter>> open(const std::string &path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter &) = delete;
  MetricsWriter &operator=(const MetricsWriter &) = delete;

  // {"type":"step",...}: see step_json.h.
  Status write_step(const StepRecord &r);
  // {"type":"eval","step":..,"eval_loss":..,"eval_accuracy":..}; accuracy is
  // omitted when absent.
  Status write_eval(std::int64_t step, double loss, std::optional<double> accuracy);
  // Any other line (summaries, system samples); `j` should carry a "type".
  Status write_json(const nlohmann::json &j);

  const std::string &path() const { return path_; }

 private:
  MetricsWriter(std::string path, std::FILE *f) : path_(std::move(path)), f_(f) {}
  Status write_line(const std::string &line);

  const std::string path_;
  std::mutex mu_;
  std::FILE *f_;  // GUARDED_BY(mu_)
};

}  // namespace kiln::diag
