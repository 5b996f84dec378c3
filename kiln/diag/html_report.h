// `kiln diagnose DIR --html FILE`: one self-contained HTML page (no network
// needed to view it: the data is embedded as JSON and drawn into inline SVG
// by a short script) with the stacked step-time breakdown over the run, the
// loss curve, every rank's step time and the verdict.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/base/status.h"
#include "kiln/diag/trace_dir.h"
#include "kiln/diag/verdict.h"

namespace kiln::diag {

// At most this many points per series: longer runs are averaged into
// buckets of consecutive steps so the page stays small and quick.
inline constexpr std::size_t kHtmlMaxPoints = 600;

// The charts show steps numbered >= skip (as the verdict does: the warm-up
// steps' spike would otherwise set every chart's scale).
std::string render_html_report(const TraceDir& t, const Verdict& v, std::int64_t skip = 0);

// Writes it to `path` (temp file + rename, so a viewer never sees half a page).
Status write_html_report(const std::string& path, const TraceDir& t, const Verdict& v,
                         std::int64_t skip = 0);

}  // namespace kiln::diag
