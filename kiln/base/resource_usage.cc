#include "kiln/base/resource_usage.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kiln {
namespace {

ResourceUsage read_usage(int who) {
  rusage u{};
  ::getrusage(who, &u);
  auto secs = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return {secs(u.ru_utime) + secs(u.ru_stime), u.ru_minflt, u.ru_majflt, u.ru_nvcsw, u.ru_nivcsw};
}

}  // namespace

ResourceUsage ResourceUsage::of_process() { return read_usage(RUSAGE_SELF); }
ResourceUsage ResourceUsage::of_thread() { return read_usage(RUSAGE_THREAD); }

std::map<std::string, ResourceUsage> ResourceUsage::of_other_threads_by_name() {
  std::map<std::string, ResourceUsage> by_name;
  const std::string me = std::to_string(::syscall(SYS_gettid));
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    const std::string tid = task.path().filename().string();
    if (tid == me) continue;
    std::string name;
    if (!std::getline(std::ifstream(task.path() / "comm"), name)) continue;  // gone meanwhile
    ResourceUsage u;
    // schedstat: nanoseconds on the CPU, nanoseconds waiting to run, slices.
    std::uint64_t on_cpu_ns = 0;
    if (std::ifstream(task.path() / "schedstat") >> on_cpu_ns) u.cpu_s = on_cpu_ns / 1e9;
    std::ifstream status(task.path() / "status");
    for (std::string line; std::getline(status, line);) {
      std::istringstream fields(line);
      std::string key;
      long value = 0;
      if (!(fields >> key >> value)) continue;
      if (key == "voluntary_ctxt_switches:") u.voluntary_switches = value;
      if (key == "nonvoluntary_ctxt_switches:") u.involuntary_switches = value;
    }
    ResourceUsage& sum = by_name[name];
    sum.cpu_s += u.cpu_s;
    sum.voluntary_switches += u.voluntary_switches;
    sum.involuntary_switches += u.involuntary_switches;
  }
  return by_name;
}

}  // namespace kiln
