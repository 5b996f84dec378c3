// Several calibrations of one host merged into one profile (Note [Drifting
// hosts] in host_profile.h). A shared VM's speed moves on a scale of
// minutes, so one calibration samples one moment of it; calibrations spread
// over a measurement window, merged, sample the window
// (bench/plan_vs_runtime.py interleaves them with the layouts' runs).
//
// Note [Merging fits]: a fitted model's coefficients are not merged one by
// one. The linear layers' backward of three calibrations of one window was
// (call, GFLOP/s, traffic GB/s) = (0, 49.2, 4.86), (4.6, 43.8, none),
// (27.8, 44.9, 37.4): per-coefficient medians (4.6, 44.9, 4.86) give a
// layer slower than any of the three measured. So each fitted kernel class
// (and each link, and each core-sharing level) is taken whole from the
// calibration whose model gives the median time at a shape of the
// miniature GPT; only single measurements (memory bandwidths, the op
// overhead) are medians of the values.
#pragma once

#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/host_profile.h"

namespace kiln::plan {

// Merges `profiles` (calibrations of one host; `sources` name them for
// errors): Note [Merging fits]; with an even count the lower middle fit
// scaled to the mean time of the two middle ones. Strings
// are the first profile's, except measured_at, which becomes the first and
// the last ("A .. B"). InvalidArgument naming the profile when one differs
// in cores or in the ranks per core its [core_sharing] was measured at.
Result<HostProfile> merge_host_profiles(const std::vector<HostProfile>& profiles,
                                        const std::vector<std::string>& sources);

}  // namespace kiln::plan
