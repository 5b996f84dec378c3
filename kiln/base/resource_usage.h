#pragma once
// CPU time, page faults and context switches of this process or this
// thread (getrusage), and their deltas across a measured span. Benchmarks
// read these to tell where a slower phase's time went: its own CPU, waits
// for the run queue (involuntary switches), sleeps (voluntary switches), or
// first touches of fresh memory (minor faults, which on a paravirtualised VM
// cost more than the copy itself).

#include <map>
#include <string>

namespace kiln {

struct ResourceUsage {
  double cpu_s = 0;  // user + system
  long minor_faults = 0, major_faults = 0;
  long voluntary_switches = 0, involuntary_switches = 0;

  // Every thread of the process, so far.
  static ResourceUsage of_process();
  // The calling thread only, so far.
  static ResourceUsage of_thread();
  // Every other thread of the process, so far, summed per thread name
  // (/proc/self/task/*/comm; a communicator names its threads, e.g.
  // "kiln-engine"): CPU and context switches only (faults are counted per
  // process). Threads that exited are missing, so take deltas of names
  // present at both ends. Empty where /proc cannot be read.
  static std::map<std::string, ResourceUsage> of_other_threads_by_name();

  ResourceUsage operator-(const ResourceUsage& earlier) const {
    return {cpu_s - earlier.cpu_s, minor_faults - earlier.minor_faults,
            major_faults - earlier.major_faults, voluntary_switches - earlier.voluntary_switches,
            involuntary_switches - earlier.involuntary_switches};
  }
};

}  // namespace kiln
