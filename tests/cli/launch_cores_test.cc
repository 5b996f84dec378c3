// Note [Binding ranks to cores] (cli/local_ranks.cc) and Note [A rank's share
// of the cores] (kiln/base/rank_cores.h): which cores `kiln launch` gives
// each rank, read from the ranks' own /proc/self/status.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/wait.h>

#include <cstdio>
#include <map>
#include <regex>
#include <set>
#include <string>

namespace {

// Each rank's affinity mask as `kiln launch -n N --bind BIND` gives it:
// rank -> CPUs (Cpus_allowed_list read back by the rank itself).
std::map<int, std::set<int>> cores_of_ranks(int n, const std::string& bind) {
  const std::string cmd = fmt::format(
      "timeout -s KILL 60 {} launch -n {} --bind {} -- sh -c "
      "'echo \"cpus $RANK $(grep Cpus_allowed_list /proc/self/status | cut -f2)\"' 2>&1",
      KILN_BINARY, n, bind);
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return {};
  char buf[4096];
  for (std::size_t k; (k = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, k);
  EXPECT_EQ(::pclose(p), 0) << out;
  std::map<int, std::set<int>> ranks;
  const std::regex line(R"(cpus (\d+) ([0-9,-]+))");
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it) {
    std::set<int>& cpus = ranks[std::stoi((*it)[1])];
    const std::string list = (*it)[2];
    for (std::size_t at = 0; at < list.size();) {
      const std::size_t comma = std::min(list.find(',', at), list.size());
      const std::string range = list.substr(at, comma - at);
      const std::size_t dash = range.find('-');
      const int lo = std::stoi(range.substr(0, dash));
      const int hi = dash == std::string::npos ? lo : std::stoi(range.substr(dash + 1));
      for (int c = lo; c <= hi; ++c) cpus.insert(c);
      at = comma + 1;
    }
  }
  EXPECT_EQ(static_cast<int>(ranks.size()), n) << out;
  return ranks;
}

std::set<int> own_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::set<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.insert(c);
  }
  return cpus;
}

TEST(LaunchCores, ALoneRankRunsOnEveryCoreOfTheLauncher) {
  // Bound to one core of two, it ran two intra-op threads on that core.
  EXPECT_EQ(cores_of_ranks(1, "auto")[0], own_cores());
}

TEST(LaunchCores, AsManyRanksAsCoresGetOneCoreEachAndNoneTwice) {
  const std::set<int> cores = own_cores();
  const int n = static_cast<int>(cores.size());
  std::set<int> seen;
  for (const auto& [rank, cpus] : cores_of_ranks(n, "auto")) {
    ASSERT_EQ(cpus.size(), 1u) << "rank " << rank;
    EXPECT_TRUE(cores.count(*cpus.begin())) << "rank " << rank;
    EXPECT_TRUE(seen.insert(*cpus.begin()).second) << "rank " << rank << " shares a core";
  }
}

TEST(LaunchCores, MoreRanksThanCoresOrBindNoneShareEveryCore) {
  const std::set<int> cores = own_cores();
  for (const auto& [rank, cpus] : cores_of_ranks(static_cast<int>(cores.size()) + 1, "auto")) {
    EXPECT_EQ(cpus, cores) << "rank " << rank;
  }
  EXPECT_EQ(cores_of_ranks(1, "none")[0], cores);
}

// Note [OpenMP's workers sleep] (cli/main.cc): what a launched rank's
// libgomp and OpenBLAS read when they load.
std::string rank_env(const std::string& env, const std::string& name) {
  const std::string cmd = fmt::format(
      "{} timeout -s KILL 60 {} launch -n 1 -- sh -c 'echo \"value=[${}]\"' 2>&1", env,
      KILN_BINARY, name);
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  char buf[4096];
  for (std::size_t k; (k = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, k);
  EXPECT_EQ(::pclose(p), 0) << out;
  const auto at = out.find("value=[");
  return at == std::string::npos ? out : out.substr(at + 7, out.find(']', at) - at - 7);
}

TEST(LaunchCores, RanksOpenMpWorkersSleepUnlessTheUserSaysOtherwise) {
  EXPECT_EQ(rank_env("env -u OMP_WAIT_POLICY", "OMP_WAIT_POLICY"), "passive");
  EXPECT_EQ(rank_env("OMP_WAIT_POLICY=active", "OMP_WAIT_POLICY"), "active");
}

TEST(LaunchCores, RanksOpenBlasWorkersSleepAfterEachCallUnlessTheUserSaysOtherwise) {
  EXPECT_EQ(rank_env("env -u OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_THREAD_TIMEOUT"), "4");
  EXPECT_EQ(rank_env("OPENBLAS_THREAD_TIMEOUT=28", "OPENBLAS_THREAD_TIMEOUT"), "28");
}

}  // namespace
