#include "kiln/serve/thread_cpus.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>

#include <cerrno>

namespace kiln::serve {

ThreadCpus split_cpus(const std::vector<int>& allowed) {
  if (allowed.size() < 2) return {};
  return {.front = std::vector<int>(allowed.begin(), allowed.end() - 1),
          .batch = {allowed.back()}};
}

Status pin_calling_thread(const std::vector<int>& cpus) {
  if (cpus.empty()) return Status::ok();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) CPU_SET(cpu, &set);
  const int err = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set);
  if (err != 0) {
    return errno_status(fmt::format("binding a thread to CPUs {}", fmt::join(cpus, ",")), err);
  }
  return Status::ok();
}

}  // namespace kiln::serve
