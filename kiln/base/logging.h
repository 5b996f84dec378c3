// Logging through spdlog. One process-wide logger named "kiln"; its pattern
// carries the rank once set_log_rank() was called, so interleaved output of
// many ranks stays readable. KILN_LOG_LEVEL=trace|debug|info|warn|error.
#pragma once

#include <memory>

#include <spdlog/spdlog.h>

namespace kiln {

// The Kiln logger (created on first use, writes to stderr).
spdlog::logger* log();

// Adds "[rank R]" to every later log line of this process.
void set_log_rank(int rank);

}  // namespace kiln
