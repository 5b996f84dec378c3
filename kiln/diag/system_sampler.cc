#include "kiln/diag/system_sampler.h"

#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "kiln/diag/nvml.h"

namespace kiln::diag {
namespace {

double unix_now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

int allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

// Whole disks only: partitions would count the same busy time twice, and
// loop/ram devices are not storage a training job waits on.
bool is_whole_disk(const std::string& sys_root, const std::string& name) {
  if (name.rfind("loop", 0) == 0 || name.rfind("ram", 0) == 0 || name.rfind("zram", 0) == 0) {
    return false;
  }
  std::error_code ec;
  return std::filesystem::exists(sys_root + "/block/" + name, ec);
}

}  // namespace

SystemReader::SystemReader(SamplerOptions options)
    : options_(std::move(options)),
      ticks_per_s_(std::max(1L, sysconf(_SC_CLK_TCK))),
      page_bytes_(static_cast<std::uint64_t>(std::max(1L, sysconf(_SC_PAGESIZE)))) {}

SystemSample SystemReader::read() {
  SystemSample s;
  const auto now = std::chrono::steady_clock::now();
  s.t_unix_s = unix_now_s();
  s.cpu_count = allowed_cpus();
  const double dt = prev_t_ ? std::chrono::duration<double>(now - *prev_t_).count() : 0.0;
  s.interval_s = dt;
  prev_t_ = now;
  auto rate = [dt](std::uint64_t cur, std::uint64_t prev) {
    return dt > 0 && cur >= prev ? static_cast<double>(cur - prev) / dt : 0.0;
  };
  const std::string& pr = options_.proc_root;

  if (auto text = proc::read_file(pr + "/self/stat")) {
    if (auto ticks = proc::cpu_ticks_from_stat(*text)) {
      if (prev_cpu_ticks_) s.cpu_cores = rate(*ticks, *prev_cpu_ticks_) / ticks_per_s_;
      prev_cpu_ticks_ = ticks;
    }
  }
  if (auto text = proc::read_file(pr + "/stat")) {
    if (auto host = proc::host_cpu(*text)) {
      if (prev_host_ && host->total > prev_host_->total) {
        double total = static_cast<double>(host->total - prev_host_->total);
        double idle = static_cast<double>(host->idle - std::min(host->idle, prev_host_->idle));
        s.host_cpu_util = std::clamp(1.0 - idle / total, 0.0, 1.0);
      }
      prev_host_ = host;
    }
  }
  if (auto text = proc::read_file(pr + "/self/statm")) {
    if (auto pages = proc::resident_pages_from_statm(*text)) {
      s.rss_bytes = static_cast<double>(*pages * page_bytes_);
    }
  }
  if (auto text = proc::read_file(pr + "/meminfo")) {
    if (auto mi = proc::meminfo(*text)) {
      s.mem_total_bytes = static_cast<double>(mi->total_bytes);
      s.mem_available_bytes = static_cast<double>(mi->available_bytes);
    }
  }
  if (auto text = proc::read_file(pr + "/self/io")) {
    if (auto io = proc::io_bytes(*text)) {
      if (prev_io_) {
        s.disk_read_Bps = rate(io->read_bytes, prev_io_->read_bytes);
        s.disk_write_Bps = rate(io->write_bytes, prev_io_->write_bytes);
      }
      prev_io_ = io;
    }
  }
  if (auto text = proc::read_file(pr + "/diskstats")) {
    auto ticks = proc::disk_io_ticks(*text);
    for (const auto& [name, ms] : ticks) {
      auto prev = prev_disk_.find(name);
      if (prev == prev_disk_.end() || !is_whole_disk(options_.sys_root, name)) continue;
      double busy = rate(ms, prev->second) / 1000.0;
      s.disk_util = std::max(s.disk_util, std::min(busy, 1.0));
    }
    prev_disk_ = std::move(ticks);
  }
  if (auto text = proc::read_file(pr + "/net/dev")) {
    auto net = proc::net_dev(*text);
    for (const auto& [name, bytes] : net) {
      auto prev = prev_net_.find(name);
      if (prev == prev_net_.end()) continue;
      auto speed = link_speed_Bps_.find(name);
      if (speed == link_speed_Bps_.end()) {
        double bps = -1;
        // Mbit/s; -1 or EINVAL for virtual links.
        if (auto t = proc::read_file(options_.sys_root + "/class/net/" + name + "/speed")) {
          long mbit = std::strtol(t->c_str(), nullptr, 10);
          if (mbit > 0) bps = static_cast<double>(mbit) * 1e6 / 8;
        }
        speed = link_speed_Bps_.emplace(name, bps).first;
      }
      s.net.push_back({name, rate(bytes.rx_bytes, prev->second.rx_bytes),
                       rate(bytes.tx_bytes, prev->second.tx_bytes), speed->second});
    }
    prev_net_ = std::move(net);
  }
  if (options_.nvml) {
    auto nvml = Nvml::load();
    if (nvml.is_ok()) {
      s.gpus = (*nvml)->sample();
      s.gpu_available = !s.gpus.empty();
      if (!s.gpu_available) s.gpu_unavailable_reason = "NVML: every device query failed";
    } else {
      s.gpu_unavailable_reason = nvml.status().message();
    }
  } else {
    s.gpu_unavailable_reason = "NVML sampling disabled";
  }
  return s;
}

SystemSampler::SystemSampler(SamplerOptions options, Sink sink)
    : options_(std::move(options)), sink_(std::move(sink)) {
  thread_ = std::thread([this] { run(); });
}

SystemSampler::~SystemSampler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::optional<SystemSample> SystemSampler::latest() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latest_;
}

void SystemSampler::set_paused(bool paused) {
  std::lock_guard<std::mutex> lock(mu_);
  paused_ = paused;
}

double SystemSampler::cpu_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cpu_s_;
}

void SystemSampler::run() {
  SystemReader reader(options_);
  const auto interval = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(std::max(options_.interval_s, 0.001)));
  auto next = std::chrono::steady_clock::now();
  while (true) {
    bool paused;
    {
      std::lock_guard<std::mutex> lock(mu_);
      paused = paused_;
    }
    std::optional<SystemSample> s;
    if (!paused) {
      s = reader.read();
      if (sink_) sink_(*s);
    }
    timespec cpu{};
    const bool have_cpu = clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) == 0;
    std::unique_lock<std::mutex> lock(mu_);
    if (s) latest_ = std::move(s);
    if (have_cpu) {
      cpu_s_ = static_cast<double>(cpu.tv_sec) + 1e-9 * static_cast<double>(cpu.tv_nsec);
    }
    // A fixed schedule, so a slow read does not stretch every interval.
    next += interval;
    if (cv_.wait_until(lock, next, [this] { return stop_; })) return;
  }
}

}  // namespace kiln::diag
