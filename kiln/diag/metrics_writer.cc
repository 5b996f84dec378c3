#include "kiln/diag/metrics_writer.h"

#include <cerrno>

#include "kiln/diag/step_json.h"

namespace kiln::diag {

Result<std::unique_ptr<MetricsWriter>> MetricsWriter::open(const std::string &path) {
  std::FILE *f = std::fopen(path.c_str(), "we");
  if (f == nullptr) return errno_status("open metrics file " + path, errno);
  return std::unique_ptr<MetricsWriter>(new MetricsWriter(path, f));
}

MetricsWriter::~MetricsWriter() { std::fclose(f_); }

Status MetricsWriter::write_line(const std::string &line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fputc('\n', f_) == EOF ||
      std::fflush(f_) != 0) {
    return errno_status("write metrics file " + path_, errno);
  }
  return Status::ok();
}

Status MetricsWriter::write_step(const StepRecord &r) { return write_line(step_to_json(r).dump()); }

Status MetricsWriter::write_eval(std::int64_t step, double loss, std::optional<double> accuracy) {
  nlohmann::json j = {{"type", "eval"}, {"step", step}, {"eval_loss", loss}};
  if (accuracy) j["eval_accuracy"] = *accuracy;
  return write_line(j.dump());
}

Status MetricsWriter::write_json(const nlohmann::json &j) { return write_line(j.dump()); }

}  // namespace kiln::diag
