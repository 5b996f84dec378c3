#include "kiln/elastic/worker_group.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "kiln/base/fd.h"
#include "kiln/elastic/worker_env.h"

namespace kiln::elastic {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

WorkerGroupSpec shell(const std::string& script, int nproc = 2) {
  WorkerGroupSpec spec;
  spec.command = {"/bin/sh", "-c", script};
  spec.nproc_per_node = nproc;
  spec.store_addr = "127.0.0.1";
  spec.store_port = 29999;
  spec.master_addr = "127.0.0.2";
  spec.master_port = 29777;
  spec.run_id = "job";
  return spec;
}

// Polls until the group leaves kRunning or the deadline passes.
WorkerGroupState run_until_settled(WorkerGroup& g, Clock::duration limit = seconds(20)) {
  Deadline deadline = Deadline::after(limit);
  WorkerGroupState s;
  do {
    s = g.poll(milliseconds(20));
  } while (s.kind == WorkerGroupState::Kind::kRunning && !deadline.expired());
  return s;
}

std::map<std::string, std::string> as_map(const std::vector<std::string>& env) {
  std::map<std::string, std::string> m;
  for (const auto& e : env) m[e.substr(0, e.find('='))] = e.substr(e.find('=') + 1);
  return m;
}

TEST(WorkerEnvironment, SetsTheTorchrunAndKilnVariables) {
  WorkerGroupSpec spec = shell("true", 4);
  spec.group_rank = 1;
  spec.num_nodes = 3;
  spec.generation = 3;
  spec.restart_count = 1;  // one of the two earlier rounds followed a failure
  spec.max_restarts = 5;
  auto env = as_map(worker_environment(spec, 2, 7));
  EXPECT_EQ(env["RANK"], "6");
  EXPECT_EQ(env["LOCAL_RANK"], "2");
  EXPECT_EQ(env["WORLD_SIZE"], "12");
  EXPECT_EQ(env["LOCAL_WORLD_SIZE"], "4");
  EXPECT_EQ(env["GROUP_RANK"], "1");
  EXPECT_EQ(env["GROUP_WORLD_SIZE"], "3");
  EXPECT_EQ(env["ROLE_RANK"], "6");
  EXPECT_EQ(env["ROLE_WORLD_SIZE"], "12");
  EXPECT_EQ(env["ROLE_NAME"], "default");
  // The script's own store, never Kiln's (Note [The script's MASTER_PORT]).
  EXPECT_EQ(env["MASTER_ADDR"], "127.0.0.2");
  EXPECT_EQ(env["MASTER_PORT"], "29777");
  EXPECT_EQ(env["TORCHELASTIC_USE_AGENT_STORE"], "False");
  EXPECT_EQ(env["KILN_STORE_ADDR"], "127.0.0.1");
  EXPECT_EQ(env["KILN_STORE_PORT"], "29999");
  EXPECT_EQ(env["TORCHELASTIC_RESTART_COUNT"], "1");
  EXPECT_EQ(env["KILN_RESTART_COUNT"], "2");
  EXPECT_EQ(env["KILN_GENERATION"], "3");
  EXPECT_EQ(env["TORCHELASTIC_MAX_RESTARTS"], "5");
  EXPECT_EQ(env["TORCHELASTIC_RUN_ID"], "job");
  EXPECT_EQ(env["KILN_AGENT_STORE"], "1");
  EXPECT_EQ(env["KILN_GROUP_TAG"], "job/g3");
  EXPECT_EQ(env["KILN_HEARTBEAT_FD"], "7");
  EXPECT_TRUE(env.count("PATH")) << "the agent's own environment is passed on";
}

TEST(WorkerEnvironment, WithoutHeartbeatsLeavesTheDescriptorUnset) {
  setenv("KILN_HEARTBEAT_FD", "3", 1);  // as a launcher above this one would
  auto env = as_map(worker_environment(shell("true"), 0, -1));
  unsetenv("KILN_HEARTBEAT_FD");
  EXPECT_EQ(env.count("KILN_HEARTBEAT_FD"), 0u);
  EXPECT_EQ(env["RANK"], "0");
}

TEST(WorkerGroup, AllWorkersExitingZeroSucceed) {
  auto g = WorkerGroup::start(shell("test \"$WORLD_SIZE\" = 2"));
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(run_until_settled(**g).kind, WorkerGroupState::Kind::kSucceeded);
}

TEST(WorkerGroup, ReportsTheFailingWorkerAndItsExitCode) {
  auto g = WorkerGroup::start(shell("if [ \"$LOCAL_RANK\" = 1 ]; then exit 3; fi; exec sleep 30"));
  ASSERT_TRUE(g.is_ok());
  WorkerGroupState s = run_until_settled(**g);
  EXPECT_EQ(s.kind, WorkerGroupState::Kind::kFailed);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.detail, "exited with code 3");
  EXPECT_EQ(s.running, 1);
}

TEST(WorkerGroup, ReportsAWorkerKilledBySignal) {
  auto g = WorkerGroup::start(shell("kill -9 $$", 1));
  ASSERT_TRUE(g.is_ok());
  WorkerGroupState s = run_until_settled(**g);
  EXPECT_EQ(s.kind, WorkerGroupState::Kind::kFailed);
  EXPECT_NE(s.detail.find("killed by signal 9"), std::string::npos) << s.detail;
}

TEST(WorkerGroup, AWorkerThatStopsHeartbeatingIsHung) {
  WorkerGroupSpec spec =
      shell("printf x >&$KILN_HEARTBEAT_FD; printf x >&$KILN_HEARTBEAT_FD; exec sleep 30", 1);
  spec.hang_timeout = milliseconds(300);
  auto g = WorkerGroup::start(spec);
  ASSERT_TRUE(g.is_ok());
  WorkerGroupState s = run_until_settled(**g);
  EXPECT_EQ(s.kind, WorkerGroupState::Kind::kHung);
  EXPECT_NE(s.detail.find("no heartbeat for"), std::string::npos) << s.detail;
  EXPECT_NE(s.detail.find("after 2 steps"), std::string::npos) << s.detail;
  EXPECT_EQ((*g)->heartbeats(), 2);
}

// Note [What a heartbeat byte means]: NUL bytes (busy beats, e.g. a long
// final checkpoint) keep a worker from counting as hung, but are not steps.
TEST(WorkerGroup, BusyBeatsKeepAWorkerAliveWithoutCountingAsSteps) {
  WorkerGroupSpec spec = shell(
      "printf x >&3; i=0; while [ $i -lt 15 ]; do printf '\\000' >&3; sleep 0.1; i=$((i+1)); "
      "done",
      1);
  spec.hang_timeout = milliseconds(1000);
  auto g = WorkerGroup::start(spec);
  ASSERT_TRUE(g.is_ok());
  WorkerGroupState s = run_until_settled(**g);
  EXPECT_EQ(s.kind, WorkerGroupState::Kind::kSucceeded) << s.detail;
  EXPECT_EQ((*g)->heartbeats(), 1);
}

TEST(WorkerGroup, AWorkerThatNeverBeatsIsHungAfterTheStartupTimeout) {
  WorkerGroupSpec spec = shell("exec sleep 30", 1);
  spec.startup_timeout = milliseconds(300);
  auto g = WorkerGroup::start(spec);
  ASSERT_TRUE(g.is_ok());
  WorkerGroupState s = run_until_settled(**g);
  EXPECT_EQ(s.kind, WorkerGroupState::Kind::kHung);
  EXPECT_NE(s.detail.find("no first heartbeat"), std::string::npos) << s.detail;
}

TEST(WorkerGroup, StopGivesWorkersTheirGraceAndCountsCleanExits) {
  // Rank 0 exits cleanly on SIGTERM; rank 1 ignores it and is killed.
  auto g = WorkerGroup::start(
      shell("if [ \"$LOCAL_RANK\" = 0 ]; then trap 'exit 0' TERM; else trap '' TERM; fi; "
            "printf x >&$KILN_HEARTBEAT_FD; while :; do sleep 0.02; done"));
  ASSERT_TRUE(g.is_ok());
  Deadline deadline = Deadline::after(seconds(10));
  while ((*g)->heartbeats() < 2 && !deadline.expired()) (*g)->poll(milliseconds(20));
  ASSERT_EQ((*g)->heartbeats(), 2) << "both workers installed their traps";
  auto start = Clock::now();
  EXPECT_EQ((*g)->stop(milliseconds(500)), 1);
  EXPECT_LT(Clock::now() - start, seconds(5));
}

TEST(WorkerGroup, KillReachesTheProcessesAWorkerStarted) {
  char dir[] = "/tmp/kiln_wg_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string pidfile = std::string(dir) + "/child";
  auto g = WorkerGroup::start(shell(
      "sleep 30 & echo $! > " + pidfile + ".tmp && mv " + pidfile + ".tmp " + pidfile + "; wait",
      1));
  ASSERT_TRUE(g.is_ok());
  Deadline deadline = Deadline::after(seconds(10));
  pid_t child = 0;
  while (child == 0 && !deadline.expired()) {
    (*g)->poll(milliseconds(20));
    std::ifstream in(pidfile);
    in >> child;
  }
  ASSERT_GT(child, 0);
  (*g)->kill_all();
  // The grandchild was in the worker's process group: it is gone (or a
  // zombie awaiting its new parent), never left running.
  deadline = Deadline::after(seconds(10));
  auto running = [&] {
    std::ifstream stat("/proc/" + std::to_string(child) + "/stat");
    std::string pid, comm, state;
    if (!(stat >> pid >> comm >> state)) return false;
    return state != "Z";
  };
  while (running() && !deadline.expired()) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_FALSE(running());
  std::filesystem::remove_all(dir);
}

// Note [The heartbeat is descriptor 3]: an agent with many descriptors open
// (here 20 more) still gives its workers one a POSIX shell can write to.
TEST(WorkerGroup, ShellWorkersBeatWhateverDescriptorsTheAgentHasOpen) {
  std::vector<Fd> held;
  for (int i = 0; i < 20; ++i) held.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto g = WorkerGroup::start(shell(
      "[ \"$KILN_HEARTBEAT_FD\" = 3 ] || exit 9; printf x >&$KILN_HEARTBEAT_FD; exec sleep 30"));
  held.clear();
  ASSERT_TRUE(g.is_ok());
  Deadline deadline = Deadline::after(seconds(10));
  WorkerGroupState s;
  while ((*g)->heartbeats() < 2 && !deadline.expired()) s = (*g)->poll(milliseconds(20));
  EXPECT_EQ((*g)->heartbeats(), 2) << s.detail;
}

}  // namespace
}  // namespace kiln::elastic

namespace kiln::elastic {
namespace {

TEST(WorkerGroup, AWorkerFailingOnItsOwnIsReportedBeforeOneThatFailedOnAPeer) {
  // Rank 0 "fails on a peer" (exit 4) first; rank 1 is the cause (exit 7).
  auto g = WorkerGroup::start(shell("if [ \"$LOCAL_RANK\" = 0 ]; then exit 4; fi; exit 7"));
  ASSERT_TRUE(g.is_ok());
  Deadline deadline = Deadline::after(std::chrono::seconds(20));
  WorkerGroupState s;
  do {
    s = (*g)->poll(std::chrono::milliseconds(20));
  } while (s.running > 0 && !deadline.expired());
  EXPECT_EQ(s.kind, WorkerGroupState::Kind::kFailed);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.exit_code, 7);
}

}  // namespace
}  // namespace kiln::elastic

namespace kiln::elastic {
namespace {

TEST(WorkerGroup, OfSeveralQuietWorkersTheOneThatGotLeastFarIsHung) {
  WorkerGroupSpec spec = shell(
      "n=3; [ \"$LOCAL_RANK\" = 1 ] && n=1; i=0; while [ $i -lt $n ]; do printf x "
      ">&$KILN_HEARTBEAT_FD; "
      "i=$((i+1)); done; exec sleep 30");
  spec.hang_timeout = std::chrono::milliseconds(300);
  auto g = WorkerGroup::start(spec);
  ASSERT_TRUE(g.is_ok());
  Deadline deadline = Deadline::after(std::chrono::seconds(20));
  WorkerGroupState s;
  do {
    s = (*g)->poll(std::chrono::milliseconds(20));
  } while (s.kind == WorkerGroupState::Kind::kRunning && !deadline.expired());
  // Both go quiet; once both are past the timeout rank 1 (1 step) is named.
  while ((s.kind != WorkerGroupState::Kind::kHung || s.local_rank != 1) && !deadline.expired()) {
    s = (*g)->poll(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(s.kind, WorkerGroupState::Kind::kHung);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_NE(s.detail.find("after 1 steps"), std::string::npos) << s.detail;
}

}  // namespace
}  // namespace kiln::elastic
