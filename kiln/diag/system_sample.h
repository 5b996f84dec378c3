// One reading of the machine and the process, as rates over the interval
// since the previous reading (system_sampler.h takes them).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kiln::diag {

struct InterfaceSample {
  std::string name;
  double rx_Bps = 0;
  double tx_Bps = 0;
  double speed_Bps = -1;  // link speed from /sys/class/net/*/speed; -1 = unknown (lo, veth)
};

struct GpuSample {
  int index = 0;
  double util = 0;  // fraction of the interval a kernel ran, 0..1
  double mem_used_bytes = 0;
  double mem_total_bytes = 0;
};

struct SystemSample {
  double t_unix_s = 0;
  double interval_s = 0;      // 0 for the first reading (rates unknown)
  double cpu_cores = 0;       // this process's CPU seconds per second (all threads)
  int cpu_count = 0;          // CPUs this process may run on
  double host_cpu_util = -1;  // whole machine, 0..1
  double rss_bytes = 0;
  double mem_available_bytes = 0;
  double mem_total_bytes = 0;
  double disk_read_Bps = 0;  // this process's storage reads (/proc/self/io)
  double disk_write_Bps = 0;
  double disk_util = -1;  // busiest whole disk's time-busy fraction (/proc/diskstats); -1 unknown
  std::vector<InterfaceSample> net;
  bool gpu_available = false;
  std::string gpu_unavailable_reason;  // when !gpu_available
  std::vector<GpuSample> gpus;

  // Busiest interface with a known link speed: max(rx, tx) / speed; -1 if none.
  double net_util() const;
  double net_rx_Bps() const;  // all interfaces but lo
  double net_tx_Bps() const;
};

// {"type":"system",...}: a line of metrics.jsonl (docs/diag.md).
nlohmann::json system_to_json(const SystemSample& s);
SystemSample system_from_json(const nlohmann::json& j);

}  // namespace kiln::diag
