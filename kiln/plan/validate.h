// `kiln plan validate`: predicted vs measured step time over published runs.
//
// Reads CSV rows in the schema of examples/plan/runs/calibration.csv (see
// docs/plan.md). A row that cannot be planned (unknown GPU, tp·pp·dp ≠ gpus,
// indivisible layers) is reported on that row and skipped; only an unreadable
// file or a header missing required columns fails the whole call.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/config.h"
#include "kiln/plan/efficiency.h"

namespace kiln::plan {

struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<int> lines;  // 1-based line number of each row
};

// RFC 4180 subset: comma separated, double-quoted fields may hold commas,
// quotes ("") and newlines. Blank lines are skipped. NotFound if the file
// cannot be opened; DataLoss on an unterminated quote.
Result<CsvTable> read_csv(const std::string& path);
Result<CsvTable> parse_csv(const std::string& text, const std::string& source);

struct ValidationRow {
  std::string name;
  int line = 0;
  std::string file;       // the CSV it came from
  std::string source_id;  // column source_id, else source: the unit leave-one-source-out holds out
  std::string run_class;  // column class: free text grouping runs in reports
  std::optional<PlanConfig> config;  // set when the row could be planned
  std::optional<double> predicted_s;
  std::optional<double> measured_s;
  std::optional<double> error;  // (predicted − measured) / measured
  std::string problem;          // why the row could not be predicted; empty if it was
};

struct ValidationReport {
  std::string source;
  std::vector<ValidationRow> rows;
  int compared = 0;                        // rows with both a prediction and a measurement
  std::optional<double> median_abs_error;  // over compared rows
  std::optional<double> max_abs_error;
};

// The PlanConfig for one row. `header` names the columns of `row`.
Result<PlanConfig> config_from_csv_row(const std::vector<std::string>& header,
                                       const std::vector<std::string>& row,
                                       const std::string& where);

Result<ValidationReport> validate_table(const CsvTable& table, const std::string& source,
                                        const EfficiencyModel& e = EfficiencyModel::defaults());
Result<ValidationReport> validate_file(const std::string& path,
                                       const EfficiencyModel& e = EfficiencyModel::defaults());
// The rows of several files as one report (source = the paths joined by ", ").
Result<ValidationReport> validate_files(const std::vector<std::string>& paths,
                                        const EfficiencyModel& e = EfficiencyModel::defaults());

// Recomputes every predicted row's prediction, error and the summary with `e`.
void repredict(ValidationReport& report, const EfficiencyModel& e);

// Median and maximum of |x| (nullopt for an empty list).
struct ErrorSummary {
  std::optional<double> median_abs;
  std::optional<double> max_abs;
};
ErrorSummary summarize_errors(std::vector<double> errors);

}  // namespace kiln::plan
