// System sampling: SystemReader turns two readings of /proc (and NVML when
// present) into rates; SystemSampler runs a reader on its own thread at a
// fixed interval and hands each sample to a sink.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "kiln/diag/proc_stats.h"
#include "kiln/diag/system_sample.h"

namespace kiln::diag {

struct SamplerOptions {
  double interval_s = 1.0;
  // Roots of procfs and sysfs; tests point them at fixture trees.
  std::string proc_root = "/proc";
  std::string sys_root = "/sys";
  bool nvml = true;  // false: never dlopen NVML (tests, or a user's choice)
};

// Not thread-safe: one owner (the sampler thread, or a test).
class SystemReader {
 public:
  explicit SystemReader(SamplerOptions options);
  // Reads everything once. Rates cover the interval since the previous
  // read(); the first sample has interval_s = 0 and rates 0 (unknown).
  // Files that cannot be read leave their fields at the "unknown" values.
  SystemSample read();

 private:
  SamplerOptions options_;
  long ticks_per_s_;
  std::uint64_t page_bytes_;
  std::optional<std::chrono::steady_clock::time_point> prev_t_;
  std::optional<std::uint64_t> prev_cpu_ticks_;
  std::optional<proc::CpuTimes> prev_host_;
  std::optional<proc::IoBytes> prev_io_;
  std::map<std::string, std::uint64_t> prev_disk_;
  std::map<std::string, proc::NetBytes> prev_net_;
  std::map<std::string, double> link_speed_Bps_;  // read once per interface
};

class SystemSampler {
 public:
  using Sink = std::function<void(const SystemSample&)>;
  // Starts the thread; the first sample is taken at once (interval_s 0).
  // `sink` runs on the sampler thread and must not block for long.
  SystemSampler(SamplerOptions options, Sink sink);
  // Stops and joins (waits at most for one read in progress).
  ~SystemSampler();
  SystemSampler(const SystemSampler&) = delete;
  SystemSampler& operator=(const SystemSampler&) = delete;

  // The newest sample, if any.
  std::optional<SystemSample> latest() const;

  // While paused, the thread takes no samples (OverheadAB's unrecorded
  // blocks); it keeps its schedule.
  void set_paused(bool paused);

  // CPU seconds the sampler thread has used so far (reads and sink calls):
  // the diagnosis' cost off the training thread, reported beside its cost
  // on it. Updated after each sample.
  double cpu_seconds() const;

 private:
  void run();

  const SamplerOptions options_;
  Sink sink_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                   // GUARDED_BY(mu_)
  bool paused_ = false;                 // GUARDED_BY(mu_)
  std::optional<SystemSample> latest_;  // GUARDED_BY(mu_)
  double cpu_s_ = 0;                    // GUARDED_BY(mu_)
  std::thread thread_;                  // job: sample every interval_s
};

}  // namespace kiln::diag
