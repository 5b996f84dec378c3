// A restarted rank recovering from its buddy's memory into memory a helper
// thread still makes resident (Note [Fault in beside the join],
// kiln/base/resident_memory.h), as `kiln bench ckpt`'s restarted rank does:
// the state comes back bit for bit, and a buddy that dies mid-recovery fails
// it at once, naming the buddy, without waiting for the timeout.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "kiln/base/fs.h"
#include "kiln/base/resident_memory.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/internal/snapshot_stream.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt {
namespace {

using comm::Communicator;
using comm::testing::run_ranks;
using testing::TempDir;
using testing::TestState;

// w0 rows: each of the two ranks' shares is 3 MiB, six stream chunks.
constexpr std::int64_t kRows0 = 2 * 6 * static_cast<std::int64_t>(internal::kStreamChunk) / 28;
constexpr std::int64_t kStep = 3;

struct Dirs {
  TempDir tmp;
  std::string root = tmp.path() + "/ckpt";
  std::string mem = tmp.path() + "/mem";
};

// Two ranks store step 3 in memory; then rank 1's memory is lost with its
// process (its directory removed): only rank 0's replica holds its snapshot.
void store_then_lose_rank_1(const Dirs& d) {
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto tier, MemoryTier::open({.dir = d.mem, .comm = &comm}));
        KILN_ASSIGN_OR_RETURN(
            auto ck, Checkpointer::create({.root = d.root, .comm = &comm, .memory = tier.get()}));
        TestState s(kStep, comm.rank(), comm.size(), kRows0);
        return ck->save(s.view(), kStep, Deadline::after_seconds(30));
      },
      testing::quick());
  ASSERT_TRUE(r.ok()) << r.report;
  ASSERT_TRUE(Fs::posix()->remove_tree(d.mem + "/rank-1").is_ok());
}

std::size_t w0_share_bytes(int rank) {
  return static_cast<std::size_t>(even_rows(kRows0, rank, 2).count) * 7 * sizeof(float);
}

TEST(MemoryTierRestart, TheRestartedRankRecoversIntoMemoryStillBeingMadeResident) {
  Dirs d;
  store_then_lose_rank_1(d);
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        const int k = comm.rank();
        KILN_ASSIGN_OR_RETURN(auto tier, MemoryTier::open({.dir = d.mem, .comm = &comm}));
        KILN_ASSIGN_OR_RETURN(ResidentMemory into, ResidentMemory::map(w0_share_bytes(k)));
        if (!into.writable_while_populating()) into.wait();
        RecoverTarget t{"w0", into.span().data(), into.span().size()};
        KILN_ASSIGN_OR_RETURN(LoadedState got, tier->recover(kStep, {&t, 1}));
        into.wait();
        if (tier->last_recovery().from_replica != 1) return internal_error("no replica used");
        TestState want(kStep, k, 2, kRows0);
        const LoadedEntry* w0 = got.find("w0");
        if (w0 == nullptr || !w0->in_place ||
            std::memcmp(into.span().data(), want.w0.data(), into.span().size()) != 0) {
          return data_loss(fmt::format("rank {}: w0 did not come back in place, bit for bit", k));
        }
        return Status::ok();
      },
      testing::quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

// Rank 0 (the survivor) crashes partway through restoring its own snapshot,
// which it does a round at a time beside the stream to rank 1 (Note [A local
// restore beside the stream], memory_tier.cc): its memory for w0 ends in an
// inaccessible page a third of the way in.
TEST(MemoryTierRestart, ABuddyThatDiesMidRecoveryFailsTheRestartedRankNamingIt) {
  Dirs d;
  store_then_lose_rank_1(d);
  // The tier's own timeout is far past the run's deadline: only the
  // transport noticing the dead process can end rank 1's wait in time.
  constexpr auto kTierTimeout = std::chrono::seconds(600);
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        const int k = comm.rank();
        KILN_ASSIGN_OR_RETURN(
            auto tier, MemoryTier::open({.dir = d.mem, .comm = &comm, .timeout = kTierTimeout}));
        if (k == 0) {
          const std::size_t bytes = w0_share_bytes(0);
          const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
          void* p =
              ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
          if (p == MAP_FAILED) return internal_error("mmap");
          const std::size_t guard = bytes / 3 / page * page;
          ::mprotect(static_cast<std::byte*>(p) + guard, bytes - guard, PROT_NONE);
          RecoverTarget t{"w0", static_cast<std::byte*>(p), bytes};
          auto got = tier->recover(kStep, {&t, 1});
          return internal_error("the survivor outlived its inaccessible memory: " +
                                got.status().to_string());
        }
        KILN_ASSIGN_OR_RETURN(ResidentMemory into, ResidentMemory::map(w0_share_bytes(1)));
        if (!into.writable_while_populating()) into.wait();
        RecoverTarget t{"w0", into.span().data(), into.span().size()};
        auto got = tier->recover(kStep, {&t, 1});
        if (got.is_ok() || got.status().code() != Code::kAborted ||
            got.status().message().find("rank 0") == std::string::npos) {
          return internal_error("want Aborted naming rank 0, got " +
                                (got.is_ok() ? std::string("ok") : got.status().to_string()));
        }
        return Status::ok();  // `into`'s helper is joined on the way out
      },
      testing::quick());
  ASSERT_EQ(r.ranks.size(), 2u);
  EXPECT_EQ(r.ranks[0].signal, SIGSEGV) << r.report;  // died mid-recovery, as meant
  EXPECT_EQ(r.ranks[1].exit_code, 0) << r.report;
  EXPECT_FALSE(r.ranks[1].timed_out) << r.report;
}

}  // namespace
}  // namespace kiln::ckpt
