// Several calibrations of one host merged into one profile: every measured
// number the median of the calibrations' (Note [Drifting hosts] in
// host_profile.h). A shared VM's speed moves on a scale of minutes, so one
// calibration samples one moment of it; calibrations spread over a
// measurement window, merged, sample the window (bench/plan_vs_runtime.py
// interleaves them with the layouts' runs).
#pragma once

#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/host_profile.h"

namespace kiln::plan {

// Each number of `texts` (profiles as TOML, `sources` naming them for
// errors) replaced by the median over all of them, arrays element by
// element; strings are the first profile's, except host.measured_at, which
// becomes the first and the last ("A .. B"). The profiles must be of one
// host with one set of keys: InvalidArgument naming the profile and the key
// for a key one lacks, an array of another length, a different host.cores,
// or a value that is not a number where the first has one. The result is
// read back as a profile (so it is checked as read_host_profile checks).
Result<HostProfile> merge_host_profiles(const std::vector<std::string>& texts,
                                        const std::vector<std::string>& sources);

}  // namespace kiln::plan
