// Parsers for the /proc files the system sampler reads. Pure functions of
// the file's text so tests feed them fixtures; each returns nullopt (or an
// empty result) for text it cannot read rather than guessing.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::diag::proc {

// /proc/<pid>/stat: utime + stime in clock ticks (fields 14 and 15, counted
// after the parenthesised command name, which may hold spaces).
std::optional<std::uint64_t> cpu_ticks_from_stat(std::string_view text);

// /proc/<pid>/statm: resident pages (second field).
std::optional<std::uint64_t> resident_pages_from_statm(std::string_view text);

struct MemInfo {
  std::uint64_t total_bytes = 0;
  std::uint64_t available_bytes = 0;
};
// /proc/meminfo: MemTotal and MemAvailable (reported in kB).
std::optional<MemInfo> meminfo(std::string_view text);

struct IoBytes {
  std::uint64_t read_bytes = 0;  // storage-layer bytes, not page-cache hits
  std::uint64_t write_bytes = 0;
};
// /proc/<pid>/io.
std::optional<IoBytes> io_bytes(std::string_view text);

// /proc/diskstats: milliseconds each device spent doing I/O (io_ticks, the
// 10th statistic), by device name.
std::map<std::string, std::uint64_t> disk_io_ticks(std::string_view text);

struct NetBytes {
  std::uint64_t rx_bytes = 0;
  std::uint64_t tx_bytes = 0;
};
// /proc/net/dev: received and transmitted bytes by interface.
std::map<std::string, NetBytes> net_dev(std::string_view text);

struct CpuTimes {
  std::uint64_t total = 0;
  std::uint64_t idle = 0;  // idle + iowait
};
// /proc/stat: the aggregate "cpu" line.
std::optional<CpuTimes> host_cpu(std::string_view text);

// Reads a whole (small, procfs or sysfs) file; nullopt if it cannot.
std::optional<std::string> read_file(const std::string& path);

}  // namespace kiln::diag::proc
