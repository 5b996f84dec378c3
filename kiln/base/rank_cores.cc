#include "kiln/base/rank_cores.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace kiln {

int intra_op_threads(int usable_cpus, int online_cpus, int local_ranks) {
  const int fair_share = std::max(1, online_cpus) / std::max(1, local_ranks);
  return std::max(1, std::min(usable_cpus, fair_share));
}

int intra_op_threads_here() {
  const int online = static_cast<int>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
  cpu_set_t set;
  CPU_ZERO(&set);
  const int usable = ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : online;
  const char* local = std::getenv("LOCAL_WORLD_SIZE");
  return intra_op_threads(usable, online, local ? std::atoi(local) : 1);
}

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return out;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) out.push_back(cpu);
  }
  return out;
}

std::vector<int> cores_of_rank(const std::vector<int>& allowed, int rank, int ranks) {
  const int count = static_cast<int>(allowed.size());
  if (count == 0 || ranks < 1 || rank < 0) return {};
  if (ranks > count) return {allowed[static_cast<std::size_t>(rank % count)]};
  const int block = count / ranks;
  const auto first = allowed.begin() + static_cast<std::ptrdiff_t>(rank) * block;
  return {first, first + block};
}

}  // namespace kiln
