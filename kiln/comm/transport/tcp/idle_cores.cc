#include "kiln/comm/transport/tcp/idle_cores.h"

#include <sched.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace kiln::comm::transport::tcp {

// Note [Idle cores this process may use]: the spare core must be one this
// process may run on. A rank bound to its own core (`kiln run` binds ranks
// to cores, Note [Binding ranks to cores]; a launcher's taskset) that counted
// the whole host's idle time would take the other rank's idle core (it
// waiting at the end of its backward) for a spare one and code zstd on its
// own busy core, slowing the rank everyone waits for. So only the CPUs in
// this thread's affinity mask are counted (their /proc/stat lines).
CpuTicks allowed_cpu_ticks() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  const bool masked = ::sched_getaffinity(0, sizeof(allowed), &allowed) == 0;
  CpuTicks t;
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (f == nullptr) return t;
  char line[512];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    int cpu = -1, used = 0;
    if (std::sscanf(line, "cpu%d%n", &cpu, &used) != 1) {
      if (std::strncmp(line, "cpu", 3) == 0) continue;  // the all-CPU line
      break;                                            // past the CPU lines
    }
    if (masked && (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed))) continue;
    unsigned long long v[8] = {};
    if (std::sscanf(line + used, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                    &v[3], &v[4], &v[5], &v[6], &v[7]) < 5) {
      continue;
    }
    for (auto x : v) t.total += x;
    t.idle += v[3] + v[4];
    ++t.cores;
  }
  std::fclose(f);
  return t;
}

double idle_cores_recently() {
  static std::mutex mu;
  static CpuTicks last;
  static auto last_at = std::chrono::steady_clock::time_point{};
  static double idle_cores = 0;
  std::lock_guard lock(mu);
  auto now = std::chrono::steady_clock::now();
  if (now - last_at < std::chrono::milliseconds(50)) return idle_cores;
  const CpuTicks t = allowed_cpu_ticks();
  if (t.cores == 0) return idle_cores;
  if (last.total != 0 && t.total > last.total && t.idle >= last.idle) {
    idle_cores = t.cores * static_cast<double>(t.idle - last.idle) /
                 static_cast<double>(t.total - last.total);
  }
  last = t;
  last_at = now;
  return idle_cores;
}

}  // namespace kiln::comm::transport::tcp
