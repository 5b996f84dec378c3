// Checkpoint fault campaign.
//
// SIGKILL: a forked child saves small checkpoints back to back; the parent
// kills it at a random instant, then checks that the newest committed step
// loads bit-exactly, every committed step verifies, and `latest` names a
// loadable step. 60 trials, each continuing from what the last one left.
//
// Disk full: a 2 MiB tmpfs (needs root; skipped visibly otherwise).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <thread>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/ckpt/verify.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt {
namespace {

using testing::check_loaded;
using testing::TempDir;
using testing::TestState;

// The child: saves steps after the newest committed one until killed.
[[noreturn]] void save_forever(const std::string& root) {
  auto ck = Checkpointer::create({.root = root, .retention = {.keep_last = 2}});
  if (!ck.is_ok()) _exit(2);
  auto steps = list_committed_steps(root);
  std::int64_t step = steps.is_ok() && !steps->empty() ? steps->front() + 1 : 1;
  for (;; ++step) {
    TestState s(step, 0, 1);
    if (!(*ck)->save(s.view(), step, Deadline::after_seconds(10)).is_ok()) _exit(3);
  }
}

// What must hold after any crash. Returns "" or what broke.
std::string check_invariants(const std::string& root) {
  auto steps = list_committed_steps(root);
  if (!steps.is_ok()) return steps.status().to_string();
  for (auto step : *steps) {
    Status v = verify_step_status(root + "/" + step_dir_name(step));
    if (!v.is_ok()) return v.to_string();
  }
  auto loaded = load_latest(root, {});
  if (!loaded.is_ok()) return loaded.status().to_string();
  if (loaded->step != steps->front())
    return fmt::format("loaded step {} not the newest {}", loaded->step, steps->front());
  std::string bad = check_loaded(*loaded, loaded->step, 0, 1);
  if (!bad.empty()) return bad;
  auto latest = read_file(root + "/latest");
  if (!latest.is_ok()) return "latest: " + latest.status().to_string();
  std::string name = latest->substr(0, latest->find('\n'));
  auto at_latest = load_step(root + "/" + name, 0, 1);
  if (!at_latest.is_ok())
    return fmt::format("latest names {}: {}", name, at_latest.status().to_string());
  return check_loaded(*at_latest, at_latest->step, 0, 1);
}

TEST(CkptFaults, SigkillDuringSavesNeverLosesTheNewestCommit) {
  TempDir dir;
  // A first checkpoint to protect.
  {
    auto ck = Checkpointer::create({.root = dir.path()});
    ASSERT_TRUE(ck.is_ok());
    TestState s(0, 0, 1);
    ASSERT_TRUE((*ck)->save(s.view(), 0, Deadline::after_seconds(10)).is_ok());
  }
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> delay_us(0, 20000);
  std::int64_t newest_before = 0;
  int killed_mid_save = 0;  // trials that left a half-written step behind
  for (int trial = 0; trial < 60; ++trial) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) save_forever(dir.path());
    usleep(static_cast<useconds_t>(delay_us(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status))
        << "trial " << trial << ": child exited with " << WEXITSTATUS(status);
    std::string broken = check_invariants(dir.path());
    ASSERT_EQ(broken, "") << "after trial " << trial;
    auto steps = list_committed_steps(dir.path());
    ASSERT_TRUE(steps.is_ok());
    ASSERT_GE(steps->front(), newest_before) << "a committed step vanished";
    if (path_exists(dir.path() + "/" + tmp_step_dir_name(steps->front() + 1))) ++killed_mid_save;
    newest_before = steps->front();
  }
  // The campaign made progress (kills landed between and inside saves).
  EXPECT_GT(newest_before, 0);
  EXPECT_GT(killed_mid_save, 0);  // typically 20-40 of 60
  std::printf("60 kills: %d inside a save, newest step %lld\n", killed_mid_save,
              static_cast<long long>(newest_before));
}

// Two ranks save back to back; one of them (rank 0 or 1 in turn) is killed
// at a random instant: inside its shard write, the exchange, rank 0's
// manifest/rename/latest or retention. The survivor must fail with Aborted,
// and the invariants hold.
TEST(CkptFaults, SigkillOfEitherRankDuringMultiRankSaves) {
  TempDir dir;
  std::mt19937 rng(777);
  std::uniform_int_distribution<int> delay_us(0, 30000);
  {
    // A first checkpoint to protect (one rank; later ones are written by two).
    auto ck = Checkpointer::create({.root = dir.path()});
    ASSERT_TRUE(ck.is_ok());
    TestState s(0, 0, 1);
    ASSERT_TRUE((*ck)->save(s.view(), 0, Deadline::after_seconds(10)).is_ok());
  }
  for (int trial = 0; trial < 20; ++trial) {
    const int victim = trial % 2;
    const int delay = delay_us(rng);
    comm::testing::RunOptions opts;
    opts.deadline = std::chrono::seconds(30);
    opts.comm.timeout = std::chrono::seconds(10);
    auto run = comm::testing::run_ranks(
        2,
        [&](comm::Communicator& comm) -> Status {
          if (comm.rank() == victim) {
            std::thread([delay] {
              usleep(static_cast<useconds_t>(delay));
              ::raise(SIGKILL);
            }).detach();
          }
          KILN_ASSIGN_OR_RETURN(
              auto ck, Checkpointer::create(
                           {.root = dir.path(), .comm = &comm, .retention = {.keep_last = 2}}));
          KILN_ASSIGN_OR_RETURN(auto steps, list_committed_steps(dir.path()));
          std::int64_t step = steps.empty() ? 1 : steps.front() + 1;
          for (;; ++step) {
            TestState s(step, comm.rank(), comm.size());
            Status st = ck->save(s.view(), step, Deadline::after_seconds(20));
            if (st.code() == Code::kAborted) return Status::ok();  // the peer died
            KILN_RETURN_IF_ERROR(st);
          }
        },
        opts);
    ASSERT_EQ(run.ranks[victim].signal, SIGKILL) << "trial " << trial << ": " << run.report;
    ASSERT_EQ(run.ranks[1 - victim].exit_code, 0) << "trial " << trial << ": " << run.report;
    ASSERT_EQ(check_invariants(dir.path()), "") << "after trial " << trial;
  }
  auto steps = list_committed_steps(dir.path());
  ASSERT_TRUE(steps.is_ok());
  std::printf("20 kills of 2 ranks: newest step %lld\n", static_cast<long long>(steps->front()));
}

TEST(CkptFaults, RankKilledBeforeTheCommitLeavesTheOlderCheckpoint) {
  TempDir dir;
  comm::testing::RunOptions opts;
  opts.deadline = std::chrono::seconds(40);
  opts.comm.timeout = std::chrono::seconds(15);
  auto run = comm::testing::run_ranks(
      3,
      [&](comm::Communicator& comm) -> Status {
        int rank = comm.rank();
        KILN_ASSIGN_OR_RETURN(
            auto ck,
            Checkpointer::create({.root = dir.path(),
                                  .comm = &comm,
                                  .after_shard_written_for_test = [rank](std::int64_t step) {
                                    if (step == 2 && rank == 2) ::raise(SIGKILL);
                                  }}));
        TestState s1(1, rank, 3), s2(2, rank, 3);
        KILN_RETURN_IF_ERROR(ck->save(s1.view(), 1, Deadline::after_seconds(20)));
        Status st = ck->save(s2.view(), 2, Deadline::after_seconds(20));
        if (st.is_ok()) return internal_error("step 2 committed although rank 2 died before it");
        // The survivors learn of the dead peer from the commit exchange.
        if (st.code() != Code::kAborted) return st;
        return Status::ok();
      },
      opts);
  ASSERT_EQ(run.ranks.size(), 3u);
  EXPECT_EQ(run.ranks[0].exit_code, 0) << run.report;
  EXPECT_EQ(run.ranks[1].exit_code, 0) << run.report;
  EXPECT_EQ(run.ranks[2].signal, SIGKILL) << run.report;
  auto steps = list_committed_steps(dir.path());
  ASSERT_TRUE(steps.is_ok());
  EXPECT_EQ(*steps, (std::vector<std::int64_t>{1}));
  auto loaded = load_latest(dir.path(), {});  // 3 saved, 1 loads
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 1, 0, 1), "");
}

// A small tmpfs mounted for the test; unmounted by the destructor.
class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& dir) : dir_(dir) {
    mounted_ = ::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=2m") == 0;
    if (!mounted_)
      why_ = fmt::format("mount -t tmpfs -o size=2m on {}: {}", dir, std::strerror(errno));
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }

 private:
  std::string dir_, why_;
  bool mounted_ = false;
};

TEST(CkptFaults, DiskFullFailsTheSaveAndKeepsOlderCheckpoints) {
  TempDir dir;
  SmallTmpfs fs(dir.path());
  if (!fs.mounted()) GTEST_SKIP() << "needs root to mount a tmpfs: " << fs.why();
  auto ck = Checkpointer::create({.root = dir.path()});
  ASSERT_TRUE(ck.is_ok());
  for (int step = 1; step <= 2; ++step) {
    TestState s(step, 0, 1);
    ASSERT_TRUE((*ck)->save(s.view(), step, Deadline::after_seconds(10)).is_ok());
  }
  // 4 MiB does not fit in 2 MiB.
  TestState big(3, 0, 1, /*rows0=*/150000);
  Status st = (*ck)->save(big.view(), 3, Deadline::after_seconds(10));
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.to_string();
  EXPECT_NE(st.message().find("step-3.tmp/shard-00000.bin"), std::string::npos) << st.to_string();
  EXPECT_FALSE(path_exists(dir.path() + "/step-3.tmp")) << "the failed step's space was not freed";
  EXPECT_EQ(check_invariants(dir.path()), "");
  // The space came back: saving goes on.
  TestState s4(4, 0, 1);
  EXPECT_TRUE((*ck)->save(s4.view(), 4, Deadline::after_seconds(10)).is_ok());
  EXPECT_EQ(check_invariants(dir.path()), "");
}

}  // namespace
}  // namespace kiln::ckpt
