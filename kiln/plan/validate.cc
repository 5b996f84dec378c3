#include "kiln/plan/validate.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "kiln/plan/plan.h"
#include "kiln/plan/stages.h"

namespace kiln::plan {

Result<CsvTable> parse_csv(const std::string& text, const std::string& source) {
  CsvTable table;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false;
  bool any = false;  // the current record has content
  int line = 1;
  int record_line = 1;
  auto end_record = [&] {
    if (any || !field.empty() || record.size() > 0) {
      record.push_back(field);
      const bool blank = record.size() == 1 && record[0].empty();
      if (!blank) {
        if (table.header.empty()) {
          table.header = record;
        } else {
          table.rows.push_back(record);
          table.lines.push_back(record_line);
        }
      }
    }
    record.clear();
    field.clear();
    any = false;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (quoted) {
      if (ch == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (ch == '\n') ++line;
        field += ch;
      }
      continue;
    }
    if (ch == '"') {
      quoted = true;
      any = true;
    } else if (ch == ',') {
      record.push_back(field);
      field.clear();
      any = true;
    } else if (ch == '\n') {
      end_record();
      ++line;
      record_line = line;
    } else if (ch != '\r') {
      field += ch;
    }
  }
  if (quoted) {
    return data_loss("csv " + source + ":" + std::to_string(record_line) +
                     ": unterminated quoted field");
  }
  end_record();
  if (table.header.empty()) return invalid_argument("csv " + source + ": empty file, no header");
  for (auto& h : table.header) {
    h.erase(0, h.find_first_not_of(" \t"));
    h.erase(h.find_last_not_of(" \t") + 1);
  }
  return table;
}

Result<CsvTable> read_csv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("csv " + path + ": cannot open file");
  std::ostringstream buf;
  buf << in.rdbuf();
  return parse_csv(buf.str(), path);
}

namespace {

class RowReader {
 public:
  RowReader(const std::vector<std::string>& header, const std::vector<std::string>& row,
            std::string where)
      : where_(std::move(where)) {
    for (size_t i = 0; i < header.size(); ++i) {
      cells_[header[i]] = i < row.size() ? trim(row[i]) : "";
    }
  }

  std::int64_t get_int(const std::string& col, bool required, std::int64_t fallback,
                       std::int64_t min_value = 1) {
    auto it = cells_.find(col);
    if (it == cells_.end() || it->second.empty()) {
      if (required) fail(col, "is required but empty");
      return fallback;
    }
    std::int64_t v = 0;
    const auto& s = it->second;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || ptr != s.data() + s.size()) {
      fail(col, "must be an integer (got '" + s + "')");
      return fallback;
    }
    if (v < min_value) {
      fail(col, "must be >= " + std::to_string(min_value) + " (got " + s + ")");
      return fallback;
    }
    return v;
  }

  std::optional<double> get_double(const std::string& col) {
    auto it = cells_.find(col);
    if (it == cells_.end() || it->second.empty()) return std::nullopt;
    const std::string& s = it->second;
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || errno != 0 || !std::isfinite(v) || v <= 0) {
      fail(col, "must be a positive number (got '" + s + "')");
      return std::nullopt;
    }
    return v;
  }

  bool get_bool(const std::string& col, bool fallback) {
    auto it = cells_.find(col);
    if (it == cells_.end() || it->second.empty()) return fallback;
    const auto& s = it->second;
    if (s == "1" || s == "true") return true;
    if (s == "0" || s == "false") return false;
    fail(col, "must be 1/0 or true/false (got '" + s + "')");
    return fallback;
  }

  std::string get_string(const std::string& col, bool required, std::string fallback) {
    auto it = cells_.find(col);
    if (it == cells_.end() || it->second.empty()) {
      if (required) fail(col, "is required but empty");
      return fallback;
    }
    return it->second;
  }

  void fail(const std::string& col, const std::string& why) {
    if (status_.is_ok()) status_ = invalid_argument(where_ + ": column '" + col + "' " + why);
  }
  const Status& status() const { return status_; }

 private:
  static std::string trim(std::string s) {
    s.erase(0, s.find_first_not_of(" \t"));
    s.erase(s.find_last_not_of(" \t") + 1);
    return s;
  }
  std::map<std::string, std::string> cells_;
  std::string where_;
  Status status_;
};

const char* const kRequiredColumns[] = {"name",         "gpu",   "gpus",    "layers",
                                        "hidden",       "heads", "seq_len", "vocab",
                                        "global_batch", "tp",    "pp",      "dp"};

}  // namespace

Result<PlanConfig> config_from_csv_row(const std::vector<std::string>& header,
                                       const std::vector<std::string>& row,
                                       const std::string& where) {
  RowReader r(header, row, where);
  PlanConfig c;
  c.source = where;
  auto& m = c.model;
  m.name = r.get_string("name", false, "row");
  m.layers = r.get_int("layers", true, 1);
  m.hidden = r.get_int("hidden", true, 1);
  m.heads = r.get_int("heads", true, 1);
  m.kv_heads = r.get_int("kv_heads", false, m.heads);
  m.glu = r.get_bool("glu", false);
  m.ffn_hidden = r.get_int("ffn_hidden", false, 4 * m.hidden);
  m.seq_len = r.get_int("seq_len", true, 1);
  m.vocab = r.get_int("vocab", true, 1);
  m.set_family_defaults();
  m.dropout = r.get_bool("dropout", m.dropout);

  const std::string gpu_id = r.get_string("gpu", true, "");
  KILN_RETURN_IF_ERROR(r.status());
  auto gpu = find_gpu(gpu_id);
  if (!gpu.is_ok()) return invalid_argument(where + ": column 'gpu': " + gpu.status().message());
  auto& cl = c.cluster;
  cl.gpu = *gpu;
  const std::int64_t gpus = r.get_int("gpus", true, 1);
  cl.gpus_per_node = r.get_int("gpus_per_node", false, 8);
  cl.nvlink_bytes_per_s =
      r.get_double("nvlink_gbytes_per_s").value_or(cl.gpu.nvlink_bytes_per_s / 1e9) * 1e9;
  cl.nic_bits_per_s = r.get_double("nic_gbits_per_s").value_or(cl.gpu.nic_bits_per_s / 1e9) * 1e9;
  cl.storage_write_bytes_per_s = 20e9;
  KILN_RETURN_IF_ERROR(r.status());
  if (gpus % cl.gpus_per_node != 0 && gpus > cl.gpus_per_node) {
    return invalid_argument(where + ": gpus (" + std::to_string(gpus) +
                            ") is not a multiple of gpus_per_node (" +
                            std::to_string(cl.gpus_per_node) + ")");
  }
  if (gpus < cl.gpus_per_node) {
    cl.gpus_per_node = gpus;
    cl.nodes = 1;
  } else {
    cl.nodes = gpus / cl.gpus_per_node;
  }

  auto& l = c.layout;
  l.tp = r.get_int("tp", true, 1);
  l.pp = r.get_int("pp", true, 1);
  l.dp = r.get_int("dp", true, 1);
  l.vpp = r.get_int("vpp", false, 1);
  l.global_batch = r.get_int("global_batch", true, 1);
  l.micro_batch = r.get_int("micro_batch", false, 1);
  l.sequence_parallel = r.get_bool("sequence_parallel", false);
  const std::string rc = r.get_string("recompute", false, "none");
  if (auto v = parse_recompute(rc); v.is_ok()) {
    l.recompute = *v;
  } else {
    r.fail("recompute", "must be none, selective, full or save_qkv (got '" + rc + "')");
  }
  l.zero = static_cast<int>(r.get_int("zero", false, 0, 0));
  if (l.zero > 3) r.fail("zero", "must be 0..3");
  const std::string attn =
      r.get_string("attention", false, is_ampere(cl.gpu) ? "unfused" : "flash");
  if (auto v = parse_attention(attn); v.is_ok()) {
    l.attention = *v;
  } else {
    r.fail("attention", "must be flash or unfused (got '" + attn + "')");
  }
  const std::string mma = r.get_string("mma", false, std::string(mma_name(default_mma(cl.gpu))));
  if (auto v = parse_mma(mma); v.is_ok()) {
    l.mma = *v;
  } else {
    r.fail("mma", "must be sync or async (got '" + mma + "')");
  }
  l.overlap_grad_reduce = r.get_bool("overlap_grad_reduce", true);
  l.tp_comm_overlap = r.get_bool("tp_comm_overlap", false);
  l.pp_scatter_gather = r.get_bool("pp_scatter_gather", true);
  l.zero3_param_bytes = static_cast<int>(r.get_int("zero3_param_bytes", false, 2));
  if (l.zero3_param_bytes != 2 && l.zero3_param_bytes != 4) {
    r.fail("zero3_param_bytes", "must be 2 (bf16) or 4 (fp32)");
  }
  l.zero3_shard_group = r.get_int("zero3_shard_group", false, 0, 0);
  const std::string gather = r.get_string("zero3_gather", false, "layer");
  if (auto v = parse_gather_unit(gather); v.is_ok()) {
    l.zero3_gather = *v;
  } else {
    r.fail("zero3_gather", "must be layer or tensor (got '" + gather + "')");
  }
  const std::string stages = r.get_string("stage_layers", false, "auto");
  if (stages != "auto") {
    if (auto v = parse_stage_layers(stages); v.is_ok()) {
      l.stage_layers = *v;
    } else {
      r.fail("stage_layers", v.status().message());
    }
  }
  KILN_RETURN_IF_ERROR(r.status());
  KILN_RETURN_IF_ERROR(check_layout(c));
  return c;
}

ErrorSummary summarize_errors(std::vector<double> errors) {
  ErrorSummary out;
  if (errors.empty()) return out;
  for (double& x : errors) x = std::fabs(x);
  std::sort(errors.begin(), errors.end());
  const size_t n = errors.size();
  out.median_abs = n % 2 ? errors[n / 2] : (errors[n / 2 - 1] + errors[n / 2]) / 2;
  out.max_abs = errors.back();
  return out;
}

void repredict(ValidationReport& report, const EfficiencyModel& e) {
  std::vector<double> errors;
  for (auto& row : report.rows) {
    if (!row.config) continue;
    auto plan = make_plan(*row.config, e);
    if (!plan.is_ok()) {
      row.problem = plan.status().message();
      row.predicted_s.reset();
      row.error.reset();
      continue;
    }
    row.predicted_s = plan->step.step_s;
    if (row.measured_s) {
      row.error = (*row.predicted_s - *row.measured_s) / *row.measured_s;
      errors.push_back(*row.error);
    }
  }
  report.compared = static_cast<int>(errors.size());
  const ErrorSummary sum = summarize_errors(std::move(errors));
  report.median_abs_error = sum.median_abs;
  report.max_abs_error = sum.max_abs;
}

Result<ValidationReport> validate_table(const CsvTable& table, const std::string& source,
                                        const EfficiencyModel& e) {
  for (const char* col : kRequiredColumns) {
    if (std::find(table.header.begin(), table.header.end(), col) == table.header.end()) {
      return invalid_argument("csv " + source + ": header lacks required column '" + col +
                              "' (schema: examples/plan/runs/README.md)");
    }
  }
  const auto name_col =
      std::find(table.header.begin(), table.header.end(), "name") - table.header.begin();
  ValidationReport report;
  report.source = source;
  for (size_t i = 0; i < table.rows.size(); ++i) {
    const auto& row = table.rows[i];
    ValidationRow out;
    out.line = table.lines[i];
    out.file = source;
    out.name = static_cast<size_t>(name_col) < row.size() ? row[name_col] : "";
    const std::string where =
        "csv " + source + ":" + std::to_string(out.line) + " (" + out.name + ")";
    RowReader meta(table.header, row, where);
    out.measured_s = meta.get_double("measured_step_time_s");
    out.source_id = meta.get_string("source_id", false, meta.get_string("source", false, source));
    out.run_class = meta.get_string("class", false, "");
    auto config = config_from_csv_row(table.header, row, where);
    Status problem = meta.status();
    if (problem.is_ok()) problem = config.status();
    if (problem.is_ok()) {
      out.config = *config;
    } else {
      out.problem = problem.message();
    }
    report.rows.push_back(std::move(out));
  }
  repredict(report, e);
  return report;
}

Result<ValidationReport> validate_file(const std::string& path, const EfficiencyModel& e) {
  KILN_ASSIGN_OR_RETURN(CsvTable table, read_csv(path));
  return validate_table(table, path, e);
}

Result<ValidationReport> validate_files(const std::vector<std::string>& paths,
                                        const EfficiencyModel& e) {
  ValidationReport all;
  for (const auto& path : paths) {
    KILN_ASSIGN_OR_RETURN(ValidationReport one, validate_file(path, e));
    all.source += (all.source.empty() ? "" : ", ") + path;
    for (auto& row : one.rows) all.rows.push_back(std::move(row));
  }
  repredict(all, e);
  return all;
}

}  // namespace kiln::plan
